"""The exec channel a live sync writes to: the real AGENT and SYNC shell scripts, run by a real `sh`
on this machine in place of a pod (the stream is the only fake: pipes instead of a websocket)."""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devloop import live


class LocalStream:
    """An ExecStream over a local process's pipes."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def is_open(self) -> bool:
        return self.proc.poll() is None or not self.lines.empty()

    def write_stdin(self, data: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def readline_stdout(self, timeout: float | None = None) -> str | None:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def pod(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[bytes], str]]:
    """A 'container': the devloop supervisor running `sleep`, its state files under tmp_path."""
    state = str(tmp_path / "state")
    os.mkdir(state)
    supervisor = live.SUPERVISOR.replace("/tmp/.devloop-", f"{state}/.devloop-")
    app = tmp_path / "app"
    app.mkdir()
    proc = subprocess.Popen(["sh", "-c", supervisor, live.SUPERVISOR_NAME, "sleep", "600"])
    pid_file = Path(state) / ".devloop-child"
    deadline = time.monotonic() + 30  # a bound on a hang, not a speed figure
    while not (pid_file.exists() and pid_file.read_text().strip()):
        assert time.monotonic() < deadline, "the supervisor never started the app"
        threading.Event().wait(0.01)
    yield app, proc, state
    proc.terminate()
    proc.wait(10)


def channels(state: str, env: dict[str, str] | None = None) -> live.Channels:
    def open_stream(pod: str, namespace: str, argv: list[str]) -> LocalStream:
        return LocalStream([argv[0], argv[1], argv[2].replace("/tmp/.devloop-", f"{state}/.devloop-")], env)

    return live.Channels(open_stream)


def source(tmp_path: Path, text: str) -> bytes:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "server.js").write_text(text)
    return live.tar_files(src, ["server.js"])


def child(state: str) -> str:
    return (Path(state) / ".devloop-child").read_text().strip()


def test_two_syncs_over_one_channel_unpack_and_restart_the_app(pod: tuple[Path, subprocess.Popen[bytes], str], tmp_path: Path) -> None:
    app, _, state = pod
    chans = channels(state)
    ch = chans.get("web-1", "default")
    first = child(state)
    ch.sync(str(app), [], source(tmp_path, "v2"))
    assert (app / "server.js").read_text() == "v2"
    second = child(state)
    assert second != first  # the app process was restarted
    assert chans.get("web-1", "default") is ch  # the same channel: no new exec
    ch.sync(str(app), [], source(tmp_path, "v3"))
    assert (app / "server.js").read_text() == "v3"
    assert child(state) not in (first, second)
    chans.close()


def test_a_failing_sync_says_why_and_the_channel_stays_usable(pod: tuple[Path, subprocess.Popen[bytes], str], tmp_path: Path) -> None:
    app, _, state = pod
    chans = channels(state)
    ch = chans.get("web-1", "default")
    with pytest.raises(live.SyncFailed) as e:
        ch.sync(str(tmp_path / "no-such-dir"), [], source(tmp_path, "v2"))
    assert e.value.code != 0
    assert any("cannot unpack" in line for line in e.value.lines)
    ch.sync(str(app), [], source(tmp_path, "v4"))
    assert (app / "server.js").read_text() == "v4"
    chans.close()


def test_the_agent_never_expands_a_wildcard_in_the_target(pod: tuple[Path, subprocess.Popen[bytes], str], tmp_path: Path) -> None:
    app, _, state = pod
    chans = channels(state)
    ch = chans.get("web-1", "default")
    with pytest.raises(live.SyncFailed) as e:  # `ap?` is a name, not a pattern that finds `app`
        ch.sync(str(app.parent / "ap?"), [], source(tmp_path, "v2"))
    assert any("cannot unpack" in line for line in e.value.lines)
    assert not (app / "server.js").exists()
    chans.close()


def test_an_image_without_base64_has_no_channel(pod: tuple[Path, subprocess.Popen[bytes], str], tmp_path: Path) -> None:
    _, _, state = pod
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sh", "tar", "sleep", "kill"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    with pytest.raises(live.ChannelFailed, match="base64"):
        channels(state, env={"PATH": str(bin_dir)}).get("web-1", "default")


def test_a_channel_whose_exec_ended_fails_so_the_sync_can_go_another_way(
    pod: tuple[Path, subprocess.Popen[bytes], str], tmp_path: Path
) -> None:
    app, _, state = pod
    chans = channels(state)
    ch = chans.get("web-1", "default")
    assert isinstance(ch.stream, LocalStream)
    ch.stream.proc.kill()
    ch.stream.proc.wait()
    with pytest.raises(live.ChannelFailed):
        ch.sync(str(app), [], source(tmp_path, "v5"))
    fresh = chans.get("web-1", "default")  # a new exec replaces the dead one
    assert fresh is not ch
    fresh.sync(str(app), [], source(tmp_path, "v5"))
    assert (app / "server.js").read_text() == "v5"
    chans.close()


class BrokenStream:
    """A websocket that closed under the channel: writing raises, as websocket-client does."""

    def __init__(self) -> None:
        self.lines = [f"{live.READY} ok"]
        self.closed = False

    def is_open(self) -> bool:
        return True  # the client finds out only when it writes

    def write_stdin(self, data: str) -> None:
        raise ConnectionResetError("Connection to remote host was lost.")

    def readline_stdout(self, timeout: float | None = None) -> str | None:
        return self.lines.pop(0) if self.lines else None

    def close(self) -> None:
        self.closed = True


def test_a_write_on_a_closed_websocket_is_a_channel_failure_not_an_escaping_error() -> None:
    stream = BrokenStream()
    ch = live.Channel(stream)
    with pytest.raises(live.ChannelFailed, match="closed"):
        ch.sync("/app", [], b"")
    assert stream.closed
