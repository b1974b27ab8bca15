"""Debounce and coalesce file events. Pure: the caller passes the clock in.

A batch is due once no event arrived for `quiet` seconds, or `cap` seconds after its first event
(so a file that is rewritten forever still gets built). Events arriving while a cycle runs simply
collect here and become exactly one follow-up batch.
"""

from __future__ import annotations

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

    def __len__(self) -> int:
        return len(self._items)


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
