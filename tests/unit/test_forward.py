"""Forwards and log streams across API outages: the outage is said once, its end once."""

from __future__ import annotations

import io
import threading

import pytest

from devloop import forward
from devloop.builder import build_hint, with_cause
from devloop.forward import ApiWatch
from devloop.model import Outage as Said
from devloop.output import Output
from tests.unit.fakes import FakeCluster

KIND = Said("kind cluster 'devloop'", "a paused or restarting kind node (`docker ps`)")


class Outage(FakeCluster):
    """An API server that does not answer until `back` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.back = threading.Event()
        self.asked = 0

    def reachable(self) -> bool:
        self.asked += 1
        return self.back.is_set()


def test_an_outage_is_said_once_however_many_notice_it_and_its_end_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(forward, "API_POLL", 0.01)
    kube, out = Outage(), Output(json_mode=True, stdout=io.StringIO())
    resumed = threading.Event()
    calls: list[int] = []

    def on_back() -> None:
        calls.append(1)
        resumed.set()

    api = ApiWatch(kube, out, KIND, on_back=on_back)
    assert not api.answers()
    for _ in range(5):  # the forward, three log streams and the poller all lose the connection
        api.suspect()
        assert not api.answers()
    assert not api.up
    kube.back.set()
    assert resumed.wait(30)  # a bound on a hang, not a speed figure
    assert api.up and api.answers() and calls == [1]
    said = [e for e in out.events if e["event"] in ("warning", "info")]
    assert [e["event"] for e in said] == ["warning", "info"], said
    assert "does not answer" in said[0]["message"] and "answers again" in said[1]["message"]
    api.stop()


def test_wait_up_returns_false_when_stopped() -> None:
    api = ApiWatch(Outage(), Output(json_mode=True, stdout=io.StringIO()), KIND)
    assert not api.answers()
    stopped = threading.Event()
    stopped.set()
    assert api.wait_up(stopped) is False
    api.stop()


def test_a_step_that_hit_a_full_disk_says_so_in_its_message() -> None:
    logs = ["npm ERR! code ENOSPC", "npm ERR! nospc ENOSPC: no space left on device, write"]
    message = with_cause('process "/bin/sh -c npm ci" did not complete successfully: exit code: 1', logs)
    assert message.endswith("(no space left on device)") and "\n" not in message
    assert "disk is full" in build_hint(message)
    assert with_cause("exit code: 1", ["SyntaxError"]) == "exit code: 1"
