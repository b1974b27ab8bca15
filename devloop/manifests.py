"""Read the production manifests and rewrite only what devloop must: the image reference.

The files on disk are never changed. At apply time every container whose image is the one
devloop builds gets the fresh content tag and `imagePullPolicy: IfNotPresent`, so the kubelet
never tries to pull an image that only exists on the node (or in the local registry).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from devloop import live
from devloop.errors import ConfigError
from devloop.model import ImageRef

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
LONG_RUNNING = ("Deployment", "StatefulSet", "DaemonSet")  # workloads whose containers run until replaced
IMAGE_TAG_ENV = "DEVLOOP_IMAGE_TAG"


@dataclass(frozen=True)
class Manifest:
    source: str  # file it came from, for error messages
    doc: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.doc.get("kind", ""))

    @property
    def name(self) -> str:
        return str(self.doc.get("metadata", {}).get("name", ""))


def manifest_files(paths: Sequence[Path]) -> list[Path]:
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.is_file() and f.suffix in MANIFEST_SUFFIXES)
        else:
            files.append(p)
    return files


KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")


def is_kustomization(path: Path) -> bool:
    return path.is_dir() and any((path / k).is_file() for k in KUSTOMIZATION_FILES)


def _kustomize_refs(directory: Path, seen: set[Path]) -> None:
    """A kustomize directory and the local directories and files it refers to (bases, resources,
    components, patches), recursively: a change to any of them changes what it renders."""
    if directory in seen:
        return
    seen.add(directory)
    for name in KUSTOMIZATION_FILES:
        k = directory / name
        if not k.is_file():
            continue
        try:
            doc = yaml.safe_load(k.read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            return
        if not isinstance(doc, dict):
            return
        refs: list[str] = []
        for key in ("resources", "bases", "components", "patchesStrategicMerge", "crds", "configurations"):
            refs += [r for r in doc.get(key) or [] if isinstance(r, str)]
        refs += [p["path"] for p in doc.get("patches") or [] if isinstance(p, dict) and isinstance(p.get("path"), str)]
        for ref in refs:
            if "://" in ref:
                continue  # a remote base: nothing to watch here
            target = (directory / ref).resolve()
            if is_kustomization(target):
                _kustomize_refs(target, seen)
            elif target.exists() and not _inside(target, directory):
                seen.add(target)


def _inside(path: Path, directory: Path) -> bool:
    return path == directory or directory in path.parents


def inputs(paths: Sequence[Path]) -> tuple[list[Path], list[Path], list[Path]]:
    """What a manifests list reads: (plain manifest files, plain directories, kustomize inputs)."""
    files: list[Path] = []
    dirs: list[Path] = []
    kustomize: set[Path] = set()
    for p in paths:
        if is_kustomization(p):
            _kustomize_refs(p.resolve(), kustomize)
        elif p.is_dir():
            dirs.append(p)
            files += sorted(f for f in p.iterdir() if f.is_file() and f.suffix in MANIFEST_SUFFIXES)
        else:
            files.append(p)
    return files, dirs, sorted(kustomize)


def load(paths: Sequence[Path], kustomize: Callable[[str], str] | None = None) -> list[Manifest]:
    """Every object of the manifests list; a kustomize directory is rendered with `kustomize`
    (kubectl kustomize) first."""
    out: list[Manifest] = []
    for p in paths:
        if is_kustomization(p):
            if kustomize is None:
                raise ConfigError(f"{p}: a kustomize directory, and no renderer was given", "this is a bug in devloop")
            out += parse(kustomize(str(p)), str(p))
            continue
        for f in manifest_files([p]):
            try:
                text = f.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise ConfigError(f"{f}: cannot be read: {e}", "check the manifest file") from None
            out += parse(text, str(f))
    if not out:
        raise ConfigError(f"no Kubernetes manifests found in {', '.join(map(str, paths))}", "set deploy.manifests in devloop.yaml")
    return out


def parse(text: str, source: str) -> list[Manifest]:
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{source}: not valid YAML{where}: {getattr(e, 'problem', None) or e}", "fix the manifest's YAML") from None
    out = []
    for n, doc in enumerate(docs):
        if doc is None:
            continue
        if not isinstance(doc, dict) or not isinstance(doc.get("kind"), str) or not isinstance(doc.get("apiVersion"), str):
            raise ConfigError(f"{source}: document {n + 1} is not a Kubernetes object (needs apiVersion and kind)", "fix the manifest")
        meta = doc.get("metadata")
        if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
            raise ConfigError(f"{source}: document {n + 1} ({doc['kind']}) has no metadata.name", "fix the manifest")
        out.append(Manifest(source, doc))
    return out


def image_repository(ref: str) -> str:
    """`docker.io/library/web:1` → `web`; `localhost:5001/web@sha256:..` → `localhost:5001/web`; a
    string that is no image reference (a template's placeholder) stays as it is."""
    try:
        return ImageRef.parse(ref).familiar
    except ValueError:
        return ref


def _pod_specs(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    kind = doc.get("kind")
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        return
    if kind == "Pod":
        yield spec
    elif kind == "CronJob":
        pod = spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec")
        if isinstance(pod, dict):
            yield pod
    else:
        pod = spec.get("template", {}).get("spec") if isinstance(spec.get("template"), dict) else None
        if isinstance(pod, dict):
            yield pod


def _containers(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for pod in _pod_specs(doc):
        for key in ("initContainers", "containers"):
            for c in pod.get(key) or []:
                if isinstance(c, dict):
                    yield c


def rewrite(
    manifests: Sequence[Manifest],
    image_name: str,
    new_ref: str,
    command: Callable[[dict[str, Any]], list[str]] | None = None,
    *,
    pull_policy: str | None = "IfNotPresent",
    version: str | None = None,
    pull_secret: str | None = None,
) -> list[Manifest]:
    """Copies of the manifests with devloop's image swapped in. Raises when nothing uses it.

    On kind, `pull_policy` IfNotPresent (the node has the image or pulls it once); on a remote
    target None: the manifests' own policy. `version` is what DEVLOOP_IMAGE_TAG tells the app
    (default: the ref's tag). `pull_secret` is added to the pod's imagePullSecrets. With `command`
    (live update), each such container runs its original command, as `command` computes it,
    under devloop's restart loop."""
    out: list[Manifest] = []
    hits = 0
    tag = version or ImageRef.parse(new_ref).tag
    for m in manifests:
        copied = Manifest(m.source, copy.deepcopy(m.doc))
        users = containers_of(copied, image_name)
        # live update's restart loop: only in the long-running containers (a Job or an init container must end)
        looped = {id(c) for pod in _pod_specs(copied.doc) for c in pod.get("containers") or []} if copied.kind in LONG_RUNNING else set()
        for c in users:
            c["image"] = new_ref
            if pull_policy:
                c["imagePullPolicy"] = pull_policy
            # the app can tell which version it is (the sample reports it in app_info)
            env = [e for e in c.get("env") or [] if e.get("name") != IMAGE_TAG_ENV]
            c["env"] = [*env, {"name": IMAGE_TAG_ENV, "value": tag}]
            if command is not None and id(c) in looped:
                c["command"], c["args"] = live.wrap(command(c))
            hits += 1
        if users and pull_secret:
            for pod in _pod_specs(copied.doc):
                secrets = [s for s in pod.get("imagePullSecrets") or [] if isinstance(s, dict)]
                if not any(s.get("name") == pull_secret for s in secrets):
                    pod["imagePullSecrets"] = [*secrets, {"name": pull_secret}]
        out.append(copied)
    if hits == 0:
        raise _no_user(image_name)
    return out


def require_image_user(manifests: Sequence[Manifest], image_name: str) -> None:
    """Fail early when no container in the manifests runs devloop's image."""
    if not any(containers_of(m, image_name) for m in manifests):
        raise _no_user(image_name)


def _no_user(image_name: str) -> ConfigError:
    return ConfigError(
        f"no container in the manifests uses the image {image_name!r}",
        "set image.name in devloop.yaml to the image name your Deployment references",
    )


def with_rolling_update(manifests: Sequence[Manifest], deployment: str, max_surge: str, max_unavailable: str) -> list[Manifest]:
    """Copies with a dev-only rolling-update strategy on one Deployment (the files stay as they are)."""
    out = []
    for m in manifests:
        if m.kind == "Deployment" and m.name == deployment:
            doc = copy.deepcopy(m.doc)
            ints = [int(v) if v.isdigit() else v for v in (max_surge, max_unavailable)]
            doc.setdefault("spec", {})["strategy"] = {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": ints[0], "maxUnavailable": ints[1]},
            }
            m = Manifest(m.source, doc)
        out.append(m)
    return out


def containers_of(manifest: Manifest, image_name: str) -> list[dict[str, Any]]:
    """The containers (and init containers) of this object that run devloop's image."""
    want = image_repository(image_name)
    return [c for c in _containers(manifest.doc) if isinstance(c.get("image"), str) and image_repository(c["image"]) == want]


def looped_containers(manifest: Manifest, image_name: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(pod spec, container) of each long-running container that runs devloop's image: those live
    update's restart loop would wrap."""
    if manifest.kind not in LONG_RUNNING:
        return []
    want = image_repository(image_name)
    return [
        (pod, c)
        for pod in _pod_specs(manifest.doc)
        for c in pod.get("containers") or []
        if isinstance(c, dict) and isinstance(c.get("image"), str) and image_repository(c["image"]) == want
    ]


def to_yaml(manifests: Sequence[Manifest]) -> str:
    return yaml.safe_dump_all([m.doc for m in manifests], sort_keys=False)


def select(manifests: Sequence[Manifest], mine: Callable[[Manifest], bool], theirs: Callable[[Manifest], bool]) -> list[Manifest]:
    """A service's share of manifests that several services may list: the files that hold its
    workloads (`mine`), and the files that hold no other service's workload (`theirs`: shared objects).
    Another service's workload is left out even from a file that holds one of this service's."""
    holds_mine: set[str] = set()
    holds_theirs: set[str] = set()
    for m in manifests:
        if is_workload(m):
            if mine(m):
                holds_mine.add(m.source)
            elif theirs(m):
                holds_theirs.add(m.source)
    out = []
    for m in manifests:
        if is_workload(m) and not mine(m) and theirs(m):
            continue
        if m.source in holds_mine or m.source not in holds_theirs:
            out.append(m)
    return out


def is_workload(m: Manifest) -> bool:
    """An object that runs containers (a pod template or a pod's spec)."""
    return any(True for _ in _containers(m.doc))


def main_images(m: Manifest) -> list[str]:
    """The images of a workload's containers (not its init containers), as the manifest names them."""
    return [
        str(c["image"])
        for pod in _pod_specs(m.doc)
        for c in pod.get("containers") or []
        if isinstance(c, dict) and isinstance(c.get("image"), str)
    ]


def images_of(m: Manifest) -> list[str]:
    """The images of a workload's containers and init containers, as the manifest names them."""
    return [str(c["image"]) for c in _containers(m.doc) if isinstance(c.get("image"), str)]


def find(manifests: Sequence[Manifest], kind: str, name: str) -> Manifest | None:
    for m in manifests:
        if m.kind == kind and m.name == name:
            return m
    return None


def selector_of(deployment: Manifest) -> dict[str, str]:
    labels = deployment.doc.get("spec", {}).get("selector", {}).get("matchLabels") or {}
    return {str(k): str(v) for k, v in labels.items()}


def template_labels(m: Manifest) -> dict[str, str]:
    """The labels of a workload's pod template (a CronJob's: of its Job template's pods)."""
    spec = m.doc.get("spec", {})
    if m.kind == "CronJob":
        spec = spec.get("jobTemplate", {}).get("spec", {})
    labels = spec.get("template", {}).get("metadata", {}).get("labels") or {}
    return {str(k): str(v) for k, v in labels.items()}


def namespace_of(m: Manifest, default: str) -> str:
    return str(m.doc.get("metadata", {}).get("namespace") or default)
