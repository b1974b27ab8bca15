"""A remote target's registry: its address, the push to it, and the publisher that pushes to it
for a remote target. The registry's API (TLS, the user's Docker credentials) is
devloop.registry_client's."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from devloop.errors import DevloopError, StepFailed
from devloop.images import Images, Pushed
from devloop.model import DOCKER_HUB, ImageRef
from devloop.registry_client import RegistryAuthFailed, RegistryClient, RegistryUnavailable


@dataclass(frozen=True)
class Address:
    """`host[:port][/path]`, as a target names its registry."""

    host: str  # registry.example.com:5443
    path: str  # team/apps, or ""

    @classmethod
    def parse(cls, text: str) -> Address:
        host, _, path = text.partition("/")
        return cls(host, path.strip("/"))

    def __str__(self) -> str:
        return f"{self.host}/{self.path}" if self.path else self.host

    def repository(self, image_name: str) -> str:
        """The repository path inside the registry for one of devloop's images (no host)."""
        return f"{self.path}/{image_name}" if self.path else image_name


def push(images: Images, ref: str, progress: Callable[[str], None] = lambda _: None) -> Pushed:
    """`docker push` to a remote registry, reporting bytes as they go; a refusal says the
    registry's own words with the fix (`docker login`, TLS)."""
    return images.push(ref, progress, refused=_push_error)


def _push_error(ref: str, message: str) -> DevloopError:
    low = message.lower()
    host = ImageRef.parse(ref).host or DOCKER_HUB
    if "unauthorized" in low or "authentication required" in low or "denied" in low:
        return RegistryAuthFailed(f"push of {ref} refused: {message}", f"run `docker login {host}`")
    if "x509" in low or "certificate" in low:
        return RegistryUnavailable(
            f"push of {ref}: Docker does not trust the registry's certificate ({message})",
            f"put the registry's CA in /etc/docker/certs.d/{host}/ca.crt",
        )
    if "connection refused" in low or "no such host" in low or "i/o timeout" in low:
        return RegistryUnavailable(f"push of {ref}: registry {host} does not answer ({message})", "check that the registry runs")
    return StepFailed(f"push of {ref} failed: {message}", "check the registry and its logs")


class RemotePublisher:
    """Content-tagged images pushed to a target's registry (`up/dev --target`): the cluster pulls
    them with its own credentials (the target's pull secret)."""

    def __init__(self, images: Images, client: RegistryClient, address: Address) -> None:
        self._images = images
        self.client = client
        self.address = address
        self.lock = threading.Lock()

    @property
    def registry(self) -> str:
        return str(self.address)

    def prepare(self) -> bool:
        self.client.check()
        return False

    def start_early(self) -> bool:
        return False  # a remote target is never created: there is no "before the cluster"

    def publish(self, ref: ImageRef, note: Callable[[str], None], progress: Callable[[str], None] = lambda _: None) -> str:
        target = ref.cluster
        with self.lock:
            if self.client.manifest(self.address.repository(ref.repository), ref.tag) is not None:
                return ""
            self._images.tag(ref.local, target)
            pushed = push(self._images, target, progress)
        return f"pushed {target} ({pushed.summary()})"
