"""The engine's view of the outside world, as Protocols. The adapters (api.py, kind.py,
images.py) implement them for real; unit tests implement them with small fakes that know
deployments and pods (tests/unit/fakes.py), type-checked against these same Protocols."""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from devloop.model import ChartRequest, ImageRef
from devloop.proc import Background
from devloop.workload import PodEvent

if TYPE_CHECKING:
    from devloop.ownership import Conflict


def quiet(_: str) -> None:
    """A progress callback that says nothing."""


class Changes(Protocol):
    """A namespace's Deployments and pods, watched: `generation` counts the changes seen;
    `wait(seen, timeout)` returns True as soon as there is one after `seen`."""

    generation: int

    def wait(self, seen: int, timeout: float) -> bool: ...


class ExecStream(Protocol):
    """A running exec with stdin open (the kubernetes client's WSClient)."""

    def is_open(self) -> bool: ...
    def write_stdin(self, data: str) -> None: ...
    def readline_stdout(self, timeout: float | None = None) -> str | None: ...
    def close(self) -> None: ...


class Cluster(Protocol):
    """The Kubernetes API as devloop uses it (api.py: the API client on the hot path, kubectl for
    the rest). `apply` and `delete` take the documents as parsed (mappings), never YAML text."""

    context: str

    def contexts(self) -> list[str]: ...
    def reachable(self) -> bool: ...
    def require_reachable(self, cluster: str) -> None: ...
    def context_namespace(self) -> str: ...
    def kustomize(self, directory: str) -> str: ...
    def apply(self, docs: Sequence[Mapping[str, Any]], namespace: str, *, force: bool = True, manager: str = "devloop") -> list[str]:
        """Server-side apply as field manager `manager`; without `force` a conflict raises
        ownership.FieldConflicts and that document is not applied."""
        ...

    def conflicts(self, docs: Sequence[Mapping[str, Any]], namespace: str) -> list[Conflict]:
        """The fields an unforced apply of these documents would take from other managers (a dry run)."""
        ...

    def autoscalers(self, namespace: str) -> list[dict[str, Any]]:
        """The namespace's HorizontalPodAutoscalers."""
        ...

    def delete(self, docs: Sequence[Mapping[str, Any]], namespace: str) -> list[str]: ...
    def get(self, resource: str, name: str, namespace: str) -> dict[str, Any] | None: ...
    def get_raw(self, path: str) -> str: ...
    def pods(self, namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]]: ...
    def logs(self, pod: str, namespace: str, *, tail: int = 10, previous: bool = False) -> list[str]: ...
    def exec(self, pod: str, namespace: str, argv: list[str], stdin: bytes | None = None, timeout: float = 30) -> str: ...
    def rollout_undo(self, deployment: str, namespace: str, revision: str = "", resource: str = "deployment") -> None: ...
    def watch_pods(self, namespace: str, labels: Mapping[str, str], on_event: Callable[[PodEvent], None]) -> Background: ...
    def stream_logs(self, pod: str, namespace: str, on_line: Callable[[str], None], since: str = "") -> Background: ...
    def changes(self, namespace: str) -> Changes: ...
    def exec_stream(self, pod: str, namespace: str, argv: list[str], container: str = "") -> ExecStream: ...
    def connect(self, namespace: str, pod: str, port: int, timeout: float = 5.0) -> socket.socket: ...


class Charts(Protocol):
    """Helm: a chart rendered (`helm template`; helm.py): the manifests as YAML text."""

    def render(self, req: ChartRequest) -> str: ...


class Clusters(Protocol):
    """kind: the local clusters."""

    def exists(self, name: str) -> bool: ...
    def create(self, name: str, config: Path, image: str = "", wait: str = "120s") -> None: ...
    def nodes(self, name: str) -> list[str]: ...
    def load_archive(self, name: str, archive: Path, nodes: Sequence[str]) -> None: ...
    def delete(self, name: str) -> None: ...


class ImageStore(Protocol):
    """The local Docker engine's images."""

    def ping(self) -> str: ...
    def exists(self, ref: str) -> bool: ...
    def command(self, ref: str) -> tuple[list[str], list[str]]: ...
    def prune(self, repositories: list[str], keep: int = 3) -> list[str]: ...


class Publisher(Protocol):
    @property
    def registry(self) -> str:
        """The registry host the cluster pulls from ("" when images go straight into the nodes)."""
        ...

    def prepare(self) -> bool:
        """Make the way ready (start and wire the registry). True when something changed."""
        ...

    def start_early(self) -> bool:
        """Before the cluster exists: start what `publish` needs without the nodes (the local
        registry's container). True when `publish` may run now; False when it needs the cluster."""
        ...

    def publish(self, ref: ImageRef, note: Callable[[str], None], progress: Callable[[str], None] = quiet) -> str:
        """Make the image available to the cluster: what moved ("pushed 67.0 kB in 1 new layer, 9
        already there"), or "" when the cluster has it already. `note` is for what a person must
        read (a registry created again); `progress` for the bytes of a long move."""
        ...


class Builder(Protocol):
    """Builds `context` with `dockerfile` (relative to it), tags the result `tag`, returns the image ID.

    Every output line goes to `on_line`; a failure raises CycleFailed("build", "<step> failed: …").
    Build secrets (BuildKit only): `secrets` id → a file, `secret_env` id → an environment variable's
    name; their values never appear on a command line, in an output line or in an error."""

    @property
    def name(self) -> str: ...

    def build(
        self,
        context: Path,
        dockerfile: str,
        tag: str,
        build_args: Mapping[str, str],
        target: str | None = None,
        on_line: Callable[[str], None] = quiet,
        *,
        secrets: Mapping[str, Path] | None = None,
        secret_env: Mapping[str, str] | None = None,
    ) -> str: ...
