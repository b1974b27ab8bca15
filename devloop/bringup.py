"""`up`: everything a developer needs before the first save, from nothing if need be.

    the cluster (created when missing, while every image is built and, when the way allows,
    pushed) ─► its image transport ─► every service rolled out ─► Prometheus (dev monitoring)

Used by `devloop up` and at the start of `devloop dev`; the cycle itself is the engine's.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import TYPE_CHECKING

from devloop.errors import DevloopError
from devloop.plan import everything
from devloop.proc import SIGNAL_CHECK, terminate_all

if TYPE_CHECKING:
    from devloop.engine import Engine, ServiceResult


def up(engine: Engine) -> list[ServiceResult]:
    engine.check_manifests()
    engine.images.ping()
    early: dict[str, tuple[bool, bool]] = {}
    if engine.target.will_create():
        early = _beside_creation(engine)
    engine.prepare_cluster()
    results = engine.run(everything(engine.layouts(), "up"))
    for r in results:  # what this `up` built and pushed beside the cluster's creation counts as its own
        built, published = early.get(r.service, (False, False))
        r.built, r.published = r.built or built, r.published or published
    ensure_monitoring(engine)
    return results


def _beside_creation(engine: Engine) -> dict[str, tuple[bool, bool]]:
    """No cluster yet (onboarding, a demo): create it while every image is built and, when the
    way allows (the local registry), pushed; the cycle after it then only wires and rolls out.
    A failure here is left for that cycle to report in its phase; the summary says which images
    were made ready meanwhile and which the first cycle tries again."""
    start = engine.clock()
    done: dict[str, tuple[bool, bool]] = {}
    said: dict[str, str] = {}  # service → what happened to its image meanwhile
    creating: Future[bool] = Future()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="devloop-cluster") as pool:
        try:
            pool.submit(_run_into, creating, engine.target.ensure)  # inside the try: a Ctrl-C may come while it starts
            early = _build_beside(engine, done, said)
            images = engine.clock() - start
            while not creating.done():
                wait_futures([creating], SIGNAL_CHECK)  # bounded: a Ctrl-C is acted on meanwhile
        except BaseException:  # Ctrl-C: never wait for kind to finish a cluster nobody wants now
            if not creating.cancel() and not creating.done():  # cancelled: the creation never started
                _abandon(engine, creating)
            raise
        created = creating.result()
    cluster = engine.clock() - start
    engine.out.info(
        (f"cluster created in {cluster:.1f}s" if created else f"the cluster existed already (checked in {cluster:.1f}s)")
        + f"; meanwhile {_images_said(said, early, images)}",
        cluster_seconds=round(cluster, 3),
        images_seconds=round(images, 3),
        images={name: what for name, what in said.items()},
    )
    return done


def _run_into(future: Future[bool], fn: Callable[[], bool]) -> None:
    """Run `fn` for `future`, unless the future was cancelled first."""
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(fn())
    except BaseException as e:  # handed to whoever reads the future
        future.set_exception(e)


def _abandon(engine: Engine, creating: Future[bool]) -> None:
    """Stop `kind create cluster` now (it has no signal handling of its own: SIGTERM ends it, and the
    docker commands it started go with its process group), let the creating thread return, and have
    the target remove what kind had made. The caller raises the interrupt again."""
    while not creating.done():
        terminate_all()  # again each round: the creating thread may have been between two commands
        wait_futures([creating], SIGNAL_CHECK)
    engine.target.abandon_creation()


def _build_beside(engine: Engine, done: dict[str, tuple[bool, bool]], said: dict[str, str]) -> bool:
    """Every image built and, when the way allows, pushed (then True: the transport started early),
    while the cluster is created. Records each image's fate in `done` and `said`."""
    early = False
    try:
        early = engine.target.publisher.start_early()
    except DevloopError as e:
        engine.out.detail(f"starting the image transport beside the cluster's creation: {e.message} (the first cycle tries again)")
    for svc in engine.services:
        if svc.image is None:
            continue  # nothing to build: its manifests' own images
        built: bool | None = None
        try:
            ref = engine.image_ref(svc)
            built = engine.build(svc, ref)
            moved = early and engine.target.publisher.publish(
                ref, functools.partial(engine.out.info_for, svc.name), functools.partial(engine.out.progress, svc.name)
            )
            done[svc.name] = (built, bool(moved))
            said[svc.name] = _image_said(built, bool(moved), early)
        except DevloopError as e:
            said[svc.name] = "failed to build" if built is None else ("built" if built else "already built") + ", its push failed"
            engine.out.detail(
                f"{svc.name}: building beside the cluster's creation: {e.message} (the first cycle tries again)", service=svc.name
            )
    return early


def _image_said(built: bool, moved: bool, early: bool) -> str:
    if not early:
        return "built" if built else "already built"
    if built:
        return "built and pushed" if moved else "built (the registry had it)"
    return "already built, pushed" if moved else "already built and pushed"


def _images_said(said: dict[str, str], early: bool, seconds: float) -> str:
    """What happened to the images beside the cluster's creation: "every image built and pushed"
    only when it is so; otherwise each group named, a failure with what happens next."""
    whole = "built and pushed" if early else "built"
    if said and all(what == whole for what in said.values()):
        return f"every image {whole} in {seconds:.1f}s"
    groups: dict[str, list[str]] = {}
    for name, what in said.items():
        groups.setdefault(what, []).append(name)
    parts = [f"{', '.join(names)} {what}" for what, names in groups.items()]
    failed = [n for n, what in said.items() if "fail" in what]
    if failed:
        parts.append("the first cycle tries " + ("it" if len(failed) == 1 else "them") + " again")
    return f"({seconds:.1f}s): " + ("; ".join(parts) or "no image to build")


def ensure_monitoring(engine: Engine) -> None:
    """Prometheus in the cluster, reading the user's scrape ConfigMap (applied by the first cycle).
    A monitoring problem is a warning: the app's loop does not depend on it."""
    mon = engine.monitoring()
    if mon is None:
        return
    try:
        engine.target.side_load(engine.config.monitoring.image)
        with engine.out.activity("starting Prometheus"):
            if mon.ensure(engine.out):
                engine.out.info(f"monitoring: Prometheus ready ({mon.where}), reading ConfigMap {engine.config.monitoring.config_map}")
    except DevloopError as e:
        engine.out.warn(f"monitoring: {e.message}" + "".join(f"\n  {d}" for d in getattr(e, "details", [])), e.hint)
