"""The one client of the Docker Registry HTTP API v2 devloop has: kind's local registry (plain HTTP
on the host's IPv4 loopback, no login) and a remote target's registry (TLS verified, the user's
Docker credentials, Basic or token authentication as the registry asks with WWW-Authenticate).

Credentials come from where `docker login` put them (`~/.docker/config.json`, `$DOCKER_CONFIG`,
credential helpers), read by the docker SDK; they are sent to the registry and never stored,
logged or printed. TLS is verified against the system's CAs plus Docker's per-registry CA
(`/etc/docker/certs.d/<host>/ca.crt`, the file the Docker daemon itself trusts for pushes); a
registry without TLS is reached over plain HTTP only when its target says `insecure: true`.

The client sends requests and authenticates; what an answer means (a missing tag, a refused
delete) is said by its users: devloop.registry (has it?), devloop.gc (tags, manifests, deletes),
devloop.remote and devloop.release (a target's versions).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any, NamedTuple

from devloop.errors import EnvironmentMissing, StepFailed

CERTS_DIR = Path(os.environ.get("DEVLOOP_DOCKER_CERTS_D", "/etc/docker/certs.d"))
MANIFEST_TYPES = ", ".join(
    (
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    )
)
TIMEOUT = 15.0

Credentials = Callable[[str], Mapping[str, Any] | None]  # registry host → what `docker login` stored, or None


class RegistryUnavailable(EnvironmentMissing):
    """The registry does not answer, or its TLS certificate is not trusted."""

    reason: object = None  # what failed underneath (an OSError, an ssl error), when the registry did not answer


class RegistryAuthFailed(EnvironmentMissing):
    """The registry refused the credentials (or there are none)."""


# What a request raises when the registry did not answer: RegistryUnavailable when it could not be
# reached, the connection's own error when it broke after that (a timeout while reading the answer).
UNANSWERED = (RegistryUnavailable, OSError, http.client.HTTPException)


def unanswered(e: BaseException) -> str:
    """What failed underneath an UNANSWERED error, in its own words (`[Errno 111] Connection refused`)."""
    reason = e.reason if isinstance(e, RegistryUnavailable) else e
    return str(reason) or type(reason).__name__


@dataclass(frozen=True)
class RemoteManifest:
    digest: str  # the manifest's digest (what a pod pins: name@sha256:...)
    config: str  # the image config's digest, which is the local image ID for the same content
    size: int  # bytes of all layers


class Response(NamedTuple):
    status: int
    headers: Message  # case-insensitive
    body: bytes  # b"" for a HEAD


def challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="…",service="…",scope="…"` → ("bearer", {realm: …, …})."""
    scheme, _, rest = header.strip().partition(" ")
    pairs = urllib.request.parse_keqv_list([p for p in urllib.request.parse_http_list(rest) if "=" in p])
    return scheme.lower(), {k.strip().lower(): v.strip() for k, v in pairs.items()}


def docker_credentials(host: str) -> Mapping[str, Any] | None:
    """What `docker login` stored for this registry (config file or credential helper)."""
    import docker.auth

    try:
        found = docker.auth.load_config().resolve_authconfig(host)
    except Exception:  # an unreadable config or a broken helper: as if there were no login
        return None
    return dict(found) if found else None


class RegistryClient:
    """Requests to one registry, authenticating when it asks (a 401 with WWW-Authenticate): Basic,
    or a token (Bearer) from the realm it names, kept per scope. Without `credentials` the client
    never logs in and a 401 is an answer like any other."""

    def __init__(
        self,
        host: str,
        *,
        insecure: bool = False,
        credentials: Credentials | None = docker_credentials,
        certs_dir: Path = CERTS_DIR,
        timeout: float = TIMEOUT,
        proxies: bool = True,
        token_hosts: Sequence[str] = (),
    ) -> None:
        self.host = host
        self.insecure = insecure
        self._token_hosts = frozenset(h.lower() for h in token_hosts)  # besides the registry's own host
        self._credentials = credentials
        self._certs_dir = certs_dir
        self._timeout = timeout
        self._direct = None if proxies else urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self._tokens: dict[str, str] = {}
        self._lock = threading.Lock()

    @classmethod
    def local(cls, host: str, timeout: float) -> RegistryClient:
        """kind's local registry at `host` (`localhost:5001`): plain HTTP straight to the IPv4
        loopback (the registry publishes there only; never through a proxy), no login."""
        h, _, port = host.rpartition(":")
        h, p = (h, int(port)) if h and port.isdigit() else (host, 80)
        return cls(f"{'127.0.0.1' if h == 'localhost' else h}:{p}", insecure=True, credentials=None, timeout=timeout, proxies=False)

    @property
    def base(self) -> str:
        return f"{'http' if self.insecure else 'https'}://{self.host}"

    def _ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        ca = self._certs_dir / self.host / "ca.crt"
        if ca.is_file():
            ctx.load_verify_locations(cafile=str(ca))
        return ctx

    def _basic(self) -> tuple[str, str] | None:
        creds = (self._credentials(self.host) if self._credentials is not None else None) or {}
        user, password = creds.get("username") or creds.get("Username"), creds.get("password") or creds.get("Password")
        if user and password:
            return str(user), str(password)
        return None

    def _open(self, req: urllib.request.Request) -> Any:
        context = None if self.insecure else self._ssl()
        try:
            if self._direct is not None:
                return self._direct.open(req, timeout=self._timeout)
            return urllib.request.urlopen(req, timeout=self._timeout, context=context)
        except urllib.error.HTTPError:
            raise
        except (urllib.error.URLError, OSError) as e:
            raise self._unreachable(getattr(e, "reason", e)) from None

    def _unreachable(self, reason: Any) -> RegistryUnavailable:
        if isinstance(reason, ssl.SSLCertVerificationError):
            error = RegistryUnavailable(
                f"registry {self.host}: its TLS certificate is not trusted ({reason.verify_message})",
                f"give Docker and devloop its CA in {self._certs_dir / self.host / 'ca.crt'}; "
                "a registry without TLS needs `insecure: true` on its target",
            )
        elif isinstance(reason, ssl.SSLError):
            error = RegistryUnavailable(
                f"registry {self.host}: TLS handshake failed ({reason.reason or reason})",
                "if this registry speaks plain HTTP, set `insecure: true` on its target (and in Docker's insecure-registries)",
            )
        else:
            text = reason.strerror if isinstance(reason, OSError) and reason.strerror else str(reason)
            if isinstance(reason, socket.gaierror):
                text = f"cannot resolve {self.host.rpartition(':')[0] or self.host}"
            error = RegistryUnavailable(
                f"registry {self.host} does not answer ({text})",
                "check that the registry runs and the target's `registry:` is right; nothing was pushed or deployed",
            )
        error.reason = reason
        return error

    def request(self, method: str, path: str, headers: Mapping[str, str] | None = None, scope: str = "") -> Response:
        """One API request, authenticating when the registry asks. RegistryUnavailable when it does
        not answer; RegistryAuthFailed when it refuses the login."""
        url = self.base + path
        hdrs = dict(headers or {})
        for attempt in range(2):
            with self._lock:
                token = self._tokens.get(scope)
            if token:
                hdrs["Authorization"] = token
            req = urllib.request.Request(url, method=method, headers=hdrs)
            try:
                with self._open(req) as resp:
                    return Response(resp.status, resp.headers, resp.read() if method != "HEAD" else b"")
            except urllib.error.HTTPError as e:
                if e.code != 401 or attempt == 1 or self._credentials is None:
                    if e.code == 401 and self._credentials is not None:
                        raise self._refused() from None
                    return Response(e.code, e.headers, e.read() if method != "HEAD" else b"")
                auth = self._authenticate(e.headers.get("WWW-Authenticate", ""), scope)
                with self._lock:
                    self._tokens[scope] = auth
        raise AssertionError("unreachable")

    def _refused(self) -> RegistryAuthFailed:
        basic = self._basic()
        if basic is None:
            return RegistryAuthFailed(
                f"registry {self.host} needs a login, and Docker has no credentials for it",
                f"run `docker login {self.host}` (devloop uses Docker's credentials and never stores them)",
            )
        return RegistryAuthFailed(
            f"registry {self.host} refused the credentials of user {basic[0]!r}",
            f"run `docker login {self.host}` again with the right password",
        )

    def _authenticate(self, header: str, scope: str) -> str:
        scheme, params = challenge(header)
        basic = self._basic()
        if basic is None:
            raise self._refused()
        encoded = base64.b64encode(f"{basic[0]}:{basic[1]}".encode()).decode()
        if scheme == "basic":
            return f"Basic {encoded}"
        if scheme != "bearer" or not params.get("realm"):
            raise RegistryUnavailable(
                f"registry {self.host}: unsupported authentication {scheme!r}", "use a registry with basic or token auth"
            )
        self._trust_realm(params["realm"])
        query = {"service": params.get("service", "")}
        if scope or params.get("scope"):
            query["scope"] = scope or params["scope"]
        url = params["realm"] + "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v})
        req = urllib.request.Request(url, headers={"Authorization": f"Basic {encoded}"})
        try:
            with self._open(req) as resp:
                data = json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as e:
            if e.code in (401, 403):
                raise self._refused() from None
            raise RegistryUnavailable(f"registry {self.host}: token service answered HTTP {e.code}", "check the registry") from None
        token = data.get("token") or data.get("access_token")
        if not token:
            raise RegistryUnavailable(f"registry {self.host}: token service gave no token", "check the registry")
        return f"Bearer {token}"

    def _trust_realm(self, realm: str) -> None:
        """A token service gets the user's Docker credentials only over TLS (unless the target says
        `insecure: true`), and only on the registry's own host or one its target declares in `tokenHosts`."""
        url = urllib.parse.urlsplit(realm)
        if url.scheme != "https" and not (self.insecure and url.scheme == "http"):
            raise RegistryAuthFailed(
                f"registry {self.host}: its token service {realm} is not https; devloop sends your credentials only over TLS",
                "use a registry whose token service speaks https (or set `insecure: true` on a target you trust)",
            )
        own = urllib.parse.urlsplit(f"//{self.host}").hostname or self.host
        host = (url.hostname or "").lower()
        if host != own.lower() and host not in self._token_hosts and url.netloc.lower() not in self._token_hosts:
            raise RegistryAuthFailed(
                f"registry {self.host}: its token service is on another host ({url.netloc}); devloop did not send your credentials there",
                f"if you trust {host} with your Docker login for {self.host}, add it to the target's `tokenHosts`",
            )

    # -- the calls ----------------------------------------------------------------------------------
    def ping(self) -> int:
        """The status of `GET /v2/` (200: a registry, and the login, if it asked for one, accepted)."""
        return self.request("GET", "/v2/").status

    def check(self) -> None:
        """Reachable, TLS trusted (unless insecure) and the credentials accepted; raises otherwise."""
        status = self.ping()
        if status != 200:
            raise RegistryUnavailable(f"registry {self.host}: GET /v2/ answered HTTP {status}", "is this a Docker registry (API v2)?")

    def has(self, repository: str, reference: str) -> bool:
        """Whether a manifest of this tag (or digest) is there (a HEAD)."""
        path = f"/v2/{repository}/manifests/{reference}"
        return self.request("HEAD", path, {"Accept": MANIFEST_TYPES}, f"repository:{repository}:pull").status == 200

    def manifest(self, repository: str, reference: str) -> RemoteManifest | None:
        """The manifest a tag (or digest) names, or None when there is none."""
        scope = f"repository:{repository}:pull"
        status, headers, body = self.request("GET", f"/v2/{repository}/manifests/{reference}", {"Accept": MANIFEST_TYPES}, scope)
        if status == 404:
            return None
        if status != 200:
            raise StepFailed(f"registry {self.host}: reading {repository}:{reference} answered HTTP {status}")
        doc = json.loads(body)
        digest = headers.get("Docker-Content-Digest") or ""
        config = str((doc.get("config") or {}).get("digest", ""))
        size = sum(int(layer.get("size", 0)) for layer in doc.get("layers") or [])
        return RemoteManifest(digest, config, size)
