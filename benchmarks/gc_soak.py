"""Disk soak of keepVersions: N versions (default 100) built, pushed to devloop's local registry,
rolled out on a real kind node and collected, one after the other, through devloop's own parts
(tests/e2e/gcrig.py: the same rig as tests/e2e/test_gc_disk.py, for longer). Prints, every 10
versions, the registry's tags and `du` (inside its container) and the node's app images and content
store `du`, then the growth per version once keepVersions versions exist: bounded means ~0 kB.

Usage (after .ci/run's setup; one e2e run at a time on a shared machine):
  flock /work/e2e.lock python benchmarks/gc_soak.py [--versions 100] [--keep 3] [--json PATH]
Its cluster (devloop-gcsoak) and registry are created and removed here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.conftest import make_harness  # noqa: E402  (the e2e tests' setup)
from tests.e2e.gcrig import rig  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--versions", type=int, default=100)
    ap.add_argument("--keep", type=int, default=3)
    ap.add_argument("--cluster", default="devloop-gcsoak")
    ap.add_argument("--json", type=Path, help="write every version's figures here")
    args = ap.parse_args()
    h = make_harness()
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp, rig(h, args.cluster, args.keep, Path(tmp)) as r:
        t0 = time.monotonic()
        for i in range(1, args.versions + 1):
            t = time.monotonic()
            tag = r.build()
            r.publish(tag)
            r.roll_out(tag)
            summary = r.tidy(tag)
            f = r.figures()
            rows.append({"version": i, "seconds": round(time.monotonic() - t, 2), "gc": summary, **dataclasses.asdict(f)})
            if i % 10 == 0 or i == args.versions or "failed" in summary:
                print(
                    f"version {i:3d}: registry {f.registry_tags} tags {f.registry_kb:6d} kB | node {f.node_images} app images "
                    f"{f.node_image_bytes / 1e6:6.1f} MB, content store {f.node_content_kb:6d} kB, containerd {f.node_containerd_kb} kB | {summary}",
                    flush=True,
                )
        total = time.monotonic() - t0
    steady = rows[args.keep :]
    first, last = steady[0], steady[-1]
    n = max(len(steady) - 1, 1)

    def per(key: str) -> float:
        return (float(str(last[key])) - float(str(first[key]))) / n

    print(f"\n{args.versions} versions in {total:.0f}s ({total / args.versions:.1f}s each), keepVersions {args.keep}")
    print(f"from version {args.keep + 1} to {args.versions}:")
    print(f"  registry: {first['registry_kb']} -> {last['registry_kb']} kB, {per('registry_kb') * 1024:+.0f} bytes per version")
    print(
        f"  node content store: {first['node_content_kb']} -> {last['node_content_kb']} kB, {per('node_content_kb') * 1024:+.0f} bytes per version"
    )
    print(
        f"  node containerd (unpacked layers too): {first['node_containerd_kb']} -> {last['node_containerd_kb']} kB, "
        f"{per('node_containerd_kb') * 1024:+.0f} bytes per version"
    )
    print(
        f"  node app images: max {max(int(str(s['node_images'])) for s in steady)}; registry tags: max {max(int(str(s['registry_tags'])) for s in steady)}"
    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
