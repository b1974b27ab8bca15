"""The local web page of `devloop dev`: every service's state, recent cycles, pods, logs and forwards, live.

What it shows is the session's published view (`devloop.view`: one immutable `SessionView`,
read whole, never a live object of another thread), plus a bounded history of the events devloop
reports (log lines, metrics, the rest), which it fans out to the open pages over server-sent
events. It is one more subscriber of `Output` for that history; the Output lock is held while a
subscriber runs, so the fan-out never waits: each page has a bounded queue, and a page too slow to
keep up is disconnected (its browser reconnects and gets the recent history again) instead of
slowing devloop down. What changes without an event (the worker's and the pod table's publications:
pods, forwards, what the cluster runs) is pushed too, as a `view` event (`{"event": "view"}`, kept
in no history) the moment the board changes: the page reads the state again on every event, and on
no timer.

The server binds 127.0.0.1 only and refuses requests whose Host or Origin is not this page
(DNS rebinding, cross-site requests). Everything but the page itself also needs a per-session token
that only the served page knows (embedded in it as `<meta name="devloop-token">`): the state, the
event stream (pod logs, cycle details) and the one action, "rebuild now". The page sends it as the
`X-Devloop-Token` header (a custom header a cross-site request cannot carry without a CORS preflight
that is never granted); the event stream alone takes it as `?token=` too, because a browser's
EventSource cannot send headers. It is compared in constant time, never printed or logged (the
server keeps no access log), and changes with every `devloop dev`. A page of an earlier session
takes the new page's token to read again, by itself; its actions stay refused until it is reloaded.

The page's script runs under a per-response CSP nonce (`script-src` has no `'unsafe-inline'`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
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

from devloop import view
from devloop.errors import EXIT_ENVIRONMENT, DevloopError
from devloop.output import Output
from devloop.view import Board, Cycle, Failure, Pod, Running, ServiceView, SessionView

LOG_LINES_PER_SERVICE = 300
METRICS_PER_SERVICE = view.METRICS_PER_SERVICE
CYCLES_PER_SERVICE = view.CYCLES_PER_SERVICE
EVENTS_PER_SERVICE = 400  # other events per service kept for a new page's history
GLOBAL_EVENTS = 200  # events of no service (info, warnings, errors)
CLIENT_QUEUE = 2000  # events waiting for one page before it counts as too slow
KEEPALIVE_SECONDS = 15.0
TOKEN_HEADER = "X-Devloop-Token"
TOKEN_QUERY = "token"  # the event stream's query parameter: EventSource cannot send a header
TOKEN_PLACEHOLDER = "__DEVLOOP_TOKEN__"  # in data/dashboard.html, replaced when the page is served
NONCE_PLACEHOLDER = "__DEVLOOP_NONCE__"  # in data/dashboard.html, a new nonce for every response


class DashboardError(DevloopError):
    """The dashboard could not be served."""

    exit_code = EXIT_ENVIRONMENT


class DashboardPortTaken(DashboardError):
    """Another program already listens on the dashboard's port."""


Snapshot = Callable[[], Mapping[str, Any]]


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


def _failure_json(e: Failure) -> dict[str, Any]:
    return {"phase": e.phase, "message": e.message, "hint": e.hint, "details": list(e.details)}


def _cycle_json(c: Cycle) -> dict[str, Any]:
    d: dict[str, Any] = {
        "cycle": c.cycle,
        "ts": c.ts,
        "reason": c.reason,
        "files": list(c.files),
        "phases": dict(c.phases),
        "ok": c.ok,
        "total": c.total,
        "error": _failure_json(c.error) if c.error else None,
        "image": c.image,
        "outcome": c.outcome,
        "synced": c.synced,
    }
    if c.done_ts is not None:
        d["done_ts"] = c.done_ts
    return d


def _service_json(v: ServiceView, logs: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    failed = v.failed
    return {
        "name": v.name,
        "state": v.state,
        "phase": v.phase,
        "cycle": v.cycle,
        "progress": v.progress,
        "error": {**_failure_json(failed.error or Failure()), "outcome": failed.outcome, "cycle": failed.cycle} if failed else None,
        "image": v.serving,
        "applied": v.applied,
        "healthy": v.healthy,
        "pods": [{"name": p.name, "ready": p.ready, "restarts": p.restarts, "status": p.status} for p in v.pods],
        "forwards": [{"url": f.url, "ready": f.ready, "message": f.message} for f in v.forwards],
        "cycles": [_cycle_json(c) for c in v.cycles],
        "metrics": [
            {
                "ts": m.ts,
                "rps": m.rps,
                "error_ratio": m.error_ratio,
                "versions": dict(m.versions),
                "traffic_known": m.traffic_known,
                "traffic": m.traffic,
            }
            for m in v.metrics
        ],
        "logs": [{"ts": r.get("ts"), "pod": r.get("pod"), "line": r.get("line")} for r in logs],
    }


def _running(snapshot: Mapping[str, Any]) -> tuple[list[Running], dict[str, list[Pod]]]:
    """A snapshot mapping ({"services": {name: {applied, good, healthy, pods, forwards}}}) as what
    the worker and the pod table publish."""
    running, pods = [], {}
    for name, s in (snapshot.get("services") or {}).items():
        given = s.get("forwards")  # none given: not known (those the events named stay)
        urls = None if given is None else tuple(str(f.get("url")) for f in given if isinstance(f, Mapping))
        running.append(Running(str(name), s.get("applied"), s.get("good"), bool(s.get("healthy")), urls))
        pods[str(name)] = [
            Pod(str(p.get("name")), bool(p.get("ready")), int(p.get("restarts") or 0), str(p.get("status") or ""))
            for p in s.get("pods") or []
        ]
    return running, pods


class Dashboard:
    """Serve the page and its API on host:port (port 0: any free port) from a thread of its own.

    It shows `board`'s view: the session's (`DevSession.board`). Without one it keeps a board of its
    own, fed by `out`'s events and, when given, by `snapshot` (a mapping of what the worker would
    publish, asked at each request: a page without a session)."""

    def __init__(
        self,
        out: Output,
        host: str = "127.0.0.1",
        port: int = 10350,
        *,
        on_rebuild: Callable[[str], None],
        board: Board | None = None,
        snapshot: Snapshot | None = None,
    ) -> None:
        self.out = out
        self.host = host
        self.port = port
        self.on_rebuild = on_rebuild
        self.board = board or Board(out)
        self.snapshot = snapshot
        self._lock = threading.Lock()
        self._seq = 0
        self._history: dict[tuple[str, str], deque[tuple[int, dict[str, Any]]]] = {}
        self._clients: list[_Client] = []
        self._closing = False
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.token = secrets.token_urlsafe(32)  # what the page sends back to read and act: never printed
        page = resources.files("devloop").joinpath("data/dashboard.html").read_text(encoding="utf-8")
        for placeholder in (TOKEN_PLACEHOLDER, NONCE_PLACEHOLDER):
            if placeholder not in page:
                raise DashboardError(f"the dashboard page has no {placeholder} (devloop/data/dashboard.html)")
        self._page = page.replace(TOKEN_PLACEHOLDER, self.token)
        self.app = self._make_app()
        out.subscribe(self._on_event, replay=True)  # what happened before the dashboard existed, then everything after
        self.board.watch(self._on_view)  # and what changed without an event

    # -- the history ----------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _on_event(self, record: dict[str, Any]) -> None:
        """Output subscriber: called under the Output lock, so it only updates memory and queues."""
        if record.get("event") == "command_output":
            return  # a command's lines: the page shows a failed run's excerpt (command_end), not every line
        with self._lock:
            self._seq += 1
            seq = self._seq
            self._remember(seq, record)
            for client in self._clients:
                self._enqueue(client, seq, record)

    def _on_view(self) -> None:
        """Board watcher: the view changed without an event (pods, forwards, what the cluster runs):
        tell the open pages, which read the state again. Not history: a new page reads the state anyway."""
        with self._lock:
            self._seq += 1
            seq = self._seq
            for client in self._clients:
                self._enqueue(client, seq, {"event": "view"})

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

    # -- the view -------------------------------------------------------------------------------------
    def _view(self) -> tuple[SessionView, str]:
        """The view to serve, and why the snapshot failed ("" when it did not, or there is none)."""
        if self.snapshot is None:
            return self.board.view, ""
        try:
            snap = self.snapshot()
            running, pods = _running(snap if isinstance(snap, Mapping) else {})
            error = ""
        except Exception as e:  # the page still shows what the events tell
            running, pods, error = [], {}, f"{type(e).__name__}: {e}"
        self.board.publish(running)
        for name, rows in pods.items():
            self.board.publish_pods(name, rows)
        return self.board.view, error

    def services(self) -> list[str]:
        """The services the page offers: the configured ones, else those events named."""
        return self._view()[0].names()

    def state(self) -> dict[str, Any]:
        """Everything the page shows, as JSON: per service its state, error, image, pods, forwards,
        recent cycles with phase timings, metrics and log tail."""
        current, snap_error = self._view()
        # The configured services only (devloop's own parts, e.g. "monitoring", report progress under a
        # service name too, but have no card); without a worker, those the events named.
        names = current.names()
        with self._lock:
            logs = {name: [rec for _, rec in self._history.get(("log", name), ())] for name in names}
        services = [_service_json(current.service(name), logs[name]) for name in names]
        forwards = [{"service": s["name"], **f} for s in services for f in s["forwards"]]
        notices = [
            {"event": n.event, "ts": n.ts, "message": n.message, "hint": n.hint, **({"service": n.service} if n.service else {})}
            for n in current.notices
        ]
        commands = [dataclasses.asdict(c) for c in current.commands.values()]
        result: dict[str, Any] = {"url": self.url, "services": services, "forwards": forwards, "notices": notices, "commands": commands}
        if snap_error:
            result["snapshot_error"] = snap_error
        return result

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

    def token_refused(self, headers: Mapping[str, str], query: Mapping[str, str] | None = None) -> str:
        """Why an API request is refused for its token ("" when it carries this session's token): the
        `X-Devloop-Token` header, or (`query` given: the event stream only) the `token` query parameter."""
        given = headers.get(TOKEN_HEADER.lower())
        if given is None and query is not None:
            given = query.get(TOKEN_QUERY)
        if not given:
            how = f"{TOKEN_HEADER} header" if query is None else f"{TOKEN_HEADER} header nor ?{TOKEN_QUERY}="
            return f"refused: no {how} (only the page at {self.url} may call this API; it sends its token)"
        if not secrets.compare_digest(given.encode("utf-8", "replace"), self.token.encode()):
            return f"refused: wrong {TOKEN_HEADER} (a page of an earlier devloop session? reload {self.url})"
        return ""

    def _make_app(self) -> ASGIApp:
        async def page(request: Request) -> Response:
            nonce = secrets.token_urlsafe(18)
            return HTMLResponse(
                self._page.replace(NONCE_PLACEHOLDER, nonce),
                headers={
                    "Cache-Control": "no-store",
                    "X-Frame-Options": "DENY",
                    "Content-Security-Policy": (
                        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; img-src data:; "
                        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
                    ),
                },
            )

        def refused(why: str) -> Response:
            return JSONResponse({"error": why}, status_code=403, headers={"Cache-Control": "no-store"})

        async def state(request: Request) -> Response:  # the snapshot is cheap (no kubectl): no worker thread
            why = self.token_refused(request.headers)
            if why:
                return refused(why)
            return JSONResponse(json.loads(json.dumps(self.state(), default=str)), headers={"Cache-Control": "no-store"})

        async def rebuild(request: Request) -> Response:
            why = self.token_refused(request.headers)
            if why:
                return refused(why)
            name = str(request.path_params["name"])
            known = self.services()
            if name not in known:
                return JSONResponse({"error": f"unknown service {name!r}", "services": known}, status_code=404)
            self.on_rebuild(name)
            return JSONResponse({"service": name, "rebuild": "queued"}, status_code=202)

        async def events(request: Request) -> Response:
            why = self.token_refused(request.headers, request.query_params)
            if why:
                return refused(why)
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
