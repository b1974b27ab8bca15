"""`devloop release` on a cluster devloop does not own: other field managers keep their fields.

On the remote kind cluster of conftest.py, black-box, as a team meets it: an HorizontalPodAutoscaler
targets the Deployment (devloop hands `spec.replicas` over and stops sending it: the replicas stay,
whoever scaled them); a colleague's `kubectl patch` of a field the manifests set stops the release
before anything is pushed or applied (exit 2, naming the field and its manager); with
`--force-conflicts` the release takes it back and says so.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import REPO, devloop_argv, free_port, poll
from tests.e2e.remote.conftest import Remote
from tests.e2e.remote.test_release import cli, deployment, error, result

pytestmark = pytest.mark.e2e

TARGET = "remote"
RUN = f"run-{uuid.uuid4().hex[:8]}"  # this module's path in the registry (versions are immutable)
HPA = "web-app"
MEMORY = '.spec.template.spec.containers[name="web-app"].resources.limits.memory'


@pytest.fixture(scope="module")
def project(remote: Remote, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("ownership") / "proj"
    shutil.copytree(REPO / "sample-app", root / "sample-app", ignore=shutil.ignore_patterns("node_modules"))
    shutil.copy(REPO / "kind-config.yaml", root / "kind-config.yaml")
    manifest = root / "sample-app" / "k8s" / "deployment.yaml"  # 5 replicas on the 2-CPU node: a smaller CPU request
    assert "cpu: '250m'" in manifest.read_text()
    manifest.write_text(manifest.read_text().replace("cpu: '250m'", "cpu: '50m'"))
    (root / "devloop.yaml").write_text(
        "apiVersion: devloop/v1\n"
        f"image:\n  buildArgs:\n    NODE_IMAGE: {remote.harness.node_base}\n"
        "monitoring:\n  enabled: false\n"
        "dashboard:\n  enabled: false\n"
        f"portForward:\n  localPort: {free_port()}\n"
        "deploy:\n  rolloutTimeout: 240\n"
        "targets:\n"
        f"  - name: {TARGET}\n"
        f"    context: {remote.context}\n"
        f"    registry: {remote.registry}/{RUN}\n"
        f"    namespace: {remote.namespace}\n"
        f"    pullSecret: {remote.pull_secret}\n"
    )
    yield root
    remote.kubectl("-n", remote.namespace, "delete", "hpa", HPA, "--ignore-not-found")


def fresh_release(remote: Remote, project: Path) -> None:
    """web-app deleted, then released as v1.0.0 by devloop alone: 3 replicas, every field devloop's."""
    remote.kubectl("-n", remote.namespace, "delete", "hpa", HPA, "--ignore-not-found")
    remote.kubectl("-n", remote.namespace, "delete", "deployment", "web-app", "--ignore-not-found", "--wait=true")
    code, _, output = cli(remote, project, "release", "v1.0.0", "--target", TARGET)
    assert code == 0, output
    assert deployment(remote)["spec"]["replicas"] == 3


def with_managers(remote: Remote) -> dict[str, Any]:
    return remote.kubectl_json("-n", remote.namespace, "get", "deployment", "web-app", "--show-managed-fields")


def managers_of_replicas(dep: dict[str, Any]) -> set[str]:
    return {e["manager"] for e in dep["metadata"]["managedFields"] if "f:replicas" in (e.get("fieldsV1", {}).get("f:spec") or {})}


def autoscale(remote: Remote) -> None:
    """An HPA for web-app between 2 and 10 replicas on CPU. The cluster has no metrics server: it
    never moves a count that is in range, so what happens to the replicas is devloop's doing."""
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": HPA, "namespace": remote.namespace},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web-app"},
            "minReplicas": 2,
            "maxReplicas": 10,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}],
        },
    }
    remote.kubectl("apply", "-f", "-", input=json.dumps(hpa))


def ready_replicas(remote: Remote, n: int) -> None:
    def check() -> bool | None:
        status = deployment(remote).get("status", {})
        return True if status.get("readyReplicas") == n and status.get("updatedReplicas") == n else None

    poll(f"{n} ready replicas of web-app", 180, check)


def test_another_managers_replica_count_survives_a_release(remote: Remote, project: Path) -> None:
    """Another manager scales the Deployment to 5 (as the autoscaler does) and an HPA targets it:
    the release keeps 5 (it used to scale production back to the manifest's 3)."""
    fresh_release(remote, project)
    autoscale(remote)
    remote.kubectl("-n", remote.namespace, "scale", "deployment", "web-app", "--replicas=5")
    ready_replicas(remote, 5)
    code, events, output = cli(remote, project, "release", "v1.0.0", "--target", TARGET)
    assert code == 0, output
    dep = with_managers(remote)
    assert dep["spec"]["replicas"] == 5 and dep["status"]["readyReplicas"] == 5, dep["status"]
    assert "devloop" not in managers_of_replicas(dep)
    said = [e["message"] for e in events if "replicas left to HorizontalPodAutoscaler" in e.get("message", "")]
    assert said == ["deployment.apps/web-app: replicas left to HorizontalPodAutoscaler web-app (devloop does not set spec.replicas)"]


def test_replicas_devloop_alone_held_are_handed_over_not_dropped(remote: Remote, project: Path) -> None:
    """devloop is the only manager of spec.replicas when the HPA arrives: no longer sending the field
    would let the API server remove it (1 replica); devloop hands it over first."""
    fresh_release(remote, project)
    autoscale(remote)
    code, events, output = cli(remote, project, "release", "v1.0.0", "--target", TARGET)
    assert code == 0, output
    dep = with_managers(remote)
    assert dep["spec"]["replicas"] == 3, dep["spec"]  # not removed (the API server's default would be 1)
    assert managers_of_replicas(dep) == {"devloop-handover-to-hpa"}, dep["metadata"]["managedFields"]
    said = [e["message"] for e in events if "replicas left to HorizontalPodAutoscaler" in e.get("message", "")]
    assert len(said) == 1, said  # said once


def test_a_field_another_manager_owns_stops_the_release_until_forced(remote: Remote, project: Path) -> None:
    fresh_release(remote, project)
    # a colleague raises the memory limit in place (field manager kubectl-patch)
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "web-app", "resources": {"limits": {"memory": "256Mi"}}}]}}}}
    remote.kubectl("-n", remote.namespace, "patch", "deployment", "web-app", "-p", json.dumps(patch))
    remote.kubectl("-n", remote.namespace, "rollout", "status", "deployment/web-app", "--timeout=180s")
    before = deployment(remote)
    repo = f"{RUN}/my-web-app"

    code, events, output = cli(remote, project, "release", "v1.1.0", "--target", TARGET, "--dry-run")
    assert code == 0, output
    (plan,) = result(events)["services"]
    assert len(plan["conflicts"]) == 1 and MEMORY in plan["conflicts"][0] and "kubectl-patch" in plan["conflicts"][0], plan

    code, events, output = cli(remote, project, "release", "v1.1.0", "--target", TARGET)
    assert code == 2, output
    err = error(events)
    assert err["kind"] == "FieldConflicts", err
    (line,) = err["details"]  # one line per field
    assert line.startswith(f"deployment.apps/web-app: {MEMORY} is owned by 'kubectl-patch'"), err
    assert "--force-conflicts" in err["hint"]
    after = deployment(remote)
    assert after["metadata"]["generation"] == before["metadata"]["generation"]  # nothing applied
    assert after["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] == "256Mi"
    assert "v1.1.0" not in remote.registry_tags(repo)  # nothing pushed

    # what a person reads (no --json)
    human = subprocess.run(
        [a for a in devloop_argv("release", "v1.1.0", "--target", TARGET) if a != "--json"],
        cwd=project,
        env=remote.env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    print("\n--- refusal as printed ---\n" + human.stderr + "--- end ---")
    assert human.returncode == 2, human.stdout + human.stderr
    assert MEMORY in human.stderr and "kubectl-patch" in human.stderr and "--force-conflicts" in human.stderr

    code, events, output = cli(remote, project, "release", "v1.1.0", "--target", TARGET, "--force-conflicts")
    assert code == 0, output
    (svc,) = result(events)["services"]
    assert svc["ok"] and svc["ref"].endswith(f":v1.1.0@{svc['digest']}"), svc
    took = [e["message"] for e in events if e["event"] == "warning" and "--force-conflicts" in e["message"]]
    assert took == [f"--force-conflicts: took {MEMORY} of deployment.apps/web-app from 'kubectl-patch'"], took
    dep = deployment(remote)
    assert dep["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] == "128Mi"
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == svc["ref"]
