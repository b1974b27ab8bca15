"""A laptop's faults, on the real parts (issue 13): the cycle in progress may fail, `devloop dev`
survives, and the next save recovers with nothing lost.

The real CLI on a real kind cluster. The module uses its own registry container and port, so
removing it never touches another project's registry. The module brings the cluster up once and
deletes it at the end (DEVLOOP_E2E_KEEP_CLUSTER=1 keeps it, for working on these tests).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.e2e.conftest import CLUSTER, Devloop, Harness, children_of_cluster, free_port, poll, run_cli
from tests.e2e.test_loop import edit, get

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


def test_sighup_stops_everything_devloop_started(harness: Harness, project: Path, run_devloop: Any) -> None:
    """The terminal closes: the shell sends SIGHUP. devloop stops what it started, as on Ctrl-C."""
    d = dev_ready(run_devloop)
    assert children_of_cluster(), "devloop dev runs kubectl port-forward and logs"
    d.proc.send_signal(signal.SIGHUP)
    assert d.proc.wait(60) == 130, "".join(d.raw[-20:])
    assert any(e.get("event") == "info" and "stopping everything" in e.get("message", "") for e in d.seen + list(d.events.queue))
    left = poll("no kubectl left", 10, lambda: None if children_of_cluster() else True, interval=0.2)
    assert left and not children_of_cluster()
