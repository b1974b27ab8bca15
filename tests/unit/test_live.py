"""Live update: restarts paced so that a liveness probe never sees failureThreshold failures in a row."""

from __future__ import annotations

import copy
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from devloop.engine import ServiceResult
from devloop.live import MARGIN, Budget, RestartPacer, restart_budget
from devloop.plan import ServiceChange
from tests.unit.fakes import FakeCluster
from tests.unit.test_engine import World, run

SAMPLE_LIVENESS = {"httpGet": {"path": "/healthz", "port": 3000}, "periodSeconds": 10, "timeoutSeconds": 2, "failureThreshold": 3}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_budget_from_the_liveness_probe() -> None:
    b = restart_budget([{"name": "web", "livenessProbe": SAMPLE_LIVENESS}])
    assert b == Budget(burst=2 * 10 - MARGIN, quiet=10 + MARGIN, probe="liveness probe every 10s, 3 failures")


def test_kubernetes_defaults_and_no_probe() -> None:
    assert restart_budget([{"livenessProbe": {"exec": {"command": ["true"]}}}]) == Budget(
        19.0, 11.0, "liveness probe every 10s, 3 failures"
    )
    assert restart_budget([{"name": "web", "readinessProbe": SAMPLE_LIVENESS}]) is None


def test_the_strictest_container_counts() -> None:
    b = restart_budget(
        [{"livenessProbe": SAMPLE_LIVENESS}, {"livenessProbe": {"periodSeconds": 5, "failureThreshold": 2}}, {"name": "sidecar"}]
    )
    assert b is not None and b.burst == 4.0 and b.quiet == 11.0


def test_a_first_restart_and_slow_saves_never_wait() -> None:
    clock = Clock()
    pacer = RestartPacer(clock, clock.sleep)
    budget = restart_budget([{"livenessProbe": SAMPLE_LIVENESS}])
    for _ in range(20):
        _, waited = pacer.restart("pod-a", budget, lambda: clock.sleep(1.0))
        assert waited == 0
        clock.sleep(12)  # a save every 13 s: the app is up more than a probe period between restarts


def test_rapid_saves_restart_at_once_within_a_burst_then_wait_one_period() -> None:
    clock = Clock()
    pacer = RestartPacer(clock, clock.sleep)
    budget = restart_budget([{"livenessProbe": SAMPLE_LIVENESS}])
    waits = []
    for _ in range(16):
        _, waited = pacer.restart("pod-a", budget, lambda: clock.sleep(1.0))  # each restart takes 1 s
        waits.append(waited)
        clock.sleep(0.5)  # the next save comes right away
    assert waits[:13] == [0.0] * 13  # restarts 1.5 s apart for 19 s: all at once
    assert waits[13] == pytest.approx(10 + MARGIN - 0.5)  # then until the app has been up one period + margin
    assert waits[14:] == [0.0, 0.0]  # a new burst


def probe_kills(down: list[tuple[float, float]], period: float, failures: int, phase: float, end: float) -> bool:
    """Would a probe every `period` s starting at `phase` see `failures` failures in a row?"""
    run, t = 0, phase
    while t < end:
        if any(a - MARGIN / 2 <= t <= b for a, b in down):
            run += 1
            if run >= failures:
                return True
        else:
            run = 0
        t += period
    return False


@pytest.mark.parametrize("restart_s", [0.3, 1.0, 3.0, 6.0])
def test_no_probe_phase_sees_three_failures_in_a_row(restart_s: float) -> None:
    """Back-to-back syncs for 10 minutes, restarts of various lengths: with pacing no probe phase kills
    the container; without it (the old behaviour) some do."""
    rng = random.Random(7)
    budget = restart_budget([{"livenessProbe": SAMPLE_LIVENESS}])

    def run(paced: bool) -> list[tuple[float, float]]:
        clock = Clock()
        pacer = RestartPacer(clock, clock.sleep)
        down: list[tuple[float, float]] = []

        def restart() -> None:
            start = clock.now + 0.1  # kubectl exec and the unpack come first
            clock.sleep(restart_s * rng.uniform(0.8, 1.2))
            down.append((start, clock.now))

        while clock.now < 1600:
            pacer.restart("pod-a", budget if paced else None, restart)
            clock.sleep(rng.uniform(0.2, 0.8))  # the developer (or the soak) saves again right away
        return down

    paced, unpaced = run(True), run(False)
    phases = [1000 + i * 0.05 for i in range(200)]
    assert not any(probe_kills(paced, 10, 3, p, 1600) for p in phases)
    if restart_s >= 1.0:
        assert any(probe_kills(unpaced, 10, 3, p, 1600) for p in phases)


def test_recent_restarts_and_forgotten_pods() -> None:
    clock = Clock()
    pacer = RestartPacer(clock, clock.sleep)
    pacer.restart("pod-a", None, lambda: clock.sleep(1))
    pacer.restart("pod-b", None, lambda: clock.sleep(1))
    assert pacer.recent(["pod-a", "pod-b"], 30)
    assert not pacer.recent(["pod-a", "pod-c"], 30)  # pod-c was never restarted by devloop: its unreadiness is not ours
    clock.sleep(31)
    assert not pacer.recent(["pod-a"], 30)
    pacer.forget_except(["pod-b"])
    assert not pacer.recent(["pod-a"], 1e9) and pacer.recent(["pod-b"], 1e9)


# -- the engine: a replica devloop itself just restarted is waited for, not rebuilt ---------------------
class _Flapping(FakeCluster):
    """A pod is reported not ready for the first `flaps` asks, then ready (a readiness probe that
    failed during devloop's restart and passes again at its next period)."""

    def __init__(self) -> None:
        super().__init__()
        self.flaps = 0

    def pods(self, namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        pods = copy.deepcopy(super().pods(namespace, labels))
        if self.flaps > 0 and pods:
            self.flaps -= 1
            pods[0]["status"]["conditions"][0]["status"] = "False"
        return pods


def _live_world(sample_copy: Path) -> tuple[World, _Flapping]:
    cluster = _Flapping()
    w = World(sample_copy, "liveUpdate: {enabled: true}\n", cluster=cluster)
    w.engine.up()
    return w, cluster


def _sync(w: World, sample_copy: Path, text: str) -> ServiceResult:
    server = sample_copy / "sample-app" / "server.js"
    lines = server.read_text().splitlines(keepends=True)
    server.write_text("".join(f"const MESSAGE = '{text}';\n" if ln.startswith("const MESSAGE =") else ln for ln in lines))
    return run(w.engine, [ServiceChange("web-app", sync=("server.js",), image_files=("server.js",))])[0]


def test_a_replica_devloop_just_restarted_and_not_ready_yet_gets_the_next_sync(sample_copy: Path) -> None:
    w, cluster = _live_world(sample_copy)
    assert _sync(w, sample_copy, "v2").synced
    cluster.flaps = 2  # one replica fails its readiness probe after that restart
    r = _sync(w, sample_copy, "v3")
    assert r.ok and r.synced and len(w.cluster.execs) == 6, [e["message"] for e in w.events("detail")]


def test_a_replica_not_ready_for_another_reason_still_means_a_rebuild(sample_copy: Path) -> None:
    w, cluster = _live_world(sample_copy)
    cluster.flaps = 1  # devloop restarted nothing: not its doing
    r = _sync(w, sample_copy, "v2")
    assert r.ok and not r.synced and not w.cluster.execs
    assert any("live update not possible (2/3 replicas ready)" in e["message"] for e in w.events("detail"))


def test_after_a_rollout_the_synced_replicas_are_not_taken_for_new_ones(sample_copy: Path) -> None:
    """A sync, a rebuild (new pods), a sync again: a later event of a pod that got that last sync
    (its readiness flapping, restarts still 0) is not "a live-updated pod restarted" (it made a
    spurious rebuild in the soak)."""
    from devloop.session import DevSession, PodChanged
    from devloop.workload import PodEvent

    w, _ = _live_world(sample_copy)
    session = DevSession(w.engine)
    try:
        session._after([_sync(w, sample_copy, "v2")])
        server = sample_copy / "sample-app" / "server.js"
        server.write_text(server.read_text() + "// rebuilt\n")
        rebuilt = run(w.engine, [ServiceChange("web-app", rebuild=True, image_files=("server.js",), reason="image source changed")])
        assert rebuilt[0].ok and not rebuilt[0].synced  # new pods (forwards and logs not needed here)
        synced = _sync(w, sample_copy, "v3")
        assert synced.synced
        session._after([synced])
        good = w.engine.state["web-app"].good
        assert good is not None
        for pod in synced.ready_pods:
            assert session._pod_changed(PodChanged("web-app", PodEvent(pod, 0, (good.cluster,), False))) is None
        # a container that really restarted still means a rebuild
        pod = synced.ready_pods[0]
        assert session._pod_changed(PodChanged("web-app", PodEvent(pod, 1, (good.cluster,), False))) == "web-app"
    finally:
        session.stop()


def test_the_pacer_remembers_only_recent_pods() -> None:
    """A day of rollouts names thousands of pods; the pacer keeps the newest few hundred."""
    from devloop import live

    pacer = live.RestartPacer(clock=lambda: 0.0, sleep=lambda _s: None)
    for i in range(live.KEEP_PODS + 50):
        pacer.restart(f"web-{i}", None, lambda: None)
    assert len(pacer._pods) == live.KEEP_PODS
    assert "web-0" not in pacer._pods and f"web-{live.KEEP_PODS + 49}" in pacer._pods


def test_a_file_deleted_between_the_plan_and_the_sync_means_a_rebuild(sample_copy: Path) -> None:
    w = World(sample_copy, "liveUpdate: {enabled: true}\n")
    w.engine.up()
    server = sample_copy / "sample-app" / "server.js"
    server.write_text(server.read_text().replace("sample-app v1", "sample-app v2"))
    # the plan saw helper.js change too; it is gone by the time the sync reads it
    r = run(w.engine, [ServiceChange("web-app", sync=("server.js", "helper.js"), image_files=("server.js",))])[0]
    assert r.ok and not r.synced and not w.cluster.execs  # rebuilt and rolled out, nothing half-synced
    assert any(
        "live update not possible (helper.js: No such file or directory since the change was seen); rebuilding" in e["message"]
        for e in w.events("detail")
    )
