"""The local-registry publisher when the registry went away: stopped, or removed with its images."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from types import SimpleNamespace

from devloop.errors import StepFailed
from devloop.model import ImageRef
from devloop.publish import RegistryPublisher
from tests.unit.fakes import FakeKind

RUNNING = "localhost:5001/my-web-app:dl-old"


@dataclass
class FakeImages:
    local: set[str] = field(default_factory=lambda: {"my-web-app:dl-old", "my-web-app:dl-new"})
    pushed: list[str] = field(default_factory=list)

    def exists(self, ref: str) -> bool:
        return ref in self.local

    def tag(self, ref: str, new: str) -> None:
        self.local.add(new)

    def push(self, ref: str) -> None:
        self.pushed.append(ref)


class FakeRegistry:
    """A registry container that `docker stop` or `docker rm -f -v` took away before the push."""

    def __init__(self, how: str) -> None:
        self.how = how  # "stopped" | "removed"
        self.cfg = SimpleNamespace(name="devloop-registry")
        self.host = "localhost:5001"
        self.images = FakeImages()
        pods = {"items": [{"spec": {"containers": [{"image": RUNNING}, {"image": "registry.k8s.io/pause:3.10"}]}}]}
        self.kube = SimpleNamespace(get_raw=lambda path: json.dumps(pods if "pods" in path else {"items": []}))
        self.container: tuple[str, str] = ("removing", "c1") if how == "removed" else ("exited", "c1")
        self.up = False

    def has(self, local_ref: str) -> bool:
        return False

    def push(self, local_ref: str) -> str:
        if not self.up:
            raise StepFailed("push failed: connection refused")
        self.images.pushed.append(f"{self.host}/{local_ref}")
        return f"{self.host}/{local_ref}"

    def state(self) -> tuple[str, str]:
        return self.container

    def ensure(self, nodes: list[str]) -> bool:
        self.container = ("running", "c2" if self.how == "removed" else "c1")
        self.up = True
        return True

    def wait_answers(self, within: float = 20.0) -> None:
        assert self.up


def publish(how: str) -> tuple[FakeRegistry, list[str]]:
    registry = FakeRegistry(how)
    notes: list[str] = []
    publisher = RegistryPublisher(registry, FakeKind(), "devloop")  # type: ignore[arg-type]
    assert publisher.publish(ImageRef("my-web-app", "dl-new", "localhost:5001"), notes.append)
    return registry, notes


def test_a_removed_registry_is_created_again_and_gets_what_the_cluster_runs_again() -> None:
    registry, notes = publish("removed")
    assert registry.images.pushed == ["localhost:5001/my-web-app:dl-new", RUNNING]
    assert "is gone (removed, with the images in it); creating it again" in notes[0]
    assert notes[1] == "pushed again what the cluster runs: my-web-app:dl-old"


def test_a_stopped_registry_is_started_and_keeps_its_images() -> None:
    registry, notes = publish("stopped")
    assert registry.images.pushed == ["localhost:5001/my-web-app:dl-new"]
    assert notes == ["the local registry devloop-registry was stopped; starting it again"]
