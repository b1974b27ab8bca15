"""Scripted fakes behind the adapters. A call nobody scripted fails the test at once.

Each fake of a port names the Protocol it stands for, and mypy (which checks tests/unit) holds it
to that Protocol: FakeRunner is a proc.Runner, FakeBackground a proc.Background, FakeCluster a
ports.Cluster (FakeChanges its ports.Changes), FakeKind a ports.Clusters, FakeDocker a
ports.ImageStore and a ports.Builder, FakePublisher a ports.Publisher, FakeCharts a ports.Charts, RecordingEngine a
session.SessionEngine."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from devloop import manifests as mf
from devloop.config import Config, ServiceConfig
from devloop.engine import Engine, ServiceResult
from devloop.errors import CommandFailed, StepFailed
from devloop.ignore import IgnoreRules, parse_dockerignore
from devloop.model import ChartRequest, ImageRef, ServiceState
from devloop.monitoring import Monitoring
from devloop.output import Output
from devloop.ownership import Conflict, FieldConflicts
from devloop.plan import Plan, ServiceLayout
from devloop.ports import Builder, Changes, Charts, Cluster, Clusters, ExecStream, ImageStore, Publisher, quiet
from devloop.proc import Background, Result, Runner
from devloop.project import Deployed
from devloop.session import SessionEngine
from devloop.targets import Target, TargetSpec
from devloop.targets.local import KindTarget, Transport
from devloop.workload import PodEvent, pod_name, pod_ready


class _Any:
    def __eq__(self, other: object) -> bool:
        return True

    def __repr__(self) -> str:
        return "ANY"


ANY = cast(str, _Any())  # equal to any single argv element


@dataclass
class Expect:
    argv: list[str]
    stdout: str = ""
    stderr: str = ""
    returncode: int = 0
    input_contains: str | None = None


class FakeBackground(Background):
    def __init__(self, argv: Sequence[str], on_line: Callable[[str], None]) -> None:
        self.argv = list(argv)
        self.on_line = on_line
        self.stopped = False
        self._done = threading.Event()

    def alive(self) -> bool:
        return not self.stopped

    def wait(self, timeout: float | None = None) -> int | None:
        """Like a real child: blocks until it is stopped, or `timeout` passes."""
        return 0 if self._done.wait(timeout) else None

    def stop(self) -> None:
        self.stopped = True
        self._done.set()


@dataclass
class FakeRunner(Runner):
    script: list[Expect] = field(default_factory=list)
    calls: list[list[str]] = field(default_factory=list)
    inputs: list[str | bytes | None] = field(default_factory=list)
    spawned: list[FakeBackground] = field(default_factory=list)

    def expect(self, *argv: str, stdout: str = "", stderr: str = "", returncode: int = 0, input_contains: str | None = None) -> FakeRunner:
        self.script.append(Expect(list(argv), stdout, stderr, returncode, input_contains))
        return self

    def run(
        self,
        argv: Sequence[str],
        *,
        input: str | bytes | None = None,
        timeout: float | None = None,
        check: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> Result:
        argv = list(argv)
        self.calls.append(argv)
        self.inputs.append(input)
        if not self.script:
            raise AssertionError(f"unexpected command: {argv}")
        want = self.script.pop(0)
        if want.argv != argv:
            raise AssertionError(f"expected {want.argv}, got {argv}")
        if want.input_contains is not None:
            assert input is not None and want.input_contains in (input if isinstance(input, str) else input.decode())
        result = Result(tuple(argv), want.returncode, want.stdout, want.stderr)
        if check and want.returncode != 0:
            raise CommandFailed(argv, want.returncode, want.stderr)
        return result

    def spawn(self, argv: Sequence[str], *, on_line: Callable[[str], None], env: Mapping[str, str] | None = None) -> FakeBackground:
        bg = FakeBackground(argv, on_line)
        self.spawned.append(bg)
        return bg

    def done(self) -> None:
        assert not self.script, f"expected commands never ran: {[e.argv for e in self.script]}"


# -- fakes at the level of meaning, for the engine and the session ------------------------------------


@dataclass
class _Deployment:
    name: str
    namespace: str
    labels: dict[str, str]
    replicas: int
    image: str
    probes: bool
    history: list[str] = field(default_factory=list)  # image per revision (revision = index + 1)
    container: str = "app"  # its (first) container's name, as the manifest says
    pods: list[dict[str, Any]] = field(default_factory=list)
    applied_docs: int = 0


class FakeChanges(Changes):
    """Every wait is short and reports a change: the fake cluster changes only when called."""

    generation = 0

    def wait(self, seen: int, timeout: float) -> bool:
        time.sleep(min(timeout, 0.01))
        return True


class FakeCluster(Cluster):
    """A tiny Kubernetes: Deployments roll out at once to pods that are ready, unless their image
    is in `crashing`. Then, as Kubernetes does, a Deployment with a readiness probe keeps its old
    pods serving and one new pod crash-loops; without a probe every pod is replaced and crash-loops."""

    def __init__(self, context: str = "kind-devloop") -> None:
        self.context = context
        self.deployments: dict[tuple[str, str], _Deployment] = {}
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}  # (ns, kind, name) → doc
        self.crashing: set[str] = set()
        self.unschedulable: dict[str, str] = {}  # image → what the scheduler says of its new pod (it stays Pending)
        self.applies: list[tuple[str, list[str]]] = []  # (namespace, ["Kind/name", ...]) per apply
        self.forced: list[bool] = []  # per apply: conflicts forced
        self.autoscaling: dict[str, list[dict[str, Any]]] = {}  # namespace → its HorizontalPodAutoscalers
        self.foreign: dict[str, list[Conflict]] = {}  # "kind/name" → fields other managers own there (conflicts)
        self.handovers: list[dict[str, Any]] = []  # what another field manager of devloop's applied (replicas handed over)
        self.undos: list[tuple[str, str]] = []
        self.revisions: dict[tuple[str, str], list[dict[str, Any]]] = {}  # a StatefulSet's templates as applied, oldest first
        self.execs: list[tuple[str, list[str]]] = []
        self.workloads: dict[tuple[str, str, str], tuple[dict[str, Any], dict[str, str], bool, bool]] = {}  # StatefulSets, Jobs
        self.stuck: set[str] = set()  # images whose StatefulSet or Job pods run and never become ready (or complete)
        self.unpullable: set[str] = set()  # images the cluster cannot pull (their pods: ErrImagePull)
        self.other_pods: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        self.jobs_run: list[str] = []
        self.job_log: list[str] = []  # what a Job's (or StatefulSet's) pod printed
        self.spawned: list[FakeBackground] = []
        self._pod_seq = 0

    # Cluster protocol
    def contexts(self) -> list[str]:
        return [self.context]

    def reachable(self) -> bool:
        return True

    def require_reachable(self, cluster: str) -> None:
        return None

    def context_namespace(self) -> str:
        return "default"

    def kustomize(self, directory: str) -> str:
        raise AssertionError("kustomize is tested with the real kubectl (tests/integration)")

    def apply(self, docs: Sequence[Mapping[str, Any]], namespace: str, *, force: bool = True, manager: str = "devloop") -> list[str]:
        if not force:
            theirs = self.conflicts(docs, namespace)
            if theirs:
                raise FieldConflicts(theirs)
        if manager != "devloop":
            self.handovers += [dict(d) for d in docs]
            return [f"{d['kind']}/{d['metadata']['name']} configured" for d in docs]
        for doc in docs:
            self.foreign.pop(f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}", None)
        self.forced.append(force)
        names = []
        for doc in map(dict, docs):
            if not doc:
                continue
            ns = doc.get("metadata", {}).get("namespace") or namespace
            self.objects[(ns, doc["kind"], doc["metadata"]["name"])] = doc
            names.append(f"{doc['kind']}/{doc['metadata']['name']}")
            if doc["kind"] == "Deployment":
                self._apply_deployment(doc, ns)
            elif doc["kind"] in ("StatefulSet", "Job"):
                self._run_workload(doc, ns)
        self.applies.append((namespace, names))
        return [f"{n} configured" for n in names]

    def conflicts(self, docs: Sequence[Mapping[str, Any]], namespace: str) -> list[Conflict]:
        return [c for d in docs for c in self.foreign.get(f"{d.get('kind')}/{(d.get('metadata') or {}).get('name')}", [])]

    def autoscalers(self, namespace: str) -> list[dict[str, Any]]:
        return list(self.autoscaling.get(namespace, []))

    def _apply_deployment(self, doc: dict[str, Any], ns: str) -> None:
        spec = doc["spec"]
        container = spec["template"]["spec"]["containers"][0]
        key = (ns, doc["metadata"]["name"])
        d = self.deployments.get(key)
        if d is None:
            d = _Deployment(doc["metadata"]["name"], ns, dict(spec["selector"]["matchLabels"]), int(spec.get("replicas", 1)), "", False)
            self.deployments[key] = d
        d.probes = bool(container.get("readinessProbe"))
        d.container = str(container.get("name", "app"))
        if container["image"] != d.image:
            d.history.append(container["image"])
            self._roll(d, container["image"])

    def _run_workload(self, doc: dict[str, Any], ns: str) -> None:
        """A StatefulSet's pods become ready at once; a Job's one pod completes at once, unless its
        image is in `crashing`: then it failed, and Kubernetes gave up (its Failed condition)."""
        name, kind = doc["metadata"]["name"], doc["kind"]
        if kind == "Job" and (ns, kind, name) in self.workloads:
            return  # as Kubernetes: a Job runs once; applying it again (unchanged) does not run it again
        image = doc["spec"]["template"]["spec"]["containers"][0]["image"]
        labels = {"job-name": name} if kind == "Job" else dict(doc["spec"]["selector"]["matchLabels"])
        crash = image in self.crashing
        stuck = image in self.stuck or image in self.unpullable
        if kind == "StatefulSet":
            history = self.revisions.setdefault((ns, name), [])
            if not history or history[-1]["spec"]["template"] != doc["spec"]["template"]:
                history.append(doc)
        self.workloads[(ns, kind, name)] = (doc, labels, crash, stuck)
        self.jobs_run += [name] if kind == "Job" else []
        self._pod_seq += 1
        ready = "False" if kind == "Job" or stuck else "True"
        phase = "Running" if stuck else {"Job": "Failed" if crash else "Succeeded"}.get(kind, "Running")
        state: dict[str, Any] = {"running": {}}
        restarts, last = 0, {}
        if crash and kind != "Job":  # every replica replaced by one that crash-loops (no readiness probe held it)
            ready, state, restarts, last = "False", {"waiting": {"reason": "CrashLoopBackOff"}}, 2, {"terminated": {"exitCode": 1}}
        if image in self.unpullable:
            phase, state = "Pending", {"waiting": {"reason": "ErrImagePull", "message": f'failed to pull image "{image}": not found'}}
        self.other_pods[(ns, kind, name)] = [
            {
                "metadata": {
                    "name": f"{name}-{self._pod_seq}",
                    "labels": labels,
                    "creationTimestamp": f"2026-01-01T00:00:{self._pod_seq:02d}Z",
                },
                "spec": {"containers": [{"image": image}]},
                "status": {
                    "phase": phase,
                    "conditions": [{"type": "Ready", "status": ready}],
                    "containerStatuses": [{"name": kind.lower(), "restartCount": restarts, "state": state, "lastState": last}],
                },
            }
        ]

    def _workload_status(self, resource: str, name: str, namespace: str) -> dict[str, Any] | None:
        kind = {"statefulset": "StatefulSet", "job": "Job"}.get(resource)
        found = self.workloads.get((namespace, kind or "", name))
        if found is None:
            return None
        doc, labels, crash, stuck = found
        live = {**doc, "spec": {**doc["spec"], "selector": {"matchLabels": labels}}}
        if stuck or (crash and kind != "Job"):
            live["status"] = {"active": 1} if kind == "Job" else {"readyReplicas": 0, "currentRevision": "r", "updateRevision": "r"}
        elif kind == "Job":
            cond = {"type": "Failed", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}
            live["status"] = (
                {"failed": 1, "conditions": [{**cond, "status": "True"}]}
                if crash
                else {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
            )
        else:
            n = int(doc["spec"].get("replicas", 1))
            live["status"] = {"readyReplicas": n, "updatedReplicas": n, "currentRevision": "r", "updateRevision": "r"}
        return live

    def _new_pods(self, d: _Deployment, image: str, n: int, crash: bool) -> list[dict[str, Any]]:
        out = []
        for _ in range(n):
            self._pod_seq += 1
            cs: dict[str, Any] = {"name": "app", "restartCount": 0, "state": {"running": {}}}
            if crash:
                cs = {
                    "name": "app",
                    "restartCount": 2,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"exitCode": 1}},
                }
            if image in self.unpullable:
                crash = True
                cs = {"name": "app", "restartCount": 0, "state": {"waiting": {"reason": "ErrImagePull", "message": f"{image}: not found"}}}
            out.append(
                {
                    "metadata": {"name": f"{d.name}-{self._pod_seq}", "labels": dict(d.labels)},
                    "spec": {"containers": [{"image": image}]},
                    "status": {"conditions": [{"type": "Ready", "status": "False" if crash else "True"}], "containerStatuses": [cs]},
                }
            )
        return out

    def _roll(self, d: _Deployment, image: str) -> None:
        d.image = image
        if image in self.unschedulable:  # a surge pod no node has room for; the old pods keep serving
            self._pod_seq += 1
            pending = {
                "metadata": {"name": f"{d.name}-{self._pod_seq}", "labels": dict(d.labels)},
                "spec": {"containers": [{"image": image}]},
                "status": {
                    "phase": "Pending",
                    "conditions": [
                        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": self.unschedulable[image]}
                    ],
                },
            }
            d.pods = [p for p in d.pods if p["spec"]["containers"][0]["image"] != image] + [pending]
        elif image not in self.crashing:
            d.pods = self._new_pods(d, image, d.replicas, crash=False)
        elif d.probes and d.pods:
            d.pods = [p for p in d.pods if p["spec"]["containers"][0]["image"] != image] + self._new_pods(d, image, 1, crash=True)
        else:
            d.pods = self._new_pods(d, image, d.replicas, crash=True)

    def delete(self, docs: Sequence[Mapping[str, Any]], namespace: str) -> list[str]:
        for doc in docs:
            key = (doc.get("metadata", {}).get("namespace") or namespace, str(doc.get("kind")), str(doc.get("metadata", {}).get("name")))
            self.workloads.pop(key, None)
            self.other_pods.pop(key, None)
        return []

    def get(self, resource: str, name: str, namespace: str) -> dict[str, Any] | None:
        if resource != "deployment":
            return self._workload_status(resource, name, namespace)
        d = self.deployments.get((namespace, name))
        if resource != "deployment" or d is None:
            return None
        updated = sum(1 for p in d.pods if p["spec"]["containers"][0]["image"] == d.image)
        ready_new = sum(
            1 for p in d.pods if p["spec"]["containers"][0]["image"] == d.image and p["status"]["conditions"][0]["status"] == "True"
        )
        return {
            "metadata": {"generation": len(d.history), "annotations": {"deployment.kubernetes.io/revision": str(len(d.history))}},
            "spec": {"replicas": d.replicas, "template": {"spec": {"containers": [{"name": d.container, "image": d.image}]}}},
            "status": {
                "observedGeneration": len(d.history),
                "updatedReplicas": updated,
                "replicas": len(d.pods),
                "availableReplicas": ready_new,
                "readyReplicas": sum(1 for p in d.pods if p["status"]["conditions"][0]["status"] == "True"),
            },
        }

    def get_raw(self, path: str) -> str:
        raise AssertionError("no API server paths in the fake cluster")

    def pods(self, namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        others = [p for (ns, _, _), pods in self.other_pods.items() if ns == namespace for p in pods]
        return [
            p for d in self.deployments.values() if d.namespace == namespace and (not labels or d.labels == dict(labels)) for p in d.pods
        ] + [p for p in others if not labels or p["metadata"]["labels"] == dict(labels)]

    def logs(self, pod: str, namespace: str, *, tail: int = 10, previous: bool = False) -> list[str]:
        if any(p["metadata"]["name"] == pod for pods in self.other_pods.values() for p in pods):
            return [] if previous else list(self.job_log)
        return ["/app/server.js:3", "  const x = ;", "SyntaxError: Unexpected token ';'"] if previous else []

    def exec(self, pod: str, namespace: str, argv: list[str], stdin: bytes | None = None, timeout: float = 30) -> str:
        self.execs.append((pod, argv))
        return ""

    def rollout_undo(self, deployment: str, namespace: str, revision: str = "", resource: str = "deployment") -> None:
        if resource == "statefulset":  # to the previous ControllerRevision, as kubectl does without --to-revision
            self.undos.append((f"statefulset/{deployment}", revision))
            history = self.revisions[(namespace, deployment)]
            history.append(history[-2])
            self._run_workload(history[-1], namespace)
            return
        d = self.deployments[(namespace, deployment)]
        self.undos.append((deployment, revision))
        image = d.history[int(revision) - 1] if revision else d.history[-2]
        d.history.append(image)
        self._roll(d, image)

    def watch_pods(self, namespace: str, labels: Mapping[str, str], on_event: Callable[[PodEvent], None]) -> FakeBackground:
        bg = FakeBackground(["watch", namespace], lambda _line: None)
        self.spawned.append(bg)
        return bg

    def stream_logs(self, pod: str, namespace: str, on_line: Callable[[str], None], since: str = "") -> FakeBackground:
        bg = FakeBackground(["logs", namespace, pod], on_line)
        self.spawned.append(bg)
        return bg

    def changes(self, namespace: str) -> FakeChanges:
        return FakeChanges()

    def exec_stream(self, pod: str, namespace: str, argv: list[str], container: str = "") -> ExecStream:
        raise StepFailed("no exec streams in the fake cluster", "")

    def connect(self, namespace: str, pod: str, port: int, timeout: float = 5.0) -> socket.socket:
        raise StepFailed("no port-forward sockets in the fake cluster", "")

    # helpers for tests
    def serving(self, name: str, namespace: str = "default") -> list[str]:
        d = self.deployments[(namespace, name)]
        return [p["spec"]["containers"][0]["image"] for p in d.pods if p["status"]["conditions"][0]["status"] == "True"]


class FakeKind(Clusters):
    def __init__(self, clusters: Sequence[str] = ("devloop",)) -> None:
        self.clusters = list(clusters)
        self.created: list[str] = []

    def exists(self, name: str) -> bool:
        return name in self.clusters

    def create(self, name: str, config: Path, image: str = "", wait: str = "120s") -> None:
        self.created.append(name)
        self.clusters.append(name)

    def nodes(self, name: str) -> list[str]:
        return [f"{name}-control-plane"]

    def load_archive(self, name: str, archive: Path, nodes: Sequence[str]) -> None:
        raise AssertionError("the engine publishes through its Publisher")

    def delete(self, name: str) -> None:
        self.clusters.remove(name)


class FakeDocker(ImageStore, Builder):
    """Images in the local engine, and the builder that makes them."""

    def __init__(self) -> None:
        self.present: set[str] = set()
        self.builds: list[str] = []
        self.secrets_seen: list[dict[str, object]] = []  # per build: secret id → its file or variable name
        self.failing: dict[str, Exception] = {}  # image repository → the error its build raises

    # ImageStore
    def ping(self) -> str:
        return "fake"

    def exists(self, ref: str) -> bool:
        return ref in self.present

    def command(self, ref: str) -> tuple[list[str], list[str]]:
        return [], ["node", "server.js"]

    def prune(self, repositories: list[str], keep: int = 3) -> list[str]:
        return []

    # Builder
    @property
    def name(self) -> str:
        return "fake"

    def build(
        self,
        context: Path,
        dockerfile: str,
        tag: str,
        build_args: Mapping[str, str],
        target: str | None = None,
        on_line: Callable[[str], None] = quiet,
        *,
        secrets: Mapping[str, Path] | None = None,
        secret_env: Mapping[str, str] | None = None,
    ) -> str:
        error = self.failing.get(tag.rpartition(":")[0])
        if error is not None:
            raise error
        self.builds.append(tag)
        self.secrets_seen.append({**(secrets or {}), **(secret_env or {})})
        self.present.add(tag)
        return "sha256:fake"


class FakePublisher(Publisher):
    def __init__(self, registry: str = "localhost:5001") -> None:
        self._registry = registry
        self.pushed: list[str] = []
        self.prepared = 0

    @property
    def registry(self) -> str:
        return self._registry

    def prepare(self) -> bool:
        self.prepared += 1
        return False

    def start_early(self) -> bool:
        return True

    def publish(self, ref: ImageRef, note: Callable[[str], None], progress: Callable[[str], None] = quiet) -> str:
        if ref.cluster in self.pushed:
            return ""
        self.pushed.append(ref.cluster)
        progress(f"pushing {ref.cluster}: 1.0 / 2.0 MB")
        return f"pushed {ref.cluster}"


def kind_target(
    config: Config, out: Output, kube: Cluster, images: ImageStore, publisher: Publisher, kind: Clusters | None = None
) -> KindTarget:
    """The local kind cluster's behaviour over fakes (no garbage collection: nothing to collect)."""
    return KindTarget(
        TargetSpec("kind", config.cluster.context),
        config,
        kind=kind or FakeKind(),
        kube=kube,
        images=images,
        transport=lambda _: Transport(publisher),
        out=out,
    )


class FakeCharts(Charts):
    """helm template, played: `output` with `{key}` replaced by the request's value for that key
    (its JSON decoded), e.g. `{image.repository}`; every request is recorded."""

    def __init__(self, output: str, defaults: Mapping[str, str] | None = None) -> None:
        self.output = output
        self.defaults = dict(defaults or {})  # what the chart's values.yaml says
        self.requests: list[ChartRequest] = []

    def render(self, req: ChartRequest) -> str:
        self.requests.append(req)
        text = self.output
        values = {**self.defaults, **{k: json.loads(v) for k, v in req.values}}
        for key, value in values.items():
            text = text.replace("{" + key + "}", str(value))
        return text


def make_engine(
    config: Config,
    out: Output,
    *,
    images: ImageStore,
    kube: Cluster,
    publisher: Publisher,
    builder: Builder | None = None,
    kind: Clusters | None = None,
    target: Target | None = None,
    charts: Charts | None = None,
) -> Engine:
    """An engine over fakes (the integration tests give it the real Docker engine and its builder), wired as
    wiring.py wires the real one. Without `builder`, `images` must be a FakeDocker: the image store and the builder."""
    if builder is None:
        assert isinstance(images, FakeDocker), "a real image store needs its builder"
        builder = images
    return Engine(
        config,
        out,
        images=images,
        builder=builder,
        kube=kube,
        target=target or kind_target(config, out, kube, images, publisher, kind),
        charts=charts,
    )


class FakeHasher:
    def __init__(self) -> None:
        self.followed: list[list[str]] = []

    def follow(self, contexts: Iterable[Path | str]) -> None:
        self.followed.append([str(c) for c in contexts])

    def changed(self, path: str) -> None:
        return None


class FakeChannels:
    def __init__(self) -> None:
        self.prepared: list[tuple[list[str], str]] = []

    def prepare(self, pods: Iterable[str], namespace: str) -> None:
        self.prepared.append((list(pods), namespace))


class RecordingEngine:
    """The engine as the session uses it (`session.SessionEngine`): it records every plan it is
    handed and does each service's change at once, as the real engine would end it: a rebuild rolls
    out a new tag (dl-1, dl-2, …), a sync adds the files to the synced ones; the pods are the fake
    cluster's. `during(plan)` runs inside each call (a build that writes into the tree)."""

    def __init__(self, config: Config, out: Output, kube: FakeCluster | None = None) -> None:
        self.config = config
        self.out = out
        self.kube = kube or FakeCluster()
        self.target = kind_target(config, out, self.kube, FakeDocker(), FakePublisher())
        self.state: dict[str, ServiceState] = {s.name: ServiceState() for s in config.services}
        self.hasher = FakeHasher()
        self.channels = FakeChannels()
        self.plans: list[Plan] = []
        self.reconfigured: list[Config] = []
        self.during: Callable[[Plan], None] = lambda plan: None
        self.stopped = False

    def run(self, plan: Plan) -> list[ServiceResult]:
        self.plans.append(plan)
        self.during(plan)
        results = []
        for c in plan.services:
            svc = self.config.service(c.service)
            st = self.state[c.service]
            d = self.manifests(svc)
            pods = [pod_name(p) for p in self.kube.pods(d.namespace, d.selector) if pod_ready(p)]
            if c.sync:
                st.synced.update(c.sync)
                results.append(ServiceResult(c.service, ok=True, image=st.good, ready_pods=pods, synced=True))
            else:
                ref = ImageRef(svc.built.name, f"dl-{len(self.plans)}", "localhost:5001")
                st.rolled_out(ref, str(len(self.plans)))
                results.append(ServiceResult(c.service, ok=True, image=ref, ready_pods=pods, built=True, published=True))
        return results

    def up(self) -> list[ServiceResult]:
        raise AssertionError("the session's loop is tested from its queue, not from `up`")

    def check_manifests(self) -> list[Deployed]:
        return []

    def layouts(self) -> list[ServiceLayout]:
        return [
            ServiceLayout(
                s.name,
                str(s.built.context),
                IgnoreRules(tuple(_dockerignore(s)), s.built.dockerfile, self.config.watch.ignore),
                tuple(str(m) for m in s.manifests),
                live_fallback=s.live_update.fallback if s.live_update.enabled else None,
            )
            for s in self.config.services
        ]

    def config_files(self) -> list[str]:
        c = self.config
        return [str(p) for p in (c.file.resolve() if c.file else None, c.cluster.kind_config) if p is not None]

    def manifests(self, svc: ServiceConfig) -> Deployed:
        docs = mf.load(svc.manifests)
        deployment = mf.find(docs, "Deployment", svc.deployment)
        assert deployment is not None, svc.deployment
        return Deployed(docs, deployment, self.namespace(svc))

    def namespace(self, svc: ServiceConfig) -> str:
        return svc.deploy.namespace or "default"

    def monitoring(self) -> Monitoring | None:
        return None

    def reconfigure(self, config: Config) -> list[str]:
        self.reconfigured.append(config)
        self.config = config
        self.state = {s.name: self.state.get(s.name) or ServiceState() for s in config.services}
        return []

    def stop(self) -> None:
        self.stopped = True


def _dockerignore(svc: ServiceConfig) -> list[str]:
    path = Path(svc.built.context) / ".dockerignore"
    return parse_dockerignore(path.read_text()) if path.is_file() else []


def _is_a_session_engine(engine: RecordingEngine) -> SessionEngine:
    """mypy's check that RecordingEngine is a session.SessionEngine. It cannot subclass it as the other
    fakes subclass their Protocols: SessionEngine's members are read-only properties, which it sets."""
    return engine
