"""Workload kinds and the start order on a real kind cluster: a database StatefulSet nobody builds
(a local image, side-loaded), a migration Job that depends on it, and an app that depends on the Job.

The tests run in file order and share one cluster: the first `up` creates it, the last test deletes it.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import CLUSTER, REPO, Harness, children_of_cluster, leave_cluster, run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.shared_cluster]

# The database: any local image that listens (offline, no registry to pull Postgres from): the
# Node.js base with a tiny TCP server that answers "db ok".
DB = """apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  replicas: 1
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers:
        - name: db
          image: NODE_BASE
          command: [node, -e, "require('net').createServer(s => { s.on('error', () => {}); s.end('db ok'); }).listen(5432)"]
          ports: [{name: pg, containerPort: 5432}]
          readinessProbe: {tcpSocket: {port: pg}, periodSeconds: 2, timeoutSeconds: 10}
---
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{port: 5432, targetPort: pg}]
"""
MIGRATE_JOB = """apiVersion: batch/v1
kind: Job
metadata: {name: migrate}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers: [{name: migrate, image: e2e-migrate}]
"""
APP = """apiVersion: apps/v1
kind: Deployment
metadata: {name: app}
spec:
  replicas: 2
  selector: {matchLabels: {app: app}}
  template:
    metadata: {labels: {app: app}}
    spec:
      containers:
        - name: app
          image: e2e-app
          ports: [{name: http, containerPort: 8080}]
          readinessProbe: {httpGet: {path: /, port: http}, periodSeconds: 2, timeoutSeconds: 10}
          securityContext: {runAsNonRoot: true, runAsUser: 1000, readOnlyRootFilesystem: true}
"""
MIGRATE_JS = """const net = require('net');
if (process.env.BROKEN || require('fs').existsSync('/app/broken')) { console.log('migrating: add column email'); console.error('ERROR: column "email" already exists'); process.exit(1); }
const s = net.connect(5432, 'db', () => {});
s.on('data', d => { console.log('migrated against ' + d); process.exit(0); });
s.on('error', e => { console.error('ERROR: ' + e.message); process.exit(1); });
"""
APP_JS = """require('http').createServer((q, r) => r.end('app v1\\n')).listen(8080);
"""
DOCKERFILE = """ARG NODE_IMAGE
FROM ${NODE_IMAGE}
WORKDIR /app
COPY . .
CMD ["node", "main.js"]
"""


@pytest.fixture(scope="module")
def stack(harness: Harness, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("e2e-workloads") / "stack"
    (root / "k8s").mkdir(parents=True)
    shutil.copy(REPO / "kind-config.yaml", root / "kind-config.yaml")
    (root / "k8s" / "db.yaml").write_text(DB.replace("NODE_BASE", harness.node_base))
    (root / "k8s" / "migrate.yaml").write_text(MIGRATE_JOB)
    (root / "k8s" / "app.yaml").write_text(APP)
    for name, js in (("migrate", MIGRATE_JS), ("app", APP_JS)):
        (root / name).mkdir()
        (root / name / "Dockerfile").write_text(DOCKERFILE)
        (root / name / "main.js").write_text(js)
    build = {"buildArgs": {"NODE_IMAGE": harness.node_base}}
    doc: dict[str, Any] = {
        "apiVersion": "devloop/v2",
        "cluster": {"name": CLUSTER, "nodeImage": harness.kind_image, "kindConfig": "kind-config.yaml"},
        "registry": {"image": harness.registry_image},
        "dashboard": {"enabled": False},
        "services": [
            {"name": "db", "deploy": {"manifests": ["k8s/db.yaml"], "rolloutTimeout": 240}},
            {
                "name": "migrate",
                "image": {"name": "e2e-migrate", "context": "migrate", **build},
                "deploy": {"manifests": ["k8s/migrate.yaml"], "rolloutTimeout": 240},
                "dependsOn": ["db"],
            },
            {
                "name": "app",
                "image": {"name": "e2e-app", "context": "app", **build},
                "deploy": {"manifests": ["k8s/app.yaml"], "rolloutTimeout": 240},
                "dependsOn": ["migrate"],
            },
        ],
    }
    (root / "devloop.yaml").write_text(yaml.safe_dump(doc))
    return root


@pytest.fixture(scope="module", autouse=True)
def no_cluster_left(harness: Harness, stack: Path, request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    leave_cluster(harness, stack, request)


def phase_index(events: list[dict[str, Any]], service: str, phase: str) -> int:
    return next(i for i, e in enumerate(events) if e["event"] == "phase" and e.get("service") == service and e.get("phase") == phase)


def app_pods(harness: Harness) -> dict[str, tuple[str, bool]]:
    """The app's live pods: name → (image, ready)."""
    items = harness.kubectl_json("get", "pods", "-l", "app=app")["items"]
    return {
        p["metadata"]["name"]: (
            p["spec"]["containers"][0]["image"],
            any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions") or []),
        )
        for p in items
        if not p["metadata"].get("deletionTimestamp")
    }


def test_up_rolls_out_the_database_then_runs_the_migration_then_the_app(harness: Harness, stack: Path) -> None:
    code, events, output = run_cli(harness, stack, "up")
    assert code == 0, output
    up = next(e for e in events if e["event"] == "up")
    by_name = {s["service"]: s for s in up["services"]}
    assert all(s["ok"] for s in by_name.values()), output
    # the order dependsOn asks for: each dependency's rollout done before its dependent is applied
    assert phase_index(events, "db", "rollout") < phase_index(events, "migrate", "deploy")
    assert phase_index(events, "migrate", "rollout") < phase_index(events, "app", "deploy")
    job = harness.kubectl_json("get", "job", "migrate")
    assert job["status"].get("succeeded") == 1  # it ran against the database and completed
    logs = harness.kubectl_run("logs", "job/migrate").stdout
    assert "migrated against db ok" in logs
    assert len(by_name["db"]["ready_pods"]) == 1 and by_name["db"]["image"] == harness.node_base  # not built: the manifest's own
    pods = app_pods(harness)
    assert len(pods) == 2 and all(ready and image == by_name["app"]["image"] for image, ready in pods.values())


def test_a_failing_migration_blocks_the_app_whose_previous_version_keeps_serving(harness: Harness, stack: Path) -> None:
    before = app_pods(harness)
    (stack / "migrate" / "broken").write_text("yes\n")
    (stack / "app" / "main.js").write_text(APP_JS.replace("app v1", "app v2"))
    code, events, output = run_cli(harness, stack, "up")
    assert code == 1, output
    done = {e["service"]: e for e in events if e["event"] == "cycle_done"}
    migrate, app = done["migrate"], done["app"]
    assert not migrate["ok"] and "job migrate: job failed" in migrate["error"]["message"], output
    assert any('ERROR: column "email" already exists' in line for line in migrate["error"]["details"]), output
    assert not app["ok"] and app["error"]["message"] == "not rolled out: migrate (dependsOn) failed", output
    assert "keeps serving (2/2 ready pods run it; not rolled out)" in app["outcome"], output
    assert done["db"]["ok"]
    assert app_pods(harness) == before  # the same pods, the previous version, still ready


def test_the_fixed_migration_runs_again_and_the_app_rolls_out(harness: Harness, stack: Path) -> None:
    uid = harness.kubectl_json("get", "job", "migrate")["metadata"]["uid"]
    (stack / "migrate" / "broken").unlink()
    code, events, output = run_cli(harness, stack, "up")
    assert code == 0, output
    job = harness.kubectl_json("get", "job", "migrate")
    assert job["metadata"]["uid"] != uid and job["status"].get("succeeded") == 1  # replaced and run again
    up = next(e for e in events if e["event"] == "up")
    app = next(s for s in up["services"] if s["service"] == "app")
    pods = app_pods(harness)
    assert len(pods) == 2 and all(ready and image == app["image"] for image, ready in pods.values())


def test_down_cluster_leaves_nothing_behind(harness: Harness, stack: Path) -> None:
    code, _, output = run_cli(harness, stack, "down", "--cluster")
    assert code == 0, output
    assert CLUSTER not in harness.kind_clusters()
    assert children_of_cluster() == []
