"""`devloop doctor`: which kind/kubectl it uses, and the local-registry check, with small fakes."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from devloop import doctor as doctor_mod
from devloop.config import RegistryConfig
from devloop.doctor import Check, registry_check, tool_check
from devloop.errors import DockerUnavailable
from devloop.images import Images
from devloop.registry import LocalRegistry, Problem
from tests.unit.fakes import FakeCluster, FakeKind

HOSTS_TOML = "/etc/containerd/certs.d/localhost:5001/hosts.toml"
WIRED = '[host."http://devloop-registry:5000"]\n'


# -- fakes ----------------------------------------------------------------------------------------
@dataclass
class ExecResult:
    exit_code: int
    output: bytes


@dataclass
class FakeContainer:
    status: str = "running"
    networks: tuple[str, ...] = ("kind",)
    host_port: str | None = "5001"
    files: dict[str, str] = field(default_factory=dict)
    execs: list[list[str]] = field(default_factory=list)

    @property
    def attrs(self) -> dict[str, Any]:
        bindings = {"5000/tcp": [{"HostIp": "127.0.0.1", "HostPort": self.host_port}]} if self.host_port else {}
        return {"NetworkSettings": {"Networks": {n: {} for n in self.networks}}, "HostConfig": {"PortBindings": bindings}}

    def exec_run(self, argv: list[str]) -> ExecResult:
        self.execs.append(argv)
        assert argv[0] == "cat", f"doctor must only look: {argv}"
        if argv[1] in self.files:
            return ExecResult(0, self.files[argv[1]].encode())
        return ExecResult(1, b"cat: no such file")

    def start(self) -> None:
        raise AssertionError("doctor must not start anything")


@dataclass
class FakeContainers:
    by_name: dict[str, FakeContainer]

    def get(self, name: str) -> FakeContainer:
        if name not in self.by_name:
            raise docker.errors.NotFound(f"No such container: {name}")
        return self.by_name[name]


class FakeClient:
    """The docker SDK's client, as far as doctor and the registry checks use it: the engine's
    version and containers; a daemon that is down does not answer its ping."""

    def __init__(self, containers: dict[str, FakeContainer], up: bool) -> None:
        self.containers = FakeContainers(containers)
        self.up = up

    def ping(self) -> bool:
        if not self.up:
            raise docker.errors.DockerException("Error while fetching server API version: fake")
        return True

    def version(self) -> dict[str, str]:
        return {"Version": "27.5.1"}


def docker_engine(containers: dict[str, FakeContainer] | None = None, *, up: bool = True) -> Images:
    """The Images adapter over a fake docker client."""
    return Images(lambda: FakeClient(containers or {}, up))


class KindWithVersion(FakeKind):
    """kind as doctor asks it: also its version; its clusters have these nodes."""

    def __init__(self, clusters: Sequence[str] = ("devloop",), node_names: Sequence[str] = ("devloop-control-plane",)) -> None:
        super().__init__(clusters)
        self.node_names = list(node_names)

    def version(self) -> str:
        return "kind v0.30.0 go1.24.6 linux/amd64"

    def nodes(self, name: str) -> list[str]:
        return list(self.node_names)


class KubeWithVersion(FakeCluster):
    """The cluster as doctor asks it: also kubectl's client version; it answers unless `up` is False."""

    def __init__(self, context: str, up: bool = True) -> None:
        super().__init__(context)
        self.up = up

    def client_version(self) -> str:
        return "v1.34.4"

    def reachable(self) -> bool:
        return self.up


@dataclass
class FakeProbe:
    found: list[Problem] = field(default_factory=list)
    asked: list[list[str]] = field(default_factory=list)

    def problems(self, nodes: Sequence[str]) -> list[Problem]:
        self.asked.append(list(nodes))
        return self.found


def healthy_containers() -> dict[str, FakeContainer]:
    return {"devloop-registry": FakeContainer(), "devloop-control-plane": FakeContainer(networks=("kind",), files={HOSTS_TOML: WIRED})}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DEVLOOP_CACHE_DIR", str(tmp_path / "devloop-cache"))
    monkeypatch.setenv("PATH", str(tmp_path / "user-bin"))
    return tmp_path / "devloop-cache" / "bin"


def registry(containers: dict[str, FakeContainer], monkeypatch: pytest.MonkeyPatch, *, answers: str | None = None) -> LocalRegistry:
    reg = LocalRegistry(RegistryConfig(), docker_engine(containers), FakeCluster("kind-devloop"))
    monkeypatch.setattr(reg, "answers", lambda: answers)
    return reg


def run_doctor(
    root: Path,
    *,
    which: dict[str, str | None] | None = None,
    probe: FakeProbe | None = None,
    images: Images | None = None,
    kind: KindWithVersion | None = None,
    helm_version: Callable[[], str] = lambda: "v3.19.0",
) -> dict[str, Check]:
    checks = doctor_mod.doctor(
        None,
        root,
        images or docker_engine(),
        kind or KindWithVersion(),  # type: ignore[arg-type]  # doctor takes the concrete Kind, not a Protocol
        lambda ctx: KubeWithVersion(ctx),  # type: ignore[arg-type,return-value]  # and the concrete ApiCluster
        which=lambda: which if which is not None else {"kind": "/usr/local/bin/kind", "kubectl": "/usr/bin/kubectl"},
        make_registry=lambda cfg, images, kube: probe or FakeProbe(),
        helm_version=helm_version,
    )
    return {c.name: c for c in checks}


# -- kind and kubectl: which binary --------------------------------------------------------------
def test_tool_check_names_the_users_binary() -> None:
    c = tool_check("kind", "/usr/local/bin/kind", lambda: "kind v0.30.0")
    assert c.ok and c.detail == "kind v0.30.0 (/usr/local/bin/kind, yours)"


def test_tool_check_names_devloops_copy(private_cache: Path) -> None:
    c = tool_check("kubectl", str(private_cache / "kubectl"), lambda: "client v1.34.4")
    assert c.ok and c.detail == f"client v1.34.4 ({private_cache / 'kubectl'}, devloop's copy)"


def test_tool_check_missing_tool_says_devloop_up_fetches_it(private_cache: Path) -> None:
    c = tool_check("kind", None, lambda: pytest.fail("must not run a missing tool"))
    assert not c.ok
    assert "not on PATH" in c.detail
    assert "`devloop up` downloads kind v0.30.0" in c.fix and str(private_cache) in c.fix
    assert "go install sigs.k8s.io/kind" in c.fix


def test_doctor_shows_the_kind_and_kubectl_paths(sample_copy: Path) -> None:
    checks = run_doctor(sample_copy)
    assert checks["kind"].detail == "kind v0.30.0 go1.24.6 linux/amd64 (/usr/local/bin/kind, yours)"
    assert checks["kubectl"].detail == "client v1.34.4 (/usr/bin/kubectl, yours)"


def test_doctor_uses_devloops_copy_when_that_is_all_there_is(sample_copy: Path, private_cache: Path, tmp_path: Path) -> None:
    checks = run_doctor(sample_copy, which={"kind": str(private_cache / "kind"), "kubectl": "/usr/bin/kubectl"})
    assert checks["kind"].ok and "devloop's copy" in checks["kind"].detail
    # so that `kind version` finds it, after every entry of the user's PATH
    assert os.environ["PATH"].split(os.pathsep) == [str(tmp_path / "user-bin"), str(private_cache)]


def test_doctor_leaves_path_alone_without_devloops_copies(sample_copy: Path, tmp_path: Path) -> None:
    run_doctor(sample_copy)
    assert os.environ["PATH"] == str(tmp_path / "user-bin")


def test_doctor_reports_missing_tools_and_skips_the_cluster(sample_copy: Path) -> None:
    checks = run_doctor(sample_copy, which={"kind": None, "kubectl": None})
    assert not checks["kind"].ok and not checks["kubectl"].ok
    assert checks["kind"].fix and checks["kubectl"].fix
    assert "cluster" not in checks


def with_a_chart(root: Path) -> Path:
    (root / "chart").mkdir()
    (root / "chart" / "Chart.yaml").write_text("apiVersion: v2\nname: web\nversion: 0.1.0\n")
    (root / "devloop.yaml").write_text(
        "apiVersion: devloop/v2\nservices:\n  - name: web\n    image: {name: my-web-app, context: sample-app}\n"
        "    deploy: {deployment: web, helm: {chart: chart}}\n"
    )
    return root


def test_doctor_checks_helm_only_for_a_project_with_a_chart(sample_copy: Path) -> None:
    assert "helm" not in run_doctor(sample_copy, helm_version=lambda: pytest.fail("no chart: helm is not asked"))
    checks = run_doctor(
        with_a_chart(sample_copy), which={"kind": "/usr/local/bin/kind", "kubectl": "/usr/bin/kubectl", "helm": "/usr/bin/helm"}
    )
    assert checks["config"].ok, checks["config"]
    assert checks["helm"].ok and checks["helm"].detail == "v3.19.0 (/usr/bin/helm, yours)"


def test_doctor_says_devloop_up_fetches_a_missing_helm(sample_copy: Path, private_cache: Path) -> None:
    checks = run_doctor(with_a_chart(sample_copy), helm_version=lambda: pytest.fail("must not run a missing tool"))
    assert not checks["helm"].ok and "`helm` is not on PATH" in checks["helm"].detail
    assert "`devloop up` downloads helm v3.19.0" in checks["helm"].fix


# -- registry: wiring into doctor ----------------------------------------------------------------
def test_doctor_checks_the_registry_on_every_node_when_enabled(sample_copy: Path) -> None:
    probe = FakeProbe()
    checks = run_doctor(sample_copy, probe=probe, kind=KindWithVersion(node_names=["devloop-control-plane", "devloop-worker"]))
    assert probe.asked == [["devloop-control-plane", "devloop-worker"]]
    assert checks["registry"].ok
    assert "devloop-registry" in checks["registry"].detail and "2 node(s)" in checks["registry"].detail
    assert "127.0.0.1:5001" in checks["registry"].detail


def test_doctor_registry_check_without_a_cluster_checks_no_nodes(sample_copy: Path) -> None:
    probe = FakeProbe()
    checks = run_doctor(sample_copy, probe=probe, kind=KindWithVersion(clusters=[]))
    assert probe.asked == [[]]
    assert checks["registry"].ok and "nodes not checked" in checks["registry"].detail


def test_doctor_registry_problems_become_one_failed_check_with_fixes(sample_copy: Path) -> None:
    probe = FakeProbe(
        [
            Problem("the registry container devloop-registry is exited, not running", "docker start devloop-registry"),
            Problem("kind node devloop-control-plane has no hosts.toml", "devloop up"),
            Problem("kind node devloop-worker has no hosts.toml", "devloop up"),
        ]
    )
    c = run_doctor(sample_copy, probe=probe)["registry"]
    assert not c.ok
    assert "exited, not running" in c.detail and "devloop-worker" in c.detail
    assert c.fix == "docker start devloop-registry && devloop up"


def test_no_registry_check_when_the_registry_is_disabled(sample_copy: Path) -> None:
    (sample_copy / "kind-config.yaml").write_text("kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\nname: devloop\n")
    probe = FakeProbe()
    checks = run_doctor(sample_copy, probe=probe)
    assert checks["config"].ok
    assert "registry" not in checks and probe.asked == []


def test_no_registry_check_when_docker_is_down(sample_copy: Path) -> None:
    probe = FakeProbe()
    checks = run_doctor(sample_copy, probe=probe, images=docker_engine(up=False))
    assert not checks["docker"].ok
    assert "registry" not in checks and probe.asked == []


def test_registry_check_turns_a_docker_error_into_a_failed_check() -> None:
    class Broken:
        def problems(self, nodes: Sequence[str]) -> list[Problem]:
            raise DockerUnavailable("cannot reach the Docker daemon: gone", "start it")

    c = registry_check(RegistryConfig(), Broken(), ["n"])
    assert not c.ok and c.detail == "cannot reach the Docker daemon: gone" and c.fix == "start it"


# -- registry: LocalRegistry.problems against a fake docker ---------------------------------------
def test_a_healthy_registry_has_no_problems(monkeypatch: pytest.MonkeyPatch) -> None:
    containers = healthy_containers()
    assert registry(containers, monkeypatch).problems(["devloop-control-plane"]) == []
    assert containers["devloop-control-plane"].execs == [["cat", HOSTS_TOML]]


def test_a_missing_registry_container_is_fixed_by_devloop_up(monkeypatch: pytest.MonkeyPatch) -> None:
    containers = healthy_containers()
    del containers["devloop-registry"]
    assert registry(containers, monkeypatch).problems(["devloop-control-plane"]) == [
        Problem("the registry container devloop-registry does not exist", "devloop up")
    ]


def test_a_stopped_registry_is_fixed_by_docker_start(monkeypatch: pytest.MonkeyPatch) -> None:
    containers = healthy_containers()
    containers["devloop-registry"].status = "exited"
    reg = registry(containers, monkeypatch, answers="[Errno 111] Connection refused")
    problems = reg.problems(["devloop-control-plane"])
    # no /v2/ complaint on top: a stopped registry cannot answer
    assert problems == [Problem("the registry container devloop-registry is exited, not running", "docker start devloop-registry")]


def test_a_registry_off_the_kind_network_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    containers = healthy_containers()
    containers["devloop-registry"].networks = ("bridge",)
    (problem,) = registry(containers, monkeypatch).problems(["devloop-control-plane"])
    assert "not on the 'kind' docker network" in problem.message and problem.fix == "devloop up"


def test_a_node_without_hosts_toml_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    containers = healthy_containers()
    containers["devloop-worker"] = FakeContainer()
    (problem,) = registry(containers, monkeypatch).problems(["devloop-control-plane", "devloop-worker"])
    assert problem == Problem(f"kind node devloop-worker has no {HOSTS_TOML} (containerd does not know the registry)", "devloop up")


def test_a_node_pointing_elsewhere_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    containers = healthy_containers()
    containers["devloop-control-plane"].files[HOSTS_TOML] = '[host."http://old-registry:5000"]\n'
    (problem,) = registry(containers, monkeypatch).problems(["devloop-control-plane"])
    assert "does not point at http://devloop-registry:5000" in problem.message


def test_a_stopped_node_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    containers = healthy_containers()
    containers["devloop-control-plane"].status = "exited"
    (problem,) = registry(containers, monkeypatch).problems(["devloop-control-plane"])
    assert problem == Problem("kind node devloop-control-plane is exited", "docker start devloop-control-plane")


def test_a_registry_on_another_port_is_recreated(monkeypatch: pytest.MonkeyPatch) -> None:
    containers = healthy_containers()
    containers["devloop-registry"].host_port = "5050"
    (problem,) = registry(containers, monkeypatch).problems(["devloop-control-plane"])
    assert "publishes port 5050, registry.hostPort is 5001" in problem.message
    assert problem.fix == "docker rm -f devloop-registry && devloop up"


def test_a_registry_that_does_not_answer_v2_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    (problem,) = registry(healthy_containers(), monkeypatch, answers="HTTP 503").problems([])
    assert problem.message == "the registry does not answer GET http://127.0.0.1:5001/v2/: HTTP 503"
    assert problem.fix == "docker restart devloop-registry"


def test_answers_probes_v2_on_the_host_port() -> None:
    import http.server
    import threading

    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        up = LocalRegistry(RegistryConfig(host_port=httpd.server_port), docker_engine(), FakeCluster("x"))
        assert up.answers() is None
        assert seen == ["/v2/"]
    finally:
        httpd.shutdown()
        httpd.server_close()
    down = LocalRegistry(RegistryConfig(host_port=closed_port()), docker_engine(), FakeCluster("x"))
    assert down.answers() is not None
