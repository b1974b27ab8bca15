"""A laptop's faults, on the real parts (issue 13): the cycle in progress may fail, `devloop dev`
survives, and the next save recovers with nothing lost.

The real CLI on a real kind cluster. The module uses its own registry container and port, so
removing it never touches another project's registry. The module brings the cluster up once and
deletes it at the end (DEVLOOP_E2E_KEEP_CLUSTER=1 keeps it, for working on these tests).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.e2e.conftest import CLUSTER, Devloop, Harness, children_of_cluster, devloop_argv, free_port, poll, run_cli
from tests.e2e.test_loop import edit, get, local_port

pytestmark = pytest.mark.e2e

REGISTRY = "devloop-e2e-faults-registry"
NODE = f"{CLUSTER}-control-plane"


@pytest.fixture(scope="module", autouse=True)
def cluster_up(harness: Harness, project: Path) -> Iterator[None]:
    config = project / "devloop.yaml"
    config.write_text(
        config.read_text().replace(
            f"registry:\n  image: {harness.registry_image}\n",
            f"registry:\n  image: {harness.registry_image}\n  name: {REGISTRY}\n  hostPort: {free_port()}\n",
        )
    )
    assert REGISTRY in config.read_text()
    for c in docker.from_env().containers.list(all=True, filters={"name": f"^{REGISTRY}$"}):
        c.remove(force=True, v=True)  # an earlier run's, on another port
    code, _events, output = run_cli(harness, project, "up")
    assert code == 0, output
    yield
    if os.environ.get("DEVLOOP_E2E_KEEP_CLUSTER") != "1":
        run_cli(harness, project, "down", "--cluster")


@pytest.fixture(autouse=True)
def nothing_left_behind() -> Iterator[None]:
    """After each test: what a devloop the harness had to kill (a failed test) could not stop itself,
    so that the next test starts on free ports."""
    yield
    for line in children_of_cluster():
        os.kill(int(line.split(":")[0]), signal.SIGKILL)


def set_message(project: Path, text: str) -> None:
    server = project / "sample-app" / "server.js"
    line = next(line for line in server.read_text().splitlines() if line.startswith("const MESSAGE ="))
    edit(server, line, f"const MESSAGE = '{text}';")


def answers(port: int, text: str) -> Any:
    """What a user's browser sees: the forwarded URL answers `text` (None while it does not)."""
    status, body, _pod = get(port)
    return True if status == 200 and body == text else None


def dev_ready(run_devloop: Any) -> Devloop:
    d: Devloop = run_devloop("dev")
    d.wait_for(lambda e: e["event"] == "port_forward" and e["ready"], 300, "the port-forward")
    return d


# Starts a command as a terminal's shell would: SIGHUP at its default. A test runner started under
# nohup (a CI job in the background) passes SIGHUP on ignored, which devloop rightly respects.
AS_FROM_A_TERMINAL = "import os, signal, sys; signal.signal(signal.SIGHUP, signal.SIG_DFL); os.execvp(sys.argv[1], sys.argv[1:])"


def test_sighup_stops_everything_devloop_started(harness: Harness, project: Path) -> None:
    """The terminal closes: the shell sends SIGHUP. devloop stops what it started, as on Ctrl-C."""
    proc = subprocess.Popen(
        [sys.executable, "-c", AS_FROM_A_TERMINAL, *devloop_argv("dev")],
        cwd=project,
        env=harness.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    d = Devloop(proc)
    d.start_reader()
    try:
        d.wait_for(lambda e: e["event"] == "port_forward" and e["ready"], 300, "the port-forward")
        sighup_stops_everything(d)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def sighup_stops_everything(d: Devloop) -> None:
    # forwards, pod watches and log streams run in devloop (on its API connection): kubectl children are rare
    d.proc.send_signal(signal.SIGHUP)
    assert d.proc.wait(60) == 130, "".join(d.raw[-20:])
    assert any(e.get("event") == "info" and "stopping everything" in e.get("message", "") for e in d.seen + list(d.events.queue))
    left = poll("no kubectl left", 10, lambda: None if children_of_cluster() else True, interval=0.2)
    assert left and not children_of_cluster()


def message(project: Path) -> str:
    text = (project / "sample-app" / "server.js").read_text()
    found = re.search(r"^const MESSAGE = '(.*)';$", text, re.M)
    assert found, "the sample's MESSAGE line"
    return found.group(1)


def running_image(harness: Harness) -> str:
    dep = harness.kubectl_json("get", "deployment", "web-app")
    return str(dep["spec"]["template"]["spec"]["containers"][0]["image"])


def print_into_pod_logs(harness: Harness, marker: str) -> None:
    """A line in every web-app pod's log, as the app would print it (its stdout is PID 1's)."""
    pods = harness.kubectl_json("get", "pods", "-l", "app=web-app")["items"]
    for p in pods:
        if not p["metadata"].get("deletionTimestamp"):
            harness.kubectl_run("exec", p["metadata"]["name"], "--", "sh", "-c", f"echo {marker} > /proc/1/fd/1")


def api_warnings(d: Devloop) -> list[dict[str, Any]]:
    return [e for e in d.seen if e["event"] == "warning" and "API server" in e["message"] and "does not answer" in e["message"]]


def assert_save_rolls_out(d: Devloop, project: Path, port: int, text: str) -> None:
    set_message(project, text)
    done = d.wait_for(lambda e: e["event"] == "cycle_done", 300, f"the save of {text!r}")
    assert done["ok"], done
    poll(f"{text!r} through the forwarded URL", 60, lambda: answers(port, text))


def test_api_server_away_for_30s(harness: Harness, project: Path, run_devloop: Any) -> None:
    """The node container is paused for 30 s (a laptop's suspended VM, a stuck Docker Desktop): the
    API server and the pods stop answering without going away. devloop says so once, does not hang,
    and the forward and the log streams come back; the next save rolls out."""
    port = local_port(project)
    d = dev_ready(run_devloop)
    pace = threading.Event()  # never set: its wait() is the fault's length, it synchronises nothing
    subprocess.run(["docker", "pause", NODE], check=True)
    try:
        d.wait_for(lambda e: e["event"] == "warning" and "API server" in e["message"], 60, "the API outage reported")
        pace.wait(30)
    finally:
        subprocess.run(["docker", "unpause", NODE], check=True)
    d.wait_for(lambda e: e["event"] == "info" and "answers again" in e["message"], 120, "the API server back")
    d.wait_for(lambda e: e["event"] == "port_forward" and e["ready"], 120, "the forward after the outage")
    poll("the URL answers again", 60, lambda: answers(port, message(project)))
    print_into_pod_logs(harness, "after-the-pause")
    d.wait_for(lambda e: e["event"] == "log" and "after-the-pause" in e["line"], 60, "the pods' logs after the outage")
    assert len(api_warnings(d)) == 1, api_warnings(d)
    assert_save_rolls_out(d, project, port, "after the pause")
    assert d.interrupt() == 130
    assert "Traceback" not in "".join(d.raw)
    assert not children_of_cluster()


def test_the_node_restarted_while_dev_runs(harness: Harness, project: Path, run_devloop: Any) -> None:
    """`docker restart` of the kind node (Docker Desktop restarted, a laptop rebooted its VM): the API
    server goes away and comes back, the pods restart. devloop says so once, then resumes the
    forward and the log streams; the next save rolls out."""
    port = local_port(project)
    d = dev_ready(run_devloop)
    subprocess.run(["docker", "restart", NODE], check=True, timeout=180)
    d.wait_for(lambda e: e["event"] == "warning" and "API server" in e["message"], 120, "the API outage reported")
    d.wait_for(lambda e: e["event"] == "info" and "answers again" in e["message"], 300, "the API server back")
    d.wait_for(lambda e: e["event"] == "port_forward" and e["ready"], 300, "the forward after the restart")
    poll("the URL answers again", 120, lambda: answers(port, message(project)))
    print_into_pod_logs(harness, "after-the-restart")
    d.wait_for(lambda e: e["event"] == "log" and "after-the-restart" in e["line"], 60, "the pods' logs after the restart")
    assert len(api_warnings(d)) == 1, api_warnings(d)
    assert_save_rolls_out(d, project, port, "after the node restart")
    assert d.interrupt() == 130
    assert "Traceback" not in "".join(d.raw)
    assert not children_of_cluster()


def registry_has(port: int, ref: str) -> bool:
    import http.client

    repo, _, tag = ref.split("/", 1)[1].rpartition(":")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("HEAD", f"/v2/{repo}/manifests/{tag}", headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
        return conn.getresponse().status == 200
    finally:
        conn.close()


def test_the_registry_removed_mid_push_is_created_again(harness: Harness, project: Path, run_devloop: Any) -> None:
    """`docker rm -f -v` of the local registry while a save is being pushed (a `docker system prune
    --volumes`, a cleanup script): the registry and its images are gone. devloop creates it again,
    wired into the node as before, pushes the save and again what the cluster runs (a pod that must
    pull it again finds it); the save, or the next one, rolls out."""
    port = local_port(project)
    d = dev_ready(run_devloop)
    before = running_image(harness)
    registry_port = int(before.split("/")[0].split(":")[1])
    asset = project / "sample-app" / "asset.bin"
    asset.write_bytes(os.urandom(48 << 20))  # a real-size layer, so the push takes long enough to be cut
    client = docker.from_env()
    try:
        set_message(project, "after the registry was removed")
        d.wait_for(lambda e: e["event"] == "phase_start" and e["phase"] == "publish", 300, "the push")
        client.containers.get(REGISTRY).remove(force=True, v=True)
        done = d.wait_for(lambda e: e["event"] == "cycle_done", 300, "the save during which the registry went")
        if not done["ok"]:  # the cycle in progress may fail; the next save recovers
            assert_save_rolls_out(d, project, port, "the save after the registry was removed")
        else:
            poll("the save through the forwarded URL", 60, lambda: answers(port, "after the registry was removed"))
    finally:
        asset.unlink()
    notes = [e["message"] for e in d.seen if e["event"] == "info"]
    print("cycles:", [(e["ok"], e["error"]) for e in d.seen if e["event"] == "cycle_done"], "notes:", notes)  # shown with -s
    assert any(f"the local registry {REGISTRY} is gone" in m and "creating it again" in m for m in notes), notes
    assert any("pushed again what the cluster runs" in m and before.rsplit("/", 1)[1] in m for m in notes), notes
    assert registry_has(registry_port, before), "the version the cluster ran is in the new registry"
    c = client.containers.get(REGISTRY)
    assert c.status == "running" and "kind" in c.attrs["NetworkSettings"]["Networks"]
    _code, events, output = run_cli(harness, project, "doctor")
    assert next(e for e in events if e["event"] == "check" and e["name"] == "registry")["ok"], output
    assert d.interrupt() == 130
