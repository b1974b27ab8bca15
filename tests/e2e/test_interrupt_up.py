"""Ctrl-C while `devloop up` creates the kind cluster (issue 23 item 8): devloop stops kind at
once instead of waiting for the creation to finish, exits 130, leaves no kind or docker child
running, and deletes the half-made cluster (a cluster nobody can use, which the next `up` would
otherwise find broken).

Its own cluster name, and the registry off (images go by `kind load`), so that it shares nothing
with the other e2e modules. The time from Ctrl-C to exit is printed (a figure, not an assertion).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.e2e.conftest import Devloop, Harness, devloops, poll, running_processes

pytestmark = pytest.mark.e2e

CLUSTER = "devloop-e2e-ctrlc"
NODE = f"{CLUSTER}-control-plane"


def kind_processes() -> list[str]:
    """Running `kind ... --name CLUSTER` processes and the docker CLI processes kind started for its node."""
    return running_processes(lambda cmd: ("kind " in cmd and f"--name {CLUSTER}" in cmd) or (cmd.startswith("docker ") and NODE in cmd))


def node_containers() -> list[str]:
    return [c.name for c in docker.from_env().containers.list(all=True, filters={"name": f"^{NODE}$"})]


def delete_cluster(harness: Harness) -> None:
    subprocess.run(["kind", "delete", "cluster", "--name", CLUSTER], env=harness.env, capture_output=True, check=False)


@pytest.fixture
def ctrlc_project(harness: Harness, project: Path) -> Iterator[Path]:
    config = project / "devloop.yaml"
    original = config.read_text()
    text = original.replace("  name: devloop-e2e\n", f"  name: {CLUSTER}\n", 1)
    text = text.replace(
        f"registry:\n  image: {harness.registry_image}\n", f"registry:\n  enabled: false\n  image: {harness.registry_image}\n"
    )
    assert f"name: {CLUSTER}" in text and "enabled: false\n  image: " in text
    config.write_text(text)
    delete_cluster(harness)  # an earlier, killed run's
    try:
        yield project
    finally:
        config.write_text(original)
        delete_cluster(harness)


def test_ctrl_c_while_up_creates_the_cluster_stops_kind_and_deletes_the_half_made_cluster(harness: Harness, ctrlc_project: Path) -> None:
    with devloops(harness, ctrlc_project) as start:
        d: Devloop = start("up")
        d.wait_for(lambda e: e["event"] == "info" and "creating kind cluster" in e["message"], 300, "the cluster's creation to start")
        # kind is under way: its node container exists, the cluster is half made
        poll("kind's node container", 300, lambda: node_containers() or None, interval=0.2)
        assert kind_processes(), "kind create cluster is not running"

        sent = time.monotonic()
        code = d.interrupt(timeout=120)
        print(f"\nCtrl-C during kind's creation: devloop exited {code} after {time.monotonic() - sent:.2f}s")

    assert code == 130
    # nothing devloop started lives on: no kind, no docker CLI of kind's
    assert kind_processes() == []
    # devloop said what became of the half-made cluster (its last lines, read as the reader gets them)
    poll("devloop's word on the half-made cluster", 30, lambda: said(d, f"deleted the half-created kind cluster {CLUSTER!r}"))
    ts = {m: e["ts"] for e in d.seen if e["event"] == "info" for m in ("deleting what it made", "deleted the half") if m in e["message"]}
    if len(ts) == 2:
        print(f"of which deleting the half-created cluster: {ts['deleted the half'] - ts['deleting what it made']:.2f}s")
    # kind did not finish: devloop did not wait for it, and deleted what it had made
    assert not said(d, "cluster created in")
    assert CLUSTER not in harness.kind_clusters()
    assert node_containers() == []


def said(d: Devloop, text: str) -> list[str] | None:
    """The info and warning messages devloop printed that contain `text` (None when none)."""
    while not d.events.empty():
        d.seen.append(d.events.get_nowait())
    return [e["message"] for e in d.seen if e["event"] in ("info", "warning") and text in e["message"]] or None
