"""The file watcher (watchdog). Turns filesystem events into `Change`s for the pipeline.

watchdog cannot skip a directory inside a recursive watch, so devloop schedules the context's
top level without recursion and each subdirectory that matters recursively: `node_modules`
and `.git` never get an inotify watch, however many files they hold.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
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
]


def _fspath(p: str | bytes) -> str:
    return os.fsdecode(p)


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        src = _fspath(event.src_path)
        if event.event_type == "moved":
            dest = _fspath(event.dest_path)
            self.watcher.emit(Change(src, deleted=True))
            self.watcher.emit(Change(dest, created=True))
            if event.is_directory:
                self.watcher.directory_created(dest)
        elif event.event_type == "deleted":
            self.watcher.emit(Change(src, deleted=True))
        elif event.is_directory:
            if event.event_type == "created":
                self.watcher.directory_created(src)
        else:
            self.watcher.emit(Change(src, created=event.event_type == "created"))


class Watcher:
    def __init__(
        self,
        context: Path,
        rules: IgnoreRules,
        extra_paths: Iterable[Path],
        on_change: Callable[[Change], None],
    ) -> None:
        self.context = context
        self.rules = rules
        self.extra_paths = list(extra_paths)
        self.on_change = on_change
        self._observer = Observer()
        self._handler = _Handler(self)
        self._watched: set[tuple[str, bool]] = set()
        self._lock = threading.Lock()

    # which directories get a watch --------------------------------------------------------------
    def _schedule(self, directory: str, recursive: bool) -> None:
        with self._lock:
            if (directory, recursive) in self._watched or any(
                r and (directory == d or directory.startswith(d + os.sep)) for d, r in self._watched
            ):
                return
            self._watched.add((directory, recursive))
        try:
            self._observer.schedule(self._handler, directory, recursive=recursive, event_filter=EVENTS)
        except OSError as e:
            if e.errno == 28:  # ENOSPC: the inotify watch limit
                raise EnvironmentMissing(
                    "the inotify watch limit is reached",
                    "raise it: `sudo sysctl fs.inotify.max_user_watches=524288` (and max_user_instances=512)",
                ) from e
            raise

    def directory_created(self, path: str) -> None:
        """A new top-level directory in the context gets its own recursive watch."""
        rel = os.path.relpath(path, self.context)
        if rel.startswith("..") or self.rules.ignored_dir(rel):
            return
        if os.path.dirname(path) == str(self.context):
            self._schedule(path, recursive=True)
        # files made before the watch existed (mkdir -p a/b && cp, git checkout) still count
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames[:] = [d for d in dirnames if d not in ALWAYS_IGNORED_DIRS]
            for name in filenames:
                self.emit(Change(os.path.join(dirpath, name), created=True))

    def start(self) -> None:
        ctx = str(self.context)
        self._schedule(ctx, recursive=False)
        for entry in sorted(os.scandir(ctx), key=lambda e: e.name):
            if entry.is_dir(follow_symlinks=False) and not self.rules.ignored_dir(entry.name):
                self._schedule(entry.path, recursive=True)
        for p in self.extra_paths:
            if p.is_dir():
                self._schedule(str(p), recursive=True)
            elif p.parent.is_dir():
                self._schedule(str(p.parent), recursive=False)
        self._observer.start()

    def emit(self, change: Change) -> None:
        self.on_change(change)

    def stop(self) -> None:
        self._observer.stop()
        if self._observer.is_alive():
            self._observer.join(timeout=5)

    @property
    def watch_count(self) -> int:
        return len(self._watched)
