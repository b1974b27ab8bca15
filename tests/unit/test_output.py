from __future__ import annotations

import io
import json
import threading

from devloop.errors import CycleFailed
from devloop.output import Output


def test_plain_text_when_not_a_terminal() -> None:
    buf = io.StringIO()
    out = Output(stdout=buf, stderr=buf)
    out.cycle_start(1, "image source changed", ["server.js"])
    out.cycle_done(1, phases={"build": 0.5, "load": 0.12}, total=1.2, image="my-web-app:dl-1", files=["server.js"])
    out.pod_log("web-app-abc", "listening on :3000")
    text = buf.getvalue()
    assert "\x1b[" not in text  # no colour codes in a pipe or a log file
    assert "▶ cycle 1 image source changed: server.js" in text
    assert "✔ cycle 1 ready in 1.20s" in text and "build 500ms · load 120ms" in text
    assert "web-app-abc │ listening on :3000" in text


def test_colour_on_a_terminal() -> None:
    buf = io.StringIO()
    Output(stdout=buf, stderr=buf, force_terminal=True).pod_log("web-app-abc", "hi")
    assert "\x1b[" in buf.getvalue()


def test_failed_cycle_shows_phase_reason_details_and_hint() -> None:
    buf = io.StringIO()
    err = CycleFailed(
        "rollout", "pod web-app-x: CrashLoopBackOff", "fix the code and save", details=["web-app-x: SyntaxError: Unexpected token"]
    )
    Output(stdout=buf, stderr=buf).cycle_done(2, phases={"build": 0.4}, total=7.0, image="i", error=err)
    text = buf.getvalue()
    assert "✖ cycle 2 failed in rollout after 7.00s: pod web-app-x: CrashLoopBackOff" in text
    assert "SyntaxError: Unexpected token" in text and "hint: fix the code and save" in text


def test_json_lines_carry_the_same_events() -> None:
    buf = io.StringIO()
    out = Output(json_mode=True, stdout=buf)
    out.cycle_start(1, "up", [])
    out.phase_start("build")
    out.cycle_done(1, phases={"build": 0.5}, total=0.6, image="x:dl-1")
    records = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert [r["event"] for r in records] == ["cycle_start", "phase_start", "cycle_done"]
    assert records[-1]["ok"] is True and records[-1]["phases"] == {"build": 0.5}


def test_verbose_shows_phases_and_skips_quiet_does_not() -> None:
    quiet, loud = io.StringIO(), io.StringIO()
    for buf, verbose in ((quiet, False), (loud, True)):
        out = Output(stdout=buf, stderr=buf, verbose=verbose)
        out.phase_done("build", 0.25, "built")
        out.skipped("not part of the image or manifests", ["/p/README.md"])
    assert quiet.getvalue() == ""
    assert "build" in loud.getvalue() and "README.md" in loud.getvalue()


def test_on_a_terminal_the_spinner_follows_the_progress_of_a_long_step() -> None:
    buf = io.StringIO()
    out = Output(stdout=buf, stderr=buf, force_terminal=True)
    with out.activity("publishing my-web-app:dl-1"):
        (spinner,) = out._spinners
        assert str(spinner.status) == "publishing my-web-app:dl-1"
        out.progress("web-app", "pushing localhost:5001/my-web-app:dl-1: 120.0 / 298.0 MB")
        assert str(spinner.status) == "web-app: pushing localhost:5001/my-web-app:dl-1: 120.0 / 298.0 MB"
    assert not out._spinners
    out.progress("web-app", "rollout 2/3")  # no spinner left: nothing to update, no error


def test_two_services_building_at_once_each_show_a_spinner_on_a_terminal() -> None:
    """The engine builds services in parallel threads, each inside `activity`: two spinners at once.
    rich before 14.1 refuses the second (LiveError: only one live display); pyproject's floor is 14.1."""
    stdout = io.StringIO()
    out = Output(stdout=stdout, stderr=io.StringIO(), force_terminal=True)
    both_open = threading.Barrier(2, timeout=30)  # a bound on a hang, not a speed figure
    errors: list[BaseException] = []

    def build(service: str) -> None:
        try:
            with out.activity(f"building {service}"):
                both_open.wait()  # the two spinners are open together
                both_open.wait()
        except BaseException as e:
            errors.append(e)
            both_open.abort()

    threads = [threading.Thread(target=build, args=(s,)) for s in ("web", "api")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []  # not LiveError('Only one live display may be active at once')
    assert "building " in stdout.getvalue()  # a spinner was drawn (a terminal view, not the plain one)
