"""The kind adapter: clusters, create, nodes, load, delete. Everything goes through proc."""

from __future__ import annotations

import re
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
            raise creation_failed(name, image, e.stderr, " ".join(argv[:7])) from e

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


NODE_IMAGE_DOC = "docs/troubleshooting.md#kinds-node-image-offline"
_PULLING = re.compile(r'failed to pull image "?([^"\s]+?)"?(?::\s|\s|$)|Ensuring node image \(([^)\s]+)\)')


def creation_failed(name: str, image: str, stderr: str, command: str) -> ClusterUnavailable:
    """What `kind create cluster` failed at, from its output (which devloop captures, so it is not
    shown above): its own ERROR line and the cause under it; a node image it could not pull is named
    with `cluster.nodeImage` and how to have one offline."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    said = [line for line in lines if line.startswith(("ERROR:", "Command Output:"))] or lines[-1:] or ["no output"]
    cause = "; ".join(dict.fromkeys(said))
    if "failed to pull image" in stderr or "✗ Ensuring node image" in stderr:
        found = [m.group(1) or m.group(2) for m in _PULLING.finditer(stderr)]
        node = image or (found[0] if found else "kind's default node image")
        where = f"cluster.nodeImage in devloop.yaml names {node}" if image else f"{node} is kind's default (cluster.nodeImage is empty)"
        return ClusterUnavailable(
            f"kind could not create cluster {name!r}: it could not pull the node image {node}: {cause}",
            f"{where}: make it available here (`docker pull` it where the network allows, then `docker save` / `docker load`), "
            f"or set cluster.nodeImage to a kind node image this machine has (`docker images` lists them); see {NODE_IMAGE_DOC}",
        )
    return ClusterUnavailable(
        f"kind could not create cluster {name!r}: {cause}",
        f"run `devloop doctor`; `{command}` run by hand shows every step kind took",
    )


def _tail(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"
