"""Content tags: a hash of exactly what `docker build` would send, computed incrementally, and the
`dl-…` tag named after it. The engine tags every build with it, so equal sources are one image."""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from docker.utils.build import PatternMatcher, normalize_slashes

from devloop.ignore import ALWAYS_IGNORED_DIRS, parse_dockerignore

TAG_PREFIX = "dl-"


def read_dockerignore(context: Path) -> list[str]:
    path = context / ".dockerignore"
    if not path.is_file():
        return []
    return parse_dockerignore(path.read_text(encoding="utf-8", errors="replace"))


# A file or directory changed this recently may change again within the same tick of its mtime
# clock: what was read of it is not trusted by (size, mtime) alone ("racily clean", as git says).
RACY_NS = 2_000_000_000
FORGET_SLACK = 10_000  # paths remembered beyond what the contexts hold now (files created and deleted since)


@dataclass
class _Entry:
    key: tuple[int, int, int]
    digest: str
    racy: bool = False


@dataclass
class _Listing:
    """One directory of a build context as docker's walk sees it."""

    ident: tuple[int, int]  # (st_ino, st_mtime_ns) of the directory when it was listed
    racy: bool  # listed within RACY_NS of its last change: list it again next time
    included: tuple[str, ...]  # context-relative paths of its entries that docker sends
    subdirs: tuple[str, ...]  # the subdirectories docker's walk enters (an excluded one may be entered for a !pattern)
    unwatched: bool  # below a directory the watcher never watches (node_modules, .git, ...)


class _Tree:
    """What is known of one context for one .dockerignore and Dockerfile name."""

    def __init__(self, patterns: tuple[str, ...], dockerfile: str) -> None:
        self.key = (patterns, dockerfile)
        # exactly what docker.utils.build.exclude_paths builds
        self.matcher = PatternMatcher([*patterns, f"!{dockerfile}"])
        self.negations = [p.cleaned_pattern for p in self.matcher.patterns if p.exclusion]
        self.excluded: dict[str, bool] = {}  # relpath → matched by .dockerignore (a pure function of the path)
        self.listings: dict[str, _Listing] = {}  # "" is the context itself
        self.lines: dict[str, str] = {}  # included relpath → its line of the hash
        self.order: list[str] = []  # the included relpaths, sorted
        self.slots: dict[str, int] = {}  # relpath → its index in `order`
        self.seq: list[str] = []  # the lines in `order` ("" for a path that vanished while it was read)
        self.body: bytes | None = None  # the lines in order (None: join them again)
        self.epoch = -1  # the watcher epoch in which every file was last checked
        self.digests: dict[str, str] = {}  # the digest of `body`, per Dockerfile name and build arguments

    def matches(self, rel: str) -> bool:
        m = self.excluded.get(rel)
        if m is None:
            m = self.excluded[rel] = self.matcher.matches(rel)
        return m

    def enters(self, rel: str) -> bool:
        """docker's walk enters an excluded directory only when a !pattern starts with its path."""
        return any(neg.startswith(normalize_slashes(rel)) for neg in self.negations)


def _norm(p: Path | str) -> str:
    return os.path.normpath(os.path.abspath(p))


class ContextHasher:
    """A content hash of exactly what `docker build` would send (the files docker's own .dockerignore
    walk yields, their paths, executable bits and contents), computed incrementally.

    Each directory's listing is kept with the directory's (inode, mtime): a directory whose entries
    changed is listed again, the others are not (matching .dockerignore patterns against every path
    is most of the cost of a full walk). File digests are kept by (inode, size, mtime).

    Without a watcher every file is stat'ed on each digest. With one (`follow`, then `changed` for
    every path the watcher reports, including metadata-only changes) a digest stats the directories
    and reads only the files reported changed since the last one, the entries of directories whose
    listing changed, and the files below directories the watcher does not watch; the first digest
    after `follow` still checks every file. The digest is the same either way: the same bytes as a
    full walk over the same content.
    """

    def __init__(self) -> None:
        self._cache: dict[str, _Entry] = {}
        self._trees: dict[str, _Tree] = {}
        self._lock = threading.Lock()  # one digest at a time (services may share a context)
        self._feed = threading.Lock()  # the watcher's thread vs digests: the fields below
        self._epoch = 0
        self._followed: dict[str, set[str]] = {}  # followed context → relpaths reported changed since its last digest

    # -- the watcher's feed -----------------------------------------------------------------------------
    def follow(self, contexts: Iterable[Path | str]) -> None:
        """A watcher now reports every change below these contexts (and only these) through `changed`."""
        with self._feed:
            self._epoch += 1
            self._followed = {_norm(c): set() for c in contexts}

    def changed(self, path: str) -> None:
        """The watcher saw `path` (absolute) change: its content, its metadata, or its existence."""
        path = _norm(path)
        with self._feed:
            for context, dirty in self._followed.items():
                if path.startswith(context + os.sep):
                    dirty.add(os.path.relpath(path, context).replace(os.sep, "/"))

    # -- the digest -------------------------------------------------------------------------------------
    def digest(self, context: Path, dockerfile: str, build_args: Mapping[str, str]) -> str:
        head = f"dockerfile={dockerfile}\n" + "".join(f"arg {k}={build_args[k]}\n" for k in sorted(build_args))
        ctx = _norm(context)
        with self._lock:
            body = self._body(ctx, tuple(read_dockerignore(context)), dockerfile)
            done = self._trees[ctx].digests
            if head not in done:  # the same lines as the last digest: its hash (a cycle asks twice)
                h = hashlib.sha256(head.encode())
                h.update(body)
                done[head] = h.hexdigest()
            return done[head]

    def _body(self, ctx: str, patterns: tuple[str, ...], dockerfile: str) -> bytes:
        with self._feed:  # what was reported before this point is handled by this digest
            epoch = self._epoch
            dirty = self._followed.get(ctx)
            fed = dirty is not None
            reported: set[str] = set(dirty) if dirty is not None else set()
            if dirty is not None:
                dirty.clear()
        tree = self._trees.get(ctx)
        if tree is None or tree.key != (patterns, dockerfile):
            tree = self._trees[ctx] = _Tree(patterns, dockerfile)
        full = not fed or tree.epoch != epoch
        relist = {os.path.dirname(r) for r in reported}  # a reported creation or deletion: list its directory again
        now = time.time_ns()
        check: set[str] = set()  # included paths to stat (cached digests allowed)
        structure = False
        seen: set[str] = set()
        stack = [""]
        while stack:
            rel = stack.pop()
            path = os.path.join(ctx, rel) if rel else ctx
            try:
                st = os.lstat(path)
                if not stat.S_ISDIR(st.st_mode):
                    raise NotADirectoryError(path)
            except (FileNotFoundError, NotADirectoryError):
                if not rel:
                    raise
                tree.listings.pop(os.path.dirname(rel), None)  # gone meanwhile: list its parent again next time
                continue
            old = tree.listings.get(rel)
            if old is not None and not old.racy and old.ident == (st.st_ino, st.st_mtime_ns) and rel not in relist:
                listing = old
                if full or listing.unwatched:
                    check.update(listing.included)
            else:
                try:
                    listing = tree.listings[rel] = self._list(tree, path, rel, st, now)
                except (FileNotFoundError, NotADirectoryError):
                    if not rel:
                        raise
                    tree.listings.pop(os.path.dirname(rel), None)
                    continue
                if old is None or old.ident != listing.ident or full or listing.unwatched:
                    check.update(listing.included)  # perhaps another directory under the same name: check all
                else:
                    check.update(set(listing.included) - set(old.included))
                structure |= old is None or old.included != listing.included or old.subdirs != listing.subdirs
            seen.add(rel)
            stack.extend(listing.subdirs)
        for rel in [r for r in tree.listings if r not in seen]:
            del tree.listings[rel]
            structure = True
        if structure:
            tree.order = sorted(r for listing in tree.listings.values() for r in listing.included)
            included = set(tree.order)
            for rel in [r for r in tree.lines if r not in included]:
                del tree.lines[rel]
            tree.body = None
            self._forget(tree)
        else:
            included = None
        reread = {r for r in reported if r in tree.lines or (included is not None and r in included)}
        moved: list[str] = []  # lines that changed (when the order did not)
        for rel in check | reread:
            line = self._line(ctx, rel, reread=rel in reread)
            if line is None:
                if tree.lines.pop(rel, None) is not None:
                    moved.append(rel)
                tree.listings.pop(os.path.dirname(rel), None)  # gone meanwhile: list its directory again next time
            elif tree.lines.get(rel) != line:
                tree.lines[rel] = line
                moved.append(rel)
        if structure:
            tree.slots = {r: i for i, r in enumerate(tree.order)}
            tree.seq = [tree.lines.get(r, "") for r in tree.order]
        else:
            for rel in moved:
                tree.seq[tree.slots[rel]] = tree.lines.get(rel, "")
        if moved or tree.body is None:
            tree.body = "".join(tree.seq).encode()
            tree.digests = {}
        tree.epoch = epoch
        return tree.body

    def _forget(self, tree: _Tree) -> None:
        """Bound what a long session of created and deleted files leaves behind: the memo of matched
        paths and the digests of files no context holds any more."""
        if len(tree.excluded) > 4 * len(tree.order) + FORGET_SLACK:
            tree.excluded.clear()
        if len(self._cache) > 2 * sum(len(t.lines) for t in self._trees.values()) + FORGET_SLACK:
            held = {os.path.join(c, r) for c, t in self._trees.items() for r in t.lines}
            self._cache = {p: e for p, e in self._cache.items() if p in held}

    def _list(self, tree: _Tree, path: str, rel: str, st: os.stat_result, now: int) -> _Listing:
        """docker.utils.build.PatternMatcher.walk for one directory."""
        included: list[str] = []
        subdirs: list[str] = []
        with os.scandir(path) as it:
            for entry in it:
                fpath = f"{rel}/{entry.name}" if rel else entry.name
                excluded = tree.matches(fpath)
                if not excluded:
                    included.append(fpath)
                if entry.is_dir(follow_symlinks=False) and (not excluded or tree.enters(fpath)):
                    subdirs.append(fpath)
        return _Listing(
            ident=(st.st_ino, st.st_mtime_ns),
            racy=now - st.st_mtime_ns < RACY_NS,
            included=tuple(sorted(included)),
            subdirs=tuple(sorted(subdirs)),
            unwatched=any(p in ALWAYS_IGNORED_DIRS for p in rel.split("/")),
        )

    def _line(self, ctx: str, rel: str, reread: bool) -> str | None:
        full = os.path.join(ctx, rel)
        try:
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                return f"L {rel} {os.readlink(full)}\n"
            if stat.S_ISDIR(st.st_mode):
                return f"D {rel}\n"
            return f"F {rel} {st.st_mode & 0o111:o} {self._file(Path(full), st, reread)}\n"
        except FileNotFoundError:
            return None  # removed while we looked: the watcher reports it (or the next digest lists it)

    def _file(self, path: Path, st: os.stat_result, reread: bool = False) -> str:
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        entry = self._cache.get(str(path))
        if not reread and entry is not None and entry.key == key and not entry.racy:
            return entry.digest
        fh = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                fh.update(chunk)
        digest = fh.hexdigest()
        self._cache[str(path)] = _Entry(key, digest, racy=time.time_ns() - st.st_mtime_ns < RACY_NS)
        return digest


def content_tag(digest: str) -> str:
    return TAG_PREFIX + digest[:16]
