"""Port-forwards and pod log streams for `devloop dev`, kept alive across rollouts and API outages.

A forward is devloop's own listener on 127.0.0.1 (`proxy.Proxy`), bound once for the session; each
connection goes in-process through the API server's portforward to the newest Ready pod behind the
Service, as the pod watch reports them: a rollout moves new connections to its first Ready new pod
without the URL ever refusing one (no `kubectl port-forward` to restart). The forward reports ready
only once it answers as its Service port speaks (portcheck.py: HTTP, HTTP/2 for gRPC, else TCP).
Logs follow each ready pod with a coloured pod prefix. `ApiWatch` notices the API server going
away (a paused or restarting kind node), says so once, and tells the forwards and the session when
it answers again.
"""

from __future__ import annotations

import functools
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from devloop import portcheck
from devloop.errors import DevloopError, StepFailed
from devloop.model import Outage
from devloop.output import Output
from devloop.portcheck import Answer
from devloop.ports import Cluster
from devloop.proc import Background
from devloop.proxy import Proxy, Upstreams
from devloop.readiness import EarlyReady
from devloop.timefmt import parse_time
from devloop.workload import PodEvent, pod_name, pod_ready


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


RETRY_TAKEN = 3.0  # seconds between checks of a taken local port while idle
CHECK_EVERY = 10.0  # seconds between questions to the API server while a forward answers
RETRY_CHECK = 1.0  # seconds before checking a forward that did not answer again (doubling each time) ...
MAX_BACKOFF = 8.0  # ... up to this (a pod getting Ready has it checked at once)
CONNECT_TIMEOUT = 5.0  # seconds for one connection to a pod through the API server
API_POLL = 2.0  # seconds between questions to an API server that does not answer


class ApiWatch:
    """Whether the cluster's API server answers, shared by the forwards, the log streams and the
    session. An API server that stops answering is reported once; one thread then asks every
    few seconds until it answers again, says so, and calls `on_back`."""

    def __init__(self, kube: Cluster, out: Output, outage: Outage, on_back: Callable[[], None] = lambda: None) -> None:
        self.kube = kube
        self.out = out
        self.outage = outage  # what the target says of itself when its API server stops answering
        self.on_back = on_back
        self._up = threading.Event()
        self._up.set()
        self._checking = threading.Lock()  # one background check at a time
        self._state = threading.Lock()  # the answers → does not answer transition, reported once
        self._stopped = threading.Event()
        self.lost_at: float | None = None  # time.monotonic() when it stopped answering (None: it answers)

    @property
    def up(self) -> bool:
        return self._up.is_set()

    def answers(self) -> bool:
        """Ask now (blocks up to kubectl's request timeout). An API server that does not answer is
        reported (once) and waited for."""
        if not self._up.is_set():
            return False
        if self.kube.reachable():
            return True
        self._lost()
        return False

    def suspect(self) -> None:
        """Something lost its connection to the cluster (any thread, never blocks): ask in the background."""
        if self._up.is_set() and not self._stopped.is_set() and self._checking.acquire(blocking=False):

            def check() -> None:
                try:
                    self.answers()
                finally:
                    self._checking.release()

            threading.Thread(target=check, daemon=True, name="devloop-api-check").start()

    def wait_up(self, stopped: threading.Event) -> bool:
        """Block until the API server answers again; False when `stopped` is set first."""
        while not self._up.wait(0.5):
            if stopped.is_set() or self._stopped.is_set():
                return False
        return True

    def _lost(self) -> None:
        with self._state:
            if not self._up.is_set():
                return
            self._up.clear()
            self.lost_at = time.monotonic()
        self.out.warn(
            f"the API server of {self.outage.subject} does not answer; port-forwards and log streams wait for it", self.outage.hint
        )
        threading.Thread(target=self._wait_back, daemon=True, name="devloop-api-wait").start()

    def _wait_back(self) -> None:
        while not self._stopped.wait(API_POLL):
            if self.kube.reachable():
                away = time.monotonic() - (self.lost_at or time.monotonic())
                self.out.info(
                    f"the API server of {self.outage.subject} answers again (after {away:.0f}s); resuming port-forwards and log streams"
                )
                self._up.set()
                self.on_back()
                return

    def stop(self) -> None:
        self._stopped.set()


class PortForward:
    """One declared forward, for the whole session: devloop's own listener on 127.0.0.1:local_port
    (`proxy.Proxy`), relaying each connection through the API server to the newest Ready pod behind
    the Service, as the pod watch reports them. Rollouts move new connections to the first Ready new
    pod without touching the listener; a taken local port is retried every few seconds until it is
    free; an API server that stops answering is waited for, and the forward checked again after."""

    def __init__(
        self,
        kube: Cluster,
        out: Output,
        namespace: str,
        service: str,
        port: int,
        local_port: int,
        label: str = "",
        api: ApiWatch | None = None,
    ) -> None:
        self.kube = kube
        self.out = out
        self.api = api
        self.label = label
        self.namespace = namespace
        self.service = service
        self.port = port
        self.local_port = local_port
        self.url = f"http://127.0.0.1:{local_port}"
        self.upstreams = Upstreams()
        self.proxy = Proxy(local_port, self.upstreams, self._connect, on_fail=self._failed, name=f"forward-{local_port}")
        self.ready = False
        self.protocol = portcheck.HTTP  # what the Service's port speaks (its name or appProtocol), as the check asks it
        self.last_error = ""  # the last pod connection that failed, and why (for the hint)
        self._selector: dict[str, str] = {}
        self._target: int | str | None = None  # the Service's targetPort for `port`: a number or a container port's name
        self._named: dict[str, int] = {}  # pod → its container port of that name
        self._watch: Background | None = None
        self._stopped = threading.Event()
        self._poke = threading.Event()  # a pod got Ready, or stop(): the monitor looks now
        self._lock = threading.Lock()
        self._monitor: threading.Thread | None = None
        self._warned_taken = False
        self._failed_checks = 0  # checks in a row without an answer (the pause between them grows)
        self._rewatches = 0  # pod watches in a row that ended before reporting anything (the pause grows)
        self._said_not_ready = False  # a "not ready" event was printed since the last "ready" one
        self._problem = ""  # what kept the last start() from following the Service ('' when it did)
        # new pods' readiness probes, run by devloop while the kubelet has not said Ready (readiness.py)
        self._since = time.time()  # pods created before the forward started are the kubelet's alone
        self.early = EarlyReady(
            lambda pod, port: self.kube.connect(self.namespace, pod, port, CONNECT_TIMEOUT),
            self._pod_object,
            self._early_pass,
            lambda pod: self.upstreams.not_early(pod),
            port=lambda: self._target if isinstance(self._target, int) else None,
        )

    # -- what the session calls ---------------------------------------------------------------------
    def start(self, fresh: bool = False) -> bool:
        """Follow the Service (again: after a rollout its pods and maybe its selector or ports
        changed) and check the forward; True once it answers (as its port speaks). The listener is bound
        once; a taken local port is warned about once and retried while idle. `fresh`: a new pod
        watch even when the old one still runs (after an API outage it may be stuck)."""
        with self._lock:
            if self._stopped.is_set():
                return False
            problem = self._problem = self._follow(fresh)
            listening = self.proxy.listen()
        self._ensure_monitor()
        if not listening:
            if not self._warned_taken:
                self.out.warn(
                    f"port {self.local_port} on 127.0.0.1 is already in use: no port-forward to service/{self.service} yet "
                    f"(retried every {RETRY_TAKEN:.0f}s)",
                    "free the port or set portForward.localPort in devloop.yaml",
                )
                self._warned_taken = True
            return False
        if problem:
            self.ready = False
            self._failed_checks += 1
            self._say(False, problem)
            return False
        return self._check()

    def probe(self, within: float = 15.0) -> Answer | None:
        """One answer through a short-lived forward (for `devloop up`), then stop it. Retries for
        `within` seconds while it does not answer: without a readiness probe a pod is ready before
        the app listens."""
        deadline = time.monotonic() + within
        problem = "not started"
        try:
            while True:
                if problem:
                    with self._lock:
                        problem = self._follow(False)
                version = self.upstreams.version
                if not problem and self.proxy.listen() and self.upstreams.ready():
                    answer = self._ask()
                    if answer is not None:
                        return answer
                if time.monotonic() >= deadline or self._stopped.is_set():
                    return None
                self.upstreams.wait(version, min(0.5, max(0.0, deadline - time.monotonic())))  # a pod got Ready, or a retry
        finally:
            self.stop()

    def why_no_answer(self) -> str:
        """The hint that matches what the forward saw."""
        if not self.upstreams.ready():
            selector = ",".join(f"{k}={v}" for k, v in sorted(self._selector.items()))
            return f"no pod of service {self.service} is Ready (`kubectl get pods -n {self.namespace} -l {selector}`)"
        if "refused" in self.last_error or "does not listen" in self.last_error:
            return "the pod refused the connection: the app is not listening (yet), or not on the Service's targetPort"
        if self.protocol != portcheck.TCP:
            return (
                f"the port was checked as {portcheck.checked(self.protocol)} (its name or appProtocol says so): "
                "if it speaks something else, name the Service port after it (`tcp`, `grpc`, `http`) or set appProtocol"
            )
        return "check the Service's selector and ports (`kubectl get endpoints`)"

    def renew(self, pods: list[str]) -> None:
        """After a live update restarted the app in these pods: no connection opened ahead to the process from before."""
        self.proxy.renew(pods)

    def stop(self) -> None:
        self._stopped.set()
        self._poke.set()
        self.early.stop()
        self.proxy.stop()
        with self._lock:
            watch, self._watch = self._watch, None
        if watch is not None:
            watch.stop()
        monitor = self._monitor
        if monitor is not None and monitor is not threading.current_thread():
            monitor.join(15)

    # -- the Service and its pods -------------------------------------------------------------------
    def _follow(self, fresh: bool) -> str:
        """Resolve the Service (selector, targetPort), list its pods and (re)start the pod watch
        (caller holds the lock). '' when done, else what is wrong."""
        try:
            svc = self.kube.get("service", self.service, self.namespace)
        except DevloopError as e:
            if self.api is not None:
                self.api.suspect()
            return f"cannot read service {self.service}: {e.message}"
        if svc is None:
            return f"service {self.service} not found in namespace {self.namespace}"
        spec = svc.get("spec") or {}
        selector = {str(k): str(v) for k, v in (spec.get("selector") or {}).items()}
        if not selector:
            return f"service {self.service} has no selector: no pods to forward to"
        ports = spec.get("ports") or []
        entry = next((p for p in ports if int(p.get("port", 0)) == self.port), None)
        if entry is None:
            have = ", ".join(str(p.get("port")) for p in ports) or "none"
            return f"service {self.service} has no port {self.port} (its ports: {have})"
        self.protocol = portcheck.protocol_of(entry)
        target = entry.get("targetPort", self.port)
        self._target = int(target) if isinstance(target, int) or str(target).isdigit() else str(target)
        watching = not fresh and self._watch is not None and self._watch.alive() and selector == self._selector
        try:
            pods = self.kube.pods(self.namespace, selector)
        except DevloopError as e:
            if self.api is not None:
                self.api.suspect()
            return f"cannot list the pods of service {self.service}: {e.message}"
        self._selector = selector
        self._learn(pods)
        # a running watch knows the pods it reported better than this listing, which it may have overtaken
        self.upstreams.replace(
            ((pod_name(p), pod_ready(p), str(p.get("metadata", {}).get("creationTimestamp") or "")) for p in pods),
            keep_known=watching,
        )
        if not watching:
            if self._watch is not None:
                self._watch.stop()
                self._watch = None
            try:
                self._watch = self.kube.watch_pods(self.namespace, selector, self._on_pod)
            except DevloopError as e:
                return f"cannot watch the pods of service {self.service}: {e.message}"
        return ""

    def _learn(self, pods: list[dict[str, Any]]) -> None:
        """A named targetPort: each pod's container port of that name (as kubectl resolves it)."""
        if not isinstance(self._target, str):
            return
        for p in pods:
            for c in p.get("spec", {}).get("containers") or []:
                for cp in c.get("ports") or []:
                    if cp.get("name") == self._target and cp.get("containerPort"):
                        self._named[pod_name(p)] = int(cp["containerPort"])

    def _on_pod(self, event: PodEvent) -> None:
        """A pod watch event (the watch's thread): new connections follow at once; a new pod that is
        not Ready yet gets its readiness probe run by devloop meanwhile."""
        self._rewatches = 0
        if event.deleting or event.ready:
            self.early.forget(event.name, gone=event.deleting)
        elif event.running and event.created and parse_time(event.created) >= self._since - 1:
            self.early.watch(event.name)  # from the moment its containers run: before that no probe can pass
        if self.upstreams.seen(event.name, event.ready and not event.deleting, event.created) and not self.ready:
            self._poke.set()  # a pod got Ready (or not): check the forward now, not at the next retry

    def _pod_object(self, pod: str) -> dict[str, Any] | None:
        with self._lock:
            selector = dict(self._selector)
        return next((p for p in self.kube.pods(self.namespace, selector) if pod_name(p) == pod), None)

    def _early_pass(self, pod: str) -> None:
        if self.upstreams.early(pod):
            self.out.detail(
                f"port-forward: pod {pod} passes its readiness probe (run by devloop); new connections go to it", service=self.label
            )
            if not self.ready:
                self._poke.set()

    def _port_of(self, pod: str) -> int:
        target = self._target
        if isinstance(target, int):
            return target
        if target is None:
            raise StepFailed(f"service {self.service} is not resolved yet")
        if pod not in self._named:  # a pod the watch reported first: its spec has the port
            self._learn(self.kube.pods(self.namespace, self._selector))
        if pod not in self._named:
            raise StepFailed(f"pod {pod} has no container port named {target!r}")
        return self._named[pod]

    def _connect(self, pod: str) -> socket.socket:
        """The upstream of one connection (a connection's thread)."""
        return self.kube.connect(self.namespace, pod, self._port_of(pod), CONNECT_TIMEOUT)

    def _failed(self, pod: str, e: Exception) -> None:
        self.last_error = f"pod {pod}: {e}"
        self.out.detail(f"port-forward: connecting to pod {pod} failed: {e}", service=self.label)
        if self.api is not None and not isinstance(e, (ConnectionRefusedError, ConnectionAbortedError)):
            self.api.suspect()  # it may be the API server that does not answer (a refused port, a closed connection: the pod's)

    # -- checks -------------------------------------------------------------------------------------
    def _ask(self) -> Answer | None:
        """One check through the forward, as its port speaks (portcheck.py)."""
        if self.protocol != portcheck.TCP:
            return portcheck.answer_as(self.protocol, self.proxy.port)
        pods = self.upstreams.ready()
        if not pods:
            return None
        try:
            why = portcheck.tcp_check(self._connect(pods[0]))
        except (OSError, DevloopError) as e:
            why = str(e)
        if why is not None:
            self._failed(pods[0], ConnectionRefusedError(why))
            return None
        return Answer(portcheck.TCP, "answers TCP")

    def _check(self) -> bool:
        """One check through the forward; says ready (each time) or not ready (once)."""
        answer = self._ask()
        self.ready = answer is not None
        self._failed_checks = 0 if self.ready else self._failed_checks + 1
        what = portcheck.checked(self.protocol)
        if answer is not None:
            self._say(True, answer.said)
        elif not self.upstreams.ready():
            self._say(False, f"no {what} answer yet: no pod of service {self.service} is Ready")
        else:
            self._say(False, f"no {what} answer yet" + (f" ({self.last_error})" if self.last_error else ""))
        return self.ready

    def _say(self, ready: bool, message: str) -> None:
        """Every "ready" (each one checked); "not ready" once until the forward answers again, not
        once per retry while a pod or the API server is away."""
        if not ready and self._said_not_ready:
            return
        self._said_not_ready = not ready
        self.out.forward(self.url, ready, message, service=self.label)

    def _ensure_monitor(self) -> None:
        with self._lock:
            if self._monitor is None and not self._stopped.is_set():
                self._monitor = threading.Thread(target=self._run, daemon=True, name=f"forward-{self.local_port}-monitor")
                self._monitor.start()

    def _run(self) -> None:
        """The forward's one background thread: binds a taken port once it is free; notices the pod
        watch ending or the API server going away (then waits for it and follows the Service
        afresh); checks the forward until it answers (at once when a pod gets Ready)."""
        while not self._stopped.is_set():
            if not self.proxy.listening:
                if self._stopped.wait(RETRY_TAKEN):
                    return
                if self.proxy.listen():
                    self.out.info(f"port {self.local_port} is free again; starting the port-forward", service=self.label)
                    self.start()
                continue
            self._poke.wait(CHECK_EVERY if self.ready else min(MAX_BACKOFF, RETRY_CHECK * 2.0 ** max(0, self._failed_checks - 1)))
            self._poke.clear()
            if self._stopped.is_set():
                return
            with self._lock:
                watch = self._watch
            ended = watch is not None and not watch.alive()
            if ended or (self.ready and self.api is not None and not self.api.answers()):
                if not self._away(ended):
                    return
                continue
            if self._problem:  # the Service could not be followed (not there yet, the API server away): again
                self.start()
            elif not self.ready:
                self._check()

    def _away(self, watch_ended: bool) -> bool:
        """The pod watch ended or the API server does not answer: wait for it, then follow the
        Service afresh. False when stopped meanwhile."""
        api_down = self.api is not None and not self.api.answers()
        if api_down and self.ready:  # (a watch that ended while the API server answers is watched again quietly)
            self.ready = False
            self._say(False, "the API server does not answer")
        if api_down and self.api is not None and not self.api.wait_up(self._stopped):
            return False
        if not api_down:
            self.out.detail("port-forward: the pod watch ended; watching again", service=self.label)
            self._rewatches += 1
            if self._stopped.wait(min(MAX_BACKOFF, 2.0 ** (self._rewatches - 1))):
                return False
            with self._lock:
                if not self._stopped.is_set():
                    self._problem = self._follow(True)
            return not self._stopped.is_set()
        self.start(fresh=True)
        return not self._stopped.is_set()


class LogStreams:
    """One log stream per ready pod; pods that are gone have their stream stopped. A stream
    that ends by itself calls `on_end` (the API server may have gone away)."""

    def __init__(
        self, kube: Cluster, namespace: str, on_line: Callable[[str, str], None], on_end: Callable[[], None] = lambda: None
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.on_line = on_line  # (pod, line)
        self.on_end = on_end
        self._streams: dict[str, Background] = {}

    def follow(self, pods: list[str], since: str = "") -> None:
        """Follow these pods (and no others); `since` (e.g. "40s"): what they printed in that time
        (after an outage: the lines written meanwhile), else their last lines."""
        for name in list(self._streams):
            if name not in pods or not self._streams[name].alive():  # gone, or its stream ended
                self._streams.pop(name).stop()
        for name in pods:
            if name not in self._streams:
                stream = self.kube.stream_logs(name, self.namespace, functools.partial(self._line, name), since)
                self._streams[name] = stream
                threading.Thread(target=self._ended, args=(name, stream), daemon=True, name=f"logs-{name}").start()

    def _ended(self, pod: str, stream: Background) -> None:
        stream.wait()
        if self._streams.get(pod) is stream:  # not stopped on purpose
            self.on_end()

    def _line(self, pod: str, line: str) -> None:
        if not line.strip():
            return
        self.on_line(pod, line)

    def stop(self) -> None:
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            stream.stop()
