"""Field ownership: the API server's conflicts read into one clear refusal, the applies devloop makes
on a cluster it owns (forced) and on one it does not (checked first, refused or taken), and the
replicas an autoscaler holds (left out, handed over first when devloop held them).
The same paths against a real API server: tests/e2e/remote/test_ownership.py."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from devloop.api import ApiCluster
from devloop.errors import EXIT_USAGE
from devloop.kubectl import Kubectl
from devloop.output import Output
from devloop.ownership import (
    HANDOVER_MANAGER,
    Applier,
    Conflict,
    FieldConflicts,
    autoscalers_of,
    conflicts_of,
    owns_replicas,
    replicas_only,
    without_replicas,
)
from devloop.proc import Result
from tests.unit.fakes import FakeCluster, FakeRunner
from tests.unit.test_api import FakeApiServer, api_server, cluster  # noqa: F401  # the fixture, used by name

MEMORY = '.spec.template.spec.containers[name="web"].resources.limits.memory'
WEB = "deployment.apps/web"


def deployment(name: str = "web", replicas: int | None = 3, namespace: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "selector": {"matchLabels": {"app": name}},
        "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "web", "image": "web:1"}]}},
    }
    if replicas is not None:
        spec["replicas"] = replicas
    meta: dict[str, Any] = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": spec}


def hpa(name: str, kind: str, target: str, namespace: str = "shop") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": kind, "name": target}},
    }


def events(out: Output) -> list[dict[str, Any]]:
    """What `--json` printed."""
    stream = out._out
    assert isinstance(stream, io.StringIO)
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def json_out() -> Output:
    return Output(json_mode=True, stdout=io.StringIO())


# -- the API server's words ---------------------------------------------------------------------


def test_a_409s_causes_name_each_field_and_its_manager() -> None:
    causes = [
        {"type": "FieldManagerConflict", "message": 'conflict with "kubectl-edit" using apps/v1 at 2026-12-06T13:00:00Z', "field": MEMORY},
        {
            "type": "FieldManagerConflict",
            "message": 'conflict with "kube-controller-manager" with subresource "scale"',
            "field": ".spec.replicas",
        },
        {"type": "FieldValueInvalid", "message": "not a conflict", "field": ".spec"},
    ]
    assert conflicts_of(WEB, causes) == [
        Conflict(WEB, MEMORY, "kubectl-edit", "using apps/v1 at 2026-12-06T13:00:00Z"),
        Conflict(WEB, ".spec.replicas", "kube-controller-manager", 'with subresource "scale"'),
    ]


def test_the_refusal_is_exit_2_one_line_per_field_and_names_force_conflicts() -> None:
    err = FieldConflicts([Conflict(WEB, MEMORY, "kubectl-edit", "using apps/v1"), Conflict(WEB, ".spec.replicas", "argocd")], "target prod")
    assert err.exit_code == EXIT_USAGE == 2
    assert err.message == "2 fields on target prod belong to other field managers ('argocd', 'kubectl-edit'): devloop changed nothing"
    one = FieldConflicts([Conflict(WEB, MEMORY, "kubectl-edit")], "target prod")
    assert one.message == "1 field on target prod belongs to another field manager ('kubectl-edit'): devloop changed nothing"
    assert err.details == [
        f"{WEB}: {MEMORY} is owned by 'kubectl-edit' (using apps/v1)",
        f"{WEB}: .spec.replicas is owned by 'argocd'",
    ]
    assert "--force-conflicts" in err.hint


def test_the_refusal_is_printed_with_its_lines_and_its_details_are_in_json() -> None:
    out = json_out()
    out.error(FieldConflicts([Conflict(WEB, MEMORY, "kubectl-edit")], "target prod"))
    (e,) = events(out)
    assert e["event"] == "error" and e["exit_code"] == 2 and e["details"] == [f"{WEB}: {MEMORY} is owned by 'kubectl-edit'"]


# -- autoscalers ------------------------------------------------------------------------------------


def test_an_autoscaler_scales_the_workload_its_target_names_in_its_namespace() -> None:
    docs = [deployment("web"), deployment("api"), deployment("db", namespace="data"), {"kind": "Service", "metadata": {"name": "web"}}]
    hpas = [hpa("web-hpa", "Deployment", "web"), hpa("api-hpa", "StatefulSet", "api"), hpa("db-hpa", "Deployment", "db", "shop")]
    assert autoscalers_of(docs, hpas, "shop") == {0: "web-hpa"}  # api: another kind; db: another namespace; a Service never
    assert autoscalers_of(docs, [hpa("db-hpa", "Deployment", "db", "data")], "shop") == {2: "db-hpa"}


def test_replicas_are_left_out_and_nothing_else() -> None:
    doc = deployment()
    left = without_replicas(doc)
    assert "replicas" not in left["spec"] and left["spec"]["template"] == doc["spec"]["template"]
    assert doc["spec"]["replicas"] == 3  # the manifest as read is not changed


def test_who_owns_the_replicas_is_read_from_the_managed_fields() -> None:
    def live(manager: str, operation: str = "Apply") -> dict[str, Any]:
        return {"metadata": {"managedFields": [{"manager": manager, "operation": operation, "fieldsV1": {"f:spec": {"f:replicas": {}}}}]}}

    assert owns_replicas(live("devloop"))
    assert not owns_replicas(live("kubectl-scale", "Update")) and not owns_replicas(live("devloop", "Update")) and not owns_replicas({})
    handover = replicas_only(deployment(namespace="shop"), {"spec": {"replicas": 5}})
    assert handover == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"replicas": 5},
    }


# -- the applier ------------------------------------------------------------------------------------


class OwnedCluster(FakeCluster):
    """FakeCluster whose Deployment's live object says who manages spec.replicas."""

    def __init__(self, replicas_manager: str = "devloop", live_replicas: int = 3) -> None:
        super().__init__()
        self.replicas_manager = replicas_manager
        self.live_replicas = live_replicas

    def get(self, resource: str, name: str, namespace: str) -> dict[str, Any] | None:
        fields: dict[str, Any] = {"f:spec": {"f:replicas": {}}}
        entry = {
            "manager": self.replicas_manager,
            "operation": "Apply" if self.replicas_manager == "devloop" else "Update",
            "fieldsV1": fields,
        }
        return {"metadata": {"name": name, "managedFields": [entry]}, "spec": {"replicas": self.live_replicas}}


def test_on_the_cluster_devloop_owns_every_apply_is_forced_without_asking() -> None:
    kube = FakeCluster()
    kube.foreign["Deployment/web"] = [Conflict(WEB, MEMORY, "kubectl-edit")]
    Applier(kube, json_out(), owned=True).apply([deployment()], "shop")
    assert kube.forced == [True] and kube.applies == [("shop", ["Deployment/web"])]


def test_on_a_target_a_conflict_in_any_batch_stops_before_anything_is_applied() -> None:
    kube = FakeCluster()
    kube.foreign["Deployment/api"] = [Conflict("deployment.apps/api", MEMORY, "kubectl-edit")]
    applier = Applier(kube, json_out(), owned=False, where="target prod")
    with pytest.raises(FieldConflicts) as e:
        applier.check([([deployment("web")], "shop"), ([deployment("api")], "shop")])
    assert e.value.details == [f"deployment.apps/api: {MEMORY} is owned by 'kubectl-edit'"] and "target prod" in e.value.message
    with pytest.raises(FieldConflicts):
        applier.apply([deployment("web"), deployment("api")], "shop")
    assert kube.applies == [] and kube.forced == []  # web was not applied either


def test_on_a_target_without_conflicts_the_apply_is_not_forced() -> None:
    kube = FakeCluster()
    Applier(kube, json_out(), owned=False).apply([deployment()], "shop")
    assert kube.forced == [False]


def test_force_conflicts_takes_the_fields_and_says_which_from_whom() -> None:
    kube = FakeCluster()
    kube.foreign["Deployment/web"] = [Conflict(WEB, MEMORY, "kubectl-edit")]
    out = json_out()
    Applier(kube, out, owned=False, take=True).apply([deployment()], "shop")
    assert kube.forced == [True]
    assert [e["message"] for e in events(out) if e["event"] == "warning"] == [
        f"--force-conflicts: took {MEMORY} of {WEB} from 'kubectl-edit'"
    ]


def test_replicas_an_autoscaler_holds_are_not_sent_and_that_is_said_once() -> None:
    kube = OwnedCluster(replicas_manager="kubectl-scale", live_replicas=5)
    kube.autoscaling["shop"] = [hpa("web-hpa", "Deployment", "web")]
    out = json_out()
    applier = Applier(kube, out, owned=False)
    applier.apply([deployment()], "shop")
    applier.apply([deployment()], "shop")
    sent = kube.objects[("shop", "Deployment", "web")]
    assert "replicas" not in sent["spec"]
    said = [e["message"] for e in events(out) if "HorizontalPodAutoscaler" in e.get("message", "")]
    assert said == [f"{WEB}: replicas left to HorizontalPodAutoscaler web-hpa (devloop does not set spec.replicas)"]
    assert kube.handovers == []  # devloop did not hold them: nothing to hand over


def test_replicas_devloop_alone_held_are_handed_over_before_it_stops_sending_them() -> None:
    """Else the API server removes the field with devloop's ownership: the Deployment drops to 1 replica."""
    kube = OwnedCluster(replicas_manager="devloop", live_replicas=3)
    kube.autoscaling["shop"] = [hpa("web-hpa", "Deployment", "web")]
    Applier(kube, json_out(), owned=True).apply([deployment()], "shop")
    assert kube.handovers == [{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 3}}]
    assert "replicas" not in kube.objects[("shop", "Deployment", "web")]["spec"]


def test_a_field_devloops_own_handover_holds_is_taken_back_when_the_autoscaler_is_gone() -> None:
    kube = FakeCluster()
    kube.foreign["Deployment/web"] = [Conflict(WEB, ".spec.replicas", HANDOVER_MANAGER)]
    out = json_out()
    Applier(kube, out, owned=False).apply([deployment()], "shop")
    assert kube.forced == [True]
    assert any("no autoscaler scales it any more" in e.get("message", "") for e in events(out))


# -- the API adapter ------------------------------------------------------------------------------


DEPLOYMENTS = {"resources": [{"name": "deployments", "singularName": "deployment", "kind": "Deployment", "namespaced": True}]}
PATH = "/apis/apps/v1/namespaces/shop/deployments/web"
CONFLICT = {
    "kind": "Status",
    "status": "Failure",
    "message": 'Apply failed with 1 conflict: conflict with "kubectl-edit" using apps/v1: ' + MEMORY,
    "reason": "Conflict",
    "details": {"causes": [{"type": "FieldManagerConflict", "message": 'conflict with "kubectl-edit" using apps/v1', "field": MEMORY}]},
    "code": 409,
}


def test_an_unforced_apply_that_conflicts_raises_the_fields(api_server: FakeApiServer) -> None:  # noqa: F811
    api_server.routes[("GET", "/apis/apps/v1")] = (200, DEPLOYMENTS)
    live = {
        "metadata": {
            "name": "web",
            "resourceVersion": "1",
            "managedFields": [{"manager": "kubectl-client-side-apply", "operation": "Update"}],
        }
    }
    api_server.routes[("GET", PATH)] = (200, live)
    api_server.routes[("PATCH", f"{PATH}?fieldManager=devloop&force=false")] = (409, CONFLICT)
    with pytest.raises(FieldConflicts) as e:
        cluster().apply([deployment()], "shop", force=False)
    assert e.value.conflicts == [Conflict(WEB, MEMORY, "kubectl-edit", "using apps/v1")]
    # not forced: client-side apply's fields are not handed to devloop either (no JSON patch)
    assert [(m, p) for m, p, _, _ in api_server.seen if m == "PATCH"] == [("PATCH", f"{PATH}?fieldManager=devloop&force=false")]


def test_conflicts_are_asked_with_a_dry_run_of_every_document(api_server: FakeApiServer) -> None:  # noqa: F811
    api_server.routes[("GET", "/apis/apps/v1")] = (200, DEPLOYMENTS)
    api_server.routes[("PATCH", f"{PATH}?fieldManager=devloop&force=false&dryRun=All")] = (409, CONFLICT)
    other = "/apis/apps/v1/namespaces/shop/deployments/api"
    api_server.routes[("PATCH", f"{other}?fieldManager=devloop&force=false&dryRun=All")] = (200, {"metadata": {"name": "api"}})
    found = cluster().conflicts([deployment("web"), deployment("api")], "shop")
    assert found == [Conflict(WEB, MEMORY, "kubectl-edit", "using apps/v1")]
    assert [m for m, _, _, _ in api_server.seen].count("PATCH") == 2  # both asked; no GET of the objects, nothing changed


def test_autoscalers_are_listed_from_autoscaling_v2_else_v1(api_server: FakeApiServer) -> None:  # noqa: F811
    v1 = "/apis/autoscaling/v1/namespaces/shop/horizontalpodautoscalers"
    api_server.routes[("GET", v1)] = (200, {"items": [hpa("web-hpa", "Deployment", "web")]})
    assert [h["metadata"]["name"] for h in cluster().autoscalers("shop")] == ["web-hpa"]  # v2 answered 404


def test_an_engine_on_a_remote_target_refuses_a_conflict_before_applying(tmp_path: Path) -> None:
    from tests.unit.test_release import remote_engine

    engine, kube = remote_engine(tmp_path)
    svc = engine.services[0]
    kube.foreign["Deployment/web-app"] = [Conflict("deployment.apps/web-app", MEMORY, "kubectl-edit")]
    deployed = engine.manifests(svc)
    with pytest.raises(FieldConflicts):
        engine.deploy(svc, deployed, engine.image_ref(svc))
    assert kube.applies == []


def test_after_devloops_rollback_the_fields_kubectl_set_are_devloops_again(api_server: FakeApiServer) -> None:  # noqa: F811
    """`kubectl rollout undo` cannot name a field manager: its update takes the image from devloop's
    apply, and devloop's next apply on a target would conflict with its own rollback."""
    image: dict[str, Any] = {"f:spec": {"f:template": {"f:spec": {"f:containers": {'k:{"name":"web"}': {"f:image": {}}}}}}}
    api_server.routes[("GET", "/apis/apps/v1")] = (200, DEPLOYMENTS)
    ours = {"manager": "devloop", "operation": "Apply", "fieldsV1": {"f:spec": {"f:replicas": {}, **image["f:spec"]}}}
    api_server.routes[("GET", PATH)] = (200, {"metadata": {"resourceVersion": "8", "managedFields": [ours]}})
    after = {
        "metadata": {
            "resourceVersion": "9",
            "managedFields": [
                {**ours, "fieldsV1": {"f:spec": {"f:replicas": {}}}},
                {"manager": "kubectl", "operation": "Update", "fieldsV1": image},
            ],
        }
    }
    api_server.routes[("PATCH", PATH)] = (200, {})

    class Undo(FakeRunner):
        def run(
            self,
            argv: Sequence[str],
            *,
            input: str | bytes | None = None,
            timeout: float | None = None,
            check: bool = True,
            env: Mapping[str, str] | None = None,
        ) -> Result:
            api_server.routes[("GET", PATH)] = (200, after)  # what the undo did
            return super().run(argv, input=input, timeout=timeout, check=check, env=env)

    runner = Undo().expect("kubectl", "--context", "kind-dev", "rollout", "undo", "deployment/web", "-n", "shop", "--to-revision=2")
    ApiCluster("kind-dev", Kubectl("kind-dev", runner)).rollout_undo("web", "shop", "2")
    runner.done()
    (patch,) = [body for method, _, _, body in api_server.seen if method == "PATCH"]
    assert patch[0] == {"op": "test", "path": "/metadata/resourceVersion", "value": "9"}
    assert [(f["manager"], f["fieldsV1"]) for f in patch[1]["value"]] == [("devloop", {"f:spec": {"f:replicas": {}, **image["f:spec"]}})]
