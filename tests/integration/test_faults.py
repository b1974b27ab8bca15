"""Faults against the real Docker engine: a daemon that goes away mid-loop, a full disk."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from devloop import config
from devloop.builder import ClassicSDK
from devloop.errors import StepFailed
from devloop.images import Images
from devloop.output import Output
from devloop.plan import Plan, ServiceChange
from devloop.wiring import DetectedBuilder
from tests.unit.fakes import FakeCluster, FakePublisher, make_engine

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
    engine = make_engine(
        cfg,
        Output(json_mode=True, stdout=io.StringIO()),
        images=images,
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


@pytest.fixture
def small_docker(node_base: str) -> Iterator[tuple[str, Path]]:
    """A second, real Docker engine whose disk is small: its data root is a 1.2 GB tmpfs, in its own
    network namespace (its docker0 is its own; it never touches the host's network or iptables). Holds the Node base.
    Yields (DOCKER_HOST, the data root)."""
    if os.geteuid() != 0:
        why = "a second Docker engine on its own filesystem needs root (mount, dockerd)"
        if os.environ.get("CI") == "true":
            pytest.fail(why, pytrace=False)  # CI runs as root: never green by skipping there
        pytest.skip(why)
    root = Path(tempfile.mkdtemp(prefix="dl-disk-", dir="/tmp"))  # short: unix socket paths are limited
    data = root / "data"
    data.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1200m", "tmpfs", str(data)], check=True)
    host = f"unix://{root / 'docker.sock'}"
    with (root / "dockerd.log").open("wb") as log:
        argv = ["unshare", "--net", "dockerd", "--data-root", str(data), "--exec-root", str(root / "exec"), "-H", host]
        daemon = subprocess.Popen(
            [*argv, "--pidfile", str(root / "docker.pid"), "--iptables=false", "--ip-masq=false"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while subprocess.run(["docker", "-H", host, "info"], capture_output=True).returncode != 0:
            assert daemon.poll() is None and time.monotonic() < deadline, (root / "dockerd.log").read_text()[-2000:]
            time.sleep(0.5)  # a daemon starting: polled with a deadline
        save = subprocess.Popen(["docker", "save", node_base], stdout=subprocess.PIPE)
        subprocess.run(["docker", "-H", host, "load", "-q"], stdin=save.stdout, check=True, capture_output=True)
        assert save.wait() == 0
        yield host, data
    finally:
        daemon.terminate()
        daemon.wait(60)
        subprocess.run(["umount", "-l", str(data)], check=False)
        shutil.rmtree(root, ignore_errors=True)


def fill(data: Path, leave: int) -> Path:
    """Fill the filesystem so that `leave` bytes stay free, as a disk fills up."""
    free = shutil.disk_usage(data).free
    filler = data / "filler"
    subprocess.run(["fallocate", "-l", str(free - leave), str(filler)], check=True)
    return filler


@pytest.mark.parametrize("builder", ["buildkit", "classic"])
@pytest.mark.parametrize("writes", ["context", "run-step"])
def test_disk_full_during_a_build_fails_the_build_with_the_reason_and_nothing_is_deployed(
    sample_copy: Path, small_docker: tuple[str, Path], node_base: str, monkeypatch: pytest.MonkeyPatch, builder: str, writes: str
) -> None:
    """The Docker host's disk fills up, then a save adds a 4 MB file to the build context, or a
    Dockerfile step that writes 8 MB (as `npm ci` does): the daemon cannot store the build. A real full disk, honestly: a second dockerd whose data root is a small tmpfs (the main
    daemon's disk cannot be filled here without harming everything else on the machine). devloop
    talks to it through DOCKER_HOST as to any Docker host, with the builder it picks there. The
    cluster and the publisher are fakes: what is real is the engine, the daemon and its disk. Both
    builders: BuildKit (the docker CLI) and the classic one (docker SDK, Docker without BuildKit)."""
    host, data = small_docker
    monkeypatch.setenv("DOCKER_HOST", host)
    monkeypatch.setenv("DEVLOOP_BUILDER", builder)
    (sample_copy / "devloop.yaml").write_text(
        f"registry: {{enabled: false}}\nimage:\n  name: devloop-it-disk\n  buildArgs: {{NODE_IMAGE: {node_base}}}\n"
    )
    deployment = sample_copy / "sample-app" / "k8s" / "deployment.yaml"
    deployment.write_text(deployment.read_text().replace("my-web-app", "devloop-it-disk"))
    cfg = config.load(None, sample_copy)
    cluster, publisher = FakeCluster(), FakePublisher(registry="")
    images = Images(lambda: docker.DockerClient(base_url=host, version="auto"))
    engine = make_engine(
        cfg, Output(json_mode=True, stdout=io.StringIO()), images=images, kube=cluster, builder=DetectedBuilder(images), publisher=publisher
    )
    change = Plan(services=(ServiceChange("web-app", rebuild=True, image_files=("server.js",)),))
    (first,) = engine.run(change)
    assert first.ok and first.built, first.error
    filler = fill(data, leave=1 << 20)
    server = cfg.services[0].image.context / "server.js"
    server.write_text(server.read_text().replace("sample-app v1", "sample-app v2"))
    if writes == "context":
        (cfg.services[0].image.context / "asset.bin").write_bytes(os.urandom(4 << 20))
    else:
        dockerfile = cfg.services[0].image.context / "Dockerfile"
        dockerfile.write_text(dockerfile.read_text().replace("CMD [", "RUN head -c 8000000 /dev/zero > /tmp/cache.bin\nCMD [", 1))

    (failed,) = engine.run(change)
    assert failed.error is not None and failed.error.phase == "build", failed.error
    assert "no space left on device" in failed.error.message.lower() and "\n" not in failed.error.message, failed.error.message
    assert "disk" in failed.error.hint and "prune" in failed.error.hint, failed.error.hint
    assert publisher.pushed == [str(first.image)]  # nothing of the failed build moved
    assert cluster.serving("web-app") == [str(first.image)] * 3  # the previous version keeps serving

    filler.unlink()  # the user frees space; the next save recovers
    server.write_text(server.read_text() + "\n// saved again\n")
    (second,) = engine.run(change)
    assert second.ok and second.built, second.error
    assert cluster.serving("web-app") == [str(second.image)] * 3
