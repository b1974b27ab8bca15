from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from devloop import manifests as mf
from devloop.errors import ConfigError


@pytest.mark.parametrize(
    ("ref", "repo"),
    [
        ("my-web-app:latest", "my-web-app"),
        ("my-web-app", "my-web-app"),
        ("docker.io/library/my-web-app:1", "my-web-app"),
        ("localhost:5001/my-web-app:dl-abc", "localhost:5001/my-web-app"),
        ("my-registry/web-app:v1.0.0", "my-registry/web-app"),
        ("web@sha256:" + "a" * 64, "web"),
        ("index.docker.io/library/web:1", "web"),
        ("registry.example.com:5443/team/web:v1@sha256:" + "b" * 64, "registry.example.com:5443/team/web"),
        ("${WEB_IMAGE}", "${WEB_IMAGE}"),  # a template's placeholder: compared as it is
    ],
)
def test_image_repository(ref: str, repo: str) -> None:
    assert mf.image_repository(ref) == repo


def test_the_sample_manifests_are_the_seeds(repo: Path) -> None:
    docs = mf.load([repo / "sample-app" / "k8s"])
    dep = mf.find(docs, "Deployment", "web-app")
    assert dep is not None
    spec = dep.doc["spec"]
    assert spec["replicas"] == 3
    c = spec["template"]["spec"]["containers"][0]
    assert c["image"] == "my-web-app:latest"
    assert {"name": "NODE_ENV", "value": "production"} in c["env"]
    assert c["resources"] == {"requests": {"memory": "64Mi", "cpu": "250m"}, "limits": {"memory": "128Mi", "cpu": "500m"}}
    assert c["ports"][0]["containerPort"] == 3000
    svc = mf.find(docs, "Service", "web-app-service")
    assert svc is not None and svc.doc["spec"]["type"] == "LoadBalancer"
    assert svc.doc["spec"]["ports"][0]["port"] == 80 and svc.doc["spec"]["ports"][0]["targetPort"] == 3000
    cm = mf.find(docs, "ConfigMap", "prometheus-config")
    assert cm is not None and "kubernetes-pods" in cm.doc["data"]["prometheus.yml"]


def test_rewrite_swaps_only_our_image_and_guards_pull_policy(repo: Path) -> None:
    docs = mf.load([repo / "sample-app" / "k8s"])
    before = yaml.safe_dump_all([m.doc for m in docs])
    out = mf.rewrite(docs, "my-web-app", "my-web-app:dl-0123456789abcdef")
    dep = mf.find(out, "Deployment", "web-app")
    assert dep is not None
    c = dep.doc["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == "my-web-app:dl-0123456789abcdef"
    assert c["imagePullPolicy"] == "IfNotPresent"
    assert yaml.safe_dump_all([m.doc for m in docs]) == before  # the originals are untouched
    rendered = mf.to_yaml(out)
    assert "latest" not in rendered


def test_rewrite_leaves_other_images_alone() -> None:
    text = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  template:
    spec:
      initContainers: [{name: init, image: my-web-app}]
      containers:
        - {name: web, image: my-web-app:latest}
        - {name: sidecar, image: envoyproxy/envoy:v1, imagePullPolicy: Always}
"""
    out = mf.rewrite(mf.parse(text, "x.yaml"), "my-web-app", "my-web-app:dl-1")
    pod = out[0].doc["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["image"] == "my-web-app:dl-1"
    assert pod["containers"][1] == {"name": "sidecar", "image": "envoyproxy/envoy:v1", "imagePullPolicy": "Always"}


def test_rewrite_without_a_user_of_the_image_is_a_clear_error() -> None:
    docs = mf.parse("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n", "cm.yaml")
    with pytest.raises(ConfigError, match="no container in the manifests uses the image 'my-web-app'"):
        mf.rewrite(docs, "my-web-app", "my-web-app:dl-1")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kind: [\n", "bad.yaml: not valid YAML"),
        ("- a\n", "bad.yaml: document 1 is not a Kubernetes object"),
        ("apiVersion: v1\nkind: Service\n", "bad.yaml: document 1 (Service) has no metadata.name"),
    ],
)
def test_malformed_manifests(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        mf.parse(text, "bad.yaml")


def test_dev_rolling_update_override_touches_only_that_deployment(repo: Path) -> None:
    docs = mf.load([repo / "sample-app" / "k8s"])
    out = mf.with_rolling_update(docs, "web-app", "1", "2")
    dep = mf.find(out, "Deployment", "web-app")
    assert dep is not None and dep.doc["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 2},
    }
    original = mf.find(docs, "Deployment", "web-app")
    assert original is not None and "strategy" not in original.doc["spec"]
    assert mf.with_rolling_update(docs, "web-app", "25%", "0")[0].doc["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == "25%"


def test_rewrite_tells_the_app_its_tag_without_touching_other_env() -> None:
    from devloop import manifests as mf

    doc: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "template": {
                "spec": {"containers": [{"name": "web", "image": "web:latest", "env": [{"name": "NODE_ENV", "value": "production"}]}]}
            }
        },
    }
    (out,) = mf.rewrite([mf.Manifest("x.yaml", doc)], "web", "localhost:5001/web:dl-0123456789abcdef")
    c = out.doc["spec"]["template"]["spec"]["containers"][0]
    assert c["env"] == [{"name": "NODE_ENV", "value": "production"}, {"name": "DEVLOOP_IMAGE_TAG", "value": "dl-0123456789abcdef"}]
    assert doc["spec"]["template"]["spec"]["containers"][0]["env"] == [{"name": "NODE_ENV", "value": "production"}]  # a copy
