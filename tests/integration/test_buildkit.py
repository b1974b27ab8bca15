"""BuildKit builds through the docker CLI (devloop.builder), on the real Docker engine.

Nothing can be pulled here: every Dockerfile starts from the local node base, takes no `#syntax=`
line, and npm installs offline from a tarball in the build context (a `file:` dependency).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import stat
import tarfile
import uuid
from pathlib import Path

import docker
import pytest

from devloop import proc
from devloop.builder import BuildKitCLI, ClassicSDK, PlainProgress, detect_builder, reset_detection
from devloop.errors import CycleFailed
from devloop.images import Images

pytestmark = pytest.mark.integration

# The shape of Docker's Node.js guide (docs.docker.com/guides/nodejs/containerize), with a base image
# that exists offline and one extra bind mount for the vendored dependency tarball.
GUIDE_DOCKERFILE = """\
ARG NODE_IMAGE
FROM ${NODE_IMAGE}
ENV NODE_ENV=production
WORKDIR /usr/src/app
RUN --mount=type=bind,source=package.json,target=package.json \\
    --mount=type=bind,source=package-lock.json,target=package-lock.json \\
    --mount=type=bind,source=vendor,target=vendor \\
    --mount=type=cache,target=/root/.npm \\
    npm ci --omit=dev --offline --no-audit --no-fund
COPY . .
CMD ["node", "index.js"]
"""

MULTI_STAGE_DOCKERFILE = """\
ARG NODE_IMAGE
FROM ${NODE_IMAGE} AS base
WORKDIR /app
COPY index.js ./

FROM base AS test
RUN echo "the test stage must not run when the target is prod" && exit 3

FROM base AS dev
ENV MODE=dev
CMD ["node", "-e", "console.log('mode ' + process.env.MODE)"]

FROM base AS prod
ENV MODE=prod
RUN echo built-for-prod > /app/stamp
CMD ["node", "-e", "console.log('mode ' + process.env.MODE + ' ' + require('fs').readFileSync('/app/stamp', 'utf8').trim())"]
"""


def npm_tarball(name: str, version: str, index_js: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        files = {"package.json": json.dumps({"name": name, "version": version, "main": "index.js"}), "index.js": index_js}
        for filename, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"package/{filename}")
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_guide_app(root: Path, greeting: str = "hello") -> Path:
    """A Node app with one vendored dependency (file: tarball) and a matching lockfile v3."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "vendor").mkdir(exist_ok=True)
    tgz = npm_tarball("greet", "1.0.0", f"module.exports = n => `{greeting} ${{n}}`;\n")
    (root / "vendor" / "greet-1.0.0.tgz").write_bytes(tgz)
    integrity = "sha512-" + base64.b64encode(hashlib.sha512(tgz).digest()).decode()
    spec = "file:vendor/greet-1.0.0.tgz"
    (root / "package.json").write_text(json.dumps({"name": "app", "version": "1.0.0", "private": True, "dependencies": {"greet": spec}}))
    lock = {
        "name": "app",
        "version": "1.0.0",
        "lockfileVersion": 3,
        "requires": True,
        "packages": {
            "": {"name": "app", "version": "1.0.0", "dependencies": {"greet": spec}},
            "node_modules/greet": {"version": "1.0.0", "resolved": spec, "integrity": integrity},
        },
    }
    (root / "package-lock.json").write_text(json.dumps(lock, indent=2))
    (root / "index.js").write_text("console.log(require('greet')('from the guide'));\n")
    (root / "Dockerfile").write_text(GUIDE_DOCKERFILE)
    return root


@pytest.fixture
def tag(cleanup_images: list[str]) -> str:
    ref = f"devloop-bk-{uuid.uuid4().hex[:8]}:dl-test"
    cleanup_images.append(ref)
    return ref


@pytest.fixture
def buildkit(docker_client: docker.DockerClient) -> BuildKitCLI:
    """The builder devloop picks here: BuildKit (this machine's daemon has it built in)."""
    reset_detection()
    builder = detect_builder(Images())
    assert isinstance(builder, BuildKitCLI), f"expected BuildKit to be detected, got {builder.name}"
    return builder


def run_image(client: docker.DockerClient, ref: str, command: list[str] | None = None) -> str:
    out: bytes = client.containers.run(ref, command, remove=True)
    return out.decode().strip()


def test_node_guide_dockerfile_builds_and_runs(
    buildkit: BuildKitCLI, tmp_path: Path, node_base: str, tag: str, docker_client: docker.DockerClient
) -> None:
    app = write_guide_app(tmp_path / "app")
    lines: list[str] = []
    image_id = buildkit.build(app, "Dockerfile", tag, {"NODE_IMAGE": node_base}, None, lines.append)
    assert image_id.startswith("sha256:") and docker_client.images.get(tag).id == image_id
    # progress reached the caller, step headers included; the vertex digests did not
    assert any("RUN --mount=type=bind,source=package.json" in line for line in lines)
    assert any("added 1 package" in line for line in lines)
    assert not any(line.split(" ", 1)[-1].startswith("sha256:") for line in lines if line.startswith("#"))
    assert run_image(docker_client, tag) == "hello from the guide"
    # the cache mount kept npm's cache out of the image; node_modules came from the bind-mounted lockfile
    listing = run_image(docker_client, tag, ["sh", "-c", "ls /root/.npm/_cacache 2>/dev/null | wc -l; ls node_modules"])
    assert listing.split() == ["0", "greet"]


def test_dependency_change_rebuilds_with_the_new_dependency(
    buildkit: BuildKitCLI, tmp_path: Path, node_base: str, tag: str, cleanup_images: list[str], docker_client: docker.DockerClient
) -> None:
    app = write_guide_app(tmp_path / "app")
    buildkit.build(app, "Dockerfile", tag, {"NODE_IMAGE": node_base})
    write_guide_app(app, greeting="howdy")  # a new dependency tarball, new integrity in the lockfile
    second = tag.replace(":dl-test", ":dl-test2")
    cleanup_images.append(second)
    buildkit.build(app, "Dockerfile", second, {"NODE_IMAGE": node_base})
    assert run_image(docker_client, second) == "howdy from the guide"
    assert run_image(docker_client, tag) == "hello from the guide"


def test_multi_stage_target(buildkit: BuildKitCLI, tmp_path: Path, node_base: str, tag: str, docker_client: docker.DockerClient) -> None:
    (tmp_path / "Dockerfile.multi").write_text(MULTI_STAGE_DOCKERFILE)
    (tmp_path / "index.js").write_text("console.log('unused');\n")
    lines: list[str] = []
    buildkit.build(tmp_path, "Dockerfile.multi", tag, {"NODE_IMAGE": node_base}, "prod", lines.append)
    assert run_image(docker_client, tag) == "mode prod built-for-prod"
    assert not any("[test " in line for line in lines)  # BuildKit skips stages the target does not need
    buildkit.build(tmp_path, "Dockerfile.multi", tag, {"NODE_IMAGE": node_base}, "dev")
    assert run_image(docker_client, tag) == "mode dev"


def test_failing_run_step_is_named_with_its_error_lines(buildkit: BuildKitCLI, tmp_path: Path, node_base: str, tag: str) -> None:
    app = write_guide_app(tmp_path / "app")
    (app / "broken.js").write_text("const greeting = ;\n")
    (app / "Dockerfile").write_text(GUIDE_DOCKERFILE.replace('CMD ["node"', 'RUN node broken.js\nCMD ["node"'))
    with pytest.raises(CycleFailed) as info:
        buildkit.build(app, "Dockerfile", tag, {"NODE_IMAGE": node_base})
    err = info.value
    assert err.phase == "build"
    assert err.message.startswith("[stage-0 5/5] RUN node broken.js failed: "), err.message
    assert "exit code: 1" in err.message
    assert any("SyntaxError: Unexpected token ';'" in line for line in err.details), err.details
    assert any("const greeting = ;" in line for line in err.details)
    assert not any(line.lstrip().startswith("at ") for line in err.details)  # no stack frames
    assert len(err.details) <= 6
    assert "fix the Dockerfile" in err.hint
    assert not Images().exists(tag)


def test_dockerfile_error_outside_a_step(buildkit: BuildKitCLI, tmp_path: Path, node_base: str, tag: str) -> None:
    (tmp_path / "Dockerfile").write_text(f"FROM {node_base}\nBOGUS instruction\n")
    with pytest.raises(CycleFailed) as info:
        buildkit.build(tmp_path, "Dockerfile", tag, {})
    assert info.value.message == "docker build failed: dockerfile parse error line 2: unknown instruction: BOGUS"


def test_missing_target_stage_has_a_hint(buildkit: BuildKitCLI, tmp_path: Path, node_base: str, tag: str) -> None:
    (tmp_path / "Dockerfile").write_text(MULTI_STAGE_DOCKERFILE)
    with pytest.raises(CycleFailed) as info:
        buildkit.build(tmp_path, "Dockerfile", tag, {"NODE_IMAGE": node_base}, "nosuch")
    assert "target stage nosuch could not be found" in info.value.message
    assert "image.target" in info.value.hint


def test_build_secret_is_used_and_not_kept(
    buildkit: BuildKitCLI, tmp_path: Path, node_base: str, tag: str, docker_client: docker.DockerClient
) -> None:
    secret = tmp_path / "npm-token"
    secret.write_text("s3cr3t-token\n")
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text(
        f"FROM {node_base}\n"
        "RUN --mount=type=secret,id=npm_token "
        'test "$(cat /run/secrets/npm_token)" = s3cr3t-token && echo secret-was-readable > /seen\n'
    )
    buildkit.build(context, "Dockerfile", tag, {}, secrets={"npm_token": secret})
    out = run_image(docker_client, tag, ["sh", "-c", "cat /seen; ls -A /run/secrets 2>/dev/null | wc -l"])
    assert out.split() == ["secret-was-readable", "0"]
    # without the secret the step fails, naming it (a changed step: secrets are not part of the cache key)
    (context / "Dockerfile").write_text((context / "Dockerfile").read_text().replace("> /seen", "> /seen-again"))
    with pytest.raises(CycleFailed) as info:
        buildkit.build(context, "Dockerfile", tag + "x", {})
    assert "RUN --mount=type=secret,id=npm_token" in info.value.message


def test_classic_fallback_builds_targets_but_not_mounts(
    tmp_path: Path, node_base: str, tag: str, docker_client: docker.DockerClient
) -> None:
    classic = ClassicSDK(Images())
    # the classic builder runs every stage before the target, needed or not: the test stage must pass
    (tmp_path / "Dockerfile.multi").write_text(MULTI_STAGE_DOCKERFILE.replace(" && exit 3", ""))
    (tmp_path / "index.js").write_text("console.log('unused');\n")
    classic.build(tmp_path, "Dockerfile.multi", tag, {"NODE_IMAGE": node_base}, "dev")
    assert run_image(docker_client, tag) == "mode dev"
    app = write_guide_app(tmp_path / "app")
    with pytest.raises(CycleFailed) as info:
        classic.build(app, "Dockerfile", tag, {"NODE_IMAGE": node_base})
    assert "requires BuildKit" in info.value.message and "buildx" in info.value.hint


class CountingRunner:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def run(self, argv, **kw):  # type: ignore[no-untyped-def]
        self.calls.append(list(argv))
        return proc.DEFAULT.run(argv, **kw)

    def spawn(self, argv, **kw):  # type: ignore[no-untyped-def]
        self.calls.append(list(argv))
        return proc.DEFAULT.spawn(argv, **kw)


def fake_cli(path: Path, script: str) -> str:
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_detection_prefers_buildx_then_falls_back_to_classic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reset_detection()
    # a 23+ CLI without the buildx plugin: refuses BuildKit builds
    refusing = fake_cli(
        tmp_path / "docker-nobuildx", 'echo "ERROR: BuildKit is enabled but the buildx component is missing or broken." >&2; exit 1\n'
    )
    runner = CountingRunner()
    assert isinstance(detect_builder(Images(), runner, clis=[refusing]), ClassicSDK)
    assert isinstance(detect_builder(Images(), runner, clis=[refusing]), ClassicSDK)
    assert len(runner.calls) == 2  # `buildx version` and one probe build, once for both calls
    # with buildx: `docker buildx build --load`
    with_buildx = fake_cli(tmp_path / "docker-buildx", '[ "$1" = buildx ] && [ "$2" = version ] && exit 0; exit 1\n')
    chosen = detect_builder(Images(), runner, clis=[refusing, with_buildx])
    assert isinstance(chosen, BuildKitCLI) and chosen.command == [with_buildx, "buildx", "build", "--load"]
    monkeypatch.setenv("DEVLOOP_BUILDER", "classic")
    assert isinstance(detect_builder(Images(), runner, clis=[with_buildx]), ClassicSDK)
    reset_detection()


def test_detection_on_this_machine_uses_a_cli_that_can(buildkit: BuildKitCLI) -> None:
    # /usr/local/bin/docker (28.x, no buildx) refuses; Debian's /usr/bin/docker (20.10) drives the embedded BuildKit
    assert buildkit.env.get("DOCKER_BUILDKIT") == "1" or "buildx" in buildkit.command
    assert os.path.basename(buildkit.command[0]) == "docker"


BUILDX_TRANSCRIPT = """\
#8 [build 3/3] RUN node broken.js
#8 0.412 /app/broken.js:1
#8 0.412 const greeting = ;
#8 0.412                  ^
#8 0.412
#8 0.412 SyntaxError: Unexpected token ';'
#8 0.412     at internalCompileFunction (node:internal/vm:76:18)
#8 0.412
#8 0.412 Node.js v22.1.0
#8 ERROR: process "/bin/sh -c node broken.js" did not complete successfully: exit code: 1
------
 > [build 3/3] RUN node broken.js:
0.412 const greeting = ;
0.412 SyntaxError: Unexpected token ';'
------
Dockerfile:7
--------------------
   5 |     COPY . .
   7 | >>> RUN node broken.js
--------------------
ERROR: failed to solve: process "/bin/sh -c node broken.js" did not complete successfully: exit code: 1
"""


def test_plain_progress_parser_reads_buildx_output() -> None:
    seen: list[str] = []
    progress = PlainProgress(seen.append)
    for line in BUILDX_TRANSCRIPT.splitlines():
        progress.feed(line)
    err = progress.failure(1)
    assert (
        err.message
        == '[build 3/3] RUN node broken.js failed: process "/bin/sh -c node broken.js" did not complete successfully: exit code: 1'
    )
    assert err.details[-2:] == [
        "SyntaxError: Unexpected token ';'",
        'ERROR: process "/bin/sh -c node broken.js" did not complete successfully: exit code: 1',
    ]
    assert progress.final_error() == 'process "/bin/sh -c node broken.js" did not complete successfully: exit code: 1'
    assert seen[0] == "#8 [build 3/3] RUN node broken.js"
