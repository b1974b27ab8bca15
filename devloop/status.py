"""`devloop status`: what runs, per service, asked from the cluster (never assumed). Read-only."""

from __future__ import annotations

import time
from typing import Any

from devloop import kinds
from devloop.commands import read_results
from devloop.config import Config
from devloop.engine import Engine
from devloop.errors import DevloopError
from devloop.workload import pod_failure, pod_images, pod_ready


def status(cfg: Config, engine: Engine) -> dict[str, Any]:
    """Cluster, and per service: the Deployment's image, ready replicas, pods (with crash loops)."""
    target = engine.target
    info: dict[str, Any] = {"cluster": target.label, "context": target.spec.context, "exists": False, "reachable": False, "services": []}
    if not target.owns_cluster:
        info["target"] = target.label
    if cfg.commands:  # each configured command's last result, as the last `devloop dev` here left it
        configured = {c.name for c in cfg.commands}
        info["commands"] = [r for r in read_results(cfg.root) if r.get("name") in configured]
    if not target.exists():
        return info
    info["exists"] = True
    info["reachable"] = engine.kube.reachable()
    if not info["reachable"]:
        return info
    for svc in cfg.services:
        entry: dict[str, Any] = {"service": svc.name, "deployment": svc.deployment, "deployed": False, "healthy": False}
        try:
            d = engine.manifests(svc)
        except DevloopError as e:
            entry["problem"] = e.message
            info["services"].append(entry)
            continue
        entry["namespace"] = d.namespace
        main = d.deployment  # the service's main workload (kinds.py says what "rolled out" means for it)
        kind = kinds.of(main.kind) or kinds.Deployment()
        entry.update(deployment=main.name, kind=main.kind)
        dep = engine.kube.get(kind.resource, main.name, d.namespace)
        if dep is not None:
            done, progress = kind.progress(dep)
            containers = dep.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
            pods = engine.kube.pods(d.namespace, kinds.pod_selector(dep) or d.selector)
            entry.update(
                deployed=True,
                images=[c.get("image") for c in containers],
                replicas=kind.replicas(dep),
                ready=int(dep.get("status", {}).get("readyReplicas", 0)),
                updated=int(dep.get("status", {}).get("updatedReplicas", 0)),
                progress=kind.failure(dep) or progress,
                pods=[
                    {
                        "name": p["metadata"]["name"],
                        "ready": pod_ready(p),
                        "images": pod_images(p),
                        "restarts": sum(int(c.get("restartCount", 0)) for c in p.get("status", {}).get("containerStatuses") or []),
                        "failing": pod_failure(p) or _unschedulable(p),
                        "terminating": bool(p.get("metadata", {}).get("deletionTimestamp")),
                        "phase": str(p.get("status", {}).get("phase", "")),  # a Job's pod ends Succeeded or Failed
                    }
                    for p in pods
                ],
            )
            failing = [p for p in entry["pods"] if p["failing"]]
            # a rollout that has not finished is not healthy, even while the old pods serve (as `kubectl rollout status` judges it)
            entry["rolledOut"] = done
            entry["healthy"] = done and kind.failure(dep) is None and not failing
            if main.kind == "Deployment":
                entry["healthy"] = entry["healthy"] and entry["ready"] >= entry["replicas"]
            mon = engine.monitoring()
            if mon is not None:
                try:
                    stats = mon.service_stats(d.selector, d.namespace)
                    entry["metrics"] = stats.as_dict()
                    entry["metricsText"] = stats.human()
                except DevloopError as e:
                    entry["metrics"] = {"problem": e.message}
                    entry["metricsText"] = f"no metrics: {e.message}"
        entry["forwards"] = [{"service": f.service, "port": f.port, "localPort": f.local_port} for f in svc.port_forward]
        info["services"].append(entry)
    return info


def _unschedulable(pod: dict[str, Any]) -> str | None:
    """The scheduler's refusal of a pod (PodScheduled False, Unschedulable), whatever its reason."""
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return None
    for cond in pod.get("status", {}).get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and cond.get("reason") == "Unschedulable":
            return "Unschedulable: " + " ".join(str(cond.get("message", "")).split())[:200]
    return None


def healthy(info: dict[str, Any]) -> bool:
    return bool(info["reachable"]) and bool(info["services"]) and all(s["healthy"] for s in info["services"])


def _ago(seconds: float) -> str:
    return f"{seconds:.0f}s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago" if seconds < 7200 else f"{seconds / 3600:.0f} h ago"


def commands_human(info: dict[str, Any], now: float | None = None) -> list[str]:
    """Each command's last result ("unit-tests: failed (exit 1) in 1.20s, 3 min ago")."""
    if "commands" not in info:
        return []
    now = time.time() if now is None else now
    lines = ["commands (their last run in `devloop dev`):"]
    for r in info["commands"]:
        said = "passed" if r.get("status") == "passed" else str(r.get("message") or r.get("status"))
        lines.append(f"  {r['name']}: {said} in {float(r.get('seconds', 0)):.2f}s, {_ago(max(0.0, now - float(r.get('at', now))))}")
    if not info["commands"]:
        lines.append("  none run yet")
    return lines


def human(info: dict[str, Any]) -> str:
    return "\n".join([_cluster_human(info), *commands_human(info)])


def _cluster_human(info: dict[str, Any]) -> str:
    name = info["cluster"]
    if info.get("target"):
        if not info["exists"]:
            return f"target {name!r}: context {info['context']} is not in your kubeconfig"
        if not info["reachable"]:
            return f"target {name!r}: API server not answering (context {info['context']})"
    if not info["exists"]:
        return f"cluster {name!r}: does not exist (run `devloop up`)"
    if not info["reachable"]:
        return f"cluster {name!r}: exists, API server not answering"
    lines = [f"cluster {name!r}: up (context {info['context']})"]
    for s in info["services"]:
        head = f"{s['service']}: "
        if "problem" in s:
            lines.append(head + s["problem"])
        elif not s["deployed"]:
            lines.append(head + f"{s.get('kind', 'Deployment')} {s['deployment']} not deployed (run `devloop up`)")
        else:
            mark = "healthy" if s["healthy"] else "UNHEALTHY"
            said = f"{s['ready']}/{s['replicas']} ready" if s.get("kind", "Deployment") != "Job" else s["progress"]
            if not s.get("rolledOut", True) and s.get("kind", "Deployment") != "Job":
                said += f", rollout not complete ({s['progress']})"
            lines.append(head + f"{mark}, {said}, image {', '.join(s['images'])}")
            for p in s["pods"]:
                state = (
                    "terminating"
                    if p.get("terminating")
                    else "ready"
                    if p["ready"]
                    else {"Succeeded": "completed", "Failed": "failed"}.get(p.get("phase", ""), "not ready")
                )
                extra = f" — {p['failing']}" if p["failing"] else ""
                lines.append(f"  {p['name']}: {state}, {p['restarts']} restarts{extra}")
            if "metricsText" in s:
                lines.append(f"  last minute: {s['metricsText']}")
    return "\n".join(lines)
