"""The pure rules of devloop.workload: rollout progress, pod failure and readiness, pod events."""

from __future__ import annotations

from typing import Any

import pytest

from devloop.workload import PodEvent, pod_failure, pod_settled, pod_terminating, pod_unschedulable, rollout_progress


def dep(gen: int = 2, observed: int = 2, replicas: int = 3, updated: int = 3, total: int = 3, available: int = 3) -> dict[str, Any]:
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
def test_rollout_progress(d: dict[str, Any], done: bool, text: str) -> None:
    ok, msg = rollout_progress(d)
    assert ok is done and text in msg


def pod(waiting: str | None = None, restarts: int = 0, exit_code: int = 0) -> dict[str, Any]:
    cs: dict[str, Any] = {"name": "web-app", "restartCount": restarts, "state": {}}
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
def test_pod_failure(p: dict[str, Any], expect: str | None) -> None:
    got = pod_failure(p)
    assert (got is None) if expect is None else (got is not None and expect in got)


def test_a_pod_without_probes_is_settled_only_after_it_stayed_up() -> None:
    def pod(started: str, restarts: int = 0) -> dict[str, Any]:
        return {"status": {"containerStatuses": [{"restartCount": restarts, "state": {"running": {"startedAt": started}}}]}}

    now = 1_800_000_000.0  # 2027-01-15T08:00:00Z
    assert pod_settled(pod("2027-01-15T07:59:50Z"), 3.0, now)
    assert not pod_settled(pod("2027-01-15T07:59:59Z"), 3.0, now)  # started a second ago
    assert not pod_settled(pod("2027-01-15T07:59:00Z", restarts=1), 3.0, now)  # it crashed once already
    assert not pod_settled({"status": {"containerStatuses": [{"restartCount": 0, "state": {"waiting": {}}}]}}, 3.0, now)
    assert not pod_settled(pod("2027-01-15T07:59:59.123456789Z"), 3.0, now)  # the node's nanoseconds
    assert pod_settled({"status": {"containerStatuses": [{"restartCount": 0, "state": {"running": {}}}]}}, 3.0, now)  # unknown start


def test_pod_events_from_api_objects() -> None:
    pod = {
        "metadata": {"name": "web-1", "creationTimestamp": "2026-11-28T13:00:00Z"},
        "spec": {"containers": [{"image": "localhost:5001/web:dl-1"}]},
        "status": {"podIP": "10.244.1.5", "conditions": [{"type": "Ready", "status": "True"}], "containerStatuses": [{"restartCount": 2}]},
    }
    assert PodEvent.of(pod) == PodEvent("web-1", 2, ("localhost:5001/web:dl-1",), False, True, "2026-11-28T13:00:00Z", "10.244.1.5")
    gone = PodEvent.of(pod, deleted=True)
    assert gone is not None and gone.deleting and not gone.ready
    assert PodEvent.of({"metadata": {}}) is None


def _scheduled(status: str, reason: str = "", message: str = "") -> dict[str, Any]:
    return {
        "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": status, "reason": reason, "message": message}]}
    }


def test_only_a_lack_of_room_the_scheduler_reported_makes_a_pod_unschedulable() -> None:
    said = "0/1 nodes are available: 1 Insufficient cpu, 1 Insufficient memory."
    assert pod_unschedulable(_scheduled("False", "Unschedulable", said)) == said
    assert pod_unschedulable(_scheduled("False", "Unschedulable", "0/1 nodes are available: 1 Too many pods.")) is not None
    assert pod_unschedulable(_scheduled("False", "Unschedulable", "0/1 nodes are available: 1 node(s) had untolerated taint.")) is None
    assert pod_unschedulable(_scheduled("True")) is None and pod_unschedulable({"status": {"phase": "Pending"}}) is None
    leaving = _scheduled("False", "Unschedulable", said) | {"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}}
    assert pod_unschedulable(leaving) is None and pod_terminating(leaving)
