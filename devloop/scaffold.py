"""`devloop init`'s file: a proposal (devloop.discover) written as a short, commented devloop.yaml (v2).

Only what the defaults do not already say is written: no `name` when the image's name is the
Deployment's, no `manifests` where they are `<context>/k8s`, no cluster section when
kind-config.yaml is beside the file or the built-in kind config will do. What init could not decide
is a comment starting `# QUESTION:`, with the service entry to complete commented out under it.
An existing file is never overwritten.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from devloop.config import API_V2, CONFIG_FILE
from devloop.discover import Proposal, ProposedService, Question
from devloop.errors import ConfigError

QUESTION = "# QUESTION:"


def _q(value: str) -> str:
    """A YAML scalar that reads back as this string."""
    try:
        plain = yaml.safe_load(value) == value and value.strip() == value and not value.startswith(("*", "&", "!", "%", "@", "`"))
    except yaml.YAMLError:
        plain = False
    return value if plain and "#" not in value and ": " not in value else '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _rel(path: Path, base: Path) -> str:
    return os.path.relpath(path, base).replace(os.sep, "/")


def _service(s: ProposedService, base: Path, alternatives: tuple[str, ...] = (), *, explain: bool = False) -> list[str]:
    lines = []
    last = s.image.rsplit("/", 1)[-1]
    where = "the Deployment that runs it" if s.source == s.context / s.dockerfile else f"the Deployment in {_rel(s.source, base)}"
    if s.name != last or not s.image:
        lines.append(f"- name: {_q(s.name)}  # {where}")
        lines.append("  image:")
    else:
        lines.append(f"- image:  # the Deployment {s.name} in {_rel(s.source, base)} (also the service's name)")
    said = "  # the image the Deployment runs: devloop builds it and swaps in its own tag" if explain else ""
    lines.append(f"    name: {_q(s.image) if s.image else '???'}{said}")
    dockerfile = _rel(s.context / s.dockerfile, base)
    context = f"    context: {_q(_rel(s.context, base))}"
    others = [_rel(Path(a), base) for a in alternatives if Path(a) != s.context / s.dockerfile]
    lines.append(context + (f"  # {dockerfile}, or: {', '.join(others)}" if others else f"  # {dockerfile}"))
    if s.dockerfile != "Dockerfile":
        lines.append(f"    dockerfile: {_q(s.dockerfile)}")
    if s.note:
        lines.append(f"  # NOTE: {s.note}")
    if s.manifests:
        lines.append("  deploy:")
        lines.append(f"    manifests: [{', '.join(_q(_rel(m, base)) for m in s.manifests)}]")
    if s.forwards:
        lines.append("  portForward:")
        for f in s.forwards:
            lines += [
                f"    - service: {_q(f.service)}  # http://127.0.0.1:{f.local_port}",
                f"      port: {f.port}",
                f"      localPort: {f.local_port}",
            ]
    return lines


def _question(q: Question, base: Path) -> list[str]:
    lines = [f"{QUESTION} {q.text}"]
    if q.draft is not None:
        lines.append("# Then delete the `#` at the start of each line below (and these two lines):")
        lines += ["#  " + line for line in _service(q.draft, base, q.alternatives)]
    return lines


def render(p: Proposal, file: Path) -> str:
    """The devloop.yaml text for this proposal, its paths relative to `file`'s directory."""
    base = file.parent.resolve()
    head = [
        f"# Written by `devloop init`: {p.found}.",
        "# Every key and its default: devloop's docs/reference.md (`devloop schema` gives your editor the JSON Schema).",
        "# Live update (a save synced into the running pods, no rebuild): add `liveUpdate: {enabled: true}` to a service.",
    ]
    if p.questions:
        n = len(p.questions)
        head.append(f"# {n} question{'s start' if n != 1 else ' starts'} with `{QUESTION}` below: init did not guess, you decide.")
    head += [f"# NOTE: {n}" for n in p.notes if not any(s.note == n for s in p.services)]
    if p.not_built:
        head.append(f"# Pulled as the manifests say (no Dockerfile here builds them): {', '.join(p.not_built)}")
    body = [f"apiVersion: {API_V2}"]
    if p.kind_config is not None:
        body += ["cluster:", f"  kindConfig: {_q(_rel(p.kind_config, base))}  # the kind config found here"]
    if p.manifests:
        listed = ", ".join(_q(_rel(m, base)) for m in p.manifests)
        body.append(f"manifests: [{listed}]  # project-wide: where a service without deploy.manifests finds its Deployment")
    if p.services:
        body.append("services:")
        for n, s in enumerate(p.services):
            body += ["  " + line for line in _service(s, base, explain=n == 0)]
    else:
        body.append("services:  # none yet: answer the questions below")
    text = "\n".join(head + body) + "\n"
    if p.questions:
        text += "\n" + "\n".join(line for q in p.questions for line in _question(q, base)) + "\n"
    return text


def target_file(directory: Path, explicit: Path | None) -> Path:
    return (explicit if explicit is not None else directory / CONFIG_FILE).absolute()


def refuse_existing(file: Path) -> None:
    if file.exists():
        raise ConfigError(
            f"{file}: already exists; `devloop init` never overwrites it",
            "`devloop init --dry-run` prints what it would write; move the file away to write a new one",
        )


def write(file: Path, text: str) -> None:
    """Create `file` with `text`; never replaces a file (one created meanwhile included)."""
    refuse_existing(file)
    try:
        with file.open("x", encoding="utf-8") as f:
            f.write(text)
    except FileExistsError:
        refuse_existing(file)
        raise
    except OSError as e:
        raise ConfigError(f"{file}: cannot be written: {e.strerror or e}", "check the directory's permissions") from None
