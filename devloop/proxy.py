"""A local TCP listener devloop owns, relaying each connection to one pod (issue 12).

`Upstreams` is the table of a Service's pods, fed by pod watch events: new connections go to the
newest Ready pod, so during a rollout the first new replica that is Ready takes them at once, and a
rollout whose new pods never get Ready leaves them on the old ones. `Proxy` owns 127.0.0.1:port for
the whole session: the pods underneath change, the listener does not, so the URL never refuses a
connection while the forward moves (make-before-break). Each accepted connection gets one upstream
socket from a connector (the API server's portforward, in-process) and two threads pumping bytes
until both sides are done; a connection stays on its pod until one side closes it.
"""

from __future__ import annotations

import contextlib
import re
import select
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from devloop.timefmt import parse_time

HOLD = 30.0  # seconds a new connection waits for a Ready pod before it is closed
RETRY = 1.0  # seconds between rounds over pods that all failed to connect (while held)
DEMOTE = 5.0  # a pod that failed to connect is tried after the others for this long
BUFFER = 64 * 1024
SPARE_WAIT = 5.0  # at most this long for the connection being opened ahead, rather than opening another
REPLAY_MAX = 64 * 1024  # a connection's first bytes kept for a pod that closes it without answering
REPLAY_WINDOW = 5.0  # ... when it closes within this many seconds of being opened
IDLE_GRACE = 0.05  # seconds a kept-alive connection a pod closed while idle stays open for a request the client sent meanwhile
RESTART_RETRY = 0.1  # seconds before every Ready pod, having all closed a connection unanswered, is asked again (doubling to RETRY)

Connector = Callable[[str], socket.socket]  # pod name → a connected stream socket to its port; raises when it cannot


@dataclass
class _Pod:
    ready: bool
    created: float
    seq: int  # order devloop first saw it: the tiebreak between pods created in the same second
    failed_at: float | None = None
    early: bool = False  # passed its readiness probe run by devloop (readiness.py) before the kubelet said Ready


class Upstreams:
    """The pods a forward may send new connections to. Any thread; waiters are woken on every change."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._pods: dict[str, _Pod] = {}
        self._seq = 0
        self.version = 0  # bumped on every change that may matter to a waiter

    def seen(self, name: str, ready: bool, created: str = "") -> bool:
        """A pod's state (from a watch event or a listing); True when its readiness changed."""
        with self._cond:
            pod = self._pods.get(name)
            if pod is None:
                self._seq += 1
                pod = self._pods[name] = _Pod(False, parse_time(created), self._seq)
            elif created and not pod.created:
                pod.created = parse_time(created)
            changed = pod.ready != ready
            if changed:
                was = pod.ready or pod.early
                pod.ready = ready
                pod.early = False  # the kubelet's word, from now on
                pod.failed_at = None  # a pod that is Ready again gets a fresh chance
                self._changed()
                return was != ready
            return changed

    def early(self, name: str) -> bool:
        """A pod devloop's own run of its readiness probe passed before the kubelet said Ready: new
        connections may go to it now (the kubelet's next word overrides). True when it changed."""
        with self._cond:
            pod = self._pods.get(name)
            if pod is None or pod.ready or pod.early:
                return False
            pod.early = True
            pod.failed_at = None
            self._changed()
            return True

    def not_early(self, name: str) -> None:
        """devloop's own probe of a pod it routed to early failed again: back to the kubelet's word."""
        with self._cond:
            pod = self._pods.get(name)
            if pod is not None and pod.early:
                pod.early = False
                self._changed()

    def replace(self, pods: Iterable[tuple[str, bool, str]], keep_known: bool = False) -> None:
        """The whole table from a listing: pods not in it are gone. `keep_known`: a running watch
        knows the pods it reported better than a listing it may have overtaken."""
        listed = {name: (ready, created) for name, ready, created in pods}
        with self._cond:
            for name in [n for n in self._pods if n not in listed]:
                del self._pods[name]
            self._changed()
        for name, (ready, created) in listed.items():
            if not (keep_known and self.known(name)):
                self.seen(name, ready, created)

    def known(self, name: str) -> bool:
        with self._cond:
            return name in self._pods

    def ready(self) -> list[str]:
        """Ready pods, newest first; those that failed to connect in the last seconds after the others."""
        now = self._clock()
        with self._cond:
            up = [(n, p) for n, p in self._pods.items() if p.ready or p.early]

            def key(item: tuple[str, _Pod]) -> tuple[bool, float, int]:
                p = item[1]
                return (p.failed_at is not None and now - p.failed_at < DEMOTE, -p.created, -p.seq)

            return [n for n, _ in sorted(up, key=key)]

    def failed(self, name: str) -> None:
        with self._cond:
            pod = self._pods.get(name)
            if pod is not None:
                pod.failed_at = self._clock()

    def wait(self, version: int, timeout: float | None) -> None:
        """Until the table changes after `version`, or `timeout` seconds."""
        with self._cond:
            self._cond.wait_for(lambda: self.version != version, timeout)

    def wake(self) -> None:
        with self._cond:
            self._changed()

    def _changed(self) -> None:
        self.version += 1
        self._cond.notify_all()


def _open(s: socket.socket) -> bool:
    """Whether a connection nobody used yet is still open: nothing to read, or data (a greeting), not EOF."""
    try:
        readable, _, _ = select.select([s], [], [], 0)
        return not readable or bool(s.recv(1, socket.MSG_PEEK))
    except (OSError, ValueError):
        return False


IDEMPOTENT = (b"GET ", b"HEAD ", b"OPTIONS ", b"PUT ", b"DELETE ", b"TRACE ")  # RFC 9110 9.2.2
# a whole HTTP/1 request line: on a kept-alive connection, only such a request is replayed (HTTP
# requests stand alone; another protocol's command may rely on what the connection did before)
HTTP_REQUEST = re.compile(rb"[A-Z]+ \S+ HTTP/1\.[01]\r?\n")


def _may_replay(upstream: socket.socket, sent: bytes | bytearray) -> bool:
    """Whether a connection a pod closed unanswered may be replayed to another pod: nothing was
    sent yet, or the request is idempotent (as a browser retries), or the pod's port refused the
    stream (the API server says so; the app never saw the request). A POST to an app that died
    while handling it is not sent twice."""
    if not sent or bytes(sent[:8]).startswith(IDEMPOTENT):
        return True
    refused = getattr(upstream, "refused", None)
    return bool(refused is not None and refused())


class _Link:
    """A relayed connection past its first answer, shared by its two pumps: the pod it goes to now,
    and what the client sent since that pod last sent anything (the request in flight), kept so
    that a pod that closes the connection on it unanswered (its app stopping: SIGTERM closes the
    kept-alive connections it is not answering yet) gets it replayed to another pod."""

    def __init__(self, pod: str, upstream: socket.socket, answered: bool) -> None:
        self.pod = pod
        self.upstream = upstream
        self.cond = threading.Condition()
        self.pending = bytearray()  # the client's bytes since the pod's last answer ...
        self.pending_since = 0.0  # ... sent to this pod at (time.monotonic())
        self.request_at = 0.0  # ... first sent at
        self.turn = 0  # `answers` when `pending` began (more than 0: the connection is kept alive for a further request)
        self.answers = 1 if answered else 0  # chunks the pod sent (only the pod's pump counts them)
        self.whole = answered  # `pending` is all of the request in flight (not when the first one was not answered)
        self.switching = False  # the pod's pump is moving the connection to another pod
        self.sending = False  # the client's pump is writing to the pod
        self.client_done = False

    def note(self, data: bytes) -> None:
        """The client sent `data` (caller holds cond)."""
        if self.turn != self.answers:  # the pod answered since: a new request
            self.turn, self.pending, self.whole = self.answers, bytearray(), True
        if not self.pending:
            self.pending_since = self.request_at = time.monotonic()
        if self.whole:
            self.pending += data
            if len(self.pending) > REPLAY_MAX:
                self.pending, self.whole = bytearray(), False


def _readable(s: socket.socket, timeout: float | None) -> bool:
    """Whether `s` has something to read (bytes, its end, an error) within `timeout` seconds (None:
    waits). poll, not select: a busy process' descriptors may be past select's 1024."""
    poll = select.poll()
    try:
        poll.register(s, select.POLLIN)
        return bool(poll.poll(None if timeout is None else timeout * 1000))
    except (OSError, ValueError):
        return True  # closed: a read says so at once


def _unread(s: socket.socket) -> bool:
    """Whether bytes wait to be read on `s` (not its end)."""
    try:
        return _readable(s, 0) and bool(s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:
        return False


def _shutdown(s: socket.socket, how: int) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(how)


class Proxy:
    """127.0.0.1:port, owned by devloop; each connection relayed to a pod from `upstreams`."""

    def __init__(
        self,
        port: int,
        upstreams: Upstreams,
        connect: Connector,
        *,
        hold: float = HOLD,
        on_fail: Callable[[str, Exception], None] = lambda pod, e: None,
        name: str = "forward",
        spare: bool = True,
    ) -> None:
        self.port = port
        self.upstreams = upstreams
        self.connect = connect
        self.hold = hold
        self.on_fail = on_fail
        self.name = name
        self.bind_error: OSError | None = None  # why the last listen() failed
        self.accepted = 0
        self.relayed = 0  # connections that got a pod
        self._listener: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self._socks: set[socket.socket] = set()
        self._keep_spare = spare
        self._spare: tuple[str, socket.socket] | None = None  # a connection opened ahead to the pod new ones go to
        self._opening: str | None = None  # the pod one is being opened ahead to, now
        self._spare_made = threading.Condition(self._lock)

    @property
    def listening(self) -> bool:
        return self._listener is not None

    def listen(self) -> bool:
        """Bind 127.0.0.1:port (once; SO_REUSEADDR: TIME-WAIT entries of closed connections do not
        hold it, another program's listener does) and start accepting. False while it is taken."""
        with self._lock:
            if self._listener is not None:
                return True
            if self._stopped.is_set():
                return False
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", self.port))
                s.listen(128)
            except OSError as e:
                s.close()
                self.bind_error = e
                return False
            self.bind_error = None
            self.port = int(s.getsockname()[1])
            self._listener = s
        self._spawn(self._accept, s, name=f"{self.name}-accept")
        if self._keep_spare:
            self._spawn(self._spares, name=f"{self.name}-spare")
        return True

    def _spawn(self, target: Callable[..., None], *args: object, name: str) -> None:
        def run() -> None:
            try:
                target(*args)
            finally:
                with self._lock:
                    self._threads.discard(t)

        t = threading.Thread(target=run, daemon=True, name=name)
        with self._lock:  # started under the lock: stop() joins every thread it sees, and sees every one started
            if self._stopped.is_set():
                return
            self._threads.add(t)
            t.start()

    def _accept(self, listener: socket.socket) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(listener, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopped.is_set():
                for key, _ in sel.select():
                    if key.fileobj is not listener:
                        continue  # woken by stop()
                    try:
                        client, _addr = listener.accept()
                    except OSError:
                        continue  # the client went away before we took it
                    with self._lock:
                        if self._stopped.is_set():
                            client.close()
                            return
                        self._socks.add(client)
                    self.accepted += 1
                    with contextlib.suppress(OSError):
                        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    self._spawn(self._serve, client, name=f"{self.name}-conn")

    def _upstream(self, tried: set[str], hold: bool = True) -> tuple[str, socket.socket] | None:
        """(pod, connected socket) to the newest Ready pod not in `tried` that accepts, held while
        none is Ready (up to `hold` seconds); None when there is none by then, or when stopping.
        Pods that fail are added to `tried`."""
        deadline = time.monotonic() + (self.hold if hold else 0.0)
        failed_round = False
        while not self._stopped.is_set():
            version = self.upstreams.version
            for pod in [p for p in self.upstreams.ready() if p not in tried]:
                if self._stopped.is_set():
                    return None
                try:
                    return pod, self.connect(pod)
                except Exception as e:  # the connector's own errors (StepFailed) and the socket's (OSError)
                    tried.add(pod)
                    failed_round = True
                    self._failed(pod, e)
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            # no Ready pod, or every one failed: wait for the table to change (a pod got Ready), and
            # after a failed round try them all again a second later (a pod that refused may listen now)
            self.upstreams.wait(version, min(left, RETRY) if failed_round else left)
            tried.clear()
            failed_round = False
        return None

    def _held(self, tried: set[str], deadline: float) -> tuple[str, socket.socket] | None:
        """The next Ready pod for a connection a pod closed unanswered. When every Ready pod closed
        it, or none is Ready, no app listens yet: a pod without a readinessProbe is Ready before its
        app listens (a rollout's new pods, while the old ones stop listening on SIGTERM), and a live
        update restarts every replica's app at once. Then the connection is held, as one waiting
        for a Ready pod is, until `deadline`, and the pods asked again: at once when one gets Ready,
        else after a pause that grows from RESTART_RETRY to RETRY (each try is a port-forward)."""
        got = self._upstream(tried, hold=False)
        pause = RESTART_RETRY
        while got is None and not self._stopped.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.upstreams.wait(self.upstreams.version, min(left, pause))
            pause = min(RETRY, pause * 2)
            tried.clear()
            got = self._upstream(tried, hold=False)
        return got

    def _failed(self, pod: str, e: Exception) -> None:
        self.upstreams.failed(pod)
        self.on_fail(pod, e)

    def _serve(self, client: socket.socket) -> None:
        upstream = None
        try:
            tried: set[str] = set()
            got = self._take_spare() or self._upstream(tried)
            if got is None:
                return
            if not self._track(got[1]):
                got[1].close()
                return
            with self._lock:
                self.relayed += 1
            relayed = self._first_answer(client, *got, tried)
            if relayed is None:
                return
            pod, upstream, client_done, answered = relayed
            if client_done and getattr(upstream, "ends_on_half_close", False):
                # the request sent and the client's side shut before any answer (`nc -N`, HTTP/1.0
                # clients): passed on, that would end a port-forward stream unanswered; the answer is
                # relayed until the pod closes the connection
                self._pump(upstream, client)
                return
            link = _Link(pod, upstream, answered)
            back = threading.Thread(target=self._pump_pod, args=(link, client, tried), daemon=True, name=f"{self.name}-back")
            with self._lock:
                if self._stopped.is_set():
                    return
                self._threads.add(back)
                back.start()
            self._pump_client(link, client)
            back.join()
            with self._lock:
                self._threads.discard(back)
            upstream = link.upstream
        finally:
            with self._lock:
                self._socks.discard(client)
                if upstream is not None:
                    self._socks.discard(upstream)
            client.close()
            if upstream is not None:
                upstream.close()

    def _track(self, s: socket.socket) -> bool:
        with self._lock:
            if self._stopped.is_set():
                return False
            self._socks.add(s)
            return True

    def _first_answer(
        self, client: socket.socket, pod: str, upstream: socket.socket, tried: set[str]
    ) -> tuple[str, socket.socket, bool, bool] | None:
        """Relay until the pod sends its first bytes, keeping what the client sent: a pod that closes
        the connection before answering anything, soon after it was opened (its app does not
        listen: the API server's port-forward reports a refused port only by closing the stream),
        gets it replayed to the next Ready pod. Then (or once the client sent more than REPLAY_MAX,
        or shut its sending side) the two-way relay takes over: the socket to use, whether the
        client has shut its side after sending a request (a connection closed before it sent
        anything, a browser's unused preconnect, is just closed) and whether the pod answered;
        None when no pod is left."""
        sent = bytearray()
        opened = first = time.monotonic()
        with selectors.DefaultSelector() as sel:
            sel.register(client, selectors.EVENT_READ)
            sel.register(upstream, selectors.EVENT_READ)
            while True:
                for key, _ in sel.select():
                    if key.fileobj is client:
                        try:
                            data = client.recv(BUFFER)
                        except OSError:
                            data = b""
                        if not data:  # the client shut its side (or went): no replay
                            return pod, upstream, bool(sent), False
                        with contextlib.suppress(OSError):  # a pod that is gone: its read below says so
                            upstream.sendall(data)
                        sent += data
                        if len(sent) > REPLAY_MAX:
                            return pod, upstream, False, False
                        continue
                    try:
                        data = upstream.recv(BUFFER)
                    except OSError:
                        data = b""
                    if data:
                        with contextlib.suppress(OSError):  # a client that went: the relay ends at once
                            client.sendall(data)
                        return pod, upstream, False, True
                    if self._stopped.is_set() or time.monotonic() - opened > REPLAY_WINDOW:
                        return pod, upstream, False, False  # closed without a word, late: the relay passes that on
                    if not _may_replay(upstream, sent):
                        return pod, upstream, False, False  # a POST the app may have taken before it died: never sent twice
                    # closed at once without answering: the next Ready pod gets what the client sent
                    self._failed(pod, ConnectionRefusedError("closed before answering (refused: its app does not listen on that port?)"))
                    tried.add(pod)
                    sel.unregister(upstream)
                    with self._lock:
                        self._socks.discard(upstream)
                    upstream.close()
                    got = self._held(tried, first + self.hold)
                    if got is None or not self._track(got[1]):
                        if got is not None:
                            got[1].close()
                        return None
                    pod, upstream = got
                    opened = time.monotonic()
                    with contextlib.suppress(OSError):  # a pod that is gone: its read below says so
                        upstream.sendall(sent)
                    sel.register(upstream, selectors.EVENT_READ)

    def _pump_client(self, link: _Link, client: socket.socket) -> None:
        """client → pod until the client closes its side (then the pod's write side is shut:
        half-close) or either fails (then both are shut down). What the client sends while the
        pod's pump moves the connection to another pod goes there. The client's bytes are read
        and noted at once (under `cond`): the pod's pump, deciding whether a request is in flight
        when the pod closes, sees them either noted or still unread, never in between."""
        while True:
            _readable(client, None)
            with link.cond:
                try:
                    data: bytes | None = client.recv(BUFFER)
                except OSError:
                    data = None
                if data:
                    link.note(data)
                else:
                    link.client_done = True
                replayed = link.switching  # then the pod's pump sends it, with the request, to the next pod
                link.cond.notify_all()
                link.cond.wait_for(lambda: not link.switching)
                upstream = link.upstream
                if not data:
                    break
                if replayed:
                    continue
                link.sending = True
            try:
                upstream.sendall(data)
            except OSError:
                pass  # the pod closed the connection: its pump replays the request, or ends the connection
            finally:
                with link.cond:
                    link.sending = False
                    link.cond.notify_all()
        if data is None:
            _shutdown(client, socket.SHUT_RDWR)
            _shutdown(upstream, socket.SHUT_RDWR)
        else:
            _shutdown(upstream, socket.SHUT_WR)

    def _pump_pod(self, link: _Link, client: socket.socket, tried: set[str]) -> None:
        """pod → client until the pod closes the connection: then the request in flight, if any,
        goes to another pod (`_replay`); else the close is passed on (half-close)."""
        while True:
            upstream = link.upstream
            try:
                data = upstream.recv(BUFFER)
            except OSError:
                data = b""
            if data:
                link.answers += 1
                try:
                    client.sendall(data)
                except OSError:
                    _shutdown(client, socket.SHUT_RDWR)
                    _shutdown(upstream, socket.SHUT_RDWR)
                    return
                continue
            if not self._replay(link, client, tried):
                _shutdown(client, socket.SHUT_WR)
                return

    def _replay(self, link: _Link, client: socket.socket, tried: set[str]) -> bool:
        """The pod closed a kept-alive connection: when it did so on an HTTP request it had not
        answered at all (an idempotent one), soon after it got it, the request goes to the next
        Ready pod (held, as a new connection is, while none listens) and the connection carries on
        there. False when there is nothing to replay, or no pod took it."""
        with link.cond:
            if not link.pending or link.turn != link.answers:
                # closed while idle: a client that kept the connection alive may have sent its next
                # request before it could see the close; read in a moment, it is replayed too
                wait = REPLAY_WINDOW if _unread(client) else IDLE_GRACE if link.turn else 0.0
                link.cond.wait_for(lambda: (bool(link.pending) and link.turn == link.answers) or link.client_done, wait)
            old, pod, sent = link.upstream, link.pod, bytes(link.pending)
            if (
                self._stopped.is_set()
                or link.client_done
                or not link.whole
                or not sent
                or link.turn != link.answers
                or time.monotonic() - link.pending_since > REPLAY_WINDOW
                or not HTTP_REQUEST.match(sent)
                or not _may_replay(old, sent)
            ):
                return False
            link.switching = True
            link.cond.wait_for(lambda: not link.sending)  # a write to the closed pod fails at once
        self._failed(pod, ConnectionAbortedError("closed a kept-alive connection on a request it had not answered (stopping?)"))
        tried.add(pod)
        with self._lock:
            self._socks.discard(old)
        old.close()
        got = self._held(tried, link.request_at + self.hold)
        with link.cond:
            link.switching = False
            link.cond.notify_all()
            if got is None or not link.whole or not self._track(got[1]):  # (more than REPLAY_MAX came meanwhile)
                if got is not None:
                    got[1].close()
                return False
            link.pod, link.upstream = got
            link.pending_since = time.monotonic()
            with contextlib.suppress(OSError):  # a pod that is gone: its read says so
                link.upstream.sendall(link.pending)
        return True

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        """src → dst until src's end closes its side (then dst's write side is shut: half-close) or
        either fails (then both are shut down, which ends the other direction too)."""
        try:
            while True:
                data = src.recv(BUFFER)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            _shutdown(src, socket.SHUT_RDWR)
            _shutdown(dst, socket.SHUT_RDWR)
            return
        _shutdown(dst, socket.SHUT_WR)

    def _spares(self) -> None:
        """Keeps one connection opened ahead to the pod new connections go to, so that a new one does
        not wait for the API server's port-forward to be set up (a websocket each): opened again
        when taken, replaced when another pod takes over (a rollout: the first new Ready replica's
        is opened as soon as it is Ready). One thread, woken by the pod table's changes."""
        version = -1
        while True:
            self.upstreams.wait(version, None)
            if self._stopped.is_set():
                return
            version = self.upstreams.version
            ready = self.upstreams.ready()
            want = ready[0] if ready else None
            with self._lock:
                spare = self._spare
                if spare is not None and spare[0] != want:
                    self._spare = None
            if spare is not None and spare[0] != want:
                spare[1].close()
                spare = None
            if want is None or spare is not None:
                continue
            with self._lock:
                self._opening = want
            sock = None
            with contextlib.suppress(Exception):  # a real connection to it tries again, and says why it failed
                sock = self.connect(want)
            with self._spare_made:
                self._opening = None
                if sock is not None and not self._stopped.is_set() and self._spare is None:
                    self._spare, sock = (want, sock), None
                self._spare_made.notify_all()
            if sock is not None:
                sock.close()

    def _take_spare(self) -> tuple[str, socket.socket] | None:
        """The connection opened ahead, when it goes to the pod a new connection should get and is
        still open (the next one is opened meanwhile)."""
        ready = self.upstreams.ready()
        want = ready[0] if ready else None
        with self._spare_made:
            if want is not None and self._opening == want and (self._spare is None or self._spare[0] != want):
                # being opened to it now (a rollout's first Ready replica, this instant): it is ahead of a new one
                self._spare_made.wait_for(lambda: self._opening != want or self._stopped.is_set(), SPARE_WAIT)
            spare, self._spare = self._spare, None
        if spare is None:
            return None
        self.upstreams.wake()  # the spare keeper opens the next one
        if spare[0] == want and _open(spare[1]):
            return spare
        spare[1].close()
        return None

    def renew(self, pods: Iterable[str]) -> None:
        """The apps in these pods were restarted in place (a live update): a connection opened ahead
        to one of them reaches the process from before, which may still drain; drop it (the next
        one is opened to the new process)."""
        names = set(pods)
        with self._lock:
            spare = self._spare
            if spare is not None and spare[0] in names:
                self._spare = None
            else:
                spare = None
        if spare is not None:
            spare[1].close()
            self.upstreams.wake()

    @property
    def threads(self) -> int:
        with self._lock:
            return len(self._threads)

    def stop(self, timeout: float = 10.0) -> None:
        """Close the listener and every connection; returns once their threads ended (or `timeout`)."""
        with self._lock:
            self._stopped.set()
            listener, self._listener = self._listener, None
            socks = list(self._socks)
            threads = list(self._threads)
            spare, self._spare = self._spare, None
            self._spare_made.notify_all()
        if spare is not None:
            spare[1].close()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        self.upstreams.wake()  # connections held for a pod give up
        for s in socks:
            _shutdown(s, socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        for t in threads:
            if t is not threading.current_thread():
                t.join(max(0.0, deadline - time.monotonic()))
        if listener is not None:
            listener.close()
        self._wake_r.close()
        self._wake_w.close()
