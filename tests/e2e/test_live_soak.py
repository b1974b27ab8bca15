"""Live syncs back to back never get the container killed (issue 13).

Saving faster than the liveness probe's period made every probe land in an app restart: the kubelet
killed the container (it came back from its image without the synced files) and devloop had to
rebuild. With a tight but ordinary liveness probe (every 5 s, 2 failures) the old code lost a
container within a few dozen syncs; devloop now paces the restarts for the probe (devloop/live.py
`RestartPacer`), so every one of these syncs is a sync and no container restarts.

Runs on its own cluster (DEVLOOP_LIVE_SOAK_CLUSTER, default devloop-soak-test; deleted at the end
unless it was there before).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO, Harness, devloops, free_port, poll

pytestmark = pytest.mark.e2e

CLUSTER = os.environ.get("DEVLOOP_LIVE_SOAK_CLUSTER", "devloop-soak-test")
SYNCS = 40
TIGHT_LIVENESS = """          livenessProbe:
            httpGet:
              path: /healthz
              port: 3000
            initialDelaySeconds: 5
            periodSeconds: 5
            timeoutSeconds: 2
            failureThreshold: 2
"""


@pytest.fixture(scope="module")
def soak_project(harness: Harness, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Harness, int]]:
    existed = CLUSTER in harness.kind_clusters()
    root = tmp_path_factory.mktemp("live-soak") / "proj"
    shutil.copytree(REPO / "sample-app", root / "sample-app", ignore=shutil.ignore_patterns("node_modules"))
    shutil.copy(REPO / "kind-config.yaml", root / "kind-config.yaml")
    dep = root / "sample-app" / "k8s" / "deployment.yaml"
    text = dep.read_text()
    text = text[: text.index("          livenessProbe:")] + TIGHT_LIVENESS
    dep.write_text(text.replace("image: my-web-app:latest", "image: live-soak-app:latest"))
    port = free_port()
    # a registry left by an earlier run (the cluster was kept) keeps its port
    got = subprocess.run(
        [
            "docker",
            "inspect",
            "-f",
            "{{range $p, $b := .HostConfig.PortBindings}}{{range $b}}{{.HostPort}}{{end}}{{end}}",
            f"{CLUSTER}-registry",
        ],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    registry_port = int(got) if got.isdigit() else free_port()
    (root / "devloop.yaml").write_text(
        "apiVersion: devloop/v1\n"
        f"cluster:\n  name: {CLUSTER}\n  nodeImage: {harness.kind_image}\n"
        f"image:\n  name: live-soak-app\n  context: sample-app\n  buildArgs:\n    NODE_IMAGE: {harness.node_base}\n"
        "deploy:\n  manifests: [sample-app/k8s]\n  rolloutTimeout: 240\n"
        f"registry:\n  name: {CLUSTER}-registry\n  hostPort: {registry_port}\n  image: {harness.registry_image}\n"
        "liveUpdate:\n  enabled: true\n  command: [node, server.js]\n"
        f"portForward:\n  localPort: {port}\n"
        f"monitoring:\n  enabled: false\n  image: {harness.prometheus_image}\n"
        "dashboard:\n  enabled: false\n"
    )
    h = Harness(**{**harness.__dict__, "context": f"kind-{CLUSTER}"})
    yield root, h, port
    if not existed:
        subprocess.run(["kind", "delete", "cluster", "--name", CLUSTER], env=harness.env, check=False, capture_output=True)
        subprocess.run(["docker", "rm", "-f", "-v", f"{CLUSTER}-registry"], check=False, capture_output=True)


def answer(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
            return str(r.read().decode().strip())
    except OSError:
        return ""


def restart_counts(h: Harness) -> dict[str, int]:
    pods = h.kubectl_json("get", "pods", "-l", "app=web-app")["items"]
    return {p["metadata"]["name"]: sum(c.get("restartCount", 0) for c in p["status"].get("containerStatuses") or []) for p in pods}


def ready_pods(h: Harness) -> int:
    pods = h.kubectl_json("get", "pods", "-l", "app=web-app")["items"]
    return sum(1 for p in pods if any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions") or []))


def test_syncs_back_to_back_keep_every_container(soak_project: tuple[Path, Harness, int]) -> None:
    root, h, port = soak_project
    server = root / "sample-app" / "server.js"
    with devloops(h, root) as start:
        d = start("dev")
        first = d.wait_for(lambda e: e["event"] == "cycle_done", 900, "the first cycle")
        assert first["ok"], first.get("error")
        poll("the forward", 120, lambda: answer(port) or None)
        poll("3 ready replicas", 120, lambda: ready_pods(h) == 3 or None)
        before = restart_counts(h)
        assert len(before) == 3 and not any(before.values()), before
        for i in range(SYNCS):
            text = f"live soak {i} {uuid.uuid4().hex[:6]}"
            server.write_text(
                "".join(
                    f"const MESSAGE = '{text}';\n" if ln.startswith("const MESSAGE =") else ln for ln in server.read_text().splitlines(True)
                )
            )
            done = d.wait_for(lambda e: e["event"] == "cycle_done" and "server.js" in e.get("files", []), 180, f"sync {i}")
            why = [e["message"] for e in d.seen if "live update not possible" in e.get("message", "")]
            assert done["ok"] and done["synced"], f"sync {i} was not a live update: {why} {done}"
            poll(f"sync {i} served", 60, lambda t=text: answer(port) == t or None, interval=0.1)  # type: ignore[misc]
        after = restart_counts(h)
        lost = [e for e in d.seen if e["event"] == "warning" and "restarted" in e.get("message", "")]
        forced = [e for e in d.seen if e["event"] == "cycle_start" and "restarted" in e.get("reason", "")]
        assert d.interrupt() == 130
    assert after.keys() == before.keys(), f"pods were replaced: {before} -> {after}"
    assert not any(after.values()), f"containers restarted during the syncs: {after}"
    assert not lost and not forced, (lost, forced)
