"""The Kubernetes API over one persistent connection, for the hot path.

`ApiCluster` is the `Kube` adapter with the steps of every cycle moved in-process onto the official
`kubernetes` client's connection pool (one TLS session, kept alive) and its websockets: server-side
apply, reads, pod and log watches, exec, port-forward to a pod, and a namespace change feed that wakes
a rollout wait on the API server's own watch events instead of a fixed poll. What runs rarely and is
subtle to reimplement (kustomize, `rollout undo`, delete with --wait, kubeconfig questions) stays with
kubectl. Every request names the context: devloop never acts on the current context.

The client is built lazily from the kubeconfig and again when the kubeconfig file changes (kind
writes new certificates when a cluster is created again).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from devloop.errors import ClusterUnavailable, StepFailed
from devloop.kube import Kube, PodEvent, selector_arg
from devloop.proc import DEFAULT, Runner

FIELD_MANAGER = "devloop"
WATCH_SECONDS = 240  # a watch request ends after this long; it is opened again from where it was
RECONNECT = 1.0  # seconds between attempts while the API server does not answer a watch


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _kubeconfig_files() -> list[Path]:
    env = os.environ.get("KUBECONFIG")
    paths = [Path(p) for p in env.split(os.pathsep) if p] if env else [Path.home() / ".kube" / "config"]
    return paths


def _stamp() -> tuple[tuple[str, int], ...]:
    out = []
    for p in _kubeconfig_files():
        try:
            out.append((str(p), p.stat().st_mtime_ns))
        except OSError:
            out.append((str(p), 0))
    return tuple(out)


class Thread:
    """A background thread with the `Background` interface (alive / wait / stop), for watches and
    streams that used to be kubectl processes."""

    def __init__(self, target: Callable[[threading.Event], None], name: str, on_stop: Callable[[], None] = lambda: None) -> None:
        self.stopped = threading.Event()
        self._done = threading.Event()
        self._on_stop = on_stop

        def run() -> None:
            try:
                target(self.stopped)
            finally:
                self._done.set()

        self._thread = threading.Thread(target=run, daemon=True, name=name)
        self._thread.start()

    def alive(self) -> bool:
        return not self._done.is_set()

    def wait(self, timeout: float | None = None) -> int | None:
        return 0 if self._done.wait(timeout) else None

    def stop(self) -> None:
        self.stopped.set()
        self._on_stop()
        self._done.wait(5)


class ChangeFeed:
    """Deployments and pods of one namespace, watched: `wait(seen, timeout)` returns as soon as the
    API server reports a change after generation `seen` (or the timeout passes)."""

    def __init__(self, api: ApiCluster, namespace: str) -> None:
        self._cond = threading.Condition()
        self.generation = 0
        self._watches = [
            api.watch(f"/apis/apps/v1/namespaces/{namespace}/deployments", {}, self._bump, name=f"feed-deploy-{namespace}"),
            api.watch(f"/api/v1/namespaces/{namespace}/pods", {}, self._bump, name=f"feed-pods-{namespace}"),
        ]

    def _bump(self, _type: str, _obj: dict[str, Any]) -> None:
        with self._cond:
            self.generation += 1
            self._cond.notify_all()

    def wait(self, seen: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.generation > seen, timeout)

    def stop(self) -> None:
        for w in self._watches:
            w.stop()


class ApiCluster(Kube):
    """`Kube` with the hot path on one persistent API connection."""

    def __init__(self, context: str, runner: Runner = DEFAULT) -> None:
        super().__init__(context, runner)
        self._lock = threading.Lock()
        self._client: Any = None
        self._stamp: tuple[tuple[str, int], ...] = ()
        self._resources: dict[str, dict[str, tuple[str, bool]]] = {}  # groupVersion -> kind/singular -> (plural, namespaced)
        self._feeds: dict[str, ChangeFeed] = {}

    # -- the connection ------------------------------------------------------------------------

    def client(self) -> Any:
        """The API client for this context (built again when the kubeconfig changed)."""
        stamp = _stamp()
        with self._lock:
            if self._client is None or stamp != self._stamp:
                from kubernetes import client, config  # the client's import is heavy: only when a cluster is used

                cfg = client.Configuration()
                try:
                    # the files named now (the client's own default is KUBECONFIG as it was when it was imported)
                    files = os.pathsep.join(str(p) for p in _kubeconfig_files())
                    config.load_kube_config(config_file=files, context=self.context, client_configuration=cfg, persist_config=False)  # type: ignore[no-untyped-call]
                except Exception as e:  # ConfigException and friends: a context the kubeconfig does not name
                    raise ClusterUnavailable(
                        f"kube context {self.context!r}: {str(e).splitlines()[0][:200]}",
                        "`kubectl config get-contexts` lists what the kubeconfig names",
                    ) from e
                cfg.connection_pool_maxsize = 64  # watches and log streams hold connections for long
                cfg.retries = 0
                if self._client is not None:
                    self._client.close()
                self._client = client.ApiClient(cfg)
                self._stamp = stamp
                self._resources.clear()
            return self._client

    def request(
        self,
        method: str,
        path: str,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float | tuple[float, float | None] = 30.0,
        stream: bool = False,
    ) -> Any:
        """One API request; the urllib3 response (stream=True) or the parsed JSON body.
        Raises ApiError for an HTTP error status, ClusterUnavailable when nothing answers."""
        api = self.client()
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        try:
            method, url, headers, body, _ = api.param_serialize(
                method, path, query_params=list((query or {}).items()), header_params=headers, body=body, auth_settings=["BearerToken"]
            )
            resp = api.call_api(method, url, header_params=headers, body=body, _request_timeout=timeout)
        except Exception as e:
            raise ClusterUnavailable(
                f"the API server of context {self.context} does not answer ({type(e).__name__})",
                "`docker ps`: is the kind node running?",
            ) from e
        if stream and 200 <= resp.status < 300:
            return resp.response
        data = resp.read()
        if not 200 <= resp.status < 300:
            raise ApiError(resp.status, _status_message(data) or f"HTTP {resp.status}")
        if stream:
            return resp.response
        return json.loads(data) if data else {}

    # -- what the engine asks --------------------------------------------------------------------

    def reachable(self) -> bool:
        try:
            self.request("GET", "/readyz", timeout=10.0, stream=True).read()
        except (ClusterUnavailable, ApiError, OSError):
            return False
        return True

    def _resource(self, api_version: str, kind: str) -> tuple[str, bool]:
        """(plural, namespaced) for a kind (or a singular name, e.g. "deployment") in a group version."""
        if api_version not in self._resources:
            path = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
            try:
                listing = self.request("GET", path)
            except ApiError as e:
                raise StepFailed(f"the API server does not serve {api_version} ({e.message})", "check the manifest's apiVersion") from e
            table: dict[str, tuple[str, bool]] = {}
            for r in listing.get("resources") or []:
                if "/" in r.get("name", ""):
                    continue  # subresources
                entry = (str(r["name"]), bool(r.get("namespaced")))
                table[str(r.get("kind", "")).lower()] = entry
                table[str(r.get("singularName", "")).lower()] = entry
                table[str(r["name"]).lower()] = entry
                for short in r.get("shortNames") or []:
                    table[str(short).lower()] = entry
            self._resources[api_version] = table
        found = self._resources[api_version].get(kind.lower())
        if found is None:
            raise StepFailed(f"the API server has no kind {kind} in {api_version}", "check the manifest's apiVersion and kind")
        return found

    def _path(self, api_version: str, kind: str, namespace: str, name: str = "") -> str:
        plural, namespaced = self._resource(api_version, kind)
        base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        ns = f"/namespaces/{quote(namespace)}" if namespaced else ""
        return f"{base}{ns}/{plural}" + (f"/{quote(name)}" if name else "")

    def apply(self, yaml_text: str, namespace: str) -> list[str]:
        """Server-side apply of every document (field manager `devloop`, conflicts forced: devloop's
        manifests are the source of truth in dev). Lines like kubectl's: `deployment.apps/x configured`."""
        import yaml

        lines = []
        for doc in yaml.safe_load_all(yaml_text):
            if not isinstance(doc, dict) or not doc.get("kind"):
                continue
            api_version, kind = str(doc.get("apiVersion", "v1")), str(doc["kind"])
            name = str((doc.get("metadata") or {}).get("name", ""))
            ns = str((doc.get("metadata") or {}).get("namespace") or namespace)
            path = self._path(api_version, kind, ns, name)
            group = api_version.split("/")[0] if "/" in api_version else ""
            label = f"{kind.lower()}{'.' + group if group else ''}/{name}"
            try:
                before = self._get_path(path)
                if before is not None:
                    self._take_over(path, before)
                after = self.request(
                    "PATCH",
                    path,
                    query={"fieldManager": FIELD_MANAGER, "force": "true"},
                    body=doc,
                    content_type="application/apply-patch+yaml",
                    timeout=60.0,
                )
            except ApiError as e:
                raise StepFailed(f"apply {label} failed: {e.message}", "fix the manifest; devloop applies again on the next save") from e
            # generation moves only with the spec (status updates move resourceVersion all the time)
            key = "generation" if "generation" in after.get("metadata", {}) else "resourceVersion"
            old = (before or {}).get("metadata", {}).get(key)
            new = after.get("metadata", {}).get(key)
            lines.append(f"{label} {'created' if before is None else 'unchanged' if old == new else 'configured'}")
        return lines

    def _take_over(self, path: str, obj: Mapping[str, Any]) -> None:
        """An object last applied with client-side `kubectl apply` (an earlier devloop, or you):
        hand its fields to devloop's server-side apply first, as `kubectl apply --server-side` does
        (client-go's csaupgrade), so that a field later removed from the manifest is removed from the
        object too instead of staying owned by the old applier."""
        ops = upgrade_managed_fields(obj)
        if ops is None:
            return
        with contextlib.suppress(ApiError):  # changed meanwhile (the test op failed): the forced apply still wins
            self.request("PATCH", path, body=ops, content_type="application/json-patch+json")

    def _get_path(self, path: str) -> dict[str, Any] | None:
        try:
            return dict(self.request("GET", path))
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def get(self, resource: str, name: str, namespace: str) -> dict[str, Any] | None:
        api_version = {"deployment": "apps/v1", "statefulset": "apps/v1", "daemonset": "apps/v1"}.get(resource.lower(), "v1")
        try:
            return self._get_path(self._path(api_version, resource, namespace, name))
        except ApiError as e:
            raise StepFailed(f"get {resource}/{name}: {e.message}", "") from e

    def pods(self, namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        out = self.request("GET", f"/api/v1/namespaces/{quote(namespace)}/pods", query={"labelSelector": selector_arg(labels)})
        return list(out.get("items") or [])

    def _containers(self, pod: str, namespace: str) -> list[str]:
        p = self._get_path(f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(pod)}") or {}
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
                    resp = self.request("GET", f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(pod)}/log", query=query, stream=True)
                except ApiError:
                    continue  # e.g. no previous container, or an init container that never ran
                lines += resp.data.decode(errors="replace").splitlines()
        except (ApiError, ClusterUnavailable):
            return []
        return lines

    # -- watches and streams -------------------------------------------------------------------

    def watch(
        self,
        path: str,
        query: Mapping[str, str],
        on_event: Callable[[str, dict[str, Any]], None],
        name: str = "watch",
        on_end: Callable[[], None] | None = None,
    ) -> Thread:
        """List, then watch from that list's resourceVersion, for as long as it is not stopped:
        `on_event(type, object)` for every object listed (type "LISTED") and every change. A watch
        that expires is listed again. When the API server stops answering, `on_end` (if given) is
        called and the thread ends (the caller decides when to watch again); without `on_end` the
        thread retries every second."""
        holder: dict[str, Any] = {}

        def close() -> None:
            resp = holder.get("resp")
            if resp is not None:
                _close(resp)

        def run(stopped: threading.Event) -> None:
            version = ""
            while not stopped.is_set():
                try:
                    if not version:
                        listing = self.request("GET", path, query=dict(query))
                        version = str(listing.get("metadata", {}).get("resourceVersion", ""))
                        for item in listing.get("items") or []:
                            on_event("LISTED", item)
                    q = {**query, "watch": "1", "resourceVersion": version, "allowWatchBookmarks": "true"}
                    q["timeoutSeconds"] = str(WATCH_SECONDS)
                    resp = self.request("GET", path, query=q, stream=True, timeout=(10.0, WATCH_SECONDS + 30.0))
                    holder["resp"] = resp
                    if stopped.is_set():
                        return
                    for event in _json_lines(resp):
                        kind, obj = str(event.get("type", "")), event.get("object") or {}
                        if kind == "ERROR":
                            version = ""  # 410 Gone: too old; list again
                            break
                        version = str(obj.get("metadata", {}).get("resourceVersion", version))
                        if kind != "BOOKMARK":
                            on_event(kind, obj)
                except (ClusterUnavailable, ApiError, OSError, ValueError) as e:
                    if stopped.is_set():
                        return
                    if isinstance(e, ApiError) and e.status == 410:
                        version = ""
                        continue
                    if on_end is not None:
                        on_end()
                        return
                    stopped.wait(RECONNECT)
                except Exception:  # urllib3's protocol errors when the connection drops mid-stream
                    if stopped.is_set():
                        return
                    if on_end is not None:
                        on_end()
                        return
                    stopped.wait(RECONNECT)

        return Thread(run, name=name, on_stop=close)

    def watch_pods(self, namespace: str, labels: Mapping[str, str], on_event: Callable[[PodEvent], None]) -> Thread:
        """A typed event per pod change; the thread ends when the API server stops answering (as the
        kubectl watch it replaces did: the session notices and watches again)."""

        def event(kind: str, pod: dict[str, Any]) -> None:
            e = PodEvent.of(pod, deleted=kind == "DELETED")
            if e is not None:
                on_event(e)

        return self.watch(
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
            feed = ChangeFeed(self, namespace)
            with self._lock:
                self._feeds.setdefault(namespace, feed)
                feed = self._feeds[namespace]
        return feed

    def stream_logs(self, pod: str, namespace: str, on_line: Callable[[str], None], since: str = "") -> Thread:
        """Follow every container of the pod; the thread ends when the pod's log ends."""
        holder: list[Any] = []

        def close() -> None:
            for resp in holder:
                _close(resp)

        def follow(container: str, stopped: threading.Event) -> None:
            query = {"container": container, "follow": "true"}
            if since:
                query["sinceSeconds"] = str(_seconds(since))
            else:
                query["tailLines"] = "20"
            try:
                resp = self.request(
                    "GET", f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(pod)}/log", query=query, stream=True, timeout=(10.0, None)
                )
            except (ApiError, ClusterUnavailable):
                return
            holder.append(resp)
            if stopped.is_set():
                return
            try:
                for raw in _lines(resp):
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

        return Thread(run, name=f"logs-{pod}", on_stop=close)

    # -- exec and port-forward over websockets ------------------------------------------------

    def _websocket(self, path: str) -> tuple[Any, str, dict[str, str]]:
        """(configuration, URL, headers with the credentials) for a websocket request. The client's
        own `stream()` helpers swap the shared ApiClient's `call_api` while they connect, which
        breaks requests made meanwhile on other threads; the websocket calls are made directly."""
        api = self.client()
        _, url, headers, _, _ = api.param_serialize("GET", path, header_params={}, auth_settings=["BearerToken"])
        return api.configuration, url, headers

    def exec_stream(self, pod: str, namespace: str, argv: list[str], container: str = "") -> Any:
        """A running exec (the client's WSClient: write_stdin, readline_stdout, close) with stdin open."""
        from kubernetes.stream import ws_client

        query: list[tuple[str, Any]] = [("command", list(argv)), ("stdin", "true"), ("stdout", "true"), ("stderr", "true")]
        query.append(("tty", "false"))
        if container:
            query.append(("container", container))
        cfg, url, headers = self._websocket(f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(pod)}/exec")
        try:
            return ws_client.WSClient(cfg, ws_client.get_websocket_url(url, query), headers, capture_all=True)  # type: ignore[no-untyped-call]
        except Exception as e:
            raise StepFailed(f"exec in {pod} failed: {_first_line(e)}", "") from e

    def connect(self, namespace: str, pod: str, port: int, timeout: float = 5.0) -> socket.socket:
        """A stream socket to the pod's port through the API server's port-forward (one websocket)."""
        from kubernetes.stream import ws_client

        cfg, url, headers = self._websocket(f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(pod)}/portforward")
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
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


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
    ssa = next((f for f in fields if f.get("manager") == FIELD_MANAGER and f.get("operation") == "Apply"), None)
    merged: dict[str, Any] = (
        dict(ssa)
        if ssa
        else {
            "manager": FIELD_MANAGER,
            "operation": "Apply",
            "apiVersion": csa[0].get("apiVersion"),
            "fieldsType": "FieldsV1",
            "fieldsV1": {},
            "time": csa[0].get("time"),
        }
    )
    for f in csa:
        merged["fieldsV1"] = _union(merged.get("fieldsV1") or {}, f.get("fieldsV1") or {})
    kept = [f for f in fields if f not in csa and f is not ssa]
    return [
        {"op": "test", "path": "/metadata/resourceVersion", "value": meta.get("resourceVersion")},
        {"op": "replace", "path": "/metadata/managedFields", "value": [*kept, merged]},
    ]


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def _status_message(data: bytes) -> str:
    try:
        body = json.loads(data)
    except ValueError:
        return data.decode(errors="replace").strip()[:200]
    return str(body.get("message", "")) if isinstance(body, dict) else ""


def _close(resp: Any) -> None:
    with contextlib.suppress(Exception):
        resp.shutdown()  # urllib3 2: unblocks a read in another thread
    with contextlib.suppress(Exception):
        resp.release_conn()
        resp.close()


def _lines(resp: Any) -> Iterator[bytes]:
    buf = b""
    for chunk in resp.stream(65536, decode_content=True):
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield line
    if buf:
        yield buf


def _json_lines(resp: Any) -> Iterator[dict[str, Any]]:
    for line in _lines(resp):
        if line.strip():
            data = json.loads(line)
            if isinstance(data, dict):
                yield data


def _seconds(since: str) -> int:
    """kubectl's --since durations as the API's sinceSeconds ("40s", "2m", "1h")."""
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        return max(1, int(float(since[:-1]) * units[since[-1]])) if since[-1] in units else max(1, int(since))
    except (ValueError, IndexError):
        return 60
