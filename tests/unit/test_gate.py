"""One cycle's start order (gate.py): a dependent goes on when its dependencies end, and learns which failed."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from devloop.gate import Gate

DEPENDS = {"db": (), "migrate": ("db",), "api": ("migrate", "cache"), "cache": ()}


def test_a_dependent_waits_for_its_dependencies_in_the_cycle_and_hears_which_failed() -> None:
    gate = Gate(DEPENDS, ["db", "migrate", "api"], failed_before=lambda s: s == "cache", stop=threading.Event())
    said: list[str] = []
    gate.finish("db", True)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(gate.wait, "api", said.append)
        assert not waiting.done()  # migrate has not ended: api still waits
        gate.finish("migrate", False)
        assert waiting.result(timeout=10) == ["migrate", "cache"]  # failed in this cycle; failed before and not in it
    assert said == ["waiting for migrate to be ready (dependsOn)"]


def test_a_service_whose_dependencies_are_ready_goes_on_at_once_and_a_stop_ends_the_wait() -> None:
    stop = threading.Event()
    gate = Gate(DEPENDS, ["db", "migrate"], failed_before=lambda s: False, stop=stop)
    gate.finish("db", True)
    assert gate.wait("migrate", lambda _: None) == []
    stop.set()
    assert gate.wait("api", lambda _: None) == ["migrate"]  # stopped while migrate runs: not rolled out
