"""devloop.registry_client as the local registry's users see it (devloop.registry's checks and
devloop.gc's listing and deletes), against a small in-process registry speaking plain HTTP. The
remote side (TLS, Basic and token login) is tested in test_release.py."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from devloop.config import Config, RegistryConfig, parse_text
from devloop.errors import EXIT_ENVIRONMENT, ConfigError
from devloop.gc import GCError, HttpRegistry
from devloop.images import Images
from devloop.registry import LocalRegistry
from devloop.registry_client import MANIFEST_TYPES, RegistryAuthFailed, RegistryClient, challenge
from devloop.targets import resolve
from tests.unit.fakes import FakeCluster

CONFIG = {"created": "2024-01-01T00:00:02Z"}
CONFIG_DIGEST = "sha256:" + hashlib.sha256(json.dumps(CONFIG).encode()).hexdigest()
REPO = Path(__file__).resolve().parents[2]
NO_DOCKER = Images(lambda: pytest.fail("the registry's API needs no Docker"))
IMAGE = {"config": {"digest": CONFIG_DIGEST, "size": 7}, "layers": [{"digest": "sha256:l1", "size": 100}]}


class _Server(http.server.ThreadingHTTPServer):
    broken = False  # /v2/ answers 500


Served = tuple[int, list[tuple[str, str, str]], _Server]  # the port, the requests seen, the server


class _Registry(http.server.BaseHTTPRequestHandler):
    """The local registry's API for one repository `app`: tags dl-1 (an image) and dl-2 (an index
    of that image); DELETE answers `delete_status`; every request is recorded."""

    delete_status = 202
    seen: list[tuple[str, str, str]]

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, code: int, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _route(self) -> None:
        self.seen.append((self.command, self.path, self.headers.get("Accept", "")))
        if self.path == "/v2/":
            assert isinstance(self.server, _Server)
            self._send(500 if self.server.broken else 200, {})
        elif self.path == "/v2/app/tags/list":
            self._send(200, {"name": "app", "tags": ["dl-1", "dl-2"]})
        elif self.path in ("/v2/app/manifests/dl-1", "/v2/app/manifests/sha256:image"):
            self._send(200, IMAGE, {"Docker-Content-Digest": "sha256:image"})
        elif self.path == "/v2/app/manifests/dl-2":
            self._send(200, {"manifests": [{"digest": "sha256:image"}]}, {"Docker-Content-Digest": "sha256:index"})
        elif self.path == f"/v2/app/blobs/{CONFIG_DIGEST}":
            self._send(200, CONFIG)
        else:
            self._send(404, {"errors": [{"code": "NAME_UNKNOWN"}]})

    do_GET = do_HEAD = _route

    def do_DELETE(self) -> None:
        self.seen.append((self.command, self.path, ""))
        self._send(self.delete_status, {"errors": [{"code": "UNSUPPORTED"}]} if self.delete_status == 405 else None)


@pytest.fixture
def registry(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    # a proxy in the environment (as on a corporate network) must not take the local registry's requests
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    seen: list[tuple[str, str, str]] = []
    handler = type("Handler", (_Registry,), {"seen": seen, "delete_status": getattr(request, "param", 202)})
    server = _Server(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], seen, server
    server.shutdown()
    server.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens there once closed


def test_the_garbage_collector_lists_tags_and_reads_manifests_with_their_blobs_and_age(registry: Served) -> None:
    port, seen, _ = registry
    api = HttpRegistry(f"localhost:{port}")
    assert api.tags("app") == ["dl-1", "dl-2"]
    assert api.tags("other") == []  # a repository never pushed
    image = api.manifest("app", "dl-1")
    assert image is not None and image.digest == "sha256:image"
    assert image.blobs == {CONFIG_DIGEST: 7, "sha256:l1": 100}
    assert image.created == pytest.approx(1704067202.0)
    index = api.manifest("app", "dl-2")
    assert index is not None and index.digest == "sha256:index" and index.blobs == image.blobs  # the index's image
    assert api.manifest("app", "dl-9") is None
    assert ("GET", "/v2/app/manifests/dl-1", MANIFEST_TYPES) in seen


@pytest.mark.parametrize("registry", [405], indirect=True)
def test_a_registry_without_deletes_says_how_to_allow_them(registry: Served) -> None:
    port, seen, _ = registry
    with pytest.raises(GCError) as e:
        HttpRegistry(f"localhost:{port}").delete("app", "sha256:image")
    assert e.value.message == "the local registry does not allow deletes"
    assert "REGISTRY_STORAGE_DELETE_ENABLED=true" in e.value.hint
    assert seen == [("DELETE", "/v2/app/manifests/sha256:image", "")]


def test_a_delete_the_registry_accepts_is_done(registry: Served) -> None:
    port, seen, _ = registry
    HttpRegistry(f"localhost:{port}").delete("app", "sha256:image")
    assert seen == [("DELETE", "/v2/app/manifests/sha256:image", "")]


def test_a_registry_that_does_not_answer_is_a_gc_error_naming_the_request() -> None:
    port = _closed_port()
    with pytest.raises(GCError, match=rf"^registry 127\.0\.0\.1:{port}: GET /v2/app/tags/list: .*[Cc]onnection refused"):
        HttpRegistry(f"localhost:{port}").tags("app")


def test_the_local_registry_knows_what_it_holds_and_whether_it_answers(registry: Served) -> None:
    port, seen, server = registry
    local = LocalRegistry(RegistryConfig(host_port=port), NO_DOCKER, FakeCluster())
    assert local.has("app:dl-1") is True
    assert local.has("app:dl-9") is False
    assert seen[0] == ("HEAD", "/v2/app/manifests/dl-1", MANIFEST_TYPES)
    assert local.answers() is None
    server.broken = True
    assert local.answers() == "HTTP 500"


def test_a_local_registry_that_is_not_there_holds_nothing() -> None:
    local = LocalRegistry(RegistryConfig(host_port=_closed_port()), NO_DOCKER, FakeCluster())
    assert local.has("app:dl-1") is False
    assert "Connection refused" in (local.answers() or "")


@pytest.mark.parametrize(
    ("header", "want"),
    [
        ('Basic realm="registry"', ("basic", {"realm": "registry"})),
        (
            'Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push"',
            ("bearer", {"realm": "https://auth.example/token", "service": "registry.example", "scope": "repository:a/b:pull,push"}),
        ),
        ("", ("", {})),
    ],
)
def test_www_authenticate_challenges(header: str, want: tuple[str, dict[str, str]]) -> None:
    assert challenge(header) == want


# -- where the Docker login may go (a Bearer realm) ------------------------------------------------


class _TokenRegistry(http.server.BaseHTTPRequestHandler):
    """/v2/ behind a Bearer challenge whose realm is `realm` (formatted with the server's port);
    /token hands a token to a Basic login and records every Authorization it is sent."""

    realm = "https://127.0.0.1:{port}/token"
    sent: list[str]

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        assert isinstance(self.server, http.server.HTTPServer)
        headers: dict[str, str] = {}
        if self.path.startswith("/token"):
            self.sent.append(self.headers.get("Authorization", ""))
            body, code = {"token": "tok"}, 200
        elif self.headers.get("Authorization") == "Bearer tok":
            body, code = {}, 200
        else:
            realm = self.realm.format(port=self.server.server_port)
            body, code, headers = {}, 401, {"WWW-Authenticate": f'Bearer realm="{realm}",service="reg"'}
        data = json.dumps(body).encode()
        self.send_response(code)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _token_registry(tmp_path: Path, realm: str, tls: bool) -> tuple[http.server.HTTPServer, list[str], Path]:
    sent: list[str] = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (_TokenRegistry,), {"realm": realm, "sent": sent}))
    certs = tmp_path / "certs.d"
    if tls:
        ca = trustme.CA()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
        (certs / f"127.0.0.1:{server.server_port}").mkdir(parents=True)
        ca.cert_pem.write_to_path(str(certs / f"127.0.0.1:{server.server_port}" / "ca.crt"))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, sent, certs


@pytest.mark.parametrize(
    ("realm", "tls", "insecure", "token_hosts", "refused"),
    [
        ("https://127.0.0.1:{port}/token", True, False, (), ""),  # TLS, the registry's own host
        ("http://127.0.0.1:{port}/token", True, False, (), "is not https"),  # a TLS registry naming a plain-HTTP realm
        ("http://127.0.0.1:{port}/token", False, True, (), ""),  # plain HTTP, as the target said (insecure: true)
        ("https://localhost:{port}/token", True, False, (), "on another host (localhost:"),  # not the registry's host
        ("https://localhost:{port}/token", True, False, ("localhost",), ""),  # ... unless the target declares it
        ("http://localhost:{port}/token", False, True, ("auth.example",), "on another host"),
    ],
)
def test_the_docker_login_goes_to_a_token_service_only_over_tls_and_on_a_declared_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, realm: str, tls: bool, insecure: bool, token_hosts: tuple[str, ...], refused: str
) -> None:
    monkeypatch.setenv("no_proxy", "*")
    server, sent, certs = _token_registry(tmp_path, realm, tls)
    try:
        host = f"127.0.0.1:{server.server_port}"
        client = RegistryClient(
            host,
            insecure=insecure,
            credentials=lambda _: {"username": "dev", "password": "s3cret"},
            certs_dir=certs,
            token_hosts=token_hosts,
        )
        if not refused:
            client.check()
            assert sent == ["Basic " + base64.b64encode(b"dev:s3cret").decode()]
            return
        with pytest.raises(RegistryAuthFailed) as e:
            client.check()
        assert refused in e.value.message and "\n" not in e.value.message and e.value.hint
        assert e.value.exit_code == EXIT_ENVIRONMENT
        assert sent == []  # the token service never saw the login
    finally:
        server.shutdown()
        server.server_close()


def _targets(target: str) -> Config:
    return parse_text(
        f"apiVersion: devloop/v1\ntargets:\n- {{name: prod, context: c, registry: reg.example.com/team, {target}}}\n",
        root=REPO,
        source="devloop.yaml",
    )


def test_declared_token_hosts_are_a_targets_setting() -> None:
    cfg = _targets("tokenHosts: [auth.example.com, 'auth2.example.com:8443']")
    assert resolve(cfg, "prod").token_hosts == ("auth.example.com", "auth2.example.com:8443")
    with pytest.raises(ConfigError, match=r"targets\[0\]\.tokenHosts\[0\]"):
        _targets("tokenHosts: ['https://auth.example.com/x']")
