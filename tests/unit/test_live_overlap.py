"""Make-before-break live restarts (issue 22): the real supervisor, preload and SYNC script, with a
real `node` running the sample app on this machine in place of a pod. The new process starts beside
the old one and takes its port over; the port keeps answering through the restart; a new process
that cannot start leaves the old one serving."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devloop import live
from devloop.forward import free_port

REPO = Path(__file__).resolve().parents[2]
NODE = shutil.which("node")


class Pod:
    """The supervisor running `node server.js` from app/, its state files under state/."""

    def __init__(self, tmp: Path) -> None:
        assert NODE, "node is needed for these tests (tests/run installs Debian's nodejs with npm)"
        self.state = tmp / "state"
        self.state.mkdir()
        self.app = tmp / "app"
        shutil.copytree(REPO / "sample-app", self.app, ignore=shutil.ignore_patterns("node_modules", "k8s"))
        self.port = free_port()
        self.supervisor = self.local(live.SUPERVISOR)
        env = {**os.environ, "PORT": str(self.port)}
        env.pop("NODE_OPTIONS", None)
        self.proc = subprocess.Popen(
            ["sh", "-c", self.supervisor, live.SUPERVISOR_NAME, "node", "server.js"], cwd=self.app, env=env, start_new_session=True
        )
        self.wait_for(lambda: self.answer() is not None, "the app answers")

    def local(self, script: str) -> str:
        return script.replace("/tmp/.devloop-", f"{self.state}/.devloop-")

    def answer(self) -> str | None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            conn.request("GET", "/", headers={"Connection": "close"})
            return conn.getresponse().read().decode().strip()
        except OSError:
            return None
        finally:
            conn.close()

    def wait_for(self, cond, what: str, within: float = 30.0) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + within  # a bound on a hang, not a speed figure
        while not cond():
            assert self.proc.poll() is None, f"the supervisor ended ({self.proc.returncode}) waiting for: {what}"
            assert time.monotonic() < deadline, f"never: {what}"
            threading.Event().wait(0.02)

    def child(self) -> tuple[int, int]:
        pid, gen = (self.state / ".devloop-child").read_text().split()
        return int(pid), int(gen)

    def spare(self) -> bool:
        return any(f.name.startswith(".devloop-go.") for f in self.state.iterdir())

    def sync(self, message: str, start: str = "start();") -> subprocess.CompletedProcess[bytes]:
        """Sync server.js answering `message`, its last line `if (require.main === module) <start>`."""
        src = self.app.parent / "src"
        src.mkdir(exist_ok=True)
        text = (REPO / "sample-app" / "server.js").read_text().splitlines(keepends=True)
        text = [f"const MESSAGE = '{message}';\n" if t.startswith("const MESSAGE =") else t for t in text]
        text = [f"if (require.main === module) {start}\n" if t.startswith("if (require.main === module)") else t for t in text]
        (src / "server.js").write_text("".join(text))
        return subprocess.run(
            ["sh", "-c", self.local(live.SYNC), "sh", str(self.app), "-", f"{self.port:04X}"],
            input=live.tar_files(src, ["server.js"]),
            capture_output=True,
            timeout=60,
        )

    def stop(self) -> int:
        os.kill(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(15)


@pytest.fixture
def pod(tmp_path: Path) -> Iterator[Pod]:
    p = Pod(tmp_path)
    yield p
    if p.proc.poll() is None:
        os.killpg(p.proc.pid, signal.SIGKILL)
        p.proc.wait()


class Poller:
    """GETs / on a new connection, back to back: (time, answer or None when refused)."""

    def __init__(self, pod: Pod) -> None:
        self.pod = pod
        self.answers: list[tuple[float, str | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            a = self.pod.answer()
            self.answers.append((time.monotonic(), a))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def test_the_new_process_takes_the_port_over_while_the_old_one_serves(pod: Pod) -> None:
    pod.wait_for(pod.spare, "a spare process started ahead")
    before, gen = pod.child()
    for i in range(3):
        done = pod.sync(f"overlap {i}")
        assert done.returncode == 0, done.stderr.decode()
        assert f"{live.RESTART} overlap" in done.stderr.decode()
        assert pod.answer() == f"overlap {i}"  # served when the sync says done
        pod.wait_for(pod.spare, f"a spare again after restart {i}")
    after, gen_after = pod.child()
    assert after != before and gen_after == gen + 3
    with pytest.raises(ProcessLookupError):
        os.kill(before, 0)  # the old process was stopped
    assert pod.stop() == 143


def test_the_old_process_serves_until_the_new_one_listens(pod: Pod) -> None:
    """New code that takes a second before it listens: the old code answers all that second (a
    stop-start restart would refuse every request in it)."""
    pod.wait_for(pod.spare, "a spare process started ahead")
    poller = Poller(pod)
    try:
        t0 = time.monotonic()
        done = pod.sync("slow start", start="setTimeout(start, 1000);")
        assert done.returncode == 0, done.stderr.decode()
        assert pod.answer() == "slow start"
    finally:
        poller.stop()
    old = [t - t0 for t, a in poller.answers if a == "Hello from devloop sample-app v1"]
    assert old and max(old) >= 0.9, f"the old code stopped answering {max(old, default=0):.2f}s into the sync"
    refused = [t - t0 for t, a in poller.answers if a is None]
    assert not refused or min(refused) >= 0.9, f"a request was refused {min(refused):.2f}s into the sync, before the new code listened"


def test_new_code_that_cannot_start_leaves_the_old_process_serving(pod: Pod) -> None:
    assert pod.sync("good").returncode == 0
    pid, _ = pod.child()
    src = pod.app.parent / "src"
    (src / "server.js").write_text("this is not javascript(\n")
    bad = subprocess.run(
        ["sh", "-c", pod.local(live.SYNC), "sh", str(pod.app), "-", f"{pod.port:04X}"],
        input=live.tar_files(src, ["server.js"]),
        capture_output=True,
        timeout=60,
    )
    assert bad.returncode == live.NOT_STARTED, bad.stderr.decode()
    assert "before it listened; the one before keeps serving" in bad.stderr.decode()
    assert pod.answer() == "good"
    assert pod.child()[0] == pid
    fixed = pod.sync("fixed")  # the next save restarts from the process that kept serving
    assert fixed.returncode == 0, fixed.stderr.decode()
    assert pod.answer() == "fixed"


def test_a_program_that_is_not_node_restarts_stop_start(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    sup = live.SUPERVISOR.replace("/tmp/.devloop-", f"{state}/.devloop-")
    proc = subprocess.Popen(["sh", "-c", sup, live.SUPERVISOR_NAME, "sleep", "600"], start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not (state / ".devloop-child").exists() or not (state / ".devloop-child").read_text().strip():
            assert time.monotonic() < deadline
            threading.Event().wait(0.02)
        app = tmp_path / "app"
        app.mkdir()
        (tmp_path / "f.txt").write_text("x")
        done = subprocess.run(
            ["sh", "-c", live.SYNC.replace("/tmp/.devloop-", f"{state}/.devloop-"), "sh", str(app), "-"],
            input=live.tar_files(tmp_path, ["f.txt"]),
            capture_output=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr.decode()
        assert f"{live.RESTART} stop-start" in done.stderr.decode()
        assert not [f for f in state.iterdir() if f.name.startswith(".devloop-go")]  # no spare: nothing asked for one
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
