"""The error hierarchy: every failure devloop expects carries a message, a hint and an exit code.

The CLI catches `DevloopError` once, prints `error:` and `hint:` and exits with `exit_code`.
"""

from __future__ import annotations

# Documented exit codes (docs/reference.md, "Exit codes").
EXIT_OK = 0
EXIT_FAILED = 1  # a build, load or rollout failed (`up`), or `status`/`doctor` found a problem
EXIT_USAGE = 2  # bad command line or bad configuration
EXIT_ENVIRONMENT = 3  # a tool or service devloop needs is missing or stopped
EXIT_BUG = 4  # a devloop bug (an unexpected exception); its traceback is written to a crash file
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGTERM


class DevloopError(Exception):
    exit_code = EXIT_FAILED

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(DevloopError):
    """A configuration file (devloop.yaml, kind config, manifests, Dockerfile path) is wrong."""

    exit_code = EXIT_USAGE


class EnvironmentMissing(DevloopError):
    """Something devloop needs from the machine is missing or not running."""

    exit_code = EXIT_ENVIRONMENT


class ToolMissing(EnvironmentMissing):
    """An external binary (kind, kubectl) is not on PATH."""


class DockerUnavailable(EnvironmentMissing):
    """The Docker daemon cannot be reached."""


class ClusterUnavailable(EnvironmentMissing):
    """The kind cluster is missing or its API server does not answer."""


class DevloopBug(DevloopError):
    """An exception devloop did not expect: a bug in devloop, never "a service failed"."""

    exit_code = EXIT_BUG


class CommandFailed(DevloopError):
    """An external command exited non-zero."""

    def __init__(self, argv: list[str], returncode: int, stderr: str, hint: str = "") -> None:
        last = _last_line(stderr)
        super().__init__(
            f"`{' '.join(argv[:3])}` failed (exit {returncode})" + (f": {last}" if last else ""),
            hint,
        )
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr


class StepFailed(DevloopError):
    """An adapter could not do what it was asked (a build step, a push, an apply); neutral about
    where in a cycle that happened: the engine adds the phase."""

    def __init__(self, message: str, hint: str = "", details: list[str] | None = None) -> None:
        super().__init__(message, hint)
        self.details = details or []


class CycleFailed(StepFailed):
    """A phase of a service's cycle failed (build, publish, deploy, rollout); in `devloop dev` the loop goes on."""

    def __init__(self, phase: str, message: str, hint: str = "", details: list[str] | None = None) -> None:
        super().__init__(message, hint, details)
        self.phase = phase

    @classmethod
    def of(cls, phase: str, e: DevloopError) -> CycleFailed:
        if isinstance(e, CycleFailed):
            return e
        return cls(phase, e.message, e.hint, list(getattr(e, "details", [])))


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""
