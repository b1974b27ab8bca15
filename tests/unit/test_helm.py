"""Helm charts as a service's manifests: the configuration, the values that take devloop's image,
the `helm template` call (a scripted runner), missing chart dependencies, helm's errors, and the
engine applying a rendered chart (FakeCharts plays helm)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from devloop import charts, config, tools
from devloop.errors import EXIT_ENVIRONMENT, EXIT_USAGE, ConfigError, ToolMissing
from devloop.helm import Helm, argv, helm_error, missing_dependencies
from devloop.model import ChartRequest
from devloop.output import Output
from devloop.plan import Change, plan
from devloop.project import Project
from devloop.targets import TargetSpec
from tests.unit.fakes import FakeCharts, FakeCluster, FakeDocker, FakePublisher, FakeRunner, make_engine

RENDERED = """---
# Source: web/templates/service.yaml
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 3000}]
---
# Source: web/templates/deployment.yaml
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: {replicaCount}
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
        - name: web
          image: "{image.repository}:{image.tag}"
          readinessProbe: {httpGet: {path: /health, port: 3000}}
"""
CHART_DEFAULTS = {"image.repository": "nginx", "image.tag": "1.27", "replicaCount": "1"}


def chart(root: Path, name: str = "web", deps: list[dict[str, str]] | None = None) -> Path:
    d = root / "chart"
    (d / "templates").mkdir(parents=True)
    doc: dict[str, Any] = {"apiVersion": "v2", "name": name, "version": "0.1.0"}
    if deps:
        doc["dependencies"] = deps
    (d / "Chart.yaml").write_text(json.dumps(doc))
    (d / "values.yaml").write_text("image: {repository: nginx, tag: '1.27'}\nreplicaCount: 1\n")
    (d / "templates" / "deployment.yaml").write_text("# rendered by FakeCharts in these tests\n")
    return d


HELM_SERVICE = """apiVersion: devloop/v2
targets:
  - {name: prod, context: prod-admin, registry: r.example/team}
services:
  - name: web
    image: {name: my-web-app, context: sample-app}
    deploy:
      deployment: web
      helm:
        chart: chart
        valuesFiles: [values-dev.yaml]
        set: {replicaCount: 2}
        imageValues: {image.repository: repository, image.tag: tag}
        targets:
          prod: {valuesFiles: [values-prod.yaml], set: {replicaCount: 3}}
"""


@pytest.fixture
def project(sample_copy: Path) -> Path:
    chart(sample_copy)
    (sample_copy / "values-dev.yaml").write_text("debug: true\n")
    (sample_copy / "values-prod.yaml").write_text("debug: false\n")
    (sample_copy / "devloop.yaml").write_text(HELM_SERVICE)
    return sample_copy


# -- configuration ----------------------------------------------------------------------------------


def test_a_chart_is_read_with_its_paths_resolved_and_no_default_manifests(project: Path) -> None:
    svc = config.load(None, project).services[0]
    helm = svc.deploy.helm
    assert helm is not None
    assert helm.chart == project / "chart"
    assert helm.values_files == (project / "values-dev.yaml",)
    assert helm.targets["prod"].values_files == (project / "values-prod.yaml",)
    assert helm.set_values == {"replicaCount": 2}
    assert dict(helm.image_values) == {"image.repository": "repository", "image.tag": "tag"}
    assert svc.manifests == ()  # not <context>/k8s: the chart is the manifests


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("chart: chart", "chart: nowhere"), "devloop.yaml: services[0].deploy.helm.chart: no such directory: "),
        (("chart: chart", "chart: sample-app"), "devloop.yaml: services[0].deploy.helm.chart: not a chart (no Chart.yaml in it): "),
        (("[values-dev.yaml]", "[values-dev.yaml, gone.yaml]"), "devloop.yaml: services[0].deploy.helm.valuesFiles[1]: no such file: "),
        (("[values-prod.yaml]", "[nope.yaml]"), "devloop.yaml: services[0].deploy.helm.targets.prod.valuesFiles[0]: no such file: "),
        (("prod: {valuesFiles", "staging: {valuesFiles"), "deploy.helm.targets names 'staging', which is not a declared target"),
        (("image.tag: tag}", "image.tag: digest}"), "services[0].deploy.helm.imageValues.image.tag: must be one of"),
        (("helm:\n", "manifests: [sample-app/k8s]\n      helm:\n"), "give either deploy.manifests or deploy.helm (a chart), not both"),
        (("image.tag: tag}", "'image tag': tag}"), "helm.imageValues.image tag: 'image tag' is not a value key (like image.tag"),
        (
            ("chart: chart\n", "chart: chart\n        release: Web_1\n"),
            "services[0].deploy.helm.release: 'Web_1': must be lowercase letters, digits and '-'",
        ),
    ],
)
def test_a_bad_helm_section_is_one_line_naming_the_key_and_exit_2(project: Path, edit: tuple[str, str], message: str) -> None:
    text = HELM_SERVICE.replace(*edit)
    assert text != HELM_SERVICE
    (project / "devloop.yaml").write_text(text)
    with pytest.raises(ConfigError) as e:
        config.load(None, project)
    assert message in e.value.message and "\n" not in e.value.message
    assert e.value.hint and e.value.exit_code == EXIT_USAGE == 2


# -- the values that take devloop's image --------------------------------------------------------


def test_image_values_give_the_chart_devloops_image_name_and_a_placeholder_tag() -> None:
    got = charts.image_values({"image.repository": "repository", "image.tag": "tag", "sidecar.image": "ref"}, "team/web")
    assert [(k, json.loads(v)) for k, v in got] == [
        ("image.repository", "team/web"),
        ("image.tag", charts.PLACEHOLDER_TAG),
        ("sidecar.image", f"team/web:{charts.PLACEHOLDER_TAG}"),
    ]


def test_a_targets_values_files_and_values_come_after_the_services_and_devloops_image_last(project: Path) -> None:
    helm = config.load(None, project).services[0].deploy.helm
    assert helm is not None
    local = charts.request(helm, "web", "my-web-app", "default")
    prod = charts.request(helm, "web", "my-web-app", "shop", target="prod")
    assert local == ChartRequest(
        project / "chart",
        "web",
        "default",
        (project / "values-dev.yaml",),
        (("replicaCount", "2"), ("image.repository", '"my-web-app"'), ("image.tag", '"devloop"')),
    )
    assert prod.values_files == (project / "values-dev.yaml", project / "values-prod.yaml")
    assert prod.values == (("replicaCount", "2"), ("replicaCount", "3"), ("image.repository", '"my-web-app"'), ("image.tag", '"devloop"'))
    assert prod.namespace == "shop"
    # what a change re-renders for: the chart's directory and the values files of this target only
    assert charts.inputs(helm) == [project / "chart", project / "values-dev.yaml"]
    assert charts.inputs(helm, "prod") == [project / "chart", project / "values-dev.yaml", project / "values-prod.yaml"]


# -- the helm adapter ---------------------------------------------------------------------------------


def request(d: Path, *files: Path) -> ChartRequest:
    return ChartRequest(d, "web", "shop", files, (("replicaCount", "2"), ("image.tag", '"devloop"')))


def test_render_runs_helm_template_with_the_values_in_order_and_returns_its_output(tmp_path: Path) -> None:
    d = chart(tmp_path)
    values = tmp_path / "values-dev.yaml"
    values.write_text("a: 1\n")
    want = [
        "helm", "template", "web", str(d), "--namespace", "shop", "--skip-tests",
        "--values", str(values), "--set-json", "replicaCount=2", "--set-json", 'image.tag="devloop"',
    ]  # fmt: skip
    assert argv(request(d, values)) == want
    runner = FakeRunner().expect(*want, stdout=RENDERED)
    assert Helm(runner).render(request(d, values)) == RENDERED
    runner.done()


def test_a_template_error_is_helms_message_naming_the_template_and_line_and_exit_2(tmp_path: Path) -> None:
    d = chart(tmp_path)
    stderr = (
        "WARNING: Kubernetes configuration file is group-readable. This is insecure.\n"
        'Error: template: web/templates/deployment.yaml:7:22: executing "web/templates/deployment.yaml" at <.Values.nope.x>: '
        "nil pointer evaluating interface {}.x\n\nUse --debug flag to render out invalid YAML\n"
    )
    runner = FakeRunner().expect(*argv(request(d)), stderr=stderr, returncode=1)
    with pytest.raises(ConfigError) as e:
        Helm(runner).render(request(d))
    assert e.value.message == (
        f"helm template {d} failed: template: web/templates/deployment.yaml:7:22: "
        'executing "web/templates/deployment.yaml" at <.Values.nope.x>: nil pointer evaluating interface {}.x'
    )
    assert e.value.exit_code == EXIT_USAGE
    assert f"helm template web {d}" in e.value.hint
    assert helm_error('Error: parse error at (web/templates/x.yaml:5): function "nope" not defined\n') == (
        'parse error at (web/templates/x.yaml:5): function "nope" not defined'
    )


def test_a_values_file_gone_since_the_configuration_was_read_is_named_before_helm_runs(tmp_path: Path) -> None:
    d = chart(tmp_path)
    with pytest.raises(ConfigError) as e:
        Helm(FakeRunner()).render(request(d, tmp_path / "gone.yaml"))  # the runner fails on any call
    assert e.value.message == f"{tmp_path / 'gone.yaml'}: values file not found (chart {d})"
    assert e.value.exit_code == EXIT_USAGE


def packaged(path: Path, name: str) -> None:
    src = path.parent / f"src-{name}"
    src.mkdir()
    (src / "Chart.yaml").write_text(f"apiVersion: v2\nname: {name}\nversion: 1.2.3\n")
    with tarfile.open(path, "w:gz") as tar:
        tar.add(src / "Chart.yaml", arcname=f"{name}/Chart.yaml")


def test_dependencies_missing_from_charts_are_named_and_helm_never_runs(tmp_path: Path) -> None:
    deps = [
        {"name": "redis", "version": "1.2.3", "repository": "https://charts.example"},
        {"name": "postgresql", "version": "1.2.3", "repository": "https://charts.example"},
        {"name": "common", "version": "1.2.3", "repository": "file://../common"},
        {"name": "worker", "version": "0.1.0", "repository": "https://charts.example", "alias": "jobs"},
    ]
    d = chart(tmp_path, deps=deps)
    (d / "charts" / "pg-dir").mkdir(parents=True)
    (d / "charts" / "pg-dir" / "Chart.yaml").write_text("apiVersion: v2\nname: postgresql\nversion: 1.2.3\n")
    packaged(d / "charts" / "common-1.2.3.tgz", "common")
    assert missing_dependencies(d) == ["redis", "worker"]

    with pytest.raises(ConfigError) as e:
        Helm(FakeRunner()).render(request(d))
    assert e.value.message == f"{d}: the chart's dependencies are missing from its charts/ directory: redis, worker"
    assert f"helm dependency build {d}" in e.value.hint and e.value.exit_code == EXIT_USAGE

    packaged(d / "charts" / "redis-1.2.3.tgz", "redis")
    (d / "charts" / "worker").mkdir()
    (d / "charts" / "worker" / "Chart.yaml").write_text("apiVersion: v2\nname: worker\nversion: 0.1.0\n")
    assert missing_dependencies(d) == []


def test_the_output_is_split_into_manifests_named_after_their_templates(tmp_path: Path) -> None:
    d = tmp_path / "chart"
    text = (
        RENDERED.replace("{replicaCount}", "1")
        + "---\n# Source: web/charts/redis/templates/cm.yaml\n"
        + ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: redis}\n")
    )
    docs = charts.parse(text, d)
    assert [(m.kind, m.source) for m in docs] == [
        ("Service", str(d / "templates" / "service.yaml")),
        ("Deployment", str(d / "templates" / "deployment.yaml")),
        ("ConfigMap", str(d / "charts" / "redis" / "templates" / "cm.yaml")),
    ]
    with pytest.raises(ConfigError, match="the chart rendered no Kubernetes objects"):
        charts.parse("---\n# Source: web/templates/off.yaml\n", d)


# -- the engine with a chart --------------------------------------------------------------------------


def engine_for(root: Path, fake: FakeCharts) -> tuple[Any, FakeCluster, FakeDocker]:
    cluster, docker = FakeCluster(), FakeDocker()
    out = Output(json_mode=True, stdout=io.StringIO())
    eng = make_engine(config.load(None, root), out, images=docker, kube=cluster, publisher=FakePublisher(), charts=fake)
    return eng, cluster, docker


def test_up_rolls_out_the_rendered_chart_with_devloops_image(project: Path) -> None:
    fake = FakeCharts(RENDERED, CHART_DEFAULTS)
    eng, cluster, _ = engine_for(project, fake)
    results = eng.up()
    assert [r.ok for r in results] == [True]
    ref = results[0].image
    assert ref is not None
    deployment = cluster.objects[("default", "Deployment", "web")]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == ref.cluster == f"localhost:5001/my-web-app:{ref.tag}"
    assert deployment["spec"]["replicas"] == 2  # the service's `set`
    assert ("default", "Service", "web") in cluster.objects
    assert cluster.serving("web")
    assert fake.requests[0].namespace == "default" and fake.requests[0].release == "web"


def test_a_chart_whose_image_values_are_not_mapped_says_how_to_map_them(project: Path) -> None:
    (project / "devloop.yaml").write_text(HELM_SERVICE.replace("        imageValues: {image.repository: repository, image.tag: tag}\n", ""))
    eng, cluster, _ = engine_for(project, FakeCharts(RENDERED, CHART_DEFAULTS))
    with pytest.raises(ConfigError) as e:
        eng.check_manifests()
    assert e.value.message == "service web: no container in the chart's output uses the image 'my-web-app'"
    assert "deploy.helm.imageValues" in e.value.hint and e.value.exit_code == EXIT_USAGE
    assert not cluster.applies


def test_a_target_renders_with_its_values_and_a_change_to_chart_or_values_reapplies(project: Path) -> None:
    cfg = config.load(None, project)
    svc = cfg.services[0]
    fake = FakeCharts(RENDERED, CHART_DEFAULTS)
    prod = Project(
        cfg, FakeCluster(), TargetSpec("prod", "prod-admin", "r.example/team", "shop", remote=True), Output(json_mode=True), fake
    )
    assert prod.manifests(svc).namespace == "shop"
    assert fake.requests[-1].values_files == (project / "values-dev.yaml", project / "values-prod.yaml")

    local = Project(cfg, FakeCluster(), TargetSpec("kind", cfg.cluster.context), Output(json_mode=True), fake)
    layouts = [local.layout(svc)]
    for changed in ("chart/templates/deployment.yaml", "chart/values.yaml", "chart/Chart.yaml", "values-dev.yaml"):
        p = plan([Change(str(project / changed))], layouts, root=str(project))
        assert [(c.service, c.reapply, c.manifest_files) for c in p.services] == [("web", True, (changed,))], changed
    # another target's values file is not this target's input
    assert plan([Change(str(project / "values-prod.yaml"))], layouts, root=str(project)).services == ()


# -- helm, provisioned --------------------------------------------------------------------------------


def test_helm_is_a_pinned_tarball_with_a_pinned_digest_per_platform(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEVLOOP_HELM_URL", raising=False)
    monkeypatch.setattr(tools, "host_platform", lambda: ("linux", "amd64"))
    dl = tools.download_for("helm")
    assert dl.url == f"https://get.helm.sh/helm-{tools.HELM_VERSION}-linux-amd64.tar.gz"
    assert dl.member == "linux-amd64/helm"
    assert tools.pinned_sha256(dl) == "a7f81ce08007091b86d8bd696eb4d86b8d0f2e1b9f6c714be62f82f96a594496"
    assert {v for v, _os, _arch in tools.PINNED_SHA256["helm"]} == {tools.HELM_VERSION}
    for digest in tools.PINNED_SHA256["helm"].values():
        assert len(digest) == 64 and int(digest, 16) >= 0


def test_helm_missing_when_a_chart_renders_is_exit_3_with_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = chart(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no helm anywhere (a reload added the chart after start)
    with pytest.raises(ToolMissing) as e:
        Helm().render(request(d))
    assert e.value.message == "`helm` was not found on PATH" and e.value.exit_code == EXIT_ENVIRONMENT == 3
    assert "https://get.helm.sh" in e.value.hint and "go install helm.sh/helm/v3/cmd/helm@" in e.value.hint
