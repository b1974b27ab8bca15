"""The published view (devloop.view): what the worker's publications do to it, and who hears of them."""

from __future__ import annotations

import io

from devloop.output import Output
from devloop.view import Board, Forward, Pod, Running


def board() -> tuple[Board, Output]:
    out = Output(json_mode=True, stdout=io.StringIO())
    return Board(out), out


def test_the_forwards_shown_are_the_ones_the_worker_runs_with_the_readiness_their_events_said() -> None:
    b, out = board()
    a, c = "http://127.0.0.1:8080", "http://127.0.0.1:8081"
    b.publish([Running("web", forwards=(a, c))])
    out.forward(a, True, "HTTP 200", service="web")
    assert b.view.service("web").forwards == (Forward(a, True, "HTTP 200"), Forward(c))

    b.publish([Running("web", forwards=(a,))])  # a reload removed the second forward: its URL goes from the page
    assert b.view.service("web").forwards == (Forward(a, True, "HTTP 200"),)


def test_a_publisher_that_does_not_know_the_forwards_keeps_those_the_events_named() -> None:
    b, out = board()
    out.forward("http://127.0.0.1:8080", True, service="web")
    b.publish([Running("web", healthy=True, forwards=None)])  # a snapshot without forwards (a page without a session)
    assert [f.url for f in b.view.service("web").forwards] == ["http://127.0.0.1:8080"]


def test_the_board_tells_its_watchers_of_each_change_and_only_of_a_change() -> None:
    b, _ = board()
    seen: list[tuple[Pod, ...]] = []
    b.watch(lambda: seen.append(b.view.service("web").pods))  # called after the swap: the view has the change
    b.publish_pods("web", [Pod("web-1", True, 0)])
    b.publish_pods("web", [Pod("web-1", True, 0)])  # the same table again: nothing to tell
    b.publish_pods("web", [Pod("web-1", False, 1, "CrashLoopBackOff")])
    b.publish([Running("web")])
    b.publish([Running("web")])
    assert seen == [(Pod("web-1", True, 0),), (Pod("web-1", False, 1, "CrashLoopBackOff"),), (Pod("web-1", False, 1, "CrashLoopBackOff"),)]
