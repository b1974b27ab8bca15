"""`devloop dev --inspect SERVICE`: the Node.js inspector of one service, reachable on 127.0.0.1
for the whole session, across live syncs and rebuilds (issue 20).

The dev render (never a release) gives the service's containers a NODE_OPTIONS that makes the app's
node process, and only it, open the inspector on 127.0.0.1:<port> inside the pod (`node_options`):
npm, npx, yarn and pnpm are node processes too, and a plain `--inspect` would let `npm start` take
the port before the app. Inside the pod only: the API server's port-forward reaches the pod's
loopback, nothing else in the cluster can attach. A live sync restarts the process, which opens the
inspector again; a rebuild rolls out pods that do.

A process paused at a breakpoint answers no probe: the dev render drops the liveness probe of the
containers it inspects (the kubelet would kill the paused app and its synced files); the readiness
probe stays (a replica paused for long is taken out of the Service's endpoints, then back).

`InspectorForward` owns 127.0.0.1:<localPort> (`proxy.Proxy`) and relays each connection to ONE
pod of the service, pinned: the newest Ready one. The pin moves only when the pinned pod goes away
(a rebuild's rollout deletes it: the newest Ready pod takes it), never because it is paused
(unready) at a breakpoint; with several replicas it says which one it pinned. A debugger that reconnects to the same local
port (VS Code's `restart: true`) finds the new process or the new pod.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from devloop.config import Config
from devloop.errors import ConfigError, EnvironmentMissing
from devloop.output import Output
from devloop.ports import Cluster
from devloop.proc import Background
from devloop.proxy import Proxy, Upstreams
from devloop.workload import PodEvent, pod_name, pod_ready

DEFAULT_PORT = 9229
CONNECT_TIMEOUT = 5.0
CHECK_FOR = 60.0  # seconds the forward asks a newly pinned pod's inspector before saying it does not answer
CHECK_EVERY = 0.5

# Preloaded into every node process of the container (NODE_OPTIONS --import, Node >= 18.18): opens
# the inspector in the first one that is not a package manager; its children (cluster workers,
# `node --test`) see DEVLOOP_INSPECTING and leave the port alone. A port still held by the process a
# live sync just stopped (npm may be gone before its node is) is asked again every 0.1 s, for 5 s.
_PRELOAD = (
    "const a = process.argv[1] || ''; "
    "if (!/[\\/](npm|npx|yarn|pnpm|corepack)([\\/]|-cli\\.js$|\\.c?js$|$)/.test(a) && !process.env.DEVLOOP_INSPECTING) { "
    "process.env.DEVLOOP_INSPECTING = String(process.pid); "
    "const inspector = await import('node:inspector'); "
    "const open = (left) => { inspector.open(PORT, '127.0.0.1'); "
    "if (!inspector.url() && left > 0) setTimeout(open, 100, left - 1).unref(); }; "
    "open(50); }"
)


def node_options(port: int, existing: str = "") -> str:
    """NODE_OPTIONS that open the inspector on 127.0.0.1:port in the app's node process (after
    whatever the manifest already set)."""
    script = _PRELOAD.replace("PORT", str(int(port)))
    flag = "--import=data:text/javascript," + urllib.parse.quote(script, safe="")
    return f"{existing} {flag}".strip()


def instrument(container: dict[str, Any], port: int) -> bool:
    """The dev render of one inspected container: NODE_OPTIONS opens the inspector, the liveness
    probe is dropped (a paused process answers none). True when a liveness probe was dropped."""
    env = [e for e in container.get("env") or [] if isinstance(e, dict)]
    # the manifest's own value goes first; one read from a ConfigMap or Secret (valueFrom) is replaced
    # while inspecting (two entries of one name are refused by server-side apply)
    existing = " ".join(str(e.get("value") or "") for e in env if e.get("name") == "NODE_OPTIONS")
    others = [e for e in env if e.get("name") != "NODE_OPTIONS"]
    container["env"] = [*others, {"name": "NODE_OPTIONS", "value": node_options(port, existing)}]
    return container.pop("livenessProbe", None) is not None


def with_inspect(config: Config, service: str | None, local_port: int | None) -> Config:
    """The configuration with `--inspect SERVICE` (and `--inspect-port`) applied; bad names: exit 2."""
    if service is None:
        if local_port is not None:
            raise ConfigError("--inspect-port needs --inspect SERVICE", "e.g. `devloop dev --inspect web --inspect-port 9230`")
        return config
    names = [s.name for s in config.services]
    if service not in names:
        raise ConfigError(f"--inspect {service}: no such service", f"the services: {', '.join(names)}")
    svc = config.service(service)
    if svc.image is None:
        raise ConfigError(f"--inspect {service}: the service has no image devloop builds", "inspect a service with an `image:`")
    update: dict[str, Any] = {"enabled": True}
    if local_port is not None:
        update["local_port"] = local_port
    inspect = svc.inspect.model_copy(update=update)
    services = tuple(s.model_copy(update={"inspect": inspect}) if s.name == service else s for s in config.services)
    return config.model_copy(update={"services": services})


class InspectorPortTaken(EnvironmentMissing):
    """The inspector's local port is in use (exit 3)."""


def claim(port: int, service: str) -> socket.socket:
    """Bind 127.0.0.1:port now (before the first build): a taken port is an error at start, not a
    warning lost in a session. The socket is handed to the forward."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
    except OSError as e:
        s.close()
        raise InspectorPortTaken(
            f"the inspector's port 127.0.0.1:{port} for service {service} is taken ({e.strerror or e})",
            "stop what listens there (another debugger session?), or choose another port: "
            "`--inspect-port PORT`, or inspect.localPort in devloop.yaml (0: any free port)",
        ) from None
    return s


class PinnedUpstreams(Upstreams):
    """The pod table of an inspector forward: new connections all go to one pod, pinned. The pin
    is the newest Ready pod when it is made and stays until that pod goes away (a rollout deletes
    it: the newest Ready pod then takes it, once, not once per new replica as they get Ready); a
    pinned pod that stops being Ready (paused at a breakpoint: its readiness probe fails) keeps it."""

    def __init__(self, on_pin: Callable[[str, int], None] = lambda pod, ready: None) -> None:
        super().__init__()
        self.on_pin = on_pin  # (pod, how many pods were Ready when it was pinned)
        self.pin: str | None = None
        self._gone: set[str] = set()

    def gone(self, name: str) -> None:
        """The pod is being deleted (or was)."""
        with self._cond:
            self._gone.add(name)
            self._changed()

    def ready(self) -> list[str]:
        ready = super().ready()
        pinned: tuple[str, int] | None = None
        with self._cond:  # _gone: added by the pod watch's thread, read by the connections' threads
            newest = [p for p in ready if p not in self._gone]
            alive = self.pin is not None and self.known(self.pin) and self.pin not in self._gone
            if not alive:
                self.pin = newest[0] if newest else None
                if self.pin is not None:
                    pinned = (self.pin, len(newest))
            pin = self.pin
        if pinned is not None:
            self.on_pin(*pinned)
        return [pin] if pin is not None else []


class InspectorForward:
    """127.0.0.1:local_port → port `port` (the inspector) of the pinned pod of a service's pods."""

    def __init__(
        self,
        kube: Cluster,
        out: Output,
        namespace: str,
        selector: Mapping[str, str],
        port: int,
        listener: socket.socket,
        service: str,
    ) -> None:
        self.kube = kube
        self.out = out
        self.namespace = namespace
        self.selector = dict(selector)
        self.port = port
        self.service = service
        self._listener: socket.socket | None = listener
        self.local_port = int(listener.getsockname()[1])
        self.upstreams = PinnedUpstreams(self._pinned)
        self.proxy = Proxy(self.local_port, self.upstreams, self._connect, name=f"inspector-{self.local_port}", spare=False)
        self._watch: Background | None = None
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._checking: str | None = None  # the pod whose inspector is being asked
        self._said_taken = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.local_port}"

    def start(self) -> None:
        """Follow the service's pods (again: a pod watch that ended is started anew); listen."""
        with self._lock:
            if self._stopped.is_set():
                return
            if self._listener is not None:  # claimed at start: freed just before the proxy binds it again
                self._listener.close()
                self._listener = None
            if not self.proxy.listen():  # taken in the instant between the claim and the listener (or after a stop)
                if not self._said_taken:
                    self._said_taken = True
                    self.out.warn(f"{self.service}: the inspector's port {self.address} was taken meanwhile", "restart `devloop dev`")
                return
            if self._watch is not None and self._watch.alive():
                return
            pods = self.kube.pods(self.namespace, self.selector)
            self.upstreams.replace((pod_name(p), pod_ready(p), str(p.get("metadata", {}).get("creationTimestamp") or "")) for p in pods)
            for p in pods:
                if p.get("metadata", {}).get("deletionTimestamp"):
                    self.upstreams.gone(pod_name(p))
            self._watch = self.kube.watch_pods(self.namespace, self.selector, self._on_pod)
        self.upstreams.ready()  # pins the newest Ready pod now (and says so)

    def _on_pod(self, event: PodEvent) -> None:
        if event.deleting:
            self.upstreams.gone(event.name)
        self.upstreams.seen(event.name, event.ready, event.created)
        self.upstreams.ready()  # a pinned pod that goes away hands the pin on at once (and it is said)

    def _connect(self, pod: str) -> socket.socket:
        return self.kube.connect(self.namespace, pod, self.port, CONNECT_TIMEOUT)

    def _pinned(self, pod: str, ready: int) -> None:
        """A pod was pinned: ask its inspector (through the forward, as a debugger will) in the
        background, and say where to attach once it answers."""
        with self._lock:
            if self._stopped.is_set():
                return
            self._checking = pod
        threading.Thread(target=self._check, args=(pod, ready), daemon=True, name=f"inspector-{self.local_port}-check").start()

    def _check(self, pod: str, ready: int) -> None:
        deadline = time.monotonic() + CHECK_FOR
        while not self._stopped.is_set() and self._checking == pod:
            answer = inspector_targets(self.local_port)
            if answer is not None and self.upstreams.pin == pod:
                which = f" (one of {ready} Ready replicas, the newest; the others run without a debugger attached)" if ready > 1 else ""
                self.out.info(
                    f"{self.service}: debugger: attach to {self.address} → pod {pod}{which}; its liveness probe is off while inspecting",
                    service=self.service,
                    inspector=self.address,
                    pod=pod,
                    replicas=ready,
                )
                return
            if time.monotonic() >= deadline:
                self.out.warn(
                    f"{self.service}: no Node.js inspector answers on port {self.port} of pod {pod}",
                    "does the container run node (>= 18.18)? its log says why the inspector did not start",
                )
                return
            self._stopped.wait(CHECK_EVERY)  # polling a process that is starting

    def stop(self) -> None:
        self._stopped.set()
        with self._lock:
            watch, self._watch = self._watch, None
            listener, self._listener = self._listener, None
        if watch is not None:
            watch.stop()
        if listener is not None:
            listener.close()
        self.proxy.stop()


def inspector_targets(port: int, timeout: float = 3.0) -> list[dict[str, Any]] | None:
    """GET /json/list of the inspector behind 127.0.0.1:port: its targets, or None when none answers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/json/list")
        resp = conn.getresponse()
        body = resp.read(65536)
        if resp.status != 200:
            return None
        targets = json.loads(body)
        return [t for t in targets if isinstance(t, dict)] if isinstance(targets, list) else None
    except (OSError, http.client.HTTPException, ValueError):
        return None
    finally:
        with contextlib.suppress(OSError):
            conn.close()
