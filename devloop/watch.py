"""The file watcher (watchdog). Turns filesystem events into `Change`s for the pipeline.

devloop watches several roots (one build context per service, each with its own .dockerignore
rules) plus extra paths (manifests, config files). watchdog cannot skip a directory inside a
recursive watch, so each root's top level is scheduled without recursion and each subdirectory
that matters recursively: `node_modules` and `.git` never get an inotify watch, however many
files they hold. A directory that holds another root (nested contexts) is split the same way, so
the inner root's `node_modules` stays unwatched too.

Every directory gets at most one watch, and none lies below a recursive one: two roots that are
the same directory, or nested, report each event once.

A watch follows its directory's inode, not its path: after `mv static assets` the watch made for
`static` would report `assets/new.txt` as `static/new.txt`. So a directory move unschedules the
watches at the old path (and below) and schedules the new one, and events still queued from a
watch whose path no longer names its directory are dropped.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from watchdog.events import (
    EVENT_TYPE_ATTRIB,
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from devloop.errors import EnvironmentMissing
from devloop.ignore import ALWAYS_IGNORED_DIRS, IgnoreRules
from devloop.plan import Change

# Reads (docker build tarring the context, the hasher) must never look like changes.
EVENTS = [
    FileModifiedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileClosedEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,  # a chmod changes what the image holds, yet starts no cycle: only `on_touch` hears it
]

_NO_RULES = IgnoreRules()


def _fspath(p: str | bytes) -> str:
    return os.fsdecode(p)


def _norm(p: Path | str) -> str:
    return os.path.normpath(os.path.abspath(p))


def _under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def _subdirs(directory: str) -> list[str]:
    try:
        with os.scandir(directory) as it:
            return sorted(e.path for e in it if e.is_dir(follow_symlinks=False))
    except OSError:  # vanished meanwhile: its deletion event follows
        return []


def plan_watches(roots: Sequence[tuple[str, IgnoreRules]], extra_paths: Iterable[str]) -> dict[str, bool]:
    """Which directories get a watch (directory → recursive), from what is on disk now.

    A root: its top level without recursion, each subdirectory not ignored recursively. A
    directory that is, or holds, another root is split instead of watched recursively. An extra
    directory is watched recursively (split likewise); an extra file through its parent directory.
    One entry per directory; none below a recursive entry. Paths are normalised absolute strings.
    """
    root_dirs = [r for r, _ in roots]
    want: dict[str, bool] = {}

    def ignored(path: str, rules: IgnoreRules) -> bool:
        # a directory ignored by the rules of any root that contains it
        name_ignored = rules.ignored_dir(os.path.basename(path))
        return name_ignored or any(
            path != r and _under(path, r) and rr.ignored_dir(os.path.relpath(path, r).replace(os.sep, "/")) for r, rr in roots
        )

    def subtree(directory: str, rules: IgnoreRules) -> None:
        if any(_under(r, directory) for r in root_dirs):
            want[directory] = want.get(directory, False)
            for sub in _subdirs(directory):
                if not ignored(sub, rules):
                    subtree(sub, rules)
        else:
            want[directory] = True

    for root, rules in roots:
        if not os.path.isdir(root):
            continue
        want[root] = want.get(root, False)
        for sub in _subdirs(root):
            if not ignored(sub, rules):
                subtree(sub, rules)
    for p in extra_paths:
        if os.path.isdir(p):
            subtree(p, _NO_RULES)
        elif os.path.isdir(os.path.dirname(p)):
            parent = os.path.dirname(p)
            want[parent] = want.get(parent, False)
    recursive = [d for d, r in want.items() if r]
    return {d: r for d, r in sorted(want.items()) if not any(d != q and _under(d, q) for q in recursive)}


def _ident(directory: str) -> tuple[int, int] | None:
    try:
        st = os.stat(directory)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _event_filter() -> list[type[FileSystemEvent]]:
    """EVENTS plus an event class of its own, never emitted. watchdog knows a watch by (path,
    recursive, filter): a watch made for a path that a stale watch still holds (a directory moved
    away and a new one made under the old name) must not share the old one's emitter and queue."""
    token: type[FileSystemEvent] = type("_WatchToken", (FileSystemEvent,), {})
    return [*EVENTS, token]


@dataclass(eq=False)
class _Watch:
    path: str
    recursive: bool
    ident: tuple[int, int]  # (st_dev, st_ino) of the directory when the watch was made
    observed: Any = None  # watchdog's ObservedWatch
    doomed: bool = False  # its directory is gone: only the deletions still queued below it count


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: Watcher, watch: _Watch) -> None:
        self.watcher = watcher
        self.watch = watch

    def on_any_event(self, event: FileSystemEvent) -> None:
        self.watcher._on_event(self.watch, event)


class Watcher:
    """Watches `roots` (build contexts with their ignore rules) and `extra_paths` (files or
    directories: manifests, config files) and calls `on_change` on watchdog's thread.

    `on_touch`, when given, hears every path first: each path of a `Change` just before it, and the
    files whose metadata alone changed (a chmod), which start no cycle (the content hasher's feed)."""

    def __init__(
        self,
        roots: Sequence[tuple[Path, IgnoreRules]],
        extra_paths: Iterable[Path],
        on_change: Callable[[Change], None],
        on_touch: Callable[[str], None] | None = None,
    ) -> None:
        self.on_change = on_change
        self.on_touch = on_touch
        self._roots = [(_norm(p), rules) for p, rules in roots]
        self._extra = [_norm(p) for p in extra_paths]
        self._observer = Observer()
        # watchdog calls handlers with the observer's lock held, and the handlers change watches.
        # Guarding our bookkeeping with that same lock keeps one lock order between update()
        # (the worker thread) and the handlers (the observer thread).
        lock = getattr(self._observer, "_lock", None)
        self._lock: Any = lock if lock is not None else threading.RLock()
        self._watches: dict[str, _Watch] = {}

    # public ---------------------------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            self._reconcile()
        try:
            self._observer.start()
        except OSError as e:
            _raise_limit_error(e)
            raise

    def update(self, roots: Sequence[tuple[Path, IgnoreRules]], extra_paths: Iterable[Path]) -> None:
        """New roots and paths (a config reload): watches for what is new, none for what is gone."""
        with self._lock:
            self._roots = [(_norm(p), rules) for p, rules in roots]
            self._extra = [_norm(p) for p in extra_paths]
            self._reconcile()

    def stop(self) -> None:
        self._observer.stop()
        if self._observer.is_alive():
            self._observer.join(timeout=5)
        with self._lock:
            self._watches.clear()

    def emit(self, change: Change) -> None:
        if self.on_touch is not None:
            self.on_touch(change.path)
        self.on_change(change)

    @property
    def watch_count(self) -> int:
        return len(self._watches)

    @property
    def watches(self) -> Mapping[str, bool]:
        """Watched directory → recursive (a snapshot)."""
        with self._lock:
            return {d: w.recursive for d, w in self._watches.items()}

    # which directories get a watch ----------------------------------------------------------------
    def _reconcile(self) -> None:
        """Make the watches match plan_watches(): schedule what is missing, replace a watch whose
        directory is not the one it was made for, unschedule what is no longer wanted."""
        want = plan_watches(self._roots, self._extra)
        for d, recursive in want.items():
            old = self._watches.get(d)
            if old is not None and old.recursive == recursive and not old.doomed and old.ident == _ident(d):
                continue
            new = self._schedule(d, recursive)  # the new watch first: a duplicate event coalesces, a gap loses one
            if old is not None:
                self._unschedule(old)
            if new is not None:
                self._watches[d] = new
        for w in [w for d, w in self._watches.items() if d not in want]:
            self._unschedule(w)

    def _schedule(self, directory: str, recursive: bool) -> _Watch | None:
        ident = _ident(directory)
        if ident is None:  # gone meanwhile: its deletion event follows
            return None
        watch = _Watch(directory, recursive, ident)
        try:
            watch.observed = self._observer.schedule(_Handler(self, watch), directory, recursive=recursive, event_filter=_event_filter())
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                return None
            _raise_limit_error(e)
            raise
        return watch

    def _unschedule(self, watch: _Watch) -> None:
        if self._watches.get(watch.path) is watch:
            del self._watches[watch.path]
        with contextlib.suppress(KeyError):  # watchdog already dropped it
            self._observer.unschedule(watch.observed)

    def _forget(self, path: str) -> bool:
        """Unschedule the watches at `path` and below it: the directory moved away, so what they
        would report from now on carries the old path."""
        gone = [w for d, w in self._watches.items() if _under(d, path)]
        for w in gone:
            self._unschedule(w)
        return bool(gone)

    def _doom(self, path: str) -> None:
        """The directory at `path` is gone (deleted, or moved out of sight). Its watches stay until
        their own deletion event, so the file deletions they have queued still arrive; the next
        reconcile drops them (a directory moved away never sends one)."""
        for d, w in self._watches.items():
            if _under(d, path):
                w.doomed = True

    def _covered(self, path: str) -> bool:
        """Whether a watch reports events about `path` itself (from its parent directory)."""
        parent = os.path.dirname(path)
        return any(d == parent or (w.recursive and _under(parent, d)) for d, w in self._watches.items())

    def _relevant(self, path: str) -> bool:
        """Below a root and not in a directory its rules ignore, or below an extra directory."""
        for root, rules in self._roots:
            if path != root and _under(path, root) and not rules.ignored_dir(os.path.relpath(path, root).replace(os.sep, "/")):
                return True
        return any(_under(path, p) for p in self._extra)

    # events -----------------------------------------------------------------------------------------
    def _stale(self, watch: _Watch, event: FileSystemEvent) -> bool:
        """An event reported under a path that no longer names the directory it happened in."""
        try:
            st = os.stat(watch.path)
            if (st.st_dev, st.st_ino) != watch.ident:
                return True  # the path names another directory now
        except OSError:
            pass  # gone: the deletions below it are real
        if event.event_type == "deleted":
            return False
        target = _fspath(event.dest_path) if event.event_type == "moved" else _fspath(event.src_path)
        return not os.path.isdir(os.path.dirname(target))  # reported below a directory that moved away

    def _on_event(self, watch: _Watch, event: FileSystemEvent) -> None:
        """Called on the observer thread, with the observer's lock (our lock) held."""
        if self._watches.get(watch.path) is not watch:
            return  # unscheduled or replaced: its queued events are stale or reported by the new watch
        src = _fspath(event.src_path)
        if event.event_type == "deleted" and src == watch.path:
            # the watched directory itself: its parent's watch reports it, if there is one
            self._unschedule(watch)
            if not self._covered(src):
                self.emit(Change(src, deleted=True))
            return
        if (watch.doomed and event.event_type != "deleted") or self._stale(watch, event):
            return
        if event.event_type == EVENT_TYPE_ATTRIB:
            if self.on_touch is not None and not event.is_directory:
                self.on_touch(src)
            return
        if event.event_type == "moved":
            dest = _fspath(event.dest_path)
            if event.is_directory:
                self._directory_moved(src, dest)
            else:
                self.emit(Change(src, deleted=True))
                self.emit(Change(dest, created=True))
        elif event.event_type == "deleted":
            if event.is_directory:
                self._doom(src)
            self.emit(Change(src, deleted=True))
        elif event.is_directory:
            if event.event_type == "created":
                self._directory_created(src)
        else:
            self.emit(Change(src, created=event.event_type == "created"))

    def _manages(self, directory: str) -> bool:
        """Whether watches for the subdirectories of `directory` are ours to make (not watchdog's)."""
        w = self._watches.get(directory)
        return w is not None and not w.recursive

    def _directory_created(self, path: str) -> None:
        if not self._relevant(path):
            return
        if self._manages(os.path.dirname(path)):
            self._reconcile()
        # files made before the watch existed (mkdir -p a/b && cp, git checkout) still count
        for rel in _files_below(path):
            self.emit(Change(os.path.join(path, rel), created=True))

    def _directory_moved(self, src: str, dest: str) -> None:
        forgot = self._forget(src)
        if forgot or self._manages(os.path.dirname(dest)):
            self._reconcile()
        self.emit(Change(src, deleted=True))
        self.emit(Change(dest, created=True))
        if not self._relevant(dest):
            return
        # the old path is reported deleted as a whole (its files are not listed: what is below dest
        # now may have been written after the move); the files below the new one are new
        for rel in _files_below(dest):
            self.emit(Change(os.path.join(dest, rel), created=True))


def _files_below(directory: str) -> Iterator[str]:
    """Relative paths of the files below `directory`, skipping the always-ignored directories."""
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames[:] = [d for d in dirnames if d not in ALWAYS_IGNORED_DIRS]
        for name in filenames:
            yield os.path.relpath(os.path.join(dirpath, name), directory)


def _raise_limit_error(e: OSError) -> None:
    """An inotify limit is a setting of the machine: say which one to raise."""
    if e.errno == errno.ENOSPC:  # the inotify watch limit
        raise EnvironmentMissing(
            "the inotify watch limit is reached",
            "raise it: `sudo sysctl fs.inotify.max_user_watches=524288` (and max_user_instances=512)",
        ) from e
    if e.errno == errno.EMFILE:  # watchdog opens one inotify instance per watch
        raise EnvironmentMissing(
            "the inotify instance limit (or the open file limit) is reached",
            "raise it: `sudo sysctl fs.inotify.max_user_instances=512` (and max_user_watches=524288)",
        ) from e
