"""devloop.tools against a real HTTP server on 127.0.0.1 (no Docker, no internet).

The server plays kind's and Kubernetes' download sites (or a mirror of them): a fake `kind`/`kubectl`
shell script and the checksum file published next to it. devloop trusts only the SHA-256 pinned in
devloop/tools.py; each test pins its fake binary's digest there for this machine's platform
(`publish`), or pins another one (`pinned_as`) to play a mirror serving something else. The cache
dir and PATH are private to each test.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import subprocess
import tarfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from devloop import tools
from devloop.errors import EXIT_ENVIRONMENT, ToolMissing
from devloop.output import Output
from devloop.proc import DEFAULT


def script(text: str) -> bytes:
    return f"#!/bin/sh\necho '{text}'\n".encode()


@dataclass
class FakeDownloads:
    base: str
    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    delay: float = 0.0

    pinned: dict[str, dict[tuple[str, str, str], str]] = field(default_factory=dict)

    def publish(self, name: str, body: bytes, *, checksum_of: bytes | None = None, pinned_as: bytes | None = None) -> None:
        """Serve `body` where devloop looks for `name`, with the checksum of `checksum_of` (default:
        `body`) next to it, and pin the digest of `pinned_as` (default: `body`) in devloop."""
        dl = tools.download_for(name)
        self.pinned[name][(dl.version, *tools.host_platform())] = hashlib.sha256(body if pinned_as is None else pinned_as).hexdigest()
        path = urllib.parse.urlparse(dl.url).path
        digest = hashlib.sha256(body if checksum_of is None else checksum_of).hexdigest()
        self.files[path] = body
        # kind's .sha256sum is `sha256sum` output; kubectl's .sha256 is the bare digest
        self.files[urllib.parse.urlparse(dl.checksum_url).path] = (
            f"{digest}  {path.rsplit('/', 1)[-1]}\n" if name == "kind" else digest
        ).encode()


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDownloads]:
    state = FakeDownloads(base="", pinned=deepcopy(tools.PINNED_SHA256))
    monkeypatch.setattr(tools, "PINNED_SHA256", state.pinned)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append(self.path)
            if state.delay:
                time.sleep(state.delay)
            body = state.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request: object, client_address: object) -> None:
            pass  # a client that gave up (the timeout test) is not an error here

    httpd = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    monkeypatch.setenv("DEVLOOP_KIND_URL", state.base + "/kind-dl")
    monkeypatch.setenv("DEVLOOP_KUBECTL_URL", state.base + "/k8s-release")
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private cache dir and a PATH with neither kind, kubectl nor go on it."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("DEVLOOP_CACHE_DIR", str(cache))
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    return cache


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if not p.is_dir()] if path.exists() else []


def test_missing_tools_are_downloaded_verified_and_run(server: FakeDownloads, env: Path) -> None:
    server.publish("kind", script("kind v0.30.0 fake"))
    server.publish("kubectl", script("kubectl v1.34.4 fake"))
    out = Output(json_mode=True)

    used = tools.ensure_tools(["kind", "kubectl"], out)

    assert used == {"kind": str(env / "bin" / "kind"), "kubectl": str(env / "bin" / "kubectl")}
    assert subprocess.run([used["kind"]], capture_output=True, text=True, check=True).stdout.strip() == "kind v0.30.0 fake"
    # devloop's own subprocesses find them by name now
    assert DEFAULT.run(["kubectl"]).stdout.strip() == "kubectl v1.34.4 fake"
    assert os.access(used["kind"], os.X_OK)
    messages = [e["message"] for e in out.events if e["event"] == "info"]
    assert any("fetched kind v0.30.0" in m and str(env / "bin" / "kind") in m for m in messages), messages
    assert any("fetched kubectl v1.34.4" in m for m in messages), messages
    assert any(e["event"] == "detail" and e.get("bytes") for e in out.events), "no progress reported"
    assert not [p for p in files_under(env) if p.name.endswith(".part")]
    assert tools.which_tools() == {"kind": used["kind"], "kubectl": used["kubectl"]}
    assert tools.is_devloop_copy(used["kind"])


def test_a_second_call_uses_the_cached_copy_without_downloading(server: FakeDownloads, env: Path) -> None:
    server.publish("kind", script("kind"))
    tools.ensure_tools(["kind"], Output(json_mode=True))
    server.requests.clear()
    out = Output(json_mode=True)

    assert tools.ensure_tools(["kind"], out) == {"kind": str(env / "bin" / "kind")}
    assert server.requests == []
    assert not [e for e in out.events if e["event"] == "info"]


def test_a_copy_of_an_older_pinned_version_is_replaced(server: FakeDownloads, env: Path) -> None:
    server.publish("kind", script("kind new"))
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "kind").write_bytes(script("kind old"))
    (env / "bin" / "kind").chmod(0o755)
    (env / "bin" / ".kind.version").write_text("v0.1.0\n")

    used = tools.ensure_tools(["kind"], Output(json_mode=True))

    assert subprocess.run([used["kind"]], capture_output=True, text=True, check=True).stdout.strip() == "kind new"
    assert (env / "bin" / ".kind.version").read_text().strip() == tools.KIND_VERSION


def test_a_binary_other_than_the_pinned_one_is_refused_even_when_the_mirror_vouches_for_it(server: FakeDownloads, env: Path) -> None:
    # a compromised mirror: its .sha256sum matches the binary it serves, which is not kind's release
    server.publish("kind", script("evil kind"), pinned_as=script("the real kind"))
    path_before = os.environ["PATH"]

    with pytest.raises(tools.ChecksumMismatch) as err:
        tools.ensure_tools(["kind"], Output(json_mode=True))

    assert err.value.exit_code == EXIT_ENVIRONMENT
    assert "does not match the SHA-256 pinned in devloop" in err.value.message
    assert hashlib.sha256(script("the real kind")).hexdigest() in err.value.message
    assert "nothing was installed" in err.value.message
    assert "DEVLOOP_KIND_URL" in err.value.hint and "PATH" in err.value.hint
    assert files_under(env) == []
    assert os.environ["PATH"] == path_before
    assert tools.which_tools(["kind"]) == {"kind": None}


def test_the_pinned_digest_decides_not_the_checksum_file_beside_the_binary(server: FakeDownloads, env: Path) -> None:
    # the release binary, with a checksum file that says otherwise (a stale or broken mirror): installed
    server.publish("kubectl", script("kubectl v1.34.4 release"), checksum_of=b"something else")

    used = tools.ensure_tools(["kubectl"], Output(json_mode=True))

    assert subprocess.run([used["kubectl"]], capture_output=True, text=True, check=True).stdout.strip() == "kubectl v1.34.4 release"
    assert not any(r.endswith((".sha256", ".sha256sum")) for r in server.requests), server.requests


def test_a_platform_without_a_pinned_digest_downloads_nothing(server: FakeDownloads, env: Path) -> None:
    server.publish("kubectl", script("kubectl"))
    server.pinned["kubectl"].clear()  # as for a platform (or a version bump) nobody pinned

    with pytest.raises(tools.NoPinnedDigest) as err:
        tools.ensure_tools(["kubectl"], Output(json_mode=True))

    system, arch = tools.host_platform()
    assert err.value.exit_code == EXIT_ENVIRONMENT
    assert f"no pinned SHA-256 for kubectl v1.34.4 on {system}/{arch}" in err.value.message
    assert "yourself and put it on PATH" in err.value.hint
    assert server.requests == []
    assert files_under(env) == []


def test_a_tool_on_path_is_used_and_never_downloaded(
    server: FakeDownloads, env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.publish("kind", script("devloop's kind"))
    user_bin = tmp_path / "user-bin"
    user_bin.mkdir()
    (user_bin / "kind").write_bytes(script("the user's kind"))
    (user_bin / "kind").chmod(0o755)
    monkeypatch.setenv("PATH", str(user_bin))

    used = tools.ensure_tools(["kind"], Output(json_mode=True))

    assert used == {"kind": str(user_bin / "kind")}
    assert server.requests == []
    assert os.environ["PATH"] == str(user_bin)
    assert files_under(env) == []
    assert not tools.is_devloop_copy(used["kind"])


def test_the_users_binary_wins_over_an_existing_devloop_copy(
    server: FakeDownloads, env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.publish("kind", script("devloop's kind"))
    tools.ensure_tools(["kind"], Output(json_mode=True))  # devloop's copy now exists and PATH ends with it
    user_bin = tmp_path / "user-bin"
    user_bin.mkdir()
    (user_bin / "kind").write_bytes(script("the user's kind"))
    (user_bin / "kind").chmod(0o755)
    monkeypatch.setenv("PATH", os.pathsep.join([str(user_bin), os.environ["PATH"]]))

    assert tools.ensure_tools(["kind"], Output(json_mode=True)) == {"kind": str(user_bin / "kind")}
    assert tools.which_tools(["kind"]) == {"kind": str(user_bin / "kind")}


def test_path_gets_the_cache_dir_appended_not_prepended(
    server: FakeDownloads, env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.publish("kind", script("kind"))
    first, second = tmp_path / "first", tmp_path / "second"
    monkeypatch.setenv("PATH", os.pathsep.join([str(first), str(second)]))

    tools.ensure_tools(["kind"], Output(json_mode=True))
    tools.ensure_tools(["kind"], Output(json_mode=True))  # idempotent: appended once

    assert os.environ["PATH"].split(os.pathsep) == [str(first), str(second), str(env / "bin")]


def test_no_download_and_no_go_is_a_tool_missing_error(server: FakeDownloads, env: Path) -> None:
    # nothing published: every GET is a 404
    with pytest.raises(ToolMissing) as err:
        tools.ensure_tools(["kubectl"], Output(json_mode=True))

    assert err.value.exit_code == EXIT_ENVIRONMENT
    assert "could not download kubectl v1.34.4" in err.value.message and "HTTP 404" in err.value.message
    assert "DEVLOOP_KUBECTL_URL" in err.value.hint
    assert files_under(env) == []


def test_a_stalled_download_times_out(server: FakeDownloads, env: Path) -> None:
    server.publish("kubectl", script("kubectl"))
    server.delay = 3.0
    start = time.monotonic()

    with pytest.raises(ToolMissing, match="timed out"):
        tools.ensure_tools(["kubectl"], Output(json_mode=True), timeout=0.5)

    assert time.monotonic() - start < 2.5
    assert files_under(env) == []


def go_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module_sum: str) -> tuple[Path, Path]:
    """PATH holds only a `go` that records its calls (returned: its dir and the calls file), answers
    `go mod download -json` with `module_sum` and "builds" a kind that says so."""
    go_bin = tmp_path / "go-bin"
    go_bin.mkdir()
    calls = tmp_path / "go-calls"
    (go_bin / "go").write_text(
        "#!/bin/sh\n"
        f'echo "$* GOBIN=$GOBIN" >> {calls}\n'
        f'if [ "$1" = mod ]; then echo \'{{"Path": "sigs.k8s.io/kind", "Sum": "{module_sum}"}}\'; exit 0; fi\n'
        "printf '#!/bin/sh\\necho kind built by go\\n' > \"$GOBIN/kind\"\n"
        '/bin/chmod +x "$GOBIN/kind"\n'
    )
    (go_bin / "go").chmod(0o755)
    monkeypatch.setenv("PATH", str(go_bin))
    return go_bin, calls


def test_kind_falls_back_to_go_install_when_it_cannot_be_downloaded(
    server: FakeDownloads, env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    go_bin, calls = go_on_path(tmp_path, monkeypatch, tools.KIND_GO_SUM["v0.30.0"])
    out = Output(json_mode=True)

    used = tools.ensure_tools(["kind"], out)  # nothing published: the download 404s

    assert used == {"kind": str(env / "bin" / "kind")}
    assert calls.read_text().splitlines() == [
        f"mod download -json sigs.k8s.io/kind@v0.30.0 GOBIN={env / 'bin'}",
        f"install sigs.k8s.io/kind@v0.30.0 GOBIN={env / 'bin'}",
    ]
    assert subprocess.run([used["kind"]], capture_output=True, text=True, check=True).stdout.strip() == "kind built by go"
    assert any("go install" in e["message"] for e in out.events if e["event"] == "info")
    assert os.environ["PATH"].split(os.pathsep) == [str(go_bin), str(env / "bin")]


def test_go_install_is_refused_when_the_module_is_not_the_pinned_one(
    server: FakeDownloads, env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _go_bin, calls = go_on_path(tmp_path, monkeypatch, "h1:SomethingElseEntirely0000000000000000000000=")

    with pytest.raises(tools.ChecksumMismatch) as err:
        tools.ensure_tools(["kind"], Output(json_mode=True))  # nothing published: the download 404s

    assert tools.KIND_GO_SUM["v0.30.0"] in err.value.message and "kind was not built" in err.value.message
    assert [line.split()[0] for line in calls.read_text().splitlines()] == ["mod"]  # never `go install`
    assert files_under(env / "bin") == []


def test_cache_dir_defaults_follow_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("DEVLOOP_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert tools.bin_dir() == tmp_path / "xdg" / "devloop" / "bin"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert tools.bin_dir() == tmp_path / "home" / ".cache" / "devloop" / "bin"


def test_published_url_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEVLOOP_KIND_URL", raising=False)
    monkeypatch.delenv("DEVLOOP_KUBECTL_URL", raising=False)
    monkeypatch.setattr(tools, "host_platform", lambda: ("darwin", "arm64"))
    kind = tools.download_for("kind")
    assert kind.url == "https://kind.sigs.k8s.io/dl/v0.30.0/kind-darwin-arm64"
    assert kind.checksum_url == "https://kind.sigs.k8s.io/dl/v0.30.0/kind-darwin-arm64.sha256sum"
    kubectl = tools.download_for("kubectl")
    assert kubectl.url == "https://dl.k8s.io/release/v1.34.4/bin/darwin/arm64/kubectl"
    assert kubectl.checksum_url == "https://dl.k8s.io/release/v1.34.4/bin/darwin/arm64/kubectl.sha256"


def helm_tarball(body: bytes, member: str) -> bytes:
    """A release tarball as get.helm.sh publishes it: `<os>-<arch>/helm` (and a README) inside a .tar.gz."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in ((f"{member.split('/')[0]}/README.md", b"helm\n"), (member, body)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def helm_server(server: FakeDownloads, monkeypatch: pytest.MonkeyPatch) -> FakeDownloads:
    monkeypatch.setenv("DEVLOOP_HELM_URL", server.base + "/helm-dl")
    return server


def publish_helm(server: FakeDownloads, monkeypatch: pytest.MonkeyPatch, tarball: bytes, *, pinned_for: bytes | None = None) -> None:
    """Serve helm's tarball; the digest pinned in the code is the tarball's (or `pinned_for`'s). No checksum file
    is published: helm's digest is devloop's own, never fetched."""
    dl = tools.download_for("helm")
    server.files[urllib.parse.urlparse(dl.url).path] = tarball
    digest = hashlib.sha256(tarball if pinned_for is None else pinned_for).hexdigest()
    monkeypatch.setitem(tools.PINNED_SHA256["helm"], (tools.HELM_VERSION, *tools.host_platform()), digest)


def test_helm_is_downloaded_checked_against_its_pinned_digest_and_taken_out_of_its_tarball(
    helm_server: FakeDownloads, env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    member = tools.download_for("helm").member
    publish_helm(helm_server, monkeypatch, helm_tarball(script("helm v3.19.0 fake"), member))

    used = tools.ensure_tools(["helm"], Output(json_mode=True))

    assert used == {"helm": str(env / "bin" / "helm")}
    assert DEFAULT.run(["helm"]).stdout.strip() == "helm v3.19.0 fake"  # the binary, not the tarball
    assert [urllib.parse.urlparse(tools.download_for("helm").url).path] == helm_server.requests  # no checksum file asked for
    assert (env / "bin" / ".helm.version").read_text().strip() == tools.HELM_VERSION
    assert sorted(p.name for p in files_under(env)) == [".helm.version", "helm"]


def test_a_helm_tarball_that_is_not_the_pinned_one_is_refused(
    helm_server: FakeDownloads, env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    member = tools.download_for("helm").member
    publish_helm(helm_server, monkeypatch, helm_tarball(script("evil helm"), member), pinned_for=b"the real tarball")

    with pytest.raises(tools.ChecksumMismatch) as err:
        tools.ensure_tools(["helm"], Output(json_mode=True))

    assert err.value.exit_code == EXIT_ENVIRONMENT and "nothing was installed" in err.value.message
    assert files_under(env) == []


def test_helm_missing_and_not_downloadable_is_one_error_with_a_hint(helm_server: FakeDownloads, env: Path) -> None:
    with pytest.raises(ToolMissing) as err:
        tools.ensure_tools(["helm"], Output(json_mode=True))  # nothing published: a 404

    assert err.value.exit_code == EXIT_ENVIRONMENT
    assert err.value.message.startswith(f"`helm` is not on PATH and devloop could not download helm {tools.HELM_VERSION}: ")
    assert "go install helm.sh/helm/v3/cmd/helm@" in err.value.hint and "DEVLOOP_HELM_URL" in err.value.hint
    assert files_under(env) == []
