"""Only for the e2e suite, which imports these names from here (tests/e2e/test_monitoring.py,
tests/e2e/test_dashboard.py) and is not edited during the reshape. Nothing in devloop/ imports this
module: delete it together with those imports (`Kube` → `devloop.api.ApiCluster`, `rollout_progress`
→ `devloop.workload`, and a `kubectl get` of the cluster-scoped objects those tests look for)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from devloop.api import ApiCluster
from devloop.errors import CommandFailed
from devloop.workload import rollout_progress

__all__ = ["Kube", "rollout_progress"]


class Kube(ApiCluster):
    """The cluster as those tests use it: `apply` also takes YAML text, `get` is `kubectl get` (any
    resource, cluster-scoped ones too), and `runner` is kubectl's."""

    def __init__(self, context: str) -> None:
        super().__init__(context)
        self.runner = self.kubectl.runner

    def apply(self, docs: str | Sequence[Mapping[str, Any]], namespace: str, *, force: bool = True, manager: str = "devloop") -> list[str]:
        return super().apply(list(yaml.safe_load_all(docs)) if isinstance(docs, str) else docs, namespace, force=force, manager=manager)

    def get(self, resource: str, name: str, namespace: str) -> dict[str, Any] | None:
        argv = ["kubectl", "--context", self.context, "get", resource, name, "-n", namespace, "-o", "json"]
        r = self.runner.run(argv, timeout=30, check=False)
        if not r.ok:
            if "NotFound" in r.stderr or "not found" in r.stderr:
                return None
            raise CommandFailed(list(r.argv), r.returncode, r.stderr)
        data = json.loads(r.stdout)
        return data if isinstance(data, dict) else {}
