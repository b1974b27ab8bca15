"""Build secrets on the real Docker engine: `image.secrets` from the environment and from a file
reach a `RUN --mount=type=secret` step through BuildKit, and their values appear nowhere devloop
writes (the builder's command line, its output lines) nor in the image. Offline: the Dockerfile
starts from the local node base."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import docker
import pytest

from devloop import proc
from devloop.builder import BuildKitCLI, detect_builder, reset_detection
from devloop.images import Images

pytestmark = pytest.mark.integration

TOKEN = f"npm-{uuid.uuid4().hex}"  # the value in the environment
CERT = f"cert-{uuid.uuid4().hex}"  # the value in the file
DEBIAN_CLI = Path("/usr/bin/docker")  # Debian's docker.io (20.10): `DOCKER_BUILDKIT=1 docker build`, CI's CLI


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()  # the Dockerfile checks the values without holding them


def _detected() -> BuildKitCLI:
    reset_detection()
    builder = detect_builder(Images())
    assert isinstance(builder, BuildKitCLI), f"expected BuildKit to be detected, got {builder.name}"
    return builder


def _debian() -> BuildKitCLI:
    if not DEBIAN_CLI.exists():  # CI installs Debian's docker.io: never green by skipping there
        (pytest.fail if os.environ.get("CI") else pytest.skip)("no Debian docker CLI at /usr/bin/docker")
    return BuildKitCLI([str(DEBIAN_CLI), "build"], {"DOCKER_BUILDKIT": "1"}, proc.DEFAULT)


@pytest.mark.parametrize("make", [_detected, _debian], ids=["detected", "debian-cli"])
def test_secrets_from_the_environment_and_a_file_reach_the_step_and_nothing_else(
    make: Callable[[], BuildKitCLI],
    tmp_path: Path,
    node_base: str,
    docker_client: docker.DockerClient,
    cleanup_images: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    builder = make()
    tag = f"devloop-secret-{uuid.uuid4().hex[:8]}:dl-test"
    cleanup_images.append(tag)
    monkeypatch.setenv("DEVLOOP_TEST_NPM_TOKEN", TOKEN)
    cert = tmp_path / "ca.pem"
    cert.write_text(CERT + "\n")
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text(
        f"FROM {node_base}\n"
        f"ENV DEVLOOP_TEST_BUILD={tag}\n"  # each build its own: the secret's step runs, never from the cache
        "RUN --mount=type=secret,id=npm --mount=type=secret,id=cert "
        f'test "$(sha256sum < /run/secrets/npm)" = "{_sha(TOKEN)}  -" && test "$(sha256sum < /run/secrets/cert)" = "{_sha(CERT + chr(10))}  -" '
        '&& echo "careless: $(cat /run/secrets/npm)" && echo both-secrets-read > /seen\n'
    )
    lines: list[str] = []
    secrets, secret_env = {"cert": cert}, {"npm": "DEVLOOP_TEST_NPM_TOKEN"}
    builder.build(context, "Dockerfile", tag, {}, None, lines.append, secrets=secrets, secret_env=secret_env)

    out: bytes = docker_client.containers.run(tag, ["sh", "-c", "cat /seen; ls -A /run/secrets 2>/dev/null | wc -l"], remove=True)
    assert out.decode().split() == ["both-secrets-read", "0"]  # used in the step, not kept in the image
    assert any("careless: ***" in line for line in lines), lines[-10:]  # the step's output, the value hidden
    argv = builder.argv(context, "Dockerfile", tag, {}, None, tmp_path / "iid", secrets, secret_env)
    history = str([h.get("CreatedBy") for h in docker_client.api.history(tag)])
    for text in ("\n".join(lines), " ".join(argv), history):
        assert TOKEN not in text and CERT not in text
