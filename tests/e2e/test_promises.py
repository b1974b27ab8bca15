"""The loop's promises, as a new user tests them: what serves after a failure, your own saves,
port-forwards after a restart, `up`'s answer, a stopped registry, two loops, a subdirectory.

The real CLI on a real kind cluster. The module brings the cluster up once (or finds it left by the
module before it: `shared_cluster`, tests/e2e/conftest.py).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.e2e.conftest import CLUSTER, Devloop, Harness, children_of_cluster, devloop_argv, run_cli
from tests.e2e.test_loop import edit, get, local_port, served_by_every_pod

pytestmark = [pytest.mark.e2e, pytest.mark.shared_cluster, pytest.mark.usefixtures("sample_up")]

REGISTRY = "devloop-registry"


def message(project: Path) -> str:
    text = (project / "sample-app" / "server.js").read_text()
    return next(line for line in text.splitlines() if line.startswith("const MESSAGE ="))


def set_message(project: Path, text: str) -> None:
    edit(project / "sample-app" / "server.js", message(project), f"const MESSAGE = '{text}';")


def web_pods(harness: Harness) -> list[dict[str, Any]]:
    return [p for p in harness.kubectl_json("get", "pods", "-l", "app=web-app")["items"] if not p["metadata"].get("deletionTimestamp")]


def status(harness: Harness, project: Path) -> tuple[int, dict[str, Any]]:
    code, events, _output = run_cli(harness, project, "status")
    return code, next(e for e in events if e["event"] == "status")


@pytest.fixture
def no_probes(project: Path) -> Iterator[None]:
    """The seed article's own Deployment: no readiness or liveness probe."""
    deployment = project / "sample-app" / "k8s" / "deployment.yaml"
    original = deployment.read_text()
    deployment.write_text(original[: original.index("          readinessProbe:")])
    yield
    deployment.write_text(original)


def test_undo_of_a_broken_save_serves_the_good_version_on_every_pod(harness: Harness, project: Path, run_devloop: Any) -> None:
    port = local_port(project)
    d: Devloop = run_devloop("dev")
    d.wait_for(lambda e: e["event"] == "port_forward" and e["ready"], 300, "the port-forward")
    server = project / "sample-app" / "server.js"
    set_message(project, "good version")
    good = d.wait_for(lambda e: e["event"] == "cycle_done", 300, "the good save")
    assert good["ok"], good
    good_text = server.read_text()

    server.write_text(good_text.replace("const MESSAGE =", "const MESSAGE = = "))
    failed = d.wait_for(lambda e: e["event"] == "cycle_done", 300, "the broken save")
    assert not failed["ok"] and failed["error"]["phase"] == "rollout"
    assert "keeps serving (3/3 ready pods run it" in failed["outcome"], failed
    # a pod crash-loops beside the old ones: status must say so
    code, st = status(harness, project)
    assert code == 1 and not st["healthy"], st
    assert any(p["failing"] for p in st["services"][0]["pods"]), st

    server.write_text(good_text)  # the editor's undo: exactly the last good content
    undone = d.wait_for(lambda e: e["event"] in ("cycle_done", "skipped"), 300, "the undo")
    assert undone["event"] == "cycle_done" and undone["ok"], undone
    assert undone["image"] == good["image"]
    pods = web_pods(harness)
    assert len(pods) == 3 and {p["spec"]["containers"][0]["image"] for p in pods} == {good["image"]}
    assert set(served_by_every_pod(harness).values()) == {"good version"}
    code, st = status(harness, project)
    assert code == 0 and st["healthy"], st
    d.wait_for(lambda e: e["event"] == "port_forward" and e["ready"], 60, "the port-forward after the undo")
    assert get(port)[1] == "good version"
    assert d.interrupt() == 130


def test_without_probes_up_answers_and_a_crash_is_rolled_back_and_serves_again(
    harness: Harness, project: Path, run_devloop: Any, no_probes: None
) -> None:
    port = local_port(project)
    set_message(project, "probe-less v1")
    code, events, output = run_cli(harness, project, "up")
    assert code == 0, output
    up = next(e for e in events if e["event"] == "up")["services"][0]
    assert up["forwards"][0]["http_status"] == 200 and up["forwards"][0]["response"].strip() == "probe-less v1", output
    assert not [e for e in events if e["event"] == "warning" and "did not answer" in e["message"]]
    assert any(e["event"] == "warning" and "no readinessProbe" in e["message"] for e in events)

    d: Devloop = run_devloop("dev")
    d.wait_for(lambda e: e["event"] == "port_forward" and e["ready"], 300, "the port-forward")
    edit(project / "sample-app" / "server.js", "const MESSAGE =", "const MESSAGE = = ")
    failed = d.wait_for(lambda e: e["event"] == "cycle_done", 300, "the crashing save")
    assert not failed["ok"] and failed["error"]["phase"] == "rollout"
    assert failed["outcome"].startswith("rolled back to ") and "which serves again (3/3 pods ready)" in failed["outcome"], failed
    assert set(served_by_every_pod(harness).values()) == {"probe-less v1"}
    d.wait_for(lambda e: e["event"] == "port_forward" and e["ready"], 60, "the port-forward after the rollback")
    assert get(port)[1] == "probe-less v1"
    code, st = status(harness, project)
    assert code == 0 and st["healthy"], st
    edit(project / "sample-app" / "server.js", "const MESSAGE = = ", "const MESSAGE =")
    assert d.interrupt() == 130


def test_saving_every_few_seconds_during_rollouts_is_never_paused_and_the_last_save_serves(
    harness: Harness, project: Path, run_devloop: Any
) -> None:
    d: Devloop = run_devloop("dev")
    d.wait_for(lambda e: e["event"] == "port_forward" and e["ready"], 300, "the port-forward")
    pace = threading.Event()  # never set: its wait() paces the saves like a person, it synchronises nothing
    for i in range(12):
        set_message(project, f"typing {i}")
        pace.wait(2.5)
    from devloop import config as config_mod
    from devloop.images import ContextHasher, content_tag

    img = config_mod.load(None, project).services[0].image
    want = content_tag(ContextHasher().digest(img.context, img.dockerfile, img.build_args))
    d.wait_for(lambda e: e["event"] == "cycle_done" and e["ok"] and str(e["image"]).endswith(want), 300, "the last save's cycle")
    assert not [e for e in d.seen if e["event"] == "warning" and "paused" in e["message"]]
    assert set(served_by_every_pod(harness).values()) == {"typing 11"}
    assert d.interrupt() == 130


def time_wait_on(port: int) -> None:
    """Leave TIME-WAIT entries on 127.0.0.1:port, as a browser's closed keep-alive connection does."""
    with socket.socket() as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", port))
        srv.listen()
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = srv.accept()
        conn.close()  # the listening side closes first: its end of the connection waits in TIME-WAIT
        client.close()


def test_a_port_in_time_wait_is_free_and_a_taken_port_is_retried_while_idle(harness: Harness, project: Path, run_devloop: Any) -> None:
    port = local_port(project)
    time_wait_on(port)
    assert f":{port} " in subprocess.run(["ss", "-tan", "state", "time-wait"], capture_output=True, text=True).stdout
    d: Devloop = run_devloop("dev")
    d.wait_for(lambda e: e["event"] == "port_forward" and e["ready"], 300, "the port-forward despite TIME-WAIT")
    assert not [e for e in d.seen if e["event"] == "warning" and "already in use" in e["message"]]
    assert d.interrupt() == 130

    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a real server does; it then holds the port
    blocker.bind(("127.0.0.1", port))
    blocker.listen()
    d = run_devloop("dev")
    d.wait_for(lambda e: e["event"] == "warning" and "already in use" in e["message"], 300, "the taken-port warning")
    blocker.close()  # no save, no rollout: devloop notices on its own
    d.wait_for(lambda e: e["event"] == "port_forward" and e["ready"], 60, "the forward once the port is free")
    assert get(port)[0] == 200
    assert d.interrupt() == 130


def test_a_stopped_registry_is_started_again_and_doctor_checks_it(harness: Harness, project: Path, run_devloop: Any) -> None:
    d: Devloop = run_devloop("dev")
    d.wait_for(lambda e: e["event"] == "port_forward" and e["ready"], 300, "the first cycle and its port-forward")
    docker.from_env().containers.get(REGISTRY).stop()
    code, events, output = run_cli(harness, project, "doctor")
    assert code == 1, output
    check = next(e for e in events if e["event"] == "check" and e["name"] == "registry")
    assert not check["ok"] and "docker start" in check["fix"], check
    set_message(project, "after the registry stopped")
    done = d.wait_for(lambda e: e["event"] == "cycle_done", 300, "the save after the stop")
    assert done["ok"], done["error"]
    assert any(e["event"] == "info" and "was stopped; starting it again" in e["message"] for e in d.seen)
    assert set(served_by_every_pod(harness).values()) == {"after the registry stopped"}
    code, events, output = run_cli(harness, project, "doctor")
    assert next(e for e in events if e["event"] == "check" and e["name"] == "registry")["ok"], output
    assert d.interrupt() == 130


def test_a_second_loop_is_refused_and_a_killed_ones_lock_is_taken_over(harness: Harness, project: Path, run_devloop: Any) -> None:
    first: Devloop = run_devloop("dev")
    first.wait_for(lambda e: e["event"] == "info" and "watching" in e["message"], 300, "the first loop")
    second = subprocess.run(devloop_argv("dev"), cwd=project, env=harness.env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 3, second.stdout + second.stderr
    assert f"pid {first.proc.pid}" in second.stdout + second.stderr
    first.proc.kill()  # SIGKILL: no clean-up at all, the lock file stays behind
    first.proc.wait()
    for line in children_of_cluster():  # what a killed devloop cannot stop itself
        os.kill(int(line.split(":")[0]), signal.SIGTERM)
    third: Devloop = run_devloop("dev")
    third.wait_for(lambda e: e["event"] == "info" and "watching" in e["message"], 300, "a loop after the killed one")
    assert third.interrupt() == 130


def test_from_a_subdirectory_with_options_after_the_command(harness: Harness, project: Path) -> None:
    p = subprocess.run(
        [devloop_argv()[0], "status", "--json", "-v"], cwd=project / "sample-app" / "k8s", env=harness.env, capture_output=True, text=True
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert '"event": "status"' in p.stdout and CLUSTER in p.stdout
