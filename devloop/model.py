"""Small values the engine passes around: an image reference and what devloop knows of a service."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

_DIGEST = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")  # the OCI image spec's grammar
DOCKER_HUB = "docker.io"  # the registry of a reference that names none
_HUB_ALIASES = (DOCKER_HUB, "index.docker.io")


@dataclass(frozen=True)
class ImageRef:
    """One image reference, `[registry/]repository[:tag][@digest]`, named twice: how the host's Docker
    knows it (`local`) and how the cluster pulls it (`cluster`).

    `registry` is where the cluster pulls from (`localhost:5001` for kind's local registry, a target's
    `host[:port]/path`); empty when the image is loaded straight into the nodes, which then know it by
    its local name. Every reference devloop reads is split here (`parse`), nowhere else."""

    repository: str  # my-web-app, team/web: the path inside the registry
    tag: str = ""  # dl-<16 hex>; "" when the reference names none
    registry: str = ""
    digest: str = ""  # sha256:…, when the cluster is told to pull exactly this manifest (release)

    @property
    def name(self) -> str:
        """registry/repository: the reference without tag and digest."""
        return f"{self.registry}/{self.repository}" if self.registry else self.repository

    @property
    def local(self) -> str:
        return f"{self.repository}:{self.tag}" if self.tag else self.repository

    @property
    def cluster(self) -> str:
        name = f"{self.name}:{self.tag}" if self.tag else self.name
        return f"{name}@{self.digest}" if self.digest else name

    @property
    def host(self) -> str:
        """The registry's `host[:port]` (its first component); "" when the reference names none."""
        return self.registry.partition("/")[0]

    @property
    def familiar(self) -> str:
        """The name as `docker images` shows it: Docker Hub's `docker.io/` and `library/` left out
        (`docker.io/library/web:1` → `web`)."""
        if self.host not in ("", *_HUB_ALIASES):
            return self.name
        path = self.name if not self.host else self.name.partition("/")[2]
        return path.removeprefix("library/")

    @property
    def qualified(self) -> str:
        """The fully qualified name containerd (so a kind node) stores the image under:
        `web` → `docker.io/library/web`, `team/web` → `docker.io/team/web`."""
        if self.host not in ("", *_HUB_ALIASES):
            return self.name
        path = self.familiar
        return f"{DOCKER_HUB}/{path if '/' in path else 'library/' + path}"

    def __str__(self) -> str:
        return self.cluster

    @classmethod
    def parse(cls, ref: str, registry: str = "") -> ImageRef:
        """`name`, `name:tag`, `host:port/path/name:tag`, any of them `@sha256:…`.

        The registry is `registry` when the reference starts with it (a target's `host/path`), else
        the first component when Docker would take it for a host: it holds a '.' or a ':port', or is
        `localhost` (`my-team/web` is Docker Hub's). ValueError when it is not a reference."""
        name, at, digest = ref.partition("@")
        if at and not _DIGEST.fullmatch(digest):
            raise ValueError(f"not an image reference (bad digest): {ref!r}")
        host = ""
        if registry and name.startswith(registry + "/"):
            host, name = registry, name[len(registry) + 1 :]
        else:
            first, slash, rest = name.partition("/")
            if slash and ("." in first or first.partition(":")[2].isdigit() or first == "localhost"):
                host, name = first, rest
        repository, colon, tag = name.rpartition(":")
        if not colon:
            repository, tag = name, ""
        if (
            not repository
            or (colon and not tag)
            or "/" in tag
            or "" in repository.split("/")
            or any(c.isspace() or c in ":@" for c in repository + tag)
        ):
            raise ValueError(f"not an image reference: {ref!r}")
        return cls(repository, tag, host, digest)


@dataclass(frozen=True)
class Outage:
    """What a target says of itself when its API server stops answering (and answers again)."""

    subject: str  # "kind cluster 'devloop'", "target prod (context prod-admin)"
    hint: str


@dataclass
class ServiceState:
    """What devloop knows the cluster runs for one service. Written only by the engine's worker
    (and, during a cycle, by that service's own task), only through these methods; other threads
    read the session's published view (view.py), never this."""

    applied: ImageRef | None = None  # what the Deployment was last told to run
    good: ImageRef | None = None  # the last version that rolled out completely (and so served)
    good_revision: str = ""  # the Deployment revision of `good`, for a rollback
    healthy: bool = False  # the rollout of `applied` completed (or a rollback restored `good`)
    live_ref: ImageRef | None = None  # content tag of the tree as last live-synced over `good`
    synced: set[str] = field(default_factory=set)  # files live-synced since `good` rolled out
    failed: bool = False  # the service's last cycle failed
    # a liveUpdate.run step failed: files copied into the first replica only, steps to run again (next sync)
    unsynced: set[str] = field(default_factory=set)
    unrun: set[int] = field(default_factory=set)

    @property
    def running(self) -> ImageRef | None:
        """The content the pods run right now: the live-synced tree, else what was applied."""
        return self.live_ref if self.synced else self.applied

    def rolled_out(self, ref: ImageRef, revision: str) -> None:
        self.applied = self.good = ref
        self.good_revision = revision
        self.healthy = True
        self.synced.clear()
        self.live_ref = None
        self.unsynced.clear()
        self.unrun.clear()

    def applying(self, ref: ImageRef) -> None:
        """The Deployment was just told to run `ref`; its rollout is not complete yet."""
        self.applied, self.healthy = ref, False

    def rolled_back(self, ref: ImageRef, revision: str) -> None:
        """A rollback restored `ref`, which serves again."""
        self.applied, self.healthy, self.good_revision = ref, True, revision

    def live_synced(self, files: tuple[str, ...], ref: ImageRef) -> None:
        """`files` were copied into every replica of `good`: the pods run the content `ref` names."""
        self.synced.update(files)
        self.live_ref = ref
        if self.unrun:  # the run steps that failed have run: the failure is behind us
            self.failed = False
        self.unsynced.clear()
        self.unrun.clear()

    def run_failed(self, files: tuple[str, ...], steps: tuple[int, ...]) -> None:
        """A liveUpdate.run step failed: these files and steps go with the next sync."""
        self.unsynced.update(files)
        self.unrun.update(steps)

    def forget(self) -> None:
        """A new cluster runs nothing yet."""
        self.applied = self.good = self.live_ref = None
        self.good_revision = ""
        self.healthy = self.failed = False
        self.synced.clear()
        self.unsynced.clear()
        self.unrun.clear()


@dataclass(frozen=True)
class ChartRequest:
    """One `helm template` (charts.py computes it, helm.py runs it): values files in order, then
    single values (later wins)."""

    chart: Path  # the chart's directory
    release: str
    namespace: str
    values_files: tuple[Path, ...] = ()
    values: tuple[tuple[str, str], ...] = ()  # (key, value as JSON): `--set-json key=value`
