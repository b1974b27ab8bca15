"""`devloop dev`: up, then watch → plan → cycle, with a port-forward and pod logs kept alive."""

from __future__ import annotations

import os

from devloop import config as config_mod
from devloop.debounce import ChangeQueue, LoopGuard
from devloop.errors import DevloopError
from devloop.forward import LogStreams, PortForward, port_free
from devloop.kube import pod_name, pod_ready
from devloop.manifests import selector_of
from devloop.pipeline import CycleResult, Pipeline
from devloop.plan import Change, Layout, plan
from devloop.proc import Background
from devloop.watch import Watcher

REBUILD = "\0rebuild"  # a queue entry that asks for a full rebuild (never a real path)


class DevSession:
    def __init__(self, pipeline: Pipeline) -> None:
        self.p = pipeline
        self.out = pipeline.out
        cfg = pipeline.config
        self.queue: ChangeQueue[Change] = ChangeQueue(quiet=cfg.watch.debounce_ms / 1000)
        self.watcher: Watcher | None = None
        self.forward: PortForward | None = None
        self.logs = LogStreams(pipeline.kube, cfg.deploy.namespace, self.out.pod_log)
        self.guard = LoopGuard()
        self._restarts: dict[str, int] = {}
        self._pod_watch: Background | None = None
        self._in_cycle = False
        self._during: set[str] = set()
        self._port_warned = False

    def _on_change(self, change: Change) -> None:
        """Called on the watcher thread."""
        if self._in_cycle:
            self._during.add(change.path)
        self.queue.put(change)

    def _start_forward(self) -> None:
        pf = self.p.config.port_forward
        if not pf.enabled:
            return
        if not port_free(pf.local_port):
            if not self._port_warned:
                self.out.warn(
                    f"port {pf.local_port} on 127.0.0.1 is already in use: no port-forward (retried after each rollout)",
                    "free the port or set portForward.localPort in devloop.yaml",
                )
                self._port_warned = True
            return
        self.forward = PortForward(self.p.kube, self.out, self.p.config.deploy.namespace, pf.service, pf.port, pf.local_port)
        self.forward.start()

    def _ready(self, result: CycleResult) -> None:
        self.logs.follow(result.ready_pods)
        if self.forward is not None:
            self.forward.start()
        elif self.p.config.port_forward.enabled:
            self._start_forward()

    def _current_pods(self) -> list[str]:
        _, deployment = self.p.load_manifests()
        pods = self.p.kube.pods(self.p.config.deploy.namespace, selector_of(deployment))
        return [pod_name(p) for p in pods if pod_ready(p)]

    def _pod_event(self, line: str) -> None:
        """A pod changed (watch thread). A replica that restarted or was replaced while live-synced
        files are in play comes back from its image without them: rebuild so nothing is lost."""
        name, _, rest = line.partition(" ")
        counts, _, rest = rest.partition("|")
        images, _, deleting = rest.partition("|")
        if not name or deleting.strip() or not self.p.synced or self.p.deployed not in images.split():
            return
        restarts = sum(int(c) for c in counts.split() if c.isdigit())
        known = self._restarts.get(name)
        if known is None or restarts > known:  # a new replica, or a container that restarted
            self._restarts[name] = restarts
            self.out.warn(f"pod {name} restarted: it lost the live-updated files; rebuilding", "")
            self.queue.put(Change(REBUILD))

    def _start_pod_watch(self) -> None:
        if not self.p.config.live_update.enabled or self._pod_watch is not None:
            return
        _, deployment = self.p.load_manifests()
        ns = self.p.config.deploy.namespace
        for pod in self.p.kube.pods(ns, selector_of(deployment)):
            cs = pod.get("status", {}).get("containerStatuses") or []
            self._restarts[pod_name(pod)] = sum(int(c.get("restartCount", 0)) for c in cs)
        self._pod_watch = self.p.kube.watch_pods(ns, selector_of(deployment), self._pod_event)

    def _start_watcher(self) -> None:
        cfg = self.p.config
        layout = self.p.layout()
        extra = [*cfg.deploy.manifests, cfg.cluster.kind_config] + ([cfg.file.resolve()] if cfg.file else [])
        self.watcher = Watcher(cfg.image.context, layout.rules, extra, self._on_change)
        self.watcher.start()
        self.out.info(f"watching {cfg.image.context} ({self.watcher.watch_count} watches); Ctrl-C stops")

    def run(self) -> None:
        try:
            first = self.p.up()
            if first.ok:
                self.logs.follow(self._current_pods())
                self._start_forward()
            self._start_watcher()
            self._loop()
        finally:
            self.stop()

    def _loop(self) -> None:
        layout = self.p.layout()
        while True:
            batch = self.queue.get_batch()
            if batch is None:
                return
            batch = [c for c in batch if c.path not in self.guard.paused]
            if any(c.path == REBUILD for c in batch):
                result = self.p.cycle("a live-updated pod restarted", (), force_apply=True)
                if result.ok and result.ready_pods:
                    self._ready(result)
                batch = [c for c in batch if c.path != REBUILD]
                if not batch:
                    continue
            todo = plan(batch, layout)
            if todo.nothing:
                self.out.skipped("not part of the image or manifests", [c.path for c in batch])
                continue
            if todo.reload:
                try:
                    self.p.reconfigure(config_mod.load(self.p.config.file, self.p.config.root))
                except DevloopError as e:
                    self.out.error(e)
                    self.out.warn("keeping the previous configuration", "fix the file and save it again")
                    continue
            if todo.reload or ".dockerignore" in todo.image_files:
                layout = self.p.layout()
            self._during.clear()
            self._in_cycle = True
            try:
                result = self.p.cycle(todo.reason, todo.trigger_files, force_apply=bool(todo.manifest_files) or todo.reload, sync=todo.sync)
            finally:
                self._in_cycle = False
            if result.synced:
                self._start_pod_watch()
            elif result.ok and result.ready_pods:
                self._ready(result)
            self._check_loop(layout)

    def _check_loop(self, layout: Layout) -> None:
        """Files written while every cycle ran (by the build or the app) must not rebuild forever."""
        relevant = plan([Change(p) for p in self._during], layout)
        newly = self.guard.observe({os.path.join(layout.context, f) for f in relevant.image_files} | set(relevant.manifest_files))
        if newly:
            names = ", ".join(sorted(os.path.relpath(f, self.p.config.root) for f in newly))
            self.out.warn(
                f"paused rebuilds from {names}: changed during {self.guard.limit} cycles in a row (written by the build or the app?)",
                "add them to .dockerignore or watch.ignore in devloop.yaml; saves to other files still rebuild",
            )

    def stop(self) -> None:
        self.p.stop()
        self.queue.close()
        if self.watcher is not None:
            self.watcher.stop()
        if self.forward is not None:
            self.forward.stop()
        if self._pod_watch is not None:
            self._pod_watch.stop()
        self.logs.stop()
