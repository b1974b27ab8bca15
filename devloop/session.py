"""`devloop dev`: up, then watch → plan → run, with port-forwards and pod logs kept alive per service.

One worker (the thread that calls `run`) owns everything that changes: the engine's state, the
forwards, the log streams, the loop guard. The watcher and the pod watches only queue typed
events (`Seen`, `PodChanged`, `RebuildNow`, `ApiBack`); the worker takes them in debounced batches.

Other threads never read those: they read `board.view`, an immutable `SessionView` (devloop.view)
that the worker publishes after each cycle and after what follows it (forwards, logs), the poller
after each query of the pods, and the engine's cycle events as they are reported.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from devloop import commands as cmds
from devloop import config as config_mod
from devloop.commands import CommandRunner
from devloop.config import Config, ServiceConfig
from devloop.debounce import ChangeQueue, LoopGuard
from devloop.debugger import InspectorForward, claim
from devloop.engine import ServiceResult
from devloop.errors import DevloopError
from devloop.forward import ApiWatch, LogStreams, PortForward
from devloop.ignore import IgnoreRules
from devloop.manifests import KUSTOMIZATION_FILES
from devloop.model import ServiceState
from devloop.monitoring import Monitoring
from devloop.output import Output
from devloop.plan import MANIFEST_SUFFIXES, Change, Plan, ServiceChange, ServiceLayout, everything, plan, relative
from devloop.podtable import PodTable
from devloop.ports import Cluster
from devloop.proc import Background
from devloop.project import Deployed
from devloop.targets import Target
from devloop.view import Board, Running
from devloop.watch import Watcher
from devloop.workload import PodEvent, pod_name, pod_ready


def _may_change_layout(path: str) -> bool:
    return os.path.basename(path) in (".dockerignore", *KUSTOMIZATION_FILES) or path.endswith(MANIFEST_SUFFIXES)


class _Hasher(Protocol):
    def follow(self, contexts: Iterable[Path | str]) -> None: ...
    def changed(self, path: str) -> None: ...


class _Channels(Protocol):
    def prepare(self, pods: Iterable[str], namespace: str) -> None: ...


class SessionEngine(Protocol):
    """What the session uses of the engine."""

    @property
    def out(self) -> Output: ...
    @property
    def config(self) -> Config: ...
    @property
    def kube(self) -> Cluster: ...
    @property
    def state(self) -> Mapping[str, ServiceState]: ...
    @property
    def hasher(self) -> _Hasher: ...
    @property
    def channels(self) -> _Channels: ...
    @property
    def target(self) -> Target: ...
    def check_manifests(self) -> object: ...
    def up(self) -> list[ServiceResult]: ...
    def run(self, plan: Plan) -> list[ServiceResult]: ...
    def manifests(self, svc: ServiceConfig) -> Deployed: ...
    def namespace(self, svc: ServiceConfig) -> str: ...
    def monitoring(self) -> Monitoring | None: ...
    def layouts(self) -> list[ServiceLayout]: ...
    def config_files(self) -> list[str]: ...
    def reconfigure(self, config: Config) -> list[str]: ...
    def stop(self) -> None: ...


@dataclass(frozen=True)
class Seen:
    """A file change, with when the watcher saw it (for the loop guard)."""

    change: Change
    at: float


@dataclass(frozen=True)
class PodChanged:
    service: str
    pod: PodEvent


@dataclass(frozen=True)
class RebuildNow:
    """ "Rebuild now" from the dashboard."""

    service: str


@dataclass(frozen=True)
class ApiBack:
    """The API server answers again after an outage of `away` seconds."""

    away: float


@dataclass(frozen=True)
class Released:
    """A blocking command passed: the services it held are deployed (when the cluster does not run their sources yet)."""

    services: tuple[str, ...]
    why: str


Event = Seen | PodChanged | RebuildNow | ApiBack | Released


def _ready_pods(engine: SessionEngine, svc: ServiceConfig) -> list[str]:
    """The service's ready pods now (asked, not assumed)."""
    d = engine.manifests(svc)
    return [pod_name(p) for p in engine.kube.pods(d.namespace, d.selector) if pod_ready(p)]


def _pod_events(queue: ChangeQueue[Event], service: str) -> Callable[[PodEvent], None]:
    """A pod watch's callback: each event of the service's pods, queued for the worker."""
    return lambda event: queue.put(PodChanged(service, event))


RESUME_WAIT = 90.0  # seconds to wait for a service's pods to be ready again after an API outage


@dataclass
class _Access:
    """What the developer reaches of one service: its forwards and its pods' logs, in `namespace`."""

    namespace: str
    logs: LogStreams
    forwards: list[PortForward] = field(default_factory=list)
    pod_watch: Background | None = None
    restarts: dict[str, int] = field(default_factory=dict)
    inspector: InspectorForward | None = None  # `--inspect SERVICE` (debugger.py)


class DevSession:
    def __init__(
        self,
        engine: SessionEngine,
        clock: Callable[[], float] = time.monotonic,
        forward: Callable[..., PortForward] = PortForward,
        commands: CommandRunner | None = None,
        adjust: Callable[[Config], Config] = lambda c: c,
    ) -> None:
        self.engine = engine
        self.adjust = adjust  # what the command line changes in a configuration read again (--inspect)
        self.commands = commands  # the commands on the host beside the cycle (devloop.commands); None: none run
        if commands is not None:
            commands.on_release = lambda name, services: self.queue.put(Released(tuple(services), f"{name} passed (blocksDeploy)"))
        self.forward = forward  # what makes a forward (PortForward's arguments; the unit tests record what is made)
        self.out = engine.out
        self.clock = clock
        self.queue: ChangeQueue[Event] = ChangeQueue(quiet=engine.config.watch.debounce_ms / 1000)
        self.watcher: Watcher | None = None
        self.guard = LoopGuard()
        self.access: dict[str, _Access] = {}
        self._layout_cache: list[ServiceLayout] | None = None
        self._poller: threading.Thread | None = None
        self.pods: PodTable | None = None  # the dashboard's pod table (start_poller)
        self._pods_where: dict[str, tuple[str, dict[str, str]]] = {}  # what it follows: service → namespace, selector
        self._stopping = threading.Event()
        self.api = ApiWatch(engine.kube, self.out, engine.target.outage(), on_back=self._api_back)
        self.board = Board(self.out)  # what other threads read of the session (the dashboard)
        # the inspectors' local ports, bound now: a taken one stops `dev` before anything is built
        self._inspect_ports = {s.name: claim(s.inspect.local_port, s.name) for s in self.config.services if s.inspect.enabled}
        self._publish()

    @property
    def config(self) -> Config:
        return self.engine.config

    # -- events from other threads: queue only ------------------------------------------------------
    def _on_change(self, change: Change) -> None:
        self.queue.put(Seen(change, self.clock()))

    def _api_back(self) -> None:
        lost = self.api.lost_at
        self.queue.put(ApiBack(time.monotonic() - lost if lost is not None else 0.0))

    def request_rebuild(self, service: str) -> None:
        """The dashboard's "rebuild now" (any thread)."""
        self.queue.put(RebuildNow(service))

    # -- what other threads read: the published view ------------------------------------------------
    def _publish(self) -> None:
        """The worker's part of the view: the configured services, what the cluster runs, the forwards."""
        running = []
        for svc in self.config.services:
            st = self.engine.state.get(svc.name)
            a = self.access.get(svc.name)
            running.append(
                Running(
                    svc.name,
                    applied=str(st.applied) if st and st.applied else None,
                    good=str(st.good) if st and st.good else None,
                    healthy=bool(st and st.healthy),
                    forwards=tuple(f.url for f in a.forwards) if a else (),
                )
            )
        self.board.publish(running)
        self._follow_pods()

    def start_poller(self, metrics_every: float = 15.0) -> None:
        """What the dashboard shows beside the events: each service's pods, pushed as the API server
        reports a change of them (devloop.podtable), and with monitoring, traffic and versions from
        Prometheus (which scrapes every 15 s) every `metrics_every` s."""
        self.pods = PodTable(self.engine.kube, self.board)
        self._follow_pods()
        if self.config.monitoring.enabled:
            self._poller = threading.Thread(target=self._poll, args=(metrics_every,), daemon=True, name="devloop-metrics")
            self._poller.start()

    def _follow_pods(self) -> None:
        """The pod table follows the configured services (again: after a reload, after an API outage)."""
        if self.pods is None:
            return
        where = {}
        for svc in self.config.services:
            try:
                d = self.engine.manifests(svc)
                where[svc.name] = (d.namespace, dict(d.selector))
            except DevloopError:  # manifests that do not load now (saved half-way): the table follows what it followed
                if svc.name in self._pods_where:
                    where[svc.name] = self._pods_where[svc.name]
        self._pods_where = where
        self.pods.follow(where)

    def _poll(self, every: float) -> None:
        mon = None
        wait = every / 3  # the first sample soon after start
        while not self._stopping.wait(wait):
            wait = every
            for svc in self.config.services:
                try:
                    d = self.engine.manifests(svc)
                    mon = mon or self.engine.monitoring()
                    if mon is not None:
                        stats = mon.service_stats(d.selector, d.namespace)
                        versions = {v.text(): v.pods for v in stats.versions}
                        self.out.metrics(svc.name, stats.rps, stats.error_ratio, versions, stats.traffic_known, stats.traffic())
                except DevloopError:
                    pass  # Prometheus not (yet) there: the page shows no charts

    # -- access: forwards, logs, pod watches (worker thread) ----------------------------------------
    def _access(self, svc: ServiceConfig) -> _Access:
        a = self.access.get(svc.name)
        if a is None:
            namespace = self.engine.namespace(svc)
            a = self.access[svc.name] = _Access(namespace, self._logs(svc, namespace))
        return a

    def _logs(self, svc: ServiceConfig, namespace: str) -> LogStreams:
        return LogStreams(self.engine.kube, namespace, functools.partial(self.out.pod_log, service=svc.name), on_end=self.api.suspect)

    def _fit(self, svc: ServiceConfig, a: _Access, make: bool = True) -> None:
        """The service's access as configured now (after a reload, and at each `_ready`). Log
        streams in a namespace that changed stop (`_ready` follows the new pods). A forward whose
        settings (namespace, Service, port, local port) are unchanged is kept: its listener stays
        bound; the others are stopped; with `make`, a new one (for `_ready` to start) for each
        declared forward without one."""
        try:
            namespace = self.engine.manifests(svc).namespace
        except DevloopError:  # manifests that do not load now (saved half-way): the namespace stays until the next `_ready`
            namespace = a.namespace
        if namespace != a.namespace:
            a.logs.stop()
            a.namespace, a.logs = namespace, self._logs(svc, namespace)
        spare = list(a.forwards)
        a.forwards = []
        for f in svc.port_forward:
            want = (namespace, f.service, f.port, f.local_port)
            kept = next((old for old in spare if (old.namespace, old.service, old.port, old.local_port) == want), None)
            if kept is not None:
                spare.remove(kept)
            elif make:
                kept = self.forward(self.engine.kube, self.out, namespace, f.service, f.port, f.local_port, label=svc.name, api=self.api)
            if kept is not None:
                a.forwards.append(kept)
        for old in spare:
            old.stop()

    def _ready(self, svc: ServiceConfig, pods: list[str]) -> None:
        """After a rollout (or at start): follow the new pods' logs, (re)start the forwards (made
        here the first time, or when a reload changed or added them)."""
        a = self._access(svc)
        self._fit(svc, a)
        a.logs.follow(pods)
        if svc.live_update.enabled:  # the next save is a write on an open exec channel
            self.engine.channels.prepare(pods, a.namespace)  # the service's namespace, as resolved at start (or reload)
        for f in a.forwards:
            f.start()
        self._inspect(svc, a)

    def _inspect(self, svc: ServiceConfig, a: _Access) -> None:
        """The service's inspector forward: made at its first `_ready`, then following its pods."""
        listener = self._inspect_ports.pop(svc.name, None)
        if a.inspector is None and listener is not None:
            d = self.engine.manifests(svc)
            a.inspector = InspectorForward(self.engine.kube, self.out, a.namespace, d.selector, svc.inspect.port, listener, svc.name)
        if a.inspector is not None:
            a.inspector.start()

    def _watch_pods(self, svc: ServiceConfig, synced: list[str]) -> None:
        """Live update on: watch the service's pods; a replica that restarts comes back from its
        image without the synced files, and the worker then rolls out a fresh image. The restart
        counts are read again when the pods that got the files are new (after a rollout): a replica
        that got them is not "a new replica", and the table holds only the current pods."""
        a = self._access(svc)
        if not svc.live_update.enabled or (a.pod_watch is not None and all(p in a.restarts for p in synced)):
            return
        d = self.engine.manifests(svc)
        a.restarts = {
            pod_name(pod): sum(int(c.get("restartCount", 0)) for c in pod.get("status", {}).get("containerStatuses") or [])
            for pod in self.engine.kube.pods(d.namespace, d.selector)
        }
        if a.pod_watch is None:
            a.pod_watch = self.engine.kube.watch_pods(d.namespace, d.selector, _pod_events(self.queue, svc.name))

    def _resume(self, away: float) -> None:
        """The API server answers again (a paused node, a restarted one): follow each service's pods'
        logs again, with what they printed meanwhile, and restart the pod watches. The forwards
        restart themselves. After a node restart the pods come back over some seconds: wait for them."""
        since = f"{int(away) + 10}s"
        deadline = self.clock() + RESUME_WAIT
        for svc in self.config.services:
            a = self.access.get(svc.name)
            if a is None:
                continue
            pods: list[str] = []
            while True:
                try:
                    want = self.engine.manifests(svc).replicas
                    pods = _ready_pods(self.engine, svc)
                except DevloopError:
                    want = 1
                if len(pods) >= want or self.clock() >= deadline or self._stopping.wait(1.0):
                    break  # polling a real cluster with a deadline
            a.logs.follow(pods, since=since)
            if a.inspector is not None:  # its pod watch ended with the API server: watched again
                a.inspector.start()
            if a.pod_watch is not None and not a.pod_watch.alive():  # ended with the API server: the same baseline goes on
                d = self.engine.manifests(svc)
                a.pod_watch = self.engine.kube.watch_pods(d.namespace, d.selector, _pod_events(self.queue, svc.name))
        self._follow_pods()  # the pod table's watches ended with the API server too

    def _pod_changed(self, ev: PodChanged) -> str | None:
        """The service to rebuild when this pod event means synced files were lost."""
        a = self.access.get(ev.service)
        st = self.engine.state.get(ev.service)
        if a is None or st is None or ev.pod.deleting or not st.synced or st.good is None or st.good.cluster not in ev.pod.images:
            return None
        known = a.restarts.get(ev.pod.name)
        a.restarts[ev.pod.name] = ev.pod.restarts
        if known is None or ev.pod.restarts > known:  # a new replica, or a container that restarted
            self.out.warn(f"{ev.service}: pod {ev.pod.name} restarted: it lost the live-updated files; rebuilding")
            return ev.service
        return None

    # -- the loop ---------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self.engine.check_manifests()  # a usage error before anything is watched or created
            cmds.check(self.config.commands if self.commands else (), self.config.source)  # a missing program: exit 3, nothing run
            self._start_watcher()  # from the start: a save during the first cycle is not lost
            if self.commands is not None:
                self.commands.at_start()
            self._after(self.engine.up(), first=True)
            self._loop()
        finally:
            self.stop()

    def _layouts(self, changes: list[Change] | None = None) -> list[ServiceLayout]:
        """The services' layouts, read again only when a batch may change them (a .dockerignore or a
        manifest file: ownership in a shared directory, kustomize inputs) or on request (None):
        reading every manifest (and running kustomize) on each save is work the hot path need not do."""
        if changes is None or self._layout_cache is None or any(_may_change_layout(c.path) for c in changes):
            self._layout_cache = self.engine.layouts()
        return self._layout_cache

    def _watch_inputs(self) -> tuple[list[tuple[Path, IgnoreRules]], list[Path]]:
        """Every build context (with its ignore rules), manifest path, kustomize input and config file."""
        layouts = self._layouts()
        roots = [
            (Path(layout.context), layout.rules) for layout in layouts if layout.context
        ]  # a service without image: its manifests only
        extra = [m for svc in self.config.services for m in svc.manifests]
        extra += [Path(k) for layout in layouts for k in layout.kustomize]
        extra += [Path(p) for p in self.engine.config_files()]
        if self.commands is not None:  # what the commands' triggers name, below the project (devloop.commands)
            rules = IgnoreRules(extra=self.config.watch.ignore)
            roots += [(d, rules) for d in cmds.trigger_roots(self.config.commands, self.config.root)]
        return roots, extra

    def _follow_contexts(self) -> None:
        """The hasher follows the build contexts (not what only the commands watch)."""
        self.engine.hasher.follow(layout.context for layout in self._layouts() if layout.context)

    def _start_watcher(self) -> None:
        roots, extra = self._watch_inputs()
        self.watcher = Watcher(roots, extra, self._on_change, on_touch=self.engine.hasher.changed)
        self.watcher.start()
        self._follow_contexts()  # content tags from here on: only what the watcher reports is re-read
        where = ", ".join(sorted({os.path.relpath(s.image.context, self.config.root) for s in self.config.services if s.image}))
        self.out.info(f"watching {where} ({self.watcher.watch_count} watches); Ctrl-C stops")

    def _loop(self) -> None:
        while True:
            batch = self.queue.get_batch()
            if batch is None:
                return
            self._handle(batch)

    def _handle(self, batch: list[Event]) -> None:
        """One debounced batch: its plan (forced rebuilds merged, a reload first), run."""
        newly = self.guard.observe_batch((i.change.path, i.at) for i in batch if isinstance(i, Seen))
        if newly:
            names = ", ".join(sorted(os.path.relpath(f, self.config.root) for f in newly))
            self.out.warn(
                f"paused rebuilds from {names}: rewritten within {self.guard.window:.0f}s of the build starting in "
                f"{self.guard.limit} cycles in a row (written by the build or a tool reacting to it?)",
                "add them to .dockerignore or watch.ignore; a save to them while devloop is idle resumes them",
            )
        changes: list[Change] = []
        rebuild: dict[str, str] = {}  # service → why
        released: dict[str, str] = {}  # service → why: built and deployed unless the cluster runs its sources already
        for item in batch:
            if isinstance(item, PodChanged):
                service = self._pod_changed(item)
                if service:
                    rebuild[service] = "a live-updated pod restarted"
            elif isinstance(item, Released):
                released.update((s, item.why) for s in item.services if s in self.engine.state)
            elif isinstance(item, RebuildNow):
                if item.service in self.engine.state:
                    rebuild[item.service] = "rebuild requested from the dashboard"
            elif isinstance(item, ApiBack):
                try:
                    self._resume(item.away)
                except DevloopError as e:  # the API server went away again: it is reported, and waited for, again
                    self.out.detail(f"resuming log streams: {e.message}")
            elif self.guard.admit(item.change.path, item.at, self.guard.build_started(item.at)):
                changes.append(item.change)
        root = str(self.config.root)
        todo = plan(changes, self._layouts(changes), self.engine.config_files(), root)
        if rebuild:
            forced = tuple(ServiceChange(s, rebuild=True, reapply=True, reason=why) for s, why in sorted(rebuild.items()))
            todo = replace(todo, services=forced + tuple(c for c in todo.services if c.service not in rebuild))
        planned = {c.service for c in todo.services}
        if released.keys() - planned:
            more = tuple(ServiceChange(s, rebuild=True, reason=why) for s, why in sorted(released.items()) if s not in planned)
            todo = replace(todo, services=todo.services + more)
        if todo.reload:
            reloaded = self._reload(todo)
            if reloaded is None:
                return
            todo = reloaded
        ran = self._run_commands(changes, todo)
        if todo.nothing:
            if changes:
                said = [f for f in todo.ignored or dict.fromkeys(relative(c.path, root) for c in changes) if f not in ran]
                if said:
                    self.out.skipped("not part of any image or manifests", said)
            return
        start = self.clock()
        results = self.engine.run(todo)
        if any(not r.skipped and not r.synced for r in results):
            self.guard.cycle_built(start, self.clock())
        self._after(results)

    def _run_commands(self, changes: list[Change], todo: Plan) -> set[str]:
        """Start the commands this batch triggers, beside its cycle (a blocking one holds the deploy of
        the services its files change); the files that triggered one (relative to the project)."""
        if self.commands is None or not changes or todo.reload:
            return set()
        root = str(self.config.root)
        started = cmds.triggered(changes, self.config.commands, root, IgnoreRules(extra=self.config.watch.ignore))
        for t in started:
            self.commands.start(t, cmds.held_services(t, self._layouts(), self.engine.config_files(), root))
        return {f for t in started for f in t.files}

    def _reload(self, todo: Plan) -> Plan | None:
        try:
            new = self.adjust(config_mod.load(self.config.file, self.config.root))
            cmds.check(new.commands if self.commands else (), new.source)  # a missing program: the running configuration stays
        except DevloopError as e:
            self.out.error(e)
            self.out.warn("keeping the previous configuration", "fix the file and save it again")
            return None
        before = {s.name for s in self.config.services}
        kept = self.engine.reconfigure(new)
        if self.commands is not None:
            self.commands.reconfigure(new.commands)
        for part in kept:
            self.out.warn(f"{part} changed in the configuration; keeping the running one", "restart `devloop dev` to switch")
        gone = before - {s.name for s in new.services}
        for name in gone:
            self._close_access(name)
            self.out.info(f"service {name} removed from the configuration; its objects stay until `devloop down`")
        for svc in new.services:  # forwards and log namespace follow the new configuration; unchanged forwards stay bound
            a = self.access.get(svc.name)
            if a is not None:
                self._fit(svc, a, make=False)  # a changed or added forward is made and started when the service is ready
                if a.pod_watch is not None:  # its selector or live update may have changed: the next sync watches again
                    a.pod_watch.stop()
                a.pod_watch, a.restarts = None, {}
        self.queue.set_quiet(new.watch.debounce_ms / 1000)
        if self.watcher is not None:
            roots, extra = self._watch_inputs()
            self.watcher.update(roots, extra)
            self._follow_contexts()
        self._publish()
        self.out.info(f"configuration reloaded from {', '.join(todo.config_files)}")
        return everything(self._layouts(), "configuration changed", todo.config_files)

    def _after(self, results: list[ServiceResult], first: bool = False) -> None:
        """After a cycle: publish what the cluster runs now, then follow the new pods (logs,
        forwards, pod watches), and publish again."""
        self._publish()
        for r in results:
            svc = self.config.service(r.service)
            if r.synced:
                self._watch_pods(svc, r.ready_pods)
                a = self._access(svc)
                for f in a.forwards:  # make-before-break: the process from before may still hold a connection opened ahead
                    f.renew(r.ready_pods)
            elif (r.ok and not r.skipped) or r.rolled_back:
                self._ready(svc, r.ready_pods)
            elif first and r.ok:
                self._ready(svc, _ready_pods(self.engine, svc))
        self._publish()

    def _close_access(self, name: str) -> None:
        a = self.access.pop(name, None)
        if a is None:
            return
        for f in a.forwards:
            f.stop()
        if a.inspector is not None:
            a.inspector.stop()
        a.logs.stop()
        if a.pod_watch is not None:
            a.pod_watch.stop()

    def stop(self) -> None:
        self._stopping.set()
        if self.commands is not None:
            self.commands.stop()
        if self.pods is not None:
            self.pods.stop()
        self.api.stop()
        self.engine.stop()
        self.queue.close()
        if self.watcher is not None:
            self.watcher.stop()
        for name in list(self.access):
            self._close_access(name)
        for listener in self._inspect_ports.values():
            listener.close()
