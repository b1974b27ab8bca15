"""The port-forward's own listener (issue 12), on real local sockets: fake "pods" are local HTTP
servers, a fake connector (behind the Cluster protocol's `connect`) maps pod names to them."""

from __future__ import annotations

import contextlib
import http.client
import io
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from devloop import forward, model
from devloop.errors import StepFailed
from devloop.forward import PortForward, free_port
from devloop.output import Output
from devloop.proxy import Connector as Connect
from devloop.proxy import Proxy, Upstreams
from devloop.workload import PodEvent
from tests.unit.fakes import FakeBackground, FakeCluster


class FakePod:
    """A pod's app: an HTTP server on 127.0.0.1 answering every request with the pod's name (and recording the
    paths of the POSTs)."""

    def __init__(self, name: str, think: float = 0.0) -> None:
        self.name = name
        self.posts: list[str] = []  # the paths of the POSTs it took
        posts = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                threading.Event().wait(think)  # a slow app: the answer comes this long after the request
                body = name.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                posts.append(self.path)
                self.do_GET()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True, name=f"pod-{name}")
        self._thread.start()

    def close(self) -> None:
        """The pod goes away: nothing listens on its port any more."""
        self.server.shutdown()
        self.server.server_close()


class Connector:
    """The API server's portforward, for the fakes: pod name → its fake app's port."""

    def __init__(self) -> None:
        self.pods: dict[str, FakePod | Closing] = {}
        self.calls: list[str] = []
        self.threads: list[str] = []  # the thread that asked, per call

    def add(self, name: str) -> FakePod:
        pod = self.pods[name] = FakePod(name)
        return pod

    def __call__(self, pod: str) -> socket.socket:
        self.calls.append(pod)
        self.threads.append(threading.current_thread().name)
        try:
            s = socket.create_connection(("127.0.0.1", self.pods[pod].port), timeout=5)
        except (OSError, KeyError) as e:
            raise StepFailed(f"port-forward to {pod} failed: {e}") from e
        s.settimeout(None)
        return s

    def close(self) -> None:
        for p in self.pods.values():
            p.close()


def get(port: int, timeout: float = 5.0) -> str:
    """One request on a new connection (what a browser's reload may do): the answering pod's name."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/")
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def wait_until(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    """Polling with a deadline (the fakes run in other threads)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        threading.Event().wait(0.01)


def stamp(second: int) -> str:
    return f"2026-11-28T13:00:{second:02d}Z"


def threads_named(prefix: str) -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(prefix)]


@pytest.fixture
def pods() -> Iterator[Connector]:
    c = Connector()
    yield c
    c.close()


@pytest.fixture
def wide_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    """The replay's and the restart's windows (seconds after a pod closed a connection unanswered)
    wider than any stall of a loaded machine: the tests say what happens inside them, whatever the speed."""
    monkeypatch.setattr("devloop.proxy.REPLAY_WINDOW", 600.0)


@pytest.fixture
def proxy(pods: Connector) -> Iterator[Proxy]:
    p = Proxy(0, Upstreams(), pods, name="test-proxy")
    assert p.listen()
    yield p
    p.stop()


def test_new_connections_go_to_the_newest_ready_pod(pods: Connector, proxy: Proxy) -> None:
    up = proxy.upstreams
    pods.add("web-old-1")
    pods.add("web-old-2")
    up.seen("web-old-1", True, stamp(1))
    up.seen("web-old-2", True, stamp(2))
    assert get(proxy.port) == "web-old-2"
    pods.add("web-new-1")
    up.seen("web-new-1", False, stamp(9))  # created, not Ready yet: a failed rollout stays here
    assert get(proxy.port) == "web-old-2"
    up.seen("web-new-1", True, stamp(9))  # the first Ready new replica takes new connections at once
    assert get(proxy.port) == "web-new-1"
    up.seen("web-new-1", False)  # its readiness probe fails: back to the old version
    assert get(proxy.port) == "web-old-2"
    # pods created in the same second: the one seen last is the newer
    pods.add("web-new-2")
    pods.add("web-new-3")
    up.seen("web-new-2", True, stamp(20))
    up.seen("web-new-3", True, stamp(20))
    assert get(proxy.port) == "web-new-3"


def test_moving_the_forward_never_refuses_a_connection(pods: Connector, proxy: Proxy) -> None:
    """A client connecting continuously while every pod is replaced, one after another (a rollout
    each): every request is answered; no connection is refused, reset or left unanswered."""
    up = proxy.upstreams
    pods.add("pod-0")
    up.seen("pod-0", True, stamp(0))
    answered: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                answered.append(get(proxy.port))
            except (OSError, http.client.HTTPException) as e:
                failures.append(repr(e))

    def answering(pod: str) -> Callable[[], bool]:
        return lambda: pod in answered[-3:]

    t = threading.Thread(target=client, daemon=True)
    t.start()
    try:
        wait_until("pod-0 answering", lambda: "pod-0" in answered)
        for i in range(1, 9):
            pods.add(f"pod-{i}")
            up.seen(f"pod-{i}", True, stamp(i))  # the new pod is Ready ...
            wait_until(f"pod-{i} answering", answering(f"pod-{i}"))
            up.seen(f"pod-{i - 1}", False)  # ... then the old one terminates and goes away
            pods.pods[f"pod-{i - 1}"].close()
            gone = len(answered)
            wait_until(f"pod-{i} answering after pod-{i - 1} went away", lambda i=i, gone=gone: answered[gone:].count(f"pod-{i}") >= 3)  # type: ignore[misc]
    finally:
        stop.set()
        t.join(10)
    assert failures == []
    # one client, one request after the other: each pod answered, the old one until the new one did, then never again
    order = [int(name.removeprefix("pod-")) for name in answered]
    assert set(order) == set(range(9)) and order == sorted(order)


def test_a_connection_is_held_until_a_pod_is_ready(pods: Connector, proxy: Proxy) -> None:
    """No Ready pod (every replica restarting): the connection is not refused; it waits, and is
    answered by the first pod that gets Ready."""
    result: list[str] = []
    t = threading.Thread(target=lambda: result.append(get(proxy.port, timeout=20)), daemon=True)
    t.start()
    wait_until("the connection accepted", lambda: proxy.accepted == 1)
    assert t.is_alive() and result == []  # held
    pods.add("web-1")
    proxy.upstreams.seen("web-1", True, stamp(1))
    t.join(10)
    assert result == ["web-1"]


def test_a_held_connection_is_closed_after_the_hold(pods: Connector) -> None:
    p = Proxy(0, Upstreams(), pods, hold=0.2, name="test-proxy")
    assert p.listen()
    try:
        with pytest.raises((http.client.HTTPException, OSError)):
            get(p.port)
        assert pods.calls == []
    finally:
        p.stop()


def test_a_dead_pod_fails_over_to_the_next_ready_one(pods: Connector) -> None:
    failed: list[str] = []
    stopped_clock = Upstreams(clock=lambda: 0.0)  # "for a while" (DEMOTE) has not passed, however slow the machine
    p = Proxy(0, stopped_clock, pods, on_fail=lambda pod, e: failed.append(pod), name="test-proxy", spare=False)
    assert p.listen()
    try:
        pods.add("web-1")
        pods.add("web-2").close()  # Ready as far as the watch knows, but gone
        p.upstreams.seen("web-1", True, stamp(1))
        p.upstreams.seen("web-2", True, stamp(2))
        assert get(p.port) == "web-1"
        assert pods.calls == ["web-2", "web-1"] and failed == ["web-2"]
        assert get(p.port) == "web-1"  # the pod that failed is tried after the others for a while
        assert pods.calls[2:] == ["web-1"]
    finally:
        p.stop()


class Closing:
    """A pod whose app does not listen, as the API server's port-forward shows it: the stream opens,
    then closes without a byte. `takes_the_request`: an app that dies while handling one: the
    stream closes, without a byte, once the request's first bytes came in."""

    def __init__(self, takes_the_request: bool = False) -> None:
        self.takes_the_request = takes_the_request
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen()
        self.port = int(self.server.getsockname()[1])
        self.accepted = 0
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.accepted += 1
            if self.takes_the_request:
                with contextlib.suppress(OSError):
                    conn.settimeout(10)
                    conn.recv(65536)
            conn.close()

    def close(self) -> None:
        self.server.close()


def test_a_pod_that_closes_at_once_has_the_request_replayed_to_the_next(pods: Connector, wide_windows: None) -> None:
    failed: list[str] = []
    stopped_clock = Upstreams(clock=lambda: 0.0)  # "for a while" (DEMOTE) has not passed, however slow the machine
    p = Proxy(0, stopped_clock, pods, on_fail=lambda pod, e: failed.append(pod), name="test-proxy", spare=False)
    assert p.listen()
    closing = Closing()
    try:
        pods.add("web-1")
        pods.pods["web-2"] = closing
        p.upstreams.seen("web-1", True, stamp(1))
        p.upstreams.seen("web-2", True, stamp(2))
        assert get(p.port) == "web-1"
        assert closing.accepted == 1 and failed == ["web-2"]
        assert get(p.port) == "web-1" and closing.accepted == 1  # tried after the others for a while
    finally:
        p.stop()
        closing.close()


class Refused(socket.socket):
    """A port-forward socket whose error channel said the pod's port refused the stream."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock.family, sock.type, sock.proto, sock.detach())

    def refused(self) -> bool:
        return True


def post(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("POST", "/orders", body=b'{"qty": 1}')
        return conn.getresponse().read().decode()
    finally:
        conn.close()


@pytest.mark.parametrize("refused", [False, True])
def test_a_post_is_replayed_only_when_the_pod_refused_it(pods: Connector, refused: bool, wide_windows: None) -> None:
    """A pod that closes a POST unanswered may have taken it (its app died while handling it): it is
    not sent to a second pod, unless the API server said the port refused the stream."""
    connect: Connect = (lambda pod: Refused(pods(pod)) if pod == "web-2" else pods(pod)) if refused else pods
    p = Proxy(0, Upstreams(), connect, name="test-proxy", spare=False)
    assert p.listen()
    closing = Closing(takes_the_request=not refused)
    seen = pods.add("web-1").posts
    try:
        pods.pods["web-2"] = closing
        p.upstreams.seen("web-1", True, stamp(1))
        p.upstreams.seen("web-2", True, stamp(2))
        if refused:
            assert post(p.port) == "web-1" and seen == ["/orders"]
        else:
            with pytest.raises((http.client.HTTPException, ConnectionError)):
                post(p.port)
            assert seen == []
        assert closing.accepted == 1
    finally:
        p.stop()
        closing.close()


def test_while_every_pod_restarts_its_app_a_new_connection_waits_for_one_instead_of_failing(pods: Connector, wide_windows: None) -> None:
    """A live update restarts the app in every replica at once: for a moment each pod's port refuses
    (the stream closes unanswered). The connection is asked of them again until one answers."""
    p = Proxy(0, Upstreams(), pods, name="test-proxy", spare=False)
    assert p.listen()
    restarting = [Closing(), Closing()]
    try:
        for i, c in enumerate(restarting, 1):
            pods.pods[f"web-{i}"] = c
            p.upstreams.seen(f"web-{i}", True, stamp(i))
        answer: list[str] = []
        client = threading.Thread(target=lambda: answer.append(get(p.port, timeout=30)))
        client.start()
        wait_until("both restarting pods refused it", lambda: all(c.accepted >= 1 for c in restarting))
        pods.add("web-2")  # web-2's app listens again
        client.join(10)
        assert answer == ["web-2"]
    finally:
        p.stop()
        for c in restarting:
            c.close()


def test_a_connection_opened_ahead_to_the_pod_new_ones_go_to(pods: Connector, proxy: Proxy) -> None:
    """Setting up the API server's port-forward (a websocket) is not in a new connection's way: one
    is opened ahead to the pod that gets the next connection, again as soon as it is taken, and to a
    new pod as soon as it is Ready. One to a pod that went away or closed is not used."""
    up = proxy.upstreams
    pods.add("web-1")
    up.seen("web-1", True, stamp(1))
    wait_until("a connection opened ahead", lambda: pods.calls == ["web-1"])
    assert get(proxy.port) == "web-1"
    wait_until("the next one opened ahead", lambda: pods.calls == ["web-1", "web-1"])
    pods.add("web-2")
    up.seen("web-2", True, stamp(2))  # a rollout's first Ready replica
    wait_until("one opened ahead to the new pod", lambda: pods.calls[-1] == "web-2")
    assert get(proxy.port) == "web-2"
    wait_until("the next one opened ahead", lambda: pods.calls[-2:] == ["web-2", "web-2"])
    up.seen("web-2", False)  # its readiness fails: back to web-1, on a connection opened ahead again
    wait_until("one opened ahead to web-1 again", lambda: pods.calls[-1] == "web-1")
    assert get(proxy.port) == "web-1"
    assert {t for t in pods.threads} == {"test-proxy-spare"}  # no connection waited for its own


def test_a_new_connection_takes_the_one_being_opened_to_a_pod_that_just_got_ready(pods: Connector, proxy: Proxy) -> None:
    """The instant a rollout's first replica is Ready, the connection being opened ahead to it is
    further along than a new one would be: a connection arriving then waits for it."""
    up = proxy.upstreams
    pods.add("web-1")
    up.seen("web-1", True, stamp(1))
    wait_until("a connection opened ahead", lambda: pods.calls == ["web-1"])
    pods.add("web-2")
    slow = threading.Event()
    fast = proxy.connect
    proxy.connect = lambda pod: (slow.wait(10), fast(pod))[1]
    up.seen("web-2", True, stamp(2))
    wait_until("the one to web-2 being opened", lambda: proxy._opening == "web-2")
    result: list[str] = []
    t = threading.Thread(target=lambda: result.append(get(proxy.port)), daemon=True)
    t.start()
    wait_until("the connection accepted", lambda: proxy.accepted == 1)
    slow.set()
    t.join(10)
    assert result == ["web-2"]
    assert set(pods.threads) == {"test-proxy-spare"}


class EndsOnHalfClose(socket.socket):
    """The client library's port-forward socket: shutting its sending side ends the whole stream."""

    ends_on_half_close = True

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock.family, sock.type, sock.proto, sock.detach())

    def shutdown(self, how: int) -> None:
        super().shutdown(socket.SHUT_RDWR if how == socket.SHUT_WR else how)
        self.close()


@pytest.mark.parametrize("upstream", ["tcp", "port-forward"])
def test_half_close_the_answer_still_arrives(pods: Connector, upstream: str) -> None:
    """A client that shuts its sending side after the request still gets the whole answer, also
    through a port-forward stream that a half-close would end."""
    connect: Connect = (lambda pod: EndsOnHalfClose(pods(pod))) if upstream == "port-forward" else pods
    proxy = Proxy(0, Upstreams(), connect, name="test-proxy", spare=False)
    assert proxy.listen()
    pods.pods["web-1"] = FakePod("web-1", think=0.3)  # the client's half-close comes before the answer
    proxy.upstreams.seen("web-1", True, stamp(1))
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            s.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := s.recv(4096):
                data += chunk
    finally:
        proxy.stop()
    assert data.startswith(b"HTTP/1.0 200") and data.endswith(b"web-1")


def test_a_connection_closed_before_it_sent_anything_is_closed_upstream_at_once(pods: Connector) -> None:
    """A browser's unused preconnect: nothing to answer, so its port-forward stream is not kept
    open waiting for the app (which may wait a minute for a request that never comes)."""
    proxy = Proxy(0, Upstreams(), lambda pod: EndsOnHalfClose(pods(pod)), name="test-proxy", spare=False)
    assert proxy.listen()
    pods.add("web-1")
    proxy.upstreams.seen("web-1", True, stamp(1))
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5):
            wait_until("the connection relayed", lambda: proxy.relayed == 1)
        wait_until("its relay ended", lambda: not threads_named("test-proxy-conn"))
    finally:
        proxy.stop()


def non_loopback_address() -> str | None:
    """An address of this machine that is not loopback (none in some sandboxes)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # no packet is sent: this only picks the outgoing address
            addr = str(s.getsockname()[0])
        except OSError:
            return None
    return None if addr.startswith("127.") or addr == "0.0.0.0" else addr


def test_the_listener_is_on_loopback_only(pods: Connector, proxy: Proxy) -> None:
    pods.add("web-1")
    proxy.upstreams.seen("web-1", True, stamp(1))
    assert get(proxy.port) == "web-1"
    with open("/proc/net/tcp") as tcp:
        listeners = [line.split() for line in tcp.read().splitlines()[1:]]
    ours = [f[1] for f in listeners if f[3] == "0A" and int(f[1].split(":")[1], 16) == proxy.port]  # state 0A: LISTEN
    assert ours == [f"0100007F:{proxy.port:04X}"]  # 127.0.0.1, not 0.0.0.0
    other = non_loopback_address()
    if other is not None:
        with pytest.raises(OSError):
            socket.create_connection((other, proxy.port), timeout=2).close()


def test_stop_closes_the_listener_and_every_connection_and_leaves_no_thread(pods: Connector) -> None:
    p = Proxy(0, Upstreams(), pods, name="stop-proxy")
    assert p.listen()
    port = p.port
    pods.add("web-1")
    p.upstreams.seen("web-1", True, stamp(1))
    # a connection relaying (the pod has not answered: the request is incomplete) ...
    open_conn = socket.create_connection(("127.0.0.1", port), timeout=5)
    open_conn.sendall(b"GET / HTTP/1.1\r\n")
    wait_until("the connection relayed", lambda: p.relayed == 1)
    # ... and one held for a pod that is not Ready
    p.upstreams.seen("web-1", False)
    held = socket.create_connection(("127.0.0.1", port), timeout=5)
    wait_until("the connection accepted", lambda: p.accepted == 2)
    assert threads_named("stop-proxy")
    p.stop()
    assert threads_named("stop-proxy") == []
    for s in (open_conn, held):
        with contextlib.suppress(ConnectionResetError):
            assert s.recv(100) == b""
        s.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    with socket.socket() as s:  # the port is free again at once (SO_REUSEADDR)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


# -- the forward: a Service, its pods, the watch ---------------------------------------------------


class ForwardCluster(FakeCluster):
    """A Service `web` (port 80 → targetPort `http`), pods whose `http` port is a fake app's, a pod
    watch the test drives, and `connect` through the Connector."""

    def __init__(self, pods: Connector) -> None:
        super().__init__()
        self.apps = pods
        self.table: dict[str, dict[str, Any]] = {}
        self.watchers: list[tuple[Callable[[PodEvent], None], FakeBackground]] = []
        self.connected: list[tuple[str, int]] = []
        self.service: dict[str, Any] = {"spec": {"selector": {"app": "web"}, "ports": [{"name": "web", "port": 80, "targetPort": "http"}]}}

    def get(self, resource: str, name: str, namespace: str) -> dict[str, Any] | None:
        if resource == "service":
            return self.service if name == "web" else None
        return super().get(resource, name, namespace)

    def pods(self, namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        return list(self.table.values())

    def add(self, name: str, ready: bool, second: int) -> None:
        app = self.apps.add(name)
        self.table[name] = {
            "metadata": {"name": name, "creationTimestamp": stamp(second)},
            "spec": {"containers": [{"name": "app", "ports": [{"name": "http", "containerPort": app.port}]}]},
            "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
        }
        self.emit(name)

    def set_ready(self, name: str, ready: bool) -> None:
        self.table[name]["status"]["conditions"][0]["status"] = "True" if ready else "False"
        self.emit(name)

    def emit(self, name: str) -> None:
        event = PodEvent.of(self.table[name])
        assert event is not None
        for on_event, bg in self.watchers:
            if bg.alive():
                on_event(event)

    def watch_pods(self, namespace: str, labels: Mapping[str, str], on_event: Callable[[Any], None]) -> FakeBackground:
        bg = FakeBackground(["watch", namespace], lambda _line: None)
        self.watchers.append((on_event, bg))
        return bg

    def connect(self, namespace: str, pod: str, port: int, timeout: float = 5.0) -> socket.socket:
        self.connected.append((pod, port))
        assert port == self.apps.pods[pod].port, "the pod's container port named by the Service's targetPort"
        return self.apps(pod)


def forwards(out: Output) -> list[dict[str, Any]]:
    return [e for e in out.events if e["event"] == "port_forward"]


def test_the_forward_follows_the_service_to_its_newest_ready_pod(pods: Connector) -> None:
    kube, out = ForwardCluster(pods), Output(json_mode=True, stdout=io.StringIO())
    kube.add("web-a", True, 1)
    port = free_port()
    f = PortForward(kube, out, "default", "web", 80, port, label="web")
    try:
        assert f.start()
        assert [(e["ready"], e["message"]) for e in forwards(out)] == [(True, "HTTP 200")]
        assert get(port) == "web-a"
        kube.add("web-b", False, 2)  # a rollout's new pod, starting
        assert get(port) == "web-a"
        kube.set_ready("web-b", True)  # Ready: the very next connection goes there (no restart)
        assert get(port) == "web-b"
        assert len(kube.watchers) == 1 and f.proxy.accepted >= 3
        assert f.start() and forwards(out)[-1]["ready"]  # after the rollout: checked again, said again
    finally:
        f.stop()
    assert threads_named(f"forward-{port}") == []
    assert all(bg.stopped for _, bg in kube.watchers)


def test_a_taken_local_port_is_warned_about_once_and_bound_when_free(pods: Connector, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(forward, "RETRY_TAKEN", 0.05)
    kube, out = ForwardCluster(pods), Output(json_mode=True, stdout=io.StringIO())
    kube.add("web-a", True, 1)
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = int(blocker.getsockname()[1])
    f = PortForward(kube, out, "default", "web", 80, port, label="web")
    try:
        assert not f.start()
        assert not f.start()
        warnings = [e for e in out.events if e["event"] == "warning"]
        assert len(warnings) == 1 and "already in use" in warnings[0]["message"]
        blocker.close()
        wait_until("the forward ready once the port is free", lambda: any(e["ready"] for e in forwards(out)))
        assert get(port) == "web-a"
        assert any(e["event"] == "info" and "free again" in e["message"] for e in out.events)
    finally:
        blocker.close()
        f.stop()


def test_the_forward_says_ready_when_the_first_pod_gets_ready(pods: Connector, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(forward, "RETRY_CHECK", 60.0)  # no retry would come in time: the pod watch's event must
    kube, out = ForwardCluster(pods), Output(json_mode=True, stdout=io.StringIO())
    kube.add("web-a", False, 1)
    port = free_port()
    f = PortForward(kube, out, "default", "web", 80, port, label="web")
    f.proxy.hold = 0.1  # the check's connection is not held for long
    try:
        assert not f.start()
        assert [e["ready"] for e in forwards(out)] == [False]
        assert "no pod of service web is Ready" in forwards(out)[0]["message"]
        kube.set_ready("web-a", True)
        wait_until("the forward said ready", lambda: forwards(out)[-1]["ready"])
        assert f.ready and get(port) == "web-a"
    finally:
        f.stop()
    assert threads_named(f"forward-{port}") == []


def test_up_probe_answers_and_leaves_nothing_behind(pods: Connector) -> None:
    kube, out = ForwardCluster(pods), Output(json_mode=True, stdout=io.StringIO())
    kube.add("web-a", True, 1)
    port = free_port()
    probe = PortForward(kube, out, "default", "web", 80, port, label="web")
    answer = probe.probe()
    assert answer is not None and (answer.status, answer.body, answer.said) == (200, "web-a", "HTTP 200")
    assert threads_named(f"forward-{port}") == []
    with socket.socket() as s:  # released (SO_REUSEADDR: as devloop binds, over TIME-WAIT entries)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


def test_a_probe_without_ready_pods_names_why(pods: Connector) -> None:
    kube, out = ForwardCluster(pods), Output(json_mode=True, stdout=io.StringIO())
    kube.add("web-a", False, 1)
    probe = PortForward(kube, out, "default", "web", 80, free_port(), label="web")
    assert probe.probe(within=0.3) is None
    assert "no pod of service web is Ready" in probe.why_no_answer()


def test_a_service_without_the_declared_port_is_said(pods: Connector) -> None:
    kube, out = ForwardCluster(pods), Output(json_mode=True, stdout=io.StringIO())
    kube.service["spec"]["ports"][0]["port"] = 8080
    f = PortForward(kube, out, "default", "web", 80, free_port(), label="web")
    try:
        assert not f.start()
        assert "has no port 80 (its ports: 8080)" in forwards(out)[-1]["message"]
    finally:
        f.stop()


def test_a_service_that_is_not_there_yet_is_followed_once_it_is(pods: Connector, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(forward, "RETRY_CHECK", 0.01)
    kube, out = ForwardCluster(pods), Output(json_mode=True, stdout=io.StringIO())
    kube.add("web-a", True, 1)
    port = free_port()
    f = PortForward(kube, out, "default", "api", 80, port, label="web")
    try:
        assert not f.start()
        assert "service api not found in namespace default" in forwards(out)[-1]["message"]
        f.service = "web"  # as if it were applied now
        wait_until("the forward ready", lambda: forwards(out)[-1]["ready"])
        assert get(port) == "web-a"
    finally:
        f.stop()


class Flaky(ForwardCluster):
    """An API server that can stop answering."""

    def __init__(self, pods: Connector) -> None:
        super().__init__(pods)
        self.up = threading.Event()
        self.up.set()

    def reachable(self) -> bool:
        return self.up.is_set()


def flaky_forward(pods: Connector) -> tuple[Flaky, Output, int, forward.ApiWatch, PortForward]:
    """A forward to service web (pod web-a Ready) through an API server that can stop answering."""
    kube, out = Flaky(pods), Output(json_mode=True, stdout=io.StringIO())
    kube.add("web-a", True, 1)
    port = free_port()
    api = forward.ApiWatch(kube, out, model.Outage("kind cluster 'devloop'", "a paused kind node"))
    return kube, out, port, api, PortForward(kube, out, "default", "web", 80, port, label="web", api=api)


def test_a_pod_watch_that_ends_is_watched_again_quietly(pods: Connector, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(forward, "CHECK_EVERY", 0.02)
    kube, out, port, api, f = flaky_forward(pods)
    try:
        assert f.start()
        kube.watchers[0][1].stop()  # the watch's connection ended; the API server still answers
        wait_until("a new pod watch", lambda: len(kube.watchers) == 2)
        kube.add("web-b", True, 2)
        assert get(port) == "web-b"  # the new watch's events are followed
        assert [e["ready"] for e in forwards(out)] == [True]  # nothing said: the URL never stopped answering
    finally:
        f.stop()
        api.stop()


def test_an_api_outage_is_said_once_and_the_forward_resumes_after_it(pods: Connector, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(forward, "CHECK_EVERY", 0.02)
    monkeypatch.setattr(forward, "API_POLL", 0.02)
    kube, out, port, api, f = flaky_forward(pods)
    try:
        assert f.start()
        kube.up.clear()  # a paused node: nothing fails, the API server just does not answer
        wait_until("the forward not ready", lambda: not forwards(out)[-1]["ready"])
        assert forwards(out)[-1]["message"] == "the API server does not answer"
        kube.up.set()
        wait_until("the forward ready again", lambda: forwards(out)[-1]["ready"])
        assert [e["ready"] for e in forwards(out)] == [True, False, True]
        assert len(kube.watchers) == 2 and kube.watchers[0][1].stopped  # a fresh watch after the outage
        said = [e["message"] for e in out.events if e["event"] in ("warning", "info")]
        assert len([m for m in said if "does not answer" in m]) == 1 and any("answers again" in m for m in said)
        assert get(port) == "web-a"
    finally:
        f.stop()
        api.stop()
    assert threads_named(f"forward-{port}") == []
