"""The pure parts of the API adapter: handing client-side-apply fields to devloop's server-side
apply, pod events from API objects, kubectl's --since durations. (The adapter itself runs against
a real API server in tests/e2e.)"""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path
from typing import Any

import kubernetes.config  # noqa: F401  # imported before a test sets KUBECONFIG (as in a full run): devloop must read it anew
import pytest

from devloop.api import ApiCluster, _seconds, upgrade_managed_fields
from devloop.errors import StepFailed
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


def test_a_port_forward_to_an_api_server_that_never_answers_fails_instead_of_hanging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client's websocket connect has no timeout of its own: a server that takes the TCP
    connection and says nothing would hold the forward's caller forever."""
    silent = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(silent.accept()[0]), daemon=True).start()
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "silent", "cluster": {"server": f"http://127.0.0.1:{silent.getsockname()[1]}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "silent", "context": {"cluster": "silent", "user": "u"}}],
        "current-context": "silent",
    }
    (tmp_path / "config").write_text(json.dumps(kubeconfig))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "config"))
    said: list[BaseException] = []

    def dial() -> None:
        try:
            ApiCluster("silent").connect("default", "web-app-1", 3000, timeout=0.5)
        except BaseException as e:  # the test reads what came out
            said.append(e)

    t = threading.Thread(target=dial, daemon=True)
    t.start()
    t.join(60)  # a bound on a hang, not a speed figure
    assert not t.is_alive(), "connect() hung on a silent API server"
    assert len(said) == 1 and isinstance(said[0], StepFailed) and "did not answer" in said[0].message, said
    assert held, "the API server was never dialled"
    silent.close()
