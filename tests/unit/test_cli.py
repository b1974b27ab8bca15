from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from devloop.cli import app

runner = CliRunner()


def test_help_lists_the_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("up", "dev", "down", "status", "doctor"):
        assert command in result.output


def test_bad_config_exits_2_with_file_and_key_and_no_traceback(sample_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (sample_copy / "devloop.yaml").write_text("image:\n  contxt: sample-app\n")
    monkeypatch.chdir(sample_copy)
    result = runner.invoke(app, ["up"])
    assert result.exit_code == 2
    assert "error: devloop.yaml: image.contxt: unknown key" in result.output
    assert "hint:" in result.output
    assert "Traceback" not in result.output


def test_bad_config_json_error_record(sample_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (sample_copy / "devloop.yaml").write_text("watch: {debounceMs: soon}\n")
    monkeypatch.chdir(sample_copy)
    result = runner.invoke(app, ["--json", "status"])
    assert result.exit_code == 2
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["event"] == "error" and record["exit_code"] == 2
    assert "watch.debounceMs" in record["message"]


def test_missing_kind_exits_3_with_install_hint(sample_copy: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(sample_copy)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.setenv("DEVLOOP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("DEVLOOP_KIND_URL", "http://127.0.0.1:9/kind")  # nothing listens: no download possible
    result = runner.invoke(app, ["down"])
    assert result.exit_code == 3
    assert "kind" in result.output and "error:" in result.output
    assert "go install sigs.k8s.io/kind" in result.output


def test_unknown_command_is_a_usage_error() -> None:
    assert runner.invoke(app, ["upp"]).exit_code == 2


def test_doctor_gives_a_fix_for_each_failed_check(sample_copy: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(sample_copy)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    monkeypatch.setenv("DEVLOOP_CACHE_DIR", str(tmp_path / "cache"))  # no devloop copies of kind/kubectl either
    result = runner.invoke(app, ["--json", "doctor"])
    assert result.exit_code == 1
    checks = {r["name"]: r for r in map(json.loads, result.stdout.splitlines()) if r["event"] == "check"}
    assert checks["config"]["ok"] is True
    for name in ("docker", "kind", "kubectl"):
        assert checks[name]["ok"] is False and checks[name]["fix"], name
    assert "inotify" in checks
    assert os.environ["PATH"].endswith("empty-bin")


@pytest.mark.parametrize("json_mode", [False, True])
def test_a_devloop_bug_exits_4_with_one_line_and_the_traceback_in_a_crash_file(
    sample_copy: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, json_mode: bool
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("a bug deep inside")

    monkeypatch.chdir(sample_copy)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setattr("devloop.config.load", broken)
    result = runner.invoke(app, ["--json", "status"] if json_mode else ["status"])
    assert result.exit_code == 4  # not 1: nothing says a service failed
    assert "Traceback" not in result.output
    if json_mode:
        record = json.loads(result.stdout.strip().splitlines()[-1])
        assert record["event"] == "error" and record["exit_code"] == 4 and record["kind"] == "DevloopBug"
        message = record["message"]
    else:
        (message,) = result.output.strip().splitlines()  # one line
    assert "devloop bug (ZeroDivisionError: a bug deep inside)" in message
    (crash,) = (tmp_path / "state" / "devloop").glob("crash-*.log")
    assert str(crash) in message
    assert "Traceback" in crash.read_text() and "a bug deep inside" in crash.read_text()


def test_a_devloop_bug_shows_its_traceback_with_debug(sample_copy: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("a bug deep inside")

    monkeypatch.chdir(sample_copy)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setattr("devloop.config.load", broken)
    result = runner.invoke(app, ["--debug", "status"])
    assert result.exit_code == 4
    assert "Traceback" in result.output and "ZeroDivisionError: a bug deep inside" in result.output
