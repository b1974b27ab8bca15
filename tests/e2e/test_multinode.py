"""devloop on a multi-node kind cluster: one control plane (tainted) and two workers.

The cluster (tests/e2e/kind/multinode.yaml, its own name `devloop-multi`) is created here with the
pinned kind and the e2e node image, and deleted at the end; devloop finds it existing. The tests run
in file order and share it:

1. the local-registry path: every worker that runs a replica pulls the image from devloop's registry;
2. `devloop dev`: an edit reaches the three replicas, spread over both workers, each asked by a pod
   on another node through its pod IP (cross-node pod networking);
3. the `kind load` path: `up` loads the image only into the nodes that lack it (one worker has it
   already), and the next `up` of the same content loads nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import KIND_DIR, REPO, Devloop, Harness, devloops, free_port, poll, run_cli

pytestmark = pytest.mark.e2e

CLUSTER = "devloop-multi"
CONTEXT = f"kind-{CLUSTER}"
CONFIG = KIND_DIR / "multinode.yaml"
REGISTRY = "devloop-multi-registry"  # its own registry container: other clusters' registry is not touched
CONTROL_PLANE = f"{CLUSTER}-control-plane"
WORKERS = [f"{CLUSTER}-worker", f"{CLUSTER}-worker2"]
NODES = [CONTROL_PLANE, *WORKERS]
V1 = "Hello from devloop sample-app v1"
V2 = "Hello from devloop on several nodes"
APP = "devloop-multi-app"  # its own image name: other tests' clean-up of my-web-app images never touches it

# Three replicas, at most one apart per node: 2 + 1 over the two workers (the control plane is tainted:
# nodeTaintsPolicy Honor leaves it out of the count), counted per ReplicaSet so a rollout is not held
# back by the old pods.
SPREAD = [
    {
        "maxSkew": 1,
        "topologyKey": "kubernetes.io/hostname",
        "whenUnsatisfiable": "DoNotSchedule",
        "labelSelector": {"matchLabels": {"app": "web-app"}},
        "matchLabelKeys": ["pod-template-hash"],
        "nodeTaintsPolicy": "Honor",
    }
]


def kind(h: Harness, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["kind", *args], env=h.env, capture_output=True, text=True, timeout=timeout)


def remove_registry_and_images() -> None:
    """devloop's registry for this cluster, and the images this file's projects built."""
    import docker

    client = docker.from_env()
    with contextlib.suppress(docker.errors.NotFound):
        client.containers.get(REGISTRY).remove(force=True, v=True)
    for image in client.images.list():
        if any(t.rpartition(":")[0].rpartition("/")[2] == APP for t in image.tags):
            with contextlib.suppress(docker.errors.APIError):
                client.images.remove(image.id, force=True)


@pytest.fixture(scope="module")
def multi(harness: Harness) -> Iterator[Harness]:
    """The cluster, Ready with all three nodes; deleted (with devloop's registry for it) at the end."""
    h = dataclasses.replace(harness, context=CONTEXT)
    if CLUSTER in h.kind_clusters():  # left by an interrupted run of this file (the name is this file's own)
        kind(h, "delete", "cluster", "--name", CLUSTER)
    remove_registry_and_images()
    t = time.monotonic()
    p = kind(h, "create", "cluster", "--name", CLUSTER, "--config", str(CONFIG), "--image", h.kind_image, "--wait", "180s")
    if p.returncode != 0:
        kind(h, "delete", "cluster", "--name", CLUSTER)
        why = f"kind could not create the multi-node cluster {CLUSTER}:\n{p.stderr[-3000:]}"
        if os.environ.get("CI") == "true":
            pytest.fail(why, pytrace=False)
        pytest.skip(why)
    print(f"\n{CLUSTER}: 3 nodes created and Ready in {time.monotonic() - t:.1f}s")
    try:
        assert sorted(kind(h, "get", "nodes", "--name", CLUSTER).stdout.split()) == sorted(NODES)
        yield h
    finally:
        t = time.monotonic()
        kind(h, "delete", "cluster", "--name", CLUSTER)
        remove_registry_and_images()
        print(f"\n{CLUSTER}: deleted in {time.monotonic() - t:.1f}s")


@pytest.fixture(scope="module")
def project(multi: Harness, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample app as a user's project pointed at the existing cluster, its Deployment spread over the workers."""
    root = tmp_path_factory.mktemp("multi") / "proj"
    shutil.copytree(REPO / "sample-app", root / "sample-app", ignore=shutil.ignore_patterns("node_modules"))
    shutil.copy(CONFIG, root / "kind-config.yaml")
    deployment = root / "sample-app" / "k8s" / "deployment.yaml"
    doc = yaml.safe_load(deployment.read_text())
    doc["spec"]["template"]["spec"]["topologySpreadConstraints"] = SPREAD
    doc["spec"]["template"]["spec"]["containers"][0]["image"] = f"{APP}:latest"
    deployment.write_text(yaml.safe_dump(doc, sort_keys=False))
    config = {
        "apiVersion": "devloop/v1",
        "cluster": {"name": CLUSTER, "nodeImage": multi.kind_image, "kindConfig": "kind-config.yaml"},
        "image": {"name": APP, "buildArgs": {"NODE_IMAGE": multi.node_base}},
        "registry": {"name": REGISTRY, "hostPort": free_port(), "image": multi.registry_image},
        "monitoring": {"enabled": False, "image": multi.prometheus_image},
        "dashboard": {"enabled": False},
        "portForward": {"localPort": free_port()},
        "deploy": {"rolloutTimeout": 240},
    }
    (root / "devloop.yaml").write_text(yaml.safe_dump(config))
    return root


def set_registry(project: Path, enabled: bool) -> None:
    doc = yaml.safe_load((project / "devloop.yaml").read_text())
    doc["registry"]["enabled"] = enabled
    (project / "devloop.yaml").write_text(yaml.safe_dump(doc))


def devloop_up(h: Harness, project: Path, what: str) -> tuple[int, list[dict[str, Any]], str]:
    """`devloop up`; its wall time and phases printed (the CI log shows where the module's time goes)."""
    t = time.monotonic()
    code, events, output = run_cli(h, project, "up")
    phases = {k: round(v, 1) for e in events if e["event"] == "cycle_done" for k, v in e["phases"].items()}
    print(f"\n{CLUSTER}: up ({what}) {time.monotonic() - t:.1f}s, phases {phases}")
    return code, events, output


def up_service(events: list[dict[str, Any]]) -> dict[str, Any]:
    up = next(e for e in events if e["event"] == "up")
    return next(s for s in up["services"] if s["service"] == "web-app")


def pods(h: Harness) -> list[dict[str, Any]]:
    """The web-app pods that are not going away."""
    items = h.kubectl_json("get", "pods", "-l", "app=web-app")["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def three(found: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    return found if len(found) == 3 else None


def placement(h: Harness) -> dict[str, str]:
    """pod name -> node, for the running pods."""
    return {p["metadata"]["name"]: p["spec"]["nodeName"] for p in pods(h)}


def node_images(node: str) -> set[str]:
    """What the node's containerd holds, as `crictl images` lists it."""
    out = subprocess.run(["docker", "exec", node, "crictl", "images", "-o", "json"], capture_output=True, text=True, check=True)
    return {tag for img in json.loads(out.stdout)["images"] for tag in img.get("repoTags") or []}


def ask(h: Harness, from_pod: str, url: str) -> str:
    """GET `url` from inside `from_pod` (its Node.js runtime), the response body."""
    js = (
        f"require('http').get({url!r},r=>{{let b='';r.on('data',c=>b+=c);r.on('end',()=>console.log(r.statusCode+' '+b.trim()))}})"
        ".on('error',e=>{console.log('error '+e.message);process.exit(1)})"
    )
    r = h.kubectl_run("exec", from_pod, "--", "node", "-e", js, check=False)
    return (r.stdout or r.stderr).strip()


class EventWatcher:
    """`ctr -n k8s.io events` on a node (containerd's image/container events) until stopped."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.proc = subprocess.Popen(
            ["docker", "exec", node, "sh", "-c", "echo $$; exec ctr -n k8s.io events"], stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        self.pid = int(self.proc.stdout.readline())

    def stop(self) -> str:
        """What it printed; the ctr process in the node is ended by its own pid."""
        subprocess.run(["docker", "exec", self.node, "kill", str(self.pid)], check=False, capture_output=True)
        return self.proc.communicate(timeout=30)[0]


def test_registry_path_every_worker_pulls_from_the_local_registry(multi: Harness, project: Path) -> None:
    code, events, output = devloop_up(multi, project, "registry path")
    assert code == 0, output
    up = up_service(events)
    assert up["built"] and up["published"] and len(up["ready_pods"]) == 3, output
    image = up["image"]
    host = f"localhost:{yaml.safe_load((project / 'devloop.yaml').read_text())['registry']['hostPort']}"
    assert image.startswith(f"{host}/{APP}:dl-"), image
    assert up["forwards"][0]["response"].strip() == V1

    # every node knows the registry (devloop wired all three) ...
    for node in NODES:
        hosts = subprocess.run(
            ["docker", "exec", node, "cat", f"/etc/containerd/certs.d/{host}/hosts.toml"], capture_output=True, text=True
        )
        assert hosts.returncode == 0 and f"http://{REGISTRY}:5000" in hosts.stdout, (node, hosts.stderr)
    # ... the replicas run on both workers, and each worker pulled the image from it (nothing was loaded)
    where = placement(multi)
    assert len(where) == 3 and set(where.values()) == set(WORKERS), where
    for p in pods(multi):
        status = p["status"]["containerStatuses"][0]
        assert status["ready"] and status["image"] == image, status
    for node in WORKERS:
        assert image in node_images(node), node
    assert image not in node_images(CONTROL_PLANE)  # no replica there: nothing pulled
    pulled = multi.kubectl_json("get", "events", "--field-selector", "reason=Pulled")["items"]
    pulled_on = {e["source"].get("host") for e in pulled if f'Successfully pulled image "{image}"' in e["message"]}
    assert pulled_on == set(WORKERS), [e["message"] for e in pulled]


def test_dev_edit_reaches_every_replica_on_both_workers(multi: Harness, project: Path) -> None:
    with devloops(multi, project) as start:
        d: Devloop = start("dev")
        d.wait_for(lambda e: e["event"] == "port_forward" and e["ready"], 300, "the port-forward to be ready")
        server = project / "sample-app" / "server.js"
        server.write_text(server.read_text().replace(V1, V2))
        done = d.wait_for(lambda e: e["event"] == "cycle_done", 300, "the edit's cycle")
        assert done["ok"], done["error"]
        print(f"\n{CLUSTER}: dev edit cycle, phases { {k: round(v, 1) for k, v in done['phases'].items()} }")
        assert set(done["phases"]) >= {"build", "publish", "deploy", "rollout"}

        # the new replicas: three, on both workers (2 + 1), none left of the old version
        image = next(c["image"] for c in multi.kubectl_json("get", "deployment", "web-app")["spec"]["template"]["spec"]["containers"])
        new = poll("3 pods, all of the new version", 60, lambda: three(pods(multi)))
        assert {p["spec"]["containers"][0]["image"] for p in new} == {image}, new
        assert {p["spec"]["nodeName"] for p in new} == set(WORKERS), [(p["metadata"]["name"], p["spec"]["nodeName"]) for p in new]
        # every replica serves the edit, asked through its pod IP by a replica on the other worker:
        # a request from a pod on one node to a pod on another (routes between the nodes' pod ranges)
        for target in new:
            ip = target["status"]["podIP"]
            other = next(p for p in new if p["spec"]["nodeName"] != target["spec"]["nodeName"])
            answer = ask(multi, other["metadata"]["name"], f"http://{ip}:3000/")
            assert answer == f"200 {V2}", (other["spec"]["nodeName"], "->", target["spec"]["nodeName"], ip, answer)
        # and the cluster's DNS and Service work from both workers (CoreDNS runs on one node only)
        for node in WORKERS:
            client = next(p for p in new if p["spec"]["nodeName"] == node)
            assert ask(multi, client["metadata"]["name"], "http://web-app-service/") == f"200 {V2}", node
        assert d.interrupt() == 130


def test_kind_load_only_into_the_nodes_that_lack_the_image(multi: Harness, project: Path) -> None:
    set_registry(project, enabled=False)
    image = next(c["image"] for c in multi.kubectl_json("get", "deployment", "web-app")["spec"]["template"]["spec"]["containers"])
    local = image.split("/", 1)[1]  # devloop-multi-app:dl-…, built by the last cycle and still in docker
    stored = f"docker.io/library/{local}"
    assert all(stored not in node_images(n) for n in NODES)

    # one worker has the image already, under the name `kind load` gives it: it pulled the same content
    # from the registry (the previous tests), so a tag in its containerd is that pre-load, without
    # moving 300 MB through `docker save` and `kind load` once more
    worker, others = WORKERS[0], [CONTROL_PLANE, WORKERS[1]]
    assert image in node_images(worker)
    subprocess.run(["docker", "exec", worker, "ctr", "-n", "k8s.io", "images", "tag", image, stored], check=True, capture_output=True)
    assert stored in node_images(worker)

    # containerd's image events on every node while devloop runs: which nodes got the image imported
    watchers = {n: EventWatcher(n) for n in NODES}
    try:
        code, events, output = devloop_up(multi, project, "kind load, one worker pre-loaded")
    finally:
        seen = {n: w.stop() for n, w in watchers.items()}
    assert code == 0, output
    up = up_service(events)
    assert up["image"] == local and up["built"] is False and up["published"] is True, output
    (note,) = [e["message"] for e in events if e["event"] == "info" and "loading" in e.get("message", "")]
    assert note.startswith(f"web-app: loading {local} into "), note
    assert sorted(note.rpartition(" into ")[2].split(", ")) == sorted(others), note
    for n in NODES:
        imported = [line for line in seen[n].splitlines() if "/images/" in line and stored in line]
        assert bool(imported) == (n in others), (n, imported)
        assert stored in node_images(n), n
    assert {p["status"]["containerStatuses"][0]["image"] for p in pods(multi)} == {stored}
    assert set(placement(multi).values()) == set(WORKERS)
    assert up["forwards"][0]["response"].strip() == V2

    # the same content again: every node has it, nothing is loaded
    code, events, output = devloop_up(multi, project, "kind load, same content")
    assert code == 0, output
    again = up_service(events)
    assert again["built"] is False and again["published"] is False and len(again["ready_pods"]) == 3, output
    assert not [e for e in events if e["event"] == "info" and "loading" in e.get("message", "")]
