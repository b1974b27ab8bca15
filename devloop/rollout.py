"""A rollout, watched to its end: wait until the new version is ready, name the pod that fails
and why (with the lines of its log that matter), say what serves (asked, never assumed), and roll
back. One module for `dev`, `up` and `release`: the promises are the same wherever devloop deploys.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import Any

from devloop import kinds
from devloop import manifests as mf
from devloop.config import ServiceConfig
from devloop.errors import CycleFailed, DevloopError
from devloop.model import ImageRef, ServiceState
from devloop.output import Output
from devloop.ports import Changes, Cluster
from devloop.project import Deployed
from devloop.workload import (
    pod_created,
    pod_failure,
    pod_name,
    pod_pending_reason,
    pod_ready,
    pod_settled,
    pod_state,
    pod_terminating,
    pod_unschedulable,
)

Pod = dict[str, Any]
POLL_INTERVAL = 0.5
WATCH_FALLBACK = 2.0  # at most this long between reads of a rollout's state when no watch event comes
SETTLE = 3.0  # seconds a container without a readiness probe must stay up before devloop calls it ready
REVISION = "deployment.kubernetes.io/revision"
# A new pod the scheduler found no room for fails the rollout once nothing could make room for this
# long: no pod of the namespace terminating, the same pods there (an old pod just gone is retried by
# the scheduler within its backoff, at most 10 s).
NO_ROOM_GRACE = 12.0

_ERROR_LINE = re.compile(r"\b(?:[A-Z]\w*)?(?:Error|Exception)\b|\bERR!|\bpanic:|\bFATAL\b")


def log_excerpt(lines: list[str], size: int = 8) -> list[str]:
    """The lines of a crash log a person needs: the first error line with what led up to it
    (a Node.js SyntaxError prints file:line, the code and a caret before it), else the tail."""
    for i, line in enumerate(lines):
        if _ERROR_LINE.search(line):
            start = max(0, i - 4)
            return lines[start : start + size]
    return lines[-size:]


def no_room_failure(pod: str, scheduler: str) -> CycleFailed:
    """A new pod no node has room for: the scheduler's words and the fix that fits."""
    lacking = sorted(set(re.findall(r"Insufficient ([\w./-]+)", scheduler)))
    if lacking:
        fix = (
            f"the pod requests more {' and '.join(lacking)} than a node has free: lower resources.requests in the manifest, "
            "or give the cluster a bigger node (more CPU/memory for Docker) or run fewer replicas"
        )
    else:
        fix = "the node runs as many pods as it may: run fewer replicas, or add a node"
    return CycleFailed("rollout", f"pod {pod} cannot be scheduled: {scheduler}", fix)


class Rollout:
    def __init__(self, kube: Cluster, out: Output, clock: Callable[[], float], stop: threading.Event) -> None:
        self.kube = kube
        self.out = out
        self.clock = clock
        self._stop = stop

    def wait_ready(self, svc: ServiceConfig, deployed: Deployed, ref: ImageRef | str | None) -> tuple[list[str], str]:
        """Wait until the rollout of `ref` (or an image reference as the pods name it; None: the
        manifests' own images, for a service without image) is complete in every workload of the
        service, each as its kind says (kinds.py): (ready pods, the main Deployment's revision).
        One deadline, deploy.rolloutTimeout, for all of them."""
        deadline = self.clock() + svc.deploy.rollout_timeout
        ready: list[str] = []
        revision = ""
        for w in deployed.rolled:
            kind = kinds.of(w.kind)
            if kind is None or not kind.waits:
                continue
            ours = svc.image is not None and bool(mf.containers_of(w, svc.image.name))
            pods, rev = self._wait_one(svc, deployed.namespace, w, kind, _image_of(w, ref if ours else None), deadline, ours)
            ready += pods
            if w is deployed.deployment:
                revision = rev
        return ready, revision

    def _wait_one(
        self, svc: ServiceConfig, ns: str, w: mf.Manifest, kind: kinds.WorkloadKind, image: str, deadline: float, ours: bool = True
    ) -> tuple[list[str], str]:
        """Wait for one workload; `ours`: it runs the image devloop built (else an image nobody builds)."""
        name, what = w.name, f"{w.kind.lower()} {w.name}"
        probed = _probed(w)
        feed = self.kube.changes(ns)
        with self.out.activity(f"rolling out {name}" if kind.rolls_back else f"running {what}"):
            last = ""
            no_room: tuple[float, frozenset[str]] | None = None  # since when, and the namespace's pods then
            while True:
                seen = feed.generation
                live = self.kube.get(kind.resource, name, ns)
                if live is None:
                    raise CycleFailed("rollout", f"{what} disappeared during the rollout", "`devloop up` applies it again")
                done, message = kind.progress(live)
                pods = self.kube.pods(ns, kinds.pod_selector(live) or mf.selector_of(w))
                mine = [p for p in pods if _runs(p, image)]
                failed = kind.failure(live)
                if failed:
                    raise self.job_failed(what, ns, failed, mine)
                if done and not probed and kind.rolls_back:
                    # no readiness probe: a pod is "ready" the moment its process starts, even one that
                    # crashes a second later. Ready means it stayed up for a moment (checked, not assumed).
                    young = [pod_name(p) for p in mine if not pod_settled(p, SETTLE, time.time())]
                    if young:
                        done, message = False, f"{len(young)} new pods started less than {SETTLE:.0f}s ago (no readiness probe)"
                if done:
                    revision = str(live.get("metadata", {}).get("annotations", {}).get(REVISION, ""))
                    return [pod_name(p) for p in mine if pod_ready(p)], revision
                if message != last:
                    self.out.progress(svc.name, message if name == svc.deployment else f"{name}: {message}")
                    last = message
                for p in mine:
                    reason = pod_failure(p)
                    if reason and reason.startswith(PULL_FAILURES) and not ours:
                        raise unpullable(w, image, reason)
                    if reason:
                        raise self.pod_failed(pod_name(p), ns, reason)
                stuck = [(pod_name(p), why) for p in mine if (why := pod_unschedulable(p))]
                if not stuck:
                    no_room = None
                else:
                    everyone = self.kube.pods(ns, {})
                    names = frozenset(pod_name(p) for p in everyone)
                    if no_room is None or names != no_room[1] or any(pod_terminating(p) for p in everyone):
                        no_room = (self.clock(), names)  # room may still be made: the normal wait
                    elif self.clock() - no_room[0] >= NO_ROOM_GRACE:
                        raise no_room_failure(*stuck[0])
                if self.clock() >= deadline:
                    raise self.timed_out(svc, what, kind, message, ns, mine)
                if self.next_change(feed, seen):
                    raise CycleFailed("rollout", "stopped while waiting for the rollout")

    def timed_out(self, svc: ServiceConfig, what: str, kind: kinds.WorkloadKind, message: str, ns: str, pods: list[Pod]) -> CycleFailed:
        timeout = svc.deploy.rollout_timeout
        if kind.rolls_back:
            waiting = [f"{pod_name(p)}: {pod_pending_reason(p)}" for p in pods if not pod_ready(p)]
            return CycleFailed(
                "rollout",
                f"{what.partition(' ')[2]} not ready after {timeout:.0f}s ({message})",
                "check `kubectl describe pod`; raise deploy.rolloutTimeout if the app starts slowly",
                details=waiting[:5],
            )
        states = [f"{pod_name(p)}: {pod_state(p)}" for p in pods]
        return CycleFailed(
            "rollout",
            f"{what} did not complete in {timeout:.0f}s ({message})",
            "check what its pod waits for (`kubectl logs`); give the Job activeDeadlineSeconds, or raise deploy.rolloutTimeout",
            details=(states + self._last_log(pods, ns))[:12],
        )

    def job_failed(self, what: str, ns: str, reason: str, pods: list[Pod]) -> CycleFailed:
        """A Job Kubernetes gave up on: what it said, and the log excerpt of its last failed pod."""
        return CycleFailed("rollout", f"{what}: {reason}", "fix it and save: devloop runs the Job again", details=self._last_log(pods, ns))

    def _last_log(self, pods: list[Pod], ns: str) -> list[str]:
        failed = sorted((p for p in pods if p.get("status", {}).get("phase") == "Failed"), key=pod_created) or sorted(pods, key=pod_created)
        if not failed:
            return []
        pod = pod_name(failed[-1])
        return [f"{pod}: {line}" for line in log_excerpt(self.kube.logs(pod, ns, tail=40))]

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

    def serving(self, ns: str, w: mf.Manifest, image: str) -> tuple[int, int]:
        """(ready pods of the workload that run this image right now, how many it wants): asked, not assumed."""
        kind = kinds.of(w.kind) or kinds.Deployment()
        live = self.kube.get(kind.resource, w.name, ns) or w.doc
        pods = self.kube.pods(ns, kinds.pod_selector(live) or mf.selector_of(w))
        return sum(1 for p in pods if pod_ready(p) and _runs(p, image)), kind.replicas(live)

    def still_serving(self, ns: str, w: mf.Manifest) -> str:
        """What serves a workload that was not applied (a dependency failed): asked, not assumed."""
        kind = kinds.of(w.kind) or kinds.Deployment()
        live = self.kube.get(kind.resource, w.name, ns)
        if live is None:
            return f"{w.kind} {w.name} does not run yet: nothing of it was applied"
        if not kind.rolls_back:
            return f"{w.kind} {w.name} was not applied again"
        images = [str(c.get("image")) for c in live.get("spec", {}).get("template", {}).get("spec", {}).get("containers") or []]
        if not images:
            return ""
        ready, want = self.serving(ns, w, images[0])
        name = _tag(images[0])
        return f"{name} keeps serving ({ready}/{want} ready pods run it; not rolled out)"

    def roll_back(self, svc: ServiceConfig, deployed: Deployed, revision: str, image: ImageRef | str) -> tuple[list[str], str]:
        """Roll the Deployment back to `revision` and wait until `image` serves again: (ready pods, revision)."""
        self.kube.rollout_undo(deployed.deployment.name, deployed.namespace, revision)
        return self.wait_ready(svc, deployed, image)

    def undo(self, svc: ServiceConfig, ns: str, w: mf.Manifest, revision: str, image: str, failed: str) -> list[str]:
        """`kubectl rollout undo` one workload (a Deployment to `revision`; a StatefulSet or DaemonSet to
        its previous ControllerRevision when `revision` is empty), free the StatefulSet's pods stuck on
        the `failed` image, and wait until `image` serves again: the ready pods."""
        kind = kinds.of(w.kind) or kinds.Deployment()
        self.kube.rollout_undo(w.name, ns, revision, kind.resource)
        self._unstick(ns, [w], failed)
        pods, _ = self._wait_one(svc, ns, w, kind, image, self.clock() + svc.deploy.rollout_timeout, svc.image is not None)
        return pods

    def after_failure(
        self,
        svc: ServiceConfig,
        deployed: Deployed,
        st: ServiceState,
        failed: ImageRef | None,
        reapply: Callable[[ImageRef], object] | None = None,
    ) -> tuple[str, bool, list[str]]:
        """After a failed rollout in `dev` or `up`: find out what serves, and roll back when
        Kubernetes did not keep the previous version serving (deploy.onFailure: rollback). Returns
        (what was checked, whether it rolled back, the pods serving after the rollback).

        Per kind (kinds.py): a Job has no rollback (it ran); a lone Deployment is undone to the
        revision that served; other workloads get the manifests of the version that served again
        (`reapply`), and a StatefulSet's pods stuck on the failed version are deleted (Kubernetes
        waits for them to become ready before it replaces them)."""
        if self._stop.is_set():
            return "", False, []
        ns = deployed.namespace
        servers = [w for w in deployed.rolled if (k := kinds.of(w.kind)) is not None and k.rolls_back]
        if not servers:
            return "a Job has no rollback: the services that depend on it are not rolled out", False, []
        good = st.good
        if svc.image is None:  # no earlier version devloop could apply again: say what serves
            counted = [(w, *self.serving(ns, w, _image_of(w, None))) for w in servers]
            return "; ".join(f"{w.kind} {w.name}: {r}/{n} pods ready" for w, r, n in counted) + " (no rollback without an image)", False, []
        if good is None or good == failed:
            return self._no_good_version(ns, servers, failed), False, []
        counted = [(w, *self.serving(ns, w, good.cluster)) for w in servers]
        ready, want = sum(r for _, r, _ in counted), sum(n for _, _, n in counted)
        serving_now = all(r >= n for _, r, n in counted)
        # Kubernetes holds a failed rollout only behind a readiness probe: without one, a crashing pod is
        # Ready for a moment, counts as available, and the old pods are scaled down after this count.
        if serving_now and all(_probed(w) for w in servers):
            return f"{good.tag} keeps serving ({ready}/{want} ready pods run it; Kubernetes held the rollout)", False, []
        if svc.deploy.on_failure == "keep":
            if serving_now:
                return f"deploy.onFailure is keep: {ready}/{want} ready pods run {good.tag} now (no readinessProbe holds them)", False, []
            return f"deploy.onFailure is keep: only {ready}/{want} ready pods run {good.tag}", False, []
        if serving_now:
            self.out.info(f"{svc.name}: no readinessProbe: Kubernetes does not hold a failed rollout; rolling back", service=svc.name)
        else:
            self.out.info(f"{svc.name}: only {ready}/{want} ready pods run {good.tag}; rolling back", service=svc.name)
        try:
            if servers == [deployed.deployment] and deployed.deployment.kind == "Deployment":
                pods, revision = self.roll_back(svc, deployed, st.good_revision, good)
            elif reapply is None:
                return f"only {ready}/{want} ready pods run {good.tag}; no rollback here", False, []
            else:
                reapply(good)
                if failed is not None:
                    self._unstick(ns, servers, failed.cluster)
                pods, revision = self.wait_ready(svc, deployed, good)
        except DevloopError as e:
            return f"rollback to {good.tag} failed: {e.message}", False, []
        st.rolled_back(good, revision)
        return f"rolled back to {good.tag}, which serves again ({len(pods)}/{want} pods ready)", True, pods

    def _no_good_version(self, ns: str, servers: list[mf.Manifest], failed: ImageRef | None) -> str:
        """No version devloop deployed has served (in this session): what serves is asked, not
        assumed. A version from before (a previous session's, the manifests' own) may well be Ready."""
        serving: dict[str, int] = {}
        want = 0
        for w in servers:
            kind = kinds.of(w.kind) or kinds.Deployment()
            live = self.kube.get(kind.resource, w.name, ns) or w.doc
            want += kind.replicas(live)
            for p in self.kube.pods(ns, kinds.pod_selector(live) or mf.selector_of(w)):
                if pod_ready(p) and (failed is None or not _runs(p, failed.cluster)):
                    for c in p.get("spec", {}).get("containers") or []:
                        serving[str(c.get("image"))] = serving.get(str(c.get("image")), 0) + 1
                        break
        if not serving:
            return "nothing to roll back to: no version of this service has served yet, and no ready pod runs another"
        said = ", ".join(f"{n}/{want} ready pods run {_tag(image)}" for image, n in sorted(serving.items()))
        return f"the version from before keeps serving ({said}); devloop did not deploy it in this session: no rollback"

    def _unstick(self, ns: str, servers: list[mf.Manifest], image: str) -> None:
        """Delete the StatefulSets' pods that run the failed image: with the good template applied
        again, Kubernetes recreates them from it (it would wait forever for them to become ready)."""
        for w in servers:
            if w.kind != "StatefulSet":
                continue
            live = self.kube.get("statefulset", w.name, ns) or w.doc
            stuck = [p for p in self.kube.pods(ns, kinds.pod_selector(live) or mf.selector_of(w)) if _runs(p, image)]
            if stuck:
                self.kube.delete([{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod_name(p)}} for p in stuck], ns)


PULL_FAILURES = ("ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName")


def unpullable(w: mf.Manifest, image: str, reason: str) -> CycleFailed:
    """A workload runs an image nobody builds, that Docker here does not have, and that the cluster cannot pull."""
    return CycleFailed(
        "rollout",
        f"{w.kind} {w.name} ({w.source}) runs image {image}, which no service builds and the cluster cannot pull ({reason.split(':')[0]})",
        "build or pull it into Docker here (devloop loads local images into kind's nodes), give it a service with `image:`, "
        "or leave it out of these manifests",
        details=[reason[:300]],
    )


def _tag(image: str) -> str:
    """An image reference as devloop names versions: its tag, else the reference."""
    try:
        return ImageRef.parse(image).tag or image
    except ValueError:
        return image


def _runs(pod: Pod, image: str) -> bool:
    """The pod runs this image, in a container or an init container."""
    spec = pod.get("spec", {})
    return any(c.get("image") == image for c in (spec.get("initContainers") or []) + (spec.get("containers") or []))


def _image_of(w: mf.Manifest, ref: ImageRef | str | None) -> str:
    """The image whose pods count for this workload: devloop's, else (a service without image) the
    manifest's own first container image."""
    if ref:
        return ref.cluster if isinstance(ref, ImageRef) else ref
    return (mf.main_images(w) or [""])[0]


def _template(w: mf.Manifest) -> dict[str, Any]:
    spec = w.doc.get("spec", {})
    if w.kind == "CronJob":
        spec = spec.get("jobTemplate", {}).get("spec", {})
    pod = spec.get("template", {}).get("spec", {})
    return pod if isinstance(pod, dict) else {}


def _probed(w: mf.Manifest) -> bool:
    """Every container of the workload has a readiness probe."""
    return all(c.get("readinessProbe") for c in _template(w).get("containers") or [])
