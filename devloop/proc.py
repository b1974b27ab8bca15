"""The one place devloop starts subprocesses (kind, kubectl).

argv lists only, never a shell string. Every child runs in its own process group and is
registered, so that an interrupt or a crash in a worker thread can stop all of them
(`terminate_all`): devloop never leaves an orphan kubectl or kind behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Protocol

from devloop.errors import CommandFailed, ToolMissing

# The longest the main thread blocks without returning to Python: the kernel may hand a Ctrl-C to
# any thread of the process, and Python then only sets a flag the main thread reads when it runs.
SIGNAL_CHECK = 0.5

INSTALL_HINTS = {
    "kind": "install kind: `go install sigs.k8s.io/kind@v0.30.0` (https://kind.sigs.k8s.io) and put it on PATH",
    "kubectl": (
        "devloop downloads kubectl itself when it can reach https://dl.k8s.io; otherwise install it yourself: the binary "
        "(https://kubernetes.io/docs/tasks/tools/install-kubectl-linux/) or the Kubernetes apt repository pkgs.k8s.io "
        "(Debian has no kubectl package), and put it on PATH"
    ),
    "helm": (
        "devloop downloads helm itself when it can reach https://get.helm.sh; otherwise install it yourself "
        "(https://helm.sh/docs/intro/install/, or `go install helm.sh/helm/v3/cmd/helm@v3.19.0`) and put it on PATH"
    ),
}


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class Background(Protocol):
    """A long-running child (port-forward, log stream)."""

    def alive(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> int | None: ...

    def stop(self) -> None: ...


class Runner(Protocol):
    def run(
        self,
        argv: Sequence[str],
        *,
        input: str | bytes | None = None,
        timeout: float | None = None,
        check: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> Result: ...

    def spawn(
        self,
        argv: Sequence[str],
        *,
        on_line: Callable[[str], None],
        env: Mapping[str, str] | None = None,
    ) -> Background: ...


_live: set[subprocess.Popen[bytes]] = set()
_live_lock = threading.Lock()


def _register(p: subprocess.Popen[bytes]) -> None:
    with _live_lock:
        _live.add(p)


def _unregister(p: subprocess.Popen[bytes]) -> None:
    with _live_lock:
        _live.discard(p)


def _kill_group(p: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(p.pid, sig)


def _stop(p: subprocess.Popen[bytes], grace: float = 3.0) -> None:
    """SIGTERM the child's process group, SIGKILL it if it lingers, and reap it."""
    if p.poll() is None:
        _kill_group(p, signal.SIGTERM)
        _kill_group(p, signal.SIGCONT)  # a stopped child (SIGSTOP, a hung kubectl) acts on SIGTERM only once continued
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        # whatever it started and left behind in its group (kind's `docker exec`s holding its output open) goes too
        _kill_group(p, signal.SIGKILL)
    else:
        # The leader is gone; make sure nothing it started lives on in its group.
        _kill_group(p, signal.SIGKILL)
    _unregister(p)


def terminate_all() -> None:
    """Stop every child devloop started that is still running."""
    with _live_lock:
        children = list(_live)
    for p in children:
        _stop(p)


def live_children() -> int:
    with _live_lock:
        return sum(1 for p in _live if p.poll() is None)


def _popen(argv: Sequence[str], env: Mapping[str, str] | None, cwd: str | None = None, **kw: object) -> subprocess.Popen[bytes]:
    argv = list(argv)
    if not argv or not all(isinstance(a, str) for a in argv):
        raise TypeError(f"argv must be a non-empty list of str, got {argv!r}")
    exe = argv[0]
    if os.sep not in exe and shutil.which(exe, path=(env or os.environ).get("PATH")) is None:  # with a /: relative to cwd
        raise ToolMissing(f"`{exe}` was not found on PATH", INSTALL_HINTS.get(exe, f"install {exe}"))
    full_env = None if env is None else {**os.environ, **env}
    try:
        p = subprocess.Popen(argv, env=full_env, cwd=cwd, start_new_session=True, **kw)  # type: ignore[call-overload]
    except FileNotFoundError as e:
        raise ToolMissing(f"`{exe}` could not be started: {e.strerror}", INSTALL_HINTS.get(exe, f"install {exe}")) from e
    _register(p)
    return p  # type: ignore[no-any-return]


class ProcessRunner:
    """The real runner."""

    def run(
        self,
        argv: Sequence[str],
        *,
        input: str | bytes | None = None,
        timeout: float | None = None,
        check: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> Result:
        data = input.encode() if isinstance(input, str) else input
        p = _popen(
            argv,
            env,
            stdin=subprocess.PIPE if data is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            out, err = p.communicate(data, timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop(p, grace=1.0)
            raise CommandFailed(list(argv), -1, f"timed out after {timeout:.0f}s") from None
        finally:
            if p.poll() is None:
                _stop(p, grace=1.0)
            _unregister(p)
        result = Result(tuple(argv), p.returncode, out.decode(errors="replace"), err.decode(errors="replace"))
        if check and not result.ok:
            raise CommandFailed(list(argv), result.returncode, result.stderr or result.stdout)
        return result

    def spawn(
        self,
        argv: Sequence[str],
        *,
        on_line: Callable[[str], None],
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> Background:
        p = _popen(argv, env, cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        return _Spawned(p, on_line)


class _Spawned:
    def __init__(self, p: subprocess.Popen[bytes], on_line: Callable[[str], None]) -> None:
        self._p = p
        self._reader = threading.Thread(target=self._pump, args=(p.stdout, on_line), daemon=True)
        self._reader.start()

    @staticmethod
    def _pump(stream: IO[bytes] | None, on_line: Callable[[str], None]) -> None:
        if stream is None:
            return
        for raw in iter(stream.readline, b""):
            on_line(raw.decode(errors="replace").rstrip("\n"))

    def alive(self) -> bool:
        return self._p.poll() is None

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit code, or None after `timeout`. Without a timeout it still returns to Python
        every SIGNAL_CHECK seconds, so that a Ctrl-C another thread took is acted on (a build)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = SIGNAL_CHECK if deadline is None else min(SIGNAL_CHECK, deadline - time.monotonic())
            try:
                return self._p.wait(max(0.0, left))
            except subprocess.TimeoutExpired:
                if deadline is not None and time.monotonic() >= deadline:
                    return None

    def stop(self) -> None:
        _stop(self._p)
        self._reader.join(timeout=2)


DEFAULT = ProcessRunner()
