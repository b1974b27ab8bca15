"""Small values the engine passes around: an image reference and what devloop knows of a service."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ImageRef:
    """One image, named twice: how the host's Docker knows it and how the cluster pulls it.

    `registry` is where the cluster pulls from (`localhost:5001` for kind's local registry); empty
    when the image is loaded straight into the nodes, which then know it by its local name."""

    repository: str  # my-web-app
    tag: str  # dl-<16 hex>
    registry: str = ""
    digest: str = ""  # sha256:…, when the cluster is told to pull exactly this manifest (release)

    @property
    def local(self) -> str:
        return f"{self.repository}:{self.tag}"

    @property
    def cluster(self) -> str:
        name = f"{self.registry}/{self.local}" if self.registry else self.local
        return f"{name}@{self.digest}" if self.digest else name

    def __str__(self) -> str:
        return self.cluster

    @classmethod
    def parse(cls, ref: str, registry: str = "") -> ImageRef:
        """`name:tag` (or `host:port/name:tag` with `registry` set to `host:port`)."""
        if registry and ref.startswith(registry + "/"):
            ref = ref[len(registry) + 1 :]
        repo, _, tag = ref.rpartition(":")
        if not repo or "/" in tag:
            raise ValueError(f"not a name:tag image reference: {ref!r}")
        return cls(repo, tag, registry)


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

    def forget(self) -> None:
        """A new cluster runs nothing yet."""
        self.applied = self.good = self.live_ref = None
        self.good_revision = ""
        self.healthy = self.failed = False
        self.synced.clear()
