"""Targets answer what the rest of devloop must not branch on, and the engine does what the plan says."""

from __future__ import annotations

import io
import json
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from devloop import config as config_mod
from devloop.errors import ClusterUnavailable, CommandFailed, ConfigError
from devloop.forward import ApiWatch
from devloop.output import Output
from devloop.plan import Plan, ServiceChange, needing_images
from devloop.targets import TargetSpec, check_down, resolve
from devloop.targets.local import KindTarget, Transport
from devloop.targets.remote import RemoteTarget
from tests.unit.fakes import FakeCluster, FakeDocker, FakeKind, FakePublisher
from tests.unit.test_engine import World, run

REPO = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path) -> config_mod.Config:
    shutil.copytree(REPO / "sample-app", tmp_path / "sample-app", ignore=shutil.ignore_patterns("node_modules"))
    shutil.copy(REPO / "kind-config.yaml", tmp_path / "kind-config.yaml")
    return config_mod.load(None, tmp_path)


def _events(buf: io.StringIO, kind: str) -> list[dict[str, Any]]:
    return [e for e in map(json.loads, buf.getvalue().splitlines()) if e["event"] == kind]


def _remote(cluster: FakeCluster, out: Output) -> RemoteTarget:
    spec = TargetSpec("prod", "prod-admin", "r.example:5443/team", "shop", None, remote=True)
    return RemoteTarget(spec, kube=cluster, publisher=FakePublisher("r.example:5443/team"), registry_host="r.example:5443", out=out)


def _local(cfg: config_mod.Config, out: Output, kind: FakeKind, removed: list[str] | None = None) -> KindTarget:
    def transport(_: config_mod.Config) -> Transport:
        return Transport(FakePublisher(), remove=lambda: list(removed or []))

    return KindTarget(
        TargetSpec("kind", cfg.cluster.context), cfg, kind=kind, kube=FakeCluster(), images=FakeDocker(), transport=transport, out=out
    )


def test_losing_a_remote_targets_api_server_names_the_target_not_a_kind_cluster() -> None:
    cluster = FakeCluster("prod-admin")
    buf = io.StringIO()
    out = Output(json_mode=True, stdout=buf)
    target = _remote(cluster, out)

    class Down(FakeCluster):
        def reachable(self) -> bool:
            return False

    api = ApiWatch(Down("prod-admin"), out, target.outage())
    assert not api.answers()
    api.stop()
    (warning,) = _events(buf, "warning")
    assert "target prod (context prod-admin)" in warning["message"] and "kind" not in warning["message"]
    assert "docker ps" not in warning["hint"] and "--context prod-admin" in warning["hint"]


def test_the_kind_cluster_is_created_when_missing_and_said_gone_when_deleted(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    kind = FakeKind(clusters=())
    target = _local(cfg, Output(json_mode=True, stdout=io.StringIO()), kind)
    assert target.owns_cluster and target.pull_policy == "IfNotPresent"
    assert target.will_create() and target.ensure() is True and kind.created == [cfg.cluster.name]
    assert not target.will_create() and target.ensure() is False  # there now: asked, not created again
    assert target.vanished() is None
    kind.delete(cfg.cluster.name)
    assert target.vanished() == f"kind cluster {cfg.cluster.name!r} is gone"


def test_an_unanswering_kind_cluster_is_named_with_its_context(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    target = _local(cfg, Output(json_mode=True, stdout=io.StringIO()), FakeKind())

    class Silent(FakeCluster):
        def reachable(self) -> bool:
            return False

    target.kube = Silent()
    with pytest.raises(ClusterUnavailable, match=r"kind cluster 'devloop' \(context kind-devloop\) does not answer"):
        target.ensure()


def test_down_cluster_deletes_the_kind_cluster_and_what_devloop_created_beside_it(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    kind = FakeKind()
    target = _local(cfg, Output(json_mode=True, stdout=io.StringIO()), kind, removed=["container devloop-registry (local registry)"])
    assert target.remove_cluster() == ["kind cluster devloop", "container devloop-registry (local registry)"]
    assert not kind.exists("devloop")


def test_an_interrupted_creation_whose_deletion_fails_says_the_cluster_is_left_and_how_to_remove_it(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    buf = io.StringIO()

    class Stuck(FakeKind):
        def delete(self, name: str) -> None:
            raise CommandFailed(["kind", "delete", "cluster"], 1, "ERROR: failed to delete cluster: docker is stopping")

    _local(cfg, Output(json_mode=True, stdout=buf), Stuck(clusters=("devloop",))).abandon_creation()

    (warning,) = _events(buf, "warning")
    assert warning["message"].startswith("kind cluster 'devloop' is left half-created: deleting it failed: `kind delete cluster` failed")
    assert "`kind delete cluster --name devloop`" in warning["hint"]


def test_an_interrupted_creation_that_made_nothing_deletes_nothing(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    buf = io.StringIO()
    kind = FakeKind(clusters=())

    _local(cfg, Output(json_mode=True, stdout=buf), kind).abandon_creation()

    assert [e["message"] for e in _events(buf, "info")] == ["interrupted before kind made anything of cluster 'devloop'"]
    assert not _events(buf, "warning")


def test_a_collection_asked_while_one_runs_runs_after_it_with_the_latest_request(tmp_path: Path) -> None:
    """Rebuilds faster than a collection: the requests meanwhile are not dropped (the node then held
    versions beyond keepVersions until some later cycle); the latest runs once, after the running one."""
    cfg = _config(tmp_path)
    started, release = threading.Event(), threading.Event()
    calls: list[set[str]] = []

    def collect(image_name: str, in_use: set[str]) -> str:
        calls.append(in_use)
        started.set()
        assert release.wait(30)
        return ""

    def transport(_: config_mod.Config) -> Transport:
        return Transport(FakePublisher(), collect)

    out = Output(json_mode=True, stdout=io.StringIO())
    target = KindTarget(
        TargetSpec("kind", cfg.cluster.context), cfg, kind=FakeKind(), kube=FakeCluster(), images=FakeDocker(), transport=transport, out=out
    )
    target.collect_garbage("web", "my-web-app", {"dl-1"})
    assert started.wait(30)
    target.collect_garbage("web", "my-web-app", {"dl-2"})
    target.collect_garbage("web", "my-web-app", {"dl-3"})
    (worker,) = [t for t in threading.enumerate() if t.name == "devloop-gc-web"]
    release.set()
    worker.join(30)
    assert not worker.is_alive()
    assert calls == [{"dl-1"}, {"dl-3"}]
    target.collect_garbage("web", "my-web-app", {"dl-4"})  # idle again: a new collection starts
    for t in [t for t in threading.enumerate() if t.name == "devloop-gc-web"]:
        t.join(30)
    assert calls == [{"dl-1"}, {"dl-3"}, {"dl-4"}]


def test_a_remote_target_is_never_created_deleted_or_pruned() -> None:
    cluster = FakeCluster("prod-admin")
    target = _remote(cluster, Output(json_mode=True, stdout=io.StringIO()))
    assert not target.owns_cluster and target.pull_policy is None and target.label == "prod"
    assert target.will_create() is False and target.ensure() is False and target.vanished() is None
    target.abandon_creation()  # nothing created: nothing to remove, nothing raised
    target.collect_garbage("web", "my-web-app", set())  # nothing to do, nothing raised
    with pytest.raises(ConfigError, match="never deletes a remote cluster"):
        target.remove_cluster()


def test_down_refuses_cluster_with_a_target_and_wants_yes(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    check_down(resolve(cfg, None), cluster=True, yes=False)  # the local cluster: no confirmation needed
    remote = TargetSpec("prod", "prod-admin", "r.example:5443", remote=True)
    with pytest.raises(ConfigError, match="--cluster cannot be used with --target"):
        check_down(remote, cluster=True, yes=True)
    with pytest.raises(ConfigError, match="needs --yes"):
        check_down(remote, cluster=False, yes=False)
    assert resolve(cfg, None).tools == ["kind", "kubectl"] and remote.tools == ["kubectl"]


# -- the plan decides ---------------------------------------------------------------------------------


def test_a_manifest_only_change_applies_the_running_image_without_build_or_publish(sample_copy: Path) -> None:
    w = World(sample_copy)
    (up,) = w.engine.up()
    builds, pushes = len(w.docker.builds), len(w.publisher.pushed)
    deployment = sample_copy / "sample-app" / "k8s" / "deployment.yaml"
    deployment.write_text(deployment.read_text().replace("replicas: 3", "replicas: 2"))
    (r,) = run(w.engine, [ServiceChange("web-app", reapply=True, manifest_files=(str(deployment),), reason="manifests changed")])
    assert r.ok and r.image == up.image and set(r.phases) == {"deploy", "rollout"}, r.phases
    assert len(w.docker.builds) == builds and len(w.publisher.pushed) == pushes
    applied = w.cluster.objects[("default", "Deployment", "web-app")]
    assert applied["spec"]["replicas"] == 2  # the changed manifest was read again (not the cached one) and applied


def test_a_manifest_change_when_the_cluster_lags_the_sources_builds_them(sample_copy: Path) -> None:
    """The cluster does not run the sources on disk (say the last build failed): re-applying the
    manifests alone would silently keep the old code, so the plan turns it into a rebuild."""
    w = World(sample_copy)
    w.engine.up()
    server = sample_copy / "sample-app" / "server.js"
    server.write_text(server.read_text() + "\n// v2\n")
    stale = {s for s in w.engine.state if w.engine._stale(s)}
    assert stale == {"web-app"}
    change = ServiceChange("web-app", reapply=True, manifest_files=("deployment.yaml",))
    assert needing_images(Plan(services=(change,)), stale).services[0].rebuild
    assert needing_images(Plan(services=(change,)), set()).services[0] == change
    (r,) = run(w.engine, [change])
    assert r.ok and r.built and "build" in r.phases and w.cluster.serving("web-app") == [str(r.image)] * 3
