"""Workload kinds: what "rolled out" means for each kind of workload a service's manifests hold,
one small class per kind behind the `WorkloadKind` protocol. Pure: rules over the objects as the API
returns them, no I/O (rollout.py asks the cluster and applies these rules).

| kind        | waited for until                                              | a failed rollout            |
|-------------|---------------------------------------------------------------|-----------------------------|
| Deployment  | every replica updated and available (`kubectl rollout status`) | rolled back when needed     |
| StatefulSet | the update revision is current, every replica ready           | rolled back when needed     |
| DaemonSet   | every scheduled pod updated and available                     | rolled back when needed     |
| Job         | it completed (a changed Job is replaced: its template is immutable) | no rollback: it failed  |
| CronJob     | applied only (its Jobs run on its schedule)                   | –                           |
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from devloop.ports import Cluster
from devloop.workload import rollout_progress

SPEC_HASH = "devloop.dev/spec-hash"  # on a Job devloop applied: the hash of its spec, to see a change


def _int(v: Any, default: int = 0) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return default


def _observed(obj: Mapping[str, Any]) -> bool:
    return _int(obj.get("metadata", {}).get("generation")) <= _int(obj.get("status", {}).get("observedGeneration"))


def _condition(obj: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for c in obj.get("status", {}).get("conditions") or []:
        if c.get("type") == kind and c.get("status") == "True":
            return dict(c)
    return None


class WorkloadKind(Protocol):
    kind: str  # as manifests say it: Deployment
    resource: str  # as the API client names it: deployment
    waits: bool  # devloop waits for it after applying (a CronJob: no)
    rolls_back: bool  # a failed rollout can be undone (a Job: no, it ran)
    replaced: bool  # a changed one is deleted and created again (a Job's pod template is immutable)

    def progress(self, obj: Mapping[str, Any]) -> tuple[bool, str]:
        """(done, what it waits for), from the live object."""
        ...

    def failure(self, obj: Mapping[str, Any]) -> str | None:
        """Why the workload itself says it failed (a Job's Failed condition), or None."""
        ...

    def replicas(self, obj: Mapping[str, Any]) -> int:
        """How many ready pods serve when it is rolled out."""
        ...


class Deployment:
    kind, resource, waits, rolls_back, replaced = "Deployment", "deployment", True, True, False

    def progress(self, obj: Mapping[str, Any]) -> tuple[bool, str]:
        return rollout_progress(obj)

    def failure(self, obj: Mapping[str, Any]) -> str | None:
        return None

    def replicas(self, obj: Mapping[str, Any]) -> int:
        return _int(obj.get("spec", {}).get("replicas", 1), 1)


class StatefulSet:
    """As `kubectl rollout status statefulset` judges it: the controller has seen the spec, every
    replica is ready, and (RollingUpdate) the update revision is the current one, or with a partition
    every ordinal at or above it runs the update revision."""

    kind, resource, waits, rolls_back, replaced = "StatefulSet", "statefulset", True, True, False

    def progress(self, obj: Mapping[str, Any]) -> tuple[bool, str]:
        spec, status = obj.get("spec", {}), obj.get("status", {})
        if not _observed(obj):
            return False, "waiting for the statefulset spec update to be observed"
        want = self.replicas(obj)
        ready = _int(status.get("readyReplicas"))
        if ready < want:
            return False, f"{ready} of {want} pods ready"
        strategy = spec.get("updateStrategy") or {}
        if strategy.get("type", "RollingUpdate") == "RollingUpdate":
            partition = _int((strategy.get("rollingUpdate") or {}).get("partition"))
            updated = _int(status.get("updatedReplicas"))
            if partition > 0:
                if updated < want - partition:
                    return False, f"{updated} of {want - partition} pods above the partition updated"
            elif status.get("updateRevision") != status.get("currentRevision"):
                return False, f"{updated} of {want} pods updated"
        return True, f"{ready}/{want} pods ready"

    def failure(self, obj: Mapping[str, Any]) -> str | None:
        return None

    def replicas(self, obj: Mapping[str, Any]) -> int:
        return _int(obj.get("spec", {}).get("replicas", 1), 1)


class DaemonSet:
    """As `kubectl rollout status daemonset`: every node's pod updated and available."""

    kind, resource, waits, rolls_back, replaced = "DaemonSet", "daemonset", True, True, False

    def progress(self, obj: Mapping[str, Any]) -> tuple[bool, str]:
        status = obj.get("status", {})
        if not _observed(obj):
            return False, "waiting for the daemonset spec update to be observed"
        want = _int(status.get("desiredNumberScheduled"))
        updated = _int(status.get("updatedNumberScheduled"))
        available = _int(status.get("numberAvailable"))
        if updated < want:
            return False, f"{updated} of {want} pods updated"
        if available < want:
            return False, f"{available} of {want} updated pods available"
        return True, f"{available}/{want} pods ready"

    def failure(self, obj: Mapping[str, Any]) -> str | None:
        return None

    def replicas(self, obj: Mapping[str, Any]) -> int:
        return _int(obj.get("status", {}).get("desiredNumberScheduled"))


class Job:
    """Done when it completed; failed when Kubernetes says so (backoffLimit, activeDeadlineSeconds)."""

    kind, resource, waits, rolls_back, replaced = "Job", "job", True, False, True

    def progress(self, obj: Mapping[str, Any]) -> tuple[bool, str]:
        status = obj.get("status", {})
        want = _int(obj.get("spec", {}).get("completions", 1), 1)
        succeeded = _int(status.get("succeeded"))
        if _condition(obj, "Complete") is not None:
            return True, f"completed ({succeeded}/{want} succeeded)"
        active, failed = _int(status.get("active")), _int(status.get("failed"))
        return False, f"{succeeded}/{want} completions, {active} running" + (f", {failed} failed" if failed else "")

    def failure(self, obj: Mapping[str, Any]) -> str | None:
        c = _condition(obj, "Failed")
        if c is None:
            return None
        return f"job failed ({c.get('reason') or 'Failed'}: {str(c.get('message') or '').strip()})".replace(": )", ")")

    def replicas(self, obj: Mapping[str, Any]) -> int:
        return 0  # a completed Job serves nothing


class CronJob:
    kind, resource, waits, rolls_back, replaced = "CronJob", "cronjob", False, False, False

    def progress(self, obj: Mapping[str, Any]) -> tuple[bool, str]:
        return True, "applied (it runs on its schedule)"

    def failure(self, obj: Mapping[str, Any]) -> str | None:
        return None

    def replicas(self, obj: Mapping[str, Any]) -> int:
        return 0


KINDS: dict[str, WorkloadKind] = {k.kind: k for k in (Deployment(), StatefulSet(), DaemonSet(), Job(), CronJob())}


def of(kind: str) -> WorkloadKind | None:
    return KINDS.get(kind)


def spec_hash(doc: Mapping[str, Any]) -> str:
    """A short hash of a workload's spec as devloop applies it (its image included)."""
    text = json.dumps(doc.get("spec", {}), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def with_spec_hash(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a Job document carrying its spec hash as an annotation."""
    out = json.loads(json.dumps(doc))
    meta = out.setdefault("metadata", {})
    meta["annotations"] = {**(meta.get("annotations") or {}), SPEC_HASH: spec_hash(doc)}
    return dict(out)


def needs_replacing(live: Mapping[str, Any] | None, doc: Mapping[str, Any]) -> bool:
    """A Job that exists must be deleted before `doc` is applied: its spec changed (its template is
    immutable), or it failed (applying it again means running it again). A completed Job with the
    same spec is left as it is: it is not run again."""
    if live is None:
        return False
    said = (live.get("metadata", {}).get("annotations") or {}).get(SPEC_HASH)
    return said != spec_hash(doc) or Job().failure(live) is not None


def pod_selector(live: Mapping[str, Any]) -> dict[str, str]:
    """The labels of the workload's pods, from the live object (a Job's carry its controller-uid:
    the pods of a Job it replaced are not counted)."""
    labels = live.get("spec", {}).get("selector", {}).get("matchLabels") or {}
    return {str(k): str(v) for k, v in labels.items()}


def replace_changed(kube: Cluster, docs: Sequence[Mapping[str, Any]], namespace: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The documents to apply, each Job carrying its spec hash; a Job that exists and must be run
    again (`needs_replacing`) is deleted first, and waited for until it is gone. Returns (the
    documents, what was deleted as kubectl says it)."""
    out: list[dict[str, Any]] = []
    deleted: list[str] = []
    for doc in docs:
        kind = of(str(doc.get("kind", "")))
        if kind is None or not kind.replaced:
            out.append(dict(doc))
            continue
        marked = with_spec_hash(doc)
        meta = doc.get("metadata") or {}
        ns = str(meta.get("namespace") or namespace)
        if needs_replacing(kube.get(kind.resource, str(meta.get("name", "")), ns), doc):
            gone = {"apiVersion": doc.get("apiVersion"), "kind": doc.get("kind"), "metadata": {"name": meta.get("name"), "namespace": ns}}
            deleted += kube.delete([gone], ns)
        out.append(marked)
    return out, deleted
