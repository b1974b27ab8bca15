"""Load and validate devloop.yaml into frozen dataclasses.

One loader: `yaml.safe_load`, then every key is checked. Unknown keys and wrong types are errors
that name the file and the key path (`devloop.yaml: image.context: not a directory`). With no
file at all, the defaults serve the bundled sample app from the repository root.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from devloop.errors import ConfigError

API_VERSION = "devloop/v1"
CONFIG_FILE = "devloop.yaml"


@dataclass(frozen=True)
class ClusterConfig:
    name: str
    kind_config: Path
    node_image: str = ""  # kind's default node image when empty

    @property
    def context(self) -> str:
        return f"kind-{self.name}"


@dataclass(frozen=True)
class RegistryConfig:
    """A local registry for kind (kind's local-registry pattern).

    `enabled` is resolved at load time: `auto` (the default) turns it on when the kind config
    points containerd at /etc/containerd/certs.d, which is how kind's docs prepare a cluster for one.
    """

    enabled: bool = False
    name: str = "devloop-registry"
    host_port: int = 5001
    image: str = "registry:2"


@dataclass(frozen=True)
class ImageConfig:
    name: str
    context: Path
    dockerfile: str = "Dockerfile"
    build_args: Mapping[str, str] = field(default_factory=dict)

    @property
    def dockerfile_path(self) -> Path:
        return self.context / self.dockerfile


@dataclass(frozen=True)
class DeployConfig:
    manifests: tuple[Path, ...]
    deployment: str
    namespace: str = "default"
    rollout_timeout: float = 180.0
    # dev-only rolling-update override (maxSurge, maxUnavailable); None keeps the manifest's
    rolling_update: tuple[str, str] | None = None


@dataclass(frozen=True)
class PortForwardConfig:
    enabled: bool = True
    service: str = "web-app-service"
    port: int = 80
    local_port: int = 8080


@dataclass(frozen=True)
class WatchConfig:
    debounce_ms: int = 200
    ignore: tuple[str, ...] = ()


DEFAULT_FALLBACK = ("package.json", "package-lock.json", "npm-shrinkwrap.json", "Dockerfile", ".dockerignore")


@dataclass(frozen=True)
class LiveUpdateConfig:
    """Sync changed source files into the running containers and restart the app process.

    Off by default because it changes how the container is started in dev: devloop wraps the
    container's command in a small restart loop (production manifests on disk stay unchanged).
    """

    enabled: bool = False
    target: str = "/app"  # where the Dockerfile copies the build context (COPY . . under WORKDIR)
    fallback: tuple[str, ...] = DEFAULT_FALLBACK  # globs that always mean a full rebuild
    command: tuple[str, ...] = ()  # what the restart loop runs; empty = the container's own command


@dataclass(frozen=True)
class Config:
    root: Path  # directory relative paths are resolved against
    source: str  # the file it came from, or "defaults"
    cluster: ClusterConfig
    image: ImageConfig
    deploy: DeployConfig
    port_forward: PortForwardConfig
    watch: WatchConfig
    registry: RegistryConfig = RegistryConfig()
    live_update: LiveUpdateConfig = LiveUpdateConfig()

    @property
    def file(self) -> Path | None:
        if self.source == "defaults":
            return None
        p = Path(self.source)
        return p if p.is_absolute() else self.root / p.name


class _Section:
    """Reads one mapping of the YAML document, remembering which keys were used."""

    def __init__(self, source: str, path: str, data: Any) -> None:
        self.source = source
        self.path = path
        if data is None:
            data = {}
        if not isinstance(data, dict):
            self.fail(f"must be a mapping, got {_type_name(data)}")
        self.data: dict[Any, Any] = data
        self.used: set[str] = set()

    def where(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def fail(self, message: str, key: str | None = None, hint: str = "") -> ConfigError:
        at = self.where(key) if key else (self.path or "(top level)")
        raise ConfigError(f"{self.source}: {at}: {message}", hint or "see the configuration reference in README.md")

    def _get(self, key: str) -> Any:
        self.used.add(key)
        return self.data.get(key)

    def str_(self, key: str, default: str) -> str:
        v = self._get(key)
        if v is None:
            return default
        if not isinstance(v, str) or not v.strip():
            self.fail(f"must be a non-empty string, got {_type_name(v)}", key)
        return str(v)

    def int_(self, key: str, default: int, lo: int, hi: int) -> int:
        v = self._get(key)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, int):
            self.fail(f"must be an integer, got {_type_name(v)}", key)
        if not lo <= v <= hi:
            self.fail(f"must be between {lo} and {hi}, got {v}", key)
        return int(v)

    def bool_(self, key: str, default: bool) -> bool:
        v = self._get(key)
        if v is None:
            return default
        if not isinstance(v, bool):
            self.fail(f"must be true or false, got {_type_name(v)}", key)
        return bool(v)

    def str_list(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        v = self._get(key)
        if v is None:
            return default
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not all(isinstance(x, str) and x.strip() for x in v):
            self.fail("must be a list of non-empty strings", key)
        return tuple(v)

    def str_map(self, key: str) -> dict[str, str]:
        v = self._get(key)
        if v is None:
            return {}
        if not isinstance(v, dict):
            self.fail(f"must be a mapping of names to strings, got {_type_name(v)}", key)
        out: dict[str, str] = {}
        for k, val in v.items():
            if not isinstance(k, str) or isinstance(val, (dict, list)) or val is None:
                self.fail("must map names to strings (quote numbers)", f"{key}.{k}")
            out[k] = str(val).lower() if isinstance(val, bool) else str(val)
        return out

    def section(self, key: str) -> _Section:
        return _Section(self.source, self.where(key), self._get(key))

    def done(self) -> None:
        for key in self.data:
            if not isinstance(key, str) or key not in self.used:
                known = ", ".join(sorted(self.used))
                self.fail(f"unknown key (known keys: {known})", str(key))


def _type_name(v: Any) -> str:
    if v is None:
        return "nothing"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a mapping"}.get(
        type(v), type(v).__name__
    )


def find_config_file(explicit: Path | None, cwd: Path) -> Path | None:
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(f"{explicit}: no such file", "pass an existing devloop.yaml to --config")
        return explicit
    candidate = cwd / CONFIG_FILE
    return candidate if candidate.is_file() else None


def load(explicit: Path | None = None, cwd: Path | None = None, *, check_paths: bool = True) -> Config:
    """Load devloop.yaml (or the defaults) and validate it."""
    cwd = (cwd or Path.cwd()).resolve()
    path = find_config_file(explicit, cwd)
    if path is None:
        return parse({}, root=cwd, source="defaults", check_paths=check_paths)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot be read: {e}", "check the file's permissions and encoding (UTF-8)") from e
    return parse_text(text, root=path.resolve().parent, source=_display(path, cwd), check_paths=check_paths)


def _display(path: Path, cwd: Path) -> str:
    """The path as the user would type it: relative to where they are, when it is below it."""
    full = path if path.is_absolute() else cwd / path
    try:
        return str(full.resolve().relative_to(cwd))
    except ValueError:
        return str(path)


def parse_text(text: str, *, root: Path, source: str, check_paths: bool = True) -> Config:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{source}: not valid YAML{where}: {problem}", "fix the YAML syntax") from None
    except RecursionError:
        raise ConfigError(f"{source}: not valid YAML: nested too deeply", "fix the YAML syntax") from None
    return parse(data, root=root, source=source, check_paths=check_paths)


def parse(data: Any, *, root: Path, source: str, check_paths: bool = True) -> Config:
    top = _Section(source, "", data)
    version = top.str_("apiVersion", API_VERSION)
    if version != API_VERSION:
        top.fail(f"unsupported version {version!r}", "apiVersion", hint=f"this devloop reads apiVersion: {API_VERSION}")

    c = top.section("cluster")
    kind_config = _path(root, c.str_("kindConfig", "kind-config.yaml"))
    kind_doc = _read_kind_config(kind_config)
    name_default = kind_doc.get("name") or "devloop"
    cluster = ClusterConfig(name=c.str_("name", name_default), kind_config=kind_config, node_image=c.str_("nodeImage", ""))
    c.done()
    if not _is_dns_label(cluster.name):
        c.fail("must be lowercase letters, digits and '-' (a kind cluster name)", "name")

    i = top.section("image")
    image = ImageConfig(
        name=i.str_("name", "my-web-app"),
        context=_path(root, i.str_("context", "sample-app")),
        dockerfile=i.str_("dockerfile", "Dockerfile"),
        build_args=i.str_map("buildArgs"),
    )
    i.done()
    if not _is_image_name(image.name):
        i.fail(f"{image.name!r} is not a valid image repository name (lowercase, no tag)", "name")

    d = top.section("deploy")
    manifests = tuple(_path(root, m) for m in d.str_list("manifests", (str(image.context / "k8s"),)))
    deploy = DeployConfig(
        manifests=manifests,
        deployment=d.str_("deployment", "web-app"),
        namespace=d.str_("namespace", "default"),
        rollout_timeout=float(d.int_("rolloutTimeout", 180, 5, 3600)),
        rolling_update=_rolling_update(d.section("rollingUpdate")),
    )
    d.done()

    p = top.section("portForward")
    port_forward = PortForwardConfig(
        enabled=p.bool_("enabled", True),
        service=p.str_("service", "web-app-service"),
        port=p.int_("port", 80, 1, 65535),
        local_port=p.int_("localPort", 8080, 0, 65535),
    )
    p.done()

    w = top.section("watch")
    watch = WatchConfig(debounce_ms=w.int_("debounceMs", 200, 0, 10_000), ignore=w.str_list("ignore", ()))
    w.done()

    lu = top.section("liveUpdate")
    live_update = LiveUpdateConfig(
        enabled=lu.bool_("enabled", False),
        target=lu.str_("target", "/app"),
        fallback=lu.str_list("fallback", DEFAULT_FALLBACK),
        command=lu.str_list("command", ()),
    )
    lu.done()
    if not live_update.target.startswith("/"):
        lu.fail("must be an absolute path in the container", "target")

    r = top.section("registry")
    if r.data.get("enabled", "auto") == "auto":
        r.used.add("enabled")
        enabled = _kind_config_wants_registry(kind_doc)
    else:
        enabled = r.bool_("enabled", False)
    registry = RegistryConfig(
        enabled=enabled,
        name=r.str_("name", "devloop-registry"),
        host_port=r.int_("hostPort", 5001, 1, 65535),
        image=r.str_("image", "registry:2"),
    )
    r.done()
    top.done()

    if check_paths:
        if not image.context.is_dir():
            i.fail(f"not a directory: {image.context}", "context", hint="point image.context at the directory holding the Dockerfile")
        if not image.dockerfile_path.is_file():
            i.fail(f"no such file: {image.dockerfile_path}", "dockerfile", hint="image.dockerfile is relative to image.context")
        for n, m in enumerate(manifests):
            if not m.exists():
                d.fail(f"no such file or directory: {m}", f"manifests[{n}]")
        if not kind_config.is_file():
            c.fail(f"no such file: {kind_config}", "kindConfig", hint="devloop creates the kind cluster from this file")
    return Config(
        root=root,
        source=source,
        cluster=cluster,
        image=image,
        deploy=deploy,
        port_forward=port_forward,
        watch=watch,
        registry=registry,
        live_update=live_update,
    )


def _rolling_update(r: _Section) -> tuple[str, str] | None:
    if not r.data:
        r.done()
        return None
    values = []
    for key in ("maxSurge", "maxUnavailable"):
        v = r.data.get(key, 0)
        r.used.add(key)
        if isinstance(v, bool) or not ((isinstance(v, int) and v >= 0) or (isinstance(v, str) and re.fullmatch(r"\d{1,3}%", v))):
            r.fail("must be a count (0, 1, 2...) or a percentage like '25%'", key)
        values.append(str(v))
    r.done()
    if values == ["0", "0"]:
        r.fail("maxSurge and maxUnavailable cannot both be 0", "maxUnavailable")
    return values[0], values[1]


def _path(root: Path, value: str) -> Path:
    return (root / value).resolve() if not Path(value).is_absolute() else Path(value)


def _is_dns_label(s: str) -> bool:
    return re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,48}[a-z0-9])?", s) is not None


def _is_image_name(s: str) -> bool:
    component = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
    return re.fullmatch(rf"(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?{component}(?:/{component})*", s) is not None


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
