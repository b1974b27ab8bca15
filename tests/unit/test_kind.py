"""The kind adapter: what it asks kind, and what it reads from kind's answers."""

from __future__ import annotations

from pathlib import Path

from devloop.kind import Kind
from tests.unit.fakes import FakeRunner


def test_kind_adapter_parses_clusters_and_nodes() -> None:
    runner = (
        FakeRunner()
        .expect("kind", "get", "clusters", stdout="devloop\nother\n")
        .expect("kind", "get", "nodes", "--name", "devloop", stdout="devloop-control-plane\n")
        .expect("kind", "get", "clusters", stdout="", stderr="No kind clusters found.\n")
    )
    kind = Kind(runner)
    assert kind.exists("devloop")
    assert kind.nodes("devloop") == ["devloop-control-plane"]
    assert kind.clusters() == []
    runner.done()


def test_kind_load_uses_image_archive_not_docker_image(tmp_path: Path) -> None:
    tar = tmp_path / "i.tar"
    runner = FakeRunner().expect("kind", "load", "image-archive", str(tar), "--name", "devloop", "--nodes", "n1,n2")
    Kind(runner).load_archive("devloop", tar, ["n1", "n2"])
    runner.done()
