"""Where devloop deploys: the local kind cluster (the implicit default) or a declared remote target.

Pure: resolving a name to a target and the refusal rules. A context that no target declares is
never used, a remote target is never created, deleted or pruned, and acting on it destructively
(`down --target`) needs `--yes`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from devloop.config import Config
from devloop.errors import ConfigError


@dataclass(frozen=True)
class Target:
    name: str
    context: str
    registry: str = ""  # host[:port][/path]; "" on the local cluster (devloop's own registry or kind load)
    namespace: str | None = None
    pull_secret: str | None = None
    insecure: bool = False
    remote: bool = False

    def describe(self) -> str:
        return f"target {self.name} (context {self.context})" if self.remote else f"kind cluster (context {self.context})"


def resolve(config: Config, name: str | None) -> Target:
    """`--target NAME` → the declared target; no name → the local kind cluster."""
    if name is None:
        return Target("kind", config.cluster.context)
    t = config.target(name)
    return Target(t.name, t.context, t.registry, t.namespace, t.pull_secret, t.insecure, remote=True)


def require_context(target: Target, contexts: Sequence[str]) -> None:
    """The target's context must exist in the kubeconfig (no fallback to the current context)."""
    if target.context not in contexts:
        raise ConfigError(
            f"{target.describe()}: no such context in your kubeconfig",
            f"`kubectl config get-contexts` lists what exists; fix targets[].context for {target.name}",
        )


def require_confirmed(target: Target, action: str, yes: bool) -> None:
    if target.remote and not yes:
        raise ConfigError(
            f"{action} on {target.describe()} needs --yes",
            f"it deletes what devloop applied there; run `devloop {action} --target {target.name} --yes` to confirm",
        )
