"""DevSession's decisions, with fakes behind the adapters (no watcher thread, no cluster)."""

from __future__ import annotations

import io
import json
from pathlib import Path

from devloop import config
from devloop.dev import REBUILD, DevSession
from devloop.kind import Kind
from devloop.kube import Kube
from devloop.output import Output
from devloop.pipeline import Pipeline
from tests.unit.fakes import FakeImages, FakeRunner


def session(sample_copy: Path) -> tuple[DevSession, io.StringIO]:
    buf = io.StringIO()
    runner = FakeRunner()
    cfg = config.load(None, sample_copy)
    p = Pipeline(cfg, Output(json_mode=True, stdout=buf), images=FakeImages(), kind=Kind(runner), kube=Kube("kind-devloop", runner))  # type: ignore[arg-type]
    return DevSession(p), buf


def events(buf: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def test_a_live_updated_pod_that_restarts_asks_for_a_rebuild(sample_copy: Path) -> None:
    s, buf = session(sample_copy)
    s.p.deployed = "my-web-app:dl-1"
    s.p.synced = {"server.js"}
    s._restarts = {"web-app-a": 0, "web-app-b": 0}
    s._pod_event("web-app-a 0 |my-web-app:dl-1|")  # nothing new
    s._pod_event("web-app-c 0 |my-web-app:dl-2|")  # a pod of another version: not ours to judge
    s._pod_event("web-app-b 0 |my-web-app:dl-1|2026-01-01T00:00:00Z")  # terminating
    assert s.queue._deb.take() == []
    s._pod_event("web-app-a 1 |my-web-app:dl-1|")  # its container restarted from the image
    assert [c.path for c in s.queue._deb.take()] == [REBUILD]
    warning = [e for e in events(buf) if e["event"] == "warning"]
    assert "web-app-a restarted" in warning[0]["message"]


def test_no_rebuild_when_nothing_was_live_synced(sample_copy: Path) -> None:
    s, _ = session(sample_copy)
    s.p.deployed = "my-web-app:dl-1"
    s._pod_event("web-app-z 3 |my-web-app:dl-1|")
    assert s.queue._deb.take() == []


def test_files_rewritten_during_every_cycle_are_paused_and_named(sample_copy: Path) -> None:
    s, buf = session(sample_copy)
    layout = s.p.layout()
    log = str(sample_copy / "sample-app" / "build-stamp.js")
    for _ in range(3):
        s._during = {log}
        s._check_loop(layout)
    assert log in s.guard.paused
    warning = [e for e in events(buf) if e["event"] == "warning"]
    assert len(warning) == 1 and "sample-app/build-stamp.js" in warning[0]["message"]
    assert "watch.ignore" in warning[0]["hint"]


def test_a_rebuild_request_forces_a_full_cycle_even_when_the_tree_matches_the_live_sync(sample_copy: Path) -> None:
    from devloop.pipeline import CycleResult
    from devloop.plan import Change

    s, _ = session(sample_copy)
    calls: list[dict] = []

    def fake_cycle(reason: str, files: tuple[str, ...] = (), **kw: object) -> CycleResult:
        calls.append({"reason": reason, **kw})
        s.queue.close()  # one batch is enough
        return CycleResult(ok=False, image=None)

    s.p.cycle = fake_cycle  # type: ignore[method-assign]
    s.queue.put(Change(REBUILD))
    s._loop()
    assert calls == [{"reason": "a live-updated pod restarted", "force_apply": True}]
