"""`devloop release VERSION --target NAME`: the seed's registry flow, done safely.

    check target (context declared and answering) and registry (TLS, credentials)
      ─► build every service with an image (the content-tagged image is reused when the sources are unchanged)
      ─► versions are immutable: refuse a VERSION whose tag already names other content (nothing pushed)
      ─► fields other managers own: refuse (nothing pushed or applied) unless --force-conflicts
      ─► push <registry>/<image>:<VERSION>
      ─► per service, in `dependsOn` order (gate.py, as `up`): apply the manifests (a built image pinned
         by digest; a service without image: its manifests as they are) ─► wait as its kind says (a Job:
         until it completed) ─► on failure, roll back what can be (`undo_for`) and wait until it serves;
         a failed dependency stops its dependents before they are applied

Equivalent to the seed's `docker push …` and `kubectl set image …`, with the checks in between.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from devloop import kinds, order
from devloop import manifests as mf
from devloop.config import ServiceConfig
from devloop.engine import Engine
from devloop.errors import ConfigError, CycleFailed, DevloopError
from devloop.images import Images
from devloop.model import ImageRef
from devloop.project import Deployed
from devloop.registry_client import RemoteManifest
from devloop.remote import Address, RemotePublisher, push
from devloop.rollout import REVISION

_VERSION = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


class VersionExists(ConfigError):
    """The registry already has this version with other content: versions are immutable."""


@dataclass
class Released:
    service: str
    workload: str = ""  # its main workload, Kind/name
    after: list[str] = field(default_factory=list)  # dependsOn: applied once these were ready (a Job: completed)
    ref: str = ""  # registry/image:VERSION@sha256:…, what the pods run (no image: the manifest's own)
    digest: str = ""
    image_id: str = ""
    size: int = 0  # bytes of the image's layers in the registry
    bytes_pushed: int = 0
    pushed: bool = False  # False: the registry already had this version (same content)
    deployed: bool = False
    ready_pods: list[str] = field(default_factory=list)
    summary: str = ""  # the completed rollout in a few words: 3/3 pods ready, job migrate completed
    rolled_back: bool = False
    outcome: str = ""
    error: str | None = None
    details: list[str] = field(default_factory=list)  # the lines that matter (the crash's log excerpt)
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def version_state(there: RemoteManifest | None, image_id: str) -> Literal["new", "same", "taken"]:
    """Is VERSION free in the registry, already this content (a no-op), or taken by other content?
    A local image ID is its config digest, which the registry's manifest names."""
    if there is None:
        return "new"
    return "same" if there.config == image_id else "taken"


def rollback_to(before: Mapping[str, Any] | None, containers: set[str]) -> tuple[str, str] | None:
    """(revision, image) the Deployment ran before this release, from the live object read just
    before applying; None when there was nothing (a first release has nothing to go back to)."""
    if not before:
        return None
    revision = str(((before.get("metadata") or {}).get("annotations") or {}).get(REVISION, ""))
    live = (((before.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or []
    images = [str(c.get("image")) for c in live if c.get("name") in containers]
    return (revision, images[0]) if revision and images else None


@dataclass(frozen=True)
class Undo:
    """How a failed workload goes back to what ran before the release: `kubectl rollout undo`."""

    resource: str  # deployment, statefulset, daemonset
    name: str
    revision: str  # a Deployment's revision; "": the previous ControllerRevision (StatefulSet, DaemonSet)
    image: str  # what its pods ran before, to wait for


def _template(live: Mapping[str, Any] | None) -> Any:
    return ((live or {}).get("spec") or {}).get("template")


def undo_for(kind: str, name: str, before: Mapping[str, Any] | None, now: Mapping[str, Any] | None, containers: set[str]) -> Undo | str:
    """Pure: how to undo a failed workload of this release, or why there is nothing honest to undo.
    `before`: the live object read just before applying; `now`: read after the failure; `containers`:
    the names of the containers whose image counts (empty: the first container)."""
    k = kinds.of(kind)
    if k is None or not k.waits:
        return f"{kind} {name} is not waited for: nothing to roll back"
    if not k.rolls_back:
        return f"a {kind} has no rollback (it ran): {name} failed; the services that depend on it are not rolled out"
    if not before:
        return f"nothing to roll back to: {kind.lower()} {name} did not run on the target before"
    if now is not None and _template(now) == _template(before):
        return f"nothing to roll back to: this release did not change {kind.lower()} {name}"
    live = (_template(before) or {}).get("spec", {}).get("containers") or []
    images = [str(c.get("image")) for c in live if not containers or c.get("name") in containers]
    if not images:
        return f"nothing to roll back to: {kind.lower()} {name} ran no such container before"
    if kind == "Deployment":
        previous = rollback_to(before, containers or {str(live[0].get("name"))})
        if previous is None:
            return f"nothing to roll back to: deployment {name} has no revision recorded"
        return Undo(k.resource, name, previous[0], previous[1])
    return Undo(k.resource, name, "", images[0])


def check_version(version: str) -> None:
    if not _VERSION.match(version):
        raise ConfigError(f"{version!r} is not a valid image tag", "use letters, digits, '.', '-' and '_' (e.g. v1.0.0), at most 128")
    if version.startswith("dl-"):
        raise ConfigError(f"{version!r}: tags starting with dl- are devloop's content tags", "pick a release version such as v1.0.0")


class Release:
    def __init__(self, engine: Engine, docker: Images, version: str, *, rollback: bool = True) -> None:
        check_version(version)
        publisher = engine.target.publisher
        if not isinstance(publisher, RemotePublisher):  # a release goes to a registry devloop can push to and ask
            raise ConfigError("release needs --target NAME (a declared remote target)", "declare one under `targets:` in devloop.yaml")
        self.engine = engine
        self.docker = docker
        self.version = version
        self.rollback = rollback
        self.out = engine.out
        self.publisher = publisher
        self.address: Address = publisher.address

    def versioned(self, svc: ServiceConfig) -> ImageRef:
        return ImageRef(svc.built.name, self.version, str(self.address))

    @property
    def built(self) -> list[ServiceConfig]:
        """The services devloop builds: each pushed as VERSION and pinned by digest."""
        return [s for s in self.engine.services if s.image is not None]

    def order(self) -> list[ServiceConfig]:
        """The services in the order they are applied: each after the services it depends on (order.py)."""
        e = self.engine
        names = order.start_order({s.name: s.depends_on for s in e.services})
        return [e.config.service(n) for n in names]

    def pinned(self, svc: ServiceConfig, deployed: Deployed, digest: str) -> ImageRef:
        """What the service's workloads run: the version pinned by digest; no image: the manifest's own."""
        if svc.image is None:
            return deployed.image(svc.name)
        return ImageRef(svc.built.name, self.version, str(self.address), digest)

    # -- the steps ------------------------------------------------------------------------------
    def preflight(self) -> dict[str, Deployed]:
        """Everything that can be checked before anything is built, pushed or applied; every
        service's manifests by service name."""
        e = self.engine
        e.check_manifests()
        deployed = {s.name: e.manifests(s) for s in e.services}
        if self.built:
            e.images.ping()
        with self.out.activity(f"checking {e.target.describe()}"):
            e.target.ensure()
        with self.out.activity(f"checking registry {self.address.host}"):
            self.publisher.client.check()
        e.target.require_pull_secret({d.namespace for d in deployed.values()})
        self.out.info(f"{e.target.describe()} answers; registry {self.address.host}: TLS verified, credentials accepted")
        return deployed

    def build(self, results: dict[str, Released]) -> dict[str, ImageRef]:
        """Every built service's content-tagged image (built when missing)."""
        refs = {}
        for svc in self.built:
            ref = self.engine.image_ref(svc)
            start = self.engine.clock()
            with self.out.activity(f"building {svc.name}"):
                built = self.engine.build(svc, ref)
            results[svc.name].phases["build"] = self.engine.clock() - start
            self.out.info(f"{svc.name}: {'built' if built else 'unchanged sources, reusing'} {ref.local}", service=svc.name)
            refs[svc.name] = ref
            results[svc.name].image_id = self.docker.image_id(ref.local)
        return refs

    def check_immutable(self, results: dict[str, Released]) -> None:
        """A version names one content forever: refuse before anything is pushed."""
        refused = []
        for svc in self.built:
            r = results[svc.name]
            there = self.publisher.client.manifest(self.address.repository(svc.built.name), self.version)
            state = version_state(there, r.image_id)
            if state == "same" and there is not None:
                r.digest, r.size = there.digest, there.size
            elif state == "taken" and there is not None:
                refused.append(f"{self.versioned(svc)} already exists as {there.digest} with other content")
        if refused:
            raise VersionExists(
                refused[0] + (f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""),
                "a released version is immutable: release a new version (e.g. bump the patch number)",
            )

    def check_fields(self, deployed: Mapping[str, Deployed], results: dict[str, Released]) -> None:
        """Every service's objects asked with a dry-run apply before anything is pushed or applied: a
        field another manager owns stops the release (unless --force-conflicts). The image is the
        version's (pinned when the registry has it already: a new version cannot be running); a
        service without image: its manifests as they are."""
        e = self.engine
        batches = []
        for svc in e.services:
            d = deployed[svc.name]
            batches.append((e.render(svc, d, self.pinned(svc, d, results[svc.name].digest), dev=False, version=self.version), d.namespace))
        with self.out.activity("checking field ownership"):
            e.applier.check(batches)

    def push(self, svc: ServiceConfig, ref: ImageRef, r: Released) -> None:
        versioned = self.versioned(svc)
        if r.digest:
            self.out.info(f"{svc.name}: {versioned} is already in the registry with this content ({r.digest[:19]}…)", service=svc.name)
            return
        self.docker.tag(ref.local, versioned.cluster)
        start = self.engine.clock()
        with self.out.activity(f"pushing {versioned}"):
            pushed = push(self.docker, versioned.cluster, lambda m: self.out.progress(svc.name, m))
        r.phases["push"] = self.engine.clock() - start
        there = self.publisher.client.manifest(self.address.repository(svc.built.name), pushed.digest)
        r.digest, r.pushed, r.bytes_pushed = pushed.digest, True, pushed.bytes_pushed
        r.size = there.size if there else 0
        self.out.info(
            f"{svc.name}: pushed {versioned}@{pushed.digest[:19]}… ({pushed.summary()})",
            service=svc.name,
        )

    def step(self, svc: ServiceConfig, deployed: Deployed, r: Released) -> None:
        """One service in `dependsOn` order (the engine's start order, gate.py): held until the
        services it depends on are ready; not applied when one of them failed (what serves, asked)."""
        e = self.engine
        ok = False
        try:
            try:
                e.start_order.hold(svc.name, lambda said: self.out.info(f"{svc.name}: {said}", service=svc.name))
            except CycleFailed as held:
                r.error = held.message
                r.outcome = e.rollout.still_serving(deployed.namespace, deployed.deployment)
                return
            self.deploy(svc, deployed, r)
            ok = r.ok
        finally:
            e.start_order.finish(svc.name, ok)

    def deploy(self, svc: ServiceConfig, deployed: Deployed, r: Released) -> None:
        """Apply (a built image pinned by digest; else the manifests as they are) and wait as each
        workload's kind says; on failure, roll back what can be and wait for the old version."""
        e = self.engine
        ns = deployed.namespace
        pinned = self.pinned(svc, deployed, r.digest)
        r.ref = pinned.cluster
        main = deployed.deployment
        kind = kinds.of(main.kind)
        before = e.kube.get(kind.resource, main.name, ns) if kind is not None and kind.rolls_back else None
        start = e.clock()
        docs, deleted = kinds.replace_changed(e.kube, e.render(svc, deployed, pinned, dev=False, version=self.version), ns)
        applied = deleted + e.applier.apply(docs, ns)
        r.deployed = True
        r.phases["deploy"] = e.clock() - start
        self.out.phase_done("deploy", r.phases["deploy"], "; ".join(applied), service=svc.name)
        start = e.clock()
        try:
            r.ready_pods, _ = e.rollout.wait_ready(svc, deployed, pinned if svc.image else None)
            r.phases["rollout"] = e.clock() - start
            r.summary = deployed.summary(r.ready_pods)
            self.out.phase_done("rollout", r.phases["rollout"], r.summary, service=svc.name)
            return
        except CycleFailed as failure:
            r.phases["rollout"] = e.clock() - start
            r.error, r.details = failure.message, failure.details[:8]
        r.outcome = self._after_failure(svc, deployed, before, pinned, r)

    def _after_failure(
        self, svc: ServiceConfig, deployed: Deployed, before: Mapping[str, Any] | None, failed: ImageRef, r: Released
    ) -> str:
        """Per kind (`undo_for`): a Deployment goes back to the revision it replaced, a StatefulSet or
        DaemonSet to its previous ControllerRevision; a Job has no rollback."""
        e = self.engine
        main = deployed.deployment
        kind = kinds.of(main.kind)
        now = e.kube.get(kind.resource, main.name, deployed.namespace) if kind is not None and kind.rolls_back else None
        containers = {str(c.get("name")) for c in mf.containers_of(main, svc.built.name)} if svc.image else set()
        undo = undo_for(main.kind, main.name, before, now, containers)
        if isinstance(undo, str):
            return undo
        if not self.rollback:
            return f"--no-rollback: {main.kind.lower()} {main.name} keeps the failed rollout of {self.version}"
        to = f"revision {undo.revision}" if undo.revision else "its previous revision"
        self.out.info(f"{svc.name}: rolling {undo.resource} {undo.name} back to {to} ({undo.image})", service=svc.name)
        try:
            pods = e.rollout.undo(svc, deployed.namespace, main, undo.revision, undo.image, failed.cluster)
        except DevloopError as err:
            return f"rollback to {to} failed: {err.message}"
        r.rolled_back = True
        want = (kind or kinds.Deployment()).replicas(e.kube.get(undo.resource, undo.name, deployed.namespace) or main.doc)
        return f"rolled back to {undo.image}, which serves again ({len(pods)}/{want} pods ready)"

    # -- whole release -----------------------------------------------------------------------------
    def run(self) -> list[Released]:
        e = self.engine
        ordered = self.order()
        results: dict[str, Released] = {s.name: Released(s.name, after=list(s.depends_on)) for s in ordered}
        deployed = self.preflight()
        for s in ordered:
            results[s.name].workload = f"{deployed[s.name].deployment.kind}/{deployed[s.name].deployment.name}"
        refs = self.build(results)
        self.check_immutable(results)
        self.check_fields(deployed, results)
        for svc in self.built:
            self.push(svc, refs[svc.name], results[svc.name])
        if any(s.depends_on for s in ordered):
            self.out.info(f"order (dependsOn): {' → '.join(s.name for s in ordered)}", order=[s.name for s in ordered])
        e.start_order.begin({s.name: s.depends_on for s in ordered}, [s.name for s in ordered])
        with ThreadPoolExecutor(max_workers=len(ordered), thread_name_prefix="devloop-release") as pool:
            list(pool.map(lambda s: self.step(s, deployed[s.name], results[s.name]), ordered))
        return list(results.values())

    def dry_run(self) -> list[dict[str, Any]]:
        """What `run` would push and apply, in the order it would (read-only: nothing is built, pushed or applied)."""
        e = self.engine
        plans = []
        deployed = self.preflight()
        for svc in self.order():
            d = deployed[svc.name]
            ctx, ns = e.target.spec.context, d.namespace
            apply = f"kubectl --context {ctx} -n {ns} apply -f {' -f '.join(str(m) for m in svc.manifests)}"
            waits = [_wait_command(ctx, ns, w) for w in d.rolled if (k := kinds.of(w.kind)) is not None and k.waits]
            main = f"{d.deployment.kind.lower()}/{d.deployment.name}"
            if svc.image is None:
                images = list(dict.fromkeys(i for w in d.rolled for i in mf.images_of(w)))
                pinned = self.pinned(svc, d, "")
                plan: dict[str, Any] = {
                    "image": ", ".join(images),
                    "content": "",
                    "built": False,
                    "registry": "no image of devloop's: the manifests applied as they are (nothing pushed)",
                    "commands": [apply, *waits],
                }
            else:
                ref = e.image_ref(svc)
                versioned = self.versioned(svc)
                local = e.images.exists(ref.local)
                there = self.publisher.client.manifest(self.address.repository(svc.built.name), self.version)
                found = version_state(there, self.docker.image_id(ref.local) if local else "")
                if there is None:
                    state = "new version: would push"
                elif not local:
                    state = f"in the registry as {there.digest}; a no-op if the build gives the same content, else refused"
                elif found == "same":
                    state = f"already in the registry with this content ({there.digest}): nothing to push"
                else:
                    state = f"REFUSED: already in the registry as {there.digest} with other content"
                containers = [c.get("name", "?") for c in mf.containers_of(d.deployment, svc.built.name)]
                plan = {
                    "image": str(versioned),
                    "content": ref.local,
                    "built": local,
                    "registry": state,
                    "commands": [
                        *([] if local else [f"docker build -t {ref.local} {svc.built.context}"]),
                        f"docker tag {ref.local} {versioned}",
                        f"docker push {versioned}",
                        apply,
                        f"kubectl --context {ctx} -n {ns} set image {main} " + " ".join(f"{c}={versioned}@<digest>" for c in containers),
                        *waits,
                    ],
                }
                pinned = self.pinned(svc, d, there.digest if there and found == "same" else "")
            taken = e.applier.conflicts(e.render(svc, d, pinned, dev=False, version=self.version), ns)
            plans.append(
                {
                    "service": svc.name,
                    **plan,
                    "namespace": ns,
                    "deployment": svc.deployment,
                    "workload": f"{d.deployment.kind}/{d.deployment.name}",
                    "after": list(svc.depends_on),  # applied once these are ready (a Job: completed)
                    "conflicts": [c.line() for c in taken],  # fields other managers own: refused without --force-conflicts
                }
            )
        return plans


def _wait_command(context: str, namespace: str, w: mf.Manifest) -> str:
    """What waiting for a workload is, as a kubectl command."""
    if w.kind == "Job":
        return f"kubectl --context {context} -n {namespace} wait --for=condition=complete job/{w.name}"
    return f"kubectl --context {context} -n {namespace} rollout status {w.kind.lower()}/{w.name}"
