"""A remote registry, as devloop talks to it: the v2 HTTP API with TLS verified and the user's
Docker credentials, and the publisher that pushes to it for a remote target.

Credentials come from where `docker login` put them (`~/.docker/config.json`, `$DOCKER_CONFIG`,
credential helpers), read by the docker SDK; they are sent to the registry and never stored,
logged or printed. TLS is verified against the system's CAs plus Docker's per-registry CA
(`/etc/docker/certs.d/<host>/ca.crt`, the file the Docker daemon itself trusts for pushes); a
registry without TLS is reached over plain HTTP only when its target says `insecure: true`.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devloop.errors import DevloopError, EnvironmentMissing, StepFailed
from devloop.images import Images, Pushed
from devloop.model import ImageRef

CERTS_DIR = Path(os.environ.get("DEVLOOP_DOCKER_CERTS_D", "/etc/docker/certs.d"))
MANIFEST_TYPES = ", ".join(
    (
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.index.v1+json",
    )
)
TIMEOUT = 15.0


class RegistryUnavailable(EnvironmentMissing):
    """The registry does not answer, or its TLS certificate is not trusted."""


class RegistryAuthFailed(EnvironmentMissing):
    """The registry refused the credentials (or there are none)."""


@dataclass(frozen=True)
class Address:
    """`host[:port][/path]`, as a target names its registry."""

    host: str  # registry.example.com:5443
    path: str  # team/apps, or ""

    @classmethod
    def parse(cls, text: str) -> Address:
        host, _, path = text.partition("/")
        return cls(host, path.strip("/"))

    def __str__(self) -> str:
        return f"{self.host}/{self.path}" if self.path else self.host

    def repository(self, image_name: str) -> str:
        """The repository path inside the registry for one of devloop's images (no host)."""
        return f"{self.path}/{image_name}" if self.path else image_name


@dataclass(frozen=True)
class RemoteManifest:
    digest: str  # the manifest's digest (what a pod pins: name@sha256:...)
    config: str  # the image config's digest, which is the local image ID for the same content
    size: int  # bytes of all layers


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="…",service="…",scope="…"` → ("bearer", {realm: …, …})."""
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    for part in _split_params(rest):
        k, _, v = part.partition("=")
        params[k.strip().lower()] = v.strip().strip('"')
    return scheme.lower(), params


def _split_params(text: str) -> list[str]:
    parts, cur, quoted = [], "", False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return parts


class RegistryClient:
    """The few registry API calls devloop needs: can I reach it and log in, which manifest does a
    tag name. Basic and token (Bearer) authentication, as registries answer with WWW-Authenticate."""

    def __init__(
        self,
        address: Address,
        *,
        insecure: bool = False,
        credentials: Callable[[str], Mapping[str, Any] | None] | None = None,
        certs_dir: Path = CERTS_DIR,
    ) -> None:
        self.address = address
        self.insecure = insecure
        self._credentials = credentials or docker_credentials
        self._certs_dir = certs_dir
        self._tokens: dict[str, str] = {}
        self._lock = threading.Lock()

    @property
    def host(self) -> str:
        return self.address.host

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
        creds = self._credentials(self.host) or {}
        user, password = creds.get("username") or creds.get("Username"), creds.get("password") or creds.get("Password")
        if user and password:
            return str(user), str(password)
        return None

    def _open(self, req: urllib.request.Request) -> Any:
        context = None if self.insecure else self._ssl()
        try:
            return urllib.request.urlopen(req, timeout=TIMEOUT, context=context)
        except urllib.error.HTTPError:
            raise
        except (urllib.error.URLError, OSError) as e:
            raise self._unreachable(getattr(e, "reason", e)) from None

    def _unreachable(self, reason: Any) -> RegistryUnavailable:
        if isinstance(reason, ssl.SSLCertVerificationError):
            return RegistryUnavailable(
                f"registry {self.host}: its TLS certificate is not trusted ({reason.verify_message})",
                f"give Docker and devloop its CA in {self._certs_dir / self.host / 'ca.crt'}; "
                "a registry without TLS needs `insecure: true` on its target",
            )
        if isinstance(reason, ssl.SSLError):
            return RegistryUnavailable(
                f"registry {self.host}: TLS handshake failed ({reason.reason or reason})",
                "if this registry speaks plain HTTP, set `insecure: true` on its target (and in Docker's insecure-registries)",
            )
        text = reason.strerror if isinstance(reason, OSError) and reason.strerror else str(reason)
        if isinstance(reason, socket.gaierror):
            text = f"cannot resolve {self.host.rpartition(':')[0] or self.host}"
        return RegistryUnavailable(
            f"registry {self.host} does not answer ({text})",
            "check that the registry runs and the target's `registry:` is right; nothing was pushed or deployed",
        )

    def _request(self, method: str, path: str, headers: Mapping[str, str] | None = None, scope: str = "") -> tuple[int, Any, bytes]:
        """One API request, authenticating when the registry asks. (status, headers, body)."""
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
                    return resp.status, resp.headers, resp.read() if method != "HEAD" else b""
            except urllib.error.HTTPError as e:
                if e.code != 401 or attempt == 1:
                    if e.code == 401:
                        raise self._refused() from None
                    return e.code, e.headers, e.read() if method != "HEAD" else b""
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
        scheme, params = _challenge(header)
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

    def check(self) -> None:
        """Reachable, TLS trusted (unless insecure) and the credentials accepted; raises otherwise."""
        status, _, _ = self._request("GET", "/v2/")
        if status != 200:
            raise RegistryUnavailable(f"registry {self.host}: GET /v2/ answered HTTP {status}", "is this a Docker registry (API v2)?")

    def manifest(self, repository: str, reference: str) -> RemoteManifest | None:
        """The manifest a tag (or digest) names, or None when there is none."""
        scope = f"repository:{repository}:pull"
        status, headers, body = self._request("GET", f"/v2/{repository}/manifests/{reference}", {"Accept": MANIFEST_TYPES}, scope)
        if status == 404:
            return None
        if status != 200:
            raise StepFailed(f"registry {self.host}: reading {repository}:{reference} answered HTTP {status}")
        doc = json.loads(body)
        digest = headers.get("Docker-Content-Digest") or ""
        config = str((doc.get("config") or {}).get("digest", ""))
        size = sum(int(layer.get("size", 0)) for layer in doc.get("layers") or [])
        return RemoteManifest(digest, config, size)


def docker_credentials(host: str) -> Mapping[str, Any] | None:
    """What `docker login` stored for this registry (config file or credential helper)."""
    import docker.auth

    try:
        found = docker.auth.load_config().resolve_authconfig(host)
    except Exception:  # an unreadable config or a broken helper: as if there were no login
        return None
    return dict(found) if found else None


def push(images: Images, ref: str, progress: Callable[[str], None] = lambda _: None) -> Pushed:
    """`docker push` to a remote registry, reporting bytes as they go; a refusal says the
    registry's own words with the fix (`docker login`, TLS)."""
    return images.push(ref, progress, refused=_push_error)


def _push_error(ref: str, message: str) -> DevloopError:
    low = message.lower()
    host = ref.partition("/")[0]
    if "unauthorized" in low or "authentication required" in low or "denied" in low:
        return RegistryAuthFailed(f"push of {ref} refused: {message}", f"run `docker login {host}`")
    if "x509" in low or "certificate" in low:
        return RegistryUnavailable(
            f"push of {ref}: Docker does not trust the registry's certificate ({message})",
            f"put the registry's CA in /etc/docker/certs.d/{host}/ca.crt",
        )
    if "connection refused" in low or "no such host" in low or "i/o timeout" in low:
        return RegistryUnavailable(f"push of {ref}: registry {host} does not answer ({message})", "check that the registry runs")
    return StepFailed(f"push of {ref} failed: {message}", "check the registry and its logs")


class RemotePublisher:
    """Content-tagged images pushed to a target's registry (`up/dev --target`): the cluster pulls
    them with its own credentials (the target's pull secret)."""

    def __init__(self, images: Images, client: RegistryClient, address: Address) -> None:
        self._images = images
        self.client = client
        self.address = address
        self.lock = threading.Lock()

    @property
    def registry(self) -> str:
        return str(self.address)

    def prepare(self) -> bool:
        self.client.check()
        return False

    def start_early(self) -> bool:
        return False  # a remote target is never created: there is no "before the cluster"

    def publish(self, ref: ImageRef, note: Callable[[str], None], progress: Callable[[str], None] = lambda _: None) -> str:
        target = ref.cluster
        with self.lock:
            if self.client.manifest(self.address.repository(ref.repository), ref.tag) is not None:
                return ""
            self._images.tag(ref.local, target)
            pushed = push(self._images, target, progress)
        return f"pushed {target} ({pushed.summary()})"
