"""kind, kubectl and helm on a fresh machine: devloop fetches pinned copies when they are not on PATH.

The user's own binaries always win. devloop's copies live only in its cache dir
(`$DEVLOOP_CACHE_DIR/bin`, else `$XDG_CACHE_HOME/devloop/bin`, else `~/.cache/devloop/bin`) and
are used only for a name that is not on PATH: `ensure_tools` APPENDS that dir to this process's
PATH, so every PATH entry of the user's still comes first. Nothing is ever written anywhere else.

A download is checked against the SHA-256 pinned in this file next to its version
(`PINNED_SHA256`: one entry per tool, then per (version, os, arch)), never against a checksum file
fetched from the same place as the binary: a mirror that serves a tampered binary can serve a
matching checksum too. The download is written to a temp file in the cache dir and renamed into
place only when it matches. A platform with no pinned digest gets no download at all (install the
tool yourself). When nothing can be downloaded and `go` is on PATH, kind falls back to
`go install` (kind's own documented install), after checking the module's Go checksum (`h1:`)
against the one pinned here (`KIND_GO_SUM`). The download bases can be pointed at a mirror:
`DEVLOOP_KIND_URL`, `DEVLOOP_KUBECTL_URL`,
`DEVLOOP_HELM_URL`; the pinned digests still decide. helm is fetched only for a project with a chart
(deploy.helm): its release tarball is checked, then its `<os>-<arch>/helm` taken out of it.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import platform
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from devloop.errors import CommandFailed, DevloopError, EnvironmentMissing, ToolMissing
from devloop.output import Output
from devloop.proc import DEFAULT, INSTALL_HINTS, Runner

KIND_VERSION = "v0.30.0"
KUBECTL_VERSION = "v1.34.4"
KIND_BASE_URL = "https://kind.sigs.k8s.io/dl"  # env DEVLOOP_KIND_URL
KUBECTL_BASE_URL = "https://dl.k8s.io/release"  # env DEVLOOP_KUBECTL_URL
HELM_VERSION = "v3.19.0"  # tests/e2e/kind/install-helm.sh builds the same version
HELM_BASE_URL = "https://get.helm.sh"  # env DEVLOOP_HELM_URL
# The SHA-256 of every release binary devloop downloads, keyed by tool, then (version, os, arch).
# A version bump without its digests makes the download refuse (no pinned digest), never trust the
# mirror. Each digest was found in two independent public sources, named beside it; the publishers'
# own files are https://kind.sigs.k8s.io/dl/<version>/kind-<os>-<arch>.sha256sum and
# https://dl.k8s.io/release/<version>/bin/<os>/<arch>/kubectl.sha256.
# A new tool is one more entry here (and one in `download_for`).
PINNED_SHA256: dict[str, dict[tuple[str, str, str], str]] = {
    # kind v0.30.0: cert-manager/makefile-modules modules/tools/00_mod.mk (commit 99b162ac, kind_<os>_<arch>_SHA256SUM)
    # and f110/mono build/private/kind/assets.bzl (commit 119c87a3, KIND_ASSETS["0.30.0"]): the same four digests.
    "kind": {
        ("v0.30.0", "linux", "amd64"): "517ab7fc89ddeed5fa65abf71530d90648d9638ef0c4cde22c2c11f8097b8889",
        ("v0.30.0", "linux", "arm64"): "7ea2de9d2d190022ed4a8a4e3ac0636c8a455e460b9a13ccf19f15d07f4f00eb",
        ("v0.30.0", "darwin", "amd64"): "4f0b6e3b88bdc66d922c08469f05ef507d4903dd236e6319199bb9c868eed274",
        ("v0.30.0", "darwin", "arm64"): "ceaf40df1d1551c481fb50e3deb5c3deecad5fd599df5469626b70ddf52a1518",
    },
    # kubectl v1.34.4: kubernetes/kops pkg/assets/assetdata/k8s-1.34.yaml (commit 268927e2, generated from dl.k8s.io's
    # .sha256 files) and loopingz/rules_k8s_cd lib/private/kubectl_toolchain.bzl (commit 11a88d5b): the same four digests.
    "kubectl": {
        ("v1.34.4", "linux", "amd64"): "d50c359d95e0841eaad08ddc27c7be37cba8fdccfba5c8e2ded65e121ff112db",
        ("v1.34.4", "linux", "arm64"): "5b982c0644ab1e27780246b9085a5886651b4a7ed86243acbb2bacc1bea01dda",
        ("v1.34.4", "darwin", "amd64"): "9861e775578651d903a779f840ff8e4c0013ae29a1ffc67f05d967262fcf734c",
        ("v1.34.4", "darwin", "arm64"): "d9b239414a5fdf624835bfb62eef28a0885f1645d579f98056a9ab3293f51f87",
    },
    # helm v3.19.0, SHA-256 of helm-<version>-<os>-<arch>.tar.gz: helm's v3.19.0 release notes
    # (https://github.com/helm/helm/releases/tag/v3.19.0, a copy of them found in public code); linux-amd64 also
    # matches a second, independent public source (a CI install script that pins it).
    "helm": {
        ("v3.19.0", "linux", "amd64"): "a7f81ce08007091b86d8bd696eb4d86b8d0f2e1b9f6c714be62f82f96a594496",
        ("v3.19.0", "linux", "arm64"): "440cf7add0aee27ebc93fada965523c1dc2e0ab340d4348da2215737fc0d76ad",
        ("v3.19.0", "darwin", "amd64"): "09a108c0abda42e45af172be65c49125354bf7cd178dbe10435e94540e49c7b9",
        ("v3.19.0", "darwin", "arm64"): "31513e1193da4eb4ae042eb5f98ef9aca7890cfa136f4707c8d4f70e2115bef6",
    },
}
# The Go checksum database's hash of the kind module (`go mod download -json` prints it as Sum); `go install`
# then builds kind with the dependencies its own go.sum pins. From sum.golang.org (lookup sigs.k8s.io/kind@v0.30.0).
KIND_GO_SUM = {"v0.30.0": "h1:2Xi1KFEfSMm0XDcvKnUt15ZfgRPCT0OnCBbpgh8DztY="}
TIMEOUT = 30.0  # seconds without progress before a download is given up
_CHUNK = 1 << 16
_PROGRESS_EVERY = 1.0  # seconds between progress lines


class ChecksumMismatch(EnvironmentMissing):
    """A download does not match its published SHA-256; nothing was installed."""


class DownloadFailed(EnvironmentMissing):
    """A download could not be made (network, HTTP error, timeout)."""


class NoPinnedDigest(ToolMissing):
    """devloop has no SHA-256 pinned for this tool, version and platform: it downloads nothing."""


@dataclass(frozen=True)
class Download:
    name: str
    version: str
    url: str
    checksum_url: str  # where the publisher puts its checksum: shown to the user, never trusted (PINNED_SHA256 is)
    member: str = ""  # the binary's path inside a .tar.gz download ("" : the download is the binary)


def cache_dir() -> Path:
    """devloop's cache: $DEVLOOP_CACHE_DIR, else $XDG_CACHE_HOME/devloop, else ~/.cache/devloop."""
    override = os.environ.get("DEVLOOP_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "devloop"


def bin_dir() -> Path:
    """Where devloop's own copies of kind and kubectl live."""
    return cache_dir() / "bin"


def host_platform() -> tuple[str, str]:
    """(os, arch) as kind and Kubernetes name their release binaries."""
    system = {"linux": "linux", "darwin": "darwin"}.get(sys.platform)
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine().lower())
    if system is None or arch is None:
        raise ToolMissing(
            f"devloop has no download of kind/kubectl for {sys.platform}/{platform.machine()}",
            "install kind and kubectl yourself and put them on PATH",
        )
    return system, arch


def download_for(name: str) -> Download:
    """The pinned download of a tool for this machine (the base URL is overridable for mirrors)."""
    system, arch = host_platform()
    if name == "kind":
        base = os.environ.get("DEVLOOP_KIND_URL") or KIND_BASE_URL
        url = f"{base.rstrip('/')}/{KIND_VERSION}/kind-{system}-{arch}"
        return Download(name, KIND_VERSION, url, url + ".sha256sum")
    if name == "kubectl":
        base = os.environ.get("DEVLOOP_KUBECTL_URL") or KUBECTL_BASE_URL
        url = f"{base.rstrip('/')}/{KUBECTL_VERSION}/bin/{system}/{arch}/kubectl"
        return Download(name, KUBECTL_VERSION, url, url + ".sha256")
    if name == "helm":
        base = os.environ.get("DEVLOOP_HELM_URL") or HELM_BASE_URL
        url = f"{base.rstrip('/')}/helm-{HELM_VERSION}-{system}-{arch}.tar.gz"
        return Download(name, HELM_VERSION, url, url + ".sha256sum", member=f"{system}-{arch}/helm")
    raise ValueError(f"devloop does not provide {name!r}")


def pinned_sha256(dl: Download) -> str:
    """The SHA-256 pinned for this download on this machine; NoPinnedDigest when there is none."""
    system, arch = host_platform()
    digest = PINNED_SHA256.get(dl.name, {}).get((dl.version, system, arch))
    if digest is None:
        raise NoPinnedDigest(
            f"devloop has no pinned SHA-256 for {dl.name} {dl.version} on {system}/{arch}, "
            f"so it will not download it (a checksum served beside the binary proves nothing)",
            f"install {dl.name} {dl.version} yourself and put it on PATH ({dl.url}; its publisher's checksum: {dl.checksum_url})",
        )
    return digest


def _stamp(name: str) -> Path:
    return bin_dir() / f".{name}.version"


def _cached(name: str) -> Path | None:
    """devloop's copy of `name`, if there is an executable one."""
    path = bin_dir() / name
    return path if path.is_file() and os.access(path, os.X_OK) else None


def is_devloop_copy(path: str | Path) -> bool:
    """Whether `path` is one of devloop's own copies (in its cache dir)."""
    try:
        return Path(path).resolve().parent == bin_dir().resolve()
    except OSError:
        return False


def which_tools(names: Sequence[str] = ("kind", "kubectl")) -> dict[str, str | None]:
    """Which binary devloop would use for each name: the user's (PATH) first, else devloop's copy,
    else None. Never downloads anything."""
    found: dict[str, str | None] = {}
    for name in names:
        on_path = shutil.which(name)
        cached = _cached(name)
        found[name] = os.path.abspath(on_path) if on_path else (str(cached) if cached else None)
    return found


def add_cache_to_path() -> bool:
    """Append devloop's bin dir to this process's PATH (after every user entry). True when added."""
    entry = str(bin_dir())
    parts = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p]
    if entry in parts:
        return False
    os.environ["PATH"] = os.pathsep.join([*parts, entry])
    return True


def ensure_tools(names: Sequence[str], out: Output, *, runner: Runner = DEFAULT, timeout: float = TIMEOUT) -> dict[str, str]:
    """Make every tool in `names` runnable; return name -> absolute path of the binary used.

    A name on PATH is used as it is. Otherwise devloop's pinned copy is used, fetched first if
    needed, and devloop's bin dir is appended to PATH so its subprocesses find it.
    """
    used: dict[str, str] = {}
    need_cache = False
    for name in names:
        on_path = shutil.which(name)
        if on_path and not is_devloop_copy(on_path):
            used[name] = os.path.abspath(on_path)
            continue
        want = download_for(name).version
        cached = _cached(name)
        if cached is None or _read_stamp(name) != want:
            cached = _fetch(name, out, runner, timeout)
        used[name] = str(cached)
        need_cache = True
    if need_cache and add_cache_to_path():
        out.detail(f"appended {bin_dir()} to PATH for devloop's own kind/kubectl")
    return used


def _read_stamp(name: str) -> str:
    try:
        return _stamp(name).read_text().strip()
    except OSError:
        return ""


def _fetch(name: str, out: Output, runner: Runner, timeout: float) -> Path:
    dl = download_for(name)
    dest = bin_dir()
    try:
        path = _download(dl, pinned_sha256(dl), dest, out, timeout)
        how = "downloaded, SHA-256 as pinned"
    except (DownloadFailed, NoPinnedDigest) as e:
        if name != "kind" or shutil.which("go") is None:
            if isinstance(e, NoPinnedDigest):
                raise
            raise ToolMissing(
                f"`{name}` is not on PATH and devloop could not download {name} {dl.version}: {e.message}",
                f"{INSTALL_HINTS[name]}; or point DEVLOOP_{name.upper()}_URL at a mirror",
            ) from None
        out.info(f"cannot download kind ({e.message}); building it with `go install sigs.k8s.io/kind@{dl.version}` instead")
        path = _go_install_kind(dest, runner, e)
        how = "built with go install, module checksum as pinned"
    _stamp(name).write_text(dl.version + "\n")
    out.info(f"fetched {name} {dl.version} ({how}): {path} (devloop's own copy, used because {name} is not on your PATH)")
    return path


def _get(url: str, timeout: float) -> http.client.HTTPResponse:
    req = urllib.request.Request(url, headers={"User-Agent": "devloop"})
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        raise DownloadFailed(f"GET {url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        raise DownloadFailed(f"GET {url}: {reason}") from None
    return resp  # type: ignore[no-any-return]


def _download(dl: Download, want: str, dest: Path, out: Output, timeout: float) -> Path:
    """Download, check against the pinned SHA-256 `want`, chmod +x and rename into dest/<name>.
    Nothing is left behind on failure."""
    dest.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest, prefix=f".{dl.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        done = 0
        out.info(f"downloading {dl.name} {dl.version} from {dl.url}")
        with os.fdopen(fd, "wb") as f, _get(dl.url, timeout) as resp:
            total = int(resp.headers.get("Content-Length") or 0)
            last = time.monotonic()
            while True:
                try:
                    chunk = resp.read(_CHUNK)
                except (OSError, http.client.HTTPException) as e:
                    raise DownloadFailed(f"GET {dl.url}: {e or type(e).__name__} after {done} bytes") from None
                if not chunk:
                    break
                f.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if time.monotonic() - last >= _PROGRESS_EVERY:
                    last = time.monotonic()
                    out.detail(f"{dl.name}: {_progress(done, total)}", bytes=done, total=total)
        out.detail(f"{dl.name}: {_progress(done, total)} done", bytes=done, total=total)
        if total and done != total:
            raise DownloadFailed(f"GET {dl.url}: got {done} of {total} bytes")
        have = digest.hexdigest()
        if have != want:
            raise ChecksumMismatch(
                f"the download of {dl.name} {dl.version} from {dl.url} does not match the SHA-256 pinned in devloop "
                f"(expected {want}, got {have}); nothing was installed",
                f"the server sent something else than {dl.name}'s release: check DEVLOOP_{dl.name.upper()}_URL (a mirror "
                f"must serve the official binary), or install {dl.name} {dl.version} yourself and put it on PATH",
            )
        if dl.member:
            _extract(tmp, dl)
        tmp.chmod(0o755)
        final = dest / dl.name
        os.replace(tmp, final)
        return final
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _extract(tmp: Path, dl: Download) -> None:
    """Replace the verified tarball at `tmp` with its member `dl.member` (the binary)."""
    try:
        with tarfile.open(tmp, "r:gz") as tar:
            member = tar.getmember(dl.member)
            f = tar.extractfile(member) if member.isfile() else None
            if f is None:
                raise KeyError(dl.member)
            data = f.read()
    except (KeyError, OSError, tarfile.TarError) as e:
        raise DownloadFailed(f"{dl.url}: no {dl.member} in the archive ({e})") from None
    tmp.write_bytes(data)


def _progress(done: int, total: int) -> str:
    mb = done / 1e6
    return f"{mb:.1f} of {total / 1e6:.1f} MB" if total else f"{mb:.1f} MB"


def _go_install_kind(dest: Path, runner: Runner, cause: DevloopError) -> Path:
    """`go install sigs.k8s.io/kind@VERSION`, once the module Go fetched has the pinned checksum."""
    dest.mkdir(parents=True, exist_ok=True)
    module = f"sigs.k8s.io/kind@{KIND_VERSION}"
    want = KIND_GO_SUM.get(KIND_VERSION)
    if want is None:
        raise NoPinnedDigest(
            f"`kind` is not on PATH; the download failed ({cause.message}) and devloop has no pinned Go checksum for {module}",
            INSTALL_HINTS["kind"],
        )
    env = {"GOBIN": str(dest), "GOFLAGS": "-buildvcs=false"}
    try:
        fetched = runner.run(["go", "mod", "download", "-json", module], env=env, timeout=1800)
        have = str(json.loads(fetched.stdout or "{}").get("Sum", ""))
        if have != want:
            raise ChecksumMismatch(
                f"the Go module {module} has checksum {have or '(none)'}, not the one pinned in devloop ({want}); kind was not built",
                "check GOPROXY / GOFLAGS / GONOSUMDB (the module proxy must serve the official module), "
                "or install kind yourself and put it on PATH",
            )
        runner.run(["go", "install", module], env=env, timeout=1800)
    except (CommandFailed, ValueError) as e:
        why = e.message if isinstance(e, CommandFailed) else f"`go mod download -json` printed no JSON ({e})"
        raise ToolMissing(
            f"`kind` is not on PATH; the download failed ({cause.message}) and so did `go install`: {why}",
            INSTALL_HINTS["kind"],
        ) from None
    path = _cached("kind")
    if path is None:
        raise ToolMissing(f"`go install {module}` ran but left no kind in {dest}", INSTALL_HINTS["kind"])
    return path
