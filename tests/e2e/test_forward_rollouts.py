"""The forwarded URL across rollouts of the seed's probe-less manifests (issue 23), on a real kind
cluster through the real CLI: without a readinessProbe a pod is Ready as soon as its container
starts, before node listens on :3000, and the old pods stop listening when they get SIGTERM. A few
rollouts in a row while clients keep requesting the URL, with a new connection per request (a
browser reloading) and on kept-alive connections (a browser's or an HTTP library's pool): not one
request may fail.

The module brings the cluster up once (or finds it left by the module before: `shared_cluster`, conftest.py).
"""

from __future__ import annotations

import http.client
import os
import select
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Harness
from tests.e2e.test_faults import dev_ready, set_message
from tests.e2e.test_loop import local_port

pytestmark = [pytest.mark.e2e, pytest.mark.shared_cluster, pytest.mark.usefixtures("sample_up")]

ROLLOUTS = int(os.environ.get("DEVLOOP_E2E_ROLLOUTS", "4"))


@pytest.fixture
def no_probes(project: Path) -> Iterator[None]:
    """The seed article's own Deployment: no readiness or liveness probe."""
    deployment = project / "sample-app" / "k8s" / "deployment.yaml"
    original = deployment.read_text()
    deployment.write_text(original[: original.index("          readinessProbe:")])
    yield
    deployment.write_text(original)


@dataclass
class Client:
    """Requests GET / on the forwarded URL until stopped: a new connection per request, or one
    kept-alive connection reused as an HTTP library's pool does (a connection the server closed
    while idle is noticed before it is reused, as urllib3 and browsers do). Notes every answer and
    every failure (time.monotonic(), what)."""

    port: int
    keep_alive: bool
    answers: list[tuple[float, str]] = field(default_factory=list)
    failures: list[tuple[float, str]] = field(default_factory=list)
    slowest: float = 0.0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self.stop.is_set():
            if conn is not None and conn.sock is not None and select.select([conn.sock], [], [], 0)[0]:
                conn.close()  # closed by the server while idle (or it sent something unasked): not reused
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=45)
            started = time.monotonic()
            try:
                conn.request("GET", "/")
                r = conn.getresponse()
                body = r.read().decode().strip()
                if r.status == 200:
                    self.answers.append((time.monotonic(), body))
                else:
                    self.failures.append((time.monotonic(), f"HTTP {r.status}: {body[:80]}"))
                if r.will_close:
                    conn.close()
            except (OSError, http.client.HTTPException) as e:
                self.failures.append((time.monotonic(), f"{'kept-alive' if self.keep_alive else 'new'} connection: {e!r}"))
                conn.close()
            self.slowest = max(self.slowest, time.monotonic() - started)
            if not self.keep_alive:
                conn.close()
                conn = None
        if conn is not None:
            conn.close()


def web_pods(harness: Harness) -> set[str]:
    """The web-app pods that are not being deleted."""
    items = harness.kubectl_json("get", "pods", "-l", "app=web-app")["items"]
    return {p["metadata"]["name"] for p in items if not p["metadata"].get("deletionTimestamp")}


def test_probe_less_rollouts_in_a_row_under_load_fail_no_request(
    harness: Harness, project: Path, run_devloop: Any, no_probes: None
) -> None:
    port = local_port(project)
    d = dev_ready(run_devloop)  # its first cycle applies the probe-less Deployment
    spec = harness.kubectl_json("get", "deployment", "web-app")["spec"]["template"]["spec"]["containers"][0]
    assert "readinessProbe" not in spec, "the test must run the probe-less manifests"
    clients = [Client(port, keep_alive=False), Client(port, keep_alive=False), Client(port, keep_alive=True), Client(port, keep_alive=True)]
    threads = [threading.Thread(target=c.run, daemon=True, name=f"client-{i}") for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    texts = []
    replaced = []
    try:
        for i in range(ROLLOUTS):
            before = web_pods(harness)
            text = f"probe-less rollout {i}"
            set_message(project, text)
            done = d.wait_for(lambda e: e["event"] == "cycle_done", 300, f"rollout {i}")
            assert done["ok"], done
            after = web_pods(harness)
            replaced.append((before, after))
            texts.append(text)
            deadline = time.monotonic() + 30
            while not all(any(body == text for _, body in c.answers) for c in clients) and time.monotonic() < deadline:
                clients[0].stop.wait(0.1)  # polling with a deadline: every client got the new version
    finally:
        for c in clients:
            c.stop.set()
        for t in threads:
            t.join(60)
    failures = sorted(f for c in clients for f in c.failures)
    print(
        f"\n{ROLLOUTS} probe-less rollouts: {sum(len(c.answers) for c in clients)} requests answered, {len(failures)} failed; "
        f"slowest answer {max(c.slowest for c in clients):.2f}s"
    )
    for before, after in replaced:
        assert len(after) == 3 and not before & after, (before, after)  # each rollout really replaced every pod
    for c in clients:
        got = {body for _, body in c.answers}
        assert set(texts) <= got, (c.keep_alive, set(texts) - got)
    assert failures == [], (len(failures), Counter(what for _, what in failures))
    assert d.interrupt() == 130
