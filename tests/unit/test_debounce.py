from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from devloop.debounce import ChangeQueue, Debouncer, LoopGuard
from devloop.plan import Change


def test_nothing_pending() -> None:
    assert Debouncer[str]().due_in(0.0) is None


def test_quiet_period_restarts_on_each_event() -> None:
    d = Debouncer[str](quiet=0.2, cap=10)
    d.add("a", 0.0)
    assert d.due_in(0.1) == 0.1
    d.add("b", 0.15)
    due = d.due_in(0.3)
    assert due is not None and abs(due - 0.05) < 1e-9
    assert d.due_in(0.35) == 0
    assert d.take() == ["a", "b"]
    assert d.due_in(1.0) is None


def test_cap_fires_even_if_events_never_stop() -> None:
    d = Debouncer[int](quiet=0.2, cap=1.0)
    t = 0.0
    while t < 0.95:
        d.add(1, t)
        t += 0.1
    due = d.due_in(t)
    assert due is not None and due > 0
    d.add(1, 1.0)
    assert d.due_in(1.0) == 0


def test_duplicates_coalesce_keeping_latest_order() -> None:
    d = Debouncer[str](quiet=0.2)
    for i, name in enumerate(["a", "b", "a", "c", "a"]):
        d.add(name, i * 0.01)
    assert d.take() == ["b", "c", "a"]


def test_hundred_saves_become_one_batch() -> None:
    now = [0.0]
    q = ChangeQueue[Change](quiet=0.2, clock=lambda: now[0])
    for i in range(100):
        now[0] = i * 0.009  # 100 saves within 0.9 s
        q.put(Change("/p/server.js"))
    now[0] = 5.0
    assert q.get_batch() == [Change("/p/server.js")]


def test_changes_during_a_cycle_fold_into_one_follow_up() -> None:
    now = [0.0]
    q = ChangeQueue[Change](quiet=0.2, clock=lambda: now[0])
    q.put(Change("/p/a.js"))
    now[0] = 1.0
    first = q.get_batch()  # the worker starts a cycle with this
    for name in ("b.js", "c.js", "b.js"):  # saves while the cycle runs
        q.put(Change(f"/p/{name}"))
    now[0] = 2.0
    second = q.get_batch()
    assert first == [Change("/p/a.js")]
    assert second == [Change("/p/c.js"), Change("/p/b.js")]


def test_close_wakes_a_waiting_worker() -> None:
    q = ChangeQueue[Change](quiet=0.2)
    got: list[object] = []
    t = threading.Thread(target=lambda: got.append(q.get_batch()))
    t.start()
    q.close()
    t.join(timeout=30)
    assert not t.is_alive() and got == [None]


# LoopGuard -------------------------------------------------------------------------------------------


def run_cycles(
    g: LoopGuard, cycles: int, length: float, build_offset: float, saves: list[float], path: str = "/p/server.js"
) -> list[set[str]]:
    """Back-to-back cycles of `length` seconds, each building `build_offset` seconds in; `saves` are
    the times `path` is written. Every save is offered to admit(), as the watcher thread would.
    Returns what observe() paused after each cycle."""
    paused_per_cycle: list[set[str]] = []
    for k in range(cycles):
        start, end = k * length, (k + 1) * length
        build = start + build_offset
        in_cycle = [t for t in saves if start <= t < end]
        for t in in_cycle:
            assert g.admit(path, t, build if t >= build else None), f"save at {t} dropped"
        writes = {path: max(in_cycle)} if in_cycle else {}
        paused_per_cycle.append(g.observe(build, writes))
    return paused_per_cycle


@pytest.mark.parametrize(
    ("period", "length", "build_offset"),
    [
        (2.5, 14.0, 0.0),  # the reported case: a save every 2.5 s, 14 s rollouts
        (2.5, 14.0, 0.3),
        (1.0, 14.0, 0.2),
        (0.5, 6.0, 0.1),
        (4.0, 14.0, 0.5),
        (13.5, 14.0, 0.0),
    ],
)
def test_a_person_saving_during_long_cycles_is_never_paused(period: float, length: float, build_offset: float) -> None:
    g = LoopGuard()
    saves = [i * period for i in range(int(10 * length / period))]
    assert run_cycles(g, 10, length, build_offset, saves) == [set()] * 10
    assert g.paused == frozenset()


@pytest.mark.parametrize(
    ("delay", "limit", "paused_after"),
    [
        (0.2, 3, 3),  # a tool that writes 0.2 s after each build starts
        (0.0, 3, 3),
        (1.0, 3, 3),  # the window's edge still counts
        (0.9, 2, 2),
        (0.5, 1, 1),
    ],
)
def test_a_writer_triggered_by_each_build_is_paused_after_limit_cycles(delay: float, limit: int, paused_after: int) -> None:
    g = LoopGuard(limit=limit)
    length, build_offset = 14.0, 0.3
    saves = [k * length + build_offset + delay for k in range(paused_after)]
    results = run_cycles(g, paused_after, length, build_offset, saves)
    assert results == [set()] * (paused_after - 1) + [{"/p/server.js"}]
    assert g.paused == {"/p/server.js"}
    # the next build's write is dropped, and a later cycle does not report the path again
    next_build = paused_after * length + build_offset
    assert g.admit("/p/server.js", next_build + delay, next_build) is False
    assert g.observe(next_build, {"/p/server.js": next_build + delay}) == set()


@pytest.mark.parametrize(
    ("delay", "limit"),
    [
        (1.2, 3),  # just outside the window
        (5.0, 3),
        (1.01, 1),
    ],
)
def test_writes_outside_the_window_are_never_suspicious(delay: float, limit: int) -> None:
    g = LoopGuard(limit=limit)
    saves = [k * 14.0 + delay for k in range(10)]
    assert run_cycles(g, 10, 14.0, 0.0, saves) == [set()] * 10


@pytest.mark.parametrize(
    ("cycles", "expected"),
    [
        # (build_started, writes) per cycle → newly paused
        (
            [(0.0, {"a": 0.2}), (10.0, {"a": 10.2}), (20.0, {"a": 25.0}), (30.0, {"a": 30.2})],
            [set(), set(), set(), set()],
        ),  # a late save breaks the streak
        ([(0.0, {"a": 0.2}), (10.0, {}), (20.0, {"a": 20.2})], [set(), set(), set()]),  # a building cycle without the write breaks it
        (
            [(0.0, {"a": 0.2}), (None, {"a": 5.0}), (10.0, {"a": 10.2}), (20.0, {"a": 20.2})],
            [set(), set(), set(), {"a"}],
        ),  # no build: neutral
        ([(0.0, {"a": 0.2, "b": 0.5}), (10.0, {"a": 10.2, "b": 10.5}), (20.0, {"a": 20.2, "b": 28.0})], [set(), set(), {"a"}]),
        ([(5.0, {"a": 4.9}), (15.0, {"a": 14.9}), (25.0, {"a": 24.9})], [set(), set(), set()]),  # before the build started
    ],
)
def test_streaks(cycles: list[tuple[float | None, dict[str, float]]], expected: list[set[str]]) -> None:
    g = LoopGuard(limit=3)
    assert [g.observe(build, writes) for build, writes in cycles] == expected


@pytest.mark.parametrize(
    ("at", "build_started", "admitted"),
    [
        (50.0, None, True),  # written while idle: a real change
        (47.0, 40.0, True),  # later in a cycle
        (39.0, 40.0, True),  # before the build phase began
        (40.5, 40.0, False),  # inside the window: the loop again
        (40.0, 40.0, False),
    ],
)
def test_a_paused_path_resumes_when_written_outside_the_window(at: float, build_started: float | None, admitted: bool) -> None:
    g = LoopGuard(limit=3)
    for k in range(3):
        g.observe(k * 10.0, {"a": k * 10.0 + 0.2})
    assert g.paused == {"a"}
    assert g.admit("a", at, build_started) is admitted
    assert ("a" in g.paused) is not admitted
    assert g.admit("b", at, build_started) is True  # never paused: always admitted


def test_a_resumed_path_needs_limit_suspicious_cycles_again() -> None:
    g = LoopGuard(limit=3)
    for k in range(3):
        g.observe(k * 10.0, {"a": k * 10.0 + 0.2})
    assert g.admit("a", 100.0, None) is True
    assert g.observe(110.0, {"a": 110.2}) == set()
    assert g.observe(120.0, {"a": 120.2}) == set()
    assert g.observe(130.0, {"a": 130.2}) == {"a"}


def test_ctrl_c_taken_by_another_thread_still_stops_the_waiting_main_thread(tmp_path: Path) -> None:
    """The kernel may hand a process's SIGINT to any of its threads; Python then only sets a flag
    that the main thread reads when it runs. `devloop dev` idles in get_batch on the main thread: it
    must still stop (it once waited there without end, and Ctrl-C was lost)."""
    script = tmp_path / "idle.py"
    script.write_text(
        textwrap.dedent(
            """
            import signal, threading
            from devloop.debounce import ChangeQueue

            # as devloop's CLI does: a test run started as a background job inherits SIGINT ignored
            signal.signal(signal.SIGINT, signal.default_int_handler)
            q = ChangeQueue(0.2)

            def other_thread_takes_the_signal():
                while not q._cond._waiters:  # the main thread is waiting in get_batch
                    threading.Event().wait(0.01)
                signal.pthread_kill(threading.get_ident(), signal.SIGINT)

            threading.Thread(target=other_thread_takes_the_signal, daemon=True).start()
            try:
                q.get_batch()
            except KeyboardInterrupt:
                print("stopped")
            """
        )
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[2])
    assert done.stdout.strip() == "stopped", done.stderr
