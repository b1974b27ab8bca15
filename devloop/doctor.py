"""`devloop doctor` and `devloop status`: look, never change anything."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devloop import config as config_mod
from devloop import manifests as mf
from devloop.errors import DevloopError
from devloop.images import DOCKER_HINT, Images
from devloop.kind import Kind
from devloop.kube import Kube, pod_ready
from devloop.proc import INSTALL_HINTS

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


def doctor(config_path: Path | None, cwd: Path, images: Images, kind: Kind, make_kube: Callable[[str], Kube]) -> list[Check]:
    checks: list[Check] = []
    cfg: config_mod.Config | None = None
    try:
        cfg = config_mod.load(config_path, cwd)
        checks.append(Check("config", True, f"{cfg.source} is valid"))
    except DevloopError as e:
        checks.append(Check("config", False, e.message, e.hint))
    checks.append(_check("docker", lambda: f"daemon {images.ping()} answers", DOCKER_HINT))
    checks.append(_check("kind", kind.version, INSTALL_HINTS["kind"]))
    kube = make_kube(cfg.cluster.context if cfg else "kind-devloop")
    checks.append(_check("kubectl", lambda: f"client {kube.client_version()}", INSTALL_HINTS["kubectl"]))
    if cfg is not None and checks[-2].ok:
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
                checks.append(Check("cluster", True, f"kind cluster {name!r} answers (context {cfg.cluster.context})"))
        except DevloopError as e:
            checks.append(Check("cluster", False, e.message, e.hint))
    checks.append(inotify_check())
    return checks


def status(cfg: config_mod.Config, kind: Kind, kube: Kube) -> dict[str, Any]:
    """What is running: cluster, the deployed image, ready replicas."""
    name = cfg.cluster.name
    info: dict[str, Any] = {"cluster": name, "context": cfg.cluster.context, "exists": False, "reachable": False}
    if not kind.exists(name):
        return info
    info["exists"] = True
    info["reachable"] = kube.reachable()
    if not info["reachable"]:
        return info
    docs = mf.load(cfg.deploy.manifests)
    deployment = mf.find(docs, "Deployment", cfg.deploy.deployment)
    ns = mf.namespace_of(deployment, cfg.deploy.namespace) if deployment else cfg.deploy.namespace
    dep = kube.get("deployment", cfg.deploy.deployment, ns)
    info["deployment"] = cfg.deploy.deployment
    info["deployed"] = dep is not None
    if dep is not None:
        containers = dep.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
        info["images"] = [c.get("image") for c in containers]
        info["replicas"] = int(dep.get("spec", {}).get("replicas", 1))
        info["ready"] = int(dep.get("status", {}).get("readyReplicas", 0))
        pods = kube.pods(ns, mf.selector_of(deployment)) if deployment else []
        info["pods"] = [{"name": p["metadata"]["name"], "ready": pod_ready(p)} for p in pods]
    svc = kube.get("service", cfg.port_forward.service, ns)
    if svc is not None:
        info["service"] = {
            "name": cfg.port_forward.service,
            "type": svc.get("spec", {}).get("type"),
            "ports": svc.get("spec", {}).get("ports", []),
        }
    return info
