"""The Kubernetes cluster as devloop uses it (the `Cluster` port): the hot path over one persistent
API connection, kubectl for the rest.

Every step of a cycle runs in-process on the official `kubernetes` client's connection (apiconn.py)
and its websockets: server-side apply, reads, pod and log watches (apiwatch.py), exec, port-forward to
a pod, and a namespace change feed. What runs rarely and is subtle to reimplement (kustomize,
`rollout undo`, delete with --wait, an exec with stdin, kubeconfig questions) is left to kubectl
(kubectl.py). Every request names the context: devloop never acts on the current context.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

from devloop.apiconn import ApiConnection, ApiError, close_response, response_lines
from devloop.apiwatch import BackgroundThread, ChangeFeed, watch
from devloop.errors import ClusterUnavailable, StepFailed
from devloop.kubectl import Kubectl
from devloop.ownership import FIELD_MANAGER, Conflict, FieldConflicts, conflicts_of, label_of, namespace_of
from devloop.workload import PodEvent, selector_arg

# Threads the kubernetes client starts itself, whose end by an exception is not devloop's failure:
# the port-forward proxy's (one per forwarded connection) ends with ConnectionResetError whenever a
# pod's side goes away mid-stream (a rollout, a gRPC client closing). Python would print its traceback.
LIBRARY_THREADS = ("Kubernetes port forward proxy",)
_noise: dict[str, Any] = {}  # "report": where such an end is said; "previous": the hook for every other thread


def quiet_library_threads(report: Callable[[str], None]) -> None:
    """An exception that ends one of the client library's own threads (LIBRARY_THREADS) becomes one
    line for `report` (devloop's -v detail), never a traceback on the terminal; other threads' go to
    the hook that was there. Installed once per process; the latest `report` is used."""
    _noise["report"] = report
    if "previous" in _noise:
        return
    _noise["previous"] = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        name = args.thread.name if args.thread is not None else ""
        if name.startswith(LIBRARY_THREADS) and args.exc_type is not SystemExit:
            with contextlib.suppress(Exception):
                what = f"{args.exc_type.__name__}: {_first_line(args.exc_value)}" if args.exc_value else args.exc_type.__name__
                _noise["report"](f"{name}: ended by {what}")
            return
        _noise["previous"](args)

    threading.excepthook = hook


class ApiCluster:
    """The cluster of one kube context: an API connection, and kubectl for what it leaves to kubectl.
    `on_noise`: where the client library's own threads' failures are said (quiet_library_threads)."""

    def __init__(self, context: str, kubectl: Kubectl | None = None, on_noise: Callable[[str], None] | None = None) -> None:
        if on_noise is not None:
            quiet_library_threads(on_noise)
        self.context = context
        self.kubectl = kubectl or Kubectl(context)
        self.api = ApiConnection(context)
        self._lock = threading.Lock()
        self._feeds: dict[str, ChangeFeed] = {}

    # -- kubectl's part --------------------------------------------------------------------------

    def client_version(self) -> str:
        return self.kubectl.client_version()

    def contexts(self) -> list[str]:
        return self.kubectl.contexts()

    def context_namespace(self) -> str:
        return self.kubectl.context_namespace()

    def kustomize(self, directory: str) -> str:
        return self.kubectl.kustomize(directory)

    def delete(self, docs: Sequence[Mapping[str, Any]], namespace: str) -> list[str]:
        return self.kubectl.delete(docs, namespace)

    def exec(self, pod: str, namespace: str, argv: list[str], stdin: bytes | None = None, timeout: float = 30) -> str:
        return self.kubectl.exec(pod, namespace, argv, stdin, timeout)

    def rollout_undo(self, deployment: str, namespace: str, revision: str = "", resource: str = "deployment") -> None:
        """`kubectl rollout undo`; then the fields it set are devloop's (kubectl's update took them from
        devloop's apply: on a cluster devloop does not own, its next apply would conflict with its own rollback)."""
        path = ""
        before = None  # unknown: nothing is taken (what kubectl held before cannot be told from what the undo set)
        with contextlib.suppress(ApiError, ClusterUnavailable, StepFailed):
            path = self.api.path("apps/v1", resource, namespace, deployment)
            before = self.api.get(path)
        self.kubectl.rollout_undo(deployment, namespace, revision, resource)
        if before is None:
            return
        for _ in range(RECLAIM_ATTEMPTS):  # the controller updates the status meanwhile: the patch's test op fails, read again
            try:
                after = self.api.get(path)
                ops = reclaim_managed_fields(before, after) if after is not None else None
                if ops is not None:
                    self.api.request("PATCH", path, body=ops, content_type="application/json-patch+json")
                return
            except ApiError:
                time.sleep(RECLAIM_PAUSE)
            except ClusterUnavailable:
                return

    # -- requests ----------------------------------------------------------------------------------

    def reachable(self) -> bool:
        try:
            self.api.request("GET", "/readyz", timeout=10.0, stream=True).read()
        except (ClusterUnavailable, ApiError, OSError):
            return False
        return True

    def require_reachable(self, cluster: str) -> None:
        if not self.reachable():
            raise ClusterUnavailable(
                f"the API server of kind cluster {cluster!r} (context {self.context}) does not answer",
                "`devloop up` creates or repairs it; `kind get clusters` lists what exists",
            )

    def _target(self, doc: Mapping[str, Any], namespace: str) -> tuple[str, str]:
        """(API path, kubectl's label `deployment.apps/x`) of a document."""
        api_version, kind = str(doc.get("apiVersion", "v1")), str(doc["kind"])
        name = str((doc.get("metadata") or {}).get("name", ""))
        return self.api.path(api_version, kind, namespace_of(doc, namespace), name), label_of(doc)

    def _apply_one(self, path: str, doc: Mapping[str, Any], *, force: bool, manager: str, dry_run: bool = False) -> dict[str, Any]:
        query = {"fieldManager": manager, "force": "true" if force else "false"}
        if dry_run:
            query["dryRun"] = "All"
        result: dict[str, Any] = self.api.request(
            "PATCH", path, query=query, body=dict(doc), content_type="application/apply-patch+yaml", timeout=60.0
        )
        return result

    def apply(self, docs: Sequence[Mapping[str, Any]], namespace: str, *, force: bool = True, manager: str = FIELD_MANAGER) -> list[str]:
        """Server-side apply of every document as `manager`. `force`: conflicts are forced (devloop's
        own cluster, where its manifests are the source of truth; fields last applied with client-side
        `kubectl apply` are handed over first); without it a conflict raises FieldConflicts (ownership.py).
        Lines like kubectl's: `deployment.apps/x configured`."""
        lines = []
        for doc in docs:
            if not isinstance(doc, Mapping) or not doc.get("kind"):
                continue
            path, label = self._target(doc, namespace)
            try:
                before = self.api.get(path)
                if before is not None and force:
                    self._take_over(path, before)
                after = self._apply_one(path, doc, force=force, manager=manager)
            except ApiError as e:
                if e.status == 409 and e.causes:
                    raise FieldConflicts(conflicts_of(label, e.causes), f"context {self.context}") from e
                raise StepFailed(f"apply {label} failed: {e.message}", "fix the manifest; devloop applies again on the next save") from e
            # generation moves only with the spec (status updates move resourceVersion all the time)
            key = "generation" if "generation" in after.get("metadata", {}) else "resourceVersion"
            old = (before or {}).get("metadata", {}).get(key)
            new = after.get("metadata", {}).get(key)
            lines.append(f"{label} {'created' if before is None else 'unchanged' if old == new else 'configured'}")
        return lines

    def conflicts(self, docs: Sequence[Mapping[str, Any]], namespace: str) -> list[Conflict]:
        """The fields other managers own that applying these documents (unforced) would change: a
        server-side dry run of each (nothing changes), every conflict collected."""
        found = []
        for doc in docs:
            if not isinstance(doc, Mapping) or not doc.get("kind"):
                continue
            path, label = self._target(doc, namespace)
            try:
                self._apply_one(path, doc, force=False, manager=FIELD_MANAGER, dry_run=True)
            except ApiError as e:
                if e.status == 409 and e.causes:
                    found += conflicts_of(label, e.causes)
                    continue
                raise StepFailed(f"apply {label} failed: {e.message}", "fix the manifest; devloop applies again on the next save") from e
        return found

    def autoscalers(self, namespace: str) -> list[dict[str, Any]]:
        """The namespace's HorizontalPodAutoscalers (autoscaling/v2, else v1; none when neither is served)."""
        for version in ("v2", "v1"):
            path = f"/apis/autoscaling/{version}/namespaces/{quote(namespace)}/horizontalpodautoscalers"
            try:
                return list(self.api.request("GET", path).get("items") or [])
            except ApiError as e:
                if e.status != 404:
                    raise StepFailed(f"list HorizontalPodAutoscalers in {namespace}: {e.message}", "") from e
        return []

    def _take_over(self, path: str, obj: Mapping[str, Any]) -> None:
        """An object last applied with client-side `kubectl apply` (an earlier devloop, or you):
        hand its fields to devloop's server-side apply first, as `kubectl apply --server-side` does
        (client-go's csaupgrade), so that a field later removed from the manifest is removed from the
        object too instead of staying owned by the old applier."""
        ops = upgrade_managed_fields(obj)
        if ops is None:
            return
        with contextlib.suppress(ApiError):  # changed meanwhile (the test op failed): the next apply decides
            self.api.request("PATCH", path, body=ops, content_type="application/json-patch+json")

    def get(self, resource: str, name: str, namespace: str) -> dict[str, Any] | None:
        groups = {"deployment": "apps/v1", "statefulset": "apps/v1", "daemonset": "apps/v1", "replicaset": "apps/v1"}
        groups |= {"job": "batch/v1", "cronjob": "batch/v1"}
        api_version = groups.get(resource.lower(), "v1")
        try:
            return self.api.get(self.api.path(api_version, resource, namespace, name))
        except ApiError as e:
            raise StepFailed(f"get {resource}/{name}: {e.message}", "") from e

    def get_raw(self, path: str) -> str:
        """An API server path (e.g. a service proxy), its body, as `kubectl get --raw PATH` prints it.
        Raises StepFailed when the API server (or what it proxies to) does not answer with success,
        with kubectl's words (`Error from server (NotFound): services "x" not found`)."""
        try:
            resp = self.api.request("GET", path, timeout=20.0, stream=True)
            body: bytes = resp.data
        except ApiError as e:
            raise StepFailed(f"Error from server ({e.reason}): {e.message}" if e.reason else e.message, "") from e
        except ClusterUnavailable as e:
            raise StepFailed(e.message, "") from e
        except Exception as e:  # the connection dropped while the body was read (urllib3's errors)
            raise StepFailed(f"the API server of context {self.context} does not answer ({type(e).__name__})", "") from e
        return body.decode(errors="replace")

    def pods(self, namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        out = self.api.request("GET", f"/api/v1/namespaces/{quote(namespace)}/pods", query={"labelSelector": selector_arg(labels)})
        return list(out.get("items") or [])

    def _containers(self, pod: str, namespace: str) -> list[str]:
        p = self.api.get(f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(pod)}") or {}
        spec = p.get("spec", {})
        return [str(c["name"]) for c in (spec.get("initContainers") or []) + (spec.get("containers") or [])]

    def logs(self, pod: str, namespace: str, *, tail: int = 10, previous: bool = False) -> list[str]:
        lines: list[str] = []
        try:
            for container in self._containers(pod, namespace):
                query = {"container": container, "tailLines": str(tail)}
                if previous:
                    query["previous"] = "true"
                try:
                    resp = self.api.request("GET", f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(pod)}/log", query=query, stream=True)
                except ApiError:
                    continue  # e.g. no previous container, or an init container that never ran
                lines += resp.data.decode(errors="replace").splitlines()
        except (ApiError, ClusterUnavailable):
            return []
        return lines

    # -- watches and streams -------------------------------------------------------------------

    def watch_pods(self, namespace: str, labels: Mapping[str, str], on_event: Callable[[PodEvent], None]) -> BackgroundThread:
        """A typed event per pod change; the thread ends when the API server stops answering (as the
        kubectl watch it replaces did: the session notices and watches again)."""

        def event(kind: str, pod: dict[str, Any]) -> None:
            e = PodEvent.of(pod, deleted=kind == "DELETED")
            if e is not None:
                on_event(e)

        return watch(
            self.api,
            f"/api/v1/namespaces/{quote(namespace)}/pods",
            {"labelSelector": selector_arg(labels)},
            event,
            name=f"pods-{namespace}",
            on_end=lambda: None,
        )

    def changes(self, namespace: str) -> ChangeFeed:
        """The namespace's change feed, opened once and kept for the session."""
        with self._lock:
            feed = self._feeds.get(namespace)
        if feed is None:
            feed = ChangeFeed(self.api, namespace)
            with self._lock:
                self._feeds.setdefault(namespace, feed)
                feed = self._feeds[namespace]
        return feed

    def stream_logs(self, pod: str, namespace: str, on_line: Callable[[str], None], since: str = "") -> BackgroundThread:
        """Follow every container of the pod; the thread ends when the pod's log ends."""
        holder: list[Any] = []

        def close() -> None:
            for resp in holder:
                close_response(resp)

        def follow(container: str, stopped: threading.Event) -> None:
            query = {"container": container, "follow": "true"}
            if since:
                query["sinceSeconds"] = str(_seconds(since))
            else:
                query["tailLines"] = "20"
            try:
                resp = self.api.request(
                    "GET", f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(pod)}/log", query=query, stream=True, timeout=(10.0, None)
                )
            except (ApiError, ClusterUnavailable):
                return
            holder.append(resp)
            if stopped.is_set():
                return
            try:
                for raw in response_lines(resp):
                    on_line(raw.decode(errors="replace"))
            except Exception:
                return  # the connection ended (pod gone, API server away)

        def run(stopped: threading.Event) -> None:
            try:
                containers = [c for c in self._containers(pod, namespace)]
            except (ApiError, ClusterUnavailable):
                return
            threads = [threading.Thread(target=follow, args=(c, stopped), daemon=True, name=f"log-{pod}-{c}") for c in containers]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        return BackgroundThread(run, name=f"logs-{pod}", on_stop=close)

    # -- exec and port-forward over websockets ------------------------------------------------

    def exec_stream(self, pod: str, namespace: str, argv: list[str], container: str = "") -> Any:
        """A running exec (the client's WSClient: write_stdin, readline_stdout, close) with stdin open."""
        from kubernetes.stream import ws_client

        query: list[tuple[str, Any]] = [("command", list(argv)), ("stdin", "true"), ("stdout", "true"), ("stderr", "true")]
        query.append(("tty", "false"))
        if container:
            query.append(("container", container))
        cfg, url, headers = self.api.websocket(f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(pod)}/exec")
        try:
            return ws_client.WSClient(cfg, ws_client.get_websocket_url(url, query), headers, capture_all=True)  # type: ignore[no-untyped-call]
        except Exception as e:
            raise StepFailed(f"exec in {pod} failed: {_first_line(e)}", "") from e

    def connect(self, namespace: str, pod: str, port: int, timeout: float = 5.0) -> socket.socket:
        """A stream socket to the pod's port through the API server's port-forward (one websocket)."""
        from kubernetes.stream import ws_client

        cfg, url, headers = self.api.websocket(f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(pod)}/portforward")
        # The client's websocket connect has no timeout: an API server that accepts the TCP
        # connection and never upgrades it would hang the caller. It runs on its own thread, and
        # a forward that arrives after the deadline is closed when it does.
        box: dict[str, Any] = {}
        done = threading.Event()
        lock = threading.Lock()

        def dial() -> None:
            try:
                got = ws_client.portforward_call(cfg, "GET", url, query_params=[("ports", str(port))], headers=headers)  # type: ignore[no-untyped-call]
            except Exception as e:
                box["error"] = e
                got = None
            with lock:
                if box.get("abandoned") and got is not None:
                    got.close()
                else:
                    box["pf"] = got
                done.set()

        threading.Thread(target=dial, daemon=True, name="devloop-portforward-dial").start()
        done.wait(timeout)
        with lock:
            if not done.is_set():
                box["abandoned"] = True
                raise StepFailed(f"port-forward to {pod}:{port}: the API server did not answer in {timeout:.0f}s", "")
        if "error" in box:
            raise StepFailed(f"port-forward to {pod}:{port} failed: {_first_line(box['error'])}", "") from box["error"]
        sock = box["pf"].socket(port)
        sock.settimeout(None)
        return _ForwardSocket(sock, box["pf"], port)  # type: ignore[return-value]

    def close(self) -> None:
        for feed in list(self._feeds.values()):
            feed.stop()
        self._feeds.clear()
        self.api.close()


class _ForwardSocket:
    """A port-forward socket as the forward uses it: the client's own, plus what the API server said.

    `ends_on_half_close`: the client's forward ends the whole stream when its local end stops
    writing (the websocket protocol has no half-close), so the proxy must not pass on a client's
    half-close before the pod has answered."""

    ends_on_half_close = True

    def __init__(self, sock: Any, forward: Any, port: int) -> None:
        self._sock = sock
        self._forward = forward
        self._port = port

    def refused(self) -> bool:
        """Whether the pod's port refused the stream: the API server says so on the port's error
        channel (the app never saw what was sent)."""
        try:
            said = self._forward.error(self._port) or ""
        except Exception:
            return False
        return "refused" in str(said).lower()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


CSA_MANAGERS = ("kubectl-client-side-apply", "before-first-apply")
RECLAIM_ATTEMPTS = 10  # reads and patches of the managed fields after devloop's own `rollout undo`
RECLAIM_PAUSE = 0.3  # seconds between them (the controller is busy with the rollback's first moments)


def _union(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """The union of two FieldsV1 trees."""
    out = dict(a)
    for k, v in b.items():
        out[k] = _union(out[k], v) if isinstance(out.get(k), Mapping) and isinstance(v, Mapping) else out.get(k, v)
    return out


def upgrade_managed_fields(obj: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The JSON patch that moves the fields owned by client-side apply into devloop's Apply entry
    (None when there are none): pure, after client-go's csaupgrade.UpgradeManagedFields."""
    meta = obj.get("metadata", {})
    fields = list(meta.get("managedFields") or [])
    csa = [f for f in fields if f.get("manager") in CSA_MANAGERS and f.get("operation") == "Update"]
    if not csa:
        return None
    merged = _apply_entry(fields, csa[0])
    for f in csa:
        merged["fieldsV1"] = _union(merged.get("fieldsV1") or {}, f.get("fieldsV1") or {})
    return _replace_managed_fields(meta, [f for f in fields if f not in csa and not _ours(f)], merged)


def _minus(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of FieldsV1 tree `a` that tree `b` does not hold."""
    out: dict[str, Any] = {}
    for k, v in a.items():
        if k not in b:
            out[k] = v
        elif isinstance(v, Mapping) and v and isinstance(b[k], Mapping):
            rest = _minus(v, b[k])
            if rest:
                out[k] = rest
    return out


def _ours(f: Mapping[str, Any]) -> bool:
    return f.get("manager") == FIELD_MANAGER and f.get("operation") == "Apply"


def _replace_managed_fields(meta: Mapping[str, Any], others: list[dict[str, Any]], ours: dict[str, Any]) -> list[dict[str, Any]]:
    """The JSON patch that sets the managed fields (if the object did not change meanwhile)."""
    return [
        {"op": "test", "path": "/metadata/resourceVersion", "value": meta.get("resourceVersion")},
        {"op": "replace", "path": "/metadata/managedFields", "value": [*others, ours]},
    ]


def _apply_entry(fields: list[dict[str, Any]], template: Mapping[str, Any]) -> dict[str, Any]:
    """devloop's Apply entry among `fields`, or a new empty one."""
    found = next((f for f in fields if _ours(f)), None)
    return (
        dict(found)
        if found
        else {
            "manager": FIELD_MANAGER,
            "operation": "Apply",
            "apiVersion": template.get("apiVersion"),
            "fieldsType": "FieldsV1",
            "fieldsV1": {},
            "time": template.get("time"),
        }
    )


def reclaim_managed_fields(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """After devloop's own `kubectl rollout undo` (an update by kubectl, which has no --field-manager
    for it): the JSON patch that moves the fields that update took (those its manager holds now and
    did not hold `before`) into devloop's Apply entry; None when there are none. Pure."""

    def key(f: Mapping[str, Any]) -> tuple[str, str, str]:
        return str(f.get("manager")), str(f.get("operation")), str(f.get("subresource", ""))

    held = {key(f): f.get("fieldsV1") or {} for f in (before.get("metadata") or {}).get("managedFields") or []}
    meta = after.get("metadata") or {}
    taken: dict[str, Any] = {}
    kept: list[dict[str, Any]] = []
    template: Mapping[str, Any] = {}
    for f in meta.get("managedFields") or []:
        new = _minus(f.get("fieldsV1") or {}, held.get(key(f), {}))
        if f.get("operation") != "Update" or f.get("subresource") or _ours(f) or not new:
            kept.append(f)
            continue
        taken, template = _union(taken, new), f
        rest = _minus(f.get("fieldsV1") or {}, new)
        if rest:
            kept.append({**f, "fieldsV1": rest})
    if not taken:
        return None
    ours = _apply_entry(kept, template)
    ours["fieldsV1"] = _union(ours.get("fieldsV1") or {}, taken)
    return _replace_managed_fields(meta, [f for f in kept if not _ours(f)], ours)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def _seconds(since: str) -> int:
    """kubectl's --since durations as the API's sinceSeconds ("40s", "2m", "1h")."""
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        return max(1, int(float(since[:-1]) * units[since[-1]])) if since[-1] in units else max(1, int(since))
    except (ValueError, IndexError):
        return 60
