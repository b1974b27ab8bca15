"""Registry garbage collection against the real Docker engine and the real registry image
(devloop-test/registry:bookworm from tests/images/build-registry.sh, or DEVLOOP_TEST_REGISTRY_IMAGE):
a throwaway registry of its own (own name, own port, deletes enabled), 6 pushed content tags of
tiny FROM-scratch images whose content differs, then `devloop.gc.collect`. The registry runs with
`devloop.gc.REGISTRY_ENV`, as devloop must start it."""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import docker
import pytest

from devloop.gc import DELETE_ENV, REGISTRY_ENV, HttpRegistry, collect

from .conftest import REPO

pytestmark = pytest.mark.integration

REGISTRY_IMAGE = os.environ.get("DEVLOOP_TEST_REGISTRY_IMAGE", "devloop-test/registry:bookworm")
NAME = "gcapp"


@dataclass
class Registry:
    container: docker.models.containers.Container
    host: str  # localhost:<port>

    def tags(self) -> list[str]:
        return sorted(HttpRegistry(self.host).tags(NAME))

    def storage(self) -> int:
        """Bytes of regular files under /var/lib/registry (docker cp: any registry image, shell or not)."""
        stream, _ = self.container.get_archive("/var/lib/registry")
        data = io.BytesIO(b"".join(stream))
        with tarfile.open(fileobj=data) as tar:
            return sum(m.size for m in tar.getmembers() if m.isfile())

    def entries(self) -> tuple[int, int]:
        """(files and directories under /var/lib/registry, how many of them are the blob store's
        shard directories `blobs/sha256/<2 hex>`). Those shards come and go with the digests' first two
        characters (random here), so a test of growth leaves them out."""
        stream, _ = self.container.get_archive("/var/lib/registry")
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            names = [m.name for m in tar.getmembers()]
        shards = sum(1 for n in names if re.search(r"/blobs/sha256/[0-9a-f]{2}$", n))
        return len(names), shards


def _answers(host: str) -> bool:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", int(host.rpartition(":")[2]), timeout=2)
    try:
        conn.request("GET", "/v2/")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


@pytest.fixture
def registry(docker_client: docker.DockerClient) -> Iterator[Registry]:
    try:
        docker_client.images.get(REGISTRY_IMAGE)
    except docker.errors.ImageNotFound:
        subprocess.run(["bash", str(REPO / "tests" / "images" / "build-registry.sh")], check=True, stdout=subprocess.DEVNULL)
    name = f"devloop-gc-test-{uuid.uuid4().hex[:8]}"
    c = docker_client.containers.run(
        REGISTRY_IMAGE, name=name, detach=True, environment=REGISTRY_ENV, ports={"5000/tcp": ("127.0.0.1", None)}
    )
    try:
        c.reload()
        port = c.attrs["NetworkSettings"]["Ports"]["5000/tcp"][0]["HostPort"]
        host = f"localhost:{port}"
        deadline = time.monotonic() + 30
        while not _answers(host):  # readiness poll with a deadline, not a fixed sleep
            c.reload()
            assert c.status == "running" and time.monotonic() < deadline, c.logs().decode(errors="replace")[-2000:]
        yield Registry(c, host)
    finally:
        c.remove(force=True, v=True)


def _build(client: docker.DockerClient, ref: str, payload: bytes) -> None:
    """FROM scratch + one file: a tiny image whose content (and so digest) is `payload`'s."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("Dockerfile", b"FROM scratch\nCOPY blob /blob\n"), ("blob", payload)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    client.images.build(fileobj=buf, custom_context=True, tag=ref, rm=True)


def _push(client: docker.DockerClient, ref: str) -> None:
    for chunk in client.api.push(ref, stream=True, decode=True):
        assert "error" not in chunk, chunk


@pytest.fixture
def pushed(docker_client: docker.DockerClient, registry: Registry, cleanup_images: list[str]) -> list[str]:
    """6 content tags, oldest first, plus a `latest` tag devloop did not make (on the oldest content)."""
    tags = []
    for i in range(6):
        tag = f"dl-{uuid.uuid4().hex[:16]}"
        ref = f"{registry.host}/{NAME}:{tag}"
        cleanup_images.append(ref)
        _build(docker_client, ref, os.urandom(256 * 1024) + bytes([i]))
        _push(docker_client, ref)
        tags.append(tag)
    latest = f"{registry.host}/{NAME}:latest"
    _build(docker_client, latest, os.urandom(128 * 1024))
    cleanup_images.append(latest)
    _push(docker_client, latest)
    return tags


def test_registry_gc_keeps_the_newest_and_the_used_and_frees_disk(
    docker_client: docker.DockerClient, registry: Registry, pushed: list[str]
) -> None:
    assert registry.tags() == sorted([*pushed, "latest"])
    before = registry.storage()

    # the oldest is in use (e.g. the version serving): kept although old; `latest` is not devloop's
    report = collect(NAME, registry.host, [], 3, {pushed[0]}, registry_container=registry.container.name, client=docker_client)
    assert report.errors == []
    assert sorted(report.registry_tags) == sorted(pushed[1:3])
    assert registry.tags() == sorted([pushed[0], *pushed[3:], "latest"])
    middle = registry.storage()
    assert report.registry_bytes is not None and report.registry_bytes >= 2 * 256 * 1024
    assert before - middle >= 2 * 256 * 1024, (before, middle)

    # no longer in use: the newest 3 stay
    report = collect(NAME, registry.host, [], 3, set(), registry_container=registry.container.name, client=docker_client)
    assert report.errors == [] and report.registry_tags == [pushed[0]]
    assert registry.tags() == sorted([*pushed[3:], "latest"])
    after = registry.storage()
    assert middle - after >= 256 * 1024, (middle, after)
    print(f"registry storage: {before} -> {middle} -> {after} bytes; tags 7 -> 5 -> 4")

    # nothing more to do: a second run deletes nothing
    again = collect(NAME, registry.host, [], 3, set(), registry_container=registry.container.name, client=docker_client)
    assert again.errors == [] and again.registry_tags == []


def test_a_deleted_version_pushed_again_is_whole(docker_client: docker.DockerClient, registry: Registry, pushed: list[str]) -> None:
    """After the registry's garbage collector removed a version's blobs, pushing that version again
    (a revert to old content) must upload them again: the registry's blob cache must not claim them."""
    collect(NAME, registry.host, [], 3, set(), registry_container=registry.container.name, client=docker_client)
    assert pushed[0] not in registry.tags()
    _push(docker_client, f"{registry.host}/{NAME}:{pushed[0]}")
    api = HttpRegistry(registry.host)
    m = api.manifest(NAME, pushed[0])
    assert m is not None
    for blob in m.blobs:
        status, _, _ = api._request("GET", f"/v2/{NAME}/blobs/{blob}")
        assert status == 200, f"blob {blob} of the re-pushed {pushed[0]} is missing (HTTP {status})"


def test_deletes_disabled_is_reported_not_raised(docker_client: docker.DockerClient, pushed: list[str], registry: Registry) -> None:
    """A registry started without deletes: collect says how to enable them and removes nothing."""
    with contextlib.ExitStack() as stack:
        c = docker_client.containers.run(REGISTRY_IMAGE, detach=True, ports={"5000/tcp": ("127.0.0.1", None)})
        stack.callback(c.remove, force=True, v=True)
        c.reload()
        host = f"localhost:{c.attrs['NetworkSettings']['Ports']['5000/tcp'][0]['HostPort']}"
        deadline = time.monotonic() + 30
        while not _answers(host):
            assert time.monotonic() < deadline
        for tag in pushed[:5]:
            docker_client.api.tag(f"{registry.host}/{NAME}:{tag}", f"{host}/{NAME}", tag)
            stack.callback(docker_client.images.remove, f"{host}/{NAME}:{tag}")
            _push(docker_client, f"{host}/{NAME}:{tag}")
        report = collect(NAME, host, [], 3, set(), registry_container=str(c.name), client=docker_client)
        assert report.registry_tags == []
        assert any(DELETE_ENV in e for e in report.errors), report.errors
        assert len(HttpRegistry(host).tags(NAME)) == 5


def test_registry_bytes_stop_growing_after_keep_versions(
    docker_client: docker.DockerClient, registry: Registry, cleanup_images: list[str]
) -> None:
    """Tags are not enough: 12 distinct versions pushed and collected one after the other (keep 3), and
    from the 4th on the registry's storage (`du` inside its container, its file count) stays the same,
    leaving out the blob store's two-character shard directories (4 kB each in `du`): whether two of the
    3 kept versions' random digests share a first byte is chance (a CI run saw 81 entries, then 80).
    Before issue 23 it grew by the blob links and directories `registry garbage-collect` leaves behind
    (5 entries, about 20 kB here, per version; about 48 kB per rebuild of the sample app)."""
    sizes: list[tuple[int, int]] = []  # (du kB, files and directories) after each collection, shards left out
    for i in range(12):
        ref = f"{registry.host}/{NAME}:dl-{uuid.uuid4().hex[:16]}"
        cleanup_images.append(ref)
        _build(docker_client, ref, os.urandom(16 * 1024) + bytes([i]))
        _push(docker_client, ref)
        report = collect(NAME, registry.host, [], 3, set(), registry_container=registry.container.name, client=docker_client)
        assert report.errors == [], report.errors
        du = registry.container.exec_run(["du", "-sk", "/var/lib/registry"])
        assert du.exit_code == 0, du.output
        entries, shards = registry.entries()
        sizes.append((int(du.output.split()[0]) - 4 * shards, entries - shards))
        assert len(registry.tags()) == min(i + 1, 3)
    print(f"registry after each version (du kB, entries): {sizes}")
    assert len(set(sizes[3:])) == 1, sizes


def test_a_push_right_after_a_collection_is_whole(docker_client: docker.DockerClient, registry: Registry, pushed: list[str]) -> None:
    """The garbage collector and the sweep run between pushes (devloop's push lock): a new version pushed
    right after is complete, blob by blob, and so are the kept ones."""
    collect(NAME, registry.host, [], 3, set(), registry_container=registry.container.name, client=docker_client)
    ref = f"{registry.host}/{NAME}:dl-{uuid.uuid4().hex[:16]}"
    _build(docker_client, ref, os.urandom(64 * 1024))
    try:
        _push(docker_client, ref)
        api = HttpRegistry(registry.host)
        for tag in [*pushed[3:], ref.rpartition(":")[2]]:
            m = api.manifest(NAME, tag)
            assert m is not None, tag
            for blob in m.blobs:
                status, _, _ = api._request("GET", f"/v2/{NAME}/blobs/{blob}")
                assert status == 200, f"blob {blob} of {tag} is missing (HTTP {status})"
    finally:
        docker_client.images.remove(ref)
