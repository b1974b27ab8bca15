"""The forwarded URL during a rollout (issue 12), on a real kind cluster through the real CLI: the
forward moves to the first Ready pod of the new version as soon as there is one, and a browser
reloading the URL meanwhile never sees a refused connection (devloop owns the local listener; the
pods underneath change). No `kubectl port-forward` runs: connections go through the API server.

The module brings the cluster up once (or finds it left by the module before: `shared_cluster`, conftest.py).
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from devloop.api import ApiCluster
from tests.e2e.conftest import Harness, children_of_cluster
from tests.e2e.test_faults import dev_ready, message, set_message
from tests.e2e.test_loop import local_port

pytestmark = [pytest.mark.e2e, pytest.mark.shared_cluster, pytest.mark.usefixtures("sample_up")]


def rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MB."""
    total = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
            todo += [int(c) for t in Path(f"/proc/{p}/task").iterdir() for c in (t / "children").read_text().split()]
        except (OSError, StopIteration):
            continue
    return total / 1024


@dataclass
class Browser:
    """Reloads the forwarded URL continuously, a new connection per request, and notes what each
    got and when (time.monotonic())."""

    port: int
    answers: list[tuple[float, str]] = field(default_factory=list)
    failures: list[tuple[float, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                conn.request("GET", "/")
                r = conn.getresponse()
                body = r.read().decode().strip()
                if r.status == 200:
                    self.answers.append((time.monotonic(), body))
                else:
                    self.failures.append((time.monotonic(), f"HTTP {r.status}: {body[:80]}"))
            except (OSError, http.client.HTTPException) as e:
                self.failures.append((time.monotonic(), repr(e)))
            finally:
                conn.close()

    def first(self, text: str) -> float | None:
        return next((t for t, body in self.answers if body == text), None)


@dataclass
class ReadyTimes:
    """When each pod of the web-app Deployment was first seen Ready, by a `kubectl get --watch` of the test's own."""

    harness: Harness
    ready: dict[str, float] = field(default_factory=dict)
    proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        template = '{.metadata.name}{" "}{.status.conditions[?(@.type=="Ready")].status}{"\\n"}'
        self.proc = subprocess.Popen(
            [
                self.harness.kubectl,
                "--context",
                self.harness.context,
                "get",
                "pods",
                "-l",
                "app=web-app",
                "--watch",
                "-o",
                f"jsonpath={template}",
            ],
            env=self.harness.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            name, _, status = line.strip().partition(" ")
            if status == "True" and name not in self.ready:
                self.ready[name] = time.monotonic()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


def test_a_rollout_moves_the_forward_to_the_first_ready_new_pod_and_never_refuses(
    harness: Harness, project: Path, run_devloop: Any
) -> None:
    port = local_port(project)
    d = dev_ready(run_devloop)
    assert not [c for c in children_of_cluster() if " port-forward " in c], "the forward runs in-process, not as kubectl"
    print(f"\nidle devloop dev: {rss_mb(d.proc.pid):.0f} MB with its children")
    old = message(project)
    before = {p["metadata"]["name"] for p in harness.kubectl_json("get", "pods", "-l", "app=web-app")["items"]}
    pods = ReadyTimes(harness)
    pods.start()
    browser = Browser(port)
    client = threading.Thread(target=browser.run, daemon=True)
    client.start()
    try:
        deadline = time.monotonic() + 30
        while browser.first(old) is None and time.monotonic() < deadline:
            browser.stop.wait(0.1)  # polling with a deadline: the browser's first answer
        assert browser.first(old) is not None, browser.failures[-3:]
        new = "moved at the first Ready replica"
        set_message(project, new)
        done = d.wait_for(lambda e: e["event"] == "cycle_done", 300, "the edit's rollout")
        assert done["ok"], done
        end = time.monotonic() + 5
        while time.monotonic() < end and not browser.stop.wait(0.1):
            pass  # a few more seconds of reloading after the rollout
    finally:
        browser.stop.set()
        client.join(20)
        pods.stop()
    new_pods = {name: t for name, t in pods.ready.items() if name not in before}
    assert len(new_pods) == 3, (new_pods, pods.ready)
    first_ready, last_ready = min(new_pods.values()), max(new_pods.values())
    first_new = browser.first(new)
    assert first_new is not None, browser.answers[-3:]
    lag = first_new - first_ready
    print(
        f"\nrollout: first new replica Ready at +0.00s, last at +{last_ready - first_ready:.2f}s; "
        f"the forwarded URL answered the new text at {lag:+.2f}s; {len(browser.answers)} requests, {len(browser.failures)} failed"
    )
    assert browser.failures == [], browser.failures[:5]  # not one refused (or dropped) connection while the forward moved
    early = [e["message"] for e in d.seen if "passes its readiness probe (run by devloop)" in e.get("message", "")]
    assert any(name in m for m in early for name in new_pods), f"devloop never ran a new pod's readiness probe itself: {early}"
    assert first_new < last_ready, "the forward moved before the rollout's last replica was Ready"
    assert lag <= 1.0, f"the new text {lag:.2f}s after the first new replica was Ready (target: 0.3s; this allows for the load)"
    assert {body for t, body in browser.answers if t > last_ready + 1.0} == {new}  # and stays there
    assert d.interrupt() == 130
    assert not children_of_cluster()


def test_a_request_while_no_replica_is_ready_waits_for_one(harness: Harness, project: Path, run_devloop: Any) -> None:
    """Every replica gone for a moment (scaled to 0 and back, as a node drain would): a request made
    meanwhile is not refused; it is answered by the first replica that gets Ready."""
    port = local_port(project)
    d = dev_ready(run_devloop)
    text = message(project)
    harness.kubectl_run("scale", "deployment/web-app", "--replicas=0")
    deadline = time.monotonic() + 120
    while harness.kubectl_json("get", "pods", "-l", "app=web-app")["items"] and time.monotonic() < deadline:
        threading.Event().wait(0.5)  # polling a real cluster with a deadline: the pods gone
    got: list[str] = []

    def request() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            conn.request("GET", "/")
            got.append(conn.getresponse().read().decode().strip())
        except (OSError, http.client.HTTPException) as e:
            got.append(repr(e))
        finally:
            conn.close()

    t = threading.Thread(target=request, daemon=True)
    t.start()
    try:
        t.join(2)
        assert t.is_alive() and got == [], got  # held, not refused
        harness.kubectl_run("scale", "deployment/web-app", "--replicas=3")
        t.join(60)
        assert got == [text]
    finally:
        harness.kubectl_run("scale", "deployment/web-app", "--replicas=3")
    assert d.interrupt() == 130


def test_a_client_that_half_closes_after_its_request_still_gets_the_answer(harness: Harness, project: Path, run_devloop: Any) -> None:
    """`nc -N`, and HTTP/1.0 clients that shut their write side once the request is sent: the
    port-forward stream has no half-close, so passing it on would end the stream unanswered."""
    port = local_port(project)
    d = dev_ready(run_devloop)
    text = message(project)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        s.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n")[0], answer[:200]
    assert body.decode().strip() == text
    assert d.interrupt() == 130


def test_a_port_nobody_listens_on_is_reported_refused_by_the_api_server(harness: Harness) -> None:
    """What lets the forward replay a POST safely: the API server's port-forward says on its error
    channel that the pod's port refused the stream (the app never saw the request)."""
    pod = harness.kubectl_json("get", "pods", "-l", "app=web-app")["items"][0]["metadata"]["name"]
    kube = ApiCluster(harness.context)
    try:
        sock = kube.connect("default", pod, 3999)  # nothing listens on 3999 in the sample app
        with contextlib.closing(sock):
            with contextlib.suppress(OSError):  # the refusal may have ended the stream already
                sock.sendall(b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            sock.settimeout(30)
            try:
                got = sock.recv(65536)
            except OSError:
                got = b""
            assert got == b""  # closed unanswered
            assert sock.refused()  # type: ignore[attr-defined]
        answered = kube.connect("default", pod, 3000)
        with contextlib.closing(answered):
            answered.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            answered.settimeout(30)
            assert answered.recv(65536).startswith(b"HTTP/1.")
            assert not answered.refused()  # type: ignore[attr-defined]
    finally:
        kube.close()
