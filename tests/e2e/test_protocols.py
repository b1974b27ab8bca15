"""Non-HTTP services in hardened pods (issue 19), on the shared kind cluster through the real CLI.

Two services, each in a pod with `readOnlyRootFilesystem: true` and `runAsUser: 1000`: a Node `net`
echo server (no HTTP at all) whose Service port is named `tcp-echo`, with live update on; and a
gRPC server (@grpc/grpc-js, installed with the host's npm: tests/e2e/grpc/) with a `grpc:`
readiness probe, whose Service port is named `grpc`:

- `up` checks each forward by what its port speaks (TCP; the HTTP/2 preface for gRPC): each answers
  at once, with no HTTP retries and no "did not answer" warning; `dev` reports them so while a TCP
  client gets echoes and a gRPC client gets `SERVING` through them;
- devloop reads the pod spec: it says once, before the first save, that live update cannot write
  there and rebuilds instead; it does not wrap the command; the save is rebuilt and rolled out;
- no client-library traceback reaches the terminal.

The tests run in file order and share one cluster: `up` creates it (or finds it), the last deletes it.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import CACHE, CLUSTER, REPO, Devloop, Harness, devloops, free_port, leave_cluster, poll, run_cli
from tests.e2e.test_loop import edit

pytestmark = [pytest.mark.e2e, pytest.mark.shared_cluster]

SERVER = """const net = require("net");
const VERSION = "echo v1";
net.createServer((sock) => {
  sock.on("data", (data) => sock.write(`${VERSION}: ${data.toString().trim()}\\n`));
  sock.on("error", () => {});
}).listen(7000, () => console.log(`${VERSION} listening on 7000`));
"""

DOCKERFILE = """ARG NODE_IMAGE=node:24-alpine
FROM ${NODE_IMAGE}
WORKDIR /app
COPY server.js .
USER 1000
CMD ["node", "server.js"]
"""

MANIFESTS = """apiVersion: apps/v1
kind: Deployment
metadata: {name: echo}
spec:
  replicas: 1
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      securityContext: {runAsUser: 1000, runAsNonRoot: true}
      containers:
        - name: echo
          image: echo
          ports: [{name: tcp-echo, containerPort: 7000}]
          readinessProbe: {tcpSocket: {port: 7000}, periodSeconds: 2}
          securityContext: {readOnlyRootFilesystem: true, allowPrivilegeEscalation: false}
          resources: {requests: {cpu: 10m, memory: 32Mi}}
---
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  selector: {app: echo}
  ports: [{name: tcp-echo, port: 7000, targetPort: tcp-echo}]
"""

GREETER = """apiVersion: apps/v1
kind: Deployment
metadata: {name: greeter}
spec:
  replicas: 1
  selector: {matchLabels: {app: greeter}}
  template:
    metadata: {labels: {app: greeter}}
    spec:
      securityContext: {runAsUser: 1000, runAsNonRoot: true}
      containers:
        - name: greeter
          image: greeter
          ports: [{name: grpc, containerPort: 7070}]
          readinessProbe: {grpc: {port: 7070}, periodSeconds: 2}
          securityContext: {readOnlyRootFilesystem: true, allowPrivilegeEscalation: false}
          resources: {requests: {cpu: 10m, memory: 32Mi}}
---
apiVersion: v1
kind: Service
metadata: {name: greeter}
spec:
  selector: {app: greeter}
  ports: [{name: grpc, port: 7070, targetPort: grpc}]
"""

LIVE_UPDATE_WARNING = "live update cannot work in this pod"
GRPC_APP = Path(__file__).parent / "grpc"


def grpc_node_modules(harness: Harness) -> Path:
    """@grpc/grpc-js as package-lock.json pins it, installed once with the host's npm (npm in a
    container cannot reach the registry) into the e2e cache."""
    cache = CACHE / "grpc-app"
    lock = (GRPC_APP / "package-lock.json").read_bytes()
    if (
        not (cache / "node_modules").is_dir()
        or not (cache / "package-lock.json").exists()
        or (cache / "package-lock.json").read_bytes() != lock
    ):
        shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir(parents=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copy(GRPC_APP / name, cache / name)
        npm = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts"], cwd=cache, env=harness.env, capture_output=True, text=True
        )
        assert npm.returncode == 0, f"npm ci (host) for tests/e2e/grpc failed:\n{npm.stdout}{npm.stderr}"
    return cache / "node_modules"


@pytest.fixture(scope="module")
def echo(harness: Harness, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("e2e-protocols") / "echo"
    (root / "echo").mkdir(parents=True)
    (root / "k8s").mkdir()
    (root / "echo" / "server.js").write_text(SERVER)
    (root / "echo" / "Dockerfile").write_text(DOCKERFILE)
    (root / "k8s" / "echo.yaml").write_text(MANIFESTS)
    (root / "k8s" / "greeter.yaml").write_text(GREETER)
    (root / "greeter").mkdir()
    for name in ("server.js", "check.js", "Dockerfile"):
        shutil.copy(GRPC_APP / name, root / "greeter" / name)
    shutil.copytree(grpc_node_modules(harness), root / "greeter" / "node_modules", symlinks=True)
    (root / "kind-config.yaml").write_text((REPO / "kind-config.yaml").read_text())
    doc = {
        "apiVersion": "devloop/v2",
        "cluster": {"name": CLUSTER, "nodeImage": harness.kind_image, "kindConfig": "kind-config.yaml"},
        "registry": {"image": harness.registry_image},
        "dashboard": {"enabled": False},
        "monitoring": {"enabled": False, "image": harness.prometheus_image},
        "services": [
            {
                "name": "echo",
                "image": {"name": "echo", "context": "echo", "buildArgs": {"NODE_IMAGE": harness.node_base}},
                "deploy": {"manifests": ["k8s/echo.yaml"], "deployment": "echo", "rolloutTimeout": 240},
                "portForward": [{"service": "echo", "port": 7000, "localPort": free_port()}],
                "liveUpdate": {"enabled": True, "target": "/app"},
            },
            {
                "name": "greeter",
                "image": {"name": "greeter", "context": "greeter", "buildArgs": {"NODE_IMAGE": harness.node_base}},
                "deploy": {"manifests": ["k8s/greeter.yaml"], "deployment": "greeter", "rolloutTimeout": 240},
                "portForward": [{"service": "greeter", "port": 7070, "localPort": free_port()}],
            },
        ],
    }
    (root / "devloop.yaml").write_text(yaml.safe_dump(doc))
    return root


@pytest.fixture(scope="module", autouse=True)
def no_cluster_left(harness: Harness, echo: Path, request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    leave_cluster(harness, echo, request)


def local_port(echo: Path, service: str) -> int:
    services = yaml.safe_load((echo / "devloop.yaml").read_text())["services"]
    return int(next(s for s in services if s["name"] == service)["portForward"][0]["localPort"])


def grpc_health(echo: Path, port: int) -> str:
    """A real gRPC client's grpc.health.v1.Health/Check through the forward (host node, tests/e2e/grpc/check.js)."""
    p = subprocess.run(["node", "check.js", str(port)], cwd=echo / "greeter", capture_output=True, text=True, timeout=60)
    return p.stdout.strip() or p.stderr.strip()


def say(port: int, line: str) -> str:
    """One line to the echo server through the forward, and its answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.sendall(line.encode() + b"\n")
        got = b""
        while not got.endswith(b"\n"):
            data = s.recv(1024)
            if not data:
                break
            got += data
    return got.decode().strip()


def no_library_noise(output: str) -> None:
    assert "Traceback" not in output and "Exception in thread" not in output, output[-3000:]


def test_up_checks_each_forward_by_what_its_port_speaks_and_says_once_that_live_update_cannot_write(harness: Harness, echo: Path) -> None:
    code, events, output = run_cli(harness, echo, "up")
    assert code == 0, output
    services = {s["service"]: s for s in next(e for e in events if e["event"] == "up")["services"]}
    ((echo_forward,), (grpc_forward,)) = services["echo"]["forwards"], services["greeter"]["forwards"]
    assert (echo_forward["protocol"], echo_forward["answer"], echo_forward["http_status"]) == ("tcp", "answers TCP", None), output
    assert (grpc_forward["protocol"], grpc_forward["answer"]) == ("grpc", "gRPC port answers HTTP/2"), output
    assert not [e for e in events if e["event"] == "warning" and "did not answer" in e["message"]], output
    warned = [e for e in events if e["event"] == "warning" and LIVE_UPDATE_WARNING in e["message"]]
    assert len(warned) == 1 and warned[0]["message"].startswith("echo:") and "cannot write /tmp" in warned[0]["message"], output
    # the command is the image's own: not wrapped in a restart loop that could not write its pid file
    deploy = harness.kubectl_json("get", "deployment", "echo")
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    assert "command" not in container and "args" not in container, container
    no_library_noise(output)


def test_a_second_up_builds_nothing_and_each_forward_answers_at_the_first_check(harness: Harness, echo: Path) -> None:
    started = time.monotonic()
    code, events, output = run_cli(harness, echo, "up")
    took = time.monotonic() - started
    assert code == 0, output
    services = {s["service"]: s for s in next(e for e in events if e["event"] == "up")["services"]}
    assert not any(s["built"] or s["published"] for s in services.values()), output
    assert [s["forwards"][0]["answer"] for s in services.values()] == ["answers TCP", "gRPC port answers HTTP/2"], output
    assert not [e for e in events if e["event"] == "warning" and "did not answer" in e["message"]], output
    no_library_noise(output)
    print(f"a second, no-op `up` of a TCP and a gRPC service: {took:.1f}s")  # a figure for the report, not an assertion


def test_dev_forwards_tcp_and_a_save_rebuilds_instead_of_a_live_update_it_cannot_do(harness: Harness, echo: Path) -> None:
    port, grpc_port = local_port(echo, "echo"), local_port(echo, "greeter")
    with devloops(harness, echo) as start:
        d: Devloop = start("dev")
        ready: dict[str, str] = {}
        while len(ready) < 2:
            e = d.wait_for(lambda e: e["event"] == "port_forward" and e["ready"] and e["service"] not in ready, 300, "both forwards")
            ready[e["service"]] = e["message"]
        assert ready == {"echo": "answers TCP", "greeter": "gRPC port answers HTTP/2"}
        assert say(port, "hello") == "echo v1: hello"
        assert grpc_health(echo, grpc_port) == "SERVING"
        before = [e for e in d.seen if e["event"] == "warning" and LIVE_UPDATE_WARNING in e["message"]]
        assert len(before) == 1, d.raw[-30:]  # said before the first save

        edit(echo / "echo" / "server.js", '"echo v1"', '"echo v2"')
        done: dict[str, Any] = d.wait_for(
            lambda e: e["event"] == "cycle_done" and e["service"] == "echo" and "server.js" in e["files"], 300, "the save's cycle"
        )
        assert done["ok"] and not done["synced"] and "build" in done["phases"], done
        assert poll("the new version through the forward", 60, lambda: say(port, "again") == "echo v2: again" or None)
        assert grpc_health(echo, grpc_port) == "SERVING"  # the other service's forward, untouched by the rollout
        assert d.interrupt() == 130  # Ctrl-C's documented exit code
    output = "".join(d.raw)
    assert output.count(LIVE_UPDATE_WARNING) == 1, output[-3000:]  # once, not once per save
    forwards = [e for e in d.seen if e["event"] == "port_forward"]
    assert not [e for e in forwards if not e["ready"] and e["service"] == "greeter"], forwards  # never "no answer yet" for it
    assert not [e for e in forwards if "no HTTP answer" in e.get("message", "")], forwards
    no_library_noise(output)
    quieted = [line for line in d.raw if '"event": "detail"' in line and "Kubernetes port forward proxy" in line]
    print(f"the client library's port-forward threads that ended by an exception, said as -v details: {len(quieted)}")
