"""Faults against the real Docker engine: a daemon that goes away mid-loop, a full disk."""

from __future__ import annotations

import contextlib
import io
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from devloop import config
from devloop.builder import ClassicSDK
from devloop.engine import Engine
from devloop.errors import StepFailed
from devloop.images import Images
from devloop.output import Output
from devloop.plan import Plan, ServiceChange
from tests.unit.fakes import FakeCluster, FakeKind, FakePublisher

pytestmark = pytest.mark.integration


class SocketProxy:
    """A unix-socket proxy in front of the real Docker socket: `cut()` is a daemon that stopped."""

    def __init__(self, path: Path, target: str = "/var/run/docker.sock") -> None:
        self.path = str(path)
        self.target = target
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(self.path)
        self.server.listen(16)
        self.up = True
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(self.target)
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.up = False
        for c in self.conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        self.conns.clear()

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        self.cut()
        self.server.close()


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[SocketProxy]:
    p = SocketProxy(tmp_path / "docker.sock")
    yield p
    p.close()


def test_daemon_gone_mid_loop_fails_one_cycle_and_the_next_recovers(sample_copy: Path, proxy: SocketProxy, node_base: str) -> None:
    (sample_copy / "devloop.yaml").write_text(
        f"registry: {{enabled: false}}\nimage:\n  name: devloop-it-proxy\n  buildArgs: {{NODE_IMAGE: {node_base}}}\n"
    )
    deployment = sample_copy / "sample-app" / "k8s" / "deployment.yaml"
    deployment.write_text(deployment.read_text().replace("my-web-app", "devloop-it-proxy"))
    cfg = config.load(None, sample_copy)
    images = Images(lambda: docker.DockerClient(base_url=f"unix://{proxy.path}", version="auto"))
    # kind and the cluster stay fakes here: the daemon is what is real (built through the classic SDK builder on the proxy)
    cluster = FakeCluster()
    engine = Engine(
        cfg,
        Output(json_mode=True, stdout=io.StringIO()),
        images=images,
        kind=FakeKind(),
        kube=cluster,
        builder=ClassicSDK(images),
        publisher=FakePublisher(registry=""),
    )
    images.ping()
    proxy.cut()
    server = cfg.services[0].image.context / "server.js"
    server.write_text(server.read_text() + "\n// edit 1\n")
    change = Plan(services=(ServiceChange("web-app", rebuild=True, image_files=("server.js",)),))
    (failed,) = engine.run(change)
    assert failed.error is not None and "cannot reach the Docker daemon" in failed.error.message
    assert failed.error.phase == "build" and "start the Docker daemon" in failed.error.hint
    proxy.restore()
    (second,) = engine.run(change)
    assert second.built and second.ok  # the daemon answered again: the image was really built and rolled out
    assert cluster.serving("web-app") == [str(second.image)] * 3
    docker.from_env().images.remove(str(second.image), force=True)


def test_disk_full_on_save_is_a_clear_cycle_failure(docker_client: docker.DockerClient, node_base: str) -> None:
    images = Images()
    with pytest.raises(StepFailed) as info:
        images.save(node_base, Path("/dev/full"))
    assert "No space left on device" in info.value.message and "disk" in info.value.hint
