"""Port-forward and pod log streams for `devloop dev`, kept alive across rollouts and API outages.

`kubectl port-forward svc/...` binds to one pod and dies with it, so the forwarder is restarted
after every rollout and whenever it exits; it reports ready only once an HTTP request through
it gets an answer, and a forward that answered is asked again every few seconds: one that stops
answering while kubectl still runs (a hung kubectl) is replaced. Logs follow each ready pod with a
coloured pod prefix. `ApiWatch` notices the API server going away (a paused or restarting kind
node), says so once, and tells the forwards and the session when it answers again.
"""

from __future__ import annotations

import functools
import http.client
import socket
import threading
import time
from collections.abc import Callable

from devloop.output import Output
from devloop.ports import Cluster
from devloop.proc import Background


def port_free(port: int) -> bool:
    """Whether kubectl could listen on 127.0.0.1:port. Like kubectl's own bind (Go sets
    SO_REUSEADDR), a port held only by TIME-WAIT entries of closed connections counts as free."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_check(port: int, timeout: float = 3.0) -> tuple[int, str] | None:
    """GET / on 127.0.0.1:port; (status, body) or None when nothing answers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        return resp.status, resp.read(4096).decode(errors="replace")
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


RETRY_TAKEN = 3.0  # seconds between checks of a taken local port while idle
CHECK_EVERY = 10.0  # seconds between HTTP checks through a running forward
CHECK_TIMEOUT = 3.0  # an HTTP check that gets no answer in this time failed
MAX_BACKOFF = 8.0  # at most this long between restarts of a forward that keeps failing
API_POLL = 2.0  # seconds between questions to an API server that does not answer


class ApiWatch:
    """Whether the cluster's API server answers, shared by the forwards, the log streams and the
    session. An API server that stops answering is reported once; one thread then asks every
    few seconds until it answers again, says so, and calls `on_back`."""

    def __init__(self, kube: Cluster, out: Output, cluster: str, on_back: Callable[[], None] = lambda: None) -> None:
        self.kube = kube
        self.out = out
        self.cluster = cluster
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
            f"the API server of kind cluster {self.cluster!r} does not answer; port-forwards and log streams wait for it",
            "a paused or restarting kind node (`docker ps`): devloop resumes them when it answers; a save meanwhile fails its "
            "deploy, save again after",
        )
        threading.Thread(target=self._wait_back, daemon=True, name="devloop-api-wait").start()

    def _wait_back(self) -> None:
        while not self._stopped.wait(API_POLL):
            if self.kube.reachable():
                away = time.monotonic() - (self.lost_at or time.monotonic())
                self.out.info(
                    f"the API server of kind cluster {self.cluster!r} answers again (after {away:.0f}s); "
                    "resuming port-forwards and log streams"
                )
                self._up.set()
                self.on_back()
                return

    def stop(self) -> None:
        self._stopped.set()


class PortForward:
    """One declared forward, kept alive: restarted after each rollout and whenever kubectl exits;
    a taken local port is retried every few seconds until it is free."""

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
        self.target = f"service/{service}"
        self.port = port
        self.local_port = local_port
        self.url = f"http://127.0.0.1:{local_port}"
        self._proc: Background | None = None
        self._stopped = threading.Event()
        self._listening = threading.Event()
        self._lock = threading.Lock()
        self._monitor: threading.Thread | None = None
        self._warned_taken = False
        self.refused = False  # kubectl said the pod refused the connection (app not listening yet / on that port)
        self.ready = False
        self._failed_starts = 0  # restarts in a row that did not answer (the backoff between them grows)
        self._said_not_ready = False  # a "not ready" event was printed since the last "ready" one

    def _on_line(self, line: str) -> None:
        if "connection refused" in line:
            self.refused = True
        if line.startswith("Forwarding from"):
            self._listening.set()
        elif "unable to listen" in line or "address already in use" in line:
            self.out.detail(f"port-forward: {line.strip()}", service=self.label)
        elif line.startswith("Handling connection"):
            pass
        elif line.strip():
            self.out.detail(f"port-forward: {line.strip()}", service=self.label)

    def start(self) -> bool:
        """Start (or restart) the forward and check it; True once HTTP answers through it.
        A taken local port is warned about once and retried while idle."""
        with self._lock:
            if self._proc is not None:  # our own kubectl holds the port: stop it first
                self._proc.stop()
                self._proc = None
            self._listening.clear()
            self.ready = False
            if not port_free(self.local_port):
                taken = True
            else:
                taken = False
                self._proc = self.kube.port_forward(self.target, self.namespace, self.local_port, self.port, self._on_line)
            proc = self._proc
        if taken or proc is None:
            if not self._warned_taken:
                self.out.warn(
                    f"port {self.local_port} on 127.0.0.1 is already in use: no port-forward to {self.target} yet "
                    f"(retried every {RETRY_TAKEN:.0f}s)",
                    "free the port or set portForward.localPort in devloop.yaml",
                )
                self._warned_taken = True
            self._ensure_monitor()
            return False
        self._ensure_monitor()
        if not self._listening.wait(15) or not proc.alive():
            self._failed_starts += 1
            self._say(False, "port-forward did not start (retrying)")
            return False
        answer = http_check(self.local_port)
        self.ready = answer is not None
        self._failed_starts = 0 if self.ready else self._failed_starts + 1
        self._say(self.ready, f"HTTP {answer[0]}" if answer else "no HTTP answer yet")
        return self.ready

    def _say(self, ready: bool, message: str) -> None:
        """Every "ready" (each one checked); "not ready" once until the forward answers again, not
        once per retry while a pod or the API server is away."""
        if not ready and self._said_not_ready:
            return
        self._said_not_ready = not ready
        self.out.forward(self.url, ready, message, service=self.label)

    def _ensure_monitor(self) -> None:
        if self._monitor is None:
            self._monitor = threading.Thread(target=self._watch, daemon=True, name=f"forward-{self.local_port}")
            self._monitor.start()

    def probe(self, within: float = 15.0) -> tuple[int, str] | None:
        """One HTTP answer through a short-lived forward (for `devloop up`), then stop it. Retries for
        `within` seconds: without a readiness probe a pod is ready before the app listens."""
        deadline = time.monotonic() + within
        try:
            while True:
                if self._listening.is_set() or self.start():
                    answer = http_check(self.local_port)
                    if answer is not None:
                        return answer
                if time.monotonic() >= deadline or self._stopped.wait(0.5):
                    return None
        finally:
            self.stop()

    def why_no_answer(self) -> str:
        """The hint that matches what kubectl said."""
        if self.refused:
            return "the pod refused the connection: the app is not listening (yet), or not on the Service's targetPort"
        return "check the Service's selector and ports (`kubectl get endpoints`)"

    def _watch(self) -> None:
        """Restart the forward when kubectl exits (its pod went away) or stops answering while it
        runs (hung); wait for an API server that does not answer; retry a taken port while idle."""
        while not self._stopped.is_set():
            with self._lock:
                proc = self._proc
            if proc is None:
                if self._stopped.wait(RETRY_TAKEN):
                    return
                if port_free(self.local_port):
                    self.out.info(f"port {self.local_port} is free again; starting the port-forward", service=self.label)
                    self.start()
                continue
            if proc.wait(CHECK_EVERY) is None:  # kubectl runs: does HTTP still get through?
                self._check(proc)
                continue
            with self._lock:
                replaced = proc is not self._proc  # stopped on purpose by start(): not a drop
            if replaced:
                continue
            if self.api is not None and not self.api.answers() and not self.api.wait_up(self._stopped):
                return
            backoff = min(MAX_BACKOFF, 2.0 ** max(0, self._failed_starts - 1))
            if self._stopped.wait(backoff):
                return
            self.out.detail("port-forward exited; reconnecting", service=self.label)
            self.start()

    def _check(self, proc: Background) -> None:
        """One HTTP check through a running forward. A forward that answered and no longer does
        (twice, a second apart: a restarting app is not a hung forward) is replaced; when the API
        server is what does not answer, it is replaced once the API server is back."""
        answer = http_check(self.local_port, CHECK_TIMEOUT)
        if answer is None and self.ready and not self._stopped.wait(1.0):
            answer = http_check(self.local_port, CHECK_TIMEOUT)
        with self._lock:
            if proc is not self._proc or self._stopped.is_set():
                return  # replaced or stopped meanwhile
        if answer is not None:
            if not self.ready:  # the app listens now
                self.ready = True
                self._failed_starts = 0
                self._say(True, f"HTTP {answer[0]}")
            return
        if not self.ready:
            return  # it never answered since it started: nothing to compare with (not HTTP, or not yet)
        self.ready = False
        if self.api is not None and not self.api.answers():
            self._say(False, "no HTTP answer: the API server does not answer")
            if not self.api.wait_up(self._stopped):
                return
        else:
            self._say(False, f"no HTTP answer for {2 * CHECK_TIMEOUT + 1:.0f}s while kubectl runs; replacing the port-forward")
        self.start()

    def stop(self) -> None:
        self._stopped.set()
        with self._lock:
            if self._proc is not None:
                self._proc.stop()
                self._proc = None


KUBECTL_NOISE = ("rpc error: code = NotFound", "Error from server (NotFound)", "unexpected stream type")


class LogStreams:
    """One `kubectl logs -f` per ready pod; pods that are gone have their stream stopped. A stream
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
        if line.startswith(KUBECTL_NOISE):  # kubectl's own words when a pod goes away, not the app's
            return
        self.on_line(pod, line)

    def stop(self) -> None:
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            stream.stop()
