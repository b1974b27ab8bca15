"""Port-forward and pod log streams for `devloop dev`, kept alive across rollouts.

`kubectl port-forward svc/...` binds to one pod and dies with it, so the forwarder is restarted
after every rollout and whenever it exits; it reports ready only once an HTTP request through
it gets an answer. Logs follow each ready pod with a coloured pod prefix.
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


class PortForward:
    """One declared forward, kept alive: restarted after each rollout and whenever kubectl exits;
    a taken local port is retried every few seconds until it is free."""

    def __init__(self, kube: Cluster, out: Output, namespace: str, service: str, port: int, local_port: int, label: str = "") -> None:
        self.kube = kube
        self.out = out
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
            self.out.forward(self.url, False, "port-forward did not start (retrying)", service=self.label)
            return False
        answer = http_check(self.local_port)
        self.ready = answer is not None
        self.out.forward(self.url, self.ready, f"HTTP {answer[0]}" if answer else "no HTTP answer yet", service=self.label)
        return self.ready

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
        """Restart the forward when kubectl exits (its pod went away); retry a taken port while idle."""
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
            proc.wait()  # blocks in waitpid: no polling while the forward is healthy
            with self._lock:
                replaced = proc is not self._proc  # stopped on purpose by start(): not a drop
            if replaced:
                continue
            if self._stopped.wait(1.0):
                return
            self.out.detail("port-forward exited; reconnecting")
            self.start()

    def stop(self) -> None:
        self._stopped.set()
        with self._lock:
            if self._proc is not None:
                self._proc.stop()
                self._proc = None


KUBECTL_NOISE = ("rpc error: code = NotFound", "Error from server (NotFound)", "unexpected stream type")


class LogStreams:
    """One `kubectl logs -f` per ready pod; pods that are gone have their stream stopped."""

    def __init__(self, kube: Cluster, namespace: str, on_line: Callable[[str, str], None]) -> None:
        self.kube = kube
        self.namespace = namespace
        self.on_line = on_line  # (pod, line)
        self._streams: dict[str, Background] = {}

    def follow(self, pods: list[str]) -> None:
        for name in list(self._streams):
            if name not in pods or not self._streams[name].alive():  # gone, or its stream ended
                self._streams.pop(name).stop()
        for name in pods:
            if name not in self._streams:
                self._streams[name] = self.kube.stream_logs(name, self.namespace, functools.partial(self._line, name))

    def _line(self, pod: str, line: str) -> None:
        if not line.strip():
            return
        if line.startswith(KUBECTL_NOISE):  # kubectl's own words when a pod goes away, not the app's
            return
        self.on_line(pod, line)

    def stop(self) -> None:
        for stream in self._streams.values():
            stream.stop()
        self._streams.clear()
