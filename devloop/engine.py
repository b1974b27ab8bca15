"""The engine: executes a plan, one cycle at a time, for every service it names.

    plan ─► per service, concurrently: build ─► publish ─► deploy ─► wait ready ─► (rollback)
                                  └─► sync (live update) ─┘

The plan decides and the engine does exactly what each `ServiceChange` says: `sync` copies files
into the running replicas (live.py; a sync that cannot be honest falls back to a rebuild);
`rebuild` builds (when the content tag is new), publishes, applies and waits; `reapply` alone
applies the manifests with the image the cluster runs and waits. Every port is given (wiring.py
builds them); where images go and what the cluster is belongs to the `Target`.

`Engine` owns the deployment state (`ServiceState` per service); only the thread that calls `run()`
changes it (each service's task touches its own state and nothing else while the cycle runs).
Adapters raise neutral errors; the engine adds the phase. A failure in one service is reported for
that service; the others go on.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from devloop import bringup, debugger, kinds, live
from devloop import manifests as mf
from devloop.config import Config, ServiceConfig
from devloop.errors import CycleFailed, DevloopError
from devloop.gate import StartOrder
from devloop.hasher import ContextHasher, content_tag
from devloop.model import ImageRef, ServiceState
from devloop.monitoring import Monitoring
from devloop.output import Output
from devloop.ownership import Applier
from devloop.plan import Plan, ServiceChange, ServiceLayout, needing_images
from devloop.ports import Builder, Charts, Cluster, ImageStore
from devloop.proc import SIGNAL_CHECK
from devloop.project import Deployed, Project
from devloop.rollout import Rollout
from devloop.targets import Target


@dataclass
class ServiceResult:
    service: str
    ok: bool = False
    skipped: bool = False
    image: ImageRef | None = None
    phases: dict[str, float] = field(default_factory=dict)
    error: CycleFailed | None = None
    ready_pods: list[str] = field(default_factory=list)
    built: bool = False
    published: bool = False
    synced: bool = False
    outcome: str = ""  # after a failure: what serves now (checked), e.g. "rolled back to X, which serves again"
    rolled_back: bool = False  # the previous version was rolled out again and serves


class Engine:
    def __init__(
        self,
        config: Config,
        out: Output,
        *,
        images: ImageStore,
        builder: Builder,
        kube: Cluster,
        target: Target,
        charts: Charts | None = None,
        clock: Callable[[], float] = time.monotonic,
        force_conflicts: bool = False,
        hold: Callable[[str, Callable[[str], None]], None] | None = None,
    ) -> None:
        self.config = config
        self.hold = hold  # before a service is deployed (commands' blocksDeploy): returns, or raises CycleFailed
        self.out = out
        self.images = images
        self.builder = builder
        self.kube = kube
        self.target = target
        self.clock = clock
        self.hasher = ContextHasher()
        self.project = Project(config, kube, target.spec, out, charts)
        self._stop = threading.Event()
        self.rollout = Rollout(kube, out, clock, self._stop)
        # forced on the cluster devloop owns; elsewhere another manager's field is refused unless --force-conflicts
        self.applier = Applier(kube, out, owned=target.owns_cluster, take=force_conflicts, where=target.describe())
        self.live = live.LiveSync(kube, out, self.rollout, clock, self._stop)
        self.channels = self.live.channels  # the session opens them after a rollout
        self.state: dict[str, ServiceState] = {s.name: ServiceState() for s in config.services}
        self.cycles = 0
        self.cluster_gone = False
        self.start_order = StartOrder(lambda s: s in self.state and self.state[s].failed, self._stop)  # dependsOn
        self._build_slots = threading.Semaphore(max(2, (os.cpu_count() or 2) // 2))

    # -- the project --------------------------------------------------------------------------------
    def reconfigure(self, config: Config) -> list[str]:
        """Take a reloaded configuration (services added, removed or changed). Returns what
        cannot change without a restart; those parts keep their old values."""
        kept = []
        if config.cluster != self.config.cluster:
            kept.append("cluster")
            config = config.model_copy(update={"cluster": self.config.cluster})
        self.target.reconfigure(config)
        self.project.reconfigure(config)
        self.config = config
        self.state = {s.name: self.state.get(s.name) or ServiceState() for s in config.services}
        return kept

    @property
    def services(self) -> tuple[ServiceConfig, ...]:
        return self.config.services

    def manifests(self, svc: ServiceConfig) -> Deployed:
        return self.project.manifests(svc)

    def namespace(self, svc: ServiceConfig) -> str:
        return self.project.namespace(svc)

    def layouts(self) -> list[ServiceLayout]:
        return self.project.layouts()

    def config_files(self) -> list[str]:
        return self.project.config_files()

    def check_manifests(self) -> list[Deployed]:
        return self.project.check()

    def image_ref(self, svc: ServiceConfig) -> ImageRef:
        img = svc.image
        if img is None:  # a service without image: what its main workload runs, as the manifest says
            return self.manifests(svc).image(svc.name)
        args = dict(img.build_args)
        if img.target:
            args["\0target"] = img.target
        return ImageRef(img.name, content_tag(self.hasher.digest(img.context, img.dockerfile, args)), self.target.publisher.registry)

    # -- cluster --------------------------------------------------------------------------------
    def prepare_cluster(self) -> None:
        """The cluster (created when missing) and the way images get into it (the local registry,
        or a remote target's registry: reachable, TLS trusted, credentials accepted)."""
        self.target.ensure()
        with self.out.activity("preparing the image transport"):
            if self.target.publisher.prepare():
                self.out.info(f"local registry {self.target.publisher.registry} ready")
        self.target.prepared({self.namespace(s) for s in self.services})

    def up(self) -> list[ServiceResult]:
        """`up`: the cluster and its image transport ready, every service rolled out, monitoring started (bringup.py)."""
        return bringup.up(self)

    def monitoring(self) -> Monitoring | None:
        m = self.config.monitoring
        if not m.enabled or not self.target.owns_cluster:  # dev monitoring is for the local cluster
            return None
        return Monitoring(m, self.kube, m.namespace or self.namespace(self.services[0]))

    def stop(self) -> None:
        self._stop.set()
        self.live.close()

    # -- one cycle ------------------------------------------------------------------------------
    def run(self, plan: Plan) -> list[ServiceResult]:
        """Execute the plan's service changes concurrently; one result per service."""
        reapplied = {c.service for c in plan.services if c.reapply and not c.rebuild and not c.sync and c.service in self.state}
        plan = needing_images(plan, {s for s in reapplied if self._stale(s)})  # content tags only where a re-apply may need one
        changes = []
        skipped = []
        for c in plan.services:
            if c.service not in self.state:
                continue
            if c.manifest_files or c.reapply:
                self.project.forget(c.service)  # its manifests are read again, once, for this cycle
            if self._unchanged(c):
                skipped.append(ServiceResult(c.service, ok=True, skipped=True))
                self.out.skipped("image content unchanged", list(c.trigger_files), service=c.service)
                st = self.state[c.service]
                if st.failed and st.applied is not None:  # e.g. a broken build undone: say it is behind us
                    st.failed = False
                    self.out.info(f"{c.service}: back to {st.applied.tag}, which the cluster runs (rollout completed)", service=c.service)
            else:
                changes.append(c)
        depends = {s.name: s.depends_on for s in self.services}
        more = self.start_order.begin(depends, [c.service for c in changes])
        changes += [ServiceChange(s, rebuild=True, reapply=True, reason=why) for s, why in more]
        if not changes:
            return skipped
        self.cycles += 1
        number = self.cycles
        files = list(dict.fromkeys(f for c in changes for f in c.trigger_files))
        self.out.cycle_start(
            number, "; ".join(sorted({c.reason for c in changes if c.reason})), files, services=[c.service for c in changes]
        )
        if self.cluster_gone:
            try:
                self.prepare_cluster()
                self.cluster_gone = False
                for st in self.state.values():
                    st.forget()  # a new cluster runs nothing yet
            except DevloopError as e:
                err = CycleFailed.of("cluster", e)
                results = [ServiceResult(c.service, error=err) for c in changes]
                for r, c in zip(results, changes, strict=True):
                    self._report(number, c, r, 0.0)
                return results
        if len(changes) == 1:
            return [*skipped, self._run_one(number, changes[0])]
        with ThreadPoolExecutor(max_workers=len(changes), thread_name_prefix="devloop-service") as pool:
            running = [pool.submit(self._run_one, number, c) for c in changes]
            while not all(f.done() for f in running):
                wait_futures(running, SIGNAL_CHECK)  # bounded: a Ctrl-C is acted on meanwhile
            return [*skipped, *(f.result() for f in running)]

    def _stale(self, service: str) -> bool:
        """The cluster does not run the service's current sources as an image (never applied, files
        live-synced over it, or sources changed since a failed build): re-applying needs an image."""
        st = self.state[service]
        if st.applied is None or st.synced or self.cluster_gone:
            return True
        try:
            return st.applied != self.image_ref(self.config.service(service))
        except DevloopError:
            return True

    def _unchanged(self, change: ServiceChange) -> bool:
        """Nothing to do: the cluster runs exactly this content, completely (known, not assumed:
        `healthy` is only set by a rollout devloop watched complete)."""
        if change.reapply or self.cluster_gone:
            return False
        st = self.state[change.service]
        try:
            return st.healthy and st.running == self.image_ref(self.config.service(change.service))
        except DevloopError:
            return False

    def _run_one(self, number: int, change: ServiceChange) -> ServiceResult:
        start = self.clock()
        svc = self.config.service(change.service)
        result = ServiceResult(svc.name)
        try:
            self._service_cycle(svc, change, result)
        except DevloopError as e:
            result.error = self._as_failure(e)
        except Exception as e:  # a bug in one service's task must not take the others down
            result.error = CycleFailed("internal", f"{type(e).__name__}: {e}", "run with --debug and report it")
        result.ok = result.error is None
        self.start_order.finish(svc.name, result.ok)
        if not result.synced:
            self.state[svc.name].failed = not result.ok
        self._report(number, change, result, self.clock() - start)
        return result

    @contextmanager
    def _phase(self, svc: str, result: ServiceResult, name: str) -> Iterator[None]:
        self.out.phase_start(name, service=svc)
        start = self.clock()
        try:
            yield
        except DevloopError as e:
            raise CycleFailed.of(name, e) from None
        finally:
            result.phases[name] = self.clock() - start

    def _service_cycle(self, svc: ServiceConfig, change: ServiceChange, result: ServiceResult) -> None:
        st = self.state[svc.name]
        deployed = self.manifests(svc)
        ref = self.image_ref(svc)
        result.image = ref
        if change.sync:
            self._wait_until_allowed(svc, deployed, result, dependencies=False)  # a sync is a deploy too (blocksDeploy)
            # after a failed liveUpdate.run step: its files and steps go again (files reached only one replica)
            files = tuple(sorted(set(change.sync) | st.unsynced))
            steps = tuple(sorted(set(change.run) | st.unrun))
            try:
                with self._phase(svc.name, result, "sync"):
                    result.ready_pods = self.live.sync(svc, deployed, st, files, steps)
                ran = f", ran {len(steps)} liveUpdate.run steps" if steps else ""
                self.out.phase_done(
                    "sync", result.phases["sync"], f"{len(files)} files into {len(result.ready_pods)} pods{ran}", service=svc.name
                )
                st.live_synced(files, ref)
                result.image = st.good
                result.synced = True
                return
            except live.RunFailed as e:  # no rebuild: the app was not restarted, the next save runs the steps again
                st.run_failed(files, steps)
                result.outcome = e.outcome
                raise
            except (live.NoSync, CycleFailed) as e:
                result.phases.pop("sync", None)
                self.out.detail(f"{svc.name}: live update not possible ({e}); rebuilding", service=svc.name)
        if svc.image is None:
            pass  # nothing to build: the manifests' own images
        elif change.rebuild or change.sync:  # a sync that could not be done is a rebuild
            with self._phase(svc.name, result, "build"):
                result.built = self.build(svc, ref)
            self.out.phase_done("build", result.phases["build"], "built" if result.built else "up to date", service=svc.name)
            with self._phase(svc.name, result, "publish"):
                with self.out.activity(f"publishing {ref.local}"):
                    moved = self.target.publisher.publish(
                        ref, functools.partial(self.out.info_for, svc.name), functools.partial(self.out.progress, svc.name)
                    )
                result.published = bool(moved)
            self.out.phase_done("publish", result.phases["publish"], moved or "already there", service=svc.name)
        elif st.applied is not None:  # the manifests alone: the image the cluster runs
            ref = result.image = st.applied
        self._wait_until_allowed(svc, deployed, result, dependencies=True)
        with self._phase(svc.name, result, "deploy"):
            for image in deployed.foreign_images(
                {s.image.name for s in self.services if s.image}
            ):  # images nobody builds that Docker has here: into kind's nodes
                self.target.side_load(image)
            applied = self.deploy(svc, deployed, ref)
            st.applying(ref)
        self.out.phase_done("deploy", result.phases["deploy"], "; ".join(applied), service=svc.name)
        try:
            with self._phase(svc.name, result, "rollout"):
                result.ready_pods, revision = self.rollout.wait_ready(svc, deployed, ref if svc.image else None)
        except CycleFailed as e:
            result.outcome, result.rolled_back, result.ready_pods = self.rollout.after_failure(
                svc, deployed, st, ref, lambda good: self.deploy(svc, deployed, good)
            )
            raise e from None
        self.out.phase_done("rollout", result.phases["rollout"], deployed.summary(result.ready_pods), service=svc.name)
        st.rolled_out(ref, revision)
        if svc.image is not None:
            self._tidy(svc, {r.tag for r in (st.good, st.applied) if r})

    def _wait_until_allowed(self, svc: ServiceConfig, deployed: Deployed, result: ServiceResult, *, dependencies: bool) -> None:
        """Before anything of the service reaches the cluster: its dependencies ready (dependsOn), and
        `hold` (commands' blocksDeploy) letting it go. When one refuses, says what serves, asked."""
        try:
            if dependencies:
                self.start_order.hold(svc.name, lambda said: self.out.progress(svc.name, said))
            if self.hold is not None:
                self.hold(svc.name, lambda said: self.out.progress(svc.name, said))
        except CycleFailed:
            if not self._stop.is_set():  # nothing of it was applied: what serves, asked
                result.outcome = self.rollout.still_serving(deployed.namespace, deployed.deployment)
            raise

    # -- steps ------------------------------------------------------------------------------------
    def build(self, svc: ServiceConfig, ref: ImageRef) -> bool:
        """Build unless an image with this content tag exists. True when it built."""
        if self.images.exists(ref.local):
            return False
        img = svc.built
        with self._build_slots, self.out.activity(f"building {ref.local}"):
            self.builder.build(
                img.context,
                img.dockerfile,
                ref.local,
                img.build_args,
                img.target,
                lambda line: self.out.detail(line, service=svc.name),
                secrets=img.secret_files,
                secret_env=img.secret_env,
            )
        return True

    def render(
        self, svc: ServiceConfig, deployed: Deployed, ref: ImageRef, *, dev: bool = True, version: str | None = None
    ) -> list[dict[str, Any]]:
        """The manifests as applied. `dev`: with the dev-only parts (live update's restart loop, the
        rollingUpdate override); a release applies the manifests as they are, image pinned."""
        if svc.image is None:  # the manifests as they are: devloop swaps no image in
            return [m.doc for m in deployed.docs]
        command: Callable[[dict[str, Any]], list[str]] | None = None
        lu = svc.live_update
        # a pod spec live update cannot write in (live.cannot_write): no restart loop, said once
        looped = dev and lu.enabled and self.live.possible(svc, deployed.looped(svc.built.name))
        if looped and lu.command:
            command = lambda c: list(lu.command)  # noqa: E731
        elif looped:
            entrypoint, cmd = self.images.command(ref.local)
            command = lambda c: live.original_command(c, entrypoint, cmd)  # noqa: E731
        rendered = mf.rewrite(
            deployed.docs,
            svc.built.name,
            ref.cluster,
            command=command,
            pull_policy=self.target.pull_policy,
            pull_secret=self.target.spec.pull_secret,
            version=version,
        )
        if dev and svc.inspect.enabled:  # the Node.js inspector (debugger.py): never in a release
            for m in rendered:
                for c in mf.containers_of(m, ref.cluster):  # (the image as swapped in: on a registry's host)
                    debugger.instrument(c, svc.inspect.port)
        ru = svc.deploy.rolling_update
        if dev and ru is not None:
            rendered = mf.with_rolling_update(rendered, svc.deployment, str(ru.max_surge), str(ru.max_unavailable))
        return [m.doc for m in rendered]

    def deploy(self, svc: ServiceConfig, deployed: Deployed, ref: ImageRef) -> list[str]:
        """Apply the rendered manifests; a Job that must run again is replaced (kinds.py)."""
        docs, deleted = kinds.replace_changed(self.kube, self.render(svc, deployed, ref), deployed.namespace)
        return deleted + self.applier.apply(docs, deployed.namespace)

    def _tidy(self, svc: ServiceConfig, in_use: set[str]) -> None:
        """After a successful rollout: keep the newest few content tags in Docker, and let the target
        collect its own old versions in the background; tidying never fails a cycle."""
        registry = self.target.publisher.registry
        name = svc.built.name
        repos = [name] + ([f"{registry}/{name}"] if registry else [])
        try:
            removed = self.images.prune(repos, keep=self.config.keep_versions)
            if removed:
                self.out.detail(f"{svc.name}: removed {len(removed)} old image tags", service=svc.name)
        except DevloopError:
            pass
        self.target.collect_garbage(svc.name, name, in_use)

    def _as_failure(self, e: DevloopError) -> CycleFailed:
        """Any error inside a cycle, as a failure naming its phase; notices a vanished cluster."""
        failure = CycleFailed.of("plan", e)
        if failure.phase in ("publish", "deploy", "rollout", "sync"):
            gone = self.target.vanished()
            if gone:
                self.cluster_gone = True
                return CycleFailed(failure.phase, gone, "devloop creates it again on the next save (or run `devloop up`)")
        return failure

    def _report(self, number: int, change: ServiceChange, r: ServiceResult, total: float) -> None:
        self.out.cycle_done(
            number,
            service=r.service,
            phases=r.phases,
            total=total,
            image=str(r.image) if r.image else None,
            error=r.error,
            files=list(change.trigger_files),
            reason=change.reason,
            outcome=r.outcome,
            synced=r.synced,
        )
