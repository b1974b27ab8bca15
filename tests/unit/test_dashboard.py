"""The dashboard's server, over real HTTP on 127.0.0.1 (port 0), fed through a real Output."""

from __future__ import annotations

import http.client
import io
import json
import logging
import re
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import quote, urlencode

import pytest

from devloop import dashboard as dash
from devloop.dashboard import Dashboard, DashboardPortTaken
from devloop.errors import CycleFailed, DevloopError
from devloop.monitoring import ServiceStats
from devloop.output import Output
from devloop.view import Board, Pod, Running

TIMEOUT = 10.0  # a generous bound for a local answer; a test that hits it fails rather than hangs


class Harness:
    """A dashboard showing a session's board: the configured services web and api, published as the worker does."""

    def __init__(self, out: Output, snapshot: Callable[[], Mapping[str, Any]] | None = None) -> None:
        self.out = out
        self.rebuilds: list[str] = []
        if snapshot is None:
            self.board = Board(out)
            self.board.publish([Running("web"), Running("api")])
            self.d = Dashboard(out, port=0, on_rebuild=self.rebuilds.append, board=self.board)
        else:
            self.d = Dashboard(out, port=0, on_rebuild=self.rebuilds.append, snapshot=snapshot)
            self.board = self.d.board

    def request(self, method: str, path: str, headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.d.port, timeout=TIMEOUT)
        try:
            conn.request(method, path, headers=dict(headers or {}))
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def state(self) -> dict[str, Any]:
        status, body = self.request("GET", "/api/state", {"X-Devloop-Token": self.d.token})
        assert status == 200, body
        result: dict[str, Any] = json.loads(body)
        return result

    def service(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = next(s for s in self.state()["services"] if s["name"] == name)
        return found


class Stream:
    """A reader of the server-sent event stream, opened as the page opens it: its token in the query string."""

    def __init__(self, d: Dashboard, headers: Mapping[str, str] | None = None, token: str | None = None) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=TIMEOUT)
        query = urlencode({"token": d.token if token is None else token})
        self.conn.request("GET", f"/api/events?{query}", headers=dict(headers or {}))
        self.resp = self.conn.getresponse()

    def next(self) -> tuple[str, dict[str, Any]]:
        """The next event (name, data); keep-alive comments are skipped."""
        name, data = "message", ""
        while True:
            raw = self.resp.readline()
            if not raw:
                raise EOFError("the stream ended")
            line = raw.decode().rstrip("\n")
            if line == "":
                if data:
                    return name, json.loads(data)
                continue
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data += line[6:]

    def until(self, pred: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        while True:
            _, data = self.next()
            if pred(data):
                return data

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def out() -> Output:
    return Output(stdout=io.StringIO(), stderr=io.StringIO())


@pytest.fixture
def h(out: Output) -> Iterator[Harness]:
    harness = Harness(out)
    harness.d.start()
    yield harness
    harness.d.stop()


def publish_good_cycle(out: Output, number: int = 1, service: str = "web") -> None:
    out.cycle_start(number, "image source changed", ["server.js"], services=[service])
    for phase, seconds in (("build", 1.5), ("publish", 0.25), ("deploy", 0.1), ("rollout", 2.0)):
        out.phase_start(phase, service=service)
        out.phase_done(phase, seconds, service=service)
    out.cycle_done(
        number,
        phases={"build": 1.5, "publish": 0.25, "deploy": 0.1, "rollout": 2.0},
        total=3.9,
        image=f"localhost:5001/{service}:dl-{number}",
        files=["server.js"],
        reason="image source changed",
        service=service,
    )


def publish_failed_cycle(out: Output, number: int = 2, service: str = "api") -> None:
    out.cycle_start(number, "image source changed", ["api/main.py"], services=[service])
    out.phase_start("build", service=service)
    out.phase_done("build", 0.8, service=service)
    out.phase_start("rollout", service=service)
    err = CycleFailed("rollout", f"pod {service}-x: CrashLoopBackOff", "fix the code and save", details=["SyntaxError: oops"])
    out.cycle_done(
        number,
        phases={"build": 0.8, "rollout": 6.0},
        total=6.8,
        image=None,
        error=err,
        files=["api/main.py"],
        service=service,
        outcome="api:dl-1 keeps serving",
    )


# -- state ---------------------------------------------------------------------------------------


def test_cycles_published_through_output_show_in_state(h: Harness) -> None:
    publish_good_cycle(h.out, 1, "web")
    publish_failed_cycle(h.out, 2, "api")
    web, api = h.service("web"), h.service("api")

    assert web["state"] == "ready" and web["error"] is None
    assert web["image"] == "localhost:5001/web:dl-1"
    [cycle] = web["cycles"]
    assert cycle["files"] == ["server.js"] and cycle["ok"] is True
    assert cycle["phases"] == {"build": 1.5, "publish": 0.25, "deploy": 0.1, "rollout": 2.0}

    assert api["state"] == "failed"
    assert api["error"]["phase"] == "rollout"
    assert api["error"]["message"] == "pod api-x: CrashLoopBackOff"
    assert api["error"]["hint"] == "fix the code and save"
    assert api["error"]["outcome"] == "api:dl-1 keeps serving"
    assert api["cycles"][-1]["phases"] == {"build": 0.8, "rollout": 6.0}


def test_state_follows_the_running_phase(h: Harness) -> None:
    h.out.cycle_start(1, "image source changed", ["server.js"], services=["web"])
    assert h.service("web")["state"] == "queued"
    h.out.phase_start("build", service="web")
    assert h.service("web")["state"] == "building"
    h.out.phase_done("build", 1.0, service="web")
    h.out.phase_start("publish", service="web")
    assert h.service("web")["state"] == "publishing"
    h.out.phase_done("publish", 0.5, service="web")
    h.out.phase_start("rollout", service="web")
    h.out.progress("web", "1/2 pods ready")
    web = h.service("web")
    assert web["state"] == "rolling out" and web["progress"] == "1/2 pods ready"
    assert web["cycles"][-1]["ok"] is None  # still running, its finished phases already drawn
    assert web["cycles"][-1]["phases"] == {"build": 1.0, "publish": 0.5}


def test_a_success_after_a_failure_clears_the_reason(h: Harness) -> None:
    publish_failed_cycle(h.out, 1, "web")
    assert h.service("web")["state"] == "failed"
    publish_good_cycle(h.out, 2, "web")
    web = h.service("web")
    assert web["state"] == "ready" and web["error"] is None
    assert [c["ok"] for c in web["cycles"]] == [False, True]


def test_pods_from_the_poller_and_forwards_and_logs_from_events(h: Harness) -> None:
    h.board.publish_pods("web", [Pod("web-abc", True, 2, "Running")])
    h.out.forward("http://127.0.0.1:8080", True, service="web")
    h.out.pod_log("web-abc", "listening on :3000", service="web")
    state = h.state()
    web = next(s for s in state["services"] if s["name"] == "web")
    assert web["pods"] == [{"name": "web-abc", "ready": True, "restarts": 2, "status": "Running"}]
    assert web["forwards"] == [{"url": "http://127.0.0.1:8080", "ready": True, "message": ""}]
    assert state["forwards"] == [{"service": "web", "url": "http://127.0.0.1:8080", "ready": True, "message": ""}]
    assert [(entry["pod"], entry["line"]) for entry in web["logs"]] == [("web-abc", "listening on :3000")]


def test_what_the_worker_publishes_shows_and_a_declared_forward_waits_for_its_event(h: Harness) -> None:
    url = "http://127.0.0.1:8080"
    h.board.publish([Running("web", applied="localhost:5001/web:dl-1", good="localhost:5001/web:dl-1", healthy=True, forwards=(url,))])
    web = h.service("web")
    assert web["state"] == "ready"  # no cycle seen, but the cluster runs it healthy
    assert (web["image"], web["applied"], web["healthy"]) == ("localhost:5001/web:dl-1", "localhost:5001/web:dl-1", True)
    assert web["forwards"] == [{"url": url, "ready": False, "message": ""}]
    assert [s["name"] for s in h.state()["services"]] == ["web"]  # the configuration now has web only
    h.out.forward(url, True, "HTTP 200", service="web")
    assert h.service("web")["forwards"] == [{"url": url, "ready": True, "message": "HTTP 200"}]


def test_a_published_view_never_changes_under_its_reader(h: Harness) -> None:
    publish_good_cycle(h.out, 1, "web")
    seen = h.board.view
    web = seen.service("web")
    h.out.cycle_start(2, "image source changed", ["server.js"], services=["web"])
    h.out.phase_start("build", service="web")
    h.board.publish([Running("web", good="localhost:5001/web:dl-1", healthy=True)])
    h.board.publish_pods("web", [Pod("web-abc", True, 0, "Running")])
    assert seen.service("web") is web and (web.state, web.cycle, web.pods, web.good) == ("ready", 1, (), None)
    assert [c.cycle for c in web.cycles] == [1]
    now = h.board.view.service("web")
    assert (now.state, now.cycle, [c.ok for c in now.cycles], now.good) == ("building", 2, [True, None], "localhost:5001/web:dl-1")


def test_monitoring_samples_are_kept_per_service(h: Harness) -> None:
    h.out._emit("metrics", None, service="web", rps=12.5, error_ratio=0.0, versions={"dl-1": 1.0})
    h.out._emit("metrics", None, service="web", rps=11.0, error_ratio=0.25, versions={"dl-1": 0.5, "dl-2": 0.5})
    samples = h.service("web")["metrics"]
    assert [(s["rps"], s["error_ratio"], s["versions"]) for s in samples] == [
        (12.5, 0.0, {"dl-1": 1.0}),
        (11.0, 0.25, {"dl-1": 0.5, "dl-2": 0.5}),
    ]


def test_history_is_bounded(h: Harness) -> None:
    for i in range(dash.LOG_LINES_PER_SERVICE + 50):
        h.out.pod_log("web-abc", f"line {i}", service="web")
    for n in range(1, dash.CYCLES_PER_SERVICE + 6):
        publish_good_cycle(h.out, n, "web")
    web = h.service("web")
    assert len(web["logs"]) == dash.LOG_LINES_PER_SERVICE
    assert web["logs"][-1]["line"] == f"line {dash.LOG_LINES_PER_SERVICE + 49}"
    assert [c["cycle"] for c in web["cycles"]] == list(range(6, dash.CYCLES_PER_SERVICE + 6))


def test_events_before_the_dashboard_existed_are_shown(out: Output) -> None:
    publish_failed_cycle(out, 1, "api")
    harness = Harness(out)
    harness.d.start()
    try:
        assert harness.service("api")["state"] == "failed"
    finally:
        harness.d.stop()


def test_a_failed_change_undone_is_ready_again(h: Harness) -> None:
    publish_failed_cycle(h.out, 2, "api")
    h.out.skipped("image content unchanged", ["Dockerfile"], service="api")
    api = h.service("api")
    assert api["state"] == "ready" and api["error"] is None
    assert api["cycles"][-1]["ok"] is False  # the failed cycle stays in the history


def test_only_configured_services_get_a_card(h: Harness) -> None:
    # Prometheus' start is reported under service "monitoring": progress of devloop's own, not a service to rebuild.
    h.out.progress("monitoring", "Prometheus: 0 of 1 updated replicas available")
    h.out.info("Prometheus ready in 12.0s", service="monitoring")
    publish_good_cycle(h.out, 1, "web")
    state = h.state()
    assert [s["name"] for s in state["services"]] == ["web", "api"]
    assert "Prometheus ready in 12.0s" in [n["message"] for n in state["notices"]]
    status, _ = h.request("POST", "/api/services/monitoring/rebuild", {"X-Devloop-Token": h.d.token})
    assert status == 404 and h.rebuilds == []


def test_a_snapshot_stands_for_the_worker(out: Output) -> None:
    """A page without a session: what the worker would publish, asked at each request."""

    def snapshot() -> dict[str, Any]:
        return {"services": {"web": {"healthy": True, "good": None, "pods": [{"name": "web-1", "ready": True, "restarts": 3}]}}}

    harness = Harness(out, snapshot=snapshot)
    harness.d.start()
    try:
        web = harness.service("web")
        assert web["state"] == "ready" and web["pods"] == [{"name": "web-1", "ready": True, "restarts": 3, "status": ""}]
        out.cycle_start(1, "image source changed", ["server.js"], services=["web"])
        out.phase_start("build", service="web")
        assert harness.service("web")["state"] == "building"
    finally:
        harness.d.stop()


def test_a_failing_snapshot_still_serves_the_events(out: Output) -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("kubectl went away")

    harness = Harness(out, snapshot=broken)
    harness.d.start()
    try:
        publish_good_cycle(out, 1, "web")
        state = harness.state()
        assert state["snapshot_error"] == "RuntimeError: kubectl went away"
        assert [s["state"] for s in state["services"]] == ["ready"]
    finally:
        harness.d.stop()


# -- the event stream ----------------------------------------------------------------------------


def test_event_stream_sends_history_then_live_events_as_json_lines_do() -> None:
    json_out = io.StringIO()
    out = Output(json_mode=True, stdout=json_out, stderr=io.StringIO())
    harness = Harness(out)
    harness.d.start()
    try:
        publish_good_cycle(out, 1, "web")
        stream = Stream(harness.d)
        try:
            assert stream.resp.status == 200
            assert stream.resp.getheader("Content-Type", "").startswith("text/event-stream")
            name, hello = stream.next()
            assert name == "hello" and hello["url"] == harness.d.url
            history = [stream.next()[1] for _ in range(hello["history"])]
            out.pod_log("web-abc", "live line", service="web")
            live = stream.until(lambda e: e["event"] == "log")
            sent = [json.loads(line) for line in json_out.getvalue().splitlines()]
            assert [*history, live] == sent  # the same records `--json` prints, in order
            assert live["line"] == "live line"
        finally:
            stream.close()
    finally:
        harness.d.stop()


def test_a_change_published_without_an_event_reaches_an_open_page_at_once(h: Harness) -> None:
    # The pods (from the pod table) and what the worker publishes come with no Output event: the page
    # hears of them on its stream (it reads the state again on every event) instead of on a timer.
    stream = Stream(h.d)
    try:
        name, hello = stream.next()
        assert name == "hello" and hello["history"] == 0
        h.board.publish_pods("web", [Pod("web-abc", False, 1, "CrashLoopBackOff")])
        assert stream.next() == ("message", {"event": "view"})
        assert h.service("web")["pods"] == [{"name": "web-abc", "ready": False, "restarts": 1, "status": "CrashLoopBackOff"}]
        h.board.publish_pods("web", [Pod("web-abc", False, 1, "CrashLoopBackOff")])  # the same table: nothing to say
        h.board.publish([Running("web", healthy=True), Running("api")])
        assert stream.next() == ("message", {"event": "view"})  # one per change
        h.out.pod_log("web-abc", "after", service="web")
        assert stream.next()[1]["event"] == "log"
    finally:
        stream.close()


def test_the_rate_says_what_devloop_status_says(h: Harness) -> None:
    stats = ServiceStats(rps=0.0, error_ratio=None, p95_seconds=None, unsure_series=2)
    h.out.metrics("web", stats.rps, stats.error_ratio, {}, stats.traffic_known, stats.traffic())
    (sample,) = h.service("web")["metrics"]
    assert (sample["rps"], sample["traffic_known"]) == (0.0, False)  # not "0 req/s": status says it is not known yet
    assert sample["traffic"] == stats.traffic() and stats.human().startswith(stats.traffic())
    assert sample["traffic"].startswith("traffic: not known yet")


def test_a_slow_page_never_blocks_devloop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dash, "CLIENT_QUEUE", 100)
    out = Output(json_mode=True, stdout=io.StringIO(), stderr=io.StringIO())
    h = Harness(out)
    h.d.start()
    slow = Stream(h.d)  # connected, never read while devloop emits
    line = "x" * 20_000
    done = threading.Event()

    def emit() -> None:
        for i in range(1000):  # 20 MB: more than the socket buffers and the page's queue hold
            out.pod_log("web-abc", f"{i} {line}", service="web")
        done.set()

    try:
        t = threading.Thread(target=emit, daemon=True)
        t.start()
        t.join(120)  # a bound on a hang (a page that never reads would block it for ever), not a speed figure
        assert done.is_set(), "publishing events waited for a page that does not read"
        # The slow page was dropped (its browser reconnects and starts again from the history) ...
        with pytest.raises(EOFError):
            while True:
                slow.next()
        # ... and a new page gets the recent history and live events.
        fresh = Stream(h.d)
        try:
            name, hello = fresh.next()
            assert name == "hello" and hello["history"] == dash.LOG_LINES_PER_SERVICE
            out.pod_log("web-abc", "after the flood", service="web")
            assert fresh.until(lambda e: e.get("line") == "after the flood")["service"] == "web"
        finally:
            fresh.close()
    finally:
        slow.close()
        h.d.stop()


def test_stop_ends_open_streams_and_leaves_no_threads(out: Output) -> None:
    before = set(threading.enumerate())
    harness = Harness(out)
    harness.d.start()
    stream = Stream(harness.d)
    assert stream.next()[0] == "hello"
    harness.state()
    harness.d.stop()
    with pytest.raises(EOFError):
        while True:
            stream.next()
    stream.close()
    assert set(threading.enumerate()) - before == set()
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", harness.d.port), timeout=TIMEOUT):
        pass


# -- actions and origins -------------------------------------------------------------------------


def test_rebuild_now_calls_on_rebuild(h: Harness) -> None:
    status, body = h.request("POST", "/api/services/web/rebuild", {"Origin": h.d.url, "X-Devloop-Token": h.d.token})
    assert status == 202, body
    assert json.loads(body) == {"service": "web", "rebuild": "queued"}
    status, _ = h.request("POST", "/api/services/api/rebuild", {"Origin": f"http://localhost:{h.d.port}", "X-Devloop-Token": h.d.token})
    assert status == 202
    assert h.rebuilds == ["web", "api"]


def test_rebuild_of_an_unknown_service_is_404(h: Harness) -> None:
    status, body = h.request("POST", "/api/services/nope/rebuild", {"Origin": h.d.url, "X-Devloop-Token": h.d.token})
    assert status == 404
    assert json.loads(body) == {"error": "unknown service 'nope'", "services": ["web", "api"]}
    assert h.rebuilds == []


def test_rebuild_only_by_post(h: Harness) -> None:
    status, _ = h.request("GET", "/api/services/web/rebuild", {"X-Devloop-Token": h.d.token})
    assert status == 405
    assert h.rebuilds == []


def test_rebuild_needs_the_session_token(h: Harness) -> None:
    # Same origin, right Host, but no token: a request the page did not make.
    status, body = h.request("POST", "/api/services/web/rebuild", {"Origin": h.d.url})
    assert status == 403
    assert "no X-Devloop-Token" in json.loads(body)["error"]
    status, body = h.request("POST", "/api/services/web/rebuild", {"Origin": h.d.url, "X-Devloop-Token": ""})
    assert status == 403
    # Unknown services are not revealed without the token either.
    status, _ = h.request("POST", "/api/services/nope/rebuild", {"Origin": h.d.url})
    assert status == 403
    assert h.rebuilds == []


@pytest.mark.parametrize("wrong", ["guess", "x" * 43, "%TOKEN%", "ä-not-ascii"])
def test_a_wrong_token_is_refused(h: Harness, wrong: str) -> None:
    status, body = h.request("POST", "/api/services/web/rebuild", {"Origin": h.d.url, "X-Devloop-Token": wrong.encode().decode("latin-1")})
    assert status == 403
    assert "wrong X-Devloop-Token" in json.loads(body)["error"]
    assert h.rebuilds == []


def test_another_sessions_token_is_refused(h: Harness, out: Output) -> None:
    other = Dashboard(out, port=0, on_rebuild=lambda s: None)
    assert other.token != h.d.token and len(h.d.token) >= 32
    status, _ = h.request("POST", "/api/services/web/rebuild", {"Origin": h.d.url, "X-Devloop-Token": other.token})
    assert status == 403
    assert h.rebuilds == []


def test_the_page_carries_the_token_and_sends_it(h: Harness) -> None:
    status, body = h.request("GET", "/")  # the page needs no token: it is how the browser gets it
    assert status == 200
    page = body.decode()
    assert f'<meta name="devloop-token" content="{h.d.token}">' in page
    assert "__DEVLOOP_TOKEN__" not in page
    assert '"X-Devloop-Token": TOKEN' in page  # the action
    assert '"X-Devloop-Token": readToken' in page  # the state
    assert "new EventSource(`/api/events?token=${encodeURIComponent(readToken)}`)" in page  # the stream


@pytest.mark.parametrize("json_mode", [False, True])
def test_the_token_is_never_printed_logged_nor_in_the_state(json_mode: bool, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    stdout, stderr = io.StringIO(), io.StringIO()
    out = Output(json_mode=json_mode, stdout=stdout, stderr=stderr)
    harness = Harness(out)
    url = harness.d.start()
    token = harness.d.token
    try:
        out.info(f"dashboard: {url}", url=url)
        publish_good_cycle(out)
        assert token not in json.dumps(harness.state())
        stream = Stream(harness.d)  # the token in the query string, as the page sends it
        try:
            stream.until(lambda d: d.get("event") == "cycle_done")
        finally:
            stream.close()
        # A refusal never echoes what it was given.
        status, body = harness.request("GET", f"/api/events?token={token}x")
        assert status == 403 and token.encode() not in body
    finally:
        harness.d.stop()
    printed = stdout.getvalue() + stderr.getvalue()
    assert f"dashboard: {url}" in printed
    assert token not in printed and token not in caplog.text
    assert token not in url


# -- reading needs the page's token ----------------------------------------------------------------

# How the page reads: the state with the header, the event stream with the query string (EventSource
# cannot send a header); a client that can send the header may use it for the stream too.
READS = [("/api/state", "header"), ("/api/events", "query"), ("/api/events", "header")]


def read(h: Harness, path: str, how: str, token: str | None) -> tuple[int, bytes]:
    """GET an API path with `token` sent `how` (None: no token at all): the status and the body (of a
    stream, its first event)."""
    headers = {"X-Devloop-Token": token} if how == "header" and token is not None else {}
    target = f"{path}?{urlencode({'token': token})}" if how == "query" and token is not None else path
    conn = http.client.HTTPConnection("127.0.0.1", h.d.port, timeout=TIMEOUT)
    try:
        conn.request("GET", target, headers=headers)
        resp = conn.getresponse()
        if resp.status != 200 or path != "/api/events":
            return resp.status, resp.read()
        lines = [resp.readline()]
        while lines[-1] not in (b"\n", b""):
            lines.append(resp.readline())
        return resp.status, b"".join(lines)
    finally:
        conn.close()


@pytest.mark.parametrize(("path", "how"), READS)
def test_reading_needs_the_pages_token(h: Harness, out: Output, path: str, how: str) -> None:
    h.out.pod_log("web-abc", "a line only the page may read", service="web")
    status, body = read(h, path, how, None)
    assert status == 403, body
    assert "refused: no X-Devloop-Token" in json.loads(body)["error"]
    assert b"a line only the page may read" not in body
    another_session = Dashboard(out, port=0, on_rebuild=lambda s: None).token
    for wrong in ("", "guess", h.d.token[:-1], h.d.token + "x", another_session, "ä-not-ascii"):
        status, body = read(h, path, how, wrong)
        assert status == 403, (wrong, body)
        if wrong:
            assert "wrong X-Devloop-Token" in json.loads(body)["error"]
        assert b"a line only the page may read" not in body
    status, body = read(h, path, how, h.d.token)
    assert status == 200, body
    if path == "/api/state":
        [web] = [s for s in json.loads(body)["services"] if s["name"] == "web"]
        assert [entry["line"] for entry in web["logs"]] == ["a line only the page may read"]
    else:
        assert body.startswith(b"retry: 1000\nevent: hello\n")


def test_the_token_in_a_url_is_for_the_event_stream_only(h: Harness) -> None:
    # A URL lands in more places than a header (proxies, history): only the stream, which must, takes one.
    for path in ("/api/state", "/api/services/web/rebuild"):
        method = "POST" if path.endswith("rebuild") else "GET"
        status, _ = h.request(method, f"{path}?token={quote(h.d.token)}", {"Origin": h.d.url})
        assert status == 403, path
    assert h.rebuilds == []


def test_the_pages_script_runs_under_a_nonce_not_unsafe_inline(h: Harness) -> None:
    seen = []
    for _ in range(2):
        conn = http.client.HTTPConnection("127.0.0.1", h.d.port, timeout=TIMEOUT)
        try:
            conn.request("GET", "/")
            resp = conn.getresponse()
            page, csp = resp.read().decode(), resp.getheader("Content-Security-Policy", "")
        finally:
            conn.close()
        directives = {d.split()[0]: d.split()[1:] for d in (part.strip() for part in csp.split(";")) if d}
        assert directives["default-src"] == ["'none'"] and directives["frame-ancestors"] == ["'none'"]
        [source] = directives["script-src"]
        assert "'unsafe-inline'" not in directives["script-src"] and re.fullmatch(r"'nonce-[A-Za-z0-9_-]{20,}'", source), csp
        nonce = source[len("'nonce-") : -1]
        scripts = re.findall(r"<script\b[^>]*>", page)
        assert scripts == [f'<script nonce="{nonce}">'], scripts  # the page's one script carries it
        assert "__DEVLOOP_NONCE__" not in page
        assert not re.search(r"<[^>]*\son[a-z]+\s*=", page)  # no inline handler, which no nonce could allow
        seen.append(nonce)
    assert seen[0] != seen[1]  # a new nonce with every response


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1:1", "https://127.0.0.1"])
def test_foreign_origin_cannot_rebuild(h: Harness, origin: str) -> None:
    # Even with the token (leaked somehow): the origin is checked first.
    status, body = h.request("POST", "/api/services/web/rebuild", {"Origin": origin, "X-Devloop-Token": h.d.token})
    assert status == 403
    assert b"refused a request from origin" in body
    assert h.rebuilds == []


def test_cross_site_form_post_without_origin_is_refused(h: Harness) -> None:
    status, _ = h.request("POST", "/api/services/web/rebuild", {"Sec-Fetch-Site": "cross-site", "X-Devloop-Token": h.d.token})
    assert status == 403
    assert h.rebuilds == []


def test_foreign_origin_cannot_read_the_stream_or_state(h: Harness) -> None:
    stream = Stream(h.d, {"Origin": "http://evil.example"})
    try:
        assert stream.resp.status == 403
    finally:
        stream.close()
    status, _ = h.request("GET", "/api/state", {"Origin": "http://evil.example", "X-Devloop-Token": h.d.token})
    assert status == 403


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "127.0.0.1:1", "0.0.0.0:{port}"])
def test_dns_rebinding_host_is_refused(h: Harness, host: str) -> None:
    for path in ("/", "/api/state"):
        status, body = h.request("GET", path, {"Host": host.format(port=h.d.port)})
        assert status == 403, path
        assert b"refused Host" in body


def test_the_page_itself(h: Harness) -> None:
    for host in (f"127.0.0.1:{h.d.port}", f"localhost:{h.d.port}"):
        status, body = h.request("GET", "/", {"Host": host})
        assert status == 200
    page = body.decode()
    assert "<title>devloop</title>" in page and "EventSource" in page
    assert "<script src" not in page and "<link" not in page  # self-contained: no CDN, nothing to fetch


# -- lifecycle -------------------------------------------------------------------------------------


def test_binds_localhost_only_and_reports_the_url(h: Harness) -> None:
    assert h.d.url == f"http://127.0.0.1:{h.d.port}" and h.d.port != 0
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(TIMEOUT)
        s.connect(("127.0.0.1", h.d.port))


def test_a_taken_port_is_a_clear_error(out: Output) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        d = Dashboard(out, port=port, on_rebuild=lambda s: None)
        with pytest.raises(DashboardPortTaken) as e:
            d.start()
    assert isinstance(e.value, DevloopError)
    assert f"127.0.0.1:{port}" in e.value.message and "taken" in e.value.message
    assert "--no-ui" in e.value.hint and "dashboard.port" in e.value.hint
