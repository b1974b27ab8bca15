"""The forward across a rollout of pods without a readinessProbe (issue 23): such a pod is Ready as
soon as its container starts, before its app listens, and an old pod's app stops listening and
closes its kept-alive connections on SIGTERM, before the pod watch says it is going. On real local
sockets, with the fake pods and connector of test_proxy.py; no request may fail."""

from __future__ import annotations

import contextlib
import http.client
import select
import socket
import threading
import time

import pytest

from devloop import proxy as proxy_mod
from devloop.proxy import Proxy, Upstreams
from tests.unit import test_proxy
from tests.unit.test_proxy import Closing, Connector, get, stamp, wait_until

pods = test_proxy.pods  # the fake pods' connector, and the replay's window wider than any stall (fixtures)
wide_windows = test_proxy.wide_windows


class KeptAlivePod:
    """A pod's app that keeps connections alive (HTTP/1.1, as node does), answering GET and POST
    with the pod's name. `stop()` is its SIGTERM: it stops listening and closes each kept-alive
    connection when it gets to it: an idle one at once, one whose next request is already on the
    way when that request arrives, unanswered (what node's closeIdleConnections does to a request
    still in flight through the port-forward)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.requests: list[str] = []  # "GET /", "POST /orders": what it answered
        self.dropped: list[str] = []  # the requests it closed a connection on, unanswered
        self.stopping = threading.Event()
        self.close_idle = True
        self._idle: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen()
        self.port = int(self.server.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True, name=f"pod-{name}").start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True, name=f"pod-{self.name}-conn").start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            buf = b""
            while True:
                with self._lock:
                    if self.stopping.is_set() and self.close_idle and not buf:
                        return  # idle when it stops: closed
                    self._idle.add(conn)
                try:
                    chunk = conn.recv(65536)
                except OSError:
                    return
                with self._lock:
                    self._idle.discard(conn)
                if not chunk:
                    return
                buf += chunk
                if b"\r\n\r\n" not in buf:
                    continue
                head, _, buf = buf.partition(b"\r\n\r\n")
                request = " ".join(head.split(b"\r\n")[0].decode().split()[:2])
                length = next((int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")), 0)
                while len(buf) < length:
                    buf += conn.recv(65536)
                buf = buf[length:]
                if self.stopping.is_set():
                    self.dropped.append(request)  # arrived after SIGTERM: closed unanswered
                    return
                self.requests.append(request)
                body = self.name.encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: keep-alive\r\n\r\n%s" % (len(body), body))

    def stop(self, close_idle: bool = True) -> None:
        """SIGTERM: the listener is closed; idle kept-alive connections too when `close_idle` (else a
        request still on its way when it stops is what the connection gets closed on)."""
        self.close_idle = close_idle
        self.stopping.set()
        self.server.close()
        if close_idle:
            with self._lock:
                for conn in self._idle:
                    with contextlib.suppress(OSError):
                        conn.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.stop()


def kept_alive(pods: Connector, *names: str, failed: list[str] | None = None) -> tuple[Proxy, list[KeptAlivePod]]:
    said = failed if failed is not None else []
    p = Proxy(0, Upstreams(clock=lambda: 0.0), pods, on_fail=lambda pod, e: said.append(pod), name="test-proxy", spare=False)
    assert p.listen()
    apps = []
    for i, name in enumerate(names, 1):
        app = KeptAlivePod(name)
        pods.pods[name] = app  # type: ignore[assignment]
        p.upstreams.seen(name, True, stamp(i))
        apps.append(app)
    return p, apps


def ask(conn: http.client.HTTPConnection, method: str = "GET") -> str:
    conn.request(method, "/" if method == "GET" else "/orders", body=b'{"qty": 1}' if method == "POST" else None)
    return conn.getresponse().read().decode()


def test_a_request_on_a_kept_alive_connection_a_stopping_pod_closes_is_answered_by_the_next_pod(
    pods: Connector, wide_windows: None
) -> None:
    """The newest pod gets SIGTERM while a kept-alive connection's next request is on its way: its
    app closes the connection on it unanswered. The request goes to the next Ready pod and the
    client's connection carries on there; the client never sees the close."""
    failed: list[str] = []
    p, (old, stopping) = kept_alive(pods, "web-1", "web-2", failed=failed)
    conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
    try:
        assert ask(conn) == "web-2"
        stopping.stop(close_idle=False)  # the request below is on its way when the app stops
        assert ask(conn) == "web-1"
        assert stopping.dropped == ["GET /"] and old.requests == ["GET /"]
        assert failed == ["web-2"]  # said with -v; tried after the others until the pod watch says it is going
        assert ask(conn) == "web-1"  # the same connection, on the next pod now
        assert p.accepted == 1
    finally:
        conn.close()
        p.stop()


def test_a_post_on_a_kept_alive_connection_a_stopping_pod_closes_is_not_sent_twice(pods: Connector, wide_windows: None) -> None:
    """A POST the pod closed the connection on may have been taken (the proxy cannot tell): the
    client is told, as a server's close would tell it; no other pod gets it."""
    p, (old, stopping) = kept_alive(pods, "web-1", "web-2")
    conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
    try:
        assert ask(conn, "POST") == "web-2"
        stopping.stop(close_idle=False)
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            ask(conn, "POST")
        assert stopping.dropped == ["POST /orders"] and old.requests == []
    finally:
        conn.close()
        p.stop()


def test_an_idle_kept_alive_connection_a_stopping_pod_closes_is_closed_for_the_client(pods: Connector, wide_windows: None) -> None:
    """Nothing in flight: the close is passed on at once, as the pod made it, so that the client
    (a browser, urllib3) sees its pooled connection dropped before it reuses it. Nothing is replayed."""
    p, (old, stopping) = kept_alive(pods, "web-1", "web-2")
    conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
    try:
        assert ask(conn) == "web-2"
        stopping.stop()
        assert conn.sock is not None
        readable, _, _ = select.select([conn.sock], [], [], 10)
        assert readable and conn.sock.recv(1) == b""  # the end of the connection
        assert old.requests == [] and stopping.dropped == []
    finally:
        conn.close()
        p.stop()


class Clock:
    """The proxy's time.monotonic, which the test moves on: an app that takes long to start listening."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.ahead


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(proxy_mod, "time", c)
    return c


@pytest.mark.parametrize("new_pods", ["start listening", "are replaced"])
def test_a_request_while_no_ready_pod_listens_yet_is_held_until_one_does(
    pods: Connector, wide_windows: None, clock: Clock, new_pods: str
) -> None:
    """A probe-less rollout: the old pod stopped listening (SIGTERM) before the watch says it is
    going, and the new pods are Ready while their apps still start (npm, node, a CPU limit: seconds).
    Every Ready pod refuses the connection for a while, or there is none: it is held, as a
    connection waiting for a Ready pod is, until a pod answers, however long the apps take to
    start within the hold."""
    p = Proxy(0, Upstreams(), pods, name="test-proxy", spare=False)
    assert p.listen()
    starting = {name: Closing() for name in ("web-old", "web-new-1", "web-new-2")}
    try:
        for i, (name, app) in enumerate(starting.items()):
            pods.pods[name] = app
            p.upstreams.seen(name, True, stamp(i))
        answer: list[str] = []

        def request() -> None:
            try:
                answer.append(get(p.port, timeout=60))
            except (OSError, http.client.HTTPException) as e:
                answer.append(repr(e))

        client = threading.Thread(target=request, daemon=True)
        client.start()
        wait_until("every Ready pod refused it", lambda: all(app.accepted >= 1 for app in starting.values()))
        p.upstreams.seen("web-old", False)  # the watch says the old pod is going
        clock.ahead += 20.0  # the new apps take 20 s to listen (under the 30 s hold)
        asked = starting["web-new-1"].accepted
        wait_until("the new pods asked again", lambda: starting["web-new-1"].accepted > asked)
        if new_pods == "are replaced":  # e.g. a rollback: no Ready pod for a moment, then one that listens
            p.upstreams.seen("web-new-1", False)
            p.upstreams.seen("web-new-2", False)
            pods.add("web-back")
            p.upstreams.seen("web-back", True, stamp(9))
        else:
            pods.add("web-new-2")
        client.join(30)
        assert answer == ["web-back" if new_pods == "are replaced" else "web-new-2"]
    finally:
        p.stop()
        for app in starting.values():
            app.close()


def test_another_protocols_command_a_stopping_pod_closes_is_not_replayed(pods: Connector, wide_windows: None) -> None:
    """Only an HTTP request stands alone: a command of another protocol on a kept-alive connection
    (Redis' `GET key`, after an AUTH on the same connection) is not sent to another pod, which has
    not seen what the connection did before. The client sees the close."""
    p, (old, stopping) = kept_alive(pods, "web-1", "web-2")
    try:
        with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
            s.sendall(b"GET key\r\n\r\n")
            assert s.recv(65536).endswith(b"web-2")
            stopping.stop(close_idle=False)
            s.sendall(b"GET key\r\n\r\n")
            assert s.recv(65536) == b""
        assert stopping.dropped == ["GET key"] and old.requests == []
    finally:
        p.stop()


def test_probe_less_rollouts_in_a_row_fail_no_request_on_new_or_kept_alive_connections(pods: Connector) -> None:
    """The e2e test's scenario in the fakes: rollout after rollout, each new pod Ready while its app
    does not listen yet, then the old pod's SIGTERM (it stops listening, closes its idle kept-alive
    connections and drops the requests that arrive after), while clients request continuously on
    new connections and on kept-alive ones (checked for a close before reuse, as urllib3 does)."""
    p = Proxy(0, Upstreams(), pods, name="test-proxy")
    assert p.listen()
    first = KeptAlivePod("pod-0")
    pods.pods["pod-0"] = first  # type: ignore[assignment]
    p.upstreams.seen("pod-0", True, stamp(0))
    answers: list[list[str]] = [[], [], [], []]
    failures: list[str] = []
    stop = threading.Event()

    def client(i: int, keep_alive: bool) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=30)
        while not stop.is_set():
            if conn.sock is not None and select.select([conn.sock], [], [], 0)[0]:
                conn.close()  # closed by the pod while idle: not reused
            try:
                answers[i].append(ask(conn))
            except (OSError, http.client.HTTPException) as e:
                failures.append(f"{'kept-alive' if keep_alive else 'new'}: {e!r}")
                conn.close()
            if not keep_alive:
                conn.close()
        conn.close()

    threads = [threading.Thread(target=client, args=(i, i >= 2), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    old, starting = first, []
    try:
        wait_until("every client answered", lambda: all(answers))
        for i in range(1, 9):
            name = f"pod-{i}"
            starting.append(Closing())
            pods.pods[name] = starting[-1]
            p.upstreams.seen(name, True, stamp(i))  # Ready: its container started, its app does not listen yet
            wait_until(f"{name} refusing a connection", lambda: starting[-1].accepted >= 1)
            old.stop()  # the old pod's SIGTERM, before the pod watch says it is going
            app = KeptAlivePod(name)
            pods.pods[name] = app  # type: ignore[assignment]
            p.upstreams.seen(f"pod-{i - 1}", False)
            wait_until(f"every client answered by {name}", lambda name=name: all(name in a[-3:] for a in answers))  # type: ignore[misc]
            old = app
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        p.stop()
        old.close()
        for c in starting:
            c.close()
    assert failures == []
    assert all(a and a[-1] == "pod-8" for a in answers)
