"""The kind adapter: what it asks kind, and what it reads from kind's answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from devloop.errors import ClusterUnavailable
from devloop.kind import Kind
from devloop.proc import INSTALL_HINTS
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


NODE_PULL_FAILED = """Creating cluster "devloop" ...
 ✗ Ensuring node image (kindest/node:v1.34.0) 🖼
ERROR: failed to create cluster: failed to pull image "kindest/node:v1.34.0@sha256:7416a61b": command "docker pull kindest/node:v1.34.0@sha256:7416a61b" failed with error: exit status 1
Command Output: Error response from daemon: Get "https://registry-1.docker.io/v2/": dial tcp: lookup registry-1.docker.io: no such host
"""


def test_a_node_image_kind_cannot_pull_is_named_with_cluster_node_image_and_the_offline_doc(tmp_path: Path) -> None:
    cfg = tmp_path / "kind-config.yaml"
    runner = FakeRunner().expect(
        "kind", "create", "cluster", "--name", "devloop", "--config", str(cfg), "--wait", "120s", stderr=NODE_PULL_FAILED, returncode=1
    )
    with pytest.raises(ClusterUnavailable) as e:
        Kind(runner).create("devloop", cfg)
    assert "could not pull the node image kindest/node:v1.34.0" in e.value.message and "no such host" in e.value.message
    assert "cluster.nodeImage" in e.value.hint and "docs/troubleshooting.md#kinds-node-image-offline" in e.value.hint
    assert "output above" not in e.value.hint  # devloop captures kind's output: nothing is shown above
    doc = (Path(__file__).resolve().parents[2] / "docs" / "troubleshooting.md").read_text()
    assert "### kind's node image offline" in doc and "nodeImage:" in doc


def test_the_kubectl_install_hint_names_a_way_that_works_on_debian_12() -> None:
    hint = INSTALL_HINTS["kubectl"]
    assert "apt-get install kubectl" not in hint  # Debian 12 has no kubectl package
    assert "devloop downloads kubectl" in hint and "pkgs.k8s.io" in hint


def test_a_declared_node_image_kind_cannot_pull_is_named_as_cluster_node_image(tmp_path: Path) -> None:
    cfg = tmp_path / "kind-config.yaml"
    argv = ["kind", "create", "cluster", "--name", "devloop", "--config", str(cfg), "--wait", "120s", "--image", "mine/node:v1"]
    stderr = NODE_PULL_FAILED.replace("kindest/node:v1.34.0@sha256:7416a61b", "mine/node:v1").replace(
        "kindest/node:v1.34.0", "mine/node:v1"
    )
    runner = FakeRunner().expect(*argv, stderr=stderr, returncode=1)
    with pytest.raises(ClusterUnavailable) as e:
        Kind(runner).create("devloop", cfg, "mine/node:v1")
    assert "could not pull the node image mine/node:v1" in e.value.message
    assert e.value.hint.startswith("cluster.nodeImage in devloop.yaml names mine/node:v1")
