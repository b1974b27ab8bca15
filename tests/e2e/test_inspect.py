"""A debugger that survives saves (issue 20), on a real kind cluster through the real CLI, with a
real Chrome DevTools Protocol client (websocket-client), as VS Code's `restart: true` attach does:

`devloop dev --inspect web-app` pins one of the sample's 3 replicas and says which; a breakpoint on
a line of server.js's request handler pauses a real HTTP request there, and resuming answers it.
Then a save that is live-synced, and one that rebuilds (package.json): each time the debugger
reconnects to the same local port, sets the breakpoint again, and the next request pauses at the
same line, without anyone restarting anything. The time from each save to the breakpoint being
hit again is printed (a figure, not an assertion).

The module brings the cluster up once and deletes it at the end (DEVLOOP_E2E_KEEP_CLUSTER=1 keeps it).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import websocket

from tests.e2e.conftest import Devloop, Harness, free_port, poll, run_cli
from tests.e2e.test_loop import set_config

pytestmark = [pytest.mark.e2e, pytest.mark.shared_cluster, pytest.mark.usefixtures("sample_up")]

QUERY = "inspect-test"
# the breakpoint's condition: only the test's requests pause (not the probes, not devloop's checks): the
# query as the app sees it through the API server's pod proxy (kubectl may send it as ?inspect-test=), or kubectl's own User-Agent
CONDITION = f"req.url.includes('{QUERY}') || String(req.headers['user-agent']).startsWith('kubectl/')"


class Cdp:
    """One Chrome DevTools Protocol session with the inspector behind 127.0.0.1:port."""

    def __init__(self, port: int) -> None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            targets = json.loads(r.read())
        assert targets and targets[0]["type"] == "node", targets
        # the URL names the inspector's own address in the pod (127.0.0.1:9229): the debugger uses the forward's, as VS Code does
        url = re.sub(r"^ws://[^/]+", f"ws://127.0.0.1:{port}", targets[0]["webSocketDebuggerUrl"])
        self.ws = websocket.create_connection(url, timeout=60)
        self.ws.settimeout(60)  # every recv: a pause that never comes fails the test, it does not hang it
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                assert "error" not in msg, (method, msg)
                return dict(msg.get("result") or {})
            self.events.append(msg)

    def wait_event(self, method: str, timeout: float) -> dict[str, Any] | None:
        """The next event `method`; None when none came within `timeout` seconds."""
        for i, msg in enumerate(self.events):
            if msg.get("method") == method:
                return dict(self.events.pop(i)["params"])
        self.ws.settimeout(timeout)
        try:
            while True:
                msg = json.loads(self.ws.recv())
                if msg.get("method") == method:
                    return dict(msg["params"])
                self.events.append(msg)
        except websocket.WebSocketTimeoutException:
            return None
        finally:
            self.ws.settimeout(60)

    def close(self) -> None:
        self.ws.close()


def handler_line(project: Path) -> int:
    """The 0-based line of server.js that answers GET / (inside the request handler)."""
    lines = (project / "sample-app" / "server.js").read_text().splitlines()
    return next(i for i, line in enumerate(lines) if line.strip().startswith("if (path === '/') return send("))


def pinned(d: Devloop, port: int, not_in: frozenset[str] | set[str] = frozenset(), timeout: float = 300) -> dict[str, Any]:
    """devloop's word that the debugger can attach on `port` (to a pod not in `not_in`): said
    already (while the test waited for something else), or to come."""

    def match(e: dict[str, Any]) -> bool:
        return e.get("inspector") == f"127.0.0.1:{port}" and e.get("pod") not in not_in

    said = [e for e in d.seen if match(e)]
    return said[-1] if said else d.wait_for(match, timeout, "the inspector forward")


def request(harness: Harness, pod: str) -> subprocess.Popen[str]:
    """GET /?inspect-test to that pod through the API server's pod proxy (a real HTTP request, in the background)."""
    return subprocess.Popen(
        [harness.kubectl, "--context", harness.context, "get", "--raw", f"/api/v1/namespaces/default/pods/{pod}:3000/proxy/?{QUERY}"],
        env=harness.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def round_trip(harness: Harness, project: Path, port: int, pod: str) -> float:
    """Attach, break on the handler's line, request, see the pause there, resume, see the answer.
    Returns time.monotonic() when the pause was seen."""
    line = handler_line(project)
    cdp = Cdp(port)
    try:
        cdp.call("Debugger.enable")
        assert cdp.call("Runtime.evaluate", expression="process.env.HOSTNAME")["result"]["value"] == pod  # the pod devloop named
        bp = cdp.call("Debugger.setBreakpointByUrl", lineNumber=line, urlRegex=r"server\.js$", condition=CONDITION)
        assert bp["locations"], f"no script matched server.js: {bp}"
        client = request(harness, pod)
        try:
            deadline = time.monotonic() + 60
            while (paused := cdp.wait_event("Debugger.paused", 0.5)) is None:
                assert client.poll() is None, f"the request was answered without stopping at the breakpoint: {client.communicate()[0]!r}"
                assert time.monotonic() < deadline, "no pause within 60 s of the request"
            hit = time.monotonic()
            frame = paused["callFrames"][0]
            script = next(
                e["params"]["url"]
                for e in cdp.events
                if e.get("method") == "Debugger.scriptParsed" and e["params"]["scriptId"] == frame["location"]["scriptId"]
            )
            assert script.endswith("/server.js") and frame["location"]["lineNumber"] == line and frame["functionName"] == "handler", (
                script,
                frame,
            )
            assert paused["hitBreakpoints"] == [bp["breakpointId"]], paused
            assert client.poll() is None, "the request answered while the app was paused"
            cdp.call("Debugger.resume")
            out, _ = client.communicate(timeout=60)
        finally:
            if client.poll() is None:
                client.kill()
        assert client.returncode == 0 and out.startswith("Hello"), out
        return hit
    finally:
        cdp.close()


def test_breakpoint_hit_again_after_a_live_sync_and_a_rebuild(harness: Harness, project: Path, run_devloop: Any) -> None:
    original = (project / "devloop.yaml").read_text()
    server = project / "sample-app" / "server.js"
    package = project / "sample-app" / "package.json"
    sources = server.read_text(), package.read_text()
    port = free_port()
    set_config(project, liveUpdate="{enabled: true}")
    try:
        d: Devloop = run_devloop("dev", "--inspect", "web-app", "--inspect-port", str(port))
        first = pinned(d, port)
        assert first["replicas"] == 3 and f"pod {first['pod']}" in first["message"] and "one of 3" in first["message"], first
        container = harness.kubectl_json("get", "deployment", "web-app")["spec"]["template"]["spec"]["containers"][0]
        assert "livenessProbe" not in container and "readinessProbe" in container, container  # a paused app is not killed
        round_trip(harness, project, port, first["pod"])

        # a live sync: the same pod, a new node process; the debugger reconnects to the same port
        saved = time.monotonic()
        server.write_text(sources[0].replace("Hello from devloop sample-app v1", "Hello, inspected"))
        live = d.wait_for(lambda e: e["event"] == "cycle_done", 120, "the live-sync cycle")
        assert live["ok"] and "sync" in live["phases"] and "build" not in live["phases"], live
        hit = poll("the restarted app's inspector", 60, lambda: _try_round_trip(harness, project, port, first["pod"]), 0.2)
        after_sync = hit - saved

        # a rebuild (package.json: liveUpdate's fallback): new pods; the pin follows the newest Ready one
        before = {p["metadata"]["name"] for p in harness.kubectl_json("get", "pods", "-l", "app=web-app")["items"]}
        saved = time.monotonic()
        package.write_text(sources[1].replace('"version": "1.0.0"', '"version": "1.0.1"'))
        rebuilt = d.wait_for(lambda e: e["event"] == "cycle_done", 300, "the rebuild's cycle")
        assert rebuilt["ok"] and "build" in rebuilt["phases"] and "rollout" in rebuilt["phases"], rebuilt
        moved = pinned(d, port, not_in=before, timeout=120)
        hit = poll("the new pod's inspector", 60, lambda: _try_round_trip(harness, project, port, moved["pod"]), 0.2)
        after_rebuild = hit - saved
        print(f"\nsave → breakpoint hit again: {after_sync:.1f}s after a live sync, {after_rebuild:.1f}s after a rebuild")
        assert d.interrupt() == 130
    finally:
        (project / "devloop.yaml").write_text(original)
        server.write_text(sources[0])
        package.write_text(sources[1])


def _try_round_trip(harness: Harness, project: Path, port: int, pod: str) -> float | None:
    """A round trip once the inspector answers through the forward again (None while it does not:
    the process is restarting)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
            if not json.loads(r.read()):
                return None
    except (OSError, ValueError):
        return None
    return round_trip(harness, project, port, pod)


def test_a_taken_inspector_port_is_one_line_and_exit_3(harness: Harness, project: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        taken = s.getsockname()[1]
        code, events, output = run_cli(harness, project, "dev", "--inspect", "web-app", "--inspect-port", str(taken))
    assert code == 3, output
    errors = [e for e in events if e["event"] == "error"]
    assert len(errors) == 1 and str(taken) in errors[0]["message"] and "--inspect-port" in errors[0]["hint"], errors
    assert not any(e["event"] == "cycle_done" for e in events), "nothing is built before the port is free"
