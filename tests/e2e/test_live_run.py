"""Live update with build steps (liveUpdate.run, issue 20): the examples/ts-api TypeScript service on
the shared kind cluster. A .ts save is copied into the pod, tsc compiles it there and the app
restarts: served through the forward without a new image. A type error: the cycle fails in `run`
with tsc's first lines, the app is not restarted and the forward still serves the previous answer;
the next good save recovers.

npm inside a container cannot reach the registry on these machines: the set-up runs `npm ci` on the
host (cached under the e2e cache, keyed by package-lock.json) and copies node_modules/ into the build
context, which the example's Dockerfile takes instead of running `npm ci` itself.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import CACHE, CLUSTER, REPO, Devloop, Harness, devloops, free_port, leave_cluster
from tests.e2e.test_loop import edit, get

pytestmark = [pytest.mark.e2e, pytest.mark.shared_cluster]

EXAMPLE = REPO / "examples" / "ts-api"


def node_modules() -> Path:
    """examples/ts-api's dependencies, installed by the host's npm (once per package-lock.json)."""
    lock = (EXAMPLE / "package-lock.json").read_bytes()
    where = CACHE / f"ts-api-deps-{hashlib.sha256(lock).hexdigest()[:16]}"
    if not (where / "node_modules").is_dir():
        tmp = where.with_name(where.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for f in ("package.json", "package-lock.json"):
            shutil.copy(EXAMPLE / f, tmp / f)
        npm = shutil.which("npm")
        assert npm, "the host's npm installs examples/ts-api's dependencies (tests/run installs it: apt-get install npm)"
        subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"], cwd=tmp, check=True, capture_output=True)
        shutil.rmtree(where, ignore_errors=True)
        tmp.rename(where)
    return where / "node_modules"


@pytest.fixture(scope="module")
def ts_api(harness: Harness, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[tuple[Path, int]]:
    root = tmp_path_factory.mktemp("e2e-ts") / "ts-api"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns("node_modules", "dist"))
    shutil.copytree(node_modules(), root / "node_modules", symlinks=True)
    shutil.copy(REPO / "kind-config.yaml", root / "kind-config.yaml")
    doc = yaml.safe_load((root / "devloop.yaml").read_text())
    doc["cluster"] = {"name": CLUSTER, "nodeImage": harness.kind_image, "kindConfig": "kind-config.yaml"}
    doc["registry"] = {"image": harness.registry_image}
    doc["dashboard"] = {"enabled": False}
    port = free_port()
    svc = doc["services"][0]
    svc["image"]["buildArgs"] = {"NODE_IMAGE": harness.node_base}
    svc["deploy"]["rolloutTimeout"] = 240
    svc["portForward"][0]["localPort"] = port
    (root / "devloop.yaml").write_text(yaml.safe_dump(doc))
    yield root, port
    leave_cluster(harness, root, request)


def test_a_ts_edit_is_compiled_in_the_pod_and_a_type_error_keeps_the_old_code_serving(harness: Harness, ts_api: tuple[Path, int]) -> None:
    root, port = ts_api
    greeting = root / "src" / "greeting.ts"
    with devloops(harness, root) as start:
        d: Devloop = start("dev")
        first = d.wait_for(lambda e: e["event"] == "cycle_done", 600, "the first cycle")
        assert first["ok"], first["error"]
        d.wait_for(lambda e: e["event"] == "port_forward" and e["ready"], 120, "the port-forward")
        assert get(port)[1] == "hello from ts-api"

        # 1. a .ts edit: copied, compiled by tsc in the pod, the app restarted: no image, no rollout
        edit(greeting, '"hello from ts-api"', '"hello v2"')
        done = d.wait_for(lambda e: e["event"] == "cycle_done", 300, "the live-update cycle")
        assert done["ok"], done["error"]
        assert done["synced"] and "sync" in done["phases"] and "build" not in done["phases"], done
        assert get(port)[1] == "hello v2"

        (pod,) = [p["metadata"]["name"] for p in harness.kubectl_json("get", "pods", "-l", "app=ts-api")["items"]]
        app_pid = harness.kubectl_run("exec", pod, "--", "cat", "/tmp/.devloop-child").stdout.strip()

        # 2. a type error: the cycle fails in `run` with tsc's first lines; no rebuild, the old code serves
        edit(greeting, 'return "hello v2";', "return 42;")
        failed = d.wait_for(lambda e: e["event"] == "cycle_done", 300, "the type error's cycle")
        assert not failed["ok"] and failed["error"]["phase"] == "run", failed
        assert "liveUpdate.run[0]" in failed["error"]["message"] and re.search(r"\(exit [1-9][0-9]*\)$", failed["error"]["message"]), (
            failed["error"]
        )
        assert any("greeting.ts" in line and "TS2322" in line for line in failed["error"]["details"]), failed["error"]
        assert "not restarted" in failed["outcome"], failed
        assert "build" not in failed["phases"], failed
        streamed = [e for e in d.seen if e["event"] == "log" and "TS2322" in e["line"]]
        assert streamed and streamed[0]["service"] == "ts-api" and streamed[0]["pod"].startswith("ts-api-"), streamed
        assert get(port)[1] == "hello v2"
        assert harness.kubectl_run("exec", pod, "--", "cat", "/tmp/.devloop-child").stdout.strip() == app_pid  # the same process

        # 3. the fix: the step runs again, the app restarts with the new code
        edit(greeting, "return 42;", 'return "hello v3";')
        fixed = d.wait_for(lambda e: e["event"] == "cycle_done", 300, "the fix's cycle")
        assert fixed["ok"] and fixed["synced"], fixed
        assert get(port)[1] == "hello v3"
        print(
            f"\nts-api: edit served in {done['total']:.2f}s, type error reported in {failed['total']:.2f}s, fix served in {fixed['total']:.2f}s"
        )
        assert d.interrupt() == 130
