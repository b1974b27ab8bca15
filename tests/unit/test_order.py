"""The start order (dependsOn): pure checks and ordering (order.py), and their configuration errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from devloop import order
from devloop.config import parse_text
from devloop.errors import EXIT_USAGE, ConfigError


def test_start_order_puts_dependencies_first_and_keeps_the_declared_order_otherwise() -> None:
    assert order.start_order({"api": ("migrate",), "web": (), "migrate": ("db",), "db": ()}) == ["web", "db", "migrate", "api"]


@pytest.mark.parametrize(
    ("depends", "says"),
    [
        ({"a": ("b",), "b": ("c",), "c": ("a",)}, "dependsOn forms a cycle: a → b → c → a"),
        ({"a": (), "b": ("c",), "c": ("b",)}, "dependsOn forms a cycle: b → c → b"),
        ({"a": ("a",)}, "service 'a' depends on itself"),
        ({"api": ("dbb",), "db": ()}, "service 'api' depends on 'dbb', which is no service (declared: api, db)"),
    ],
)
def test_a_cycle_or_an_unknown_name_is_named(depends: dict[str, tuple[str, ...]], says: str) -> None:
    assert order.problem(depends) == says


def test_no_problem_in_a_diamond() -> None:
    assert order.problem({"db": (), "migrate": ("db",), "seed": ("db",), "api": ("migrate", "seed")}) is None


def test_followers_are_the_services_held_back_by_a_dependency_that_runs_now_transitively() -> None:
    depends = {"db": (), "migrate": ("db",), "api": ("migrate",), "web": ("api",), "other": ()}
    assert order.followers(["migrate"], {"api": "migrate", "web": "api"}, depends) == ["api", "web"]
    assert order.followers(["db"], {"api": "migrate"}, depends) == []
    assert order.followers(["migrate", "api"], {"api": "migrate"}, depends) == []  # already running


def config(tmp_path: Path, services: str) -> str:
    (tmp_path / "k8s").mkdir(exist_ok=True)
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    return f"apiVersion: devloop/v2\nservices:\n{services}"


@pytest.mark.parametrize(
    ("services", "says"),
    [
        (
            "  - {name: api, image: {name: api}, dependsOn: [db]}\n  - {name: db, deploy: {manifests: [k8s]}, dependsOn: [api]}\n",
            "devloop.yaml: (top level): dependsOn forms a cycle: api → db → api",
        ),
        (
            "  - {name: api, image: {name: api}, dependsOn: [db]}\n",
            "devloop.yaml: (top level): service 'api' depends on 'db', which is no service",
        ),
        ("  - {name: db}\n", "devloop.yaml: services[0].deploy.manifests: required for a service without image"),
        ("  - {name: db, deploy: {manifests: [k8s]}, liveUpdate: {enabled: true}}\n", "liveUpdate needs an image"),
    ],
)
def test_bad_dependencies_are_configuration_errors_exit_2(tmp_path: Path, services: str, says: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_text(config(tmp_path, services), root=tmp_path, source="devloop.yaml", check_paths=False)
    assert says in e.value.message and e.value.exit_code == EXIT_USAGE
    assert e.value.hint


def test_a_service_without_image_and_its_dependencies_are_read(tmp_path: Path) -> None:
    text = config(tmp_path, "  - {name: db, deploy: {manifests: [k8s]}}\n  - {name: api, image: {name: api}, dependsOn: db}\n")
    c = parse_text(text, root=tmp_path, source="devloop.yaml", check_paths=False)
    assert c.service("db").image is None and c.service("db").manifests == (tmp_path / "k8s",)
    assert c.service("api").depends_on == ("db",)
