"""Debounce and coalesce file events. Pure: the caller passes the clock in.

A batch is due once no event arrived for `quiet` seconds, or `cap` seconds after its first event
(so a file that is rewritten forever still gets built). Events arriving while a cycle runs simply
collect here and become exactly one follow-up batch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class Debouncer(Generic[T]):
    quiet: float = 0.2
    cap: float = 10.0
    _items: dict[T, None] = field(default_factory=dict)
    _first: float | None = None
    _last: float | None = None

    def add(self, item: T, now: float) -> None:
        self._items.pop(item, None)
        self._items[item] = None  # keep arrival order, newest last
        if self._first is None:
            self._first = now
        self._last = now

    def due_in(self, now: float) -> float | None:
        """Seconds until the batch is due (0 when due), None when nothing is pending."""
        if self._first is None or self._last is None:
            return None
        wait = min(self._last + self.quiet, self._first + self.cap) - now
        return max(0.0, wait)

    def take(self) -> list[T]:
        items = list(self._items)
        self._items.clear()
        self._first = self._last = None
        return items


@dataclass
class LoopGuard:
    """Notices files that change while every cycle runs: something the build or the app writes
    into the watched tree. After `limit` cycles in a row they are reported and ignored, so devloop
    does not rebuild forever. Pure: the caller says which files changed during the last cycle."""

    limit: int = 3
    _streak: dict[str, int] = field(default_factory=dict)
    paused: set[str] = field(default_factory=set)

    def observe(self, changed_during_cycle: set[str]) -> set[str]:
        """Record one cycle; returns the files newly paused by it."""
        self._streak = {f: self._streak.get(f, 0) + 1 for f in changed_during_cycle}
        newly = {f for f, n in self._streak.items() if n >= self.limit} - self.paused
        self.paused |= newly
        return newly


class ChangeQueue(Generic[T]):
    """Thread-safe debounced queue between the watcher thread and the worker."""

    def __init__(self, quiet: float, cap: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._deb: Debouncer[T] = Debouncer(quiet=quiet, cap=cap)
        self._cond = threading.Condition()
        self._clock = clock
        self._closed = False

    def put(self, change: T) -> None:
        with self._cond:
            self._deb.add(change, self._clock())
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def get_batch(self) -> list[T] | None:
        """Block until a debounced batch is due; None once closed."""
        with self._cond:
            while not self._closed:
                due = self._deb.due_in(self._clock())
                if due == 0:
                    return self._deb.take()
                self._cond.wait(due)
            return None
