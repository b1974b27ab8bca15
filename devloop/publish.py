"""Getting an image to the cluster: one small interface, one implementation per way.

- `RegistryPublisher`: push to kind's local registry (only new layers travel; the nodes pull them).
- `KindLoadPublisher`: `docker save` + `kind load image-archive` on the nodes that lack the image.

A remote registry is a third implementation of the same interface; the engine does not change.
"""

from __future__ import annotations

import json
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from devloop.errors import DevloopError, StepFailed
from devloop.images import Images, fmt_bytes
from devloop.model import ImageRef
from devloop.ports import Cluster, Clusters, quiet
from devloop.registry import LocalRegistry


class RegistryPublisher:
    def __init__(self, registry: LocalRegistry, kind: Clusters, cluster: str) -> None:
        self._registry = registry
        self._kind = kind
        self._cluster = cluster
        # held around pushes: the registry's garbage collection must never run during one
        self.lock = threading.Lock()

    @property
    def registry(self) -> str:
        return self._registry.host

    def prepare(self) -> bool:
        return self._registry.ensure(self._kind.nodes(self._cluster))

    def start_early(self) -> bool:
        if self._registry.start_container():
            self._registry.wait_answers()
        return True

    def publish(self, ref: ImageRef, note: Callable[[str], None], progress: Callable[[str], None] = quiet) -> str:
        with self.lock:
            if self._registry.has(ref.local):
                return ""
            try:
                pushed = self._registry.push(ref.local, progress)
            except DevloopError:
                # devloop created the registry: stopped (docker stop, a reboot) it is started again;
                # removed (docker rm -v, a prune) it is created again, empty
                state, before = self._registry.state()
                if state == "running":
                    raise
                self.prepare()
                _, after = self._registry.state()
                name = self._registry.cfg.name
                created = after != before  # not the container that was there: a new one, empty
                if created:
                    note(f"the local registry {name} is gone (removed, with the images in it); creating it again")
                else:
                    note(f"the local registry {name} was stopped; starting it again")
                self._registry.wait_answers()
                pushed = self._registry.push(ref.local, progress)
                if created:
                    self._push_running(ref, note)
        return f"pushed {pushed.summary()}"

    def _push_running(self, pushed: ImageRef, note: Callable[[str], None]) -> None:
        """After the registry was created again, empty: push again every image of it the cluster
        runs (pods and Deployments, asked, not assumed), so that a pod that is rescheduled or a
        node that pulls again finds it."""
        prefix = f"{self._registry.host}/"
        try:
            running = sorted(r for r in cluster_images(self._registry.kube) if r.startswith(prefix) and r != pushed.cluster)
        except DevloopError as e:
            note(f"could not ask the cluster which images it runs ({e.message}); pushed only {pushed.local}")
            return
        again, lost = [], []
        for remote in running:
            local = remote.removeprefix(prefix)
            try:
                if self._registry.images.exists(remote) or self._registry.images.exists(local):
                    if not self._registry.images.exists(remote):
                        self._registry.images.tag(local, remote)
                    self._registry.images.push(remote)
                    again.append(local)
                else:
                    lost.append(local)
            except DevloopError:
                lost.append(local)
        if again:
            note(f"pushed again what the cluster runs: {', '.join(again)}")
        if lost:
            note(
                f"not in the registry any more and not pushable from here: {', '.join(lost)} "
                "(running pods keep running; a pod that must pull it again fails until a save rolls out a new version)"
            )


def cluster_images(kube: Cluster) -> set[str]:
    """Every image the cluster's pods and Deployments name (what a pod started anew would pull)."""
    found: set[str] = set()
    for path in ("/api/v1/pods", "/apis/apps/v1/deployments"):
        try:
            items = json.loads(kube.get_raw(path)).get("items", [])
        except ValueError as e:
            raise StepFailed(f"the API server answered {path} with something that is not JSON", "") from e
        for item in items:
            spec = item.get("spec", {})
            spec = spec.get("template", {}).get("spec", {}) if "template" in spec else spec
            for c in (spec.get("containers") or []) + (spec.get("initContainers") or []):
                if c.get("image"):
                    found.add(str(c["image"]))
    return found


class KindLoadPublisher:
    def __init__(self, images: Images, kind: Clusters, cluster: str) -> None:
        self._images = images
        self._kind = kind
        self._cluster = cluster

    @property
    def registry(self) -> str:
        return ""

    def prepare(self) -> bool:
        return False

    def start_early(self) -> bool:
        return False  # kind load needs the nodes

    def publish(self, ref: ImageRef, note: Callable[[str], None], progress: Callable[[str], None] = quiet) -> str:
        return self.load(ref.local, note)

    def load(self, image: str, note: Callable[[str], None]) -> str:
        """Load a local image into the nodes that lack it: what moved, "" when nothing did."""
        nodes = self._kind.nodes(self._cluster)
        missing = [n for n in nodes if not node_has(self._images, n, image)]
        if not missing:
            return ""
        note(f"loading {image} into {', '.join(missing)}")
        with tempfile.TemporaryDirectory(prefix="devloop-") as tmp:
            archive = Path(tmp) / "image.tar"
            size = self._images.save(image, archive)
            self._kind.load_archive(self._cluster, archive, missing)
        return f"loaded {fmt_bytes(size)} into {', '.join(missing)}"


def node_has(images: Images, node: str, ref: str) -> bool:
    """Whether a kind node's containerd already holds this image (then loading it again is waste)."""
    r = ImageRef.parse(ref)
    name = f"{r.qualified}:{r.tag}" if r.tag else r.qualified
    found = images.exec_in(node, ["ctr", "-n", "k8s.io", "images", "ls", "-q", f"name=={name}"])
    return found is not None and found[0] == 0 and name in found[1].split()
