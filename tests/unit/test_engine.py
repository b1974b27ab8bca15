"""The engine with fakes at the level of meaning: a fake cluster that knows Deployments and pods,
a fake Docker, a fake publisher. Several services, failures in one, rollback, undo."""

from __future__ import annotations

import io
import json
import shutil
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from devloop import config
from devloop.engine import Engine, ServiceResult
from devloop.errors import CommandFailed, CycleFailed
from devloop.output import Output
from devloop.plan import Plan, ServiceChange, everything
from devloop.proc import DEFAULT, live_children
from tests.unit.fakes import FakeCluster, FakeDocker, FakeKind, FakePublisher, make_engine

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    root = tmp_path / "shop"
    shutil.copytree(REPO / "examples" / "shop", root)
    shutil.copy(REPO / "kind-config.yaml", tmp_path / "kind-config.yaml")
    (root / "devloop.yaml").write_text((root / "devloop.yaml").read_text().replace("../../kind-config.yaml", "../kind-config.yaml"))
    return root


class World:
    def __init__(self, root: Path, text: str | None = None, kind: FakeKind | None = None, cluster: FakeCluster | None = None) -> None:
        if text is not None:
            (root / "devloop.yaml").write_text(text)
        self.root = root
        self.cluster = cluster or FakeCluster()
        self.docker = FakeDocker()
        self.publisher = FakePublisher()
        self.buf = io.StringIO()
        self.engine = make_engine(
            config.load(None, root),
            Output(json_mode=True, stdout=self.buf),
            images=self.docker,
            kube=self.cluster,
            publisher=self.publisher,
            kind=kind,
        )

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in map(json.loads, self.buf.getvalue().splitlines()) if e["event"] == kind]

    def save(self, service: str, rel: str, old: str, new: str) -> list[ServiceResult]:
        path = Path(self.engine.config.service(service).built.context) / rel
        path.write_text(path.read_text().replace(old, new))
        return run(self.engine, [ServiceChange(service, rebuild=True, image_files=(rel,), reason="image source changed")])


def run(engine: Engine, changes: list[ServiceChange]) -> list[ServiceResult]:
    return engine.run(Plan(services=tuple(changes)))


def by_service(results: list[ServiceResult]) -> dict[str, ServiceResult]:
    return {r.service: r for r in results}


def test_up_builds_publishes_and_rolls_out_every_service(shop: Path) -> None:
    w = World(shop)
    results = by_service(w.engine.up())
    assert set(results) == {"web", "api", "worker"} and all(r.ok for r in results.values())
    assert sorted(t.split(":")[0] for t in w.docker.builds) == ["shop-api", "shop-web", "shop-worker"]
    for name in ("web", "api", "worker"):
        d = w.cluster.deployments[("default", name)]
        assert d.image == str(results[name].image) and d.image.startswith(f"localhost:5001/shop-{name}:dl-")
    done = w.events("cycle_done")
    assert {e["service"] for e in done} == {"web", "api", "worker"} and len(w.events("cycle_start")) == 1


def test_up_from_nothing_builds_and_pushes_while_the_cluster_is_created(shop: Path) -> None:
    kind = FakeKind(clusters=())
    w = World(shop, kind=kind)
    results = by_service(w.engine.up())
    assert kind.created == [w.engine.config.cluster.name] and all(r.ok for r in results.values())
    assert len(w.docker.builds) == 3 and len(w.publisher.pushed) == 3  # each image built and pushed once
    assert all(r.built and r.published for r in results.values())  # by this `up`, beside the creation
    (said,) = [e for e in w.events("info") if e["message"].startswith("cluster created in")]
    assert "every image built and pushed" in said["message"]


def test_a_shared_manifests_directory_applies_each_deployment_only_with_its_own_service(tmp_path: Path, shop: Path) -> None:
    text = (
        (shop / "devloop.yaml")
        .read_text()
        .replace("manifests: [k8s/web.yaml]", "manifests: [k8s]")
        .replace("manifests: [k8s/api.yaml]", "manifests: [k8s]")
    )
    w = World(shop, text)
    w.engine.up()
    applied = {names_ns[1][0] if names_ns[1] else "" for names_ns in w.cluster.applies}
    deployments_per_apply = [[n for n in names if n.startswith("Deployment/")] for _, names in w.cluster.applies]
    assert sorted(map(tuple, deployments_per_apply)) == [("Deployment/api",), ("Deployment/web",), ("Deployment/worker",)]
    assert applied  # every apply carried objects


def test_an_edit_to_one_service_rolls_only_that_service(shop: Path) -> None:
    w = World(shop)
    w.engine.up()
    web_pods = [p["metadata"]["name"] for p in w.cluster.deployments[("default", "web")].pods]
    results = w.save("api", "server.js", "api v1", "api v2")
    assert [r.service for r in results] == ["api"] and results[0].ok
    assert [p["metadata"]["name"] for p in w.cluster.deployments[("default", "web")].pods] == web_pods


def test_a_failing_build_in_one_service_leaves_the_others_rolling_out(shop: Path) -> None:
    w = World(shop)
    w.engine.up()
    before_worker = w.cluster.deployments[("default", "worker")].image
    w.docker.failing["shop-worker"] = CycleFailed("build", "RUN npm ci failed", "fix it")
    for svc in ("web", "api", "worker"):
        ctx = Path(w.engine.config.service(svc).built.context) / "server.js"
        ctx.write_text(ctx.read_text() + "\n// v2\n")
    results = by_service(w.engine.run(everything(w.engine.layouts(), "edit")))
    assert results["web"].ok and results["api"].ok
    assert not results["worker"].ok and results["worker"].error is not None and results["worker"].error.phase == "build"
    assert w.cluster.deployments[("default", "worker")].image == before_worker
    failed = [e for e in w.events("cycle_done") if not e["ok"]]
    assert [e["service"] for e in failed] == ["worker"] and "RUN npm ci failed" in failed[0]["error"]["message"]


def test_unchanged_content_is_skipped_and_nothing_is_applied(shop: Path) -> None:
    w = World(shop)
    w.engine.up()
    applies = len(w.cluster.applies)
    results = run(w.engine, [ServiceChange("api", rebuild=True, image_files=("README.md",))])
    assert results[0].skipped and len(w.cluster.applies) == applies


def crash(w: World, service: str) -> None:
    """Make the next image of this service crash (its content tag is computed after the edit)."""
    svc = w.engine.config.service(service)
    w.cluster.crashing.add(w.engine.image_ref(svc).cluster)


def test_without_readiness_probes_a_crashing_version_is_rolled_back_and_serves_again(sample_copy: Path) -> None:
    deployment = sample_copy / "sample-app" / "k8s" / "deployment.yaml"
    text = deployment.read_text()
    deployment.write_text(text[: text.index("          readinessProbe:")])  # the seed's manifest: no probes
    w = World(sample_copy)
    good = str(by_service(w.engine.up())["web-app"].image)
    server = sample_copy / "sample-app" / "server.js"
    server.write_text(server.read_text() + "\nconst x = ;\n")
    crash(w, "web-app")
    result = run(w.engine, [ServiceChange("web-app", rebuild=True, image_files=("server.js",))])[0]
    assert not result.ok and result.error is not None and result.error.phase == "rollout"
    assert result.outcome.startswith("rolled back to ") and "serves again (3/3" in result.outcome
    assert w.cluster.serving("web-app") == [good] * 3
    assert w.cluster.undos == [("web-app", "1")]
    warning = [e["message"] for e in w.events("warning")]
    assert any("no readinessProbe" in m for m in warning)


def test_with_readiness_probes_kubernetes_keeps_the_old_version_and_undo_applies_it_again(sample_copy: Path) -> None:
    w = World(sample_copy)
    good = str(by_service(w.engine.up())["web-app"].image)
    server = sample_copy / "sample-app" / "server.js"
    original = server.read_text()
    server.write_text(original + "\nconst x = ;\n")
    crash(w, "web-app")
    result = run(w.engine, [ServiceChange("web-app", rebuild=True, image_files=("server.js",))])[0]
    assert not result.ok and "keeps serving (3/3 ready pods run it" in result.outcome
    assert w.cluster.undos == []
    # the editor's undo: exactly the last good content again. The cluster still runs the broken
    # version beside the old pods, so this is not "unchanged": the good version is applied again.
    server.write_text(original)
    again = run(w.engine, [ServiceChange("web-app", rebuild=True, image_files=("server.js",))])[0]
    assert again.ok and not again.skipped
    assert w.cluster.deployments[("default", "web-app")].image == good and w.cluster.serving("web-app") == [good] * 3


def test_on_failure_keep_leaves_the_broken_version_applied(sample_copy: Path) -> None:
    deployment = sample_copy / "sample-app" / "k8s" / "deployment.yaml"
    text = deployment.read_text()
    deployment.write_text(text[: text.index("          readinessProbe:")])
    w = World(sample_copy, "deploy: {onFailure: keep}\n")
    w.engine.up()
    server = sample_copy / "sample-app" / "server.js"
    server.write_text(server.read_text() + "\nconst x = ;\n")
    crash(w, "web-app")
    result = run(w.engine, [ServiceChange("web-app", rebuild=True, image_files=("server.js",))])[0]
    assert not result.ok and "onFailure is keep: only 0/3" in result.outcome and w.cluster.undos == []


def test_a_crash_excerpt_names_the_error_line(sample_copy: Path) -> None:
    w = World(sample_copy)
    w.engine.up()
    server = sample_copy / "sample-app" / "server.js"
    server.write_text(server.read_text() + "\nconst x = ;\n")
    crash(w, "web-app")
    run(w.engine, [ServiceChange("web-app", rebuild=True, image_files=("server.js",))])
    failed = next(e for e in w.events("cycle_done") if not e["ok"])
    assert any("SyntaxError" in line for line in failed["error"]["details"])


def test_namespace_comes_from_the_manifest_for_rollout_logs_and_forwards(sample_copy: Path) -> None:
    deployment = sample_copy / "sample-app" / "k8s" / "deployment.yaml"
    deployment.write_text(deployment.read_text().replace("  name: web-app\n", "  name: web-app\n  namespace: shop\n", 1))
    w = World(sample_copy)
    assert w.engine.namespace(w.engine.config.services[0]) == "shop"
    w.engine.up()
    assert ("shop", "web-app") in w.cluster.deployments


def test_a_live_update_syncs_into_every_ready_pod(sample_copy: Path) -> None:
    w = World(sample_copy, "liveUpdate: {enabled: true}\n")
    w.engine.up()
    server = sample_copy / "sample-app" / "server.js"
    server.write_text(server.read_text().replace("sample-app v1", "sample-app v2"))
    r = run(w.engine, [ServiceChange("web-app", sync=("server.js",), image_files=("server.js",))])[0]
    assert r.ok and r.synced and len(w.cluster.execs) == 3
    # the same content again: the pods run it already
    assert run(w.engine, [ServiceChange("web-app", rebuild=True, image_files=("server.js",))])[0].skipped


def test_a_crash_excerpt_starts_at_the_thrown_error_not_the_stack_tail() -> None:
    from devloop.rollout import log_excerpt

    node = [
        "/app/server.js:1",
        "throw new Error('release 1.0.1 cannot start');",
        "^",
        "",
        "Error: release 1.0.1 cannot start",
        *[f"    at frame{i} (node:internal/modules/cjs/loader:{i})" for i in range(10)],
        "",
        "Node.js v18.20.4",
    ]
    excerpt = log_excerpt(node)
    assert "Error: release 1.0.1 cannot start" in excerpt and excerpt[0] == "/app/server.js:1"
    assert log_excerpt(["listening", "TypeError: x is not a function", "  at y"])[1] == "TypeError: x is not a function"


def test_up_from_nothing_says_which_images_failed_beside_the_creation_and_not_every_image_built(shop: Path) -> None:
    kind = FakeKind(clusters=())
    w = World(shop, kind=kind)
    w.docker.failing["shop-worker"] = CycleFailed("build", "RUN npm ci failed", "fix it")
    results = by_service(w.engine.up())
    (said,) = [e for e in w.events("info") if e["message"].startswith("cluster created in")]
    assert "every image" not in said["message"]
    assert "web, api built and pushed" in said["message"] or "api, web built and pushed" in said["message"]
    assert "worker failed to build; the first cycle tries it again" in said["message"]
    assert said["images"]["worker"] == "failed to build" and said["images"]["web"] == "built and pushed"
    assert len(w.publisher.pushed) == 2  # the images after the failing one were still built and pushed beside the creation
    assert not results["worker"].ok and results["worker"].error is not None and results["worker"].error.phase == "build"


class SlowKind(FakeKind):
    """kind as `kind create cluster` behaves: its node container exists at once (the cluster is listed,
    half made), then a real child process runs for a while. Records whether that child finished or was stopped."""

    def __init__(self) -> None:
        super().__init__(clusters=())
        self.running = threading.Event()
        self.outcome = ""
        self.deleted: list[str] = []

    def create(self, name: str, config: Path, image: str = "", wait: str = "120s") -> None:
        self.clusters.append(name)
        self.running.set()
        try:
            DEFAULT.run(["sleep", "20"])  # kind's creation: devloop's own runner, as the real adapter's
        except CommandFailed:
            self.outcome = "stopped"
            raise
        self.outcome = "finished"
        self.created.append(name)

    def delete(self, name: str) -> None:
        self.deleted.append(name)
        super().delete(name)


def test_ctrl_c_while_up_creates_the_cluster_stops_kind_at_once_and_deletes_the_half_made_cluster(shop: Path) -> None:
    kind = SlowKind()
    w = World(shop, kind=kind)
    main = threading.get_ident()

    def ctrl_c_once_kind_runs() -> None:
        kind.running.wait(60)
        signal.pthread_kill(main, signal.SIGINT)  # the terminal's Ctrl-C, taken by the main thread

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Thread(target=ctrl_c_once_kind_runs, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            w.engine.up()
    finally:
        signal.signal(signal.SIGINT, previous)

    assert kind.outcome == "stopped"  # devloop did not wait for kind to finish the cluster
    assert live_children() == 0
    assert kind.deleted == ["devloop"] and kind.clusters == []
    said = [e["message"] for e in w.events("info")]
    assert "deleted the half-created kind cluster 'devloop'" in said
    assert not any(m.startswith("cluster created in") for m in said)


class Ticks:
    """A clock that moves one second each time it is read: a rollout's waits cost no real time."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def unschedulable_edit(sample_copy: Path, scheduler: str) -> tuple[World, Ticks, ServiceResult]:
    w = World(sample_copy)
    good = str(by_service(w.engine.up())["web-app"].image)
    clock = w.engine.rollout.clock = Ticks()
    server = sample_copy / "sample-app" / "server.js"
    server.write_text(server.read_text() + "\n// v2\n")
    w.cluster.unschedulable[w.engine.image_ref(w.engine.config.service("web-app")).cluster] = scheduler
    result = run(w.engine, [ServiceChange("web-app", rebuild=True, image_files=("server.js",))])[0]
    assert not result.ok and result.error is not None and result.error.phase == "rollout"
    assert w.cluster.serving("web-app") == [good] * 3  # the old pods keep serving
    return w, clock, result


def test_a_pod_no_node_has_room_for_fails_the_rollout_at_once_with_the_fix(sample_copy: Path) -> None:
    scheduler = "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: 1 No preemption victims found."
    w, clock, result = unschedulable_edit(sample_copy, scheduler)
    assert result.error is not None
    assert "cannot be scheduled: 0/1 nodes are available: 1 Insufficient cpu" in result.error.message
    assert "lower resources.requests in the manifest" in result.error.hint and "fewer replicas" in result.error.hint
    assert "rolloutTimeout" not in result.error.hint
    timeout = w.engine.config.service("web-app").deploy.rollout_timeout
    assert clock.now < timeout / 3  # named long before the rollout timeout, not at its end


def test_a_pod_the_scheduler_refused_for_another_reason_is_waited_for_until_the_timeout(sample_copy: Path) -> None:
    w, clock, result = unschedulable_edit(sample_copy, "0/1 nodes are available: 1 node(s) had untolerated taint {x: y}.")
    assert result.error is not None and "not ready after" in result.error.message and "rolloutTimeout" in result.error.hint
    assert clock.now >= w.engine.config.service("web-app").deploy.rollout_timeout


def test_an_unschedulable_pod_is_waited_for_while_an_old_pod_is_terminating(sample_copy: Path) -> None:
    w = World(sample_copy)
    w.engine.up()
    old = w.cluster.deployments[("default", "web-app")].pods[0]
    old["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"  # its CPU request is being released
    w.engine.rollout.clock = clock = Ticks()
    server = sample_copy / "sample-app" / "server.js"
    server.write_text(server.read_text() + "\n// v2\n")
    image = w.engine.image_ref(w.engine.config.service("web-app")).cluster
    w.cluster.unschedulable[image] = "0/1 nodes are available: 1 Insufficient cpu."
    result = run(w.engine, [ServiceChange("web-app", rebuild=True, image_files=("server.js",))])[0]
    assert result.error is not None and "not ready after" in result.error.message  # never called unschedulable meanwhile
    assert clock.now >= w.engine.config.service("web-app").deploy.rollout_timeout


def test_a_reload_cycle_names_the_configuration_once_in_its_json_events(shop: Path) -> None:
    w = World(shop)
    w.engine.up()
    w.engine.run(everything(w.engine.layouts(), "configuration changed", ("devloop.yaml",)))
    start = w.events("cycle_start")[-1]
    assert start["files"] == ["devloop.yaml"] and sorted(start["services"]) == ["api", "web", "worker"]
    done = [e for e in w.events("cycle_done") if e["cycle"] == start["cycle"]]
    assert len(done) == 3 and all(e["files"] == ["devloop.yaml"] for e in done)


class CreatedMeanwhile(FakeKind):
    """No cluster when `up` looks; one there when it goes to create it (another terminal's `up`)."""

    def __init__(self) -> None:
        super().__init__(clusters=())
        self.asked = 0

    def exists(self, name: str) -> bool:
        self.asked += 1
        if self.asked > 1 and name not in self.clusters:
            self.clusters.append(name)
        return super().exists(name)


def test_up_does_not_say_it_created_a_cluster_that_was_there_when_it_went_to_create_it(shop: Path) -> None:
    kind = CreatedMeanwhile()
    w = World(shop, kind=kind)
    w.engine.up()
    assert kind.created == []
    (said,) = [e for e in w.events("info") if "meanwhile" in e["message"]]
    assert said["message"].startswith("the cluster existed already") and "every image built and pushed" in said["message"]
