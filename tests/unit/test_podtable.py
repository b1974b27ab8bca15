"""The dashboard's pod table (devloop.podtable): a service's pods published as the API server reports a
change of them, never on a timer. The cluster is the unit fake, whose pod watches the test fires."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

from devloop.output import Output
from devloop.podtable import PodTable
from devloop.view import Board, Pod
from devloop.workload import PodEvent
from tests.unit.fakes import FakeBackground, FakeCluster

TIMEOUT = 10.0  # a bound on a hang, not a speed figure


def pod(name: str, ready: bool = True, restarts: int = 0, deleting: bool = False, waiting: str = "") -> dict[str, Any]:
    cs: dict[str, Any] = {"name": "app", "restartCount": restarts}
    if waiting:
        cs["state"] = {"waiting": {"reason": waiting}}
    meta: dict[str, Any] = {"name": name, "labels": {"app": "web"}}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-06T13:00:00Z"
    return {
        "metadata": meta,
        "status": {"phase": "Running", "containerStatuses": [cs], "conditions": [{"type": "Ready", "status": str(ready)}]},
    }


class Cluster(FakeCluster):
    """The fake cluster with pods the test sets, and pod watches the test fires."""

    def __init__(self) -> None:
        super().__init__()
        self.listed: dict[str, list[dict[str, Any]]] = {}  # namespace → its pods
        self.watches: list[tuple[str, FakeBackground, Callable[[PodEvent], None]]] = []

    def pods(self, namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        return list(self.listed.get(namespace, []))

    def watch_pods(self, namespace: str, labels: Mapping[str, str], on_event: Callable[[PodEvent], None]) -> FakeBackground:
        bg = super().watch_pods(namespace, labels, on_event)
        self.watches.append((namespace, bg, on_event))
        return bg

    def fire(self, namespace: str) -> None:
        """The API server reports a change of a pod in `namespace`, to every watch there that runs."""
        for ns, bg, on_event in self.watches:
            if ns == namespace and bg.alive():
                on_event(PodEvent("any", 0, (), False))


class Table:
    def __init__(self) -> None:
        self.cluster = Cluster()
        self.board = Board(Output(json_mode=True, stdout=io.StringIO()))
        self._changed = threading.Condition()
        self.board.watch(self._note)
        self.table = PodTable(self.cluster, self.board)

    def _note(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def shown(self, until: Callable[[tuple[Pod, ...]], bool]) -> tuple[Pod, ...]:
        """web's pods on the board once `until` holds for them (published by the table's thread)."""
        with self._changed:
            assert self._changed.wait_for(lambda: until(self.board.view.service("web").pods), TIMEOUT), self.board.view.service("web")
        return self.board.view.service("web").pods


@pytest.fixture
def t() -> Iterator[Table]:
    table = Table()
    yield table
    table.table.stop()


def test_the_table_is_listed_when_followed_and_again_at_each_change_the_watch_reports(t: Table) -> None:
    t.cluster.listed["default"] = [pod("web-1")]
    t.table.follow({"web": ("default", {"app": "web"})})
    assert t.shown(lambda pods: bool(pods)) == (Pod("web-1", True, 0, "Running"),)

    # A rollout in progress: the old pod leaves, a new one crash-loops. No cycle ends; the watch reports it.
    t.cluster.listed["default"] = [
        pod("web-1", ready=False, deleting=True),
        pod("web-2", ready=False, restarts=2, waiting="CrashLoopBackOff"),
    ]
    t.cluster.fire("default")
    assert t.shown(lambda pods: len(pods) == 2) == (Pod("web-1", False, 0, "Terminating"), Pod("web-2", False, 2, "CrashLoopBackOff"))


def test_a_changed_namespace_or_an_ended_watch_is_watched_afresh_and_a_removed_service_no_more(t: Table) -> None:
    t.cluster.listed = {"default": [pod("web-1")], "dev": [pod("web-9")]}
    t.table.follow({"web": ("default", {"app": "web"})})
    t.shown(lambda pods: [p.name for p in pods] == ["web-1"])
    t.table.follow({"web": ("default", {"app": "web"})})  # unchanged: the same watch goes on
    assert [(ns, bg.alive()) for ns, bg, _ in t.cluster.watches] == [("default", True)]

    t.table.follow({"web": ("dev", {"app": "web"})})  # a reload moved it
    t.shown(lambda pods: [p.name for p in pods] == ["web-9"])
    assert [(ns, bg.alive()) for ns, bg, _ in t.cluster.watches] == [("default", False), ("dev", True)]

    t.cluster.watches[-1][1].stop()  # the API server went away: the watch ended
    t.table.follow({"web": ("dev", {"app": "web"})})  # the session, once it is back
    assert [(ns, bg.alive()) for ns, bg, _ in t.cluster.watches] == [("default", False), ("dev", False), ("dev", True)]

    t.table.follow({})
    assert not any(bg.alive() for _, bg, _ in t.cluster.watches)


def test_stop_ends_the_watches_and_the_thread(t: Table) -> None:
    t.table.follow({"web": ("default", {"app": "web"})})
    t.table.stop()
    assert not any(bg.alive() for _, bg, _ in t.cluster.watches)
    assert not t.table._thread.is_alive()
