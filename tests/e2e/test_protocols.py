"""A non-HTTP service in a hardened pod (issue 19), on the shared kind cluster through the real CLI.

The service is a Node `net` echo server (no HTTP at all) whose Service port is named `tcp-echo`, in
a pod with `readOnlyRootFilesystem: true` and `runAsUser: 1000`, with live update on:

- `up` checks its forward by TCP (it answers at once: no HTTP retries, no "did not answer" warning),
  and `dev` reports the forward as answering TCP while a TCP client gets echoes through it;
- devloop reads the pod spec: it says once, before the first save, that live update cannot write
  there and rebuilds instead; it does not wrap the command; the save is rebuilt and rolled out;
- no client-library traceback reaches the terminal.

The tests run in file order and share one cluster: `up` creates it (or finds it), the last deletes it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import CLUSTER, REPO, Devloop, Harness, devloops, free_port, poll, run_cli
from tests.e2e.test_loop import edit

pytestmark = pytest.mark.e2e

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

LIVE_UPDATE_WARNING = "live update cannot work in this pod"


@pytest.fixture(scope="module")
def echo(harness: Harness, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("e2e-protocols") / "echo"
    (root / "echo").mkdir(parents=True)
    (root / "k8s").mkdir()
    (root / "echo" / "server.js").write_text(SERVER)
    (root / "echo" / "Dockerfile").write_text(DOCKERFILE)
    (root / "k8s" / "echo.yaml").write_text(MANIFESTS)
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
            }
        ],
    }
    (root / "devloop.yaml").write_text(yaml.safe_dump(doc))
    return root


@pytest.fixture(scope="module", autouse=True)
def no_cluster_left(harness: Harness, echo: Path) -> Iterator[None]:
    yield
    if os.environ.get("DEVLOOP_E2E_KEEP_CLUSTER") != "1" and CLUSTER in harness.kind_clusters():
        run_cli(harness, echo, "down", "--cluster")


def local_port(echo: Path) -> int:
    return int(yaml.safe_load((echo / "devloop.yaml").read_text())["services"][0]["portForward"][0]["localPort"])


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


def test_up_checks_a_tcp_port_by_tcp_and_says_once_that_live_update_cannot_write_there(harness: Harness, echo: Path) -> None:
    code, events, output = run_cli(harness, echo, "up")
    assert code == 0, output
    (svc,) = next(e for e in events if e["event"] == "up")["services"]
    (forward,) = svc["forwards"]
    assert (forward["protocol"], forward["answer"], forward["http_status"]) == ("tcp", "answers TCP", None), output
    assert not [e for e in events if e["event"] == "warning" and "did not answer" in e["message"]], output
    warned = [e for e in events if e["event"] == "warning" and LIVE_UPDATE_WARNING in e["message"]]
    assert len(warned) == 1 and "cannot write /tmp" in warned[0]["message"], output
    # the command is the image's own: not wrapped in a restart loop that could not write its pid file
    deploy = harness.kubectl_json("get", "deployment", "echo")
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    assert "command" not in container and "args" not in container, container
    no_library_noise(output)


def test_dev_forwards_tcp_and_a_save_rebuilds_instead_of_a_live_update_it_cannot_do(harness: Harness, echo: Path) -> None:
    port = local_port(echo)
    with devloops(harness, echo) as start:
        d: Devloop = start("dev")
        ready = d.wait_for(lambda e: e["event"] == "port_forward" and e["ready"], 300, "the forward")
        assert ready["message"] == "answers TCP", ready
        assert say(port, "hello") == "echo v1: hello"
        before = [e for e in d.seen if e["event"] == "warning" and LIVE_UPDATE_WARNING in e["message"]]
        assert len(before) == 1, d.raw[-30:]  # said before the first save

        edit(echo / "echo" / "server.js", '"echo v1"', '"echo v2"')
        done: dict[str, Any] = d.wait_for(lambda e: e["event"] == "cycle_done", 300, "the save's cycle")
        assert done["ok"] and not done["synced"] and "build" in done["phases"], done
        assert poll("the new version through the forward", 60, lambda: say(port, "again") == "echo v2: again" or None)
        assert d.interrupt() == 0
    output = "".join(d.raw)
    assert output.count(LIVE_UPDATE_WARNING) == 1, output[-3000:]  # once, not once per save
    forwards = [e for e in d.seen if e["event"] == "port_forward"]
    assert not [e for e in forwards if "HTTP" in e.get("message", "")], forwards
    no_library_noise(output)
