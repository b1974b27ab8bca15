"""Where devloop deploys: the local kind cluster (the implicit default) or a declared remote target.

`TargetSpec` is what the configuration names (pure: resolving `--target NAME` and the refusal
rules). `Target` is the behaviour: each kind of cluster answers, in one place, the questions the
rest of devloop must not branch on — does it exist, make sure it does, how images get there, the
pull policy and secret, garbage collection, what to say when it vanishes or stops answering, what
`down --cluster` removes, and whether devloop owns the cluster.

- `targets.local.KindTarget`: the local kind cluster, with devloop's registry or `kind load`;
- `targets.remote.RemoteTarget`: a declared remote target with its registry (never created,
  deleted or pruned by devloop).

The composition root (`wiring.py`) builds the one a command needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from devloop.config import Config
from devloop.errors import ConfigError
from devloop.model import Outage
from devloop.ports import Publisher


@dataclass(frozen=True)
class TargetSpec:
    name: str
    context: str
    registry: str = ""  # host[:port][/path]; "" on the local cluster (devloop's own registry or kind load)
    namespace: str | None = None
    pull_secret: str | None = None
    insecure: bool = False
    remote: bool = False
    token_hosts: tuple[str, ...] = ()  # hosts besides the registry's own that may receive the Docker login (a token service)

    def describe(self) -> str:
        return f"target {self.name} (context {self.context})" if self.remote else f"kind cluster (context {self.context})"

    @property
    def tools(self) -> list[str]:
        """The command-line tools working with this target needs (kind only for the local cluster)."""
        return ["kubectl"] if self.remote else ["kind", "kubectl"]


def resolve(config: Config, name: str | None) -> TargetSpec:
    """`--target NAME` → the declared target; no name → the local kind cluster."""
    if name is None:
        return TargetSpec("kind", config.cluster.context)
    t = config.target(name)
    return TargetSpec(t.name, t.context, t.registry, t.namespace, t.pull_secret, t.insecure, remote=True, token_hosts=t.token_hosts)


def require_context(spec: TargetSpec, contexts: Sequence[str]) -> None:
    """The target's context must exist in the kubeconfig (no fallback to the current context)."""
    if spec.context not in contexts:
        raise ConfigError(
            f"{spec.describe()}: no such context in your kubeconfig",
            f"`kubectl config get-contexts` lists what exists; fix targets[].context for {spec.name}",
        )


def require_confirmed(spec: TargetSpec, action: str, yes: bool) -> None:
    if spec.remote and not yes:
        raise ConfigError(
            f"{action} on {spec.describe()} needs --yes",
            f"it deletes what devloop applied there; run `devloop {action} --target {spec.name} --yes` to confirm",
        )


def check_down(spec: TargetSpec, cluster: bool, yes: bool) -> None:
    """`down`'s refusals, before anything runs: a remote cluster is never deleted; a remote target needs --yes."""
    if spec.remote and cluster:
        raise ConfigError("--cluster cannot be used with --target: devloop never deletes a remote cluster", "drop --cluster")
    require_confirmed(spec, "down", yes)


class Target(Protocol):
    """One kind of cluster devloop deploys to (see the module's docstring)."""

    spec: TargetSpec

    @property
    def owns_cluster(self) -> bool:
        """devloop creates (and may delete and prune) this cluster: forced apply, dev monitoring."""
        ...

    @property
    def publisher(self) -> Publisher:
        """How images get there."""
        ...

    @property
    def pull_policy(self) -> str | None:
        """The imagePullPolicy devloop sets on its images (None: the manifest's own)."""
        ...

    @property
    def label(self) -> str:
        """The name `status` reports (the kind cluster's name, or the target's)."""
        ...

    def describe(self) -> str: ...
    def reconfigure(self, config: Config) -> None:
        """A reloaded configuration (the image transport follows a changed registry section)."""
        ...

    def exists(self) -> bool:
        """Whether the cluster is there (never raises; `status`)."""
        ...

    def require_existing(self) -> bool:
        """Whether the cluster is there; a remote target must also answer (raises when it does not)."""
        ...

    def will_create(self) -> bool:
        """`ensure` is going to create the cluster (then `up` builds beside the creation)."""
        ...

    def ensure(self) -> bool:
        """Make sure the cluster exists and answers; True when it was created."""
        ...

    def abandon_creation(self) -> None:
        """Ctrl-C while `ensure` was creating the cluster (its processes already stopped): remove the
        half-made cluster, and say so, or say how to remove it."""
        ...

    def require_pull_secret(self, namespaces: set[str]) -> None: ...
    def prepared(self, namespaces: set[str]) -> None:
        """After the image transport is ready: the last checks, and what to say."""
        ...

    def side_load(self, image: str) -> None:
        """Make a local image that is in no registry available to the nodes (the monitoring image)."""
        ...

    def collect_garbage(self, service: str, image_name: str, in_use: set[str]) -> None:
        """In the background: old versions of a service's image, gone (never one in use)."""
        ...

    def vanished(self) -> str | None:
        """After a failure: why the cluster is gone (it was deleted), or None."""
        ...

    def outage(self) -> Outage: ...
    def remove_cluster(self) -> list[str]:
        """`down --cluster`: delete the cluster and what devloop created beside it; what was removed."""
        ...
