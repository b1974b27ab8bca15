"""pyproject.toml's floors are what tests/run proves: tests/floors.txt pins each direct dependency
at exactly its floor (the unit tests run against those versions there)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _release(version: str) -> tuple[int, ...]:
    parts = [int(p) for p in version.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def test_every_dependency_is_pinned_at_its_floor_for_the_floors_run() -> None:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = dict(
        (_norm(name), version)
        for name, version in (line.split("==") for line in (REPO / "tests" / "floors.txt").read_text().splitlines() if "==" in line)
    )
    for dep in deps:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)(?:,<[0-9.]+)?", dep)
        assert m, f"{dep}: every dependency has a floor (name>=X[,<Y])"
        name, floor = _norm(m.group(1)), m.group(2)
        assert name in pins, f"{name} is not in tests/floors.txt"
        assert _release(pins[name]) == _release(floor), f"{name}: floor {floor} in pyproject.toml, {pins[name]} in tests/floors.txt"
