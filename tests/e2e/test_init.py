"""`devloop init` on an existing project, then `devloop up` rolls out what it wrote, on a real kind cluster.

examples/shop without its devloop.yaml and without a kind-config.yaml: init finds the three
Dockerfiles, the shared k8s/ directory and the two Services; the file it writes names no kind config
(devloop's built-in one, with the registry wiring, creates the cluster). The test adds only what this
offline machine needs and a user would not write: the test cluster's name and offline node image, the
offline registry image, the local Node.js base (buildArgs), no dashboard, a longer rollout timeout.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import CLUSTER, REPO, Harness, run_cli

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def shop(harness: Harness, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("e2e-init") / "shop"
    shutil.copytree(REPO / "examples" / "shop", root)
    (root / "devloop.yaml").unlink()
    assert not (root / "kind-config.yaml").exists()
    yield root
    if CLUSTER in harness.kind_clusters():
        run_cli(harness, root, "down", "--cluster")


def offline(text: str, harness: Harness) -> str:
    """The generated file plus this machine's lines: one buildArgs line under each image, a few top-level keys."""
    text = re.sub(r"^(      context: .*)$", rf"\1\n      buildArgs: {{NODE_IMAGE: {harness.node_base}}}", text, flags=re.MULTILINE)
    return text + (
        f"cluster: {{name: {CLUSTER}, nodeImage: {harness.kind_image}}}\n"
        f"registry: {{image: {harness.registry_image}}}\n"
        "dashboard: {enabled: false}\n"
    )


def test_init_then_up_rolls_out_every_service(harness: Harness, shop: Path) -> None:
    code, events, output = run_cli(harness, shop, "init")
    assert code == 0, output
    (done,) = [e for e in events if e["event"] == "init"]
    assert done["written"] and sorted(done["services"]) == ["api", "web", "worker"] and done["questions"] == []
    written = (shop / "devloop.yaml").read_text()
    assert yaml.safe_load(written)["manifests"] == ["k8s"] and "kindConfig" not in written

    generated = yaml.safe_load(written)
    (shop / "devloop.yaml").write_text(offline(written, harness))
    assert [s["image"] for s in yaml.safe_load((shop / "devloop.yaml").read_text())["services"]] == [
        {**s["image"], "buildArgs": {"NODE_IMAGE": harness.node_base}} for s in generated["services"]
    ]

    code, events, output = run_cli(harness, shop, "up")
    assert code == 0, output
    up = next(e for e in events if e["event"] == "up")
    by_name = {s["service"]: s for s in up["services"]}
    assert set(by_name) == {"web", "api", "worker"} and all(s["ok"] for s in by_name.values()), output
    assert len(by_name["web"]["ready_pods"]) == 2 and len(by_name["worker"]["ready_pods"]) == 1
    web = by_name["web"]["forwards"][0]
    assert web["http_status"] == 200 and "web v1" in web["response"] and "api v1" in web["response"]  # web reached the api
    assert any("creating kind cluster" in e.get("message", "") and "built-in kind config" in e["message"] for e in events), output
    registry = harness.kubectl_json("get", "pods", "-l", "app=web")["items"][0]["spec"]["containers"][0]["image"]
    assert registry.startswith("localhost:5001/shop-web:dl-")  # the built-in kind config wired the local registry
