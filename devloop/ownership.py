"""Who owns which field of an applied object, and what devloop may take.

Every apply is server-side apply with field manager `devloop`. On the cluster devloop owns (the
local kind cluster) its manifests are the source of truth: conflicts are forced, as ever. On a
target it does not own, another field manager's field (a colleague's `kubectl edit`, a GitOps
controller, an autoscaler) is theirs: devloop first asks the API server, with a dry-run apply of
every object and no force, which fields would conflict; any conflict stops the apply before anything
changes (`FieldConflicts`, exit 2, one line per field and its manager), unless `--force-conflicts`
says to take them (then devloop says which it took from whom).

A workload a HorizontalPodAutoscaler scales keeps its replicas, on every target: devloop does not
send `spec.replicas` for it (and says so once). When devloop was the field's only manager, no longer
sending it would make the API server remove it (the Deployment falls back to 1 replica), so the
field is first handed over, as Kubernetes documents it ("Transferring ownership"): a manager of its
own (`devloop-handover-to-hpa`) applies the live value; a conflict there means the autoscaler holds
it already.

The functions are pure; `Applier` runs them against the `Cluster` port.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from devloop.errors import ConfigError

if TYPE_CHECKING:  # ports.py names Conflict: the Protocol is for annotations only
    from devloop.output import Output
    from devloop.ports import Cluster

FIELD_MANAGER = "devloop"
HANDOVER_MANAGER = "devloop-handover-to-hpa"  # holds spec.replicas between devloop and an autoscaler
SCALED_KINDS = ("Deployment", "StatefulSet", "ReplicaSet")  # what an autoscaler's scaleTargetRef names
_MANAGER = re.compile(r'conflict with "((?:[^"\\]|\\.)*)"(.*)$')


@dataclass(frozen=True)
class Conflict:
    """A field devloop's apply would change that another field manager owns."""

    obj: str  # deployment.apps/web-app
    field: str  # .spec.replicas
    manager: str  # kubectl-edit
    how: str = ""  # what the API server adds: `with subresource "scale" using apps/v1 at 2026-…`

    def line(self) -> str:
        return f"{self.obj}: {self.field} is owned by {self.manager!r}" + (f" ({self.how})" if self.how else "")


def conflicts_of(obj: str, causes: Iterable[Mapping[str, Any]]) -> list[Conflict]:
    """A 409 Conflict's causes (`{"type": "FieldManagerConflict", "field": ".spec.replicas",
    "message": "conflict with \\"kubectl-edit\\" using apps/v1 at …"}`) as conflicts."""
    out = []
    for c in causes:
        if c.get("type", "FieldManagerConflict") != "FieldManagerConflict":
            continue
        m = _MANAGER.match(str(c.get("message", "")))
        manager, how = (m.group(1).replace('\\"', '"'), m.group(2).strip()) if m else (str(c.get("message", "?")), "")
        out.append(Conflict(obj, str(c.get("field", "?")), manager, how))
    return out


class FieldConflicts(ConfigError):
    """Applying would take fields other field managers own, on a cluster devloop does not own: exit 2,
    nothing changed."""

    def __init__(self, conflicts: Sequence[Conflict], where: str = "the cluster") -> None:
        n = len(conflicts)
        fields = f"{n} field{'s' if n != 1 else ''}"
        names = sorted({repr(c.manager) for c in conflicts})
        owner = "another field manager" if len(names) == 1 else "other field managers"
        super().__init__(
            f"{fields} on {where} {'belongs' if n == 1 else 'belong'} to {owner} ({', '.join(names)}): devloop changed nothing",
            "those fields were changed by someone else since devloop applied them (kubectl edit/patch/scale, a controller): "
            "make the manifests say the same, or run again with --force-conflicts to take them (their managers lose them)",
        )
        self.conflicts = list(conflicts)
        self.details = [c.line() for c in conflicts]


def label_of(doc: Mapping[str, Any]) -> str:
    """kubectl's name of an object: `deployment.apps/web-app`."""
    api_version, kind = str(doc.get("apiVersion", "v1")), str(doc.get("kind", ""))
    group = api_version.split("/")[0] if "/" in api_version else ""
    name = str((doc.get("metadata") or {}).get("name", ""))
    return f"{kind.lower()}{'.' + group if group else ''}/{name}"


def namespace_of(doc: Mapping[str, Any], default: str) -> str:
    return str((doc.get("metadata") or {}).get("namespace") or default)


def autoscalers_of(docs: Sequence[Mapping[str, Any]], hpas: Sequence[Mapping[str, Any]], namespace: str) -> dict[int, str]:
    """Which documents an autoscaler scales: index → the HorizontalPodAutoscaler's name (its
    scaleTargetRef names the document's kind and name; it lives in the document's namespace, which
    is `namespace` where the document names none)."""
    targets: dict[tuple[str, str, str], str] = {}
    for h in hpas:
        ref = (h.get("spec") or {}).get("scaleTargetRef") or {}
        ns = str((h.get("metadata") or {}).get("namespace", ""))
        targets.setdefault((ns, str(ref.get("kind", "")), str(ref.get("name", ""))), str((h.get("metadata") or {}).get("name", "")))
    found = {}
    for i, d in enumerate(docs):
        name = str((d.get("metadata") or {}).get("name", ""))
        hpa = targets.get((namespace_of(d, namespace), str(d.get("kind", "")), name))
        if hpa is not None and d.get("kind") in SCALED_KINDS:
            found[i] = hpa
    return found


def without_replicas(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The document without `spec.replicas` (left to an autoscaler)."""
    spec = {k: v for k, v in (doc.get("spec") or {}).items() if k != "replicas"}
    return {**doc, "spec": spec}


def owns_replicas(live: Mapping[str, Any] | None, manager: str = FIELD_MANAGER) -> bool:
    """Whether `manager`'s apply owns the live object's spec.replicas."""
    for entry in ((live or {}).get("metadata") or {}).get("managedFields") or []:
        mine = entry.get("manager") == manager and entry.get("operation") == "Apply"
        if mine and "f:replicas" in ((entry.get("fieldsV1") or {}).get("f:spec") or {}):
            return True
    return False


def replicas_only(doc: Mapping[str, Any], live: Mapping[str, Any]) -> dict[str, Any]:
    """The handover's apply: the object's identity and its live spec.replicas, nothing else."""
    meta = doc.get("metadata") or {}
    ident = {k: meta[k] for k in ("name", "namespace") if k in meta}
    return {"apiVersion": doc.get("apiVersion"), "kind": doc.get("kind"), "metadata": ident, "spec": {"replicas": live["spec"]["replicas"]}}


class Applier:
    """How devloop applies to one target: forced on a cluster it owns; elsewhere checked first and
    refused on a conflict unless `take` (--force-conflicts). Replicas are left to autoscalers everywhere.
    One per session: each workload's "replicas left to …" is said once."""

    def __init__(self, kube: Cluster, out: Output, *, owned: bool, take: bool = False, where: str = "the cluster") -> None:
        self.kube = kube
        self.out = out
        self.owned = owned
        self.take = take
        self.where = where
        self._said: set[tuple[str, str]] = set()  # the services' deploy threads: under _said_lock
        self._said_lock = threading.Lock()

    def _scaled(self, docs: Sequence[Mapping[str, Any]], namespace: str) -> tuple[list[dict[str, Any]], dict[int, str]]:
        """The documents as applied (replicas left out where an autoscaler scales), and which an autoscaler scales."""
        kept = [dict(d) for d in docs if isinstance(d, Mapping) and d.get("kind")]
        scalable = {namespace_of(d, namespace) for d in kept if d.get("kind") in SCALED_KINDS}
        hpas = [h for ns in sorted(scalable) for h in self.kube.autoscalers(ns)]
        scaled = autoscalers_of(kept, hpas, namespace)
        return [without_replicas(d) if i in scaled else d for i, d in enumerate(kept)], scaled

    def conflicts(self, docs: Sequence[Mapping[str, Any]], namespace: str) -> list[Conflict]:
        """The fields applying these documents would take from other managers (a dry run: nothing changes)."""
        if self.owned:
            return []
        applied, _ = self._scaled(docs, namespace)
        return self.kube.conflicts(applied, namespace)

    def check(self, batches: Sequence[tuple[Sequence[Mapping[str, Any]], str]]) -> list[Conflict]:
        """Every batch's conflicts, before any is applied: raises FieldConflicts unless they may be
        taken. A field devloop's own handover holds (its autoscaler is gone) is devloop's to take back."""
        return self._refused([c for docs, ns in batches for c in self.conflicts(docs, ns)])

    def _refused(self, found: list[Conflict]) -> list[Conflict]:
        theirs = [c for c in found if c.manager != HANDOVER_MANAGER]
        if theirs and not self.take:
            raise FieldConflicts(theirs, self.where)
        return found

    def apply(self, docs: Sequence[Mapping[str, Any]], namespace: str) -> list[str]:
        """Apply (see the class): raises FieldConflicts, having changed nothing, on a refused conflict."""
        applied, scaled = self._scaled(docs, namespace)
        force = self.owned
        if not self.owned:
            taken = self._refused(self.kube.conflicts(applied, namespace))
            for c in taken:
                if c.manager == HANDOVER_MANAGER:
                    self.out.info(f"{c.obj}: no autoscaler scales it any more; devloop sets {c.field} again")
                else:
                    self.out.warn(f"--force-conflicts: took {c.field} of {c.obj} from {c.manager!r}")
            force = bool(taken)
        for i, hpa in scaled.items():
            self._leave_replicas(applied[i], hpa, namespace)
        return self.kube.apply(applied, namespace, force=force)

    def _leave_replicas(self, doc: Mapping[str, Any], hpa: str, namespace: str) -> None:
        label, ns = label_of(doc), namespace_of(doc, namespace)
        with self._said_lock:
            first = (label, hpa) not in self._said
            self._said.add((label, hpa))
        if first:
            self.out.info(f"{label}: replicas left to HorizontalPodAutoscaler {hpa} (devloop does not set spec.replicas)")
        live = self.kube.get(str(doc["kind"]).lower(), str(doc["metadata"]["name"]), ns)
        if live is None or not owns_replicas(live) or "replicas" not in (live.get("spec") or {}):
            return  # created now (the autoscaler sets it), or devloop does not hold it: nothing to hand over
        with contextlib.suppress(FieldConflicts):  # a conflict: the autoscaler holds it already, nothing to hand over
            self.kube.apply([replicas_only(doc, live)], ns, force=False, manager=HANDOVER_MANAGER)
