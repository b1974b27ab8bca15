"""Edit → serving, measured on the real kind cluster, side by side in one run.

For each mode, N iterations of: edit MESSAGE in sample-app/server.js → wait until every replica
serves the new text through the Service. A client pod inside the cluster polls the Service every
20 ms and logs (time, pod, message) whenever a pod's answer changes; a mode's iteration is done
when every ready replica has answered the new text and nothing old is served afterwards.

Modes (same cluster, same sample, 3 replicas):
  devloop-live      devloop dev with liveUpdate (sync + restart the process in place)
  devloop-registry  devloop dev, rebuild path, pushing to the local registry
  devloop-kindload  devloop dev, rebuild path, docker save + kind load image-archive
  devloop-registry-fastroll  as devloop-registry, with the dev-only deploy.rollingUpdate 1/2
  devloop-registry-monitoring  as devloop-registry, with Prometheus running beside the app (monitoring on)
  baseline          docker build; kind load docker-image; kubectl rollout restart; rollout status
  floor             the cluster's own cost: images with each iteration's text built and loaded into the
                    node beforehand, then `kubectl set image` → every replica serves (no build, no push)

devloop's overhead above the floor (rebuild path, p50 total) is printed at the end.

Also: a no-op save and an ignored-file save (must start no cycle), and the idle CPU / RSS of
`devloop dev` with a 50k-file node_modules in the tree.

Usage (after .ci/run's setup, or on a laptop with kind/kubectl/docker):
  python benchmarks/loop.py --iterations 5 [--json benchmarks/results/loop.json]
Prints a table with p50/p95 per phase and the baseline/devloop ratios.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.conftest import Harness, free_port, make_harness, pump_json_lines  # noqa: E402  (the e2e tests' setup)

CLUSTER = "devloop-bench"
CONTEXT = f"kind-{CLUSTER}"
CLIENT = """
const http = require('http');
function tick() {
  const req = http.get({host: 'web-app-service', port: 80, path: '/', agent: false, timeout: 500}, res => {
    let b = ''; res.on('data', c => b += c);
    res.on('end', () => {
      const pod = res.headers['x-pod-name'] || '?'; const msg = b.trim();
      console.log(JSON.stringify({t: Date.now() / 1000, pod, msg}));
      setTimeout(tick, 20);
    });
  });
  req.on('error', () => setTimeout(tick, 20));
  req.on('timeout', () => req.destroy());
}
tick();
"""


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


class Client:
    """The in-cluster poller; yields (time, pod, message) answers."""

    def __init__(self, h: Harness, image: str) -> None:
        self.h = h
        self.answers: queue.Queue[dict[str, Any]] = queue.Queue()
        h.kubectl_run("delete", "pod", "bench-client", "--ignore-not-found", "--wait=true")
        h.kubectl_run(
            "run",
            "bench-client",
            f"--image={image}",
            "--image-pull-policy=IfNotPresent",
            "--restart=Never",
            "--command",
            "--",
            "node",
            "-e",
            CLIENT,
        )
        h.kubectl_run("wait", "--for=condition=Ready", "pod/bench-client", "--timeout=120s")
        self.proc = subprocess.Popen(
            [h.kubectl, "--context", CONTEXT, "logs", "-f", "bench-client"], env=h.env, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        pump_json_lines(self.proc.stdout, self.answers)

    def drain(self) -> None:
        while not self.answers.empty():
            self.answers.get_nowait()

    def wait_all_new(self, message: str, pods: int, timeout: float = 180, settle: float = 1.0) -> tuple[float, float]:
        """(first new answer, the moment `pods` replicas answer the new text and no old text is
        served any more), as wall-clock times, confirmed by `settle` seconds of new-only answers."""
        first_new: dict[str, float] = {}
        last_old = 0.0
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                a = self.answers.get(timeout=1)
            except queue.Empty:
                continue
            if a["msg"] == message:
                first_new.setdefault(a["pod"], a["t"])
            else:
                last_old = max(last_old, a["t"])
            if len(first_new) >= pods:
                done = max(sorted(first_new.values())[pods - 1], last_old)
                if a["t"] - done >= settle:
                    return min(first_new.values()), done
        raise TimeoutError(f"not every replica served {message!r} within {timeout}s: {first_new}")

    def stop(self) -> None:
        self.proc.kill()
        self.h.kubectl_run("delete", "pod", "bench-client", "--ignore-not-found", "--wait=false", check=False)


def write_config(root: Path, h: Harness, *, registry: bool, live: bool, fast_rollout: bool = False, monitoring: bool = False) -> None:
    rolling = "  rollingUpdate: {maxSurge: 1, maxUnavailable: 2}\n" if fast_rollout else ""
    (root / "devloop.yaml").write_text(
        "apiVersion: devloop/v1\n"
        f"deploy:\n  manifests: [sample-app/k8s]\n{rolling}"
        f"cluster:\n  name: {CLUSTER}\n  nodeImage: {h.kind_image}\n"
        f"image:\n  buildArgs:\n    NODE_IMAGE: {h.node_base}\n"
        f"registry:\n  enabled: {str(registry).lower()}\n  image: {h.registry_image}\n"
        f"liveUpdate:\n  enabled: {str(live).lower()}\n  command: [node, server.js]\n"
        f"portForward:\n  localPort: {free_port()}\n"
        f"monitoring:\n  enabled: {str(monitoring).lower()}\n  image: {h.prometheus_image}\ndashboard:\n  port: 0\n"
    )


class DevProcess:
    def __init__(self, root: Path, h: Harness) -> None:
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.proc = subprocess.Popen(
            [shutil.which("devloop") or "devloop", "--json", "dev"],
            cwd=root,
            env=h.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        pump_json_lines(self.proc.stdout, self.events)

    def next(self, kinds: set[str], timeout: float = 600) -> dict[str, Any]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                e = self.events.get(timeout=1)
            except queue.Empty:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"devloop exited with {self.proc.returncode}") from None
                continue
            if e["event"] in kinds:
                return e
        raise TimeoutError(f"no {kinds} event")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(60)


def edit(root: Path, message: str) -> None:
    server = root / "sample-app" / "server.js"
    lines = server.read_text().splitlines(keepends=True)
    lines = [f"const MESSAGE = '{message}';\n" if line.startswith("const MESSAGE =") else line for line in lines]
    server.write_text("".join(lines))


def run_devloop_mode(h: Harness, root: Path, mode: str, n: int) -> list[dict[str, float]]:
    write_config(
        root,
        h,
        registry=mode != "devloop-kindload",
        live=mode == "devloop-live",
        fast_rollout=mode.endswith("-fastroll"),
        monitoring=mode.endswith("-monitoring"),
    )
    d = DevProcess(root, h)
    while True:  # wait for the initial cycle
        e = d.next({"cycle_done", "skipped"})
        if e["event"] == "cycle_done":
            assert e["ok"], e
            break
    client = Client(h, e["image"])
    rows = []
    try:
        for i in range(n):
            msg = f"{mode} {i} {uuid.uuid4().hex[:6]}"
            client.drain()
            t0 = time.time()
            edit(root, msg)
            start = d.next({"cycle_start"})
            done = d.next({"cycle_done"})
            assert done["ok"], done
            first, all_new = client.wait_all_new(msg, 3)
            ph = done["phases"]
            rows.append(
                {
                    "detect": start["ts"] - t0,
                    "build": ph.get("build", 0.0) + ph.get("plan", 0.0),
                    "load": ph.get("publish", 0.0),
                    "rollout": ph.get("deploy", 0.0) + ph.get("rollout", 0.0) + ph.get("sync", 0.0),
                    "first": first - t0,
                    "total": all_new - t0,
                }
            )
            print(f"  {mode} #{i}: total {rows[-1]['total']:.2f}s (first new answer {rows[-1]['first']:.2f}s)", flush=True)
    finally:
        client.stop()
        d.stop()
    return rows


def run_baseline(h: Harness, root: Path, n: int) -> list[dict[str, float]]:
    def sh(*argv: str) -> float:
        t = time.time()
        subprocess.run(argv, env=h.env, check=True, capture_output=True, cwd=root)
        return time.time() - t

    ctx = ["--context", CONTEXT]
    build_arg = f"NODE_IMAGE={h.node_base}"
    sh("docker", "build", "-q", "--build-arg", build_arg, "-t", "my-web-app:dev", "sample-app")
    sh("kind", "load", "docker-image", "my-web-app:dev", "--name", CLUSTER)
    sh(h.kubectl, *ctx, "set", "image", "deployment/web-app", "web-app=my-web-app:dev")
    sh(
        h.kubectl,
        *ctx,
        "patch",
        "deployment/web-app",
        "-p",
        '{"spec":{"template":{"spec":{"containers":[{"name":"web-app","imagePullPolicy":"IfNotPresent","command":null,"args":null}]}}}}',
    )
    sh(h.kubectl, *ctx, "rollout", "status", "deployment/web-app", "--timeout=300s")
    client = Client(h, "my-web-app:dev")
    rows = []
    try:
        for i in range(n):
            msg = f"baseline {i} {uuid.uuid4().hex[:6]}"
            client.drain()
            t0 = time.time()
            edit(root, msg)
            b = sh("docker", "build", "-q", "--build-arg", build_arg, "-t", "my-web-app:dev", "sample-app")
            ld = sh("kind", "load", "docker-image", "my-web-app:dev", "--name", CLUSTER)
            r = sh(h.kubectl, *ctx, "rollout", "restart", "deployment/web-app")
            r += sh(h.kubectl, *ctx, "rollout", "status", "deployment/web-app", "--timeout=300s")
            first, all_new = client.wait_all_new(msg, 3)
            rows.append({"detect": 0.0, "build": b, "load": ld, "rollout": r, "first": first - t0, "total": all_new - t0})
            print(f"  baseline #{i}: total {rows[-1]['total']:.2f}s", flush=True)
    finally:
        client.stop()
    return rows


def run_floor(h: Harness, root: Path, n: int) -> list[dict[str, float]]:
    """What the cluster alone costs for these manifests: the images are on the node before the clock
    starts; each iteration only rolls the Deployment to the next one."""
    ctx = ["--context", CONTEXT]
    build_arg = f"NODE_IMAGE={h.node_base}"
    messages = [f"floor {i} {uuid.uuid4().hex[:6]}" for i in range(n)]
    for i, msg in enumerate(messages):  # prepared outside the timed part
        edit(root, msg)
        subprocess.run(
            ["docker", "build", "-q", "--build-arg", build_arg, "-t", f"my-web-app:floor-{i}", "sample-app"],
            cwd=root,
            env=h.env,
            check=True,
            capture_output=True,
        )
        subprocess.run(
            ["kind", "load", "docker-image", f"my-web-app:floor-{i}", "--name", CLUSTER], env=h.env, check=True, capture_output=True
        )
    current = h.kubectl_json("get", "deployment/web-app")["spec"]["template"]["spec"]["containers"][0]["image"]
    subprocess.run(
        [
            h.kubectl,
            *ctx,
            "patch",
            "deployment/web-app",
            "-p",
            '{"spec":{"template":{"spec":{"containers":[{"name":"web-app","imagePullPolicy":"IfNotPresent","command":null,"args":null}]}}}}',
        ],
        env=h.env,
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [h.kubectl, *ctx, "rollout", "status", "deployment/web-app", "--timeout=300s"], env=h.env, check=True, capture_output=True
    )
    client = Client(h, current)
    rows = []
    try:
        for i, msg in enumerate(messages):
            client.drain()
            t0 = time.time()
            subprocess.run(
                [h.kubectl, *ctx, "set", "image", "deployment/web-app", f"web-app=my-web-app:floor-{i}"],
                env=h.env,
                check=True,
                capture_output=True,
            )
            first, all_new = client.wait_all_new(msg, 3)
            rows.append({"detect": 0.0, "build": 0.0, "load": 0.0, "rollout": all_new - t0, "first": first - t0, "total": all_new - t0})
            print(f"  floor #{i}: total {rows[-1]['total']:.2f}s (first new answer {rows[-1]['first']:.2f}s)", flush=True)
    finally:
        client.stop()
        for i in range(n):
            subprocess.run(["docker", "rmi", f"my-web-app:floor-{i}"], env=h.env, check=False, capture_output=True)
    return rows


def noop_and_idle(h: Harness, root: Path) -> dict[str, Any]:
    """No-op saves start no cycle; idle CPU and RSS of `devloop dev` with 50k files in node_modules."""
    write_config(root, h, registry=True, live=False)
    nm = root / "sample-app" / "node_modules"
    for i in range(5000):
        d = nm / f"pkg{i:04d}"
        d.mkdir(parents=True, exist_ok=True)
        for j in range(10):
            (d / f"f{j}.js").write_text("module.exports = 1;\n")
    d = DevProcess(root, h)
    try:
        while d.next({"cycle_done", "skipped"})["event"] != "cycle_done":
            pass
        server = root / "sample-app" / "server.js"
        server.write_text(server.read_text())  # same content
        (root / "sample-app" / "README.md").write_text("docs only\n")  # .dockerignore'd
        (nm / "pkg0001" / "f1.js").write_text("changed\n")  # node_modules is never watched
        cycles = 0
        deadline = time.time() + 3
        while time.time() < deadline:
            try:
                e = d.events.get(timeout=0.2)
            except queue.Empty:
                continue
            cycles += e["event"] == "cycle_start"
        stat = Path(f"/proc/{d.proc.pid}/stat")
        ticks = os.sysconf("SC_CLK_TCK")

        def cpu() -> float:
            f = stat.read_text().rsplit(")", 1)[1].split()
            return (int(f[11]) + int(f[12])) / ticks

        c0, t0 = cpu(), time.time()
        time.sleep(10)  # measuring idle: the wait is the measurement window, not a synchronisation
        c1, t1 = cpu(), time.time()
        rss_kb = next(
            int(line.split()[1]) for line in Path(f"/proc/{d.proc.pid}/status").read_text().splitlines() if line.startswith("VmRSS")
        )
        return {
            "noop_cycles": cycles,
            "idle_cpu_percent": 100 * (c1 - c0) / (t1 - t0),
            "rss_mb": rss_kb / 1024,
            "files_in_node_modules": 50000,
        }
    finally:
        d.stop()
        shutil.rmtree(nm)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", "-n", type=int, default=5)
    ap.add_argument("--modes", default="floor,devloop-live,devloop-registry,devloop-registry-fastroll,devloop-kindload,baseline")
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "loop.json")
    ap.add_argument("--keep-cluster", action="store_true")
    args = ap.parse_args()

    h = dataclasses.replace(make_harness(), context=CONTEXT)
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="devloop-bench-")) / "proj"
    shutil.copytree(REPO / "sample-app", root / "sample-app", ignore=shutil.ignore_patterns("node_modules"))
    shutil.copy(REPO / "kind-config.yaml", root / "kind-config.yaml")
    write_config(root, h, registry=True, live=False)
    subprocess.run(["devloop", "up"], cwd=root, env=h.env, check=True)

    results: dict[str, Any] = {"iterations": args.iterations, "modes": {}}
    try:
        for mode in args.modes.split(","):
            print(f"== {mode}", flush=True)
            if mode == "baseline":
                rows = run_baseline(h, root, args.iterations)
            elif mode == "floor":
                rows = run_floor(h, root, args.iterations)
            else:
                rows = run_devloop_mode(h, root, mode, args.iterations)
            results["modes"][mode] = rows
        print("== no-op saves and idle watcher (50k files in node_modules)", flush=True)
        results["idle"] = noop_and_idle(h, root)
    finally:
        if not args.keep_cluster:
            subprocess.run(["kind", "delete", "cluster", "--name", CLUSTER], env=h.env, check=False, capture_output=True)

    cols = ["detect", "build", "load", "rollout", "first", "total"]
    print(f"\n{'mode':<18}" + "".join(f"{c + ' p50/p95':>18}" for c in cols))
    for mode, rows in results["modes"].items():
        cells = "".join(f"{pct([r[c] for r in rows], 0.5):>9.2f}/{pct([r[c] for r in rows], 0.95):<8.2f}" for c in cols)
        print(f"{mode:<18}{cells}")
    base = results["modes"].get("baseline")
    if base:
        b50 = statistics.median(r["total"] for r in base)
        for mode, rows in results["modes"].items():
            if mode != "baseline":
                print(f"baseline/{mode}: {b50 / statistics.median(r['total'] for r in rows):.1f}x (p50 total)")
    floor = results["modes"].get("floor")
    if floor:
        f50 = statistics.median(r["total"] for r in floor)
        results["overhead_above_floor"] = {}
        for mode, rows in results["modes"].items():
            if mode.startswith("devloop-"):
                over = statistics.median(r["total"] for r in rows) - f50
                results["overhead_above_floor"][mode] = round(over, 3)
                print(f"{mode}: {over:+.2f}s above the floor ({f50:.2f}s, p50 total)")
    print(f"idle: {json.dumps(results['idle'])}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
