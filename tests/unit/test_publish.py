"""The local-registry publisher when the registry went away: stopped, or removed with its images."""

from __future__ import annotations

import json
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from devloop.config import RegistryConfig
from devloop.errors import StepFailed
from devloop.images import Images, Pushed
from devloop.model import ImageRef
from devloop.publish import RegistryPublisher
from tests.unit.fakes import FakeCluster, FakeDocker, FakeKind

RUNNING = "localhost:5001/my-web-app:dl-old"


class PushingDocker(FakeDocker):
    """The local engine with both versions of the app, as the registry uses it: it also tags and pushes."""

    def __init__(self) -> None:
        super().__init__()
        self.present = {"my-web-app:dl-old", "my-web-app:dl-new"}
        self.pushed: list[str] = []

    def tag(self, ref: str, new: str) -> None:
        self.present.add(new)

    def push(self, ref: str) -> Pushed:
        self.pushed.append(ref)
        return Pushed(ref, "sha256:old", 0, 0, 10)


class RunningCluster(FakeCluster):
    """A cluster whose pod runs RUNNING (from the local registry) beside kind's pause image."""

    def get_raw(self, path: str) -> str:
        pods = {"items": [{"spec": {"containers": [{"image": RUNNING}, {"image": "registry.k8s.io/pause:3.10"}]}}]}
        return json.dumps(pods if "pods" in path else {"items": []})


class FakeRegistry:
    """A registry container that `docker stop` or `docker rm -f -v` took away before the push."""

    def __init__(self, how: str) -> None:
        self.how = how  # "stopped" | "removed"
        self.cfg = RegistryConfig()
        self.host = "localhost:5001"
        self.images = PushingDocker()
        self.kube = RunningCluster()
        self.container: tuple[str, str] = ("removing", "c1") if how == "removed" else ("exited", "c1")
        self.up = False

    def has(self, local_ref: str) -> bool:
        return False

    def push(self, local_ref: str, progress: Callable[[str], None] = lambda _: None) -> Pushed:
        if not self.up:
            raise StepFailed("push failed: connection refused")
        self.images.pushed.append(f"{self.host}/{local_ref}")
        return Pushed(f"{self.host}/{local_ref}", "sha256:new", 67_000, 1, 9)

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
    publisher = RegistryPublisher(registry, FakeKind(), "devloop")  # type: ignore[arg-type]  # it takes the concrete LocalRegistry
    moved = publisher.publish(ImageRef("my-web-app", "dl-new", "localhost:5001"), notes.append)
    assert moved == "pushed 67.0 kB in 1 new layer, 9 already there"
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


def stream(*chunks: dict[str, Any]) -> Images:
    """An Images whose docker client answers a push with these progress messages (the daemon's own shape)."""
    api = SimpleNamespace(push=lambda ref, stream, decode: iter(chunks))
    client = SimpleNamespace(api=api, ping=lambda: True)
    return Images(lambda: client)


def test_a_push_counts_the_bytes_of_the_layers_that_travel_and_reports_each_mb() -> None:
    images = stream(
        {"status": "The push refers to repository [localhost:5001/my-web-app]"},
        {"status": "Preparing", "id": "a"},
        {"status": "Layer already exists", "id": "b"},
        {"status": "Mounted from library/node", "id": "c"},
        {"status": "Pushing", "id": "a", "progressDetail": {"current": 1_500_000, "total": 3_000_000}},
        {"status": "Pushing", "id": "a", "progressDetail": {"current": 3_000_000, "total": 3_000_000}},
        {"status": "Pushed", "id": "a"},
        {"status": "dl-1: digest: sha256:abc size: 1234", "aux": {"Tag": "dl-1", "Digest": "sha256:abc", "Size": 1234}},
    )
    said: list[str] = []
    pushed = images.push("localhost:5001/my-web-app:dl-1", said.append)
    assert (pushed.digest, pushed.bytes_pushed, pushed.layers_pushed, pushed.layers_present) == ("sha256:abc", 3_000_000, 1, 2)
    assert pushed.summary() == "3.0 MB in 1 new layer, 2 already there"
    assert said == ["pushing localhost:5001/my-web-app:dl-1: 1.5 / 3.0 MB", "pushing localhost:5001/my-web-app:dl-1: 3.0 / 3.0 MB"]


def test_a_refused_push_says_the_registrys_words() -> None:
    images = stream({"status": "Preparing", "id": "a"}, {"error": "unauthorized: authentication required"})
    with pytest.raises(StepFailed, match="unauthorized: authentication required"):
        images.push("localhost:5001/my-web-app:dl-1")
