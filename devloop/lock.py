"""One loop per project: `devloop dev` and `up` hold a lock, so a second one in the same project
is refused at once instead of fighting the first over the same Deployments.

The lock is an flock(2) on a file in devloop's cache directory (never in the user's tree), named
after the project's directory. The kernel releases it when the holder dies, however it dies, so a
lock left by a killed devloop is taken over without asking.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from pathlib import Path

from devloop.errors import EnvironmentMissing


def cache_dir() -> Path:
    base = os.environ.get("DEVLOOP_CACHE_DIR") or os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "devloop")
    return Path(base)


class ProjectLock:
    def __init__(self, project: Path, what: str, directory: Path | None = None) -> None:
        key = hashlib.sha256(str(project.resolve()).encode()).hexdigest()[:16]
        self.path = (directory or cache_dir() / "locks") / f"{key}.lock"
        self.project = project
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another devloop"
            os.close(fd)
            raise EnvironmentMissing(
                f"{holder} is already running for {self.project}",
                "use that one (or stop it with Ctrl-C); two loops would build and roll out every save twice",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"devloop {self.what} (pid {os.getpid()})\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing releases the flock
            self._fd = None

    def __enter__(self) -> ProjectLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
