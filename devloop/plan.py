"""Pure planning: which files changed → what a cycle must do. No I/O: tested with plain tables."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable
from dataclasses import dataclass

from devloop.ignore import IgnoreRules


@dataclass(frozen=True)
class Change:
    path: str  # absolute
    deleted: bool = False
    created: bool = False


@dataclass(frozen=True)
class Layout:
    """Where things are, as plain strings (absolute paths)."""

    context: str
    rules: IgnoreRules
    manifests: tuple[str, ...]  # files or directories
    config_files: tuple[str, ...] = ()  # devloop.yaml, kind-config.yaml: a change reloads
    live_fallback: tuple[str, ...] | None = None  # live update on: globs that still need a rebuild


@dataclass(frozen=True)
class Plan:
    build: bool = False
    sync: tuple[str, ...] = ()  # context-relative files to copy into the running containers
    apply: bool = False
    reload: bool = False
    image_files: tuple[str, ...] = ()  # context-relative
    manifest_files: tuple[str, ...] = ()
    config_files: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()

    @property
    def nothing(self) -> bool:
        return not (self.build or self.sync or self.apply or self.reload)

    @property
    def trigger_files(self) -> tuple[str, ...]:
        return self.config_files + self.image_files + self.manifest_files

    @property
    def reason(self) -> str:
        if self.reload:
            return "configuration changed"
        parts = []
        if self.sync:
            parts.append("live update")
        if self.build:
            parts.append("image source changed")
        if self.manifest_files:
            parts.append("manifests changed")
        return " and ".join(parts) or "nothing to do"


def _under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def _is_manifest(path: str, layout: Layout) -> bool:
    for m in layout.manifests:
        if path == m:
            return True
        if _under(path, m) and os.path.dirname(path) == m.rstrip(os.sep) and path.endswith((".yaml", ".yml", ".json")):
            return True
    return False


def _syncable(rel: str, fallback: tuple[str, ...]) -> bool:
    name = os.path.basename(rel)
    return not any(fnmatch.fnmatchcase(rel, g) or fnmatch.fnmatchcase(name, g) for g in fallback)


def plan(changes: Iterable[Change], layout: Layout) -> Plan:
    # the last event for a path wins: an editor that deletes and recreates a file has saved it;
    # a file created and gone again within the batch (sed -i's temp file, an editor's backup) never was
    last: dict[str, Change] = {}
    born: set[str] = set()
    for ch in changes:
        last.pop(ch.path, None)
        last[ch.path] = ch
        if ch.created:
            born.add(ch.path)
    changes = [ch for ch in last.values() if not (ch.deleted and ch.path in born)]
    deleted: set[str] = set()
    image: set[str] = set()
    manifests: set[str] = set()
    configs: set[str] = set()
    ignored: set[str] = set()
    for ch in changes:
        if ch.path in layout.config_files:
            configs.add(os.path.basename(ch.path))
            continue
        # A manifest that lives inside the build context (sample-app/k8s) is a manifest first;
        # it also reaches the image only if .dockerignore lets it.
        matched = False
        if _is_manifest(ch.path, layout):
            manifests.add(ch.path)
            matched = True
        if _under(ch.path, layout.context):
            rel = os.path.relpath(ch.path, layout.context)
            if layout.rules.reaches_image(rel):
                image.add(rel)
                if ch.deleted:
                    deleted.add(rel)
                matched = True
        if not matched:
            ignored.add(ch.path)
    fallback = layout.live_fallback
    if fallback is not None and image and not manifests and not configs and not deleted and all(_syncable(f, fallback) for f in image):
        return Plan(sync=tuple(sorted(image)), image_files=tuple(sorted(image)), ignored=tuple(sorted(ignored)))
    return Plan(
        build=bool(image) or bool(configs),
        apply=bool(manifests) or bool(image) or bool(configs),
        reload=bool(configs),
        image_files=tuple(sorted(image)),
        manifest_files=tuple(sorted(manifests)),
        config_files=tuple(sorted(configs)),
        ignored=tuple(sorted(ignored)),
    )
