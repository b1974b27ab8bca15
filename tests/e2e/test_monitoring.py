"""devloop.monitoring on a real kind cluster of its own (`devloop-mon`; the loop's `devloop-e2e` is not touched).

The sample app is built with docker and loaded with `kind load`, applied with its seed manifests (the
`prometheus-config` ConfigMap included), then Monitoring.ensure deploys Prometheus reading that ConfigMap.
Requests to the app must show up in Prometheus, labelled with the app's pods; a rollout of the sample must
still complete with Prometheus on the node; `remove` deletes Prometheus and leaves the user's ConfigMap.
Timings (Prometheus ready, rollout with and without Prometheus) are printed (`pytest -s`).
"""

from __future__ import annotations

import dataclasses
import io
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from devloop.config import MonitoringConfig
from devloop.errors import StepFailed
from devloop.kube import Kube, rollout_progress
from devloop.monitoring import NAME, Monitoring, cluster_name
from devloop.output import Output
from tests.e2e.conftest import REPO, Harness, poll

pytestmark = pytest.mark.e2e

CLUSTER = "devloop-mon"
CONTEXT = f"kind-{CLUSTER}"
NS = "default"
APP_IMAGE = "devloop-mon/web-app:e2e"
APP = {"app": "web-app"}


def run(harness: Harness, *argv: str, timeout: float = 600) -> str:
    p = subprocess.run(list(argv), env=harness.env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{' '.join(argv)} failed:\n{p.stdout}\n{p.stderr}"
    return p.stdout


@pytest.fixture(scope="module")
def mon(harness: Harness) -> Iterator[Harness]:
    """The cluster devloop-mon with the sample app applied and rolled out; deleted afterwards."""
    h = dataclasses.replace(harness, context=CONTEXT)
    if CLUSTER in h.kind_clusters():
        run(h, "kind", "delete", "cluster", "--name", CLUSTER)
    try:
        t = time.monotonic()
        run(h, "kind", "create", "cluster", "--name", CLUSTER, "--image", h.kind_image, "--config", str(REPO / "kind-config.yaml"))
        print(f"\ncluster {CLUSTER} created in {time.monotonic() - t:.1f}s")
        run(h, "docker", "build", "-q", "--build-arg", f"NODE_IMAGE={h.node_base}", "-t", APP_IMAGE, str(REPO / "sample-app"))
        t = time.monotonic()
        run(h, "kind", "load", "docker-image", APP_IMAGE, h.prometheus_image, "--name", CLUSTER)
        print(f"images loaded in {time.monotonic() - t:.1f}s")
        kube = Kube(CONTEXT)
        kube.apply(sample_manifests(), NS)
        t = time.monotonic()
        wait_rolled_out(kube, "web-app", 300)
        print(f"web-app rolled out in {time.monotonic() - t:.1f}s")
        yield h
    finally:
        subprocess.run(["kind", "delete", "cluster", "--name", CLUSTER], env=h.env, capture_output=True, check=False, timeout=300)


def sample_manifests() -> str:
    """The sample's k8s/ as a user has it, with the test's image and the tag passed to the app (DEVLOOP_IMAGE_TAG)."""
    docs = []
    for f in sorted((REPO / "sample-app" / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            if doc and doc["kind"] == "Deployment":
                (c,) = doc["spec"]["template"]["spec"]["containers"]
                c["image"] = APP_IMAGE
                c["env"].append({"name": "DEVLOOP_IMAGE_TAG", "value": "e2e"})
            if doc:
                docs.append(doc)
    return yaml.safe_dump_all(docs)


def wait_rolled_out(kube: Kube, name: str, timeout: float) -> str:
    def done() -> str | None:
        dep = kube.get("deployment", name, NS)
        ok, message = rollout_progress(dep) if dep else (False, "")
        return message if ok else None

    return poll(f"deployment {name} to roll out", timeout, done)


def rollout_seconds(kube: Kube, h: Harness, version: str) -> float:
    """A new version of the sample (a changed pod template), as a redeploy makes one: seconds until rolled out."""
    t = time.monotonic()
    patch = f'{{"spec":{{"template":{{"metadata":{{"annotations":{{"devloop.test/version":"{version}"}}}}}}}}}}'
    h.kubectl_run("patch", "deployment", "web-app", "-n", NS, "-p", patch)
    poll("the patch to be observed", 30, lambda: True if kube.get("deployment", "web-app", NS) else None)
    wait_rolled_out(kube, "web-app", 300)
    return time.monotonic() - t


def send_requests(kube: Kube, n: int, path: str = "/") -> None:
    """GET the app through the API server's service proxy (no port-forward)."""
    for _ in range(n):
        kube.runner.run(
            ["kubectl", "--context", CONTEXT, "get", "--raw", f"/api/v1/namespaces/{NS}/services/web-app-service:80/proxy{path}"],
            timeout=30,
            check=False,
        )


def test_ensure_without_the_configmap_is_a_warning(mon: Harness) -> None:
    kube = Kube(CONTEXT)
    out = Output(json_mode=True, stdout=io.StringIO())
    m = Monitoring(MonitoringConfig(enabled=True, config_map="no-such-config", image=mon.prometheus_image), kube, NS)
    assert m.ensure(out) is False
    assert [e["message"] for e in out.events if e["event"] == "warning"] == [
        "monitoring: ConfigMap 'no-such-config' not found in namespace default; Prometheus is not deployed"
    ]
    assert kube.get("deployment", NAME, NS) is None


def test_prometheus_scrapes_the_sample_and_is_removed(mon: Harness) -> None:
    kube = Kube(CONTEXT)
    rollout_off = rollout_seconds(kube, mon, "before-monitoring")
    out = Output(json_mode=True, stdout=io.StringIO())
    m = Monitoring(MonitoringConfig(enabled=True, image=mon.prometheus_image), kube, NS)

    print(f"sample rollout without Prometheus: {rollout_off:.1f}s")
    t = time.monotonic()
    try:
        assert m.ensure(out, timeout=240) is True
    except StepFailed as e:
        pytest.fail(f"{e.message}\n" + "\n".join(e.details) + f"\nhint: {e.hint}")
    ready_s = time.monotonic() - t
    assert any(e["event"] == "info" and "Prometheus ready" in e["message"] for e in out.events)
    (prom_pod,) = kube.pods(NS, {"app.kubernetes.io/name": NAME})
    assert prom_pod["spec"]["containers"][0]["image"] == mon.prometheus_image

    # Requests to the app show up in Prometheus, from the app's own pods (pod discovery through the RBAC).
    app_pods = {p["metadata"]["name"] for p in kube.pods(NS, APP)}
    assert len(app_pods) == 3

    def seen() -> list[dict[str, Any]] | None:
        send_requests(kube, 10)
        result = m.query('sum by (pod) (http_requests_total{app="web-app", path="/", status="200"})')
        return result if sum(float(r["value"][1]) for r in result) >= 10 else None

    t = time.monotonic()
    result = poll("http_requests_total of the app's pods in Prometheus", 180, seen, interval=2)
    print(f"Prometheus ready in {ready_s:.1f}s; first request counts queryable {time.monotonic() - t:.1f}s later")
    assert {r["metric"]["pod"] for r in result} <= app_pods

    # What `devloop status` shows: traffic over the last minute and the version serving.
    def traffic() -> Any:
        send_requests(kube, 10)
        send_requests(kube, 2, "/nope")
        s = m.service_stats(APP, NS)
        return s if s.rps and s.versions else None

    stats = poll("a request rate for web-app", 120, traffic, interval=2)
    print(f"service_stats: {stats.human()}")
    assert stats.rps is not None and stats.rps > 0
    assert stats.error_ratio == 0  # 404s are not server errors
    assert [(v.labels.get("image_tag"), v.pods) for v in stats.versions] == [("e2e", 3)]

    # A rollout of the app still completes with Prometheus on the node (its requests leave the surge room).
    rollout_on = rollout_seconds(kube, mon, "with-monitoring")
    print(f"sample rollout: {rollout_off:.1f}s without Prometheus, {rollout_on:.1f}s with Prometheus")

    # Its Kubernetes discovery had what it needs: no RBAC refusals or errors in its log.
    said = kube.logs(prom_pod["metadata"]["name"], NS, tail=300)
    assert not [line for line in said if "forbidden" in line or "level=error" in line], said[-20:]

    lines = m.remove()
    assert any(f'deployment.apps "{NAME}" deleted' in line for line in lines), lines
    for resource, name in [
        ("deployment", NAME),
        ("service", NAME),
        ("serviceaccount", NAME),
        ("clusterrole", cluster_name(NS)),
        ("clusterrolebinding", cluster_name(NS)),
    ]:
        assert kube.get(resource, name, NS) is None, f"{resource}/{name} is still there after remove()"
    assert kube.get("configmap", "prometheus-config", NS) is not None, "remove() must leave the user's ConfigMap"
    assert kube.get("deployment", "web-app", NS) is not None
