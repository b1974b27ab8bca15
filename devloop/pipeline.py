"""One pipeline: plan → build → load → deploy → wait ready → report.

`Pipeline` holds the adapters and what is deployed; `up()` prepares the cluster and runs one
full cycle; `cycle()` is one pass (or a live sync), which `devloop dev` (dev.py) calls once per
debounced batch of changes. A failed cycle is reported and the loop goes on; only set-up
failures end it.
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from devloop import live
from devloop import manifests as mf
from devloop.config import Config
from devloop.errors import ConfigError, CycleFailed, DevloopError
from devloop.ignore import IgnoreRules
from devloop.images import ContextHasher, Images, content_tag, read_dockerignore
from devloop.kind import Kind
from devloop.kube import Kube, pod_failure, pod_images, pod_name, pod_pending_reason, pod_ready, rollout_progress
from devloop.output import Output
from devloop.plan import Layout
from devloop.registry import LocalRegistry

POLL_INTERVAL = 0.5


@dataclass
class CycleResult:
    ok: bool
    image: str | None
    phases: dict[str, float] = field(default_factory=dict)
    error: CycleFailed | None = None
    ready_pods: list[str] = field(default_factory=list)
    built: bool = False
    loaded: bool = False
    synced: bool = False


_ERROR_LINE = re.compile(r"\b[A-Z]\w*(Error|Exception)\b|\bERR!|\bpanic:|\bFATAL\b")


def log_excerpt(lines: list[str], size: int = 8) -> list[str]:
    """The lines of a crash log a person needs: the first error line with what led up to it
    (a Node.js SyntaxError prints file:line, the code and a caret before it), else the tail."""
    for i, line in enumerate(lines):
        if _ERROR_LINE.search(line):
            start = max(0, i - 4)
            return lines[start : start + size]
    return lines[-size:]


class Fallback(Exception):
    """A live update cannot be done honestly; the cycle rebuilds instead."""


class Pipeline:
    def __init__(
        self,
        config: Config,
        out: Output,
        *,
        images: Images | None = None,
        kind: Kind | None = None,
        kube: Kube | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.out = out
        self.images = images or Images()
        self.kind = kind or Kind()
        self.kube = kube or Kube(config.cluster.context)
        self.clock = clock
        self.hasher = ContextHasher()
        self.registry = LocalRegistry(config.registry, self.images, self.kube) if config.registry.enabled else None
        self.deployed: str | None = None  # the image ref of the last successful rollout
        self.live_ref: str | None = None  # the content tag of the tree as last live-synced over `deployed`
        self.synced: set[str] = set()  # files live-synced since `deployed` was rolled out
        self.applied: str | None = None  # the image ref last applied (may have failed)
        self.cycles = 0
        self.cluster_gone = False
        self._current_phase = "plan"
        self._stop = threading.Event()

    def reconfigure(self, config: Config) -> None:
        """Take a reloaded devloop.yaml. The cluster stays the one devloop started with."""
        if config.cluster.name != self.config.cluster.name:
            self.out.warn(
                f"cluster.name changed to {config.cluster.name!r}; still using {self.config.cluster.name!r}",
                "restart `devloop dev` to switch clusters",
            )
            config = dataclasses.replace(config, cluster=self.config.cluster)
        self.config = config
        self.registry = LocalRegistry(config.registry, self.images, self.kube) if config.registry.enabled else None
        if self.registry is not None:
            self.registry.ensure(self.kind.nodes(config.cluster.name))

    # -- pieces -----------------------------------------------------------------------------------
    @property
    def image_name(self) -> str:
        return self.config.image.name

    def layout(self) -> Layout:
        c = self.config
        rules = IgnoreRules(tuple(read_dockerignore(c.image.context)), c.image.dockerfile, c.watch.ignore)
        configs = tuple(str(p) for p in (c.file.resolve() if c.file else None, c.cluster.kind_config) if p is not None)
        fallback = c.live_update.fallback if c.live_update.enabled else None
        return Layout(str(c.image.context), rules, tuple(str(m) for m in c.deploy.manifests), configs, fallback)

    def load_manifests(self) -> tuple[list[mf.Manifest], mf.Manifest]:
        docs = mf.load(self.config.deploy.manifests)
        deployment = mf.find(docs, "Deployment", self.config.deploy.deployment)
        if deployment is None:
            raise ConfigError(
                f"no Deployment named {self.config.deploy.deployment!r} in {', '.join(map(str, self.config.deploy.manifests))}",
                "set deploy.deployment in devloop.yaml to the Deployment devloop should roll out",
            )
        mf.require_image_user(docs, self.image_name)
        return docs, deployment

    def ensure_cluster(self) -> bool:
        """Create the kind cluster when it is missing. True when it was created."""
        name = self.config.cluster.name
        if self.kind.exists(name):
            self.kube.require_reachable(name)
            return False
        self.out.info(f"creating kind cluster {name!r} from {self.config.cluster.kind_config.name} (this takes a minute)")
        with self.out.activity(f"creating kind cluster {name}"):
            self.kind.create(name, self.config.cluster.kind_config, self.config.cluster.node_image)
        return True

    def image_ref(self) -> str:
        """The local image reference for the current sources: name + content tag."""
        img = self.config.image
        return f"{img.name}:{content_tag(self.hasher.digest(img.context, img.dockerfile, img.build_args))}"

    def deploy_ref(self, local_ref: str) -> str:
        """What the manifests will say: the registry's name for the image when one is used."""
        return self.registry.ref(local_ref) if self.registry else local_ref

    def build(self, ref: str) -> bool:
        """Build unless an image with this content tag exists. True when it built."""
        if self.images.exists(ref):
            return False
        img = self.config.image
        with self.out.activity(f"building {ref}"):
            self.images.build(img.context, img.dockerfile, ref, img.build_args, on_line=lambda line: self.out.detail(line))
        return True

    def load(self, ref: str) -> bool:
        """Make the image available to the nodes. True when something was moved.

        With the local registry: push (only new layers travel; nothing when it is there already).
        Otherwise: `docker save` + `kind load image-archive` on the nodes that lack it.
        """
        if self.registry is not None:
            if self.registry.has(ref):
                return False
            with self.out.activity(f"pushing {self.registry.ref(ref)}"):
                self.registry.push(ref)
            return True
        name = self.config.cluster.name
        nodes = self.kind.nodes(name)
        missing = [n for n in nodes if not self.images.node_has(n, ref)]
        if not missing:
            return False
        with tempfile.TemporaryDirectory(prefix="devloop-") as tmp, self.out.activity(f"loading {ref} into {', '.join(missing)}"):
            archive = Path(tmp) / "image.tar"
            self.images.save(ref, archive)
            self.kind.load_archive(name, archive, missing)
        return True

    def deploy(self, docs: list[mf.Manifest], ref: str, local: str) -> list[str]:
        command = None
        lu = self.config.live_update
        if lu.enabled and lu.command:
            command = lambda c: list(lu.command)  # noqa: E731
        elif lu.enabled:
            entrypoint, cmd = self.images.command(local)
            command = lambda c: live.original_command(c, entrypoint, cmd)  # noqa: E731
        rendered = mf.rewrite(docs, self.image_name, ref, command=command)
        if self.config.deploy.rolling_update is not None:
            rendered = mf.with_rolling_update(rendered, self.config.deploy.deployment, *self.config.deploy.rolling_update)
        self.applied = ref
        return self.kube.apply(mf.to_yaml(rendered), self.config.deploy.namespace)

    def wait_ready(self, deployment: mf.Manifest, ref: str) -> list[str]:
        """Wait until the rollout of `ref` is complete; returns the ready pods' names."""
        ns = mf.namespace_of(deployment, self.config.deploy.namespace)
        name = deployment.name
        selector = mf.selector_of(deployment)
        timeout = self.config.deploy.rollout_timeout
        deadline = self.clock() + timeout
        message = "waiting"
        with self.out.activity(f"rolling out {name}"):
            while True:
                dep = self.kube.get("deployment", name, ns)
                if dep is None:
                    raise CycleFailed(
                        "rollout", f"deployment {name} disappeared during the rollout", "was it deleted? `devloop up` applies it again"
                    )
                done, message = rollout_progress(dep)
                pods = self.kube.pods(ns, selector)
                if done:
                    return [pod_name(p) for p in pods if pod_ready(p) and ref in pod_images(p)]
                for p in pods:
                    if ref not in pod_images(p):
                        continue
                    reason = pod_failure(p)
                    if reason:
                        raise self._pod_failed(pod_name(p), ns, reason)
                if self.clock() >= deadline:
                    waiting = [f"{pod_name(p)}: {pod_pending_reason(p)}" for p in pods if ref in pod_images(p) and not pod_ready(p)]
                    raise CycleFailed(
                        "rollout",
                        f"{name} not ready after {timeout:.0f}s ({message})",
                        "check `kubectl describe pod`; raise deploy.rolloutTimeout if the app starts slowly",
                        details=waiting[:5],
                    )
                if self._stop.wait(POLL_INTERVAL):
                    raise CycleFailed("rollout", "stopped while waiting for the rollout")

    def _pod_failed(self, pod: str, ns: str, reason: str) -> CycleFailed:
        logs = log_excerpt(self.kube.logs(pod, ns, tail=40, previous=True) or self.kube.logs(pod, ns, tail=40))
        serving = f"; {self.deployed} keeps serving" if self.deployed and self.deployed != self.applied else ""
        return CycleFailed(
            "rollout",
            f"pod {pod}: {reason}{serving}",
            "fix the code and save: devloop rolls out again"
            if "CrashLoop" in reason or "exited" in reason
            else "check the image and the manifest",
            details=[f"{pod}: {line}" for line in logs],
        )

    def sync(self, deployment: mf.Manifest, files: tuple[str, ...]) -> list[str]:
        """Copy files into every ready replica and restart the app there. Returns the pods, or
        raises Fallback when a full rebuild is the honest path (pods not all ready, exec failed)."""
        if self.deployed is None:
            raise Fallback("nothing deployed yet")
        ns = mf.namespace_of(deployment, self.config.deploy.namespace)
        pods = [p for p in self.kube.pods(ns, mf.selector_of(deployment)) if not p.get("metadata", {}).get("deletionTimestamp")]
        want = int(deployment.doc.get("spec", {}).get("replicas", 1))
        current = [p for p in pods if self.deployed in pod_images(p)]
        if len(current) != want or len(pods) != want or not all(pod_ready(p) for p in current):
            raise Fallback(f"{sum(pod_ready(p) for p in current)}/{want} replicas ready")
        payload = live.tar_files(self.config.image.context, files)
        target = self.config.live_update.target
        ports = [port for c in mf.containers_of(deployment, self.image_name) for port in live.port_args(c)]
        names = [pod_name(p) for p in current]
        errors: list[str] = []

        def one(pod: str) -> None:
            try:
                self.kube.exec(pod, ns, ["sh", "-c", live.SYNC, "sh", target, *ports], stdin=payload)
            except DevloopError as e:
                errors.append(f"{pod}: {e.message}")

        threads = [threading.Thread(target=one, args=(n,)) for n in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise Fallback(errors[0])
        return names

    # -- one cycle ------------------------------------------------------------------------------
    @contextmanager
    def _phase(self, phases: dict[str, float], name: str) -> Iterator[None]:
        self._current_phase = name
        if name != "plan":
            self.out.phase_start(name)
        start = self.clock()
        try:
            yield
        finally:
            phases[name] = self.clock() - start

    def cycle(self, reason: str, files: tuple[str, ...] = (), *, force_apply: bool = False, sync: tuple[str, ...] = ()) -> CycleResult:
        """plan → (sync | build → load → deploy → wait). Failures are reported and returned, not raised."""
        phases: dict[str, float] = {}
        result = CycleResult(ok=False, image=None, phases=phases)
        start = self.clock()
        try:
            with self._phase(phases, "plan"):
                docs, deployment = self.load_manifests()
                local = self.image_ref()
        except DevloopError as e:
            self._begin(reason, files)
            return self._report(result, reason, files, start, self._as_failure(e))
        ref = self.deploy_ref(local)
        result.image = ref
        running = self.live_ref if self.synced else self.deployed  # what the pods run right now
        if not force_apply and not self.cluster_gone and ref == running:
            self.out.skipped("image content unchanged", files)
            result.ok = True
            return result
        self._begin(reason, files)
        try:
            if self.cluster_gone:
                with self._phase(phases, "cluster"):
                    self.prepare_cluster()
                self.cluster_gone = False
                self.deployed = self.live_ref = None
                self.synced.clear()
            elif sync and self.config.live_update.enabled:
                try:
                    with self._phase(phases, "sync"):
                        result.ready_pods = self.sync(deployment, sync)
                    self.out.phase_done("sync", phases["sync"], f"{len(sync)} files into {len(result.ready_pods)} pods, app restarted")
                    self.synced.update(sync)
                    self.live_ref = ref
                    result.image = self.deployed
                    result.synced = result.ok = True
                    return self._report(result, reason, files, start, None)
                except Fallback as e:
                    phases.pop("sync", None)
                    self.out.detail(f"live update not possible ({e}); rebuilding")
            with self._phase(phases, "build"):
                result.built = self.build(local)
            self.out.phase_done("build", phases["build"], "built" if result.built else "up to date")
            with self._phase(phases, "load"):
                result.loaded = self.load(local)
            self.out.phase_done("load", phases["load"], "loaded" if result.loaded else "already on every node")
            with self._phase(phases, "deploy"):
                applied = self.deploy(docs, ref, local)
            self.out.phase_done("deploy", phases["deploy"], "; ".join(applied))
            with self._phase(phases, "rollout"):
                result.ready_pods = self.wait_ready(deployment, ref)
            self.out.phase_done("rollout", phases["rollout"], f"{len(result.ready_pods)} pods ready")
            self.deployed = ref
            self.synced.clear()
            self.live_ref = None
            result.ok = True
            self._prune()
        except DevloopError as e:
            # In a running loop these are recoverable: the next save (or a restarted daemon) may fix them.
            result.error = self._as_failure(e)
        return self._report(result, reason, files, start, result.error)

    def _prune(self) -> None:
        """Keep the newest few content tags; tidying never fails a cycle."""
        repos = [self.image_name] + ([self.registry.ref(self.image_name)] if self.registry else [])
        try:
            removed = self.images.prune(repos)
        except DevloopError:
            return
        if removed:
            self.out.detail(f"removed {len(removed)} old image tags")

    def _begin(self, reason: str, files: tuple[str, ...]) -> None:
        self.cycles += 1
        self.out.cycle_start(self.cycles, reason, files)

    def _as_failure(self, e: DevloopError) -> CycleFailed:
        """Any error inside a cycle, as a cycle failure naming its phase; notices a vanished cluster."""
        phase = e.phase if isinstance(e, CycleFailed) else self._current_phase
        failure = e if isinstance(e, CycleFailed) else CycleFailed(phase, e.message, e.hint)
        if phase in ("load", "deploy", "rollout", "sync"):
            try:
                gone = not self.kind.exists(self.config.cluster.name)
            except DevloopError:
                gone = False
            if gone:
                self.cluster_gone = True
                return CycleFailed(
                    phase,
                    f"kind cluster {self.config.cluster.name!r} is gone",
                    "devloop creates it again on the next save (or run `devloop up`)",
                )
        return failure

    def _report(self, result: CycleResult, reason: str, files: tuple[str, ...], start: float, error: CycleFailed | None) -> CycleResult:
        result.error = error
        self.out.cycle_done(
            self.cycles, phases=result.phases, total=self.clock() - start, image=result.image, error=error, files=files, reason=reason
        )
        return result

    # -- commands ---------------------------------------------------------------------------------
    def up(self) -> CycleResult:
        self.load_manifests()  # bad manifests are a usage error before anything is created
        self.images.ping()
        self.prepare_cluster()
        return self.cycle("up", force_apply=True)

    def prepare_cluster(self) -> None:
        """The cluster (created when missing) and, when used, the local registry wired to it."""
        self.ensure_cluster()
        if self.registry is not None:
            with self.out.activity("starting the local registry"):
                if self.registry.ensure(self.kind.nodes(self.config.cluster.name)):
                    self.out.info(f"local registry {self.registry.host} ready (container {self.config.registry.name})")

    def stop(self) -> None:
        self._stop.set()
