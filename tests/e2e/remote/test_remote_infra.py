"""The release tests' infrastructure proves itself with plain docker and kubectl (no devloop code): pushes need
the right password over verified TLS, the remote cluster pulls only with the namespace's imagePullSecret and only
trusting the test CA, and the registry can be stopped and started.

The tests run in file order and share the session's `remote` fixture and one pushed image.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.conftest import poll
from tests.e2e.remote.conftest import (
    DOCKER_CERTS,
    NODE_CERTS,
    REGISTRY,
    REGISTRY_HOST,
    REGISTRY_PORT,
    Remote,
    build_busybox_image,
    hosts_line_ip,
    hosts_toml,
    node_names,
    write_node_file,
)

pytestmark = pytest.mark.e2e

REPO_NAME = "smoke"
IMAGE = f"{REGISTRY}/{REPO_NAME}:1"
TEXT = "hello from registry.devloop.test"
PULL_TIMEOUT = 180


def docker_cli(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def image(remote: Remote) -> Iterator[str]:
    """registry.devloop.test:5443/smoke:1, built locally (busybox FROM scratch); removed from the host after."""
    build_busybox_image(IMAGE, TEXT)
    yield IMAGE
    docker_cli(remote.env, "rmi", "-f", IMAGE, f"{REGISTRY}/{REPO_NAME}:wrong-password")


@pytest.fixture(scope="module")
def pushed(remote: Remote, image: str) -> str:
    """The image pushed with the right credentials: its digest in the registry."""
    p = docker_cli(remote.env, "push", image)
    assert p.returncode == 0, p.stdout + p.stderr
    digest = remote.manifest_digest(REPO_NAME, "1")
    assert digest and digest.startswith("sha256:"), digest
    return digest


@pytest.fixture
def pods(remote: Remote) -> Iterator[list[str]]:
    """Names of the pods a test creates in the namespace: deleted afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        remote.kubectl("-n", remote.namespace, "delete", "pod", name, "--ignore-not-found", "--wait=false", check=False)


def start_pod(remote: Remote, name: str, image: str, pull_secret: bool) -> None:
    remote.kubectl("-n", remote.namespace, "delete", "pod", name, "--ignore-not-found", "--wait=true", timeout=120)
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [{"name": "smoke", "image": image, "imagePullPolicy": "Always", "args": ["cat", "/www/index.html"]}],
    }
    if pull_secret:
        spec["imagePullSecrets"] = [{"name": remote.pull_secret}]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": remote.namespace}, "spec": spec}
    remote.kubectl("apply", "-f", "-", input=json.dumps(pod))


def pod(remote: Remote, name: str) -> dict[str, Any]:
    return remote.kubectl_json("-n", remote.namespace, "get", "pod", name)


def waiting(remote: Remote, name: str) -> dict[str, Any]:
    statuses = pod(remote, name)["status"].get("containerStatuses") or [{}]
    return dict(statuses[0].get("state", {}).get("waiting") or {})


def event_messages(remote: Remote, name: str) -> list[str]:
    items = remote.kubectl_json("-n", remote.namespace, "get", "events", "--field-selector", f"involvedObject.name={name}")["items"]
    return [str(e.get("message", "")) for e in items]


def describe(remote: Remote, name: str) -> str:
    return remote.kubectl("-n", remote.namespace, "describe", "pod", name, check=False).stdout


def wait_pull_refused(remote: Remote, name: str, *words: str) -> str:
    """The pod's image pull failed (ErrImagePull / ImagePullBackOff) with an event naming one of `words`."""

    def refused() -> str | None:
        if waiting(remote, name).get("reason") not in ("ErrImagePull", "ImagePullBackOff"):
            return None
        return next((m for m in event_messages(remote, name) if any(w in m.lower() for w in words)), None)

    try:
        return poll(f"{name}'s pull to be refused ({' / '.join(words)})", PULL_TIMEOUT, refused)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{describe(remote, name)}") from None


# ---- pushes ------------------------------------------------------------------------------------------------


def test_push_with_the_credentials_over_tls(remote: Remote, image: str, pushed: str) -> None:
    assert "1" in remote.registry_tags(REPO_NAME)
    repo_digests = json.loads(docker_cli(remote.env, "image", "inspect", image).stdout)[0]["RepoDigests"]
    assert f"{REGISTRY}/{REPO_NAME}@{pushed}" in repo_digests, repo_digests
    # the push went to the name's address on the kind network, not to loopback
    ip = hosts_line_ip()
    assert ip and not ip.startswith("127."), ip


def test_push_with_a_wrong_password_is_refused(remote: Remote, image: str, pushed: str) -> None:
    tag = f"{REGISTRY}/{REPO_NAME}:wrong-password"
    assert docker_cli(remote.env, "tag", image, tag).returncode == 0
    p = docker_cli(remote.bad_env, "push", tag)
    assert p.returncode != 0, p.stdout
    assert "unauthorized" in (p.stdout + p.stderr).lower(), p.stdout + p.stderr
    print(f"\npush with a wrong password: {p.stderr.strip()}")
    assert "wrong-password" not in remote.registry_tags(REPO_NAME)


def test_the_daemon_verifies_the_registry_certificate(remote: Remote, pushed: str) -> None:
    """Without the CA in /etc/docker/certs.d the same push fails on the certificate: the daemon checks TLS."""
    ca = DOCKER_CERTS / "ca.crt"
    aside = ca.with_name("ca.crt.aside")  # not *.crt: the daemon ignores it
    ca.rename(aside)
    try:
        p = docker_cli(remote.env, "push", IMAGE)
        assert p.returncode != 0, p.stdout
        assert "x509" in p.stderr or "certificate" in p.stderr, p.stderr
        print(f"\npush without the CA in certs.d: {p.stderr.strip()}")
    finally:
        aside.rename(ca)
    p = docker_cli(remote.env, "push", IMAGE)  # certs.d is read on every push: no daemon restart
    assert p.returncode == 0, p.stderr


# ---- pulls by the remote cluster --------------------------------------------------------------------------


def test_a_pod_with_the_pull_secret_pulls_and_runs(remote: Remote, pushed: str, pods: list[str]) -> None:
    name = "smoke-with-secret"
    pods.append(name)
    start_pod(remote, name, f"{REGISTRY}/{REPO_NAME}@{pushed}", pull_secret=True)
    try:
        phase = poll(
            f"{name} to complete", PULL_TIMEOUT, lambda: pod(remote, name)["status"].get("phase") in ("Succeeded", "Failed") or None
        )
    except AssertionError as e:
        raise AssertionError(f"{e}\n{describe(remote, name)}") from None
    assert phase and pod(remote, name)["status"]["phase"] == "Succeeded", describe(remote, name)
    assert remote.kubectl("-n", remote.namespace, "logs", name).stdout.strip() == TEXT


def test_a_pod_without_the_pull_secret_is_refused(remote: Remote, pushed: str, pods: list[str]) -> None:
    """Same image, same node (which already has it: pullPolicy Always still asks the registry): 401."""
    name = "smoke-without-secret"
    pods.append(name)
    start_pod(remote, name, f"{REGISTRY}/{REPO_NAME}@{pushed}", pull_secret=False)
    message = wait_pull_refused(remote, name, "401", "unauthorized")
    print(f"\n{name}: {message}")
    assert pod(remote, name)["status"]["phase"] == "Pending", message


def test_the_nodes_verify_the_registry_certificate(remote: Remote, pushed: str, pods: list[str]) -> None:
    """A hosts.toml without `ca =`: the pull fails on the certificate, so containerd checks TLS and `ca` is what
    makes it trust the test CA."""
    name = "smoke-no-ca"
    pods.append(name)
    nodes = node_names(remote.harness)
    try:
        for node in nodes:
            write_node_file(node, f"{NODE_CERTS}/hosts.toml", hosts_toml(ca=False))
        start_pod(remote, name, f"{REGISTRY}/{REPO_NAME}@{pushed}", pull_secret=True)
        print(f"\n{name}: {wait_pull_refused(remote, name, 'x509', 'certificate')}")
    finally:
        for node in nodes:
            write_node_file(node, f"{NODE_CERTS}/hosts.toml", hosts_toml())


# ---- the registry itself ----------------------------------------------------------------------------------


def test_the_registry_speaks_only_verified_tls(remote: Remote) -> None:
    ip = hosts_line_ip()
    assert ip
    # plain HTTP on the TLS port: refused with 400 by Go's TLS server, never the registry API
    conn = http.client.HTTPConnection(ip, REGISTRY_PORT, timeout=10)
    try:
        conn.request("GET", "/v2/", headers={"Host": REGISTRY})
        r = conn.getresponse()
        body = r.read().decode(errors="replace")
        assert r.status == 400 and "HTTPS" in body, (r.status, body)
        assert r.getheader("Docker-Distribution-Api-Version") is None
    finally:
        conn.close()

    def handshake(ctx: ssl.SSLContext, name: str) -> None:
        with socket.create_connection((ip, REGISTRY_PORT), timeout=10) as s, ctx.wrap_socket(s, server_hostname=name):
            pass

    import trustme

    other = ssl.create_default_context(cadata=trustme.CA().cert_pem.bytes().decode())
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(other, REGISTRY_HOST)  # a different CA
    ours = ssl.create_default_context(cafile=str(remote.ca_file))
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(ours, "other.devloop.test")  # the certificate is for registry.devloop.test only
    handshake(ours, REGISTRY_HOST)

    # TLS verified, no credentials: 401 with a Basic challenge
    anonymous = remote.registry_request("/v2/", auth=False)
    assert anonymous.status_code == 401 and anonymous.headers.get("WWW-Authenticate", "").startswith("Basic"), anonymous.headers
    assert remote.registry_request("/v2/").status_code == 200


def test_the_registry_can_be_stopped_and_started(remote: Remote, image: str, pushed: str) -> None:
    remote.stop_registry()
    try:
        with pytest.raises(requests.ConnectionError):
            remote.registry_tags(REPO_NAME)
        t = time.monotonic()
        p = docker_cli(remote.env, "push", image)
        assert p.returncode != 0, p.stdout
        print(f"\npush to the stopped registry ({time.monotonic() - t:.1f}s): {p.stderr.strip()}")
    finally:
        t = time.monotonic()
        remote.start_registry()
        print(f"registry started again and ready in {time.monotonic() - t:.1f}s")
    assert remote.registry_tags(REPO_NAME) == ["1"]  # the storage volume survives a stop
    assert remote.manifest_digest(REPO_NAME, "1") == pushed


def test_the_docker_configs_hold_only_the_test_registry(remote: Remote) -> None:
    for directory, password in ((remote.docker_config, remote.password), (remote.bad_docker_config, remote.password + "-wrong")):
        doc = json.loads((Path(directory) / "config.json").read_text())
        assert list(doc) == ["auths"] and list(doc["auths"]) == [REGISTRY]
        import base64

        assert base64.b64decode(doc["auths"][REGISTRY]["auth"]).decode() == f"{remote.username}:{password}"
    assert remote.env["DOCKER_CONFIG"] == str(remote.docker_config)
