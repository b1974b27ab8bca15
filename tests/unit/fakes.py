"""Scripted fakes behind the adapters. A call nobody scripted fails the test at once."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from devloop.errors import CommandFailed
from devloop.proc import Result


class _Any:
    def __eq__(self, other: object) -> bool:
        return True

    def __repr__(self) -> str:
        return "ANY"


ANY: str = _Any()  # type: ignore[assignment]  # matches any single argv element


@dataclass
class Expect:
    argv: list[str]
    stdout: str = ""
    stderr: str = ""
    returncode: int = 0
    input_contains: str | None = None


class FakeBackground:
    def __init__(self, argv: Sequence[str], on_line: Callable[[str], None]) -> None:
        self.argv = list(argv)
        self.on_line = on_line
        self.stopped = False

    def alive(self) -> bool:
        return not self.stopped

    def wait(self, timeout: float | None = None) -> int | None:
        return 0 if self.stopped else None

    def stop(self) -> None:
        self.stopped = True


@dataclass
class FakeRunner:
    script: list[Expect] = field(default_factory=list)
    calls: list[list[str]] = field(default_factory=list)
    inputs: list[str | bytes | None] = field(default_factory=list)
    spawned: list[FakeBackground] = field(default_factory=list)

    def expect(self, *argv: str, stdout: str = "", stderr: str = "", returncode: int = 0, input_contains: str | None = None) -> FakeRunner:
        self.script.append(Expect(list(argv), stdout, stderr, returncode, input_contains))
        return self

    def run(
        self,
        argv: Sequence[str],
        *,
        input: str | bytes | None = None,
        timeout: float | None = None,
        check: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> Result:
        argv = list(argv)
        self.calls.append(argv)
        self.inputs.append(input)
        if not self.script:
            raise AssertionError(f"unexpected command: {argv}")
        want = self.script.pop(0)
        if want.argv != argv:
            raise AssertionError(f"expected {want.argv}, got {argv}")
        if want.input_contains is not None:
            assert input is not None and want.input_contains in (input if isinstance(input, str) else input.decode())
        result = Result(tuple(argv), want.returncode, want.stdout, want.stderr)
        if check and want.returncode != 0:
            raise CommandFailed(argv, want.returncode, want.stderr)
        return result

    def spawn(self, argv: Sequence[str], *, on_line: Callable[[str], None], env: Mapping[str, str] | None = None) -> FakeBackground:
        bg = FakeBackground(argv, on_line)
        self.spawned.append(bg)
        return bg

    def done(self) -> None:
        assert not self.script, f"expected commands never ran: {[e.argv for e in self.script]}"


@dataclass
class FakeImages:
    """Stands in for the docker SDK adapter."""

    present: set[str] = field(default_factory=set)
    on_nodes: dict[str, set[str]] = field(default_factory=dict)
    builds: list[str] = field(default_factory=list)
    saves: list[str] = field(default_factory=list)
    fail_build: Exception | None = None

    def ping(self) -> str:
        return "fake"

    def exists(self, ref: str) -> bool:
        return ref in self.present

    def build(self, context: Path, dockerfile: str, tag: str, build_args: Mapping[str, str], on_line: Callable[[str], None] = print) -> str:
        if self.fail_build is not None:
            raise self.fail_build
        self.builds.append(tag)
        self.present.add(tag)
        return "sha256:fake"

    def save(self, ref: str, dest: Path) -> int:
        self.saves.append(ref)
        dest.write_bytes(b"tar")
        return 3

    def prune(self, repositories: list[str], keep: int = 3) -> list[str]:
        return []

    def node_has(self, node: str, ref: str) -> bool:
        return ref in self.on_nodes.get(node, set())
