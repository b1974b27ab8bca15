"""What `devloop init` finds in an existing repository: files in, a proposed configuration out.

Pure but for reading files: no Docker, no cluster, no kustomize binary. It finds Dockerfiles,
Kubernetes manifests (plain files, kustomizations, by reading their `resources`) and Helm charts,
matches each Dockerfile to the image a Deployment runs by name (the image's last name part, then
a part of it, then the Deployment's or container's name, against the Dockerfile's directory), and
proposes a port-forward for each Service in front of such a Deployment. What it cannot decide is
a `Question`, never a guess: two Dockerfiles for one image, a Dockerfile no manifest runs, an image
only a StatefulSet runs, a Helm chart (devloop applies plain manifests and kustomizations).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from devloop import manifests as mf
from devloop.config import CONFIG_FILE, DEFAULT_KIND_CONFIG
from devloop.errors import ConfigError

SKIPPED_DIRS = frozenset({"node_modules", "vendor", "__pycache__", "venv", "target", "dist"})  # and every hidden directory
MAX_DEPTH = 8
MAX_YAML_BYTES = 1_000_000
GENERIC_DIRS = frozenset({"src", "app", "docker", "build", "image", "images", "dockerfiles"})  # named after their parent's job
DEV_OVERLAYS = frozenset({"dev", "development", "local"})
AVOIDED_PORTS = frozenset({9090, 10350})  # devloop's own: Prometheus's forward, the dashboard
LOOKED_FOR = "Dockerfiles, Kubernetes manifests (.yaml/.yml), kustomizations and Helm charts"
_WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod", "ReplicaSet")
_NOT_OBJECTS = ("kustomize.config.k8s.io", "kind.x-k8s.io", "skaffold/")


@dataclass(frozen=True)
class Forward:
    service: str
    port: int
    local_port: int


@dataclass(frozen=True)
class ProposedService:
    name: str  # the Deployment devloop rolls out
    image: str  # the image repository it runs (as the manifest names it, without a tag)
    context: Path  # absolute: the Dockerfile's directory
    dockerfile: str  # its file name in `context`
    source: Path  # the manifest file declaring the Deployment
    manifests: tuple[Path, ...] = ()  # its own manifests; empty: the project-wide ones (or <context>/k8s)
    forwards: tuple[Forward, ...] = ()
    note: str = ""  # how the match was made, when it was not by name


@dataclass(frozen=True)
class Question:
    """Something init could not decide: said in the output and written into the file, marked."""

    text: str
    draft: ProposedService | None = None  # a service entry to complete, written commented out
    alternatives: tuple[str, ...] = ()  # for a draft: the Dockerfiles to choose from


@dataclass(frozen=True)
class Proposal:
    root: Path
    services: tuple[ProposedService, ...]
    manifests: tuple[Path, ...]  # project-wide
    questions: tuple[Question, ...]
    kind_config: Path | None  # a kind config found elsewhere than <root>/kind-config.yaml
    not_built: tuple[str, ...]  # images the manifests run that no Dockerfile here builds
    found: str  # what was found, in a few words
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Dockerfile:
    path: Path

    @property
    def context(self) -> Path:
        return self.path.parent

    def names(self, root: Path) -> set[str]:
        """What this Dockerfile could be called: its directory (and the parent of a generic one like src/), a suffix of its file name."""
        names = {self.context.name if self.context != root else root.name}
        if self.context.name in GENERIC_DIRS and self.context != root and self.context.parent != root:
            names.add(self.context.parent.name)
        file = self.path.name
        for prefix in ("Dockerfile.", "dockerfile."):
            if file.startswith(prefix):
                names.add(file[len(prefix) :])
        if file.lower().endswith(".dockerfile"):
            names.add(file[: -len(".dockerfile")])
        return {n.lower() for n in names if n}


@dataclass
class _Scan:
    dockerfiles: list[_Dockerfile] = field(default_factory=list)
    objects: list[mf.Manifest] = field(default_factory=list)
    kustomizations: list[Path] = field(default_factory=list)
    charts: list[Path] = field(default_factory=list)
    kind_configs: list[Path] = field(default_factory=list)
    other_yaml_dirs: set[Path] = field(default_factory=set)  # directories holding YAML that is no Kubernetes object


def _walk(root: Path) -> Iterator[tuple[Path, list[str]]]:
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        depth = len(here.relative_to(root).parts)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in SKIPPED_DIRS and depth < MAX_DEPTH)
        if (here / "Chart.yaml").is_file():
            dirnames[:] = []  # a Helm chart's templates are no manifests
        yield here, sorted(filenames)


_SOURCE_SUFFIXES = frozenset({"py", "pyc", "go", "js", "ts", "rs", "java", "rb", "sh", "md", "txt", "json", "yaml", "yml", "orig", "bak"})


def _is_dockerfile(name: str) -> bool:
    """Dockerfile, Dockerfile.<name>, <name>.Dockerfile; not a module named dockerfile.py."""
    low = name.lower()
    if low.startswith("dockerfile."):
        return low.partition(".")[2] not in _SOURCE_SUFFIXES
    return low == "dockerfile" or low.endswith(".dockerfile")


def _scan(root: Path) -> _Scan:
    found = _Scan()
    for here, files in _walk(root):
        if "Chart.yaml" in files:
            found.charts.append(here)
            continue
        if any(k in files for k in mf.KUSTOMIZATION_FILES):
            found.kustomizations.append(here)
        for name in files:
            path = here / name
            if _is_dockerfile(name):
                found.dockerfiles.append(_Dockerfile(path))
            elif path.suffix in (".yaml", ".yml") and name not in mf.KUSTOMIZATION_FILES and not (here == root and name == CONFIG_FILE):
                _read_yaml(path, found)
    return found


def _read_yaml(path: Path, found: _Scan) -> None:
    try:
        if path.stat().st_size > MAX_YAML_BYTES:
            return
        docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError):
        found.other_yaml_dirs.add(path.parent)
        return
    objects = []
    for doc in docs:
        if not isinstance(doc, dict):
            continue
        api, kind, meta = doc.get("apiVersion"), doc.get("kind"), doc.get("metadata")
        if kind == "Cluster" and isinstance(api, str) and api.startswith("kind.x-k8s.io"):
            found.kind_configs.append(path)
        elif (
            isinstance(api, str)
            and isinstance(kind, str)
            and isinstance(meta, dict)
            and isinstance(meta.get("name"), str)
            and not api.startswith(_NOT_OBJECTS)
        ):
            objects.append(mf.Manifest(str(path), doc))
    if objects:
        found.objects += objects
    elif docs:
        found.other_yaml_dirs.add(path.parent)


# -- kustomizations: which files each one renders ------------------------------------------------


def _kustomization(directory: Path) -> dict[str, Any]:
    for name in mf.KUSTOMIZATION_FILES:
        try:
            doc = yaml.safe_load((directory / name).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError):
            continue
        return doc if isinstance(doc, dict) else {}
    return {}


def _rendered(directory: Path, seen: set[Path] | None = None) -> tuple[set[Path], set[Path], set[Path]]:
    """(manifest files it renders, kustomizations it builds on, patch files) of one kustomization."""
    seen = seen if seen is not None else set()
    files: set[Path] = set()
    bases: set[Path] = set()
    patches: set[Path] = set()
    if directory in seen:
        return files, bases, patches
    seen.add(directory)
    doc = _kustomization(directory)
    refs = [r for key in ("resources", "bases", "components") for r in doc.get(key) or [] if isinstance(r, str) and "://" not in r]
    for ref in refs:
        target = (directory / ref).resolve()
        if mf.is_kustomization(target):
            bases.add(target)
            f, b, p = _rendered(target, seen)
            files, bases, patches = files | f, bases | b, patches | p
        elif target.is_file():
            files.add(target)
    patch_refs = [r for r in doc.get("patchesStrategicMerge") or [] if isinstance(r, str)]
    patch_refs += [p["path"] for p in doc.get("patches") or [] if isinstance(p, dict) and isinstance(p.get("path"), str)]
    patches |= {(directory / r).resolve() for r in patch_refs}
    return files, bases, patches


# -- matching images to Dockerfiles --------------------------------------------------------------


def _tokens(name: str) -> set[str]:
    return {t for t in re.split(r"[-_.]", name) if t}


def _score(image: str, users: list[tuple[mf.Manifest, str]], d: _Dockerfile, root: Path) -> tuple[int, int]:
    """How well a Dockerfile fits an image, by name: 4 the image's last name part is the Dockerfile's name;
    3 one part of it is (shop-web ~ web/); 2 the workload's or container's name is; 1 no name in common
    but the workload's manifest is inside the Dockerfile's directory (its k8s/); 0 no match. Then, to
    break a tie: how many directories the Dockerfile and the manifest share (the nearer one)."""
    names = d.names(root)
    last = image.rsplit("/", 1)[-1].lower()
    near = max(_shared(d.context, Path(w.source).parent, root) for w, _ in users)
    if last in names:
        return 4, near
    if any(n in _tokens(last) or last in _tokens(n) for n in names):
        return 3, near
    if any(w.name.lower() in names or c.lower() in names for w, c in users):
        return 2, near
    if d.context != root and any(d.context in Path(w.source).parents for w, _ in users):
        return 1, near
    return 0, 0


def _shared(a: Path, b: Path, root: Path) -> int:
    n = 0
    for x, y in zip(a.relative_to(root).parts, b.relative_to(root).parts, strict=False):
        if x != y:
            break
        n += 1
    return n


def _pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec = doc.get("spec") if isinstance(doc.get("spec"), dict) else {}
    assert isinstance(spec, dict)
    if doc.get("kind") == "Pod":
        return spec
    if doc.get("kind") == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    pod = (spec.get("template") or {}).get("spec") if isinstance(spec.get("template"), dict) else None
    return pod if isinstance(pod, dict) else {}


def _local_looking(image: str, refs: set[str]) -> bool:
    """No registry host and no tag but `latest`: an image built here rather than pulled."""
    return "/" not in image and all(":" not in r.rsplit("/", 1)[-1] or r.endswith(":latest") for r in refs)


# -- the proposal ----------------------------------------------------------------------------------


def discover(root: Path) -> Proposal:
    """Look at the tree under `root` and propose a devloop.yaml. Raises ConfigError (exit 2) when there is nothing to set up."""
    root = root.resolve()
    if not root.is_dir():
        raise ConfigError(f"{root}: not a directory", "run `devloop init` in your project's directory, or pass it: `devloop init DIR`")
    scan = _scan(root)
    found = _found(root, scan)
    if not scan.dockerfiles:
        raise ConfigError(
            f"nothing devloop could build in {root}: no Dockerfile ({found}; looked for {LOOKED_FOR}, "
            f"{MAX_DEPTH} directories deep, skipping hidden directories and {', '.join(sorted(SKIPPED_DIRS))})",
            "run `devloop init` in your project's root directory, where its Dockerfiles and manifests are; "
            "or write devloop.yaml by hand (docs/reference.md#configuration)",
        )
    units, patches, unit_notes = _units(root, scan)
    objects = [o for o in scan.objects if Path(o.source) not in patches]
    questions: list[Question] = []
    notes: list[str] = list(unit_notes)

    users: dict[str, list[tuple[mf.Manifest, str]]] = {}
    refs: dict[str, set[str]] = {}
    for o in objects:
        if o.kind in _WORKLOADS:
            pod = _pod_spec(o.doc)
            for key in ("initContainers", "containers"):
                for c in pod.get(key) or []:
                    if isinstance(c, dict) and isinstance(c.get("image"), str):
                        repo = mf.image_repository(c["image"])
                        users.setdefault(repo, []).append((o, str(c.get("name", ""))))
                        refs.setdefault(repo, set()).add(c["image"])

    claims = _match(root, scan.dockerfiles, users, refs, questions)
    matched_files = {d.path for d in claims.values()} | {Path(a) for q in questions for a in q.alternatives}
    unmatched = [d for d in scan.dockerfiles if d.path not in matched_files]
    free_images = [i for i in users if i not in claims and _local_looking(i, refs[i])]
    lone = ""
    if len(unmatched) == 1 and len(free_images) == 1 and not claims:
        claims[free_images[0]] = unmatched[0]
        lone = f"{_rel(unmatched[0].path, root)} builds {free_images[0]}: the only Dockerfile and the only image without a registry or tag"
        notes.append(lone)
        unmatched = []

    services: list[ProposedService] = []
    for image, dockerfile in claims.items():
        deployments = [w for w, _ in users[image] if w.kind == "Deployment"]
        if not deployments:
            kinds = sorted({f"{w.kind} {w.name}" for w, _ in users[image]})
            questions.append(
                Question(
                    f"image {image} ({_rel(dockerfile.path, root)}) runs in {', '.join(kinds)}: devloop rolls out Deployments only",
                    ProposedService(image, image, dockerfile.context, dockerfile.path.name, Path(users[image][0][0].source)),
                )
            )
            continue
        for w in {(w.source, w.name): w for w in deployments}.values():
            services.append(ProposedService(w.name, image, dockerfile.context, dockerfile.path.name, Path(w.source), note=lone))
    for d in unmatched:
        questions.append(
            Question(
                f"no manifest runs an image built from {_rel(d.path, root)}: name the image and the Deployment that runs it",
                ProposedService(d.context.name.lower(), "", d.context, d.path.name, d.path),
            )
        )
    for chart in scan.charts:  # a question when nothing else deploys the services; beside manifests that do, a note
        said = f"Helm chart {_rel(chart, root)}: devloop applies plain manifests and kustomizations"
        if services:
            notes.append(f"{said}; init used those")
        else:
            render = f"`helm template {_rel(chart, root)} --output-dir k8s-rendered`"
            questions.append(Question(f"{said}; render it ({render}) and list that directory under `manifests`"))
    services, chosen = _one_per_name(root, services, units)
    notes += chosen
    services = _with_forwards(services, objects)
    services, shared = _place_manifests(root, services, units)
    questions += _renames(root, {units.get(s.source, s.source) for s in services})
    not_built = tuple(sorted(r for i in users if i not in claims for r in refs[i]))
    kind_config = None
    if len(scan.kind_configs) == 1 and scan.kind_configs[0] != root / DEFAULT_KIND_CONFIG:
        kind_config = scan.kind_configs[0]
    return Proposal(root, tuple(services), shared, tuple(questions), kind_config, not_built, found, tuple(notes))


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root)) or "."
    except ValueError:
        return str(path)


def _found(root: Path, scan: _Scan) -> str:
    workloads = sum(1 for o in scan.objects if o.kind in _WORKLOADS)
    parts = [
        f"{len(scan.dockerfiles)} Dockerfile{'s' * (len(scan.dockerfiles) != 1)}",
        f"{workloads} workload{'s' * (workloads != 1)} in {len({o.source for o in scan.objects})} manifest files",
        f"{len(scan.kustomizations)} kustomization{'s' * (len(scan.kustomizations) != 1)}",
        f"{len(scan.charts)} Helm chart{'s' * (len(scan.charts) != 1)}",
    ]
    return "found " + ", ".join(parts)


def _match(
    root: Path,
    dockerfiles: list[_Dockerfile],
    users: dict[str, list[tuple[mf.Manifest, str]]],
    refs: dict[str, set[str]],
    questions: list[Question],
) -> dict[str, _Dockerfile]:
    """Each image's Dockerfile, best fits first (`_score`): a fit no better fit took is taken; two equal
    fits for one image, or for one Dockerfile, are a question. Of two images named alike for one Dockerfile
    (`emailservice`, and `registry.example/app/emailservice:v1` in released manifests), the one without
    a registry or tag is the one built here."""
    fits: dict[tuple[int, int], list[tuple[str, _Dockerfile]]] = {}
    for image, used in users.items():
        for d in dockerfiles:
            score = _score(image, used, d, root)
            if score[0] > 0:
                fits.setdefault(score, []).append((image, d))
    claims: dict[str, _Dockerfile] = {}
    done_images: set[str] = set()
    done_files: set[Path] = set()
    for score in sorted(fits, reverse=True):
        level = fits[score]
        for image in dict.fromkeys(i for i, _ in level):
            tied = [d for i, d in level if i == image and d.path not in done_files]
            if image in done_images or not tied:
                continue
            rivals = [i for i, d in level if d.path == tied[0].path and i not in done_images]
            local = [i for i in rivals if _local_looking(i, refs[i])]
            rivals = local if len(tied) == 1 and len(local) == 1 else rivals
            if image not in rivals:
                continue  # another image is the one this Dockerfile builds: it takes it in its turn
            first = users[image][0][0]
            draft = ProposedService(
                first.name if first.kind == "Deployment" else image, image, tied[0].context, tied[0].path.name, Path(first.source)
            )
            if len(tied) > 1:
                listed = ", ".join(_rel(d.path, root) for d in tied)
                text = f"{len(tied)} Dockerfiles could build image {image}: {listed}; keep the one devloop should build"
                questions.append(Question(text, draft, tuple(str(d.path) for d in tied)))
            elif len(rivals) > 1:  # two images both named like one Dockerfile: not this one's to guess
                text = f"{_rel(tied[0].path, root)} could build image {' or '.join(rivals)}; say which (or add a Dockerfile for the other)"
                questions.append(Question(text, draft, (str(tied[0].path),)))
                done_images.update(rivals)
            else:
                claims[image] = tied[0]
            done_images.add(image)
            done_files.update(d.path for d in tied)
    return claims


def _one_per_name(root: Path, services: list[ProposedService], units: dict[Path, Path]) -> tuple[list[ProposedService], list[str]]:
    """A Deployment declared in several places (a kustomize base and a plain copy): the place most services are found in."""
    count: dict[Path, int] = {}
    for s in services:
        unit = units.get(s.source, s.source)
        count[unit] = count.get(unit, 0) + 1
    out: dict[str, ProposedService] = {}
    notes = []
    for s in services:
        kept = out.get(s.name)
        if kept is None:
            out[s.name] = s
            continue
        mine, theirs = units.get(s.source, s.source), units.get(kept.source, kept.source)
        if count[mine] > count[theirs]:
            out[s.name] = s
        place = _rel(units.get(out[s.name].source, out[s.name].source), root)
        notes.append(f"Deployment {s.name} is declared in {_rel(s.source, root)} and {_rel(kept.source, root)}; init uses {place}")
    return list(out.values()), notes


def _selects(service: mf.Manifest, deployment: mf.Manifest) -> bool:
    selector = (service.doc.get("spec") or {}).get("selector")
    labels = ((deployment.doc.get("spec") or {}).get("template") or {}).get("metadata", {}).get("labels") or {}
    same_ns = service.doc["metadata"].get("namespace") == deployment.doc["metadata"].get("namespace")
    return same_ns and isinstance(selector, dict) and bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _with_forwards(services: list[ProposedService], objects: list[mf.Manifest]) -> list[ProposedService]:
    """A forward for each Service in front of a proposed Deployment, to its first port; local ports unique."""
    taken: set[int] = set(AVOIDED_PORTS)
    out = []
    for s in services:
        deployment = next(o for o in objects if o.kind == "Deployment" and o.name == s.name and o.source == str(s.source))
        forwards = []
        for svc in (o for o in objects if o.kind == "Service"):
            ports = (svc.doc.get("spec") or {}).get("ports") or []
            port = ports[0].get("port") if ports and isinstance(ports[0], dict) else None
            if not isinstance(port, int) or not _selects(svc, deployment):
                continue
            local = port if port >= 1024 else 8080
            while local in taken:
                local += 1
            taken.add(local)
            forwards.append(Forward(svc.name, port, local))
        out.append(ProposedService(**{**s.__dict__, "forwards": tuple(forwards)}))
    return out


def _units(root: Path, scan: _Scan) -> tuple[dict[Path, Path], set[Path], list[str]]:
    """Where each manifest file is applied from (the top kustomization rendering it, its directory, or the file
    itself when that directory holds other YAML), the patch files, and notes on choices made."""
    rendered: dict[Path, tuple[set[Path], set[Path], set[Path]]] = {k: _rendered(k) for k in scan.kustomizations}
    bases = {base for _, below, _ in rendered.values() for base in below}
    tops = [k for k in scan.kustomizations if k not in bases]
    patches = {p for _, _, ps in rendered.values() for p in ps}
    units: dict[Path, Path] = {}
    notes: list[str] = []
    for source in sorted({Path(o.source) for o in scan.objects}):
        owners = sorted(k for k in tops if source in rendered[k][0])
        if len(owners) > 1:
            dev = [k for k in owners if k.name in DEV_OVERLAYS]
            chosen = dev[0] if len(dev) == 1 else owners[0]
            others = ", ".join(_rel(k, root) for k in owners if k != chosen)
            note = f"{_rel(source, root)} is rendered by several kustomizations; init uses {_rel(chosen, root)} (not {others})"
            if note not in notes:
                notes.append(note)
            units[source] = chosen
        elif owners:
            units[source] = owners[0]
        elif source.parent == root or source.parent in scan.other_yaml_dirs:
            units[source] = source
        else:
            units[source] = source.parent
    return units, patches, notes


def _renames(root: Path, places: set[Path]) -> list[Question]:
    """A kustomization that renames objects or images: what init read from its files is not what it renders."""
    out = []
    for place in sorted(p for p in places if mf.is_kustomization(p)):
        chain = [place, *sorted(_rendered(place)[1])]
        said = sorted({key for k in chain for key in ("namePrefix", "nameSuffix", "images") if _kustomization(k).get(key)})
        if said:
            out.append(
                Question(
                    f"{_rel(place, root)} renames objects or images ({', '.join(said)}): init read the names before that; check each "
                    f"service's deploy.deployment and image.name against `kubectl kustomize {_rel(place, root)}`"
                )
            )
    return out


def _place_manifests(
    root: Path, services: list[ProposedService], units: dict[Path, Path]
) -> tuple[list[ProposedService], tuple[Path, ...]]:
    """The place most Deployments are found in (two at least) is the project-wide `manifests`; every
    other service lists its own (none where it is the default, <context>/k8s, and nothing is project-wide)."""
    count: dict[Path, int] = {}
    for s in services:
        unit = units.get(s.source, s.source)
        count[unit] = count.get(unit, 0) + 1
    shared = max(count, key=lambda u: count[u], default=None)
    if shared is not None and count[shared] < 2 and not (len(services) == 1 and shared != services[0].context / "k8s"):
        shared = None  # one service each: nothing is shared (one service outside its default: listed as project-wide)
    out = []
    for s in services:
        unit = units.get(s.source, s.source)
        own: tuple[Path, ...] = () if unit == shared or (shared is None and unit == s.context / "k8s") else (unit,)
        out.append(ProposedService(**{**s.__dict__, "manifests": own}))
    return out, (shared,) if shared is not None else ()
