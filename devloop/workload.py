"""What devloop reads from pods and Deployments: pure rules and value types, no I/O.

A pod's readiness, failure and images, why it is still pending, whether it has settled, and a
Deployment's rollout progress (as `kubectl rollout status` judges it), all from the objects as the
API returns them; and `PodEvent`, the typed event a pod watch delivers."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from devloop.timefmt import parse_time

FAILING_WAIT_REASONS = {
    "CrashLoopBackOff",
    "ErrImagePull",
    "ImagePullBackOff",
    "ErrImageNeverPull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
}


@dataclass(frozen=True)
class PodEvent:
    name: str
    restarts: int
    images: tuple[str, ...]
    deleting: bool
    ready: bool = False  # the Ready condition is True (and the pod is not being deleted)
    created: str = ""  # metadata.creationTimestamp (RFC 3339: sorts as time)
    ip: str = ""
    running: bool = False  # every container has started (its app may not listen yet)

    @classmethod
    def of(cls, pod: Mapping[str, Any], deleted: bool = False) -> PodEvent | None:
        """The event for a pod object as the API returns it (`deleted`: a watch's DELETED event)."""
        name = pod_name(pod)
        if name == "?":
            return None
        meta = pod.get("metadata", {})
        status = pod.get("status", {})
        gone = deleted or bool(meta.get("deletionTimestamp"))
        return cls(
            name,
            sum(int(cs.get("restartCount", 0)) for cs in status.get("containerStatuses") or []),
            tuple(pod_images(pod)),
            gone,
            pod_ready(pod) and not gone,
            str(meta.get("creationTimestamp", "")),
            str(status.get("podIP", "") or ""),
            bool(status.get("containerStatuses")) and all("running" in (cs.get("state") or {}) for cs in status["containerStatuses"]),
        )


def selector_arg(labels: Mapping[str, str]) -> str:
    """A label selector (`app=web,tier=front`) for these labels."""
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def rollout_progress(deploy: Mapping[str, Any]) -> tuple[bool, str]:
    """(done, message), following `kubectl rollout status` for Deployments."""
    meta = deploy.get("metadata", {})
    spec = deploy.get("spec", {})
    status = deploy.get("status", {})
    want = int(spec.get("replicas", 1))
    if int(meta.get("generation", 0)) > int(status.get("observedGeneration", 0)):
        return False, "waiting for the deployment spec update to be observed"
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            return False, "progress deadline exceeded"
    updated = int(status.get("updatedReplicas", 0))
    total = int(status.get("replicas", 0))
    available = int(status.get("availableReplicas", 0))
    if updated < want:
        return False, f"{updated} of {want} new replicas updated"
    if total > updated:
        return False, f"{total - updated} old replicas pending termination"
    if available < updated:
        return False, f"{available} of {updated} updated replicas available"
    return True, f"{available}/{want} replicas ready"


def pod_failure(pod: Mapping[str, Any]) -> str | None:
    """Why this pod will not become ready by itself, or None while it still may.

    A pod being deleted is leaving, not failing: the crash-looping pod of an undone change stays
    listed (Terminating) for a while after the Deployment has settled on the good version."""
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return None
    for cs in (pod.get("status", {}).get("initContainerStatuses") or []) + (pod.get("status", {}).get("containerStatuses") or []):
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason in FAILING_WAIT_REASONS:
            msg = str(waiting.get("message", "")).strip().splitlines()
            return f"{reason}" + (f": {msg[0][:200]}" if msg else "")
        last = (cs.get("lastState") or {}).get("terminated") or {}
        if int(cs.get("restartCount", 0)) >= 1 and last and int(last.get("exitCode", 0)) != 0:
            return f"container {cs.get('name')} exited with code {last.get('exitCode')} ({last.get('reason', 'Error')}) and is restarting"
    return None


_NO_ROOM = re.compile(r"\bInsufficient [\w./-]+|\bToo many pods\b")


def pod_unschedulable(pod: Mapping[str, Any]) -> str | None:
    """The scheduler's message when it said no node has room for this pod (PodScheduled False,
    reason Unschedulable, "0/1 nodes are available: 1 Insufficient cpu"), else None.

    Only a lack of room counts (CPU, memory, any other requested resource, the node's pod limit):
    a pod the scheduler has not looked at yet, or refused for another reason, is waited for."""
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return None
    for cond in pod.get("status", {}).get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and cond.get("reason") == "Unschedulable":
            message = " ".join(str(cond.get("message", "")).split())
            return message[:300] if _NO_ROOM.search(message) else None
    return None


def pod_terminating(pod: Mapping[str, Any]) -> bool:
    return bool(pod.get("metadata", {}).get("deletionTimestamp"))


def pod_pending_reason(pod: Mapping[str, Any]) -> str:
    """Why a pod is not ready yet, for the message of a rollout that hit its deadline.

    Unschedulable is not a failure by itself: during a rolling update a surge pod waits for the
    old pods' CPU requests to be released (the rollout fails early only when nothing is being
    released: rollout.py, `pod_unschedulable`)."""
    for cond in pod.get("status", {}).get("conditions") or []:
        if cond.get("status") == "False" and cond.get("reason"):
            return f"{cond['reason']}: {str(cond.get('message', '')).strip()[:160]}"
    for cs in pod.get("status", {}).get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason"):
            return str(waiting["reason"])
    return str(pod.get("status", {}).get("phase", "not ready"))


def pod_created(pod: Mapping[str, Any]) -> str:
    """metadata.creationTimestamp (RFC 3339: sorts as time)."""
    return str(pod.get("metadata", {}).get("creationTimestamp", ""))


def pod_state(pod: Mapping[str, Any]) -> str:
    """What a pod is doing, in a few words: its phase and each container's state
    (`Running; migrate: running`, `Failed; migrate: terminated, exit code 1 (Error)`)."""
    status = pod.get("status", {})
    parts = []
    for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        state = cs.get("state") or {}
        if "waiting" in state:
            parts.append(f"{cs.get('name')}: waiting ({state['waiting'].get('reason', '?')})")
        elif "terminated" in state:
            t = state["terminated"]
            parts.append(f"{cs.get('name')}: terminated, exit code {t.get('exitCode', '?')} ({t.get('reason', '?')})")
        elif "running" in state:
            parts.append(f"{cs.get('name')}: running")
    return "; ".join([str(status.get("phase", "Pending")), *parts])


def pod_images(pod: Mapping[str, Any]) -> list[str]:
    return [str(c.get("image")) for c in pod.get("spec", {}).get("containers") or []]


def pod_ready(pod: Mapping[str, Any]) -> bool:
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in pod.get("status", {}).get("conditions") or [])


def pod_settled(pod: Mapping[str, Any], seconds: float, now: float) -> bool:
    """Every container runs, has not restarted, and started at least `seconds` ago (wall clock:
    the node's timestamps). Unknown start times count as settled."""
    for cs in pod.get("status", {}).get("containerStatuses") or []:
        if int(cs.get("restartCount", 0)) > 0:
            return False
        running = (cs.get("state") or {}).get("running")
        if running is None:
            return False
        if now - parse_time(running.get("startedAt"), default=float("-inf")) < seconds:
            return False
    return True


def pod_name(pod: Mapping[str, Any]) -> str:
    return str(pod.get("metadata", {}).get("name", "?"))
