"""Getting an image to the cluster: one small interface, one implementation per way.

- `RegistryPublisher`: push to kind's local registry (only new layers travel; the nodes pull them).
- `KindLoadPublisher`: `docker save` + `kind load image-archive` on the nodes that lack the image.

A remote registry is a third implementation of the same interface; the engine does not change.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from devloop.errors import DevloopError
from devloop.images import Images
from devloop.model import ImageRef
from devloop.ports import Clusters
from devloop.registry import LocalRegistry


class Publisher(Protocol):
    @property
    def registry(self) -> str:
        """The registry host the cluster pulls from ("" when images go straight into the nodes)."""
        ...

    def prepare(self) -> bool:
        """Make the way ready (start and wire the registry). True when something changed."""
        ...

    def publish(self, ref: ImageRef, note: Callable[[str], None]) -> bool:
        """Make the image available to the cluster. True when something moved."""
        ...


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

    def publish(self, ref: ImageRef, note: Callable[[str], None]) -> bool:
        with self.lock:
            if self._registry.has(ref.local):
                return False
            try:
                self._registry.push(ref.local)
            except DevloopError:
                # devloop created the registry: when it was stopped (docker stop, a reboot), start it again
                if self._registry.running():
                    raise
                note(f"the local registry {self._registry.cfg.name} was stopped; starting it again")
                self.prepare()
                self._registry.push(ref.local)
        return True


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

    def publish(self, ref: ImageRef, note: Callable[[str], None]) -> bool:
        return self.load(ref.local, note)

    def load(self, image: str, note: Callable[[str], None]) -> bool:
        """Load a local image into the nodes that lack it. True when something moved."""
        nodes = self._kind.nodes(self._cluster)
        missing = [n for n in nodes if not self._images.node_has(n, image)]
        if not missing:
            return False
        note(f"loading {image} into {', '.join(missing)}")
        with tempfile.TemporaryDirectory(prefix="devloop-") as tmp:
            archive = Path(tmp) / "image.tar"
            self._images.save(image, archive)
            self._kind.load_archive(self._cluster, archive, missing)
        return True
