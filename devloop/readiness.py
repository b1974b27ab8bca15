"""The pod's own readiness probe, run by devloop's forward while the kubelet has not said Ready yet
(issue 22): what the developer sees on the forwarded URL no longer waits for the kubelet's next
probe period (`periodSeconds`, `initialDelaySeconds`) and the endpoint update after it.

`EarlyReady` probes each new, not-yet-Ready pod of a forward every `INTERVAL` seconds through the
API server's port-forward, exactly as its readinessProbe declares: `httpGet` (the path, port and
headers; any status from 200 to 399 passes, as the kubelet judges) or `tcpSocket` (the connection
opens). `successThreshold` passes in a row make the pod ready for new connections of the forward
(`proxy.Upstreams.early`); the kubelet's word takes over as soon as it comes. Probes devloop cannot
run as the kubelet would (`exec`, `grpc`, `httpGet` with `scheme: HTTPS` or a `host`) are left to
the kubelet. The Service's own endpoints are untouched: only devloop's forward routes early.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from devloop import portcheck

INTERVAL = 0.075  # seconds between two probes of one pod
GIVE_UP = 180.0  # seconds a pod is probed before its readiness is left to the kubelet alone
ANSWER_MAX = 1.0  # seconds one probe waits for its answer (the probe's timeoutSeconds when shorter)


@dataclass(frozen=True)
class Probe:
    """A readiness probe devloop can run itself."""

    kind: str  # "http" or "tcp"
    port: int
    path: str = "/"
    headers: tuple[tuple[str, str], ...] = ()
    timeout: float = ANSWER_MAX
    successes: int = 1  # successThreshold
    failures: int = 3  # failureThreshold


def _port(value: Any, container: Mapping[str, Any]) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    for p in container.get("ports") or []:
        if isinstance(p, Mapping) and p.get("name") == value and isinstance(p.get("containerPort"), int):
            return int(p["containerPort"])
    return None


def probe_of(pod: Mapping[str, Any], port: int | None = None) -> Probe | None:
    """The readiness probe of the pod's container that serves `port` (else its first container with a
    readiness probe), when devloop can run it as the kubelet does; None otherwise."""
    containers = [c for c in (pod.get("spec") or {}).get("containers") or [] if isinstance(c, Mapping)]
    serving = [c for c in containers if port is not None and any(p.get("containerPort") == port for p in c.get("ports") or [])]
    for c in serving + [c for c in containers if c not in serving]:
        probe = c.get("readinessProbe")
        if not isinstance(probe, Mapping):
            continue
        timeout = min(ANSWER_MAX, float(probe.get("timeoutSeconds") or 1))
        successes = max(1, int(probe.get("successThreshold") or 1))
        failures = max(1, int(probe.get("failureThreshold") or 3))
        http, tcp = probe.get("httpGet"), probe.get("tcpSocket")
        if isinstance(http, Mapping):
            if str(http.get("scheme") or "HTTP").upper() != "HTTP" or http.get("host"):
                return None
            number = _port(http.get("port"), c)
            if number is None:
                return None
            declared = [h for h in http.get("httpHeaders") or [] if isinstance(h, Mapping) and h.get("name")]
            headers = tuple((str(h["name"]), str(h.get("value", ""))) for h in declared)
            return Probe("http", number, str(http.get("path") or "/"), headers, timeout, successes, failures)
        if isinstance(tcp, Mapping):
            number = _port(tcp.get("port"), c)
            return None if number is None else Probe("tcp", number, timeout=timeout, successes=successes, failures=failures)
        return None  # exec, grpc: the kubelet's
    return None


def passes(sock: socket.socket, probe: Probe) -> bool:
    """One probe over a connected socket (closed after): an HTTP status from 200 to 399, or for a
    tcpSocket probe a stream that stays open (portcheck.tcp_check). The socket is the API server's
    port-forward: a pod that does not listen closes it, which reads as a failure here."""
    if probe.kind == "tcp":
        return portcheck.tcp_check(sock) is None  # it closes the socket
    try:
        sock.settimeout(probe.timeout)
        names = {k.lower() for k, _ in probe.headers}
        lines = [f"GET {probe.path} HTTP/1.1"]
        lines += [] if "host" in names else [f"Host: 127.0.0.1:{probe.port}"]
        lines += [f"{k}: {v}" for k, v in probe.headers] + ["User-Agent: devloop-probe", "Connection: close", "", ""]
        sock.sendall("\r\n".join(lines).encode())
        status = b""
        while b"\r\n" not in status and len(status) < 1024:
            chunk = sock.recv(1024)
            if not chunk:
                break
            status += chunk
        words = status.split(b"\r\n", 1)[0].split()
        return len(words) >= 2 and words[0].startswith(b"HTTP/") and words[1].isdigit() and 200 <= int(words[1]) < 400
    except OSError:
        return False
    finally:
        with contextlib.suppress(OSError):
            sock.close()


class EarlyReady:
    """Probes new pods until the kubelet says Ready, they go, or GIVE_UP: `on_pass(pod)` after
    successThreshold passes in a row, `on_fail(pod)` after failureThreshold failures in a row once it
    had passed. One thread per pod being probed (a rollout starts a few at most)."""

    def __init__(
        self,
        connect: Callable[[str, int], socket.socket],
        spec_of: Callable[[str], Mapping[str, Any] | None],
        on_pass: Callable[[str], None],
        on_fail: Callable[[str], None],
        port: Callable[[], int | None] = lambda: None,
        interval: float = INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.connect = connect  # (pod, port) → a socket to the pod's port; raises when it cannot
        self.spec_of = spec_of  # pod → its object as the API returns it (None: gone)
        self.on_pass = on_pass
        self.on_fail = on_fail
        self.port = port  # the container port the forward relays to (picks the container)
        self.interval = interval
        self.clock = clock
        self._probing: dict[str, threading.Event] = {}  # pod → set when it should stop
        self._done: set[str] = set()  # pods probed already (passed, or left to the kubelet)
        self._lock = threading.Lock()
        self._stopped = threading.Event()

    def watch(self, pod: str) -> None:
        """Start probing this not-Ready pod (once per pod)."""
        with self._lock:
            if self._stopped.is_set() or pod in self._probing or pod in self._done:
                return
            stop = self._probing[pod] = threading.Event()
        threading.Thread(target=self._run, args=(pod, stop), daemon=True, name=f"early-ready-{pod}").start()

    def forget(self, pod: str, gone: bool = False) -> None:
        """The kubelet said Ready (or the pod goes): stop probing it. `gone`: it may be forgotten."""
        with self._lock:
            stop = self._probing.pop(pod, None)
            if gone:
                self._done.discard(pod)
            else:
                self._done.add(pod)
        if stop is not None:
            stop.set()

    def probing(self) -> list[str]:
        with self._lock:
            return sorted(self._probing)

    def stop(self) -> None:
        self._stopped.set()
        with self._lock:
            stops, self._probing = list(self._probing.values()), {}
        for s in stops:
            s.set()

    def _run(self, pod: str, stop: threading.Event) -> None:
        try:
            self._probe(pod, stop)
        except Exception:  # never a traceback from a background probe (the session closing, the API server away): the kubelet decides
            return
        finally:
            with self._lock:
                if self._probing.get(pod) is stop:
                    del self._probing[pod]
                    self._done.add(pod)

    def _probe(self, pod: str, stop: threading.Event) -> None:
        spec = self.spec_of(pod)
        probe = probe_of(spec, self.port()) if spec is not None else None
        if probe is None:
            return  # no probe devloop can run: the kubelet decides
        deadline = self.clock() + GIVE_UP
        passed = failed = 0
        early = False
        while not stop.is_set() and self.clock() < deadline:
            started = self.clock()
            try:
                ok = passes(self.connect(pod, probe.port), probe)
            except Exception:  # not running yet, the API server busy: the next round
                ok = False
            passed, failed = (passed + 1, 0) if ok else (0, failed + 1)
            if not early and passed >= probe.successes and not stop.is_set():
                early = True
                self.on_pass(pod)
            elif early and failed >= probe.failures:
                early = False  # as the kubelet would: not ready after failureThreshold failures in a row
                self.on_fail(pod)
            # once routed to, it is still probed (less often) until the kubelet has its say
            stop.wait(max(0.0, (self.interval * (4 if early else 1)) - (self.clock() - started)))
