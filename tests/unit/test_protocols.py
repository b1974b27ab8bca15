"""Issue 19 part 5: non-HTTP ports, stuck rollouts and hardened pods.

- a forward is checked by what its Service port speaks (HTTP, HTTP/2 for gRPC, else TCP), with
  wording that says what was checked, and without HTTP retries for a port that answers TCP;
- the client library's port-forward thread never prints a traceback (one -v line instead);
- `status` does not call a stuck rollout healthy;
- "nothing to roll back to" is never said while an earlier version's pod is Ready;
- live update reads the pod spec: a container that cannot write /tmp or the sync target is said
  once, not wrapped, and rebuilt on each save.
"""

from __future__ import annotations

import io
import socket
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from devloop import api, live, portcheck
from devloop.forward import PortForward, free_port
from devloop.output import Output
from devloop.plan import ServiceChange
from devloop.workload import PodEvent
from tests.unit.fakes import FakeBackground, FakeCluster
from tests.unit.test_engine import World, by_service, run, unschedulable_edit
from tests.unit.test_proxy import wait_until

# -- which check a port gets -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("port", "protocol"),
    [
        ({"port": 80}, "http"),  # unnamed: HTTP, as before
        ({"name": "http", "port": 80}, "http"),
        ({"name": "web", "port": 80}, "http"),
        ({"name": "https-admin", "port": 443}, "http"),
        ({"name": "grpc", "port": 7000}, "grpc"),
        ({"name": "grpc-cart", "port": 7070}, "grpc"),
        ({"name": "grpc-web", "port": 8080}, "http"),  # gRPC-Web is HTTP/1
        ({"name": "h2c", "port": 8080}, "http2"),
        ({"name": "tcp-echo", "port": 7000}, "tcp"),
        ({"name": "redis", "port": 6379}, "tcp"),
        ({"name": "postgres", "port": 5432}, "tcp"),
        ({"name": "cart", "port": 7070, "appProtocol": "grpc"}, "grpc"),  # appProtocol says more than the name
        ({"name": "http", "port": 7070, "appProtocol": "kubernetes.io/h2c"}, "http2"),
        ({"name": "grpc", "port": 6379, "appProtocol": "redis"}, "tcp"),
        ({"port": 80, "appProtocol": "http"}, "http"),
    ],
)
def test_a_service_port_is_checked_as_its_name_or_app_protocol_says(port: dict[str, Any], protocol: str) -> None:
    assert portcheck.protocol_of(port) == protocol


# -- forwards to pods that do not speak HTTP/1 --------------------------------------------------------


class RawPod:
    """A pod's app on 127.0.0.1: `h2` sends its SETTINGS on every connection, and closes one that
    did not start with the HTTP/2 preface (as a gRPC server does), `http1` answers HTTP/1 (400 to
    the HTTP/2 preface), `silent` takes connections and never writes (a Redis or an echo server,
    waiting for its client), `closing` closes each connection at once (how the API server reports a
    port nobody listens on). Records what each connection sent first."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.received: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True, name=f"raw-{mode}").start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            if self.mode == "closing":
                conn.close()
                continue
            self._conns.append(conn)
            threading.Thread(target=self._talk, args=(conn,), daemon=True).start()

    def _talk(self, conn: socket.socket) -> None:
        try:
            first = conn.recv(len(portcheck.PREFACE))
            self.received.append(first)
            if self.mode == "h2":
                conn.sendall(b"\x00\x00\x06\x04\x00\x00\x00\x00\x00" + b"\x00\x03\x00\x00\x00\x64")  # SETTINGS: max streams 100
                if first != portcheck.PREFACE:
                    conn.sendall(b"\x00\x00\x08\x07\x00\x00\x00\x00\x00" + bytes(7) + b"\x01")  # GOAWAY: PROTOCOL_ERROR
                    conn.close()
            elif self.mode == "http1":
                status, body = (b"400 Bad Request", b"") if first == portcheck.PREFACE else (b"200 OK", b"ok")
                conn.sendall(b"HTTP/1.1 " + status + b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
                conn.close()
        except OSError:
            pass

    def close(self) -> None:
        self.listener.close()
        for c in self._conns:
            c.close()


class RawCluster(FakeCluster):
    """One Service `svc` (port 7000, named as the test says) over one Ready pod whose app is a RawPod."""

    def __init__(self, app: RawPod, port: dict[str, Any]) -> None:
        super().__init__()
        self.app = app
        self.service = {"spec": {"selector": {"app": "svc"}, "ports": [{"port": 7000, "targetPort": 7000, **port}]}}
        self.pod = {
            "metadata": {"name": "svc-a", "creationTimestamp": "2026-12-06T10:00:00Z"},
            "spec": {"containers": [{"name": "app"}]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        }

    def get(self, resource: str, name: str, namespace: str) -> dict[str, Any] | None:
        return self.service if resource == "service" and name == "svc" else super().get(resource, name, namespace)

    def pods(self, namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        return [self.pod]

    def watch_pods(self, namespace: str, labels: Mapping[str, str], on_event: Any) -> FakeBackground:
        event = PodEvent.of(self.pod)
        assert event is not None
        on_event(event)
        return FakeBackground(["watch", namespace], lambda _line: None)

    def connect(self, namespace: str, pod: str, port: int, timeout: float = 5.0) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.app.port), timeout=timeout)


@pytest.fixture
def raw() -> Iterator[list[RawPod]]:
    made: list[RawPod] = []
    yield made
    for p in made:
        p.close()


def forward_to(raw: list[RawPod], mode: str, port: dict[str, Any]) -> tuple[PortForward, Output, RawPod]:
    app = RawPod(mode)
    raw.append(app)
    out = Output(json_mode=True, stdout=io.StringIO())
    f = PortForward(RawCluster(app, port), out, "default", "svc", 7000, free_port(), label="svc")
    f.proxy.hold = 0.2  # a connection to a pod that closes it is not held for long
    return f, out, app


def said(out: Output) -> list[tuple[bool, str]]:
    return [(e["ready"], e["message"]) for e in out.events if e["event"] == "port_forward"]


def test_a_grpc_port_is_checked_by_the_http2_preface_not_by_get(raw: list[RawPod]) -> None:
    f, out, app = forward_to(raw, "h2", {"name": "grpc"})
    try:
        assert f.start()
        assert said(out) == [(True, "gRPC port answers HTTP/2")]
        wait_until("the check's connection seen", lambda: bool(app.received))
        assert set(app.received) == {portcheck.PREFACE}  # never a GET /
    finally:
        f.stop()


def test_up_finds_a_tcp_port_answering_at_once_without_any_http_request(raw: list[RawPod]) -> None:
    f, _out, app = forward_to(raw, "silent", {"name": "tcp-echo"})
    answer = f.probe(within=15.0)
    assert answer is not None and (answer.protocol, answer.said, answer.status) == ("tcp", "answers TCP", None)
    wait_until("the check's connection closed", lambda: bool(app.received))
    assert set(app.received) == {b""}  # the check connected and sent nothing (no HTTP request to retry for 15 s)


def test_a_tcp_port_nobody_listens_on_is_not_ready_and_says_what_was_checked(raw: list[RawPod]) -> None:
    f, out, _app = forward_to(raw, "closing", {"name": "redis"})
    try:
        assert not f.start()
        ((ready, message),) = said(out)
        assert not ready and message.startswith("no TCP answer yet") and "does not listen" in message
        assert "refused the connection" in f.why_no_answer()
    finally:
        f.stop()


def test_a_grpc_server_on_an_unnamed_port_answers_http2_and_is_told_its_name(raw: list[RawPod]) -> None:
    f, _out, app = forward_to(raw, "h2", {})
    answer = f.probe(within=15.0)
    assert answer is not None and answer.said == "answers HTTP/2, not HTTP/1 (gRPC? name the Service port grpc)"
    wait_until("both checks seen", lambda: len(app.received) >= 2)
    assert app.received[0].startswith(b"GET / HTTP/1.1") and portcheck.PREFACE in app.received


def test_a_port_named_grpc_that_serves_http1_answers_http_and_says_so(raw: list[RawPod]) -> None:
    f, _out, _app = forward_to(raw, "http1", {"name": "grpc"})
    answer = f.probe(within=15.0)
    assert answer is not None and (answer.status, answer.body) == (200, "ok")
    assert answer.said == "HTTP 200 (the port is named for gRPC (HTTP/2) but speaks HTTP/1)"


def test_a_port_checked_as_http_where_nothing_answers_says_how_to_name_it(raw: list[RawPod]) -> None:
    f, _out, app = forward_to(raw, "silent", {})
    assert f.probe(within=0.5) is None
    assert "checked as HTTP" in f.why_no_answer() and "appProtocol" in f.why_no_answer()
    assert not [r for r in app.received if r.startswith(portcheck.PREFACE)]  # nothing answered: no second check


def test_the_http2_check_wants_the_servers_settings_frame(raw: list[RawPod]) -> None:
    silent = RawPod("silent")
    raw.append(silent)
    assert portcheck.h2_check(silent.port, timeout=0.3) is None
    assert portcheck.h2_check(free_port(), timeout=0.3) is None  # nothing listens


# -- the client library's threads -------------------------------------------------------------------


def test_a_port_forward_proxy_thread_that_dies_is_one_detail_line_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    others: list[str] = []  # the hook that was there before (Python's prints the traceback)
    monkeypatch.setattr(threading, "excepthook", lambda args: others.append(f"{args.thread.name}: {args.exc_value}"))
    monkeypatch.setattr(api, "_noise", {})
    lines: list[str] = []
    api.quiet_library_threads(lines.append)

    def reset() -> None:
        raise ConnectionResetError(104, "Connection reset by peer")

    t = threading.Thread(target=reset, name="Kubernetes port forward proxy: 7000")
    t.start()
    t.join()
    assert capsys.readouterr().err == "" and others == []
    assert lines == ["Kubernetes port forward proxy: 7000: ended by ConnectionResetError: [Errno 104] Connection reset by peer"]

    def bug() -> None:
        raise ValueError("devloop's own")

    t = threading.Thread(target=bug, name="devloop-thread")
    t.start()
    t.join()
    assert others == ["devloop-thread: devloop's own"]  # every other thread's: to the hook that was there
    assert len(lines) == 1


# -- status and rollback say what they checked ---------------------------------------------------------


def test_status_is_not_healthy_while_the_rollout_is_stuck_on_an_unschedulable_pod(sample_copy: Path) -> None:
    from devloop.status import healthy, human, status

    (sample_copy / "devloop.yaml").write_text("monitoring: {enabled: false}\n")
    w, _clock, _result = unschedulable_edit(sample_copy, "0/1 nodes are available: 1 Insufficient cpu.")
    d = w.cluster.deployments[("default", "web-app")]
    d.replicas = 1  # one replica: the old pod Ready, its replacement Pending (what `kubectl get deploy` shows as 1/1)
    d.pods = [d.pods[0], d.pods[-1]]
    info = status(w.engine.config, w.engine)
    (svc,) = info["services"]
    assert svc["ready"] == svc["replicas"] == svc["updated"] == 1  # every count the old rule looked at
    assert not svc["healthy"] and not healthy(info)
    text = human(info)
    assert "web-app: UNHEALTHY, 1/1 ready, rollout not complete (1 old replicas pending termination)" in text
    assert "Unschedulable: 0/1 nodes are available: 1 Insufficient cpu." in text


def test_a_first_rollout_that_fails_says_what_serves_when_an_earlier_version_is_ready(sample_copy: Path) -> None:
    first = World(sample_copy)
    earlier = str(by_service(first.engine.up())["web-app"].image)
    server = sample_copy / "sample-app" / "server.js"
    server.write_text(server.read_text() + "\n// broken\n")
    w = World(sample_copy, cluster=first.cluster)  # a new session: devloop deployed nothing yet in it
    w.cluster.crashing.add(w.engine.image_ref(w.engine.config.service("web-app")).cluster)
    (r,) = w.engine.up()
    assert not r.ok and not r.rolled_back
    assert "nothing to roll back to" not in r.outcome
    tag = earlier.rsplit(":", 1)[1]
    assert r.outcome.startswith(f"the version from before keeps serving (3/3 ready pods run {tag})"), r.outcome


def test_nothing_to_roll_back_to_only_when_no_ready_pod_runs_another_version(sample_copy: Path) -> None:
    w = World(sample_copy)
    w.cluster.crashing.add(w.engine.image_ref(w.engine.config.service("web-app")).cluster)
    (r,) = w.engine.up()
    assert not r.ok and r.outcome.startswith("nothing to roll back to: no version of this service has served yet")


# -- live update in a pod it cannot write in -----------------------------------------------------------


def pair(
    security: dict[str, Any] | None = None, mounts: list[dict[str, Any]] | None = None, volumes: list[dict[str, Any]] | None = None
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """One (pod spec, container) as live update reads them."""
    container: dict[str, Any] = {"name": "app", "securityContext": security or {}, "volumeMounts": mounts or []}
    return [({"volumes": volumes or []}, container)]


RO = {"readOnlyRootFilesystem": True}
TMP = {"name": "tmp", "mountPath": "/tmp"}
APP = {"name": "app", "mountPath": "/app"}
EMPTY = [{"name": "tmp", "emptyDir": {}}, {"name": "app", "emptyDir": {}}]


def test_what_live_update_needs_to_write_is_read_from_the_pod_spec() -> None:
    assert live.cannot_write(pair(), "/app") is None
    assert "cannot write /tmp (readOnlyRootFilesystem: true" in (live.cannot_write(pair(RO), "/app") or "")
    assert "cannot write /app, where the files are synced" in (live.cannot_write(pair(RO, [TMP], EMPTY), "/app") or "")
    assert live.cannot_write(pair(RO, [TMP, APP], EMPTY), "/app") is None  # emptyDirs at both: it works
    assert live.cannot_write(pair(RO, [TMP, {"name": "app", "mountPath": "/"}], EMPTY), "/app") is None
    config = [{"name": "app", "configMap": {"name": "code"}}, {"name": "tmp", "emptyDir": {}}]
    assert "a read-only volume is mounted there" in (live.cannot_write(pair(None, [TMP, APP], config), "/app") or "")
    assert "cannot write /tmp" in (live.cannot_write(pair(None, [{**TMP, "readOnly": True}], EMPTY), "/app") or "")


def test_a_read_only_pod_is_said_once_not_wrapped_and_each_save_rebuilds(sample_copy: Path) -> None:
    deployment = sample_copy / "sample-app" / "k8s" / "deployment.yaml"
    deployment.write_text(
        deployment.read_text().replace(
            "        - name: web-app\n", "        - name: web-app\n          securityContext: {readOnlyRootFilesystem: true}\n", 1
        )
    )
    w = World(sample_copy, "liveUpdate: {enabled: true}\n")
    assert all(r.ok for r in w.engine.up())
    warned = [e["message"] for e in w.events("warning") if "live update cannot work" in e["message"]]
    assert warned == [
        "web-app: live update cannot work in this pod: container web-app cannot write /tmp (readOnlyRootFilesystem: true, "
        "no writable volume there); each save rebuilds the image instead"
    ]
    svc = w.engine.config.service("web-app")
    rendered = w.engine.render(svc, w.engine.manifests(svc), w.engine.image_ref(svc))
    (container,) = next(d for d in rendered if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"]
    assert "command" not in container and "args" not in container  # the image's own command: no restart loop
    for n in (2, 3):
        server = sample_copy / "sample-app" / "server.js"
        server.write_text(server.read_text() + f"\n// v{n}\n")
        (r,) = run(w.engine, [ServiceChange("web-app", sync=("server.js",), image_files=("server.js",))])
        assert r.ok and not r.synced and r.built  # rebuilt, never a sync into a pod that cannot take it
    assert w.cluster.execs == []
    assert len([e for e in w.events("warning") if "live update cannot work" in e["message"]]) == 1  # said once
