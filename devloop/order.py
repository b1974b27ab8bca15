"""The start order of services (`dependsOn`): pure, no I/O.

A service is rolled out once every service it depends on is ready (a Job's: it completed). The
configuration is checked here: a name nobody declares and a cycle are configuration errors that name
them. During a cycle, `blockers` says which dependencies keep a service from rolling out, and
`followers` which services blocked by a dependency must run again once that dependency changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence


def unknown(depends: Mapping[str, Sequence[str]]) -> list[tuple[str, str]]:
    """(service, the name it depends on) for every name that is no service."""
    return [(s, d) for s, deps in depends.items() for d in deps if d not in depends]


def cycle(depends: Mapping[str, Sequence[str]]) -> list[str] | None:
    """A dependency cycle, as the path that closes it (`a, b, a`), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(s: str) -> list[str] | None:
        state[s] = 1
        path.append(s)
        for d in depends.get(s, ()):
            if d not in depends:
                continue
            if state.get(d) == 1:
                return [*path[path.index(d) :], d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        path.pop()
        state[s] = 2
        return None

    for s in depends:
        if s not in state:
            found = visit(s)
            if found:
                return found
    return None


def problem(depends: Mapping[str, Sequence[str]]) -> str | None:
    """What is wrong with these dependencies (one line), or None."""
    for s, deps in depends.items():
        if s in deps:
            return f"service {s!r} depends on itself"
    missing = unknown(depends)
    if missing:
        s, d = missing[0]
        return f"service {s!r} depends on {d!r}, which is no service (declared: {', '.join(depends)})"
    found = cycle(depends)
    if found:
        return "dependsOn forms a cycle: " + " → ".join(found)
    return None


def start_order(depends: Mapping[str, Sequence[str]]) -> list[str]:
    """Every service after the services it depends on (stable: the declared order otherwise)."""
    done: list[str] = []
    left = list(depends)
    while left:
        ready = [s for s in left if all(d in done or d not in depends for d in depends[s])]
        if not ready:  # a cycle: refused by the configuration's check; keep the rest in order
            return done + left
        done += ready
        left = [s for s in left if s not in ready]
    return done


def blockers(service: str, depends: Mapping[str, Sequence[str]], failed: Iterable[str]) -> list[str]:
    """The dependencies of `service` that failed (or are blocked themselves)."""
    bad = set(failed)
    return [d for d in depends.get(service, ()) if d in bad]


def followers(changed: Iterable[str], blocked: Mapping[str, str], depends: Mapping[str, Sequence[str]]) -> list[str]:
    """Services held back by a dependency (`blocked`: service → the dependency it waited for) that
    must run again because that dependency runs now."""
    now = set(changed)
    out: list[str] = []
    grew = True
    while grew:
        grew = False
        for s, by in blocked.items():
            if s not in now and s not in out and s in depends and (by in now or by in out):
                out.append(s)
                grew = True
    return out
