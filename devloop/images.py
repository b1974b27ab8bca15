"""The docker SDK adapter: content tags, build, save, push.

The client is created lazily; a daemon that cannot be reached becomes one `DockerUnavailable`
error with a hint, wherever it happens.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import requests.exceptions
from docker.utils.build import exclude_paths

from devloop.errors import DockerUnavailable, StepFailed
from devloop.ignore import parse_dockerignore

DOCKER_HINT = "start the Docker daemon (e.g. `sudo systemctl start docker` or open Docker Desktop) and check `docker info` works"
TAG_PREFIX = "dl-"


def read_dockerignore(context: Path) -> list[str]:
    path = context / ".dockerignore"
    if not path.is_file():
        return []
    return parse_dockerignore(path.read_text(encoding="utf-8", errors="replace"))


@dataclass
class _Entry:
    key: tuple[int, int, int]
    digest: str


class ContextHasher:
    """A content hash of exactly what `docker build` would send, cached by (inode, size, mtime)."""

    def __init__(self) -> None:
        self._cache: dict[str, _Entry] = {}

    def digest(self, context: Path, dockerfile: str, build_args: Mapping[str, str]) -> str:
        h = hashlib.sha256()
        h.update(f"dockerfile={dockerfile}\n".encode())
        for k in sorted(build_args):
            h.update(f"arg {k}={build_args[k]}\n".encode())
        files = sorted(exclude_paths(str(context), read_dockerignore(context), dockerfile=dockerfile))
        for rel in files:
            full = context / rel
            try:
                st = full.lstat()
            except FileNotFoundError:
                continue  # removed while we walked: the next event hashes again
            if full.is_symlink():
                h.update(f"L {rel} {os.readlink(full)}\n".encode())
            elif full.is_dir():
                h.update(f"D {rel}\n".encode())
            else:
                h.update(f"F {rel} {st.st_mode & 0o111:o} {self._file(full, st)}\n".encode())
        return h.hexdigest()

    def _file(self, path: Path, st: os.stat_result) -> str:
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        entry = self._cache.get(str(path))
        if entry is not None and entry.key == key:
            return entry.digest
        fh = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                fh.update(chunk)
        digest = fh.hexdigest()
        self._cache[str(path)] = _Entry(key, digest)
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

    def push(self, ref: str) -> None:
        with docker_errors():
            for chunk in self.client.api.push(ref, stream=True, decode=True):
                if isinstance(chunk, dict) and "error" in chunk:
                    raise StepFailed(f"push of {ref} failed: {chunk['error']}", "check the registry is running: devloop doctor")

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
