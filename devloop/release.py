"""`devloop release VERSION --target NAME`: the seed's registry flow, done safely.

    check target (context declared and answering) and registry (TLS, credentials)
      ─► build every service (the content-tagged image is reused when the sources are unchanged)
      ─► versions are immutable: refuse a VERSION whose tag already names other content (nothing pushed)
      ─► fields other managers own: refuse (nothing pushed or applied) unless --force-conflicts
      ─► push <registry>/<image>:<VERSION> ─► apply the manifests with the image pinned by digest
      ─► wait for every rollout ─► on failure, roll back to the revision it replaced and wait until it serves

Equivalent to the seed's `docker push …` and `kubectl set image …`, with the checks in between.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

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
    ref: str = ""  # registry/image:VERSION@sha256:…, what the pods run
    digest: str = ""
    image_id: str = ""
    size: int = 0  # bytes of the image's layers in the registry
    bytes_pushed: int = 0
    pushed: bool = False  # False: the registry already had this version (same content)
    deployed: bool = False
    ready_pods: list[str] = field(default_factory=list)
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

    # -- the steps ------------------------------------------------------------------------------
    def preflight(self) -> list[Deployed]:
        """Everything that can be checked before anything is built, pushed or applied."""
        e = self.engine
        unbuilt = [s.name for s in e.services if s.image is None]
        if unbuilt:
            raise ConfigError(
                f"release: service {unbuilt[0]} has no image: a release pushes and pins a version of every service",
                "`devloop up --target` rolls out services without an image; release supports services devloop builds",
            )
        deployed = e.check_manifests()
        e.images.ping()
        with self.out.activity(f"checking {e.target.describe()}"):
            e.target.ensure()
        with self.out.activity(f"checking registry {self.address.host}"):
            self.publisher.client.check()
        e.target.require_pull_secret({d.namespace for d in deployed})
        self.out.info(f"{e.target.describe()} answers; registry {self.address.host}: TLS verified, credentials accepted")
        return deployed

    def build(self, results: dict[str, Released]) -> dict[str, ImageRef]:
        """Every service's content-tagged image (built when missing)."""
        refs = {}
        for svc in self.engine.services:
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
        for svc in self.engine.services:
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
        version's (pinned when the registry has it already: a new version cannot be running)."""
        e = self.engine
        batches = []
        for svc in e.services:
            d = deployed[svc.deployment]
            pinned = ImageRef(svc.built.name, self.version, str(self.address), results[svc.name].digest)
            batches.append((e.render(svc, d, pinned, dev=False, version=self.version), d.namespace))
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

    def deploy(self, svc: ServiceConfig, deployed: Deployed, r: Released) -> None:
        """Apply with the image pinned by digest and wait; on failure roll back and wait for the old version."""
        e = self.engine
        pinned = ImageRef(svc.built.name, self.version, str(self.address), r.digest)
        r.ref = pinned.cluster
        before = e.kube.get("deployment", svc.deployment, deployed.namespace)
        previous = rollback_to(before, {str(c.get("name")) for c in mf.containers_of(deployed.deployment, svc.built.name)})
        start = e.clock()
        applied = e.applier.apply(e.render(svc, deployed, pinned, dev=False, version=self.version), deployed.namespace)
        r.deployed = True
        r.phases["deploy"] = e.clock() - start
        self.out.phase_done("deploy", r.phases["deploy"], "; ".join(applied), service=svc.name)
        start = e.clock()
        try:
            r.ready_pods, _ = e.rollout.wait_ready(svc, deployed, pinned)
            r.phases["rollout"] = e.clock() - start
            self.out.phase_done("rollout", r.phases["rollout"], f"{len(r.ready_pods)}/{deployed.replicas} pods ready", service=svc.name)
            return
        except CycleFailed as failure:
            r.phases["rollout"] = e.clock() - start
            r.error, r.details = failure.message, failure.details[:8]
        r.outcome = self._after_failure(svc, deployed, previous, r)

    def _after_failure(self, svc: ServiceConfig, deployed: Deployed, previous: tuple[str, str] | None, r: Released) -> str:
        if previous is None:
            return f"nothing to roll back to: {svc.deployment} did not run on the target before"
        if not self.rollback:
            return f"--no-rollback: {svc.deployment} keeps the failed rollout of {self.version}"
        revision, old_image = previous
        e = self.engine
        self.out.info(f"{svc.name}: rolling {svc.deployment} back to revision {revision} ({old_image})", service=svc.name)
        try:
            pods, _ = e.rollout.roll_back(svc, deployed, revision, old_image)
        except DevloopError as err:
            return f"rollback to revision {revision} failed: {err.message}"
        r.rolled_back = True
        return f"rolled back to {old_image}, which serves again ({len(pods)}/{deployed.replicas} pods ready)"

    # -- whole release -----------------------------------------------------------------------------
    def run(self) -> list[Released]:
        results = {s.name: Released(s.name) for s in self.engine.services}
        deployed = {d.deployment.name: d for d in self.preflight()}
        refs = self.build(results)
        self.check_immutable(results)
        self.check_fields(deployed, results)
        for svc in self.engine.services:
            self.push(svc, refs[svc.name], results[svc.name])
        with ThreadPoolExecutor(max_workers=len(self.engine.services), thread_name_prefix="devloop-release") as pool:
            list(pool.map(lambda s: self.deploy(s, deployed[s.deployment], results[s.name]), self.engine.services))
        return list(results.values())

    def dry_run(self) -> list[dict[str, Any]]:
        """What `run` would push and apply (read-only: nothing is built, pushed or applied)."""
        e = self.engine
        plans = []
        deployed = {d.deployment.name: d for d in self.preflight()}
        for svc in e.services:
            ref = e.image_ref(svc)
            versioned = self.versioned(svc)
            d = deployed[svc.deployment]
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
            ctx, ns = e.target.spec.context, d.namespace
            commands = [
                *([] if local else [f"docker build -t {ref.local} {svc.built.context}"]),
                f"docker tag {ref.local} {versioned}",
                f"docker push {versioned}",
                f"kubectl --context {ctx} -n {ns} apply -f {' -f '.join(str(m) for m in svc.manifests)}",
                f"kubectl --context {ctx} -n {ns} set image deployment/{svc.deployment} "
                + " ".join(f"{c}={versioned}@<digest>" for c in containers),
                f"kubectl --context {ctx} -n {ns} rollout status deployment/{svc.deployment}",
            ]
            pinned = ImageRef(svc.built.name, self.version, str(self.address), there.digest if there and found == "same" else "")
            taken = e.applier.conflicts(e.render(svc, d, pinned, dev=False, version=self.version), ns)
            plans.append(
                {
                    "service": svc.name,
                    "image": str(versioned),
                    "content": ref.local,
                    "built": local,
                    "registry": state,
                    "namespace": ns,
                    "deployment": svc.deployment,
                    "commands": commands,
                    "conflicts": [c.line() for c in taken],  # fields other managers own: refused without --force-conflicts
                }
            )
        return plans
