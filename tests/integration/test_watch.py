"""The real watcher (watchdog on inotify) on a real directory tree: what becomes a change."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from devloop.debounce import ChangeQueue
from devloop.ignore import IgnoreRules, parse_dockerignore
from devloop.plan import Change
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
    w = Watcher([(tree, rules(tree))], [], c)
    w.start()
    yield w, c
    w.stop()


def marker(ctx: Path, c: Collector, name: str) -> None:
    """Write a sentinel file and wait until the watcher reported it: everything before is delivered."""
    (ctx / name).write_text("x")
    assert c.wait_for(lambda ch: any(x.path == str(ctx / name) for x in ch))


def paths(c: Collector) -> list[str]:
    with c.cond:
        return [x.path for x in c.changes]


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
    # the swap file is reported too, but never reaches the image
    r = rules(tree)
    assert {os.path.relpath(x.path, tree) for x in c.changes if r.reaches_image(os.path.relpath(x.path, tree))} == {"server.js"}


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
    w = Watcher([(ctx, IgnoreRules(("node_modules",), "Dockerfile"))], [], c)
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
    w = Watcher([(tree, rules(tree))], [], q.put)
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


def test_renamed_directory_is_watched_under_its_new_name_only(watching: tuple[Watcher, Collector], tree: Path) -> None:
    w, c = watching
    static, assets = tree / "static", tree / "assets"
    static.mkdir()
    (static / "old.txt").write_text("o")
    marker(tree, c, "m1")
    assert w.watches.get(str(static)) is True
    before = len(paths(c))
    os.rename(static, assets)
    (assets / "new.txt").write_text("n")
    assert c.wait_for(lambda ch: Change(str(assets / "new.txt"), created=True) in ch)
    (assets / "new.txt").write_text("n2")  # an edit after the move: reported under assets/ only
    marker(assets, c, "m2")
    marker(tree, c, "m3")
    seen = paths(c)[before:]
    assert not any(p.startswith(str(static) + os.sep) for p in seen)  # never static/new.txt
    assert Change(str(static), deleted=True) in c.changes  # the old path is gone...
    assert Change(str(assets / "old.txt"), created=True) in c.changes  # ...and its files are new under the new one
    assert str(static) not in w.watches and w.watches.get(str(assets)) is True


def test_directory_moved_out_of_the_context_reports_nothing_under_its_old_path(tmp_path: Path, tree: Path) -> None:
    """A move out of the context is a deletion to the context's watch, which watchdog reports only
    after waiting (0.5 s) for a matching move in. The watch made for static/ reports the new file
    right away, under the old path: that must be dropped."""
    static, elsewhere = tree / "static", tmp_path / "elsewhere"
    static.mkdir()
    c = Collector()
    w = Watcher([(tree, rules(tree))], [], c)
    w.start()
    try:
        assert w.watches.get(str(static)) is True
        os.rename(static, elsewhere)
        (elsewhere / "new.txt").write_text("n")
        assert c.wait_for(lambda ch: Change(str(static), deleted=True) in ch)
        marker(tree, c, "m1")
        assert str(static / "new.txt") not in paths(c)
        (tree / "routes").mkdir()  # a reconcile: the watch that followed static/ away is dropped
        marker(tree, c, "m2")
        assert dict(w.watches) == {str(tree): False, str(tree / "lib"): True, str(tree / "routes"): True}
    finally:
        w.stop()


def test_renamed_directory_and_a_new_one_with_the_old_name(watching: tuple[Watcher, Collector], tree: Path) -> None:
    w, c = watching
    static, assets = tree / "static", tree / "assets"
    static.mkdir()
    marker(tree, c, "m1")
    os.rename(static, assets)
    static.mkdir()
    (assets / "a.txt").write_text("a")
    (static / "s.txt").write_text("s")
    assert c.wait_for(lambda ch: {str(assets / "a.txt"), str(static / "s.txt")} <= {x.path for x in ch})
    marker(assets, c, "m2")
    marker(static, c, "m3")
    seen = paths(c)
    assert str(static / "a.txt") not in seen and str(assets / "s.txt") not in seen
    assert w.watches.get(str(static)) is True and w.watches.get(str(assets)) is True


def test_deleted_directory_reports_its_files_and_is_watched_again_when_recreated(watching: tuple[Watcher, Collector], tree: Path) -> None:
    w, c = watching
    lib = tree / "lib"
    (lib / "util.js").unlink()
    lib.rmdir()
    assert c.wait_for(lambda ch: {Change(str(lib), deleted=True), Change(str(lib / "util.js"), deleted=True)} <= set(ch))
    lib.mkdir()
    marker(tree, c, "m1")  # lib/ was created before m1: it has a new watch by now
    assert w.watches.get(str(lib)) is True
    (lib / "again.js").write_text("a")
    assert c.wait_for(lambda ch: any(x.path == str(lib / "again.js") for x in ch))
    assert paths(c).count(str(lib)) == 1  # the deletion, from the context's watch only (not again from lib's own)


def make_context(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_two_contexts_each_with_its_own_rules(tmp_path: Path) -> None:
    api = make_context(tmp_path / "api", {"server.js": "", "src/a.js": "", "node_modules/x/i.js": "", "Dockerfile": ""})
    web = make_context(tmp_path / "web", {"index.js": "", "public/i.html": "", "dist/b.js": "", "node_modules/y/i.js": ""})
    manifest = make_context(tmp_path / "k8s", {"web.yaml": ""}) / "web.yaml"
    c = Collector()
    w = Watcher([(api, IgnoreRules(("node_modules",))), (web, IgnoreRules(("dist",)))], [manifest], c)
    w.start()
    try:
        assert dict(w.watches) == {
            str(api): False,
            str(api / "src"): True,
            str(web): False,
            str(web / "dist"): True,  # .dockerignore'd files still get watched (plan says why they are skipped)
            str(web / "public"): True,
            str(tmp_path / "k8s"): False,
        }
        (api / "src" / "a.js").write_text("1")
        (web / "public" / "i.html").write_text("1")
        manifest.write_text("kind: Deployment\n")
        (api / "node_modules" / "x" / "i.js").write_text("1")
        (web / "node_modules" / "y" / "i.js").write_text("1")
        for ctx in (api, web):
            marker(ctx, c, "zz-marker")
        marker(tmp_path / "k8s", c, "zz-marker")
        seen = {os.path.relpath(p, tmp_path) for p in paths(c)}
        assert {"api/src/a.js", "web/public/i.html", "k8s/web.yaml"} <= seen
        assert not any("node_modules" in p for p in seen)
    finally:
        w.stop()


def test_shared_and_nested_roots_watch_each_directory_once(tmp_path: Path) -> None:
    mono = make_context(tmp_path / "mono", {"package.json": "", "lib/a.js": "", "svc/server.js": "", "svc/src/b.js": ""})
    make_context(mono / "svc" / "node_modules" / "dep", {"index.js": ""})
    c = Collector()
    # the same context twice (two services built from one directory), and one nested inside it
    w = Watcher([(mono, IgnoreRules()), (mono, IgnoreRules(("svc",))), (mono / "svc", IgnoreRules())], [mono / "package.json"], c)
    w.start()
    try:
        assert dict(w.watches) == {str(mono): False, str(mono / "lib"): True, str(mono / "svc"): False, str(mono / "svc" / "src"): True}
        # a rename is exactly one event per watch that sees it: a second watch would double it
        os.rename(mono / "lib" / "a.js", mono / "lib" / "a2.js")
        os.rename(mono / "svc" / "src" / "b.js", mono / "svc" / "src" / "b2.js")
        os.rename(mono / "svc" / "server.js", mono / "svc" / "server2.js")
        (mono / "svc" / "node_modules" / "dep" / "index.js").write_text("1")
        for d in (mono / "lib", mono / "svc" / "src", mono / "svc", mono):
            marker(d, c, "zz-marker")
        with c.cond:
            created = [os.path.relpath(x.path, mono) for x in c.changes if x.created]
        for name in ("lib/a2.js", "svc/src/b2.js", "svc/server2.js"):
            assert created.count(name) == 1, name
        assert not any("node_modules" in p for p in paths(c))
    finally:
        w.stop()


def test_update_adds_and_removes_roots_and_paths(tmp_path: Path) -> None:
    api = make_context(tmp_path / "api", {"server.js": "", "src/a.js": ""})
    web = make_context(tmp_path / "web", {"index.js": "", "public/i.html": ""})
    cfg = make_context(tmp_path, {"devloop.yaml": ""}) / "devloop.yaml"
    c = Collector()
    w = Watcher([(api, IgnoreRules())], [cfg], c)
    w.start()
    try:
        assert w.watch_count == 3  # api, api/src, the config file's directory
        w.update([(api, IgnoreRules()), (web, IgnoreRules())], [cfg])
        assert w.watch_count == 5
        (web / "public" / "i.html").write_text("1")
        assert c.wait_for(lambda ch: any(x.path == str(web / "public" / "i.html") for x in ch))
        w.update([(web, IgnoreRules())], [])
        assert dict(w.watches) == {str(web): False, str(web / "public"): True}
        (api / "src" / "a.js").write_text("1")
        (api / "server.js").write_text("1")
        cfg.write_text("x: 1\n")
        marker(web / "public", c, "zz-marker")
        marker(web, c, "zz-marker")
        seen = paths(c)
        assert not any(p.startswith(str(api)) or p == str(cfg) for p in seen)
    finally:
        w.stop()


def test_chmod_starts_no_change_but_feeds_the_content_hasher(tree: Path) -> None:
    """A mode change reaches the image (the executable bit) yet is no save: only on_touch hears it,
    and the hasher fed by it gives the same digest as a full walk."""
    from devloop.images import ContextHasher

    c = Collector()
    touched: list[str] = []
    hasher = ContextHasher()
    done = threading.Event()

    def touch(path: str) -> None:
        hasher.changed(path)
        touched.append(path)
        if path == str(tree / "server.js"):
            done.set()

    w = Watcher([(tree, rules(tree))], [], c, on_touch=touch)
    w.start()
    try:
        hasher.follow([tree])
        before = hasher.digest(tree, "Dockerfile", {})
        (tree / "server.js").chmod(0o755)
        assert done.wait(5)
        marker(tree, c, "zz-marker")
        assert str(tree / "server.js") not in paths(c)
        assert str(tree / "zz-marker") in touched  # every change's path is heard first
        after = hasher.digest(tree, "Dockerfile", {})
        assert after != before
        assert after == ContextHasher().digest(tree, "Dockerfile", {})
    finally:
        w.stop()
