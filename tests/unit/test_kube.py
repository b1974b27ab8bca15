from __future__ import annotations

import json

import pytest

from devloop.errors import StepFailed
from devloop.kind import Kind
from devloop.kube import Kube, pod_failure, rollout_progress
from tests.unit.fakes import FakeRunner


def dep(gen: int = 2, observed: int = 2, replicas: int = 3, updated: int = 3, total: int = 3, available: int = 3) -> dict:
    return {
        "metadata": {"generation": gen},
        "spec": {"replicas": replicas},
        "status": {"observedGeneration": observed, "updatedReplicas": updated, "replicas": total, "availableReplicas": available},
    }


@pytest.mark.parametrize(
    ("d", "done", "text"),
    [
        (dep(), True, "3/3 replicas ready"),
        (dep(gen=3), False, "spec update"),
        (dep(updated=1, total=4, available=3), False, "1 of 3 new replicas"),
        (dep(total=4), False, "1 old replicas pending termination"),
        (dep(available=2), False, "2 of 3 updated replicas available"),
    ],
)
def test_rollout_progress(d: dict, done: bool, text: str) -> None:
    ok, msg = rollout_progress(d)
    assert ok is done and text in msg


def pod(waiting: str | None = None, restarts: int = 0, exit_code: int = 0) -> dict:
    cs: dict = {"name": "web-app", "restartCount": restarts, "state": {}}
    if waiting:
        cs["state"] = {"waiting": {"reason": waiting, "message": "back-off 10s restarting failed container"}}
    if exit_code:
        cs["lastState"] = {"terminated": {"exitCode": exit_code, "reason": "Error"}}
    return {"status": {"containerStatuses": [cs]}}


@pytest.mark.parametrize(
    ("p", "expect"),
    [
        (pod(), None),
        (pod(waiting="ContainerCreating"), None),
        (pod(waiting="CrashLoopBackOff", restarts=2, exit_code=1), "CrashLoopBackOff"),
        (pod(waiting="ErrImagePull"), "ErrImagePull"),
        (pod(waiting="ImagePullBackOff"), "ImagePullBackOff"),
        (pod(restarts=1, exit_code=1), "exited with code 1"),
        ({**pod(waiting="CrashLoopBackOff", restarts=2, exit_code=1), "metadata": {"deletionTimestamp": "2026-11-28T16:00:00Z"}}, None),
    ],
)
def test_pod_failure(p: dict, expect: str | None) -> None:
    got = pod_failure(p)
    assert (got is None) if expect is None else (got is not None and expect in got)


def test_kubectl_always_names_the_context() -> None:
    runner = FakeRunner().expect(
        "kubectl",
        "--context",
        "kind-dev",
        "apply",
        "-n",
        "default",
        "-f",
        "-",
        stdout="deployment.apps/web-app configured\n",
        input_contains="kind: Deployment",
    )
    out = Kube("kind-dev", runner).apply("kind: Deployment\n", "default")
    assert out == ["deployment.apps/web-app configured"]
    runner.done()


def test_failed_apply_is_a_cycle_failure_with_kubectls_reason() -> None:
    runner = FakeRunner().expect(
        "kubectl",
        "--context",
        "kind-dev",
        "apply",
        "-n",
        "default",
        "-f",
        "-",
        returncode=1,
        stderr='error: error validating "STDIN": unknown field "replicaz"\n',
    )
    with pytest.raises(StepFailed, match='unknown field "replicaz"') as info:
        Kube("kind-dev", runner).apply("x", "default")
    assert "fix the manifest" in info.value.hint


def test_get_missing_object_is_none() -> None:
    runner = FakeRunner().expect(
        "kubectl",
        "--context",
        "c",
        "get",
        "deployment",
        "web",
        "-n",
        "ns",
        "-o",
        "json",
        returncode=1,
        stderr='Error from server (NotFound): deployments.apps "web" not found',
    )
    assert Kube("c", runner).get("deployment", "web", "ns") is None


def test_get_parses_json() -> None:
    runner = FakeRunner().expect(
        "kubectl", "--context", "c", "get", "service", "s", "-n", "ns", "-o", "json", stdout=json.dumps({"spec": {"type": "LoadBalancer"}})
    )
    assert Kube("c", runner).get("service", "s", "ns") == {"spec": {"type": "LoadBalancer"}}


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


def test_kind_load_uses_image_archive_not_docker_image(tmp_path) -> None:
    tar = tmp_path / "i.tar"
    runner = FakeRunner().expect("kind", "load", "image-archive", str(tar), "--name", "devloop", "--nodes", "n1,n2")
    Kind(runner).load_archive("devloop", tar, ["n1", "n2"])
    runner.done()


def test_a_pod_without_probes_is_settled_only_after_it_stayed_up() -> None:
    from devloop.kube import pod_settled

    def pod(started: str, restarts: int = 0) -> dict:
        return {"status": {"containerStatuses": [{"restartCount": restarts, "state": {"running": {"startedAt": started}}}]}}

    now = 1_800_000_000.0  # 2027-01-15T08:00:00Z
    assert pod_settled(pod("2027-01-15T07:59:50Z"), 3.0, now)
    assert not pod_settled(pod("2027-01-15T07:59:59Z"), 3.0, now)  # started a second ago
    assert not pod_settled(pod("2027-01-15T07:59:00Z", restarts=1), 3.0, now)  # it crashed once already
    assert not pod_settled({"status": {"containerStatuses": [{"restartCount": 0, "state": {"waiting": {}}}]}}, 3.0, now)
