"""The user's project as devloop deploys it: each service's manifests (read once per change and
cached), its namespace, and where its inputs are for the watcher and the planner.

A service's manifests are read (and, for kustomize, rendered) when first needed and again only
after `forget`: the engine forgets a service when a plan says its manifests changed or asks to
re-apply it, and `layouts()` reads every service again (the session asks for layouts only when a
batch may change them). The poller and the dashboard read the cache: no kustomize every 5 s.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from devloop import charts, kinds
from devloop import manifests as mf
from devloop.config import Config, ServiceConfig
from devloop.errors import ConfigError, DevloopError
from devloop.hasher import read_dockerignore
from devloop.ignore import IgnoreRules
from devloop.model import ImageRef
from devloop.output import Output
from devloop.plan import ServiceLayout
from devloop.ports import Charts, Cluster
from devloop.targets import TargetSpec


@dataclass(frozen=True)
class Deployed:
    """One service's manifests as devloop applies them."""

    docs: list[mf.Manifest]
    deployment: mf.Manifest  # the service's main workload: its Deployment (deploy.deployment), else its first workload
    namespace: str
    workloads: tuple[mf.Manifest, ...] = ()  # every workload devloop rolls out for the service; (): `deployment` alone

    @property
    def rolled(self) -> tuple[mf.Manifest, ...]:
        """The workloads a rollout applies and waits for, in the manifests' order."""
        return self.workloads or (self.deployment,)

    @property
    def selector(self) -> dict[str, str]:
        """The labels of the main workload's pods: its selector; a Job's (and a CronJob's Jobs') pods
        by their pod template's labels, else by the `job-name` label Kubernetes gives them."""
        return mf.selector_of(self.deployment) or mf.template_labels(self.deployment) or {"job-name": self.deployment.name}

    @property
    def probed(self) -> bool:
        """Every container of the Deployment has a readiness probe."""
        containers = self.deployment.doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers") or []
        return all(c.get("readinessProbe") for c in containers)

    def containers(self, image_name: str) -> list[dict[str, Any]]:
        """The Deployment's containers that run this image."""
        return mf.containers_of(self.deployment, image_name)

    def looped(self, image_name: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(pod spec, container) of every long-running container of the service that runs this image."""
        return [pc for m in self.docs for pc in mf.looped_containers(m, image_name)]

    @property
    def replicas(self) -> int:
        return int(self.deployment.doc.get("spec", {}).get("replicas", 1))

    def image(self, service: str) -> ImageRef:
        """What the main workload of a service without image runs, as its manifest names it."""
        images = mf.main_images(self.deployment)
        try:
            return ImageRef.parse(images[0] if images else "")
        except ValueError:
            raise ConfigError(
                f"service {service}: {self.deployment.kind} {self.deployment.name} names no image devloop can read",
                "give its containers an image (`image: postgres:16`)",
            ) from None

    def foreign_images(self, built: set[str]) -> list[str]:
        """The images the workloads run that no service builds (`built`: image names), each once;
        references pinned by digest are left to the cluster."""
        repos = {mf.image_repository(b) for b in built}
        images = (i for w in self.rolled for i in mf.images_of(w))
        return list(dict.fromkeys(i for i in images if "@" not in i and mf.image_repository(i) not in repos))

    def summary(self, ready: list[str]) -> str:
        """What a completed rollout did, in a few words: `3/3 pods ready`, `job migrate completed`."""
        main = self.deployment
        kind = kinds.of(main.kind)
        if kind is not None and not kind.rolls_back:
            return f"{main.kind.lower()} {main.name} " + ("completed" if kind.waits else "applied")
        return f"{len(ready)}/{self.replicas} pods ready"


def owns(svc: ServiceConfig, m: mf.Manifest) -> bool:
    """Whether a workload is this service's: it runs the service's image (any container or init
    container), or, for a service without image, it bears the name deploy.deployment gives (default:
    the service's name)."""
    if svc.image is not None and mf.containers_of(m, svc.image.name):
        return True
    return m.name == svc.deployment and (svc.image is None or svc.deploy.deployment is not None)


class Project:
    def __init__(self, config: Config, kube: Cluster, spec: TargetSpec, out: Output, charts: Charts | None = None) -> None:
        self.config = config
        self.kube = kube
        self.charts = charts  # helm, for services whose manifests are a chart
        self.spec = spec
        self.out = out
        self._cache: dict[str, Deployed] = {}
        self._lock = threading.Lock()  # the cache is read by the poller and the service threads
        self._context_ns: str | None = None
        self._checked = False

    def reconfigure(self, config: Config) -> None:
        self.config = config
        self.forget()

    def forget(self, service: str | None = None) -> None:
        """Read this service's manifests (every service's: None) again when next needed."""
        with self._lock:
            if service is None:
                self._cache.clear()
            else:
                self._cache.pop(service, None)

    def context_namespace(self) -> str:
        if self._context_ns is None:
            self._context_ns = self.kube.context_namespace()
        return self._context_ns

    def manifests(self, svc: ServiceConfig) -> Deployed:
        """This service's objects: its files, without the Deployments of other services that share them."""
        with self._lock:
            cached = self._cache.get(svc.name)
        if cached is not None:
            return cached
        deployed = self._read(svc)
        with self._lock:
            self._cache[svc.name] = deployed
        return deployed

    def _load(self, svc: ServiceConfig) -> list[mf.Manifest]:
        """The service's objects as written: its manifest files (kustomize rendered), or its chart rendered."""
        helm = svc.deploy.helm
        if helm is None:
            return mf.load(svc.manifests, self.kube.kustomize)
        if self.charts is None:
            raise ConfigError(f"service {svc.name}: a Helm chart, and no renderer was given", "this is a bug in devloop")
        namespace = self.spec.namespace or svc.deploy.namespace or self.context_namespace()
        req = charts.request(helm, svc.name, svc.image.name if svc.image else "", namespace, self._target)
        return charts.parse(self.charts.render(req), req.chart)

    @property
    def _target(self) -> str | None:
        """The declared target whose chart values apply (None on the local kind cluster)."""
        return self.spec.name if self.spec.remote else None

    def _read(self, svc: ServiceConfig) -> Deployed:
        docs = self._load(svc)
        others = [s for s in self.config.services if s.name != svc.name]
        docs = mf.select(docs, lambda m: owns(svc, m), lambda m: any(owns(o, m) for o in others))
        mine = [m for m in docs if mf.is_workload(m) and (owns(svc, m) or (svc.image is None and not any(owns(o, m) for o in others)))]
        where = ", ".join(map(str, [svc.deploy.helm.chart] if svc.deploy.helm else svc.manifests))
        if svc.image is not None and svc.deploy.helm is not None and not any(mf.containers_of(d, svc.image.name) for d in docs):
            raise ConfigError(
                f"service {svc.name}: no container in the chart's output uses the image {svc.image.name!r}",
                "name the chart's image values in deploy.helm.imageValues (e.g. image.repository: repository, image.tag: tag)",
            )
        if svc.image is not None:
            mf.require_image_user(docs, svc.image.name)
        named = next((m for m in mine if m.name == svc.deployment and m.kind == "Deployment"), None)
        named = named or next((m for m in mine if m.name == svc.deployment), None)
        if named is None and svc.deploy.deployment is not None:
            raise ConfigError(
                f"service {svc.name}: no workload named {svc.deployment!r} in {where}",
                "set deploy.deployment in devloop.yaml to the Deployment devloop should roll out",
            )
        if not mine:
            raise ConfigError(
                f"service {svc.name}: no workload (Deployment, StatefulSet, DaemonSet, Job, CronJob) in {where}",
                "list the manifests of the service's workloads in deploy.manifests",
            )
        main = named or mine[0]
        # workloads in these manifests that no service owns (a Redis beside the app): applied with the
        # service and waited for too, so that an image the cluster cannot pull is named at once
        mine += [m for m in docs if mf.is_workload(m) and m not in mine]
        for m in mine:
            if kinds.of(m.kind) is None:
                raise ConfigError(
                    f"service {svc.name}: {m.kind} {m.name} ({m.source}) is a workload kind devloop cannot roll out",
                    f"use one of {', '.join(kinds.KINDS)}, or leave it out of the service's manifests",
                )
        declared = mf.namespace_of(main, "")
        wanted = self.spec.namespace
        if wanted and declared and declared != wanted:
            raise ConfigError(
                f"service {svc.name}: {main.kind} {main.name} says namespace {declared!r}, target {self.spec.name} says {wanted!r}",
                "remove metadata.namespace from the manifest or the target's namespace (one place decides)",
            )
        ns = wanted or declared or svc.deploy.namespace or self.context_namespace()
        return Deployed(docs, main, ns, tuple(mine))

    def namespace(self, svc: ServiceConfig) -> str:
        try:
            return self.manifests(svc).namespace
        except DevloopError:
            return self.spec.namespace or svc.deploy.namespace or self.context_namespace()

    def layout(self, svc: ServiceConfig) -> ServiceLayout:
        img = svc.image
        rules = IgnoreRules(tuple(read_dockerignore(img.context)) if img else (), img.dockerfile if img else "", self.config.watch.ignore)
        files, dirs, kustomize = mf.inputs(svc.manifests)
        if svc.deploy.helm is not None:  # any file below the chart, and its values files, count (as kustomize's inputs)
            kustomize += charts.inputs(svc.deploy.helm, self._target)
        fallback = svc.live_update.fallback if svc.live_update.enabled else None
        owned = self._owned_files(svc)
        mine = {str(f) for f in files if owned is None or str(f) in owned}
        foreign = tuple(sorted({str(f) for f in files} - mine))
        manifests = tuple(sorted(mine | {str(d) for d in dirs}))
        return ServiceLayout(
            svc.name,
            str(img.context) if img else "",
            rules,
            manifests,
            tuple(str(k) for k in kustomize),
            foreign,
            fallback,
            tuple(step.trigger for step in svc.live_update.run),
        )

    def layouts(self) -> list[ServiceLayout]:
        """Every service's layout, its manifests read again (a batch that may change them asks)."""
        self.forget()
        return [self.layout(s) for s in self.config.services]

    def config_files(self) -> list[str]:
        c = self.config
        return [str(p) for p in (c.file.resolve() if c.file else None, c.cluster.kind_config) if p is not None]

    def _owned_files(self, svc: ServiceConfig) -> set[str] | None:
        """Files of a shared manifests set that hold this service's objects (None: all of them)."""
        try:
            return {m.source for m in self.manifests(svc).docs}
        except DevloopError:
            return None

    def check(self) -> list[Deployed]:
        """Bad manifests are a usage error before anything is created; warn (once) about missing probes."""
        if self._checked:
            return []
        self._checked = True
        found = []
        for svc in self.config.services:
            d = self.manifests(svc)
            found.append(d)
            if svc.image is None or d.deployment.kind != "Deployment":
                continue
            for c in mf.containers_of(d.deployment, svc.image.name):
                if not c.get("readinessProbe"):
                    self.out.warn(
                        f"service {svc.name}: Deployment {d.deployment.name} has no readinessProbe: a broken version takes the "
                        "service down before devloop can see it crash",
                        "add a readinessProbe (e.g. httpGet on a health path); devloop still rolls back a failed rollout",
                    )
                    break
        return found
