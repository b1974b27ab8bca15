"""liveUpdate.run (issue 20): which build steps a save runs (pure planning), the config's shape, the
steps in the real SYNC script (a real `sh` stands in for the pod, as in test_live_channel.py), and
the engine: a failing step means no restart and no rebuild, and the next sync runs it again."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from devloop import config, live
from devloop.engine import Engine
from devloop.errors import CommandFailed, ConfigError
from devloop.output import Output
from devloop.plan import Change, Plan, ServiceChange, ServiceLayout, plan, run_steps
from tests.unit.fakes import FakeCluster, FakeDocker, FakePublisher, make_engine
from tests.unit.test_live_channel import LocalStream, child, pod, source  # noqa: F401  (pod: a fixture)
from tests.unit.test_plan import CTX, LAYOUT

TRIGGERS = (("src/**/*.ts", "tsconfig.json"), ("package.json",))


@pytest.mark.parametrize(
    ("files", "steps"),
    [
        (["src/server.ts"], (0,)),  # `**/` also matches no directory
        (["src/api/routes.ts"], (0,)),
        (["tsconfig.json"], (0,)),
        (["package.json"], (1,)),
        (["package.json", "src/a.ts"], (0, 1)),  # in the configured order
        (["README.txt", "public/index.html"], ()),  # nothing to run: copy and restart only
        (["test/a.ts"], ()),  # outside src/
    ],
)
def test_which_steps_a_sync_runs(files: list[str], steps: tuple[int, ...]) -> None:
    assert run_steps(files, TRIGGERS) == steps


def test_the_plan_names_the_steps_of_a_live_update() -> None:
    layout = ServiceLayout("web", CTX, LAYOUT.rules, LAYOUT.manifests, live_fallback=("Dockerfile",), live_run=TRIGGERS)
    (change,) = plan([Change(f"{CTX}/src/server.ts"), Change(f"{CTX}/public/a.css")], [layout]).services
    assert change.sync == ("public/a.css", "src/server.ts") and change.run == (0,) and not change.rebuild
    (rebuild,) = plan([Change(f"{CTX}/src/server.ts"), Change(f"{CTX}/Dockerfile")], [layout]).services
    assert rebuild.rebuild and rebuild.run == ()  # a rebuild compiles in the image: no step runs


def write_config(root: Path, run: str) -> None:
    (root / "devloop.yaml").write_text(f"liveUpdate:\n  enabled: true\n  run:\n{run}")


def test_a_step_is_an_argv_list_with_triggers(sample_copy: Path) -> None:
    write_config(sample_copy, "    - cmd: [npx, tsc, -p, .]\n      trigger: src/**/*.ts\n")
    (step,) = config.load(None, sample_copy).services[0].live_update.run
    assert step.cmd == ("npx", "tsc", "-p", ".") and step.trigger == ("src/**/*.ts",)


@pytest.mark.parametrize(
    ("run", "said"),
    [
        (
            "    - cmd: npx tsc -p .\n      trigger: ['*.ts']\n",
            "run[0].cmd: must be a list (argv, no shell), e.g. ['npx', 'tsc', '-p', '.']",
        ),
        ("    - cmd: []\n      trigger: ['*.ts']\n", "run[0].cmd"),
        ("    - cmd: [tsc]\n", "run[0].trigger"),
        ("    - cmd: [tsc]\n      trigger: []\n", "run[0].trigger"),
        ("    - cmd: [tsc]\n      trigger: ['*.ts']\n      shell: true\n", "run[0].shell: unknown key"),
    ],
)
def test_a_bad_step_is_one_line_naming_the_key(sample_copy: Path, run: str, said: str) -> None:
    write_config(sample_copy, run)
    with pytest.raises(ConfigError) as e:
        config.load(None, sample_copy)
    assert said in e.value.message and e.value.message.startswith("devloop.yaml: liveUpdate.") and e.value.exit_code == 2


# -- the steps in the real sync script ------------------------------------------------------------


def steps(*argvs: list[str]) -> str:
    return base64.b64encode(live.steps_script(list(enumerate(argvs))).encode()).decode()


def channel(state: str) -> live.Channel:
    def open_stream(name: str, namespace: str, argv: list[str]) -> LocalStream:
        return LocalStream([argv[0], argv[1], argv[2].replace("/tmp/.devloop-", f"{state}/.devloop-")])

    return live.Channels(open_stream).get("web-1", "default")


def test_a_step_runs_in_the_target_after_the_copy_and_before_the_restart(pod: Any, tmp_path: Path) -> None:  # noqa: F811
    app, _, state = pod
    ch = channel(state)
    before = child(state)
    streamed: list[str] = []
    # the "compiler" reads the copied source (so it runs after the unpack, in the target directory)
    compile_ = ["sh", "-c", "mkdir -p dist && cp server.js dist/server.js && echo compiled $(cat server.js)"]
    ch.sync(str(app), [], source(tmp_path, "v2"), steps=steps(compile_), log=live.RunLog(streamed.append))
    assert (app / "dist" / "server.js").read_text() == "v2"
    assert streamed == ["compiled v2"]  # the step's output, as it came
    assert child(state) != before  # then the app restarted
    ch.close()


def test_a_failing_step_leaves_the_app_running_unrestarted_and_says_its_first_lines(pod: Any, tmp_path: Path) -> None:  # noqa: F811
    app, _, state = pod
    ch = channel(state)
    before = child(state)
    log = live.RunLog()
    tsc = ["sh", "-c", 'for i in $(seq 1 15); do echo "src/a.ts($i,1): error TS2322: no"; done; exit 2']
    later = ["sh", "-c", "touch later-step-ran"]
    with pytest.raises(live.SyncFailed) as e:
        ch.sync(str(app), [], source(tmp_path, "broken"), steps=steps(tsc, later), log=log)
    assert e.value.code == 4 and log.failed == (0, 2)
    assert len(log.first[0]) == live.FIRST_LINES and log.first[0][0] == "src/a.ts(1,1): error TS2322: no"
    assert (app / "server.js").read_text() == "broken"  # copied: the next sync goes over it
    assert not (app / "later-step-ran").exists()  # the steps stop at the first failure
    assert child(state) == before  # the old process keeps running
    ch.sync(str(app), [], source(tmp_path, "fixed"), steps=steps(["true"]))  # the channel still works: the next save recovers
    assert child(state) != before
    ch.close()


def test_a_program_missing_in_the_image_is_exit_127(pod: Any, tmp_path: Path) -> None:  # noqa: F811
    app, _, state = pod
    ch = channel(state)
    log = live.RunLog()
    with pytest.raises(live.SyncFailed):
        ch.sync(str(app), [], source(tmp_path, "v2"), steps=steps(["no-such-compiler", "-p", "."]), log=log)
    assert log.failed == (0, 127) and any("no-such-compiler" in line for line in log.first[0])
    ch.close()


def test_arguments_reach_the_step_as_written_without_a_shell(pod: Any, tmp_path: Path) -> None:  # noqa: F811
    app, _, state = pod
    ch = channel(state)
    streamed: list[str] = []
    ch.sync(
        str(app), [], source(tmp_path, "v2"), steps=steps(["printf", "%s|", "a b", "$HOME", "*", "it's"]), log=live.RunLog(streamed.append)
    )
    assert streamed == ["a b|$HOME|*|it's|"]
    ch.close()


# -- the engine: no restart, no rebuild; the next sync runs the step again ------------------------


class StepCluster(FakeCluster):
    """Runs no shell: the sync's exec fails like SYNC does when the step `fail` says so."""

    def __init__(self) -> None:
        super().__init__()
        self.fail: int | None = None  # the exit code of step 0, when it fails
        self.syncs: list[tuple[str, list[str], list[str]]] = []  # pod, files copied, steps script lines

    def exec(self, name: str, namespace: str, argv: list[str], stdin: bytes | None = None, timeout: float = 30) -> str:
        if argv[:2] != ["sh", "-c"] or argv[2] != live.SYNC:
            return super().exec(name, namespace, argv, stdin, timeout)
        with tarfile.open(fileobj=io.BytesIO(stdin or b"")) as tar:
            files = tar.getnames()
        script = base64.b64decode(argv[5]).decode().splitlines() if argv[5] != "-" else []
        self.syncs.append((name, files, script))
        if self.fail is not None and script:
            said = "src/a.ts(1,8): error TS2322: Type 'number' is not assignable to type 'string'."
            err = f"{live.RUN} start 0\n{said}\n\n{live.RUN} end 0 {self.fail}\n"
            raise CommandFailed(argv, 4, err)
        return super().exec(name, namespace, argv, stdin, timeout)


def engine(root: Path, cluster: StepCluster) -> tuple[Engine, io.StringIO, FakeDocker]:
    write_config(root, "    - cmd: [node_modules/.bin/tsc, -p, .]\n      trigger: ['*.js']\n")
    buf, docker = io.StringIO(), FakeDocker()
    e = make_engine(config.load(None, root), Output(json_mode=True, stdout=buf), images=docker, kube=cluster, publisher=FakePublisher())
    return e, buf, docker


def sync(e: Engine, *files: str) -> Any:
    (r,) = e.run(Plan(services=(ServiceChange("web-app", sync=files, run=(0,), image_files=files, reason="live update"),)))
    return r


def test_a_failing_step_fails_the_cycle_without_a_restart_or_a_rebuild_and_the_next_save_runs_it_again(sample_copy: Path) -> None:
    cluster = StepCluster()
    e, buf, docker = engine(sample_copy, cluster)
    e.up()
    builds = list(docker.builds)
    server = sample_copy / "sample-app" / "server.js"
    server.write_text(server.read_text() + "\n// broken\n")
    cluster.fail = 2
    r = sync(e, "server.js")
    assert not r.ok and not r.synced and r.error is not None and r.error.phase == "run"
    assert r.error.message.startswith("liveUpdate.run[0] `node_modules/.bin/tsc -p .` failed in ") and r.error.message.endswith("(exit 2)")
    assert r.error.details == ["src/a.ts(1,8): error TS2322: Type 'number' is not assignable to type 'string'."]
    assert "not restarted" in r.outcome
    assert docker.builds == builds  # no rebuild: it would fail on the same error
    assert len(cluster.syncs) == 1  # the first replica only: the others were left alone
    logs = [json.loads(line) for line in buf.getvalue().splitlines() if '"event": "log"' in line]
    assert [x["line"] for x in logs] == [r.error.details[0]] and logs[0]["service"] == "web-app"  # streamed with the pod's name
    assert e.state["web-app"].failed

    # the next save (another file, no step of its own): the failed save's files and step go again, to every replica
    (sample_copy / "sample-app" / "extra.js").write_text("// new\n")
    cluster.fail = None
    (r2,) = e.run(Plan(services=(ServiceChange("web-app", sync=("extra.js",), image_files=("extra.js",), reason="live update"),)))
    assert r2.ok and r2.synced, r2.error
    assert all(
        files == ["extra.js", "server.js"] and script == ["step 0 node_modules/.bin/tsc -p . || exit 1"]
        for _, files, script in cluster.syncs[1:]
    )
    assert len(cluster.syncs) == 1 + 3
    assert not e.state["web-app"].failed and not e.state["web-app"].unrun


def test_a_missing_program_says_so_with_a_hint(sample_copy: Path) -> None:
    cluster = StepCluster()
    e, _, _ = engine(sample_copy, cluster)
    e.up()
    server = sample_copy / "sample-app" / "server.js"
    server.write_text(server.read_text() + "\n// v2\n")
    cluster.fail = 127
    r = sync(e, "server.js")
    assert r.error is not None and "node_modules/.bin/tsc not found in " in r.error.message and r.error.message.endswith("(exit 127)")
    assert "install node_modules/.bin/tsc in the image" in r.error.hint
    assert len(r.error.message.splitlines()) == 1


def test_only_the_sync_script_runs_steps_no_step_means_none(sample_copy: Path) -> None:
    cluster = StepCluster()
    e, _, _ = engine(sample_copy, cluster)
    e.up()
    (r,) = e.run(Plan(services=(ServiceChange("web-app", sync=("server.js",), image_files=("server.js",), reason="live update"),)))
    assert r.ok and all(script == [] for _, _, script in cluster.syncs)


def test_the_steps_script_quotes_every_word() -> None:
    script = live.steps_script([(0, ["npx", "tsc", "-p", "."]), (2, ["sh", "-c", "echo 'a b'"])])
    assert script.splitlines() == ["step 0 npx tsc -p . || exit 1", "step 2 sh -c 'echo '\"'\"'a b'\"'\"'' || exit 1"]
    ran = subprocess.run(["sh", "-c", 'step() { shift; [ "$1" = npx ] || "$@"; }\n' + script], capture_output=True, text=True)
    assert ran.stdout == "a b\n"


class NotStartingCluster(StepCluster):
    """A sync whose new app process ends before it listens (make-before-break: SYNC exits 5)."""

    def __init__(self) -> None:
        super().__init__()
        self.crash = False

    def exec(self, name: str, namespace: str, argv: list[str], stdin: bytes | None = None, timeout: float = 30) -> str:
        if self.crash and argv[:2] == ["sh", "-c"] and argv[2] == live.SYNC:
            self.syncs.append((name, [], []))
            said = "devloop sync: the new app process exited (code 1) before it listened; the one before keeps serving"
            raise CommandFailed(argv, live.NOT_STARTED, f"{live.RESTART} overlap\n{said}\n")
        return super().exec(name, namespace, argv, stdin, timeout)


def test_new_code_that_cannot_start_fails_the_cycle_the_old_process_serving_and_nothing_rebuilt(sample_copy: Path) -> None:
    cluster = NotStartingCluster()
    e, _, docker = engine(sample_copy, cluster)
    e.up()
    builds = list(docker.builds)
    server = sample_copy / "sample-app" / "server.js"
    server.write_text(server.read_text() + "\nthis is not javascript(\n")
    cluster.crash = True
    (r,) = e.run(Plan(services=(ServiceChange("web-app", sync=("server.js",), image_files=("server.js",), reason="live update"),)))
    assert not r.ok and r.error is not None and r.error.phase == "start"
    assert r.error.message.startswith("the app did not start with this save in ") and "before it listened" in r.error.message
    assert len(r.error.message.splitlines()) == 1 and "pod's log" in r.error.hint
    assert "keeps serving" in r.outcome and "the other replicas were not touched" in r.outcome
    assert docker.builds == builds and len(cluster.syncs) == 1  # no rebuild; the first replica only
    cluster.crash = False  # fixed: the next save sends the failed save's file again, to every replica
    (sample_copy / "sample-app" / "extra.js").write_text("// new\n")
    (r2,) = e.run(Plan(services=(ServiceChange("web-app", sync=("extra.js",), image_files=("extra.js",), reason="live update"),)))
    assert r2.ok and r2.synced, r2.error
    assert [files for _, files, _ in cluster.syncs[1:]] == [["extra.js", "server.js"]] * 3
