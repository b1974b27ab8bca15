"""How a port-forward is checked: by what the Service's port speaks (issue 19).

A Service port says what it speaks by its `appProtocol`, else by its name (the `<protocol>[-suffix]`
convention of Istio and Kubernetes' own docs: `http`, `grpc-api`, `redis`). devloop checks a
forward the way that protocol can answer:

- HTTP (an unnamed port, as before; `http*`, `web*`, `ws*`, appProtocol `http`/`https`/`kubernetes.io/ws`):
  `GET /` through the forward, any status.
- gRPC (`grpc*`, appProtocol `grpc`) and HTTP/2 cleartext (`h2c*`, `http2*`, appProtocol `kubernetes.io/h2c`):
  the HTTP/2 connection preface and an empty SETTINGS frame through the forward; the server must
  answer with a SETTINGS frame. That proves an HTTP/2 server (gRPC's transport) answers on the
  port. It does not call grpc.health.v1.Health/Check: that needs an HTTP/2 client with HPACK (the
  `grpcio` or `h2` packages, or a hand-made one) for one check the kubelet already makes — a gRPC
  readiness probe is what made the pod Ready in the first place.
- anything else (`tcp`, `redis`, `postgres`, `metrics`...): a stream to the newest Ready pod's
  port through the API server (the forward's own path). The API server reports a port nobody
  listens on by closing that stream at once; a stream still open after TCP_SETTLE (or one the
  server already wrote a greeting on) answers.

An HTTP port whose server answers in HTTP/2 instead (a gRPC server on an unnamed port) is asked
HTTP/2, and a gRPC or HTTP/2 port whose server answers in HTTP/1 (a port named grpc that serves
HTTP) is asked HTTP/1: what answered is said, with the name to give the port. A port where nothing
answers gets no second check (no extra wait while an app starts).

Pure rules plus small socket exchanges; no retries here (the forward decides when to check again).
"""

from __future__ import annotations

import contextlib
import http.client
import select
import socket
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

HTTP, HTTP2, GRPC, TCP = "http", "http2", "grpc", "tcp"

_HTTP_NAMES = ("http", "https", "web", "www", "ws", "wss")
_HTTP2_NAMES = ("h2c", "http2", "h2")
_HTTP_APP = ("http", "https", "kubernetes.io/ws", "kubernetes.io/wss")
_HTTP2_APP = ("kubernetes.io/h2c", "h2c", "http2")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # length 0, type SETTINGS (4), no flags, stream 0
SETTINGS = 4
TCP_SETTLE = 1.0  # seconds a stream to the pod's port must stay open (without a greeting) to count as accepted


def protocol_of(port: Mapping[str, Any]) -> str:
    """What a Service port (an entry of spec.ports) speaks, as devloop checks it: HTTP, HTTP2, GRPC or TCP.
    appProtocol first, then the name's protocol part (`grpc-api` → grpc); an unnamed port is HTTP."""
    app = str(port.get("appProtocol") or "").lower()
    if app:
        if app == "grpc" or app.endswith("/grpc"):
            return GRPC
        if app in _HTTP2_APP:
            return HTTP2
        return HTTP if app in _HTTP_APP else TCP
    name = str(port.get("name") or "").lower()
    if not name:
        return HTTP
    head = name.split("-", 1)[0]
    if head == "grpc":
        return HTTP if name.startswith("grpc-web") else GRPC
    if head in _HTTP2_NAMES:
        return HTTP2
    return HTTP if head in _HTTP_NAMES else TCP


def checked(protocol: str) -> str:
    """What a check of this protocol asks, in a few words ("no {checked} answer yet")."""
    return {HTTP: "HTTP", HTTP2: "HTTP/2", GRPC: "gRPC (HTTP/2)", TCP: "TCP"}[protocol]


@dataclass(frozen=True)
class Answer:
    """What answered through a forward: the protocol checked, what to say ("HTTP 200", "answers
    TCP", "gRPC port answers HTTP/2"), and for HTTP the status and the start of the body."""

    protocol: str
    said: str
    status: int | None = None
    body: str = ""


def http_check(port: int, timeout: float = 3.0) -> Answer | None:
    """GET / on 127.0.0.1:port; None when nothing answers."""
    return _http(port, timeout)[0]


def _http(port: int, timeout: float = 3.0) -> tuple[Answer | None, bool]:
    """GET / on 127.0.0.1:port: (the answer, whether something that is not HTTP/1 answered instead)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        return Answer(HTTP, f"HTTP {resp.status}", resp.status, resp.read(4096).decode(errors="replace")), False
    except http.client.BadStatusLine as e:  # bytes that are no status line (an HTTP/2 server's SETTINGS), or a close without any
        return None, not isinstance(e, http.client.RemoteDisconnected)
    except (OSError, http.client.HTTPException):
        return None, False
    finally:
        conn.close()


def h2_check(port: int, protocol: str = HTTP2, timeout: float = 3.0) -> Answer | None:
    """The HTTP/2 preface and an empty SETTINGS frame to 127.0.0.1:port: an Answer when the first
    frame back is the server's SETTINGS (RFC 9113 3.4), else None."""
    return _h2(port, protocol, timeout)[0]


def _h2(port: int, protocol: str = HTTP2, timeout: float = 3.0) -> tuple[Answer | None, bool]:
    """(the answer, whether something that is not HTTP/2 answered instead: an HTTP/1 server's 400)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(PREFACE + EMPTY_SETTINGS)
            head = _read(s, 9)
    except OSError:
        return None, False
    if len(head) < 9 or head[3] != SETTINGS or int.from_bytes(head[5:9], "big") & 0x7FFFFFFF != 0:
        return None, bool(head) and not head.startswith(b"\x00")
    return Answer(protocol, "gRPC port answers HTTP/2" if protocol == GRPC else "answers HTTP/2"), False


def answer_as(protocol: str, port: int) -> Answer | None:
    """The check of an HTTP, HTTP/2 or gRPC port, through the forward's listener on 127.0.0.1:port.
    A server that answered in the other one of HTTP/1 and HTTP/2 is asked in that one, and the
    answer says so: an unnamed port with a gRPC server, a port named grpc that serves HTTP/1."""
    if protocol == HTTP:
        answer, other = _http(port)
        if answer is None and other:
            answer = h2_check(port)
            return replace(answer, said="answers HTTP/2, not HTTP/1 (gRPC? name the Service port grpc)") if answer else None
        return answer
    answer, other = _h2(port, protocol)
    if answer is None and other:
        answer = http_check(port)
        return replace(answer, said=f"{answer.said} (the port is named for {checked(protocol)} but speaks HTTP/1)") if answer else None
    return answer


def _read(s: socket.socket, n: int) -> bytes:
    got = b""
    while len(got) < n:
        data = s.recv(n - len(got))
        if not data:
            break
        got += data
    return got


def tcp_check(upstream: socket.socket, settle: float = TCP_SETTLE) -> str | None:
    """A fresh stream to the pod's port (as the forward's connector opens it), closed here: None
    when it was accepted (still open after `settle` seconds, or the server greeted), else why not."""
    try:
        readable, _, _ = select.select([upstream], [], [], settle)
        if readable and not upstream.recv(1, socket.MSG_PEEK):
            return "the pod closed the stream at once: its app does not listen on that port (yet)"
        refused = getattr(upstream, "refused", None)
        if refused is not None and refused():
            return "the pod refused the connection: its app does not listen on that port (yet)"
        return None
    except (OSError, ValueError) as e:
        return f"the stream to the pod failed: {e}"
    finally:
        with contextlib.suppress(OSError):
            upstream.close()
