"""The runner against real, harmless processes (sh, sleep): the one module that starts them."""

from __future__ import annotations

import os
import select
import threading
import time
from pathlib import Path

import pytest

from devloop import proc
from devloop.errors import CommandFailed, ToolMissing


def test_missing_binary_is_tool_missing_with_hint() -> None:
    with pytest.raises(ToolMissing) as info:
        proc.DEFAULT.run(["kubectl-that-does-not-exist"])
    assert "not found on PATH" in info.value.message and info.value.exit_code == 3


def test_failure_carries_exit_code_and_stderr() -> None:
    with pytest.raises(CommandFailed) as info:
        proc.DEFAULT.run(["sh", "-c", "echo boom >&2; exit 7"])
    assert info.value.returncode == 7 and "boom" in info.value.message


def test_arguments_are_never_shell_interpreted(tmp_path: Path) -> None:
    evil = f"x; touch {tmp_path}/pwned"
    out = proc.DEFAULT.run(["echo", evil]).stdout
    assert out.strip() == evil and not (tmp_path / "pwned").exists()


def test_input_and_output() -> None:
    assert proc.DEFAULT.run(["cat"], input="hello").stdout == "hello"


def test_timeout_kills_the_child() -> None:
    with pytest.raises(CommandFailed, match="timed out"):
        proc.DEFAULT.run(["sleep", "30"], timeout=0.3)
    assert proc.live_children() == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def spawn_with_grandchild(script: str) -> tuple[proc.Background, int]:
    """A child running `script`, which starts a grandchild and prints its pid: the child and that pid."""
    lines: list[str] = []
    got = threading.Event()

    def on_line(line: str) -> None:
        lines.append(line)
        got.set()

    bg = proc.DEFAULT.spawn(["sh", "-c", script], on_line=on_line)
    assert got.wait(30)  # a bound on a hang, not a speed figure
    return bg, int(lines[0])


def test_a_grandchild_that_outlives_its_stopped_parent_is_killed_too() -> None:
    """kind dies on SIGTERM at once, but a docker command it started may not: it would hold kind's
    output open (the runner then waits on it) and live on as an orphan."""
    # the grandchild ignores SIGTERM; its parent (the group's leader) exits on it
    bg, grandchild = spawn_with_grandchild("(trap '' TERM; exec sleep 60) & echo $!; wait")
    exited = os.pidfd_open(grandchild)
    try:
        bg.stop()
        readable, _, _ = select.select([exited], [], [], 30)  # the pidfd turns readable when the process ends
    finally:
        os.close(exited)
    assert readable and not _alive(grandchild)
    assert proc.live_children() == 0


def test_terminate_all_leaves_no_orphans_including_grandchildren() -> None:
    bg, grandchild = spawn_with_grandchild("sleep 60 & echo $!; wait")
    assert bg.alive() and _alive(grandchild)
    proc.terminate_all()
    deadline = time.monotonic() + 30
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)  # polling the process table, not synchronising on a sleep
    assert not bg.alive() and not _alive(grandchild)
    assert proc.live_children() == 0
