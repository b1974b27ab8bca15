"""Build and serve the real sample image with devloop's docker adapter."""

from __future__ import annotations

import http.client
import io
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from devloop import config, wiring
from devloop.config import ServiceConfig
from devloop.engine import Engine
from devloop.errors import CycleFailed, DockerUnavailable
from devloop.images import Images
from devloop.model import ImageRef
from devloop.output import Output

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
MESSAGE = "Hello from devloop sample-app v1"


@pytest.fixture
def project(tmp_path: Path, node_base: str) -> Path:
    root = tmp_path / "proj"
    shutil.copytree(REPO / "sample-app", root / "sample-app", ignore=shutil.ignore_patterns("node_modules"))
    shutil.copy(REPO / "kind-config.yaml", root)
    # a unique image name per test, so parallel or repeated runs never share a cached tag
    name = f"devloop-it-{uuid.uuid4().hex[:8]}"
    (root / "devloop.yaml").write_text(
        f"apiVersion: devloop/v1\nimage:\n  name: {name}\n  buildArgs:\n    NODE_IMAGE: {node_base}\n"
        "deploy:\n  manifests: [sample-app/k8s]\n"
    )
    (root / "sample-app" / "k8s" / "deployment.yaml").write_text(
        (root / "sample-app" / "k8s" / "deployment.yaml").read_text().replace("my-web-app", name)
    )
    return root


class Builds:
    """The engine's build step for the one service of the project, on the real Docker engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.images = engine.images

    @property
    def config(self) -> ServiceConfig:
        return self.engine.config.services[0]

    def image_ref(self) -> str:
        return self.engine.image_ref(self.config).local

    def build(self, ref: str) -> bool:
        return self.engine.build(self.config, ImageRef.parse(ref))


@pytest.fixture
def pipeline(project: Path, cleanup_images: list[str]) -> Iterator[Builds]:
    cfg = config.load(None, project)
    b = Builds(wiring.engine(cfg, Output(json_mode=True, stdout=io.StringIO()), fetch_tools=False))
    yield b
    client = docker.from_env()
    for img in client.images.list(name=cfg.services[0].image.name):
        client.images.remove(img.id, force=True)


def serve(client: docker.DockerClient, ref: str) -> tuple[int, str, dict[str, str]]:
    """Run the image, wait for its 'listening' log line, GET / once."""
    container = client.containers.run(ref, detach=True, ports={"3000/tcp": ("127.0.0.1", None)})
    try:
        for line in container.logs(stream=True, follow=True):
            if b"listening" in line:
                break
        container.reload()
        port = int(container.ports["3000/tcp"][0]["HostPort"])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/")
        resp = conn.getresponse()
        user = container.exec_run(["id", "-u"]).output.decode().strip()
        return resp.status, resp.read().decode(), {"uid": user}
    finally:
        container.remove(force=True)


def test_build_tags_by_content_and_serves(pipeline: Builds, docker_client: docker.DockerClient) -> None:
    ref = pipeline.image_ref()
    name, tag = ref.rsplit(":", 1)
    assert name == pipeline.config.image.name and tag.startswith("dl-") and len(tag) == 19
    assert pipeline.build(ref) is True
    assert docker_client.images.get(ref)
    status, body, info = serve(docker_client, ref)
    assert status == 200 and body.strip() == MESSAGE
    assert info["uid"] == "1001"  # the seed's non-root user


def test_unchanged_rebuild_is_skipped(pipeline: Builds, docker_client: docker.DockerClient) -> None:
    ref = pipeline.image_ref()
    assert pipeline.build(ref) is True
    image_id = docker_client.images.get(ref).id
    # a no-op save and an edit to a .dockerignore'd file change nothing
    server = pipeline.config.image.context / "server.js"
    server.write_text(server.read_text())
    (pipeline.config.image.context / "README.md").write_text("only docs changed\n")
    assert pipeline.image_ref() == ref
    assert pipeline.build(ref) is False
    assert docker_client.images.get(ref).id == image_id


def test_source_edit_changes_tag_and_served_response(pipeline: Builds, docker_client: docker.DockerClient) -> None:
    first = pipeline.image_ref()
    pipeline.build(first)
    server = pipeline.config.image.context / "server.js"
    server.write_text(server.read_text().replace(MESSAGE, "Hello from devloop sample-app v2"))
    second = pipeline.image_ref()
    assert second != first
    assert pipeline.build(second) is True
    assert serve(docker_client, second)[1].strip() == "Hello from devloop sample-app v2"
    assert serve(docker_client, first)[1].strip() == MESSAGE  # the previous image is intact


def test_failed_build_names_the_step(pipeline: Builds) -> None:
    dockerfile = pipeline.config.image.context / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text().replace("CMD [", "RUN exit 42\nCMD ["))
    ref = pipeline.image_ref()
    with pytest.raises(CycleFailed) as info:
        pipeline.build(ref)
    assert info.value.phase == "build"
    assert "RUN exit 42" in info.value.message and "42" in info.value.message
    assert not pipeline.images.exists(ref)


def test_stopped_daemon_is_one_clear_error(tmp_path: Path) -> None:
    images = Images(lambda: docker.DockerClient(base_url=f"unix://{tmp_path}/docker.sock"))
    with pytest.raises(DockerUnavailable) as info:
        images.ping()
    assert info.value.exit_code == 3 and "start the Docker daemon" in info.value.hint


def test_old_content_tags_are_pruned_newest_kept(pipeline: Builds, docker_client: docker.DockerClient) -> None:
    server = pipeline.config.image.context / "server.js"
    refs = []
    for i in range(4):
        server.write_text(server.read_text().replace(MESSAGE if i == 0 else f"prune {i - 1}", f"prune {i}"))
        refs.append(pipeline.image_ref())
        assert pipeline.build(refs[-1])
    removed = pipeline.images.prune([pipeline.config.image.name], keep=3)
    assert removed == [refs[0]]
    assert not pipeline.images.exists(refs[0])
    assert all(pipeline.images.exists(r) for r in refs[1:])
