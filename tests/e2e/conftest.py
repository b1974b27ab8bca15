"""End-to-end harness: a real kind cluster, real kubectl, the real `devloop` CLI.

What it needs, and where it comes from:
- kind: on PATH, else the pinned one tests/e2e/kind/install-kind.sh puts in ~/.cache/devloop-e2e/bin.
- helm (test_helm.py only): on PATH, else the pinned one tests/e2e/kind/install-helm.sh builds there.
- the kind node image: DEVLOOP_E2E_KIND_IMAGE (e.g. kindest/node:v1.34.0 on a laptop), else the
  offline image tests/e2e/kind/build-node-image.sh builds from Debian packages and Go modules.
- the Node.js base for the sample: DEVLOOP_TEST_NODE_BASE (e.g. node:24-alpine on a laptop),
  else devloop-test/node-base:bookworm from tests/images/build-node-base.sh.
- the local registry image: DEVLOOP_TEST_REGISTRY_IMAGE (registry:2 on a laptop), else
  devloop-test/registry:bookworm from tests/images/build-registry.sh (Debian's docker-registry).
- the Prometheus image for monitoring: DEVLOOP_TEST_PROMETHEUS_IMAGE (prom/prometheus on a laptop),
  else devloop-test/prometheus:bookworm from tests/images/build-prometheus.sh (Debian's prometheus).
- hosts that refuse `docker run --privileged` (this CI) get tests/e2e/kind/bin/docker first on
  PATH, for the devloop process only: it rewrites kind's --privileged. Detected, or forced with
  DEVLOOP_E2E_DOCKER_WRAPPER=1/0. The product never knows.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import docker
import pytest

REPO = Path(__file__).resolve().parents[2]
KIND_DIR = REPO / "tests" / "e2e" / "kind"
CACHE = Path(os.environ.get("DEVLOOP_CACHE", Path.home() / ".cache" / "devloop-e2e"))
CLUSTER = "devloop-e2e"
CONTEXT = f"kind-{CLUSTER}"
HERE = Path(__file__).resolve().parent
LAST_SHARED = pytest.StashKey[Path | None]()


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """The modules marked `shared_cluster` run one after the other, after this directory's other modules
    (which make and delete clusters of their own), the one marked `first=True` first: each leaves the
    cluster devloop-e2e up for the next (`leave_cluster`), and only the last deletes it. A kind cluster
    made once instead of once per module saves about 45 s per module on 2 cores; between modules, `devloop
    down` removes the module's workloads, and every module's `up` wires the registry into the node again."""
    here = [n for n, item in enumerate(items) if Path(item.path).resolve().parent == HERE]

    def rank(n: int) -> tuple[int, int]:
        mark = items[n].get_closest_marker("shared_cluster")
        return (0 if mark is None else 1 if mark.kwargs.get("first") else 2), n

    ordered = [items[n] for n in sorted(here, key=rank)]
    for n, item in zip(here, ordered, strict=True):
        items[n] = item
    shared = [item for item in ordered if item.get_closest_marker("shared_cluster")]
    config.stash[LAST_SHARED] = Path(shared[-1].path).resolve() if shared else None


def _needs_wrapper(node_base: str) -> bool:
    forced = os.environ.get("DEVLOOP_E2E_DOCKER_WRAPPER")
    if forced in ("0", "1"):
        return forced == "1"
    client = docker.from_env()
    probe = client.containers.create(node_base, ["true"], privileged=True)
    try:
        probe.start()
        return False
    except docker.errors.APIError as e:
        if "operation not permitted" in str(e) or "caps" in str(e):
            return True
        raise
    finally:
        probe.remove(force=True)  # a container that failed to start is not removed by itself


@dataclass
class Harness:
    env: dict[str, str]
    kind_image: str
    node_base: str
    kubectl: str
    registry_image: str
    context: str = CONTEXT
    prometheus_image: str = "devloop-test/prometheus:bookworm"

    def kubectl_json(self, *args: str) -> dict[str, Any]:
        out = subprocess.run(
            [self.kubectl, "--context", self.context, *args, "-o", "json"], env=self.env, capture_output=True, text=True, check=True
        )
        return dict(json.loads(out.stdout))

    def kubectl_run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.kubectl, "--context", self.context, *args], env=self.env, capture_output=True, text=True, check=check, timeout=120
        )

    def kind_clusters(self) -> list[str]:
        out = subprocess.run(["kind", "get", "clusters"], env=self.env, capture_output=True, text=True, check=True)
        return out.stdout.split()


@pytest.fixture(scope="session")
def harness() -> Harness:
    return make_harness()


def make_harness() -> Harness:
    """Everything the e2e tests (and benchmarks/) need, installed or built when missing."""
    env = dict(os.environ)
    node_base = os.environ.get("DEVLOOP_TEST_NODE_BASE", "devloop-test/node-base:bookworm")
    if node_base == "devloop-test/node-base:bookworm":
        subprocess.run(["bash", str(REPO / "tests" / "images" / "build-node-base.sh")], check=True)
    registry_image = os.environ.get("DEVLOOP_TEST_REGISTRY_IMAGE", "devloop-test/registry:bookworm")
    if registry_image == "devloop-test/registry:bookworm":
        subprocess.run(["bash", str(REPO / "tests" / "images" / "build-registry.sh")], check=True, stdout=subprocess.DEVNULL)
    prometheus_image = os.environ.get("DEVLOOP_TEST_PROMETHEUS_IMAGE", "devloop-test/prometheus:bookworm")
    if prometheus_image == "devloop-test/prometheus:bookworm":
        subprocess.run(["bash", str(REPO / "tests" / "images" / "build-prometheus.sh")], check=True, stdout=subprocess.DEVNULL)
    kind_image = os.environ.get("DEVLOOP_E2E_KIND_IMAGE", "")
    path = [str(CACHE / "bin")]
    if shutil.which("kind") is None or not kind_image:
        subprocess.run(["bash", str(KIND_DIR / "install-kind.sh")], check=True, stdout=subprocess.DEVNULL)
    if not kind_image:
        subprocess.run(["bash", str(KIND_DIR / "build-node-image.sh")], check=True)
        kind_image = (KIND_DIR / "NODE_IMAGE").read_text().strip()
    if _needs_wrapper(node_base):
        path.insert(0, str(KIND_DIR / "bin"))
    env["PATH"] = os.pathsep.join([*path, env["PATH"]])
    kubectl = shutil.which("kubectl", path=env["PATH"])
    assert kubectl, "kubectl is needed for the e2e tests"
    return Harness(
        env=env,
        kind_image=kind_image,
        node_base=node_base,
        kubectl=kubectl,
        registry_image=registry_image,
        prometheus_image=prometheus_image,
    )


def pump_json_lines(stream: IO[str], into: queue.Queue[dict[str, Any]], raw: list[str] | None = None) -> None:
    """A daemon thread that puts every JSON line of `stream` into `into` (and keeps the raw lines)."""

    def pump() -> None:
        for line in stream:
            if raw is not None:
                raw.append(line)
            with contextlib.suppress(ValueError):
                into.put(json.loads(line))

    threading.Thread(target=pump, daemon=True).start()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def project(harness: Harness, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the sample app and the repo's kind-config.yaml, as a user's project."""
    root = tmp_path_factory.mktemp("e2e") / "proj"
    shutil.copytree(REPO / "sample-app", root / "sample-app", ignore=shutil.ignore_patterns("node_modules"))
    shutil.copy(REPO / "kind-config.yaml", root / "kind-config.yaml")
    (root / "devloop.yaml").write_text(
        "apiVersion: devloop/v1\n"
        f"cluster:\n  name: {CLUSTER}\n  nodeImage: {harness.kind_image}\n"
        f"image:\n  buildArgs:\n    NODE_IMAGE: {harness.node_base}\n"
        f"registry:\n  image: {harness.registry_image}\n"
        # the loop's own tests: no Prometheus and no page beside it on 2 cores (test_dashboard.py covers both)
        f"monitoring:\n  enabled: false\n  image: {harness.prometheus_image}\n"
        "dashboard:\n  enabled: false\n"
        f"portForward:\n  localPort: {free_port()}\n"
        "deploy:\n  rolloutTimeout: 240\n"
    )
    return root


def devloop_argv(*args: str) -> list[str]:
    return [str(Path(shutil.which("devloop") or "devloop")), "--json", *args]


@dataclass
class Devloop:
    """A running `devloop --json ...` process and the events it printed."""

    proc: subprocess.Popen[str]
    events: queue.Queue[dict[str, Any]] = field(default_factory=queue.Queue)
    seen: list[dict[str, Any]] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)

    def start_reader(self) -> None:
        assert self.proc.stdout is not None
        pump_json_lines(self.proc.stdout, self.events, self.raw)

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or (self.proc.poll() is not None and self.events.empty()):
                tail = "".join(self.raw[-25:])
                raise AssertionError(f"timed out waiting for {what}; devloop exit={self.proc.poll()}; last output:\n{tail}")
            try:
                event = self.events.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            self.seen.append(event)
            if predicate(event):
                return event

    def interrupt(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            # still running: its threads' stacks (devloop prints them on SIGUSR2) say where it is stuck
            self.proc.send_signal(signal.SIGUSR2)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not any("most recent call first" in line for line in self.raw[-400:]):
                threading.Event().wait(0.1)
            tail = "".join(self.raw[-400:])
            self.proc.kill()
            raise AssertionError(f"devloop did not stop within {timeout:.0f}s of Ctrl-C; its threads:\n{tail}") from None


def start_devloop(harness: Harness, cwd: Path, *args: str) -> Devloop:
    """`devloop --json ARGS` running in `cwd`, its events pumped into a queue."""
    proc = subprocess.Popen(
        devloop_argv(*args), cwd=cwd, env=harness.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    d = Devloop(proc)
    d.start_reader()
    return d


@contextlib.contextmanager
def devloops(harness: Harness, cwd: Path) -> Iterator[Callable[..., Devloop]]:
    """Start devloop processes in `cwd`; whatever still runs at the end is killed."""
    started: list[Devloop] = []

    def start(*args: str) -> Devloop:
        started.append(start_devloop(harness, cwd, *args))
        return started[-1]

    try:
        yield start
    finally:
        for d in started:
            if d.proc.poll() is None:
                d.proc.kill()
                d.proc.wait()


@pytest.fixture
def run_devloop(harness: Harness, project: Path) -> Iterator[Callable[..., Devloop]]:
    with devloops(harness, project) as start:
        yield start


T = TypeVar("T")


def poll(what: str, timeout: float, check: Callable[[], T | None], interval: float = 1.0) -> T:
    """Wait for a real cluster: `check()` until it returns something, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            got = check()
        except Exception as e:  # the API server or Prometheus not answering yet
            got, last = None, e
        if got is not None:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last error: {last!r}")
        time.sleep(interval)  # polling a real cluster with a deadline, not synchronising threads


def run_cli(harness: Harness, project: Path, *args: str, timeout: float = 900) -> tuple[int, list[dict[str, Any]], str]:
    p = subprocess.run(devloop_argv(*args), cwd=project, env=harness.env, capture_output=True, text=True, timeout=timeout)
    events = []
    for line in p.stdout.splitlines():
        with contextlib.suppress(ValueError):
            events.append(json.loads(line))
    return p.returncode, events, p.stdout + p.stderr


def leave_cluster(harness: Harness, project: Path, request: pytest.FixtureRequest) -> None:
    """A `shared_cluster` module's end: `devloop down` removes what its project applied; the last such
    module of the run (or one run alone) deletes the cluster too. DEVLOOP_E2E_KEEP_CLUSTER=1 keeps it all."""
    if os.environ.get("DEVLOOP_E2E_KEEP_CLUSTER") == "1" or CLUSTER not in harness.kind_clusters():
        return
    last = request.config.stash.get(LAST_SHARED, None) == Path(str(request.module.__file__)).resolve()
    code, _events, output = run_cli(harness, project, "down", *(["--cluster"] if last else []))
    if code != 0 and not last:  # a cluster left in an unknown state: the next module starts from nothing
        print(f"devloop down failed (exit {code}); deleting the cluster:\n{output[-2000:]}")
        run_cli(harness, project, "down", "--cluster")


@pytest.fixture(scope="module")
def sample_up(harness: Harness, project: Path, request: pytest.FixtureRequest) -> Iterator[None]:
    """The sample up (`devloop up`) for a whole `shared_cluster` module, which asks for it with
    `pytest.mark.usefixtures("sample_up")`; at the module's end, `leave_cluster`."""
    code, _events, output = run_cli(harness, project, "up")
    assert code == 0, output
    yield
    leave_cluster(harness, project, request)


def children_of_cluster() -> list[str]:
    """Processes still running that devloop would have started for the e2e cluster."""
    # kubectl names the context; kind (`kind load ... --name devloop-e2e`) the cluster
    return running_processes(lambda cmd: ("kubectl" in cmd and CONTEXT in cmd) or ("kind " in cmd and f"--name {CLUSTER}" in cmd))


def running_processes(match: Callable[[str], bool]) -> list[str]:
    """ "pid: command line" of every running (not zombie) process whose command line `match`es."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = (Path("/proc") / pid / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (Path("/proc") / pid / "stat").read_text().split()[2]
        except OSError:
            continue
        if state != "Z" and match(cmd):
            found.append(f"{pid}: {cmd.strip()}")
    return found
