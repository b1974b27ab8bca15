"""What a devloop.yaml need not say (issue 20, part 5): a kind config, services' names, each service's
manifests, liveUpdate.target; and `devloop schema` explaining every key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from devloop import config, dockerfile
from devloop.errors import ConfigError

TWO = (
    "apiVersion: devloop/v2\nmanifests: [k8s]\nservices:\n"
    "  - image: {name: example.com/team/web, context: web}\n"
    "  - image: {name: api-img, context: api}\n    deploy: {deployment: api}\n"
)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    for name in ("web", "api"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "Dockerfile").write_text("FROM node:20\nWORKDIR /usr/src/app\nCOPY . .\n")
    (tmp_path / "k8s").mkdir()
    return tmp_path


def load(root: Path, text: str) -> config.Config:
    (root / "devloop.yaml").write_text(text)
    return config.load(None, root)


def test_without_a_kind_config_the_built_in_one_is_used_with_the_registry(project: Path) -> None:
    cfg = load(project, TWO)
    assert cfg.cluster.kind_config == config.BUILTIN_KIND_CONFIG and cfg.cluster.kind_config.is_file()
    assert cfg.cluster.name == "devloop" and cfg.registry_enabled  # its containerd reads certs.d: the registry is wired


def test_a_kind_config_beside_the_file_still_wins(project: Path) -> None:
    (project / "kind-config.yaml").write_text("kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\nname: mine\n")
    cfg = load(project, TWO)
    assert cfg.cluster.kind_config == project / "kind-config.yaml" and cfg.cluster.name == "mine" and not cfg.registry_enabled


def test_a_kind_config_named_but_missing_is_still_an_error(project: Path) -> None:
    with pytest.raises(ConfigError, match=r"cluster\.kindConfig: no such file"):
        load(project, "cluster: {kindConfig: kind.yaml}\n" + TWO)


def test_a_service_is_named_after_its_deployment_else_its_image(project: Path) -> None:
    cfg = load(project, TWO)
    assert [(s.name, s.deployment) for s in cfg.services] == [("web", "web"), ("api", "api")]


def test_an_image_name_that_is_no_dns_label_needs_a_name(project: Path) -> None:
    with pytest.raises(ConfigError, match=r"services\[0\]: needs a `name`.*'web_app'"):
        load(project, "services: [{image: {name: web_app, context: web}}]\n")


def test_project_wide_manifests_serve_every_service_without_its_own(project: Path) -> None:
    (project / "api" / "k8s").mkdir()
    cfg = load(project, TWO.replace("deploy: {deployment: api}", "deploy: {deployment: api, manifests: [api/k8s]}"))
    assert [s.manifests for s in cfg.services] == [(project / "k8s",), (project / "api" / "k8s",)]
    assert cfg.manifests == (project / "k8s",)  # resolved, as every other path
    (project / "k8s").rmdir()
    with pytest.raises(ConfigError, match=r"^devloop.yaml: manifests\[0\]: no such file or directory"):
        load(project, TWO)


def test_live_update_target_is_the_dockerfiles_workdir(project: Path) -> None:
    cfg = load(project, TWO)
    assert [s.live_update.target for s in cfg.services] == ["/usr/src/app", "/usr/src/app"]
    (project / "api" / "Dockerfile").write_text("FROM node:20\nCOPY . .\n")  # no WORKDIR: /app, as before
    assert load(project, TWO).services[1].live_update.target == "/app"
    said = TWO.replace("deploy: {deployment: api}", "deploy: {deployment: api}\n    liveUpdate: {target: /srv}")
    assert load(project, said).services[1].live_update.target == "/srv"  # written: as written


def test_a_workdir_from_a_variable_is_an_error_only_when_live_update_is_on(project: Path) -> None:
    (project / "web" / "Dockerfile").write_text("FROM node:20\nARG DIR=/srv\nWORKDIR $DIR\n")
    assert load(project, TWO).services[0].live_update.target == "/app"
    on = TWO.replace("context: web}\n", "context: web}\n    liveUpdate: {enabled: true}\n")
    with pytest.raises(ConfigError, match=r"services\[0\]\.liveUpdate\.target: the Dockerfile's WORKDIR is a variable") as e:
        load(project, on)
    assert "set liveUpdate.target" in e.value.hint


@pytest.mark.parametrize(
    ("text", "target", "expected"),
    [
        ("FROM a\nWORKDIR /app\nWORKDIR src\n", None, ("/app/src", False)),
        ("FROM a AS build\nWORKDIR /build\nFROM b\nCOPY --from=build /build /srv\n", None, (None, False)),
        ("FROM a AS base\nWORKDIR /usr/src/app\nFROM base AS final\nCOPY . .\n", None, ("/usr/src/app", False)),
        ("FROM a AS dev\nWORKDIR /dev\nFROM a AS prod\nWORKDIR /prod\n", "dev", ("/dev", False)),
        ("# comment\nFROM a\nWORKDIR \\\n  /continued\n", None, ("/continued", False)),
        ("FROM a\nWORKDIR ${HOME}/app\n", None, (None, True)),
        ("", None, (None, False)),
    ],
)
def test_dockerfile_workdir(text: str, target: str | None, expected: tuple[str | None, bool]) -> None:
    assert dockerfile.workdir(text, target) == expected


def _properties(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    nodes = [("(top level)", schema), *schema["$defs"].items()]
    return [(model, key, prop) for model, node in nodes for key, prop in node.get("properties", {}).items()]


def test_every_key_in_the_schema_has_a_description() -> None:
    found = _properties(config.schema())
    assert len(found) > 50  # every model's keys, not an empty walk
    missing = [f"{model}.{key}" for model, key, prop in found if not str(prop.get("description", "")).strip()]
    assert missing == []


def test_no_description_is_left_for_a_key_that_is_gone() -> None:
    keys = {(model if model != "(top level)" else "ConfigV2", key) for model, key, _ in _properties(config.schema())}
    stale = [f"{m}.{k}" for m, table in config.DESCRIPTIONS.items() for k in table if (m, k) not in keys]
    assert stale == []
