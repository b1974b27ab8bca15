from __future__ import annotations

import threading

from devloop.debounce import ChangeQueue, Debouncer
from devloop.plan import Change


def test_nothing_pending() -> None:
    assert Debouncer[str]().due_in(0.0) is None


def test_quiet_period_restarts_on_each_event() -> None:
    d = Debouncer[str](quiet=0.2, cap=10)
    d.add("a", 0.0)
    assert d.due_in(0.1) == 0.1
    d.add("b", 0.15)
    assert abs(d.due_in(0.3) - 0.05) < 1e-9
    assert d.due_in(0.35) == 0
    assert d.take() == ["a", "b"]
    assert d.due_in(1.0) is None


def test_cap_fires_even_if_events_never_stop() -> None:
    d = Debouncer[int](quiet=0.2, cap=1.0)
    t = 0.0
    while t < 0.95:
        d.add(1, t)
        t += 0.1
    assert d.due_in(t) is not None and d.due_in(t) > 0
    d.add(1, 1.0)
    assert d.due_in(1.0) == 0


def test_duplicates_coalesce_keeping_latest_order() -> None:
    d = Debouncer[str](quiet=0.2)
    for i, name in enumerate(["a", "b", "a", "c", "a"]):
        d.add(name, i * 0.01)
    assert d.take() == ["b", "c", "a"]


def test_hundred_saves_become_one_batch() -> None:
    now = [0.0]
    q = ChangeQueue(quiet=0.2, clock=lambda: now[0])
    for i in range(100):
        now[0] = i * 0.009  # 100 saves within 0.9 s
        q.put(Change("/p/server.js"))
    now[0] = 5.0
    assert q.get_batch() == [Change("/p/server.js")]


def test_changes_during_a_cycle_fold_into_one_follow_up() -> None:
    now = [0.0]
    q = ChangeQueue(quiet=0.2, clock=lambda: now[0])
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
    q = ChangeQueue(quiet=0.2)
    got: list[object] = []
    t = threading.Thread(target=lambda: got.append(q.get_batch()))
    t.start()
    q.close()
    t.join(timeout=5)
    assert not t.is_alive() and got == [None]


def test_loop_guard_pauses_files_that_change_during_every_cycle() -> None:
    from devloop.debounce import LoopGuard

    g = LoopGuard(limit=3)
    assert g.observe({"app.log", "server.js"}) == set()
    assert g.observe({"app.log"}) == set()
    assert g.observe({"app.log"}) == {"app.log"}  # third cycle in a row
    assert g.paused == {"app.log"}
    assert g.observe({"app.log"}) == set()  # reported once


def test_loop_guard_forgets_a_file_that_stopped() -> None:
    from devloop.debounce import LoopGuard

    g = LoopGuard(limit=2)
    g.observe({"a"})
    g.observe(set())  # a cycle during which nothing changed breaks the streak
    assert g.observe({"a"}) == set()
