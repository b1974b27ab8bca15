"""Pure planning: which files changed → what each service must do. No I/O: tested with plain tables.

The plan is the decision. For every service a change reaches, it says whether to rebuild the
image, live-sync files into the running containers, or only re-apply the manifests, and why; the
engine executes exactly that. A change to devloop.yaml or the kind config asks for a reload.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from devloop.ignore import IgnoreRules

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True)
class Change:
    path: str  # absolute
    deleted: bool = False
    created: bool = False


@dataclass(frozen=True)
class ServiceLayout:
    """Where one service's inputs are, as plain strings (absolute paths)."""

    name: str
    context: str
    rules: IgnoreRules
    manifests: tuple[str, ...]  # files, or directories whose top-level *.yaml files are manifests
    kustomize: tuple[str, ...] = ()  # kustomize dirs (and what they refer to), Helm charts and values files: any file below counts
    foreign: tuple[str, ...] = ()  # files in a shared manifests directory that hold only other services' objects
    live_fallback: tuple[str, ...] | None = None  # live update on: globs that still need a rebuild
    live_run: tuple[tuple[str, ...], ...] = ()  # liveUpdate.run: each step's trigger globs, in order


@dataclass(frozen=True)
class ServiceChange:
    """What one service does in a cycle."""

    service: str
    rebuild: bool = False  # build (when the content tag is new), publish, apply, wait
    sync: tuple[str, ...] = ()  # context-relative files to copy into the running containers
    run: tuple[int, ...] = ()  # liveUpdate.run steps (indexes, in order) to run after the copy, before the restart
    reapply: bool = False  # apply the manifests even when the image is unchanged
    image_files: tuple[str, ...] = ()  # context-relative (as the Dockerfile and .dockerignore see them)
    manifest_files: tuple[str, ...] = ()  # project-relative (as devloop.yaml names them)
    reason: str = ""
    config_files: tuple[str, ...] = ()  # project-relative: the configuration whose reload this cycle applies

    @property
    def trigger_files(self) -> tuple[str, ...]:
        """What triggered the change, each file once: image files relative to the service's build
        context, every other file (manifests, the configuration) relative to the project root."""
        return tuple(dict.fromkeys(self.image_files + self.manifest_files + self.config_files))


@dataclass(frozen=True)
class Plan:
    services: tuple[ServiceChange, ...] = ()
    reload: bool = False
    config_files: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()

    @property
    def nothing(self) -> bool:
        return not self.services and not self.reload


def everything(layouts: Sequence[ServiceLayout], reason: str, config_files: Sequence[str] = ()) -> Plan:
    """Every service rebuilt and applied (`up`; a reloaded configuration, naming its files)."""
    return Plan(
        services=tuple(ServiceChange(s.name, rebuild=True, reapply=True, reason=reason, config_files=tuple(config_files)) for s in layouts)
    )


def needing_images(p: Plan, stale: set[str]) -> Plan:
    """A change that only re-applies manifests, for a service whose cluster does not run its current
    sources as an image (`stale`: never applied, files live-synced over it, a build that failed
    since), must build that image first: applying the manifests alone would roll back the sources."""
    changed = tuple(
        replace(c, rebuild=True) if c.reapply and not c.rebuild and not c.sync and c.service in stale else c for c in p.services
    )
    return replace(p, services=changed) if changed != p.services else p


def _under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def is_manifest(path: str, layout: ServiceLayout) -> bool:
    if any(_under(path, k) for k in layout.kustomize):
        return True
    if path in layout.foreign:
        return False
    for m in layout.manifests:
        if path == m:
            return True
        if os.path.dirname(path) == m.rstrip(os.sep) and path.endswith(MANIFEST_SUFFIXES):
            return True
    return False


def matches(rel: str, globs: Iterable[str]) -> bool:
    """A context-relative file matches one of these globs: on its path (`*` also crosses '/', and
    `**/` also matches no directory: `src/**/*.ts` takes src/a.ts) or on its name (`*.ts`)."""
    name = os.path.basename(rel)
    for g in globs:
        if fnmatch.fnmatchcase(rel, g) or fnmatch.fnmatchcase(name, g):
            return True
        if "**/" in g and fnmatch.fnmatchcase(rel, g.replace("**/", "")):
            return True
    return False


def _syncable(rel: str, fallback: tuple[str, ...]) -> bool:
    return not matches(rel, fallback)


def run_steps(files: Sequence[str], triggers: Sequence[tuple[str, ...]]) -> tuple[int, ...]:
    """The liveUpdate.run steps (indexes, in their order) a sync of `files` runs: those whose
    trigger globs one of the files matches."""
    return tuple(n for n, globs in enumerate(triggers) if any(matches(f, globs) for f in files))


def settle(changes: Iterable[Change]) -> list[Change]:
    """The last event for a path wins: an editor that deletes and recreates a file has saved it;
    a file created and gone again within the batch (sed -i's temp file, an editor's backup) never was."""
    last: dict[str, Change] = {}
    born: set[str] = set()
    for ch in changes:
        last.pop(ch.path, None)
        last[ch.path] = ch
        if ch.created:
            born.add(ch.path)
    return [ch for ch in last.values() if not (ch.deleted and ch.path in born)]


def _reason(sync: bool, image: bool, manifests: bool) -> str:
    parts = (["live update"] if sync else []) + (["image source changed"] if image else []) + (["manifests changed"] if manifests else [])
    return " and ".join(parts)


def relative(path: str, root: str) -> str:
    """A file as devloop names it to people and in --json: relative to `root` (absolute without one)."""
    return os.path.relpath(path, root) if root else path


def plan(changes: Iterable[Change], layouts: Sequence[ServiceLayout], config_files: Sequence[str] = (), root: str = "") -> Plan:
    """`root`: the project's directory; manifests, configuration and ignored files are named relative to it."""
    settled = settle(changes)
    configs = sorted({relative(ch.path, root) if root else os.path.basename(ch.path) for ch in settled if ch.path in config_files})
    if configs:
        return Plan(reload=True, config_files=tuple(configs))
    matched: set[str] = set()
    out: list[ServiceChange] = []
    for layout in layouts:
        image: set[str] = set()
        manifests: set[str] = set()
        both: set[str] = set()  # manifests that also reach the image: named once, as manifests
        deleted = False
        for ch in settled:
            # A manifest inside the build context (sample-app/k8s) is a manifest first; it also
            # reaches the image only if .dockerignore lets it.
            manifest = is_manifest(ch.path, layout)
            if manifest:
                manifests.add(relative(ch.path, root))
                matched.add(ch.path)
            if layout.context and _under(ch.path, layout.context):  # no context: a service without image
                rel = os.path.relpath(ch.path, layout.context)
                if layout.rules.reaches_image(rel):
                    image.add(rel)
                    if manifest:
                        both.add(rel)
                    deleted |= ch.deleted
                    matched.add(ch.path)
        if not image and not manifests:
            continue
        fallback = layout.live_fallback
        files = tuple(sorted(image))
        if fallback is not None and image and not manifests and not deleted and all(_syncable(f, fallback) for f in image):
            run = run_steps(files, layout.live_run)
            out.append(ServiceChange(layout.name, sync=files, run=run, image_files=files, reason=_reason(True, False, False)))
        else:
            out.append(
                ServiceChange(
                    layout.name,
                    rebuild=bool(image),
                    reapply=bool(manifests),
                    image_files=tuple(f for f in files if f not in both),
                    manifest_files=tuple(sorted(manifests)),
                    reason=_reason(False, bool(image), bool(manifests)),
                )
            )
    ignored = tuple(sorted({relative(ch.path, root) for ch in settled if ch.path not in matched}))
    return Plan(services=tuple(out), ignored=ignored)
