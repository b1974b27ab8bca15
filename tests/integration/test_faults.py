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
from devloop.pipeline import Pipeline

from devloop import config
from devloop.errors import CycleFailed
from devloop.images import Images
from devloop.kind import Kind
from devloop.kube import Kube
from devloop.output import Output
from tests.unit.fakes import FakeRunner

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
    runner = FakeRunner()  # kind and kubectl stay fakes here: the daemon is what is real
    cfg = config.load(None, sample_copy)
    images = Images(lambda: docker.DockerClient(base_url=f"unix://{proxy.path}", version="auto"))
    p = Pipeline(cfg, Output(json_mode=True, stdout=io.StringIO()), images=images, kind=Kind(runner), kube=Kube("kind-devloop", runner))
    images.ping()
    proxy.cut()
    server = cfg.image.context / "server.js"
    server.write_text(server.read_text() + "\n// edit 1\n")
    failed = p.cycle("image source changed", ("server.js",))
    assert failed.error is not None and "cannot reach the Docker daemon" in failed.error.message
    assert "start the Docker daemon" in failed.error.hint
    proxy.restore()
    runner.expect("kind", "get", "nodes", "--name", "devloop", stdout="")  # no nodes: nothing to load, then deploy
    runner.expect("kubectl", "--context", "kind-devloop", "apply", "-n", "default", "-f", "-", returncode=1, stderr="error: stop here")
    runner.expect("kind", "get", "clusters", stdout="devloop\n")
    second = p.cycle("image source changed", ("server.js",))
    assert second.built  # the daemon answered again: the image was really built
    assert second.error is not None and second.error.phase == "deploy"
    docker.from_env().images.remove(second.image, force=True)


def test_disk_full_on_save_is_a_clear_cycle_failure(docker_client: docker.DockerClient, node_base: str) -> None:
    images = Images()
    with pytest.raises(CycleFailed) as info:
        images.save(node_base, Path("/dev/full"))
    assert info.value.phase == "load"
    assert "No space left on device" in info.value.message and "disk" in info.value.hint
