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
    assert svc.built.context == sample_copy / "sample-app"
    assert svc.manifests == (sample_copy / "sample-app" / "k8s",)
    assert svc.deployment == "web-app"
    assert svc.built.name == "my-web-app"
    assert [f.service for f in svc.port_forward] == ["web-app-service"]
    assert cfg.monitoring.enabled  # on for the bundled sample


def test_config_is_frozen(sample_copy: Path) -> None:
    cfg = config.load(None, sample_copy)
    with pytest.raises(ValidationError):
        cfg.services = ()
    with pytest.raises(ValidationError):
        cfg.services[0].built.name = "x"


def test_file_values_and_relative_paths(sample_copy: Path) -> None:
    write(
        sample_copy,
        "apiVersion: devloop/v1\ncluster: {name: mine}\nimage:\n  context: sample-app\n  buildArgs: {NODE_IMAGE: local/node:1, N: 3}\n"
        "portForward: {localPort: 9090}\nwatch: {debounceMs: 50, ignore: ['*.log']}\n",
    )
    cfg = config.load(None, sample_copy)
    assert cfg.cluster.name == "mine"
    assert cfg.services[0].built.build_args == {"NODE_IMAGE": "local/node:1", "N": "3"}
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
        # the live sync's shell reads the target unquoted: plain characters only
        ("liveUpdate: {target: '/app/*'}\n", "liveUpdate.target: '/app/*': must be an absolute path in the container, of letters"),
        ("liveUpdate: {target: '/app dir'}\n", "liveUpdate.target: '/app dir': must be an absolute path"),
        ("liveUpdate: {target: '/app;rm -rf x'}\n", "liveUpdate.target: '/app;rm -rf x': must be an absolute path"),
        ("liveUpdate: {target: '/app/$(id)'}\n", "liveUpdate.target: '/app/$(id)': must be an absolute path"),
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


SAMPLE_IMAGE = {"name": "my-web-app", "context": "sample-app"}
SAMPLE_FORWARD = {"service": "web-app-service"}


def v2(service: dict[str, object] | None = None, **top: object) -> dict[str, object]:
    """The v2 data a v1 file upgrades to: the sample's service and monitoring on, unless said otherwise."""
    sample = {"name": "web-app", "image": SAMPLE_IMAGE, "deploy": {"deployment": "web-app"}, "portForward": [SAMPLE_FORWARD]}
    return {"apiVersion": "devloop/v2", "monitoring": {"enabled": True}, **top, "services": [{**sample, **(service or {})}]}


@pytest.mark.parametrize(
    ("v1", "expected"),
    [
        ({}, v2()),
        ({"apiVersion": "devloop/v1"}, v2()),
        ({"image": {"context": "app"}}, v2({"image": {"name": "my-web-app", "context": "app"}})),
        (
            {"image": {"name": "shop", "buildArgs": {"A": 1}}},
            v2({"image": {"name": "shop", "context": "sample-app", "buildArgs": {"A": 1}}}),
        ),
        ({"deploy": {"deployment": "api"}}, v2({"name": "api", "deploy": {"deployment": "api"}})),
        ({"deploy": {"manifests": ["k8s"]}}, v2({"deploy": {"manifests": ["k8s"], "deployment": "web-app"}})),
        ({"portForward": {"localPort": 9090}}, v2({"portForward": [{**SAMPLE_FORWARD, "localPort": 9090}]})),
        ({"portForward": {"enabled": True, "service": "api", "port": 8000}}, v2({"portForward": [{"service": "api", "port": 8000}]})),
        ({"portForward": {"enabled": False, "localPort": 9090}}, v2({"portForward": []})),
        (
            {"port_forward": {"enabled": "off"}},  # the field's name, as pydantic reads it too; a switch as pydantic reads one
            {
                "apiVersion": "devloop/v2",
                "monitoring": {"enabled": True},
                "services": [{"name": "web-app", "image": SAMPLE_IMAGE, "deploy": {"deployment": "web-app"}, "port_forward": []}],
            },
        ),
        ({"liveUpdate": {"enabled": True}}, v2({"liveUpdate": {"enabled": True}})),
        ({"monitoring": {"image": "local/prometheus:1"}}, v2(monitoring={"enabled": True, "image": "local/prometheus:1"})),
        ({"monitoring": {"enabled": False}}, v2(monitoring={"enabled": False})),
        (
            {"cluster": {"name": "mine"}, "registry": {"enabled": False}, "keepVersions": 5, "targets": [{"name": "prod"}]},
            v2(cluster={"name": "mine"}, registry={"enabled": False}, keepVersions=5, targets=[{"name": "prod"}]),
        ),
        # not valid, and left for the v2 schema to say so at the same keys
        ({"image": [], "deploy": None, "imgae": {}}, v2({"image": [], "deploy": None}, imgae={})),
    ],
)
def test_upgrade_v1_lifts_the_single_service_form_into_v2(v1: dict[str, object], expected: dict[str, object]) -> None:
    assert config.upgrade_v1(v1) == expected


def test_upgrade_v1_checks_the_switch_v2_has_no_key_for_even_when_it_turns_the_forward_off() -> None:
    with pytest.raises(ValidationError) as info:
        config.upgrade_v1({"portForward": {"enabled": "yes please"}})
    assert [e["loc"] for e in info.value.errors()] == [("portForward", "enabled")]
    with pytest.raises(ValidationError) as info:
        config.upgrade_v1({"portForward": {"enabled": False, "locaPort": 9090}})
    assert [(e["loc"], e["type"]) for e in info.value.errors()] == [(("portForward", "locaPort"), "extra_forbidden")]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # a v1 file is told its errors at its own keys, in its own order
        ("portForward: {enabled: false, locaPort: 1}\n", "portForward.locaPort: unknown key"),
        ("portForward: [{service: web}]\n", "portForward: must be a mapping, got a list"),
        ("deploy: {deployment: Web_App}\n", "name: 'Web_App': must be lowercase letters, digits and '-' (a DNS label)"),
        ("deploy: {deployment: ''}\n", "deploy.deployment: must be a non-empty string, got a string"),
        ("image: {contxt: x}\nportForward: {localPort: http}\n", "image.contxt: unknown key"),
        ("portForward: {localPort: http}\nliveUpdate: {target: app}\n", "portForward.localPort: must be an integer, got a string"),
        ("liveUpdate: x\n", "liveUpdate: must be a mapping, got a string"),
        ("apiVersion: devloop/v1\nservices: []\n", "services: needs apiVersion: devloop/v2"),
        # a field of two types gets one message, at its key
        ("registry: {enabled: maybe}\n", "registry.enabled: must be true or false, got a string"),
        ("deploy: {rollingUpdate: {maxSurge: abc}}\n", "deploy.rollingUpdate.maxSurge: 'abc' is not valid here"),
        ("deploy: {rollingUpdate: {maxSurge: {x: 1}}}\n", "deploy.rollingUpdate.maxSurge: must be a non-empty string, got a mapping"),
        ("image: {buildArgs: {str: [1]}}\n", "image.buildArgs.str: must be a non-empty string, got a list"),
        ("deploy: {rollingUpdate: {maxSurge: abc}}\nimgae: {}\n", "imgae: unknown key"),  # the likelier mistake first
        ("registry: {enabled: maybe}\nimgae: {}\n", "registry.enabled: must be true or false, got a string"),
    ],
)
def test_errors_name_the_key_the_user_wrote(sample_copy: Path, text: str, message: str) -> None:
    write(sample_copy, text)
    with pytest.raises(ConfigError) as info:
        config.load(None, sample_copy)
    assert info.value.message == f"devloop.yaml: {message}"


def test_services_form_errors_name_the_service_by_index(sample_copy: Path) -> None:
    svc = "{name: web, image: {name: web, context: sample-app}}"
    write(sample_copy, f"services: [{svc}, {{name: api, image: {{name: api, contxt: x}}}}]\n")
    with pytest.raises(ConfigError, match=r"^devloop.yaml: services\[1\]\.image\.contxt: unknown key$"):
        config.load(None, sample_copy)
    write(sample_copy, f"services: [{svc}, {{name: api, image: {{name: api, context: nowhere}}}}]\n")
    with pytest.raises(ConfigError, match=r"^devloop.yaml: services\[1\]\.image\.context: not a directory: "):
        config.load(None, sample_copy)
    write(sample_copy, f"services: [{svc}, {{name: web, image: {{name: web, context: sample-app}}}}]\n")
    with pytest.raises(ConfigError, match=r"^devloop.yaml: \(top level\): two services are named 'web'$"):
        config.load(None, sample_copy)


def test_the_loaded_config_knows_its_file(sample_copy: Path) -> None:
    path = write(sample_copy, "watch: {debounceMs: 10}\n")
    cfg = config.load(None, sample_copy / "sample-app")
    assert cfg.file == path and cfg.root == sample_copy
    assert cfg.source == str(path)  # not under the directory devloop runs in: the full path
    path.unlink()
    assert config.load(None, sample_copy).file is None  # the defaults
