"""The helm adapter with the real helm (no cluster): devloop's `helm template` call, its values and its
errors as helm gives them. helm is the user's on PATH, else the pinned one tests/e2e/kind/install-helm.sh
builds from the Go module proxy into the e2e cache (seconds when it is there)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from devloop import charts, config
from devloop.errors import EXIT_USAGE, ConfigError
from devloop.helm import Helm

REPO = Path(__file__).resolve().parents[2]
CACHE_BIN = Path(os.environ.get("DEVLOOP_CACHE", Path.home() / ".cache" / "devloop-e2e")) / "bin"

DEPLOYMENT = """apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}
  namespace: {{ .Release.Namespace }}
spec:
  replicas: {{ .Values.replicaCount }}
  selector:
    matchLabels: {app: {{ .Release.Name }}}
  template:
    metadata:
      labels: {app: {{ .Release.Name }}}
      annotations: {ports: {{ .Values.ports | toJson | quote }}}
    spec:
      containers:
        - name: web
          image: "{{ .Values.image.repository }}:{{ .Values.image.tag }}"
        - name: sidecar
          image: {{ .Values.sidecar | quote }}
"""
TEST_HOOK = """apiVersion: v1
kind: Pod
metadata:
  name: {{ .Release.Name }}-test
  annotations: {helm.sh/hook: test}
spec:
  containers: [{name: t, image: busybox}]
"""


@pytest.fixture(scope="module", autouse=True)
def helm_on_path() -> None:
    """The real helm on this process's PATH (the user's first)."""
    if shutil.which("helm") is None:
        subprocess.run(["bash", str(REPO / "tests" / "e2e" / "kind" / "install-helm.sh")], check=True, stdout=subprocess.DEVNULL)
        os.environ["PATH"] = os.pathsep.join([os.environ["PATH"], str(CACHE_BIN)])
    assert shutil.which("helm"), "install-helm.sh puts helm in the e2e cache's bin"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    chart = tmp_path / "chart"
    (chart / "templates" / "tests").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: web\nversion: 0.1.0\n")
    (chart / "values.yaml").write_text("image: {repository: nginx, tag: '1.27'}\nreplicaCount: 1\nports: []\nsidecar: busybox:1\n")
    (chart / "templates" / "deployment.yaml").write_text(DEPLOYMENT)
    (chart / "templates" / "tests" / "hook.yaml").write_text(TEST_HOOK)
    (tmp_path / "values-dev.yaml").write_text("replicaCount: 2\n")
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    shutil.copy(REPO / "kind-config.yaml", tmp_path / "kind-config.yaml")
    doc = {
        "apiVersion": "devloop/v2",
        "services": [
            {
                "name": "web",
                "image": {"name": "team/web"},
                "deploy": {
                    "helm": {
                        "chart": "chart",
                        "valuesFiles": ["values-dev.yaml"],
                        "set": {"ports": [80, 443], "sidecar": "team/web:latest"},
                        "imageValues": {"image.repository": "repository", "image.tag": "tag"},
                    }
                },
            }
        ],
    }
    (tmp_path / "devloop.yaml").write_text(yaml.safe_dump(doc))
    return tmp_path


def render(project: Path) -> list[dict[str, object]]:
    svc = config.load(None, project).services[0]
    assert svc.deploy.helm is not None
    req = charts.request(svc.deploy.helm, svc.name, svc.image.name, "shop")
    return [m.doc for m in charts.parse(Helm().render(req), req.chart)]


def test_helm_renders_the_chart_with_the_values_files_the_values_and_devloops_image(project: Path) -> None:
    (deployment,) = render(project)  # the test hook is left out
    spec: dict[str, object] = deployment["spec"]  # type: ignore[assignment]
    assert deployment["metadata"] == {"name": "web", "namespace": "shop"}
    assert spec["replicas"] == 2  # values-dev.yaml over values.yaml
    pod = spec["template"]  # type: ignore[index]
    assert pod["metadata"]["annotations"] == {"ports": "[80,443]"}  # a list through --set-json, commas and all
    assert [c["image"] for c in pod["spec"]["containers"]] == [f"team/web:{charts.PLACEHOLDER_TAG}", "team/web:latest"]


def test_a_template_error_is_helms_message_with_the_template_file_and_line(project: Path) -> None:
    template = project / "chart" / "templates" / "deployment.yaml"
    template.write_text(DEPLOYMENT.replace("{{ .Values.replicaCount }}", "{{ .Values.nope.count }}"))
    with pytest.raises(ConfigError) as e:
        render(project)
    assert e.value.message.startswith(f"helm template {project / 'chart'} failed: template: web/templates/deployment.yaml:7:")
    assert "nil pointer evaluating" in e.value.message and "\n" not in e.value.message
    assert e.value.exit_code == EXIT_USAGE and e.value.hint

    template.write_text(DEPLOYMENT.replace("{{ .Values.replicaCount }}", "{{ nosuchfn .Values.replicaCount }}"))
    with pytest.raises(ConfigError, match=r'failed: parse error at \(web/templates/deployment.yaml:7\): function "nosuchfn" not defined$'):
        render(project)


def test_a_missing_dependency_is_named_and_helm_agrees_it_cannot_render(project: Path) -> None:
    chart = project / "chart"
    (chart / "Chart.yaml").write_text(
        "apiVersion: v2\nname: web\nversion: 0.1.0\ndependencies:\n  - {name: redis, version: 1.0.0, repository: https://charts.example}\n"
    )
    with pytest.raises(ConfigError, match=r"the chart's dependencies are missing from its charts/ directory: redis$"):
        render(project)
    # helm itself refuses too (devloop only says it first, and says what to do)
    p = subprocess.run(["helm", "template", "web", str(chart)], capture_output=True, text=True)
    assert p.returncode != 0 and "redis" in p.stderr


def test_the_notes_example_gives_each_service_of_its_chart_its_own_template() -> None:
    """examples/notes: api and web render one chart; each applies the template that runs its image,
    with devloop's image in it, and the database and the Jobs are plain manifests."""
    from devloop.output import Output
    from devloop.project import Project
    from devloop.targets import TargetSpec
    from tests.unit.fakes import FakeCluster

    cfg = config.load(None, REPO / "examples" / "notes")
    project = Project(cfg, FakeCluster(), TargetSpec("kind", cfg.cluster.context), Output(json_mode=True), Helm())
    got = {}
    for svc in cfg.services:
        d = project.manifests(svc)
        got[svc.name] = (d.deployment.kind, sorted(f"{m.kind}/{m.name}" for m in d.docs))
        if svc.image is not None:
            (container,) = d.deployment.doc["spec"]["template"]["spec"]["containers"]
            assert container["image"] == f"{svc.image.name}:{charts.PLACEHOLDER_TAG}" or svc.deploy.helm is None, container
    assert got == {
        "db": ("StatefulSet", ["Secret/db", "Service/db", "StatefulSet/db"]),
        "migrate": ("Job", ["Job/migrate"]),
        "seed": ("Job", ["Job/seed"]),
        "api": ("Deployment", ["Deployment/api", "Service/api"]),
        "web": ("Deployment", ["Deployment/web", "Service/web"]),
    }
    assert [s.depends_on for s in cfg.services] == [(), ("db",), ("migrate",), ("migrate", "seed"), ("api",)]
