"""`devloop init` on an existing project, then `devloop up` rolls out what it wrote, on a real kind cluster.

1. examples/shop without its devloop.yaml and without a kind-config.yaml: init finds the three
   Dockerfiles, the shared k8s/ directory and the two Services; the file it writes names no kind config
   (devloop's built-in one, with the registry wiring, creates the cluster).
2. A repository shaped like a public microservices project: two Node services under src/<name>/ whose
   Dockerfiles copy to /usr/src/app, one kubernetes-manifests/ kustomization (rendered by the real kubectl).

The tests add only what this offline machine needs and a user would not write: the test cluster's name
and offline node image, the offline registry image, the local Node.js base (buildArgs), no dashboard.
The tests share one cluster, created by the first; the module's end deletes it.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import CLUSTER, REPO, Harness, leave_cluster, run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.shared_cluster(first=True)]  # first: it asserts the cluster made from the built-in kind config


@pytest.fixture(scope="module")
def shop(harness: Harness, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("e2e-init") / "shop"
    shutil.copytree(REPO / "examples" / "shop", root)
    (root / "devloop.yaml").unlink()
    assert not (root / "kind-config.yaml").exists()
    yield root
    leave_cluster(harness, root, request)


DOCKERFILE = """ARG NODE_IMAGE=node:24-alpine
FROM ${NODE_IMAGE} AS base
WORKDIR /usr/src/app
COPY package*.json ./
FROM base
COPY . .
CMD ["node", "server.js"]
"""

MANIFEST = """apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
        - name: server
          image: {name}
          ports: [{{containerPort: 3000}}]
          readinessProbe: {{httpGet: {{path: /healthz, port: 3000}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  selector: {{app: {name}}}
  ports: [{{name: grpc, port: {port}, targetPort: 3000}}]
"""


@pytest.fixture(scope="module")
def microservices(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("e2e-init") / "microservices-demo"
    manifests = root / "kubernetes-manifests"
    manifests.mkdir(parents=True)
    ports = {"currencyservice": 7000, "paymentservice": 50051}
    for name, port in ports.items():
        src = root / "src" / name
        shutil.copytree(REPO / "examples" / "shop" / "api", src)
        (src / "Dockerfile").write_text(DOCKERFILE)
        (manifests / f"{name}.yaml").write_text(MANIFEST.format(name=name, port=port))
    (manifests / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n" + "".join(f"- {n}.yaml\n" for n in ports)
    )
    return root


def offline(text: str, harness: Harness) -> str:
    """The generated file plus this machine's lines: one buildArgs line under each image, a few top-level keys."""
    text = re.sub(r"^(      context: .*)$", rf"\1\n      buildArgs: {{NODE_IMAGE: {harness.node_base}}}", text, flags=re.MULTILINE)
    return text + (
        f"cluster: {{name: {CLUSTER}, nodeImage: {harness.kind_image}}}\n"
        f"registry: {{image: {harness.registry_image}}}\n"
        "dashboard: {enabled: false}\n"
    )


def test_init_then_up_rolls_out_every_service(harness: Harness, shop: Path) -> None:
    code, events, output = run_cli(harness, shop, "init")
    assert code == 0, output
    (done,) = [e for e in events if e["event"] == "init"]
    assert done["written"] and sorted(done["services"]) == ["api", "web", "worker"] and done["questions"] == []
    written = (shop / "devloop.yaml").read_text()
    assert yaml.safe_load(written)["manifests"] == ["k8s"] and "kindConfig" not in written

    generated = yaml.safe_load(written)
    (shop / "devloop.yaml").write_text(offline(written, harness))
    assert [s["image"] for s in yaml.safe_load((shop / "devloop.yaml").read_text())["services"]] == [
        {**s["image"], "buildArgs": {"NODE_IMAGE": harness.node_base}} for s in generated["services"]
    ]

    code, events, output = run_cli(harness, shop, "up")
    assert code == 0, output
    up = next(e for e in events if e["event"] == "up")
    by_name = {s["service"]: s for s in up["services"]}
    assert set(by_name) == {"web", "api", "worker"} and all(s["ok"] for s in by_name.values()), output
    assert len(by_name["web"]["ready_pods"]) == 2 and len(by_name["worker"]["ready_pods"]) == 1
    web = by_name["web"]["forwards"][0]
    assert web["http_status"] == 200 and "web v1" in web["response"] and "api v1" in web["response"]  # web reached the api
    assert any("creating kind cluster" in e.get("message", "") and "built-in kind config" in e["message"] for e in events), output
    registry = harness.kubectl_json("get", "pods", "-l", "app=web")["items"][0]["spec"]["containers"][0]["image"]
    assert registry.startswith("localhost:5001/shop-web:dl-")  # the built-in kind config wired the local registry


def test_init_then_up_on_a_microservices_layout(harness: Harness, shop: Path, microservices: Path) -> None:
    code, events, output = run_cli(harness, microservices, "init")
    assert code == 0, output
    written = (microservices / "devloop.yaml").read_text()
    doc = yaml.safe_load(written)
    assert doc["manifests"] == ["kubernetes-manifests"] and all("name" not in s for s in doc["services"]), written
    (microservices / "devloop.yaml").write_text(offline(written, harness))

    code, events, output = run_cli(harness, microservices, "up")
    assert code == 0, output
    up = next(e for e in events if e["event"] == "up")
    by_name = {s["service"]: s for s in up["services"]}
    assert set(by_name) == {"currencyservice", "paymentservice"} and all(s["ok"] for s in by_name.values()), output
    assert by_name["currencyservice"]["forwards"][0]["http_status"] in (200, 404)  # it answered (the api has no / route)
    app = harness.kubectl_run("exec", "deploy/paymentservice", "--", "ls", "/usr/src/app").stdout.split()
    assert "server.js" in app  # where the Dockerfile copied it: liveUpdate.target's default (the unit tests check that)
