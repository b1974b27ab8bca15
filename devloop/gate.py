"""One cycle's start order (`dependsOn`, order.py): a service builds and publishes at once, and rolls
out only once the services it depends on that run in the same cycle are done; it is held back when
one of them failed (or, outside the cycle, is known to have failed or to be held back itself)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence

from devloop.proc import SIGNAL_CHECK


class Gate:
    def __init__(
        self,
        depends: Mapping[str, Sequence[str]],
        running: Iterable[str],
        failed_before: Callable[[str], bool],
        stop: threading.Event,
    ) -> None:
        self._depends = depends
        self._done = {s: threading.Event() for s in running}
        self._ok: dict[str, bool] = {}
        self._failed_before = failed_before
        self._stop = stop

    def finish(self, service: str, ok: bool) -> None:
        """The service's cycle ended (ready, or failed): its dependents go on."""
        self._ok[service] = ok
        if service in self._done:
            self._done[service].set()

    def wait(self, service: str, say: Callable[[str], None]) -> list[str]:
        """Wait for the dependencies of `service` that run in this cycle; the ones that failed
        (empty: it may roll out). Returns at once when devloop stops."""
        deps = list(self._depends.get(service, ()))
        pending = [d for d in deps if d in self._done and not self._done[d].is_set()]
        if pending:
            say(f"waiting for {', '.join(pending)} to be ready (dependsOn)")
        for d in pending:
            while not self._done[d].wait(SIGNAL_CHECK):
                if self._stop.is_set():
                    return [d]
        return [d for d in deps if (d in self._done and not self._ok.get(d, False)) or (d not in self._done and self._failed_before(d))]
