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
  tilt              `tilt up` (--tilt PATH): a generated Tiltfile, docker_build with the same build args,
                    k8s_yaml of the sample's manifests, pushed to the same local registry (Tilt reads
                    the cluster's kube-public/local-registry-hosting ConfigMap), a port-forward
  tilt-live         as tilt, with live_update: sync sample-app → /app, then restart node in place
                    (the container's command under a restart loop, as Tilt's restart_process does)
  skaffold          `skaffold dev` (--skaffold PATH): a generated skaffold.yaml, the same Dockerfile and
                    build args, pushed to the local registry, kubectl deploy of the manifests, a port-forward
The peer modes run only when their binary is given (benchmarks/peers/build.sh builds both from the Go
module proxy); they start from no app in the cluster and take it away again when they end.

Columns: "first" is the first new answer of any replica in-cluster, "total" is every replica serving
it; "browser" is what a browser on the forwarded local URL sees: GET / with a new connection every
20 ms from the moment of the edit, the first answer with the new text; "failed" counts the requests
to that URL that were refused or failed during the change (devloop's portForward.localPort, Tilt's
port_forwards, Skaffold's portForward; none for floor and baseline).

devloop's overhead above the floor (rebuild path, p50 total) is printed at the end.

Also: a no-op save and an ignored-file save (must start no cycle), and the idle CPU / RSS of
`devloop dev` with a 50k-file node_modules in the tree.

Usage (after .ci/run's setup, or on a laptop with kind/kubectl/docker):
  python benchmarks/loop.py --iterations 5 [--json benchmarks/results/loop.json]
  python benchmarks/loop.py -n 5 --tilt ~/.cache/devloop-peers/bin/tilt --skaffold ~/.cache/devloop-peers/bin/skaffold
  python benchmarks/loop.py -n 5 --scale    # and the scale figures (benchmarks/scale.py) in the same JSON
Prints a table with p50/p95 per phase and the baseline/devloop ratios.
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import json
import os
import queue
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.conftest import Harness, free_port, make_harness, pump_json_lines  # noqa: E402  (the e2e tests' setup)

CLUSTER = "devloop-bench"  # --cluster; the bench's own registry container is f"{CLUSTER}-registry"
CONTEXT = f"kind-{CLUSTER}"
REGISTRY_PORT = 5001  # the bench registry's host port: a free one, chosen in main()
PEERS = ("tilt", "tilt-live", "skaffold")
BROWSER_INTERVAL = 0.02  # --browser-interval; 0: no forwarded-URL measure
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


def write_config(root: Path, h: Harness, *, registry: bool, live: bool, fast_rollout: bool = False, monitoring: bool = False) -> int:
    """devloop.yaml for a mode; returns the port-forward's local port. The registry is the bench's own
    container and port (not the default devloop-registry:5001 that the e2e tests start and remove)."""
    rolling = "  rollingUpdate: {maxSurge: 1, maxUnavailable: 2}\n" if fast_rollout else ""
    local_port = free_port()
    (root / "devloop.yaml").write_text(
        "apiVersion: devloop/v1\n"
        f"deploy:\n  manifests: [sample-app/k8s]\n{rolling}"
        f"cluster:\n  name: {CLUSTER}\n  nodeImage: {h.kind_image}\n"
        f"image:\n  buildArgs:\n    NODE_IMAGE: {h.node_base}\n"
        f"registry:\n  enabled: {str(registry).lower()}\n  image: {h.registry_image}\n"
        f"  name: {CLUSTER}-registry\n  hostPort: {REGISTRY_PORT}\n"
        f"liveUpdate:\n  enabled: {str(live).lower()}\n  command: [node, server.js]\n"
        f"portForward:\n  localPort: {local_port}\n"
        f"monitoring:\n  enabled: {str(monitoring).lower()}\n  image: {h.prometheus_image}\ndashboard:\n  port: 0\n"
    )
    return local_port


class Browser:
    """A browser on a forwarded local URL: GET / on 127.0.0.1:port with a new connection per request
    (no keep-alive: each request tests the listener and its upstream as they are at that moment),
    one every 20 ms, logging (sent, answered, ok, text or error) for as long as the mode runs."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.log: list[tuple[float, float, bool, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"browser-{port}")
        self._thread.start()

    def _get(self) -> tuple[bool, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            conn.request("GET", "/", headers={"Connection": "close"})
            r = conn.getresponse()
            body = r.read().decode(errors="replace").strip()
            return (True, body) if r.status == 200 else (False, f"HTTP {r.status}")
        except (OSError, http.client.HTTPException) as e:
            return False, f"{type(e).__name__}: {e}"
        finally:
            conn.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            sent = time.time()
            ok, text = self._get()
            with self._lock:
                self.log.append((sent, time.time(), ok, text))
            self._stop.wait(BROWSER_INTERVAL)

    def entries(self, since: float) -> list[tuple[float, float, bool, str]]:
        with self._lock:
            return [e for e in self.log if e[0] >= since]

    def wait_answer(self, timeout: float) -> bool:
        """True once any request answered 200 (the forward is up)."""
        deadline = time.time() + timeout
        start = time.time()
        while time.time() < deadline:
            if any(ok for _, _, ok, _ in self.entries(start)):
                return True
            time.sleep(0.1)
        return False

    def first_seen(self, message: str, since: float, timeout: float) -> float | None:
        """When `message` was first answered by a request sent at or after `since` (waits up to `timeout`)."""
        deadline = time.time() + timeout
        while True:
            seen = [done for _, done, ok, text in self.entries(since) if ok and text == message]
            if seen:
                return seen[0]
            if time.time() >= deadline:
                return None
            time.sleep(0.05)

    def failures(self, since: float, until: float) -> tuple[int, int, list[str], float | None]:
        """(failed requests, all requests, the first distinct reasons, the median seconds an answered
        request took) for the requests sent in [since, until]."""
        window = [e for e in self.entries(since) if e[0] <= until]
        reasons: list[str] = []
        for _, _, ok, text in window:
            if not ok and text not in reasons and len(reasons) < 5:
                reasons.append(text)
        took = [done - sent for sent, done, ok, _ in window if ok]
        return sum(not e[2] for e in window), len(window), reasons, statistics.median(took) if took else None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def measure_browser(browser: Browser | None, row: dict[str, Any], message: str, t0: float, settle: float = 1.0) -> None:
    """Adds the browser's figures for the change that started at t0 to `row` (after the in-cluster
    poller saw every replica serve it): first new text on the forwarded URL, failed requests."""
    if browser is None:
        return
    seen = browser.first_seen(message, t0, timeout=30)
    if seen is not None:
        time.sleep(max(0.0, seen + settle - time.time()))  # failures right after the switch count too
    failed, requests, reasons, took = browser.failures(t0, time.time())
    row["browser"] = None if seen is None else seen - t0
    row["browser_failed"] = failed
    row["browser_requests"] = requests
    row["browser_request_s"] = took  # one answered GET on a new connection, median over the change
    if reasons:
        row["browser_errors"] = reasons


class DevProcess:
    def __init__(self, root: Path, h: Harness) -> None:
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.proc = subprocess.Popen(
            [shutil.which("devloop", path=h.env["PATH"]) or "devloop", "--json", "dev"],
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


def run_devloop_mode(h: Harness, root: Path, mode: str, n: int) -> list[dict[str, Any]]:
    local_port = write_config(
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
    browser = Browser(local_port) if BROWSER_INTERVAL > 0 else None
    if browser is not None and not browser.wait_answer(60):
        print(f"  {mode}: nothing answers on the forwarded URL http://127.0.0.1:{local_port} (browser column empty)", flush=True)
    rows: list[dict[str, Any]] = []
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
            measure_browser(browser, rows[-1], msg, t0)
            print_iteration(mode, i, rows[-1])
    finally:
        if browser is not None:
            browser.stop()
        client.stop()
        d.stop()
    return rows


def print_iteration(mode: str, i: int, row: dict[str, Any]) -> None:
    line = f"  {mode} #{i}: total {row['total']:.2f}s (first new answer {row['first']:.2f}s"
    if "browser_failed" in row:
        seen = "never" if row["browser"] is None else f"{row['browser']:.2f}s"
        line += f"; forwarded URL {seen}, {row['browser_failed']}/{row['browser_requests']} requests failed"
        if row.get("browser_request_s") is not None:
            line += f", {1000 * row['browser_request_s']:.0f} ms per request"
        if row.get("browser_errors"):
            line += f": {row['browser_errors'][0]}"
    print(line + ")", flush=True)


def run_baseline(h: Harness, root: Path, n: int) -> list[dict[str, float]]:
    def sh(*argv: str) -> float:
        t = time.time()
        subprocess.run(argv, env=h.env, check=True, capture_output=True, cwd=root)
        return time.time() - t

    ensure_app(h, root)
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
    ensure_app(h, root)
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


# -- peers: Tilt and Skaffold on the same cluster, sample and registry -------------------------------


class PeerUnavailable(Exception):
    """A peer mode cannot run: its binary is missing or broken (one line)."""


def check_peer(flag: str, path: str | None) -> str:
    """The peer binary's version line; PeerUnavailable saying in one line what is wrong."""
    hint = "build it with benchmarks/peers/build.sh"
    if not path:
        raise PeerUnavailable(f"--{flag} PATH is needed for this mode ({hint})")
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise PeerUnavailable(f"--{flag} {path}: no executable file there ({hint})")
    try:
        out = subprocess.run([path, "version"], capture_output=True, text=True, timeout=60, env={**os.environ, **PEER_ENV})
    except (OSError, subprocess.TimeoutExpired) as e:
        raise PeerUnavailable(f"--{flag} {path} does not run: {e}") from None
    lines = (out.stdout + out.stderr).strip().splitlines()
    if out.returncode != 0 or not lines:
        raise PeerUnavailable(f"--{flag} {path}: `{flag} version` failed (exit {out.returncode}): {lines[-1] if lines else 'no output'}")
    return lines[0]


# Offline, quiet, no prompts: no analytics, no update checks, no survey.
PEER_ENV = {"TILT_DISABLE_ANALYTICS": "1", "SKAFFOLD_UPDATE_CHECK": "false", "SKAFFOLD_INTERACTIVE": "false"}

# The container's command under a restart loop, for Tilt's live_update `run` step (what Tilt's
# restart_process extension does with its wrapper binary; the extension is fetched from GitHub, so
# not available offline). TERM from the kubelet ends the loop; killing the child restarts it.
TILT_SUPERVISOR = (
    'trap \'kill -TERM "$c" 2>/dev/null; wait "$c"; exit 143\' TERM INT; '
    "while :; do node server.js & c=$!; echo $c > /tmp/.tilt-child; wait $c; done"
)


def manifest_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in (root / "sample-app" / "k8s").glob("*.yaml"))


def tiltfile(root: Path, h: Harness, forward_port: int, live: bool) -> str:
    extra = ""
    if live:
        extra = (
            f",\n    entrypoint=['sh', '-c', {TILT_SUPERVISOR!r}],\n"
            "    live_update=[\n"
            "        fall_back_on(['sample-app/package.json', 'sample-app/package-lock.json']),\n"
            "        sync('sample-app', '/app'),\n"
            "        run('kill \"$(cat /tmp/.tilt-child)\"'),\n"
            "    ]"
        )
    return (
        "# generated by devloop benchmarks/loop.py\n"
        f"allow_k8s_contexts({CONTEXT!r})\n"
        f"docker_build('my-web-app', 'sample-app', build_args={{'NODE_IMAGE': {h.node_base!r}}}{extra})\n"
        f"k8s_yaml({manifest_files(root)!r})\n"
        f"k8s_resource('web-app', port_forwards=['{forward_port}:3000'])\n"
    )


def skaffold_yaml(root: Path, h: Harness, forward_port: int) -> str:
    doc = {
        "apiVersion": "skaffold/v4beta14",
        "kind": "Config",
        "metadata": {"name": "devloop-bench"},
        "build": {
            "tagPolicy": {"inputDigest": {}},  # the sample is no git repository (the default tagger wants one)
            "local": {"push": True},  # to the local registry (--default-repo), not `kind load`
            "artifacts": [
                {
                    "image": "my-web-app",
                    "context": "sample-app",
                    "docker": {"dockerfile": "Dockerfile", "buildArgs": {"NODE_IMAGE": h.node_base}},
                }
            ],
        },
        "manifests": {"rawYaml": manifest_files(root)},
        "deploy": {"kubectl": {}},
        # namespace: without it Skaffold v2.24 maps the Service in namespace "" (fails) and forwards from another local port
        "portForward": [
            {"resourceType": "service", "resourceName": "web-app-service", "namespace": "default", "port": 80, "localPort": forward_port}
        ],
    }
    return "# generated by devloop benchmarks/loop.py\n" + yaml.safe_dump(doc, sort_keys=False)


def registry_host(h: Harness, root: Path) -> str:
    """The registry the cluster advertises (kube-public/local-registry-hosting, KEP-1755), which is
    what Tilt reads and what Skaffold is pointed at. devloop's registry flow creates it: when it is
    missing, `devloop up` with the registry on."""
    for attempt in range(2):
        r = h.kubectl_run("get", "configmap", "-n", "kube-public", "local-registry-hosting", "-o", "json", check=False)
        if r.returncode == 0:
            hosting = yaml.safe_load(json.loads(r.stdout)["data"]["localRegistryHosting.v1"])
            return str(hosting["host"])
        if attempt == 0:
            print("  no local-registry-hosting ConfigMap in the cluster: devloop up with the registry on", flush=True)
            write_config(root, h, registry=True, live=False)
            subprocess.run(["devloop", "up"], cwd=root, env=h.env, check=True, capture_output=True)
    raise RuntimeError("the cluster advertises no local registry (kube-public/local-registry-hosting) after devloop up")


def remove_app(h: Harness) -> None:
    """A peer starts from no app: what an earlier mode applied (devloop's own fields, live update's
    supervisor command) would otherwise stay in the objects the peer applies over."""
    h.kubectl_run(
        "delete",
        "deployment/web-app",
        "service/web-app-service",
        "configmap/prometheus-config",
        "--ignore-not-found",
        "--cascade=foreground",
        "--wait=true",
    )


def ensure_app(h: Harness, root: Path) -> None:
    """floor and baseline roll the Deployment a devloop mode left; after a peer took it away, `devloop up` puts it back."""
    if h.kubectl_run("get", "deployment/web-app", check=False).returncode != 0:
        write_config(root, h, registry=True, live=False)
        subprocess.run(["devloop", "up"], cwd=root, env=h.env, check=True, capture_output=True)


def tree_rss_mb(pid: int) -> float:
    """RSS of a process and all its descendants (a peer's kubectl children count too)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total_kb, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            total_kb += next(int(x.split()[1]) for x in Path(f"/proc/{p}/status").read_text().splitlines() if x.startswith("VmRSS"))
        except (OSError, StopIteration):
            continue
    return total_kb / 1024


def tail(path: Path, lines: int = 8) -> str:
    try:
        return " | ".join(line.strip() for line in path.read_text(errors="replace").splitlines()[-lines:] if line.strip())
    except OSError:
        return "(no log)"


TILT_STEP = re.compile(r"Step \d+ - ([0-9.]+)s \((Building|Pushing|Deploying)")


def tilt_phases(log_path: Path, offset: int) -> tuple[dict[str, float], int]:
    """Build, push and apply seconds of the Tilt builds logged since `offset` (its "Step N - 0.44s
    (Building Dockerfile…)" summary lines), and the new offset. Live updates log no such lines."""
    text = log_path.read_bytes()[offset:].decode(errors="replace")
    key = {"Building": "build", "Pushing": "load", "Deploying": "apply"}
    phases: dict[str, float] = {}
    for seconds, step in TILT_STEP.findall(text):
        phases[key[step]] = phases.get(key[step], 0.0) + float(seconds)
    return phases, offset + len(text.encode())


def run_peer_mode(h: Harness, root: Path, mode: str, n: int, binary: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """`tilt up` or `skaffold dev` on the same cluster, sample, registry and edits as devloop's modes,
    timed by the same in-cluster poller; returns the rows and the mode's extras (initial deploy, RSS)."""
    host = registry_host(h, root)
    remove_app(h)
    forward_port = free_port()
    kubeconfig = root.parent / "kubeconfig"  # this cluster only: a peer never sees another context
    kc = subprocess.run(["kind", "get", "kubeconfig", "--name", CLUSTER], env=h.env, check=True, capture_output=True, text=True)
    kubeconfig.write_text(kc.stdout)
    env = {**h.env, **PEER_ENV, "KUBECONFIG": str(kubeconfig)}
    log_path = root.parent / f"{mode}.log"
    start_msg = f"{mode} start {uuid.uuid4().hex[:6]}"
    edit(root, start_msg)
    if mode.startswith("tilt"):
        (root / "Tiltfile").write_text(tiltfile(root, h, forward_port, live=mode == "tilt-live"))
        argv = [binary, "up", "--stream=true", f"--port={free_port()}", "--file=Tiltfile"]
        down: list[str] | None = [binary, "down", "--file=Tiltfile", "--delete-namespaces=false"]
    else:
        (root / "skaffold.yaml").write_text(skaffold_yaml(root, h, forward_port))
        argv = [binary, "dev", f"--default-repo={host}", "--port-forward=user", "--update-check=false", "--interactive=false"]
        argv += [f"--kube-context={CONTEXT}", "--cleanup=true"]
        down = None  # skaffold dev deletes what it deployed when interrupted
    extras: dict[str, Any] = {"version": check_peer(mode.split("-")[0], binary), "log": str(log_path)}
    print(f"  {extras['version']}: {' '.join(argv[1:])} (log: {log_path})", flush=True)
    with log_path.open("w") as log:
        launched = time.time()
        proc = subprocess.Popen(
            argv, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    client: Client | None = None
    browser: Browser | None = None
    rows: list[dict[str, Any]] = []
    try:
        image = ""
        deadline = time.time() + 600
        while not image.startswith(f"{host}/"):
            if proc.poll() is not None:
                raise RuntimeError(f"{mode}: {binary} exited with {proc.returncode} before deploying: {tail(log_path)}")
            if time.time() > deadline:
                raise TimeoutError(f"{mode}: no Deployment from {host} within 600s: {tail(log_path)}")
            time.sleep(0.5)
            r = h.kubectl_run("get", "deployment/web-app", "-o", "jsonpath={.spec.template.spec.containers[0].image}", check=False)
            image = r.stdout.strip() if r.returncode == 0 else ""
        # The poller runs the peer's image under another name: Skaffold streams the logs of every pod
        # running an image it built, and would stream the poller's 50 lines a second too.
        poller_image = f"{host}/devloop-bench-poller:{mode}"
        subprocess.run(["docker", "tag", image.split("@")[0], poller_image], env=h.env, check=True, capture_output=True)
        subprocess.run(["docker", "push", "-q", poller_image], env=h.env, check=True, capture_output=True)
        client = Client(h, poller_image)
        _, ready = client.wait_all_new(start_msg, 3, timeout=600)
        extras["initial_deploy"] = ready - launched
        if mode == "skaffold":
            # Skaffold starts watching only after the deploy and its port-forwards: an edit before
            # "Watching for changes..." is never seen (its file list is taken after it).
            deadline = time.time() + 120
            while "Watching for changes" not in log_path.read_text(errors="replace"):
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"{mode}: skaffold does not watch for changes: {tail(log_path)}")
                time.sleep(0.2)
        print(f"  {mode}: initial deploy {extras['initial_deploy']:.2f}s (launch → every replica serves)", flush=True)
        browser = Browser(forward_port) if BROWSER_INTERVAL > 0 else None
        if browser is not None and not browser.wait_answer(60):
            print(f"  {mode}: nothing answers on the forwarded URL http://127.0.0.1:{forward_port} (browser column empty)", flush=True)
        offset = log_path.stat().st_size
        for i in range(n):
            msg = f"{mode} {i} {uuid.uuid4().hex[:6]}"
            client.drain()
            t0 = time.time()
            edit(root, msg)
            first, all_new = client.wait_all_new(msg, 3)
            rows.append({"first": first - t0, "total": all_new - t0})
            if mode == "tilt":
                phases, offset = tilt_phases(log_path, offset)
                rows[-1].update(phases)
            measure_browser(browser, rows[-1], msg, t0)
            print_iteration(mode, i, rows[-1])
            if proc.poll() is not None:
                raise RuntimeError(f"{mode}: {binary} exited with {proc.returncode}: {tail(log_path)}")
        extras["rss_mb"] = round(tree_rss_mb(proc.pid), 1)
    finally:
        if browser is not None:
            browser.stop()
        if client is not None:
            client.stop()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if down:
            subprocess.run(down, cwd=root, env=env, check=False, capture_output=True, timeout=180)
        remove_app(h)
    return rows, extras


def noop_and_idle(h: Harness, root: Path) -> dict[str, Any]:
    """No-op saves start no cycle; idle CPU and RSS of `devloop dev` with 50k files in node_modules."""
    write_config(root, h, registry=True, live=False)
    nm = root / "sample-app" / "node_modules"
    for i in range(5000):
        pkg = nm / f"pkg{i:04d}"
        pkg.mkdir(parents=True, exist_ok=True)
        for j in range(10):
            (pkg / f"f{j}.js").write_text("module.exports = 1;\n")
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


def registry_port(name: str) -> int:
    """The port of the bench's registry container left by a --keep-cluster run, else a free one."""
    out = subprocess.run(["docker", "port", name, "5000/tcp"], capture_output=True, text=True, check=False)
    if out.returncode == 0 and out.stdout.strip():
        return int(out.stdout.split()[0].rsplit(":", 1)[1])
    return free_port()


def print_table(results: dict[str, Any]) -> None:
    cols = ["detect", "build", "load", "rollout", "first", "browser", "total"]
    width = max([18, *(len(m) + 2 for m in results["modes"])])

    def cell(rows: list[dict[str, Any]], c: str) -> str:
        values = [r[c] for r in rows if r.get(c) is not None]
        if not values:
            return f"{'–':>9} {'':<8}"
        return f"{pct(values, 0.5):>9.2f}/{pct(values, 0.95):<8.2f}"

    print(f"\n{'mode':<{width}}" + "".join(f"{c + ' p50/p95':>18}" for c in cols) + f"{'failed/requests':>18}{'ms/request':>12}")
    for mode, rows in results["modes"].items():
        failed, took = "–", "–"
        if rows and "browser_failed" in rows[0]:
            failed = f"{sum(r['browser_failed'] for r in rows)}/{sum(r['browser_requests'] for r in rows)}"
            times = [r["browser_request_s"] for r in rows if r.get("browser_request_s") is not None]
            took = f"{1000 * statistics.median(times):.0f}" if times else "–"
        print(f"{mode:<{width}}" + "".join(cell(rows, c) for c in cols) + f"{failed:>18}{took:>12}")
    print(
        "first = first new answer in-cluster, total = every replica serves it (in-cluster poller, 20 ms); browser = first new "
        "answer on the forwarded local URL (a new connection per request, the next 20 ms after the last answer); failed = "
        "refused/failed requests there during the changes; ms/request = median time of an answered request"
    )


def main() -> int:
    global CLUSTER, CONTEXT, REGISTRY_PORT, BROWSER_INTERVAL
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", "-n", type=int, default=5)
    ap.add_argument(
        "--modes",
        help="comma-separated (default: floor,devloop-live,devloop-registry,devloop-registry-fastroll,devloop-kindload,baseline, "
        "then tilt,tilt-live and skaffold when --tilt / --skaffold are given)",
    )
    ap.add_argument("--tilt", metavar="PATH", help="a tilt binary (v0.37.6: benchmarks/peers/build.sh) for the tilt and tilt-live modes")
    ap.add_argument("--skaffold", metavar="PATH", help="a skaffold binary (v2.24.0: benchmarks/peers/build.sh) for the skaffold mode")
    ap.add_argument(
        "--browser-interval",
        type=float,
        default=0.02,
        metavar="SECONDS",
        help="pause between the forwarded-URL requests (default 0.02); 0 turns that measure off (it loads the API server: "
        "each request through devloop's forward is a new port-forward stream)",
    )
    ap.add_argument("--cluster", default=CLUSTER, help=f"kind cluster name (default {CLUSTER}); created, and deleted at the end")
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "loop.json")
    ap.add_argument("--keep-cluster", action="store_true")
    ap.add_argument(
        "--scale",
        action="store_true",
        help="also the scale figures (benchmarks/scale.py: a 10,000-file context, a ~1 GB image on its own cluster devloop-scale)",
    )
    ap.add_argument("--scale-files", type=int, default=10_000)
    ap.add_argument("--scale-image-mb", type=int, default=1024)
    args = ap.parse_args()
    # Ctrl-C, and SIGTERM, and SIGINT also when started in the background (which ignores it): the
    # cleanup in the modes' `finally` runs (a peer interrupted, its app deleted, the cluster deleted).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    CLUSTER, CONTEXT, BROWSER_INTERVAL = args.cluster, f"kind-{args.cluster}", args.browser_interval
    REGISTRY_PORT = registry_port(f"{CLUSTER}-registry")
    if args.modes:
        modes = args.modes.split(",")
    else:
        modes = ["floor", "devloop-live", "devloop-registry", "devloop-registry-fastroll", "devloop-kindload", "baseline"]
        modes += ["tilt", "tilt-live"] if args.tilt else []
        modes += ["skaffold"] if args.skaffold else []
    peers = {"tilt": args.tilt, "tilt-live": args.tilt, "skaffold": args.skaffold}
    for mode in modes:  # before any cluster work: a missing or broken peer is one line, at once
        if mode in PEERS:
            try:
                check_peer(mode.split("-")[0], peers[mode])
            except PeerUnavailable as e:
                print(f"loop.py: mode {mode}: {e}", file=sys.stderr)
                return 2

    h = dataclasses.replace(make_harness(), context=CONTEXT)
    # devloop from this interpreter's environment when it is not on PATH (`.venv/bin/python benchmarks/loop.py`)
    h.env["PATH"] = os.pathsep.join([h.env["PATH"], str(Path(sys.executable).parent)])
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="devloop-bench-")) / "proj"
    shutil.copytree(REPO / "sample-app", root / "sample-app", ignore=shutil.ignore_patterns("node_modules"))
    shutil.copy(REPO / "kind-config.yaml", root / "kind-config.yaml")
    write_config(root, h, registry=True, live=False)
    t_up = time.time()
    subprocess.run(["devloop", "up"], cwd=root, env=h.env, check=True)

    results: dict[str, Any] = {
        "iterations": args.iterations,
        "cluster": CLUSTER,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t_up)),
        "load_average_start": os.getloadavg(),
        "devloop_up": round(time.time() - t_up, 2),
        "browser_interval": BROWSER_INTERVAL,
        "modes": {},
        "peers": {},
    }
    try:
        for mode in modes:
            print(f"== {mode}  (load average {' '.join(f'{x:.1f}' for x in os.getloadavg())})", flush=True)
            if mode == "baseline":
                rows = run_baseline(h, root, args.iterations)
            elif mode == "floor":
                rows = run_floor(h, root, args.iterations)
            elif mode in PEERS:
                rows, results["peers"][mode] = run_peer_mode(h, root, mode, args.iterations, str(peers[mode]))
            else:
                rows = run_devloop_mode(h, root, mode, args.iterations)
            results["modes"][mode] = rows
        print("== no-op saves and idle watcher (50k files in node_modules)", flush=True)
        results["idle"] = noop_and_idle(h, root)
    finally:
        results["load_average_end"] = os.getloadavg()
        if not args.keep_cluster:
            subprocess.run(["kind", "delete", "cluster", "--name", CLUSTER], env=h.env, check=False, capture_output=True)
            subprocess.run(["docker", "rm", "-f", f"{CLUSTER}-registry"], env=h.env, check=False, capture_output=True)

    print_table(results)
    for mode, extra in results["peers"].items():
        print(
            f"{mode}: {extra['version']}; initial deploy {extra.get('initial_deploy', float('nan')):.2f}s; RSS {extra.get('rss_mb', 0):.0f} MB with children"
        )
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
            if mode.startswith("devloop-") or mode in PEERS:
                over = statistics.median(r["total"] for r in rows) - f50
                results["overhead_above_floor"][mode] = round(over, 3)
                print(f"{mode}: {over:+.2f}s above the floor ({f50:.2f}s, p50 total)")
    print(f"idle: {json.dumps(results['idle'])}; load average {results['load_average_start']} → {results['load_average_end']}")
    if args.scale:  # after the loop's cluster is gone: scale.py makes its own (one cluster at a time on 2 cores)
        from benchmarks.scale import run as run_scale

        print(f"== scale: {args.scale_files} files, a {args.scale_image_mb} MB image", flush=True)
        results["scale"] = run_scale(args.scale_files, args.scale_image_mb)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
