"""The content hasher: the same digest as a full walk of what docker sends, whatever changed and
however the hasher learnt of it (stat'ing everything, or the watcher's reports)."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from docker.utils.build import exclude_paths

from devloop.hasher import ContextHasher, read_dockerignore

ARGS = {"NODE_IMAGE": "node:24-alpine"}


def reference(context: Path, dockerfile: str = "Dockerfile", build_args: dict[str, str] = ARGS) -> str:
    """The digest as devloop computed it before the incremental hasher: the docker SDK's own walk,
    every file read."""
    h = hashlib.sha256()
    h.update(f"dockerfile={dockerfile}\n".encode())
    for k in sorted(build_args):
        h.update(f"arg {k}={build_args[k]}\n".encode())
    for rel in sorted(exclude_paths(str(context), read_dockerignore(context), dockerfile=dockerfile)):
        full = context / rel
        st = full.lstat()
        if full.is_symlink():
            h.update(f"L {rel} {os.readlink(full)}\n".encode())
        elif full.is_dir():
            h.update(f"D {rel}\n".encode())
        else:
            h.update(f"F {rel} {st.st_mode & 0o111:o} {hashlib.sha256(full.read_bytes()).hexdigest()}\n".encode())
    return h.hexdigest()


OLD = time.time() - 3600  # an mtime long past: not "racily clean"


def age(*paths: Path) -> None:
    for p in paths:
        os.utime(p, (OLD, OLD), follow_symlinks=False)


@pytest.fixture
def ctx(tmp_path: Path) -> Path:
    c = tmp_path / "app"
    for d in ("lib/deep", "docs", "test/fixtures", "node_modules/pkg", "keepdir"):
        (c / d).mkdir(parents=True)
    (c / "Dockerfile").write_text("FROM scratch\nCOPY . .\n")
    (c / ".dockerignore").write_text("node_modules\n*.md\n!KEEP.md\ntest\n!test/fixtures/wanted.js\n")
    (c / "server.js").write_text("v1\n")
    (c / "lib" / "util.js").write_text("u\n")
    (c / "lib" / "deep" / "x.js").write_text("x\n")
    (c / "docs" / "a.md").write_text("a\n")
    (c / "KEEP.md").write_text("kept\n")
    (c / "README.md").write_text("ignored\n")
    (c / "test" / "fixtures" / "wanted.js").write_text("w\n")
    (c / "test" / "fixtures" / "other.js").write_text("o\n")
    (c / "node_modules" / "pkg" / "index.js").write_text("m\n")
    (c / "link").symlink_to("lib/util.js")
    age(*c.rglob("*"), c)
    return c


def fed(ctx: Path) -> ContextHasher:
    """A hasher fed by a (simulated) watcher over `ctx`, after its first full digest."""
    h = ContextHasher()
    h.follow([ctx])
    assert h.digest(ctx, "Dockerfile", ARGS) == reference(ctx)
    return h


def test_full_walk_equals_the_docker_walk(ctx: Path) -> None:
    h = ContextHasher()
    assert h.digest(ctx, "Dockerfile", ARGS) == reference(ctx)
    assert h.digest(ctx, "Dockerfile", ARGS) == reference(ctx)  # from the caches
    assert h.digest(ctx, "Dockerfile", {}) == reference(ctx, build_args={})
    (ctx / "Dockerfile.dev").write_text("FROM scratch\n")
    assert h.digest(ctx, "Dockerfile.dev", ARGS) == reference(ctx, "Dockerfile.dev")


def edits() -> list[tuple[str, Callable[[Path], list[str]]]]:
    """Changes of the context, each returning the paths a watcher reports for it."""

    def write(c: Path) -> list[str]:
        (c / "lib" / "util.js").write_text("u2\n")
        return ["lib/util.js"]

    def create(c: Path) -> list[str]:
        (c / "lib" / "deep" / "new.js").write_text("n\n")
        return ["lib/deep/new.js"]

    def delete(c: Path) -> list[str]:
        (c / "lib" / "deep" / "x.js").unlink()
        return ["lib/deep/x.js"]

    def rename_dir(c: Path) -> list[str]:
        (c / "lib").rename(c / "src")
        return ["lib", "src", "src/util.js", "src/deep/x.js"]

    def empty_dir(c: Path) -> list[str]:
        (c / "keepdir" / "empty").mkdir()
        return []  # the watcher reports the files below a new directory: none

    def chmod(c: Path) -> list[str]:
        (c / "server.js").chmod(0o755)
        return ["server.js"]  # a metadata event (on_touch), no Change

    def negated(c: Path) -> list[str]:
        (c / "test" / "fixtures" / "wanted.js").write_text("w2\n")
        return ["test/fixtures/wanted.js"]

    def ignored(c: Path) -> list[str]:
        (c / "docs" / "b.md").write_text("b\n")
        return ["docs/b.md"]

    def dockerignore(c: Path) -> list[str]:
        (c / ".dockerignore").write_text("node_modules\n")
        return [".dockerignore"]

    def relink(c: Path) -> list[str]:
        (c / "link").unlink()
        (c / "link").symlink_to("server.js")
        return ["link"]

    def replace_atomically(c: Path) -> list[str]:  # an editor's save: write a temp file, rename it over
        (c / ".server.js.tmp").write_text("v2\n")
        (c / ".server.js.tmp").rename(c / "server.js")
        return [".server.js.tmp", "server.js"]

    def unwatched(c: Path) -> list[str]:  # node_modules is sent when .dockerignore lets it, never watched
        (c / ".dockerignore").write_text("*.md\n")
        age(c / ".dockerignore")
        return [".dockerignore"]

    return [(f.__name__, f) for f in (write, create, delete, rename_dir, empty_dir, chmod, negated, ignored, dockerignore, relink, replace_atomically, unwatched)]  # fmt: skip


@pytest.mark.parametrize("edit", [f for _, f in edits()], ids=[n for n, _ in edits()])
@pytest.mark.parametrize("mode", ["stat", "fed"])
def test_each_change_gives_the_full_walk_digest(ctx: Path, edit: Callable[[Path], list[str]], mode: str) -> None:
    h = fed(ctx) if mode == "fed" else ContextHasher()
    before = h.digest(ctx, "Dockerfile", ARGS)
    for rel in edit(ctx):
        h.changed(str(ctx / rel))
    after = h.digest(ctx, "Dockerfile", ARGS)
    assert after == reference(ctx)
    assert h.digest(ctx, "Dockerfile", ARGS) == after
    if edit.__name__ != "ignored":
        assert after != before


def test_unwatched_directories_are_stated_even_when_fed(ctx: Path) -> None:
    (ctx / ".dockerignore").write_text("*.md\n")  # node_modules reaches the image
    age(ctx / ".dockerignore")
    h = fed(ctx)
    (ctx / "node_modules" / "pkg" / "index.js").write_text("m2, longer\n")  # never reported: no watch there
    assert h.digest(ctx, "Dockerfile", ARGS) == reference(ctx)


def test_fed_digest_reads_only_reported_files(ctx: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    h = fed(ctx)
    read: list[str] = []
    real = ContextHasher._file

    def spy(self: ContextHasher, path: Path, st: os.stat_result, reread: bool = False) -> str:
        read.append(os.path.relpath(path, ctx))
        return real(self, path, st, reread)

    monkeypatch.setattr(ContextHasher, "_file", spy)
    (ctx / "server.js").write_text("v2\n")
    h.changed(str(ctx / "server.js"))
    assert h.digest(ctx, "Dockerfile", ARGS) == reference(ctx)
    assert read == ["server.js"]
    read.clear()
    assert h.digest(ctx, "Dockerfile", ARGS) == reference(ctx)
    assert read == []


def test_reported_file_is_read_again_even_with_the_same_size_and_mtime(ctx: Path) -> None:
    h = fed(ctx)
    (ctx / "server.js").write_text("v9\n")  # same size
    age(ctx / "server.js")  # and the same mtime as before
    h.changed(str(ctx / "server.js"))
    assert h.digest(ctx, "Dockerfile", ARGS) == reference(ctx)


def test_recently_written_file_is_not_trusted_by_size_and_mtime(ctx: Path) -> None:
    """Racily clean: a file hashed within the same mtime tick as a later write of the same size."""
    h = ContextHasher()
    f = ctx / "server.js"
    f.write_text("v2\n")
    now = time.time()
    os.utime(f, (now, now))
    h.digest(ctx, "Dockerfile", ARGS)
    f.write_text("v3\n")  # same size, and the same mtime:
    os.utime(f, (now, now))
    assert h.digest(ctx, "Dockerfile", ARGS) == reference(ctx)


def test_recently_changed_directory_is_listed_again(ctx: Path) -> None:
    h = fed(ctx)
    d = ctx / "lib" / "deep"
    (d / "a.js").write_text("a\n")
    now = time.time()
    os.utime(d, (now, now))
    h.changed(str(d / "a.js"))
    h.digest(ctx, "Dockerfile", ARGS)
    (d / "b").mkdir()  # an empty directory: no file for the watcher to report; same mtime tick
    os.utime(d, (now, now))
    assert h.digest(ctx, "Dockerfile", ARGS) == reference(ctx)


def test_a_new_follow_checks_every_file_once(ctx: Path) -> None:
    h = fed(ctx)
    (ctx / "server.js").write_text("v9\n")
    age(ctx / "server.js")  # unreported and stat-identical: only a full read could see it ...
    h.follow([ctx])  # ... but a new watcher epoch re-checks every file (by stat: this one is not seen)
    h.digest(ctx, "Dockerfile", ARGS)
    (ctx / "server.js").write_text("v10, longer\n")  # unreported, different size: the epoch's full check sees it
    h.follow([ctx])
    assert h.digest(ctx, "Dockerfile", ARGS) == reference(ctx)


def test_paths_outside_followed_contexts_are_ignored(ctx: Path, tmp_path: Path) -> None:
    h = fed(ctx)
    h.changed(str(tmp_path / "elsewhere.js"))
    h.changed(str(ctx) + "-sibling/x.js")
    assert h.digest(ctx, "Dockerfile", ARGS) == reference(ctx)


def test_missing_context_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        ContextHasher().digest(tmp_path / "nope", "Dockerfile", {})


def test_created_and_deleted_files_are_forgotten(ctx: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A long session of temporary files does not grow the hasher's memory without bound."""
    import devloop.hasher as hasher

    monkeypatch.setattr(hasher, "FORGET_SLACK", 5)
    h = fed(ctx)
    for i in range(40):
        tmp = ctx / "lib" / f"tmp{i}.js"
        tmp.write_text(f"{i}\n")
        h.changed(str(tmp))
        h.digest(ctx, "Dockerfile", ARGS)
        tmp.unlink()
        h.changed(str(tmp))
        assert h.digest(ctx, "Dockerfile", ARGS) == reference(ctx)
    tree = h._trees[str(ctx)]
    assert len(tree.excluded) <= 4 * len(tree.order) + 5 + 2
    assert len(h._cache) <= 2 * len(tree.lines) + 5 + 2
