"""What a failed BuildKit build says: the failing step, and a hint that points at the cause."""

from __future__ import annotations

from devloop.builder import PlainProgress, build_hint

SYNTAX_OFFLINE = """#0 building with "default" instance using docker driver

#1 [internal] load build definition from Dockerfile
#1 transferring dockerfile: 126B done
#1 DONE 0.0s

#2 resolve image config for docker-image://docker.io/docker/dockerfile:1
#2 ERROR: failed to do request: Head "https://registry-1.docker.io/v2/docker/dockerfile/manifests/1": dial tcp: lookup registry-1.docker.io on 10.0.0.1:53: no such host
------
 > resolve image config for docker-image://docker.io/docker/dockerfile:1:
------
ERROR: failed to solve: docker.io/docker/dockerfile:1: failed to resolve source metadata for docker.io/docker/dockerfile:1: failed to do request: Head "https://registry-1.docker.io/v2/docker/dockerfile/manifests/1": dial tcp: lookup registry-1.docker.io on 10.0.0.1:53: no such host
"""

BASE_OFFLINE = """#1 [internal] load build definition from Dockerfile
#1 DONE 0.0s

#2 [internal] load metadata for docker.io/library/node:20-slim
#2 ERROR: failed to do request: Head "https://registry-1.docker.io/v2/library/node/manifests/20-slim": dial tcp: lookup registry-1.docker.io: no such host
------
 > [internal] load metadata for docker.io/library/node:20-slim:
------
ERROR: failed to solve: node:20-slim: failed to resolve source metadata for docker.io/library/node:20-slim: no such host
"""


def failure_of(output: str) -> tuple[str, str]:
    progress = PlainProgress(lambda line: None)
    for line in output.splitlines():
        progress.feed(line)
    failed = progress.failure(1)
    return failed.message, failed.hint


def test_an_unpullable_syntax_frontend_is_named_with_its_fix_not_blamed_on_the_base_image() -> None:
    message, hint = failure_of(SYNTAX_OFFLINE)
    assert "no such host" in message
    assert "# syntax=" in hint and "docker.io/docker/dockerfile:1" in hint and "remove that line" in hint
    assert "base image" not in hint


def test_an_unpullable_base_image_still_gets_the_base_image_hint() -> None:
    message, hint = failure_of(BASE_OFFLINE)
    assert "node:20-slim" in message and "base image could not be pulled" in hint
    assert "syntax" not in build_hint("RUN npm ci failed: exit code: 1 docker/dockerfile")  # a path is not the frontend


def test_a_frontend_failure_told_only_in_the_final_error_line_still_names_the_syntax_line() -> None:
    final = (
        "ERROR: failed to solve: docker/dockerfile:1.7: failed to resolve source metadata for docker.io/docker/dockerfile:1.7: "
        'failed to do request: Head "https://registry-1.docker.io/v2/docker/dockerfile/manifests/1.7": dial tcp: no such host'
    )
    message, hint = failure_of(final + "\n")
    assert message.startswith("docker build failed: ") and "no such host" in message
    assert "frontend image docker.io/docker/dockerfile:1.7" in hint and "base image" not in hint
