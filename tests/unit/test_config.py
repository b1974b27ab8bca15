from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from devloop import config
from devloop.errors import ConfigError


def write(root: Path, text: str) -> Path:
    p = root / "devloop.yaml"
    p.write_text(text)
    return p


def test_defaults_serve_the_bundled_sample(sample_copy: Path) -> None:
    cfg = config.load(None, sample_copy)
    assert cfg.source == "defaults"
    assert cfg.cluster.name == "devloop"  # from kind-config.yaml's name
    assert cfg.cluster.context == "kind-devloop"
    (svc,) = cfg.services
    assert svc.name == "web-app"
    assert svc.image.context == sample_copy / "sample-app"
    assert svc.manifests == (sample_copy / "sample-app" / "k8s",)
    assert svc.deployment == "web-app"
    assert svc.image.name == "my-web-app"
    assert [f.service for f in svc.port_forward] == ["web-app-service"]
    assert cfg.monitoring.enabled  # on for the bundled sample


def test_config_is_frozen(sample_copy: Path) -> None:
    cfg = config.load(None, sample_copy)
    with pytest.raises(ValidationError):
        cfg.services = ()  # type: ignore[misc]
    with pytest.raises(ValidationError):
        cfg.services[0].image.name = "x"  # type: ignore[misc]


def test_file_values_and_relative_paths(sample_copy: Path) -> None:
    write(
        sample_copy,
        "apiVersion: devloop/v1\ncluster: {name: mine}\nimage:\n  context: sample-app\n  buildArgs: {NODE_IMAGE: local/node:1, N: 3}\n"
        "portForward: {localPort: 9090}\nwatch: {debounceMs: 50, ignore: ['*.log']}\n",
    )
    cfg = config.load(None, sample_copy)
    assert cfg.cluster.name == "mine"
    assert cfg.services[0].image.build_args == {"NODE_IMAGE": "local/node:1", "N": "3"}
    assert cfg.services[0].port_forward[0].local_port == 9090
    assert cfg.watch.debounce_ms == 50 and cfg.watch.ignore == ("*.log",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("imgae: {}\n", "devloop.yaml: imgae: unknown key"),
        ("image: {contxt: x}\n", "devloop.yaml: image.contxt: unknown key"),
        ("image: {context: 3}\n", "image.context: must be a non-empty string (a path), got an integer"),
        ("image: []\n", "image: must be a mapping, got a list"),
        ("portForward: {localPort: http}\n", "portForward.localPort: must be an integer, got a string"),
        ("portForward: {localPort: 70000}\n", "portForward.localPort: must be at most 65535, got 70000"),
        ("portForward: {enabled: yes please}\n", "portForward.enabled: must be true or false"),
        ("apiVersion: devloop/v9\n", "apiVersion: unsupported version"),
        ("image: {context: nowhere}\n", "image.context: not a directory"),
        ("image: {dockerfile: Nope.dockerfile}\n", "image.dockerfile: no such file"),
        ("deploy: {manifests: [missing.yaml]}\n", "deploy.manifests[0]: no such file or directory"),
        ("image: {name: 'My App'}\n", "image.name: 'My App' is not a valid image repository name"),
        ("cluster: {name: Bad_Name}\n", "cluster.name: 'Bad_Name': must be lowercase letters"),
        ("image: {buildArgs: {A: [1]}}\n", "image.buildArgs.A: must be a non-empty string, got a list"),
        ("- just\n- a list\n", "(top level): must be a mapping"),
        ("image: {context: [unclosed\n", "not valid YAML (line 2"),
    ],
)
def test_bad_config_names_file_and_key(sample_copy: Path, text: str, message: str) -> None:
    path = write(sample_copy, text)
    with pytest.raises(ConfigError) as info:
        config.load(None, sample_copy)
    assert message in info.value.message
    assert info.value.message.startswith("devloop.yaml: ")  # as the user would type it, relative to where they are
    assert path.exists()
    assert info.value.hint
    assert info.value.exit_code == 2


def test_malformed_kind_config_is_a_config_error(sample_copy: Path) -> None:
    (sample_copy / "kind-config.yaml").write_text("kind: Deployment\n")
    with pytest.raises(ConfigError, match="not a kind cluster config"):
        config.load(None, sample_copy)


def test_explicit_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        config.load(tmp_path / "nope.yaml", tmp_path)


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
keys = st.sampled_from(["apiVersion", "cluster", "image", "deploy", "portForward", "watch", "registry", "name", "context", "x"])


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow], deadline=None)  # any speed
@given(doc=st.dictionaries(keys, yaml_values | st.dictionaries(keys, yaml_values, max_size=4), max_size=5))
def test_fuzz_structured_config_never_tracebacks(sample_copy: Path, doc: dict[str, object]) -> None:
    try:
        config.parse(doc, root=sample_copy, source="devloop.yaml")
    except ConfigError as e:
        assert e.message.startswith("devloop.yaml")


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow], deadline=None)  # any speed
@given(text=st.text(max_size=200))
def test_fuzz_raw_text_never_tracebacks(sample_copy: Path, text: str) -> None:
    try:
        config.parse_text(text, root=sample_copy, source="devloop.yaml")
    except ConfigError as e:
        assert e.message.startswith("devloop.yaml")


def test_fuzzer_reaches_valid_yaml_too(sample_copy: Path) -> None:
    # the fuzz above is only worth something if valid documents parse: one sanity anchor
    cfg = config.parse(yaml.safe_load("watch: {debounceMs: 10}"), root=sample_copy, source="devloop.yaml")
    assert cfg.watch.debounce_ms == 10


def test_the_single_service_form_keeps_the_samples_monitoring_when_only_its_image_is_set(sample_copy: Path) -> None:
    write(sample_copy, "monitoring: {image: local/prometheus:1}\n")
    cfg = config.load(None, sample_copy)
    assert cfg.monitoring.enabled and cfg.monitoring.image == "local/prometheus:1"
    write(sample_copy, "apiVersion: devloop/v2\nservices: [{name: web, image: {name: web, context: sample-app}}]\n")
    assert not config.load(None, sample_copy).monitoring.enabled  # off unless asked for, in the services form


def test_schema_describes_services_and_forbids_unknown_keys() -> None:
    s = config.schema()
    assert "services" in s["properties"] and s["additionalProperties"] is False
    service = s["$defs"]["ServiceConfig"]
    assert {"name", "image", "deploy", "portForward", "liveUpdate"} <= set(service["properties"])
