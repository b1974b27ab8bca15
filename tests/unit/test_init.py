"""`devloop init`: discovery on trees shaped like examples/ and like a microservices repository, the
questions it asks instead of guessing, and the file it writes (which devloop then loads)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from devloop import config, discover, scaffold
from devloop.cli import app
from devloop.errors import EXIT_USAGE, ConfigError

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()

NODE_DOCKERFILE = (
    'FROM node:20-alpine AS base\nWORKDIR /usr/src/app\nCOPY package*.json ./\nRUN npm ci\nFROM base\nCOPY . .\nCMD ["node", "server.js"]\n'
)


def deployment(name: str, image: str, port: int | None = None, *, labels: dict[str, str] | None = None) -> str:
    labels = labels or {"app": name}
    docs = [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "server", "image": image}]}},
            },
        }
    ]
    if port is not None:
        docs.append(
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": {"selector": labels, "ports": [{"port": port}]}}
        )
    return yaml.safe_dump_all(docs)


def microservices(root: Path) -> Path:
    """The shape of a public microservices project: src/<name>/Dockerfile, one kubernetes-manifests/ with a kustomization."""
    ports = {"currencyservice": 7000, "paymentservice": 50051}
    for name in ports:
        (root / "src" / name).mkdir(parents=True)
        (root / "src" / name / "Dockerfile").write_text(NODE_DOCKERFILE)
        (root / "src" / name / "server.js").write_text("")
    k = root / "kubernetes-manifests"
    k.mkdir()
    for name, port in ports.items():
        (k / f"{name}.yaml").write_text(deployment(name, name, port))
    (k / "redis.yaml").write_text(deployment("redis-cart", "redis:alpine", 6379))
    (k / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n"
        + "".join(f"- {n}.yaml\n" for n in [*ports, "redis"])
    )
    (root / "skaffold.yaml").write_text("apiVersion: skaffold/v4beta6\nkind: Config\nmetadata: {name: app}\n")
    return root


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    root = tmp_path / "shop"
    shutil.copytree(REPO / "examples" / "shop", root)
    (root / "devloop.yaml").unlink()
    return root


def load_written(root: Path) -> config.Config:
    return config.load(None, root)


# -- discovery -------------------------------------------------------------------------------------


def test_examples_shop_without_its_devloop_yaml(shop: Path) -> None:
    p = discover.discover(shop)
    assert p.questions == ()
    by = {s.name: s for s in p.services}
    assert set(by) == {"web", "api", "worker"}
    assert by["web"].image == "shop-web" and by["web"].context == shop / "web"
    assert p.manifests == (shop / "k8s",)  # one shared directory: project-wide
    assert [(f.service, f.port) for f in by["web"].forwards] == [("web", 80)]
    assert by["worker"].forwards == ()  # no Service in front of it
    ports = [f.local_port for s in p.services for f in s.forwards]
    assert len(set(ports)) == len(ports) and all(port >= 1024 for port in ports)


def test_the_written_shop_file_loads_as_the_hand_written_one_says(shop: Path) -> None:
    file = shop / "devloop.yaml"
    scaffold.write(file, scaffold.render(discover.discover(shop), file))
    cfg = load_written(shop)
    by = {s.name: s for s in cfg.services}
    assert {n: (s.built.name, s.built.context, s.deployment) for n, s in by.items()} == {
        "web": ("shop-web", shop / "web", "web"),
        "api": ("shop-api", shop / "api", "api"),
        "worker": ("shop-worker", shop / "worker", "worker"),
    }
    assert all(s.manifests == (shop / "k8s",) for s in cfg.services)
    assert cfg.cluster.kind_config == config.BUILTIN_KIND_CONFIG and cfg.registry_enabled  # nothing said: the built-in one


def test_microservices_layout_gives_the_short_file(tmp_path: Path) -> None:
    root = microservices(tmp_path / "ms")
    file = root / "devloop.yaml"
    text = scaffold.render(discover.discover(root), file)
    data = yaml.safe_load(text)
    assert data == {
        "apiVersion": "devloop/v2",
        "manifests": ["kubernetes-manifests"],
        "services": [
            {
                "image": {"name": "currencyservice", "context": "src/currencyservice"},
                "portForward": [{"service": "currencyservice", "port": 7000, "localPort": 7000}],
            },
            {
                "image": {"name": "paymentservice", "context": "src/paymentservice"},
                "portForward": [{"service": "paymentservice", "port": 50051, "localPort": 50051}],
            },
        ],
    }
    assert "redis:alpine" in text  # said: pulled, not built
    assert "QUESTION" not in text
    scaffold.write(file, text)
    cfg = load_written(root)
    assert [s.deployment for s in cfg.services] == ["currencyservice", "paymentservice"]
    assert all(s.live_update.target == "/usr/src/app" for s in cfg.services)  # the Dockerfile's WORKDIR


def test_two_dockerfiles_for_one_image_is_a_question_not_a_guess(tmp_path: Path) -> None:
    root = microservices(tmp_path / "ms")
    (root / "src" / "paymentservice" / "Dockerfile.dev").write_text(NODE_DOCKERFILE)
    p = discover.discover(root)
    assert [s.name for s in p.services] == ["currencyservice"]
    (q,) = p.questions
    assert "2 Dockerfiles could build image paymentservice" in q.text
    assert "src/paymentservice/Dockerfile" in q.text and "src/paymentservice/Dockerfile.dev" in q.text
    text = scaffold.render(p, root / "devloop.yaml")
    assert "# QUESTION: 2 Dockerfiles could build image paymentservice" in text
    assert yaml.safe_load(text)["services"] == [yaml.safe_load(text)["services"][0]]  # the asked one is commented out
    assert "#      name: paymentservice" in text


def test_a_dockerfile_no_manifest_runs_is_a_question(tmp_path: Path) -> None:
    root = microservices(tmp_path / "ms")
    (root / "src" / "emailservice").mkdir()
    (root / "src" / "emailservice" / "Dockerfile").write_text(NODE_DOCKERFILE)
    p = discover.discover(root)
    assert len(p.services) == 2
    (q,) = p.questions
    assert q.text.startswith("no manifest runs an image built from src/emailservice/Dockerfile")
    text = scaffold.render(p, root / "devloop.yaml")
    assert "#      name: ???" in text


def test_answering_a_question_by_uncommenting_gives_a_valid_service(tmp_path: Path) -> None:
    root = microservices(tmp_path / "ms")
    (root / "src" / "paymentservice" / "Dockerfile.dev").write_text(NODE_DOCKERFILE)
    text = scaffold.render(discover.discover(root), root / "devloop.yaml")
    answered = "\n".join(line[1:] if line.startswith("#  ") else line for line in text.splitlines())
    (root / "devloop.yaml").write_text(answered)
    assert [s.name for s in load_written(root).services] == ["currencyservice", "paymentservice"]


def test_an_image_only_a_statefulset_runs_is_a_question(tmp_path: Path) -> None:
    root = tmp_path / "p"
    (root / "db").mkdir(parents=True)
    (root / "db" / "Dockerfile").write_text("FROM postgres\n")
    (root / "k8s").mkdir()
    doc = yaml.safe_load(deployment("db", "db"))
    doc["kind"] = "StatefulSet"
    (root / "k8s" / "db.yaml").write_text(yaml.safe_dump(doc))
    p = discover.discover(root)
    assert p.services == ()
    assert "StatefulSet db" in p.questions[0].text and "Deployments only" in p.questions[0].text


def test_a_helm_chart_is_a_question_when_nothing_else_deploys(tmp_path: Path) -> None:
    root = microservices(tmp_path / "ms")
    (root / "chart" / "templates").mkdir(parents=True)
    (root / "chart" / "Chart.yaml").write_text("apiVersion: v2\nname: app\nversion: 0.1.0\n")
    (root / "chart" / "templates" / "d.yaml").write_text("kind: Deployment\nmetadata: {name: {{ .Values.name }}}\n")
    p = discover.discover(root)
    assert len(p.services) == 2 and p.questions == ()  # the kustomization deploys them: the chart is an alternative
    assert any(n.startswith("Helm chart chart:") for n in p.notes)
    shutil.rmtree(root / "kubernetes-manifests")
    p = discover.discover(root)
    assert p.services == ()
    assert any(q.text.startswith("Helm chart chart:") and "helm template chart" in q.text for q in p.questions)


def test_the_only_dockerfile_and_the_only_local_image_are_matched_and_said(tmp_path: Path) -> None:
    """The bundled sample: image my-web-app, Deployment web-app, a Dockerfile at the root: no name in common."""
    root = tmp_path / "anything"
    shutil.copytree(REPO / "sample-app", root, ignore=shutil.ignore_patterns("node_modules"))
    p = discover.discover(root)
    (s,) = p.services
    assert (s.name, s.image, s.context) == ("web-app", "my-web-app", root)
    assert "the only Dockerfile" in s.note
    assert [(f.service, f.port, f.local_port) for f in s.forwards] == [("web-app-service", 80, 8080)]
    text = scaffold.render(p, root / "devloop.yaml")
    assert "# NOTE:" in text
    assert yaml.safe_load(text)["services"][0]["name"] == "web-app"  # differs from the image's: written


def test_per_service_manifests_when_they_are_not_in_one_place(tmp_path: Path) -> None:
    root = tmp_path / "p"
    for name in ("a", "b"):
        (root / name / "deploy").mkdir(parents=True)
        (root / name / "Dockerfile").write_text("FROM x\n")
        (root / name / "deploy" / "all.yaml").write_text(deployment(name, f"org/{name}"))
    (root / "c" / "k8s").mkdir(parents=True)
    (root / "c" / "Dockerfile").write_text("FROM x\n")
    (root / "c" / "k8s" / "c.yaml").write_text(deployment("c", "c"))
    p = discover.discover(root)
    assert p.manifests == ()
    by = {s.name: s.manifests for s in p.services}
    assert by == {"a": (root / "a" / "deploy",), "b": (root / "b" / "deploy",), "c": ()}  # c's is the default, <context>/k8s
    file = root / "devloop.yaml"
    scaffold.write(file, scaffold.render(p, file))
    assert {s.name: s.manifests for s in load_written(root).services}["c"] == (root / "c" / "k8s",)


def test_a_manifest_beside_other_yaml_is_listed_as_a_file(tmp_path: Path) -> None:
    root = tmp_path / "p"
    (root / "deploy").mkdir(parents=True)
    (root / "Dockerfile").write_text("FROM x\n")
    (root / "deploy" / "app.yaml").write_text(deployment("p", "p"))
    (root / "deploy" / "values.yaml").write_text("replicas: 3\n")  # not a Kubernetes object: the directory cannot be applied as it is
    assert discover.discover(root).manifests == (root / "deploy" / "app.yaml",)


def test_overlays_prefer_the_dev_one_and_say_so(tmp_path: Path) -> None:
    root = tmp_path / "p"
    (root / "app").mkdir(parents=True)
    (root / "app" / "Dockerfile").write_text("FROM x\n")
    base = root / "k8s" / "base"
    base.mkdir(parents=True)
    (base / "app.yaml").write_text(deployment("app", "app"))
    (base / "kustomization.yaml").write_text("resources: [app.yaml]\n")
    for overlay in ("dev", "prod"):
        (root / "k8s" / overlay).mkdir()
        (root / "k8s" / overlay / "kustomization.yaml").write_text("resources: [../base]\npatches: [{path: patch.yaml}]\n")
        (root / "k8s" / overlay / "patch.yaml").write_text(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: app}\nspec: {replicas: 1}\n"
        )
    p = discover.discover(root)
    assert [s.name for s in p.services] == ["app"]  # the patches are no second Deployment
    assert p.manifests == (root / "k8s" / "dev",)
    assert any("init uses k8s/dev" in n for n in p.notes)
    assert "# NOTE:" in scaffold.render(p, root / "devloop.yaml")


def test_nothing_to_find_says_what_it_looked_for(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("hello\n")
    (tmp_path / "node_modules" / "x").mkdir(parents=True)
    (tmp_path / "node_modules" / "x" / "Dockerfile").write_text("FROM x\n")  # skipped
    with pytest.raises(ConfigError) as e:
        discover.discover(tmp_path)
    assert "no Dockerfile" in e.value.message and "Kubernetes manifests" in e.value.message and "node_modules" in e.value.message
    assert "root directory" in e.value.hint
    assert e.value.exit_code == EXIT_USAGE


# -- the command ---------------------------------------------------------------------------------


def test_init_writes_the_file_and_up_would_find_it(shop: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(shop)
    result = runner.invoke(app, ["init"])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "3 services" in result.output
    assert {s.name for s in load_written(shop).services} == {"web", "api", "worker"}


def test_dry_run_prints_and_writes_nothing(shop: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(shop)
    result = runner.invoke(app, ["init", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert not (shop / "devloop.yaml").exists()
    assert yaml.safe_load(result.stdout)["manifests"] == ["k8s"]


def test_an_existing_file_is_never_overwritten(shop: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (shop / "devloop.yaml").write_text("# mine\n")
    monkeypatch.chdir(shop)
    result = runner.invoke(app, ["init"])
    assert result.exit_code == EXIT_USAGE
    assert "already exists" in result.output and "never overwrites" in result.output and "hint:" in result.output
    assert (shop / "devloop.yaml").read_text() == "# mine\n"
    with pytest.raises(ConfigError):
        scaffold.write(shop / "devloop.yaml", "x")
    assert (shop / "devloop.yaml").read_text() == "# mine\n"


def test_init_in_an_empty_directory_is_one_line_and_a_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["init"])
    assert result.exit_code == EXIT_USAGE
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[0].startswith("error: nothing devloop could build") and lines[1].startswith("hint:") and len(lines) == 2
    assert not (tmp_path / "devloop.yaml").exists()


def test_init_json_reports_questions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = microservices(tmp_path / "ms")
    (root / "src" / "paymentservice" / "Dockerfile.dev").write_text(NODE_DOCKERFILE)
    monkeypatch.chdir(root)
    result = runner.invoke(app, ["--json", "init", "--dry-run"])
    assert result.exit_code == 0
    events = [json.loads(line) for line in result.stdout.splitlines()]
    done = events[-1]
    assert done["event"] == "init" and done["written"] is False and done["services"] == ["currencyservice"]
    assert len(done["questions"]) == 1 and "QUESTION" in done["yaml"]
    assert any(e["event"] == "warning" and "paymentservice" in e["message"] for e in events)


def test_the_readme_shows_what_init_writes(tmp_path: Path) -> None:
    root = microservices(tmp_path / "ms")
    (root / "kubernetes-manifests" / "paymentservice.yaml").write_text(deployment("paymentservice", "paymentservice"))  # no Service
    readme = (REPO / "README.md").read_text().split("### Quick start in an existing repository", 1)[1]
    shown = yaml.safe_load(readme.split("```yaml\n", 1)[1].split("```", 1)[0])
    assert yaml.safe_load(scaffold.render(discover.discover(root), root / "devloop.yaml")) == shown


def test_released_manifests_and_a_second_kustomization_beside_the_dev_ones(tmp_path: Path) -> None:
    """As upstream microservices repositories ship them: release/ names published images, kustomize/base/ copies the manifests."""
    root = microservices(tmp_path / "ms")
    (root / "release").mkdir()
    (root / "release" / "all.yaml").write_text(
        deployment("currencyservice", "registry.example.com/demo/currencyservice:v0.10.1")
        + "---\n"
        + deployment("paymentservice", "registry.example.com/demo/paymentservice:v0.10.1")
    )
    base = root / "kustomize" / "base"
    base.mkdir(parents=True)
    shutil.copy(root / "kubernetes-manifests" / "currencyservice.yaml", base / "currencyservice.yaml")
    (base / "kustomization.yaml").write_text("resources: [currencyservice.yaml]\n")
    (root / "kustomize" / "kustomization.yaml").write_text("resources: [base]\n")
    p = discover.discover(root)
    assert p.questions == ()
    assert [(s.name, s.image) for s in p.services] == [("currencyservice", "currencyservice"), ("paymentservice", "paymentservice")]
    assert p.manifests == (root / "kubernetes-manifests",)  # where both are
    assert "registry.example.com/demo/currencyservice:v0.10.1" in p.not_built
    assert any("Deployment currencyservice is declared in" in n and "init uses kubernetes-manifests" in n for n in p.notes)


def test_a_repository_holding_both_examples(tmp_path: Path) -> None:
    """This repository's shape: examples/shop (shared k8s/) and sample-app (its own k8s/), a Python module named dockerfile.py."""
    root = tmp_path / "repo"
    shutil.copytree(REPO / "examples" / "shop", root / "examples" / "shop")
    (root / "examples" / "shop" / "devloop.yaml").unlink()
    shutil.copytree(REPO / "sample-app", root / "sample-app", ignore=shutil.ignore_patterns("node_modules"))
    (root / "devloop").mkdir()
    (root / "devloop" / "dockerfile.py").write_text("")
    p = discover.discover(root)
    assert p.questions == ()  # my-web-app (web, app) does not take web/'s Dockerfile from shop-web: shop-web's manifests are nearer
    assert p.manifests == (root / "examples" / "shop" / "k8s",)
    by = {s.name: s for s in p.services}
    assert set(by) == {"web", "api", "worker", "web-app"}
    assert by["web"].image == "shop-web" and by["web-app"].context == root / "sample-app"
    file = root / "devloop.yaml"
    scaffold.write(file, scaffold.render(p, file))
    cfg = load_written(root)
    assert cfg.service("web-app").manifests == (root / "sample-app" / "k8s",)  # listed: not the project-wide ones
    assert cfg.service("api").manifests == (root / "examples" / "shop" / "k8s",)


@pytest.mark.parametrize("value", ["web", "true", "1.0", "null", "a #b", "x: y", "*star", "plain/path-1"])
def test_written_scalars_read_back_as_the_same_string(value: str) -> None:
    assert yaml.safe_load(f"key: {scaffold._q(value)}  # comment\n") == {"key": value}


def test_each_service_of_the_written_shop_file_finds_its_own_objects_in_the_shared_directory(shop: Path) -> None:
    from devloop.output import Output
    from devloop.project import Project
    from devloop.targets import TargetSpec
    from tests.unit.fakes import FakeCluster

    file = shop / "devloop.yaml"
    scaffold.write(file, scaffold.render(discover.discover(shop), file))
    cfg = load_written(shop)
    project = Project(cfg, FakeCluster(), TargetSpec("local", "kind-devloop"), Output(json_mode=True))
    found = {s.name: sorted(f"{m.kind}/{m.name}" for m in project.manifests(s).docs) for s in cfg.services}
    assert found == {"web": ["Deployment/web", "Service/web"], "api": ["Deployment/api", "Service/api"], "worker": ["Deployment/worker"]}


def test_a_kustomization_that_renames_is_a_question(tmp_path: Path) -> None:
    root = microservices(tmp_path / "ms")
    k = root / "kubernetes-manifests" / "kustomization.yaml"
    k.write_text(k.read_text() + "namePrefix: dev-\n")
    p = discover.discover(root)
    assert len(p.services) == 2  # still proposed, and the renaming asked about
    (q,) = p.questions
    assert q.text.startswith("kubernetes-manifests renames objects or images (namePrefix)") and "kubectl kustomize" in q.text
