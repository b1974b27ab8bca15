"""The docker SDK adapter: content tags, build, save, push.

The client is created lazily; a daemon that cannot be reached becomes one `DockerUnavailable`
error with a hint, wherever it happens.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import requests.exceptions
from docker.utils.build import PatternMatcher, normalize_slashes

from devloop.errors import DevloopError, DockerUnavailable, StepFailed
from devloop.ignore import ALWAYS_IGNORED_DIRS, parse_dockerignore

DOCKER_HINT = "start the Docker daemon (e.g. `sudo systemctl start docker` or open Docker Desktop) and check `docker info` works"
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


@contextmanager
def docker_errors() -> Iterator[None]:
    try:
        yield
    except (requests.exceptions.ConnectionError, docker.errors.DockerException) as e:
        if isinstance(e, docker.errors.APIError | docker.errors.BuildError | docker.errors.ImageNotFound):
            raise
        raise DockerUnavailable(f"cannot reach the Docker daemon: {_short(e)}", DOCKER_HINT) from None


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


@dataclass
class Pushed:
    ref: str  # registry/name:tag
    digest: str  # sha256:…
    bytes_pushed: int  # sum of the layers that travelled
    layers_pushed: int
    layers_present: int

    def summary(self) -> str:
        s = "" if self.layers_pushed == 1 else "s"
        return f"{fmt_bytes(self.bytes_pushed)} in {self.layers_pushed} new layer{s}, {self.layers_present} already there"


def fmt_bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


class Images:
    def __init__(self, factory: Callable[[], docker.DockerClient] = docker.from_env) -> None:
        self._factory = factory
        self._client: docker.DockerClient | None = None

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            with docker_errors():
                client = self._factory()
                client.ping()
            self._client = client
        return self._client

    def ping(self) -> str:
        with docker_errors():
            return str(self.client.version().get("Version", "?"))

    def exists(self, ref: str) -> bool:
        with docker_errors():
            try:
                self.client.images.get(ref)
                return True
            except docker.errors.ImageNotFound:
                return False

    def pull(self, ref: str) -> bool:
        """Pull an image; False when the registry cannot be reached or has no such image."""
        with docker_errors():
            try:
                self.client.images.pull(ref)
                return True
            except (docker.errors.APIError, docker.errors.ImageNotFound):
                return False

    def prune(self, repositories: list[str], keep: int = 3) -> list[str]:
        """Untag all but the newest `keep` devloop content tags (`dl-…`) of these repositories, so a
        day of saves does not leave hundreds of tags. Layers still used by a kept tag stay."""
        removed: list[str] = []
        with docker_errors():
            for repo in repositories:
                tagged = sorted(
                    ((str(img.attrs.get("Created", "")), tag) for img in self.client.images.list(name=repo) for tag in img.tags),
                    reverse=True,
                )
                ours = [tag for _, tag in tagged if tag.startswith(f"{repo}:{TAG_PREFIX}")]
                for tag in ours[keep:]:
                    try:
                        self.client.images.remove(tag)
                        removed.append(tag)
                    except docker.errors.APIError:
                        pass  # in use by a container, or already gone: leave it
        return removed

    def image_id(self, ref: str) -> str:
        with docker_errors():
            return str(self.client.images.get(ref).id)

    def build(
        self,
        context: Path,
        dockerfile: str,
        tag: str,
        build_args: Mapping[str, str],
        on_line: Callable[[str], None] = lambda _: None,
        target: str | None = None,
    ) -> str:
        """Build and tag with the classic builder (docker SDK); returns the image ID. A failed step raises
        CycleFailed naming the step. BuildKit builds: devloop.builder.detect_builder."""
        from devloop.builder import ClassicSDK  # builder imports this module

        return ClassicSDK(self).build(context, dockerfile, tag, build_args, target, on_line)

    def save(self, ref: str, dest: Path) -> int:
        """`docker save` of one image to a tar file; returns its size in bytes."""
        with docker_errors():
            try:
                with dest.open("wb") as f:
                    for chunk in self.client.api.get_image(ref):
                        f.write(chunk)
            except OSError as e:
                raise StepFailed(f"cannot write the image archive {dest}: {e.strerror}", "free some disk space (df -h)") from e
        return dest.stat().st_size

    def push(
        self,
        ref: str,
        progress: Callable[[str], None] = lambda _: None,
        refused: Callable[[str, str], DevloopError] | None = None,
    ) -> Pushed:
        """`docker push` through the daemon (it verifies TLS and sends the user's credentials),
        reporting bytes as they go (each MB, when there is at least one to move). `refused` turns
        the registry's own words into the error raised."""
        totals: dict[str, int] = {}
        done: dict[str, int] = {}
        present = 0
        digest = ""
        last_report = -1
        with docker_errors():
            for chunk in self.client.api.push(ref, stream=True, decode=True):
                if not isinstance(chunk, dict):
                    continue
                if "error" in chunk:
                    if refused is not None:
                        raise refused(ref, str(chunk["error"]))
                    raise StepFailed(f"push of {ref} failed: {chunk['error']}", "check the registry is running: devloop doctor")
                status, layer = str(chunk.get("status", "")), str(chunk.get("id", ""))
                detail = chunk.get("progressDetail") or {}
                if status == "Pushing" and detail.get("total"):
                    totals[layer] = int(detail["total"])
                    done[layer] = int(detail.get("current", 0))
                elif status == "Pushed":
                    done[layer] = totals.get(layer, done.get(layer, 0))
                elif status == "Layer already exists" or status.startswith("Mounted from"):
                    present += 1  # already in the registry (a cross-repository mount moves no bytes)
                aux = chunk.get("aux") or {}
                if aux.get("Digest"):
                    digest = str(aux["Digest"])
                sent = sum(done.values())
                mb = sent // 1_000_000
                if sum(totals.values()) >= 1_000_000 and mb != last_report:
                    last_report = mb
                    progress(f"pushing {ref}: {sent / 1e6:.1f} / {sum(totals.values()) / 1e6:.1f} MB")
        if not digest:
            raise StepFailed(f"push of {ref} ended without a digest", "check the registry's logs")
        pushed = [k for k in done if k in totals]
        return Pushed(ref, digest, sum(totals[k] for k in pushed), len(pushed), present)

    def tag(self, ref: str, new_ref: str) -> None:
        repo, _, tag = new_ref.rpartition(":")
        with docker_errors():
            self.client.api.tag(ref, repo, tag)

    def command(self, ref: str) -> tuple[list[str], list[str]]:
        """The image's ENTRYPOINT and CMD."""
        with docker_errors():
            cfg = self.client.images.get(ref).attrs.get("Config") or {}
        return list(cfg.get("Entrypoint") or []), list(cfg.get("Cmd") or [])

    def node_has(self, node: str, ref: str) -> bool:
        """Whether a kind node's containerd already holds this image (then loading it again is waste)."""
        name = containerd_name(ref)
        with docker_errors():
            try:
                container = self.client.containers.get(node)
            except docker.errors.NotFound:
                return False
            result = container.exec_run(["ctr", "-n", "k8s.io", "images", "ls", "-q", f"name=={name}"])
        return result.exit_code == 0 and name in result.output.decode(errors="replace").split()


def containerd_name(ref: str) -> str:
    """The name containerd (and so a kind node) stores a docker image reference under."""
    first, _, rest = ref.partition("/")
    if not rest:
        return f"docker.io/library/{ref}"
    if "." in first or ":" in first or first == "localhost":
        return ref
    return f"docker.io/{ref}"
