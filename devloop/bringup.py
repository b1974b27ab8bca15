"""`up`: everything a developer needs before the first save, from nothing if need be.

    the cluster (created when missing, while every image is built and, when the way allows,
    pushed) ─► its image transport ─► every service rolled out ─► Prometheus (dev monitoring)

Used by `devloop up` and at the start of `devloop dev`; the cycle itself is the engine's.
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import TYPE_CHECKING

from devloop.errors import DevloopError
from devloop.plan import everything
from devloop.proc import SIGNAL_CHECK

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
    A failure here is left for that cycle to report in its phase."""
    start = engine.clock()
    done: dict[str, tuple[bool, bool]] = {}
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="devloop-cluster") as pool:
        creating = pool.submit(engine.target.ensure)
        images = 0.0
        try:
            early = engine.target.publisher.start_early()
            for svc in engine.services:
                ref = engine.image_ref(svc)
                built = engine.build(svc, ref)
                moved = early and engine.target.publisher.publish(
                    ref, functools.partial(engine.out.info_for, svc.name), functools.partial(engine.out.progress, svc.name)
                )
                done[svc.name] = (built, bool(moved))
            images = engine.clock() - start
        except DevloopError as e:
            engine.out.detail(f"building beside the cluster's creation: {e.message} (the first cycle tries again)")
        while not creating.done():
            wait_futures([creating], SIGNAL_CHECK)  # bounded: a Ctrl-C is acted on meanwhile
        creating.result()
    cluster = engine.clock() - start
    what = "built and pushed" if engine.target.publisher.registry else "built"
    engine.out.info(
        f"cluster created in {cluster:.1f}s; meanwhile every image {what} in {images:.1f}s",
        cluster_seconds=round(cluster, 3),
        images_seconds=round(images, 3),
    )
    return done


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
