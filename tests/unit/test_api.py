"""The pure parts of the API adapter: handing client-side-apply fields to devloop's server-side
apply, pod events from API objects, kubectl's --since durations. (The adapter itself runs against
a real API server in tests/e2e.)"""

from __future__ import annotations

from typing import Any

from devloop.api import _seconds, upgrade_managed_fields
from devloop.kube import PodEvent


def entry(manager: str, operation: str, fields: dict[str, Any]) -> dict[str, Any]:
    return {"manager": manager, "operation": operation, "apiVersion": "apps/v1", "fieldsType": "FieldsV1", "fieldsV1": fields}


def test_client_side_apply_fields_move_to_devloops_apply_entry() -> None:
    csa = entry(
        "kubectl-client-side-apply", "Update", {"f:spec": {"f:template": {"f:spec": {"f:containers": {'k:{"name":"c"}': {"f:env": {}}}}}}}
    )
    ours = entry("devloop", "Apply", {"f:spec": {"f:replicas": {}}})
    controller = entry("kube-controller-manager", "Update", {"f:status": {}})
    obj = {"metadata": {"resourceVersion": "42", "managedFields": [csa, ours, controller]}}
    ops = upgrade_managed_fields(obj)
    assert ops is not None
    assert ops[0] == {"op": "test", "path": "/metadata/resourceVersion", "value": "42"}
    fields = ops[1]["value"]
    assert [(f["manager"], f["operation"]) for f in fields] == [("kube-controller-manager", "Update"), ("devloop", "Apply")]
    merged = fields[1]["fieldsV1"]["f:spec"]
    assert "f:replicas" in merged and "f:env" in merged["f:template"]["f:spec"]["f:containers"]['k:{"name":"c"}']


def test_no_client_side_apply_no_patch() -> None:
    obj = {"metadata": {"resourceVersion": "1", "managedFields": [entry("devloop", "Apply", {}), entry("kubectl", "Update", {})]}}
    assert upgrade_managed_fields(obj) is None  # `kubectl set image` and friends keep their own fields


def test_a_first_apply_entry_is_made_from_the_client_side_one() -> None:
    obj = {"metadata": {"resourceVersion": "7", "managedFields": [entry("kubectl-client-side-apply", "Update", {"f:data": {}})]}}
    ops = upgrade_managed_fields(obj)
    assert ops is not None
    assert ops[1]["value"] == [{**entry("devloop", "Apply", {"f:data": {}}), "time": None}]


def test_pod_events_from_api_objects() -> None:
    pod = {
        "metadata": {"name": "web-1", "creationTimestamp": "2026-11-28T13:00:00Z"},
        "spec": {"containers": [{"image": "localhost:5001/web:dl-1"}]},
        "status": {"podIP": "10.244.1.5", "conditions": [{"type": "Ready", "status": "True"}], "containerStatuses": [{"restartCount": 2}]},
    }
    assert PodEvent.of(pod) == PodEvent("web-1", 2, ("localhost:5001/web:dl-1",), False, True, "2026-11-28T13:00:00Z", "10.244.1.5")
    gone = PodEvent.of(pod, deleted=True)
    assert gone is not None and gone.deleting and not gone.ready
    assert PodEvent.of({"metadata": {}}) is None


def test_kubectl_line_and_api_object_agree() -> None:
    line = "web-1 0 1 |img-a img-b||True|2026-11-28T13:00:00Z|10.0.0.1"
    assert PodEvent.parse(line) == PodEvent("web-1", 1, ("img-a", "img-b"), False, True, "2026-11-28T13:00:00Z", "10.0.0.1")


def test_since_durations() -> None:
    assert (_seconds("40s"), _seconds("2m"), _seconds("1h"), _seconds("15")) == (40, 120, 3600, 15)
