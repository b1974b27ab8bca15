"""A declared remote target: a context in the user's kubeconfig and a registry its nodes pull from.

devloop never creates, deletes or prunes anything there but what it applied; it checks before it
acts (the context exists, the API server answers, the pull secret is where the pods run).
"""

from __future__ import annotations

from devloop.config import Config
from devloop.errors import ClusterUnavailable, ConfigError
from devloop.model import Outage
from devloop.output import Output
from devloop.ports import Cluster, Publisher
from devloop.targets import TargetSpec, require_context


class RemoteTarget:
    def __init__(self, spec: TargetSpec, *, kube: Cluster, publisher: Publisher, registry_host: str, out: Output) -> None:
        self.spec = spec
        self.kube = kube
        self.out = out
        self._publisher = publisher
        self._registry_host = registry_host

    @property
    def owns_cluster(self) -> bool:
        return False

    @property
    def publisher(self) -> Publisher:
        return self._publisher

    @property
    def pull_policy(self) -> str | None:
        return None  # the manifest's own: a shared cluster pulls as its owners decided

    @property
    def label(self) -> str:
        return self.spec.name

    def describe(self) -> str:
        return self.spec.describe()

    def reconfigure(self, config: Config) -> None:
        return None  # the target's registry is fixed for the session (`--target` resolved it)

    def exists(self) -> bool:
        return self.spec.context in self.kube.contexts()

    def require_existing(self) -> bool:
        self.ensure()
        return True

    def will_create(self) -> bool:
        return False  # never created by devloop

    def ensure(self) -> bool:
        """Its context exists in the kubeconfig and its API server answers (never created by devloop)."""
        require_context(self.spec, self.kube.contexts())
        if not self.kube.reachable():
            raise ClusterUnavailable(
                f"{self.describe()}: the API server does not answer",
                f"check `kubectl --context {self.spec.context} get --raw /readyz` (VPN, credentials)",
            )
        return False

    def abandon_creation(self) -> None:
        return None  # never created by devloop

    def require_pull_secret(self, namespaces: set[str]) -> None:
        """The target's imagePullSecret exists where the pods run (devloop names it, never reads it)."""
        secret = self.spec.pull_secret
        if not secret:
            return
        for ns in sorted(namespaces):
            if self.kube.get("secret", secret, ns) is None:
                raise ConfigError(
                    f"{self.describe()}: no secret {secret!r} in namespace {ns}",
                    f"create it: kubectl --context {self.spec.context} -n {ns} create secret docker-registry {secret} "
                    f"--docker-server={self._registry_host} --docker-username=… --docker-password=…",
                )

    def prepared(self, namespaces: set[str]) -> None:
        self.require_pull_secret(namespaces)
        self.out.info(f"{self.describe()}: API server and registry {self.spec.registry} answer; credentials accepted")

    def side_load(self, image: str) -> None:
        return None  # dev monitoring is for the local cluster

    def collect_garbage(self, service: str, image_name: str, in_use: set[str]) -> None:
        return None  # a remote registry is never pruned by devloop

    def vanished(self) -> str | None:
        return None  # never deleted by devloop: an unreachable target is an outage, not a loss

    def outage(self) -> Outage:
        return Outage(
            self.describe(),
            f"check the network path to it (VPN) and `kubectl --context {self.spec.context} get --raw /readyz`: devloop "
            "resumes them when it answers; a save meanwhile fails its deploy, save again after",
        )

    def remove_cluster(self) -> list[str]:
        raise ConfigError("--cluster cannot be used with --target: devloop never deletes a remote cluster", "drop --cluster")
