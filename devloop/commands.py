"""Commands on the host beside the cycle (`commands:` in devloop.yaml): unit tests, lint, code generation.

    save ─► plan ─► engine.run (build ─► publish ─► hold? ─► deploy ─► wait ready)
         └► triggered ─► CommandRunner.start ─► (its own thread) run ─► command_end
                                                   └─ blocksDeploy: a failed run holds the deploy ─┘

`triggered` is pure (which commands a batch of changes starts, with the files that matched);
`held_services` (pure) says which services a blocking command holds: those whose own files in the
batch matched it. `CommandRunner` runs each command through the one subprocess runner (proc.py:
its own process group, stopped with devloop), one run per command at a time: a save that triggers
a command still running cancels that run and starts it again (its result would be stale). Every
result goes to the output (`command_start` / `command_end`), to the dashboard through it, and to a
small state file in devloop's cache that `devloop status` reads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from docker.utils.build import PatternMatcher

from devloop.config import CommandConfig
from devloop.errors import CycleFailed, DevloopError, ToolMissing
from devloop.ignore import IgnoreRules
from devloop.lock import cache_dir
from devloop.output import Output
from devloop.plan import Change, ServiceLayout, plan, relative, settle
from devloop.proc import SIGNAL_CHECK, Background

HEAD_LINES = 10  # a failed run's excerpt: its first lines (what it ran) …
TAIL_LINES = 15  # … and its last (where it failed)


# -- planning (pure) ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Triggered:
    """A command a batch of changes starts, and the files (relative to the project) that matched it."""

    command: CommandConfig
    files: tuple[str, ...]


def matches(command: CommandConfig, path: str, root: str, rules: IgnoreRules = IgnoreRules()) -> bool:
    """Whether a save of `path` (absolute) runs `command`: its trigger globs (relative to `root`), else any
    file below its workdir; never a file devloop always ignores (.git, node_modules, editor temp files,
    watch.ignore)."""
    rel = relative(path, root).replace(os.sep, "/")
    if rel.startswith("../") or rules.always_ignored(rel):
        return False
    if command.trigger:
        return bool(PatternMatcher(list(command.trigger)).matches(rel))
    workdir = str(command.workdir)
    return path.startswith(workdir.rstrip(os.sep) + os.sep)


def triggered(
    changes: Iterable[Change], commands: Sequence[CommandConfig], root: str, rules: IgnoreRules = IgnoreRules()
) -> list[Triggered]:
    """The commands (with `when: save`) this batch of changes runs, in the configuration's order."""
    settled = settle(changes)
    out = []
    for c in commands:
        if "save" not in c.when:
            continue
        files = tuple(sorted({relative(ch.path, root) for ch in settled if matches(c, ch.path, root, rules)}))
        if files:
            out.append(Triggered(c, files))
    return out


def held_services(t: Triggered, layouts: Sequence[ServiceLayout], config_files: Sequence[str], root: str) -> tuple[str, ...]:
    """The services a blocking command holds: those this batch changes through the files that triggered it."""
    if not t.command.blocks_deploy:
        return ()
    p = plan([Change(os.path.join(root, f)) for f in t.files], layouts, config_files, root)
    return tuple(c.service for c in p.services)


def trigger_roots(commands: Sequence[CommandConfig], root: Path) -> list[Path]:
    """The directories to watch for the commands' triggers: each glob's directory part before its first
    wildcard (a glob with none: its directory, or itself when it names one), else the workdir."""
    out: list[Path] = []
    for c in commands:
        if "save" not in c.when:
            continue
        for glob in c.trigger or (str(c.workdir),):
            parts = []
            for part in Path(glob).parts:
                if any(ch in part for ch in "*?["):
                    break
                parts.append(part)
            d = Path(root, *parts)
            d = d if d.is_dir() or len(parts) < len(Path(glob).parts) else d.parent
            if d not in out and d.is_dir():
                out.append(d)
    return out


def missing_program(command: CommandConfig) -> str | None:
    """What is wrong with the command's program (argv[0]), or None when it can be started."""
    exe = command.argv[0]
    if os.sep in exe:
        path = exe if os.path.isabs(exe) else os.path.join(command.workdir, exe)
        return None if os.path.isfile(path) and os.access(path, os.X_OK) else f"`{exe}` is not an executable file in {command.workdir}"
    return None if shutil.which(exe) else f"`{exe}` was not found on PATH"


def check(commands: Sequence[CommandConfig], source: str) -> None:
    """Every command's program is there (before anything runs, and before a reloaded configuration is taken)."""
    for n, c in enumerate(commands):
        wrong = missing_program(c)
        if wrong:
            raise ToolMissing(
                f"{source}: commands[{n}] ({c.name}): {wrong}",
                f"install it, or fix commands[{n}].argv (a list: the program, then its arguments; "
                "a program with a / is relative to workdir)",
            )


# -- results -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CommandResult:
    name: str
    status: str  # passed, failed, error (could not run), timeout, cancelled
    exit_code: int | None
    seconds: float
    message: str = ""  # e.g. "failed (exit 1)", "`eslint` was not found on PATH"
    hint: str = ""
    excerpt: tuple[str, ...] = ()
    trigger: str = ""  # start, save
    files: tuple[str, ...] = ()
    at: float = 0.0  # when it ended (epoch seconds)

    @property
    def ok(self) -> bool:
        return self.status == "passed"


def results_file(project: Path) -> Path:
    """Where `devloop dev` keeps the last result of each command for `devloop status` (devloop's cache, never the project)."""
    key = hashlib.sha256(str(project.resolve()).encode()).hexdigest()[:16]
    return cache_dir() / "commands" / f"{key}.json"


def read_results(project: Path) -> list[dict[str, Any]]:
    """The last result of each command, as the last `devloop dev` in `project` left them ([] when none)."""
    try:
        data = json.loads(results_file(project).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [r for r in data.get("commands", []) if isinstance(r, dict)] if isinstance(data, dict) else []


def excerpt(head: Sequence[str], tail: Sequence[str], total: int) -> tuple[str, ...]:
    """A failed run's first and last lines, with what was left out between them said."""
    if total <= len(head) + len(tail):
        return (*head, *tail)
    return (*head, f"… {total - len(head) - len(tail)} lines …", *tail)


# -- running -----------------------------------------------------------------------------------------
class Launcher(Protocol):
    """What the runner needs of proc's runner: a child in its own process group, its output line by line."""

    def spawn(
        self, argv: Sequence[str], *, on_line: Callable[[str], None], env: Mapping[str, str] | None = None, cwd: str | None = None
    ) -> Background: ...


@dataclass
class _Run:
    command: CommandConfig
    trigger: str
    files: tuple[str, ...]
    done: threading.Event = field(default_factory=threading.Event)
    cancelled: bool = False
    child: Background | None = None
    head: list[str] = field(default_factory=list)
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    lines: int = 0
    result: CommandResult | None = None


class CommandRunner:
    """Runs the configured commands, each at most once at a time, on threads of its own. `start` and
    `reconfigure` are called by the session's worker; `hold` by the engine's service threads."""

    def __init__(
        self,
        commands: Sequence[CommandConfig],
        out: Output,
        launcher: Launcher,
        root: Path,
        *,
        state_file: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.commands = tuple(commands)
        self.out = out
        self.launcher = launcher
        self.root = root
        self.state_file = state_file
        self.clock = clock
        self._lock = threading.Lock()
        self._runs: dict[str, _Run] = {}  # the current (or last) run of each command
        self._holds: dict[str, set[str]] = {}  # blocking command → services it holds until it passes
        self._refused: dict[str, set[str]] = {}  # blocking command → services whose deploy it refused since it last passed
        self.last: dict[str, CommandResult] = {}
        self._stopping = threading.Event()
        # a blocking command passed: the services it held (the session deploys those the cluster does not run yet)
        self.on_release: Callable[[str, list[str]], None] | None = None

    def reconfigure(self, commands: Sequence[CommandConfig]) -> None:
        """A reloaded configuration: a command removed (or changed) stops holding anything."""
        self.commands = tuple(commands)
        with self._lock:
            kept = {c.name: c for c in commands}
            self._holds = {n: s for n, s in self._holds.items() if n in kept and kept[n].blocks_deploy}
            self._refused = {n: s for n, s in self._refused.items() if n in self._holds}

    # -- the worker --------------------------------------------------------------------------------
    def at_start(self) -> None:
        """The commands with `when: start`, as `devloop dev` starts (beside the first deploy; they hold nothing)."""
        for c in self.commands:
            if "start" in c.when:
                self.start(Triggered(c, ()), trigger="start")

    def start(self, t: Triggered, services: Iterable[str] = (), trigger: str = "save") -> None:
        """Run `t.command` (a run of it still going is cancelled first); a blocking command holds
        `services`' deploys until it passes."""
        name = t.command.name
        run = _Run(t.command, trigger, t.files)
        with self._lock:
            old = self._runs.get(name)
            if old is not None and not old.done.is_set():
                old.cancelled = True
            self._runs[name] = run
            if t.command.blocks_deploy and services:
                self._holds.setdefault(name, set()).update(services)
        if old is not None and not old.done.is_set() and old.child is not None:
            old.child.stop()
        threading.Thread(target=self._run, args=(run,), daemon=True, name=f"devloop-command-{name}").start()

    # -- a run, on its own thread -------------------------------------------------------------------
    def _line(self, run: _Run, line: str) -> None:
        run.lines += 1
        if len(run.head) < HEAD_LINES:
            run.head.append(line)
        else:
            run.tail.append(line)
        self.out.command_output(run.command.name, line)

    def _run(self, run: _Run) -> None:
        c = run.command
        start = self.clock()
        self.out.command_start(c.name, c.argv, run.trigger, run.files)
        try:
            result = self._execute(run, start)
        except DevloopError as e:  # could not be started (the program went away since it was checked)
            result = CommandResult(c.name, "error", None, self.clock() - start, e.message, e.hint)
        result = CommandResult(**{**asdict(result), "trigger": run.trigger, "files": run.files, "at": time.time()})
        run.result = result
        released: set[str] = set()
        with self._lock:
            current = self._runs.get(c.name) is run
            if current and result.ok:
                self._holds.pop(c.name, None)
                released = self._refused.pop(c.name, set())
            if current and result.status != "cancelled":
                self.last[c.name] = result
        if current:
            self._save()  # before it is said: `devloop status` then agrees with what was said
        run.done.set()
        self.out.command_end(
            c.name,
            status=result.status,
            exit_code=result.exit_code,
            seconds=result.seconds,
            message=result.message,
            hint=result.hint,
            excerpt=result.excerpt,
            trigger=result.trigger,
            files=result.files,
        )
        if released and self.on_release is not None:
            self.on_release(c.name, sorted(released))

    def _execute(self, run: _Run, start: float) -> CommandResult:
        c = run.command
        if run.cancelled or self._stopping.is_set():
            return self._cancelled(run, 0.0)
        child = run.child = self.launcher.spawn(list(c.argv), on_line=lambda line: self._line(run, line), cwd=str(c.workdir))
        if run.cancelled:  # cancelled while it was being started
            child.stop()
        code = child.wait(c.timeout)
        child.stop()  # reaps it, stops what it left in its process group, and reads the rest of its output
        seconds = self.clock() - start
        if run.cancelled or self._stopping.is_set():
            return self._cancelled(run, seconds)
        lines = excerpt(run.head, list(run.tail), run.lines)
        if code is None:
            return CommandResult(
                c.name, "timeout", None, seconds, f"stopped after {c.timeout}s (timeout)", f"raise commands.{c.name}'s timeout", lines
            )
        if code != 0:
            return CommandResult(c.name, "failed", code, seconds, f"failed (exit {code})", "", lines)
        return CommandResult(c.name, "passed", 0, seconds)

    def _cancelled(self, run: _Run, seconds: float) -> CommandResult:
        why = "cancelled: a newer save runs it again" if run.cancelled else "stopped with devloop"
        return CommandResult(run.command.name, "cancelled", None, seconds, why)

    def _save(self) -> None:
        if self.state_file is None:
            return
        with self._lock:
            data = {"project": str(self.root), "commands": [asdict(r) for r in self.last.values()]}
        with contextlib.suppress(OSError):  # status only: never worth failing a run over
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.state_file.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
            tmp.replace(self.state_file)

    # -- the engine's service threads: before a deploy ----------------------------------------------
    def hold(self, service: str, say: Callable[[str], None]) -> None:
        """Return once `service` may be deployed: wait for the blocking commands that hold it; raise
        when one of them failed (the service is not deployed: what ran before keeps running)."""
        with self._lock:
            names = sorted(n for n, services in self._holds.items() if service in services)
            runs = [self._runs[n] for n in names if n in self._runs]
        pending = [r for r in runs if not r.done.is_set()]
        if pending:
            say(f"waiting for {', '.join(r.command.name for r in pending)} (blocksDeploy)")
        for r in pending:
            while not r.done.wait(SIGNAL_CHECK):
                if self._stopping.is_set():
                    raise CycleFailed("command", "stopped while waiting for commands")
        with self._lock:  # a run that passed released its hold; what is left held it back
            failed = [self.last[n] for n in sorted(self._holds) if service in self._holds[n] and n in self.last]
            for f in failed:
                self._refused.setdefault(f.name, set()).add(service)
        if failed:
            first = failed[0]
            raise CycleFailed(
                "command",
                f"not deployed: {', '.join(f'{r.name} {r.message}' for r in failed)} (blocksDeploy)",
                f"fix it and save: {service} is deployed once {first.name} passes",
            )

    def stop(self) -> None:
        """Stop every run (devloop is stopping)."""
        self._stopping.set()
        with self._lock:
            runs = list(self._runs.values())
        for r in runs:
            if r.child is not None and not r.done.is_set():
                r.child.stop()
