"""The engine: executes a plan, one cycle at a time, for every service it names.

    plan ─► per service, concurrently: build ─► publish ─► deploy ─► wait ready ─► (rollback)
                                  └─► sync (live update) ─┘

`Engine` owns all deployment state (`ServiceState` per service); only the thread that calls
`run()` changes it (each service's task touches its own state and nothing else while the cycle
runs). Adapters raise neutral errors; the engine adds the phase. A failure in one service is
reported for that service; the others go on.
"""

from __future__ import annotations

import functools
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from devloop import gc, live
from devloop import manifests as mf
from devloop.api import ApiCluster
from devloop.builder import Builder, detect_builder
from devloop.config import Config, ServiceConfig
from devloop.errors import ClusterUnavailable, ConfigError, CycleFailed, DevloopError
from devloop.hasher import ContextHasher, content_tag, read_dockerignore
from devloop.ignore import IgnoreRules
from devloop.images import Images
from devloop.kind import Kind
from devloop.kube import pod_failure, pod_images, pod_name, pod_pending_reason, pod_ready, pod_settled, rollout_progress
from devloop.model import ImageRef, ServiceState
from devloop.monitoring import Monitoring
from devloop.output import Output
from devloop.plan import Plan, ServiceChange, ServiceLayout, everything
from devloop.ports import Changes, Cluster, Clusters, ImageStore
from devloop.proc import SIGNAL_CHECK
from devloop.publish import KindLoadPublisher, Publisher, RegistryPublisher
from devloop.registry import LocalRegistry
from devloop.registry_client import RegistryClient
from devloop.remote import Address, RemotePublisher
from devloop.target import Target, require_context, resolve

POLL_INTERVAL = 0.5
WATCH_FALLBACK = 2.0  # at most this long between reads of a rollout's state when no watch event comes
SETTLE = 3.0  # seconds a container without a readiness probe must stay up before devloop calls it ready
REVISION = "deployment.kubernetes.io/revision"

_ERROR_LINE = re.compile(r"\b(?:[A-Z]\w*)?(?:Error|Exception)\b|\bERR!|\bpanic:|\bFATAL\b")


def log_excerpt(lines: list[str], size: int = 8) -> list[str]:
    """The lines of a crash log a person needs: the first error line with what led up to it
    (a Node.js SyntaxError prints file:line, the code and a caret before it), else the tail."""
    for i, line in enumerate(lines):
        if _ERROR_LINE.search(line):
            start = max(0, i - 4)
            return lines[start : start + size]
    return lines[-size:]


class _NoSync(Exception):
    """A live update cannot be done honestly here; the service rebuilds instead."""


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


@dataclass
class Deployed:
    """One service's manifests as devloop applies them."""

    docs: list[mf.Manifest]
    deployment: mf.Manifest
    namespace: str

    @property
    def selector(self) -> dict[str, str]:
        return mf.selector_of(self.deployment)

    @property
    def probed(self) -> bool:
        """Every container of the Deployment has a readiness probe."""
        containers = self.deployment.doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers") or []
        return all(c.get("readinessProbe") for c in containers)

    @property
    def replicas(self) -> int:
        return int(self.deployment.doc.get("spec", {}).get("replicas", 1))


class Engine:
    def __init__(
        self,
        config: Config,
        out: Output,
        *,
        images: ImageStore | None = None,
        kind: Clusters | None = None,
        kube: Cluster | None = None,
        builder: Builder | None = None,
        publisher: Publisher | None = None,
        clock: Callable[[], float] = time.monotonic,
        target: Target | None = None,
    ) -> None:
        self.out = out
        self.target = target or resolve(config, None)
        self._docker = images if isinstance(images, Images) else None
        self.images: ImageStore = images or self.docker
        self.kind: Clusters = kind or Kind()
        self.kube: Cluster = kube or ApiCluster(self.target.context)
        self.clock = clock
        self.hasher = ContextHasher()
        self._builder = builder
        self._publisher = publisher
        self._own_publisher = publisher is None
        self.config = config
        self.state: dict[str, ServiceState] = {s.name: ServiceState() for s in config.services}
        self.cycles = 0
        self.cluster_gone = False
        self._context_ns: str | None = None
        self._checked = False
        self._gc_lock = threading.Lock()
        self._gc_running: set[str] = set()  # services with a garbage collection under way (under _gc_lock)
        self._stop = threading.Event()
        self._build_slots = threading.Semaphore(max(2, (os.cpu_count() or 2) // 2))
        self.restarts = live.RestartPacer(clock)  # live update: restarts paced for the liveness probes
        self.channels = live.Channels(lambda pod, ns, argv: self.kube.exec_stream(pod, ns, argv))  # one exec channel per replica
        self._said_channel = False

    # -- wiring ---------------------------------------------------------------------------------
    def reconfigure(self, config: Config) -> list[str]:
        """Take a reloaded configuration (services added, removed or changed). Returns what
        cannot change without a restart; those parts keep their old values."""
        kept = []
        if config.cluster != self.config.cluster:
            kept.append("cluster")
            config = config.model_copy(update={"cluster": self.config.cluster})
        if config.registry != self.config.registry and self._own_publisher:
            self._publisher = None
        self.config = config
        self.state = {s.name: self.state.get(s.name) or ServiceState() for s in config.services}
        return kept

    @property
    def docker(self) -> Images:
        """The docker SDK adapter (for the real publishers and builders)."""
        if self._docker is None:
            self._docker = Images()
        return self._docker

    @property
    def publisher(self) -> Publisher:
        if self._publisher is None:
            c = self.config
            if self.target.remote:
                address = Address.parse(self.target.registry)
                self._publisher = RemotePublisher(self.docker, RegistryClient(address.host, insecure=self.target.insecure), address)
            elif c.registry_enabled:
                self._publisher = RegistryPublisher(LocalRegistry(c.registry, self.docker, self.kube), self.kind, c.cluster.name)
            else:
                self._publisher = KindLoadPublisher(self.docker, self.kind, c.cluster.name)
        return self._publisher

    @property
    def builder(self) -> Builder:
        if self._builder is None:
            self._builder = detect_builder(self.docker)
        return self._builder

    @property
    def services(self) -> tuple[ServiceConfig, ...]:
        return self.config.services

    def layout(self, svc: ServiceConfig) -> ServiceLayout:
        rules = IgnoreRules(tuple(read_dockerignore(svc.image.context)), svc.image.dockerfile, self.config.watch.ignore)
        files, dirs, kustomize = mf.inputs(svc.manifests)
        fallback = svc.live_update.fallback if svc.live_update.enabled else None
        owned = self._owned_files(svc)
        mine = {str(f) for f in files if owned is None or str(f) in owned}
        foreign = tuple(sorted({str(f) for f in files} - mine))
        manifests = tuple(sorted(mine | {str(d) for d in dirs}))
        return ServiceLayout(svc.name, str(svc.image.context), rules, manifests, tuple(str(k) for k in kustomize), foreign, fallback)

    def layouts(self) -> list[ServiceLayout]:
        return [self.layout(s) for s in self.services]

    def config_files(self) -> list[str]:
        c = self.config
        return [str(p) for p in (c.file.resolve() if c.file else None, c.cluster.kind_config) if p is not None]

    def _owned_files(self, svc: ServiceConfig) -> set[str] | None:
        """Files of a shared manifests set that hold this service's objects (None: all of them)."""
        try:
            return {m.source for m in self.manifests(svc).docs}
        except DevloopError:
            return None

    def context_namespace(self) -> str:
        if self._context_ns is None:
            self._context_ns = self.kube.context_namespace()
        return self._context_ns

    def manifests(self, svc: ServiceConfig) -> Deployed:
        """This service's objects: its files, without the Deployments of other services that share them."""
        docs = mf.load(svc.manifests, self.kube.kustomize)
        others = {s.deployment for s in self.services if s.name != svc.name}
        docs = mf.select(docs, svc.deployment, others)
        deployment = mf.find(docs, "Deployment", svc.deployment)
        if deployment is None:
            raise ConfigError(
                f"service {svc.name}: no Deployment named {svc.deployment!r} in {', '.join(map(str, svc.manifests))}",
                "set deploy.deployment in devloop.yaml to the Deployment devloop should roll out",
            )
        mf.require_image_user(docs, svc.image.name)
        declared = mf.namespace_of(deployment, "")
        wanted = self.target.namespace
        if wanted and declared and declared != wanted:
            raise ConfigError(
                f"service {svc.name}: Deployment {svc.deployment} says namespace {declared!r}, target {self.target.name} says {wanted!r}",
                "remove metadata.namespace from the manifest or the target's namespace (one place decides)",
            )
        ns = wanted or declared or svc.deploy.namespace or self.context_namespace()
        return Deployed(docs, deployment, ns)

    def namespace(self, svc: ServiceConfig) -> str:
        try:
            return self.manifests(svc).namespace
        except DevloopError:
            return svc.deploy.namespace or self.context_namespace()

    def image_ref(self, svc: ServiceConfig) -> ImageRef:
        img = svc.image
        args = dict(img.build_args)
        if img.target:
            args["\0target"] = img.target
        return ImageRef(img.name, content_tag(self.hasher.digest(img.context, img.dockerfile, args)), self.publisher.registry)

    # -- cluster --------------------------------------------------------------------------------
    def ensure_cluster(self) -> bool:
        if self.target.remote:  # never created (nor deleted, nor pruned) by devloop
            self.require_target()
            return False
        name = self.config.cluster.name
        if self.kind.exists(name):
            self.kube.require_reachable(name)
            return False
        self.out.info(f"creating kind cluster {name!r} from {self.config.cluster.kind_config.name} (this takes a minute)")
        with self.out.activity(f"creating kind cluster {name}"):
            self.kind.create(name, self.config.cluster.kind_config, self.config.cluster.node_image)
        return True

    def require_target(self) -> None:
        """A remote target: its context exists in the kubeconfig and its API server answers."""
        require_context(self.target, self.kube.contexts())
        if not self.kube.reachable():
            raise ClusterUnavailable(
                f"{self.target.describe()}: the API server does not answer",
                f"check `kubectl --context {self.target.context} get --raw /readyz` (VPN, credentials)",
            )

    def require_pull_secret(self, namespaces: set[str]) -> None:
        """The target's imagePullSecret exists where the pods run (devloop names it, never reads it)."""
        secret = self.target.pull_secret
        if not secret:
            return
        for ns in sorted(namespaces):
            if self.kube.get("secret", secret, ns) is None:
                raise ConfigError(
                    f"{self.target.describe()}: no secret {secret!r} in namespace {ns}",
                    f"create it: kubectl --context {self.target.context} -n {ns} create secret docker-registry {secret} "
                    f"--docker-server={Address.parse(self.target.registry).host} --docker-username=… --docker-password=…",
                )

    def prepare_cluster(self) -> None:
        """The cluster (created when missing) and the way images get into it (the local registry,
        or a remote target's registry: reachable, TLS trusted, credentials accepted)."""
        self.ensure_cluster()
        with self.out.activity("preparing the image transport"):
            if self.publisher.prepare():
                self.out.info(f"local registry {self.publisher.registry} ready")
        if self.target.remote:
            self.require_pull_secret({self.namespace(s) for s in self.services})
            self.out.info(f"{self.target.describe()}: API server and registry {self.target.registry} answer; credentials accepted")

    def check_manifests(self) -> list[Deployed]:
        """Bad manifests are a usage error before anything is created; warn (once) about missing probes."""
        if self._checked:
            return []
        self._checked = True
        found = []
        for svc in self.services:
            d = self.manifests(svc)
            found.append(d)
            for c in mf.containers_of(d.deployment, svc.image.name):
                if not c.get("readinessProbe"):
                    self.out.warn(
                        f"service {svc.name}: Deployment {svc.deployment} has no readinessProbe: a broken version takes the "
                        "service down before devloop can see it crash",
                        "add a readinessProbe (e.g. httpGet on a health path); devloop still rolls back a failed rollout",
                    )
                    break
        return found

    def up(self) -> list[ServiceResult]:
        self.check_manifests()
        self.images.ping()
        early: dict[str, tuple[bool, bool]] = {}
        if not self.target.remote and not self.kind.exists(self.config.cluster.name):
            early = self._up_from_nothing()
        self.prepare_cluster()
        results = self.run(everything(self.layouts(), "up"))
        for r in results:  # what this `up` built and pushed beside the cluster's creation counts as its own
            built, published = early.get(r.service, (False, False))
            r.built, r.published = r.built or built, r.published or published
        self.ensure_monitoring()
        return results

    def _up_from_nothing(self) -> dict[str, tuple[bool, bool]]:
        """No cluster yet (onboarding, a demo): create it while every image is built and, when the
        way allows (the local registry), pushed; the cycle after it then only wires and rolls out.
        A failure here is left for that cycle to report in its phase."""
        start = self.clock()
        done: dict[str, tuple[bool, bool]] = {}
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="devloop-cluster") as pool:
            creating = pool.submit(self.ensure_cluster)
            images = 0.0
            try:
                early = self.publisher.start_early()
                for svc in self.services:
                    ref = self.image_ref(svc)
                    built = self.build(svc, ref)
                    moved = early and self.publisher.publish(ref, functools.partial(self._note, svc.name), self._progress(svc.name))
                    done[svc.name] = (built, bool(moved))
                images = self.clock() - start
            except DevloopError as e:
                self.out.detail(f"building beside the cluster's creation: {e.message} (the first cycle tries again)")
            while not creating.done():
                wait_futures([creating], SIGNAL_CHECK)  # bounded: a Ctrl-C is acted on meanwhile
            creating.result()
        cluster = self.clock() - start
        what = "built and pushed" if self.publisher.registry else "built"
        self.out.info(
            f"cluster created in {cluster:.1f}s; meanwhile every image {what} in {images:.1f}s",
            cluster_seconds=round(cluster, 3),
            images_seconds=round(images, 3),
        )
        return done

    def monitoring(self) -> Monitoring | None:
        m = self.config.monitoring
        if not m.enabled or self.target.remote:  # dev monitoring is for the local cluster
            return None
        return Monitoring(m, self.kube, m.namespace or self.namespace(self.services[0]))

    def ensure_monitoring(self) -> None:
        """Prometheus in the cluster, reading the user's scrape ConfigMap (applied by the first cycle).
        A monitoring problem is a warning: the app's loop does not depend on it."""
        mon = self.monitoring()
        if mon is None:
            return
        image = self.config.monitoring.image
        try:
            if self.images.exists(image):  # a local image (offline build): the nodes cannot pull it
                KindLoadPublisher(self.docker, self.kind, self.config.cluster.name).load(image, self.out.info)
            with self.out.activity("starting Prometheus"):
                if mon.ensure(self.out):
                    self.out.info(f"monitoring: Prometheus ready ({mon.where}), reading ConfigMap {self.config.monitoring.config_map}")
        except DevloopError as e:
            self.out.warn(f"monitoring: {e.message}" + "".join(f"\n  {d}" for d in getattr(e, "details", [])), e.hint)

    def _note(self, service: str, message: str) -> None:
        self.out.info(f"{service}: {message}", service=service)

    def _progress(self, service: str) -> Callable[[str], None]:
        return functools.partial(self.out.progress, service)

    def stop(self) -> None:
        self._stop.set()
        self.channels.close()

    # -- one cycle ------------------------------------------------------------------------------
    def run(self, plan: Plan) -> list[ServiceResult]:
        """Execute the plan's service changes concurrently; one result per service."""
        changes = []
        skipped = []
        for c in plan.services:
            if c.service not in self.state:
                continue
            if self._unchanged(c):
                skipped.append(ServiceResult(c.service, ok=True, skipped=True))
                self.out.skipped("image content unchanged", list(c.trigger_files), service=c.service)
                st = self.state[c.service]
                if st.failed and st.applied is not None:  # e.g. a broken build undone: say it is behind us
                    st.failed = False
                    self.out.info(f"{c.service}: back to {st.applied.tag}, which the cluster runs (rollout completed)", service=c.service)
            else:
                changes.append(c)
        if not changes:
            return skipped
        self.cycles += 1
        number = self.cycles
        files = [f for c in changes for f in c.trigger_files]
        self.out.cycle_start(
            number, "; ".join(sorted({c.reason for c in changes if c.reason})), files, services=[c.service for c in changes]
        )
        if self.cluster_gone:
            try:
                self.prepare_cluster()
                self.cluster_gone = False
                for st in self.state.values():
                    st.__init__()  # type: ignore[misc]  # a new cluster runs nothing yet
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
            result.error = self._as_failure(e, result)
        except Exception as e:  # a bug in one service's task must not take the others down
            result.error = CycleFailed("internal", f"{type(e).__name__}: {e}", "run with --debug and report it")
        result.ok = result.error is None
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
        if change.sync and svc.live_update.enabled:
            try:
                with self._phase(svc.name, result, "sync"):
                    result.ready_pods = self.sync(svc, deployed, st, change.sync)
                self.out.phase_done(
                    "sync", result.phases["sync"], f"{len(change.sync)} files into {len(result.ready_pods)} pods", service=svc.name
                )
                st.synced.update(change.sync)
                st.live_ref = ref
                result.image = st.good
                result.synced = True
                return
            except (_NoSync, CycleFailed) as e:
                result.phases.pop("sync", None)
                self.out.detail(f"{svc.name}: live update not possible ({e}); rebuilding", service=svc.name)
        with self._phase(svc.name, result, "build"):
            result.built = self.build(svc, ref)
        self.out.phase_done("build", result.phases["build"], "built" if result.built else "up to date", service=svc.name)
        with self._phase(svc.name, result, "publish"):
            with self.out.activity(f"publishing {ref.local}"):
                moved = self.publisher.publish(ref, functools.partial(self._note, svc.name), self._progress(svc.name))
            result.published = bool(moved)
        self.out.phase_done("publish", result.phases["publish"], moved or "already there", service=svc.name)
        with self._phase(svc.name, result, "deploy"):
            applied = self.deploy(svc, deployed, ref)
            st.applied, st.healthy = ref, False
        self.out.phase_done("deploy", result.phases["deploy"], "; ".join(applied), service=svc.name)
        try:
            with self._phase(svc.name, result, "rollout"):
                result.ready_pods, revision = self.wait_ready(svc, deployed, ref)
        except CycleFailed as e:
            result.outcome, result.rolled_back, result.ready_pods = self._after_failure(svc, deployed, st, ref)
            raise e from None
        self.out.phase_done(
            "rollout", result.phases["rollout"], f"{len(result.ready_pods)}/{deployed.replicas} pods ready", service=svc.name
        )
        st.rolled_out(ref, revision)
        self._prune(svc)
        self._collect_garbage(svc, {r.tag for r in (st.good, st.applied) if r})

    # -- steps ------------------------------------------------------------------------------------
    def build(self, svc: ServiceConfig, ref: ImageRef) -> bool:
        """Build unless an image with this content tag exists. True when it built."""
        if self.images.exists(ref.local):
            return False
        img = svc.image
        with self._build_slots, self.out.activity(f"building {ref.local}"):
            self.builder.build(
                img.context, img.dockerfile, ref.local, img.build_args, img.target, lambda line: self.out.detail(line, service=svc.name)
            )
        return True

    def render(self, svc: ServiceConfig, deployed: Deployed, ref: ImageRef, *, dev: bool = True, version: str | None = None) -> str:
        """The manifests as applied. `dev`: with the dev-only parts (live update's restart loop, the
        rollingUpdate override); a release applies the manifests as they are, image pinned."""
        command: Callable[[dict[str, Any]], list[str]] | None = None
        lu = svc.live_update
        if dev and lu.enabled and lu.command:
            command = lambda c: list(lu.command)  # noqa: E731
        elif dev and lu.enabled:
            entrypoint, cmd = self.images.command(ref.local)
            command = lambda c: live.original_command(c, entrypoint, cmd)  # noqa: E731
        remote = self.target.remote
        rendered = mf.rewrite(
            deployed.docs,
            svc.image.name,
            ref.cluster,
            command=command,
            pull_policy=None if remote else "IfNotPresent",
            pull_secret=self.target.pull_secret,
            version=version,
        )
        ru = svc.deploy.rolling_update
        if dev and ru is not None:
            rendered = mf.with_rolling_update(rendered, svc.deployment, str(ru.max_surge), str(ru.max_unavailable))
        return mf.to_yaml(rendered)

    def deploy(self, svc: ServiceConfig, deployed: Deployed, ref: ImageRef) -> list[str]:
        return self.kube.apply(self.render(svc, deployed, ref), deployed.namespace)

    def wait_ready(self, svc: ServiceConfig, deployed: Deployed, ref: ImageRef | str) -> tuple[list[str], str]:
        """Wait until the rollout of `ref` (or an image reference as the pods name it) is complete:
        (ready pods, the Deployment's revision)."""
        image = ref if isinstance(ref, str) else ref.cluster
        name, ns = svc.deployment, deployed.namespace
        timeout = svc.deploy.rollout_timeout
        deadline = self.clock() + timeout
        feed = self.kube.changes(ns)
        with self.out.activity(f"rolling out {name}"):
            last = ""
            while True:
                seen = feed.generation
                dep = self.kube.get("deployment", name, ns)
                if dep is None:
                    raise CycleFailed("rollout", f"deployment {name} disappeared during the rollout", "`devloop up` applies it again")
                done, message = rollout_progress(dep)
                pods = self.kube.pods(ns, deployed.selector)
                if done and not deployed.probed:
                    # no readiness probe: a pod is "ready" the moment its process starts, even one that
                    # crashes a second later. Ready means it stayed up for a moment (checked, not assumed).
                    young = [pod_name(p) for p in pods if image in pod_images(p) and not pod_settled(p, SETTLE, time.time())]
                    if young:
                        done, message = False, f"{len(young)} new pods started less than {SETTLE:.0f}s ago (no readiness probe)"
                if done:
                    revision = str(dep.get("metadata", {}).get("annotations", {}).get(REVISION, ""))
                    return [pod_name(p) for p in pods if pod_ready(p) and image in pod_images(p)], revision
                if message != last:
                    self.out.progress(svc.name, message)
                    last = message
                for p in pods:
                    if image not in pod_images(p):
                        continue
                    reason = pod_failure(p)
                    if reason:
                        raise self._pod_failed(pod_name(p), ns, reason)
                if self.clock() >= deadline:
                    waiting = [f"{pod_name(p)}: {pod_pending_reason(p)}" for p in pods if image in pod_images(p) and not pod_ready(p)]
                    raise CycleFailed(
                        "rollout",
                        f"{name} not ready after {timeout:.0f}s ({message})",
                        "check `kubectl describe pod`; raise deploy.rolloutTimeout if the app starts slowly",
                        details=waiting[:5],
                    )
                if self._next_change(feed, seen):
                    raise CycleFailed("rollout", "stopped while waiting for the rollout")

    def _next_change(self, feed: Changes, seen: int, timeout: float = WATCH_FALLBACK) -> bool:
        """Wait for the API server's next change to the namespace's pods or Deployments after
        `seen` (at most `timeout`: a missed event costs that much, never a hang). True when stopped."""
        end = time.monotonic() + timeout
        while not self._stop.is_set():
            left = end - time.monotonic()
            if left <= 0 or feed.wait(seen, min(POLL_INTERVAL, left)):
                return self._stop.is_set()
        return True

    def _pod_failed(self, pod: str, ns: str, reason: str) -> CycleFailed:
        logs = log_excerpt(self.kube.logs(pod, ns, tail=40, previous=True) or self.kube.logs(pod, ns, tail=40))
        crash = "CrashLoop" in reason or "exited" in reason
        return CycleFailed(
            "rollout",
            f"pod {pod}: {reason}",
            "fix the code and save: devloop rolls out again" if crash else "check the image and the manifest",
            details=[f"{pod}: {line}" for line in logs],
        )

    def serving(self, deployed: Deployed, ref: ImageRef) -> int:
        """How many ready pods run this version right now (asked, not assumed)."""
        return sum(1 for p in self.kube.pods(deployed.namespace, deployed.selector) if pod_ready(p) and ref.cluster in pod_images(p))

    def _after_failure(self, svc: ServiceConfig, deployed: Deployed, st: ServiceState, failed: ImageRef) -> tuple[str, bool, list[str]]:
        """After a failed rollout: find out what serves, and roll back when Kubernetes did not keep
        the previous version serving (deploy.onFailure: rollback). Returns (what was checked,
        whether it rolled back, the pods serving after the rollback)."""
        good = st.good
        if self._stop.is_set():
            return "", False, []
        if good is None or good == failed:
            return "nothing to roll back to: no version of this service has served yet", False, []
        want = deployed.replicas
        ready = self.serving(deployed, good)
        if ready >= want:
            return f"{good.tag} keeps serving ({ready}/{want} ready pods run it; Kubernetes held the rollout)", False, []
        if svc.deploy.on_failure == "keep":
            return f"deploy.onFailure is keep: only {ready}/{want} ready pods run {good.tag}", False, []
        self.out.info(f"{svc.name}: only {ready}/{want} ready pods run {good.tag}; rolling back", service=svc.name)
        try:
            self.kube.rollout_undo(svc.deployment, deployed.namespace, st.good_revision)
            pods, revision = self.wait_ready(svc, deployed, good)
        except DevloopError as e:
            return f"rollback to {good.tag} failed: {e.message}", False, []
        st.applied, st.healthy, st.good_revision = good, True, revision
        return f"rolled back to {good.tag}, which serves again ({len(pods)}/{want} pods ready)", True, pods

    def sync(self, svc: ServiceConfig, deployed: Deployed, st: ServiceState, files: tuple[str, ...]) -> list[str]:
        """Copy files into every ready replica and restart the app there. Returns the pods, or
        raises _NoSync when a full rebuild is the honest path (pods not all ready, exec failed)."""
        if st.good is None or not st.healthy:
            raise _NoSync("no healthy version deployed yet")
        ns = deployed.namespace
        want = deployed.replicas
        good = st.good.cluster
        deadline = self.clock() + live.READY_AGAIN
        feed = self.kube.changes(ns)
        while True:
            seen = feed.generation
            pods = [p for p in self.kube.pods(ns, deployed.selector) if not p.get("metadata", {}).get("deletionTimestamp")]
            current = [p for p in pods if good in pod_images(p)]
            unready = [pod_name(p) for p in current if not pod_ready(p)]
            if len(current) == want and len(pods) == want and not unready:
                break
            # a replica devloop itself just restarted may fail a readiness probe or two: wait for it, not rebuild
            mine = len(current) == want and len(pods) == want and self.restarts.recent(unready, live.READY_AGAIN)
            if not mine or self.clock() >= deadline or self._next_change(feed, seen):
                raise _NoSync(f"{sum(pod_ready(p) for p in current)}/{want} replicas ready")
        containers = mf.containers_of(deployed.deployment, svc.image.name)
        payload = live.tar_files(svc.image.context, files)
        ports = [port for c in containers for port in live.port_args(c)]
        budget = live.restart_budget(containers)
        names = [pod_name(p) for p in current]
        self.restarts.forget_except(names)
        self.channels.keep_only(names)
        errors: list[str] = []
        waited: list[float] = []

        def run(pod: str) -> None:
            """The sync in one replica: over its exec channel, else a one-shot exec."""
            if len(payload) <= live.CHANNEL_MAX and not any(c.isspace() for c in svc.live_update.target):
                try:
                    self.channels.get(pod, ns).sync(svc.live_update.target, ports, payload)
                    return
                except live.ChannelFailed as e:
                    self.channels.drop(pod)
                    if not self._said_channel:
                        self._said_channel = True
                        self.out.detail(f"{svc.name}: no exec channel to {pod} ({e}); syncing with one-shot execs", service=svc.name)
            self.kube.exec(pod, ns, ["sh", "-c", live.SYNC, "sh", svc.live_update.target, *ports], stdin=payload, timeout=75)

        def one(pod: str) -> None:
            try:
                _, w = self.restarts.restart(pod, budget, lambda: run(pod), self._stop)
                waited.append(w)
            except live.SyncFailed as e:
                errors.append(f"{pod}: the sync in the pod failed (exit {e.code})" + (f" ({' / '.join(e.lines)})" if e.lines else ""))
            except DevloopError as e:
                said = [line for line in str(getattr(e, "stderr", "")).splitlines() if line.strip()][-3:]
                errors.append(f"{pod}: {e.message}" + (f" ({' / '.join(said)})" if said else ""))
            except Exception as e:  # never a sync reported done when it was not: an unexpected error means a rebuild
                errors.append(f"{pod}: {type(e).__name__}: {e}")

        # one replica first, alone: its app restarts with the CPU to itself and answers the new code
        # soonest (what the developer sees first); then the others together
        if names:
            one(names[0])
        threads = [threading.Thread(target=one, args=(n,)) for n in names[1:]] if not errors else []
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(SIGNAL_CHECK)  # bounded: a Ctrl-C is acted on meanwhile
        if errors:
            raise _NoSync(errors[0])
        if budget is not None and max(waited, default=0.0) > 0:
            self.out.detail(
                f"{svc.name}: waited {max(waited):.1f}s before restarting the app: saves came faster than the "
                f"{budget.probe} tolerates restarts",
                service=svc.name,
            )
        return names

    def force_rebuild(self, service: str) -> None:
        """A live-updated pod restarted from its image: the next plan for it must roll out again."""
        st = self.state.get(service)
        if st is not None:
            st.healthy = False

    def _collect_garbage(self, svc: ServiceConfig, in_use: set[str]) -> None:
        """In the background, after a successful rollout: delete this service's old content tags
        from the local registry and the nodes' containerd (never one in use, never one devloop did
        not build). At most one collection per service at a time; it never fails or slows a cycle."""
        if not isinstance(self.images, Images) or self.target.remote:
            return  # fakes in unit tests: nothing to collect; a remote registry is never pruned by devloop
        with self._gc_lock:
            if svc.name in self._gc_running:
                return
            self._gc_running.add(svc.name)
        publisher = self.publisher
        guard = publisher.lock if isinstance(publisher, RegistryPublisher) else None

        def work() -> None:
            try:
                report = gc.collect(
                    svc.image.name,
                    publisher.registry or None,
                    self.kind.nodes(self.config.cluster.name),
                    self.config.keep_versions,
                    in_use,
                    registry_container=self.config.registry.name,
                    client=self.docker.client,
                    guard=guard,
                )
                if report.removed or report.errors:
                    self.out.detail(f"{svc.name}: {report.summary()}", service=svc.name)
            except Exception as e:  # tidying is best effort
                self.out.detail(f"{svc.name}: garbage collection skipped: {e}", service=svc.name)
            finally:
                with self._gc_lock:
                    self._gc_running.discard(svc.name)

        threading.Thread(target=work, daemon=True, name=f"devloop-gc-{svc.name}").start()

    def _prune(self, svc: ServiceConfig) -> None:
        """Keep the newest few content tags; tidying never fails a cycle."""
        registry = self.publisher.registry
        repos = [svc.image.name] + ([f"{registry}/{svc.image.name}"] if registry else [])
        try:
            removed = self.images.prune(repos, keep=self.config.keep_versions)
        except DevloopError:
            return
        if removed:
            self.out.detail(f"{svc.name}: removed {len(removed)} old image tags", service=svc.name)

    def _as_failure(self, e: DevloopError, result: ServiceResult) -> CycleFailed:
        """Any error inside a cycle, as a failure naming its phase; notices a vanished cluster."""
        failure = CycleFailed.of("plan", e)
        if failure.phase in ("publish", "deploy", "rollout", "sync") and not self.target.remote:
            try:
                gone = not self.kind.exists(self.config.cluster.name)
            except DevloopError:
                gone = False
            if gone:
                self.cluster_gone = True
                return CycleFailed(
                    failure.phase,
                    f"kind cluster {self.config.cluster.name!r} is gone",
                    "devloop creates it again on the next save (or run `devloop up`)",
                )
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
