from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from devloop import config
from devloop.errors import ClusterUnavailable
from devloop.kind import Kind
from devloop.kube import Kube
from devloop.output import Output
from devloop.pipeline import Pipeline
from tests.unit.fakes import ANY, FakeImages, FakeRunner

K = ("kubectl", "--context", "kind-devloop")


def deployment(done: bool = True) -> str:
    status = {"observedGeneration": 1, "updatedReplicas": 3 if done else 1, "replicas": 3 if done else 4, "availableReplicas": 3}
    return json.dumps({"metadata": {"generation": 1}, "spec": {"replicas": 3}, "status": status})


def pods(ref: str, *, crash: bool = False) -> str:
    items = []
    for i in range(3):
        cs = {"name": "web-app", "restartCount": 0, "state": {"running": {}}}
        if crash and i == 0:
            cs = {
                "name": "web-app",
                "restartCount": 2,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": 1}},
            }
        items.append(
            {
                "metadata": {"name": f"web-app-{i}"},
                "spec": {"containers": [{"image": ref}]},
                "status": {"conditions": [{"type": "Ready", "status": "False" if crash and i == 0 else "True"}], "containerStatuses": [cs]},
            }
        )
    return json.dumps({"items": items})


def cluster_ok(r: FakeRunner) -> FakeRunner:
    return r.expect("kind", "get", "clusters", stdout="devloop\n").expect(
        *K, "get", "--raw", "/readyz", "--request-timeout", "10s", stdout="ok"
    )


def make(sample_copy: Path, runner: FakeRunner, images: FakeImages, registry: bool = False) -> Pipeline:
    (sample_copy / "devloop.yaml").write_text(f"registry: {{enabled: {str(registry).lower()}}}\n")
    cfg = config.load(None, sample_copy)
    out = Output(json_mode=True, stdout=io.StringIO())
    return Pipeline(cfg, out, images=images, kind=Kind(runner), kube=Kube(cfg.cluster.context, runner))  # type: ignore[arg-type]


def test_up_builds_loads_applies_and_waits(sample_copy: Path) -> None:
    runner = FakeRunner()
    images = FakeImages()
    p = make(sample_copy, runner, images)
    ref = p.image_ref()
    assert ref.startswith("my-web-app:dl-") and len(ref.split(":dl-")[1]) == 16
    cluster_ok(runner)
    runner.expect("kind", "get", "nodes", "--name", "devloop", stdout="devloop-control-plane\n")
    runner.expect("kind", "load", "image-archive", ANY, "--name", "devloop", "--nodes", "devloop-control-plane")
    runner.expect(*K, "apply", "-n", "default", "-f", "-", stdout="deployment.apps/web-app configured\n", input_contains=f"image: {ref}")
    runner.expect(*K, "get", "deployment", "web-app", "-n", "default", "-o", "json", stdout=deployment())
    runner.expect(*K, "get", "pods", "-n", "default", "-l", "app=web-app", "-o", "json", stdout=pods(ref))
    result = p.up()
    runner.done()
    assert result.ok and result.built and result.loaded
    assert images.builds == [ref] and images.saves == [ref]
    assert result.ready_pods == ["web-app-0", "web-app-1", "web-app-2"]
    assert set(result.phases) == {"plan", "build", "load", "deploy", "rollout"}
    applied = runner.inputs[4]
    assert isinstance(applied, str) and "imagePullPolicy: IfNotPresent" in applied and "my-web-app:latest" not in applied


def test_second_up_rebuilds_nothing_and_loads_nothing(sample_copy: Path) -> None:
    runner = FakeRunner()
    images = FakeImages()
    p = make(sample_copy, runner, images)
    ref = p.image_ref()
    images.present.add(ref)
    images.on_nodes["devloop-control-plane"] = {ref}
    cluster_ok(runner)
    runner.expect("kind", "get", "nodes", "--name", "devloop", stdout="devloop-control-plane\n")
    runner.expect(*K, "apply", "-n", "default", "-f", "-", stdout="deployment.apps/web-app unchanged\n")
    runner.expect(*K, "get", "deployment", "web-app", "-n", "default", "-o", "json", stdout=deployment())
    runner.expect(*K, "get", "pods", "-n", "default", "-l", "app=web-app", "-o", "json", stdout=pods(ref))
    result = p.up()
    runner.done()
    assert result.ok and not result.built and not result.loaded
    assert images.builds == [] and images.saves == []


def test_a_source_edit_changes_the_tag_and_a_noop_save_does_not(sample_copy: Path) -> None:
    p = make(sample_copy, FakeRunner(), FakeImages())
    server = sample_copy / "sample-app" / "server.js"
    first = p.image_ref()
    server.write_text(server.read_text())  # same content, new mtime
    assert p.image_ref() == first
    server.write_text(server.read_text() + "\n// edit\n")
    assert p.image_ref() != first
    (sample_copy / "sample-app" / "README.md").write_text("docs only")  # .dockerignore'd
    (sample_copy / "sample-app" / "node_modules").mkdir(exist_ok=True)
    second = p.image_ref()
    (sample_copy / "sample-app" / "README.md").write_text("more docs")
    assert p.image_ref() == second


def test_crash_looping_rollout_fails_with_reason_and_logs(sample_copy: Path) -> None:
    runner = FakeRunner()
    images = FakeImages()
    p = make(sample_copy, runner, images)
    ref = p.image_ref()
    images.present.add(ref)
    images.on_nodes["devloop-control-plane"] = {ref}
    runner.expect("kind", "get", "nodes", "--name", "devloop", stdout="devloop-control-plane\n")
    runner.expect(*K, "apply", "-n", "default", "-f", "-", stdout="deployment.apps/web-app configured\n")
    runner.expect(*K, "get", "deployment", "web-app", "-n", "default", "-o", "json", stdout=deployment(done=False))
    runner.expect(*K, "get", "pods", "-n", "default", "-l", "app=web-app", "-o", "json", stdout=pods(ref, crash=True))
    runner.expect(
        *K, "logs", "web-app-0", "-n", "default", "--tail=40", "--all-containers", "--previous", stdout="SyntaxError: Unexpected token\n"
    )
    runner.expect("kind", "get", "clusters", stdout="devloop\n")  # a failed rollout checks the cluster is still there
    result = p.cycle("image source changed", ("server.js",))
    runner.done()
    assert not result.ok and result.error is not None
    assert result.error.phase == "rollout"
    assert "CrashLoopBackOff" in result.error.message
    assert any("SyntaxError" in line for line in result.error.details)


def test_unreachable_cluster_is_an_environment_error(sample_copy: Path) -> None:
    runner = FakeRunner().expect("kind", "get", "clusters", stdout="devloop\n")
    runner.expect(*K, "get", "--raw", "/readyz", "--request-timeout", "10s", returncode=1, stderr="connection refused")
    p = make(sample_copy, runner, FakeImages())
    with pytest.raises(ClusterUnavailable) as info:
        p.up()
    assert info.value.exit_code == 3


def test_missing_cluster_is_created_from_kind_config(sample_copy: Path) -> None:
    runner = FakeRunner().expect("kind", "get", "clusters", stdout="")
    runner.expect("kind", "create", "cluster", "--name", "devloop", "--config", str(sample_copy / "kind-config.yaml"), "--wait", "120s")
    p = make(sample_copy, runner, FakeImages())
    assert p.ensure_cluster() is True
    runner.done()


class FakeRegistry:
    def __init__(self) -> None:
        self.pushed: list[str] = []
        self.held: set[str] = set()

    def ref(self, local: str) -> str:
        return f"localhost:5001/{local}"

    def has(self, local: str) -> bool:
        return local in self.held

    def push(self, local: str) -> str:
        self.pushed.append(local)
        self.held.add(local)
        return self.ref(local)


def test_with_the_local_registry_images_are_pushed_and_manifests_name_the_registry(sample_copy: Path) -> None:
    runner = FakeRunner()
    images = FakeImages()
    p = make(sample_copy, runner, images, registry=True)
    fake = FakeRegistry()
    p.registry = fake  # type: ignore[assignment]
    local = p.image_ref()
    remote = f"localhost:5001/{local}"
    for _ in range(2):
        runner.expect(
            *K, "apply", "-n", "default", "-f", "-", stdout="deployment.apps/web-app configured\n", input_contains=f"image: {remote}"
        )
        runner.expect(*K, "get", "deployment", "web-app", "-n", "default", "-o", "json", stdout=deployment())
        runner.expect(*K, "get", "pods", "-n", "default", "-l", "app=web-app", "-o", "json", stdout=pods(remote))
    first = p.cycle("up", force_apply=True)
    second = p.cycle("up", force_apply=True)
    runner.done()
    assert first.ok and first.loaded and first.image == remote
    assert second.ok and not second.loaded and not second.built
    assert fake.pushed == [local]
    assert images.saves == []  # never a whole-image save with a registry


def test_registry_is_on_when_the_kind_config_prepares_containerd(sample_copy: Path) -> None:
    assert config.load(None, sample_copy).registry.enabled  # the repo's kind-config.yaml has the patch
    (sample_copy / "kind-config.yaml").write_text("kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\n")
    assert not config.load(None, sample_copy).registry.enabled


def test_rollout_that_never_becomes_ready_fails_at_the_deadline(sample_copy: Path) -> None:
    runner = FakeRunner()
    images = FakeImages()
    now = [0.0]
    p = make(sample_copy, runner, images)
    p.clock = lambda: now[0]
    p._stop.wait = lambda timeout: (now.__setitem__(0, now[0] + 100.0), False)[1]  # type: ignore[method-assign]
    ref = p.image_ref()
    images.present.add(ref)
    images.on_nodes["devloop-control-plane"] = {ref}
    runner.expect("kind", "get", "nodes", "--name", "devloop", stdout="devloop-control-plane\n")
    runner.expect(*K, "apply", "-n", "default", "-f", "-", stdout="deployment.apps/web-app configured\n")
    for _ in range(3):  # polls until the 180 s deadline passes on the injected clock
        runner.expect(*K, "get", "deployment", "web-app", "-n", "default", "-o", "json", stdout=deployment(done=False))
        runner.expect(*K, "get", "pods", "-n", "default", "-l", "app=web-app", "-o", "json", stdout=pods("other:old"))
    runner.expect("kind", "get", "clusters", stdout="devloop\n")
    result = p.cycle("image source changed", ("server.js",))
    runner.done()
    assert result.error is not None and result.error.phase == "rollout"
    assert "not ready after 180s" in result.error.message


def test_a_deleted_cluster_is_reported_and_recreated_on_the_next_cycle(sample_copy: Path) -> None:
    runner = FakeRunner()
    images = FakeImages()
    p = make(sample_copy, runner, images)
    ref = p.image_ref()
    images.present.add(ref)
    runner.expect("kind", "get", "nodes", "--name", "devloop", returncode=1, stderr="ERROR: no nodes found for cluster")
    runner.expect("kind", "get", "clusters", stdout="")
    failed = p.cycle("image source changed", ("server.js",))
    assert failed.error is not None and "kind cluster 'devloop' is gone" in failed.error.message
    assert "next save" in failed.error.hint
    # the next save recreates it and deploys again, even though the sources did not change
    runner.expect("kind", "get", "clusters", stdout="")
    runner.expect("kind", "create", "cluster", "--name", "devloop", "--config", str(sample_copy / "kind-config.yaml"), "--wait", "120s")
    runner.expect("kind", "get", "nodes", "--name", "devloop", stdout="devloop-control-plane\n")
    runner.expect("kind", "load", "image-archive", ANY, "--name", "devloop", "--nodes", "devloop-control-plane")
    runner.expect(*K, "apply", "-n", "default", "-f", "-", stdout="deployment.apps/web-app created\n")
    runner.expect(*K, "get", "deployment", "web-app", "-n", "default", "-o", "json", stdout=deployment())
    runner.expect(*K, "get", "pods", "-n", "default", "-l", "app=web-app", "-o", "json", stdout=pods(ref))
    recovered = p.cycle("image source changed", ("server.js",))
    runner.done()
    assert recovered.ok and recovered.loaded and "cluster" in recovered.phases


def test_log_excerpt_keeps_the_error_and_what_led_to_it() -> None:
    from devloop.pipeline import log_excerpt

    crash = [
        "> sample-app@1.0.0 start",
        "> node server.js",
        "/app/server.js:7",
        "const MESSAGE = = 'x';",
        "                ^",
        "SyntaxError: Unexpected token '='",
        *[f"    at frame {i}" for i in range(20)],
        "Node.js v18.20.4",
    ]
    out = log_excerpt(crash)
    assert "SyntaxError: Unexpected token '='" in out and "/app/server.js:7" in out
    assert len(out) == 8
    assert log_excerpt(["a", "b", "c"], size=2) == ["b", "c"]


def test_live_update_wraps_the_configured_command_in_the_restart_loop(sample_copy: Path) -> None:
    runner = FakeRunner()
    p = make(sample_copy, runner, FakeImages())
    (sample_copy / "devloop.yaml").write_text("registry: {enabled: false}\nliveUpdate: {enabled: true, command: [node, server.js]}\n")
    p.config = config.load(None, sample_copy)
    docs, _ = p.load_manifests()
    runner.expect(*K, "apply", "-n", "default", "-f", "-", stdout="deployment.apps/web-app configured\n")
    p.deploy(docs, "my-web-app:dl-1", "my-web-app:dl-1")
    import yaml

    applied = next(d for d in yaml.safe_load_all(runner.inputs[0]) if d["kind"] == "Deployment")  # type: ignore[arg-type]
    c = applied["spec"]["template"]["spec"]["containers"][0]
    assert c["command"][:2] == ["/bin/sh", "-c"] and c["command"][3] == "devloop-supervisor"
    assert c["args"] == ["node", "server.js"]
    assert (
        "command"
        not in yaml.safe_load((sample_copy / "sample-app" / "k8s" / "deployment.yaml").read_text())["spec"]["template"]["spec"][
            "containers"
        ][0]
    )


def test_paths_with_spaces_and_shell_metacharacters_stay_one_argument(tmp_path: Path, repo: Path) -> None:
    import shutil

    root = tmp_path / "my proj; rm -rf ~ $(x)"
    shutil.copytree(repo / "sample-app", root / "sample-app", ignore=shutil.ignore_patterns("node_modules"))
    shutil.copy(repo / "kind-config.yaml", root / "kind config.yaml")
    (root / "devloop.yaml").write_text("cluster: {kindConfig: kind config.yaml}\nregistry: {enabled: false}\n")
    runner = FakeRunner().expect("kind", "get", "clusters", stdout="")
    runner.expect("kind", "create", "cluster", "--name", "devloop", "--config", str(root / "kind config.yaml"), "--wait", "120s")
    cfg = config.load(None, root)
    p = Pipeline(
        cfg, Output(json_mode=True, stdout=io.StringIO()), images=FakeImages(), kind=Kind(runner), kube=Kube(cfg.cluster.context, runner)
    )  # type: ignore[arg-type]
    assert p.ensure_cluster()
    runner.done()
