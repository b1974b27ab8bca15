"""Commands on the host (devloop.commands): which commands a save triggers (plain tables), the runner
with a scripted launcher (a fake behind `commands.Launcher`), the deploy hold of blocksDeploy,
the configuration's checks, and what the terminal, --json, status and the dashboard say."""

from __future__ import annotations

import io
import json
import queue
import shutil
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from devloop import commands as cmds
from devloop import config, status
from devloop.commands import CommandRunner, Launcher, Triggered
from devloop.config import CommandConfig
from devloop.errors import EXIT_ENVIRONMENT, ConfigError, CycleFailed, ToolMissing
from devloop.ignore import IgnoreRules
from devloop.output import Output
from devloop.plan import Change, Plan, ServiceChange, ServiceLayout
from devloop.proc import Background
from devloop.session import DevSession
from devloop.view import Board
from tests.unit.test_session import DEVLOOP_YAML, REPO, Bench

ROOT = "/p"


def command(name: str = "unit-tests", **kw: Any) -> CommandConfig:
    data = {"name": name, "argv": ["npm", "test"], "workdir": f"{ROOT}/web", **kw}
    return CommandConfig.model_validate(data)


def changes(*paths: str) -> list[Change]:
    return [Change(f"{ROOT}/{p}") for p in paths]


# -- planning: which commands a save runs ------------------------------------------------------------
@pytest.mark.parametrize(
    ("trigger", "saved", "runs"),
    [
        ((), ["web/server.js"], ["web/server.js"]),  # no trigger: any file below workdir
        ((), ["api/server.js", "README.md"], []),
        (("web/**/*.js",), ["web/server.js", "web/lib/a.js", "web/style.css"], ["web/lib/a.js", "web/server.js"]),
        (("web/test",), ["web/test/a.test.js", "web/testdata.txt"], ["web/test/a.test.js"]),  # a directory: every file below
        (("**/*.proto",), ["api/v1/shop.proto", "web/x.js"], ["api/v1/shop.proto"]),
        (
            ("web/**",),
            ["web/node_modules/x/index.js", "web/.git/HEAD", "web/.server.js.swp", "web/a.js"],
            ["web/a.js"],
        ),  # never ignored files
    ],
)
def test_a_save_runs_the_commands_whose_triggers_match(trigger: tuple[str, ...], saved: list[str], runs: list[str]) -> None:
    got = cmds.triggered(changes(*saved), [command(trigger=list(trigger))], ROOT)
    assert [f for t in got for f in t.files] == runs


def test_only_commands_on_save_run_on_a_save_and_watch_ignore_holds_for_them() -> None:
    listed = [command("lint", when=["start"]), command("gen", trigger=["web/**"]), command("tests", when=["start", "save"])]
    got = cmds.triggered(changes("web/a.js", "web/b.log"), listed, ROOT, IgnoreRules(extra=("*.log",)))
    assert [(t.command.name, t.files) for t in got] == [("gen", ("web/a.js",)), ("tests", ("web/a.js",))]


def test_a_blocking_command_holds_the_services_its_files_change() -> None:
    layouts = [
        ServiceLayout("web", f"{ROOT}/web", IgnoreRules(), (f"{ROOT}/web/k8s",)),
        ServiceLayout("api", f"{ROOT}/api", IgnoreRules(), (f"{ROOT}/api/k8s",)),
    ]
    blocking = command(trigger=["**/*.js"], blocksDeploy=True)
    t = Triggered(blocking, ("web/server.js",))
    assert cmds.held_services(t, layouts, [], ROOT) == ("web",)
    assert cmds.held_services(Triggered(blocking, ("web/server.js", "api/server.js")), layouts, [], ROOT) == ("web", "api")
    assert cmds.held_services(Triggered(command(trigger=["**/*.js"]), ("web/server.js",)), layouts, [], ROOT) == ()  # not blocking


def test_the_watcher_watches_what_the_triggers_name(tmp_path: Path) -> None:
    for d in ("web/test", "api", "proto"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "api" / "schema.sql").write_text("")
    listed = [
        command("a", trigger=["web/test/**/*.js", "api/schema.sql"]),
        command("b", workdir=str(tmp_path / "proto")),
        command("c", when=["start"], trigger=["nowhere/**"]),
    ]
    assert cmds.trigger_roots(listed, tmp_path) == [tmp_path / "web" / "test", tmp_path / "api", tmp_path / "proto"]


# -- the program ---------------------------------------------------------------------------------------
def test_a_missing_program_is_one_line_and_a_hint_with_the_environment_exit_code(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "gen").write_text("#!/bin/sh\n")
    (tmp_path / "bin" / "gen").chmod(0o755)
    fine = [command("gen", argv=["bin/gen"], workdir=str(tmp_path)), command("py", argv=["python3", "-V"])]
    cmds.check(fine, "devloop.yaml")
    with pytest.raises(ToolMissing) as e:
        cmds.check([*fine, command("lint", argv=["eslintx", "."])], "devloop.yaml")
    assert e.value.message == "devloop.yaml: commands[2] (lint): `eslintx` was not found on PATH"
    assert e.value.hint.startswith("install it, or fix commands[2].argv") and e.value.exit_code == EXIT_ENVIRONMENT == 3
    with pytest.raises(ToolMissing, match=r"`\./nope` is not an executable file in"):
        cmds.check([command("x", argv=["./nope"], workdir=str(tmp_path))], "devloop.yaml")


# -- the runner, with a scripted launcher ---------------------------------------------------------------
class FakeChild(Background):
    """A command's child: prints `lines`, then exits with `code` once released (at once unless `hold`)."""

    def __init__(self, lines: Sequence[str], code: int | None, on_line: Callable[[str], None], hold: bool) -> None:
        self.code = code
        self.stopped = False
        self._exit = threading.Event()
        for line in lines:
            on_line(line)
        if not hold:
            self._exit.set()

    def release(self) -> None:
        self._exit.set()

    def alive(self) -> bool:
        return not self._exit.is_set()

    def wait(self, timeout: float | None = None) -> int | None:
        if self.code is None:  # runs until stopped: as a hung command, past its timeout
            return None
        return self.code if self._exit.wait(timeout) else None

    def stop(self) -> None:
        self.stopped = True
        self._exit.set()


@dataclass
class Script:
    lines: Sequence[str] = ()
    code: int | None = 0
    hold: bool = False
    missing: bool = False


@dataclass
class FakeLauncher(Launcher):
    script: list[Script] = field(default_factory=list)
    calls: list[tuple[list[str], str | None]] = field(default_factory=list)
    children: list[FakeChild] = field(default_factory=list)
    started: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))

    def spawn(
        self, argv: Sequence[str], *, on_line: Callable[[str], None], env: Mapping[str, str] | None = None, cwd: str | None = None
    ) -> Background:
        self.calls.append((list(argv), cwd))
        if not self.script:
            raise AssertionError(f"unexpected command: {argv}")
        s = self.script.pop(0)
        if s.missing:
            raise ToolMissing(f"`{argv[0]}` was not found on PATH", f"install {argv[0]}")
        child = FakeChild(s.lines, s.code, on_line, s.hold)
        self.children.append(child)
        self.started.release()
        return child


class Rig:
    def __init__(self, tmp_path: Path, *listed: CommandConfig) -> None:
        self.buf = io.StringIO()
        self.out = Output(json_mode=True, stdout=self.buf)
        self.ends: queue.Queue[dict[str, Any]] = queue.Queue()
        self.out.subscribe(lambda r: self.ends.put(r) if r["event"] == "command_end" else None)
        self.launcher = FakeLauncher()
        self.state = tmp_path / "state" / "commands.json"
        self.runner = CommandRunner(listed, self.out, self.launcher, tmp_path, state_file=self.state)

    def run(self, c: CommandConfig, *scripts: Script, services: Sequence[str] = ()) -> None:
        self.launcher.script += scripts
        self.runner.start(Triggered(c, ("web/server.js",)), services)

    def end(self) -> dict[str, Any]:
        return self.ends.get(timeout=10)

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in map(json.loads, self.buf.getvalue().splitlines()) if e["event"] == kind]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    yield r
    r.runner.stop()


def test_a_passing_run_is_reported_and_kept_for_status(rig: Rig, tmp_path: Path) -> None:
    c = command()
    rig.run(c, Script(["ok 1"]))
    end = rig.end()
    assert (end["name"], end["status"], end["exit_code"], end["ok"], end["files"]) == ("unit-tests", "passed", 0, True, ["web/server.js"])
    assert rig.launcher.calls == [(["npm", "test"], f"{ROOT}/web")]  # in its workdir
    (start,) = rig.events("command_start")
    assert start["argv"] == ["npm", "test"] and start["trigger"] == "save"
    assert [e["line"] for e in rig.events("command_output")] == ["ok 1"]
    (kept,) = json.loads(rig.state.read_text())["commands"]
    assert kept["name"] == "unit-tests" and kept["status"] == "passed"


def test_a_failing_run_says_its_exit_code_and_its_first_and_last_lines(rig: Rig) -> None:
    lines = [f"line {n}" for n in range(1, 41)]
    rig.run(command(), Script(lines, code=2))
    end = rig.end()
    assert (end["status"], end["exit_code"], end["message"]) == ("failed", 2, "failed (exit 2)")
    assert end["excerpt"] == [*lines[:10], "… 15 lines …", *lines[-15:]]
    rig.run(command(), Script(["a", "b"], code=1))
    assert rig.end()["excerpt"] == ["a", "b"]


def test_a_program_gone_since_the_check_is_an_error_with_a_hint_not_a_crash(rig: Rig) -> None:
    rig.run(command(), Script(missing=True))
    end = rig.end()
    assert (end["status"], end["exit_code"], end["message"], end["hint"]) == ("error", None, "`npm` was not found on PATH", "install npm")


def test_a_run_past_its_timeout_is_stopped_and_failed(rig: Rig) -> None:
    rig.run(command(timeout=1), Script(code=None))
    end = rig.end()
    assert end["status"] == "timeout" and end["message"] == "stopped after 1s (timeout)"
    assert rig.launcher.children[0].stopped


def test_a_new_save_cancels_the_run_going_on_and_starts_it_again(rig: Rig) -> None:
    c = command()
    rig.run(c, Script(["old"], code=1, hold=True))
    assert rig.launcher.started.acquire(timeout=10)
    rig.run(c, Script(["new"]))
    ends = [rig.end(), rig.end()]
    assert sorted(e["status"] for e in ends) == ["cancelled", "passed"]
    assert rig.launcher.children[0].stopped
    assert rig.runner.last["unit-tests"].status == "passed"  # the cancelled run is no result


def test_a_failed_blocking_command_holds_the_deploy_of_its_services_until_it_passes(rig: Rig) -> None:
    c = command(blocksDeploy=True)
    said: list[str] = []
    rig.run(c, Script(code=1, hold=True), services=["web"])
    assert rig.launcher.started.acquire(timeout=10)
    waiter: queue.Queue[BaseException | None] = queue.Queue()

    def deploy_web() -> None:
        try:
            rig.runner.hold("web", said.append)
            waiter.put(None)
        except CycleFailed as e:
            waiter.put(e)

    threading.Thread(target=deploy_web).start()
    rig.runner.hold("api", said.append)  # not held: returns at once, while the run goes on
    rig.launcher.children[0].release()
    e = waiter.get(timeout=10)
    assert isinstance(e, CycleFailed) and e.phase == "command"
    assert e.message == "not deployed: unit-tests failed (exit 1) (blocksDeploy)"
    assert e.hint == "fix it and save: web is deployed once unit-tests passes"
    assert said == ["waiting for unit-tests (blocksDeploy)"]
    with pytest.raises(CycleFailed):  # still held: its last run failed
        rig.runner.hold("web", said.append)
    released: list[tuple[str, list[str]]] = []
    rig.runner.on_release = lambda name, services: released.append((name, services))
    rig.run(c, Script(), services=[])  # e.g. a save of a test file only: it passes …
    rig.end()
    rig.end()
    assert released == [("unit-tests", ["web"])]  # … and the session deploys what it held
    rig.runner.hold("web", said.append)  # passed: deployed


def test_a_command_that_does_not_block_holds_nothing(rig: Rig) -> None:
    rig.run(command(), Script(code=1), services=["web"])
    rig.end()
    rig.runner.hold("web", lambda said: None)


def test_at_start_runs_the_commands_on_start(rig: Rig) -> None:
    rig.runner.reconfigure([command("lint", when=["start"]), command("tests")])
    rig.launcher.script.append(Script())
    rig.runner.at_start()
    end = rig.end()
    assert (end["name"], end["trigger"]) == ("lint", "start")


# -- configuration ----------------------------------------------------------------------------------------
def load(tmp_path: Path, commands_yaml: str) -> config.Config:
    root = tmp_path / "shop"
    if not root.exists():
        shutil.copytree(REPO / "examples" / "shop", root)
        shutil.copy(REPO / "kind-config.yaml", tmp_path / "kind-config.yaml")
    (root / "devloop.yaml").write_text(DEVLOOP_YAML + commands_yaml)
    return config.load(None, root)


def test_commands_in_devloop_yaml(tmp_path: Path) -> None:
    cfg = load(
        tmp_path, "commands:\n  - {name: unit-tests, argv: [npm, test], workdir: web, trigger: ['web/**/*.js'], blocksDeploy: true}\n"
    )
    (c,) = cfg.commands
    assert c.workdir == cfg.root / "web" and c.when == ("save",) and c.blocks_deploy and c.timeout == 600


@pytest.mark.parametrize(
    ("entry", "said"),
    [
        ("{name: t, argv: npm test}", "commands[0].argv: must be a list (argv: the program, then each argument), not a shell string"),
        ("{name: t, argv: []}", "commands[0].argv"),
        ("{name: t, argv: [npm], when: [push]}", "commands[0].when[0]"),
        ("{name: t, argv: [npm], on: [save]}", "commands[0]: a key `on` (YAML reads it as true): write `when: [start, save]`"),
        ("{name: t, argv: [npm], blocksdeploy: true}", "commands[0].blocksdeploy: unknown key"),
        ("{name: t, argv: [npm], workdir: nowhere}", "commands[0].workdir: not a directory"),
        ("{name: t, argv: [npm]}\n  - {name: t, argv: [make]}", "two commands are named 't'"),
    ],
)
def test_a_wrong_command_names_its_key(tmp_path: Path, entry: str, said: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(tmp_path, f"commands:\n  - {entry}\n")
    assert said in e.value.message and e.value.exit_code == 2


# -- what people see ------------------------------------------------------------------------------------
def test_the_terminal_says_a_failure_with_its_excerpt_and_a_pass_in_one_line() -> None:
    buf = io.StringIO()
    out = Output(stdout=buf, stderr=buf)
    out.command_end("unit-tests", status="failed", exit_code=1, seconds=1.5, message="failed (exit 1)", excerpt=["not ok 1 - message"])
    out.command_end("lint", status="passed", exit_code=0, seconds=0.25)
    assert buf.getvalue().splitlines() == ["✖ unit-tests failed (exit 1) after 1.50s", "  │ not ok 1 - message", "✔ lint passed in 250ms"]


def test_the_dashboards_view_shows_each_commands_run_and_last_result() -> None:
    out = Output(json_mode=True, stdout=io.StringIO())
    board = Board(out)
    out.command_start("unit-tests", ["npm", "test"], "save", ["web/server.js"])
    assert board.view.commands["unit-tests"].status == "running"
    out.command_start("unit-tests", ["npm", "test"], "save", ["web/server.js"])  # restarted by a newer save …
    out.command_end("unit-tests", status="cancelled", exit_code=None, seconds=0.1)  # … the old run's end says nothing
    assert board.view.commands["unit-tests"].status == "running"
    out.command_end("unit-tests", status="failed", exit_code=1, seconds=2.0, message="failed (exit 1)", excerpt=["boom"])
    c = board.view.commands["unit-tests"]
    assert (c.status, c.exit_code, c.seconds, c.excerpt) == ("failed", 1, 2.0, ("boom",))


def test_status_says_each_commands_last_result() -> None:
    info = {"commands": [{"name": "unit-tests", "status": "failed", "message": "failed (exit 1)", "seconds": 1.5, "at": 1000.0}]}
    assert status.commands_human(info, now=1180.0) == [
        "commands (their last run in `devloop dev`):",
        "  unit-tests: failed (exit 1) in 1.50s, 3 min ago",
    ]
    assert status.commands_human({}) == []


# -- the session: a save starts the commands beside its cycle -----------------------------------------------
@pytest.fixture
def session_rig(tmp_path: Path) -> Iterator[tuple[Bench, Rig]]:
    root = tmp_path / "shop"
    shutil.copytree(REPO / "examples" / "shop", root)
    shutil.copy(REPO / "kind-config.yaml", tmp_path / "kind-config.yaml")
    (root / "devloop.yaml").write_text(
        DEVLOOP_YAML + "commands:\n  - {name: api-tests, argv: [npm, test], workdir: api, trigger: ['api/**/*.js'], blocksDeploy: true}\n"
    )
    bench = Bench(root)
    bench.session.stop()
    rig = Rig(tmp_path, *bench.engine.config.commands)
    bench.session = DevSession(bench.engine, clock=bench.clock, forward=bench.forward, commands=rig.runner)
    yield bench, rig
    bench.session.stop()


def test_a_save_starts_its_commands_beside_the_cycle_and_a_blocking_one_holds_its_service(session_rig: tuple[Bench, Rig]) -> None:
    bench, rig = session_rig
    rig.launcher.script.append(Script(code=1))
    bench.save(bench.path("api", "server.js"))
    (p,) = bench.step()
    assert [c.service for c in p.services] == ["api"]  # the cycle runs beside the command
    end = rig.end()
    assert end["name"] == "api-tests" and end["files"] == ["api/server.js"] and end["status"] == "failed"
    with pytest.raises(CycleFailed, match="not deployed: api-tests failed"):
        rig.runner.hold("api", lambda said: None)
    rig.runner.hold("web", lambda said: None)


def test_a_blocking_command_that_passes_again_deploys_what_it_held(session_rig: tuple[Bench, Rig]) -> None:
    bench, rig = session_rig
    assert rig.runner.on_release is not None
    rig.runner.on_release("api-tests", ["api"])
    (p,) = bench.step()
    assert p.services == (ServiceChange("api", rebuild=True, reason="api-tests passed (blocksDeploy)"),)  # skipped when the cluster runs it


def test_a_file_only_a_command_watches_runs_it_and_is_not_called_ignored(session_rig: tuple[Bench, Rig]) -> None:
    bench, rig = session_rig
    rig.launcher.script.append(Script())
    bench.save(bench.path("api", "test/server.test.js"))  # .dockerignore'd: no image, no cycle
    assert bench.step() == []
    assert rig.end()["status"] == "passed"
    assert bench.events("skipped") == []


def test_a_reload_naming_a_missing_program_keeps_the_configuration(session_rig: tuple[Bench, Rig]) -> None:
    bench, _rig = session_rig
    text = (bench.root / "devloop.yaml").read_text() + "  - {name: lint, argv: [devloop-no-such-program]}\n"
    assert bench.reload(text) == [] and bench.engine.reconfigured == []
    (error,) = bench.events("error")
    assert error["message"] == "devloop.yaml: commands[1] (lint): `devloop-no-such-program` was not found on PATH"
    assert error["exit_code"] == 3
    assert any(e["message"] == "keeping the previous configuration" for e in bench.events("warning"))


# -- the engine: a held service is built, not deployed -----------------------------------------------------
def test_a_held_service_is_built_and_published_not_deployed_and_what_serves_is_said(tmp_path: Path) -> None:
    from tests.unit.test_engine import World

    root = tmp_path / "shop"
    shutil.copytree(REPO / "examples" / "shop", root)
    shutil.copy(REPO / "kind-config.yaml", tmp_path / "kind-config.yaml")
    (root / "devloop.yaml").write_text((root / "devloop.yaml").read_text().replace("../../kind-config.yaml", "../kind-config.yaml"))
    w = World(root)
    w.engine.up()
    before = w.cluster.deployments[("default", "api")].image

    def hold(service: str, say: Callable[[str], None]) -> None:
        if service == "api":
            raise CycleFailed("command", "not deployed: api-tests failed (exit 1) (blocksDeploy)", "fix it and save")

    w.engine.hold = hold
    (r,) = w.save("api", "server.js", "api v1", "api v2")
    assert not r.ok and r.error is not None and r.error.phase == "command" and "api-tests failed" in r.error.message
    assert "build" in r.phases and "publish" in r.phases and "deploy" not in r.phases
    assert w.cluster.deployments[("default", "api")].image == before  # the previous version keeps running
    (done,) = [e for e in w.events("cycle_done") if not e["ok"]]
    assert done["outcome"], done  # what serves now, asked of the cluster
    (ok,) = w.save("web", "server.js", "web v1", "web v2")  # another service is not held
    assert ok.ok


def test_a_held_live_update_syncs_nothing(tmp_path: Path) -> None:
    from tests.unit.test_engine import World

    root = tmp_path / "shop"
    shutil.copytree(REPO / "examples" / "shop", root)
    shutil.copy(REPO / "kind-config.yaml", tmp_path / "kind-config.yaml")
    w = World(root, DEVLOOP_YAML)  # web: live update on
    w.engine.up()
    said: list[str] = []

    def hold(service: str, say: Callable[[str], None]) -> None:
        say("waiting for web-tests (blocksDeploy)")
        said.append(service)
        raise CycleFailed("command", "not deployed: web-tests failed (exit 1) (blocksDeploy)")

    w.engine.hold = hold
    server = root / "web" / "server.js"
    server.write_text(server.read_text().replace("web v1", "web v2"))
    (r,) = w.engine.run(Plan(services=(ServiceChange("web", sync=("server.js",), image_files=("server.js",), reason="live update"),)))
    assert not r.ok and r.error is not None and r.error.phase == "command" and said == ["web"]
    assert not r.synced and "sync" not in r.phases and "build" not in r.phases  # neither synced nor rebuilt instead


def test_the_dashboard_serves_each_commands_last_result_and_not_every_line() -> None:
    from tests.unit.test_dashboard import Harness as Page

    out = Output(stdout=io.StringIO(), stderr=io.StringIO())
    page = Page(out)
    page.d.start()
    try:
        out.command_start("unit-tests", ["npm", "test"], "save", ["web/server.js"])
        out.command_output("unit-tests", "not ok 1 - message")
        out.command_end("unit-tests", status="failed", exit_code=1, seconds=2.5, message="failed (exit 1)", excerpt=["not ok 1 - message"])
        (c,) = page.state()["commands"]
        assert (c["name"], c["status"], c["exit_code"], c["seconds"], c["excerpt"]) == (
            "unit-tests",
            "failed",
            1,
            2.5,
            ["not ok 1 - message"],
        )
        assert [r["event"] for _, r in page.d._recent()] == ["command_start", "command_end"]  # the lines are not pushed to the page
    finally:
        page.d.stop()
