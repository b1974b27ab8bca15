"""The command line (typer). Thin: parse, wire the engine, catch DevloopError once."""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from devloop import __version__, proc
from devloop import config as config_mod
from devloop import manifests as mf
from devloop.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, DevloopBug, DevloopError
from devloop.output import Output

if TYPE_CHECKING:  # the engine is imported lazily to keep `devloop --help` fast
    from devloop.engine import Engine

app = typer.Typer(
    name="devloop",
    help="A fast, honest inner loop for Kubernetes on a local kind cluster: watch, build, publish, roll out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# Options that belong to devloop itself; people (and scripts) also write them after the command,
# as with kubectl, docker and tilt (`devloop up --json`): main() moves them in front of it.
GLOBAL_FLAGS = ("--json", "--verbose", "-v", "--debug")
GLOBAL_VALUED = ("--config", "-f")


@dataclass
class Options:
    config: Path | None = None
    json: bool = False
    verbose: bool = False
    debug: bool = False

    def output(self) -> Output:
        return Output(json_mode=self.json, verbose=self.verbose or self.debug)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"devloop {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-f", metavar="FILE", help="devloop.yaml to use (default: the nearest devloop.yaml up from here)"),
    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="JSON lines on stdout, for scripts")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="show every phase, build output and skipped events")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="verbose, plus a traceback on errors")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version")] = False,
) -> None:
    ctx.obj = Options(config=config, json=json_, verbose=verbose, debug=debug)


def _on_sigterm(signum: int, frame: FrameType | None) -> NoReturn:
    raise KeyboardInterrupt


def _run(ctx: typer.Context, body: Callable[[Output], int]) -> NoReturn:
    opts: Options = ctx.obj or Options()
    out = opts.output()
    signal.signal(signal.SIGTERM, _on_sigterm)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # under nohup: outlive the terminal, as asked
        signal.signal(signal.SIGHUP, _on_sigterm)  # the terminal closed: stop everything, as on Ctrl-C
    # Ctrl-C stops devloop even when it was started from a background job (which inherits SIGINT ignored)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    code = EXIT_OK
    try:
        code = body(out)
    except DevloopError as e:
        out.error(e)
        if opts.debug:
            traceback.print_exc()
        code = e.exit_code
    except KeyboardInterrupt:
        out.info("interrupted; stopping everything devloop started")
        code = EXIT_INTERRUPTED
    except Exception as e:  # a devloop bug: its own exit code, one line, the traceback in a file
        bug = DevloopBug(f"devloop bug ({type(e).__name__}: {_first_line(e)}); the full traceback is in {_crash_file()}")
        out.error(bug)
        if opts.debug:
            traceback.print_exc()
        code = bug.exit_code
    finally:
        proc.terminate_all()
    raise typer.Exit(code)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]


def _crash_file() -> Path:
    """Writes the exception being handled, with its traceback, to a new file in devloop's state
    directory ($XDG_STATE_HOME/devloop, else ~/.local/state/devloop; the temp directory if neither
    is writable) and says where."""
    text = f"devloop {__version__}: {' '.join(sys.argv)}\n{traceback.format_exc()}"
    name = f"crash-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.log"
    xdg = os.environ.get("XDG_STATE_HOME")
    state = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "state"
    for directory in (state / "devloop", Path(tempfile.gettempdir())):
        try:
            directory.mkdir(parents=True, exist_ok=True)
            (directory / name).write_text(text)
            return directory / name
        except OSError:
            continue
    return Path(tempfile.gettempdir()) / name  # not written: the name still says when it happened


def _load(opts: Options) -> config_mod.Config:
    return config_mod.load(opts.config, Path.cwd())


TargetOption = Annotated[
    str | None,
    typer.Option("--target", "-t", metavar="NAME", help="a target declared in devloop.yaml (default: the local kind cluster)"),
]


ForceConflictsOption = Annotated[
    bool,
    typer.Option(
        "--force-conflicts",
        help="on a --target devloop does not own: take the fields other field managers own (default: refuse, exit 2)",
    ),
]


def _engine(
    cfg: config_mod.Config,
    out: Output,
    fetch_tools: bool = True,
    target: str | None = None,
    force_conflicts: bool = False,
    hold: Callable[[str, Callable[[str], None]], None] | None = None,
) -> Engine:
    from devloop import wiring

    return wiring.engine(cfg, out, target, fetch_tools=fetch_tools, force_conflicts=force_conflicts, hold=hold)


@app.command()
def up(ctx: typer.Context, target: TargetOption = None, force_conflicts: ForceConflictsOption = False) -> None:
    """Create the cluster if needed, build, publish, apply and wait until every service is ready. Exits."""

    def body(out: Output) -> int:
        from devloop.forward import PortForward, free_port
        from devloop.lock import ProjectLock

        cfg = _load(ctx.obj)
        with ProjectLock(cfg.root, "up"):
            engine = _engine(cfg, out, target=target, force_conflicts=force_conflicts)
            results = engine.up()
        failed = [r.service for r in results if not r.ok]
        lines = []
        summary: list[dict[str, Any]] = []
        for r in results:
            svc = cfg.service(r.service)
            forwards: list[dict[str, Any]] = []
            entry: dict[str, Any] = {
                "service": r.service,
                "ok": r.ok,
                "image": str(r.image) if r.image else None,
                "ready_pods": r.ready_pods,
                "built": r.built,
                "published": r.published,
                "phases": r.phases,
                "outcome": r.outcome,
                "error": r.error.message if r.error else None,
                "forwards": forwards,
            }
            summary.append(entry)
            if not r.ok:
                lines.append(
                    f"[red]failed:[/red] {r.service} in {r.error.phase if r.error else '?'}" + (f"; {r.outcome}" if r.outcome else "")
                )
                continue
            # what "ready" meant for its main workload: `2/2 pods ready`, or `job migrate completed`
            entry["summary"] = engine.manifests(svc).summary(r.ready_pods)
            lines.append(f"[green]ready:[/green] {r.service} runs {r.image} ({entry['summary']})")
            ns = engine.namespace(svc)
            for f in svc.port_forward:
                # an honest "ready": one request through the Service, on a throwaway local port
                probe = PortForward(engine.kube, out, ns, f.service, f.port, free_port(), label=svc.name)
                answer = probe.probe()
                forwards.append(
                    {
                        "service": f.service,
                        "protocol": probe.protocol,
                        "answer": answer.said if answer else None,
                        "http_status": answer.status if answer else None,
                        "response": answer.body if answer and answer.status is not None else None,
                    }
                )
                if answer is None:
                    out.warn(f"{svc.name}: service {f.service} did not answer through a port-forward", probe.why_no_answer())
                elif answer.status is not None:
                    lines.append(f"  service {f.service} answers: HTTP {answer.status} {answer.body.strip()[:60]!r}")
                else:
                    lines.append(f"  service {f.service} {answer.said}")
                lines.append(
                    f"  reach it: `devloop dev` forwards {'http://' if probe.protocol == 'http' else ''}127.0.0.1:{f.local_port}, or "
                    f"`kubectl --context {engine.target.spec.context} -n {ns} port-forward service/{f.service} {f.local_port}:{f.port}`"
                )
        if failed:
            lines.append(f"[red]{len(failed)} of {len(results)} services failed:[/red] {', '.join(failed)}")
        out.result("up", "\n".join(lines), ok=not failed, failed=failed, services=summary)
        return EXIT_FAILED if failed else EXIT_OK

    _run(ctx, body)


@app.command()
def dev(
    ctx: typer.Context,
    ui: Annotated[bool, typer.Option("--ui/--no-ui", help="serve the dashboard on 127.0.0.1 (dashboard.port)")] = True,
    target: TargetOption = None,
    force_conflicts: ForceConflictsOption = False,
    inspect: Annotated[
        str | None, typer.Option("--inspect", metavar="SERVICE", help="open the Node.js inspector of SERVICE on 127.0.0.1 (dev only)")
    ] = None,
    inspect_port: Annotated[
        int | None, typer.Option("--inspect-port", metavar="PORT", min=0, max=65535, help="its local port (default 9229; 0: any free port)")
    ] = None,
) -> None:
    """`up`, then watch every service: each save is built, published and rolled out. Ctrl-C stops."""

    def body(out: Output) -> int:
        from devloop import wiring
        from devloop.debugger import with_inspect
        from devloop.lock import ProjectLock
        from devloop.session import DevSession

        def adjust(c: config_mod.Config) -> config_mod.Config:
            return with_inspect(c, inspect, inspect_port)

        cfg = adjust(_load(ctx.obj))
        with ProjectLock(cfg.root, "dev"):
            commands = wiring.commands(cfg, out)  # on the host beside the cycle; blocksDeploy holds a service's deploy
            session = DevSession(
                _engine(cfg, out, target=target, force_conflicts=force_conflicts, hold=commands.hold), commands=commands, adjust=adjust
            )
            dashboard = None
            if ui and cfg.dashboard.enabled:
                from devloop.dashboard import Dashboard, DashboardError

                dashboard = Dashboard(out, port=cfg.dashboard.port, on_rebuild=session.request_rebuild, board=session.board)
                try:
                    url = dashboard.start()
                    out.info(f"dashboard: {url}", url=url)
                    session.start_poller()
                except DashboardError as e:  # the loop matters more than its page
                    out.warn(e.message, e.hint)
                    dashboard = None
            try:
                session.run()
            finally:
                if dashboard is not None:
                    dashboard.stop()
        return EXIT_OK

    _run(ctx, body)


@app.command()
def down(
    ctx: typer.Context,
    cluster: Annotated[bool, typer.Option("--cluster", help="also delete the kind cluster (and devloop's registry)")] = False,
    target: TargetOption = None,
    yes: Annotated[bool, typer.Option("--yes", help="confirm `down` on a remote target")] = False,
) -> None:
    """Delete what `up` applied for every service (with --cluster, the kind cluster itself)."""

    def body(out: Output) -> int:
        from devloop.lock import ProjectLock
        from devloop.targets import check_down, resolve

        cfg = _load(ctx.obj)
        check_down(resolve(cfg, target), cluster, yes)  # refused before anything runs
        removed: list[str] = []
        with ProjectLock(cfg.root, "down"):
            engine = _engine(cfg, out, target=target)
            if cluster:  # deleting the cluster removes everything in it
                removed += engine.target.remove_cluster()
            elif engine.target.require_existing() and engine.kube.reachable():
                by_ns: dict[str, dict[tuple[str, str], mf.Manifest]] = {}
                for svc in cfg.services:
                    d = engine.manifests(svc)
                    for m in d.docs:
                        by_ns.setdefault(mf.namespace_of(m, d.namespace), {})[(m.kind, m.name)] = m
                for ns, docs in by_ns.items():
                    removed += engine.kube.delete([m.doc for m in docs.values()], ns)
                mon = engine.monitoring()
                if mon is not None:
                    removed += mon.remove()
        human = "removed:\n" + "\n".join(f"  {r}" for r in removed) if removed else f"nothing to remove ({engine.target.describe()})"
        out.result("down", human, removed=removed, cluster_deleted=cluster and bool(removed))
        return EXIT_OK

    _run(ctx, body)


@app.command()
def status(ctx: typer.Context, target: TargetOption = None) -> None:
    """Show the cluster and, per service, the image running and its pods. Exit 0 only when all are healthy."""

    def body(out: Output) -> int:
        from devloop import status as st

        cfg = _load(ctx.obj)
        info = st.status(cfg, _engine(cfg, out, fetch_tools=False, target=target))
        ok = st.healthy(info)
        out.result("status", st.human(info), healthy=ok, **info)
        return EXIT_OK if ok else EXIT_FAILED

    _run(ctx, body)


@app.command()
def release(
    ctx: typer.Context,
    version: Annotated[str, typer.Argument(metavar="VERSION", help="the version tag to push and deploy, e.g. v1.0.0 (immutable)")],
    target: Annotated[str, typer.Option("--target", "-t", metavar="NAME", help="a target declared in devloop.yaml")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print what would be pushed and applied; change nothing")] = False,
    no_rollback: Annotated[bool, typer.Option("--no-rollback", help="leave a failed rollout as it is")] = False,
    force_conflicts: ForceConflictsOption = False,
) -> None:
    """Build and push <registry>/<image>:VERSION, roll every service out on a target in dependsOn order, pinned by digest."""

    def body(out: Output) -> int:
        from devloop import wiring
        from devloop.images import fmt_bytes
        from devloop.lock import ProjectLock

        cfg = _load(ctx.obj)
        with ProjectLock(cfg.root, "release"):
            rel = wiring.release(cfg, out, target, version, rollback=not no_rollback, force_conflicts=force_conflicts)
            engine = rel.engine
            if dry_run:
                plans = rel.dry_run()
                lines = [f"release {version} to {engine.target.describe()} (dry run: nothing built, pushed or applied)"]
                lines += [f"  order (dependsOn): {' → '.join(p['service'] for p in plans)}"] if any(p["after"] for p in plans) else []
                for p in plans:
                    after = f"; after {', '.join(p['after'])}" if p["after"] else ""
                    lines += [f"  {p['service']}: {p['workload']}: {p['image']} ({p['registry']}{after})"]
                    verb = "would take (--force-conflicts)" if force_conflicts else "REFUSED: fields another manager owns"
                    lines += [f"    {verb}: {out.plain(c)}" for c in p["conflicts"]] + ["    equivalent to:"]
                    lines += [f"      {c}" for c in p["commands"]]
                out.result(
                    "release", "\n".join(lines), ok=True, dry_run=True, version=version, target=engine.target.spec.name, services=plans
                )
                return EXIT_OK
            results = rel.run()
        failed = [r for r in results if not r.ok]
        lines = [f"release {version} to {engine.target.describe()}:"]
        lines += [f"  order (dependsOn): {' → '.join(r.service for r in results)}"] if any(r.after for r in results) else []
        for r in results:
            if r.ok:
                moved = f"pushed {fmt_bytes(r.bytes_pushed)} of {fmt_bytes(r.size)}" if r.pushed else "already in the registry"
                moved = moved if r.digest else f"{r.workload} as its manifests say"
                timing = " · ".join(f"{p} {s:.1f}s" for p, s in r.phases.items())
                lines.append(f"  [green]{r.service}[/green]: {r.ref} ({moved}; {r.summary})")
                lines.append(f"    [dim]{timing}[/dim]")
            else:
                lines.append(f"  [red]{r.service} failed[/red]: {out.plain(r.error or '')}")
                lines += [f"    │ {out.plain(line)}" for line in r.details]
                if r.outcome:
                    lines.append(f"  [bold]{out.plain(r.outcome)}[/bold]")
        if failed:
            lines.append(f"[red]{len(failed)} of {len(results)} services failed[/red]")
        out.result(
            "release",
            "\n".join(lines),
            ok=not failed,
            version=version,
            target=engine.target.spec.name,
            context=engine.target.spec.context,
            services=[r.as_json() for r in results],
        )
        return EXIT_FAILED if failed else EXIT_OK

    _run(ctx, body)


@app.command()
def doctor(ctx: typer.Context) -> None:
    """Check Docker, kind, kubectl, the cluster, the local registry and inotify limits; print a fix for each problem."""

    def body(out: Output) -> int:
        from devloop import wiring
        from devloop.doctor import doctor as run_doctor

        checks = run_doctor(ctx.obj.config, Path.cwd(), *wiring.doctor_adapters())
        for c in checks:
            mark = "✔" if c.ok else "✖"
            human = f"{mark} {c.name:<8} {c.detail}" + (f"\n  fix: {c.fix}" if not c.ok and c.fix else "")
            out.result("check", human, name=c.name, ok=c.ok, detail=c.detail, fix=c.fix)
        return EXIT_OK if all(c.ok for c in checks) else EXIT_FAILED

    _run(ctx, body)


@app.command()
def init(
    ctx: typer.Context,
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="the project to look at (default: here)")] = Path("."),
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the devloop.yaml init would write; write nothing")] = False,
) -> None:
    """Write a devloop.yaml for an existing project: its Dockerfiles, manifests and Services, found. Never overwrites."""

    def body(out: Output) -> int:
        from devloop import discover, scaffold

        file = scaffold.target_file(directory, ctx.obj.config)
        if not dry_run:
            scaffold.refuse_existing(file)
        proposal = discover.discover(directory)
        text = scaffold.render(proposal, file)
        for q in proposal.questions:
            out.warn(q.text, f"answer it in {file.name} (the lines starting `{scaffold.QUESTION}`)")
        if not dry_run:
            scaffold.write(file, text)
        names = [s.name for s in proposal.services]
        said = f"{len(names)} service{'s' * (len(names) != 1)} ({', '.join(names) or 'none yet'})"
        asked = f", {len(proposal.questions)} question{'s' * (len(proposal.questions) != 1)} to answer" if proposal.questions else ""
        up = f"`devloop{f' -f {ctx.obj.config}' if ctx.obj.config else ''} up`"
        then = f"answer the questions in it, then {up}" if not names else f"next: {up}"
        human = out.plain(text.rstrip("\n")) if dry_run else f"wrote {file}: {said}{asked}; {then}"
        out.result(
            "init",
            human,
            file=str(file),
            written=not dry_run,
            services=names,
            questions=[q.text for q in proposal.questions],
            yaml=text,
        )
        return EXIT_OK

    _run(ctx, body)


@app.command()
def schema() -> None:
    """Print the JSON Schema of devloop.yaml (for editors: the YAML language server's $schema)."""
    typer.echo(json.dumps(config_mod.schema(), indent=2))


def normalize_argv(argv: Sequence[str]) -> list[str]:
    """Move devloop's own options written after the command in front of it."""
    commands = {c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands}
    args = list(argv)
    try:
        at = next(i for i, a in enumerate(args) if a in commands)
    except StopIteration:
        return args
    head, tail = args[: at + 1], args[at + 1 :]
    moved: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(tail):
        a = tail[i]
        if a == "--":
            rest += tail[i:]
            break
        if a in GLOBAL_FLAGS:
            moved.append(a)
        elif a in GLOBAL_VALUED and i + 1 < len(tail):
            moved += [a, tail[i + 1]]
            i += 1
        elif a.startswith("--config="):
            moved.append(a)
        else:
            rest.append(a)
        i += 1
    return head[:at] + moved + head[at:] + rest


def main() -> None:
    # `kill -USR2 <pid>`: every thread's stack on stderr (for a bug report when devloop seems stuck)
    faulthandler.register(signal.SIGUSR2, all_threads=True)
    try:
        app(args=normalize_argv(sys.argv[1:]), prog_name="devloop")
    except KeyboardInterrupt:
        proc.terminate_all()
        sys.exit(EXIT_INTERRUPTED)
