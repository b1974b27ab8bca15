"""The local kind cluster: devloop creates it, owns it, and tidies it.

Images get there through devloop's local registry (the nodes pull only new layers) or, with the
registry off, `kind load` (see publish.py); garbage collection keeps the newest versions in the
registry and the nodes' containerd. The image transport follows the configuration's `registry`
section, also after a reload.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from devloop.config import BUILTIN_KIND_CONFIG, Config
from devloop.errors import ClusterUnavailable, DevloopError
from devloop.model import Outage
from devloop.output import Output
from devloop.ports import Cluster, Clusters, ImageStore, Publisher
from devloop.targets import TargetSpec

Collector = Callable[[str, set[str]], str]  # (image name, tags in use) → what was removed ("" when nothing)


@dataclass(frozen=True)
class Transport:
    """How images reach the nodes, and how their old versions are collected (None: not at all)."""

    publisher: Publisher
    collect: Collector | None = None
    side_load: Callable[[str], None] | None = None  # a local image into the nodes (`kind load`)
    remove: Callable[[], list[str]] | None = None  # `down --cluster`: what devloop created beside the cluster


class KindTarget:
    def __init__(
        self,
        spec: TargetSpec,
        config: Config,
        *,
        kind: Clusters,
        kube: Cluster,
        images: ImageStore,
        transport: Callable[[Config], Transport],
        out: Output,
    ) -> None:
        self.spec = spec
        self.kind = kind
        self.kube = kube
        self.images = images
        self.out = out
        self._transport_for = transport
        self._config = config
        self._transport: Transport | None = None
        self._gc_lock = threading.Lock()
        self._gc_running: set[str] = set()  # services with a garbage collection under way (under _gc_lock)
        self._gc_again: dict[str, tuple[str, set[str]]] = {}  # the latest request that came meanwhile (under _gc_lock)

    @property
    def name(self) -> str:
        return self._config.cluster.name

    @property
    def owns_cluster(self) -> bool:
        return True

    @property
    def transport(self) -> Transport:
        if self._transport is None:
            self._transport = self._transport_for(self._config)
        return self._transport

    @property
    def publisher(self) -> Publisher:
        return self.transport.publisher

    @property
    def pull_policy(self) -> str | None:
        return "IfNotPresent"  # devloop's content tags are immutable: never pull what the node has

    @property
    def label(self) -> str:
        return self.name

    def describe(self) -> str:
        return self.spec.describe()

    def reconfigure(self, config: Config) -> None:
        if config.registry != self._config.registry:
            self._transport = None
        self._config = config

    def exists(self) -> bool:
        return self.kind.exists(self.name)

    def require_existing(self) -> bool:
        return self.exists()

    def will_create(self) -> bool:
        return not self.kind.exists(self.name)

    def ensure(self) -> bool:
        name = self.name
        cluster = self._config.cluster
        if self.kind.exists(name):
            if not self.kube.reachable():
                raise ClusterUnavailable(
                    f"the API server of kind cluster {name!r} (context {self.kube.context}) does not answer",
                    "`devloop up` creates or repairs it; `kind get clusters` lists what exists",
                )
            return False
        built_in = cluster.kind_config == BUILTIN_KIND_CONFIG
        source = "devloop's built-in kind config (no kind-config.yaml here)" if built_in else cluster.kind_config.name
        self.out.info(f"creating kind cluster {name!r} from {source} (this takes a minute)")
        try:
            with self.out.activity(f"creating kind cluster {name}"):
                self.kind.create(name, cluster.kind_config, cluster.node_image)
        except KeyboardInterrupt:  # on the main thread (a retry after `up`'s own attempt failed): the runner stopped kind
            self.abandon_creation()
            raise
        return True

    def abandon_creation(self) -> None:
        """A cluster kind did not finish is of no use (no working API server), and the next `up` would
        stop at it: delete it, as `kind delete cluster` does. A second Ctrl-C leaves it, and says how."""
        name = self.name
        left = f"kind cluster {name!r} is left half-created"
        how = f"`kind delete cluster --name {name}` (or `devloop down --cluster`) removes it; the next `devloop up` then creates it"
        try:
            if not self.kind.exists(name):
                self.out.info(f"interrupted before kind made anything of cluster {name!r}")
                return
            self.out.info(f"interrupted while kind was creating cluster {name!r}: deleting what it made")
            self.kind.delete(name)
        except DevloopError as e:
            self.out.warn(f"{left}: deleting it failed: {e.message}", how)
            return
        except KeyboardInterrupt:
            self.out.warn(f"{left} (interrupted again while deleting it)", how)
            raise
        self.out.info(f"deleted the half-created kind cluster {name!r}")

    def require_pull_secret(self, namespaces: set[str]) -> None:
        return None  # the nodes pull from devloop's own registry (or hold the image): no credentials

    def prepared(self, namespaces: set[str]) -> None:
        return None

    def side_load(self, image: str) -> None:
        if self.transport.side_load is not None and self.images.exists(image):  # a local image (offline build)
            self.transport.side_load(image)

    def collect_garbage(self, service: str, image_name: str, in_use: set[str]) -> None:
        """In the background, after a successful rollout: delete this service's old content tags
        from the local registry and the nodes' containerd (never one in use, never one devloop did
        not build). At most one collection per service at a time; it never fails or slows a cycle.
        A request while one runs is not dropped: the latest runs once that one ends (otherwise rebuilds
        faster than a collection leave versions beyond keepVersions until a later cycle)."""
        collect = self.transport.collect
        if collect is None:
            return
        with self._gc_lock:
            if service in self._gc_running:
                self._gc_again[service] = (image_name, in_use)
                return
            self._gc_running.add(service)

        def work() -> None:
            request: tuple[str, set[str]] | None = (image_name, in_use)
            while request is not None:
                try:
                    summary = collect(*request)
                    if summary:
                        self.out.detail(f"{service}: {summary}", service=service)
                except Exception as e:  # tidying is best effort
                    self.out.detail(f"{service}: garbage collection skipped: {e}", service=service)
                finally:
                    with self._gc_lock:
                        request = self._gc_again.pop(service, None)
                        if request is None:
                            self._gc_running.discard(service)

        threading.Thread(target=work, daemon=True, name=f"devloop-gc-{service}").start()

    def vanished(self) -> str | None:
        try:
            gone = not self.kind.exists(self.name)
        except DevloopError:
            gone = False
        return f"kind cluster {self.name!r} is gone" if gone else None

    def outage(self) -> Outage:
        return Outage(
            f"kind cluster {self.name!r}",
            "a paused or restarting kind node (`docker ps`): devloop resumes them when it answers; a save meanwhile fails its "
            "deploy, save again after",
        )

    def remove_cluster(self) -> list[str]:
        removed = []
        if self.kind.exists(self.name):
            with self.out.activity(f"deleting kind cluster {self.name}"):
                self.kind.delete(self.name)
            removed.append(f"kind cluster {self.name}")
        if self.transport.remove is not None:
            removed += self.transport.remove()
        return removed
