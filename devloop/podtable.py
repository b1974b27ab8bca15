"""Each service's pods on the board (devloop.view), as the API server reports a change of them.

A pod watch per service (the API server's own watch: `Cluster.watch_pods`) marks the service
changed; one thread lists the changed services' pods and publishes them. The table is a list, not
the sum of the events: what the API server says now, whatever a watch missed while it was away.
A burst of events (a rollout) costs one list per service for as long as the burst lasts, not one
per event. Nothing here runs on a timer: an idle cluster costs nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from devloop.errors import DevloopError
from devloop.ports import Cluster
from devloop.proc import Background
from devloop.view import Board, Pod
from devloop.workload import PodEvent, pod_failure, pod_name, pod_ready

Where = tuple[str, tuple[tuple[str, str], ...]]  # namespace, selector (sorted pairs)


def pod_row(p: Mapping[str, Any]) -> Pod:
    """A pod as the page's table shows it: ready, restarts, and why it fails, else that it is leaving, else its phase."""
    status = p.get("status", {})
    cs = status.get("containerStatuses") or []
    leaving = "Terminating" if p.get("metadata", {}).get("deletionTimestamp") else ""
    return Pod(
        pod_name(p), pod_ready(p), sum(int(c.get("restartCount", 0)) for c in cs), pod_failure(p) or leaving or status.get("phase", "")
    )


class PodTable:
    """Follows the pods of the services `follow` names and publishes each service's on `board`."""

    def __init__(self, kube: Cluster, board: Board) -> None:
        self._kube = kube
        self._board = board
        self._cond = threading.Condition()
        self._where: dict[str, Where] = {}
        self._watches: dict[str, Background] = {}
        self._changed: set[str] = set()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, daemon=True, name="devloop-pod-table")
        self._thread.start()

    def follow(self, services: Mapping[str, tuple[str, Mapping[str, str]]]) -> None:
        """The services to show, each (namespace, selector). A service new here, or whose namespace or
        selector changed, or whose watch ended (the API server went away) is watched afresh; one no
        longer named is no longer watched. Each watch lists the pods first: the table is published at once."""
        want = {name: (ns, tuple(sorted(sel.items()))) for name, (ns, sel) in services.items()}
        with self._cond:
            if self._stopped:
                return
            stale = [n for n, w in self._watches.items() if want.get(n) != self._where.get(n) or not w.alive()]
            old = [self._watches.pop(n) for n in stale]
            fresh = [n for n in want if n not in self._watches]
            self._where = want
        for w in old:
            w.stop()
        for name in fresh:
            ns, sel = want[name]
            w = self._kube.watch_pods(ns, dict(sel), self._on_event(name))
            with self._cond:
                if self._stopped or self._where.get(name) != want[name] or name in self._watches:
                    w.stop()  # stopped, or followed otherwise meanwhile
                    continue
                self._watches[name] = w
                self._changed.add(name)  # listed now, whatever the watch reports
                self._cond.notify()

    def _on_event(self, service: str) -> Callable[[PodEvent], None]:
        def changed(_event: PodEvent) -> None:
            with self._cond:
                self._changed.add(service)
                self._cond.notify()

        return changed

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stopped or bool(self._changed))
                if self._stopped:
                    return
                todo = {n: self._where[n] for n in self._changed if n in self._where}
                self._changed.clear()
            for name, (ns, sel) in todo.items():
                try:
                    pods = self._kube.pods(ns, dict(sel))
                except DevloopError:
                    continue  # the API server away: its watch ends too, and `follow` watches again when it is back
                self._board.publish_pods(name, [pod_row(p) for p in pods])

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            watches = list(self._watches.values())
            self._watches.clear()
            self._cond.notify_all()
        for w in watches:
            w.stop()
        self._thread.join(timeout=5)
