"""`devloop release` and `dev --target`, black-box, against the real parts: a registry with TLS and
htpasswd auth reached by a network name, and a second kind cluster that pulls from it with an
imagePullSecret (tests/e2e/remote/conftest.py). No local cluster is involved.

In order, as a team ships: v1.0.0 released (pods run the digest-pinned ref and serve it); v1.0.1
crashes at start (rolled back, v1.0.0 keeps serving, exit 1); v1.0.0 again with the same sources (a
no-op) and with changed sources (refused, exit 2); a wrong password (exit 3); the registry down
(exit 3, nothing deployed); an undeclared target (refused); then `dev --target` with an edit that
reaches every replica; last, a project with a database without image, a migration Job and an API,
released in `dependsOn` order.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import REPO, Devloop, devloop_argv, free_port, poll, pump_json_lines
from tests.e2e.remote.conftest import Remote

pytestmark = pytest.mark.e2e

TARGET = "remote"
V1 = "Hello from release one"
RUN = f"run-{uuid.uuid4().hex[:8]}"  # this run's path in the registry: versions are immutable, runs are not
REPO_NAME = f"{RUN}/my-web-app"


@pytest.fixture(scope="module")
def project(remote: Remote, tmp_path_factory: pytest.TempPathFactory) -> Path:
    remote.kubectl("-n", remote.namespace, "delete", "deployment", "web-app", "--ignore-not-found", "--wait=true")
    root = tmp_path_factory.mktemp("release") / "proj"
    shutil.copytree(REPO / "sample-app", root / "sample-app", ignore=shutil.ignore_patterns("node_modules"))
    shutil.copy(REPO / "kind-config.yaml", root / "kind-config.yaml")
    (root / "devloop.yaml").write_text(
        "apiVersion: devloop/v1\n"
        f"image:\n  buildArgs:\n    NODE_IMAGE: {remote.harness.node_base}\n"
        "monitoring:\n  enabled: false\n"
        "dashboard:\n  enabled: false\n"
        f"portForward:\n  localPort: {free_port()}\n"
        "deploy:\n  rolloutTimeout: 240\n"
        "targets:\n"
        f"  - name: {TARGET}\n"
        f"    context: {remote.context}\n"
        f"    registry: {remote.registry}/{RUN}\n"
        f"    namespace: {remote.namespace}\n"
        f"    pullSecret: {remote.pull_secret}\n"
    )
    set_message(root, V1)
    return root


def set_message(project: Path, text: str) -> None:
    server = project / "sample-app" / "server.js"
    lines = server.read_text().splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if line.startswith("const MESSAGE ="))
    lines[at] = f"const MESSAGE = '{text}';\n"
    server.write_text("".join(lines))


@contextlib.contextmanager
def crashing_at_start(project: Path) -> Iterator[None]:
    server = project / "sample-app" / "server.js"
    original = server.read_text()
    server.write_text("throw new Error('release 1.0.1 cannot start');\n" + original)
    try:
        yield
    finally:
        server.write_text(original)


def cli(remote: Remote, project: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, list[dict[str, Any]], str]:
    p = subprocess.run(devloop_argv(*args), cwd=project, env=env or remote.env, capture_output=True, text=True, timeout=900)
    events = []
    for line in p.stdout.splitlines():
        with contextlib.suppress(ValueError):
            events.append(json.loads(line))
    return p.returncode, events, p.stdout + p.stderr


def result(events: list[dict[str, Any]], name: str = "release") -> dict[str, Any]:
    return next(e for e in events if e["event"] == name)


def error(events: list[dict[str, Any]]) -> dict[str, Any]:
    return next(e for e in events if e["event"] == "error")


def deployment(remote: Remote) -> dict[str, Any]:
    return remote.kubectl_json("-n", remote.namespace, "get", "deployment", "web-app")


def deployed_image(remote: Remote) -> str:
    return str(deployment(remote)["spec"]["template"]["spec"]["containers"][0]["image"])


def serving(remote: Remote) -> dict[str, tuple[str, str]]:
    """Each ready web-app pod: (its image, what it answers on :3000), asked through the API server."""
    pods = remote.kubectl_json("-n", remote.namespace, "get", "pods", "-l", "app=web-app")["items"]
    out = {}
    for p in pods:
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
        if p["metadata"].get("deletionTimestamp") or not ready:
            continue
        name = p["metadata"]["name"]
        body = remote.kubectl("get", "--raw", f"/api/v1/namespaces/{remote.namespace}/pods/{name}:3000/proxy/").stdout
        out[name] = (p["spec"]["containers"][0]["image"], body.strip())
    return out


def test_release_v1_runs_the_digest_pinned_ref_on_every_replica(remote: Remote, project: Path) -> None:
    code, events, output = cli(remote, project, "release", "v1.0.0", "--target", TARGET)
    assert code == 0, output
    (svc,) = result(events)["services"]
    assert svc["pushed"] and svc["ok"], svc
    ref = f"{remote.registry}/{REPO_NAME}:v1.0.0@{svc['digest']}"
    assert svc["ref"] == ref and svc["digest"].startswith("sha256:")
    assert remote.manifest_digest(REPO_NAME, "v1.0.0") == svc["digest"]  # the registry agrees
    answers = serving(remote)
    assert len(answers) == 3, answers
    assert {image for image, _ in answers.values()} == {ref}
    assert all(V1 in body for _, body in answers.values()), answers
    assert "Always" not in output  # pull policy as the manifests say; nothing kind-only added
    assert deployment(remote)["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": remote.pull_secret}]


def test_a_release_that_crashes_at_start_is_rolled_back_and_v1_keeps_serving(remote: Remote, project: Path) -> None:
    v1 = deployed_image(remote)
    with crashing_at_start(project):
        code, events, output = cli(remote, project, "release", "v1.0.1", "--target", TARGET)
    assert code == 1, output
    (svc,) = result(events)["services"]
    assert not svc["ok"] and svc["rolled_back"], svc
    assert "release 1.0.1 cannot start" in output  # the crash's own line, from the pod's log
    assert "rolled back to" in svc["outcome"] and "serves again" in svc["outcome"]
    assert deployed_image(remote) == v1
    answers = serving(remote)
    assert len(answers) == 3 and {image for image, _ in answers.values()} == {v1}, answers
    assert all(V1 in body for _, body in answers.values())
    # the rollback's fields are devloop's again: its next apply on this target does not conflict with its own rollback
    fields = remote.kubectl_json("-n", remote.namespace, "get", "deployment", "web-app", "--show-managed-fields")["metadata"][
        "managedFields"
    ]
    assert {e["manager"] for e in fields if '"f:image"' in json.dumps(e.get("fieldsV1"))} == {"devloop"}, fields


def test_a_version_is_immutable(remote: Remote, project: Path) -> None:
    v1 = deployed_image(remote)
    digest = remote.manifest_digest(REPO_NAME, "v1.0.0")
    code, events, output = cli(remote, project, "release", "v1.0.0", "--target", TARGET)  # same sources: a no-op
    assert code == 0, output
    (svc,) = result(events)["services"]
    assert not svc["pushed"] and svc["digest"] == digest
    set_message(project, "Hello from a changed release one")
    try:
        code, events, output = cli(remote, project, "release", "v1.0.0", "--target", TARGET)
    finally:
        set_message(project, V1)
    assert code == 2, output
    err = error(events)
    assert f"already exists as {digest}" in err["message"], err
    assert remote.manifest_digest(REPO_NAME, "v1.0.0") == digest  # nothing pushed over it
    assert deployed_image(remote) == v1  # nothing deployed


def test_a_wrong_password_is_exit_3_with_a_docker_login_hint(remote: Remote, project: Path) -> None:
    generation = deployment(remote)["metadata"]["generation"]
    tags = remote.registry_tags(REPO_NAME)
    code, events, output = cli(remote, project, "release", "v1.0.2", "--target", TARGET, env=remote.bad_env)
    assert code == 3, output
    err = error(events)
    assert "refused the credentials" in err["message"] and f"docker login {remote.registry}" in err["hint"]
    assert remote.password not in output
    assert remote.registry_tags(REPO_NAME) == tags == ["v1.0.0", "v1.0.1"]
    assert deployment(remote)["metadata"]["generation"] == generation


def test_registry_down_is_a_clear_error_and_nothing_is_deployed(remote: Remote, project: Path) -> None:
    generation = deployment(remote)["metadata"]["generation"]
    tags = remote.registry_tags(REPO_NAME)
    set_message(project, "Hello from release two")
    remote.stop_registry()
    try:
        code, events, output = cli(remote, project, "release", "v1.0.2", "--target", TARGET)
    finally:
        remote.start_registry()
        set_message(project, V1)
    assert code == 3, output
    assert f"registry {remote.registry} does not answer" in error(events)["message"]
    assert "Traceback" not in output
    assert deployment(remote)["metadata"]["generation"] == generation
    assert remote.registry_tags(REPO_NAME) == tags  # nothing pushed


def test_an_undeclared_target_or_an_unconfirmed_down_is_refused(remote: Remote, project: Path) -> None:
    generation = deployment(remote)["metadata"]["generation"]
    # the context exists and even is the current one: still refused, because no target declares it by that name
    remote.kubectl("config", "use-context", remote.context)
    for args in (("release", "v1.0.3", "--target", remote.context), ("up", "--target", "staging"), ("down", "--target", TARGET)):
        code, events, output = cli(remote, project, *args)
        assert code == 2, (args, output)
        assert "no target named" in error(events)["message"] or "needs --yes" in error(events)["message"]
    assert deployment(remote)["metadata"]["generation"] == generation
    code, events, output = cli(remote, project, "release", "v1.0.0", "--target", TARGET, "--dry-run")
    assert code == 0, output
    (plan,) = result(events)["services"]
    assert f"docker push {remote.registry}/{REPO_NAME}:v1.0.0" in plan["commands"]
    assert any("set image deployment/web-app" in c for c in plan["commands"])
    assert "nothing to push" in plan["registry"]


def test_dev_on_the_target_reaches_every_replica(remote: Remote, project: Path) -> None:
    """The loop against the remote cluster: content tags pushed to its registry; a code edit is
    live-synced into every replica; a Dockerfile edit rebuilds, pushes and rolls out there."""
    config = project / "devloop.yaml"
    config.write_text(config.read_text() + "liveUpdate:\n  enabled: true\n  command: [node, server.js]\n")
    proc = subprocess.Popen(
        devloop_argv("dev", "--target", TARGET, "--no-ui"),
        cwd=project,
        env=remote.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    d = Devloop(proc)
    pump_json_lines(proc.stdout, d.events, d.raw)  # type: ignore[arg-type]

    def every_replica(image: str, text: str) -> dict[str, tuple[str, str]]:
        def check() -> dict[str, tuple[str, str]] | None:
            answers = serving(remote)
            ok = len(answers) == 3 and all(img == image and text in body for img, body in answers.values())
            return answers if ok else None

        return poll(f"every replica to run {image} and serve {text!r}", 120, check)

    try:
        first = d.wait_for(lambda e: e["event"] == "cycle_done" and e.get("ok") is True, 400, "the first rollout on the target")
        assert first["image"].startswith(f"{remote.registry}/{REPO_NAME}:dl-"), first
        assert first["image"].rpartition(":")[2] in remote.registry_tags(REPO_NAME)  # the content tag is in the target's registry
        every_replica(first["image"], V1)

        set_message(project, "Hello from dev on the target")
        synced = d.wait_for(lambda e: e["event"] == "cycle_done" and e.get("cycle", 0) >= 2, 400, "the edit's cycle")
        assert synced["ok"] and synced["synced"], synced  # live update, no new image
        every_replica(first["image"], "Hello from dev on the target")

        dockerfile = project / "sample-app" / "Dockerfile"
        dockerfile.write_text(dockerfile.read_text() + "# rebuilt by the e2e test\n")
        rebuilt = d.wait_for(lambda e: e["event"] == "cycle_done" and e.get("cycle", 0) >= 3, 400, "the Dockerfile's cycle")
        assert rebuilt["ok"] and not rebuilt["synced"] and rebuilt["image"] != first["image"], rebuilt
        every_replica(rebuilt["image"], "Hello from dev on the target")
        assert d.interrupt() == 130
    finally:
        set_message(project, V1)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_database_a_migration_job_and_an_api_are_released_in_dependson_order(remote: Remote, tmp_path: Path) -> None:
    """A team's project: Postgres' stand-in (a StatefulSet from an image devloop does not build, which the
    team pushed to its registry), a migration Job built by devloop that dependsOn it, and the API that
    dependsOn the Job. The release applies them in that order, the Job runs the release's pinned version."""
    base = f"{remote.registry}/{RUN}/node-base:bookworm"
    subprocess.run(["docker", "tag", remote.harness.node_base, base], check=True)
    push = subprocess.run(["docker", "push", base], env=remote.env, capture_output=True, text=True, timeout=600)
    assert push.returncode == 0, push.stderr
    root = tmp_path / "shop"
    for name, cmd in {
        "migrate": "let n=0;const go=()=>require('net').connect(5432,'db-0.db',function(){console.log('migrated to '+process.env.DEVLOOP_IMAGE_TAG);this.end()}).on('error',e=>{if(++n>40)throw e;setTimeout(go,250)});go()",
        "api": "require('http').createServer((q,r)=>r.end('api '+process.env.DEVLOOP_IMAGE_TAG)).listen(3000)",
    }.items():
        (root / name).mkdir(parents=True)
        (root / name / "Dockerfile").write_text(f'ARG NODE_IMAGE\nFROM $NODE_IMAGE\nCMD ["node", "-e", "{cmd}"]\n')
    pod = f"imagePullSecrets: [{{name: {remote.pull_secret}}}]\n      terminationGracePeriodSeconds: 0\n"
    (root / "k8s").mkdir()
    (root / "k8s" / "db.yaml").write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: db}\nspec: {clusterIP: None, selector: {app: db}, ports: [{port: 5432}]}\n"
        "---\napiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: db}\n"
        "spec:\n  serviceName: db\n  selector: {matchLabels: {app: db}}\n  template:\n    metadata: {labels: {app: db}}\n"
        f"    spec:\n      {pod}      containers:\n      - name: db\n        image: {base}\n"
        "        command: [node, -e, \"require('net').createServer(s=>s.end()).listen(5432)\"]\n"
        "        readinessProbe: {tcpSocket: {port: 5432}, periodSeconds: 1}\n"
    )
    (root / "k8s" / "migrate.yaml").write_text(
        "apiVersion: batch/v1\nkind: Job\nmetadata: {name: migrate}\nspec:\n  backoffLimit: 0\n  template:\n"
        f"    spec:\n      {pod}      restartPolicy: Never\n      containers: [{{name: migrate, image: shop-migrate}}]\n"
    )
    (root / "k8s" / "api.yaml").write_text(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: api}\nspec:\n  selector: {matchLabels: {app: api}}\n  template:\n"
        f"    metadata: {{labels: {{app: api}}}}\n    spec:\n      {pod}      containers:\n      - name: api\n        image: shop-api\n"
        "        readinessProbe: {tcpSocket: {port: 3000}, periodSeconds: 1}\n"
    )
    build = f"    buildArgs: {{NODE_IMAGE: {remote.harness.node_base}}}\n"
    (root / "devloop.yaml").write_text(
        "apiVersion: devloop/v2\nmonitoring: {enabled: false}\ndashboard: {enabled: false}\n"
        "services:\n"
        "  - name: db\n    deploy: {manifests: [k8s/db.yaml], rolloutTimeout: 120}\n"
        f"  - name: api\n    image:\n      name: shop-api\n      context: api\n  {build}"
        "    deploy: {manifests: [k8s/api.yaml], rolloutTimeout: 120}\n    dependsOn: [migrate]\n"
        f"  - name: migrate\n    image:\n      name: shop-migrate\n      context: migrate\n  {build}"
        "    deploy: {manifests: [k8s/migrate.yaml], rolloutTimeout: 120}\n    dependsOn: [db]\n"
        f"targets:\n  - name: {TARGET}\n    context: {remote.context}\n    registry: {remote.registry}/{RUN}\n"
        f"    namespace: {remote.namespace}\n    pullSecret: {remote.pull_secret}\n"
    )
    try:
        code, events, output = cli(remote, root, "release", "v2.0.0", "--target", TARGET, "--dry-run")
        assert code == 0, output
        plans = {p["service"]: p for p in result(events)["services"]}
        assert list(plans) == ["db", "migrate", "api"], plans  # the order, dependencies first
        assert plans["db"]["image"] == base and "nothing pushed" in plans["db"]["registry"]
        assert plans["migrate"]["after"] == ["db"] and any(
            "wait --for=condition=complete job/migrate" in c for c in plans["migrate"]["commands"]
        )

        code, events, output = cli(remote, root, "release", "v2.0.0", "--target", TARGET)
        assert code == 0, output
        said = [e for e in events if e["event"] == "info"]
        assert any(e.get("order") == ["db", "migrate", "api"] for e in said), said  # the order is said
        services = {s["service"]: s for s in result(events)["services"]}
        assert all(s["ok"] for s in services.values()), services
        assert services["db"]["ref"] == base and services["db"]["workload"] == "StatefulSet/db" and not services["db"]["pushed"]
        assert services["migrate"]["summary"] == "job migrate completed"
        assert services["api"]["ref"] == f"{remote.registry}/{RUN}/shop-api:v2.0.0@{services['api']['digest']}"
        applied = [e["service"] for e in events if e["event"] == "phase" and e.get("phase") == "deploy"]
        assert applied == ["db", "migrate", "api"], applied  # each applied once the one it depends on was ready
        assert any(e["event"] == "info" and "waiting for migrate" in e["message"] for e in events)
        job = remote.kubectl_json("-n", remote.namespace, "get", "job", "migrate")
        assert job["spec"]["template"]["spec"]["containers"][0]["image"] == services["migrate"]["ref"]  # the pinned version ran
        assert "migrated to v2.0.0" in remote.kubectl("-n", remote.namespace, "logs", "job/migrate").stdout
        (api,) = remote.kubectl_json("-n", remote.namespace, "get", "pods", "-l", "app=api")["items"]
        body = remote.kubectl("get", "--raw", f"/api/v1/namespaces/{remote.namespace}/pods/{api['metadata']['name']}:3000/proxy/").stdout
        assert body == "api v2.0.0"
    finally:
        remote.kubectl(
            "-n", remote.namespace, "delete", "statefulset/db", "service/db", "job/migrate", "deployment/api", "--ignore-not-found"
        )
