"""Edit → serving, measured on the real kind cluster, side by side in one run.

For each mode, N iterations of: edit MESSAGE in sample-app/server.js → wait until every replica
serves the new text. The poller is in the cluster: a pod (bench-client) polls every Ready pod of the
app directly (pod IP:3000, GET / on a new connection, one request every 50 ms per pod) and logs
(time, pod, message). The host watches the app's pods and feeds the current Ready, not terminating
pods to it, so it follows rollouts; a pod that is not Ready is never polled, in every mode (floor,
devloop, peers). An iteration is done when each of the 3 replicas has answered the new text and
nothing old is served afterwards (confirmed by 1 s of new-only answers).

Modes (same cluster, same sample, 3 replicas):
  devloop-live      devloop dev with liveUpdate (sync + restart the process in place)
  devloop-live@5s   the same, --saves saves (default 20) on a fixed clock: save k at t0 + k*5 s, whether
  devloop-live@2s   or not the previous one is served; any rate works (@3s, @0.5s)
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
  tilt-live@5s, tilt-live@2s   as devloop-live@Ns
  skaffold          `skaffold dev` (--skaffold PATH): a generated skaffold.yaml, the same Dockerfile and
                    build args, pushed to the local registry, kubectl deploy of the manifests, a port-forward
The peer modes run only when their binary is given (benchmarks/peers/build.sh builds both from the Go
module proxy); they start from no app in the cluster and take it away again when they end.

Saves on a clock (mode@Ns): each save is measured against its own save time and its own text, from
the poller's and the browser's logs once the last save is served; an answer with a later save's text
counts for an earlier save too (it can only be there after the earlier write). "first": the first
such answer of any replica; "total" (every replica): the moment each of the 3 replicas has answered
it and no replica answers an older text any more; a save not fully served before the next save is
made is a MISS (marked, counted in the table's "missed", its own figure kept in the p50/p95).

Columns: "first" is the first new answer of any replica in-cluster, "total" is every replica serving
it; "browser" is what a browser on the forwarded local URL sees: GET / with a new connection every
--browser-interval (20 ms) from the moment of the edit, the first answer with the new text; "URL
failed" counts the requests to that URL that were refused or failed during the change (devloop's
portForward.localPort, Tilt's port_forwards, Skaffold's portForward; none for floor and baseline);
"restarts" is the sum of the app pods' restartCount increase while the mode's poller ran (0 is the
target); "poller failed" counts the in-cluster poller's failed requests to Ready pods.

devloop's and the peers' overhead above the floor (p50 every replica, and the forwarded URL against
the floor's first replica) is printed at the end.

--up-from-nothing runs FIRST: Docker's build cache warmed with an untimed `docker build` of the
sample, the cluster and its registry container deleted, then `devloop --json up` timed end to end,
with its phases from the JSON events (cluster creation and the images built/pushed beside it, from
the bring-up's info event; then deploy and rollout); that `up` makes the cluster the modes use.
--services runs benchmarks/services.py's measure (examples/shop: two services in one save vs one)
on the same cluster after the modes (the sample app taken away first) and prints the p50 ratio.

Also: a no-op save and an ignored-file save (must start no cycle), and the idle CPU / RSS of
`devloop dev` with a 50k-file node_modules in the tree.

Usage (after .ci/run's setup, or on a laptop with kind/kubectl/docker):
  python benchmarks/loop.py --iterations 5 [--json benchmarks/results/loop.json]
  python benchmarks/loop.py -n 5 --tilt ~/.cache/devloop-peers/bin/tilt --skaffold ~/.cache/devloop-peers/bin/skaffold
  python benchmarks/loop.py -n 5 --scale    # and the scale figures (benchmarks/scale.py) in the same JSON
  issue 22 in one run (docs/benchmarks.md):
  python benchmarks/loop.py -n 5 --saves 20 --browser-interval 0.2 --up-from-nothing --services --tilt ~/.cache/devloop-peers/bin/tilt \
      --modes floor,devloop-registry,tilt,devloop-live@5s,tilt-live@5s,devloop-live@2s,tilt-live@2s
Prints a table with p50/p95 per phase and the baseline/devloop ratios. devloop runs as
`python -m devloop` with this interpreter and the tree this file is in on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import contextlib
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
DEVLOOP = [sys.executable, "-m", "devloop"]  # the devloop of the tree this file is in (PYTHONPATH set in main())
BROWSER_INTERVAL = 0.02  # --browser-interval; 0: no forwarded-URL measure
CLIENT = """
// Polls every pod it is told about (a JSON object {name: ip} per stdin line, the app's Ready pods)
// directly on ip:3000, GET / on a new connection, one request every 50 ms per pod.
const http = require('http');
const readline = require('readline');
let pods = {};
const running = new Set();
function poll(name) {
  const ip = pods[name];
  if (ip === undefined) { running.delete(name); return; }
  const sent = Date.now();
  let over = false;
  const next = () => { if (!over) { over = true; setTimeout(() => poll(name), Math.max(0, 50 - (Date.now() - sent))); } };
  const req = http.get({host: ip, port: 3000, path: '/', agent: false, timeout: 500}, res => {
    let b = ''; res.on('data', c => b += c);
    res.on('end', () => {
      console.log(JSON.stringify(res.statusCode === 200 ? {t: Date.now() / 1000, pod: name, msg: b.trim()} : {t: Date.now() / 1000, pod: name, err: 'HTTP ' + res.statusCode}));
      next();
    });
  });
  req.on('error', e => { console.log(JSON.stringify({t: Date.now() / 1000, pod: name, err: String(e.code || e)})); next(); });
  req.on('timeout', () => req.destroy());
}
readline.createInterface({input: process.stdin}).on('line', line => {
  pods = JSON.parse(line);
  for (const name of Object.keys(pods)) if (!running.has(name)) { running.add(name); poll(name); }
});
process.stdin.on('end', () => process.exit(0));
"""
KEEPALIVE = "setInterval(() => {}, 3600000)"
APP_SELECTOR = "app=web-app"
LOG_DIR: Path | None = None  # where each mode's poller log is written (the run's temp dir, set in main())
MODE_INFO: dict[str, dict[str, Any]] = {}  # per mode: restarts, the poller's failed requests, …


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def pod_restarts(pod: dict[str, Any]) -> int:
    return sum(int(c.get("restartCount", 0)) for c in pod.get("status", {}).get("containerStatuses") or [])


def ready_ip(pod: dict[str, Any]) -> str | None:
    """The pod's IP when it is Ready and not terminating (what a Service would route to), else None."""
    if pod["metadata"].get("deletionTimestamp"):
        return None
    status = pod.get("status", {})
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    return status.get("podIP") if ready else None


class Client:
    """The in-cluster poller: a pod (`bench-client`, the app's image) running a Node script that polls
    every Ready app pod directly (pod IP:3000, GET / on a new connection, every 50 ms per pod) and prints
    (time, pod, message) for every answer, (time, pod, err) for a failed request. The host watches the
    app's pods (`kubectl get pods --watch`) and feeds the current Ready pods ({name: IP}) to the script's
    stdin (`kubectl exec -i`) as they change, so the poller follows rollouts; a pod that is not Ready
    (or is terminating) is not polled, the same judgement in every mode. The same watch counts the
    app pods' container restarts (restartCount increase) from the poller's start."""

    def __init__(self, h: Harness, image: str, mode: str) -> None:
        self.h = h
        self.mode = mode
        self.started = time.time()
        self.answers: queue.Queue[dict[str, Any]] = queue.Queue()
        self.log: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
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
            KEEPALIVE,
        )
        h.kubectl_run("wait", "--for=condition=Ready", "pod/bench-client", "--timeout=120s")
        pods = h.kubectl_json("get", "pods", "-l", APP_SELECTOR)["items"]
        self.baseline = {p["metadata"]["name"]: pod_restarts(p) for p in pods}  # restartCount at the start
        self.seen_restarts = dict(self.baseline)
        self.proc = subprocess.Popen(
            [h.kubectl, "--context", CONTEXT, "exec", "-i", "bench-client", "--", "node", "-e", CLIENT],
            env=h.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._ready: dict[str, str] = {}
        self._feed({p["metadata"]["name"]: ip for p in pods if (ip := ready_ip(p))})
        threading.Thread(target=self._read, daemon=True, name="poller-out").start()
        self._watch_proc: subprocess.Popen[bytes] | None = None
        threading.Thread(target=self._watch, daemon=True, name="poller-watch").start()
        deadline = time.time() + 120  # the exec may take seconds to start: no edit before the poller answers
        while not self.answers.qsize() and time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the in-cluster poller exited with {self.proc.returncode}")
            time.sleep(0.05)
        if not self.answers.qsize():
            raise TimeoutError("the in-cluster poller got no answer from the app's Ready pods within 120s")

    def _feed(self, ready: dict[str, str]) -> None:
        if ready == self._ready:
            return
        self._ready = ready
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(ready) + "\n")
            self.proc.stdin.flush()
        except (OSError, ValueError):
            pass  # the poller has gone (stop())

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                a = json.loads(line)
            except ValueError:
                continue
            with self._lock:
                self.log.append(a)
            if "msg" in a:
                self.answers.put(a)

    def _watch(self) -> None:
        """Follows the app's pods; restarted if kubectl's watch ends (the server closes watches now and then)."""
        decoder = json.JSONDecoder()
        while not self._stop.is_set():
            self._watch_proc = subprocess.Popen(
                [self.h.kubectl, "--context", CONTEXT, "get", "pods", "-l", APP_SELECTOR, "--watch", "--output-watch-events", "-o", "json"],
                env=self.h.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            assert self._watch_proc.stdout is not None
            pods: dict[str, dict[str, Any]] = {}
            buf = ""
            fd = self._watch_proc.stdout.fileno()
            while chunk := os.read(fd, 65536):
                buf += chunk.decode(errors="replace")
                while True:
                    buf = buf.lstrip()
                    try:
                        ev, used = decoder.raw_decode(buf)
                    except ValueError:
                        break
                    buf = buf[used:]
                    pod = ev.get("object", {})
                    name = pod.get("metadata", {}).get("name")
                    if not name:
                        continue
                    self.seen_restarts[name] = max(self.seen_restarts.get(name, 0), pod_restarts(pod))
                    if ev.get("type") == "DELETED":
                        pods.pop(name, None)
                    else:
                        pods[name] = pod
                    self._feed({n: ip for n, p in pods.items() if (ip := ready_ip(p))})
            self._watch_proc.wait()
            self._stop.wait(0.2)

    def restarts(self) -> int:
        """The app pods' container restarts since the poller started (restartCount increase, summed)."""
        return sum(max(0, n - self.baseline.get(name, 0)) for name, n in dict(self.seen_restarts).items())

    def failed(self, since: float = 0.0, until: float = float("inf")) -> tuple[int, int]:
        """(failed requests, all requests) of the poller to Ready pods in [since, until)."""
        with self._lock:
            window = [a for a in self.log if since <= a["t"] < until]
        return sum("err" in a for a in window), len(window)

    def entries(self, since: float) -> list[dict[str, Any]]:
        with self._lock:
            return [a for a in self.log if a["t"] >= since and "msg" in a]

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
        """Stops the poller; records the mode's restarts and the poller's failed requests in MODE_INFO."""
        failed, requests = self.failed(self.started)
        MODE_INFO.setdefault(self.mode, {}).update(restarts=self.restarts(), poller_failed=failed, poller_requests=requests)
        if LOG_DIR is not None:  # every answer, for a closer look (one JSON line each)
            path = LOG_DIR / f"poller-{self.mode}.jsonl"
            with self._lock:
                path.write_text("".join(json.dumps(a) + "\n" for a in self.log))
            MODE_INFO[self.mode]["poller_log"] = str(path)
        self._stop.set()
        if self._watch_proc is not None:
            self._watch_proc.kill()
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
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
            [*DEVLOOP, "--json", "dev"],
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


def iter_events(d: DevProcess) -> list[dict[str, Any]]:
    """The events devloop has emitted and nobody read yet."""
    out = []
    while not d.events.empty():
        out.append(d.events.get_nowait())
    return out


def edit(root: Path, message: str) -> None:
    server = root / "sample-app" / "server.js"
    lines = server.read_text().splitlines(keepends=True)
    lines = [f"const MESSAGE = '{message}';\n" if line.startswith("const MESSAGE =") else line for line in lines]
    server.write_text("".join(lines))


def run_devloop_mode(h: Harness, root: Path, mode: str, n: int, saves: int) -> list[dict[str, Any]]:
    base, interval = parse_mode(mode)
    local_port = write_config(
        root,
        h,
        registry=mode != "devloop-kindload",
        live=base == "devloop-live",
        fast_rollout=mode.endswith("-fastroll"),
        monitoring=mode.endswith("-monitoring"),
    )
    d = DevProcess(root, h)
    while True:  # wait for the initial cycle
        e = d.next({"cycle_done", "skipped"})
        if e["event"] == "cycle_done":
            assert e["ok"], e
            break
    client = Client(h, e["image"], mode)
    browser = Browser(local_port) if BROWSER_INTERVAL > 0 else None
    if browser is not None and not browser.wait_answer(60):
        print(f"  {mode}: nothing answers on the forwarded URL http://127.0.0.1:{local_port} (browser column empty)", flush=True)
    rows: list[dict[str, Any]] = []
    try:
        if interval is not None:
            client.drain()
            rows = run_saves_on_clock(client, browser, root, mode, saves, interval)
            cycles = [e for e in iter_events(d) if e["event"] == "cycle_done"]
            MODE_INFO.setdefault(mode, {}).update(cycles=len(cycles), failed_cycles=sum(not e["ok"] for e in cycles))
        for i in range(n if interval is None else 0):
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


def parse_mode(mode: str) -> tuple[str, float | None]:
    """ "devloop-live@2s" → ("devloop-live", 2.0); "tilt" → ("tilt", None)."""
    base, _, rate = mode.partition("@")
    return base, (float(rate.removesuffix("s")) if rate else None)


def run_saves_on_clock(client: Client, browser: Browser | None, root: Path, mode: str, saves: int, interval: float) -> list[dict[str, Any]]:
    """`saves` edits on a fixed clock (save k at t0 + k*interval, whether or not save k-1 is served
    yet), then each save's figures against its own save time and its own text, from the poller's and
    the browser's logs. Save k counts as served by an answer with its text or any later save's text
    (a later text can only be there if save k's was written first); "an older text" is any earlier
    save's (or the text before the first save). For save k:
      first   the first answer of any Ready replica with save k's text or a later one
      total   every replica: the moment each of the 3 replicas has answered save k's text or a later
              one and no replica answers an older text any more
      browser the first answer on the forwarded URL with save k's text or a later one (a request sent
              after the save); failed/requests: the URL's requests sent from save k to save k+1 (the
              last save: to the end of the measure)
      missed  True when save k was not served by every replica before save k+1 was made (its `total`
              then runs past the next save: a miss, counted in p50/p95 as it is)"""
    messages = [f"{mode} {k} {uuid.uuid4().hex[:6]}" for k in range(saves)]
    index = {m: k for k, m in enumerate(messages)}
    t0 = time.time() + 0.5
    times: list[float] = []
    for k, msg in enumerate(messages):
        time.sleep(max(0.0, t0 + k * interval - time.time()))  # the clock; not a synchronisation
        times.append(time.time())
        edit(root, msg)
    client.wait_all_new(messages[-1], 3)
    end = time.time()
    if browser is not None:
        browser.first_seen(messages[-1], times[-1], timeout=30)
        end = time.time()
    answers = sorted(client.entries(times[0]), key=lambda a: float(a["t"]))
    urls = sorted(browser.entries(times[0])) if browser is not None else []
    rows: list[dict[str, Any]] = []
    for k, tk in enumerate(times):
        after = [a for a in answers if a["t"] >= tk]
        new = [a for a in after if index.get(a["msg"], -1) >= k]
        row: dict[str, Any] = {"first": new[0]["t"] - tk if new else None, "total": None}
        per_pod: dict[str, float] = {}
        for a in new:
            per_pod.setdefault(a["pod"], a["t"])
        last_old = max((a["t"] for a in after if index.get(a["msg"], -1) < k), default=0.0)
        if len(per_pod) >= 3:
            row["total"] = max(sorted(per_pod.values())[2], last_old) - tk
        row["missed"] = row["total"] is None or (k + 1 < len(times) and tk + row["total"] > times[k + 1])
        until = times[k + 1] if k + 1 < len(times) else end
        row["poller_failed"], row["poller_requests"] = client.failed(tk, until)
        row["pods_answering"] = len({a["pod"] for a in after if a["t"] < until})
        if browser is not None:
            seen = [done for sent, done, ok, text in urls if sent >= tk and ok and index.get(text, -1) >= k]
            window = [e for e in urls if tk <= e[0] < until]
            row["browser"] = seen[0] - tk if seen else None
            row["browser_failed"] = sum(not ok for _, _, ok, _ in window)
            row["browser_requests"] = len(window)
            took = [done - sent for sent, done, ok, _ in window if ok]
            row["browser_request_s"] = statistics.median(took) if took else None
        rows.append(row)
        print_iteration(mode, k, row)
    return rows


def print_iteration(mode: str, i: int, row: dict[str, Any]) -> None:
    def s(v: float | None) -> str:
        return "never" if v is None else f"{v:.2f}s"

    line = f"  {mode} #{i}: total {s(row['total'])} (first new answer {s(row['first'])}"
    if row.get("missed"):
        line += "; MISSED: not every replica served it before the next save"
    if row.get("poller_failed"):
        line += f"; the poller: {row['poller_failed']}/{row['poller_requests']} requests to Ready pods failed"
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
    client = Client(h, "my-web-app:dev", "baseline")
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
    client = Client(h, current, "floor")
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
            subprocess.run([*DEVLOOP, "up"], cwd=root, env=h.env, check=True, capture_output=True)
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
        subprocess.run([*DEVLOOP, "up"], cwd=root, env=h.env, check=True, capture_output=True)


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


def run_peer_mode(h: Harness, root: Path, mode: str, n: int, binary: str, saves: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """`tilt up` or `skaffold dev` on the same cluster, sample, registry and edits as devloop's modes,
    timed by the same in-cluster poller; returns the rows and the mode's extras (initial deploy, RSS)."""
    base, interval = parse_mode(mode)
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
    if base.startswith("tilt"):
        (root / "Tiltfile").write_text(tiltfile(root, h, forward_port, live=base == "tilt-live"))
        argv = [binary, "up", "--stream=true", f"--port={free_port()}", "--file=Tiltfile"]
        down: list[str] | None = [binary, "down", "--file=Tiltfile", "--delete-namespaces=false"]
    else:
        (root / "skaffold.yaml").write_text(skaffold_yaml(root, h, forward_port))
        argv = [binary, "dev", f"--default-repo={host}", "--port-forward=user", "--update-check=false", "--interactive=false"]
        argv += [f"--kube-context={CONTEXT}", "--cleanup=true"]
        down = None  # skaffold dev deletes what it deployed when interrupted
    extras: dict[str, Any] = {"version": check_peer(base.split("-")[0], binary), "log": str(log_path)}
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
        poller_image = f"{host}/devloop-bench-poller:{base}"
        subprocess.run(["docker", "tag", image.split("@")[0], poller_image], env=h.env, check=True, capture_output=True)
        subprocess.run(["docker", "push", "-q", poller_image], env=h.env, check=True, capture_output=True)
        client = Client(h, poller_image, mode)
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
        if interval is not None:
            client.drain()
            rows = run_saves_on_clock(client, browser, root, mode, saves, interval)
        for i in range(n if interval is None else 0):
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
    cols = ["detect", "build", "load", "rollout", "first", "total", "browser"]
    width = max([18, *(len(m) + 2 for m in results["modes"])])

    def cell(rows: list[dict[str, Any]], c: str) -> str:
        values = [r[c] for r in rows if r.get(c) is not None]
        if not values:
            return f"{'–':>9} {'':<8}"
        return f"{pct(values, 0.5):>9.2f}/{pct(values, 0.95):<8.2f}"

    head = f"\n{'mode':<{width}}" + "".join(f"{c + ' p50/p95':>18}" for c in cols)
    print(head + f"{'URL failed/req':>16}{'ms/req':>8}{'restarts':>10}{'missed':>8}{'poller failed':>15}")
    for mode, rows in results["modes"].items():
        failed, took = "–", "–"
        if rows and "browser_failed" in rows[0]:
            failed = f"{sum(r['browser_failed'] for r in rows)}/{sum(r['browser_requests'] for r in rows)}"
            times = [r["browser_request_s"] for r in rows if r.get("browser_request_s") is not None]
            took = f"{1000 * statistics.median(times):.0f}" if times else "–"
        info = results["mode_info"].get(mode, {})
        missed = f"{sum(bool(r.get('missed')) for r in rows)}/{len(rows)}" if rows and "missed" in rows[0] else "–"
        poller = f"{info['poller_failed']}/{info['poller_requests']}" if "poller_failed" in info else "–"
        line = f"{mode:<{width}}" + "".join(cell(rows, c) for c in cols)
        print(line + f"{failed:>16}{took:>8}{info.get('restarts', '–')!s:>10}{missed:>8}{poller:>15}")
    print(
        "first = first new answer of any Ready replica, total = every replica serves it and nothing older is served (in-cluster "
        "poller: every Ready pod IP, GET / on a new connection every 50 ms); browser = first new answer on the forwarded local URL "
        f"(a new connection per request, every {BROWSER_INTERVAL:g} s); URL failed = refused/failed requests there during the changes; "
        "restarts = app pods' restartCount increase during the mode; missed (modes @Ns) = saves not served by every replica "
        "before the next save; poller failed = failed requests of the poller to Ready pods"
    )


UP_PHASES = ("cluster", "images beside it", "build", "publish", "deploy", "rollout")


def up_from_nothing(h: Harness, root: Path) -> dict[str, Any]:
    """`devloop --json up` from no cluster and no registry, Docker's build cache warm and the images
    present: the image is built once beforehand (untimed), the cluster and its registry container
    deleted, then `up` timed end to end; the phases from its JSON events (the bring-up's info event
    says how long the cluster's creation and the images beside it took; the cycle's phase events)."""
    build_arg = f"NODE_IMAGE={h.node_base}"  # the cache warm (untimed): the sample's layers, as `up` builds them
    subprocess.run(["docker", "build", "-q", "--build-arg", build_arg, "sample-app"], cwd=root, env=h.env, check=True, capture_output=True)
    subprocess.run(["kind", "delete", "cluster", "--name", CLUSTER], env=h.env, check=True, capture_output=True)
    subprocess.run(["docker", "rm", "-f", f"{CLUSTER}-registry"], env=h.env, check=False, capture_output=True)
    t0 = time.time()
    out = subprocess.run([*DEVLOOP, "--json", "up"], cwd=root, env=h.env, capture_output=True, text=True, check=False)
    total = time.time() - t0
    events = []
    for line in out.stdout.splitlines():
        with contextlib.suppress(ValueError):
            events.append(json.loads(line))
    if out.returncode != 0:
        raise RuntimeError(f"devloop up exited {out.returncode}: {out.stderr.strip()[-500:]} {out.stdout.strip()[-500:]}")
    result: dict[str, Any] = {"total": round(total, 2), "phases": {}}
    for e in events:
        if "cluster_seconds" in e:
            result["phases"]["cluster"] = e["cluster_seconds"]
            result["phases"]["images beside it"] = e.get("images_seconds")
            result["bring_up_message"] = e.get("message")
        elif e.get("event") == "phase":
            result["phases"][e["phase"]] = round(result["phases"].get(e["phase"], 0.0) + e["seconds"], 3)
    if events:  # from the command's start to its first event: Python, config, checks
        result["start_to_first_event"] = round(events[0]["ts"] - t0, 2)
        result["last_event_to_exit"] = round(t0 + total - events[-1]["ts"], 2)
    return result


def print_up(up: dict[str, Any]) -> None:
    ph = up["phases"]
    parts = [f"{k} {ph[k]:.2f}" for k in (*UP_PHASES, *sorted(set(ph) - set(UP_PHASES))) if ph.get(k) is not None]
    print(f"up from nothing: {up['total']:.2f}s wall ({'; '.join(parts)}; start → first event {up.get('start_to_first_event', 0):.2f})")


def main() -> int:
    global CLUSTER, CONTEXT, REGISTRY_PORT, BROWSER_INTERVAL, LOG_DIR
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", "-n", type=int, default=5)
    ap.add_argument(
        "--modes",
        help="comma-separated (default: floor,devloop-live,devloop-registry,devloop-registry-fastroll,devloop-kindload,baseline, "
        "then tilt,tilt-live and skaffold when --tilt / --skaffold are given); devloop-live@5s, tilt-live@2s, …: --saves saves "
        "on a fixed clock, one every 5 s (2 s)",
    )
    ap.add_argument("--saves", type=int, default=20, help="saves of a mode@Ns (default 20)")
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
    ap.add_argument("--skip-idle", action="store_true", help="no no-op saves and idle measure (quick runs)")
    ap.add_argument(
        "--up-from-nothing",
        action="store_true",
        help="first of all: delete the cluster and its registry, then time `devloop --json up` (Docker's cache warm), per phase",
    )
    ap.add_argument(
        "--services",
        action="store_true",
        help="also benchmarks/services.py (examples/shop: two services in one save vs one, -n iterations) on the same cluster, last",
    )
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
    for mode in modes:  # before any cluster work: a missing or broken peer, a bad mode: one line, at once
        try:
            base, interval = parse_mode(mode)
        except ValueError:
            print(f"loop.py: mode {mode}: the rate after @ is seconds (devloop-live@5s)", file=sys.stderr)
            return 2
        if interval is not None and base not in ("devloop-live", "tilt-live"):
            print(f"loop.py: mode {mode}: saves on a clock (@Ns) are for devloop-live and tilt-live", file=sys.stderr)
            return 2
        if base in PEERS:
            try:
                check_peer(base.split("-")[0], peers[base])
            except PeerUnavailable as e:
                print(f"loop.py: mode {mode}: {e}", file=sys.stderr)
                return 2

    h = dataclasses.replace(make_harness(), context=CONTEXT)
    # devloop from this tree (DEVLOOP runs `python -m devloop` with this interpreter)
    h.env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [h.env.get("PYTHONPATH")])])
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="devloop-bench-")) / "proj"
    shutil.copytree(REPO / "sample-app", root / "sample-app", ignore=shutil.ignore_patterns("node_modules"))
    shutil.copy(REPO / "kind-config.yaml", root / "kind-config.yaml")
    LOG_DIR = root.parent
    print(f"logs (the peers', each mode's poller): {LOG_DIR}", flush=True)
    write_config(root, h, registry=True, live=False)
    up = None
    t_up = time.time()
    if args.up_from_nothing:
        print("== up from nothing (the cluster and its registry deleted; Docker's cache warm)", flush=True)
        up = up_from_nothing(h, root)
        print_up(up)
    else:
        subprocess.run([*DEVLOOP, "up"], cwd=root, env=h.env, check=True)

    results: dict[str, Any] = {
        "iterations": args.iterations,
        "saves": args.saves,
        "cluster": CLUSTER,
        "devloop": subprocess.run([*DEVLOOP, "--version"], env=h.env, capture_output=True, text=True, check=False).stdout.strip(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t_up)),
        "load_average_start": os.getloadavg(),
        "devloop_up": round(time.time() - t_up, 2),
        "up_from_nothing": up,
        "browser_interval": BROWSER_INTERVAL,
        "modes": {},
        "mode_info": MODE_INFO,
        "peers": {},
    }
    try:
        for mode in modes:
            print(f"== {mode}  (load average {' '.join(f'{x:.1f}' for x in os.getloadavg())})", flush=True)
            base, _ = parse_mode(mode)
            if mode == "baseline":
                rows = run_baseline(h, root, args.iterations)
            elif mode == "floor":
                rows = run_floor(h, root, args.iterations)
            elif base in PEERS:
                rows, results["peers"][mode] = run_peer_mode(h, root, mode, args.iterations, str(peers[base]), args.saves)
            else:
                rows = run_devloop_mode(h, root, mode, args.iterations, args.saves)
            results["modes"][mode] = rows
            MODE_INFO.setdefault(mode, {})["load_average_end"] = os.getloadavg()
        if not args.skip_idle:
            print("== no-op saves and idle watcher (50k files in node_modules)", flush=True)
            results["idle"] = noop_and_idle(h, root)
        if args.services:
            from benchmarks.services import run_on_cluster

            print(f"== services: examples/shop, one service vs two in one save, {args.iterations} each", flush=True)
            remove_app(h)  # the shop's rollouts alone on the node
            results["services"] = run_on_cluster(h, CLUSTER, REGISTRY_PORT, args.iterations)
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
    base_rows = results["modes"].get("baseline")
    if base_rows:
        b50 = statistics.median(r["total"] for r in base_rows)
        for mode, rows in results["modes"].items():
            if mode != "baseline":
                print(f"baseline/{mode}: {b50 / pct([r['total'] for r in rows if r['total'] is not None], 0.5):.1f}x (p50 total)")
    floor = results["modes"].get("floor")
    if floor:
        f50 = statistics.median(r["total"] for r in floor)
        f50_first = statistics.median(r["first"] for r in floor)
        results["overhead_above_floor"] = {}
        for mode, rows in results["modes"].items():
            if mode.startswith("devloop-") or parse_mode(mode)[0] in PEERS:
                over = pct([r["total"] for r in rows if r["total"] is not None], 0.5) - f50
                results["overhead_above_floor"][mode] = round(over, 3)
                urls = [r["browser"] for r in rows if r.get("browser") is not None]
                url = f"; forwarded URL p50 {pct(urls, 0.5):.2f}s vs the floor's first replica {f50_first:.2f}s" if urls else ""
                print(f"{mode}: {over:+.2f}s above the floor ({f50:.2f}s, p50 every replica){url}")
    if up:
        print_up(up)
    if "services" in results:
        sv = results["services"]
        print(f"services: one service p50 {sv['one_p50']:.2f}s, two in one save p50 {sv['two_p50']:.2f}s: {sv['ratio_p50']:.2f}x")
    print(f"idle: {json.dumps(results.get('idle'))}; load average {results['load_average_start']} → {results['load_average_end']}")
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
