"""Scale: a 10,000-file build context and a 1 GB image, measured with the product's own code.

Part 1, the big context (no cluster needed): a copy of sample-app plus N small files in nested
directories (a tenth of them .md files and a tenth under test/, both .dockerignore'd). devloop's
own watcher (devloop.watch.Watcher) runs over it, feeding the content hasher as `devloop dev` does;
for each one-file edit the time from the watcher's event to the plan and the content tag is taken
exactly as the dev loop computes them (devloop.plan.plan, then Engine.image_ref twice: once to
decide whether the cluster already runs it, once for the cycle). Every tag is checked against a
from-scratch hash of the tree (the algorithm devloop used before the incremental hasher). Also:
the initial full hash, the docker SDK's context tar (what the classic builder sends before each
build), and a `devloop dev`-like watcher process over the tree (the config, the engine's layouts,
the watcher feeding the hasher, the first digest): its RSS, its CPU while idle over 30 s and its
inotify watches.

Part 2, the big image (a kind cluster `devloop-scale` with its own registry container, created and
deleted here; no other cluster or registry is touched): the sample app on top of ~1 GB of
random-data layers (three RUN layers built locally on the test node base; random so nothing
compresses away). `devloop up --json` pushes it to devloop's local registry the first time; then a
one-line edit of server.js (one new layer) is pushed and rolled out by a second `devloop up --json`.
For each: the phases devloop reports, the bytes pushed (the registry's storage growth), the bytes
the node received (its eth0 counter) and the node's pull time (kubelet's "Successfully pulled"
event). For comparison the same one-layer change through `kind load` (registry off: the whole image
is saved and imported). Built with the classic builder (DEVLOOP_BUILDER=classic) so that every layer
lives in the images, which carry a per-run label and are all removed at the end.

Part 3, the real `devloop dev --json` over the big context (its own `devloop-scale` cluster): its
RSS, idle CPU and inotify watches; same-content saves of server.js (watcher → debounce → plan →
content tag → "image content unchanged", no cycle); then a chmod (no cycle) and a one-file edit,
whose cycle's tag must equal a from-scratch hash (the watcher's feed of the hasher, end to end).

Usage:
  python benchmarks/scale.py [--files 10000] [--edits 20] [--image-mb 1024]
                             [--skip-context] [--skip-image] [--skip-kindload] [--skip-dev] [--json PATH]
Writes benchmarks/results/scale.json. From Python (benchmarks/loop.py):
  from benchmarks.scale import run
  run(files=10_000, image_mb=1024, *, edits=20, idle_seconds=30.0, context=True, image=True, kindload=True,
      dev=True) -> dict
returns the same dict and prints the same tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CLUSTER = "devloop-scale"
CONTEXT = f"kind-{CLUSTER}"
RESULTS = REPO / "benchmarks" / "results" / "scale.json"


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# -- part 1: the big context -------------------------------------------------------------------------


def make_tree(root: Path, files: int) -> dict[str, int]:
    """A copy of sample-app plus `files` small files: src/aNN/bN/cN/*.js reach the image; one in ten
    is a .md file beside them and one in ten lives under test/ (both .dockerignore'd)."""
    app = root / "sample-app"
    shutil.copytree(REPO / "sample-app", app, ignore=shutil.ignore_patterns("node_modules"))
    shutil.copy(REPO / "kind-config.yaml", root / "kind-config.yaml")
    ignored_test = files // 10
    per_leaf = 25
    made = {"reaching": 0, "ignored": 0, "dirs": 0}
    leaf = 0
    left = files - ignored_test
    while left > 0:
        d = app / "src" / f"a{leaf // 20:02d}" / f"b{leaf // 4 % 5}" / f"c{leaf % 4}"
        d.mkdir(parents=True)
        made["dirs"] += 1
        for i in range(min(per_leaf, left)):
            if i % 10 == 9:
                (d / f"notes{i}.md").write_text(f"# notes {leaf}/{i}\n")
                made["ignored"] += 1
            else:
                (d / f"m{i}.js").write_text(f"module.exports = {{ id: {leaf * per_leaf + i} }};\n")
                made["reaching"] += 1
            left -= 1
        leaf += 1
    for i in range(ignored_test):
        d = app / "test" / "fixtures" / f"t{i // 100:03d}"
        if not d.is_dir():
            d.mkdir(parents=True)
            made["dirs"] += 1
        (d / f"case{i}.js").write_text(f"// fixture {i}\n")
        made["ignored"] += 1
    made["files"] = made["reaching"] + made["ignored"]
    return made


def reference_digest(context: Path, dockerfile: str, build_args: Mapping[str, str]) -> str:
    """The content hash as devloop computed it before the incremental hasher: a full walk with the
    docker SDK's own .dockerignore matcher and every file read. Used only to check the tags."""
    from docker.utils.build import exclude_paths

    from devloop.hasher import read_dockerignore

    h = hashlib.sha256()
    h.update(f"dockerfile={dockerfile}\n".encode())
    for k in sorted(build_args):
        h.update(f"arg {k}={build_args[k]}\n".encode())
    for rel in sorted(exclude_paths(str(context), read_dockerignore(context), dockerfile=dockerfile)):
        full = context / rel
        try:
            st = full.lstat()
        except FileNotFoundError:
            continue
        if full.is_symlink():
            h.update(f"L {rel} {os.readlink(full)}\n".encode())
        elif full.is_dir():
            h.update(f"D {rel}\n".encode())
        else:
            h.update(f"F {rel} {st.st_mode & 0o111:o} {hashlib.sha256(full.read_bytes()).hexdigest()}\n".encode())
    return h.hexdigest()


def write_config(root: Path, *, kind_image: str = "", node_base: str = "", registry_image: str = "", registry: bool = True) -> None:
    (root / "devloop.yaml").write_text(
        "apiVersion: devloop/v1\n"
        f"cluster:\n  name: {CLUSTER}\n" + (f"  nodeImage: {kind_image}\n" if kind_image else "") + "image:\n  buildArgs:\n"
        f"    NODE_IMAGE: {node_base or 'devloop-test/node-base:bookworm'}\n"
        f"registry:\n  enabled: {str(registry).lower()}\n"
        + (f"  image: {registry_image}\n" if registry_image else "")
        + "monitoring:\n  enabled: false\ndashboard:\n  enabled: false\n"
        "portForward:\n  enabled: false\n"
        "deploy:\n  rolloutTimeout: 600\n"
    )


def _engine(root: Path) -> Any:
    from devloop import config as config_mod
    from devloop import wiring
    from devloop.output import Output

    cfg = config_mod.load(None, root)
    return wiring.engine(cfg, Output(json_mode=True, stdout=open(os.devnull, "w")), fetch_tools=False)


def edit_path(root: Path, edits: int) -> dict[str, Any]:
    """Edits of single files under the running watcher: event → plan → content tag, timed."""
    from devloop.plan import Change, plan
    from devloop.watch import Watcher

    engine = _engine(root)
    svc = engine.services[0]
    layouts = engine.layouts()  # the dev session caches these between saves
    hasher = engine.hasher
    follow = getattr(hasher, "follow", None)  # the incremental hasher: fed by the watcher, as in `devloop dev`
    changed = getattr(hasher, "changed", None)
    events: queue.Queue[tuple[float, Change]] = queue.Queue()

    def on_change(change: Change) -> None:
        events.put((time.perf_counter(), change))

    t = time.perf_counter()
    initial_tag = engine.image_ref(svc).tag
    initial = time.perf_counter() - t
    watcher = Watcher([(Path(lay.context), lay.rules) for lay in layouts], [], on_change, on_touch=changed)
    watcher.start()
    if follow is not None:
        follow([Path(lay.context) for lay in layouts])
    t = time.perf_counter()
    engine.image_ref(svc)
    first_fed = time.perf_counter() - t  # the first digest after the watcher started checks every file once
    rows: list[dict[str, float]] = []
    mismatches = 0
    rng = random.Random(12)
    context = Path(svc.image.context)
    candidates = sorted((context / "src").rglob("*.js"))
    targets = [context / "server.js", *rng.sample(candidates, k=min(len(candidates), edits - 1))]
    try:
        for i, path in enumerate(targets):
            while not events.empty():
                events.get_nowait()
            text = path.read_text()
            t_write = time.perf_counter()
            path.write_text(text + f"// edit {i} {time.time()}\n")
            t_event, first = events.get(timeout=10)
            time.sleep(0.05)  # the debounce's quiet period (not timed): the save's other events arrive
            batch = [first]
            while not events.empty():
                batch.append(events.get_nowait()[1])
            t0 = time.perf_counter()
            todo = plan(batch, layouts, engine.config_files())
            t1 = time.perf_counter()
            tag = engine.image_ref(svc).tag  # Engine._unchanged: does the cluster run this content?
            t2 = time.perf_counter()
            tag2 = engine.image_ref(svc).tag  # Engine._service_cycle: the cycle's ref
            t3 = time.perf_counter()
            assert todo.services and todo.services[0].rebuild, todo
            assert tag == tag2
            from devloop.hasher import content_tag

            img = svc.image
            args = dict(img.build_args)
            if img.target:
                args["\0target"] = img.target
            if content_tag(reference_digest(context, img.dockerfile, args)) != tag:
                mismatches += 1
            rows.append(
                {
                    "event": (t_event - t_write) * 1000,
                    "plan": (t1 - t0) * 1000,
                    "hash": (t2 - t1) * 1000,
                    "hash_again": (t3 - t2) * 1000,
                    "plan_and_hash": (t2 - t0) * 1000,
                    "event_to_tag": (t3 - t0) * 1000,
                }
            )
    finally:
        watcher.stop()
    summary = {k: {"p50": round(pct([r[k] for r in rows], 0.5), 2), "max": round(max(r[k] for r in rows), 2)} for k in rows[0]}
    return {
        "edits": len(rows),
        "initial_full_hash_ms": round(initial * 1000, 1),
        "first_hash_after_watch_ms": round(first_fed * 1000, 1),
        "initial_tag": initial_tag,
        "tag_mismatches": mismatches,
        "watches": watcher.watch_count,
        "ms": summary,
        "rows_ms": [{k: round(v, 2) for k, v in r.items()} for r in rows],
        "incremental": follow is not None,
        "loadavg": loadavg(),
    }


def _watcher_main(root: Path) -> None:
    """A `devloop dev`-like process over the tree: config, the engine's layouts, the watcher feeding
    the hasher, the first digest; then idle until killed."""
    from devloop.watch import Watcher

    engine = _engine(root)
    layouts = engine.layouts()
    changed = getattr(engine.hasher, "changed", None)
    watcher = Watcher(
        [(Path(lay.context), lay.rules) for lay in layouts], [Path(p) for p in engine.config_files()], lambda c: None, on_touch=changed
    )
    watcher.start()
    follow = getattr(engine.hasher, "follow", None)
    if follow is not None:
        follow([Path(lay.context) for lay in layouts])
    engine.image_ref(engine.services[0])
    print(json.dumps({"ready": True, "watches": watcher.watch_count}), flush=True)
    while True:
        time.sleep(3600)


def _proc_cpu(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def _proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return float("nan")


def inotify_watches(pid: int) -> int:
    """inotify watches held by a process (the `inotify wd:` lines of its inotify descriptors)."""
    n = 0
    for fd in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            n += sum(1 for line in fd.read_text().splitlines() if line.startswith("inotify wd:"))
        except OSError:
            continue
    return n


def idle_watcher(root: Path, seconds: float = 30) -> dict[str, Any]:
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--_watcher", str(root)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        c0, t0 = _proc_cpu(proc.pid), time.time()
        time.sleep(seconds)  # measuring idle: the wait is the measurement window
        c1, t1 = _proc_cpu(proc.pid), time.time()
        return {
            "rss_mb": round(_proc_rss_mb(proc.pid), 1),
            "idle_cpu_percent": round(100 * (c1 - c0) / (t1 - t0), 2),
            "idle_seconds": seconds,
            "watches": ready["watches"],
            "inotify_watches": inotify_watches(proc.pid),
            "loadavg": loadavg(),
        }
    finally:
        proc.kill()
        proc.wait()


def sdk_context_tar(context: Path) -> dict[str, Any]:
    """What the classic builder (the docker SDK's build endpoint, used where there is no BuildKit CLI)
    does before each build: tar the context, walking it with the SDK's .dockerignore matcher."""
    from docker.utils.build import tar

    from devloop.hasher import read_dockerignore

    t = time.perf_counter()
    f = tar(str(context), exclude=read_dockerignore(context), dockerfile=("Dockerfile", None))
    seconds = time.perf_counter() - t
    size = f.seek(0, 2)
    f.close()
    return {"seconds": round(seconds, 2), "bytes": size, "loadavg": loadavg()}


def big_context(files: int, edits: int = 20, idle_seconds: float = 30) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="devloop-scale-") as tmp:
        root = Path(tmp) / "proj"
        root.mkdir()
        made = make_tree(root, files)
        write_config(root)
        print(f"== big context: {made['files']} files ({made['ignored']} .dockerignore'd) in {made['dirs']} directories", flush=True)
        out: dict[str, Any] = {"tree": made}
        out["edits"] = edit_path(root, edits)
        out["sdk_context_tar"] = sdk_context_tar(root / "sample-app")
        print(f"== idle watcher over the tree ({idle_seconds:.0f} s)", flush=True)
        out["watcher"] = idle_watcher(root, idle_seconds)
    return out


# -- part 2: the big image ---------------------------------------------------------------------------


@dataclasses.dataclass
class Env:
    """What the kind cluster needs here: the e2e harness's images and PATH (kind, kubectl, and on hosts
    that refuse --privileged the test docker wrapper), for child processes only."""

    env: dict[str, str]
    kind_image: str
    node_base: str
    registry_image: str


def make_env() -> Env:
    from tests.e2e.conftest import CACHE, KIND_DIR, _needs_wrapper

    node_base = os.environ.get("DEVLOOP_TEST_NODE_BASE", "devloop-test/node-base:bookworm")
    registry_image = os.environ.get("DEVLOOP_TEST_REGISTRY_IMAGE", "devloop-test/registry:bookworm")
    kind_image = os.environ.get("DEVLOOP_E2E_KIND_IMAGE") or (KIND_DIR / "NODE_IMAGE").read_text().strip()
    for image, how in (
        (node_base, "tests/images/build-node-base.sh"),
        (registry_image, "tests/images/build-registry.sh"),
        (kind_image, "tests/e2e/kind/build-node-image.sh"),
    ):
        if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode != 0:
            raise RuntimeError(f"scale.py: image {image} is missing: run {how} (or bash tests/run) first")
    path = [str(CACHE / "bin")]
    if _needs_wrapper(node_base):
        path.insert(0, str(KIND_DIR / "bin"))
    env = dict(os.environ, PATH=os.pathsep.join([*path, os.environ["PATH"]]))
    return Env(env, kind_image, node_base, registry_image)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def big_image_project(root: Path, e: Env, image_mb: int, registry_port: int, run_id: str, *, registry: bool = True) -> None:
    """The sample app on top of `image_mb` MB of random data in three layers, below the app's layer.
    Its images carry the label devloop-scale-run=<run_id>: no content tag (and so no image this run
    removes) is another project's."""
    app = root / "sample-app"
    if not app.exists():
        shutil.copytree(REPO / "sample-app", app, ignore=shutil.ignore_patterns("node_modules"))
        shutil.copy(REPO / "kind-config.yaml", root / "kind-config.yaml")
    dockerfile = (REPO / "sample-app" / "Dockerfile").read_text()
    anchor = "FROM ${NODE_IMAGE}\n"
    assert anchor in dockerfile
    dockerfile = dockerfile.replace(anchor, f"{anchor}LABEL devloop-scale-run={run_id}\n")
    if image_mb > 0:
        each = max(1, image_mb // 3)
        blobs = "".join(f"RUN head -c {each}M /dev/urandom > /opt/blob{i}\n" for i in range(3))
        anchor = "EXPOSE 3000\n"
        assert anchor in dockerfile
        dockerfile = dockerfile.replace(anchor, f"# scale benchmark: random data below the app layer\n{blobs}{anchor}")
    if not (app / "Dockerfile").is_file() or (app / "Dockerfile").read_text() != dockerfile:
        (app / "Dockerfile").write_text(dockerfile)
    (root / "devloop.yaml").write_text(
        "apiVersion: devloop/v1\n"
        f"cluster:\n  name: {CLUSTER}\n  nodeImage: {e.kind_image}\n"
        f"image:\n  buildArgs:\n    NODE_IMAGE: {e.node_base}\n"
        f"registry:\n  enabled: {str(registry).lower()}\n  name: {CLUSTER}-registry\n  hostPort: {registry_port}\n  image: {e.registry_image}\n"
        "monitoring:\n  enabled: false\ndashboard:\n  enabled: false\nportForward:\n  enabled: false\n"
        "deploy:\n  rolloutTimeout: 900\n"
    )


def set_message(root: Path, message: str) -> None:
    server = root / "sample-app" / "server.js"
    lines = server.read_text().splitlines(keepends=True)
    server.write_text("".join(f"const MESSAGE = '{message}';\n" if ln.startswith("const MESSAGE =") else ln for ln in lines))


def devloop_up(root: Path, e: Env) -> dict[str, Any]:
    """`devloop up --json`: its wall time, the phases and image of its cycle, its exit code."""
    t = time.time()
    p = subprocess.run([_devloop(), "--json", "up"], cwd=root, env=e.env, capture_output=True, text=True)
    wall = time.time() - t
    events = []
    for line in p.stdout.splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    done = [ev for ev in events if ev.get("event") == "cycle_done"]
    if p.returncode != 0 or not done:
        tail = "\n".join(p.stdout.splitlines()[-15:] + p.stderr.splitlines()[-15:])
        raise RuntimeError(f"devloop up failed ({p.returncode}):\n{tail}")
    return {
        "wall": round(wall, 2),
        "phases": {k: round(v, 2) for k, v in done[-1]["phases"].items()},
        "image": done[-1].get("image"),
        "published": any(
            ev.get("event") == "phase" and ev.get("phase") == "publish" and str(ev.get("detail", "")).startswith("pushed") for ev in events
        ),
        "notes": [ev.get("message") for ev in events if ev.get("event") == "info" and "loading" in str(ev.get("message", ""))],
    }


def _devloop() -> str:
    exe = Path(sys.executable).parent / "devloop"
    return str(exe) if exe.exists() else shutil.which("devloop") or "devloop"


def du_bytes(path: str) -> int:
    out = subprocess.run(["du", "-sb", path], capture_output=True, text=True)
    return int(out.stdout.split()[0]) if out.returncode == 0 and out.stdout else 0


def registry_bytes() -> int:
    """The local registry's storage (its volume on this host)."""
    out = subprocess.run(
        [
            "docker",
            "inspect",
            "-f",
            '{{range .Mounts}}{{if eq .Destination "/var/lib/registry"}}{{.Source}}{{end}}{{end}}',
            f"{CLUSTER}-registry",
        ],
        capture_output=True,
        text=True,
    )
    return du_bytes(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else 0


def node_rx_bytes() -> int:
    """Bytes the kind node has received over its network (what it pulled from the registry, plus a
    little API traffic)."""
    out = subprocess.run(
        ["docker", "exec", f"{CLUSTER}-control-plane", "cat", "/sys/class/net/eth0/statistics/rx_bytes"], capture_output=True, text=True
    )
    return int(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else 0


def _go_seconds(text: str) -> float:
    import re

    total = 0.0
    for num, unit in re.findall(r"([\d.]+)(ms|µs|us|h|m|s)", text):
        total += float(num) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "µs": 1e-6, "us": 1e-6}[unit]
    return total


def pull_times(e: Env, image: str) -> list[float]:
    """kubelet's 'Successfully pulled image <image> in …' events: the node's pull of this image."""
    import re

    out = subprocess.run(
        ["kubectl", "--context", CONTEXT, "get", "events", "-A", "--field-selector", "reason=Pulled", "-o", "json"],
        env=e.env,
        capture_output=True,
        text=True,
        check=True,
    )
    times = []
    for item in json.loads(out.stdout)["items"]:
        m = re.match(r'Successfully pulled image "([^"]+)" in (\S+) ', item.get("message", ""))
        if m and m.group(1) == image:
            times.append(round(_go_seconds(m.group(2)), 2))
    return times


def image_bytes(ref: str) -> int:
    out = subprocess.run(["docker", "image", "inspect", "-f", "{{.Size}}", ref], capture_output=True, text=True)
    return int(out.stdout.strip()) if out.returncode == 0 else 0


def remove_run_images(run_id: str) -> None:
    """Every image (and its tags) this run built: they carry its label."""
    ids = subprocess.run(
        ["docker", "images", "-a", "-q", "--no-trunc", "--filter", f"label=devloop-scale-run={run_id}"], capture_output=True, text=True
    ).stdout.split()
    for image in dict.fromkeys(ids):
        subprocess.run(["docker", "rmi", "-f", image], capture_output=True)


def big_image(image_mb: int, kindload: bool = True) -> dict[str, Any]:
    e = make_env()
    env = dict(e.env, DEVLOOP_BUILDER="classic")  # layers live in the image (no build cache left behind)
    e = dataclasses.replace(e, env=env)
    port = free_port()
    run_id = uuid.uuid4().hex[:12]
    out: dict[str, Any] = {"image_mb": image_mb, "registry_port": port}
    with tempfile.TemporaryDirectory(prefix="devloop-scale-") as tmp:
        root = Path(tmp) / "proj"
        root.mkdir()
        big_image_project(root, e, 0, port, run_id)  # the plain sample first: the cluster and its registry
        try:
            print(f"== big image: cluster {CLUSTER} and its registry (the plain sample first)", flush=True)
            out["setup"] = devloop_up(root, e)
            big_image_project(root, e, image_mb, port, run_id)
            for step, message in (("first", None), ("one_layer", "scale: one-layer change")):
                if message:
                    set_message(root, message)
                print(f"== big image: devloop up ({step})", flush=True)
                r0, n0 = registry_bytes(), node_rx_bytes()
                r = devloop_up(root, e)
                r["registry_bytes_added"] = registry_bytes() - r0
                r["node_rx_bytes"] = node_rx_bytes() - n0
                r["node_pull_seconds"] = pull_times(e, r["image"])
                r["image_bytes"] = image_bytes(str(r["image"]).split("/", 1)[-1])
                r["loadavg"] = loadavg()
                out[step] = r
                print(f"   {json.dumps(r)}", flush=True)
            if kindload:
                big_image_project(root, e, image_mb, port, run_id, registry=False)
                print("== big image: kind load (whole image), same content then a one-layer change", flush=True)
                warm = devloop_up(root, e)
                warm["image_bytes"] = image_bytes(str(warm["image"]))
                warm["loadavg"] = loadavg()
                out["kindload_same_content"] = warm
                set_message(root, "scale: one-layer change through kind load")
                r = devloop_up(root, e)
                r["image_bytes"] = image_bytes(str(r["image"]))  # what kind load moves: the whole image
                r["loadavg"] = loadavg()
                out["kindload_one_layer"] = r
                print(f"   {json.dumps(r)}", flush=True)
        finally:
            print(f"== big image: deleting cluster {CLUSTER}, its registry and the images", flush=True)
            big_image_project(root, e, image_mb, port, run_id)
            subprocess.run([_devloop(), "down", "--cluster"], cwd=root, env=e.env, capture_output=True)
            subprocess.run(["kind", "delete", "cluster", "--name", CLUSTER], env=e.env, capture_output=True)
            subprocess.run(["docker", "rm", "-f", "-v", f"{CLUSTER}-registry"], capture_output=True)
            remove_run_images(run_id)
    return out


# -- part 3: the real `devloop dev` over the big context ---------------------------------------------


def dev_over_tree(files: int, idle_seconds: float = 30.0, saves: int = 10) -> dict[str, Any]:
    """`devloop dev --json` over the generated tree on a `devloop-scale` cluster: its RSS, idle CPU and
    inotify watches; same-content saves (event → debounce → plan → content tag → "image content
    unchanged"); a chmod (no cycle) then a one-file edit: the cycle's tag must equal a from-scratch
    hash, and the build of the big context is timed."""
    from devloop.hasher import ContextHasher, content_tag

    e = make_env()
    e = dataclasses.replace(e, env=dict(e.env, DEVLOOP_BUILDER="classic"))
    port = free_port()
    run_id = uuid.uuid4().hex[:12]
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="devloop-scale-") as tmp:
        root = Path(tmp) / "proj"
        root.mkdir()
        out["tree"] = make_tree(root, files)
        big_image_project(root, e, 0, port, run_id)
        ctx = root / "sample-app"

        def expected() -> str:
            return content_tag(ContextHasher().digest(ctx, "Dockerfile", {"NODE_IMAGE": e.node_base}))

        events: queue.Queue[dict[str, Any]] = queue.Queue()
        proc = subprocess.Popen(
            [_devloop(), "--json", "dev"], cwd=root, env=e.env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                try:
                    events.put(json.loads(line))
                except ValueError:
                    continue

        threading.Thread(target=pump, daemon=True).start()

        def wait(kinds: set[str], timeout: float = 900) -> dict[str, Any]:
            end = time.time() + timeout
            while time.time() < end:
                try:
                    ev = events.get(timeout=1)
                except queue.Empty:
                    if proc.poll() is not None:
                        raise RuntimeError(f"devloop dev exited with {proc.returncode}") from None
                    continue
                if ev.get("event") in kinds:
                    return ev
            raise TimeoutError(f"no {kinds} from devloop dev within {timeout}s")

        def drain() -> None:
            while not events.empty():
                events.get_nowait()

        try:
            print(f"== devloop dev over the big context (cluster {CLUSTER})", flush=True)
            t = time.time()
            done = wait({"cycle_done"})
            if not done["ok"] or not str(done["image"]).endswith(expected()):
                raise RuntimeError(f"first cycle: {done}")
            out["first_cycle"] = {"seconds": round(time.time() - t, 1), "phases": done["phases"]}
            drain()
            c0, t0 = _proc_cpu(proc.pid), time.time()
            time.sleep(idle_seconds)  # measuring idle: the wait is the measurement window
            c1, t1 = _proc_cpu(proc.pid), time.time()
            out["idle"] = {
                "rss_mb": round(_proc_rss_mb(proc.pid), 1),
                "cpu_percent": round(100 * (c1 - c0) / (t1 - t0), 2),
                "seconds": idle_seconds,
                "inotify_watches": inotify_watches(proc.pid),
                "loadavg": loadavg(),
            }
            server = ctx / "server.js"
            decided = []
            for _ in range(saves):
                drain()
                t = time.time()
                server.write_text(server.read_text())
                ev = wait({"skipped", "cycle_start"}, 60)
                if ev["event"] != "skipped":
                    raise RuntimeError(f"a same-content save started a cycle: {ev}")
                decided.append(ev["ts"] - t)
            debounce = 0.2
            out["same_content_save"] = {
                "save_to_decision_p50_s": round(pct(decided, 0.5), 3),
                "max_s": round(max(decided), 3),
                "debounce_s": debounce,
                "loadavg": loadavg(),
            }
            server.chmod(0o755)  # starts no cycle, yet is part of the next tag
            target = sorted((ctx / "src").rglob("*.js"))[0]
            drain()
            t = time.time()
            target.write_text(target.read_text() + "// one-file edit\n")
            start = wait({"cycle_start", "skipped"}, 60)
            if start["event"] != "cycle_start":
                raise RuntimeError(f"the edit started no cycle: {start}")
            done = wait({"cycle_done"})
            out["edit_cycle"] = {
                "detect_s": round(start["ts"] - t, 3),
                "phases": done["phases"],
                "ok": done["ok"],
                "tag_equals_full_hash": str(done["image"]).endswith(expected()),
                "loadavg": loadavg(),
            }
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
            print(f"== devloop dev: deleting cluster {CLUSTER}, its registry and the images", flush=True)
            subprocess.run([_devloop(), "down", "--cluster"], cwd=root, env=e.env, capture_output=True)
            subprocess.run(["kind", "delete", "cluster", "--name", CLUSTER], env=e.env, capture_output=True)
            subprocess.run(["docker", "rm", "-f", "-v", f"{CLUSTER}-registry"], capture_output=True)
            remove_run_images(run_id)
    return out


def print_dev(r: dict[str, Any]) -> None:
    i, s, c = r["idle"], r["same_content_save"], r["edit_cycle"]
    print(f"\ndevloop dev over {r['tree']['files']} files:")
    print(
        f"  idle: {i['rss_mb']:.0f} MB RSS, {i['cpu_percent']:.2f} % CPU over {i['seconds']:.0f} s, {i['inotify_watches']} inotify watches; "
        f"load {i['loadavg']}"
    )
    print(
        f"  same-content save → 'image content unchanged': p50 {s['save_to_decision_p50_s'] * 1000:.0f} ms, max {s['max_s'] * 1000:.0f} ms "
        f"(of which {s['debounce_s'] * 1000:.0f} ms debounce); load {s['loadavg']}"
    )
    print(
        f"  chmod + one-file edit: detect {c['detect_s'] * 1000:.0f} ms, phases {c['phases']}, tag equals a full hash: "
        f"{c['tag_equals_full_hash']}; load {c['loadavg']}"
    )


# -- report ------------------------------------------------------------------------------------------


def print_context(r: dict[str, Any]) -> None:
    e = r["edits"]
    print(f"\nbig context: {r['tree']['files']} files, {r['tree']['dirs']} dirs; {e['edits']} one-file edits; load {e['loadavg']}")
    print(f"  initial full hash {e['initial_full_hash_ms']:.0f} ms; first hash with the watcher on {e['first_hash_after_watch_ms']:.0f} ms")
    print(f"  {'ms':<16}{'p50':>8}{'max':>8}")
    for k, v in e["ms"].items():
        print(f"  {k:<16}{v['p50']:>8.1f}{v['max']:>8.1f}")
    print(f"  tags equal to a from-scratch hash: {e['edits'] - e['tag_mismatches']}/{e['edits']}")
    t = r["sdk_context_tar"]
    print(
        f"  the docker SDK's context tar (classic builder, each build): {t['seconds']:.2f} s, {t['bytes'] / 1e6:.1f} MB; load {t['loadavg']}"
    )
    w = r["watcher"]
    print(
        f"  watcher process: {w['rss_mb']:.0f} MB RSS, {w['idle_cpu_percent']:.2f} % CPU idle over {w['idle_seconds']:.0f} s, "
        f"{w['watches']} watches ({w['inotify_watches']} inotify wd); load {w['loadavg']}"
    )


def print_image(r: dict[str, Any]) -> None:
    mb = 1 / (1024 * 1024)
    print(f"\nbig image: ~{r['image_mb']} MB of random layers below the app layer (classic builder)")
    print(f"  {'step':<22}{'build':>8}{'publish':>9}{'rollout':>9}{'up wall':>9}{'pushed MB':>11}{'node MB':>9}  node pull s")
    print("  (pushed: the registry's storage growth; node: bytes the node received, for kind load the whole image)")
    for step in ("first", "one_layer", "kindload_same_content", "kindload_one_layer"):
        x = r.get(step)
        if not x:
            continue
        ph = x["phases"]
        pushed = x.get("registry_bytes_added")
        print(
            f"  {step:<22}{ph.get('build', 0):>8.2f}{ph.get('publish', 0):>9.2f}{ph.get('rollout', 0):>9.2f}{x['wall']:>9.1f}"
            f"{(pushed * mb if pushed is not None else float('nan')):>11.1f}{x.get('node_rx_bytes', x.get('image_bytes', 0)) * mb:>9.1f}  "
            f"{x.get('node_pull_seconds', '')}  load {x.get('loadavg', '')}"
        )


def run(
    files: int = 10_000,
    image_mb: int = 1024,
    *,
    edits: int = 20,
    idle_seconds: float = 30.0,
    context: bool = True,
    image: bool = True,
    kindload: bool = True,
    dev: bool = True,
) -> dict[str, Any]:
    """Both parts (each can be left out); returns the figures as a JSON-able dict and prints a table.
    `files`: generated files in the context; `image_mb`: MB of random layers below the app layer;
    `edits`: one-file edits timed (at least 20 for the issue's figure); `idle_seconds`: the watchers'
    idle CPU window; `kindload`: also the whole-image `kind load` path for the one-layer change;
    `dev`: the real `devloop dev` over the big context (needs the cluster tooling, like `image`)."""
    result: dict[str, Any] = {"files": files, "image_mb": image_mb, "loadavg_start": loadavg()}
    if context:
        result["context"] = big_context(files, edits, idle_seconds)
        print_context(result["context"])
    if image:
        result["image"] = big_image(image_mb, kindload)
        print_image(result["image"])
    if dev:
        result["dev"] = dev_over_tree(files, idle_seconds)
        print_dev(result["dev"])
    result["loadavg_end"] = loadavg()
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--edits", type=int, default=20)
    ap.add_argument("--image-mb", type=int, default=1024)
    ap.add_argument("--idle-seconds", type=float, default=30.0)
    ap.add_argument("--skip-context", action="store_true")
    ap.add_argument("--skip-image", action="store_true")
    ap.add_argument("--skip-kindload", action="store_true")
    ap.add_argument("--skip-dev", action="store_true")
    ap.add_argument("--json", type=Path, default=RESULTS)
    ap.add_argument("--_watcher", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._watcher:
        _watcher_main(args._watcher)
        return 0
    result = run(
        args.files,
        args.image_mb,
        edits=args.edits,
        idle_seconds=args.idle_seconds,
        context=not args.skip_context,
        image=not args.skip_image,
        kindload=not args.skip_kindload,
        dev=not args.skip_dev,
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
