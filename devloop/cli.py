"""The command line (typer). Thin: parse, build the pipeline, catch DevloopError once."""

from __future__ import annotations

import signal
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Annotated, NoReturn

import typer

from devloop import __version__, proc
from devloop import config as config_mod
from devloop import manifests as mf
from devloop.doctor import doctor as run_doctor
from devloop.doctor import status as get_status
from devloop.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, DevloopError
from devloop.forward import PortForward, free_port
from devloop.images import Images
from devloop.kind import Kind
from devloop.kube import Kube
from devloop.output import Output
from devloop.registry import LocalRegistry

app = typer.Typer(
    name="devloop",
    help="A fast, honest inner loop for Kubernetes on a local kind cluster: watch, build, load, roll out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


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
        Path | None, typer.Option("--config", "-f", help="devloop.yaml to use (default: ./devloop.yaml, else built-in defaults)")
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
    finally:
        proc.terminate_all()
    raise typer.Exit(code)


def _load(opts: Options) -> config_mod.Config:
    return config_mod.load(opts.config, Path.cwd())


@app.command()
def up(ctx: typer.Context) -> None:
    """Create the cluster if needed, build, load, apply and wait until ready. Idempotent; exits."""

    def body(out: Output) -> int:
        from devloop.pipeline import Pipeline

        p = Pipeline(_load(ctx.obj), out)
        result = p.up()
        if not result.ok:
            return EXIT_FAILED
        pf = p.config.port_forward
        answer = None
        if pf.enabled:
            # an honest "ready": one request through the Service, on a throwaway local port
            probe = PortForward(p.kube, out, p.config.deploy.namespace, pf.service, pf.port, free_port())
            answer = probe.probe()
            if answer is None:
                out.warn(f"service {pf.service} did not answer through a port-forward", "check the Service's selector and ports")
        served = f"service {pf.service} answers: HTTP {answer[0]} {answer[1].strip()[:60]!r}\n" if answer else ""
        out.result(
            "up",
            f"[green]ready:[/green] {p.config.deploy.deployment} runs {result.image} ({len(result.ready_pods)} pods ready)\n"
            f"{served}"
            f"reach it: `devloop dev` forwards http://127.0.0.1:{pf.local_port}, or "
            f"`kubectl --context {p.config.cluster.context} port-forward service/{pf.service} {pf.local_port}:{pf.port}`",
            http_status=answer[0] if answer else None,
            response=answer[1] if answer else None,
            image=result.image,
            ready_pods=result.ready_pods,
            built=result.built,
            loaded=result.loaded,
            phases=result.phases,
        )
        return EXIT_OK

    _run(ctx, body)


@app.command()
def dev(ctx: typer.Context) -> None:
    """`up`, then watch the app: every save is built, loaded and rolled out. Ctrl-C stops."""

    def body(out: Output) -> int:
        from devloop.dev import DevSession
        from devloop.pipeline import Pipeline

        DevSession(Pipeline(_load(ctx.obj), out)).run()
        return EXIT_OK

    _run(ctx, body)


@app.command()
def down(
    ctx: typer.Context,
    cluster: Annotated[bool, typer.Option("--cluster", help="also delete the kind cluster")] = False,
) -> None:
    """Delete what `up` applied (and with --cluster, the kind cluster itself)."""

    def body(out: Output) -> int:
        cfg = _load(ctx.obj)
        kind = Kind()
        name = cfg.cluster.name
        exists = kind.exists(name)
        kube = Kube(cfg.cluster.context)
        removed: list[str] = []
        if cluster:  # deleting the cluster removes everything in it; no need to delete objects first
            if exists:
                with out.activity(f"deleting kind cluster {name}"):
                    kind.delete(name)
                removed.append(f"kind cluster {name}")
            if cfg.registry.enabled and LocalRegistry(cfg.registry, Images(), kube).remove():
                removed.append(f"container {cfg.registry.name} (local registry)")
        elif exists and kube.reachable():
            removed = kube.delete(mf.to_yaml(mf.load(cfg.deploy.manifests)), cfg.deploy.namespace)
        human = "removed:\n" + "\n".join(f"  {r}" for r in removed) if removed else f"nothing to remove (cluster {name!r})"
        out.result("down", human, removed=removed, cluster_deleted=cluster and exists)
        return EXIT_OK

    _run(ctx, body)


@app.command()
def status(ctx: typer.Context) -> None:
    """Show the cluster, the deployed image and ready replicas. Exit 0 only when all are ready."""

    def body(out: Output) -> int:
        cfg = _load(ctx.obj)
        info = get_status(cfg, Kind(), Kube(cfg.cluster.context))
        healthy = bool(info.get("deployed")) and info.get("ready") == info.get("replicas")
        if not info["exists"]:
            human = f"cluster {cfg.cluster.name!r}: does not exist (run `devloop up`)"
        elif not info["reachable"]:
            human = f"cluster {cfg.cluster.name!r}: exists, API server not answering"
        elif not info.get("deployed"):
            human = f"cluster {cfg.cluster.name!r}: up; {cfg.deploy.deployment}: not deployed (run `devloop up`)"
        else:
            human = (
                f"cluster {cfg.cluster.name!r}: up (context {cfg.cluster.context})\n"
                f"{cfg.deploy.deployment}: {info['ready']}/{info['replicas']} ready, image {', '.join(info['images'])}"
            )
            for pod in info.get("pods", []):
                human += f"\n  {pod['name']}: {'ready' if pod['ready'] else 'not ready'}"
            if "service" in info:
                human += f"\nservice {info['service']['name']}: type {info['service']['type']}"
        out.result("status", human, healthy=healthy, **info)
        return EXIT_OK if healthy else EXIT_FAILED

    _run(ctx, body)


@app.command()
def doctor(ctx: typer.Context) -> None:
    """Check Docker, kind, kubectl, the cluster and inotify limits; print a fix for each problem."""

    def body(out: Output) -> int:
        checks = run_doctor(ctx.obj.config, Path.cwd(), Images(), Kind(), Kube)
        for c in checks:
            mark = "[green]✔[/green]" if c.ok else "[red]✖[/red]"
            human = f"{mark} {c.name:<8} {c.detail}" + (f"\n  [dim]fix:[/dim] {c.fix}" if not c.ok and c.fix else "")
            out.result("check", human, name=c.name, ok=c.ok, detail=c.detail, fix=c.fix)
        return EXIT_OK if all(c.ok for c in checks) else EXIT_FAILED

    _run(ctx, body)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        proc.terminate_all()
        sys.exit(EXIT_INTERRUPTED)
