"""kind, kubectl and helm on a fresh machine: devloop fetches pinned copies when they are not on PATH.

The user's own binaries always win. devloop's copies live only in its cache dir
(`$DEVLOOP_CACHE_DIR/bin`, else `$XDG_CACHE_HOME/devloop/bin`, else `~/.cache/devloop/bin`) and
are used only for a name that is not on PATH: `ensure_tools` APPENDS that dir to this process's
PATH, so every PATH entry of the user's still comes first. Nothing is ever written anywhere else.

A download is checked against the SHA-256 its publisher puts next to it (helm's: pinned here, in
the code), written to a temp file in the cache dir and renamed into place only when the checksum
matches; helm's tarball is checked first, then its `<os>-<arch>/helm` taken out of it. When nothing
can be downloaded and `go` is on PATH, kind falls back to `go install` (kind's own documented install).
The download bases can be pointed at a mirror: `DEVLOOP_KIND_URL`, `DEVLOOP_KUBECTL_URL`, `DEVLOOP_HELM_URL`.
helm is fetched only for a project with a chart (deploy.helm).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
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

from devloop.errors import CommandFailed, EnvironmentMissing, ToolMissing
from devloop.output import Output
from devloop.proc import DEFAULT, INSTALL_HINTS, Runner

KIND_VERSION = "v0.30.0"
KUBECTL_VERSION = "v1.34.4"
KIND_BASE_URL = "https://kind.sigs.k8s.io/dl"  # env DEVLOOP_KIND_URL
KUBECTL_BASE_URL = "https://dl.k8s.io/release"  # env DEVLOOP_KUBECTL_URL
HELM_VERSION = "v3.19.0"  # tests/e2e/kind/install-helm.sh builds the same version
HELM_BASE_URL = "https://get.helm.sh"  # env DEVLOOP_HELM_URL
# SHA-256 of helm-<version>-<os>-<arch>.tar.gz, keyed by (version, os, arch), as published in helm's v3.19.0
# release notes (https://github.com/helm/helm/releases/tag/v3.19.0, a copy of them found in public code); linux-amd64
# also matches a second, independent public source (a CI install script that pins it). A version without its
# digests here is not downloaded.
HELM_SHA256 = {
    ("v3.19.0", "linux", "amd64"): "a7f81ce08007091b86d8bd696eb4d86b8d0f2e1b9f6c714be62f82f96a594496",
    ("v3.19.0", "linux", "arm64"): "440cf7add0aee27ebc93fada965523c1dc2e0ab340d4348da2215737fc0d76ad",
    ("v3.19.0", "darwin", "amd64"): "09a108c0abda42e45af172be65c49125354bf7cd178dbe10435e94540e49c7b9",
    ("v3.19.0", "darwin", "arm64"): "31513e1193da4eb4ae042eb5f98ef9aca7890cfa136f4707c8d4f70e2115bef6",
}
TIMEOUT = 30.0  # seconds without progress before a download is given up
_CHUNK = 1 << 16
_PROGRESS_EVERY = 1.0  # seconds between progress lines


class ChecksumMismatch(EnvironmentMissing):
    """A download does not match its published SHA-256; nothing was installed."""


class DownloadFailed(EnvironmentMissing):
    """A download could not be made (network, HTTP error, timeout)."""


@dataclass(frozen=True)
class Download:
    name: str
    version: str
    url: str
    checksum_url: str
    sha256: str = ""  # pinned in the code: checksum_url is not consulted
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
        return Download(
            name, HELM_VERSION, url, url + ".sha256sum", sha256=HELM_SHA256[HELM_VERSION, system, arch], member=f"{system}-{arch}/helm"
        )
    raise ValueError(f"devloop does not provide {name!r}")


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
        path = _download(dl, dest, out, timeout)
        how = "downloaded and sha256-verified"
    except DownloadFailed as e:
        if name != "kind" or shutil.which("go") is None:
            raise ToolMissing(
                f"`{name}` is not on PATH and devloop could not download {name} {dl.version}: {e.message}",
                f"{INSTALL_HINTS[name]}; or point DEVLOOP_{name.upper()}_URL at a mirror",
            ) from None
        out.info(f"cannot download kind ({e.message}); building it with `go install sigs.k8s.io/kind@{dl.version}` instead")
        path = _go_install_kind(dest, runner, e)
        how = "built with go install"
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


def _published_sha256(dl: Download, timeout: float) -> str:
    with _get(dl.checksum_url, timeout) as resp:
        try:
            text = resp.read(4096).decode("ascii", errors="replace")
        except (OSError, http.client.HTTPException) as e:
            raise DownloadFailed(f"GET {dl.checksum_url}: {e}") from None
    # kind: "<hex>  kind-linux-amd64"; kubectl: "<hex>"
    token = text.split()[0].lower() if text.split() else ""
    if len(token) != 64 or any(c not in "0123456789abcdef" for c in token):
        raise ChecksumMismatch(
            f"{dl.checksum_url} does not hold a SHA-256 (got {text[:80]!r}); {dl.name} was not installed",
            f"check DEVLOOP_{dl.name.upper()}_URL, or install {dl.name} yourself and put it on PATH",
        )
    return token


def _download(dl: Download, dest: Path, out: Output, timeout: float) -> Path:
    """Download, verify, chmod +x and rename into dest/<name>. Nothing is left behind on failure."""
    want = dl.sha256 or _published_sha256(dl, timeout)
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
                f"the download of {dl.name} {dl.version} does not match its published SHA-256 "
                f"(expected {want}, got {have}); nothing was installed",
                f"retry later; if it persists, check DEVLOOP_{dl.name.upper()}_URL or install {dl.name} yourself",
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


def _go_install_kind(dest: Path, runner: Runner, cause: DownloadFailed) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    try:
        runner.run(
            ["go", "install", f"sigs.k8s.io/kind@{KIND_VERSION}"],
            env={"GOBIN": str(dest), "GOFLAGS": "-buildvcs=false"},
            timeout=1800,
        )
    except CommandFailed as e:
        raise ToolMissing(
            f"`kind` is not on PATH; the download failed ({cause.message}) and so did `go install`: {e.message}",
            INSTALL_HINTS["kind"],
        ) from None
    path = _cached("kind")
    if path is None:
        raise ToolMissing(f"`go install sigs.k8s.io/kind@{KIND_VERSION}` ran but left no kind in {dest}", INSTALL_HINTS["kind"])
    return path
