"""The local web page of `devloop dev`: every service's state, recent cycles, pods, logs and forwards, live.

It is one more subscriber of `Output`: every event devloop reports is folded into a small bounded
model (last cycles, log lines and metrics per service) and fanned out to the open pages over
server-sent events. The Output lock is held while a subscriber runs, so the fan-out never waits:
each page has a bounded queue, and a page too slow to keep up is disconnected (its browser
reconnects and gets the recent history again) instead of slowing devloop down.

The server binds 127.0.0.1 only and refuses requests whose Host or Origin is not this page
(DNS rebinding, cross-site requests). The one action it offers, "rebuild now", also needs a
per-session token that only the served page knows (embedded in it, sent back as the
`X-Devloop-Token` header; a custom header a cross-site request cannot carry without a CORS preflight
that is never granted): another site the developer has open cannot trigger it. The token is never
printed or logged; it changes with every `devloop dev`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import heapq
import json
import secrets
import socket
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from devloop.errors import EXIT_ENVIRONMENT, DevloopError
from devloop.output import Output

CYCLES_PER_SERVICE = 20
LOG_LINES_PER_SERVICE = 300
METRICS_PER_SERVICE = 240
EVENTS_PER_SERVICE = 400  # other events per service kept for a new page's history
GLOBAL_EVENTS = 200  # events of no service (info, warnings, errors)
CLIENT_QUEUE = 2000  # events waiting for one page before it counts as too slow
KEEPALIVE_SECONDS = 15.0
NOTICES = 20
TOKEN_HEADER = "X-Devloop-Token"
TOKEN_PLACEHOLDER = "__DEVLOOP_TOKEN__"  # in data/dashboard.html, replaced when the page is served

# The phase a service is in, as a person says it.
PHASE_STATES = {"build": "building", "publish": "publishing", "deploy": "rolling out", "rollout": "rolling out", "sync": "syncing"}


class DashboardError(DevloopError):
    """The dashboard could not be served."""

    exit_code = EXIT_ENVIRONMENT


class DashboardPortTaken(DashboardError):
    """Another program already listens on the dashboard's port."""


Snapshot = Callable[[], Mapping[str, Any]]


@dataclass
class _ServiceView:
    name: str
    state: str = "idle"
    phase: str | None = None
    cycle: int | None = None
    progress: str = ""
    error: dict[str, Any] | None = None
    image: str | None = None
    cycles: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=CYCLES_PER_SERVICE))
    forwards: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=METRICS_PER_SERVICE))
    seen: bool = False  # an event named it

    def cycle_record(self, number: int, ts: float) -> dict[str, Any]:
        known = next((c for c in self.cycles if c["cycle"] == number), None)
        if known is not None:
            return known
        c: dict[str, Any] = {
            "cycle": number,
            "ts": ts,
            "reason": "",
            "files": [],
            "phases": {},
            "ok": None,
            "total": None,
            "error": None,
            "image": None,
            "outcome": "",
            "synced": False,
        }
        self.cycles.append(c)
        return c


@dataclass
class _Client:
    """One open event stream: its queue, filled under the dashboard lock, drained by its coroutine."""

    loop: asyncio.AbstractEventLoop
    wake: asyncio.Event
    items: deque[tuple[int, dict[str, Any]]] = field(default_factory=deque)
    notified: bool = False
    overflow: bool = False


def _wake(client: _Client) -> None:
    with contextlib.suppress(RuntimeError):  # its loop has closed: the server is stopping
        client.loop.call_soon_threadsafe(client.wake.set)


def _sse(record: Mapping[str, Any], seq: int | None = None, event: str | None = None) -> str:
    head = f"id: {seq}\n" if seq is not None else ""
    if event:
        head += f"event: {event}\n"
    return head + f"data: {json.dumps(record, default=str)}\n\n"


class _LocalOnly:
    """Refuse requests whose Host or Origin is not this server on 127.0.0.1/localhost (403)."""

    def __init__(self, app: ASGIApp, dashboard: Dashboard) -> None:
        self.app = app
        self.dashboard = dashboard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            why = self.dashboard.refuse(scope["method"], headers)
            if why:
                await PlainTextResponse(f"devloop dashboard: {why}\n", status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, listening: threading.Event) -> None:
        super().__init__(config)
        self._listening = listening

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets)
        finally:
            self._listening.set()


class Dashboard:
    """Serve the page and its API on host:port (port 0: any free port) from a thread of its own."""

    def __init__(
        self,
        out: Output,
        host: str = "127.0.0.1",
        port: int = 10350,
        *,
        on_rebuild: Callable[[str], None],
        snapshot: Snapshot,
    ) -> None:
        self.out = out
        self.host = host
        self.port = port
        self.on_rebuild = on_rebuild
        self.snapshot = snapshot
        self._lock = threading.Lock()
        self._seq = 0
        self._services: dict[str, _ServiceView] = {}
        self._history: dict[tuple[str, str], deque[tuple[int, dict[str, Any]]]] = {}
        self._notices: deque[dict[str, Any]] = deque(maxlen=NOTICES)
        self._clients: list[_Client] = []
        self._closing = False
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.token = secrets.token_urlsafe(32)  # what the page sends back to act: never printed
        page = resources.files("devloop").joinpath("data/dashboard.html").read_text(encoding="utf-8")
        if TOKEN_PLACEHOLDER not in page:
            raise DashboardError("the dashboard page has no place for its token (devloop/data/dashboard.html)")
        self._page = page.replace(TOKEN_PLACEHOLDER, self.token)
        self.app = self._make_app()
        # What happened before the dashboard existed (the Output keeps a bounded tail), then everything
        # after: under the Output's lock, so no event is missed or seen twice.
        with out._lock:
            for record in list(out.events):
                self._on_event(record)
            out.subscribe(self._on_event)

    # -- the model ------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _service(self, name: str) -> _ServiceView:
        view = self._services.get(name)
        if view is None:
            view = self._services[name] = _ServiceView(name)
        view.seen = True
        return view

    def _on_event(self, record: dict[str, Any]) -> None:
        """Output subscriber: called under the Output lock, so it only updates memory and queues."""
        with self._lock:
            self._seq += 1
            seq = self._seq
            self._fold(record)
            self._remember(seq, record)
            for client in self._clients:
                self._enqueue(client, seq, record)

    def _remember(self, seq: int, record: dict[str, Any]) -> None:
        service = str(record.get("service") or "")
        kind = record.get("event")
        if kind == "log":
            key, size = ("log", service), LOG_LINES_PER_SERVICE
        elif kind == "metrics":
            key, size = ("metrics", service), METRICS_PER_SERVICE
        else:
            key, size = ("event", service), (EVENTS_PER_SERVICE if service else GLOBAL_EVENTS)
        bucket = self._history.get(key)
        if bucket is None:
            bucket = self._history[key] = deque(maxlen=size)
        bucket.append((seq, record))

    def _fold(self, r: Mapping[str, Any]) -> None:
        kind = r.get("event")
        ts = float(r.get("ts") or 0.0)
        service = str(r.get("service") or "")
        if kind == "cycle_start":
            for name in r.get("services") or []:
                v = self._service(str(name))
                v.state, v.phase, v.progress, v.cycle = "queued", None, "", int(r["cycle"])
                c = v.cycle_record(int(r["cycle"]), ts)
                c["reason"], c["files"] = r.get("reason", ""), list(r.get("files") or [])
            return
        if not service:
            if kind in ("warning", "error", "info"):
                self._notices.append({k: r.get(k) for k in ("event", "ts", "message", "hint")})
            return
        v = self._service(service)
        if kind == "phase_start":
            phase = str(r.get("phase", ""))
            v.state, v.phase, v.progress = PHASE_STATES.get(phase, phase or "working"), phase, ""
        elif kind == "phase":
            if v.cycle is not None and v.cycles and v.cycles[-1]["cycle"] == v.cycle and v.cycles[-1]["ok"] is None:
                v.cycles[-1]["phases"][str(r.get("phase"))] = r.get("seconds")
        elif kind == "progress":
            v.progress = str(r.get("message", ""))
        elif kind == "cycle_done":
            number = int(r.get("cycle") or 0)
            c = v.cycle_record(number, ts)
            c.update(
                ok=bool(r.get("ok")),
                total=r.get("total"),
                phases=dict(r.get("phases") or {}),
                image=r.get("image"),
                outcome=r.get("outcome", ""),
                synced=bool(r.get("synced")),
                error=r.get("error"),
                done_ts=ts,
            )
            if r.get("files"):
                c["files"] = list(r["files"])
            if r.get("reason"):
                c["reason"] = r["reason"]
            if v.cycle is None or number >= v.cycle:
                v.cycle, v.phase, v.progress = number, None, ""
                if r.get("ok"):
                    v.state, v.error = "ready", None
                    if r.get("image"):
                        v.image = str(r["image"])
                else:
                    v.state = "failed"
                    v.error = {**(r.get("error") or {"message": "failed"}), "outcome": r.get("outcome", ""), "cycle": number}
        elif kind == "skipped" and r.get("reason") == "image content unchanged" and v.state == "failed":
            # A failed change undone: the cluster runs exactly these files, healthy (checked by devloop), no cycle needed.
            v.state, v.error, v.phase, v.progress = "ready", None, None, ""
        elif kind == "port_forward":
            url = str(r.get("url", ""))
            v.forwards[url] = {"url": url, "ready": bool(r.get("ready")), "message": r.get("message", "")}
        elif kind == "metrics":
            v.metrics.append(
                {"ts": ts, "rps": r.get("rps"), "error_ratio": r.get("error_ratio"), "versions": dict(r.get("versions") or {})}
            )
        elif kind in ("warning", "error", "info"):
            self._notices.append({k: r.get(k) for k in ("event", "ts", "message", "hint", "service")})

    def _enqueue(self, client: _Client, seq: int, record: dict[str, Any]) -> None:
        if client.overflow:
            return
        if len(client.items) >= CLIENT_QUEUE:
            client.overflow = True  # too slow: drop it; the browser reconnects and starts from the history
            client.items.clear()
        else:
            client.items.append((seq, record))
        if not client.notified:
            client.notified = True
            _wake(client)

    def _recent(self) -> list[tuple[int, dict[str, Any]]]:
        return list(heapq.merge(*(list(b) for b in self._history.values()), key=lambda item: item[0]))

    def _snapshot(self) -> tuple[Mapping[str, Any], str]:
        try:
            snap = self.snapshot()
            return (snap if isinstance(snap, Mapping) else {}), ""
        except Exception as e:  # the page still shows what the events tell
            return {}, f"{type(e).__name__}: {e}"

    def services(self) -> list[str]:
        """The services the page offers: the configured ones (snapshot), else those events named."""
        snap, _ = self._snapshot()
        configured = list((snap.get("services") or {}).keys())
        if configured:
            return [str(s) for s in configured]
        with self._lock:
            return [name for name, v in self._services.items() if v.seen]

    def state(self) -> dict[str, Any]:
        """Everything the page shows, as JSON: per service its state, error, image, pods, forwards,
        recent cycles with phase timings, metrics and log tail."""
        snap, snap_error = self._snapshot()
        configured: Mapping[str, Any] = snap.get("services") or {}
        with self._lock:
            # The configured services only (devloop's own parts, e.g. "monitoring", report progress under a
            # service name too, but have no card); without a snapshot, those the events named.
            names = list(configured) or [n for n, v in self._services.items() if v.seen]
            logs = {name: [rec for _, rec in self._history.get(("log", name), ())] for name in names}
            views = {name: self._view_json(name, configured.get(name) or {}, logs[name]) for name in names}
            notices = list(self._notices)
        forwards = [{"service": name, **f} for name, v in views.items() for f in v["forwards"]]
        result: dict[str, Any] = {"url": self.url, "services": list(views.values()), "forwards": forwards, "notices": notices}
        if snap_error:
            result["snapshot_error"] = snap_error
        return result

    def _view_json(self, name: str, snap: Mapping[str, Any], logs: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        v = self._services.get(name) or _ServiceView(name)
        state = v.state
        if state == "idle" and snap.get("healthy"):
            state = "ready"
        forwards = {str(f.get("url")): dict(f) for f in snap.get("forwards") or [] if isinstance(f, Mapping)}
        forwards.update(v.forwards)
        return {
            "name": name,
            "state": state,
            "phase": v.phase,
            "cycle": v.cycle,
            "progress": v.progress,
            "error": v.error,
            "image": snap.get("good") or v.image,
            "applied": snap.get("applied"),
            "healthy": snap.get("healthy"),
            "pods": list(snap.get("pods") or []),
            "forwards": list(forwards.values()),
            "cycles": [dict(c) for c in v.cycles],
            "metrics": list(v.metrics),
            "logs": [{"ts": r.get("ts"), "pod": r.get("pod"), "line": r.get("line")} for r in logs],
        }

    # -- HTTP -----------------------------------------------------------------------------------------
    def refuse(self, method: str, headers: Mapping[str, str]) -> str:
        """Why a request is refused ("" to serve it): a Host other than this server (DNS rebinding),
        or an Origin other than this page (another site's script)."""
        hosts = {f"127.0.0.1:{self.port}", f"localhost:{self.port}"}
        if self.port == 80:
            hosts |= {"127.0.0.1", "localhost"}
        host = headers.get("host", "").lower()
        if host not in hosts:
            return f"refused Host {host or '(none)'!r}: open {self.url}"
        origin = headers.get("origin")
        if origin is not None and origin.lower() not in {f"http://{h}" for h in hosts}:
            return f"refused a request from origin {origin!r}: only the page at {self.url} may call this API"
        if method not in ("GET", "HEAD") and origin is None and headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return "refused a cross-site request"
        return ""

    def token_refused(self, headers: Mapping[str, str]) -> str:
        """Why an action is refused for its token ("" when it carries this session's token)."""
        given = headers.get(TOKEN_HEADER.lower())
        if not given:
            return f"refused: no {TOKEN_HEADER} header (use the rebuild button on the page at {self.url})"
        if not secrets.compare_digest(given.encode("utf-8", "replace"), self.token.encode()):
            return f"refused: wrong {TOKEN_HEADER} (a page of an earlier devloop session? reload {self.url})"
        return ""

    def _make_app(self) -> ASGIApp:
        async def page(request: Request) -> Response:
            return HTMLResponse(
                self._page,
                headers={
                    "Cache-Control": "no-store",
                    "X-Frame-Options": "DENY",
                    "Content-Security-Policy": (
                        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; "
                        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
                    ),
                },
            )

        async def state(request: Request) -> Response:  # the snapshot is cheap (no kubectl): no worker thread
            return JSONResponse(json.loads(json.dumps(self.state(), default=str)), headers={"Cache-Control": "no-store"})

        async def rebuild(request: Request) -> Response:
            why = self.token_refused(request.headers)
            if why:
                return JSONResponse({"error": why}, status_code=403)
            name = str(request.path_params["name"])
            known = self.services()
            if name not in known:
                return JSONResponse({"error": f"unknown service {name!r}", "services": known}, status_code=404)
            self.on_rebuild(name)
            return JSONResponse({"service": name, "rebuild": "queued"}, status_code=202)

        async def events(request: Request) -> Response:
            return StreamingResponse(
                self._stream(),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
            )

        app = Starlette(
            routes=[
                Route("/", page, methods=["GET"]),
                Route("/api/state", state, methods=["GET"]),
                Route("/api/events", events, methods=["GET"]),
                Route("/api/services/{name}/rebuild", rebuild, methods=["POST"]),
            ]
        )
        return _LocalOnly(app, self)

    async def _stream(self) -> AsyncIterator[str]:
        """One page's events: a hello (the page starts afresh), the recent history, then live."""
        client = _Client(loop=asyncio.get_running_loop(), wake=asyncio.Event())
        with self._lock:
            history = self._recent()
            self._clients.append(client)
        try:
            yield "retry: 1000\n" + _sse({"url": self.url, "history": len(history)}, event="hello")
            for seq, record in history:
                yield _sse(record, seq)
            while True:
                client.wake.clear()
                with self._lock:
                    items = list(client.items)
                    client.items.clear()
                    client.notified = False
                    done = client.overflow or self._closing
                if done:
                    return
                for seq, record in items:
                    yield _sse(record, seq)
                if items:
                    continue
                try:
                    await asyncio.wait_for(client.wake.wait(), KEEPALIVE_SECONDS)
                except TimeoutError:
                    yield ": keepalive\n\n"
        finally:
            with self._lock:
                if client in self._clients:
                    self._clients.remove(client)

    # -- lifecycle ------------------------------------------------------------------------------------
    def _bind(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME-WAIT leftovers of a previous run are no obstacle
        try:
            sock.bind((self.host, self.port))
            sock.listen(128)
        except OSError as e:
            sock.close()
            where = f"{self.host}:{self.port}"
            if e.errno == errno.EADDRINUSE:
                raise DashboardPortTaken(
                    f"the dashboard cannot listen on {where}: the port is taken (another `devloop dev`, or another program)",
                    f"set dashboard.port in devloop.yaml to a free port (0 picks one), or run `devloop dev --no-ui`; "
                    f"`ss -ltnp 'sport = :{self.port}'` shows what holds it",
                ) from None
            raise DashboardError(
                f"the dashboard cannot listen on {where}: {e.strerror or e}",
                "set dashboard.port in devloop.yaml to another port (0 picks a free one), or run `devloop dev --no-ui`",
            ) from None
        self.port = int(sock.getsockname()[1])
        return sock

    def start(self) -> str:
        """Listen, serve from a daemon thread, and return the page's URL once it answers."""
        if self._thread is not None:
            return self.url
        sock = self._bind()
        config = uvicorn.Config(
            self.app,
            log_config=None,  # leave the process's logging alone
            log_level="warning",
            access_log=False,
            lifespan="off",
            loop="asyncio",
            http="h11",
            ws="none",
            timeout_graceful_shutdown=2,
        )
        listening = threading.Event()
        server = _Server(config, listening)
        failure: list[BaseException] = []

        def serve() -> None:
            try:
                server.run(sockets=[sock])
            except BaseException as e:  # reported by start(); a thread has no one else to tell
                failure.append(e)
            finally:
                listening.set()
                sock.close()

        with self._lock:
            self._closing = False
        self._server = server
        self._thread = threading.Thread(target=serve, name="devloop-dashboard", daemon=True)
        self._thread.start()
        listening.wait()
        if failure or not server.started:
            self.stop()
            why = f": {failure[0]}" if failure else ""
            raise DashboardError(f"the dashboard did not start on {self.url}{why}", "run `devloop dev --no-ui` to go on without it")
        return self.url

    def stop(self) -> None:
        """End the open event streams, shut the server down and wait for its thread."""
        with self._lock:
            self._closing = True
            clients = list(self._clients)
        for client in clients:
            _wake(client)
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None
