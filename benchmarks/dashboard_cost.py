"""What the dashboard costs: `devloop dev` with the page open in Chromium vs `devloop dev --no-ui`,
and what Prometheus (monitoring, on by default in the v1 devloop.yaml) costs in the cluster.

For each mode, on a kind cluster of its own (default `devloop-ui`, created when missing):
  idle   CPU of the devloop process over --idle seconds after the first cycle (the dashboard's
         poller, with monitoring its Prometheus queries, and the SSE fan-out run all the time),
  busy   CPU over --edits edits of sample-app/server.js (each waited for until its cycle is done),
  RSS    of the devloop process at the end (VmRSS) and its peak (VmHWM).
With the page open, the CPU of Chromium's processes is measured too (what the page costs the browser).
CPU is read from /proc/<pid>/stat (utime + stime); figures are % of one core. kubectl children
(port-forward, logs) are the same in both modes and not counted.

Prometheus: `crictl stats` in the kind node (no metrics-server, so no `kubectl top`): its container's
memory working set, and CPU over the idle window (cumulative usage, read at both ends).

Usage (after .ci/run's setup, or with kind/kubectl/docker and /usr/bin/chromium):
  python benchmarks/dashboard_cost.py [--idle 30] [--edits 5] [--keep-cluster] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.conftest import Devloop, Harness, devloop_argv, free_port, make_harness  # noqa: E402  (the e2e tests' setup)

CHROMIUM = os.environ.get("DEVLOOP_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-sync"]
TICK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def children_cpu_seconds(pid: int) -> float:
    """CPU of the process's finished children (cutime + cstime): the poller's kubectl calls."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / TICK


def memory_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


def descendants(root: int) -> list[int]:
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, todo = [], [root]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        found += kids
        todo += kids
    return found


def chromium_cpu() -> tuple[float, float]:
    """(CPU seconds, RSS MiB) of the Chromium processes this script started (through playwright's driver)."""
    cpu = rss = 0.0
    for pid in descendants(os.getpid()):
        try:
            if "chrom" not in Path(f"/proc/{pid}/comm").read_text():
                continue
            cpu += cpu_seconds(pid)
            rss += memory_mib(pid)[0]
        except OSError:
            continue
    return cpu, rss


def crictl_stats(node: str) -> dict[str, dict[str, float]]:
    """Per container name in the kind node: cpu (cumulative core-seconds) and memory (working set, MiB)."""
    out = subprocess.run(["docker", "exec", node, "crictl", "stats", "-o", "json"], capture_output=True, text=True, check=True, timeout=60)
    stats: dict[str, dict[str, float]] = {}
    for s in json.loads(out.stdout).get("stats", []):
        labels = s["attributes"].get("labels") or {}
        name = f"{labels.get('io.kubernetes.pod.name', '?')}/{labels.get('io.kubernetes.container.name', '?')}"
        cpu = int(s.get("cpu", {}).get("usageCoreNanoSeconds", {}).get("value", 0)) / 1e9
        mem = int(s.get("memory", {}).get("workingSetBytes", {}).get("value", 0)) / 2**20
        stats[name] = {"cpu": cpu, "memory_mib": mem}
    return stats


def write_project(root: Path, h: Harness, cluster: str) -> None:
    shutil.copytree(REPO / "sample-app", root / "sample-app", ignore=shutil.ignore_patterns("node_modules"))
    shutil.copy(REPO / "kind-config.yaml", root / "kind-config.yaml")
    (root / "devloop.yaml").write_text(
        "apiVersion: devloop/v1\n"
        f"cluster:\n  name: {cluster}\n  nodeImage: {h.kind_image}\n"
        f"image:\n  buildArgs:\n    NODE_IMAGE: {h.node_base}\n"
        f"registry:\n  image: {h.registry_image}\n"
        f"monitoring:\n  enabled: true\n  image: {h.prometheus_image}\n"  # enabled: the v1 default is lost with a section (config.py)
        "dashboard:\n  port: 0\n"
        f"portForward:\n  localPort: {free_port()}\n"
        "deploy:\n  rolloutTimeout: 240\n"
    )


@contextmanager
def devloop_dev(h: Harness, root: Path, ui: bool) -> Iterator[tuple[Devloop, str]]:
    argv = devloop_argv("dev") if ui else devloop_argv("dev", "--no-ui")
    proc = subprocess.Popen(argv, cwd=root, env=h.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    d = Devloop(proc)
    d.start_reader()
    try:
        url = ""
        if ui:
            url = str(d.wait_for(lambda e: e["event"] == "info" and "url" in e, 120, "the dashboard URL")["url"])
        first = d.wait_for(lambda e: e["event"] == "cycle_done", 900, "the first cycle")
        assert first["ok"], first
        d.wait_for(lambda e: e["event"] == "port_forward" and e["ready"], 120, "the port-forward")
        yield d, url
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@dataclasses.dataclass
class Figures:
    mode: str
    idle_cpu_pct: float = 0.0
    idle_children_cpu_pct: float = 0.0
    busy_cpu_pct: float = 0.0
    busy_seconds: float = 0.0
    rss_mib: float = 0.0
    peak_rss_mib: float = 0.0
    browser_idle_cpu_pct: float | None = None
    browser_busy_cpu_pct: float | None = None
    browser_rss_mib: float | None = None
    prometheus: dict[str, float] = dataclasses.field(default_factory=dict)


def drain(d: Devloop) -> None:
    while not d.events.empty():
        d.seen.append(d.events.get_nowait())


def measure(h: Harness, root: Path, node: str, ui: bool, idle: float, edits: int, counter: list[int]) -> Figures:
    fig = Figures("dev (dashboard open in Chromium)" if ui else "dev --no-ui")
    with devloop_dev(h, root, ui) as (d, url):
        pid = d.proc.pid
        pw = browser = None
        if ui:
            from playwright.sync_api import expect, sync_playwright

            pw = sync_playwright().start()
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            expect(page.locator("#conn")).to_have_text("live", timeout=30_000)
        try:
            time.sleep(5)  # benchmark: let the page's first load and the first poll settle
            t0, c0, b0, k0 = time.monotonic(), cpu_seconds(pid), chromium_cpu()[0], children_cpu_seconds(pid)
            p0 = crictl_stats(node)
            time.sleep(idle)  # benchmark: the idle window being measured
            wall = time.monotonic() - t0
            fig.idle_cpu_pct = 100 * (cpu_seconds(pid) - c0) / wall
            fig.idle_children_cpu_pct = 100 * (children_cpu_seconds(pid) - k0) / wall
            p1 = crictl_stats(node)
            prom = next((k for k in p1 if k.startswith("devloop-prometheus")), None)
            if prom is not None and prom in p0:
                fig.prometheus = {
                    "cpu_pct": round(100 * (p1[prom]["cpu"] - p0[prom]["cpu"]) / wall, 2),
                    "memory_mib": round(p1[prom]["memory_mib"], 1),
                }
            apps = [k for k in p1 if k.startswith("web-app-")]
            if apps:
                fig.prometheus["app_pod_memory_mib_each"] = round(sum(p1[k]["memory_mib"] for k in apps) / len(apps), 1)
            if ui:
                b1, _ = chromium_cpu()
                fig.browser_idle_cpu_pct = round(100 * (b1 - b0) / wall, 2)
            drain(d)
            t0, c0, b0 = time.monotonic(), cpu_seconds(pid), chromium_cpu()[0]
            server = root / "sample-app" / "server.js"
            for _ in range(edits):
                counter[0] += 1
                text = server.read_text()
                start = text.index("const MESSAGE = ")
                end = text.index("\n", start)
                server.write_text(text[:start] + f"const MESSAGE = 'Hello from the dashboard benchmark {counter[0]}';" + text[end:])
                done = d.wait_for(lambda e: e["event"] == "cycle_done", 300, "an edit's cycle")
                assert done["ok"], done
            fig.busy_seconds = time.monotonic() - t0
            fig.busy_cpu_pct = 100 * (cpu_seconds(pid) - c0) / fig.busy_seconds
            if ui:
                b1, brss = chromium_cpu()
                fig.browser_busy_cpu_pct = round(100 * (b1 - b0) / fig.busy_seconds, 2)
                fig.browser_rss_mib = round(brss, 1)
            fig.rss_mib, fig.peak_rss_mib = memory_mib(pid)
        finally:
            if browser is not None:
                browser.close()
            if pw is not None:
                pw.stop()
    return fig


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cluster", default="devloop-ui")
    ap.add_argument("--idle", type=float, default=30.0)
    ap.add_argument("--edits", type=int, default=5)
    ap.add_argument("--keep-cluster", action="store_true", help="leave the kind cluster (it is deleted with kind, never the registry)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    h = make_harness()
    node = f"{args.cluster}-control-plane"
    results: list[Figures] = []
    with tempfile.TemporaryDirectory(prefix="devloop-dashboard-cost-") as tmp:
        root = Path(tmp) / "proj"
        root.mkdir()
        write_project(root, h, args.cluster)
        counter = [0]
        try:
            for ui in (False, True):
                results.append(measure(h, root, node, ui, args.idle, args.edits, counter))
        finally:
            if not args.keep_cluster:
                subprocess.run(["kind", "delete", "cluster", "--name", args.cluster], env=h.env, check=False, capture_output=True)

    print(f"\ndevloop process, {args.idle:.0f}s idle and {args.edits} edits (CPU in % of one core):")
    print(f"{'mode':36} {'idle CPU':>9} {'busy CPU':>9} {'busy s':>7} {'RSS MiB':>8} {'peak MiB':>9}")
    for f in results:
        print(f"{f.mode:36} {f.idle_cpu_pct:8.2f}% {f.busy_cpu_pct:8.2f}% {f.busy_seconds:7.1f} {f.rss_mib:8.1f} {f.peak_rss_mib:9.1f}")
    for f in results:
        print(f"{f.mode}: idle CPU of finished children (kubectl calls) {f.idle_children_cpu_pct:.2f}%")
    for f in results:
        if f.browser_idle_cpu_pct is not None:
            print(
                f"Chromium with the page open: idle {f.browser_idle_cpu_pct:.2f}%, busy {f.browser_busy_cpu_pct:.2f}%, RSS {f.browser_rss_mib:.0f} MiB"
            )
    for f in results:
        if f.prometheus:
            print(f"Prometheus in the cluster ({f.mode} run): {json.dumps(f.prometheus)}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([dataclasses.asdict(f) for f in results], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
