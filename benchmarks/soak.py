"""Soak: one long `devloop dev` session on a real kind cluster; does anything grow without bound?

In ONE session (cluster devloop-soak, the local registry path, liveUpdate on), run N rebuild cycles
and M live syncs, interleaved, with pod logs flowing:
  - a rebuild: MESSAGE/VERSION changes together with `soak-rebuild.txt` (a liveUpdate.fallback file),
    so every rebuild builds, pushes and rolls out a new image; done when devloop reports the rollout
    ready and the forwarded URL answers the new text (the worker of `--example shop`: its log line);
  - a sync: only MESSAGE/VERSION changes; done when devloop reports the sync and the forwarded URL
    answers the new text. A sync that devloop turned into a rebuild is a fallback (counted, reason kept).
Every 25 cycles it samples devloop's RSS, threads, open fds and child processes (/proc), the local
registry's tags and bytes, the node's containerd images of the app and its bytes, the Docker
daemon's tags of the app, and the app's container restarts and liveness-probe failures.

Targets reported against: devloop RSS/threads/fds/children grow < 10% from cycle 50 to the end;
registry/node/host images bounded by keepVersions (3) per service (+ what runs); 0 sync fallbacks;
0 container restarts.

Usage (after .ci/run's setup, or on a laptop with kind/kubectl/docker):
  python benchmarks/soak.py [--rebuilds 300] [--syncs 1000] [--example shop] [--json PATH] [--keep]
The images are renamed `soak-…` and the registry is `devloop-soak-registry` so that nothing else
on the machine (e2e tests building `my-web-app`, their registry) shares what is counted here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.conftest import Harness, free_port, make_harness  # noqa: E402  (the e2e tests' setup)

CLUSTER = "devloop-soak"
CONTEXT = f"kind-{CLUSTER}"
REGISTRY = "devloop-soak-registry"
KEEP = 3
REBUILD_FILE = "soak-rebuild.txt"
FALLBACK = ["package.json", "package-lock.json", "npm-shrinkwrap.json", "Dockerfile", ".dockerignore", REBUILD_FILE]


@dataclasses.dataclass
class Service:
    name: str  # devloop's service name
    image: str
    context: str  # relative to the project root
    source: str  # the file whose text line is edited, relative to the context
    prefix: str  # the line that holds the served text starts with this
    url_path: str | None  # GET this through the forward; None: look for the text in the pod logs
    deployment: str
    local_port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.local_port}{self.url_path}"


def registry_port() -> int:
    """The soak registry's published port when it is still there (--keep), else a free one."""
    got = sh(["docker", "inspect", "-f", "{{range $p, $b := .HostConfig.PortBindings}}{{range $b}}{{.HostPort}}{{end}}{{end}}", REGISTRY])
    return int(got.strip()) if got.strip().isdigit() else free_port()


# -- the project ---------------------------------------------------------------------------------------
def sample_project(root: Path, h: Harness) -> list[Service]:
    shutil.copytree(REPO / "sample-app", root / "sample-app", ignore=shutil.ignore_patterns("node_modules"))
    shutil.copy(REPO / "kind-config.yaml", root / "kind-config.yaml")
    dep = root / "sample-app" / "k8s" / "deployment.yaml"
    dep.write_text(dep.read_text().replace("image: my-web-app:latest", "image: soak-web-app:latest"))
    (root / "sample-app" / REBUILD_FILE).write_text("0\n")
    svc = Service("web-app", "soak-web-app", "sample-app", "server.js", "const MESSAGE =", "/", "web-app", free_port())
    (root / "devloop.yaml").write_text(
        "apiVersion: devloop/v1\n"
        f"cluster:\n  name: {CLUSTER}\n  nodeImage: {h.kind_image}\n"
        f"image:\n  name: {svc.image}\n  context: sample-app\n  buildArgs:\n    NODE_IMAGE: {h.node_base}\n"
        "deploy:\n  manifests: [sample-app/k8s]\n  rolloutTimeout: 240\n"
        f"registry:\n  enabled: true\n  name: {REGISTRY}\n  hostPort: {registry_port()}\n  image: {h.registry_image}\n"
        # node directly, as the README's live-update example: `npm start` restarts far slower under a CPU limit
        f"liveUpdate:\n  enabled: true\n  command: [node, server.js]\n  fallback: {json.dumps(FALLBACK)}\n"
        f"portForward:\n  localPort: {svc.local_port}\n"
        f"monitoring:\n  enabled: false\n  image: {h.prometheus_image}\n"
        "dashboard:\n  port: 0\n"
        f"keepVersions: {KEEP}\n"
    )
    return [svc]


def shop_project(root: Path, h: Harness) -> list[Service]:
    shutil.copytree(REPO / "examples" / "shop", root, dirs_exist_ok=True)
    shutil.copy(REPO / "kind-config.yaml", root / "kind-config.yaml")
    services = [
        Service("web", "soak-shop-web", "web", "server.js", "const VERSION =", "/", "web", free_port()),
        Service("api", "soak-shop-api", "api", "server.js", "const VERSION =", "/api/items", "api", free_port()),
        Service("worker", "soak-shop-worker", "worker", "server.js", "const VERSION =", None, "worker"),
    ]
    blocks = []
    for s in services:
        manifest = root / "k8s" / f"{s.name}.yaml"
        manifest.write_text(manifest.read_text().replace(f"image: shop-{s.name}:latest", f"image: {s.image}:latest"))
        (root / s.context / REBUILD_FILE).write_text("0\n")
        forward = (
            f"    portForward:\n      - service: {s.name}\n        port: 80\n        localPort: {s.local_port}\n" if s.url_path else ""
        )
        blocks.append(
            f"  - name: {s.name}\n    image:\n      name: {s.image}\n      context: {s.context}\n"
            f"      buildArgs:\n        NODE_IMAGE: {h.node_base}\n"
            f"    deploy:\n      manifests: [k8s/{s.name}.yaml]\n      deployment: {s.deployment}\n      rolloutTimeout: 240\n"
            f"{forward}"
            f"    liveUpdate:\n      enabled: true\n      fallback: {json.dumps(FALLBACK)}\n"
        )
    (root / "devloop.yaml").write_text(
        "apiVersion: devloop/v2\n"
        f"cluster:\n  name: {CLUSTER}\n  kindConfig: kind-config.yaml\n  nodeImage: {h.kind_image}\n"
        f"registry:\n  enabled: true\n  name: {REGISTRY}\n  hostPort: {registry_port()}\n  image: {h.registry_image}\n"
        f"monitoring:\n  enabled: false\n  image: {h.prometheus_image}\n"
        "dashboard:\n  port: 0\n"
        f"keepVersions: {KEEP}\n"
        "services:\n" + "".join(blocks)
    )
    return services


def edit(root: Path, svc: Service, text: str, rebuild: bool) -> None:
    src = root / svc.context / svc.source
    lines = src.read_text().splitlines(keepends=True)
    src.write_text("".join(f"{svc.prefix} '{text}';\n" if line.startswith(svc.prefix) else line for line in lines))
    if rebuild:
        (root / svc.context / REBUILD_FILE).write_text(f"{text}\n")


# -- the devloop process ---------------------------------------------------------------------------------
class Dev:
    """`devloop --json dev`; keeps counters and the cycle_done events, not every event (pod logs flow)."""

    def __init__(self, root: Path, h: Harness) -> None:
        self.proc = subprocess.Popen(
            [shutil.which("devloop") or "devloop", "--json", "dev"],
            cwd=root,
            env=h.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )
        self.cycles: queue.Queue[dict[str, Any]] = queue.Queue()
        self.lock = threading.Lock()
        self.log_lines = 0
        self.log_hits: dict[str, float] = {}  # texts being waited for in the logs -> when seen (0: not yet)
        self.no_sync: list[str] = []  # "live update not possible (...)" details
        self.restart_warnings: list[str] = []
        self.forced: list[dict[str, Any]] = []  # cycles devloop started by itself (a live-updated pod restarted)
        self.gc_errors: list[str] = []
        self.paced: list[float] = []  # seconds a sync waited so that the liveness probe sees the app up
        self.extra: list[dict[str, Any]] = []  # cycles not started by the soak's own edit
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            kind = e.get("event")
            if kind == "log":
                with self.lock:
                    self.log_lines += 1
                    for text, seen in self.log_hits.items():
                        if not seen and text in e.get("line", ""):
                            self.log_hits[text] = time.time()
            elif kind == "detail" and "live update not possible" in e.get("message", ""):
                self.no_sync.append(e["message"])
            elif kind == "detail" and "before restarting the app" in e.get("message", ""):
                self.paced.append(float(e["message"].split("waited ", 1)[1].split("s", 1)[0]))
            elif kind == "detail" and "garbage collection" in e.get("message", "") and "skipped" in e.get("message", ""):
                self.gc_errors.append(e["message"])
            elif kind == "warning" and "restarted" in e.get("message", ""):
                self.restart_warnings.append(e["message"])
            elif kind == "cycle_start" and "restarted" in e.get("reason", ""):
                self.forced.append(e)
            elif kind in ("cycle_done", "error"):
                self.cycles.put(e)

    def cycle_done(self, service: str, file: str, timeout: float = 600) -> dict[str, Any]:
        """The next cycle_done of `service` triggered by `file` (others are counted in `extra`)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                e = self.cycles.get(timeout=1)
            except queue.Empty:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"devloop exited with {self.proc.returncode}") from None
                continue
            if e["event"] == "error":
                raise RuntimeError(f"devloop error: {e.get('message')}")
            if (not service or e.get("service") == service) and (not file or file in e.get("files", [])):
                return e
            self.extra.append({k: e.get(k) for k in ("cycle", "service", "files", "synced", "ok", "reason")})
        raise TimeoutError(f"no cycle_done for {service} within {timeout}s")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                return self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


# -- what is measured -----------------------------------------------------------------------------------
def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def proc_figures(pid: int) -> dict[str, Any]:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    field = {line.split(":")[0]: line.split(":", 1)[1].strip() for line in status}
    kids = descendants(pid)
    names: dict[str, int] = {}
    for k in kids:
        try:
            name = Path(f"/proc/{k}/cmdline").read_bytes().split(b"\0")
            label = " ".join(a.decode(errors="replace") for a in name[:4] if a)
        except OSError:
            continue
        key = (
            "kubectl " + next((w for w in ("port-forward", "logs", "get", "exec") if w in label), "?") if "kubectl" in label else label[:40]
        )
        names[key] = names.get(key, 0) + 1
    return {
        "rss_mb": round(int(field["VmRSS"].split()[0]) / 1024, 1),
        "threads": int(field["Threads"]),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "children": len(kids),
        "children_by_kind": names,
    }


def sh(argv: list[str], env: dict[str, str] | None = None, timeout: float = 120) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    return r.stdout if r.returncode == 0 else ""


def registry_figures(port: int, images: list[str]) -> dict[str, Any]:
    tags: dict[str, int] = {}
    for image in images:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/{image}/tags/list", timeout=10) as r:
                tags[image] = len(json.loads(r.read()).get("tags") or [])
        except Exception:
            tags[image] = -1
    # measured from the host (its volume), the same way for any registry image
    mount = sh(
        ["docker", "inspect", "-f", '{{range .Mounts}}{{if eq .Destination "/var/lib/registry"}}{{.Source}}{{end}}{{end}}', REGISTRY]
    )
    size = sh(["du", "-sb", mount.strip()]).split() if mount.strip() else []
    return {"tags": tags, "bytes": int(size[0]) if size else -1}


def node_figures(images: list[str]) -> dict[str, Any]:
    node = f"{CLUSTER}-control-plane"
    out = sh(["docker", "exec", node, "crictl", "images", "-o", "json"])
    counts = dict.fromkeys(images, 0)
    app_bytes = 0
    try:
        for img in json.loads(out).get("images", []):
            for tag in img.get("repoTags") or []:
                repo = tag.rsplit(":", 1)[0].rsplit("/", 1)[-1]
                if repo in counts:
                    counts[repo] += 1
                    app_bytes += int(img.get("size", 0))
    except ValueError:
        counts = dict.fromkeys(images, -1)
    disk = sh(["docker", "exec", node, "du", "-sb", "/var/lib/containerd"]).split()
    return {"images": counts, "app_bytes": app_bytes, "containerd_bytes": int(disk[0]) if disk else -1}


def docker_figures(images: list[str]) -> dict[str, int]:
    out = sh(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"])
    counts = dict.fromkeys(images, 0)
    for ref in out.split():
        repo = ref.rsplit(":", 1)[0].rsplit("/", 1)[-1]
        if repo in counts:
            counts[repo] += 1
    return counts


def pod_figures(h: Harness, services: list[Service]) -> dict[str, Any]:
    restarts, pods = 0, 0
    for s in services:
        got = sh([h.kubectl, "--context", CONTEXT, "get", "pods", "-l", f"app={s.deployment}", "-o", "json"], h.env)
        for p in json.loads(got or '{"items": []}')["items"]:
            pods += 1
            restarts += sum(int(c.get("restartCount", 0)) for c in p.get("status", {}).get("containerStatuses") or [])
    ev = sh([h.kubectl, "--context", CONTEXT, "get", "events", "--field-selector", "reason=Unhealthy", "-o", "json"], h.env)
    liveness = readiness = 0
    for e in json.loads(ev or '{"items": []}')["items"]:
        n = int(e.get("count") or (e.get("series") or {}).get("count") or 1)
        if e.get("message", "").startswith("Liveness"):
            liveness += n
        elif e.get("message", "").startswith("Readiness"):
            readiness += n
    return {"pods": pods, "restarts": restarts, "liveness_failures": liveness, "readiness_failures": readiness}


def wait_text(svc: Service, dev: Dev, text: str, timeout: float = 180) -> float:
    """Seconds until the forwarded URL (or, for a service without one, its pod logs) shows `text`."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        if svc.url_path is None:
            with dev.lock:
                if dev.log_hits.get(text):
                    del dev.log_hits[text]
                    return time.time() - t0
        else:
            try:
                with urllib.request.urlopen(svc.url, timeout=2) as r:
                    if text in r.read().decode(errors="replace"):
                        return time.time() - t0
            except Exception:
                pass  # the forward reconnecting, the process restarting
        time.sleep(0.1)  # polling the forwarded URL like a person refreshing, with a deadline
    raise TimeoutError(f"{svc.name}: {text!r} not served within {timeout}s")


# -- the run ----------------------------------------------------------------------------------------------
def schedule(rebuilds: int, syncs: int) -> list[bool]:
    """True = rebuild; rebuilds spread evenly among the syncs."""
    total = rebuilds + syncs
    return [(i + 1) * rebuilds // total > i * rebuilds // total for i in range(total)]


def growth(a: float, b: float) -> float:
    return 100.0 * (b - a) / a if a else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rebuilds", type=int, default=300)
    ap.add_argument("--syncs", type=int, default=1000)
    ap.add_argument("--example", choices=["sample", "shop"], default="sample")
    ap.add_argument("--every", type=int, default=25, help="sample the figures every N cycles")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the cluster and the registry")
    ap.add_argument("--cluster", default="devloop-soak", help="kind cluster (its registry is <cluster>-registry)")
    ap.add_argument("--report", type=Path, help="print the table of a soak's JSON (also of a run still going) and exit")
    args = ap.parse_args()
    if args.report:
        report(json.loads(args.report.read_text()))
        return 0
    global CLUSTER, CONTEXT, REGISTRY
    CLUSTER, CONTEXT, REGISTRY = args.cluster, f"kind-{args.cluster}", f"{args.cluster}-registry"
    out_json = args.json or REPO / "benchmarks" / "results" / f"soak-{args.example}.json"

    h = dataclasses.replace(make_harness(), context=CONTEXT)
    root = Path(tempfile.mkdtemp(prefix="devloop-soak-")) / "proj"
    root.mkdir(parents=True)
    services = shop_project(root, h) if args.example == "shop" else sample_project(root, h)
    images = [s.image for s in services]
    reg_port = int(re.search(r"hostPort: (\d+)", (root / "devloop.yaml").read_text()).group(1))  # type: ignore[union-attr]
    print(f"project {root}; {args.rebuilds} rebuilds + {args.syncs} syncs; services {', '.join(s.name for s in services)}", flush=True)

    samples: list[dict[str, Any]] = []
    ops: list[dict[str, Any]] = []
    result: dict[str, Any] = {"example": args.example, "rebuilds": args.rebuilds, "syncs": args.syncs, "keep_versions": KEEP}
    t_start = time.time()
    dev = Dev(root, h)

    def sample(cycle: int) -> None:
        time.sleep(3)  # let the background garbage collection and the poller's kubectl finish: steady state, not a transient
        row = {"cycle": cycle, "t": round(time.time() - t_start, 1), **proc_figures(dev.proc.pid)}
        row["registry"] = registry_figures(reg_port, images)
        row["node"] = node_figures(images)
        row["docker"] = docker_figures(images)
        row["pods"] = pod_figures(h, services)
        row["log_lines"] = dev.log_lines
        samples.append(row)
        summarize(result, ops, samples, dev, "running", None, t_start)  # a partial run still leaves its figures
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(result, indent=1) + "\n")
        print(
            f"  [{cycle:5d}] {row['t']:7.0f}s rss {row['rss_mb']:6.1f}MB thr {row['threads']:3d} fds {row['fds']:3d} "
            f"children {row['children']:2d} | registry {sum(row['registry']['tags'].values())} tags "
            f"{row['registry']['bytes'] / 1e6:.0f}MB | node {sum(row['node']['images'].values())} imgs | "
            f"docker {sum(row['docker'].values())} tags | restarts {row['pods']['restarts']} "
            f"liveness-fail {row['pods']['liveness_failures']} | fallbacks {len(dev.no_sync)} forced {len(dev.forced)}",
            flush=True,
        )

    failure = ""
    code: int | None = None
    try:
        first: set[str] = set()  # the first cycle (up): one cycle_done per service, in any order
        while len(first) < len(services):
            e = dev.cycle_done("", "", timeout=900)
            if not e["ok"]:
                raise RuntimeError(f"first cycle failed: {e}")
            first.add(e["service"])
        for s in services:
            if s.url_path:
                wait_text(s, dev, "", timeout=120)
        sample(0)
        plan = schedule(args.rebuilds, args.syncs)
        for i, rebuild in enumerate(plan, start=1):
            svc = services[i % len(services)]
            text = f"soak {'rebuild' if rebuild else 'sync'} {i} {uuid.uuid4().hex[:8]}"
            if svc.url_path is None:
                with dev.lock:
                    dev.log_hits[text] = 0.0
            t0 = time.time()
            before = len(dev.no_sync)
            edit(root, svc, text, rebuild)
            e = dev.cycle_done(svc.name, REBUILD_FILE if rebuild else svc.source)
            if not e["ok"]:
                raise RuntimeError(f"cycle {i} ({svc.name}) failed: {e.get('error')}")
            served = wait_text(svc, dev, text)
            op = {
                "i": i,
                "service": svc.name,
                "kind": "rebuild" if rebuild else "sync",
                "synced": bool(e.get("synced")),
                "cycle_s": e.get("total"),
                "total_s": round(time.time() - t0, 3),
                "served_after_cycle_s": round(served, 3),
            }
            if not rebuild and not op["synced"]:
                op["fallback"] = dev.no_sync[before:] or ["(no reason given)"]
                print(f"  #{i} {svc.name}: sync fell back: {op['fallback']}", flush=True)
            ops.append(op)
            print(f"  #{i} {svc.name} {op['kind']}: {'synced' if op['synced'] else 'rolled out'} in {op['total_s']:.2f}s", flush=True)
            if i % args.every == 0 or i == len(plan):
                sample(i)
    except (Exception, KeyboardInterrupt) as e:
        failure = f"{type(e).__name__}: {e}"
        print(f"soak stopped early: {failure}", flush=True)
        if dev.proc.poll() is None and samples:
            sample(len(ops))
    finally:
        code = dev.stop()
        if not args.keep:
            volume = sh(["docker", "inspect", "-f", "{{range .Mounts}}{{.Name}} {{end}}", REGISTRY]).split()
            subprocess.run(
                [shutil.which("devloop") or "devloop", "down", "--cluster"], cwd=root, env=h.env, capture_output=True, check=False
            )
            subprocess.run(["kind", "delete", "cluster", "--name", CLUSTER], env=h.env, capture_output=True, check=False)
            subprocess.run(["docker", "rm", "-f", "-v", REGISTRY], capture_output=True, check=False)
            for v in volume:
                subprocess.run(["docker", "volume", "rm", v], capture_output=True, check=False)

    summarize(result, ops, samples, dev, failure, code, t_start)
    report(result)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=1) + "\n")
    print(f"written {out_json}")
    return 1 if failure else 0


def summarize(
    result: dict[str, Any],
    ops: list[dict[str, Any]],
    samples: list[dict[str, Any]],
    dev: Dev,
    failure: str,
    code: int | None,
    t_start: float,
) -> None:
    syncs = [o for o in ops if o["kind"] == "sync"]
    rebuilds = [o for o in ops if o["kind"] == "rebuild"]
    result.update(
        {
            "completed": {"rebuilds": len(rebuilds), "syncs": len(syncs)},
            "failure": failure,
            "devloop_exit": code,
            "duration_s": round(time.time() - t_start, 1),
            "sync_fallbacks": sum(1 for o in syncs if not o["synced"]),
            "fallback_reasons": [o["fallback"] for o in syncs if not o["synced"]],
            "forced_rebuilds": len(dev.forced),
            "extra_cycles": dev.extra,
            "paced_syncs": len(dev.paced),
            "paced_seconds": round(sum(dev.paced), 1),
            "restart_warnings": dev.restart_warnings,
            "gc_errors": dev.gc_errors[-10:],
            "samples": samples,
            "ops": ops,
        }
    )


def median(values: list[float]) -> float:
    s = sorted(values)
    return s[len(s) // 2] if s else float("nan")


def report(r: dict[str, Any]) -> None:
    samples = r["samples"]
    if not samples:
        print("no samples")
        return
    base = next((s for s in samples if s["cycle"] >= 50), samples[0])
    end = samples[-1]
    print(
        f"\nsoak {r['example']}: {r['completed']['rebuilds']} rebuilds + {r['completed']['syncs']} syncs in {r['duration_s'] / 60:.1f} min"
    )
    print(f"{'':<22}{'cycle ' + str(base['cycle']):>12}{'end (' + str(end['cycle']) + ')':>14}{'growth':>10}  target")
    for key, label in (("rss_mb", "devloop RSS MB"), ("threads", "threads"), ("fds", "open fds"), ("children", "child processes")):
        g = growth(base[key], end[key])
        print(f"{label:<22}{base[key]:>12}{end[key]:>14}{g:>9.1f}%  < 10% {'ok' if g < 10 else 'OVER'}")
    per = len(end["registry"]["tags"])
    bound = (KEEP + 1) * per
    rows = (
        ("registry tags", sum(base["registry"]["tags"].values()), sum(end["registry"]["tags"].values()), f"<= {bound}"),
        ("registry MB", round(base["registry"]["bytes"] / 1e6), round(end["registry"]["bytes"] / 1e6), "bounded"),
        ("node app images", sum(base["node"]["images"].values()), sum(end["node"]["images"].values()), f"<= {bound}"),
        ("node app image MB", round(base["node"]["app_bytes"] / 1e6), round(end["node"]["app_bytes"] / 1e6), "bounded"),
        ("node containerd MB", round(base["node"]["containerd_bytes"] / 1e6), round(end["node"]["containerd_bytes"] / 1e6), "bounded"),
        ("docker tags (host)", sum(base["docker"].values()), sum(end["docker"].values()), f"<= {2 * bound}"),
        ("container restarts", base["pods"]["restarts"], end["pods"]["restarts"], "0"),
        ("liveness failures", base["pods"]["liveness_failures"], end["pods"]["liveness_failures"], "events (1 h TTL)"),
        ("readiness failures", base["pods"]["readiness_failures"], end["pods"]["readiness_failures"], ""),
        ("pod log lines", base["log_lines"], end["log_lines"], "flowing"),
    )
    for label, a, b, target in rows:
        print(f"{label:<22}{a:>12}{b:>14}{'':>10}  {target}")
    print(f"per service at the end: registry {end['registry']['tags']}, node {end['node']['images']}, host {end['docker']}")
    syncs = [o for o in r["ops"] if o["kind"] == "sync"]
    rebuilds = [o for o in r["ops"] if o["kind"] == "rebuild"]
    print(
        f"sync fallbacks {r['sync_fallbacks']}/{len(syncs)} (target 0); devloop-forced rebuilds after a pod restart "
        f"{r['forced_rebuilds']}; rebuild p50 {median([o['total_s'] for o in rebuilds]):.2f}s; "
        f"sync p50 {median([o['total_s'] for o in syncs]):.2f}s"
    )
    print(f"syncs that waited for the liveness probe's budget: {r['paced_syncs']} ({r['paced_seconds']}s in all)")
    if r["failure"] == "running":
        print("partial: the run was still going when this was written")
    elif r["failure"]:
        print(f"stopped early: {r['failure']}")


if __name__ == "__main__":
    sys.exit(main())
