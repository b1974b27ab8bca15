"""Only for the e2e suite, which imports these names from here (tests/e2e/test_monitoring.py,
tests/e2e/test_dashboard.py) and is not edited during the reshape. Nothing in devloop/ imports this
module: delete it together with those imports (`Kube` → `devloop.api.ApiCluster`, `rollout_progress`
→ `devloop.workload`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from devloop.api import ApiCluster
from devloop.workload import rollout_progress

__all__ = ["Kube", "rollout_progress"]


class Kube(ApiCluster):
    """The cluster as those tests use it: `apply` also takes YAML text, and `runner` is kubectl's."""

    def __init__(self, context: str) -> None:
        super().__init__(context)
        self.runner = self.kubectl.runner

    def apply(self, docs: str | Sequence[Mapping[str, Any]], namespace: str) -> list[str]:
        return super().apply(list(yaml.safe_load_all(docs)) if isinstance(docs, str) else docs, namespace)
