"""The real watcher (watchdog on inotify) on a real directory tree: what becomes a change."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from devloop.debounce import ChangeQueue
from devloop.ignore import IgnoreRules, parse_dockerignore
from devloop.plan import Change, Layout, plan
from devloop.watch import Watcher


class Collector:
    """Receives changes from the watcher thread; tests wait on a condition, never on a sleep."""

    def __init__(self) -> None:
        self.changes: list[Change] = []
        self.cond = threading.Condition()

    def __call__(self, change: Change) -> None:
        with self.cond:
            self.changes.append(change)
            self.cond.notify_all()

    def wait_for(self, predicate, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
        with self.cond:
            return self.cond.wait_for(lambda: predicate(self.changes), timeout)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    ctx = tmp_path / "app"
    (ctx / "lib").mkdir(parents=True)
    (ctx / "server.js").write_text("v1\n")
    (ctx / "lib" / "util.js").write_text("u\n")
    (ctx / "Dockerfile").write_text("FROM scratch\n")
    (ctx / ".dockerignore").write_text("node_modules\n*.md\n")
    return ctx


def rules(ctx: Path) -> IgnoreRules:
    return IgnoreRules(tuple(parse_dockerignore((ctx / ".dockerignore").read_text())), "Dockerfile")


@pytest.fixture
def watching(tree: Path) -> Iterator[tuple[Watcher, Collector]]:
    c = Collector()
    w = Watcher(tree, rules(tree), [], c)
    w.start()
    yield w, c
    w.stop()


def marker(ctx: Path, c: Collector, name: str) -> None:
    """Write a sentinel file and wait until the watcher reported it: everything before is delivered."""
    (ctx / name).write_text("x")
    assert c.wait_for(lambda ch: any(x.path.endswith(name) for x in ch))


def test_edit_is_seen(watching: tuple[Watcher, Collector], tree: Path) -> None:
    _, c = watching
    (tree / "lib" / "util.js").write_text("u2\n")
    assert c.wait_for(lambda ch: any(x.path == str(tree / "lib" / "util.js") for x in ch))


def test_reads_are_not_changes(watching: tuple[Watcher, Collector], tree: Path) -> None:
    _, c = watching
    for p in tree.rglob("*"):
        if p.is_file():
            p.read_bytes()  # what docker build and the hasher do
    marker(tree, c, "zz-marker")
    assert {x.path for x in c.changes} == {str(tree / "zz-marker")}


def test_editor_atomic_save_is_one_change_to_the_real_file(watching: tuple[Watcher, Collector], tree: Path) -> None:
    _, c = watching
    tmp = tree / ".server.js.swp"
    tmp.write_text("v2\n")
    os.replace(tmp, tree / "server.js")  # vim/VS Code style: write elsewhere, rename over
    assert c.wait_for(lambda ch: any(x.path == str(tree / "server.js") and not x.deleted for x in ch))
    layout = Layout(str(tree), rules(tree), ())
    p = plan(c.changes, layout)
    assert p.build and p.image_files == ("server.js",)  # the swap file itself never counts


def test_node_modules_gets_no_watch_and_no_changes(tmp_path: Path) -> None:
    ctx = tmp_path / "app"
    nm = ctx / "node_modules"
    for i in range(200):
        d = nm / f"pkg{i}"
        d.mkdir(parents=True)
        (d / "index.js").write_text("x")
    (ctx / "src").mkdir()
    (ctx / "Dockerfile").write_text("FROM scratch\n")
    c = Collector()
    w = Watcher(ctx, IgnoreRules(("node_modules",), "Dockerfile"), [], c)
    w.start()
    try:
        assert w.watch_count == 2  # the context's top level and src/, nothing under node_modules
        (nm / "pkg1" / "index.js").write_text("changed")
        (nm / "new-pkg").mkdir()
        marker(ctx, c, "zz-marker")
        assert {os.path.relpath(x.path, ctx) for x in c.changes} == {"zz-marker"}
    finally:
        w.stop()


def test_new_top_level_directory_is_watched(watching: tuple[Watcher, Collector], tree: Path) -> None:
    _, c = watching
    (tree / "routes").mkdir()
    marker(tree, c, "m1")  # the directory event has been handled by now
    (tree / "routes" / "a.js").write_text("a")
    assert c.wait_for(lambda ch: any(x.path == str(tree / "routes" / "a.js") for x in ch))


def test_hundred_saves_in_a_second_make_at_most_two_batches(tree: Path) -> None:
    q = ChangeQueue(quiet=0.2)
    w = Watcher(tree, rules(tree), [], q.put)
    w.start()
    batches: list[list[Change]] = []
    try:
        for i in range(100):
            (tree / "server.js").write_text(f"v{i}\n")
        (tree / "zz-marker").write_text("end")
        while True:
            batch = q.get_batch()
            assert batch is not None
            batches.append(batch)
            if any(ch.path.endswith("zz-marker") for ch in batch):
                break
    finally:
        w.stop()
        q.close()
    assert len(batches) <= 2
    assert (tree / "server.js").read_text() == "v99\n"
