"""Several services in one loop: the examples/shop project (web → api, worker) on a real kind cluster.

The tests run in file order and share one cluster: `up` creates it, the last test deletes it.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import CLUSTER, REPO, Devloop, Harness, children_of_cluster, devloops, free_port, leave_cluster, run_cli
from tests.e2e.test_loop import edit, get

pytestmark = [pytest.mark.e2e, pytest.mark.shared_cluster]

SERVICES = ("web", "api", "worker")


@pytest.fixture(scope="module")
def shop(harness: Harness, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("e2e-shop") / "shop"
    shutil.copytree(REPO / "examples" / "shop", root)
    shutil.copy(REPO / "kind-config.yaml", root / "kind-config.yaml")
    doc = yaml.safe_load((root / "devloop.yaml").read_text())
    doc["cluster"] = {"name": CLUSTER, "nodeImage": harness.kind_image, "kindConfig": "kind-config.yaml"}
    doc["registry"] = {"image": harness.registry_image}
    doc["dashboard"] = {"enabled": False}
    for svc in doc["services"]:
        svc["image"]["buildArgs"] = {"NODE_IMAGE": harness.node_base}
        svc["deploy"]["rolloutTimeout"] = 240
        for f in svc.get("portForward", []):
            f["localPort"] = free_port()
    (root / "devloop.yaml").write_text(yaml.safe_dump(doc))
    return root


@pytest.fixture(scope="module", autouse=True)
def no_cluster_left(harness: Harness, shop: Path, request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    leave_cluster(harness, shop, request)


def forward_port(shop: Path, service: str) -> int:
    doc = yaml.safe_load((shop / "devloop.yaml").read_text())
    return int(next(s for s in doc["services"] if s["name"] == service)["portForward"][0]["localPort"])


def pods(harness: Harness, app: str) -> dict[str, str]:
    """Live pods of a Deployment: uid → image."""
    items = harness.kubectl_json("get", "pods", "-l", f"app={app}")["items"]
    return {p["metadata"]["uid"]: p["spec"]["containers"][0]["image"] for p in items if not p["metadata"].get("deletionTimestamp")}


@pytest.fixture
def shop_devloop(harness: Harness, shop: Path) -> Iterator[Any]:
    with devloops(harness, shop) as start:
        yield start


def test_up_brings_every_service_ready_and_each_forward_answers(harness: Harness, shop: Path) -> None:
    code, events, output = run_cli(harness, shop, "up")
    assert code == 0, output
    up = next(e for e in events if e["event"] == "up")
    by_name = {s["service"]: s for s in up["services"]}
    assert set(by_name) == set(SERVICES) and all(s["ok"] for s in by_name.values()), output
    assert len(by_name["web"]["ready_pods"]) == 2 and len(by_name["api"]["ready_pods"]) == 2 and len(by_name["worker"]["ready_pods"]) == 1
    web = by_name["web"]["forwards"][0]
    assert web["http_status"] == 200 and "web v1" in web["response"] and "api v1" in web["response"]
    assert by_name["api"]["forwards"][0]["http_status"] in (200, 404)  # the api answers (its / is not a route)
    assert by_name["worker"]["forwards"] == []
    done = {e["service"]: e for e in events if e["event"] == "cycle_done"}
    assert set(done) == set(SERVICES) and all(e["ok"] for e in done.values())
    assert len([e for e in events if e["event"] == "cycle_start"]) == 1  # one cycle, every service in it


def test_dev_rolls_only_what_changed_and_a_broken_service_keeps_its_old_version(harness: Harness, shop: Path, shop_devloop: Any) -> None:
    d: Devloop = shop_devloop("dev")
    web_port, api_port = forward_port(shop, "web"), forward_port(shop, "api")
    for _ in range(2):
        d.wait_for(lambda e: e["event"] == "port_forward" and e["ready"], 300, "both port-forwards")

    # 1. an edit to the API rolls the API only; the web pods keep their UIDs and show the new answer
    web_before = pods(harness, "web")
    edit(shop / "api" / "server.js", "'api v1'", "'api v2'")
    done = d.wait_for(lambda e: e["event"] == "cycle_done", 300, "the api cycle")
    assert done["service"] == "api" and done["ok"], done
    starts = [e for e in d.seen if e["event"] == "cycle_start"]
    assert starts[-1]["services"] == ["api"]
    assert pods(harness, "web") == web_before
    d.wait_for(lambda e: e["event"] == "port_forward" and e["ready"] and e["service"] == "api", 60, "the api forward after its rollout")
    assert "api v2" in get(web_port)[1]
    assert get(api_port, "/api/items")[0] == 200

    # 2. one save batch: web and api get new versions, the worker breaks
    worker_before = set(pods(harness, "worker").values())
    edit(shop / "web" / "server.js", "'web v1'", "'web v2'")
    edit(shop / "api" / "server.js", "'api v2'", "'api v3'")
    edit(shop / "worker" / "server.js", "const VERSION =", "const VERSION = = ")
    results: dict[str, dict[str, Any]] = {}
    while len(results) < 3:
        e = d.wait_for(lambda e: e["event"] == "cycle_done" and e["service"] not in results, 300, "a cycle of the batch")
        results[e["service"]] = e
    assert results["web"]["ok"] and results["api"]["ok"], results
    assert not results["worker"]["ok"] and results["worker"]["error"]["phase"] == "rollout"
    assert "rolled back" in results["worker"]["outcome"] or "keeps serving" in results["worker"]["outcome"], results["worker"]
    assert set(pods(harness, "worker").values()) == worker_before  # the worker's old version runs
    d.wait_for(lambda e: e["event"] == "port_forward" and e["ready"] and e["service"] == "web", 60, "the web forward")
    page = get(web_port)[1]
    assert "web v2" in page and "api v3" in page

    # 3. fixing the worker (as a new version) recovers it
    edit(shop / "worker" / "server.js", "const VERSION = =  'worker v1'", "const VERSION = 'worker v2'")
    fixed = d.wait_for(lambda e: e["event"] == "cycle_done" and e["service"] == "worker", 300, "the worker's fix")
    assert fixed["ok"], fixed
    assert set(pods(harness, "worker").values()) == {fixed["image"]}
    d.wait_for(
        lambda e: e["event"] == "log" and e["service"] == "worker" and "worker v2 processed" in e["line"], 60, "the fixed worker's log"
    )

    # 4. Ctrl-C stops every child (forwards and log streams of all services)
    assert children_of_cluster()
    assert d.interrupt() == 130
    assert children_of_cluster() == []


def test_down_leaves_nothing(harness: Harness, shop: Path) -> None:
    code, _events, output = run_cli(harness, shop, "down")
    assert code == 0, output
    for kind, name in [("deployment", s) for s in SERVICES] + [("service", "web"), ("service", "api")]:
        r = harness.kubectl_run("get", kind, name, check=False)
        assert r.returncode != 0 and "NotFound" in r.stderr, (kind, name, r.stdout)
    code, _events, output = run_cli(harness, shop, "down", "--cluster")
    assert code == 0 and CLUSTER not in harness.kind_clusters(), output
