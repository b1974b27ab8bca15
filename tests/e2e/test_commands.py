"""Commands on save (`commands:` in devloop.yaml) with the real CLI on the real kind cluster: the
sample's own unit tests (`node --test`) run on the host beside each cycle; a failing run with
blocksDeploy holds the deploy (the previous version keeps serving); a program that is not there is
one line and a hint; when the command passes again (a save of the test alone), devloop deploys what
it held. One `devloop dev` session; the module deletes the cluster at the end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Devloop, Harness, devloop_argv, leave_cluster, run_cli
from tests.e2e.test_loop import get, local_port, served_by_every_pod
from tests.e2e.test_promises import set_message

pytestmark = [pytest.mark.e2e, pytest.mark.shared_cluster]

V2 = "Hello from devloop sample-app, tested on save"
BROKEN = "Hello from devloop sample-app v3 BROKEN"

COMMANDS = """
commands:
  - name: unit-tests
    argv: [node, --test]
    workdir: sample-app
    trigger: ["sample-app/*.js", "sample-app/test/**"]
    when: [start, save]
    blocksDeploy: true
"""

# a unit test of the project's own: the message never says BROKEN
MESSAGE_TEST = """'use strict';
const { test } = require('node:test');
const assert = require('node:assert');
const { MESSAGE } = require('../server.js');
test('the message is not broken', () => assert.ok(!MESSAGE.includes('BROKEN'), MESSAGE));
"""


@pytest.fixture(scope="module", autouse=True)
def with_commands(harness: Harness, project: Path, request: pytest.FixtureRequest) -> Iterator[None]:
    (project / "devloop.yaml").write_text((project / "devloop.yaml").read_text() + COMMANDS)
    (project / "sample-app" / "test" / "message.test.js").write_text(MESSAGE_TEST)
    yield
    leave_cluster(harness, project, request)


def running_in(project: Path) -> list[str]:
    """Processes (not zombies) whose working directory is below the project: what a command left behind."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cwd = os.readlink(f"/proc/{pid}/cwd")
                state = Path(f"/proc/{pid}/stat").read_text().split()[2]
            except OSError:
                continue
            if state != "Z" and Path(cwd).is_relative_to(project):
                found.append(pid)
    return found


def ended(name: str, trigger: str) -> Any:
    return lambda e: e["event"] == "command_end" and e["name"] == name and e["trigger"] == trigger


def test_a_missing_program_is_one_line_and_a_hint_before_anything_runs(harness: Harness, project: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(project, bad)
    text = (bad / "devloop.yaml").read_text().replace("argv: [node, --test]", "argv: [devloop-no-such-program, --check]")
    (bad / "devloop.yaml").write_text(text)
    argv = [a for a in devloop_argv("dev") if a != "--json"]
    p = subprocess.run(argv, cwd=bad, env=harness.env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 3, p.stdout + p.stderr  # documented: a tool devloop needs is missing
    lines = p.stderr.strip().splitlines()
    assert lines[0] == "error: devloop.yaml: commands[0] (unit-tests): `devloop-no-such-program` was not found on PATH", p.stderr
    assert lines[1].startswith("hint: install it, or fix commands[0].argv") and len(lines) == 2, p.stderr
    assert "Traceback" not in p.stdout + p.stderr


def test_commands_on_save_beside_the_cycle(harness: Harness, project: Path, run_devloop: Any) -> None:
    port = local_port(project)
    d: Devloop = run_devloop("dev")
    first = d.wait_for(ended("unit-tests", "start"), 300, "the unit tests run at start")
    assert first["status"] == "passed" and first["exit_code"] == 0, first
    d.wait_for(lambda e: e["event"] == "port_forward" and e["ready"], 300, "the port-forward to be ready")

    # 1. a save that passes the tests is deployed
    set_message(project, V2)
    passed = d.wait_for(ended("unit-tests", "save"), 120, "the unit tests run on save")
    assert passed["status"] == "passed" and passed["exit_code"] == 0 and passed["files"] == ["sample-app/server.js"], passed
    done = d.wait_for(lambda e: e["event"] == "cycle_done", 300, "the save's cycle")
    assert done["ok"], done["error"]
    assert get(port)[1] == V2

    # 2. a save that fails them (blocksDeploy) is built, not deployed: v2 keeps serving, and devloop says so
    set_message(project, BROKEN)
    failed = d.wait_for(ended("unit-tests", "save"), 120, "the failing unit tests")
    assert failed["status"] == "failed" and failed["exit_code"] == 1, failed
    assert "not ok 1 - the message is not broken" in failed["excerpt"], failed["excerpt"]  # what failed, in the excerpt
    held = d.wait_for(lambda e: e["event"] == "cycle_done", 300, "the held cycle")
    assert not held["ok"] and held["error"]["phase"] == "command", held
    assert "not deployed: unit-tests failed (exit 1)" in held["error"]["message"]
    assert "deploy" not in held["phases"] and "build" in held["phases"], held["phases"]
    assert "serves" in held["outcome"] or "serving" in held["outcome"], held["outcome"]
    assert get(port)[1] == V2
    assert set(served_by_every_pod(harness).values()) == {V2}

    # 3. the test changed instead (a file of no image: no cycle of its own): it passes, and devloop deploys what it held
    (project / "sample-app" / "test" / "message.test.js").write_text(MESSAGE_TEST.replace("'BROKEN'", "'BROKEN!'"))
    fixed = d.wait_for(ended("unit-tests", "save"), 120, "the unit tests after the test's change")
    assert fixed["status"] == "passed" and fixed["files"] == ["sample-app/test/message.test.js"], fixed
    released = d.wait_for(lambda e: e["event"] == "cycle_done", 300, "the deploy of what the command held")
    assert released["ok"] and released["reason"] == "unit-tests passed (blocksDeploy)", released
    assert get(port)[1] == BROKEN

    # 4. a reloaded configuration naming a program that is not there: one line and a hint, the last version keeps serving
    config = project / "devloop.yaml"
    good = config.read_text()
    config.write_text(good + "  - name: lint\n    argv: [devloop-no-such-program]\n")
    error = d.wait_for(lambda e: e["event"] == "error", 120, "the reload's error")
    assert error["message"] == "devloop.yaml: commands[1] (lint): `devloop-no-such-program` was not found on PATH", error
    assert error["hint"].startswith("install it") and error["exit_code"] == 3, error
    d.wait_for(lambda e: e["event"] == "warning" and "keeping the previous configuration" in e["message"], 30, "the old configuration kept")
    assert get(port)[1] == BROKEN

    # 5. Ctrl-C while the tests run (and the servers they start): nothing of theirs outlives devloop
    server = project / "sample-app" / "server.js"
    server.write_text(server.read_text())  # saved unchanged: no cycle, the tests run
    d.wait_for(lambda e: e["event"] == "command_output" and e["name"] == "unit-tests", 60, "the tests running")
    assert d.interrupt() == 130
    assert not running_in(project), "a command outlived devloop"

    # 6. `devloop status` says each command's last result, as the session left it
    _code, events, _output = run_cli(harness, project, "status")
    status = next(e for e in events if e["event"] == "status")
    (unit,) = status["commands"]
    assert unit["name"] == "unit-tests" and unit["status"] == "passed" and unit["files"] == ["sample-app/test/message.test.js"], status[
        "commands"
    ]
    print(
        f"\nunit-tests: {first['seconds']}s at start, {passed['seconds']}s on save; the save's cycle {done['total']}s "
        f"({done['phases']}); held cycle {held['total']}s; released cycle {released['total']}s"
    )
