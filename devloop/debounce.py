"""Debounce and coalesce file events. Pure: the caller passes the clock in.

A batch is due once no event arrived for `quiet` seconds, or `cap` seconds after its first event
(so a file that is rewritten forever still gets built). Events arriving while a cycle runs simply
collect here and become exactly one follow-up batch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from devloop.proc import SIGNAL_CHECK

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


class LoopGuard:
    """Stops a rebuild loop: something that writes into the watched tree because a cycle ran (a
    build step, a tool that reacts to the build) would otherwise rebuild forever. Pure: the caller
    passes the times in.

    Nothing in devloop writes into the tree, so a write during a cycle is usually a person saving.
    The rule tells the two apart by timing:

    - a write is *suspicious* only when it lands within `window` seconds (default 1.0) after a
      cycle's build phase started: that is when the build reads the context and when a tool
      reacting to the build would write. Per cycle, what counts is the path's last write in it;
    - a path is paused after `limit` (default 3) consecutive building cycles with a suspicious
      write of it. A building cycle without one breaks its streak; a cycle that did not build
      counts neither way;
    - while paused, a change of the path inside that window is dropped (`admit` says False). A
      change outside it (while idle, or later in a cycle) is a real change: `admit` resumes the
      path and says True, and the path needs `limit` suspicious cycles again to be paused.

    So a person saving every few seconds during long rollouts is never paused (their last save of
    a cycle is rarely in its first second, and never in `limit` cycles in a row), while a writer
    triggered by each build is paused after `limit` cycles. A save that happens to land inside the
    window while its path is paused is dropped; the next save outside it goes through.
    """

    def __init__(self, limit: int = 3, window: float = 1.0) -> None:
        self.limit = limit
        self.window = window
        self._streak: dict[str, int] = {}
        self._paused: set[str] = set()
        self._last: tuple[float, float] | None = None  # (start, end) of the last cycle that built
        self._pending = False  # that cycle is not observed yet

    @property
    def paused(self) -> frozenset[str]:
        return frozenset(self._paused)

    def _in_window(self, at: float, build_started: float | None) -> bool:
        return build_started is not None and build_started <= at <= build_started + self.window

    def observe(self, build_started: float | None, writes: Mapping[str, float]) -> set[str]:
        """Record one finished cycle: `writes` maps each path written during it to the time of its
        last write; `build_started` is when its build phase began (None: it did not build).
        Returns the paths newly paused by it."""
        if build_started is None:
            return set()
        suspicious = {p for p, at in writes.items() if self._in_window(at, build_started)}
        self._streak = {p: self._streak.get(p, 0) + 1 for p in suspicious}
        newly = {p for p, n in self._streak.items() if n >= self.limit} - self._paused
        self._paused |= newly
        return newly

    def cycle_built(self, start: float, end: float) -> None:
        """A cycle that built ran from `start` to `end`; the next batch tells what was written meanwhile."""
        self._last, self._pending = (start, end), True

    def build_started(self, at: float) -> float | None:
        """When the cycle that was running at `at` started building (None: devloop was idle)."""
        if self._last is not None and self._last[0] <= at <= self._last[1]:
            return self._last[0]
        return None

    def observe_batch(self, writes: Iterable[tuple[str, float]]) -> set[str]:
        """The first batch after a building cycle: record that cycle with the writes (path, time) that
        landed during it. Returns the paths newly paused by it."""
        if not self._pending or self._last is None:
            return set()
        self._pending = False
        start, end = self._last
        return self.observe(start, {path: at for path, at in writes if start <= at <= end})

    def admit(self, path: str, at: float, build_started: float | None) -> bool:
        """Whether a change of `path` at time `at` is processed. `build_started` is when the
        running cycle's build phase began (None: idle, or the cycle is not building). False only
        for a paused path written inside the window; True otherwise, resuming a paused path."""
        if path not in self._paused:
            return True
        if self._in_window(at, build_started):
            return False
        self._paused.discard(path)
        self._streak.pop(path, None)
        return True


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

    def set_quiet(self, quiet: float) -> None:
        """A reloaded watch.debounceMs."""
        with self._cond:
            self._deb.quiet = quiet

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def get_batch(self) -> list[T] | None:
        """Block until a debounced batch is due; None once closed.

        Never blocks for longer than SIGNAL_CHECK at a time: this runs on the main thread, and a
        Ctrl-C that the kernel hands to another thread (any thread may take a process's signal)
        only sets a flag that the main thread reads when it next runs; a wait without end would
        leave `devloop dev` deaf to it."""
        with self._cond:
            while not self._closed:
                due = self._deb.due_in(self._clock())
                if due == 0:
                    return self._deb.take()
                self._cond.wait(SIGNAL_CHECK if due is None else min(due, SIGNAL_CHECK))
            return None
