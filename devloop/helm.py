"""The helm adapter: `helm template`, and nothing else of helm's. devloop applies what it renders
itself (so a chart is deployed as manifest files are: devloop's image put in, rolled out, rolled
back); it never runs `helm install`, never talks to a cluster through helm and never fetches a
chart: a dependency missing from the chart's `charts/` is an error naming it, before helm runs.

Every failure is a usage error (exit 2) naming the chart, or, for helm's own errors, helm's message
as it gave it (a template error names the template's file and line).
"""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

import yaml

from devloop.errors import CommandFailed, ConfigError
from devloop.model import ChartRequest
from devloop.proc import DEFAULT, Runner

TIMEOUT = 120.0  # seconds for one render


def argv(req: ChartRequest) -> list[str]:
    """`helm template`: the chart's test hooks left out (devloop applies what it renders)."""
    args = ["helm", "template", req.release, str(req.chart), "--namespace", req.namespace, "--skip-tests"]
    for f in req.values_files:
        args += ["--values", str(f)]
    for key, value in req.values:
        args += ["--set-json", f"{key}={value}"]
    return args


class Helm:
    def __init__(self, runner: Runner = DEFAULT) -> None:
        self.runner = runner

    def version(self) -> str:
        """`helm version --short` (e.g. v3.19.0), for `devloop doctor`."""
        return self.runner.run(["helm", "version", "--short"], timeout=30).stdout.strip()

    def render(self, req: ChartRequest) -> str:
        """The chart's objects as `helm template` renders them with these values (YAML text)."""
        if not (req.chart / "Chart.yaml").is_file():
            raise ConfigError(
                f"{req.chart}: no chart there (no Chart.yaml)",
                "point deploy.helm.chart at the chart's directory (the one holding Chart.yaml)",
            )
        for f in req.values_files:
            if not f.is_file():
                raise ConfigError(f"{f}: values file not found (chart {req.chart})", "create it, or remove it from deploy.helm.valuesFiles")
        missing = missing_dependencies(req.chart)
        if missing:
            raise ConfigError(
                f"{req.chart}: the chart's dependencies are missing from its charts/ directory: {', '.join(missing)}",
                f"devloop never fetches charts: run `helm dependency build {req.chart}` where the chart repositories are "
                "reachable (or copy the charts into charts/)",
            )
        try:
            return self.runner.run(argv(req), timeout=TIMEOUT).stdout
        except CommandFailed as e:
            raise ConfigError(
                f"helm template {req.chart} failed: {helm_error(e.stderr)}",
                f"fix the chart or its values; `helm template {req.release} {req.chart}` shows the same",
            ) from None


def helm_error(stderr: str) -> str:
    """helm's error line (`Error: template: web/templates/deployment.yaml:7:22: …`) without `Error: `;
    warnings printed before it are skipped."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("Error:"):
            return line.removeprefix("Error:").strip()
    return lines[-1] if lines else "no output"


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None  # helm says what is wrong with it


def _declared(chart: Path) -> list[str]:
    """The dependencies the chart declares (Chart.yaml; requirements.yaml for apiVersion v1 charts)."""
    names: list[str] = []
    for file in ("Chart.yaml", "requirements.yaml"):
        doc = _read_yaml(chart / file)
        deps = doc.get("dependencies") if isinstance(doc, dict) else None
        for d in deps if isinstance(deps, list) else []:
            if isinstance(d, dict) and isinstance(d.get("name"), str):
                names.append(d["name"])
    return names


def _archived_name(archive: Path) -> str | None:
    """The name in a packaged chart's Chart.yaml (`<dir>/Chart.yaml` inside the .tgz)."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                if member.isfile() and member.name.count("/") == 1 and member.name.endswith("/Chart.yaml"):
                    f = tar.extractfile(member)
                    doc = yaml.safe_load(f.read(1 << 20)) if f is not None else None
                    return str(doc["name"]) if isinstance(doc, dict) and "name" in doc else None
    except (OSError, tarfile.TarError, yaml.YAMLError, UnicodeDecodeError):
        return None
    return None


def _present(chart: Path) -> set[str]:
    """The names of the charts in `charts/` (directories and packaged .tgz), as their Chart.yaml says."""
    found: set[str] = set()
    sub = chart / "charts"
    if not sub.is_dir():
        return found
    for entry in sub.iterdir():
        name: str | None = None
        if entry.is_dir() and (entry / "Chart.yaml").is_file():
            doc = _read_yaml(entry / "Chart.yaml")
            name = str(doc["name"]) if isinstance(doc, dict) and "name" in doc else entry.name
        elif entry.is_file() and entry.name.endswith((".tgz", ".tar.gz")):
            name = _archived_name(entry)
        if name:
            found.add(name)
    return found


def missing_dependencies(chart: Path) -> list[str]:
    """The declared dependencies with no chart of that name in `charts/` (helm would refuse to render)."""
    declared = _declared(chart)
    if not declared:
        return []
    present = _present(chart)
    return sorted({n for n in declared if n not in present})
