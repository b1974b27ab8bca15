"""One cycle's start order (`dependsOn`, order.py): a service builds and publishes at once, and rolls
out only once the services it depends on that run in the same cycle are done; it is held back when
one of them failed (or, outside the cycle, is known to have failed or to be held back itself)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence

from devloop import order
from devloop.errors import CycleFailed
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


class StartOrder:
    """`dependsOn` across cycles: each cycle's `Gate`, and the services a dependency held back, which
    run again with it (order.followers)."""

    def __init__(self, failed_before: Callable[[str], bool], stop: threading.Event) -> None:
        self.blocked: dict[str, str] = {}  # service → the dependency that held it back
        self._failed_before = failed_before
        self._stop = stop
        self._gate = Gate({}, (), self._held_back, stop)

    def _held_back(self, service: str) -> bool:
        """A dependency outside the cycle holds its dependents when it failed or is held back itself."""
        return service in self.blocked or self._failed_before(service)

    def begin(self, depends: Mapping[str, Sequence[str]], changed: Sequence[str]) -> list[tuple[str, str]]:
        """A new cycle of `changed`: the services held back that must run with it, (service, why)."""
        more = order.followers(changed, self.blocked, depends)
        self._gate = Gate(depends, [*changed, *more], self._held_back, self._stop)
        return [(s, f"{self.blocked[s]} (dependsOn) runs again") for s in more]

    def finish(self, service: str, ok: bool) -> None:
        self._gate.finish(service, ok)

    def hold(self, service: str, say: Callable[[str], None]) -> None:
        """Return once `service` may roll out; raise when a dependency failed (or devloop stops)."""
        failed = self._gate.wait(service, say)
        if not failed:
            self.blocked.pop(service, None)
            return
        self.blocked[service] = failed[0]
        if self._stop.is_set():
            raise CycleFailed("waiting", "stopped while waiting for dependencies")
        root = self._root(failed[0])
        raise CycleFailed("waiting", f"not rolled out: {self._why(failed)}", f"fix {root}: {service} rolls out once it is ready")

    def _why(self, deps: Sequence[str]) -> str:
        """Which dependencies failed and which were held back themselves (by the one that failed)."""
        failed = [d for d in deps if d not in self.blocked]
        held = [d for d in deps if d in self.blocked]
        parts = [f"{', '.join(failed)} (dependsOn) failed"] if failed else []
        if held:
            parts.append(f"{', '.join(held)} (dependsOn) held back by {', '.join(dict.fromkeys(self._root(d) for d in held))}")
        return "; ".join(parts)

    def _root(self, service: str) -> str:
        """The service whose failure holds `service` back, along the chain of held-back dependencies."""
        seen: set[str] = set()
        while service in self.blocked and service not in seen:
            seen.add(service)
            service = self.blocked[service]
        return service
