"""devloop.monitoring: the Prometheus manifests, ensure/remove against a fake Kube adapter, queries and stats."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from devloop import monitoring as mon
from devloop.config import MonitoringConfig
from devloop.errors import StepFailed
from devloop.output import Output
from tests.unit.fakes import FakeCluster

NS = "shop"
CFG = MonitoringConfig(enabled=True, config_map="my-scrape-config", image="devloop-test/prometheus:bookworm")
USER_CM = {"metadata": {"name": "my-scrape-config"}, "data": {"prometheus.yml": "scrape_configs: []\n"}}


class MonitoringCluster(FakeCluster):
    """The cluster as monitoring uses it: the user's ConfigMap; the Prometheus Deployment becomes
    ready after `ready_after` polls; its pod; the API server's proxy to Prometheus answers PromQL
    from `answers` (or fails with `fail`)."""

    def __init__(self, configmap: dict[str, Any] | None = USER_CM, ready_after: int = 2, pod: dict[str, Any] | None = None) -> None:
        super().__init__("kind-devloop")
        self.configmap = configmap
        self.ready_after = ready_after
        self.pod = pod or {"metadata": {"name": "devloop-prometheus-abc"}, "status": {"phase": "Pending"}}
        self.applied: list[tuple[str, list[dict[str, Any]]]] = []
        self.deleted: list[tuple[str, list[dict[str, Any]]]] = []
        self.polls = 0
        self.answers: dict[str, str] = {}
        self.fail = ""
        self.raw_paths: list[str] = []

    def apply(self, docs: Sequence[Mapping[str, Any]], namespace: str, *, force: bool = True, manager: str = "devloop") -> list[str]:
        applied = [dict(d) for d in docs]
        self.applied.append((namespace, applied))
        return [f"{d['kind'].lower()}/{d['metadata']['name']} configured" for d in applied]

    def delete(self, docs: Sequence[Mapping[str, Any]], namespace: str) -> list[str]:
        deleted = [dict(d) for d in docs]
        self.deleted.append((namespace, deleted))
        return [f'{d["kind"].lower()} "{d["metadata"]["name"]}" deleted' for d in deleted]

    def get(self, resource: str, name: str, namespace: str) -> dict[str, Any] | None:
        if resource == "configmap":
            assert (name, namespace) == ("my-scrape-config", NS)
            return self.configmap
        assert (resource, name, namespace) == ("deployment", "devloop-prometheus", NS)
        if not self.applied:
            return None
        self.polls += 1
        ready = 1 if self.polls >= self.ready_after else 0
        return {
            "metadata": {"generation": 1},
            "spec": {"replicas": 1},
            "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": ready},
        }

    def pods(self, namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        assert dict(labels) == {"app.kubernetes.io/name": "devloop-prometheus"}
        return [self.pod]

    def get_raw(self, path: str) -> str:
        self.raw_paths.append(path)
        if self.fail:
            raise StepFailed(self.fail)
        promql = parse_qs(urlsplit(path).query)["query"][0]
        if promql not in self.answers:
            raise AssertionError(f"unexpected query {promql!r}")
        return self.answers[promql]

    def logs(self, pod: str, namespace: str, *, tail: int = 10, previous: bool = False) -> list[str]:
        assert (pod, namespace, previous) == ("devloop-prometheus-xyz", NS, True)
        return [
            'ts=1 caller=main.go:551 level=info msg="Starting Prometheus Server"',
            'ts=2 caller=main.go:469 level=error msg="Error loading config" err="field kubernetes_sd_configs not found"',
        ]


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


def make(kube: MonitoringCluster) -> tuple[mon.Monitoring, Output, Clock]:
    clock = Clock()
    out = Output(json_mode=True, stdout=io.StringIO())
    return mon.Monitoring(CFG, kube, NS, clock=clock.now, sleep=clock.sleep), out, clock


def by_kind(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in docs}


# -- manifests -------------------------------------------------------------------------------------


def test_render_is_what_the_issue_asks_for() -> None:
    docs = by_kind(mon.render(CFG, NS, "abc123"))
    assert sorted(docs) == ["ClusterRole", "ClusterRoleBinding", "Deployment", "Service", "ServiceAccount"]
    for d in docs.values():
        assert d["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "devloop"
    assert docs["ClusterRole"]["rules"] == [
        {"apiGroups": [""], "resources": ["pods", "nodes", "services", "endpoints"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["networking.k8s.io"], "resources": ["ingresses"], "verbs": ["get", "list", "watch"]},
        {"nonResourceURLs": ["/metrics"], "verbs": ["get"]},
    ]
    binding = docs["ClusterRoleBinding"]
    assert binding["roleRef"]["name"] == docs["ClusterRole"]["metadata"]["name"] == "devloop-prometheus-shop"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "devloop-prometheus", "namespace": NS}]

    dep = docs["Deployment"]
    assert dep["metadata"]["namespace"] == NS and dep["spec"]["replicas"] == 1
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == docs["ServiceAccount"]["metadata"]["name"] == "devloop-prometheus"
    assert pod["securityContext"]["runAsNonRoot"] is True
    (c,) = pod["containers"]
    assert c["image"] == "devloop-test/prometheus:bookworm"
    assert c["resources"] == {"requests": {"cpu": "50m", "memory": "96Mi"}, "limits": {"cpu": "300m", "memory": "256Mi"}}
    assert c["readinessProbe"]["httpGet"] == {"path": "/-/ready", "port": 9090}
    assert "--config.file=/etc/prometheus/prometheus.yml" in c["args"]
    assert "--storage.tsdb.path=/prometheus" in c["args"]
    assert "--web.listen-address=:9090" in c["args"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert volumes["config"]["configMap"] == {"name": "my-scrape-config"} and mounts["config"] == "/etc/prometheus"
    assert "emptyDir" in volumes["data"] and mounts["data"] == "/prometheus"
    assert dep["spec"]["template"]["metadata"]["annotations"] == {mon.CONFIG_HASH: "abc123"}
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in dep["spec"]["selector"]["matchLabels"].items())

    svc = docs["Service"]
    assert svc["metadata"]["name"] == "devloop-prometheus"
    assert svc["spec"]["ports"][0]["port"] == 9090 and svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]


def test_render_never_contains_the_users_configmap() -> None:
    text = mon.render_yaml(CFG, NS)
    kinds = [d["kind"] for d in yaml.safe_load_all(text)]
    assert "ConfigMap" not in kinds


def test_config_hash_follows_the_users_configmap() -> None:
    a = mon.config_hash(USER_CM)
    assert a == mon.config_hash({"data": dict(USER_CM["data"])})
    assert a != mon.config_hash({"data": {"prometheus.yml": "scrape_configs: [{job_name: x}]\n"}})


# -- ensure / remove -------------------------------------------------------------------------------


def test_ensure_applies_and_waits_until_ready() -> None:
    kube = MonitoringCluster(ready_after=3)
    m, out, clock = make(kube)
    assert m.ensure(out) is True
    ((ns, docs),) = kube.applied
    assert ns == NS and len(docs) == 5
    dep = by_kind(docs)["Deployment"]
    assert dep["spec"]["template"]["metadata"]["annotations"] == {mon.CONFIG_HASH: mon.config_hash(USER_CM)}
    assert kube.polls == 3
    ready = [e for e in out.events if e["event"] == "info" and "Prometheus ready" in e["message"]]
    assert len(ready) == 1 and "devloop-prometheus:9090 in namespace shop" in ready[0]["message"]
    assert clock.t == 2 and "ready in 2.0s" in ready[0]["message"]
    assert [e["message"] for e in out.events if e["event"] == "progress"][-1] == "Prometheus: 0 of 1 updated replicas available"


def test_ensure_without_the_users_configmap_warns_and_deploys_nothing() -> None:
    kube = MonitoringCluster(configmap=None)
    m, out, _ = make(kube)
    assert m.ensure(out) is False
    assert kube.applied == []
    (warning,) = [e for e in out.events if e["event"] == "warning"]
    assert "ConfigMap 'my-scrape-config' not found in namespace shop" in warning["message"]
    assert "monitoring.enabled: false" in warning["hint"]


def test_ensure_with_a_configmap_lacking_prometheus_yml_warns() -> None:
    kube = MonitoringCluster(configmap={"data": {"prom.yaml": "x"}})
    m, out, _ = make(kube)
    assert m.ensure(out) is False
    assert kube.applied == []
    (warning,) = [e for e in out.events if e["event"] == "warning"]
    assert "has no key prometheus.yml (it has: prom.yaml)" in warning["message"]


def test_ensure_reports_an_image_that_cannot_be_pulled() -> None:
    pod = {
        "metadata": {"name": "devloop-prometheus-xyz"},
        "status": {"containerStatuses": [{"name": "prometheus", "state": {"waiting": {"reason": "ImagePullBackOff", "message": "no"}}}]},
    }
    m, out, _ = make(MonitoringCluster(ready_after=99, pod=pod))
    with pytest.raises(StepFailed) as e:
        m.ensure(out)
    assert "devloop-prometheus-xyz cannot start: ImagePullBackOff" in e.value.message
    assert "build-prometheus.sh" in e.value.hint
    assert e.value.details == []  # nothing ran yet: no logs to show


def test_ensure_shows_why_prometheus_crashes() -> None:
    pod = {
        "metadata": {"name": "devloop-prometheus-xyz"},
        "status": {
            "containerStatuses": [
                {
                    "name": "prometheus",
                    "restartCount": 2,
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s restarting failed container"}},
                    "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}},
                }
            ]
        },
    }
    m, out, _ = make(MonitoringCluster(ready_after=99, pod=pod))
    with pytest.raises(StepFailed) as e:
        m.ensure(out)
    assert "devloop-prometheus-xyz cannot start: CrashLoopBackOff" in e.value.message
    assert e.value.details == ['ts=2 caller=main.go:469 level=error msg="Error loading config" err="field kubernetes_sd_configs not found"']


def test_ensure_gives_up_after_the_timeout_saying_why() -> None:
    pod = {
        "metadata": {"name": "devloop-prometheus-xyz"},
        "status": {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "Insufficient cpu"}]},
    }
    m, out, clock = make(MonitoringCluster(ready_after=10_000, pod=pod))
    with pytest.raises(StepFailed) as e:
        m.ensure(out, timeout=30)
    assert "not ready after 30s" in e.value.message and "Unschedulable: Insufficient cpu" in e.value.message
    assert 30 <= clock.t <= 31


def test_remove_deletes_what_ensure_applied_and_not_the_users_configmap() -> None:
    kube = MonitoringCluster()
    m, out, _ = make(kube)
    m.ensure(out)
    lines = m.remove()
    ((ns, docs),) = kube.deleted
    applied = {(d["kind"], d["metadata"]["name"]) for d in kube.applied[0][1]}
    assert ns == NS and {(d["kind"], d["metadata"]["name"]) for d in docs} == applied
    assert 'deployment "devloop-prometheus" deleted' in lines
    assert all(d["kind"] != "ConfigMap" for d in docs)


# -- queries ---------------------------------------------------------------------------------------


def vector(*samples: tuple[dict[str, str], str]) -> str:
    return json.dumps(
        {"status": "success", "data": {"resultType": "vector", "result": [{"metric": m, "value": [1700000000.1, v]} for m, v in samples]}}
    )


def test_query_goes_through_the_api_server_proxy() -> None:
    kube = MonitoringCluster()
    kube.answers['up{job="kubernetes-pods"}'] = vector(({"pod": "web-1"}, "1"))
    m, _, _ = make(kube)
    assert m.query('up{job="kubernetes-pods"}') == [{"metric": {"pod": "web-1"}, "value": [1700000000.1, "1"]}]
    (path,) = kube.raw_paths
    assert path.startswith("/api/v1/namespaces/shop/services/devloop-prometheus:9090/proxy/api/v1/query?query=up%7Bjob%3D")


def test_query_failures_are_step_failures_with_the_reason() -> None:
    kube = MonitoringCluster()
    kube.fail = 'Error from server (ServiceUnavailable): no endpoints available for service "devloop-prometheus"'
    m, _, _ = make(kube)
    with pytest.raises(StepFailed) as e:
        m.query("up")
    assert "no endpoints available" in e.value.message and "devloop up" in e.value.hint

    with pytest.raises(StepFailed, match="parse error at char 3"):
        mon.parse_response(json.dumps({"status": "error", "errorType": "bad_data", "error": "parse error at char 3"}))
    with pytest.raises(StepFailed, match="not JSON"):
        mon.parse_response("<html>")


def test_matchers_follow_the_labelmap_convention_and_quote_values() -> None:
    assert mon.matchers({"app": "web-app"}, "default") == 'app="web-app",namespace="default"'
    assert mon.matchers({"app.kubernetes.io/name": 'we"ird'}) == 'app_kubernetes_io_name="we\\"ird"'


def test_service_stats_from_prometheus_answers() -> None:
    q = mon.queries({"app": "web-app"}, "default")
    assert q["rps"] == 'sum(rate(http_requests_total{app="web-app",namespace="default",path!~"/metrics|/healthz"}[1m]))'
    kube = MonitoringCluster()
    kube.answers.update(
        {
            q["rps"]: vector(({}, "4")),
            q["errors"]: vector(({}, "1")),
            q["p95"]: vector(({}, "0.0125")),
            q["unsure"]: vector(),  # every series scraped twice in the window, none new
            q["versions"]: vector(
                ({"version": "1.0.0", "revision": "aaa", "image_tag": "dl-old"}, "1"),
                ({"version": "1.0.0", "revision": "bbb", "image_tag": "dl-new"}, "2"),
            ),
        }
    )
    m, _, _ = make(kube)
    stats = m.service_stats({"app": "web-app"}, "default")
    assert stats.rps == 4 and stats.error_ratio == 0.25 and stats.p95_seconds == 0.0125
    assert [(v.labels["image_tag"], v.pods) for v in stats.versions] == [("dl-new", 2), ("dl-old", 1)]
    assert stats.human() == "4.00 req/s, 25.0% errors, p95 12ms; serving dl-new 1.0.0 bbb (2 pods), dl-old 1.0.0 aaa (1 pod)"
    assert stats.as_dict()["versions"][0] == {"version": "1.0.0", "revision": "bbb", "image_tag": "dl-new", "pods": 2}
    assert stats.as_dict()["errorRatio"] == 0.25


def test_service_stats_without_traffic_or_metrics() -> None:
    idle = mon.stats_from({"rps": [{"metric": {}, "value": [1, "0"]}], "errors": [], "p95": [{"metric": {}, "value": [1, "NaN"]}]})
    assert idle.rps == 0 and idle.error_ratio is None and idle.p95_seconds is None
    assert idle.human() == "0.00 req/s, no traffic; serving no app_info"
    unscraped = mon.stats_from({"rps": [], "errors": [], "p95": [], "versions": []})
    assert unscraped.rps is None
    assert unscraped.as_dict() == {"rps": None, "trafficKnown": True, "errorRatio": None, "p95Seconds": None, "versions": []}
    assert unscraped.human().startswith("no request metrics yet")
    no_errors = mon.stats_from({"rps": [{"metric": {}, "value": [1, "2.5"]}], "errors": []})
    assert no_errors.error_ratio == 0.0


def test_the_window_that_cannot_tell_is_not_no_traffic() -> None:
    """Issue 23: 100 requests in 2 s read "0.00 req/s, no traffic" for minutes. rate() needs two scrapes of a
    series in the window and sees no rise before its first: status says it cannot tell instead."""
    q = mon.queries({"app": "web-app"}, "default")
    requests = 'http_requests_total{app="web-app",namespace="default",path!~"/metrics|/healthz"}'
    # series still scraped (not a gone pod's) with fewer than 2 samples in the minute, or first scraped in it above 0
    assert q["unsure"] == (
        f"count((count_over_time({requests}[1m]) < 2 and {requests}) or (min_over_time({requests}[1m]) > 0 unless {requests} offset 1m))"
    )
    zero = [{"metric": {}, "value": [1, "0"]}]
    burst = mon.stats_from({"rps": zero, "errors": [], "p95": [], "unsure": [{"metric": {}, "value": [1, "1"]}]})
    assert burst.rps == 0 and not burst.traffic_known and burst.as_dict()["trafficKnown"] is False
    assert "no traffic" not in burst.human() and "0.00 req/s" not in burst.human()
    assert burst.human() == (
        "traffic: not known yet (fewer than 2 scrapes of the request counter in the last minute, or it was first scraped already counting); "
        "serving no app_info"
    )
    # a new pod whose counter has no second scrape yet: no rate at all, still not "no request metrics"
    first_scrape = mon.stats_from({"rps": [], "errors": [], "p95": [], "unsure": [{"metric": {}, "value": [1, "3"]}]})
    assert first_scrape.human().startswith("traffic: not known yet (")
    # the pods that can tell have traffic: a rate, but only a lower bound
    partly = mon.stats_from({"rps": [{"metric": {}, "value": [1, "2.5"]}], "errors": [], "unsure": [{"metric": {}, "value": [1, "1"]}]})
    assert partly.human() == "at least 2.50 req/s, 0.0% errors; serving no app_info"
    # the window can tell: no traffic is no traffic
    idle = mon.stats_from({"rps": zero, "errors": [], "p95": [], "unsure": []})
    assert idle.traffic_known and idle.human() == "0.00 req/s, no traffic; serving no app_info"
