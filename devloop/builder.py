"""Image builders: BuildKit through the docker CLI when the machine has it, the classic builder otherwise.

The docker SDK only drives the classic builder, which rejects `RUN --mount=…` (cache and bind
mounts, secrets) — the Dockerfile shape Docker's own Node.js guide recommends. BuildKit is reached
through the docker CLI, started by devloop.proc's runner:

  1. `docker buildx build --load`   when the buildx plugin is installed;
  2. `DOCKER_BUILDKIT=1 docker build` when that CLI can (Docker 20.10's CLI drives the daemon's
     embedded BuildKit; a 23+ CLI without buildx refuses);
  3. the classic builder through the docker SDK (`ClassicSDK`).

`detect_builder` probes once per process and caches the answer; DEVLOOP_BUILDER=classic|buildkit
forces a choice. BuildKit's `--progress=plain` output is parsed (`PlainProgress`) so a failed build
names its step (`[stage 2/3] RUN npm ci`) and carries that step's last log lines.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import docker.errors

from devloop import proc
from devloop.errors import ConfigError, CycleFailed, DevloopError, DockerUnavailable
from devloop.images import DOCKER_HINT, Images, docker_errors
from devloop.ports import Builder

DETAILS = 6  # log lines a failure carries
PROBE_TIMEOUT = 60.0


def _noop(_: str) -> None:
    pass


_FRONTEND = re.compile(r"resolve image config for (?:docker-image://)?(\S+?):?(?:\s|$)|\b(docker\.io/docker/dockerfile(?::[\w.-]+)?)")


def build_hint(message: str) -> str:
    m = message.lower()
    frontend = _FRONTEND.search(message)
    if frontend:  # the `# syntax=` line: BuildKit pulls that frontend image before it reads the Dockerfile
        image = frontend.group(1) or frontend.group(2)
        return (
            f"the Dockerfile's first line `# syntax=…` makes BuildKit pull the frontend image {image}, which it could not: "
            "remove that line (BuildKit's built-in frontend reads the Dockerfile), or make the image pullable from this machine "
            "(network, proxy or a registry mirror); see docs/troubleshooting.md#offline"
        )
    if "pull access denied" in m or "manifest unknown" in m or "no such host" in m or "dial tcp" in m or "not found: manifest" in m:
        return "the base image could not be pulled: build it locally or point image.buildArgs (e.g. NODE_IMAGE) at an image you have"
    if "no space left" in m:
        return "the Docker host's disk is full (`docker system df` shows what uses it): `docker system prune` frees space, then save again"
    if "requires buildkit" in m or ("buildkit" in m and "enable" in m):
        return "this Dockerfile needs BuildKit (RUN --mount): install the docker buildx plugin, or a CLI that builds with DOCKER_BUILDKIT=1"
    if "target stage" in m and "could not be found" in m:
        return "image.target names a stage the Dockerfile does not have (FROM … AS <name>)"
    return "fix the Dockerfile or the files it copies; devloop rebuilds on the next save"


ENOSPC = "no space left on device"


def with_cause(message: str, lines: Iterable[str]) -> str:
    """A failed step's message, with the cause its output names when the message does not (a RUN
    that hit a full disk exits 1; its log says why)."""
    said = " ".join(lines).lower()
    if ENOSPC in said and ENOSPC not in message.lower():
        return f"{message} ({ENOSPC})"
    return message


def _check_dockerfile(context: Path, dockerfile: str) -> None:
    if not (context / dockerfile).is_file():
        raise ConfigError(f"{context / dockerfile}: no such Dockerfile", "set image.dockerfile (relative to image.context)")


# --- the classic builder (docker SDK) ------------------------------------------------------------------

_CLASSIC_STEP = re.compile(r"^Step \d+/\d+ : ")


class ClassicSDK:
    """The docker SDK's build endpoint: the classic builder, no `RUN --mount`, no secrets."""

    name = "classic (docker SDK)"

    def __init__(self, images: Images) -> None:
        self._images = images

    def build(
        self,
        context: Path,
        dockerfile: str,
        tag: str,
        build_args: Mapping[str, str],
        target: str | None = None,
        on_line: Callable[[str], None] = _noop,
        *,
        secrets: Mapping[str, Path] | None = None,
        secret_env: Mapping[str, str] | None = None,
    ) -> str:
        _check_dockerfile(context, dockerfile)
        if secrets or secret_env:
            raise ConfigError(
                "build secrets need BuildKit, and this machine's docker has none devloop can use",
                "install the docker buildx plugin (or a docker CLI whose `DOCKER_BUILDKIT=1 docker build` works)",
            )
        step = ""
        tail: list[str] = []
        image_id = ""
        with docker_errors(), _refused_build():
            stream = self._images.client.api.build(
                path=str(context),
                dockerfile=dockerfile,
                tag=tag,
                buildargs=dict(build_args),
                target=target,
                rm=True,
                forcerm=True,
                decode=True,
            )
            for chunk in stream:
                if "stream" in chunk:
                    for line in str(chunk["stream"]).splitlines():
                        if not line.strip():
                            continue
                        if _CLASSIC_STEP.match(line):
                            step = line
                        tail = [*tail, line][-8:]
                        on_line(line)
                elif "error" in chunk:
                    message = with_cause(str(chunk.get("error", "")).strip(), tail)
                    raise CycleFailed(
                        "build",
                        f"{step} failed: {message}" if step else f"docker build failed: {message}",
                        build_hint(message),
                        details=tail[-DETAILS:],
                    )
                elif "aux" in chunk and isinstance(chunk["aux"], dict) and "ID" in chunk["aux"]:
                    image_id = str(chunk["aux"]["ID"])
        return image_id or self._images.image_id(tag)


@contextmanager
def _refused_build() -> Iterator[None]:
    """The daemon refused the build outright (HTTP 500 while it received the context: a full disk,
    a bad context): a build failure with the daemon's one-line reason, not an internal error."""
    try:
        yield
    except docker.errors.APIError as e:
        reason = " ".join(str(e.explanation or e).split())
        raise CycleFailed("build", f"docker build failed: {reason}", build_hint(reason)) from None


# --- BuildKit's plain progress ---------------------------------------------------------------------------

_VERTEX = re.compile(r"^#(\d+) (.*)$")
_LOG = re.compile(r"^(\d+\.\d+) ?(.*)$")  # "#7 0.701 SyntaxError: …" (buildx: "#7 0.701 …" as well)
_STATUS = re.compile(r"^(DONE \d+(\.\d+)?s|CACHED|CANCELED.*)$")
_NOISE = re.compile(r"^\s+at \S|^Node\.js v\d+|^\s*$")  # stack frames, node's version footer, blanks
_WRAPPERS = ("ERROR: ", "failed to solve with frontend dockerfile.v0: ", "failed to create LLB definition: ", "failed to solve: ")


@dataclass
class _Vertex:
    name: str
    logs: list[str] = field(default_factory=list)
    error: str = ""


class PlainProgress:
    """Parses `--progress=plain` output, line by line, as it arrives.

    Vertices are `#N <name>` headers followed by `#N <seconds> <log>`, `#N DONE 0.1s`, `#N CACHED`,
    `#N ERROR: <message>` lines (interleaved when steps run in parallel). After a failure the CLI
    prints an excerpt block (`------` / ` > [stage 2/3] RUN …:` / log lines / `------`) and a final
    error line (`failed to solve …`, with buildx `ERROR: failed to solve: …`)."""

    def __init__(self, on_line: Callable[[str], None] = _noop) -> None:
        self._on_line = on_line
        self.vertices: dict[str, _Vertex] = {}
        self.failed: str | None = None  # the vertex id that reported ERROR
        self.trailer: list[str] = []  # lines outside any vertex (excerpt blocks, the final error)
        self._lock = threading.Lock()

    def feed(self, line: str) -> None:
        line = line.rstrip("\r\n")
        if not line.strip():
            return
        with self._lock:
            m = _VERTEX.match(line)
            if m is None:
                self.trailer.append(line)
                self._on_line(line)
                return
            vid, rest = m.groups()
            if rest.startswith("sha256:"):
                return  # the vertex digest: noise for people
            vertex = self.vertices.get(vid)
            if vertex is None:
                self.vertices[vid] = _Vertex(rest)
            elif rest == vertex.name or _STATUS.match(rest):
                pass
            elif rest.startswith("ERROR:"):
                vertex.error = rest.removeprefix("ERROR:").strip()
                if self.failed is None:
                    self.failed = vid
            elif log := _LOG.match(rest):
                vertex.logs.append(log.group(2))
            else:
                vertex.logs.append(rest)  # "transferring context: 2B done" and similar
            self._on_line(line)

    def final_error(self) -> str:
        """The last line outside the vertices and the excerpt blocks: the CLI's own error."""
        inside = False
        last = ""
        for line in self.trailer:
            if line.strip() == "------":
                inside = not inside
                continue
            if not inside and not line.startswith(("Dockerfile:", "-----", ">>>")) and not re.match(r"^\s*\d+ \|", line):
                last = line
        return _unwrap(last)

    def failure(self, returncode: int) -> CycleFailed:
        final = self.final_error()
        if self.failed is not None:
            vertex = self.vertices[self.failed]
            message = vertex.error or final or f"exit code {returncode}"
            relevant = [line for line in vertex.logs if not _NOISE.match(line)]
            message = with_cause(message, relevant)
            details = [*relevant, f"ERROR: {message}"]
            step = vertex.name
        else:
            message = final or f"docker build exited with code {returncode}"
            details = [line for line in self.trailer if line.strip() != "------"]
            step = "docker build"
        return CycleFailed("build", f"{step} failed: {message}", build_hint(f"{step}: {message} {final}"), details=details[-DETAILS:])


def _unwrap(message: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPERS:
            if message.startswith(prefix):
                message = message[len(prefix) :]
                changed = True
    return message.strip()


# --- BuildKit through the docker CLI ---------------------------------------------------------------------


_UNREACHABLE = ("cannot connect to the docker daemon", "is the docker daemon running", "error during connect")


class BuildKitCLI:
    """`docker buildx build --load` or `DOCKER_BUILDKIT=1 docker build`, with `--progress=plain`."""

    def __init__(self, command: Sequence[str], env: Mapping[str, str] | None = None, runner: proc.Runner = proc.DEFAULT) -> None:
        self.command = list(command)  # e.g. ["/usr/bin/docker", "build"] or ["docker", "buildx", "build", "--load"]
        self.env = dict(env or {})
        self._runner = runner

    @property
    def name(self) -> str:
        prefix = " ".join(f"{k}={v}" for k, v in self.env.items())
        return f"buildkit ({prefix + ' ' if prefix else ''}{' '.join(self.command)})"

    def argv(
        self,
        context: Path,
        dockerfile: str,
        tag: str,
        build_args: Mapping[str, str],
        target: str | None,
        iidfile: Path,
        secrets: Mapping[str, Path] | None = None,
        secret_env: Mapping[str, str] | None = None,
    ) -> list[str]:
        argv = [*self.command, "--progress=plain", "--iidfile", str(iidfile), "-t", tag, "-f", str(context / dockerfile)]
        for k in sorted(build_args):
            argv += ["--build-arg", f"{k}={build_args[k]}"]
        if target:
            argv += ["--target", target]
        given = secrets or {}
        for sid in sorted(given):
            argv += ["--secret", f"id={sid},src={Path(given[sid]).resolve()}"]
        for sid, var in sorted((secret_env or {}).items()):  # the CLI reads the variable itself: the value is never on argv
            argv += ["--secret", f"id={sid},env={var}"]
        return [*argv, str(context)]

    def build(
        self,
        context: Path,
        dockerfile: str,
        tag: str,
        build_args: Mapping[str, str],
        target: str | None = None,
        on_line: Callable[[str], None] = _noop,
        *,
        secrets: Mapping[str, Path] | None = None,
        secret_env: Mapping[str, str] | None = None,
    ) -> str:
        _check_dockerfile(context, dockerfile)
        hide = _secret_values(secrets or {}, secret_env or {})
        progress = PlainProgress(on_line)
        with tempfile.TemporaryDirectory(prefix="devloop-build-") as tmp:
            iidfile = Path(tmp) / "iid"
            child = self._runner.spawn(
                self.argv(context, dockerfile, tag, build_args, target, iidfile, secrets, secret_env),
                on_line=lambda line: progress.feed(_redact(line, hide)),  # a step that prints a secret shows ***
                env=self.env,
            )
            try:
                code = child.wait()
            finally:
                if child.alive():
                    child.stop()
            child.stop()  # reaps it and joins the output reader, so every line has been fed
            if code != 0:
                text = " ".join(progress.trailer[-3:]).lower()
                if any(s in text for s in _UNREACHABLE):
                    raise DockerUnavailable(f"cannot reach the Docker daemon: {progress.final_error()}", DOCKER_HINT)
                if code is not None and code < 0:
                    raise CycleFailed("build", f"docker build was stopped (signal {-code})", "devloop rebuilds on the next save")
                raise progress.failure(code if code is not None else -1)
            image_id = iidfile.read_text().strip() if iidfile.is_file() else ""
        if not image_id:
            raise CycleFailed(
                "build", f"docker build of {tag} reported success but wrote no image ID", "run `docker build` by hand to see why"
            )
        return image_id


def _secret_values(files: Mapping[str, Path], env: Mapping[str, str]) -> list[str]:
    """The secrets' values (to hide them in the build's output), checking each is there; an error
    names the secret and where it should be, never its value."""
    values: list[str] = []
    for sid, src in files.items():
        if not Path(src).is_file():
            raise ConfigError(f"build secret {sid!r}: {src} is not a file", "point the secret at an existing file")
        values.append(Path(src).read_text(errors="replace"))
    for sid, var in env.items():
        if not os.environ.get(var):
            raise ConfigError(
                f"build secret {sid!r}: the environment variable {var} is not set (or empty)",
                f"export {var} in the shell that runs devloop",
            )
        values.append(os.environ[var])
    # the whole value, and each line of a value of several (a build line holds one line); the longest first
    pieces = {v.strip() for v in values} | {line.strip() for v in values for line in v.splitlines()}
    return sorted((p for p in pieces if len(p) >= 4), key=len, reverse=True)  # shorter: too common to hide


def _redact(line: str, values: Sequence[str]) -> str:
    for v in values:
        line = line.replace(v, "***")
    return line


# --- detection ----------------------------------------------------------------------------------------------

_PROBE_DOCKERFILE = "DEVLOOP-BUILDKIT-PROBE\n"  # a parse error: exercises CLI → daemon → frontend, creates nothing
_cache: dict[tuple[object, ...], tuple[tuple[str, ...], tuple[tuple[str, str], ...]] | None] = {}
_cache_lock = threading.Lock()


def docker_clis(path: str | None = None) -> list[str]:
    """Every distinct `docker` executable on PATH, in PATH order."""
    found: list[str] = []
    seen: set[str] = set()
    for d in (path if path is not None else os.environ.get("PATH", "")).split(os.pathsep):
        exe = shutil.which("docker", path=d) if d else None
        if exe and os.path.realpath(exe) not in seen:
            seen.add(os.path.realpath(exe))
            found.append(exe)
    return found


def probe_buildkit(runner: proc.Runner, clis: Iterable[str]) -> tuple[list[str], dict[str, str]] | None:
    """The first way to run a BuildKit build that works: (command, env), or None."""
    clis = list(clis)
    for cli in clis:
        try:
            if runner.run([cli, "buildx", "version"], check=False, timeout=PROBE_TIMEOUT).ok:
                return [cli, "buildx", "build", "--load"], {}
        except DevloopError:
            continue
    with tempfile.TemporaryDirectory(prefix="devloop-probe-") as tmp:
        (Path(tmp) / "Dockerfile").write_text(_PROBE_DOCKERFILE)
        for cli in clis:
            env = {"DOCKER_BUILDKIT": "1"}
            try:
                r = runner.run([cli, "build", "--progress=plain", tmp], check=False, timeout=PROBE_TIMEOUT, env=env)
            except DevloopError:
                continue
            out = r.stdout + r.stderr
            # BuildKit answers with its vertices and the frontend's parse error; a CLI without it
            # refuses ("buildx component is missing"), the classic builder says "Sending build context".
            if "[internal] load build definition" in out and "DEVLOOP-BUILDKIT-PROBE" in out.upper():
                return [cli, "build"], env
    return None


def detect_builder(images: Images, runner: proc.Runner = proc.DEFAULT, *, clis: Sequence[str] | None = None) -> Builder:
    """BuildKit through the docker CLI when it works here, else the classic SDK builder. Probed once per
    (runner, CLIs, DOCKER_HOST); DEVLOOP_BUILDER=classic|buildkit overrides."""
    choice = os.environ.get("DEVLOOP_BUILDER", "auto").strip().lower()
    if choice == "classic":
        return ClassicSDK(images)
    candidates = tuple(clis if clis is not None else docker_clis())
    key = (id(runner), candidates, os.environ.get("DOCKER_HOST", ""), os.environ.get("DOCKER_CONTEXT", ""))
    with _cache_lock:
        if key not in _cache:
            found = probe_buildkit(runner, candidates)
            _cache[key] = None if found is None else (tuple(found[0]), tuple(sorted(found[1].items())))
        cached = _cache[key]
    if cached is not None:
        return BuildKitCLI(cached[0], dict(cached[1]), runner)
    if choice == "buildkit":
        raise DockerUnavailable(
            "DEVLOOP_BUILDER=buildkit, but no docker CLI here can run a BuildKit build",
            "install the docker buildx plugin, or unset DEVLOOP_BUILDER to fall back to the classic builder",
        )
    return ClassicSDK(images)


def reset_detection() -> None:
    """Forget the probe results (tests)."""
    with _cache_lock:
        _cache.clear()
