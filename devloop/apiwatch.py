"""Watches over the API connection: list+watch of a collection on a thread of its own (relisting
when the watch expires), and a namespace's change feed, which wakes a rollout wait on the API
server's own watch events instead of a fixed poll."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from devloop.apiconn import ApiConnection, ApiError, close_response, response_lines
from devloop.errors import ClusterUnavailable

WATCH_SECONDS = 240  # a watch request ends after this long; it is opened again from where it was
RECONNECT = 1.0  # seconds between attempts while the API server does not answer a watch


class BackgroundThread:
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


def watch(
    api: ApiConnection,
    path: str,
    query: Mapping[str, str],
    on_event: Callable[[str, dict[str, Any]], None],
    name: str = "watch",
    on_end: Callable[[], None] | None = None,
) -> BackgroundThread:
    """List, then watch from that list's resourceVersion, for as long as it is not stopped:
    `on_event(type, object)` for every object listed (type "LISTED") and every change. A watch
    that expires is listed again. When the API server stops answering, `on_end` (if given) is
    called and the thread ends (the caller decides when to watch again); without `on_end` the
    thread retries every second."""
    holder: dict[str, Any] = {}

    def close() -> None:
        resp = holder.get("resp")
        if resp is not None:
            close_response(resp)

    def run(stopped: threading.Event) -> None:
        version = ""
        while not stopped.is_set():
            try:
                if not version:
                    listing = api.request("GET", path, query=dict(query))
                    version = str(listing.get("metadata", {}).get("resourceVersion", ""))
                    for item in listing.get("items") or []:
                        on_event("LISTED", item)
                q = {**query, "watch": "1", "resourceVersion": version, "allowWatchBookmarks": "true"}
                q["timeoutSeconds"] = str(WATCH_SECONDS)
                resp = api.request("GET", path, query=q, stream=True, timeout=(10.0, WATCH_SECONDS + 30.0))
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

    return BackgroundThread(run, name=name, on_stop=close)


class ChangeFeed:
    """Deployments and pods of one namespace, watched: `wait(seen, timeout)` returns as soon as the
    API server reports a change after generation `seen` (or the timeout passes)."""

    def __init__(self, api: ApiConnection, namespace: str) -> None:
        self._cond = threading.Condition()
        self.generation = 0
        self._watches = [
            watch(api, f"/apis/apps/v1/namespaces/{namespace}/deployments", {}, self._bump, name=f"feed-deploy-{namespace}"),
            watch(api, f"/api/v1/namespaces/{namespace}/pods", {}, self._bump, name=f"feed-pods-{namespace}"),
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


def _json_lines(resp: Any) -> Iterator[dict[str, Any]]:
    for line in response_lines(resp):
        if line.strip():
            data = json.loads(line)
            if isinstance(data, dict):
                yield data
