"""One connection to a context's Kubernetes API server: the official `kubernetes` client's
connection pool (one TLS session, kept alive), built lazily from the kubeconfig and again when the
kubeconfig file changes (kind writes new certificates when a cluster is created again); plain
requests, the discovery of resource paths, and what a websocket request needs."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from devloop.errors import ClusterUnavailable, StepFailed


class ApiError(Exception):
    def __init__(self, status: int, message: str, reason: str = "", causes: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason  # the Status object's reason (NotFound, ServiceUnavailable, ...), if it has one
        self.causes = causes or []  # the Status object's details.causes (a 409 Conflict's fields and their managers)


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


class ApiConnection:
    """Requests to the API server of one context."""

    def __init__(self, context: str) -> None:
        self.context = context
        self._lock = threading.Lock()
        self._client: Any = None
        self._stamp: tuple[tuple[str, int], ...] = ()
        self._resources: dict[str, dict[str, tuple[str, bool]]] = {}  # groupVersion -> kind/singular -> (plural, namespaced)

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
            message, reason, causes = _status(data)
            raise ApiError(resp.status, message or f"HTTP {resp.status}", reason, causes)
        if stream:
            return resp.response
        return json.loads(data) if data else {}

    def get(self, path: str) -> dict[str, Any] | None:
        """The object at this path; None when there is none (404)."""
        try:
            return dict(self.request("GET", path))
        except ApiError as e:
            if e.status == 404:
                return None
            raise

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

    def path(self, api_version: str, kind: str, namespace: str, name: str = "") -> str:
        """The API path of a kind's collection in a namespace, or of one object (discovered once per group version)."""
        plural, namespaced = self._resource(api_version, kind)
        base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        ns = f"/namespaces/{quote(namespace)}" if namespaced else ""
        return f"{base}{ns}/{plural}" + (f"/{quote(name)}" if name else "")

    def websocket(self, path: str) -> tuple[Any, str, dict[str, str]]:
        """(configuration, URL, headers with the credentials) for a websocket request. The client's
        own `stream()` helpers swap the shared ApiClient's `call_api` while they connect, which
        breaks requests made meanwhile on other threads; the websocket calls are made directly."""
        api = self.client()
        _, url, headers, _, _ = api.param_serialize("GET", path, header_params={}, auth_settings=["BearerToken"])
        return api.configuration, url, headers

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


def _status(data: bytes) -> tuple[str, str, list[dict[str, Any]]]:
    """(message, reason, causes) of an error answer: the API server's Status object, else the text of
    what answered (an app behind a service proxy)."""
    try:
        body = json.loads(data)
    except ValueError:
        return data.decode(errors="replace").strip()[:200], "", []
    if not isinstance(body, dict):
        return "", "", []
    if body.get("kind") == "Status" or "message" in body:
        details = body.get("details")
        causes = [dict(c) for c in ((details or {}).get("causes") or []) if isinstance(c, dict)] if isinstance(details, dict) else []
        return str(body.get("message", "")), str(body.get("reason", "")), causes
    return data.decode(errors="replace").strip()[:200], "", []


def close_response(resp: Any) -> None:
    """End a streamed response, also from another thread than the one reading it."""
    with contextlib.suppress(Exception):
        resp.shutdown()  # urllib3 2: unblocks a read in another thread
    with contextlib.suppress(Exception):
        resp.release_conn()
        resp.close()


def response_lines(resp: Any) -> Iterator[bytes]:
    """A streamed response's lines as they arrive."""
    buf = b""
    for chunk in resp.stream(65536, decode_content=True):
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield line
    if buf:
        yield buf
