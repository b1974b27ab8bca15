"""A rollout, watched to its end: wait until the new version is ready, name the pod that fails
and why (with the lines of its log that matter), say what serves (asked, never assumed), and roll
back. One module for `dev`, `up` and `release`: the promises are the same wherever devloop deploys.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable

from devloop.config import ServiceConfig
from devloop.errors import CycleFailed, DevloopError
from devloop.model import ImageRef, ServiceState
from devloop.output import Output
from devloop.ports import Changes, Cluster
from devloop.project import Deployed
from devloop.workload import pod_failure, pod_images, pod_name, pod_pending_reason, pod_ready, pod_settled, rollout_progress

POLL_INTERVAL = 0.5
WATCH_FALLBACK = 2.0  # at most this long between reads of a rollout's state when no watch event comes
SETTLE = 3.0  # seconds a container without a readiness probe must stay up before devloop calls it ready
REVISION = "deployment.kubernetes.io/revision"

_ERROR_LINE = re.compile(r"\b(?:[A-Z]\w*)?(?:Error|Exception)\b|\bERR!|\bpanic:|\bFATAL\b")


def log_excerpt(lines: list[str], size: int = 8) -> list[str]:
    """The lines of a crash log a person needs: the first error line with what led up to it
    (a Node.js SyntaxError prints file:line, the code and a caret before it), else the tail."""
    for i, line in enumerate(lines):
        if _ERROR_LINE.search(line):
            start = max(0, i - 4)
            return lines[start : start + size]
    return lines[-size:]


class Rollout:
    def __init__(self, kube: Cluster, out: Output, clock: Callable[[], float], stop: threading.Event) -> None:
        self.kube = kube
        self.out = out
        self.clock = clock
        self._stop = stop

    def wait_ready(self, svc: ServiceConfig, deployed: Deployed, ref: ImageRef | str) -> tuple[list[str], str]:
        """Wait until the rollout of `ref` (or an image reference as the pods name it) is complete:
        (ready pods, the Deployment's revision)."""
        image = ref if isinstance(ref, str) else ref.cluster
        name, ns = svc.deployment, deployed.namespace
        timeout = svc.deploy.rollout_timeout
        deadline = self.clock() + timeout
        feed = self.kube.changes(ns)
        with self.out.activity(f"rolling out {name}"):
            last = ""
            while True:
                seen = feed.generation
                dep = self.kube.get("deployment", name, ns)
                if dep is None:
                    raise CycleFailed("rollout", f"deployment {name} disappeared during the rollout", "`devloop up` applies it again")
                done, message = rollout_progress(dep)
                pods = self.kube.pods(ns, deployed.selector)
                if done and not deployed.probed:
                    # no readiness probe: a pod is "ready" the moment its process starts, even one that
                    # crashes a second later. Ready means it stayed up for a moment (checked, not assumed).
                    young = [pod_name(p) for p in pods if image in pod_images(p) and not pod_settled(p, SETTLE, time.time())]
                    if young:
                        done, message = False, f"{len(young)} new pods started less than {SETTLE:.0f}s ago (no readiness probe)"
                if done:
                    revision = str(dep.get("metadata", {}).get("annotations", {}).get(REVISION, ""))
                    return [pod_name(p) for p in pods if pod_ready(p) and image in pod_images(p)], revision
                if message != last:
                    self.out.progress(svc.name, message)
                    last = message
                for p in pods:
                    if image not in pod_images(p):
                        continue
                    reason = pod_failure(p)
                    if reason:
                        raise self.pod_failed(pod_name(p), ns, reason)
                if self.clock() >= deadline:
                    waiting = [f"{pod_name(p)}: {pod_pending_reason(p)}" for p in pods if image in pod_images(p) and not pod_ready(p)]
                    raise CycleFailed(
                        "rollout",
                        f"{name} not ready after {timeout:.0f}s ({message})",
                        "check `kubectl describe pod`; raise deploy.rolloutTimeout if the app starts slowly",
                        details=waiting[:5],
                    )
                if self.next_change(feed, seen):
                    raise CycleFailed("rollout", "stopped while waiting for the rollout")

    def next_change(self, feed: Changes, seen: int, timeout: float = WATCH_FALLBACK) -> bool:
        """Wait for the API server's next change to the namespace's pods or Deployments after
        `seen` (at most `timeout`: a missed event costs that much, never a hang). True when stopped."""
        end = time.monotonic() + timeout
        while not self._stop.is_set():
            left = end - time.monotonic()
            if left <= 0 or feed.wait(seen, min(POLL_INTERVAL, left)):
                return self._stop.is_set()
        return True

    def pod_failed(self, pod: str, ns: str, reason: str) -> CycleFailed:
        logs = log_excerpt(self.kube.logs(pod, ns, tail=40, previous=True) or self.kube.logs(pod, ns, tail=40))
        crash = "CrashLoop" in reason or "exited" in reason
        return CycleFailed(
            "rollout",
            f"pod {pod}: {reason}",
            "fix the code and save: devloop rolls out again" if crash else "check the image and the manifest",
            details=[f"{pod}: {line}" for line in logs],
        )

    def serving(self, deployed: Deployed, ref: ImageRef) -> int:
        """How many ready pods run this version right now (asked, not assumed)."""
        return sum(1 for p in self.kube.pods(deployed.namespace, deployed.selector) if pod_ready(p) and ref.cluster in pod_images(p))

    def roll_back(self, svc: ServiceConfig, deployed: Deployed, revision: str, image: ImageRef | str) -> tuple[list[str], str]:
        """Roll the Deployment back to `revision` and wait until `image` serves again: (ready pods, revision)."""
        self.kube.rollout_undo(svc.deployment, deployed.namespace, revision)
        return self.wait_ready(svc, deployed, image)

    def after_failure(self, svc: ServiceConfig, deployed: Deployed, st: ServiceState, failed: ImageRef) -> tuple[str, bool, list[str]]:
        """After a failed rollout in `dev` or `up`: find out what serves, and roll back when
        Kubernetes did not keep the previous version serving (deploy.onFailure: rollback). Returns
        (what was checked, whether it rolled back, the pods serving after the rollback)."""
        good = st.good
        if self._stop.is_set():
            return "", False, []
        if good is None or good == failed:
            return "nothing to roll back to: no version of this service has served yet", False, []
        want = deployed.replicas
        ready = self.serving(deployed, good)
        if ready >= want:
            return f"{good.tag} keeps serving ({ready}/{want} ready pods run it; Kubernetes held the rollout)", False, []
        if svc.deploy.on_failure == "keep":
            return f"deploy.onFailure is keep: only {ready}/{want} ready pods run {good.tag}", False, []
        self.out.info(f"{svc.name}: only {ready}/{want} ready pods run {good.tag}; rolling back", service=svc.name)
        try:
            pods, revision = self.roll_back(svc, deployed, st.good_revision, good)
        except DevloopError as e:
            return f"rollback to {good.tag} failed: {e.message}", False, []
        st.rolled_back(good, revision)
        return f"rolled back to {good.tag}, which serves again ({len(pods)}/{want} pods ready)", True, pods
