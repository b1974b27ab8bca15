"""The dashboard page in a real browser: Debian's chromium driven by playwright.

Events are published through a real Output; the page must follow them without a reload.
Needs /usr/bin/chromium (`apt-get install -y chromium`; tests/run installs it). Playwright's own
browser download is not used: it is not reachable from CI.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright

from devloop.dashboard import Dashboard
from devloop.errors import CycleFailed
from devloop.monitoring import ServiceStats
from devloop.output import Output
from devloop.view import Board, Pod, Running

CHROMIUM = os.environ.get("DEVLOOP_TEST_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 10_000  # how long an expectation may take to come true before the test fails


@pytest.fixture(scope="module")
def pw() -> Iterator[Playwright]:
    if not Path(CHROMIUM).is_file():
        pytest.fail(
            f"the dashboard browser tests need Chromium at {CHROMIUM}: install it with "
            "`apt-get install -y chromium` (tests/run does), or set DEVLOOP_TEST_CHROMIUM",
            pytrace=False,
        )
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(pw: Playwright) -> Iterator[Browser]:
    b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
    yield b
    b.close()


class Devloop:
    """What the page is attached to: a real Output, and the lead's two callbacks."""

    def __init__(self) -> None:
        self.out = Output(stdout=io.StringIO(), stderr=io.StringIO())
        self.rebuilds: list[str] = []
        self.dashboard = Dashboard(self.out, port=0, on_rebuild=self.rebuilds.append, snapshot=self.snapshot)

    def snapshot(self) -> dict[str, Any]:
        return {
            "services": {
                "web": {"healthy": True, "good": None, "pods": [{"name": "web-7d9f-abc", "ready": True, "restarts": 3}]},
                "api": {"healthy": False, "good": None, "pods": []},
            }
        }


class Session:
    """What the page is attached to in `devloop dev`: a real Output and the session's board, published
    as the worker and the pod table publish it (no snapshot asked at each request)."""

    def __init__(self) -> None:
        self.out = Output(stdout=io.StringIO(), stderr=io.StringIO())
        self.board = Board(self.out)
        self.board.publish([Running("web", healthy=True, forwards=(FORWARD,))])
        self.board.publish_pods("web", [Pod("web-1", True, 0, "Running")])
        self.dashboard = Dashboard(self.out, port=0, on_rebuild=lambda s: None, board=self.board)


FORWARD = "http://127.0.0.1:8080"
# The page must poll nothing: every change reaches it as an event. Its repeating timers are refused
# (and counted), so a page that still polled would never show what it polls for.
NO_POLLING = "window.__polls = 0; window.setInterval = () => { window.__polls += 1; return 0; };"


@pytest.fixture
def devloop() -> Iterator[Devloop]:
    d = Devloop()
    d.dashboard.start()
    yield d
    d.dashboard.stop()


@pytest.fixture
def session() -> Iterator[Session]:
    s = Session()
    s.dashboard.start()
    yield s
    s.dashboard.stop()


@contextmanager
def open_page(browser: Browser, url: str) -> Iterator[Page]:
    context = browser.new_context()
    context.add_init_script(NO_POLLING)
    p = context.new_page()
    p.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    p.goto(url)
    expect(p.locator("#conn")).to_have_text("live")
    p.evaluate("window.__notReloaded = true")
    yield p
    assert p.evaluate("window.__notReloaded === true"), "the page reloaded itself"
    assert p.evaluate("window.__polls") == 0, "the page set up a repeating timer (it must poll nothing)"
    assert errors == [], f"script errors on the page: {errors}"
    context.close()


@pytest.fixture
def page(browser: Browser, devloop: Devloop) -> Iterator[Page]:
    with open_page(browser, devloop.dashboard.url) as p:
        yield p


@pytest.fixture
def session_page(browser: Browser, session: Session) -> Iterator[Page]:
    with open_page(browser, session.dashboard.url) as p:
        yield p


def card(page: Page, service: str) -> Any:
    return page.locator(f'section.card[data-service="{service}"]')


def test_cycles_show_live_with_states_reasons_and_drawn_phases(page: Page, devloop: Devloop) -> None:
    out = devloop.out
    web, api = card(page, "web"), card(page, "api")
    expect(web.locator(".badge")).to_have_text("ready")  # healthy before any cycle (snapshot)
    expect(web.locator("table.pods")).to_contain_text("web-7d9f-abc")
    expect(web.locator('tr[data-pod="web-7d9f-abc"] td').nth(2)).to_have_text("3")

    out.cycle_start(1, "image source changed", ["server.js"], services=["web", "api"])
    out.phase_start("build", service="web")
    expect(web.locator(".badge")).to_have_text("building")
    out.phase_done("build", 1.5, service="web")
    out.phase_start("publish", service="web")
    expect(web.locator(".badge")).to_have_text("publishing")
    out.phase_done("publish", 0.3, service="web")
    out.phase_start("rollout", service="web")
    out.progress("web", "1/2 pods ready")
    expect(web.locator(".badge")).to_have_text("rolling out")
    expect(web.locator(".progress")).to_contain_text("1/2 pods ready")
    out.phase_done("rollout", 2.5, service="web")
    out.cycle_done(
        1,
        phases={"build": 1.5, "publish": 0.3, "rollout": 2.5},
        total=4.3,
        image="localhost:5001/web:dl-1",
        files=["server.js"],
        reason="image source changed",
        service="web",
    )
    err = CycleFailed("rollout", "pod api-x: CrashLoopBackOff", "fix the code and save", details=["SyntaxError: Unexpected token"])
    out.cycle_done(
        1, phases={"build": 0.8, "rollout": 6.0}, total=6.8, image=None, error=err, service="api", outcome="api:dl-0 keeps serving"
    )

    expect(web.locator(".badge")).to_have_text("ready")
    expect(web.locator(".reason")).to_be_hidden()
    expect(web.locator(".image")).to_contain_text("localhost:5001/web:dl-1")
    expect(api.locator(".badge")).to_have_text("failed")
    reason = api.locator(".reason")
    expect(reason).to_be_visible()
    expect(reason).to_contain_text("failed in rollout: pod api-x: CrashLoopBackOff")
    expect(reason).to_contain_text("SyntaxError: Unexpected token")
    expect(reason).to_contain_text("api:dl-0 keeps serving")
    expect(reason).to_contain_text("hint: fix the code and save")

    # The phases are drawn: one bar per phase, as wide as it took.
    bars = web.locator('svg.phases g.cycle[data-cycle="1"] rect.bar')
    expect(bars).to_have_count(3)
    widths = {}
    for i in range(3):
        box = bars.nth(i).bounding_box()
        assert box is not None, "a bar of the phases chart is not drawn"
        widths[bars.nth(i).get_attribute("data-phase")] = box["width"]
    assert widths["rollout"] > widths["build"] > widths["publish"] > 0
    expect(api.locator('svg.phases g.cycle[data-ok="false"] rect.bar')).to_have_count(2)

    # A second cycle is drawn above the first, without a reload.
    out.cycle_start(2, "image source changed", ["views/index.html"], services=["web"])
    out.cycle_done(2, phases={"build": 0.4}, total=0.5, image="localhost:5001/web:dl-2", files=["views/index.html"], service="web")
    expect(web.locator("svg.phases g.cycle")).to_have_count(2)
    expect(web.locator("svg.phases g.cycle").first).to_have_attribute("data-cycle", "2")


def test_log_tail_with_filter_and_follow(page: Page, devloop: Devloop) -> None:
    out = devloop.out
    logs = card(page, "web").locator(".logs")
    out.pod_log("web-7d9f-abc", "GET /health 200", service="web")
    out.pod_log("web-7d9f-abc", "ERROR database is down", service="web")
    out.pod_log("api-1", "api started", service="api")
    expect(logs.locator(".line")).to_have_count(2)
    expect(logs).to_contain_text("GET /health 200")
    expect(card(page, "api").locator(".logs .line")).to_have_text(["api-1 │ api started"])

    card(page, "web").get_by_placeholder("filter log lines").fill("error")
    expect(logs.locator(".line", has_text="GET /health 200")).to_be_hidden()
    expect(logs.locator(".line", has_text="ERROR database is down")).to_be_visible()
    # Lines arriving while filtered obey the filter too.
    out.pod_log("web-7d9f-abc", "GET /health 200 again", service="web")
    out.pod_log("web-7d9f-abc", "another error: timeout", service="web")
    expect(logs.locator(".line", has_text="another error: timeout")).to_be_visible()
    expect(logs.locator(".line", has_text="GET /health 200 again")).to_be_hidden()

    # Follow keeps the newest line in view; without it, the view stays where it is.
    card(page, "web").get_by_placeholder("filter log lines").fill("")
    for i in range(80):
        out.pod_log("web-7d9f-abc", f"request {i}", service="web")
    expect(logs.locator(".line", has_text="request 79")).to_be_in_viewport()
    card(page, "web").get_by_label("follow").uncheck()
    logs.evaluate("e => { e.scrollTop = 0 }")
    out.pod_log("web-7d9f-abc", "request 80", service="web")
    expect(logs.locator(".line", has_text="request 80")).to_have_count(1)
    assert logs.evaluate("e => e.scrollTop") == 0


def test_rebuild_now_button_calls_on_rebuild(page: Page, devloop: Devloop) -> None:
    api = card(page, "api")
    api.get_by_role("button", name="rebuild now").click()
    expect(api.locator(".rebuild-note")).to_have_text("rebuild requested")
    assert devloop.rebuilds == ["api"]


def test_forwards_pods_and_monitoring_charts(page: Page, devloop: Devloop) -> None:
    out = devloop.out
    web = card(page, "web")
    out.forward("http://127.0.0.1:8080", True, service="web")
    expect(web.get_by_role("link", name="http://127.0.0.1:8080")).to_have_attribute("href", "http://127.0.0.1:8080")
    expect(web.locator(".metrics")).to_be_hidden()  # no monitoring data: no empty charts
    for i, (old, new) in enumerate([(1.0, 0.0), (1.0, 0.0), (0.5, 0.5), (0.0, 1.0)]):
        out._emit("metrics", None, service="web", rps=10.0 + i, error_ratio=0.02 * i, versions={"dl-1": old, "dl-2": new})
    expect(web.locator(".metrics")).to_be_visible()
    expect(web.locator('[data-metric="rps"] b')).to_have_text("13.0")
    expect(web.locator('[data-metric="errors"] b')).to_have_text("6.0%")
    expect(web.locator('[data-metric="rps"] polyline')).to_have_count(1)
    expect(web.locator('[data-metric="versions"] polygon')).to_have_count(2)  # the rollout from dl-1 to dl-2
    expect(web.locator('[data-metric="versions"] b')).to_have_text("dl-2")


def test_another_site_in_the_same_browser_cannot_rebuild(pw: Playwright, devloop: Devloop) -> None:
    # Chromium itself now keeps public sites from calling local servers; the dashboard must not rely
    # on that (other browsers, older versions, a permission once granted): turn it off and see the
    # request reach the dashboard, which refuses it.
    lenient = [*ARGS, "--disable-features=LocalNetworkAccessChecks,BlockInsecurePrivateNetworkRequests,PrivateNetworkAccessSendPreflights"]
    b = pw.chromium.launch(executable_path=CHROMIUM, args=lenient, headless=True)
    try:
        p = b.new_page()
        p.route("http://other.test/", lambda route: route.fulfill(body="<html><body>another site</body></html>", content_type="text/html"))
        p.goto("http://other.test/")
        result = p.evaluate(
            """url => fetch(url, {method: "POST", mode: "no-cors"}).then(() => "answered", e => "failed: " + e)""",
            f"{devloop.dashboard.url}/api/services/web/rebuild",
        )
    finally:
        b.close()
    assert result == "answered"  # the request reached the dashboard ...
    assert devloop.rebuilds == []  # ... which refused it


def test_a_page_of_an_earlier_session_cannot_rebuild(page: Page, devloop: Devloop) -> None:
    # devloop restarted on the same port: the open page still has the old session's token.
    port = devloop.dashboard.port
    devloop.dashboard.stop()
    expect(page.locator("#conn")).to_contain_text("not answering")
    restarted = Devloop()
    restarted.dashboard.port = port
    restarted.dashboard.start()
    try:
        expect(page.locator("#conn")).to_have_text("live")  # the stream reconnects by itself ...
        web = card(page, "web")
        web.get_by_role("button", name="rebuild now").click()
        expect(web.locator(".rebuild-note")).to_have_text("rebuild refused: reload the page (devloop was restarted?)")
        assert restarted.rebuilds == [] and devloop.rebuilds == []  # ... but cannot act with the old token
        page.reload()
        page.evaluate("window.__notReloaded = true")
        card(page, "web").get_by_role("button", name="rebuild now").click()
        expect(card(page, "web").locator(".rebuild-note")).to_have_text("rebuild requested")
        assert restarted.rebuilds == ["web"]
    finally:
        restarted.dashboard.stop()


def test_a_running_cycle_pods_and_forwards_show_as_they_change_not_when_the_cycle_ends(session_page: Page, session: Session) -> None:
    page, out, board = session_page, session.out, session.board
    web = card(page, "web")
    expect(web.locator('tr[data-pod="web-1"] td').nth(1)).to_have_text("✔ ready")
    expect(web.get_by_role("link", name=FORWARD)).to_have_count(0)  # declared, not ready: its URL only
    expect(web.locator(".forwards")).to_contain_text(f"{FORWARD} (not ready)")

    # A save: the cycle shows as it starts, with its trigger and files, while its build has not ended.
    out.cycle_start(7, "image source changed", ["server.js"], services=["web"])
    out.phase_start("build", service="web")
    row = web.locator('svg.phases g.cycle[data-cycle="7"]')
    expect(row).to_have_attribute("data-ok", "running")
    expect(row.locator("title")).to_have_text("cycle 7: image source changed — server.js")
    expect(web.locator(".badge")).to_have_text("building")

    # The cluster changes while the build still runs: the page follows the pod table, not the cycle.
    board.publish_pods("web", [Pod("web-1", False, 0, "Terminating"), Pod("web-2", False, 3, "CrashLoopBackOff")])
    expect(web.locator('tr[data-pod="web-2"] td').nth(3)).to_have_text("CrashLoopBackOff")
    expect(web.locator('tr[data-pod="web-1"] td').nth(3)).to_have_text("Terminating")
    out.forward(FORWARD, True, "HTTP 200", service="web")
    expect(web.get_by_role("link", name=FORWARD)).to_have_attribute("href", FORWARD)
    expect(row).to_have_attribute("data-ok", "running")  # ... and the cycle still runs

    # A devloop.yaml reload removed the forward: the page no longer offers its URL.
    board.publish([Running("web", healthy=True, forwards=())])
    expect(web.locator(".forwards")).to_have_text("none")

    out.cycle_done(7, phases={"build": 1.0}, total=1.0, image="localhost:5001/web:dl-7", files=["server.js"], service="web")
    expect(row).to_have_attribute("data-ok", "true")


def test_a_rate_devloop_cannot_know_yet_is_not_shown_as_zero(session_page: Page, session: Session) -> None:
    web = card(session_page, "web")
    unsure = ServiceStats(rps=0.0, error_ratio=None, p95_seconds=None, unsure_series=3)
    session.out.metrics("web", unsure.rps, unsure.error_ratio, {"dl-1": 3}, unsure.traffic_known, unsure.traffic())
    expect(web.locator('[data-metric="rps"] b')).to_have_text("not known yet")
    expect(web.locator('[data-metric="errors"] b')).to_have_text("no traffic")  # no ratio without requests, not "0.0%"
    expect(web.locator('[data-metric="traffic"]')).to_have_text(f"last minute: {unsure.traffic()}")  # the words of `devloop status`
    known = ServiceStats(rps=2.4, error_ratio=0.0, p95_seconds=0.012)
    session.out.metrics("web", known.rps, known.error_ratio, {"dl-1": 3}, known.traffic_known, known.traffic())
    expect(web.locator('[data-metric="rps"] b')).to_have_text("2.40")
    expect(web.locator('[data-metric="errors"] b')).to_have_text("0.0%")
    expect(web.locator('[data-metric="traffic"]')).to_have_text("last minute: 2.40 req/s, 0.0% errors, p95 12ms")
