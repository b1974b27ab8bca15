"""What "rolled out" means per workload kind (kinds.py): tables of objects as the API returns them."""

from __future__ import annotations

from typing import Any

import pytest

from devloop import kinds
from tests.unit.fakes import FakeCluster


def sts(
    gen: int = 2, observed: int = 2, replicas: int = 3, ready: int = 3, updated: int = 3, cur: str = "r2", upd: str = "r2", **extra: Any
) -> dict[str, Any]:
    return {
        "metadata": {"generation": gen},
        "spec": {"replicas": replicas, **extra},
        "status": {
            "observedGeneration": observed,
            "readyReplicas": ready,
            "updatedReplicas": updated,
            "currentRevision": cur,
            "updateRevision": upd,
        },
    }


@pytest.mark.parametrize(
    ("obj", "done", "says"),
    [
        (sts(), True, "3/3 pods ready"),
        (sts(gen=3), False, "spec update to be observed"),
        (sts(ready=2), False, "2 of 3 pods ready"),
        # every pod ready, but the newest ordinal still runs the old revision: not done (kubectl agrees)
        (sts(updated=2, cur="r1"), False, "2 of 3 pods updated"),
        (sts(updated=1, cur="r1", updateStrategy={"type": "RollingUpdate", "rollingUpdate": {"partition": 2}}), True, "3/3"),
        (
            sts(updated=0, cur="r1", updateStrategy={"type": "RollingUpdate", "rollingUpdate": {"partition": 2}}),
            False,
            "above the partition",
        ),
        (sts(updated=0, cur="r1", updateStrategy={"type": "OnDelete"}), True, "3/3"),
    ],
)
def test_statefulset_is_done_when_its_update_revision_is_current_and_every_pod_ready(obj: dict[str, Any], done: bool, says: str) -> None:
    got, message = kinds.StatefulSet().progress(obj)
    assert got is done and says in message


def ds(desired: int = 2, updated: int = 2, available: int = 2, gen: int = 1) -> dict[str, Any]:
    return {
        "metadata": {"generation": gen},
        "status": {
            "observedGeneration": 1,
            "desiredNumberScheduled": desired,
            "updatedNumberScheduled": updated,
            "numberAvailable": available,
        },
    }


@pytest.mark.parametrize(
    ("obj", "done", "says"),
    [
        (ds(), True, "2/2 pods ready"),
        (ds(updated=1), False, "1 of 2 pods updated"),
        (ds(available=1), False, "1 of 2 updated pods available"),
        (ds(gen=2), False, "observed"),
    ],
)
def test_daemonset_is_done_when_every_scheduled_pod_is_updated_and_available(obj: dict[str, Any], done: bool, says: str) -> None:
    got, message = kinds.DaemonSet().progress(obj)
    assert got is done and says in message


def job(*conditions: tuple[str, str, str], succeeded: int = 0, active: int = 0, failed: int = 0) -> dict[str, Any]:
    return {
        "metadata": {"name": "migrate"},
        "spec": {"completions": 1},
        "status": {
            "succeeded": succeeded,
            "active": active,
            "failed": failed,
            "conditions": [{"type": t, "status": "True", "reason": r, "message": m} for t, r, m in conditions],
        },
    }


def test_a_job_is_done_when_complete_and_failed_when_kubernetes_gave_up() -> None:
    j = kinds.Job()
    assert j.progress(job(("Complete", "", ""), succeeded=1)) == (True, "completed (1/1 succeeded)")
    assert j.progress(job(active=1, failed=1)) == (False, "0/1 completions, 1 running, 1 failed")
    assert j.failure(job(active=1)) is None
    said = j.failure(job(("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit"), failed=2))
    assert said == "job failed (BackoffLimitExceeded: Job has reached the specified backoff limit)"
    assert j.failure(job(("Failed", "DeadlineExceeded", ""))) == "job failed (DeadlineExceeded)"


def test_a_cronjob_is_applied_and_not_waited_for_and_only_jobs_have_no_rollback() -> None:
    assert not kinds.CronJob().waits
    assert [k for k, v in kinds.KINDS.items() if not v.rolls_back] == ["Job", "CronJob"]
    assert kinds.of("ReplicaSet") is None


JOB = {
    "apiVersion": "batch/v1",
    "kind": "Job",
    "metadata": {"name": "migrate"},
    "spec": {"template": {"spec": {"containers": [{"image": "m:1"}]}}},
}


def live_job(doc: dict[str, Any], *conditions: tuple[str, str, str]) -> dict[str, Any]:
    return {**kinds.with_spec_hash(doc), "status": job(*conditions)["status"]}


def test_a_job_is_replaced_when_its_spec_changed_or_it_failed_and_left_alone_when_it_completed() -> None:
    changed = {**JOB, "spec": {"template": {"spec": {"containers": [{"image": "m:2"}]}}}}
    assert not kinds.needs_replacing(None, JOB)  # new: created by the apply
    assert not kinds.needs_replacing(live_job(JOB, ("Complete", "", "")), JOB)  # ran with this spec: not again
    assert kinds.needs_replacing(live_job(JOB, ("Complete", "", "")), changed)  # a new image: run it again
    assert kinds.needs_replacing(live_job(JOB, ("Failed", "BackoffLimitExceeded", "")), JOB)  # failed: applying means retrying
    assert kinds.needs_replacing({"metadata": {"name": "migrate"}}, JOB)  # not devloop's: its spec is unknown


class JobCluster(FakeCluster):
    def __init__(self, live: dict[str, Any] | None) -> None:
        super().__init__()
        self.live = live
        self.deleted: list[str] = []

    def get(self, resource: str, name: str, namespace: str) -> dict[str, Any] | None:
        return self.live if resource == "job" else None

    def delete(self, docs: Any, namespace: str) -> list[str]:
        self.deleted += [f"{d['kind']}/{d['metadata']['name']}" for d in docs]
        return [f'job.batch "{d["metadata"]["name"]}" deleted' for d in docs]


def test_replace_changed_deletes_only_the_jobs_that_must_run_again_and_marks_every_job() -> None:
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db"}}
    cluster = JobCluster(live_job(JOB, ("Complete", "", "")))
    docs, deleted = kinds.replace_changed(cluster, [service, JOB], "default")
    assert deleted == [] and cluster.deleted == []
    assert docs[0] == service and docs[1]["metadata"]["annotations"][kinds.SPEC_HASH] == kinds.spec_hash(JOB)
    changed = {**JOB, "spec": {"template": {"spec": {"containers": [{"image": "m:2"}]}}}}
    docs, deleted = kinds.replace_changed(cluster, [changed], "default")
    assert cluster.deleted == ["Job/migrate"] and deleted == ['job.batch "migrate" deleted']
