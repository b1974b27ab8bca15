"""The far side of `devloop release`: a real registry and a second kind cluster, reached like remote ones.

- Registry: Docker Distribution (DEVLOOP_TEST_REGISTRY_IMAGE, else devloop-test/registry:bookworm) with TLS
  (a test CA and a server certificate for `registry.devloop.test`, made with trustme) and htpasswd auth
  (bcrypt), listening on :5443. It runs on the docker network `kind` with the network alias
  `registry.devloop.test`: kind nodes resolve that name through Docker's DNS. The host's Docker daemon (which
  pushes) resolves it through a line in /etc/hosts (the container's IP on the kind network: not loopback, so
  the daemon treats the registry as secure and verifies its certificate against
  /etc/docker/certs.d/registry.devloop.test:5443/ca.crt, read on every push, no restart).
- Credentials: a DOCKER_CONFIG directory whose config.json holds `auths` for the registry (and one with a wrong
  password). The user's own ~/.docker is never used.
- Cluster `devloop-remote` (context `kind-devloop-remote`) from kind-remote.yaml: containerd reads
  /etc/containerd/certs.d, where each node gets a hosts.toml whose `ca =` names the test CA. Pulls are
  authenticated per namespace by the imagePullSecret `regcred` in `devloop-release`: a pod without it is refused.

Everything is torn down at the end of the session (cluster, registry container and volume, the /etc/hosts line,
the certs.d directory, the state directory), unless DEVLOOP_E2E_KEEP_REMOTE=1: then it stays, and the next
session reuses it after checking each part (and repairs or recreates what is missing or stale).

Ordering: the `remote` fixture is session-scoped, so its cluster lives until the session ends. The hook below
moves every test of this directory to the end of the session (pytest collects `remote/` before the
`test_*.py` files beside it), so the other modules' clusters are gone before devloop-remote is created: one
cluster at a time. With CI=true a leftover devloop-e2e cluster is deleted before devloop-remote is created.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import requests

from tests.e2e.conftest import CACHE, Harness, poll

REGISTRY_HOST = "registry.devloop.test"
REGISTRY_PORT = 5443
REGISTRY = f"{REGISTRY_HOST}:{REGISTRY_PORT}"
CLUSTER = "devloop-remote"
CONTEXT = f"kind-{CLUSTER}"
NAMESPACE = "devloop-release"
PULL_SECRET = "regcred"
USERNAME = "devloop"
REGISTRY_CONTAINER = "devloop-remote-registry"
REGISTRY_VOLUME = "devloop-remote-registry-data"
KIND_NETWORK = "kind"
KIND_CONFIG = Path(__file__).with_name("kind-remote.yaml")
STATE = CACHE / "remote"  # CA, server certificate, htpasswd, credentials, DOCKER_CONFIG directories
LOCK = CACHE / "remote.lock"
HOSTS_FILE = Path("/etc/hosts")
HOSTS_MARK = "# devloop-e2e-remote"
DOCKER_CERTS = Path("/etc/docker/certs.d") / REGISTRY
NODE_CERTS = f"/etc/containerd/certs.d/{REGISTRY}"
E2E_CLUSTER = "devloop-e2e"  # deleted first under CI=true only (one cluster at a time on 2 cores)
ROLE_LABEL = "dev.devloop.test.role"
STATE_LABEL = "dev.devloop.test.state"
HERE = Path(__file__).resolve().parent


def keep() -> bool:
    return os.environ.get("DEVLOOP_E2E_KEEP_REMOTE") == "1"


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run this directory's tests last: the remote cluster (session scope) then never overlaps another module's."""
    ours = [i for i in items if HERE in Path(i.path).resolve().parents]
    if ours:
        items[:] = [i for i in items if i not in ours] + ours


# ---- state: CA, certificates, htpasswd, Docker credentials --------------------------------------------------


@dataclass(frozen=True)
class State:
    root: Path

    @property
    def ca_file(self) -> Path:
        return self.root / "ca.crt"

    @property
    def registry_dir(self) -> Path:  # bind-mounted read-only into the registry container
        return self.root / "registry"

    @property
    def docker_config(self) -> Path:
        return self.root / "docker-config"

    @property
    def bad_docker_config(self) -> Path:
        return self.root / "docker-config-wrong-password"

    @property
    def credentials(self) -> dict[str, str]:
        return dict(json.loads((self.root / "credentials.json").read_text()))

    def files(self) -> list[Path]:
        r = self.registry_dir
        return [
            self.ca_file,
            r / "registry.crt",
            r / "registry.key",
            r / "htpasswd",
            self.root / "credentials.json",
            self.docker_config / "config.json",
            self.bad_docker_config / "config.json",
        ]

    def complete(self) -> bool:
        try:
            creds = self.credentials
            return all(p.is_file() and p.stat().st_size > 0 for p in self.files()) and bool(creds["password"])
        except (OSError, ValueError, KeyError):
            return False

    def fingerprint(self) -> str:
        """What the registry container was started with: it is recreated when this changes."""
        h = hashlib.sha256()
        for p in (self.ca_file, self.registry_dir / "registry.crt", self.registry_dir / "htpasswd"):
            h.update(p.read_bytes())
        return h.hexdigest()[:16]

    def create(self) -> None:
        """A new CA, a server certificate for registry.devloop.test, a random password and its bcrypt line."""
        import bcrypt
        import trustme

        if self.root.exists():
            shutil.rmtree(self.root)
        self.registry_dir.mkdir(parents=True)
        ca = trustme.CA(organization_name="devloop e2e test CA")
        leaf = ca.issue_cert(REGISTRY_HOST)
        ca.cert_pem.write_to_path(str(self.ca_file))
        (self.registry_dir / "registry.crt").write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(self.registry_dir / "registry.key"))
        password = secrets.token_urlsafe(18)
        # cost 5, as `htpasswd -B`: the registry checks the hash on every request of a push
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
        (self.registry_dir / "htpasswd").write_text(f"{USERNAME}:{hashed}\n")
        (self.root / "credentials.json").write_text(json.dumps({"username": USERNAME, "password": password}) + "\n")
        write_docker_config(self.docker_config, USERNAME, password)
        write_docker_config(self.bad_docker_config, USERNAME, password + "-wrong")


def write_docker_config(directory: Path, username: str, password: str, registry: str = REGISTRY) -> Path:
    """A DOCKER_CONFIG directory: config.json with `auths` for `registry` (what `docker login` writes)."""
    directory.mkdir(parents=True, exist_ok=True)
    auth = base64.b64encode(f"{username}:{password}".encode()).decode()
    (directory / "config.json").write_text(json.dumps({"auths": {registry: {"auth": auth}}}, indent=2) + "\n")
    return directory


# ---- the host: /etc/hosts line, the daemon's certs.d --------------------------------------------------------


def set_hosts_line(ip: str | None) -> None:
    """Our one line in /etc/hosts (`IP registry.devloop.test # devloop-e2e-remote`), or none. Rewritten in place:
    /etc/hosts is often a bind mount, which a rename would not replace."""
    with HOSTS_FILE.open("r+") as f:
        lines = f.read().splitlines(keepends=True)
        kept = [line for line in lines if HOSTS_MARK not in line]
        if kept and not kept[-1].endswith("\n"):
            kept[-1] += "\n"
        if ip:
            kept.append(f"{ip} {REGISTRY_HOST} {HOSTS_MARK}\n")
        if kept != lines:
            f.seek(0)
            f.write("".join(kept))
            f.truncate()


def hosts_line_ip() -> str | None:
    for line in HOSTS_FILE.read_text().splitlines():
        if HOSTS_MARK in line:
            return line.split()[0]
    return None


def trust_in_daemon(ca_file: Path | None) -> None:
    """/etc/docker/certs.d/registry.devloop.test:5443/ca.crt (None: remove the directory)."""
    if ca_file is None:
        shutil.rmtree(DOCKER_CERTS, ignore_errors=True)
        with contextlib.suppress(OSError):
            DOCKER_CERTS.parent.rmdir()  # only when empty
        return
    DOCKER_CERTS.mkdir(parents=True, exist_ok=True)
    target = DOCKER_CERTS / "ca.crt"
    if not target.is_file() or target.read_bytes() != ca_file.read_bytes():
        shutil.copyfile(ca_file, target)


# ---- the registry container ---------------------------------------------------------------------------------


class Registry:
    def __init__(self, image: str, state: State) -> None:
        self.image = image
        self.state = state
        self.client = docker.from_env()

    def container(self) -> Any:
        try:
            return self.client.containers.get(REGISTRY_CONTAINER)
        except docker.errors.NotFound:
            return None

    def ip(self) -> str:
        c = self.client.containers.get(REGISTRY_CONTAINER)
        ip = str(c.attrs["NetworkSettings"]["Networks"].get(KIND_NETWORK, {}).get("IPAddress") or "")
        assert ip, f"{REGISTRY_CONTAINER} has no address on the {KIND_NETWORK} network"
        return ip

    def ensure(self) -> bool:
        """The container running with the current state; True when it was (re)created."""
        c = self.container()
        if c is not None:
            labels = c.labels
            aliases = (c.attrs["NetworkSettings"]["Networks"].get(KIND_NETWORK) or {}).get("Aliases") or []
            mounts = {m["Destination"]: m.get("Source") for m in c.attrs["Mounts"]}
            if (
                labels.get(STATE_LABEL) == self.state.fingerprint()
                and REGISTRY_HOST in aliases
                and mounts.get("/etc/devloop-remote") == str(self.state.registry_dir)
                and c.attrs["Config"]["Image"] == self.image
                and c.attrs["Image"] == self.client.images.get(self.image).id  # not an image rebuilt since
            ):
                if c.status != "running":
                    c.start()
                self.wire()
                return False
            c.remove(force=True)  # the volume (the pushed images) is kept
        ensure_kind_network(self.client)
        self.client.containers.run(
            self.image,
            name=REGISTRY_CONTAINER,
            detach=True,
            labels={ROLE_LABEL: "remote-registry", STATE_LABEL: self.state.fingerprint()},
            environment={
                "REGISTRY_HTTP_ADDR": f":{REGISTRY_PORT}",
                "REGISTRY_HTTP_TLS_CERTIFICATE": "/etc/devloop-remote/registry.crt",
                "REGISTRY_HTTP_TLS_KEY": "/etc/devloop-remote/registry.key",
                "REGISTRY_AUTH": "htpasswd",
                "REGISTRY_AUTH_HTPASSWD_REALM": "devloop e2e registry",
                "REGISTRY_AUTH_HTPASSWD_PATH": "/etc/devloop-remote/htpasswd",
                "REGISTRY_STORAGE_DELETE_ENABLED": "true",
            },
            volumes={
                str(self.state.registry_dir): {"bind": "/etc/devloop-remote", "mode": "ro"},
                REGISTRY_VOLUME: {"bind": "/var/lib/registry", "mode": "rw"},
            },
            network=KIND_NETWORK,  # with the alias: what nodes resolve through Docker's DNS
            networking_config={KIND_NETWORK: self.client.api.create_endpoint_config(aliases=[REGISTRY_HOST])},
            restart_policy={"Name": "unless-stopped"},
        )
        self.wire()
        return True

    def wire(self) -> None:
        """The host side: our /etc/hosts line with the container's current IP, the daemon trusting the CA."""
        set_hosts_line(self.ip())
        trust_in_daemon(self.state.ca_file)

    def wait_ready(self, timeout: float = 60) -> None:
        """Answering over TLS with our CA and our password, and the Docker daemon able to log in to it."""
        creds = self.state.credentials
        poll(
            "the registry to answer GET /v2/ over TLS with the test credentials",
            timeout,
            lambda: True if api_get(self.state, "/v2/", auth=True).status_code == 200 else None,
            interval=0.2,
        )
        # the daemon re-reads /etc/hosts at most every 5 s (Go resolver): wait until it reaches the registry too
        client = docker.from_env()
        poll(
            "the Docker daemon to log in to the registry (TLS verified with certs.d)",
            timeout,
            lambda: client.login(
                creds["username"],
                creds["password"],
                registry=REGISTRY,
                reauth=True,
                dockercfg_path=str(self.state.docker_config / "config.json"),
            ),
            interval=0.5,
        )

    def stop(self) -> None:
        c = self.container()
        if c is not None and c.status == "running":
            c.stop(timeout=10)

    def start(self) -> None:
        c = self.container()
        assert c is not None, f"{REGISTRY_CONTAINER} is gone"
        c.start()
        self.wire()  # its IP on the kind network may have changed
        self.wait_ready()

    def remove(self) -> None:
        c = self.container()
        if c is not None:
            c.remove(force=True, v=False)
        with contextlib.suppress(docker.errors.NotFound):
            self.client.volumes.get(REGISTRY_VOLUME).remove(force=True)


def ensure_kind_network(client: Any, name: str = KIND_NETWORK) -> None:
    """The `kind` network as kind creates it (pkg/cluster/internal/providers/docker/network.go, v0.30): a bridge
    with IP masquerade, the default bridge's MTU, IPv6 on a ULA /64 derived from the name (IPv4 only if IPv6 is
    refused). kind then uses the existing network as it is."""
    if client.networks.list(names=[name]):
        return
    options = {"com.docker.network.bridge.enable_ip_masquerade": "true"}
    mtu = client.networks.get("bridge").attrs.get("Options", {}).get("com.docker.network.driver.mtu")
    if mtu:
        options["com.docker.network.driver.mtu"] = mtu
    digest = hashlib.sha1(name.encode() + b"\0\0\0\0").digest()  # name + attempt 0 (int32, little endian)
    subnet = "fc00:" + ":".join(f"{digest[i] << 8 | digest[i + 1]:x}" for i in (2, 4, 6)) + "::/64"
    try:
        ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=subnet)])
        client.networks.create(name, driver="bridge", options=options, enable_ipv6=True, ipam=ipam)
    except docker.errors.APIError as e:
        if "already exists" in str(e):
            return
        client.networks.create(name, driver="bridge", options=options)  # no IPv6 on this host


def api_get(state: State, path: str, auth: bool, ca_file: Path | None = None, method: str = "GET", **kw: Any) -> requests.Response:
    """A request to the registry by name, verified with the test CA (no proxy, no environment settings)."""
    with requests.Session() as s:
        s.trust_env = False
        creds = state.credentials
        return s.request(
            method,
            f"https://{REGISTRY}{path}",
            auth=(creds["username"], creds["password"]) if auth else None,
            verify=str(ca_file or state.ca_file),
            timeout=10,
            **kw,
        )


# ---- the cluster --------------------------------------------------------------------------------------------


def run(h: Harness, *argv: str, timeout: float = 600, input: str | None = None) -> str:
    p = subprocess.run(list(argv), env=h.env, capture_output=True, text=True, timeout=timeout, input=input)
    assert p.returncode == 0, f"{' '.join(argv)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return p.stdout


def node_names(h: Harness) -> list[str]:
    return run(h, "kind", "get", "nodes", "--name", CLUSTER).split()


def hosts_toml(ca: bool = True) -> str:
    """containerd's per-registry config (containerd 1.6+: config_path; `ca` is read on every pull)."""
    text = f'server = "https://{REGISTRY}"\n\n[host."https://{REGISTRY}"]\n  capabilities = ["pull", "resolve"]\n'
    return text + (f'  ca = "{NODE_CERTS}/ca.crt"\n' if ca else "")


def write_node_file(node: str, path: str, content: str) -> None:
    subprocess.run(
        ["docker", "exec", "-i", node, "sh", "-c", f'mkdir -p "$(dirname "{path}")" && cat > "{path}.tmp" && mv "{path}.tmp" "{path}"'],
        input=content,
        text=True,
        check=True,
        capture_output=True,
        timeout=60,
    )


def trust_in_nodes(h: Harness, ca_file: Path) -> None:
    """Each node: the CA and a hosts.toml naming it, under /etc/containerd/certs.d/registry.devloop.test:5443/."""
    for node in node_names(h):
        write_node_file(node, f"{NODE_CERTS}/ca.crt", ca_file.read_text())
        write_node_file(node, f"{NODE_CERTS}/hosts.toml", hosts_toml())


def cluster_healthy(h: Harness) -> bool:
    """The cluster exists with every node container running and its API answering."""
    if CLUSTER not in h.kind_clusters():
        return False
    nodes = node_names(h)
    client = docker.from_env()
    if not nodes or any(client.containers.get(n).status != "running" for n in nodes):
        return False
    p = subprocess.run(
        [h.kubectl, "--context", CONTEXT, "get", "--raw", "/readyz"], env=h.env, capture_output=True, text=True, timeout=30, check=False
    )
    return p.returncode == 0


def ensure_cluster(h: Harness, timings: dict[str, float]) -> None:
    if cluster_healthy(h):
        return
    if CLUSTER in h.kind_clusters():  # a kept cluster that did not survive (stopped nodes, dead API): start over
        run(h, "kind", "delete", "cluster", "--name", CLUSTER, timeout=300)
    if os.environ.get("CI") == "true" and E2E_CLUSTER in h.kind_clusters():
        print(f"\nCI: deleting the leftover {E2E_CLUSTER} cluster first (one cluster at a time)")
        run(h, "kind", "delete", "cluster", "--name", E2E_CLUSTER, timeout=300)
    t = time.monotonic()
    run(h, "kind", "create", "cluster", "--name", CLUSTER, "--image", h.kind_image, "--config", str(KIND_CONFIG), timeout=600)
    timings["cluster_create"] = time.monotonic() - t
    print(f"\ncluster {CLUSTER} created in {timings['cluster_create']:.1f}s")


def kubectl_run(
    h: Harness, *args: str, check: bool = True, input: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(
        [h.kubectl, "--context", CONTEXT, *args], env=h.env, capture_output=True, text=True, timeout=timeout, input=input, check=False
    )
    if check and p.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def ensure_namespace(h: Harness, creds: dict[str, str]) -> None:
    """Namespace devloop-release with the imagePullSecret regcred (re-applied: the password may be new)."""
    ns = kubectl_run(h, "create", "namespace", NAMESPACE, "--dry-run=client", "-o", "yaml").stdout
    kubectl_run(h, "apply", "-f", "-", input=ns)
    secret = kubectl_run(
        h,
        "-n",
        NAMESPACE,
        "create",
        "secret",
        "docker-registry",
        PULL_SECRET,
        f"--docker-server={REGISTRY}",
        f"--docker-username={creds['username']}",
        f"--docker-password={creds['password']}",
        "--dry-run=client",
        "-o",
        "yaml",
    ).stdout
    kubectl_run(h, "apply", "-f", "-", input=secret)


def node_ready(h: Harness) -> bool | None:
    nodes = json.loads(kubectl_run(h, "get", "nodes", "-o", "json").stdout)["items"]
    ready = [any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"]) for n in nodes]
    return True if ready and all(ready) else None


# ---- the fixture --------------------------------------------------------------------------------------------


@dataclass
class Remote:
    """A remote target for `devloop release`: registry + cluster + credentials, all real."""

    registry: str  # "registry.devloop.test:5443": images are <registry>/<name>:<tag>
    context: str  # "kind-devloop-remote"
    cluster: str  # "devloop-remote"
    namespace: str  # "devloop-release" (exists, holds the pull secret)
    pull_secret: str  # "regcred"
    docker_config: Path  # DOCKER_CONFIG directory with the right credentials
    bad_docker_config: Path  # DOCKER_CONFIG directory with a wrong password
    ca_file: Path  # the test CA (PEM)
    username: str
    password: str
    env: dict[str, str]  # the harness env + DOCKER_CONFIG=docker_config (kind, kubectl and the wrapper on PATH)
    harness: Harness
    timings: dict[str, float] = field(default_factory=dict)
    _registry: Registry | None = field(default=None, repr=False)

    @property
    def bad_env(self) -> dict[str, str]:
        return {**self.env, "DOCKER_CONFIG": str(self.bad_docker_config)}

    @property
    def url(self) -> str:
        return f"https://{self.registry}"

    def kubectl(self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """kubectl --context kind-devloop-remote ARGS (not namespaced: pass -n yourself)."""
        return kubectl_run(self.harness, *args, check=check, input=input, timeout=timeout)

    def kubectl_json(self, *args: str) -> dict[str, Any]:
        return dict(json.loads(self.kubectl(*args, "-o", "json").stdout))

    def stop_registry(self) -> None:
        """The registry container stopped: the name still resolves to its address, which no longer answers
        (connections time out: `docker push` fails after ~15 s with "Client.Timeout exceeded")."""
        assert self._registry is not None
        self._registry.stop()

    def start_registry(self) -> None:
        """Started again and ready (TLS + auth answered, the daemon logged in); /etc/hosts follows a new IP."""
        assert self._registry is not None
        self._registry.start()

    def registry_tags(self, repo: str) -> list[str]:
        """GET /v2/<repo>/tags/list over TLS with the credentials; [] when the repository does not exist."""
        r = self.registry_request(f"/v2/{repo}/tags/list")
        if r.status_code == 404:
            return []
        r.raise_for_status()
        return sorted(r.json().get("tags") or [])

    def manifest_digest(self, repo: str, reference: str) -> str | None:
        """The registry's digest of <repo>:<reference> (Docker-Content-Digest of a HEAD), None when absent."""
        accept = ", ".join(
            (
                "application/vnd.docker.distribution.manifest.v2+json",
                "application/vnd.docker.distribution.manifest.list.v2+json",
                "application/vnd.oci.image.manifest.v1+json",
                "application/vnd.oci.image.index.v1+json",
            )
        )
        r = self.registry_request(f"/v2/{repo}/manifests/{reference}", method="HEAD", headers={"Accept": accept})
        if r.status_code == 404:
            return None
        r.raise_for_status()
        return r.headers.get("Docker-Content-Digest")

    def registry_request(self, path: str, method: str = "GET", auth: bool = True, **kw: Any) -> requests.Response:
        """An HTTPS request to the registry API by name (e.g. "/v2/"), verified with the test CA, with the
        credentials unless auth=False; extra keywords go to requests (headers=...)."""
        assert self._registry is not None
        return api_get(self._registry.state, path, auth=auth, method=method, **kw)


@contextlib.contextmanager
def session_lock(timeout: float = 1800) -> Iterator[None]:
    """One session at a time owns devloop-remote and the registry (another one waits)."""
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with LOCK.open("a+") as f:

        def take() -> bool | None:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return None

        poll(f"{LOCK} (another test session uses {CLUSTER})", timeout, take, interval=2)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def host_writable() -> str | None:
    """Why this host cannot run the remote tests, or None."""
    if not os.access(HOSTS_FILE, os.W_OK):
        return f"{HOSTS_FILE} is not writable (the tests add a line for {REGISTRY_HOST}: run as root)"
    docker_dir = Path("/etc/docker")
    if not os.access(docker_dir if docker_dir.exists() else docker_dir.parent, os.W_OK):
        return f"{docker_dir} is not writable (the tests write certs.d/{REGISTRY}/ca.crt: run as root)"
    return None


def teardown(h: Harness, registry: Registry) -> None:
    subprocess.run(["kind", "delete", "cluster", "--name", CLUSTER], env=h.env, capture_output=True, check=False, timeout=300)
    registry.remove()
    set_hosts_line(None)
    trust_in_daemon(None)
    shutil.rmtree(STATE, ignore_errors=True)


@pytest.fixture(scope="session")
def remote(harness: Harness) -> Iterator[Remote]:
    """Registry with TLS + htpasswd on the kind network, cluster devloop-remote with namespace devloop-release and
    its pull secret; ready when returned. Torn down at the end unless DEVLOOP_E2E_KEEP_REMOTE=1."""
    why = host_writable()
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(why, pytrace=False)
        pytest.skip(why)
    with session_lock():
        state = State(STATE)
        registry = Registry(harness.registry_image, state)
        timings: dict[str, float] = {}
        try:
            t = time.monotonic()
            if not state.complete():
                state.create()
            created = registry.ensure()
            registry.wait_ready()
            timings["registry_start" if created else "registry_reuse"] = time.monotonic() - t
            print(f"\nregistry {REGISTRY} ({registry.ip()}) {'started' if created else 'reused'} in {time.monotonic() - t:.1f}s")

            ensure_cluster(harness, timings)
            t = time.monotonic()
            poll(f"{CLUSTER}'s node to be Ready", 240, lambda: node_ready(harness), interval=1)
            trust_in_nodes(harness, state.ca_file)
            creds = state.credentials
            ensure_namespace(harness, creds)
            poll(
                f"the default service account in {NAMESPACE}",
                120,
                lambda: (
                    True if kubectl_run(harness, "-n", NAMESPACE, "get", "serviceaccount", "default", check=False).returncode == 0 else None
                ),
            )
            timings["cluster_ready"] = time.monotonic() - t
            print(f"cluster {CLUSTER} ready (node Ready, CA in containerd, {NAMESPACE}/{PULL_SECRET}) in {timings['cluster_ready']:.1f}s")
            yield Remote(
                registry=REGISTRY,
                context=CONTEXT,
                cluster=CLUSTER,
                namespace=NAMESPACE,
                pull_secret=PULL_SECRET,
                docker_config=state.docker_config,
                bad_docker_config=state.bad_docker_config,
                ca_file=state.ca_file,
                username=creds["username"],
                password=creds["password"],
                env={**harness.env, "DOCKER_CONFIG": str(state.docker_config)},
                harness=harness,
                timings=timings,
                _registry=registry,
            )
        finally:
            if keep():
                print(
                    f"\nDEVLOOP_E2E_KEEP_REMOTE=1: kept {CLUSTER} (context {CONTEXT}) and {REGISTRY} "
                    f"(DOCKER_CONFIG={state.docker_config}, CA {state.ca_file})"
                )
            else:
                teardown(harness, registry)


# ---- a small image to push --------------------------------------------------------------------------------


def static_busybox() -> Path:
    """Debian's busybox-static binary, cached in $DEVLOOP_CACHE/busybox (as tests/e2e/kind/create-cluster.sh does)."""
    bb = CACHE / "busybox" / "busybox"
    if bb.is_file():
        return bb
    bb.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        get = subprocess.run(
            ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", "busybox-static"], cwd=tmp, capture_output=True, check=False
        )
        if get.returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True)
            subprocess.run(
                ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", "busybox-static"], cwd=tmp, check=True, capture_output=True
            )
        deb = next(Path(tmp).glob("busybox-static_*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(Path(tmp) / "x")], check=True)
        shutil.copyfile(Path(tmp) / "x" / "bin" / "busybox", bb.with_suffix(".tmp"))
        bb.with_suffix(".tmp").chmod(0o755)
        bb.with_suffix(".tmp").rename(bb)
    return bb


def build_busybox_image(tag: str, text: str) -> str:
    """A ~2 MB image FROM scratch: static busybox; default command serves `text` on :8080 (httpd);
    `cat /www/index.html` as args prints it. Returns the image ID."""
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Path(tmp)
        shutil.copyfile(static_busybox(), ctx / "busybox")
        (ctx / "busybox").chmod(0o755)  # COPY keeps the mode
        (ctx / "www").mkdir()
        (ctx / "www" / "index.html").write_text(text + "\n")
        (ctx / "Dockerfile").write_text(
            "FROM scratch\nCOPY busybox /bin/busybox\nCOPY www /www\n"
            'ENTRYPOINT ["/bin/busybox"]\nCMD ["httpd", "-f", "-p", "8080", "-h", "/www"]\n'
        )
        out = subprocess.run(["docker", "build", "-q", "-t", tag, str(ctx)], capture_output=True, text=True, check=False, timeout=300)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()
