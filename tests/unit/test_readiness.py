"""devloop's own run of a new pod's readiness probe (readiness.py), and the forward's table taking
a pod that passed it before the kubelet said Ready (proxy.Upstreams.early)."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

from devloop.proxy import Upstreams
from devloop.readiness import EarlyReady, Probe, passes, probe_of


def pod_with(probe: dict[str, Any], ports: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"spec": {"containers": [{"name": "app", "ports": ports or [{"name": "http", "containerPort": 3000}], "readinessProbe": probe}]}}


def test_the_probe_is_read_as_the_kubelet_reads_it() -> None:
    probe = probe_of(
        pod_with(
            {
                "httpGet": {"path": "/healthz", "port": "http", "httpHeaders": [{"name": "X-Check", "value": "1"}]},
                "timeoutSeconds": 5,
                "successThreshold": 2,
                "failureThreshold": 4,
            }
        )
    )
    assert probe == Probe("http", 3000, "/healthz", (("X-Check", "1"),), 1.0, 2, 4)
    assert probe_of(pod_with({"tcpSocket": {"port": 3000}})) == Probe("tcp", 3000)
    assert probe_of(pod_with({"httpGet": {"path": "/", "port": 3000}, "timeoutSeconds": 0.5})).timeout == 0.5  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "probe",
    [
        {"exec": {"command": ["true"]}},
        {"grpc": {"port": 3000}},
        {"httpGet": {"path": "/", "port": 3000, "scheme": "HTTPS"}},
        {"httpGet": {"path": "/", "port": 3000, "host": "example.com"}},
        {"httpGet": {"path": "/", "port": "metrics"}},  # a port name the container does not have
    ],
)
def test_a_probe_devloop_cannot_run_as_the_kubelet_would_is_left_to_it(probe: dict[str, Any]) -> None:
    assert probe_of(pod_with(probe)) is None
    assert probe_of({"spec": {"containers": [{"name": "app"}]}}) is None  # no readiness probe at all


def test_the_container_that_serves_the_forwarded_port_is_the_one_probed() -> None:
    pod = {
        "spec": {
            "containers": [
                {"name": "sidecar", "ports": [{"containerPort": 9000}], "readinessProbe": {"tcpSocket": {"port": 9000}}},
                {"name": "app", "ports": [{"containerPort": 3000}], "readinessProbe": {"httpGet": {"path": "/ready", "port": 3000}}},
            ]
        }
    }
    assert probe_of(pod, 3000) == Probe("http", 3000, "/ready")
    assert probe_of(pod) == Probe("tcp", 9000)


class _Handler(http.server.BaseHTTPRequestHandler):
    status = 200
    seen: ClassVar[list[tuple[str, str | None]]] = []

    def do_GET(self) -> None:
        _Handler.seen.append((self.path, self.headers.get("X-Check")))
        self.send_response(_Handler.status)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[int]:
    _Handler.seen = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield int(httpd.server_address[1])
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize(("status", "ok"), [(200, True), (302, True), (399, True), (404, False), (503, False)])
def test_an_http_probe_passes_on_200_to_399(server: int, status: int, ok: bool) -> None:
    _Handler.status = status
    probe = Probe("http", server, "/healthz", (("X-Check", "yes"),))
    assert passes(socket.create_connection(("127.0.0.1", server)), probe) is ok
    assert _Handler.seen == [("/healthz", "yes")]


def test_a_closed_stream_fails_the_probe() -> None:
    a, b = socket.socketpair()
    b.close()  # what the API server's port-forward does when the pod does not listen
    assert passes(a, Probe("http", 3000)) is False


def test_a_pod_passing_its_probe_takes_new_connections_until_the_kubelet_speaks() -> None:
    up = Upstreams()
    up.seen("old", True, "2026-12-06T10:00:00Z")
    up.seen("new", False, "2026-12-06T10:05:00Z")
    assert up.ready() == ["old"]
    assert up.early("new") is True
    assert up.ready() == ["new", "old"]  # the newest first
    assert up.seen("new", False) is False  # the kubelet has not probed it yet: still early
    assert up.ready() == ["new", "old"]
    assert up.seen("new", True) is False  # Ready for the kubelet too: no change for new connections
    assert up.early("new") is False
    up.not_early("new")  # the kubelet's word holds now
    assert up.ready() == ["new", "old"]
    up.seen("newer", False, "2026-12-06T10:06:00Z")
    up.early("newer")
    up.not_early("newer")  # failed devloop's probe again
    assert up.ready() == ["new", "old"]


def test_early_ready_probes_until_it_passes_then_until_it_fails_again() -> None:
    answers = iter([False, False, True, True, False, False, False])
    passed: list[str] = []
    failed: list[str] = []
    done = threading.Event()
    pods: list[socket.socket] = []  # the pod's ends: open for reading the request

    def connect(pod: str, port: int) -> socket.socket:
        a, b = socket.socketpair()
        pods.append(b)
        try:
            ok = next(answers)
        except StopIteration:
            done.set()
            ok = False
        if ok:
            b.sendall(b"HTTP/1.1 200 OK\r\n\r\n")
        b.shutdown(socket.SHUT_WR)
        return a

    probe = {"httpGet": {"path": "/", "port": 3000}, "successThreshold": 2, "failureThreshold": 3}
    early = EarlyReady(connect, lambda pod: pod_with(probe), passed.append, failed.append, interval=0.0)
    early.watch("web-1")
    assert done.wait(30)
    early.stop()
    assert passed == ["web-1"] and failed == ["web-1"]


def test_a_pod_the_kubelet_calls_ready_is_not_probed() -> None:
    calls: list[str] = []

    def connect(pod: str, port: int) -> socket.socket:
        calls.append(pod)
        return socket.socketpair()[0]

    early = EarlyReady(connect, lambda pod: None, print, print)
    early.forget("web-1")
    early.watch("web-1")
    assert early.probing() == [] and calls == []


def test_a_probe_whose_pod_cannot_be_read_ends_quietly(monkeypatch: pytest.MonkeyPatch) -> None:
    """The session closing (its API client gone) while a pod is probed: no traceback from the thread."""
    escaped: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: escaped.append(args.exc_value))

    def gone(pod: str) -> dict[str, Any]:
        raise RuntimeError("the API client is closed")

    early = EarlyReady(lambda pod, port: socket.socketpair()[0], gone, print, print)
    early.watch("web-1")
    for t in [t for t in threading.enumerate() if t.name == "early-ready-web-1"]:
        t.join(30)
    assert escaped == [] and early.probing() == []
