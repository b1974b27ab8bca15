"""`devloop doctor` and `devloop status`: look, never change anything."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from devloop import config as config_mod
from devloop import tools
from devloop.api import ApiCluster
from devloop.config import RegistryConfig
from devloop.errors import DevloopError
from devloop.helm import Helm
from devloop.images import DOCKER_HINT, Images
from devloop.kind import Kind
from devloop.proc import INSTALL_HINTS
from devloop.registry import LocalRegistry, Problem

MIN_WATCHES = 65536
MIN_INSTANCES = 128


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def _check(name: str, fn: Callable[[], str], fix: str) -> Check:
    try:
        return Check(name, True, fn())
    except DevloopError as e:
        return Check(name, False, e.message, e.hint or fix)


def inotify_check(proc_dir: Path = Path("/proc/sys/fs/inotify")) -> Check:
    try:
        watches = int((proc_dir / "max_user_watches").read_text())
        instances = int((proc_dir / "max_user_instances").read_text())
    except (OSError, ValueError):
        return Check("inotify", True, "not Linux inotify; nothing to check")
    if watches >= MIN_WATCHES and instances >= MIN_INSTANCES:
        return Check("inotify", True, f"max_user_watches={watches}, max_user_instances={instances}")
    return Check(
        "inotify",
        False,
        f"max_user_watches={watches}, max_user_instances={instances} (low for big projects)",
        "sudo sysctl -w fs.inotify.max_user_watches=524288 fs.inotify.max_user_instances=512  "
        "# persist: echo 'fs.inotify.max_user_watches=524288' | sudo tee /etc/sysctl.d/99-devloop.conf",
    )


class RegistryProbe(Protocol):
    """What doctor needs from devloop.registry.LocalRegistry."""

    def problems(self, nodes: Sequence[str]) -> list[Problem]: ...


def tool_check(name: str, path: str | None, version: Callable[[], str]) -> Check:
    """Which binary devloop uses for `name` (the user's, else devloop's copy) and its version."""
    if path is None:
        pinned = {"kind": tools.KIND_VERSION, "kubectl": tools.KUBECTL_VERSION, "helm": tools.HELM_VERSION}[name]
        return Check(
            name,
            False,
            f"`{name}` is not on PATH and devloop has no copy in {tools.bin_dir()}",
            f"`devloop up` downloads {name} {pinned} into {tools.bin_dir()}; or {INSTALL_HINTS[name]}",
        )
    whose = "devloop's copy" if tools.is_devloop_copy(path) else "yours"
    try:
        return Check(name, True, f"{version()} ({path}, {whose})")
    except DevloopError as e:
        return Check(name, False, f"{path} ({whose}): {e.message}", e.hint or INSTALL_HINTS[name])


def registry_check(registry: RegistryConfig, probe: RegistryProbe, nodes: Sequence[str] | None) -> Check:
    """The local registry: container running, on the kind network, every node's containerd pointed at
    it, `GET /v2/` answering. `nodes` None: the cluster is not running, so its nodes are not checked."""
    try:
        problems = probe.problems(list(nodes or []))
    except DevloopError as e:
        return Check("registry", False, e.message, e.hint)
    if problems:
        fixes = list(dict.fromkeys(p.fix for p in problems if p.fix))
        return Check("registry", False, "; ".join(p.message for p in problems), " && ".join(fixes))
    wired = "nodes not checked (the cluster is not running)" if nodes is None else f"{len(nodes)} node(s) pull from it"
    return Check(
        "registry",
        True,
        f"{registry.name} runs on the kind network, answers on http://127.0.0.1:{registry.host_port}/v2/, {wired}",
    )


def doctor(
    config_path: Path | None,
    cwd: Path,
    images: Images,
    kind: Kind,
    make_kube: Callable[[str], ApiCluster],
    *,
    which: Callable[[], dict[str, str | None]] = lambda: tools.which_tools(("kind", "kubectl", "helm")),
    make_registry: Callable[[RegistryConfig, Images, ApiCluster], RegistryProbe] = LocalRegistry,
    helm_version: Callable[[], str] = lambda: Helm().version(),
) -> list[Check]:
    checks: list[Check] = []
    cfg: config_mod.Config | None = None
    try:
        cfg = config_mod.load(config_path, cwd)
        checks.append(Check("config", True, f"{cfg.source} is valid"))
    except DevloopError as e:
        checks.append(Check("config", False, e.message, e.hint))
    docker = _check("docker", lambda: f"daemon {images.ping()} answers", DOCKER_HINT)
    checks.append(docker)
    paths = which()
    if any(p is not None and tools.is_devloop_copy(p) for p in paths.values()):
        tools.add_cache_to_path()  # this process only: kind/kubectl below run devloop's copies, as `up` would
    kind_check = tool_check("kind", paths.get("kind"), kind.version)
    checks.append(kind_check)
    kube = make_kube(cfg.cluster.context if cfg else "kind-devloop")
    checks.append(tool_check("kubectl", paths.get("kubectl"), lambda: f"client {kube.client_version()}"))
    if cfg is not None and any(s.deploy.helm is not None for s in cfg.services):  # only a project with a chart needs helm
        checks.append(tool_check("helm", paths.get("helm"), helm_version))
    cluster_up = False
    if cfg is not None and kind_check.ok:
        name = cfg.cluster.name
        try:
            if not kind.exists(name):
                checks.append(Check("cluster", False, f"kind cluster {name!r} does not exist", "`devloop up` creates it"))
            elif not kube.reachable():
                checks.append(
                    Check(
                        "cluster",
                        False,
                        f"cluster {name!r} exists but its API server does not answer",
                        f"docker start {name}-control-plane, or `devloop down --cluster && devloop up`",
                    )
                )
            else:
                cluster_up = True
                checks.append(Check("cluster", True, f"kind cluster {name!r} answers (context {cfg.cluster.context})"))
        except DevloopError as e:
            checks.append(Check("cluster", False, e.message, e.hint))
    if cfg is not None and cfg.registry.enabled is True and docker.ok:
        try:
            nodes = kind.nodes(cfg.cluster.name) if cluster_up else None
            checks.append(registry_check(cfg.registry, make_registry(cfg.registry, images, kube), nodes))
        except DevloopError as e:
            checks.append(Check("registry", False, e.message, e.hint))
    checks.append(inotify_check())
    return checks
