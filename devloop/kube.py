"""The kubectl adapter. Every call names the context explicitly: devloop never acts on whatever
cluster the user's current context happens to point at."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from devloop.errors import ClusterUnavailable, CommandFailed, StepFailed
from devloop.proc import DEFAULT, Background, Runner

if TYPE_CHECKING:
    from devloop.ports import Changes

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

    @classmethod
    def parse(cls, line: str) -> PodEvent | None:
        """`name restarts... |image...|deletionTimestamp|ready|created|ip`, as watch_pods' template prints it."""
        name, _, rest = line.partition(" ")
        counts, _, rest = rest.partition("|")
        images, _, rest = rest.partition("|")
        deleting, _, rest = rest.partition("|")
        ready, _, rest = rest.partition("|")
        created, _, ip = rest.partition("|")
        if not name:
            return None
        gone = bool(deleting.strip())
        return cls(
            name,
            sum(int(c) for c in counts.split() if c.isdigit()),
            tuple(images.split()),
            gone,
            ready.strip() == "True" and not gone,
            created.strip(),
            ip.strip(),
        )

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
        )


def selector_arg(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


class Kube:
    def __init__(self, context: str, runner: Runner = DEFAULT) -> None:
        self.context = context
        self.runner = runner

    def _argv(self, *args: str) -> list[str]:
        return ["kubectl", "--context", self.context, *args]

    def client_version(self) -> str:
        out = self.runner.run(["kubectl", "version", "--client", "-o", "json"], timeout=30).stdout
        try:
            return str(json.loads(out)["clientVersion"]["gitVersion"])
        except (ValueError, KeyError, TypeError):
            return out.strip() or "?"

    def contexts(self) -> list[str]:
        """The contexts the kubeconfig names (`kubectl config get-contexts -o name`)."""
        r = self.runner.run(["kubectl", "config", "get-contexts", "-o", "name"], timeout=30, check=False)
        return r.stdout.split() if r.ok else []

    def reachable(self) -> bool:
        return self.runner.run(self._argv("get", "--raw", "/readyz", "--request-timeout", "10s"), timeout=30, check=False).ok

    def require_reachable(self, cluster: str) -> None:
        if not self.reachable():
            raise ClusterUnavailable(
                f"the API server of kind cluster {cluster!r} (context {self.context}) does not answer",
                "`devloop up` creates or repairs it; `kind get clusters` lists what exists",
            )

    def apply(self, yaml_text: str, namespace: str) -> list[str]:
        try:
            out = self.runner.run(self._argv("apply", "-n", namespace, "-f", "-"), input=yaml_text, timeout=120).stdout
        except CommandFailed as e:
            raise StepFailed(
                f"kubectl apply failed: {_first_error(e.stderr)}", "fix the manifest; devloop applies again on the next save"
            ) from e
        return [line for line in out.splitlines() if line.strip()]

    def kustomize(self, directory: str) -> str:
        """`kubectl kustomize DIR`: kubectl's built-in kustomize (no cluster involved)."""
        try:
            return self.runner.run(["kubectl", "kustomize", directory], timeout=60).stdout
        except CommandFailed as e:
            raise StepFailed(f"kubectl kustomize {directory} failed: {_first_error(e.stderr)}", "fix the kustomization") from e

    def get_raw(self, path: str) -> str:
        """`kubectl get --raw PATH`: an API server path (e.g. a service proxy), its body."""
        r = self.runner.run(self._argv("get", "--raw", path, "--request-timeout", "20s"), timeout=30, check=False)
        if not r.ok:
            raise StepFailed(_first_error(r.stderr or r.stdout), "")
        return r.stdout

    def context_namespace(self) -> str:
        """The namespace the kube context names, else `default`."""
        r = self.runner.run(
            ["kubectl", "config", "view", "--minify", "--context", self.context, "-o", "jsonpath={..namespace}"], timeout=30, check=False
        )
        return (r.stdout.strip().split() or ["default"])[0] if r.ok else "default"

    def rollout_undo(self, deployment: str, namespace: str, revision: str = "") -> None:
        argv = self._argv("rollout", "undo", f"deployment/{deployment}", "-n", namespace)
        if revision:
            argv.append(f"--to-revision={revision}")
        try:
            self.runner.run(argv, timeout=60)
        except CommandFailed as e:
            raise StepFailed(f"kubectl rollout undo failed: {_first_error(e.stderr)}", "check `kubectl rollout history`") from e

    def delete(self, yaml_text: str, namespace: str) -> list[str]:
        out = self.runner.run(
            self._argv("delete", "-n", namespace, "--ignore-not-found", "--wait=true", "-f", "-"), input=yaml_text, timeout=180
        ).stdout
        return [line for line in out.splitlines() if line.strip()]

    def get(self, resource: str, name: str, namespace: str) -> dict[str, Any] | None:
        r = self.runner.run(self._argv("get", resource, name, "-n", namespace, "-o", "json"), timeout=30, check=False)
        if not r.ok:
            if "NotFound" in r.stderr or "not found" in r.stderr:
                return None
            raise CommandFailed(list(r.argv), r.returncode, r.stderr)
        return _json(r.stdout)

    def pods(self, namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        out = self.runner.run(self._argv("get", "pods", "-n", namespace, "-l", selector_arg(labels), "-o", "json"), timeout=30).stdout
        return list(_json(out).get("items", []))

    def logs(self, pod: str, namespace: str, *, tail: int = 10, previous: bool = False) -> list[str]:
        argv = self._argv("logs", pod, "-n", namespace, f"--tail={tail}", "--all-containers")
        if previous:
            argv.append("--previous")
        r = self.runner.run(argv, timeout=30, check=False)
        return r.stdout.splitlines() if r.ok else []

    def exec(self, pod: str, namespace: str, argv: list[str], stdin: bytes | None = None, timeout: float = 30) -> str:
        args = self._argv("exec", "-n", namespace, *(["-i"] if stdin is not None else []), pod, "--", *argv)
        return self.runner.run(args, input=stdin, timeout=timeout).stdout

    def watch_pods(self, namespace: str, labels: Mapping[str, str], on_event: Callable[[PodEvent], None]) -> Background:
        """A typed event per pod change (kubectl get --watch, one jsonpath line each)."""
        template = (
            '{.metadata.name}{" "}{.status.containerStatuses[*].restartCount}{" |"}'
            '{.spec.containers[*].image}{"|"}{.metadata.deletionTimestamp}{"|"}'
            '{.status.conditions[?(@.type=="Ready")].status}{"|"}{.metadata.creationTimestamp}{"|"}{.status.podIP}{"\\n"}'
        )

        def on_line(line: str) -> None:
            event = PodEvent.parse(line)
            if event is not None:
                on_event(event)

        return self.runner.spawn(
            self._argv("get", "pods", "-n", namespace, "-l", selector_arg(labels), "--watch", "-o", f"jsonpath={template}"),
            on_line=on_line,
        )

    def stream_logs(self, pod: str, namespace: str, on_line: Callable[[str], None], since: str = "") -> Background:
        argv = self._argv("logs", "-f", pod, "-n", namespace, "--all-containers")
        argv.append(f"--since={since}" if since else "--tail=20")
        return self.runner.spawn(argv, on_line=on_line)

    def changes(self, namespace: str) -> Changes:
        return Polling()

    def exec_stream(self, pod: str, namespace: str, argv: list[str], container: str = "") -> Any:
        raise StepFailed("a persistent exec needs the API client (devloop.api.ApiCluster)", "")

    def connect(self, namespace: str, pod: str, port: int, timeout: float = 5.0) -> socket.socket:
        raise StepFailed("a port-forward socket needs the API client (devloop.api.ApiCluster)", "")


class Polling:
    """`changes()` without a watch: every wait lasts its whole timeout (a fixed poll)."""

    generation = 0

    def wait(self, seen: int, timeout: float) -> bool:
        threading.Event().wait(timeout)
        return True  # "look again"


def _json(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError as e:
        raise StepFailed(f"kubectl printed something that is not JSON: {text[:80]!r}", "run with --debug") from e
    return data if isinstance(data, dict) else {}


def _first_error(stderr: str) -> str:
    for line in stderr.splitlines():
        if line.strip():
            return line.strip()
    return "no output"


# -- rollout state: pure --------------------------------------------------------------------------


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


def pod_pending_reason(pod: Mapping[str, Any]) -> str:
    """Why a pod is not ready yet, for the message of a rollout that hit its deadline.

    Unschedulable is not a failure by itself: during a rolling update a surge pod waits for the
    old pods' CPU requests to be released."""
    for cond in pod.get("status", {}).get("conditions") or []:
        if cond.get("status") == "False" and cond.get("reason"):
            return f"{cond['reason']}: {str(cond.get('message', '')).strip()[:160]}"
    for cs in pod.get("status", {}).get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason"):
            return str(waiting["reason"])
    return str(pod.get("status", {}).get("phase", "not ready"))


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
        started = running.get("startedAt")
        if started:
            t = datetime.fromisoformat(str(started).replace("Z", "+00:00")).timestamp()
            if now - t < seconds:
                return False
    return True


def pod_name(pod: Mapping[str, Any]) -> str:
    return str(pod.get("metadata", {}).get("name", "?"))
