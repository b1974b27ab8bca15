"""A kind cluster, devloop's local registry and a Deployment, driven version after version through
devloop's own parts (LocalRegistry, RegistryPublisher, the wiring's garbage collection), with the
bytes each place holds measured after every version. Shared by tests/e2e/test_gc_disk.py (a dozen
versions) and benchmarks/gc_soak.py (a hundred).

A version is a tiny image: the registry image (local, small, it has a shell and `sleep`) plus one
file of random bytes, so each version differs by one small layer, as a rebuild of an app does. It is
built, published (under the publisher's lock, as the engine does), rolled out (the kubelet pulls it
from the registry) and then collected, as the engine's tidy step does after a successful rollout. The
pods ignore SIGTERM (sleep as PID 1) with the default 30 s grace: as with a real app that drains, the
pods of the previous versions are still terminating while the next versions roll out.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

import docker
import yaml

from devloop import gc
from devloop.api import ApiCluster
from devloop.config import RegistryConfig
from devloop.images import Images
from devloop.kind import Kind
from devloop.model import ImageRef
from devloop.publish import RegistryPublisher
from devloop.registry import LocalRegistry
from devloop.targets.local import Collector
from devloop.wiring import collector
from tests.e2e.conftest import Harness, free_port

APP = "gcdisk-app"  # its own image name: no other test builds or cleans it
NAMESPACE = "gcdisk"
KIND_CONFIG = """kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
containerdConfigPatches:
  - |-
    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = "/etc/containerd/certs.d"
"""
CONTENT_STORE = "/var/lib/containerd/io.containerd.content.v1.content"


@dataclasses.dataclass(frozen=True)
class Figures:
    registry_tags: int
    registry_kb: int  # `du -sk` of the registry's storage, inside its container
    node_images: int  # the app's images in the node's containerd (crictl images)
    node_image_bytes: int  # their sizes as crictl reports them
    node_content_kb: int  # `du -sk` of the node's containerd content store (manifests, configs; kind discards unpacked layers)
    node_containerd_kb: int  # `du -sk` of all of the node's containerd (the unpacked layers: snapshots)


@dataclasses.dataclass
class Rig:
    h: Harness
    cluster: str
    node: str
    registry: LocalRegistry
    publisher: RegistryPublisher
    client: docker.DockerClient
    keep: int
    collect: Collector
    tags: list[str] = dataclasses.field(default_factory=list)  # oldest first

    def build(self, payload: bytes | None = None) -> str:
        """A new version (random content unless `payload`): its tag."""
        tag = f"dl-{uuid.uuid4().hex[:16]}"
        files = {"Dockerfile": f"FROM {self.h.registry_image}\nCOPY blob /blob\n".encode(), "blob": payload or os.urandom(64 * 1024)}
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        buf.seek(0)
        self.client.images.build(fileobj=buf, custom_context=True, tag=f"{APP}:{tag}", rm=True)
        self.tags.append(tag)
        return tag

    def publish(self, tag: str) -> None:
        self.publisher.publish(ImageRef(APP, tag, self.registry.host), lambda _: None)

    def roll_out(self, tag: str) -> None:
        """The Deployment on this version; returns when it is rolled out (the kubelet pulled it)."""
        deployment = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": APP, "namespace": NAMESPACE},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": APP}},
                "template": {
                    "metadata": {"labels": {"app": APP}},
                    "spec": {
                        "containers": [
                            {
                                "name": "app",
                                "image": f"{self.registry.host}/{APP}:{tag}",
                                "imagePullPolicy": "IfNotPresent",
                                "command": ["sleep", "3600"],
                            }
                        ]
                    },
                },
            },
        }
        self.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(deployment))
        self.kubectl("-n", NAMESPACE, "rollout", "status", f"deployment/{APP}", "--timeout=180s")

    def tidy(self, tag: str) -> str:
        """What the engine does after a successful rollout: the wiring's collection, the serving tag in use."""
        return self.collect(APP, {tag})

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        p = subprocess.run(
            [self.h.kubectl, "--context", f"kind-{self.cluster}", *args],
            input=stdin,
            env=self.h.env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert p.returncode == 0, f"kubectl {' '.join(args)}: {p.stderr}"
        return p.stdout

    def _exec(self, container: str, argv: list[str]) -> str:
        r = self.client.containers.get(container).exec_run(argv)
        assert r.exit_code == 0, f"{argv} in {container}: {r.output.decode(errors='replace')}"
        return bytes(r.output).decode()

    def _du_kb(self, container: str, path: str) -> int:
        """`du -sk path` in the container. Its total also when a file went while it counted (a
        terminating container's snapshot removed meanwhile: du says so and exits 1)."""
        r = self.client.containers.get(container).exec_run(["du", "-sk", path])
        last = bytes(r.output).decode(errors="replace").strip().splitlines()[-1:]
        assert last and last[0].endswith(path) and last[0].split()[0].isdigit(), f"du -sk {path} in {container}: {r.output!r}"
        return int(last[0].split()[0])

    def figures(self) -> Figures:
        repo = f"{self.registry.host}/{APP}"
        images = json.loads(self._exec(self.node, ["crictl", "images", "-o", "json"])).get("images") or []
        mine = [i for i in images if any(t.rpartition(":")[0] == repo for t in i.get("repoTags") or [])]
        return Figures(
            registry_tags=len(gc.HttpRegistry(self.registry.host).tags(APP)),
            registry_kb=self._du_kb(self.registry.cfg.name, "/var/lib/registry"),
            node_images=len(mine),
            node_image_bytes=sum(int(i.get("size") or 0) for i in mine),
            node_content_kb=self._du_kb(self.node, CONTENT_STORE),
            node_containerd_kb=self._du_kb(self.node, "/var/lib/containerd"),
        )

    def pull_works(self, tag: str) -> None:
        """The node pulls this version from the registry now (crictl pull: every blob must be there)."""
        self._exec(self.node, ["crictl", "pull", f"{self.registry.host}/{APP}:{tag}"])


def _remove_leftovers(client: docker.DockerClient, registry: str) -> None:
    with contextlib.suppress(docker.errors.NotFound):
        client.containers.get(registry).remove(force=True, v=True)
    for image in client.images.list():
        if any(t.rpartition(":")[0].rpartition("/")[2] == APP for t in image.tags):
            with contextlib.suppress(docker.errors.APIError):
                client.images.remove(image.id, force=True)


@contextlib.contextmanager
def rig(h: Harness, cluster: str, keep: int, tmp: Any) -> Iterator[Rig]:
    """The cluster (created here, deleted at the end, with its registry and the images built)."""
    client = docker.from_env()
    registry_name = f"{cluster}-registry"

    def kind(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["kind", *args], env=h.env, capture_output=True, text=True, timeout=600)

    if cluster in kind("get", "clusters").stdout.split():  # left by an interrupted run: the name is ours
        kind("delete", "cluster", "--name", cluster)
    _remove_leftovers(client, registry_name)
    path = os.environ.get("PATH", "")
    os.environ["PATH"] = h.env["PATH"]  # devloop's Kind() runs `kind` from PATH: the pinned one, as the harness has it
    config = tmp / "kind-config.yaml"
    config.write_text(KIND_CONFIG)
    t = time.monotonic()
    p = kind("create", "cluster", "--name", cluster, "--config", str(config), "--image", h.kind_image, "--wait", "180s")
    try:
        assert p.returncode == 0, f"kind create cluster {cluster}: {p.stderr[-3000:]}"
        print(f"\n{cluster}: created in {time.monotonic() - t:.1f}s")
        kinds = Kind()
        images = Images()
        kube = ApiCluster(f"kind-{cluster}")
        cfg = RegistryConfig(enabled=True, name=registry_name, host_port=free_port(), image=h.registry_image)
        registry = LocalRegistry(cfg, images, kube)
        publisher = RegistryPublisher(registry, kinds, cluster)
        publisher.prepare()
        registry.wait_answers()
        r = Rig(
            h,
            cluster,
            f"{cluster}-control-plane",
            registry,
            publisher,
            client,
            keep,
            collector(publisher, kinds, kube, cluster, cfg, keep, images),
        )
        r.kubectl("create", "namespace", NAMESPACE)
        yield r
    finally:
        kind("delete", "cluster", "--name", cluster)
        _remove_leftovers(client, registry_name)
        os.environ["PATH"] = path
