"""The composition root: the one module that builds the adapters (the Kubernetes API client, kind,
the Docker engine and its builders, the registries) and hands them to the core as ports.

Everything below it takes what it needs as arguments; nothing else constructs an adapter, and no
production code checks whether it was given a fake.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from devloop import gc, proc, tools
from devloop.api import ApiCluster
from devloop.builder import detect_builder
from devloop.commands import CommandRunner, results_file
from devloop.config import Config, RegistryConfig
from devloop.engine import Engine
from devloop.helm import Helm
from devloop.images import Images
from devloop.kind import Kind
from devloop.output import Output
from devloop.ports import Builder, Cluster, quiet
from devloop.publish import KindLoadPublisher, RegistryPublisher
from devloop.registry import LocalRegistry
from devloop.registry_client import RegistryClient
from devloop.release import Release
from devloop.remote import Address, RemotePublisher
from devloop.targets import Target, TargetSpec, resolve
from devloop.targets.local import Collector, KindTarget, Transport
from devloop.targets.remote import RemoteTarget

Hold = Callable[[str, Callable[[str], None]], None]


class DetectedBuilder:
    """The builder, detected on first use (BuildKit through the docker CLI when it works, else the
    classic SDK builder): commands that never build never probe."""

    def __init__(self, images: Images) -> None:
        self._images = images
        self._builder: Builder | None = None

    @property
    def _detected(self) -> Builder:
        if self._builder is None:
            self._builder = detect_builder(self._images)
        return self._builder

    @property
    def name(self) -> str:
        return self._detected.name

    def build(
        self,
        context: Path,
        dockerfile: str,
        tag: str,
        build_args: Mapping[str, str],
        target: str | None = None,
        on_line: Callable[[str], None] = quiet,
        *,
        secrets: Mapping[str, Path] | None = None,
        secret_env: Mapping[str, str] | None = None,
    ) -> str:
        return self._detected.build(context, dockerfile, tag, build_args, target, on_line, secrets=secrets, secret_env=secret_env)


def collector(
    publisher: RegistryPublisher | KindLoadPublisher,
    kind: Kind,
    kube: Cluster,
    cluster: str,
    registry: RegistryConfig,
    keep: int,
    docker: Images,
) -> Collector:
    """The garbage collection of a kind target: the local registry (under the publisher's push lock)
    and every node's containerd; the pods the API server reports terminating hold no image."""

    def collect(image_name: str, in_use: set[str]) -> str:
        report = gc.collect(
            image_name,
            publisher.registry or None,
            kind.nodes(cluster),
            keep,
            in_use,
            registry_container=registry.name,
            client=docker.client,
            guard=publisher.lock if isinstance(publisher, RegistryPublisher) else None,
            leaving=lambda: gc.leaving_pods(kube),
        )
        return report.summary() if report.removed or report.errors else ""

    return collect


def _kind_transport(docker: Images, kind: Kind, kube: Cluster, out: Output) -> Callable[[Config], Transport]:
    def transport(config: Config) -> Transport:
        cluster = config.cluster.name
        loader = KindLoadPublisher(docker, kind, cluster)
        registry = LocalRegistry(config.registry, docker, kube)
        if config.registry_enabled:
            publisher: RegistryPublisher | KindLoadPublisher = RegistryPublisher(registry, kind, cluster)
        else:
            publisher = loader

        collect = collector(publisher, kind, kube, cluster, config.registry, config.keep_versions, docker)

        def remove() -> list[str]:
            return [f"container {config.registry.name} (local registry)"] if config.registry_enabled and registry.remove() else []

        def side_load(image: str) -> None:
            loader.load(image, out.info)

        return Transport(publisher, collect, side_load=side_load, remove=remove)

    return transport


def target(config: Config, spec: TargetSpec, out: Output, kube: Cluster, docker: Images) -> Target:
    if spec.remote:
        address = Address.parse(spec.registry)
        publisher = RemotePublisher(docker, RegistryClient(address.host, insecure=spec.insecure, token_hosts=spec.token_hosts), address)
        return RemoteTarget(spec, kube=kube, publisher=publisher, registry_host=address.host, out=out)
    kind = Kind()
    return KindTarget(spec, config, kind=kind, kube=kube, images=docker, transport=_kind_transport(docker, kind, kube, out), out=out)


def _wire(
    config: Config, out: Output, target_name: str | None, fetch_tools: bool, force_conflicts: bool = False, hold: Hold | None = None
) -> tuple[Engine, Images]:
    spec = resolve(config, target_name)  # an undeclared target is refused before any tool runs
    charted = any(s.deploy.helm for s in config.services)
    if fetch_tools:
        tools.ensure_tools([*spec.tools, *(["helm"] if charted else [])], out)
    else:
        tools.add_cache_to_path()
    kube = ApiCluster(spec.context, on_noise=lambda line: out.detail(f"kubernetes client: {line}"))
    docker = Images()
    built = Engine(
        config,
        out,
        images=docker,
        builder=DetectedBuilder(docker),
        kube=kube,
        target=target(config, spec, out, kube, docker),
        charts=Helm(),
        force_conflicts=force_conflicts,
        hold=hold,
    )
    return built, docker


def engine(
    config: Config,
    out: Output,
    target_name: str | None = None,
    *,
    fetch_tools: bool = True,
    force_conflicts: bool = False,
    hold: Hold | None = None,
) -> Engine:
    """The engine for `up`, `dev`, `down` and `status` on the named target (None: the local kind cluster).
    `force_conflicts`: on a target devloop does not own, take the fields other managers own. `hold`:
    asked before each service is deployed (`dev`'s commands with blocksDeploy)."""
    return _wire(config, out, target_name, fetch_tools, force_conflicts, hold)[0]


def commands(config: Config, out: Output) -> CommandRunner:
    """`dev`'s commands on the host (devloop.commands), through the one subprocess runner; their last
    results kept where `devloop status` reads them."""
    return CommandRunner(config.commands, out, proc.DEFAULT, config.root, state_file=results_file(config.root))


def release(config: Config, out: Output, target_name: str, version: str, *, rollback: bool, force_conflicts: bool = False) -> Release:
    """`release VERSION --target NAME`: the engine on that target, and the Docker engine that tags and pushes."""
    built, docker = _wire(config, out, target_name, True, force_conflicts)
    return Release(built, docker, version, rollback=rollback)


def doctor_adapters() -> tuple[Images, Kind, Callable[[str], ApiCluster]]:
    """`devloop doctor`'s real adapters: Docker, kind, and an API client per context."""
    return Images(), Kind(), ApiCluster
