"""What devloop reads from a Dockerfile without building it: its stages and their WORKDIR.

Pure text in, values out. `workdir` is where the build stage's `COPY . .` lands, the default of
`liveUpdate.target`: a stage starts from the WORKDIR of the stage it is built `FROM` (when that is
an earlier stage), each WORKDIR is joined onto the one before it, as Docker does.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

_INSTRUCTION = re.compile(r"^\s*([A-Za-z]+)\s*(.*)$")


@dataclass(frozen=True)
class Stage:
    base: str  # what FROM names (an image, or an earlier stage)
    name: str  # its `AS name`, lowercased ("" when unnamed)
    workdir: str | None  # None: never set (Docker's "/"), or set from a variable devloop does not expand
    unresolved: bool = False  # a WORKDIR used a variable ($HOME, ${DIR})


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: comments dropped, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        m = _INSTRUCTION.match(full)
        if m:
            out.append((m.group(1).upper(), m.group(2).strip()))
    if pending.strip():
        m = _INSTRUCTION.match(pending)
        if m:
            out.append((m.group(1).upper(), m.group(2).strip()))
    return out


def stages(text: str) -> list[Stage]:
    found: list[Stage] = []
    for op, args in instructions(text):
        if op == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            base = words[0] if words else ""
            name = words[2].lower() if len(words) >= 3 and words[1].lower() == "as" else ""
            parent = next((s for s in reversed(found) if s.name and s.name == base.lower()), None)
            found.append(Stage(base, name, parent.workdir if parent else None, parent.unresolved if parent else False))
        elif op == "WORKDIR" and found and args:
            last = found[-1]
            path = args.strip().strip("\"'")
            if "$" in path or last.unresolved:
                found[-1] = Stage(last.base, last.name, None, True)
            else:
                found[-1] = Stage(last.base, last.name, posixpath.normpath(posixpath.join(last.workdir or "/", path)))
    return found


def workdir(text: str, target: str | None = None) -> tuple[str | None, bool]:
    """The WORKDIR of the stage `docker build` ends with (the named `target`, else the last stage), and
    whether a variable hides it. (None, False): no WORKDIR at all."""
    found = stages(text)
    if target:
        found = [s for s in found if s.name == target.lower()] or found
    if not found:
        return None, False
    last = found[-1]
    return last.workdir, last.unresolved
