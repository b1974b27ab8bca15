"""Load and validate devloop.yaml into frozen pydantic models.

One schema, `devloop/v2` (ConfigV2): a `services:` list (each with image, deploy, portForward,
liveUpdate). `devloop/v1` (and no file at all) is the single-service form: `upgrade_v1` lifts its
data into v2 data first, as Skaffold's schema upgrades do. Unknown keys and wrong types are errors
naming the file and the key path (`devloop.yaml: services[1].image.contxt: unknown key`; a v1 file's
at its own keys, `image.contxt`). The resolved `Config` is the v2 model with its relative paths
resolved against the directory of the file, plus where it came from. `devloop schema` prints the
JSON Schema of the v2 form.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import ErrorDetails, InitErrorDetails

from devloop import dockerfile, order
from devloop.errors import ConfigError

API_V1 = "devloop/v1"
API_V2 = "devloop/v2"
API_VERSION = API_V2
CONFIG_FILE = "devloop.yaml"
DEFAULT_KIND_CONFIG = "kind-config.yaml"
# without cluster.kindConfig and no kind-config.yaml beside devloop.yaml: one node, wired for the local registry
BUILTIN_KIND_CONFIG = Path(__file__).parent / "data" / "kind-config.yaml"
DEFAULT_FALLBACK = ("package.json", "package-lock.json", "npm-shrinkwrap.json", "Dockerfile", ".dockerignore")

_DNS_LABEL = r"^[a-z0-9]([a-z0-9-]{0,48}[a-z0-9])?$"
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_REGISTRY = rf"^[a-zA-Z0-9.-]+(?::[0-9]+)?(?:/{_COMPONENT})*$"
_TOKEN_HOST = r"^[a-zA-Z0-9.-]+(?::[0-9]+)?$"  # host[:port], as a Bearer realm's URL names it
_IMAGE_NAME = rf"^(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?{_COMPONENT}(?:/{_COMPONENT})*$"


_TYPES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a mapping"}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True, strict=False)


def _text(v: Any) -> Any:
    """Scalars in string maps (buildArgs) become strings, as docker would see them."""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int | float):
        return str(v)
    return v


def _path_text(v: Any) -> Any:
    if isinstance(v, Path) or (isinstance(v, str) and v.strip()):
        return v
    raise ValueError(f"must be a non-empty string (a path), got {_TYPES.get(type(v), type(v).__name__)}")


PathText = Annotated[Path, BeforeValidator(_path_text)]
NonEmpty = Annotated[str, Field(min_length=1, strict=True)]
StrList = Annotated[tuple[NonEmpty, ...], BeforeValidator(lambda v: [v] if isinstance(v, str) else v)]
Port = Annotated[int, Field(ge=1, le=65535, strict=True)]
KeepVersions = Annotated[int, Field(ge=1, le=100, strict=True)]


class ClusterConfig(_Model):
    name: Annotated[str, Field(pattern=_DNS_LABEL)] = ""  # empty: the kind config's name, else "devloop"
    kind_config: PathText = Path(DEFAULT_KIND_CONFIG)
    node_image: str = ""  # kind's default node image when empty

    @property
    def context(self) -> str:
        return f"kind-{self.name}"


class RegistryConfig(_Model):
    """A local registry for kind (kind's local-registry pattern). `auto` turns it on when the kind
    config points containerd at /etc/containerd/certs.d, as kind's docs prepare a cluster for one."""

    enabled: bool | Literal["auto"] = "auto"
    name: NonEmpty = "devloop-registry"
    host_port: Port = 5001
    image: NonEmpty = "registry:2"


class WatchConfig(_Model):
    debounce_ms: Annotated[int, Field(ge=0, le=10_000, strict=True)] = 50
    ignore: StrList = ()


class MonitoringConfig(_Model):
    """A Prometheus server in the cluster that reads the user's scrape ConfigMap as it is."""

    enabled: bool = False  # on for the bundled sample (the v1 form)
    config_map: NonEmpty = "prometheus-config"  # the user's ConfigMap, by name (key prometheus.yml)
    namespace: NonEmpty | None = None  # default: the first service's namespace
    image: NonEmpty = "prom/prometheus:v2.53.4"  # offline: tests/images/build-prometheus.sh
    local_port: Annotated[int, Field(ge=0, le=65535, strict=True)] = 9090  # devloop's forward to it (0: any free port)


class DashboardConfig(_Model):
    """The local web page of `devloop dev` (127.0.0.1 only)."""

    enabled: bool = True
    port: Annotated[int, Field(ge=0, le=65535, strict=True)] = 10350


class TargetConfig(_Model):
    """A cluster devloop may deploy to besides the local kind cluster (`release`, `up/dev --target`).
    Only declared targets are ever used: devloop never acts on "whatever the current context is"."""

    name: Annotated[str, Field(pattern=_DNS_LABEL, strict=True)]
    context: NonEmpty  # the kube context, by name (kubectl config get-contexts)
    registry: Annotated[str, Field(pattern=_REGISTRY, strict=True)]  # host[:port][/path] the cluster pulls from
    namespace: NonEmpty | None = None  # default: the manifests' metadata.namespace, else the context's
    pull_secret: NonEmpty | None = None  # an imagePullSecret in that namespace (created by you; devloop only names it)
    insecure: bool = False  # the registry speaks plain HTTP (no TLS): must be said explicitly
    # hosts besides the registry's own whose token service (a Bearer realm) may receive your Docker login
    token_hosts: tuple[Annotated[str, Field(pattern=_TOKEN_HOST, strict=True)], ...] = ()


def _unique_targets(targets: tuple[TargetConfig, ...]) -> tuple[TargetConfig, ...]:
    names = [t.name for t in targets]
    for n in names:
        if names.count(n) > 1:
            raise ValueError(f"two targets are named {n!r}")
    return targets


Targets = Annotated[tuple[TargetConfig, ...], AfterValidator(_unique_targets)]


class BuildSecret(_Model):
    """A BuildKit build secret (`RUN --mount=type=secret,id=…`): where its value is, never the value."""

    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]+$", strict=True)]
    env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", strict=True)] | None = None  # an environment variable's name
    file: PathText | None = None  # a file (relative to devloop.yaml's directory)

    @model_validator(mode="after")
    def _one_source(self) -> BuildSecret:
        if (self.env is None) == (self.file is None):
            raise ValueError(f"build secret {self.id!r}: give either `env` (a variable's name) or `file` (a path), not both")
        return self


def _unique_secrets(secrets: tuple[BuildSecret, ...]) -> tuple[BuildSecret, ...]:
    ids = [s.id for s in secrets]
    for i in ids:
        if ids.count(i) > 1:
            raise ValueError(f"two build secrets have the id {i!r}")
    return secrets


class ImageConfig(_Model):
    name: Annotated[str, Field(pattern=_IMAGE_NAME, strict=True)]
    context: PathText = Path(".")
    dockerfile: NonEmpty = "Dockerfile"
    build_args: dict[str, Annotated[str, BeforeValidator(_text)]] = Field(default_factory=dict)
    target: NonEmpty | None = None  # a build stage
    secrets: Annotated[tuple[BuildSecret, ...], AfterValidator(_unique_secrets)] = ()  # BuildKit --secret

    @property
    def dockerfile_path(self) -> Path:
        return self.context / self.dockerfile

    @property
    def secret_files(self) -> dict[str, Path]:
        return {s.id: s.file for s in self.secrets if s.file is not None}

    @property
    def secret_env(self) -> dict[str, str]:
        return {s.id: s.env for s in self.secrets if s.env is not None}


class RollingUpdate(_Model):
    max_surge: int | Annotated[str, Field(pattern=r"^\d{1,3}%$")] = 0
    max_unavailable: int | Annotated[str, Field(pattern=r"^\d{1,3}%$")] = 0

    @model_validator(mode="after")
    def _not_both_zero(self) -> RollingUpdate:
        if str(self.max_surge) == "0" and str(self.max_unavailable) == "0":
            raise ValueError("maxSurge and maxUnavailable cannot both be 0")
        return self


# -- deploy.helm: a Helm chart as the service's manifests (docs/reference.md, "Helm charts") ----------------

_VALUE_KEY = r"^[A-Za-z0-9_-]+(?:\[[0-9]+\])*(?:\.[A-Za-z0-9_-]+(?:\[[0-9]+\])*)*$"  # helm's --set key: a.b[0].c
ValueKey = Annotated[str, Field(pattern=_VALUE_KEY, strict=True)]
PathList = Annotated[tuple[PathText, ...], BeforeValidator(lambda v: [v] if isinstance(v, str) else v)]


class HelmValues(_Model):
    """Values on top of the chart's values.yaml: files (later wins), then single values (`--set-json`)."""

    values_files: PathList = ()  # relative to devloop.yaml's directory
    set_values: dict[ValueKey, Any] = Field(default_factory=dict, alias="set")


class HelmConfig(HelmValues):
    """The chart devloop renders with `helm template` instead of reading manifest files."""

    chart: PathText  # the chart's directory (holding Chart.yaml), relative to devloop.yaml's directory
    release: Annotated[str, Field(pattern=_DNS_LABEL, strict=True)] | None = None  # default: the service's name
    # which values take devloop's image: value key -> `repository` (the image's name), `tag`, or `ref` (name:tag)
    image_values: dict[ValueKey, Literal["repository", "tag", "ref"]] = Field(default_factory=dict)
    targets: dict[str, HelmValues] = Field(default_factory=dict)  # a declared target's values, added on top there


class DeployConfig(_Model):
    manifests: Annotated[
        tuple[PathText, ...], BeforeValidator(lambda v: [v] if isinstance(v, str) else v)
    ] = ()  # files, directories, or kustomize directories; empty: <context>/k8s
    deployment: NonEmpty | None = None  # default: the service's name
    namespace: NonEmpty | None = None  # default: the manifest's metadata.namespace, else the kube context's
    rollout_timeout: Annotated[float, Field(ge=5, le=3600)] = 180.0
    rolling_update: RollingUpdate | None = None  # dev-only override of the Deployment's strategy
    on_failure: Literal["rollback", "keep"] = "rollback"
    helm: HelmConfig | None = None  # a Helm chart instead of manifest files

    @model_validator(mode="after")
    def _chart_or_manifests(self) -> DeployConfig:
        if self.helm is not None and self.manifests:
            raise ValueError("give either deploy.manifests or deploy.helm (a chart), not both")
        return self


class PortForwardConfig(_Model):
    service: NonEmpty
    port: Port = 80
    local_port: Annotated[int, Field(ge=0, le=65535, strict=True)] = 8080


class RunStep(_Model):
    """A command run in the container after the files are copied and before the app restarts (liveUpdate.run)."""

    cmd: Annotated[tuple[NonEmpty, ...], Field(min_length=1)]  # argv, no shell: [npx, tsc, -p, .]
    trigger: Annotated[StrList, Field(min_length=1)]  # globs, as fallback's: the step runs when a synced file matches one

    @field_validator("cmd", mode="before")
    @classmethod
    def _argv(cls, v: Any) -> Any:
        if isinstance(v, str):
            raise ValueError(f"must be a list (argv, no shell), e.g. {v.split()!r}")
        return v


class LiveUpdateConfig(_Model):
    """Sync changed source files into the running containers and restart the app process.
    Off by default: devloop then wraps the container's command in a small restart loop (dev only)."""

    enabled: bool = False
    # where the Dockerfile copies the context: an absolute path of plain characters (the sync's shell reads it unquoted)
    # empty: the WORKDIR of the Dockerfile's build stage, else /app (resolved when the file is loaded)
    target: Annotated[str, Field(pattern=r"^/[A-Za-z0-9._@+/-]*$")] = ""
    fallback: StrList = DEFAULT_FALLBACK  # globs that always mean a full rebuild
    command: StrList = ()  # what the restart loop runs; empty = the container's own command
    run: tuple[RunStep, ...] = ()  # build steps between the copy and the restart (tsc, npm ci)


def _argv_list(v: Any) -> Any:
    if isinstance(v, str):
        raise ValueError("must be a list (argv: the program, then each argument), not a shell string")
    return v


class CommandConfig(_Model):
    """A command devloop runs on the host beside the cycle (unit tests, lint, code generation): at start
    and/or when a saved file matches its triggers (devloop.commands)."""

    name: Annotated[str, Field(pattern=_DNS_LABEL, strict=True)]
    argv: Annotated[tuple[NonEmpty, ...], Field(min_length=1), BeforeValidator(_argv_list)]
    workdir: PathText = Path(".")  # relative to devloop.yaml
    trigger: StrList = ()  # globs relative to devloop.yaml (`**` any directories); empty: any file below workdir
    # `when`, not `on`: YAML 1.1 (PyYAML, as most tools) reads a bare `on` key as true
    when: Annotated[
        tuple[Literal["start", "save"], ...], Field(min_length=1), BeforeValidator(lambda v: [v] if isinstance(v, str) else v)
    ] = ("save",)
    blocks_deploy: bool = False  # a failed run holds the deploy of the services whose files triggered it
    timeout: Annotated[int, Field(ge=1, le=3600, strict=True)] = 600  # seconds; a run that takes longer is stopped and failed

    @model_validator(mode="before")
    @classmethod
    def _no_on(cls, data: Any) -> Any:
        if isinstance(data, dict) and True in data:
            raise ValueError("a key `on` (YAML reads it as true): write `when: [start, save]`")
        return data


class InspectConfig(_Model):
    """`devloop dev` opens the Node.js inspector of this service (dev render only; `--inspect SERVICE`)."""

    enabled: bool = False
    port: Port = 9229  # in the pod (127.0.0.1 there)
    local_port: Annotated[int, Field(ge=0, le=65535, strict=True)] = 9229  # on 127.0.0.1; 0: any free port


class ServiceConfig(_Model):
    name: Annotated[str, Field(pattern=_DNS_LABEL, strict=True)] = ""  # empty: deploy.deployment, else the image's last name part
    image: ImageConfig | None = None  # none: the manifests' own images (Postgres, Redis), applied and waited for
    deploy: DeployConfig = DeployConfig()
    port_forward: tuple[PortForwardConfig, ...] = ()
    live_update: LiveUpdateConfig = LiveUpdateConfig()
    depends_on: StrList = ()  # services that must be ready (a Job: completed) before this one rolls out
    inspect: InspectConfig = InspectConfig()

    @model_validator(mode="after")
    def _live_update_needs_image(self) -> ServiceConfig:
        if self.live_update.enabled and self.image is None:
            raise ValueError(f"service {self.name!r}: liveUpdate needs an image that devloop builds")
        if self.inspect.enabled and self.image is None:
            raise ValueError(f"service {self.name!r}: inspect needs an image that devloop builds")
        return self

    @field_validator("port_forward", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, dict) else v

    @model_validator(mode="before")
    @classmethod
    def _default_name(cls, data: Any) -> Any:
        """No `name`: the Deployment's (deploy.deployment), else the image name's last part when it is a DNS label."""
        if not isinstance(data, dict) or "name" in data:
            return data
        deploy, image = data.get("deploy"), data.get("image")
        derived = deploy.get("deployment") if isinstance(deploy, dict) else None
        if derived is None and isinstance(image, dict) and isinstance(image.get("name"), str):
            last = image["name"].rsplit("/", 1)[-1]
            derived = last if re.fullmatch(_DNS_LABEL, last) else None
        return {"name": derived, **data} if isinstance(derived, str) else data

    @model_validator(mode="after")
    def _named(self) -> ServiceConfig:
        if not self.name:
            what = f"image {self.image.name!r} gives none" if self.image else "a service without image has no name to derive"
            raise ValueError(f"needs a `name` (lowercase letters, digits and '-'): {what}")
        return self

    @property
    def deployment(self) -> str:
        return self.deploy.deployment or self.name

    @property
    def built(self) -> ImageConfig:
        """The image devloop builds for this service; asking for it of a service without one is a bug."""
        if self.image is None:
            raise ConfigError(f"service {self.name} has no image to build", "this is a bug in devloop: please report it")
        return self.image

    @property
    def manifests(self) -> tuple[Path, ...]:
        return self.deploy.manifests


class ConfigV2(_Model):
    """The devloop.yaml format (apiVersion devloop/v2)."""

    api_version: Literal["devloop/v2"] = Field("devloop/v2", alias="apiVersion")
    cluster: ClusterConfig = ClusterConfig()
    registry: RegistryConfig = RegistryConfig()
    watch: WatchConfig = WatchConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    dashboard: DashboardConfig = DashboardConfig()
    keep_versions: KeepVersions = 3  # content-tagged versions kept per service (host, local registry, nodes)
    targets: Targets = ()
    # project-wide manifests: where a service without deploy.manifests finds its Deployment
    manifests: Annotated[tuple[PathText, ...], BeforeValidator(lambda v: [v] if isinstance(v, str) else v)] = ()
    services: Annotated[tuple[ServiceConfig, ...], Field(min_length=1)]
    commands: tuple[CommandConfig, ...] = ()  # run on the host beside the cycle (devloop.commands)

    @model_validator(mode="after")
    def _unique(self) -> ConfigV2:
        named = [c.name for c in self.commands]
        if len(set(named)) != len(named):
            raise ValueError(f"two commands are named {next(n for n in named if named.count(n) > 1)!r}")
        seen: set[str] = set()
        for s in self.services:
            if s.name in seen:
                raise ValueError(f"two services are named {s.name!r}")
            seen.add(s.name)
        ports = [(f.local_port, s.name) for s in self.services for f in s.port_forward if f.local_port]
        taken: dict[int, str] = {}
        for port, name in ports:
            if port in taken:
                raise ValueError(f"localPort {port} is used by two port-forwards ({taken[port]} and {name})")
            taken[port] = name
        wrong = order.problem({s.name: s.depends_on for s in self.services})
        if wrong:
            raise ValueError(wrong)
        return self

    @model_validator(mode="after")
    def _helm_targets(self) -> ConfigV2:
        declared = {t.name for t in self.targets}
        for s in self.services:
            for name in s.deploy.helm.targets if s.deploy.helm else ():
                if name not in declared:
                    raise ValueError(f"service {s.name}: deploy.helm.targets names {name!r}, which is not a declared target")
        return self


class Config(ConfigV2):
    """What the rest of devloop reads: the file's model with its paths resolved (absolute), the cluster's name
    and the registry switch decided, and where it came from."""

    root: Path  # directory relative paths were resolved against
    source: str  # the file as the user would name it (for messages), or "defaults"
    file: Path | None = None  # the file it came from (absolute); None for the defaults

    @property
    def registry_enabled(self) -> bool:
        return self.registry.enabled is True

    def service(self, name: str) -> ServiceConfig:
        for s in self.services:
            if s.name == name:
                return s
        raise KeyError(name)

    def target(self, name: str) -> TargetConfig:
        """A declared target, by name; anything else is refused (exit 2)."""
        for t in self.targets:
            if t.name == name:
                return t
        declared = ", ".join(t.name for t in self.targets) or "none"
        raise ConfigError(
            f"no target named {name!r} in {self.source} (declared: {declared})",
            "declare it under `targets:` with its kube context and registry; devloop never uses an undeclared context",
        )


# -- devloop/v1: the single-service form, lifted into v2 -----------------------------------------------

# The v1 form's defaults are the bundled sample's (its file may say nothing at all), key by key.
_SAMPLE_SERVICE = "web-app"  # the service's name is its Deployment's
_SAMPLE_IMAGE = {"name": "my-web-app", "context": "sample-app"}
_SAMPLE_FORWARD = {"service": "web-app-service"}
_V1_FORWARD = ("portForward", "port_forward")
_V1_SERVICE = ("image", "deploy", *_V1_FORWARD, "liveUpdate", "live_update")
_SWITCH: TypeAdapter[bool] = TypeAdapter(bool)


def upgrade_v1(data: dict[str, Any]) -> dict[str, Any]:
    """devloop/v1 data as devloop/v2 data meaning the same (raw, as read from YAML; v2 validates it).

    v1 has one service at the top level (image, deploy, portForward, liveUpdate), named after its Deployment,
    with the bundled sample's defaults, and monitoring on. Only `portForward.enabled` has no v2 form: it is
    checked here (a ValidationError at its v1 location, `portForward.enabled`)."""
    v2, errors = _upgrade_v1(data)
    if errors:
        details = [InitErrorDetails(type=e["type"], loc=e["loc"], input=e["input"], ctx=e.get("ctx", {})) for e in errors]
        raise ValidationError.from_exception_data("devloop/v1", details)
    return v2


def _upgrade_v1(data: dict[str, Any]) -> tuple[dict[str, Any], list[ErrorDetails]]:
    """upgrade_v1, with the errors of the v1-only part returned (at v1 keys) rather than raised."""
    top = {"apiVersion": API_V2, **{k: v for k, v in data.items() if k not in (*_V1_SERVICE, "apiVersion")}}
    if isinstance(monitoring := top.get("monitoring", {}), dict):
        top["monitoring"] = {"enabled": True, **monitoring}
    service = {k: v for k, v in data.items() if k in _V1_SERVICE}
    if isinstance(image := service.get("image", {}), dict):
        service["image"] = {**_SAMPLE_IMAGE, **image}
    name: Any = _SAMPLE_SERVICE
    if isinstance(deploy := service.get("deploy", {}), dict):
        name = _SAMPLE_SERVICE if deploy.get("deployment") is None else deploy["deployment"]
        service["deploy"] = {**deploy, "deployment": name}
    key = next((k for k in _V1_FORWARD if k in service), "portForward")  # with both, pydantic reads portForward
    service[key], errors = _v1_forwards(service.get(key, {}))  # absent: the sample's, on
    return {**top, "services": [{"name": name, **service}]}, [{**e, "loc": (key, *e["loc"])} for e in errors]


def _v1_forwards(value: Any) -> tuple[list[Any], list[ErrorDetails]]:
    """v1's one port-forward (a mapping; on unless `enabled: false`) as v2's list; checked here even when off."""
    errors: list[ErrorDetails] = []
    forward, on = value, True
    if isinstance(value, dict):
        forward = {**_SAMPLE_FORWARD, **value}
        try:
            on = _SWITCH.validate_python(forward.pop("enabled", True))
        except ValidationError as e:
            errors += [{**err, "loc": ("enabled",)} for err in e.errors()]
    try:
        PortForwardConfig.model_validate(forward)
    except ValidationError as e:
        errors += e.errors()
    return ([forward] if on and not errors else []), errors


# What each key means, for `devloop schema` (an editor shows it beside the key it completes). Keyed by
# model and key as written in the file; a key without one fails tests/unit/test_config_defaults.py.
DESCRIPTIONS: dict[str, dict[str, str]] = {
    "ConfigV2": {
        "apiVersion": "The format of this file: devloop/v2 (the older devloop/v1 is the single-service form).",
        "cluster": "The local kind cluster devloop creates and deploys to.",
        "registry": "A local registry beside the kind cluster: only changed layers travel to the nodes.",
        "watch": "How file changes are picked up.",
        "monitoring": "A Prometheus in the cluster that reads your scrape ConfigMap (off by default).",
        "dashboard": "The local web page `devloop dev` serves (127.0.0.1 only).",
        "keepVersions": "Content-tagged versions kept per service (host, local registry, nodes); 1-100.",
        "targets": "Remote clusters for `release` and `--target`: only these kube contexts are ever used.",
        "manifests": "Project-wide manifests (files, directories or kustomize directories): where a service without "
        "deploy.manifests finds its Deployment.",
        "services": "One entry per image and the Deployment that runs it.",
        "commands": "Commands run on the host beside the cycle (unit tests, lint, code generation), at start and/or on save.",
    },
    "CommandConfig": {
        "name": "A lowercase DNS label naming the command in the terminal, events, status and the dashboard.",
        "argv": "The program and its arguments, as a list (no shell): e.g. [npm, test]. The program is looked up on PATH, "
        "or relative to workdir when it holds a /.",
        "workdir": "The directory it runs in, relative to devloop.yaml (default: devloop.yaml's directory).",
        "trigger": "Globs relative to devloop.yaml (`**`: any directories; a directory: every file below it) whose save runs "
        "it; empty: any file below workdir.",
        "when": "When it runs: start (once, as `devloop dev` starts), save (each save matching trigger), or both; default [save].",
        "blocksDeploy": "true: a failed run holds the deploy of the services whose saved files triggered it (the previous "
        "version keeps serving) until it passes; false (default): it is reported and the deploy goes on.",
        "timeout": "Seconds a run may take before it is stopped and counted as failed (1-3600; default 600).",
    },
    "ClusterConfig": {
        "name": "The kind cluster's name; default: the `name:` in the kind config, else devloop.",
        "kindConfig": "The kind config the cluster is created from, relative to devloop.yaml. Default kind-config.yaml "
        "beside it; when that file does not exist, devloop's built-in one (one node, wired for the local registry).",
        "nodeImage": "The kind node image; empty: kind's default.",
    },
    "RegistryConfig": {
        "enabled": "true, false or auto: on when the kind config points containerd at /etc/containerd/certs.d.",
        "name": "The registry container devloop starts (and starts again when stopped).",
        "hostPort": "The host port images are pushed to (localhost:<hostPort>/<image.name>:<tag>).",
        "image": "The registry's image.",
    },
    "WatchConfig": {
        "debounceMs": "Quiet period (ms) before a batch of changes starts a cycle.",
        "ignore": "Extra glob patterns the watcher ignores (besides .dockerignore).",
    },
    "MonitoringConfig": {
        "enabled": "A Prometheus in the cluster that reads your scrape ConfigMap.",
        "configMap": "Your ConfigMap holding prometheus.yml, by name; read as it is.",
        "namespace": "Where Prometheus runs; default: the first service's namespace.",
        "image": "The Prometheus image.",
        "localPort": "Accepted, not used: status reads Prometheus through the API server.",
    },
    "DashboardConfig": {
        "enabled": "Serve the dashboard during `devloop dev` (--no-ui turns it off).",
        "port": "Its port on 127.0.0.1; 0: any free port.",
    },
    "TargetConfig": {
        "name": "The target's name, as --target NAME says it.",
        "context": "The kube context, by name (kubectl config get-contexts).",
        "registry": "host[:port][/path] the cluster pulls from; images are pushed as <registry>/<image.name>:<tag>.",
        "namespace": "Default: the manifest's metadata.namespace, else the context's.",
        "pullSecret": "An imagePullSecret in that namespace (created by you; devloop only names it in the pod spec).",
        "insecure": "The registry speaks plain HTTP (no TLS): must be said explicitly.",
        "tokenHosts": "Hosts besides the registry's own whose token service may receive your Docker login.",
    },
    "BuildSecret": {
        "id": "The secret's id, as `RUN --mount=type=secret,id=<id>` names it.",
        "env": "The name of an environment variable holding the value (never the value itself).",
        "file": "A file holding the value, relative to devloop.yaml.",
    },
    "ImageConfig": {
        "name": "The image your manifests reference (any tag: devloop swaps in its own content tag).",
        "context": "The build context, relative to devloop.yaml.",
        "dockerfile": "The Dockerfile, relative to the context.",
        "buildArgs": "Build arguments, e.g. {NODE_IMAGE: node:24-alpine}.",
        "target": "A build stage of a multi-stage Dockerfile.",
        "secrets": "BuildKit build secrets: each an id and either env or file.",
    },
    "RollingUpdate": {
        "maxSurge": 'Extra pods during a rollout: a number or a percentage ("25%").',
        "maxUnavailable": "Pods that may be unavailable during a rollout: a number or a percentage.",
    },
    "DeployConfig": {
        "manifests": "Files, directories or kustomize directories; empty: the project-wide manifests, else <context>/k8s.",
        "deployment": "The Deployment devloop rolls out; default: the service's name.",
        "namespace": "Default: the manifest's metadata.namespace, else the kube context's.",
        "rolloutTimeout": "Seconds before a rollout that never becomes ready fails (5-3600).",
        "rollingUpdate": "Dev only: override the Deployment's rolling-update strategy when applying.",
        "onFailure": "rollback or keep: what to do when a rollout fails and the old version no longer serves.",
        "helm": "A Helm chart, rendered with `helm template`, instead of manifest files (not with deploy.manifests).",
    },
    "HelmConfig": {
        "chart": "The chart's directory (holding Chart.yaml), relative to devloop.yaml; its dependencies must be in charts/.",
        "release": "The release name the templates see (.Release.Name); default: the service's name.",
        "valuesFiles": "Values files on top of the chart's values.yaml, in order (later wins), relative to devloop.yaml.",
        "set": "Single values on top of the files (any YAML value; helm's --set-json).",
        "imageValues": "Which values take devloop's image: value key -> repository, tag or ref (repository:tag).",
        "targets": "A declared target's values, added after the ones above for `release` and `--target`.",
    },
    "HelmValues": {
        "valuesFiles": "Values files for this target, after the service's, relative to devloop.yaml.",
        "set": "Single values for this target, after the service's (helm's --set-json).",
    },
    "PortForwardConfig": {
        "service": "The Kubernetes Service to forward to.",
        "port": "Its port.",
        "localPort": "The local port, bound on 127.0.0.1 only; 0: any free port.",
    },
    "LiveUpdateConfig": {
        "enabled": "Sync changed files into the running pods and restart the process, instead of rebuilding.",
        "target": "Where the Dockerfile copies the build context; default: the WORKDIR of its build stage, else /app.",
        "fallback": "Globs that always mean a full rebuild.",
        "command": "What the restart loop runs; empty: the container's own command.",
        "run": "Build steps run in the container (in target, as its user) after the files are copied and before the app "
        "restarts, each when a synced file matches its trigger; a failing step leaves the app unrestarted.",
    },
    "RunStep": {
        "cmd": "The command as a list (argv, no shell), e.g. [npx, tsc, -p, .]; run in liveUpdate.target.",
        "trigger": "Globs (as fallback's) of the synced files that run this step, e.g. [src/**/*.ts, tsconfig.json].",
    },
    "InspectConfig": {
        "enabled": "`devloop dev` opens the Node.js inspector of this service (as `--inspect SERVICE` does); dev only.",
        "port": "The inspector's port inside the pod (bound on the pod's 127.0.0.1).",
        "localPort": "The local port a debugger attaches to, on 127.0.0.1 only; 0: any free port.",
    },
    "ServiceConfig": {
        "name": "A lowercase DNS label naming the service in events, logs and status; default: deploy.deployment, "
        "else the image name's last part.",
        "image": "The image devloop builds; none: the manifests' own images (Postgres, Redis), applied and waited for.",
        "dependsOn": "Services that must be ready (a Job: completed) before this one is applied; a cycle is an error.",
        "deploy": "How the image is rolled out.",
        "portForward": "Local forwards to Services, kept alive across rollouts.",
        "liveUpdate": "Sync saves into the running pods instead of rebuilding (off by default).",
        "inspect": "A debugger that survives saves: the Node.js inspector, forwarded to 127.0.0.1 (off by default).",
    },
}


def schema() -> dict[str, Any]:
    """The JSON Schema of devloop.yaml (v2), for editors: every key with its description (DESCRIPTIONS)."""
    s = ConfigV2.model_json_schema(by_alias=True)
    for model, node in [("ConfigV2", s), *s.get("$defs", {}).items()]:
        for key, prop in node.get("properties", {}).items():
            text = DESCRIPTIONS.get(model, {}).get(key)
            if text:
                prop["description"] = text
    s["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    s["title"] = "devloop.yaml"
    return s


# -- finding and reading the file ------------------------------------------------------------------


def find_config_file(explicit: Path | None, cwd: Path) -> Path | None:
    """--config, else devloop.yaml in cwd or the nearest parent (as git finds .git)."""
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(f"{explicit}: no such file", "pass an existing devloop.yaml to --config")
        return explicit
    for d in (cwd, *cwd.parents):
        if (d / CONFIG_FILE).is_file():
            return d / CONFIG_FILE
    return None


def _defaults_root(cwd: Path) -> Path | None:
    """With no devloop.yaml anywhere: the nearest directory holding the default kind config."""
    for d in (cwd, *cwd.parents):
        if (d / DEFAULT_KIND_CONFIG).is_file():
            return d
    return None


def load(explicit: Path | None = None, cwd: Path | None = None, *, check_paths: bool = True) -> Config:
    """Load devloop.yaml (or the defaults) and validate it."""
    cwd = (cwd or Path.cwd()).resolve()
    path = find_config_file(explicit, cwd)
    if path is None:
        root = _defaults_root(cwd)
        if root is None:
            raise ConfigError(
                f"no {CONFIG_FILE} found in {cwd} or any parent directory, and no {DEFAULT_KIND_CONFIG} for the built-in defaults",
                f"run devloop from your project's directory, or create {CONFIG_FILE} (configuration reference: docs/reference.md)",
            )
        return parse({}, root=root, source="defaults", check_paths=check_paths)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot be read: {e}", "check the file's permissions and encoding (UTF-8)") from e
    file = path.resolve()
    return parse_text(text, root=file.parent, source=_display(path, cwd), file=file, check_paths=check_paths)


def _display(path: Path, cwd: Path) -> str:
    full = path if path.is_absolute() else cwd / path
    try:
        return str(full.resolve().relative_to(cwd))
    except ValueError:
        return str(full.resolve())


def parse_text(text: str, *, root: Path, source: str, file: Path | None = None, check_paths: bool = True) -> Config:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{source}: not valid YAML{where}: {problem}", "fix the YAML syntax") from None
    except RecursionError:
        raise ConfigError(f"{source}: not valid YAML: nested too deeply", "fix the YAML syntax") from None
    return parse(data, root=root, source=source, file=file, check_paths=check_paths)


HINT = "see the configuration reference in docs/reference.md (`devloop schema` prints the JSON Schema)"


def parse(data: Any, *, root: Path, source: str, file: Path | None = None, check_paths: bool = True) -> Config:
    """Validate YAML data (v2, or v1 lifted into v2) and resolve it against `root`."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: (top level): must be a mapping, got {_TYPES.get(type(data), type(data).__name__)}", HINT)
    version = data.get("apiVersion", API_V2 if "services" in data else API_V1)
    if version not in (API_V1, API_V2):
        raise ConfigError(
            f"{source}: apiVersion: unsupported version {version!r}", f"this devloop reads apiVersion: {API_V2} (and the older {API_V1})"
        )
    legacy = version == API_V1
    if legacy and "services" in data:
        raise ConfigError(f"{source}: services: needs apiVersion: {API_V2}", f"set apiVersion: {API_V2} at the top")
    v2, v1_errors = _upgrade_v1(data) if legacy else (data, [])
    found = [_Found(*_keys(e, data), e) for e in v1_errors]
    try:
        model = ConfigV2.model_validate(v2)
    except ValidationError as e:
        found += [_Found(*_keys(err, v2), err) for err in e.errors()]
    if found:
        raise _error(source, found, legacy)
    return _resolve(model, root=root, source=source, file=file, check_paths=check_paths, legacy=legacy)


# -- pydantic's errors as the user's key paths -----------------------------------------------------


class _Found(NamedTuple):
    keys: tuple[int | str, ...]  # where, as the keys of the data
    labelled: bool  # pydantic named a union's member in the location: this is one of the union's alternatives
    error: ErrorDetails


def _error(source: str, found: list[_Found], legacy: bool) -> ConfigError:
    """The error a person should see first, at the key path they wrote (`services[1].image.contxt: unknown key`)."""
    if legacy:  # at the v1 keys (services[0].image is image; `services` too short is only a consequence), in v1's order
        lifted = (f._replace(keys=f.keys[2:]) if f.keys[:2] == ("services", 0) else f for f in found)
        found = sorted((f for f in lifted if f.keys != ("services",)), key=_v1_order)
    keys, labelled, first = found[0]
    if labelled and _is_int(found[0]):
        # pydantic lists a union's alternatives in order: for a number-or-percentage field (rollingUpdate.maxSurge) the
        # first says "not an integer", which says least. Instead: an unknown key anywhere (the likelier mistake), else
        # the deepest error, the field's text alternative counting one deeper.
        keys, _, first = max(found, key=lambda f: (f.error["type"] == "extra_forbidden", len(f.keys) + (f.labelled and not _is_int(f))))
    hint = "check the spelling; " + HINT if first["type"] == "extra_forbidden" else HINT
    where = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in keys).removeprefix(".") or "(top level)"
    return ConfigError(f"{source}: {where}: {_message(first, keys)}", hint)


_V1_RANK: dict[int | str, int] = {"portForward": 1, "port_forward": 1, "liveUpdate": 2, "live_update": 2, "name": 4}


def _is_int(f: _Found) -> bool:
    return f.error["type"].startswith("int_")


def _v1_order(f: _Found) -> int:
    """v1 checked its portForward after image and deploy, then liveUpdate, then unknown keys, and named the
    service (after deploy.deployment) last."""
    if f.error["type"] == "extra_forbidden" and len(f.keys) == 1:
        return 3
    return _V1_RANK.get(f.keys[0], 0) if f.keys else 0


def _keys(err: ErrorDetails, data: Any) -> tuple[tuple[int | str, ...], bool]:
    """The error's location as keys of the data, and whether pydantic labelled a union's member in it.

    A label is a part of the location that is not a key: the value there is not a mapping, or is one without it
    (a missing key is the one exception). An index into a value that is not a list is a one-or-many wrapper's."""
    keys: list[int | str] = []
    labelled = False
    node = data
    for n, part in enumerate(err["loc"]):
        if isinstance(part, int):
            keys.append(part)
            if (isinstance(node, list) and -len(node) <= part < len(node)) or (isinstance(node, dict) and part in node):
                node = node[part]
        elif isinstance(node, dict) and (part in node or (err["type"] == "missing" and n == len(err["loc"]) - 1)):
            keys.append(part)
            node = node.get(part)
        else:
            labelled = True
    return tuple(keys), labelled


def _message(err: ErrorDetails, keys: tuple[int | str, ...]) -> str:
    kind = err["type"]
    got = err.get("input")
    what = "nothing" if got is None else _TYPES.get(type(got), type(got).__name__)
    ctx = err.get("ctx", {})
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required"
    if kind in ("string_type", "string_too_short"):
        return f"must be a non-empty string, got {what}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"must be an integer, got {what}"
    if kind in ("bool_type", "bool_parsing"):
        return f"must be true or false, got {what}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"must be a mapping, got {what}"
    if kind in ("tuple_type", "list_type"):
        return f"must be a list, got {what}"
    if kind in ("greater_than_equal", "less_than_equal"):
        return f"must be {'at least ' + str(ctx['ge']) if 'ge' in ctx else 'at most ' + str(ctx['le'])}, got {got}"
    if kind == "string_pattern_mismatch":
        if keys[-2:] == ("image", "name"):
            return f"{got!r} is not a valid image repository name (lowercase, no tag)"
        if keys[-1:] in (("name",), ("release",)):
            return f"{got!r}: must be lowercase letters, digits and '-' (a DNS label)"
        if keys[-1:] == ("target",):
            return f"{got!r}: must be an absolute path in the container, of letters, digits and . _ @ + / - (no spaces or wildcards)"
        if keys[-2:-1] in (("imageValues",), ("set",)):  # a key of deploy.helm's mappings
            return f"{got!r} is not a value key (like image.tag or env[0].value)"
        if "tokenHosts" in keys:
            return f"{got!r}: must be a host or host:port (no scheme, no path)"
        return f"{got!r} is not valid here"
    if kind == "too_short":
        return "must list at least one entry"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '?')}, got {got!r}"
    return str(err.get("msg", "invalid")).removeprefix("Value error, ")


# -- resolving paths, the cluster's name and the registry switch -----------------------------------


def _path(root: Path, value: Path | str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else (root / p).resolve()


def _resolve(model: ConfigV2, *, root: Path, source: str, file: Path | None, check_paths: bool, legacy: bool) -> Config:
    kind_config = _path(root, model.cluster.kind_config)
    if "kind_config" not in model.cluster.model_fields_set and not kind_config.is_file():
        kind_config = BUILTIN_KIND_CONFIG  # nothing said, no file: the built-in one
    kind_doc = _read_kind_config(kind_config)
    name = model.cluster.name or str(kind_doc.get("name") or "devloop")
    if re.fullmatch(_DNS_LABEL, name) is None:
        raise ConfigError(f"{kind_config}: name: must be lowercase letters, digits and '-' (a kind cluster name)", HINT)
    registry = model.registry
    if registry.enabled == "auto":
        registry = registry.model_copy(update={"enabled": _kind_config_wants_registry(kind_doc)})
    services = []
    shared = tuple(_path(root, m) for m in model.manifests)
    for n, m in enumerate(shared):
        if check_paths and not m.exists():
            raise ConfigError(f"{source}: manifests[{n}]: no such file or directory: {m}", "list your manifests' files or directories")
    for n, s in enumerate(model.services):
        helm = _resolve_helm(root, s.deploy.helm) if s.deploy.helm else None
        if s.image is None:
            manifests = tuple(_path(root, m) for m in s.deploy.manifests) or (() if helm else shared)
            if not manifests and not helm:
                raise ConfigError(
                    f"{source}: services[{n}].deploy.manifests: required for a service without image",
                    "list the manifests of its workloads (e.g. a StatefulSet), or give it an image to build",
                )
            s = s.model_copy(update={"deploy": s.deploy.model_copy(update={"manifests": manifests, "helm": helm})})
        else:
            context = _path(root, s.image.context)
            manifests = tuple(_path(root, m) for m in s.deploy.manifests) or (() if helm else (shared or (context / "k8s",)))
            s = s.model_copy(
                update={
                    "image": s.image.model_copy(
                        update={
                            "context": context,
                            "secrets": tuple(x.model_copy(update={"file": _path(root, x.file)}) if x.file else x for x in s.image.secrets),
                        }
                    ),
                    "deploy": s.deploy.model_copy(update={"manifests": manifests, "helm": helm}),
                    "live_update": s.live_update.model_copy(update={"target": _live_target(source, n, s, context, legacy)}),
                }
            )
        if check_paths:
            _check_paths(source, "" if legacy else f"services[{n}]", s)
        services.append(s)
    if check_paths and not kind_config.is_file():
        raise ConfigError(f"{source}: cluster.kindConfig: no such file: {kind_config}", "devloop creates the kind cluster from this file")
    commands = tuple(c.model_copy(update={"workdir": _path(root, c.workdir)}) for c in model.commands)
    for n, c in enumerate(commands):
        if check_paths and not c.workdir.is_dir():
            raise ConfigError(f"{source}: commands[{n}].workdir: not a directory: {c.workdir}", "workdir is relative to devloop.yaml")
    resolved = {
        "commands": commands,
        "cluster": model.cluster.model_copy(update={"name": name, "kind_config": kind_config}),
        "registry": registry,
        "services": tuple(services),
        "manifests": shared,
    }
    return Config.model_validate({**dict(model), **resolved, "root": root, "source": source, "file": file})


def _live_target(source: str, n: int, s: ServiceConfig, context: Path, legacy: bool) -> str:
    """liveUpdate.target as written, else the WORKDIR of the Dockerfile's build stage, else /app."""
    if s.live_update.target:
        return s.live_update.target
    try:
        text = (context / s.built.dockerfile).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return "/app"  # no Dockerfile (yet): its absence is reported on its own
    found, hidden = dockerfile.workdir(text, s.built.target)
    if found and re.fullmatch(r"/[A-Za-z0-9._@+/-]*", found):
        return found
    if s.live_update.enabled and (hidden or found):
        at = "" if legacy else f"services[{n}]."
        what = "a variable" if hidden else f"{found!r}, which has characters the sync cannot use"
        raise ConfigError(
            f"{source}: {at}liveUpdate.target: the Dockerfile's WORKDIR is {what}",
            "set liveUpdate.target to the absolute path the Dockerfile copies the app to",
        )
    return "/app"


def _resolve_helm(root: Path, helm: HelmConfig) -> HelmConfig:
    def files(v: HelmValues) -> dict[str, Any]:
        return {"values_files": tuple(_path(root, f) for f in v.values_files)}

    targets = {name: t.model_copy(update=files(t)) for name, t in helm.targets.items()}
    return helm.model_copy(update={"chart": _path(root, helm.chart), "targets": targets, **files(helm)})


def _check_helm(source: str, at: str, helm: HelmConfig) -> None:
    if not (helm.chart / "Chart.yaml").is_file():
        what = "no such directory" if not helm.chart.exists() else "not a chart (no Chart.yaml in it)"
        raise ConfigError(
            f"{source}: {at}deploy.helm.chart: {what}: {helm.chart}",
            "point deploy.helm.chart at the chart's directory (the one holding Chart.yaml), relative to devloop.yaml",
        )
    named = [("", helm)] + [(f"targets.{t}.", v) for t, v in helm.targets.items()]
    for prefix, values in named:
        for n, f in enumerate(values.values_files):
            if not f.is_file():
                raise ConfigError(
                    f"{source}: {at}deploy.helm.{prefix}valuesFiles[{n}]: no such file: {f}",
                    "values files are relative to devloop.yaml's directory",
                )


def _check_paths(source: str, where: str, s: ServiceConfig) -> None:
    at = f"{where}." if where else ""
    if s.image is not None and not s.image.context.is_dir():
        raise ConfigError(
            f"{source}: {at}image.context: not a directory: {s.image.context}",
            "point image.context at the directory holding the Dockerfile",
        )
    if s.image is not None and not s.image.dockerfile_path.is_file():
        raise ConfigError(
            f"{source}: {at}image.dockerfile: no such file: {s.image.dockerfile_path}", "image.dockerfile is relative to image.context"
        )
    if s.deploy.helm is not None:
        _check_helm(source, at, s.deploy.helm)
    for n, m in enumerate(s.manifests):
        if not m.exists():
            raise ConfigError(f"{source}: {at}deploy.manifests[{n}]: no such file or directory: {m}", "set deploy.manifests")


def _read_kind_config(path: Path) -> dict[str, Any]:
    """The kind config as a mapping, after checking it is a kind Cluster document ({} when absent)."""
    if not path.is_file():
        return {}
    hint = "see https://kind.sigs.k8s.io/docs/user/configuration/"
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, OSError, UnicodeDecodeError, RecursionError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"{path}: not a valid kind config: {first}", hint) from None
    if not isinstance(doc, dict) or doc.get("kind") != "Cluster":
        raise ConfigError(f"{path}: not a kind cluster config (expected `kind: Cluster`)", hint)
    name = doc.get("name")
    if name is not None and not isinstance(name, str):
        raise ConfigError(f"{path}: name: must be a string", hint)
    patches = doc.get("containerdConfigPatches")
    if patches is not None and not (isinstance(patches, list) and all(isinstance(p, str) for p in patches)):
        raise ConfigError(f"{path}: containerdConfigPatches: must be a list of strings", hint)
    return doc


def _kind_config_wants_registry(doc: dict[str, Any]) -> bool:
    return any("config_path" in p and "/etc/containerd/certs.d" in p for p in doc.get("containerdConfigPatches") or [])
