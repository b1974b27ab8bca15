"""The kind adapter: clusters, create, nodes, load, delete. Everything goes through proc."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from devloop.errors import ClusterUnavailable, CommandFailed, StepFailed
from devloop.proc import DEFAULT, Runner


class Kind:
    def __init__(self, runner: Runner = DEFAULT) -> None:
        self.runner = runner

    def version(self) -> str:
        return self.runner.run(["kind", "version"], timeout=30).stdout.strip()

    def clusters(self) -> list[str]:
        out = self.runner.run(["kind", "get", "clusters"], timeout=60).stdout
        return [line.strip() for line in out.splitlines() if line.strip() and not line.startswith("No kind clusters")]

    def exists(self, name: str) -> bool:
        return name in self.clusters()

    def create(self, name: str, config: Path, image: str = "", wait: str = "120s") -> None:
        argv = ["kind", "create", "cluster", "--name", name, "--config", str(config), "--wait", wait]
        if image:
            argv += ["--image", image]
        try:
            self.runner.run(argv, timeout=900)
        except CommandFailed as e:
            raise ClusterUnavailable(
                f"kind could not create cluster {name!r}: {_tail(e.stderr)}",
                "run `devloop doctor`; `kind create cluster` output above says which step failed",
            ) from e

    def nodes(self, name: str) -> list[str]:
        out = self.runner.run(["kind", "get", "nodes", "--name", name], timeout=60).stdout
        return [line.strip() for line in out.splitlines() if line.strip() and not line.startswith("No kind nodes")]

    def load_archive(self, name: str, archive: Path, nodes: Sequence[str]) -> None:
        argv = ["kind", "load", "image-archive", str(archive), "--name", name]
        if nodes:
            argv += ["--nodes", ",".join(nodes)]
        try:
            self.runner.run(argv, timeout=900)
        except CommandFailed as e:
            raise StepFailed(
                f"kind load image-archive failed: {_tail(e.stderr)}", "check disk space on the host and `kind get nodes`"
            ) from e

    def delete(self, name: str) -> None:
        self.runner.run(["kind", "delete", "cluster", "--name", name], timeout=300)


def _tail(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"
