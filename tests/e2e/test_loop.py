"""The whole loop on a real kind cluster, driven through the real `devloop` CLI.

The tests run in file order and share one cluster: `up` creates it, `down --cluster` removes it.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import CLUSTER, REPO, Devloop, Harness, children_of_cluster, poll, run_cli

pytestmark = pytest.mark.e2e

V1 = "Hello from devloop sample-app v1"


@pytest.fixture(scope="module", autouse=True)
def fresh_cluster(harness: Harness) -> Iterator[None]:
    """Nothing of devloop's left from earlier runs: no cluster, no registry, no built images."""
    import docker

    if CLUSTER in harness.kind_clusters():
        subprocess.run(["kind", "delete", "cluster", "--name", CLUSTER], env=harness.env, check=True)
    client = docker.from_env()
    for c in client.containers.list(all=True, filters={"label": "dev.devloop.role=registry"}):
        c.remove(force=True, v=True)
    for image_id in {i.id for i in client.images.list(name="my-web-app") + client.images.list(name="localhost:5001/my-web-app")}:
        client.images.remove(image_id, force=True)
    yield
    if CLUSTER in harness.kind_clusters():
        subprocess.run(["kind", "delete", "cluster", "--name", CLUSTER], env=harness.env, check=False)


def get(port: int, path: str = "/") -> tuple[int, str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read().decode().strip(), r.getheader("X-Pod-Name") or ""
    finally:
        conn.close()


def local_port(project: Path) -> int:
    import yaml

    return int(yaml.safe_load((project / "devloop.yaml").read_text())["portForward"]["localPort"])


def served_by_every_pod(harness: Harness) -> dict[str, str]:
    """What each ready web-app pod answers on :3000, asked from inside the pod."""
    pods = harness.kubectl_json("get", "pods", "-l", "app=web-app")["items"]
    answers = {}
    for p in pods:
        if p["metadata"].get("deletionTimestamp"):
            continue
        name = p["metadata"]["name"]
        js = "require('http').get('http://127.0.0.1:3000/',r=>{let b='';r.on('data',c=>b+=c);r.on('end',()=>console.log(b.trim()))})"
        answers[name] = harness.kubectl_run("exec", name, "--", "node", "-e", js).stdout.strip()
    return answers


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new))


def up_service(events: list[dict[str, Any]], name: str = "web-app") -> dict[str, Any]:
    up = next(e for e in events if e["event"] == "up")
    return next(s for s in up["services"] if s["service"] == name)


def cycle_done(ok: bool) -> Any:
    return lambda e: e["event"] == "cycle_done" and e["ok"] is ok


def test_up_from_nothing(harness: Harness, project: Path) -> None:
    assert CLUSTER not in harness.kind_clusters()
    code, events, output = run_cli(harness, project, "up")
    assert code == 0, output
    assert CLUSTER in harness.kind_clusters()
    done = [e for e in events if e["event"] == "cycle_done"][-1]
    assert done["ok"] and done["service"] == "web-app" and set(done["phases"]) >= {"build", "publish", "deploy", "rollout"}
    up = up_service(events)
    assert up["built"] and up["published"] and len(up["ready_pods"]) == 3
    forward = up["forwards"][0]
    assert forward["http_status"] == 200 and forward["response"].strip() == V1  # through devloop's port-forward
    dep = harness.kubectl_json("get", "deployment", "web-app")
    assert dep["status"]["readyReplicas"] == 3
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == up["image"] and ":dl-" in container["image"]
    assert container["imagePullPolicy"] == "IfNotPresent"
    # the manifests on disk are the seed's, untouched
    for f in ("deployment.yaml", "service.yaml", "monitoring.yaml"):
        assert (project / "sample-app" / "k8s" / f).read_text() == (REPO / "sample-app" / "k8s" / f).read_text()
    assert harness.kubectl_json("get", "service", "web-app-service")["spec"]["type"] == "LoadBalancer"
    assert harness.kubectl_json("get", "configmap", "prometheus-config")["data"]["prometheus.yml"]


def test_second_up_rebuilds_and_loads_nothing(harness: Harness, project: Path) -> None:
    code, events, output = run_cli(harness, project, "up")
    assert code == 0, output
    up = up_service(events)
    assert up["built"] is False and up["published"] is False
    assert len(up["ready_pods"]) == 3


def test_status_reports_ready_replicas(harness: Harness, project: Path) -> None:
    code, events, output = run_cli(harness, project, "status")
    assert code == 0, output
    status = next(e for e in events if e["event"] == "status")
    (svc,) = status["services"]
    assert svc["ready"] == 3 and svc["replicas"] == 3 and svc["healthy"] and status["healthy"]
    assert all(not p["failing"] for p in svc["pods"])


def test_dev_edit_reaches_every_replica_and_failures_keep_old_version(harness: Harness, project: Path, run_devloop: Any) -> None:
    port = local_port(project)
    d: Devloop = run_devloop("dev")
    d.wait_for(lambda e: e["event"] == "port_forward" and e["ready"], 300, "the port-forward to be ready")
    assert get(port)[1] == V1

    # 1. a source edit reaches every replica
    server = project / "sample-app" / "server.js"
    edit(server, V1, "Hello from devloop sample-app v2")
    done = d.wait_for(lambda e: e["event"] == "cycle_done", 300, "the edit's cycle")
    assert done["ok"], done["error"]
    assert done["files"] == ["server.js"]
    assert set(done["phases"]) >= {"build", "publish", "deploy", "rollout"}
    # the push says what travelled: a one-line edit is one small layer, the rest already there
    said = [json.loads(line) for line in d.raw if line.startswith("{")]
    publish = [e["detail"] for e in said if e["event"] == "phase" and e["phase"] == "publish"][-1]
    assert re.fullmatch(r"pushed \d+(\.\d)? (B|kB) in 1 new layer, \d+ already there", publish), publish
    d.wait_for(lambda e: e["event"] == "port_forward" and e["ready"], 60, "the port-forward after the rollout")
    assert {get(port)[1] for _ in range(6)} == {"Hello from devloop sample-app v2"}
    answers = served_by_every_pod(harness)
    assert len(answers) == 3 and set(answers.values()) == {"Hello from devloop sample-app v2"}, answers

    # 2. a syntax error crashes the new pod: reported, old version keeps serving
    edit(server, "const MESSAGE =", "const MESSAGE = = ")
    failed = d.wait_for(lambda e: e["event"] == "cycle_done", 300, "the broken edit's cycle")
    assert not failed["ok"] and failed["error"]["phase"] == "rollout"
    assert "CrashLoopBackOff" in failed["error"]["message"] or "exited with code" in failed["error"]["message"]
    assert any("SyntaxError" in line for line in failed["error"]["details"]), failed["error"]
    assert "keeps serving (3/3 ready pods run it" in failed["outcome"], failed  # checked, not assumed (readiness probes)
    assert {get(port)[1] for _ in range(6)} == {"Hello from devloop sample-app v2"}

    # 3. a Dockerfile that fails to build: the failing step is named, nothing is deployed
    edit(server, "const MESSAGE = = ", "const MESSAGE =")  # fix the code ...
    dockerfile = project / "sample-app" / "Dockerfile"
    edit(dockerfile, "CMD [", "RUN exit 3\nCMD [")  # ... but break the build in the same save batch
    broken = d.wait_for(lambda e: e["event"] == "cycle_done", 300, "the broken build's cycle")
    assert not broken["ok"] and broken["error"]["phase"] == "build"
    assert "RUN exit 3" in broken["error"]["message"]
    assert {get(port)[1] for _ in range(3)} == {"Hello from devloop sample-app v2"}

    # 4. fixing the file recovers
    edit(dockerfile, "RUN exit 3\nCMD [", "CMD [")
    edit(server, "Hello from devloop sample-app v2", "Hello from devloop sample-app v3")
    fixed = d.wait_for(lambda e: e["event"] == "cycle_done", 300, "the fixed cycle")
    assert fixed["ok"], fixed["error"]
    d.wait_for(lambda e: e["event"] == "port_forward" and e["ready"], 60, "the port-forward after the recovery")
    assert get(port)[1] == "Hello from devloop sample-app v3"
    assert set(served_by_every_pod(harness).values()) == {"Hello from devloop sample-app v3"}

    # 5. Ctrl-C: exit 130, nothing left running, the forwarded port released
    assert d.interrupt() == 130
    assert children_of_cluster() == []
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def set_config(project: Path, **sections: str) -> None:
    """Replace or add top-level sections of the e2e project's devloop.yaml (YAML text per section)."""
    import yaml

    doc = yaml.safe_load((project / "devloop.yaml").read_text())
    for key, text in sections.items():
        doc[key] = yaml.safe_load(text)
    (project / "devloop.yaml").write_text(yaml.safe_dump(doc))


def test_kind_load_path_without_registry(harness: Harness, project: Path) -> None:
    original = (project / "devloop.yaml").read_text()
    try:
        set_config(project, registry=f"{{enabled: false, image: {harness.registry_image}}}")
        server = project / "sample-app" / "server.js"
        text = server.read_text()
        current = next(line for line in text.splitlines() if line.startswith("const MESSAGE ="))
        server.write_text(text.replace(current, "const MESSAGE = 'Hello via kind load';"))
        code, events, output = run_cli(harness, project, "up")
        assert code == 0, output
        up = up_service(events)
        assert up["published"] and not up["image"].startswith("localhost:")
        assert up["forwards"][0]["response"].strip() == "Hello via kind load"
        code, events, output = run_cli(harness, project, "up")
        assert code == 0 and up_service(events)["published"] is False  # already on the node
    finally:
        (project / "devloop.yaml").write_text(original)


def test_port_already_taken_is_a_warning_not_a_hang(harness: Harness, project: Path, run_devloop: Any) -> None:
    import socket

    with socket.socket() as s:
        # another program listening there (SO_REUSEADDR: the earlier tests' connections may leave TIME-WAIT entries)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", local_port(project)))
        s.listen()
        d: Devloop = run_devloop("dev")
        warning = d.wait_for(lambda e: e["event"] == "warning", 300, "a warning about the port")
        assert "already in use" in warning["message"] and "portForward.localPort" in warning["hint"]
        assert any(e["event"] == "info" and "watching" in e["message"] for e in d.seen)  # the loop runs without the forward
        assert d.interrupt() == 130
    assert children_of_cluster() == []


def test_live_update_syncs_without_new_pods_and_survives_a_restart(harness: Harness, project: Path, run_devloop: Any) -> None:
    port = local_port(project)
    original = (project / "devloop.yaml").read_text()
    set_config(project, liveUpdate="{enabled: true}")
    d: Devloop = run_devloop("dev")
    try:
        first = d.wait_for(lambda e: e["event"] == "cycle_done", 300, "the first cycle")
        assert first["ok"], first["error"]
        d.wait_for(lambda e: e["event"] == "port_forward" and e["ready"], 120, "the port-forward")
        pods_before = set(served_by_every_pod(harness))
        server = project / "sample-app" / "server.js"
        text = server.read_text()
        current = next(line for line in text.splitlines() if line.startswith("const MESSAGE ="))
        server.write_text(text.replace(current, "const MESSAGE = 'Hello live';"))
        done = d.wait_for(lambda e: e["event"] == "cycle_done", 120, "the live-update cycle")
        assert done["ok"], done["error"]
        why = [
            e["message"]
            for e in d.seen
            if e["event"] in ("detail", "warning") and ("live update" in e["message"] or "restarted" in e["message"])
        ]
        assert "sync" in done["phases"] and "build" not in done["phases"] and "rollout" not in done["phases"], (done, why)
        answers = served_by_every_pod(harness)
        assert set(answers) == pods_before  # the same pods: nothing was rolled
        assert set(answers.values()) == {"Hello live"}, answers
        assert get(port)[1] == "Hello live"

        # a container restart brings back the image's code: devloop notices and rebuilds
        victim = sorted(pods_before)[0]
        harness.kubectl_run("exec", victim, "--", "sh", "-c", "kill -TERM 1")  # the container exits and restarts
        warned = d.wait_for(lambda e: e["event"] == "warning" and "restarted" in e["message"], 120, "the restart warning")
        assert victim in warned["message"]
        rebuilt = d.wait_for(lambda e: e["event"] == "cycle_done", 300, "the rebuild after the restart")
        assert rebuilt["ok"], rebuilt["error"]
        assert "build" in rebuilt["phases"] and "rollout" in rebuilt["phases"]
        assert set(served_by_every_pod(harness).values()) == {"Hello live"}
        assert d.interrupt() == 130
    finally:
        (project / "devloop.yaml").write_text(original)


@pytest.mark.parametrize("phase", ["build", "publish", "deploy", "rollout"])
def test_ctrl_c_during_a_phase_exits_130_and_leaves_nothing_running(harness: Harness, project: Path, run_devloop: Any, phase: str) -> None:
    config_before = (project / "devloop.yaml").read_text()
    if phase == "publish":  # the kind-load path: docker save + kind load image-archive take seconds
        set_config(project, registry=f"{{enabled: false, image: {harness.registry_image}}}")
    d: Devloop = run_devloop("dev")
    d.wait_for(lambda e: e["event"] == "port_forward" and e["ready"], 300, "the first cycle and its port-forward")
    dockerfile = project / "sample-app" / "Dockerfile"
    server = project / "sample-app" / "server.js"
    before = (dockerfile.read_text(), server.read_text())
    try:
        if phase == "build":
            edit(dockerfile, "CMD [", "RUN sleep 60\nCMD [")  # a slow build step
        elif phase == "rollout":
            edit(server, "path === '/healthz'", "path === '/never-healthy'")  # readiness never passes: the rollout waits
        else:
            edit(server, "const MESSAGE =", f"const UNUSED_{phase} = 1;\nconst MESSAGE =")
        d.wait_for(lambda e: e["event"] == "phase_start" and e["phase"] == phase, 300, f"the {phase} phase to start")
        if phase == "publish":  # docker save, then `kind load` as a child: Ctrl-C must stop it too
            poll("`kind load` running", 120, lambda: children_of_cluster() or None, interval=0.2)
        # build is docker's; deploy and rollout run in devloop itself, on its API connection: no child to leave
        assert d.interrupt(timeout=30) == 130
        assert children_of_cluster() == []
    finally:
        dockerfile.write_text(before[0])
        server.write_text(before[1])
        (project / "devloop.yaml").write_text(config_before)


def test_hundred_saves_in_a_second_make_at_most_two_cycles_and_the_last_is_served(
    harness: Harness, project: Path, run_devloop: Any
) -> None:
    port = local_port(project)
    d: Devloop = run_devloop("dev")
    d.wait_for(lambda e: e["event"] == "port_forward" and e["ready"], 300, "the port-forward")
    server = project / "sample-app" / "server.js"
    text = server.read_text()
    current = next(line for line in text.splitlines() if line.startswith("const MESSAGE ="))
    for i in range(100):
        server.write_text(text.replace(current, f"const MESSAGE = 'save {i}';"))
    # the tag devloop must end on: the content hash of the final tree (what the last save wrote)
    from devloop import config as config_mod
    from devloop.images import ContextHasher, content_tag

    img = config_mod.load(None, project).services[0].image
    want = content_tag(ContextHasher().digest(img.context, img.dockerfile, img.build_args))
    done = d.wait_for(
        lambda e: e["event"] == "cycle_done" and e["ok"] and str(e["image"]).endswith(want), 300, "the cycle of the last save"
    )
    d.wait_for(lambda e: e["event"] == "port_forward" and e["ready"], 60, "the port-forward after the rollout")
    assert get(port)[1] == "save 99", done
    assert set(served_by_every_pod(harness).values()) == {"save 99"}
    assert d.interrupt() == 130
    starts = [e for e in d.seen if e["event"] == "cycle_start" and e["reason"] != "up"]
    assert 1 <= len(starts) <= 2, starts


def test_down_removes_what_up_applied(harness: Harness, project: Path) -> None:
    code, _events, output = run_cli(harness, project, "down")
    assert code == 0, output
    for kind, name in (("deployment", "web-app"), ("service", "web-app-service"), ("configmap", "prometheus-config")):
        r = harness.kubectl_run("get", kind, name, check=False)
        assert r.returncode != 0 and "NotFound" in r.stderr, (kind, r.stdout)
    assert CLUSTER in harness.kind_clusters()


def test_down_cluster_deletes_the_cluster(harness: Harness, project: Path) -> None:
    import docker

    code, _, output = run_cli(harness, project, "down", "--cluster")
    assert code == 0, output
    assert CLUSTER not in harness.kind_clusters()
    assert docker.from_env().containers.list(all=True, filters={"label": "dev.devloop.role=registry"}) == []
    code, _, output = run_cli(harness, project, "down", "--cluster")  # idempotent
    assert code == 0, output
