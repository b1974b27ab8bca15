"""A Helm chart as a service's manifests: what to ask `helm template` for, and its output as manifests.

Pure. The request comes from the configuration: the chart's directory, the values files and values
(`set`), the deploy target's own values on top, and devloop's image put into the values that
`imageValues` names (in the spirit of Skaffold's setValueTemplates). The helm adapter (helm.py)
runs it; the output is split into manifests named after the templates they came from.

devloop's image goes into the values as its name and a placeholder tag (`devloop`): the chart is
rendered once per change of its files, not once per image, and at apply time devloop puts the
content tag into every container that runs its image, as it does for manifest files
(manifests.rewrite). A chart whose images are plain strings needs no `imageValues`: devloop finds
its image in the rendered output by name.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from devloop import manifests as mf
from devloop.config import HelmConfig, HelmValues
from devloop.errors import ConfigError
from devloop.model import ChartRequest

PLACEHOLDER_TAG = "devloop"  # the tag the chart sees; the content tag replaces it at apply time
_SOURCE = re.compile(r"^# Source: (\S.*?)\s*$", re.M)
_SEPARATOR = re.compile(r"^---[ \t]*$", re.M)


def image_values(mapping: Mapping[str, str], image_name: str) -> list[tuple[str, str]]:
    """devloop's image, as the values `imageValues` maps: repository → the image's name, tag → the
    placeholder tag, ref → both (`name:tag`)."""
    parts = {"repository": image_name, "tag": PLACEHOLDER_TAG, "ref": f"{image_name}:{PLACEHOLDER_TAG}"}
    return [(key, json.dumps(parts[part])) for key, part in mapping.items()]


def _layers(helm: HelmConfig, target: str | None) -> list[HelmValues]:
    """The service's values, then the target's (None: the local cluster, which has none of its own)."""
    extra = helm.targets.get(target) if target is not None else None
    return [helm] if extra is None else [helm, extra]


def _json(value: Any) -> str:
    return json.dumps(value, default=str)  # YAML's dates become strings, as helm would read them


def request(helm: HelmConfig, service: str, image_name: str, namespace: str, target: str | None = None) -> ChartRequest:
    """What to render for a service on a target (None: the local kind cluster)."""
    layers = _layers(helm, target)
    files = tuple(f for v in layers for f in v.values_files)
    values = [(k, _json(v)) for layer in layers for k, v in layer.set_values.items()]
    values += image_values(helm.image_values, image_name)  # last: devloop's image wins
    return ChartRequest(helm.chart, helm.release or service, namespace, files, tuple(values))


def inputs(helm: HelmConfig, target: str | None = None) -> list[Path]:
    """What a render reads: the chart's directory (templates, values.yaml, Chart.yaml, charts/) and
    the values files used on this target; a change to any of them renders and applies again."""
    return [helm.chart, *(f for v in _layers(helm, target) for f in v.values_files)]


def parse(text: str, chart: Path) -> list[mf.Manifest]:
    """`helm template`'s output as manifests, each named after its template (`<chart>/templates/x.yaml`)."""
    out: list[mf.Manifest] = []
    for chunk in _SEPARATOR.split(text):
        found = _SOURCE.search(chunk)
        source = str(chart.joinpath(*PurePosixPath(found.group(1)).parts[1:])) if found else str(chart)
        out += mf.parse(chunk, source)
    if not out:
        raise ConfigError(
            f"{chart}: the chart rendered no Kubernetes objects", "check the chart's templates and the values that enable them"
        )
    return out
