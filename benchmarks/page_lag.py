"""How far the dashboard page trails what devloop does: a real `devloop dev` (sample-app, 3 replicas) on a
kind cluster of its own (default `devloop-ui`, created when missing), its page open in Chromium.

For each of --edits saves of sample-app/server.js:
  row      save → the page draws the save's cycle as a running row (before the build ends);
  row+     the same for a save made the moment the previous cycle is done (--quick saves: devloop is
           still following that cycle's new pods: logs, forwards);
  pods     the cycle's `cycle_done` line from devloop → the page's pod table shows 3 ready pods,
           none of them from before the save (the rollout's);
and for each of --deletes `kubectl delete pod` of one ready pod:
  pod      the delete → the page's pod table no longer shows that pod as ready.
The page is read in the browser (a `requestAnimationFrame`-free poll every 10 ms by playwright), so each
figure includes the page's own work. Seconds; printed, not asserted.

Which devloop runs is whatever `devloop` PYTHONPATH selects: to compare two trees, run this twice on the
same cluster (`--keep-cluster` the first time) with PYTHONPATH set to each.

Usage (after .ci/run's setup, or with kind/kubectl/docker and /usr/bin/chromium):
  python benchmarks/page_lag.py [--edits 3] [--quick 3] [--deletes 3] [--cluster devloop-ui] [--keep-cluster] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.dashboard_cost import CHROMIUM, CHROMIUM_ARGS, devloop_dev, drain, write_project  # noqa: E402
from tests.e2e.conftest import Harness, make_harness  # noqa: E402  (the e2e tests' setup)

SERVICE = "web-app"
CARD = f'section.card[data-service="{SERVICE}"]'
POLL_MS = 10


@dataclasses.dataclass
class Lags:
    row: list[float] = dataclasses.field(default_factory=list)
    row_quick: list[float] = dataclasses.field(default_factory=list)
    pods: list[float] = dataclasses.field(default_factory=list)
    pod: list[float] = dataclasses.field(default_factory=list)


def ready_pods(h: Harness, context: str) -> list[str]:
    out = subprocess.run(
        [h.kubectl, "--context", context, "get", "pods", "-l", f"app={SERVICE}", "-o", "json"],
        env=h.env,
        capture_output=True,
        text=True,
        check=True,
    )
    pods = json.loads(out.stdout)["items"]
    return sorted(
        p["metadata"]["name"]
        for p in pods
        if not p["metadata"].get("deletionTimestamp")
        and any(c["type"] == "Ready" and c["status"] == "True" for c in p.get("status", {}).get("conditions") or [])
    )


def wait_page(page: Any, js: str, arg: Any, timeout: float = 120.0) -> float:
    """Seconds (monotonic clock) when the page's condition came true."""
    page.wait_for_function(js, arg=arg, polling=POLL_MS, timeout=timeout * 1000)
    return time.monotonic()


ROW_RUNNING = f"""() => !!document.querySelector('{CARD} svg.phases g.cycle[data-ok="running"]')"""
ROW_OF = f"""n => !!document.querySelector(`{CARD} svg.phases g.cycle[data-cycle="${{n}}"]`)"""
PODS_EXACTLY = f"""want => {{
  const rows = [...document.querySelectorAll('{CARD} table.pods tbody tr')];
  const ready = rows.filter(r => r.children[1].textContent.startsWith("✔")).map(r => r.dataset.pod).sort();
  return JSON.stringify(ready) === JSON.stringify(want);
}}"""
NEW_PODS_READY = f"""old => {{
  const rows = [...document.querySelectorAll('{CARD} table.pods tbody tr')];
  const ready = rows.filter(r => r.children[1].textContent.startsWith("✔")).map(r => r.dataset.pod);
  return ready.length === 3 && !ready.some(p => old.includes(p));
}}"""
POD_NOT_READY = f"""name => {{
  const row = document.querySelector(`{CARD} table.pods tr[data-pod="${{name}}"]`);
  return !row || !row.children[1].textContent.startsWith("✔") || !!row.children[3].textContent.match(/Terminating/);
}}"""


def measure(h: Harness, root: Path, context: str, edits: int, deletes: int, quick: int) -> Lags:
    from playwright.sync_api import expect, sync_playwright

    lags = Lags()
    with devloop_dev(h, root, True) as (d, url), sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            expect(page.locator("#conn")).to_have_text("live", timeout=30_000)
            wait_page(page, PODS_EXACTLY, ready_pods(h, context))
            server = root / "sample-app" / "server.js"

            def save(i: int) -> float:
                text = server.read_text()
                start = text.index("const MESSAGE = ")
                end = text.index("\n", start)
                server.write_text(text[:start] + f"const MESSAGE = 'Hello from the page lag benchmark {i}';" + text[end:])
                return time.monotonic()

            for i in range(edits):
                drain(d)
                before = ready_pods(h, context)
                saved = save(i)
                lags.row.append(wait_page(page, ROW_RUNNING, None) - saved)
                done = d.wait_for(lambda e: e["event"] == "cycle_done", 300, "an edit's cycle")
                ended = time.monotonic()
                assert done["ok"], done
                lags.pods.append(wait_page(page, NEW_PODS_READY, before) - ended)  # 3 ready, none of the old ones
                print(f"edit {i + 1}: row {lags.row[-1]:.2f}s, pods after the cycle {lags.pods[-1]:.2f}s", flush=True)
            if quick:
                drain(d)
                save(1000)
                for i in range(quick):
                    done = d.wait_for(lambda e: e["event"] == "cycle_done", 300, "a cycle")
                    saved = save(1001 + i)
                    lags.row_quick.append(wait_page(page, ROW_OF, int(done["cycle"]) + 1) - saved)
                    print(f"quick save {i + 1}: row {lags.row_quick[-1]:.2f}s", flush=True)
                d.wait_for(lambda e: e["event"] == "cycle_done", 300, "the last quick save's cycle")
                wait_page(page, PODS_EXACTLY, ready_pods(h, context))
            for i in range(deletes):
                victim = ready_pods(h, context)[0]
                subprocess.run(
                    [h.kubectl, "--context", context, "delete", "pod", victim, "--wait=false"], env=h.env, check=True, capture_output=True
                )
                deleted = time.monotonic()
                lags.pod.append(wait_page(page, POD_NOT_READY, victim) - deleted)
                print(f"delete {i + 1}: pod table {lags.pod[-1]:.2f}s", flush=True)
                # the replacement Ready before the next delete (the rollout of a replica, not measured)
                deadline = time.monotonic() + 120
                while len(ready_pods(h, context)) < 3 and time.monotonic() < deadline:
                    time.sleep(0.5)  # benchmark: waiting for the cluster, not the page
        finally:
            browser.close()
    return lags


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cluster", default="devloop-ui")
    ap.add_argument("--edits", type=int, default=3)
    ap.add_argument("--deletes", type=int, default=3)
    ap.add_argument("--quick", type=int, default=3, help="saves made as the previous save's cycle is done")
    ap.add_argument("--keep-cluster", action="store_true", help="leave the kind cluster (deleted with kind, never the registry)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    h = make_harness()
    context = f"kind-{args.cluster}"
    with tempfile.TemporaryDirectory(prefix="devloop-page-lag-") as tmp:
        root = Path(tmp) / "proj"
        root.mkdir()
        write_project(root, h, args.cluster)
        try:
            lags = measure(h, root, context, args.edits, args.deletes, args.quick)
        finally:
            if not args.keep_cluster:
                subprocess.run(["kind", "delete", "cluster", "--name", args.cluster], env=h.env, check=False, capture_output=True)

    print("\nhow far the page trails devloop (seconds: median, max):")
    for name, values, what in (
        ("row", lags.row, "save → the running cycle's row"),
        ("row+", lags.row_quick, "save as the previous cycle is done → its row"),
        ("pods", lags.pods, "cycle done → the pod table lists the new pods"),
        ("pod", lags.pod, "kubectl delete pod → the pod table shows it leaving"),
    ):
        if values:
            print(f"  {name:5} {statistics.median(values):6.2f} {max(values):6.2f}   {what}")
    if args.json:
        args.json.write_text(json.dumps(dataclasses.asdict(lags), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
