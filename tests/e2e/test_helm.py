"""A Helm chart as a service's manifests, on a real kind cluster with the real helm (the pinned one
tests/e2e/kind/install-helm.sh builds from the Go module proxy, unless helm is on PATH).

The chart builds its image reference from values (`{{ .Values.image.repository }}:{{ .Values.image.tag }}`);
devloop.yaml maps those values to devloop's image. The tests run in file order and share one
cluster: `up` creates it, the module's end deletes it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import CLUSTER, KIND_DIR, REPO, Devloop, Harness, children_of_cluster, devloops, free_port, leave_cluster, run_cli
from tests.e2e.test_loop import edit, get

pytestmark = [pytest.mark.e2e, pytest.mark.shared_cluster]

CHART = {
    "Chart.yaml": "apiVersion: v2\nname: web\nversion: 0.1.0\n",
    "values.yaml": "image:\n  repository: nginx\n  tag: '1.27'\nreplicaCount: 1\ngreeting: chart-default\n",
    "templates/deployment.yaml": """apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}
  labels: {app: {{ .Release.Name }}}
spec:
  replicas: {{ .Values.replicaCount }}
  selector:
    matchLabels: {app: {{ .Release.Name }}}
  template:
    metadata:
      labels: {app: {{ .Release.Name }}}
    spec:
      containers:
        - name: web
          image: "{{ .Values.image.repository }}:{{ .Values.image.tag }}"
          ports: [{name: http, containerPort: 3000}]
          env:
            - {name: GREETING, value: {{ .Values.greeting | quote }}}
          readinessProbe:
            httpGet: {path: /healthz, port: 3000}
            periodSeconds: 2
""",
    "templates/service.yaml": """apiVersion: v1
kind: Service
metadata:
  name: {{ .Release.Name }}
spec:
  selector: {app: {{ .Release.Name }}}
  ports: [{port: 80, targetPort: 3000}]
""",
}
TEMPLATE = "chart/templates/deployment.yaml"
BROKEN = "replicas: {{ .Values.nope.count }}"


@pytest.fixture(scope="module")
def helm(harness: Harness) -> str:
    """The helm devloop will use: the user's on PATH, else the pinned one built into the e2e cache (on PATH)."""
    found = shutil.which("helm", path=harness.env["PATH"])
    if found is None:
        subprocess.run(["bash", str(KIND_DIR / "install-helm.sh")], check=True, stdout=subprocess.DEVNULL)
        found = shutil.which("helm", path=harness.env["PATH"])
    assert found, "install-helm.sh puts helm in the e2e cache's bin, which the harness puts on PATH"
    return found


@pytest.fixture(scope="module")
def charted(harness: Harness, helm: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("e2e-helm") / "proj"
    shutil.copytree(REPO / "sample-app", root / "sample-app", ignore=shutil.ignore_patterns("node_modules", "k8s"))
    shutil.copy(REPO / "kind-config.yaml", root / "kind-config.yaml")
    for name, text in CHART.items():
        (root / "chart" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "chart" / name).write_text(text)
    (root / "values-dev.yaml").write_text("replicaCount: 1\ngreeting: dev-one\n")
    doc = {
        "apiVersion": "devloop/v2",
        "cluster": {"name": CLUSTER, "nodeImage": harness.kind_image, "kindConfig": "kind-config.yaml"},
        "registry": {"image": harness.registry_image},
        "dashboard": {"enabled": False},
        "services": [
            {
                "name": "web",
                "image": {"name": "my-web-app", "context": "sample-app", "buildArgs": {"NODE_IMAGE": harness.node_base}},
                "deploy": {
                    "rolloutTimeout": 240,
                    "helm": {
                        "chart": "chart",
                        "valuesFiles": ["values-dev.yaml"],
                        "imageValues": {"image.repository": "repository", "image.tag": "tag"},
                    },
                },
                "portForward": {"service": "web", "port": 80, "localPort": free_port()},
            }
        ],
    }
    (root / "devloop.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return root


@pytest.fixture(scope="module", autouse=True)
def no_cluster_left(harness: Harness, charted: Path, request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    leave_cluster(harness, charted, request)


def deployment(harness: Harness) -> dict[str, Any]:
    return harness.kubectl_json("get", "deployment", "web")


def container(d: dict[str, Any]) -> dict[str, Any]:
    (c,) = d["spec"]["template"]["spec"]["containers"]
    return dict(c)


def greeting(d: dict[str, Any]) -> str:
    return next(str(e["value"]) for e in container(d)["env"] if e["name"] == "GREETING")


def local_port(root: Path) -> int:
    return int(yaml.safe_load((root / "devloop.yaml").read_text())["services"][0]["portForward"]["localPort"])


def test_up_rolls_the_chart_out_with_devloops_image(harness: Harness, charted: Path) -> None:
    code, events, output = run_cli(harness, charted, "up")
    assert code == 0, output
    up = next(e for e in events if e["event"] == "up")
    (svc,) = up["services"]
    assert svc["ok"] and len(svc["ready_pods"]) == 1, output
    assert svc["forwards"][0]["http_status"] == 200, svc
    d = deployment(harness)
    image = container(d)["image"]
    assert image.startswith("localhost:5001/my-web-app:dl-"), image  # not the chart's nginx:1.27, not the placeholder
    assert image == svc["image"]
    assert greeting(d) == "dev-one"  # values-dev.yaml over the chart's values.yaml
    assert harness.kubectl_json("get", "service", "web")["spec"]["ports"][0]["port"] == 80


def test_dev_reapplies_a_values_change_and_a_template_error_keeps_the_old_version(harness: Harness, charted: Path) -> None:
    with devloops(harness, charted) as start:
        d: Devloop = start("dev")
        d.wait_for(lambda e: e["event"] == "port_forward" and e["ready"], 300, "the port-forward")
        before = deployment(harness)
        image = container(before)["image"]

        # 1. a values file change renders the chart again and applies it, with the image the cluster runs
        edit(charted / "values-dev.yaml", "greeting: dev-one", "greeting: dev-two")
        done = d.wait_for(lambda e: e["event"] == "cycle_done", 300, "the values change's cycle")
        assert done["ok"], done
        assert done["files"] == ["values-dev.yaml"] and "manifests changed" in done["reason"], done
        assert "build" not in done["phases"], done  # nothing of the image changed: re-applied, not rebuilt
        after = deployment(harness)
        assert greeting(after) == "dev-two" and container(after)["image"] == image

        # 2. a template error: helm's message (template file and line), and the running version keeps serving
        edit(charted / TEMPLATE, "replicas: {{ .Values.replicaCount }}", BROKEN)
        failed = d.wait_for(lambda e: e["event"] == "cycle_done", 300, "the broken template's cycle")
        assert not failed["ok"], failed
        assert "template: web/templates/deployment.yaml:7:" in failed["error"]["message"], failed["error"]
        assert "nil pointer" in failed["error"]["message"] and failed["error"]["hint"], failed["error"]
        assert container(deployment(harness))["image"] == image
        assert get(local_port(charted), "/healthz")[0] == 200

        assert d.interrupt() == 130
        assert children_of_cluster() == []


def test_up_with_a_template_error_exits_2_with_helms_message(harness: Harness, charted: Path) -> None:
    assert BROKEN in (charted / TEMPLATE).read_text()  # left broken by the test before
    code, _events, output = run_cli(harness, charted, "up")
    assert code == 2, output
    errors = [json.loads(line) for line in output.splitlines() if line.startswith("{") and '"event": "error"' in line]
    assert len(errors) == 1, output
    error = errors[0]
    assert error["message"].startswith(f"helm template {charted / 'chart'} failed: template: web/templates/deployment.yaml:7:"), error
    assert "nope" in error["message"] and "\n" not in error["message"] and error["hint"], error
    assert error["exit_code"] == 2
    edit(charted / TEMPLATE, BROKEN, "replicas: {{ .Values.replicaCount }}")
    code, _events, output = run_cli(harness, charted, "up")
    assert code == 0, output
