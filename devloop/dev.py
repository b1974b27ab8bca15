"""`devloop dev`: up, then watch → plan → cycle, with a port-forward and pod logs kept alive."""

from __future__ import annotations

from devloop import config as config_mod
from devloop.errors import DevloopError
from devloop.forward import LogStreams, PortForward, port_free
from devloop.kube import pod_name, pod_ready
from devloop.manifests import selector_of
from devloop.pipeline import ChangeQueue, CycleResult, Pipeline
from devloop.plan import plan
from devloop.watch import Watcher


class DevSession:
    def __init__(self, pipeline: Pipeline) -> None:
        self.p = pipeline
        self.out = pipeline.out
        cfg = pipeline.config
        self.queue = ChangeQueue(quiet=cfg.watch.debounce_ms / 1000)
        self.watcher: Watcher | None = None
        self.forward: PortForward | None = None
        self.logs = LogStreams(pipeline.kube, cfg.deploy.namespace, self.out.pod_log)

    def _start_forward(self) -> None:
        pf = self.p.config.port_forward
        if not pf.enabled:
            return
        if not port_free(pf.local_port):
            self.out.warn(
                f"port {pf.local_port} on 127.0.0.1 is already in use: no port-forward",
                "free the port or set portForward.localPort in devloop.yaml",
            )
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

    def _start_watcher(self) -> None:
        cfg = self.p.config
        layout = self.p.layout()
        extra = [*cfg.deploy.manifests, cfg.cluster.kind_config] + ([cfg.file.resolve()] if cfg.file else [])
        self.watcher = Watcher(cfg.image.context, layout.rules, extra, self.queue.put)
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
            todo = plan(batch, layout)
            if todo.nothing:
                self.out.skipped("not part of the image or manifests", [c.path for c in batch])
                continue
            if todo.reload:
                try:
                    self.p.config = config_mod.load(self.p.config.file, self.p.config.root)
                except DevloopError as e:
                    self.out.error(e)
                    self.out.warn("keeping the previous configuration", "fix the file and save it again")
                    continue
            if todo.reload or ".dockerignore" in todo.image_files:
                layout = self.p.layout()
            result = self.p.cycle(todo.reason, todo.trigger_files, force_apply=bool(todo.manifest_files) or todo.reload)
            if result.ok and result.ready_pods:
                self._ready(result)

    def stop(self) -> None:
        self.p.stop()
        self.queue.close()
        if self.watcher is not None:
            self.watcher.stop()
        if self.forward is not None:
            self.forward.stop()
        self.logs.stop()
