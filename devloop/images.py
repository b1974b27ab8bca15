"""The docker SDK adapter: tag, save, push, prune.

The client is created lazily; a daemon that cannot be reached becomes one `DockerUnavailable`
error with a hint, wherever it happens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import requests.exceptions

from devloop.errors import DevloopError, DockerUnavailable, StepFailed
from devloop.hasher import TAG_PREFIX

# the content hasher lived here; tests/e2e and tests/integration (not edited) still import it from here
from devloop.hasher import ContextHasher as ContextHasher
from devloop.hasher import content_tag as content_tag
from devloop.model import ImageRef

DOCKER_HINT = "start the Docker daemon (e.g. `sudo systemctl start docker` or open Docker Desktop) and check `docker info` works"


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


def _content_tag_of(ref: ImageRef, repository: str) -> bool:
    """Whether `ref` is one of devloop's content tags (`dl-…`) of this repository (`registry/name`)."""
    return ref.name == repository and ref.tag.startswith(TAG_PREFIX)


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
                ours = [tag for _, tag in tagged if _content_tag_of(ImageRef.parse(tag), repo)]
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
        target = ImageRef.parse(new_ref)
        with docker_errors():
            self.client.api.tag(ref, target.name, target.tag)

    def command(self, ref: str) -> tuple[list[str], list[str]]:
        """The image's ENTRYPOINT and CMD."""
        with docker_errors():
            cfg = self.client.images.get(ref).attrs.get("Config") or {}
        return list(cfg.get("Entrypoint") or []), list(cfg.get("Cmd") or [])

    def exec_in(self, container: str, argv: list[str]) -> tuple[int, str] | None:
        """Run `argv` in a running container: (exit code, output); None when there is no such container."""
        with docker_errors():
            try:
                found = self.client.containers.get(container)
            except docker.errors.NotFound:
                return None
            result = found.exec_run(argv)
        return result.exit_code, result.output.decode(errors="replace")
