"""Targets and release, without a cluster: target resolution and the refusal rules, references,
the immutability check, the rollback decision, and the registry client's authentication against
a small in-process HTTP server speaking the registry API's auth handshake."""

from __future__ import annotations

import base64
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devloop import config as config_mod
from devloop import manifests as mf
from devloop.errors import EXIT_ENVIRONMENT, EXIT_USAGE, ConfigError
from devloop.model import ImageRef
from devloop.registry_client import RegistryAuthFailed, RegistryClient, RegistryUnavailable, RemoteManifest
from devloop.release import check_version, rollback_to, version_state
from devloop.remote import Address
from devloop.targets import require_confirmed, require_context, resolve

REPO = Path(__file__).resolve().parents[2]

CONFIG = """apiVersion: devloop/v1
targets:
  - name: prod
    context: kind-devloop-remote
    registry: registry.devloop.test:5443/team
    namespace: shop
    pullSecret: regcred
"""


def load(text: str = CONFIG) -> config_mod.Config:
    return config_mod.parse_text(text, root=REPO, source="devloop.yaml")


# -- targets -------------------------------------------------------------------------------------


def test_no_target_is_the_local_kind_cluster() -> None:
    t = resolve(load(), None)
    assert (t.remote, t.context, t.registry) == (False, "kind-devloop", "")


def test_a_declared_target_is_resolved_with_everything_it_says() -> None:
    t = resolve(load(), "prod")
    assert t.remote
    assert (t.context, t.registry, t.namespace, t.pull_secret, t.insecure) == (
        "kind-devloop-remote",
        "registry.devloop.test:5443/team",
        "shop",
        "regcred",
        False,
    )


def test_an_undeclared_target_is_refused_naming_what_is_declared() -> None:
    with pytest.raises(ConfigError) as e:
        resolve(load(), "kind-devloop-remote")  # a context name is not a target
    assert e.value.exit_code == EXIT_USAGE
    assert "no target named 'kind-devloop-remote'" in e.value.message and "declared: prod" in e.value.message
    assert "never uses an undeclared context" in e.value.hint


def test_a_target_whose_context_is_not_in_the_kubeconfig_is_refused() -> None:
    t = resolve(load(), "prod")
    require_context(t, ["kind-devloop-remote", "kind-devloop"])
    with pytest.raises(ConfigError, match="no such context"):
        require_context(t, ["kind-devloop", "prod-cluster"])


def test_down_on_a_remote_target_needs_yes_and_the_local_cluster_does_not() -> None:
    with pytest.raises(ConfigError, match="needs --yes"):
        require_confirmed(resolve(load(), "prod"), "down", yes=False)
    require_confirmed(resolve(load(), "prod"), "down", yes=True)
    require_confirmed(resolve(load(), None), "down", yes=False)


@pytest.mark.parametrize(
    ("targets", "error"),
    [
        ("[{name: a, context: c, registry: 'https://r.example.com'}]", "targets[0].registry"),
        ("[{name: a, context: c, registry: r}, {name: a, context: d, registry: r}]", "two targets are named 'a'"),
        ("[{name: a, registry: r}]", "targets[0].context: required"),
        ("[{name: a, context: c, registry: r, pullsecret: x}]", "targets[0].pullsecret: unknown key"),
    ],
)
def test_bad_targets_are_usage_errors(targets: str, error: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(f"apiVersion: devloop/v1\ntargets: {targets}\n")
    assert error in e.value.message


# -- references ----------------------------------------------------------------------------------


def test_references_in_a_registry_with_a_path_and_pinned_by_digest() -> None:
    a = Address.parse("registry.devloop.test:5443/team/apps")
    assert (a.host, a.path, a.repository("web")) == ("registry.devloop.test:5443", "team/apps", "team/apps/web")
    ref = ImageRef("web", "v1.0.0", str(a), "sha256:" + "a" * 64)
    assert ref.cluster == f"registry.devloop.test:5443/team/apps/web:v1.0.0@sha256:{'a' * 64}"
    assert ref.local == "web:v1.0.0"
    assert str(ImageRef("web", "v1.0.0", "r:5000")) == "r:5000/web:v1.0.0"


def test_a_release_applies_the_manifests_pull_policy_and_adds_the_pull_secret_once() -> None:
    doc = {
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "template": {
                "spec": {
                    "imagePullSecrets": [{"name": "regcred"}],
                    "containers": [{"name": "web", "image": "web:latest", "imagePullPolicy": "Always"}],
                }
            }
        },
    }
    pinned = "r:5443/web:v1.0.0@sha256:" + "b" * 64
    (out,) = mf.rewrite([mf.Manifest("x.yaml", doc)], "web", pinned, pull_policy=None, version="v1.0.0", pull_secret="regcred")
    pod = out.doc["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["image"] == pinned and c["imagePullPolicy"] == "Always"
    assert {"name": "DEVLOOP_IMAGE_TAG", "value": "v1.0.0"} in c["env"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    (other,) = mf.rewrite([mf.Manifest("x.yaml", doc)], "web", pinned, pull_policy=None, pull_secret="other")
    assert other.doc["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "regcred"}, {"name": "other"}]
    assert {"name": "DEVLOOP_IMAGE_TAG", "value": "v1.0.0"} in other.doc["spec"]["template"]["spec"]["containers"][0]["env"]


@pytest.mark.parametrize("bad", ["", "v1 0", "-v1", "dl-0123456789abcdef", "x" * 129, "v1/2"])
def test_a_release_version_must_be_a_tag_and_not_a_content_tag(bad: str) -> None:
    with pytest.raises(ConfigError):
        check_version(bad)
    check_version("v1.0.0")


# -- immutability and rollback -------------------------------------------------------------------


def test_a_version_is_new_the_same_content_or_taken() -> None:
    there = RemoteManifest("sha256:m1", "sha256:config1", 100)
    assert version_state(None, "sha256:config1") == "new"
    assert version_state(there, "sha256:config1") == "same"
    assert version_state(there, "sha256:config2") == "taken"


def test_rollback_goes_to_the_revision_and_image_that_ran_before() -> None:
    before = {
        "metadata": {"annotations": {"deployment.kubernetes.io/revision": "4"}},
        "spec": {"template": {"spec": {"containers": [{"name": "sidecar", "image": "envoy:1"}, {"name": "web", "image": "r/web:v1@sha"}]}}},
    }
    assert rollback_to(before, {"web"}) == ("4", "r/web:v1@sha")
    assert rollback_to(None, {"web"}) is None  # first release: nothing to go back to
    assert rollback_to({"metadata": {}, "spec": before["spec"]}, {"web"}) is None  # no revision known


# -- the registry client -------------------------------------------------------------------------


class _Registry(http.server.BaseHTTPRequestHandler):
    """/v2/ behind Basic or Bearer auth, one manifest, as Docker Distribution answers."""

    scheme = "basic"
    user, password = "dev", "s3cret"
    token = "tok-123"

    def log_message(self, *args: Any) -> None:
        pass

    def _authorized(self) -> bool:
        got = self.headers.get("Authorization", "")
        if self.scheme == "basic":
            return got == "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        return got == f"Bearer {self.token}"

    def do_GET(self) -> None:
        if self.path.startswith("/token"):
            ok = self.headers.get("Authorization") == "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
            self._send(200 if ok else 401, {"token": self.token} if ok else {})
            return
        if not self._authorized():
            assert isinstance(self.server, http.server.HTTPServer)
            realm = (
                'Basic realm="registry"'
                if self.scheme == "basic"
                else f'Bearer realm="http://127.0.0.1:{self.server.server_port}/token",service="reg"'
            )
            self._send(401, {"errors": [{"code": "UNAUTHORIZED"}]}, {"WWW-Authenticate": realm})
            return
        if self.path == "/v2/":
            self._send(200, {})
        elif self.path == "/v2/team/web/manifests/v1.0.0":
            body = {"config": {"digest": "sha256:cfg"}, "layers": [{"size": 10}, {"size": 32}]}
            self._send(200, body, {"Docker-Content-Digest": "sha256:man"})
        else:
            self._send(404, {"errors": [{"code": "MANIFEST_UNKNOWN"}]})

    def _send(self, code: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(params=["basic", "bearer"])
def registry(request: pytest.FixtureRequest) -> Iterator[str]:
    handler = type("Handler", (_Registry,), {"scheme": request.param})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}/team"
    server.shutdown()
    server.server_close()


def client(address: str, user: str | None = "dev", password: str = "s3cret") -> RegistryClient:
    creds = {"username": user, "password": password} if user else None
    return RegistryClient(Address.parse(address).host, insecure=True, credentials=lambda host: creds)


def test_the_registry_client_logs_in_and_reads_a_manifest(registry: str) -> None:
    c = client(registry)
    c.check()
    assert c.manifest("team/web", "v1.0.0") == RemoteManifest("sha256:man", "sha256:cfg", 42)
    assert c.manifest("team/web", "v9") is None


def test_a_wrong_password_is_an_environment_error_with_a_docker_login_hint(registry: str) -> None:
    with pytest.raises(RegistryAuthFailed) as e:
        client(registry, password="wrong").check()
    assert e.value.exit_code == EXIT_ENVIRONMENT
    assert "refused the credentials of user 'dev'" in e.value.message
    assert "wrong" not in e.value.message + e.value.hint  # never print a secret
    assert "docker login" in e.value.hint


def test_no_credentials_at_all_says_to_log_in(registry: str) -> None:
    with pytest.raises(RegistryAuthFailed, match="needs a login"):
        client(registry, user=None).check()


def test_a_registry_that_does_not_answer_is_a_clear_environment_error() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    with pytest.raises(RegistryUnavailable) as e:
        client(f"127.0.0.1:{port}").check()
    assert f"registry 127.0.0.1:{port} does not answer" in e.value.message
    assert "nothing was pushed or deployed" in e.value.hint


# -- the engine on a remote target -----------------------------------------------------------------


def remote_engine(tmp_path: Path, namespace: str | None = "shop", secret: str | None = "regcred") -> tuple[Any, Any]:
    import io
    import shutil

    from devloop.output import Output
    from devloop.targets import TargetSpec
    from devloop.targets.remote import RemoteTarget
    from tests.unit.fakes import FakeCluster, FakeDocker, FakePublisher, make_engine

    shutil.copytree(REPO / "sample-app", tmp_path / "sample-app", ignore=shutil.ignore_patterns("node_modules"))
    shutil.copy(REPO / "kind-config.yaml", tmp_path / "kind-config.yaml")
    cluster = FakeCluster("kind-devloop-remote")
    docker = FakeDocker()
    out = Output(json_mode=True, stdout=io.StringIO())
    spec = TargetSpec("prod", "kind-devloop-remote", "r.example:5443/team", namespace, secret, remote=True)
    target = RemoteTarget(spec, kube=cluster, publisher=FakePublisher(), registry_host="r.example:5443", out=out)
    engine = make_engine(config_mod.load(None, tmp_path), out, images=docker, kube=cluster, publisher=target.publisher, target=target)
    return engine, cluster


def test_on_a_remote_target_the_manifests_keep_their_pull_policy_and_run_in_the_targets_namespace(tmp_path: Path) -> None:

    engine, _cluster = remote_engine(tmp_path)
    svc = engine.services[0]
    deployed = engine.manifests(svc)
    assert deployed.namespace == "shop"
    rendered = engine.render(svc, deployed, ImageRef("my-web-app", "v1", "r.example:5443/team", "sha256:x"))
    dep = next(d for d in rendered if d["kind"] == "Deployment")
    pod = dep["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "r.example:5443/team/my-web-app:v1@sha256:x"
    assert "imagePullPolicy" not in pod["containers"][0]  # the sample's manifest says none: the cluster's default applies
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]


def test_a_missing_pull_secret_is_named_with_the_command_that_creates_it(tmp_path: Path) -> None:
    engine, _cluster = remote_engine(tmp_path)
    with pytest.raises(ConfigError) as e:
        engine.target.require_pull_secret({"shop"})
    assert "no secret 'regcred' in namespace shop" in e.value.message
    assert "create secret docker-registry regcred --docker-server=r.example:5443" in e.value.hint


def test_a_remote_target_is_never_created_and_its_context_must_exist(tmp_path: Path) -> None:
    engine, cluster = remote_engine(tmp_path)
    assert engine.target.ensure() is False  # checked, not created
    cluster.context = "something-else"  # the kubeconfig no longer has the target's context
    with pytest.raises(ConfigError, match="no such context"):
        engine.target.ensure()


@pytest.mark.parametrize(
    ("words", "error", "hint"),
    [
        ("unauthorized: authentication required", RegistryAuthFailed, "run `docker login r.example:5443`"),
        ("x509: certificate signed by unknown authority", RegistryUnavailable, "/etc/docker/certs.d/r.example:5443/ca.crt"),
        ("dial tcp: connection refused", RegistryUnavailable, "check that the registry runs"),
    ],
)
def test_a_refused_push_names_the_registry_host_and_the_fix(words: str, error: type[Exception], hint: str) -> None:
    from devloop.remote import _push_error

    e = _push_error("r.example:5443/team/web:v1.0.0", words)
    assert isinstance(e, error)
    assert hint in e.hint
    assert "push of r.example:5443/team/web:v1.0.0" in e.message
