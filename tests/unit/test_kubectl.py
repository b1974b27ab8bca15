"""The kubectl adapter: what devloop still asks kubectl, always naming the context."""

from __future__ import annotations

import pytest
import yaml

from devloop.errors import StepFailed
from devloop.kubectl import Kubectl
from tests.unit.fakes import FakeRunner


def test_rollback_names_the_context_and_the_revision() -> None:
    runner = FakeRunner().expect("kubectl", "--context", "kind-dev", "rollout", "undo", "deployment/web", "-n", "shop", "--to-revision=3")
    Kubectl("kind-dev", runner).rollout_undo("web", "shop", "3")
    runner.done()


def test_a_statefulset_is_rolled_back_to_its_previous_controller_revision() -> None:
    runner = FakeRunner().expect("kubectl", "--context", "kind-dev", "rollout", "undo", "statefulset/db", "-n", "shop")
    Kubectl("kind-dev", runner).rollout_undo("db", "shop", "", "statefulset")
    runner.done()


def test_a_failed_rollback_is_a_step_failure_with_kubectls_reason() -> None:
    runner = FakeRunner().expect(
        "kubectl",
        "--context",
        "kind-dev",
        "rollout",
        "undo",
        "deployment/web",
        "-n",
        "shop",
        returncode=1,
        stderr='\nerror: no rollout history found for deployment "web"\n',
    )
    with pytest.raises(StepFailed, match='kubectl rollout undo failed: error: no rollout history found for deployment "web"') as info:
        Kubectl("kind-dev", runner).rollout_undo("web", "shop")
    assert "rollout history" in info.value.hint


def test_delete_sends_the_documents_and_waits_until_they_are_gone() -> None:
    runner = FakeRunner().expect(
        "kubectl",
        "--context",
        "kind-dev",
        "delete",
        "-n",
        "shop",
        "--ignore-not-found",
        "--wait=true",
        "-f",
        "-",
        stdout='deployment.apps "web" deleted\n\nservice "web" deleted\n',
    )
    docs = [{"kind": "Deployment", "metadata": {"name": "web"}}, {"kind": "Service", "metadata": {"name": "web"}}]
    assert Kubectl("kind-dev", runner).delete(docs, "shop") == ['deployment.apps "web" deleted', 'service "web" deleted']
    sent = runner.inputs[0]
    assert isinstance(sent, str) and list(yaml.safe_load_all(sent)) == docs
    runner.done()


def test_a_failed_kustomize_names_the_directory() -> None:
    runner = FakeRunner().expect("kubectl", "kustomize", "k8s/overlay", returncode=1, stderr="Error: no kustomization file found\n")
    with pytest.raises(StepFailed, match="kubectl kustomize k8s/overlay failed: Error: no kustomization file found"):
        Kubectl("kind-dev", runner).kustomize("k8s/overlay")


def test_the_context_namespace_is_default_when_the_context_names_none() -> None:
    view = ["kubectl", "config", "view", "--minify", "--context", "kind-dev", "-o", "jsonpath={..namespace}"]
    runner = FakeRunner().expect(*view, stdout="shop").expect(*view, stdout="").expect(*view, returncode=1, stderr="no context")
    kubectl = Kubectl("kind-dev", runner)
    assert [kubectl.context_namespace() for _ in range(3)] == ["shop", "default", "default"]
    runner.done()
