"""Several services in one save versus one, measured on the real kind cluster in one run.

The examples/shop project (web, api, worker) under `devloop dev`. For each mode, N iterations of:
edit the VERSION line of the service(s) → wait until devloop reports every changed service's
rollout complete (its `cycle_done`, which devloop only emits once the Deployment's new pods are
all ready), then check through the port-forward that web's page shows the new versions.

Modes:
  one   edit api/server.js only (one service rolls)
  two   edit api/server.js and web/server.js in one save (two services roll concurrently)

Usage (after tests/run's setup, or on a laptop with kind/kubectl/docker):
  python benchmarks/services.py --iterations 5 [--cluster devloop-bench] [--json benchmarks/results/services.json]
The cluster (and its registry container, <cluster>-registry) is created and deleted at the end.
`benchmarks/loop.py --services` runs the same on the loop's cluster (run_on_cluster), after its modes.
Target (issue 22): the two-service cycle p50 within 1.2x of the one-service cycle (it was 1.3x before).
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.loop import DevProcess  # noqa: E402
from tests.e2e.conftest import Harness, free_port, make_harness  # noqa: E402

CLUSTER = "devloop-bench"


def project(h: Harness, root: Path, registry_port: int | None = None) -> tuple[Path, int]:
    shop = root / "shop"
    shutil.copytree(REPO / "examples" / "shop", shop)
    shutil.copy(REPO / "kind-config.yaml", shop / "kind-config.yaml")
    doc = yaml.safe_load((shop / "devloop.yaml").read_text())
    doc["cluster"] = {"name": CLUSTER, "nodeImage": h.kind_image, "kindConfig": "kind-config.yaml"}
    doc["registry"] = {"image": h.registry_image, "name": f"{CLUSTER}-registry", "hostPort": registry_port or free_port()}
    doc["dashboard"] = {"port": 0}
    web_port = free_port()
    for svc in doc["services"]:
        svc["image"]["buildArgs"] = {"NODE_IMAGE": h.node_base}
        for f in svc.get("portForward", []):
            f["localPort"] = web_port if svc["name"] == "web" else free_port()
    (shop / "devloop.yaml").write_text(yaml.safe_dump(doc))
    return shop, web_port


def set_version(shop: Path, service: str, version: str) -> None:
    server = shop / service / "server.js"
    lines = server.read_text().splitlines(keepends=True)
    server.write_text("".join(f"const VERSION = '{version}';\n" if line.startswith("const VERSION =") else line for line in lines))


def page(port: int) -> str:
    """web's page through devloop's forward ("" while the forward reconnects after a rollout)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/")
        return conn.getresponse().read().decode()
    except (OSError, http.client.HTTPException):
        return ""
    finally:
        conn.close()


def run(h: Harness, shop: Path, web_port: int, n: int) -> dict[str, list[dict[str, float]]]:
    d = DevProcess(shop, h)
    rows: dict[str, list[dict[str, float]]] = {"one": [], "two": []}
    try:
        done = 0
        while done < 3:  # the initial cycle: one cycle_done per service
            e = d.next({"cycle_done"})
            assert e["ok"], e
            done += 1
        for i in range(n):
            for mode, services in (("one", ["api"]), ("two", ["api", "web"])):
                tag = uuid.uuid4().hex[:6]
                t0 = time.time()
                for s in services:
                    set_version(shop, s, f"{s} {mode} {i} {tag}")
                seen: dict[str, dict[str, Any]] = {}
                while len(seen) < len(services):
                    e = d.next({"cycle_done"})
                    assert e["ok"], e
                    seen[e["service"]] = e
                total = max(e["ts"] for e in seen.values()) - t0
                deadline = time.time() + 30
                while not all(f"{s} {mode} {i} {tag}" in page(web_port) for s in services):  # served, not only reported
                    if time.time() > deadline:
                        raise TimeoutError(f"web's page never showed {services} {tag}")
                rows[mode].append(
                    {
                        "total": total,
                        "build": max(e["phases"].get("build", 0.0) for e in seen.values()),
                        "rollout": max(e["phases"].get("rollout", 0.0) for e in seen.values()),
                    }
                )
                print(f"  {mode} #{i}: {total:.2f}s", flush=True)
    finally:
        d.stop()
    return rows


def p(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def summary(rows: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    one = statistics.median(x["total"] for x in rows["one"])
    two = statistics.median(x["total"] for x in rows["two"])
    return {"rows": rows, "one_p50": one, "two_p50": two, "ratio_p50": two / one}


def run_on_cluster(h: Harness, cluster: str, registry_port: int, n: int) -> dict[str, Any]:
    """The measure on an existing cluster and its registry container (<cluster>-registry on
    `registry_port`), as loop.py --services runs it; the shop is taken away again (`devloop down`)."""
    global CLUSTER
    CLUSTER = cluster
    with tempfile.TemporaryDirectory(prefix="devloop-bench-") as tmp:
        shop, web_port = project(h, Path(tmp), registry_port)
        try:
            rows = run(h, shop, web_port, n)
        finally:
            subprocess.run([sys.executable, "-m", "devloop", "down"], cwd=shop, env=h.env, check=False, capture_output=True)
    result = summary(rows)
    print(f"  two services / one service (p50): {result['ratio_p50']:.2f}x ({result['two_p50']:.2f}s / {result['one_p50']:.2f}s)")
    return result


def main() -> None:
    global CLUSTER
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", "-n", type=int, default=5)
    ap.add_argument("--cluster", default=CLUSTER, help=f"kind cluster to create and delete at the end (default {CLUSTER})")
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "services.json")
    args = ap.parse_args()
    CLUSTER = args.cluster
    h = make_harness()
    h.env["PYTHONPATH"] = str(REPO)  # DevProcess runs `python -m devloop`: this tree's
    with tempfile.TemporaryDirectory(prefix="devloop-bench-") as tmp:
        shop, web_port = project(h, Path(tmp))
        try:
            rows = run(h, shop, web_port, args.iterations)
        finally:
            subprocess.run(["kind", "delete", "cluster", "--name", CLUSTER], env=h.env, check=False, capture_output=True)
            subprocess.run(["docker", "rm", "-f", f"{CLUSTER}-registry"], env=h.env, check=False, capture_output=True)
    print("\nedit → every changed service rolled out (seconds, p50 (p95)):")
    print(f"{'mode':<6} {'build':>8} {'rollout':>8} {'total':>16}")
    for mode, r in rows.items():
        t = [x["total"] for x in r]
        b = statistics.median(x["build"] for x in r)
        ro = statistics.median(x["rollout"] for x in r)
        print(f"{mode:<6} {b:>8.2f} {ro:>8.2f} {statistics.median(t):>8.2f} ({p(t, 0.95):.2f})")
    result = summary(rows)
    print(f"two services / one service (p50): {result['ratio_p50']:.2f}x (target ≤ 1.2x)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
