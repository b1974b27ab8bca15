"""Prometheus in the cluster for the `monitoring:` section: it reads the user's scrape ConfigMap as it is.

devloop owns only what it renders here (labelled `app.kubernetes.io/managed-by: devloop`): a
ServiceAccount, a ClusterRole and ClusterRoleBinding for Kubernetes service discovery, the Deployment and the Service
`devloop-prometheus`. The user's ConfigMap (monitoring.configMap, key prometheus.yml) is mounted, never
written, and `remove()` leaves it in place. Queries go through the API server's service proxy
(`GET .../services/devloop-prometheus:9090/proxy/api/v1/query` on the API connection): no port-forward, no process.

Sizing: the node is small and shared with the app's rolling update, so Prometheus requests little
(50m CPU, 96Mi) and is replaced with `Recreate` (never two of it at once).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlencode

import yaml

from devloop.config import MonitoringConfig
from devloop.errors import StepFailed
from devloop.output import Output
from devloop.workload import pod_failure, pod_name, pod_pending_reason, rollout_progress

NAME = "devloop-prometheus"
PORT = 9090
MANAGED_BY = {"app.kubernetes.io/managed-by": "devloop"}
SELECTOR = {"app.kubernetes.io/name": NAME}
CONFIG_KEY = "prometheus.yml"
CONFIG_HASH = "devloop.dev/prometheus-config-hash"
POLL_INTERVAL = 1.0
READY_TIMEOUT = 180.0
# What kubernetes_sd_configs reads, for each of its roles (pod, service, endpoints, endpointslice, node,
# ingress; node metadata of pods), and the API server's own /metrics: the usual Prometheus ClusterRole.
DISCOVERY_RULES: list[dict[str, Any]] = [
    {"apiGroups": [""], "resources": ["pods", "nodes", "services", "endpoints"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["networking.k8s.io"], "resources": ["ingresses"], "verbs": ["get", "list", "watch"]},
    {"nonResourceURLs": ["/metrics"], "verbs": ["get"]},
]
# Traffic a person makes, not the kubelet's probes or Prometheus' own scrapes.
NOT_TRAFFIC = 'path!~"/metrics|/healthz"'
# Why the last minute cannot tell (rate() needs two scrapes of a series, and sees no rise before its first).
UNSURE_WHY = "fewer than 2 scrapes of the request counter in the last minute, or it was first scraped already counting"


class KubeAPI(Protocol):
    """What Monitoring needs of the cluster adapter (devloop.api.ApiCluster has all of it)."""

    context: str

    def get_raw(self, path: str) -> str: ...

    def apply(self, docs: Sequence[Mapping[str, Any]], namespace: str) -> list[str]: ...

    def delete(self, docs: Sequence[Mapping[str, Any]], namespace: str) -> list[str]: ...

    def get(self, resource: str, name: str, namespace: str) -> dict[str, Any] | None: ...

    def pods(self, namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]]: ...

    def logs(self, pod: str, namespace: str, *, tail: int = 10, previous: bool = False) -> list[str]: ...


# -- manifests: pure --------------------------------------------------------------------------------


def cluster_name(namespace: str) -> str:
    """ClusterRole/Binding name: cluster-scoped, so one per namespace devloop runs Prometheus in."""
    return f"{NAME}-{namespace}"


def render(cfg: MonitoringConfig, namespace: str, config_hash: str = "") -> list[dict[str, Any]]:
    """The objects devloop applies (and deletes on `down`), in apply order."""
    labels = {**SELECTOR, **MANAGED_BY}

    def meta(name: str, namespaced: bool = True) -> dict[str, Any]:
        m: dict[str, Any] = {"name": name, "labels": dict(labels)}
        if namespaced:
            m["namespace"] = namespace
        return m

    pod_annotations = {CONFIG_HASH: config_hash} if config_hash else {}
    container = {
        "name": "prometheus",
        "image": cfg.image,
        "args": [
            "--config.file=/etc/prometheus/prometheus.yml",
            "--storage.tsdb.path=/prometheus",
            f"--web.listen-address=:{PORT}",
            "--storage.tsdb.retention.time=6h",
        ],
        "ports": [{"name": "web", "containerPort": PORT}],
        "resources": {"requests": {"cpu": "50m", "memory": "96Mi"}, "limits": {"cpu": "300m", "memory": "256Mi"}},
        "readinessProbe": {
            "httpGet": {"path": "/-/ready", "port": PORT},
            "initialDelaySeconds": 1,
            "periodSeconds": 2,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/-/healthy", "port": PORT},
            "initialDelaySeconds": 30,
            "periodSeconds": 15,
            "timeoutSeconds": 3,
            "failureThreshold": 4,
        },
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [
            {"name": "config", "mountPath": "/etc/prometheus", "readOnly": True},
            {"name": "data", "mountPath": "/prometheus"},
        ],
    }
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(NAME)},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": meta(cluster_name(namespace), namespaced=False),
            "rules": copy.deepcopy(DISCOVERY_RULES),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": meta(cluster_name(namespace), namespaced=False),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_name(namespace)},
            "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": namespace}],
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta(NAME),
            "spec": {
                "replicas": 1,
                "strategy": {"type": "Recreate"},
                "selector": {"matchLabels": dict(SELECTOR)},
                "template": {
                    "metadata": {"labels": dict(labels), "annotations": pod_annotations},
                    "spec": {
                        "serviceAccountName": NAME,
                        "securityContext": {"runAsNonRoot": True, "runAsUser": 65534, "runAsGroup": 65534, "fsGroup": 65534},
                        "terminationGracePeriodSeconds": 10,
                        "containers": [container],
                        "volumes": [
                            {"name": "config", "configMap": {"name": cfg.config_map}},
                            {"name": "data", "emptyDir": {"sizeLimit": "512Mi"}},
                        ],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta(NAME),
            "spec": {"selector": dict(SELECTOR), "ports": [{"name": "web", "port": PORT, "targetPort": PORT, "protocol": "TCP"}]},
        },
    ]


def render_yaml(cfg: MonitoringConfig, namespace: str, config_hash: str = "") -> str:
    return yaml.safe_dump_all(render(cfg, namespace, config_hash), sort_keys=False)


def config_hash(configmap: Mapping[str, Any]) -> str:
    """Changes when the user's ConfigMap changes, so that applying again restarts Prometheus with it."""
    data = json.dumps(configmap.get("data") or {}, sort_keys=True)
    return hashlib.sha256(data.encode()).hexdigest()[:12]


# -- queries: pure ----------------------------------------------------------------------------------


def _label_name(key: str) -> str:
    """A Kubernetes label key as the usual `labelmap` of __meta_kubernetes_pod_label_(.+) names it."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", key)


def _quote(value: str) -> str:
    return json.dumps(value)  # PromQL string literals take Go/JSON escapes


def matchers(selector: Mapping[str, str], namespace: str | None = None) -> str:
    """PromQL label matchers for a service's pods: the Deployment's selector labels (as the
    conventional kubernetes-pods scrape config copies them onto every series) and the namespace."""
    parts = [f"{_label_name(k)}={_quote(v)}" for k, v in sorted(selector.items())]
    if namespace:
        parts.append(f"namespace={_quote(namespace)}")
    return ",".join(parts)


def queries(selector: Mapping[str, str], namespace: str | None = None) -> dict[str, str]:
    m = matchers(selector, namespace)
    requests = f"http_requests_total{{{m},{NOT_TRAFFIC}}}"
    return {
        "rps": f"sum(rate({requests}[1m]))",
        # The window cannot tell for a series still scraped (an instant selector drops the stale ones of
        # gone pods) with fewer than 2 samples in it (rate() skips it: a new pod, a first scrape), nor for
        # one first scraped in it above 0 (an app that creates its counter with its first request: those
        # requests are no rise rate() sees). How many such series; no answer when there are none.
        "unsure": f"count((count_over_time({requests}[1m]) < 2 and {requests})"
        f" or (min_over_time({requests}[1m]) > 0 unless {requests} offset 1m))",
        "errors": f'sum(rate(http_requests_total{{{m},{NOT_TRAFFIC},status=~"5.."}}[1m]))',
        "p95": f"histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket{{{m},{NOT_TRAFFIC}}}[1m])))",
        "versions": f"count by (version, revision, image_tag) (app_info{{{m}}})",
    }


def parse_response(text: str) -> list[dict[str, Any]]:
    """The result of a Prometheus /api/v1/query answer, as a list of {metric, value} (a vector)."""
    try:
        body = json.loads(text)
    except ValueError as e:
        raise StepFailed(f"Prometheus answered something that is not JSON: {text[:80]!r}", "run with --debug") from e
    if not isinstance(body, dict) or body.get("status") != "success":
        error = body.get("error", "no error message") if isinstance(body, dict) else "unexpected answer"
        raise StepFailed(f"Prometheus query failed: {error}")
    data = body.get("data") or {}
    result = data.get("result")
    if data.get("resultType") in ("scalar", "string"):
        return [{"metric": {}, "value": result}]
    return list(result or [])


def _number(sample: Mapping[str, Any]) -> float | None:
    """A sample's value; None for NaN/Inf (0/0 with no traffic, a quantile of nothing)."""
    try:
        v = float(sample["value"][1])
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return v if v == v and v not in (float("inf"), float("-inf")) else None


def scalar(result: Sequence[Mapping[str, Any]]) -> float | None:
    """The value of a one-element vector (an aggregate); None when there is no series."""
    return _number(result[0]) if result else None


@dataclass(frozen=True)
class Version:
    labels: dict[str, str]  # version, revision, image_tag (those the app sets)
    pods: int

    def text(self) -> str:
        shown = [self.labels.get("image_tag", ""), self.labels.get("version", ""), self.labels.get("revision", "")]
        return " ".join(v for v in shown if v and v != "unknown") or "unknown"


@dataclass(frozen=True)
class ServiceStats:
    """A service's traffic over the last minute, and what its pods say they serve."""

    rps: float | None  # None: no request counter scraped (yet) for these pods
    error_ratio: float | None  # 5xx / all; None without traffic
    p95_seconds: float | None
    versions: list[Version] = field(default_factory=list)
    # request counter series the last minute cannot tell about (see queries()["unsure"]): rps leaves their
    # requests out, so 0 is not "no traffic" then, and a rate is a lower bound
    unsure_series: int = 0

    @property
    def traffic_known(self) -> bool:
        return self.unsure_series == 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "rps": None if self.rps is None else round(self.rps, 3),
            "trafficKnown": self.traffic_known,
            "errorRatio": None if self.error_ratio is None else round(self.error_ratio, 4),
            "p95Seconds": None if self.p95_seconds is None else round(self.p95_seconds, 4),
            "versions": [{**v.labels, "pods": v.pods} for v in self.versions],
        }

    def traffic(self) -> str:
        """`2.40 req/s, 0.0% errors, p95 12ms`, or that it is not known (yet): what `devloop status` and the page say."""
        if not self.traffic_known and not self.rps:
            return f"traffic: not known yet ({UNSURE_WHY})"
        if self.rps is None:
            return "no request metrics yet"
        errors = "no traffic" if self.error_ratio is None else f"{self.error_ratio * 100:.1f}% errors"
        p95 = "" if self.p95_seconds is None else f", p95 {self.p95_seconds * 1000:.0f}ms"
        at_least = "" if self.traffic_known else "at least "
        return f"{at_least}{self.rps:.2f} req/s, {errors}{p95}"

    def human(self) -> str:
        """`2.40 req/s, 0.0% errors, p95 12ms; serving dl-1a2b3c 1.0.0 (3 pods)` (last minute)."""
        serving = ", ".join(f"{v.text()} ({v.pods} pod{'s' if v.pods != 1 else ''})" for v in self.versions) or "no app_info"
        return f"{self.traffic()}; serving {serving}"


def stats_from(results: Mapping[str, Sequence[Mapping[str, Any]]]) -> ServiceStats:
    """ServiceStats from the answers to `queries()` (same keys)."""
    rps = scalar(results.get("rps", []))
    errors = scalar(results.get("errors", [])) or 0.0
    ratio = errors / rps if rps else None
    versions = []
    for s in results.get("versions", []):
        labels = {str(k): str(v) for k, v in (s.get("metric") or {}).items() if v}
        n = _number(s)
        versions.append(Version(labels, int(n) if n is not None else 0))
    versions.sort(key=lambda v: (-v.pods, v.text()))
    unsure = int(scalar(results.get("unsure", [])) or 0)
    return ServiceStats(rps=rps, error_ratio=ratio, p95_seconds=scalar(results.get("p95", [])), versions=versions, unsure_series=unsure)


# -- the adapter-facing part ------------------------------------------------------------------------


class Monitoring:
    def __init__(
        self,
        cfg: MonitoringConfig,
        kube: KubeAPI,
        namespace: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.cfg = cfg
        self.kube = kube
        self.namespace = namespace
        self._clock = clock
        self._sleep = sleep

    @property
    def where(self) -> str:
        return f"service {NAME}:{PORT} in namespace {self.namespace}"

    def ensure(self, out: Output, timeout: float = READY_TIMEOUT) -> bool:
        """Apply Prometheus and wait until it is ready. False (with a warning) when the user's ConfigMap
        is missing or has no prometheus.yml: nothing is deployed then. Raises StepFailed when the pod
        cannot start (image, crash) or is not ready in `timeout` seconds."""
        name = self.cfg.config_map
        cm = self.kube.get("configmap", name, self.namespace)
        if cm is None:
            out.warn(
                f"monitoring: ConfigMap {name!r} not found in namespace {self.namespace}; Prometheus is not deployed",
                f"apply your scrape config as ConfigMap {name} (key {CONFIG_KEY}) in {self.namespace}, "
                "set monitoring.configMap to its name, or monitoring.enabled: false in devloop.yaml",
            )
            return False
        keys = sorted((cm.get("data") or {}).keys())
        if CONFIG_KEY not in keys:
            out.warn(
                f"monitoring: ConfigMap {name!r} has no key {CONFIG_KEY} (it has: {', '.join(keys) or 'nothing'}); "
                "Prometheus is not deployed",
                f"name the scrape config's key {CONFIG_KEY} in ConfigMap {name}",
            )
            return False
        start = self._clock()
        out.progress("monitoring", f"applying Prometheus ({self.cfg.image}) reading ConfigMap {name}")
        self.kube.apply(render(self.cfg, self.namespace, config_hash(cm)), self.namespace)
        deadline = start + timeout
        last = ""
        while True:
            dep = self.kube.get("deployment", NAME, self.namespace)
            done, message = rollout_progress(dep) if dep is not None else (False, "waiting for the Deployment")
            if done:
                out.info(f"Prometheus ready in {self._clock() - start:.1f}s ({self.where})", service="monitoring")
                return True
            pods = self.kube.pods(self.namespace, SELECTOR)
            for p in pods:
                failure = pod_failure(p)
                if failure:
                    # A crash loop: Prometheus says why (e.g. a scrape config it cannot load) in its last lines.
                    pulled = not failure.startswith(("ErrImage", "ImagePull", "InvalidImageName"))
                    said = self.kube.logs(pod_name(p), self.namespace, tail=5, previous=True) if pulled else []
                    errors = [line for line in said if "level=error" in line or "err=" in line]
                    if pulled and not errors:  # the previous run's log may be gone already: the last run's then
                        said = self.kube.logs(pod_name(p), self.namespace, tail=5)
                        errors = [line for line in said if "level=error" in line or "err=" in line] or said
                    raise StepFailed(
                        f"Prometheus pod {pod_name(p)} cannot start: {failure}",
                        f"check monitoring.image ({self.cfg.image}) and ConfigMap {name}: offline, build the image with "
                        "tests/images/build-prometheus.sh and load it into the cluster (kind load docker-image); "
                        "`devloop down` removes Prometheus",
                        details=errors[-3:],
                    )
            if message != last:
                out.progress("monitoring", f"Prometheus: {message}")
                last = message
            if self._clock() >= deadline:
                why = "; ".join(f"{pod_name(p)}: {pod_pending_reason(p)}" for p in pods) or message
                raise StepFailed(
                    f"Prometheus was not ready after {timeout:.0f}s: {why}",
                    f"`kubectl describe deployment {NAME} -n {self.namespace}` shows why",
                )
            self._sleep(POLL_INTERVAL)

    def remove(self) -> list[str]:
        """Delete what ensure() applied (the user's ConfigMap stays); kubectl's lines
        (`deployment.apps "devloop-prometheus" deleted`)."""
        return self.kube.delete(render(self.cfg, self.namespace), self.namespace)

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query, through the API server's proxy to the Service."""
        path = f"/api/v1/namespaces/{self.namespace}/services/{NAME}:{PORT}/proxy/api/v1/query?{urlencode({'query': promql})}"
        try:
            body = self.kube.get_raw(path)
        except StepFailed as e:
            raise StepFailed(
                f"Prometheus query failed: {e.message}",
                f"is Prometheus running? `kubectl get deployment {NAME} -n {self.namespace}`; `devloop up` deploys it",
            ) from None
        return parse_response(body)

    def service_stats(self, selector: Mapping[str, str], namespace: str | None = None) -> ServiceStats:
        """Requests per second, error ratio and p95 latency over the last minute, and the versions
        serving, for the pods the selector picks (a Deployment's spec.selector.matchLabels)."""
        return stats_from({key: self.query(q) for key, q in queries(selector, namespace).items()})
