"""Integration tests: the real Docker engine, real builds of sample-app.

No image can be pulled on CI, so the sample is built on a Node base image made locally from
Debian packages by tests/images/build-node-base.sh (idempotent; seconds when it exists).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

REPO = Path(__file__).resolve().parents[2]
NODE_BASE = os.environ.get("DEVLOOP_TEST_NODE_BASE", "devloop-test/node-base:bookworm")


@pytest.fixture(scope="session")
def docker_client() -> docker.DockerClient:
    client = docker.from_env()
    client.ping()  # no skip: integration tests need the engine, and say so loudly
    return client


@pytest.fixture(scope="session")
def node_base(docker_client: docker.DockerClient) -> str:
    try:
        docker_client.images.get(NODE_BASE)
    except docker.errors.ImageNotFound:
        if NODE_BASE != "devloop-test/node-base:bookworm":
            raise
        subprocess.run(["bash", str(REPO / "tests" / "images" / "build-node-base.sh")], check=True)
    return NODE_BASE


@pytest.fixture
def cleanup_images(docker_client: docker.DockerClient) -> Iterator[list[str]]:
    refs: list[str] = []
    yield refs
    for ref in refs:
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(ref, force=True)
