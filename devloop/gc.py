"""Garbage collection of devloop's own old content tags (`dl-…`) outside the host: in kind's local
registry and in the kind nodes' containerd.

Every rebuild pushes one tag to the registry (or loads one image into the nodes); without this, both
grow by one image per cycle forever. After a successful rollout the engine calls `collect` (in a
background thread: it never slows a cycle and never fails one) and the newest `keep` versions of the
service stay, plus whatever is in use, and nothing devloop did not tag `dl-…` is ever touched.

Planning is pure (`keep_plan`, `plan_digests`); the outside world is reached through two small
protocols with a real adapter each:

- `RegistryAPI` (`HttpRegistry`: the Docker Registry HTTP API v2, through devloop.registry_client) and
  `Exec` (`docker_exec`: the docker SDK's exec) for the registry's own garbage collector, then SWEEP
  (what that collector leaves behind), both under the publisher's push lock.
- `Exec` again for the nodes: `crictl images`, `crictl pods`, `crictl ps -a`, `crictl inspecti`,
  `crictl rmi`; and the API server's terminating pods (`leaving_pods`), whose containers hold no image.

The registry must be started with `REGISTRY_ENV` (deletes allowed, no in-memory blob cache);
without deletes the DELETE answers 405 and the report says so.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

import docker
import docker.errors
import requests.exceptions

from devloop.errors import DevloopError
from devloop.hasher import TAG_PREFIX
from devloop.model import ImageRef
from devloop.registry_client import MANIFEST_TYPES, UNANSWERED, RegistryClient, Response, unanswered
from devloop.timefmt import parse_time

# Where the registry binary and its config live: the official `registry:2` image and
# tests/images/build-registry.sh both have /bin/registry + /etc/docker/registry/config.yml; Debian's
# docker-registry package installs /usr/bin/docker-registry (same config path).
REGISTRY_BINARIES = ("/bin/registry", "/usr/bin/docker-registry", "/usr/local/bin/registry")
REGISTRY_CONFIG = "/etc/docker/registry/config.yml"
DELETE_ENV = "REGISTRY_STORAGE_DELETE_ENABLED"
# What the registry container needs for this module (registry.py `_ensure_container`, environment=):
# deletes allowed, and no in-memory blob descriptor cache. With the cache (registry:2's default config),
# blobs the garbage collector removed stay "known" to the running registry: pushing that content again
# (a revert) is answered "layer already exists" and leaves a tag whose manifest is gone (GET -> 404).
# An empty cache type disables the cache (the registry logs "unknown cache type ..., caching disabled").
REGISTRY_ENV = {DELETE_ENV: "true", "REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR": ""}
# What `registry garbage-collect` (distribution 2.8: Debian's docker-registry, registry:2) leaves behind
# for every deleted version, measured: the repository's link to each of its blobs
# (`_layers/sha256/<digest>/link`, a directory and a file per layer and config) and the manifest's
# emptied revision directory; with the blob prefix directories that no blob uses any more, about 48 kB
# of disk per rebuild, forever. SWEEP removes them in the registry container (a shell: registry:2's
# busybox; tests/images/build-registry.sh adds Debian's busybox-static). A link goes only when its blob
# is gone from the store, so it runs after the garbage collector, under the same lock as pushes (no
# push in flight can have linked a blob it has not written yet). It prints how many links it removed.
REGISTRY_ROOT = "/var/lib/registry/docker/registry/v2"
SWEEP = f"""cd {REGISTRY_ROOT} 2>/dev/null || {{ echo 0; exit 0; }}
n=0
for link in $(find repositories -type f -path '*/_layers/sha256/*/link' 2>/dev/null); do
  d=${{link%/link}}; h=${{d##*/}}
  [ -e "blobs/sha256/${{h%"${{h#??}}"}}/$h/data" ] || {{ rm -rf "$d" && n=$((n+1)); }}
done
find repositories -depth -type d -path '*/_manifests/revisions/sha256/*' -exec rmdir {{}} \\; 2>/dev/null
find blobs/sha256 -mindepth 1 -maxdepth 1 -type d -exec rmdir {{}} \\; 2>/dev/null
echo "$n"
"""


# -- planning (pure) ---------------------------------------------------------------------------------
def tag_of(ref: str) -> str:
    """`dl-…` from `dl-…`, `app:dl-…` or `localhost:5001/app:dl-…`."""
    return ImageRef.parse(ref).tag if "/" in ref or ":" in ref else ref


def keep_plan(tags: Sequence[tuple[str, float]], keep: int, in_use: set[str]) -> list[str]:
    """The `dl-` tags to delete, oldest first: all but the newest `keep` (by time; equal times by
    name), never one in `in_use` (tags or full references), never a tag devloop did not make."""
    used = {tag_of(u) for u in in_use}
    ours = sorted(((t, ts) for t, ts in tags if t.startswith(TAG_PREFIX)), key=lambda x: (x[1], x[0]), reverse=True)
    kept = {t for t, _ in ours[: max(keep, 0)]}
    return [t for t, _ in reversed(ours) if t not in kept and t not in used]


def plan_digests(tag_digest: Mapping[str, str], doomed: Iterable[str]) -> dict[str, list[str]]:
    """Deleting a manifest deletes every tag pointing at it: only digests all of whose tags are doomed
    may go. Returns {digest: its tags}."""
    dead = set(doomed)
    by_digest: dict[str, list[str]] = {}
    for tag, digest in tag_digest.items():
        by_digest.setdefault(digest, []).append(tag)
    return {d: sorted(ts) for d, ts in by_digest.items() if all(t in dead for t in ts)}


# -- report ------------------------------------------------------------------------------------------
@dataclass
class GCReport:
    registry_tags: list[str] = field(default_factory=list)  # tags whose manifests were deleted
    node_images: list[str] = field(default_factory=list)  # "<node>: <ref>" removed from containerd
    registry_bytes: int | None = None  # estimate: blobs only the deleted manifests used (before the registry's GC)
    registry_links: int = 0  # repository links to collected blobs removed after the registry's GC (SWEEP)
    node_bytes: int | None = None  # sizes crictl reported for the removed images
    errors: list[str] = field(default_factory=list)

    @property
    def bytes_freed(self) -> int | None:
        known = [b for b in (self.registry_bytes, self.node_bytes) if b is not None]
        return sum(known) if known else None

    @property
    def removed(self) -> int:
        return len(self.registry_tags) + len(self.node_images)

    def summary(self) -> str:
        parts = []
        if self.registry_tags:
            parts.append(f"{len(self.registry_tags)} registry tags")
        if self.node_images:
            parts.append(f"{len(self.node_images)} node images")
        text = "removed " + " and ".join(parts) if parts else "nothing to remove"
        if self.bytes_freed:
            text += f" ({self.bytes_freed / 1e6:.1f} MB)"
        return "; ".join([text, *self.errors])


# -- adapters ----------------------------------------------------------------------------------------
class Exec(Protocol):
    """Run argv inside a container (a kind node, the registry): (exit code, combined output)."""

    def __call__(self, container: str, argv: list[str]) -> tuple[int, str]: ...


def docker_exec(client: docker.DockerClient) -> Exec:
    def run(container: str, argv: list[str]) -> tuple[int, str]:
        result = client.containers.get(container).exec_run(argv)
        return int(result.exit_code), bytes(result.output or b"").decode(errors="replace")

    return run


@dataclass(frozen=True)
class Manifest:
    digest: str
    created: float
    blobs: dict[str, int]  # every blob it references (configs and layers, children of an index too) -> size


class RegistryAPI(Protocol):
    def tags(self, name: str) -> list[str]: ...

    def manifest(self, name: str, reference: str) -> Manifest | None: ...

    def delete(self, name: str, digest: str) -> None:
        """Raise GCError when the registry refuses."""
        ...


class GCError(DevloopError):
    pass


class HttpRegistry:
    """The Docker Registry HTTP API v2 at `host` (`localhost:5001`), plain HTTP as kind's local registry."""

    def __init__(self, host: str, timeout: float = 10) -> None:
        self.client = RegistryClient.local(host, timeout)

    def _request(self, method: str, path: str, accept: str = "") -> Response:
        try:
            return self.client.request(method, path, {"Accept": accept} if accept else {})
        except UNANSWERED as e:
            raise GCError(f"registry {self.client.host}: {method} {path}: {unanswered(e)}") from None

    def tags(self, name: str) -> list[str]:
        status, _, body = self._request("GET", f"/v2/{name}/tags/list")
        if status == 404:
            return []
        if status != 200:
            raise GCError(f"registry: GET /v2/{name}/tags/list: HTTP {status}")
        return [str(t) for t in (json.loads(body).get("tags") or [])]

    def _json(self, name: str, kind: str, ref: str, accept: str = "") -> tuple[str, dict[str, Any]] | None:
        status, headers, body = self._request("GET", f"/v2/{name}/{kind}/{ref}", accept)
        if status == 404:
            return None
        if status != 200:
            raise GCError(f"registry: GET /v2/{name}/{kind}/{ref}: HTTP {status}")
        digest = headers.get("Docker-Content-Digest") or "sha256:" + hashlib.sha256(body).hexdigest()
        return digest, dict(json.loads(body))

    def manifest(self, name: str, reference: str) -> Manifest | None:
        """A tag's manifest digest, the blobs it references and its creation time (the config's
        `created`; for an index, its first image's)."""
        got = self._json(name, "manifests", reference, MANIFEST_TYPES)
        if got is None:
            return None
        digest, doc = got
        bodies = [doc]
        if "manifests" in doc:  # an index / manifest list: its images
            children = (self._json(name, "manifests", str(m["digest"]), MANIFEST_TYPES) for m in doc.get("manifests") or [])
            bodies = [child[1] for child in children if child is not None]
        blobs: dict[str, int] = {}
        created = 0.0
        for i, body in enumerate(bodies):
            config = body.get("config") or {}
            for b in [config, *(body.get("layers") or [])]:
                if b.get("digest"):
                    blobs[str(b["digest"])] = int(b.get("size") or 0)
            if i == 0 and config.get("digest"):
                cfg = self._json(name, "blobs", str(config["digest"]))
                created = parse_time(cfg[1].get("created")) if cfg else 0.0
        return Manifest(digest, created, blobs)

    def delete(self, name: str, digest: str) -> None:
        status, _, body = self._request("DELETE", f"/v2/{name}/manifests/{digest}")
        if status in (200, 202, 404):
            return
        if status == 405:
            raise GCError(
                "the local registry does not allow deletes",
                f"start it with {DELETE_ENV}=true (docker rm -f the registry container; devloop starts it again)",
            )
        raise GCError(f"registry: DELETE /v2/{name}/manifests/{digest}: HTTP {status} {body[:200].decode(errors='replace')}")


class RegistryGC:
    """Deletes the old `dl-` manifests of one repository, then runs the registry's garbage collector
    inside its container so the blobs go from disk too."""

    def __init__(self, api: RegistryAPI, exec_: Exec | None, container: str) -> None:
        self.api = api
        self.exec = exec_
        self.container = container

    def collect(self, name: str, keep: int, in_use: set[str], report: GCReport, guard: AbstractContextManager[Any] | None = None) -> None:
        listed = self.api.tags(name)
        manifests: dict[str, Manifest] = {}
        for tag in listed:
            m = self.api.manifest(name, tag)
            if m is not None:
                manifests[tag] = m
        doomed = keep_plan([(t, m.created) for t, m in manifests.items()], keep, in_use)
        digests = plan_digests({t: m.digest for t, m in manifests.items()}, doomed)
        if not digests:
            return
        gone = set(digests)
        kept_blobs = {b for m in manifests.values() if m.digest not in gone for b in m.blobs}
        freed: dict[str, int] = {}
        with guard if guard is not None else contextlib.nullcontext():
            for digest, tags in digests.items():
                self.api.delete(name, digest)
                report.registry_tags.extend(tags)
                m = next(m for m in manifests.values() if m.digest == digest)
                freed.update({b: s for b, s in m.blobs.items() if b not in kept_blobs})
            report.registry_bytes = (report.registry_bytes or 0) + sum(freed.values())
            self.garbage_collect(report)

    def garbage_collect(self, report: GCReport) -> None:
        """`registry garbage-collect --delete-untagged <config>` in the registry container."""
        if self.exec is None:
            return
        last = ""
        for binary in REGISTRY_BINARIES:
            code, out = self.exec(self.container, [binary, "garbage-collect", "--delete-untagged", REGISTRY_CONFIG])
            if code == 0:
                self.sweep(report)
                return
            last = out.strip().splitlines()[-1] if out.strip() else f"exit {code}"
            if code not in (126, 127) and "no such file" not in out and "not found" not in out:
                break
        report.errors.append(f"the registry's garbage-collect failed in {self.container}: {last[:300]}")

    def sweep(self, report: GCReport) -> None:
        """SWEEP in the registry container: the links and directories the garbage collector leaves."""
        if self.exec is None:
            return
        code, out = self.exec(self.container, ["sh", "-c", SWEEP])
        last = out.strip().splitlines()[-1] if out.strip() else f"exit {code}"
        if code == 0 and last.isdigit():
            report.registry_links += int(last)
            return
        hint = (
            " (the registry image has no shell: use registry:2 or rebuild it with tests/images/build-registry.sh)"
            if code in (126, 127)
            else ""
        )
        report.errors.append(f"removing the deleted versions' blob links failed in {self.container}: {last[:300]}{hint}")


@dataclass(frozen=True)
class NodeImage:
    id: str
    tags: tuple[str, ...]  # full containerd names: localhost:5001/app:dl-…, docker.io/library/app:dl-…
    size: int


class NodeGC:
    """Removes the old `dl-` images of one repository from a kind node's containerd (through crictl in
    the node, so the kubelet's CRI view stays right). Never an image a container (running or exited)
    of the node uses, never one with a tag devloop did not make."""

    def __init__(self, exec_: Exec) -> None:
        self.exec = exec_

    def _json(self, node: str, argv: list[str]) -> dict[str, Any]:
        code, out = self.exec(node, argv)
        if code != 0:
            raise GCError(f"{' '.join(argv)} on {node} failed: {out.strip()[:300]}")
        try:
            return dict(json.loads(out))
        except ValueError:
            raise GCError(f"{' '.join(argv)} on {node}: not JSON: {out[:200]}") from None

    def images(self, node: str) -> list[NodeImage]:
        doc = self._json(node, ["crictl", "images", "-o", "json"])
        return [
            NodeImage(str(i.get("id", "")), tuple(str(t) for t in i.get("repoTags") or []), int(i.get("size") or 0))
            for i in doc.get("images") or []
        ]

    def used(self, node: str, leaving: Collection[str] = ()) -> set[str]:
        """Image ids and references of the containers on the node that may run again: those of a
        ready pod sandbox whose pod (uid) is not in `leaving` (terminating, as the API server says).
        An exited container of a stopped sandbox (a deleted pod's, until the kubelet removes it) and a
        terminating pod's container never start again and need no image: a running one keeps its
        root filesystem (a snapshot of its own) when its image goes."""
        ready = {
            str(p.get("id"))
            for p in self._json(node, ["crictl", "pods", "-o", "json"]).get("items") or []
            if p.get("state") == "SANDBOX_READY"
        }
        doc = self._json(node, ["crictl", "ps", "-a", "-o", "json"])
        refs: set[str] = set()
        for c in doc.get("containers") or []:
            if str(c.get("podSandboxId")) not in ready or (c.get("labels") or {}).get(POD_UID_LABEL) in leaving:
                continue
            refs.add(str(c.get("imageRef") or ""))
            refs.add(str((c.get("image") or {}).get("image") or ""))
        refs.discard("")
        return refs

    def created(self, node: str, image_id: str) -> float:
        doc = self._json(node, ["crictl", "inspecti", "-o", "json", image_id])
        return parse_time(((doc.get("info") or {}).get("imageSpec") or {}).get("created"))

    def collect(
        self, node: str, repositories: Sequence[str], keep: int, in_use: set[str], report: GCReport, leaving: Collection[str] = ()
    ) -> None:
        repos = set(repositories)
        mine = [i for i in self.images(node) if any(_repo(t) in repos for t in i.tags)]
        if not mine:
            return
        used = self.used(node, leaving)
        busy = {i.id for i in mine if i.id in used or used.intersection(i.tags)}
        # one plan per service: a content tag is the same version whether pulled from the registry or kind-loaded
        ours = [(t, i) for i in mine for t in i.tags if _repo(t) in repos and tag_of(t).startswith(TAG_PREFIX)]
        times: dict[str, float] = {}
        for t, i in ours:
            times[tag_of(t)] = max(times.get(tag_of(t), 0.0), self.created(node, i.id))
        held = in_use | {tag_of(t) for i in mine if i.id in busy for t in i.tags}
        drop = set(keep_plan(sorted(times.items()), keep, held))
        doomed = {t for t, _ in ours if tag_of(t) in drop}  # full names
        for image in mine:
            # an image goes only when no container uses it and every name it has is one of ours and doomed
            if image.id in busy or not all(t in doomed for t in image.tags):
                continue
            code, out = self.exec(node, ["crictl", "rmi", image.id])
            if code != 0:
                report.errors.append(f"crictl rmi {image.id} on {node}: {out.strip()[:200]}")
                continue
            report.node_images.extend(f"{node}: {t}" for t in image.tags)
            report.node_bytes = (report.node_bytes or 0) + image.size


def _repo(name: str) -> str:
    """The repository of a node's image name; "" (no service's) for a name that is no reference."""
    try:
        return ImageRef.parse(name).name
    except ValueError:
        return ""


def node_repositories(name: str, registry_host: str | None) -> list[str]:
    """The names a service's images have in a node's containerd: pulled from the local registry and/or
    loaded with `kind load` (a project may have switched between the two)."""
    repos = [ImageRef.parse(name).qualified]
    if registry_host:
        repos.append(ImageRef.parse(f"{registry_host}/{name}").qualified)
    return repos


POD_UID_LABEL = "io.kubernetes.pod.uid"  # the kubelet's label on every container it creates (crictl ps)


def leaving_pods(kube: Any) -> set[str]:
    """The uids of the pods being deleted (a deletionTimestamp), in every namespace: their containers
    never start again. `kube` is a devloop.ports.Cluster (its `get_raw`)."""
    items = json.loads(kube.get_raw("/api/v1/pods")).get("items") or []
    return {str(i["metadata"]["uid"]) for i in items if (i.get("metadata") or {}).get("deletionTimestamp")}


@contextlib.contextmanager
def _errors(report: GCReport, what: str) -> Iterator[None]:
    try:
        yield
    except DevloopError as e:
        report.errors.append(f"{what}: {e.message}" + (f" ({e.hint})" if e.hint else ""))
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError, ValueError, KeyError, TypeError) as e:
        report.errors.append(f"{what}: {type(e).__name__}: {str(e)[:200]}")


def collect(
    service_image_name: str,
    registry_host: str | None,
    nodes: list[str],
    keep: int,
    in_use: set[str],
    *,
    registry_container: str = "devloop-registry",
    client: docker.DockerClient | None = None,
    guard: AbstractContextManager[Any] | None = None,
    registry: RegistryAPI | None = None,
    exec_: Exec | None = None,
    leaving: Callable[[], set[str]] | None = None,
) -> GCReport:
    """Delete the old `dl-` versions of one service from the local registry (when `registry_host`)
    and from the nodes' containerd, keeping the newest `keep` and everything in `in_use` (tags or
    references). Never raises: what went wrong is in the report's `errors`. Safe in a background
    thread; `guard` (a lock the publisher also takes) is held while the registry deletes and
    garbage-collects, since the registry's garbage collector must not run during a push. `leaving`
    says which pods (uids) are terminating: their containers hold no image (unasked: all may run)."""
    report = GCReport()
    if exec_ is None:
        try:
            exec_ = docker_exec(client if client is not None else docker.from_env())
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            report.errors.append(f"docker: {e}")
            return report
    if registry_host:
        with _errors(report, "registry"):
            api = registry if registry is not None else HttpRegistry(registry_host)
            RegistryGC(api, exec_, registry_container).collect(service_image_name, keep, in_use, report, guard)
    repos = node_repositories(service_image_name, registry_host)
    terminating: set[str] = set()
    if leaving is not None and nodes:
        with _errors(report, "terminating pods"):
            terminating = leaving()
    for node in nodes:
        with _errors(report, f"node {node}"):
            NodeGC(exec_).collect(node, repos, keep, in_use, report, terminating)
    return report
