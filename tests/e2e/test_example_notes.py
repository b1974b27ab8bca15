"""The notes example (examples/notes) as a team runs it, on the shared kind cluster: `devloop up` from
nothing brings up Postgres (a StatefulSet with a volume), the migration Job, the seed Job, the API and
the web front end (one Helm chart) in dependency order, and the page shows the rows of the database.
A migration with bad SQL then fails `up` with its log, and the API's previous version keeps serving.

Offline, as everywhere in tests/: Postgres is devloop-test/postgres:bookworm (tests/images/build-postgres.sh,
Debian's postgresql-15; DEVLOOP_TEST_POSTGRES_IMAGE=postgres:16-alpine on a laptop), the Node.js images
build from the harness's base, and the API's `pg` comes from the host's npm (put into the build
context's vendor/node_modules, which the Dockerfile uses instead of `npm ci`), as the example's README says.

The tests run in file order on the e2e cluster the modules share (`shared_cluster`, tests/e2e/conftest.py):
the first `up` finds it or creates it; the module's end removes the example, its volume too.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import CLUSTER, REPO, Harness, children_of_cluster, free_port, leave_cluster, poll, run_cli
from tests.e2e.test_loop import edit, get
from tests.e2e.test_workloads import phase_index

pytestmark = [pytest.mark.e2e, pytest.mark.shared_cluster]

EXAMPLE = REPO / "examples" / "notes"
LOCAL_POSTGRES = "devloop-test/postgres:bookworm"
PASSWORD = "notes-dev-password"  # k8s/db.yaml's development password: never in devloop's output
SEEDED = ("Welcome", "Start order", "Edit me")  # seed/seed.sql's titles
BAD_MIGRATION = "-- tags for the notes\nALTER TABLE notes ADD COLUMN tags text[] NOT NUL;\n"


def host_node_modules(api: Path) -> Path:
    """The API's dependencies (pg), installed by the host's npm from the example's lock file; cached
    under .cache/ by the lock file's hash (npm in a container cannot reach the registry here)."""
    key = hashlib.sha256((api / "package.json").read_bytes() + (api / "package-lock.json").read_bytes()).hexdigest()[:16]
    done = REPO / ".cache" / "notes-api-deps" / key
    if not (done / "node_modules").is_dir():
        work = done.with_name(key + ".tmp")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copy(api / name, work / name)
        subprocess.run(["npm", "ci", "--omit=dev", "--no-audit", "--no-fund"], cwd=work, check=True, stdout=subprocess.DEVNULL)
        shutil.rmtree(done, ignore_errors=True)
        work.rename(done)
    return done / "node_modules"


@pytest.fixture(scope="module")
def postgres_image() -> str:
    image = os.environ.get("DEVLOOP_TEST_POSTGRES_IMAGE", LOCAL_POSTGRES)
    if image == LOCAL_POSTGRES:
        subprocess.run(["bash", str(REPO / "tests" / "images" / "build-postgres.sh")], check=True, stdout=subprocess.DEVNULL)
    return image


@pytest.fixture(scope="module")
def notes(harness: Harness, postgres_image: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the example, pointed at the local images, the e2e cluster and free local ports."""
    root = tmp_path_factory.mktemp("e2e-notes") / "notes"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns("node_modules"))
    shutil.copytree(host_node_modules(root / "api"), root / "api" / "vendor" / "node_modules")
    shutil.copy(REPO / "kind-config.yaml", root / "kind-config.yaml")
    db = root / "k8s" / "db.yaml"
    edit(db, "image: postgres:16-alpine", f"image: {postgres_image}")
    doc: dict[str, Any] = yaml.safe_load((root / "devloop.yaml").read_text())
    doc["cluster"] = {"name": CLUSTER, "nodeImage": harness.kind_image, "kindConfig": "kind-config.yaml"}
    doc["registry"] = {"image": harness.registry_image}
    doc["dashboard"] = {"enabled": False}
    build_args = {
        "api": {"NODE_IMAGE": harness.node_base},
        "web": {"NODE_IMAGE": harness.node_base},
        "migrate": {"POSTGRES_IMAGE": postgres_image},
        "seed": {"POSTGRES_IMAGE": postgres_image},
    }
    for svc in doc["services"]:
        svc["deploy"]["rolloutTimeout"] = 240
        if "image" in svc:
            svc["image"]["buildArgs"] = build_args[svc["name"]]
        for f in svc.get("portForward", []):
            f["localPort"] = free_port()
    (root / "devloop.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return root


@pytest.fixture(scope="module", autouse=True)
def from_nothing(harness: Harness, notes: Path, request: pytest.FixtureRequest) -> Iterator[None]:
    """No earlier release of the example (objects or the database's volume) on a cluster left running."""
    if CLUSTER in harness.kind_clusters():
        harness.kubectl_run(
            "delete", "statefulset/db", "job/migrate", "job/seed", "deployment/api", "deployment/web", "pvc/data-db-0",
            "--ignore-not-found", "--wait",
        )  # fmt: skip
    yield
    if CLUSTER in harness.kind_clusters():  # the volume `down` keeps (tested above) is not left to the next module
        run_cli(harness, notes, "down")
        harness.kubectl_run("delete", "pvc/data-db-0", "--ignore-not-found", "--wait")
    leave_cluster(harness, notes, request)


@contextlib.contextmanager
def forwarded(harness: Harness, service: str) -> Iterator[int]:
    """The test's own `kubectl port-forward` to a Service's port 80 (devloop's `up` keeps none)."""
    port = free_port()
    argv = [harness.kubectl, "--context", harness.context, "port-forward", f"service/{service}", f"{port}:80"]
    proc = subprocess.Popen(argv, env=harness.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        poll(f"kubectl port-forward to service {service}", 60, lambda: get(port)[0] == 200 or None)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def sql(harness: Harness, query: str) -> str:
    """A query in the database, through psql in the db pod (the credentials from its environment)."""
    argv = ["exec", "db-0", "--", "sh", "-c", 'psql -tA -U "$POSTGRES_USER" -d "$POSTGRES_DB" -c "$0"', query]
    return harness.kubectl_run(*argv).stdout.strip()


def api_image(harness: Harness) -> str:
    return str(harness.kubectl_json("get", "deployment", "api")["spec"]["template"]["spec"]["containers"][0]["image"])


def test_up_from_nothing_brings_the_example_up_in_dependency_order(harness: Harness, notes: Path, postgres_image: str) -> None:
    code, events, output = run_cli(harness, notes, "up")
    assert code == 0, output
    up = next(e for e in events if e["event"] == "up")
    by_name = {s["service"]: s for s in up["services"]}
    assert list(by_name) == ["db", "migrate", "seed", "api", "web"] and all(s["ok"] for s in by_name.values()), output
    # dependsOn's order: each one ready (a Job: completed) before the next is applied
    order = ["db", "migrate", "seed", "api", "web"]
    for first, then in itertools.pairwise(order):
        assert phase_index(events, first, "rollout") < phase_index(events, then, "deploy"), (first, then, output)
    # Postgres: the local image, side-loaded, on a volume claimed from the cluster's default StorageClass
    assert by_name["db"]["image"] == postgres_image and len(by_name["db"]["ready_pods"]) == 1
    assert [by_name[s]["summary"] for s in order] == [
        "1/1 pods ready",
        "job migrate completed",
        "job seed completed",
        "2/2 pods ready",
        "1/1 pods ready",
    ]
    assert by_name["api"]["forwards"][0]["http_status"] == 200 and '"version":"api v1"' in by_name["api"]["forwards"][0]["response"]
    assert harness.kubectl_json("get", "pvc", "data-db-0")["status"]["phase"] == "Bound"
    assert sql(harness, "SELECT name FROM schema_migrations ORDER BY name") == "001_notes.sql"
    # the page through its forward shows the seeded rows, read from the database by the API
    (web,) = by_name["web"]["forwards"]
    assert web["http_status"] == 200 and "api v1" in web["response"], web
    assert all(title in web["response"] for title in SEEDED), web
    assert PASSWORD not in output


def test_a_failing_migration_fails_up_and_the_previous_api_keeps_serving(harness: Harness, notes: Path) -> None:
    before = api_image(harness)
    sql(harness, "INSERT INTO notes (title, body) VALUES ('Added by hand', 'straight into Postgres')")
    (notes / "migrate" / "migrations" / "002_tags.sql").write_text(BAD_MIGRATION)
    edit(notes / "api" / "server.js", "const VERSION = 'api v1';", "const VERSION = 'api v2';")
    code, events, output = run_cli(harness, notes, "up")
    assert code == 1, output  # documented: a rollout failed
    done = {e["service"]: e for e in events if e["event"] == "cycle_done"}
    migrate = done["migrate"]
    assert not migrate["ok"] and "job migrate: job failed" in migrate["error"]["message"], output
    assert any('syntax error at or near "NUL"' in line for line in migrate["error"]["details"]), output
    for held, why in (
        ("seed", "migrate (dependsOn) failed"),
        ("api", "migrate (dependsOn) failed; seed (dependsOn) held back by migrate"),
        ("web", "api (dependsOn) held back by migrate"),
    ):
        error = done[held]["error"]
        assert not done[held]["ok"] and error["message"] == f"not rolled out: {why}" and error["hint"].startswith("fix migrate:"), output
    assert "keeps serving (2/2 ready pods run it; not rolled out)" in done["api"]["outcome"], output
    assert "keeps serving (1/1 ready pods run it; not rolled out)" in done["web"]["outcome"], output
    assert done["db"]["ok"] and PASSWORD not in output
    # nothing of api v2 was applied: the previous version answers, with the database's rows
    assert api_image(harness) == before
    with forwarded(harness, "web") as port:
        status, page, _ = get(port)
    assert status == 200 and "api v1" in page and "Added by hand" in page and "Welcome" in page, page
    assert sql(harness, "SELECT count(*) FROM schema_migrations") == "1"  # the bad migration's transaction rolled back


def test_down_deletes_what_up_applied_and_keeps_the_database_volume(harness: Harness, notes: Path) -> None:
    code, _, output = run_cli(harness, notes, "down")
    assert code == 0, output
    left = harness.kubectl_run("get", "statefulset,job,deployment", "-l", "app.kubernetes.io/part-of=notes", "-o", "name").stdout
    assert left.strip() == "", left
    # the database's volume is not in the manifests (the StatefulSet's controller claimed it): it stays,
    # with the data, for the next `up` (README: `kubectl delete pvc data-db-0` starts from an empty database)
    assert harness.kubectl_json("get", "pvc", "data-db-0")["status"]["phase"] == "Bound"
    assert children_of_cluster() == []
