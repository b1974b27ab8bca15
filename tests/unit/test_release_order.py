"""`devloop release` for a team's whole project, over fakes: a database without image (a StatefulSet
applied as its manifest says), a migration Job devloop builds that dependsOn it, and an API that
dependsOn the Job. The order, what a failing Job stops, and what is rolled back for each kind."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest

from devloop import config as config_mod
from devloop.errors import DevloopError
from devloop.images import Images, Pushed
from devloop.output import Output
from devloop.registry_client import RegistryClient, RemoteManifest
from devloop.release import Release, Released, Undo, undo_for
from devloop.remote import Address, RemotePublisher
from devloop.targets import TargetSpec
from devloop.targets.remote import RemoteTarget
from tests.unit.fakes import FakeCluster, FakeDocker, make_engine

REGISTRY = "r.example:5443/team"
NS = "shop"


def digest_of(ref: str) -> str:
    return "sha256:" + hashlib.sha256(ref.encode()).hexdigest()


def pinned(image: str, version: str) -> str:
    ref = f"{REGISTRY}/{image}:{version}"
    return f"{ref}@{digest_of(ref)}"


class RegistryDocker(FakeDocker):
    """The local Docker engine as a release uses it: image IDs, tags, pushes into `registry`."""

    def __init__(self, registry: dict[str, RemoteManifest]) -> None:
        super().__init__()
        self.registry = registry
        self.pushed: list[str] = []

    def image_id(self, ref: str) -> str:
        return "sha256:id-" + ref

    def tag(self, ref: str, new_ref: str) -> None:
        self.present.add(new_ref)

    def push(self, ref: str, progress: Callable[[str], None], refused: Callable[[str, str], DevloopError]) -> Pushed:
        digest = digest_of(ref)
        self.pushed.append(ref)
        repo, _, tag = ref.partition(f"{REGISTRY.split('/')[0]}/")[2].rpartition(":")
        manifest = RemoteManifest(digest, "sha256:id-" + ref, 100)
        self.registry[f"{repo}:{tag}"] = self.registry[f"{repo}:{digest}"] = manifest
        return Pushed(ref, digest, 100, 1, 0)


class FakeRegistry(RegistryClient):
    def __init__(self, registry: dict[str, RemoteManifest]) -> None:
        super().__init__(REGISTRY.split("/")[0], credentials=None)
        self.registry = registry

    def check(self) -> None:
        return None

    def manifest(self, repository: str, reference: str) -> RemoteManifest | None:
        return self.registry.get(f"{repository}:{reference}")


def pod(spec: str) -> str:
    return f"    spec:\n{spec}"


def write_project(root: Path, db_image: str = "postgres:16") -> None:
    for name in ("migrate", "api"):
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "Dockerfile").write_text("FROM scratch\n")
    (root / "k8s").mkdir(exist_ok=True)
    (root / "k8s" / "db.yaml").write_text(
        "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: db}\nspec:\n  serviceName: db\n  selector: {matchLabels: {app: db}}\n"
        f"  template:\n    metadata: {{labels: {{app: db}}}}\n    spec:\n      containers: [{{name: db, image: '{db_image}'}}]\n"
    )
    (root / "k8s" / "migrate.yaml").write_text(
        "apiVersion: batch/v1\nkind: Job\nmetadata: {name: migrate}\nspec:\n  template:\n"
        "    spec:\n      restartPolicy: Never\n      containers: [{name: migrate, image: shop-migrate}]\n"
    )
    (root / "k8s" / "api.yaml").write_text(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: api}\nspec:\n  selector: {matchLabels: {app: api}}\n  template:\n"
        "    metadata: {labels: {app: api}}\n    spec:\n      containers:\n      - name: api\n        image: shop-api\n"
        "        readinessProbe: {tcpSocket: {port: 3000}}\n"
    )
    (root / "devloop.yaml").write_text(
        "apiVersion: devloop/v2\nmonitoring: {enabled: false}\ndashboard: {enabled: false}\nservices:\n"
        "  - name: api\n    image: {name: shop-api, context: api}\n    deploy: {manifests: [k8s/api.yaml]}\n    dependsOn: [migrate]\n"
        "  - name: db\n    deploy: {manifests: [k8s/db.yaml]}\n"
        "  - name: migrate\n    image: {name: shop-migrate, context: migrate}\n    deploy: {manifests: [k8s/migrate.yaml]}\n"
        "    dependsOn: [db]\n"
        f"targets:\n  - name: prod\n    context: kind-prod\n    registry: {REGISTRY}\n    namespace: {NS}\n"
    )


class Shop:
    """The project, the fake target (cluster, registry, Docker) and what the release printed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cluster = FakeCluster("kind-prod")
        self.registry: dict[str, RemoteManifest] = {}
        self.docker = RegistryDocker(self.registry)
        self.stdout = io.StringIO()

    def prepare(self, out: Output, version: str, *, rollback: bool = True) -> Release:
        """The release as wiring.py wires it, over the fakes."""
        publisher = RemotePublisher(cast(Images, self.docker), FakeRegistry(self.registry), Address.parse(REGISTRY))
        spec = TargetSpec("prod", "kind-prod", REGISTRY, NS, None, remote=True)
        target = RemoteTarget(spec, kube=self.cluster, publisher=publisher, registry_host=REGISTRY.split("/")[0], out=out)
        config = config_mod.load(None, self.root)
        engine = make_engine(config, out, images=self.docker, kube=self.cluster, publisher=publisher, target=target)
        return Release(engine, cast(Images, self.docker), version, rollback=rollback)

    def release(self, version: str, *, rollback: bool = True) -> tuple[Release, dict[str, Released]]:
        rel = self.prepare(Output(json_mode=True, stdout=self.stdout), version, rollback=rollback)
        return rel, {r.service: r for r in rel.run()}

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.getvalue().splitlines() if line.strip()]

    def applied(self) -> list[str]:
        """The workloads applied, in order."""
        return [n for _, names in self.cluster.applies for n in names]


@pytest.fixture
def shop(tmp_path: Path) -> Shop:
    write_project(tmp_path)
    return Shop(tmp_path)


def test_a_release_applies_the_database_then_the_job_then_the_api(shop: Shop) -> None:
    rel, results = shop.release("v1")
    assert all(r.ok for r in results.values()), results
    assert [s.name for s in rel.order()] == ["db", "migrate", "api"]
    assert shop.applied() == ["StatefulSet/db", "Job/migrate", "Deployment/api"]
    assert any(e.get("order") == ["db", "migrate", "api"] for e in shop.events())  # the order is said
    assert (results["migrate"].summary, results["db"].workload) == ("job migrate completed", "StatefulSet/db")


def test_a_service_without_image_is_applied_as_its_manifest_says_and_nothing_of_it_is_pushed(shop: Shop) -> None:
    _, results = shop.release("v1")
    db = shop.cluster.objects[(NS, "StatefulSet", "db")]
    assert db["spec"]["template"]["spec"]["containers"] == [{"name": "db", "image": "postgres:16"}]  # no env, no pull policy
    assert results["db"].ref == "postgres:16" and not results["db"].pushed
    assert shop.docker.pushed == [f"{REGISTRY}/shop-api:v1", f"{REGISTRY}/shop-migrate:v1"]
    assert results["db"].ready_pods  # waited for: its pods are ready


def test_the_job_runs_the_releases_pinned_version(shop: Shop) -> None:
    _, results = shop.release("v1")
    job = shop.cluster.objects[(NS, "Job", "migrate")]
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert c["image"] == results["migrate"].ref == pinned("shop-migrate", "v1")
    assert {"name": "DEVLOOP_IMAGE_TAG", "value": "v1"} in c["env"]


def test_a_failing_job_shows_its_log_and_its_dependents_are_not_rolled_out(shop: Shop) -> None:
    shop.release("v1")
    shop.cluster.crashing.add(pinned("shop-migrate", "v2"))
    shop.cluster.job_log = ["migrating…", 'ERROR: relation "users" already exists', "exit 1"]
    before = len(shop.cluster.applies)
    _, results = shop.release("v2")
    migrate, api = results["migrate"], results["api"]
    assert not migrate.ok and "job migrate: job failed (BackoffLimitExceeded" in (migrate.error or "")
    assert any('relation "users" already exists' in line for line in migrate.details)  # its log excerpt
    assert "a Job has no rollback" in migrate.outcome
    assert not api.ok and api.error == "not rolled out: migrate (dependsOn) failed" and not api.deployed
    assert "Deployment/api" not in [n for _, names in shop.cluster.applies[before:] for n in names]  # never applied
    assert shop.cluster.serving("api", NS) == [pinned("shop-api", "v1")]
    assert api.outcome == "v1 keeps serving (1/1 ready pods run it; not rolled out)"  # asked of the cluster


def test_a_dependency_that_never_ran_says_its_dependent_runs_nothing_yet(shop: Shop) -> None:
    shop.cluster.crashing.add(pinned("shop-migrate", "v1"))
    _, results = shop.release("v1")
    assert results["api"].outcome == "Deployment api does not run yet: nothing of it was applied"
    assert results["db"].ok


def test_a_failed_statefulset_goes_back_to_its_previous_revision(tmp_path: Path) -> None:
    write_project(tmp_path, "postgres:16")
    shop = Shop(tmp_path)
    shop.release("v1")
    write_project(tmp_path, "postgres:17")
    shop.cluster.crashing.add("postgres:17")
    _, results = shop.release("v2")
    db = results["db"]
    assert not db.ok and db.rolled_back, db
    assert shop.cluster.undos == [("statefulset/db", "")]
    assert db.outcome == "rolled back to postgres:16, which serves again (1/1 pods ready)"
    assert not results["migrate"].deployed and not results["api"].deployed  # they waited for db: not applied


def test_a_failed_deployment_goes_back_to_the_revision_it_replaced(shop: Shop) -> None:
    shop.release("v1")
    shop.cluster.crashing.add(pinned("shop-api", "v2"))
    _, results = shop.release("v2")
    api = results["api"]
    assert not api.ok and api.rolled_back and any("SyntaxError" in line for line in api.details), api
    assert shop.cluster.undos == [("api", "1")]
    assert shop.cluster.serving("api", NS) == [pinned("shop-api", "v1")]
    assert api.outcome == f"rolled back to {pinned('shop-api', 'v1')}, which serves again (1/1 pods ready)"
    assert results["migrate"].ok and results["db"].ok  # the Job ran the new version: a Job has no rollback


def test_no_rollback_leaves_the_failed_statefulset(tmp_path: Path) -> None:
    write_project(tmp_path, "postgres:16")
    shop = Shop(tmp_path)
    shop.release("v1")
    write_project(tmp_path, "postgres:17")
    shop.cluster.crashing.add("postgres:17")
    _, results = shop.release("v2", rollback=False)
    assert results["db"].outcome == "--no-rollback: statefulset db keeps the failed rollout of v2"
    assert shop.cluster.undos == []


def test_the_dry_run_plans_every_service_in_order_including_the_one_without_image(shop: Shop) -> None:
    plans = shop.prepare(Output(json_mode=True, stdout=shop.stdout), "v1").dry_run()
    assert [p["service"] for p in plans] == ["db", "migrate", "api"]
    db, migrate, _ = plans
    assert (db["image"], db["workload"], db["after"]) == ("postgres:16", "StatefulSet/db", [])
    assert db["commands"] == [
        f"kubectl --context kind-prod -n {NS} apply -f {shop.root / 'k8s' / 'db.yaml'}",
        f"kubectl --context kind-prod -n {NS} rollout status statefulset/db",
    ]
    assert migrate["after"] == ["db"]
    assert f"kubectl --context kind-prod -n {NS} wait --for=condition=complete job/migrate" in migrate["commands"]
    assert shop.cluster.applies == [] and shop.docker.pushed == []  # nothing changed


def cli(shop: Shop, monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[int, str]:
    from typer.testing import CliRunner

    from devloop import wiring
    from devloop.cli import app

    monkeypatch.chdir(shop.root)
    monkeypatch.setattr(wiring, "release", lambda cfg, out, target, version, rollback, force_conflicts: shop.prepare(out, version))
    result = CliRunner().invoke(app, ["release", *args, "--target", "prod"])
    return result.exit_code, result.output


def test_the_terminal_says_the_order_and_what_each_service_became(shop: Shop, monkeypatch: pytest.MonkeyPatch) -> None:
    code, output = cli(shop, monkeypatch, "v1")
    assert code == 0, output
    assert "order (dependsOn): db → migrate → api" in output
    assert "db: postgres:16 (StatefulSet/db as its manifests say; 1/1 pods ready)" in output
    assert "migrate: " + pinned("shop-migrate", "v1") + " (pushed 100 B of 100 B; job migrate completed)" in output
    shop.cluster.crashing.add(pinned("shop-migrate", "v2"))
    code, output = cli(shop, monkeypatch, "v2")
    assert code == 1, output
    assert "api failed: not rolled out: migrate (dependsOn) failed" in output
    assert "v1 keeps serving (1/1 ready pods run it; not rolled out)" in output
    assert "2 of 3 services failed" in output


def test_the_dry_run_in_the_terminal_lists_the_services_in_order(shop: Shop, monkeypatch: pytest.MonkeyPatch) -> None:
    code, output = cli(shop, monkeypatch, "v1", "--dry-run")
    assert code == 0, output
    lines = output.splitlines()
    assert "  order (dependsOn): db → migrate → api" in lines
    assert any(line.startswith("  db: StatefulSet/db: postgres:16 (no image of devloop's") for line in lines), output
    assert any(line.startswith("  migrate: Job/migrate:") and line.endswith("; after db)") for line in lines), output
    assert shop.cluster.applies == []


# -- what is rolled back, per kind (pure) -------------------------------------------------------------


def live(image: str, revision: str = "") -> dict[str, Any]:
    meta = {"annotations": {"deployment.kubernetes.io/revision": revision}} if revision else {}
    return {"metadata": meta, "spec": {"template": {"spec": {"containers": [{"name": "app", "image": image}]}}}}


@pytest.mark.parametrize(
    ("kind", "before", "now", "expected"),
    [
        ("Deployment", live("a:1", "4"), live("a:2", "5"), Undo("deployment", "w", "4", "a:1")),
        ("Deployment", None, live("a:2", "1"), "nothing to roll back to: deployment w did not run on the target before"),
        ("Deployment", live("a:1"), live("a:2"), "nothing to roll back to: deployment w has no revision recorded"),
        ("StatefulSet", live("pg:16"), live("pg:17"), Undo("statefulset", "w", "", "pg:16")),
        ("DaemonSet", live("agent:1"), live("agent:2"), Undo("daemonset", "w", "", "agent:1")),
        ("StatefulSet", live("pg:16"), live("pg:16"), "nothing to roll back to: this release did not change statefulset w"),
        ("Job", live("m:1"), live("m:2"), "a Job has no rollback (it ran): w failed; the services that depend on it are not rolled out"),
        ("CronJob", live("m:1"), live("m:2"), "CronJob w is not waited for: nothing to roll back"),
    ],
)
def test_what_a_failed_workload_goes_back_to(kind: str, before: dict[str, Any] | None, now: dict[str, Any], expected: Undo | str) -> None:
    assert undo_for(kind, "w", before, now, set()) == expected


def test_a_built_services_rollback_looks_at_its_own_container() -> None:
    before = {
        "metadata": {"annotations": {"deployment.kubernetes.io/revision": "2"}},
        "spec": {"template": {"spec": {"containers": [{"name": "envoy", "image": "envoy:1"}, {"name": "web", "image": "r/web:v1@sha"}]}}},
    }
    assert undo_for("Deployment", "web", before, None, {"web"}) == Undo("deployment", "web", "2", "r/web:v1@sha")
