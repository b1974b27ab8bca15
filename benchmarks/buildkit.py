"""A dependency change, rebuilt with and without the npm cache mount of Docker's Node.js guide.

Both Dockerfiles are the guide's shape (bind mounts for package.json / package-lock.json, `npm ci
--omit=dev`); one adds `--mount=type=cache,target=/root/.npm`. For each, the app is built once with
N dependencies (untimed: it fills the cache mount), then each iteration adds one new dependency and
the rebuild is timed. The lockfile changes, so the `npm ci` step re-runs in both: without the cache
mount npm downloads every tarball again, with it only the new one.

No registry is reachable from here, so the script is the registry: it generates N packages (random,
incompressible payloads of --size-kb) and serves their tarballs over HTTP on the docker bridge's
gateway, which build steps can reach. Every tarball request is counted, so the output shows what
each build actually fetched. A localhost "registry" is far faster than the real one: --latency-ms
adds a fixed delay per tarball request to approximate a network round trip (0 by default, so the
default figures are the honest localhost ones).

Usage:  python benchmarks/buildkit.py [--deps 40] [--size-kb 256] [--iterations 3] [--latency-ms 0]
Needs a Docker daemon with BuildKit reachable by a docker CLI (see devloop.builder.detect_builder)
and the local node base image (tests/images/build-node-base.sh). The cache mounts it creates are
reclaimed by `docker builder prune`.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import io
import ipaddress
import json
import os
import re
import statistics
import sys
import tarfile
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import docker

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from devloop.builder import BuildKitCLI, detect_builder  # noqa: E402
from devloop.images import Images  # noqa: E402

NODE_BASE = os.environ.get("DEVLOOP_TEST_NODE_BASE", "devloop-test/node-base:bookworm")

DOCKERFILE = """\
ARG NODE_IMAGE
FROM ${{NODE_IMAGE}}
ENV NODE_ENV=production
WORKDIR /usr/src/app
RUN --mount=type=bind,source=package.json,target=package.json \\
    --mount=type=bind,source=package-lock.json,target=package-lock.json \\{cache}
    npm ci --omit=dev --no-audit --no-fund
COPY . .
CMD ["node", "index.js"]
"""
CACHE_LINE = "\n    --mount=type=cache,target=/root/.npm,id={id} \\"


class Registry:
    """Tarballs by URL path, served from memory; counts requests."""

    def __init__(self, latency: float) -> None:
        self.tarballs: dict[str, bytes] = {}
        self.requests = 0
        self.latency = latency
        self._lock = threading.Lock()
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = registry.tarballs.get(self.path)
                with registry._lock:
                    registry.requests += 1
                if registry.latency:
                    time.sleep(registry.latency)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("0.0.0.0", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def take_count(self) -> int:
        with self._lock:
            n, self.requests = self.requests, 0
        return n


def tarball(name: str, size_kb: int) -> bytes:
    buf = io.BytesIO()
    files = {
        "package.json": json.dumps({"name": name, "version": "1.0.0", "main": "index.js"}).encode(),
        "index.js": b"module.exports = require('fs').statSync(__dirname + '/payload.bin').size;\n",
        "payload.bin": os.urandom(size_kb * 1024),
    }
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for filename, data in files.items():
            info = tarfile.TarInfo(f"package/{filename}")
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_app(app: Path, registry: Registry, base_url: str, names: list[str]) -> None:
    deps = {n: "1.0.0" for n in names}
    lock: dict[str, object] = {"": {"name": "bench-app", "version": "1.0.0", "dependencies": deps}}
    for n in names:
        path = f"/{n}/-/{n}-1.0.0.tgz"
        integrity = "sha512-" + base64.b64encode(hashlib.sha512(registry.tarballs[path]).digest()).decode()
        lock[f"node_modules/{n}"] = {"version": "1.0.0", "resolved": base_url + path, "integrity": integrity}
    (app / "package.json").write_text(
        json.dumps({"name": "bench-app", "version": "1.0.0", "private": True, "dependencies": deps}, indent=2)
    )
    full = {"name": "bench-app", "version": "1.0.0", "lockfileVersion": 3, "requires": True, "packages": lock}
    (app / "package-lock.json").write_text(json.dumps(full, indent=2))
    (app / "index.js").write_text(f"console.log({len(names)} + ' dependencies');\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--deps", type=int, default=40, help="dependencies before the change")
    ap.add_argument("--size-kb", type=int, default=256, help="payload per package (random, incompressible)")
    ap.add_argument("--iterations", type=int, default=3, help="dependency changes per variant")
    ap.add_argument("--latency-ms", type=float, default=0.0, help="delay per tarball request (0: localhost speed)")
    args = ap.parse_args()

    client = docker.from_env()
    client.images.get(NODE_BASE)  # fails loudly when the base is missing: tests/images/build-node-base.sh
    builder = detect_builder(Images())
    if not isinstance(builder, BuildKitCLI):
        print(f"no BuildKit here ({builder.name}): the cache mount needs it", file=sys.stderr)
        return 1
    ipam = client.networks.get("bridge").attrs["IPAM"]["Config"][0]  # build steps run on the default bridge
    gateway = ipam.get("Gateway") or str(next(ipaddress.ip_network(ipam["Subnet"]).hosts()))
    registry = Registry(args.latency_ms / 1000)
    base_url = f"http://{gateway}:{registry.server.server_address[1]}"
    total = args.deps + args.iterations
    for i in range(total):
        registry.tarballs[f"/dep{i}/-/dep{i}-1.0.0.tgz"] = tarball(f"dep{i}", args.size_kb)

    run = uuid.uuid4().hex[:8]
    results: dict[str, list[tuple[float, float, int]]] = {}
    images: list[str] = []
    print(f"builder: {builder.name}")
    print(f"registry: {base_url} ({total} packages x {args.size_kb} KiB, latency {args.latency_ms:g} ms/request)")
    try:
        for variant, cache in (("no cache mount", ""), ("npm cache mount", CACHE_LINE.format(id=f"devloop-bench-npm-{run}"))):
            with tempfile.TemporaryDirectory(prefix="devloop-bench-") as tmp:
                app = Path(tmp)
                (app / "Dockerfile").write_text(DOCKERFILE.format(cache=cache))
                name = f"devloop-bench-{run}-{'cache' if cache else 'nocache'}"
                write_app(app, registry, base_url, [f"dep{i}" for i in range(args.deps)])
                builder.build(app, "Dockerfile", f"{name}:warm", {"NODE_IMAGE": NODE_BASE})
                images.append(f"{name}:warm")
                registry.take_count()
                for it in range(args.iterations):
                    write_app(app, registry, base_url, [f"dep{i}" for i in range(args.deps + it + 1)])  # add one dependency
                    lines: list[str] = []
                    t0 = time.perf_counter()
                    builder.build(app, "Dockerfile", f"{name}:{it}", {"NODE_IMAGE": NODE_BASE}, None, lines.append)
                    wall = time.perf_counter() - t0
                    images.append(f"{name}:{it}")
                    results.setdefault(variant, []).append((wall, npm_step_seconds(lines), registry.take_count()))
                    out = client.containers.run(f"{name}:{it}", remove=True).decode().strip()
                    assert out == f"{args.deps + it + 1} dependencies", out
    finally:
        for ref in images:
            with contextlib.suppress(docker.errors.APIError):
                client.images.remove(ref, force=True)

    print()
    print(f"rebuild after adding one dependency to {args.deps} ({args.iterations} iterations; seconds)")
    print(f"{'':<18}{'build p50':>10}{'npm ci p50':>12}{'tarballs fetched':>18}   per iteration (build s)")
    for variant, rows in results.items():
        walls = [r[0] for r in rows]
        print(
            f"{variant:<18}{statistics.median(walls):>10.2f}{statistics.median(r[1] for r in rows):>12.2f}"
            f"{statistics.median(r[2] for r in rows):>18.0f}   {' '.join(f'{w:.2f}' for w in walls)}"
        )
    return 0


_DONE = re.compile(r"^#(\d+) DONE (\d+(?:\.\d+)?)s$")


def npm_step_seconds(lines: list[str]) -> float:
    """The `npm ci` step's own duration, from BuildKit's `#N DONE 1.2s` line."""
    step = next((line.split(" ", 1)[0] for line in lines if line.startswith("#") and "npm ci" in line), None)
    for line in lines:
        m = _DONE.match(line)
        if m and step == f"#{m.group(1)}":
            return float(m.group(2))
    return float("nan")


if __name__ == "__main__":
    sys.exit(main())
