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
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
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
        # The most recent events only (tests, the dashboard's first paint): a long session keeps a bounded tail.
        self.events: deque[dict[str, Any]] = deque(maxlen=500)
        self._subscribers: list[Callable[[dict[str, Any]], None]] = []
        self._spinners: list[Any] = []  # rich Status objects of the activities running, innermost last (under _lock)

    # -- plumbing -----------------------------------------------------------------------------
    def _emit(self, event: str, human: str | None, *, err: bool = False, **fields: Any) -> None:
        record = {"event": event, "ts": round(time.time(), 3), **fields}
        with self._lock:
            self.events.append(record)
            for fn in self._subscribers:
                fn(record)
            if self.json_mode:
                self._out.write(json.dumps(record, default=str) + "\n")
                self._out.flush()
            elif human is not None:
                (self.err_console if err else self.console).print(human)

    def subscribe(self, fn: Callable[[dict[str, Any]], None], *, replay: bool = False) -> None:
        """Also hand every event to `fn` (called under the output lock; it must not block).
        `replay`: first the recent events already reported (the bounded tail), so that `fn` sees
        each event exactly once, none missed between the two."""
        with self._lock:
            if replay:
                for record in list(self.events):
                    fn(record)
            self._subscribers.append(fn)

    @contextmanager
    def activity(self, text: str) -> Iterator[None]:
        """A spinner while a long step runs (terminal only)."""
        if self.json_mode or not self.console.is_terminal:
            yield
            return
        with self.console.status(escape(text)) as spinner:
            with self._lock:
                self._spinners.append(spinner)
            try:
                yield
            finally:
                with self._lock:
                    self._spinners.remove(spinner)

    # -- messages -------------------------------------------------------------------------------
    def info(self, message: str, **fields: Any) -> None:
        self._emit("info", escape(message), message=message, **fields)

    @staticmethod
    def plain(text: str) -> str:
        """`text` shown as it is inside a result line that uses markup (a log line with brackets)."""
        return escape(text)

    def info_for(self, service: str, message: str) -> None:
        """What a person must read about one service ("web: the local registry was stopped; …")."""
        self.info(f"{service}: {message}", service=service)

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
            details=list(getattr(err, "details", [])),
        )

    def result(self, event: str, human: str, **fields: Any) -> None:
        """A command's final answer (status, doctor, up's summary)."""
        self._emit(event, human, **fields)

    # -- cycles ---------------------------------------------------------------------------------
    def cycle_start(self, number: int, reason: str, files: Sequence[str], services: Sequence[str] = ()) -> None:
        what = f": {summarize_files(list(files))}" if files else ""
        who = f" [{', '.join(services)}]" if services else ""
        self._emit(
            "cycle_start",
            f"[bold]▶ cycle {number}[/bold]{escape(who)} {escape(reason)}{escape(what)}",
            cycle=number,
            reason=reason,
            files=list(files),
            services=list(services),
        )

    def phase_start(self, phase: str, detail: str = "", service: str = "") -> None:
        self._emit("phase_start", None, phase=phase, detail=detail, service=service)

    def phase_done(self, phase: str, seconds: float, detail: str = "", service: str = "") -> None:
        who = f"{service} " if service else ""
        human = f"  [dim]{escape(who)}{phase:<8} {fmt_seconds(seconds):>7}  {escape(detail)}[/dim]" if self.verbose else None
        self._emit("phase", human, phase=phase, seconds=round(seconds, 3), detail=detail, service=service)

    def progress(self, service: str, message: str) -> None:
        """A step of a long phase (rollout n/3) a person may want to follow."""
        self._emit(
            "progress", f"[dim]  {escape(service)}: {escape(message)}[/dim]" if self.verbose else None, service=service, message=message
        )
        with self._lock:  # progress comes from the services' threads; activities start and end on others
            if self._spinners:  # without --verbose the spinner's text follows (bytes pushed, rollout n/3)
                self._spinners[-1].update(escape(f"{service}: {message}" if service else message))

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
        service: str = "",
        outcome: str = "",
        synced: bool = False,
    ) -> None:
        """One line per service per cycle, with its trigger files and phase timings."""
        timing = " · ".join(f"{p} {fmt_seconds(s)}" for p, s in phases.items())
        who = f" {service}" if service else ""
        why = f"  [dim]({escape(summarize_files(list(files)))})[/dim]" if files else ""
        if error is None:
            human = f"[green]✔{escape(who)}[/green] cycle {number} ready in {fmt_seconds(total)}  [dim]{escape(timing)}[/dim]" + (
                f"  → {escape(image)}" if image else ""
            )
            human += why
        else:
            human = (
                f"[red]✖{escape(who)}[/red] cycle {number} failed in {error.phase} after {fmt_seconds(total)}: {escape(error.message)}{why}"
            )
            for line in error.details:
                human += f"\n  [dim]│[/dim] {escape(line)}"
            if outcome:
                human += f"\n  [bold]{escape(outcome)}[/bold]"
            if error.hint:
                human += f"\n[dim]hint:[/dim] {escape(error.hint)}"
        self._emit(
            "cycle_done",
            human,
            cycle=number,
            service=service,
            ok=error is None,
            total=round(total, 3),
            phases={p: round(s, 3) for p, s in phases.items()},
            image=image,
            reason=reason,
            files=list(files),
            synced=synced,
            outcome=outcome,
            error=None if error is None else {"phase": error.phase, "message": error.message, "hint": error.hint, "details": error.details},
        )

    # -- commands on the host (devloop.commands) ---------------------------------------------------
    def command_start(self, name: str, argv: Sequence[str], trigger: str, files: Sequence[str] = ()) -> None:
        why = f" ({summarize_files(list(files))})" if files else f" ({trigger})"
        self._emit(
            "command_start",
            f"[bold]▷ {escape(name)}[/bold] [dim]{escape(' '.join(argv))}{escape(why)}[/dim]",
            name=name,
            argv=list(argv),
            trigger=trigger,
            files=list(files),
        )

    def command_output(self, name: str, line: str) -> None:
        """A line the command printed: shown with --verbose (the excerpt of a failed run always)."""
        self._emit("command_output", f"[dim]{escape(name)} │[/dim] {escape(line)}" if self.verbose else None, name=name, line=line)

    def command_end(
        self,
        name: str,
        *,
        status: str,
        exit_code: int | None,
        seconds: float,
        message: str = "",
        hint: str = "",
        excerpt: Sequence[str] = (),
        trigger: str = "",
        files: Sequence[str] = (),
    ) -> None:
        """A run's result: status passed, failed, error (could not run), timeout or cancelled (a newer save restarted it)."""
        took = fmt_seconds(seconds)
        if status == "passed":
            human = f"[green]✔ {escape(name)}[/green] passed in {took}"
        elif status == "cancelled":
            human = f"[dim]· {escape(name)} {escape(message)}[/dim]"
        else:
            human = f"[red]✖ {escape(name)}[/red] {escape(message)} after {took}"
            for line in excerpt:
                human += f"\n  [dim]│[/dim] {escape(line)}"
            if hint:
                human += f"\n[dim]hint:[/dim] {escape(hint)}"
        self._emit(
            "command_end",
            human,
            err=status not in ("passed", "cancelled"),
            name=name,
            ok=status == "passed",
            status=status,
            exit_code=exit_code,
            seconds=round(seconds, 3),
            message=message,
            hint=hint,
            excerpt=list(excerpt),
            trigger=trigger,
            files=list(files),
        )

    def metrics(
        self,
        service: str,
        rps: float | None,
        error_ratio: float | None,
        versions: Mapping[str, int],
        traffic_known: bool = True,
        traffic: str = "",
    ) -> None:
        """A service's traffic over the last minute and the versions serving (from Prometheus);
        `traffic`: what `devloop status` says of it (`ServiceStats.traffic()`), for the page to say the same."""
        self._emit(
            "metrics",
            None,
            service=service,
            rps=rps,
            error_ratio=error_ratio,
            versions=dict(versions),
            traffic_known=traffic_known,
            traffic=traffic,
        )

    def skipped(self, reason: str, files: Sequence[str], service: str = "") -> None:
        who = f"{service}: " if service else ""
        self._emit(
            "skipped",
            f"[dim]· no cycle: {escape(who)}{escape(reason)}: {escape(summarize_files(list(files)))}[/dim]" if self.verbose else None,
            reason=reason,
            files=list(files),
            service=service,
        )

    # -- long-running helpers ------------------------------------------------------------------
    def pod_log(self, pod: str, line: str, service: str = "") -> None:
        """A line of a pod's log, prefixed with service and pod, coloured per service."""
        colour = _POD_COLOURS[zlib.crc32((service or pod).encode()) % len(_POD_COLOURS)]
        prefix = f"{service}/{pod}" if service else pod
        self._emit("log", f"[{colour}]{escape(prefix)}[/{colour}] │ {escape(line)}", pod=pod, line=line, service=service)

    def forward(self, url: str, ready: bool, message: str = "", service: str = "") -> None:
        who = f"{service} " if service else ""
        human = (
            f"[green]⇄[/green] {escape(who)}{escape(url)} → ready"
            if ready
            else f"[yellow]⇄[/yellow] {escape(who)}{escape(url)} {escape(message)}"
        )
        self._emit("port_forward", human, url=url, ready=ready, message=message, service=service)
