"""The kubectl adapter: what devloop leaves to kubectl because it runs rarely and is subtle to
reimplement (kustomize, `rollout undo`, delete with --wait, an exec with stdin, kubeconfig
questions). Everything on the hot path goes over the API connection (api.py). Every call names the
context explicitly: devloop never acts on whatever cluster the user's current context points at."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from devloop.errors import CommandFailed, StepFailed
from devloop.proc import DEFAULT, Runner


class Kubectl:
    def __init__(self, context: str, runner: Runner = DEFAULT) -> None:
        self.context = context
        self.runner = runner

    def _argv(self, *args: str) -> list[str]:
        return ["kubectl", "--context", self.context, *args]

    def client_version(self) -> str:
        out = self.runner.run(["kubectl", "version", "--client", "-o", "json"], timeout=30).stdout
        try:
            return str(json.loads(out)["clientVersion"]["gitVersion"])
        except (ValueError, KeyError, TypeError):
            return out.strip() or "?"

    def contexts(self) -> list[str]:
        """The contexts the kubeconfig names (`kubectl config get-contexts -o name`)."""
        r = self.runner.run(["kubectl", "config", "get-contexts", "-o", "name"], timeout=30, check=False)
        return r.stdout.split() if r.ok else []

    def context_namespace(self) -> str:
        """The namespace the kube context names, else `default`."""
        r = self.runner.run(
            ["kubectl", "config", "view", "--minify", "--context", self.context, "-o", "jsonpath={..namespace}"], timeout=30, check=False
        )
        return (r.stdout.strip().split() or ["default"])[0] if r.ok else "default"

    def kustomize(self, directory: str) -> str:
        """`kubectl kustomize DIR`: kubectl's built-in kustomize (no cluster involved)."""
        try:
            return self.runner.run(["kubectl", "kustomize", directory], timeout=60).stdout
        except CommandFailed as e:
            raise StepFailed(f"kubectl kustomize {directory} failed: {_first_error(e.stderr)}", "fix the kustomization") from e

    def rollout_undo(self, deployment: str, namespace: str, revision: str = "", resource: str = "deployment") -> None:
        """`kubectl rollout undo RESOURCE/NAME` (a Deployment's ReplicaSets; a StatefulSet's or DaemonSet's
        ControllerRevisions); without `revision`, to the one before the current."""
        argv = self._argv("rollout", "undo", f"{resource}/{deployment}", "-n", namespace)
        if revision:
            argv.append(f"--to-revision={revision}")
        try:
            self.runner.run(argv, timeout=60)
        except CommandFailed as e:
            raise StepFailed(f"kubectl rollout undo failed: {_first_error(e.stderr)}", "check `kubectl rollout history`") from e

    def delete(self, docs: Sequence[Mapping[str, Any]], namespace: str) -> list[str]:
        """Delete these objects and wait until they are gone; kubectl's lines (`deployment.apps "x" deleted`)."""
        text = yaml.safe_dump_all([dict(d) for d in docs], sort_keys=False)
        out = self.runner.run(
            self._argv("delete", "-n", namespace, "--ignore-not-found", "--wait=true", "-f", "-"), input=text, timeout=180
        ).stdout
        return [line for line in out.splitlines() if line.strip()]

    def exec(self, pod: str, namespace: str, argv: list[str], stdin: bytes | None = None, timeout: float = 30) -> str:
        args = self._argv("exec", "-n", namespace, *(["-i"] if stdin is not None else []), pod, "--", *argv)
        return self.runner.run(args, input=stdin, timeout=timeout).stdout


def _first_error(stderr: str) -> str:
    """The first line kubectl wrote to stderr (its error), or "no output"."""
    for line in stderr.splitlines():
        if line.strip():
            return line.strip()
    return "no output"
