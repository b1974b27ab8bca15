"""A service's workloads (every workload that runs its image), services without image, and the start
order (dependsOn) with Jobs as steps: the engine over the fake cluster."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from devloop import config
from devloop.errors import ConfigError, CycleFailed
from devloop.output import Output
from devloop.plan import everything
from tests.unit.fakes import FakeCluster, FakeDocker, FakePublisher, make_engine

REPO = Path(__file__).resolve().parents[2]

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
      containers: [{name: db, image: "postgres:16", ports: [{name: pg, containerPort: 5432}]}]
---
apiVersion: v1
kind: Service
metadata: {name: db}
spec: {clusterIP: None, selector: {app: db}, ports: [{port: 5432, targetPort: pg}]}
"""
MIGRATE = """apiVersion: batch/v1
kind: Job
metadata: {name: migrate}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers: [{name: migrate, image: shop-migrate}]
"""
API = """apiVersion: apps/v1
kind: Deployment
metadata: {name: api}
spec:
  replicas: 2
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api}}
    spec:
      initContainers: [{name: wait, image: shop-api, command: [node, wait.js]}]
      containers:
        - name: api
          image: shop-api
          readinessProbe: {grpc: {port: 9000}}
          securityContext: {runAsNonRoot: true, readOnlyRootFilesystem: true}
        - {name: sidecar, image: "busybox@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: api-report}
spec:
  schedule: "0 * * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers: [{name: report, image: shop-api, command: [node, report.js]}]
"""
CONFIG = """apiVersion: devloop/v2
cluster: {kindConfig: kind-config.yaml}
services:
  - name: db
    deploy: {manifests: [k8s/db.yaml]}
  - name: migrate
    image: {name: shop-migrate, context: migrate}
    deploy: {manifests: [k8s/migrate.yaml], rolloutTimeout: 240}
    dependsOn: [db]
  - name: api
    image: {name: shop-api, context: api}
    deploy: {manifests: [k8s/api.yaml]}
    dependsOn: [migrate]
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "kind-config.yaml").write_text((REPO / "kind-config.yaml").read_text())
    for name in ("api", "migrate"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "Dockerfile").write_text("FROM node\nCOPY . /app\n")
        (tmp_path / name / "main.js").write_text(f"// {name} v1\n")
    (tmp_path / "k8s").mkdir()
    for name, text in (("db", DB), ("migrate", MIGRATE), ("api", API)):
        (tmp_path / "k8s" / f"{name}.yaml").write_text(text)
    (tmp_path / "devloop.yaml").write_text(CONFIG)
    return tmp_path


class World:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.cluster = FakeCluster()
        self.buf = io.StringIO()
        self.engine = make_engine(
            config.load(None, root),
            Output(json_mode=True, stdout=self.buf),
            images=FakeDocker(),
            kube=self.cluster,
            publisher=FakePublisher(),
        )

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in map(json.loads, self.buf.getvalue().splitlines()) if e["event"] == kind]

    def cycle(self) -> dict[str, Any]:
        return {r.service: r for r in self.engine.run(everything(self.engine.layouts(), "edit"))}

    def applied(self) -> list[str]:
        return [n for _, names in self.cluster.applies for n in names if not n.startswith(("Service/",))]


def test_a_services_workloads_are_every_workload_that_runs_its_image(project: Path) -> None:
    w = World(project)
    api = w.engine.manifests(w.engine.config.service("api"))
    assert [(m.kind, m.name) for m in api.rolled] == [("Deployment", "api"), ("CronJob", "api-report")]
    db = w.engine.manifests(w.engine.config.service("db"))
    assert [(m.kind, m.name) for m in db.rolled] == [("StatefulSet", "db")] and db.deployment.kind == "StatefulSet"


def test_up_rolls_out_in_dependency_order_with_one_build_for_every_workload_of_an_image(project: Path) -> None:
    w = World(project)
    results = {r.service: r for r in w.engine.up()}
    assert all(r.ok for r in results.values()), {s: r.error for s, r in results.items()}
    order = [n for n in w.applied() if n in ("StatefulSet/db", "Job/migrate", "Deployment/api")]
    assert order == ["StatefulSet/db", "Job/migrate", "Deployment/api"]
    api = w.cluster.objects[("default", "Deployment", "api")]
    cron = w.cluster.objects[("default", "CronJob", "api-report")]
    tag = str(results["api"].image)
    pod = api["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == tag and pod["initContainers"][0]["image"] == tag
    assert pod["containers"][1]["image"].startswith("busybox@sha256:")  # an image nobody builds stays as it is
    assert cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["image"] == tag
    assert w.cluster.objects[("default", "StatefulSet", "db")]["spec"]["template"]["spec"]["containers"][0]["image"] == "postgres:16"
    assert results["db"].image is not None and str(results["db"].image) == "postgres:16"
    said = {e["service"]: e["detail"] for e in w.events("phase") if e["phase"] == "rollout"}
    assert said["migrate"] == "job migrate completed" and said["db"] == "1/1 pods ready"


def test_a_failed_migration_job_holds_its_dependents_back_and_says_why(project: Path) -> None:
    w = World(project)
    w.engine.up()
    before = w.cluster.serving("api")
    for name in ("api", "migrate"):
        (project / name / "main.js").write_text(f"// {name} v2\n")
    w.cluster.job_log = ["connected to db:5432", "migrating: add column email", 'ERROR: column "email" already exists']
    w.cluster.crashing.add("localhost:5001/shop-migrate:" + w.engine.image_ref(w.engine.config.service("migrate")).tag)
    results = w.cycle()
    assert not results["migrate"].ok and results["migrate"].error is not None
    err = results["migrate"].error
    assert "job migrate: job failed (BackoffLimitExceeded" in err.message
    assert [d.split(": ", 1)[1] for d in err.details] == w.cluster.job_log  # its pod's log, named
    assert "Job has no rollback" in results["migrate"].outcome
    api = results["api"]
    assert not api.ok and api.error is not None and api.error.phase == "waiting"
    assert api.error.message == "not rolled out: migrate (dependsOn) failed" and "fix migrate" in api.error.hint
    assert "keeps serving (2/2 ready pods run it; not rolled out)" in api.outcome
    assert w.cluster.serving("api") == before  # the previous version serves: the new one was never applied
    assert [n for _, names in w.cluster.applies[-2:] for n in names if n == "Deployment/api"] == []
    # fixed: the Job runs again (replaced), and the API held back by it runs with it
    (project / "migrate" / "main.js").write_text("// migrate v3\n")
    runs = len(w.cluster.jobs_run)
    from devloop.plan import Plan, ServiceChange

    results = {r.service: r for r in w.engine.run(Plan(services=(ServiceChange("migrate", rebuild=True, image_files=("main.js",)),)))}
    assert set(results) == {"migrate", "api"} and all(r.ok for r in results.values())
    assert len(w.cluster.jobs_run) == runs + 1 and w.cluster.serving("api") == [str(results["api"].image)] * 2


def test_an_unchanged_completed_job_is_not_run_again(project: Path) -> None:
    w = World(project)
    w.engine.up()
    assert w.cluster.jobs_run == ["migrate"]
    results = w.cycle()  # every service applied again, nothing changed
    assert all(r.ok for r in results.values()) and w.cluster.jobs_run == ["migrate"]


def test_an_unknown_workload_kind_running_the_image_is_a_configuration_error(project: Path) -> None:
    (project / "k8s" / "api.yaml").write_text(API.replace("kind: Deployment", "kind: ReplicaSet"))
    w = World(project)
    with pytest.raises(ConfigError) as e:
        w.engine.check_manifests()
    assert e.value.message.startswith("service api: ReplicaSet api (") and "cannot roll out" in e.value.message
    assert "Deployment, StatefulSet, DaemonSet, Job, CronJob" in e.value.hint and e.value.exit_code == 2


def test_an_image_nobody_builds_and_the_cluster_cannot_pull_is_named_at_once(project: Path) -> None:
    w = World(project)
    w.cluster.unpullable.add("postgres:16")
    results = {r.service: r for r in w.engine.up()}
    db = results["db"]
    assert not db.ok and db.error is not None and db.error.phase == "rollout"
    assert db.error.message == (
        "StatefulSet db (" + str(project / "k8s" / "db.yaml") + ") runs image postgres:16, which no service builds "
        "and the cluster cannot pull (ErrImagePull)"
    )
    assert "Docker here" in db.error.hint and db.error.details == ['ErrImagePull: failed to pull image "postgres:16": not found']
    assert not results["migrate"].ok and results["migrate"].error is not None
    assert results["migrate"].error.message == "not rolled out: db (dependsOn) failed"
    api = results["api"].error  # held back by migrate, which db held back: the hint names the one to fix
    assert api is not None and api.message == "not rolled out: migrate (dependsOn) held back by db" and api.hint.startswith("fix db:")
    assert ("default", "Job", "migrate") not in w.cluster.objects  # nothing of the dependents was applied


def test_a_job_that_never_completes_fails_after_its_timeout_showing_its_pods_state(project: Path) -> None:
    import threading

    from devloop.rollout import Rollout

    w = World(project)
    w.engine.up()
    svc = w.engine.config.service("migrate")
    deployed = w.engine.manifests(svc)
    ticks = iter(range(0, 10_000, 60))  # a clock that moves a minute per reading: no real waiting
    rollout = Rollout(w.cluster, w.engine.out, lambda: float(next(ticks)), threading.Event())
    (project / "migrate" / "main.js").write_text("// migrate waits forever\n")
    ref = w.engine.image_ref(svc)
    w.cluster.stuck.add(ref.cluster)
    w.cluster.job_log = ["waiting for the database lock"]
    w.engine.deploy(svc, deployed, ref)  # the changed Job is replaced and runs
    with pytest.raises(CycleFailed) as e:
        rollout.wait_ready(svc, deployed, ref)
    assert e.value.message == "job migrate did not complete in 240s (0/1 completions, 1 running)"
    assert e.value.details[0].endswith(": Running; job: running") and e.value.details[1].endswith(": waiting for the database lock")
    assert "activeDeadlineSeconds" in e.value.hint


CACHE = """apiVersion: apps/v1
kind: StatefulSet
metadata: {name: cache}
spec:
  serviceName: cache
  replicas: 1
  selector: {matchLabels: {app: cache}}
  template:
    metadata: {labels: {app: cache}}
    spec:
      containers: [{name: cache, image: shop-cache, ports: [{name: tcp, containerPort: 6379}], readinessProbe: {exec: {command: [ping]}}}]
"""


def test_a_statefulset_whose_new_version_crashes_is_rolled_back_and_serves_again(project: Path) -> None:
    (project / "cache").mkdir()
    (project / "cache" / "Dockerfile").write_text("FROM node\n")
    (project / "cache" / "main.js").write_text("// cache v1\n")
    (project / "k8s" / "cache.yaml").write_text(CACHE)
    (project / "devloop.yaml").write_text(
        CONFIG + "  - name: cache\n    image: {name: shop-cache, context: cache}\n    deploy: {manifests: [k8s/cache.yaml]}\n"
    )
    w = World(project)
    w.engine.up()
    good = w.engine.state["cache"].good
    assert good is not None
    (project / "cache" / "main.js").write_text("// cache v2, broken\n")
    svc = w.engine.config.service("cache")
    w.cluster.crashing.add(w.engine.image_ref(svc).cluster)
    from devloop.plan import Plan, ServiceChange

    (r,) = w.engine.run(Plan(services=(ServiceChange("cache", rebuild=True, image_files=("main.js",)),)))
    assert not r.ok and r.error is not None and "CrashLoopBackOff" in r.error.message
    assert r.rolled_back and r.outcome == f"rolled back to {good.tag}, which serves again (1/1 pods ready)"
    pods = w.cluster.pods("default", {"app": "cache"})
    assert [p["spec"]["containers"][0]["image"] for p in pods] == [good.cluster]
    sts = w.cluster.objects[("default", "StatefulSet", "cache")]
    assert sts["spec"]["template"]["spec"]["containers"][0]["image"] == good.cluster  # the good manifests applied again


def test_the_pods_of_a_job_are_found_by_its_name_and_a_statefulsets_by_its_selector(project: Path) -> None:
    w = World(project)
    assert w.engine.manifests(w.engine.config.service("migrate")).selector == {"job-name": "migrate"}
    assert w.engine.manifests(w.engine.config.service("db")).selector == {"app": "db"}


def test_live_updates_restart_loop_wraps_only_long_running_containers(project: Path) -> None:
    from devloop import manifests as mf

    docs = mf.parse(API, "api.yaml")
    out = mf.rewrite(docs, "shop-api", "localhost:5001/shop-api:dl-1", command=lambda c: ["node", "main.js"])
    deploy, cron = (m.doc for m in out)
    pod = deploy["spec"]["template"]["spec"]
    assert pod["containers"][0]["command"] != pod["initContainers"][0]["command"] == ["node", "wait.js"]  # the init container must end
    assert cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"] == ["node", "report.js"]


def test_status_judges_each_service_by_its_main_workloads_kind(project: Path) -> None:
    from devloop.status import healthy, human, status

    w = World(project)
    w.engine.up()
    info = status(w.engine.config, w.engine)
    by = {s["service"]: s for s in info["services"]}
    assert [(by[n]["kind"], by[n]["deployment"], by[n]["healthy"]) for n in ("db", "migrate", "api")] == [
        ("StatefulSet", "db", True),
        ("Job", "migrate", True),
        ("Deployment", "api", True),
    ]
    assert healthy(info)
    text = human(info)
    assert "db: healthy, 1/1 ready, image postgres:16" in text and "migrate: healthy, completed (1/1 succeeded)" in text
    (job_pod,) = by["migrate"]["pods"]
    assert f"  {job_pod['name']}: completed, 0 restarts" in text.splitlines()  # a Job's finished pod, not "not ready"


REDIS = """apiVersion: apps/v1
kind: Deployment
metadata: {name: redis}
spec:
  selector: {matchLabels: {app: redis}}
  template:
    metadata: {labels: {app: redis}}
    spec:
      containers: [{name: redis, image: "redis:7"}]
"""


def test_a_workload_nobody_owns_in_a_services_directory_is_waited_for_and_its_unpullable_image_named(project: Path) -> None:
    (project / "k8s" / "redis.yaml").write_text(REDIS)
    (project / "devloop.yaml").write_text(CONFIG.replace("manifests: [k8s/api.yaml]", "manifests: [k8s]"))
    w = World(project)
    api = w.engine.manifests(w.engine.config.service("api"))
    assert [(m.kind, m.name) for m in api.rolled] == [("Deployment", "api"), ("CronJob", "api-report"), ("Deployment", "redis")]
    w.cluster.unpullable.add("redis:7")
    results = {r.service: r for r in w.engine.up()}
    assert results["db"].ok and results["migrate"].ok  # their files hold their own workloads: not the api's share
    err = results["api"].error
    assert err is not None and err.message.startswith("Deployment redis (") and "runs image redis:7, which no service builds" in err.message
