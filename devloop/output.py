"""The one object everything reports through.

Core modules never print: they call methods here. Two renderings of the same events:
a human view (rich: colour and a spinner on a terminal, plain text otherwise) and JSON lines
(`--json`), one object per line on stdout, for scripts.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TextIO

from rich.console import Console
from rich.markup import escape

from devloop.errors import CycleFailed, DevloopError

_POD_COLOURS = ("cyan", "magenta", "green", "yellow", "blue", "bright_cyan", "bright_magenta", "bright_green")


def fmt_seconds(s: float) -> str:
    return f"{s * 1000:.0f}ms" if s < 1 else f"{s:.2f}s"


def summarize_files(files: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(files[:limit])
    return shown + (f" (+{len(files) - limit} more)" if len(files) > limit else "")


class Output:
    def __init__(
        self,
        *,
        json_mode: bool = False,
        verbose: bool = False,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
        force_terminal: bool | None = None,
    ) -> None:
        self.json_mode = json_mode
        self.verbose = verbose
        self._out = stdout or sys.stdout
        self._lock = threading.RLock()
        self.console = Console(file=self._out, force_terminal=force_terminal, highlight=False, soft_wrap=True)
        self.err_console = Console(file=stderr or sys.stderr, force_terminal=force_terminal, highlight=False, soft_wrap=True)
        self.events: list[dict[str, Any]] = []  # kept for `--json` summaries and tests

    # -- plumbing -----------------------------------------------------------------------------
    def _emit(self, event: str, human: str | None, *, err: bool = False, **fields: Any) -> None:
        record = {"event": event, "ts": round(time.time(), 3), **fields}
        with self._lock:
            self.events.append(record)
            if self.json_mode:
                self._out.write(json.dumps(record, default=str) + "\n")
                self._out.flush()
            elif human is not None:
                (self.err_console if err else self.console).print(human)

    @contextmanager
    def activity(self, text: str) -> Iterator[None]:
        """A spinner while a long step runs (terminal only)."""
        if self.json_mode or not self.console.is_terminal:
            yield
            return
        with self.console.status(escape(text)):
            yield

    # -- messages -------------------------------------------------------------------------------
    def info(self, message: str, **fields: Any) -> None:
        self._emit("info", escape(message), message=message, **fields)

    def detail(self, message: str, **fields: Any) -> None:
        """Only shown with --verbose (always recorded in JSON)."""
        self._emit("detail", f"[dim]{escape(message)}[/dim]" if self.verbose else None, message=message, **fields)

    def warn(self, message: str, hint: str = "") -> None:
        text = f"[yellow]warning:[/yellow] {escape(message)}" + (f"\n[dim]hint:[/dim] {escape(hint)}" if hint else "")
        self._emit("warning", text, err=True, message=message, hint=hint)

    def error(self, err: DevloopError) -> None:
        text = f"[red]error:[/red] {escape(err.message)}"
        for line in getattr(err, "details", []):
            text += f"\n  {escape(line)}"
        if err.hint:
            text += f"\n[dim]hint:[/dim] {escape(err.hint)}"
        self._emit(
            "error",
            text,
            err=True,
            message=err.message,
            hint=err.hint,
            exit_code=err.exit_code,
            kind=type(err).__name__,
        )

    def result(self, event: str, human: str, **fields: Any) -> None:
        """A command's final answer (status, doctor, up's summary)."""
        self._emit(event, human, **fields)

    # -- cycles ---------------------------------------------------------------------------------
    def cycle_start(self, number: int, reason: str, files: Sequence[str]) -> None:
        what = f": {summarize_files(list(files))}" if files else ""
        self._emit(
            "cycle_start",
            f"[bold]▶ cycle {number}[/bold] {escape(reason)}{escape(what)}",
            cycle=number,
            reason=reason,
            files=list(files),
        )

    def phase_start(self, phase: str, detail: str = "") -> None:
        self._emit("phase_start", None, phase=phase, detail=detail)

    def phase_done(self, phase: str, seconds: float, detail: str = "") -> None:
        human = f"  [dim]{phase:<8} {fmt_seconds(seconds):>7}  {escape(detail)}[/dim]" if self.verbose else None
        self._emit("phase", human, phase=phase, seconds=round(seconds, 3), detail=detail)

    def cycle_done(
        self,
        number: int,
        *,
        phases: Mapping[str, float],
        total: float,
        image: str | None,
        error: CycleFailed | None = None,
        files: Sequence[str] = (),
        reason: str = "",
    ) -> None:
        timing = " · ".join(f"{p} {fmt_seconds(s)}" for p, s in phases.items())
        if error is None:
            human = f"[green]✔ cycle {number}[/green] ready in {fmt_seconds(total)}  [dim]{escape(timing)}[/dim]" + (
                f"  → {escape(image)}" if image else ""
            )
        else:
            human = f"[red]✖ cycle {number} failed[/red] in {error.phase} after {fmt_seconds(total)}: {escape(error.message)}"
            for line in error.details:
                human += f"\n  [dim]│[/dim] {escape(line)}"
            if error.hint:
                human += f"\n[dim]hint:[/dim] {escape(error.hint)}"
        self._emit(
            "cycle_done",
            human,
            cycle=number,
            ok=error is None,
            total=round(total, 3),
            phases={p: round(s, 3) for p, s in phases.items()},
            image=image,
            reason=reason,
            files=list(files),
            error=None if error is None else {"phase": error.phase, "message": error.message, "hint": error.hint, "details": error.details},
        )

    def skipped(self, reason: str, files: Sequence[str]) -> None:
        self._emit(
            "skipped",
            f"[dim]· no cycle: {escape(reason)}: {escape(summarize_files(list(files)))}[/dim]" if self.verbose else None,
            reason=reason,
            files=list(files),
        )

    # -- long-running helpers ------------------------------------------------------------------
    def pod_log(self, pod: str, line: str) -> None:
        colour = _POD_COLOURS[zlib.crc32(pod.encode()) % len(_POD_COLOURS)]
        self._emit("log", f"[{colour}]{escape(pod)}[/{colour}] │ {escape(line)}", pod=pod, line=line)

    def forward(self, url: str, ready: bool, message: str = "") -> None:
        human = f"[green]⇄[/green] {escape(url)} → ready" if ready else f"[yellow]⇄[/yellow] {escape(url)} {escape(message)}"
        self._emit("port_forward", human, url=url, ready=ready, message=message)
