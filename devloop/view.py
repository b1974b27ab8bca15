"""What the threads outside the worker read of a `devloop dev` session: one immutable view.

Nothing a reader sees is ever changed in place. Each part that knows something publishes a new
`SessionView` (frozen dataclasses throughout) through `Board`, which builds it from the current one
under a small lock and swaps one reference; a reader (the dashboard's HTTP thread) reads that
reference once and gets one consistent picture, with no lock and no torn fields.

Three parts publish:
- the worker: the configured services, what the cluster runs for each (applied, good, healthy)
  and the URLs of its forwards (exactly those it runs: a forward a reload removed goes), after each
  cycle, after what follows a cycle, and after a reload;
- the pod table (devloop.podtable): a service's pods, each time the API server reports a change of them;
- the events the engine and the forwards report through `Output` (on whichever thread reports
  them): a cycle as it starts (its trigger and files), its phase and progress as they change, each
  cycle's timings and outcome, a forward's readiness, monitoring samples, notices.

Who shows the view learns of a change at once: the events reach it as `Output` subscribers, and
`Board.watch` tells it of the worker's and the pod table's publications (a change only: the same
view published again says nothing).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from devloop.output import Output

CYCLES_PER_SERVICE = 20
METRICS_PER_SERVICE = 240
NOTICES = 20

# The phase a service is in, as a person says it.
PHASE_STATES = {"build": "building", "publish": "publishing", "deploy": "rolling out", "rollout": "rolling out", "sync": "syncing"}


@dataclass(frozen=True)
class Pod:
    name: str
    ready: bool
    restarts: int
    status: str = ""


@dataclass(frozen=True)
class Forward:
    url: str
    ready: bool = False
    message: str = ""


@dataclass(frozen=True)
class Failure:
    """Why a cycle failed, as `Output.cycle_done` reports it."""

    phase: str | None = None
    message: str = "failed"
    hint: str = ""
    details: tuple[str, ...] = ()

    @classmethod
    def of(cls, error: Mapping[str, Any] | None) -> Failure | None:
        if error is None:
            return None
        return cls(error.get("phase"), str(error.get("message", "")), str(error.get("hint") or ""), tuple(error.get("details") or ()))


@dataclass(frozen=True)
class Cycle:
    """One service's part of one cycle: running (`ok` None) or done."""

    cycle: int
    ts: float
    reason: str = ""
    files: tuple[str, ...] = ()
    phases: tuple[tuple[str, Any], ...] = ()  # (phase, seconds), in the order they ran
    ok: bool | None = None
    total: float | None = None
    error: Failure | None = None
    image: str | None = None
    outcome: str = ""
    synced: bool = False
    done_ts: float | None = None


@dataclass(frozen=True)
class Sample:
    """A service's traffic over the last minute and the versions serving (from Prometheus)."""

    ts: float
    rps: float | None
    error_ratio: float | None
    versions: tuple[tuple[str, Any], ...] = ()
    traffic_known: bool = True  # False: request counters the last minute cannot tell about (rps leaves them out)
    traffic: str = ""  # what `devloop status` says of it ("2.40 req/s, 0.0% errors", "traffic: not known yet (…)")


@dataclass(frozen=True)
class Notice:
    event: str  # info, warning, error
    ts: float
    message: str
    hint: str | None = None
    service: str = ""  # "" for devloop's own


@dataclass(frozen=True)
class CommandView:
    """A command on the host (devloop.commands): its run going on, else its last result."""

    name: str
    status: str = "running"  # running, passed, failed, error, timeout
    ts: float = 0.0  # when the run started (running) or ended
    exit_code: int | None = None
    seconds: float | None = None
    message: str = ""
    hint: str = ""
    excerpt: tuple[str, ...] = ()
    trigger: str = ""
    files: tuple[str, ...] = ()


def _command_event(commands: Mapping[str, CommandView], kind: str, r: Mapping[str, Any], ts: float) -> Mapping[str, CommandView] | None:
    """The commands after a command_start / command_end (None: nothing shown changes). A cancelled
    run says nothing: the run that replaced it has started already (or devloop is stopping)."""
    name = str(r.get("name") or "")
    if kind == "command_start":
        c = CommandView(name, "running", ts, trigger=str(r.get("trigger") or ""), files=tuple(r.get("files") or ()))
    elif kind == "command_end" and r.get("status") != "cancelled":
        c = CommandView(
            name,
            str(r.get("status") or "failed"),
            ts,
            r.get("exit_code"),
            r.get("seconds"),
            str(r.get("message") or ""),
            str(r.get("hint") or ""),
            tuple(r.get("excerpt") or ()),
            str(r.get("trigger") or ""),
            tuple(r.get("files") or ()),
        )
    else:
        return None
    return MappingProxyType({**commands, name: c})


@dataclass(frozen=True)
class ServiceView:
    name: str
    named: bool = False  # an event named it (devloop's own parts, e.g. "monitoring", report under a name too)
    # the worker's part: what the cluster runs
    applied: str | None = None
    good: str | None = None
    healthy: bool = False
    # the poller's part
    pods: tuple[Pod, ...] = ()
    # from the events
    step: str = "idle"  # queued, building, …, ready, failed: what the last cycle event says
    phase: str | None = None
    cycle: int | None = None
    progress: str = ""
    failed: Cycle | None = None  # the failed cycle the service is in (None once a cycle succeeds or the failure is undone)
    image: str | None = None  # what its last successful cycle rolled out
    cycles: tuple[Cycle, ...] = ()
    forwards: tuple[Forward, ...] = ()
    metrics: tuple[Sample, ...] = ()

    @property
    def state(self) -> str:
        """What the last cycle event says; before any, "ready" when the cluster runs it healthy."""
        return "ready" if self.step == "idle" and self.healthy else self.step

    @property
    def serving(self) -> str | None:
        return self.image or self.good


@dataclass(frozen=True)
class SessionView:
    configured: tuple[str, ...] = ()  # the configuration's services, in its order (empty until the worker publishes)
    services: Mapping[str, ServiceView] = field(default_factory=lambda: MappingProxyType({}))
    notices: tuple[Notice, ...] = ()
    commands: Mapping[str, CommandView] = field(default_factory=lambda: MappingProxyType({}))  # by name, in the order first run

    def names(self) -> list[str]:
        """The services a page shows: the configured ones, else (no worker) those events named."""
        return list(self.configured) or [n for n, v in self.services.items() if v.named]

    def service(self, name: str) -> ServiceView:
        return self.services.get(name) or ServiceView(name)


@dataclass(frozen=True)
class Running:
    """What the worker publishes of one service: what the cluster runs, and its forwards."""

    name: str
    applied: str | None = None
    good: str | None = None
    healthy: bool = False
    # The URLs of the forwards the worker runs (their readiness comes from the forwards' own events);
    # None: the publisher does not know them (a snapshot without forwards), those the events named stay.
    forwards: tuple[str, ...] | None = ()


def _bounded(items: tuple[Any, ...], item: Any, size: int) -> tuple[Any, ...]:
    return (*items, item)[-size:]


def _with_cycle(v: ServiceView, c: Cycle) -> ServiceView:
    """`c` in place of the cycle of its number, or appended."""
    if any(old.cycle == c.cycle for old in v.cycles):
        return dataclasses.replace(v, cycles=tuple(c if old.cycle == c.cycle else old for old in v.cycles))
    return dataclasses.replace(v, cycles=_bounded(v.cycles, c, CYCLES_PER_SERVICE))


def _cycle_of(v: ServiceView, number: int, ts: float) -> Cycle:
    return next((c for c in v.cycles if c.cycle == number), None) or Cycle(number, ts)


def _with_forward(forwards: tuple[Forward, ...], f: Forward) -> tuple[Forward, ...]:
    if any(old.url == f.url for old in forwards):
        return tuple(f if old.url == f.url else old for old in forwards)
    return (*forwards, f)


def _cycle_done(v: ServiceView, r: Mapping[str, Any], ts: float) -> ServiceView:
    number = int(r.get("cycle") or 0)
    c = dataclasses.replace(
        _cycle_of(v, number, ts),
        ok=bool(r.get("ok")),
        total=r.get("total"),
        phases=tuple((r.get("phases") or {}).items()),
        image=r.get("image"),
        outcome=r.get("outcome", ""),
        synced=bool(r.get("synced")),
        error=Failure.of(r.get("error")),
        done_ts=ts,
    )
    if r.get("files"):
        c = dataclasses.replace(c, files=tuple(r["files"]))
    if r.get("reason"):
        c = dataclasses.replace(c, reason=r["reason"])
    v = _with_cycle(v, c)
    if v.cycle is not None and number < v.cycle:
        return v  # a late report of an older cycle: its record only
    v = dataclasses.replace(v, cycle=number, phase=None, progress="")
    if r.get("ok"):
        return dataclasses.replace(v, step="ready", failed=None, image=str(r["image"]) if r.get("image") else v.image)
    return dataclasses.replace(v, step="failed", failed=c)


def _service_event(v: ServiceView, kind: str, r: Mapping[str, Any], ts: float) -> ServiceView:
    """A service's view after one event about it."""
    if kind == "phase_start":
        phase = str(r.get("phase", ""))
        return dataclasses.replace(v, step=PHASE_STATES.get(phase, phase or "working"), phase=phase, progress="")
    if kind == "phase":
        running = v.cycles[-1] if v.cycles else None
        if v.cycle is None or running is None or running.cycle != v.cycle or running.ok is not None:
            return v
        phases = {**dict(running.phases), str(r.get("phase")): r.get("seconds")}
        return _with_cycle(v, dataclasses.replace(running, phases=tuple(phases.items())))
    if kind == "progress":
        return dataclasses.replace(v, progress=str(r.get("message", "")))
    if kind == "cycle_done":
        return _cycle_done(v, r, ts)
    if kind == "skipped" and r.get("reason") == "image content unchanged" and v.step == "failed":
        # A failed change undone: the cluster runs exactly these files, healthy (checked by devloop), no cycle needed.
        return dataclasses.replace(v, step="ready", failed=None, phase=None, progress="")
    if kind == "port_forward":
        f = Forward(str(r.get("url", "")), bool(r.get("ready")), str(r.get("message", "")))
        return dataclasses.replace(v, forwards=_with_forward(v.forwards, f))
    if kind == "metrics":
        s = Sample(
            ts,
            r.get("rps"),
            r.get("error_ratio"),
            tuple((r.get("versions") or {}).items()),
            traffic_known=r.get("traffic_known") is not False,
            traffic=str(r.get("traffic") or ""),
        )
        return dataclasses.replace(v, metrics=_bounded(v.metrics, s, METRICS_PER_SERVICE))
    return v


def fold(view: SessionView, r: Mapping[str, Any]) -> SessionView:
    """The view after one `Output` event (the same view when the event changes nothing shown)."""
    kind = str(r.get("event"))
    ts = float(r.get("ts") or 0.0)
    service = str(r.get("service") or "")
    services = dict(view.services)
    changed = False
    if kind == "cycle_start":
        changed = True
        number = int(r["cycle"])
        for name in r.get("services") or []:
            v = dataclasses.replace(view.service(str(name)), named=True, step="queued", phase=None, progress="", cycle=number)
            c = dataclasses.replace(_cycle_of(v, number, ts), reason=r.get("reason", ""), files=tuple(r.get("files") or ()))
            services[v.name] = _with_cycle(v, c)
    elif service:
        before = view.service(service)
        v = _service_event(before if before.named else dataclasses.replace(before, named=True), kind, r, ts)
        if v is not before:
            services[service], changed = v, True
    commands = view.commands
    if kind in ("command_start", "command_end"):
        after = _command_event(commands, kind, r, ts)
        if after is not None:
            commands, changed = after, True
    notices = view.notices
    if kind in ("warning", "error", "info"):
        notices, changed = _bounded(notices, Notice(kind, ts, str(r.get("message", "")), r.get("hint"), service), NOTICES), True
    if not changed:
        return view  # a log line, a detail: nothing shown changes
    return dataclasses.replace(view, services=MappingProxyType(services), notices=notices, commands=commands)


def publish_running(view: SessionView, running: Sequence[Running]) -> SessionView:
    """The view with what the worker runs: the configured services in order, each one's cluster
    state, and its forwards: exactly the worker's (a forward it stopped, e.g. after a reload, goes),
    each with the readiness its own events reported (a new one: not ready until it says so)."""
    services = dict(view.services)
    for r in running:
        v = view.service(r.name)
        forwards = v.forwards
        if r.forwards is not None:
            known = {f.url: f for f in v.forwards}
            forwards = tuple(known.get(url) or Forward(url) for url in r.forwards)
        services[r.name] = dataclasses.replace(v, applied=r.applied, good=r.good, healthy=r.healthy, forwards=forwards)
    return dataclasses.replace(view, configured=tuple(r.name for r in running), services=MappingProxyType(services))


class Board:
    """Where the session's view is published: `view` is read by anyone, lock-free; every change
    builds a new view from the current one under the lock and swaps the reference."""

    def __init__(self, out: Output | None = None) -> None:
        self._lock = threading.Lock()
        self._view = SessionView()
        self._watchers: list[Callable[[], None]] = []
        if out is not None:  # everything reported so far, then each event as it is reported
            out.subscribe(self.event, replay=True)

    def watch(self, fn: Callable[[], None]) -> None:
        """`fn()` after each publication that changed the view (the worker's, the pod table's), on
        the publishing thread, after the swap (so `view` has the change): it must only take note.
        The events change the view too, but reach their readers as `Output` subscribers themselves."""
        with self._lock:
            self._watchers.append(fn)

    @property
    def view(self) -> SessionView:
        return self._view

    def event(self, record: Mapping[str, Any]) -> None:
        """Output subscriber (called under the Output lock: only memory)."""
        with self._lock:
            self._view = fold(self._view, record)

    def publish(self, running: Sequence[Running]) -> None:
        """The worker's part: the configured services (in order) and what the cluster runs."""
        self._publish(lambda view: publish_running(view, running))

    def publish_pods(self, service: str, pods: Iterable[Pod]) -> None:
        """The pod table's part: one service's pods."""
        rows = tuple(pods)

        def with_pods(view: SessionView) -> SessionView:
            services = {**view.services, service: dataclasses.replace(view.service(service), pods=rows)}
            return dataclasses.replace(view, services=MappingProxyType(services))

        self._publish(with_pods)

    def _publish(self, change: Callable[[SessionView], SessionView]) -> None:
        with self._lock:
            before = self._view
            after = change(before)
            if after == before:
                return  # the same picture again: nothing to tell
            self._view = after
            watchers = list(self._watchers)
        for fn in watchers:
            fn()
