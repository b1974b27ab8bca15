"""The API adapter: handing client-side-apply fields to devloop's server-side apply, kubectl's
--since durations, and requests against a small local HTTP server standing in for the API server
(the adapter runs against a real API server in tests/e2e)."""

from __future__ import annotations

import http.server
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes.config  # noqa: F401  # imported before a test sets KUBECONFIG (as in a full run): devloop must read it anew
import pytest

from devloop.api import ApiCluster, _seconds, reclaim_managed_fields, upgrade_managed_fields
from devloop.errors import StepFailed
from devloop.kubectl import Kubectl
from tests.unit.fakes import FakeRunner


def use_kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, context: str, port: int) -> None:
    """A kubeconfig whose `context` names an API server on 127.0.0.1:`port` (plain HTTP, a token)."""
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": context, "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": context, "context": {"cluster": context, "user": "u"}}],
        "current-context": context,
    }
    (tmp_path / "config").write_text(json.dumps(kubeconfig))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "config"))


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


def test_the_fields_devloops_rollback_set_are_devloops_again() -> None:
    """`kubectl rollout undo` (field manager kubectl, no flag to name another) takes the fields it
    changes from devloop's apply; on a target devloop's next apply would conflict with its own rollback."""
    image: dict[str, Any] = {"f:spec": {"f:template": {"f:spec": {"f:containers": {'k:{"name":"web"}': {"f:image": {}}}}}}}
    replicas: dict[str, Any] = {"f:spec": {"f:replicas": {}}}
    scale = entry("kubectl", "Update", {"f:metadata": {"f:labels": {"f:team": {}}}})  # a colleague's, before the rollback
    status = {**entry("kube-controller-manager", "Update", {"f:status": {}}), "subresource": "status"}
    before = {"metadata": {"resourceVersion": "8", "managedFields": [entry("devloop", "Apply", {**replicas, **image}), scale, status]}}
    undone = entry("kubectl", "Update", {"f:metadata": {"f:labels": {"f:team": {}}}, **image})
    after = {
        "metadata": {
            "resourceVersion": "9",
            "managedFields": [entry("devloop", "Apply", replicas), undone, {**status, "fieldsV1": {"f:status": {"f:x": {}}}}],
        }
    }
    ops = reclaim_managed_fields(before, after)
    assert ops is not None and ops[0] == {"op": "test", "path": "/metadata/resourceVersion", "value": "9"}
    fields = {(f["manager"], f["operation"]): f["fieldsV1"] for f in ops[1]["value"]}
    assert fields[("devloop", "Apply")] == {"f:spec": {"f:replicas": {}, **image["f:spec"]}}
    assert fields[("kubectl", "Update")] == {"f:metadata": {"f:labels": {"f:team": {}}}}  # what it held before stays its own
    assert fields[("kube-controller-manager", "Update")] == {"f:status": {"f:x": {}}}  # a status update is never taken
    assert reclaim_managed_fields(after, after) is None  # nothing new: no patch


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
    use_kubeconfig(tmp_path, monkeypatch, "silent", silent.getsockname()[1])
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


class FakeApiServer(http.server.ThreadingHTTPServer):
    """Answers `routes[(method, path with query)]` = (status, body); records every request as
    (method, path, content type, body)."""

    def __init__(self, routes: dict[tuple[str, str], tuple[int, Any]]) -> None:
        self.routes = routes
        self.seen: list[tuple[str, str, str, Any]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                server.seen.append((self.command, self.path, self.headers.get("Content-Type", ""), body))
                status, answer = server.routes.get((self.command, self.path), (404, {"kind": "Status", "message": "not found"}))
                data = answer.encode() if isinstance(answer, str) else json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PATCH = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()


@pytest.fixture
def api_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeApiServer]:
    server = FakeApiServer({})
    use_kubeconfig(tmp_path, monkeypatch, "kind-dev", server.server_address[1])
    yield server
    server.shutdown()
    server.server_close()


def cluster() -> ApiCluster:
    """The adapter with a kubectl that fails the test on any command: these paths start no process."""
    return ApiCluster("kind-dev", Kubectl("kind-dev", FakeRunner()))


PROXY = "/api/v1/namespaces/shop/services/prom:9090/proxy/api/v1/query?query=up"


def test_an_api_server_path_is_read_over_the_connection(api_server: FakeApiServer) -> None:
    api_server.routes[("GET", PROXY)] = (200, '{"status":"success","data":{"result":[]}}')
    assert cluster().get_raw(PROXY) == '{"status":"success","data":{"result":[]}}'
    assert [(m, p) for m, p, _, _ in api_server.seen] == [("GET", PROXY)]


def test_a_path_that_fails_is_a_step_failure_with_the_api_servers_message(api_server: FakeApiServer) -> None:
    api_server.routes[("GET", PROXY)] = (
        503,
        {"kind": "Status", "message": 'no endpoints available for service "prom"', "reason": "ServiceUnavailable"},
    )
    with pytest.raises(StepFailed) as info:
        cluster().get_raw(PROXY)
    assert info.value.message == 'Error from server (ServiceUnavailable): no endpoints available for service "prom"'  # as kubectl says it


def test_what_an_app_behind_the_proxy_answers_with_an_error_is_in_the_failure(api_server: FakeApiServer) -> None:
    api_server.routes[("GET", PROXY)] = (400, {"status": "error", "errorType": "bad_data", "error": "parse error at char 3"})
    with pytest.raises(StepFailed, match="parse error at char 3"):
        cluster().get_raw(PROXY)


def test_a_path_on_a_server_that_is_gone_is_a_step_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    use_kubeconfig(tmp_path, monkeypatch, "kind-dev", port)
    with pytest.raises(StepFailed, match="does not answer"):
        cluster().get_raw(PROXY)


def test_apply_sends_each_document_as_a_server_side_apply(api_server: FakeApiServer) -> None:
    path = "/apis/apps/v1/namespaces/shop/deployments/web"
    api_server.routes[("GET", "/apis/apps/v1")] = (
        200,
        {"resources": [{"name": "deployments", "singularName": "deployment", "kind": "Deployment", "namespaced": True}]},
    )
    api_server.routes[("PATCH", f"{path}?fieldManager=devloop&force=true")] = (200, {"metadata": {"name": "web", "generation": 1}})
    doc = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 2}}
    assert cluster().apply([doc, {}], "shop") == ["deployment.apps/web created"]  # an empty document is skipped
    method, _, content_type, body = api_server.seen[-1]
    assert (method, content_type, body) == ("PATCH", "application/apply-patch+yaml", doc)
