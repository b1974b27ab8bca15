"""kind's local-registry pattern: a registry container on the kind network, each node's
containerd told about it (hosts.toml under /etc/containerd/certs.d), and the
`kube-public/local-registry-hosting` ConfigMap that tools read (KEP-1755).

With it, a rebuild pushes only the layers that changed and the node pulls only those, instead
of `docker save` + import of the whole image on every cycle.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import docker.errors

from devloop.config import RegistryConfig
from devloop.errors import EnvironmentMissing, StepFailed
from devloop.gc import REGISTRY_ENV
from devloop.images import Images, Pushed, docker_errors
from devloop.model import ImageRef
from devloop.ports import Cluster
from devloop.registry_client import UNANSWERED, RegistryClient, unanswered

KIND_NETWORK = "kind"
CERTS_DIR = "/etc/containerd/certs.d"
ANSWER_TIMEOUT = 5.0  # seconds for the local registry to answer one request


def hosting_configmap(host: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "local-registry-hosting", "namespace": "kube-public"},
        "data": {"localRegistryHosting.v1": f'host: "{host}"\nhelp: "https://kind.sigs.k8s.io/docs/user/local-registry/"\n'},
    }


@dataclass(frozen=True)
class Problem:
    """Something wrong with the local registry, and the command that fixes it."""

    message: str
    fix: str


class LocalRegistry:
    def __init__(self, cfg: RegistryConfig, images: Images, kube: Cluster) -> None:
        self.cfg = cfg
        self.images = images
        self.kube = kube
        self.client = RegistryClient.local(self.host, ANSWER_TIMEOUT)  # its API, on 127.0.0.1:<hostPort>

    @property
    def host(self) -> str:
        """The name images are pushed to from the host and pulled by from the nodes."""
        return f"localhost:{self.cfg.host_port}"

    def ref(self, local_ref: str) -> str:
        return f"{self.host}/{local_ref}"

    def ensure(self, nodes: list[str]) -> bool:
        """Start the registry if needed and wire every node to it. True when anything changed."""
        changed = self._ensure_container()
        changed |= self._ensure_network()
        for node in nodes:
            changed |= self._ensure_node(node)
        if changed:
            self.kube.apply([hosting_configmap(self.host)], "kube-public")
        return changed

    def start_container(self) -> bool:
        """The registry container alone, running (before the cluster and its network exist). True when started."""
        return self._ensure_container()

    def _ensure_container(self) -> bool:
        client = self.images.client
        with docker_errors():
            try:
                c = client.containers.get(self.cfg.name)
                if c.status == "running":
                    return False
                c.start()
                return True
            except docker.errors.NotFound:
                pass  # never created, or removed (also while we looked): create it
            if not self.images.exists(self.cfg.image) and not self.images.pull(self.cfg.image):
                raise EnvironmentMissing(
                    f"the registry image {self.cfg.image} is not available locally and cannot be pulled",
                    "set registry.image to a registry image you have (offline: tests/images/build-registry.sh), "
                    "or registry.enabled: false to use kind load",
                )
            try:
                client.containers.run(
                    self.cfg.image,
                    name=self.cfg.name,
                    detach=True,
                    restart_policy={"Name": "always"},
                    environment=REGISTRY_ENV,  # deletes allowed (devloop's garbage collection), no stale blob cache
                    ports={"5000/tcp": ("127.0.0.1", self.cfg.host_port)},
                    labels={"dev.devloop.role": "registry"},
                )
            except docker.errors.APIError as e:
                if "port is already allocated" in str(e) or "address already in use" in str(e):
                    raise EnvironmentMissing(
                        f"port {self.cfg.host_port} for the local registry is taken",
                        "free it or set registry.hostPort in devloop.yaml",
                    ) from None
                raise
        return True

    def _ensure_network(self) -> bool:
        client = self.images.client
        with docker_errors():
            c = client.containers.get(self.cfg.name)
            if KIND_NETWORK in (c.attrs.get("NetworkSettings", {}).get("Networks") or {}):
                return False
            client.networks.get(KIND_NETWORK).connect(c)
        return True

    def _ensure_node(self, node: str) -> bool:
        path = f"{CERTS_DIR}/{self.host}/hosts.toml"
        want = f'[host."http://{self.cfg.name}:5000"]\n'
        with docker_errors():
            container = self.images.client.containers.get(node)
            have = container.exec_run(["cat", path])
            if have.exit_code == 0 and have.output.decode(errors="replace") == want:
                return False
            r = container.exec_run(["sh", "-c", 'mkdir -p "$(dirname "$1")" && printf "%s" "$2" > "$1"', "sh", path, want])
        if r.exit_code != 0:
            raise StepFailed(f"cannot configure the registry on node {node}: {r.output.decode(errors='replace').strip()}")
        return True

    # -- read-only checks (`devloop doctor`) ---------------------------------------------------------
    def problems(self, nodes: Sequence[str]) -> list[Problem]:
        """What keeps the registry from working, each with a copy-paste fix; [] when it is healthy.
        Looks only: starts, connects and writes nothing."""
        name = self.cfg.name
        with docker_errors():
            try:
                c = self.images.client.containers.get(name)
            except docker.errors.NotFound:
                return [Problem(f"the registry container {name} does not exist", "devloop up")]
            found: list[Problem] = []
            running = c.status == "running"
            if not running:
                found.append(Problem(f"the registry container {name} is {c.status}, not running", f"docker start {name}"))
            published = _published_port(c.attrs)
            if published != self.cfg.host_port:
                what = f"publishes port {published}" if published is not None else "does not publish port 5000"
                found.append(
                    Problem(
                        f"the registry container {name} {what}, registry.hostPort is {self.cfg.host_port}",
                        f"docker rm -f {name} && devloop up",
                    )
                )
            if KIND_NETWORK not in (c.attrs.get("NetworkSettings", {}).get("Networks") or {}):
                found.append(Problem(f"the registry container {name} is not on the {KIND_NETWORK!r} docker network", "devloop up"))
            for node in nodes:
                problem = self._node_problem(node)
                if problem is not None:
                    found.append(problem)
        if running and published == self.cfg.host_port:
            error = self.answers()
            if error is not None:
                found.append(
                    Problem(
                        f"the registry does not answer GET http://127.0.0.1:{self.cfg.host_port}/v2/: {error}", f"docker restart {name}"
                    )
                )
        return found

    def _node_problem(self, node: str) -> Problem | None:
        path = f"{CERTS_DIR}/{self.host}/hosts.toml"
        want = f"http://{self.cfg.name}:5000"
        try:
            container = self.images.client.containers.get(node)
            if container.status != "running":
                return Problem(f"kind node {node} is {container.status}", f"docker start {node}")
            have = container.exec_run(["cat", path])
        except docker.errors.NotFound:
            return Problem(f"kind node {node} does not exist", "devloop up")
        except docker.errors.APIError as e:
            return Problem(f"cannot read {path} on kind node {node}: {e.explanation or e}", "devloop up")
        if have.exit_code != 0:
            return Problem(f"kind node {node} has no {path} (containerd does not know the registry)", "devloop up")
        if want not in have.output.decode(errors="replace"):
            return Problem(f"{path} on kind node {node} does not point at {want}", "devloop up")
        return None

    def answers(self) -> str | None:
        """None when the registry answers `GET /v2/` on 127.0.0.1:<hostPort>, else what went wrong."""
        try:
            status = self.client.ping()
        except UNANSWERED as e:
            return unanswered(e)
        return None if status in (200, 401) else f"HTTP {status}"

    def state(self) -> tuple[str, str]:
        """(the container's status, its ID); ("missing", "") when it does not exist. A container that
        is being removed (`docker rm -f` under way) is waited for: it is about to be missing."""
        deadline = time.monotonic() + 15
        with docker_errors():
            while True:
                try:
                    c = self.images.client.containers.get(self.cfg.name)
                except docker.errors.NotFound:
                    return "missing", ""
                if c.status not in ("removing", "dead") or time.monotonic() >= deadline:
                    return str(c.status), str(c.id)
                time.sleep(0.2)  # docker removing it: polled with a deadline

    def wait_answers(self, within: float = 20.0) -> None:
        """Wait until a (re)started registry answers `GET /v2/`; StepFailed when it does not in time."""
        deadline = time.monotonic() + within
        while (error := self.answers()) is not None:
            if time.monotonic() >= deadline:
                raise StepFailed(f"the local registry {self.cfg.name} does not answer after {within:.0f}s: {error}", "devloop doctor")
            time.sleep(0.2)  # a registry process starting up: polled with a deadline

    def running(self) -> bool:
        """Whether the registry container exists and runs."""
        with docker_errors():
            try:
                return bool(self.images.client.containers.get(self.cfg.name).status == "running")
            except docker.errors.NotFound:
                return False

    def has(self, local_ref: str) -> bool:
        """Whether the registry already holds this tag (a HEAD on the v2 manifest)."""
        ref = ImageRef.parse(local_ref)
        try:
            return self.client.has(ref.repository, ref.tag)
        except UNANSWERED:
            return False

    def push(self, local_ref: str, progress: Callable[[str], None] = lambda _: None) -> Pushed:
        remote = self.ref(local_ref)
        self.images.tag(local_ref, remote)
        return self.images.push(remote, progress)

    def remove(self) -> bool:
        with docker_errors():
            try:
                self.images.client.containers.get(self.cfg.name).remove(force=True, v=True)
                return True
            except docker.errors.NotFound:
                return False


def _published_port(attrs: dict[str, Any]) -> int | None:
    """The host port the container publishes 5000/tcp on, if it publishes it."""
    bindings = (attrs.get("HostConfig", {}).get("PortBindings") or {}).get("5000/tcp") or []
    for b in bindings:
        try:
            return int(b.get("HostPort") or "")
        except ValueError:
            continue
    return None
