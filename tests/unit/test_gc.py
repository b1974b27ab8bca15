"""devloop.gc: the pure keep plan, and the registry and node collectors against scripted fakes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devloop.gc import SWEEP, GCError, GCReport, Manifest, NodeGC, RegistryGC, collect, keep_plan, node_repositories, plan_digests
from devloop.timefmt import parse_time


# -- keep_plan ---------------------------------------------------------------------------------------
def test_keep_plan_deletes_all_but_the_newest_oldest_first() -> None:
    tags = [("dl-a", 1.0), ("dl-b", 2.0), ("dl-c", 3.0), ("dl-d", 4.0), ("dl-e", 5.0)]
    assert keep_plan(tags, 3, set()) == ["dl-a", "dl-b"]


def test_keep_plan_never_touches_other_tags_and_keeps_the_used() -> None:
    tags = [("latest", 0.0), ("v1", 0.5), ("dl-a", 1.0), ("dl-b", 2.0), ("dl-c", 3.0), ("dl-d", 4.0)]
    assert keep_plan(tags, 1, {"localhost:5001/app:dl-a"}) == ["dl-b", "dl-c"]
    assert keep_plan(tags, 0, set()) == ["dl-a", "dl-b", "dl-c", "dl-d"]


def test_keep_plan_fewer_than_keep_deletes_nothing() -> None:
    assert keep_plan([("dl-a", 1.0), ("dl-b", 2.0)], 3, set()) == []


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])  # the properties hold at any speed: no time limit
@given(
    st.dictionaries(st.from_regex(r"(dl-)?[a-f0-9]{1,4}", fullmatch=True), st.floats(0, 1e9), max_size=20),
    st.integers(0, 6),
    st.sets(st.from_regex(r"dl-[a-f0-9]{1,4}", fullmatch=True), max_size=4),
)
def test_keep_plan_properties(tags: dict[str, float], keep: int, in_use: set[str]) -> None:
    doomed = keep_plan(list(tags.items()), keep, in_use)
    ours = [t for t in tags if t.startswith("dl-")]
    assert all(t.startswith("dl-") and t not in in_use for t in doomed)
    assert len(set(doomed)) == len(doomed)
    assert len(ours) - len(doomed) >= min(keep, len(ours))  # at least `keep` survive
    if doomed:  # every survivor not in use is at least as new as every doomed one
        survivors = [t for t in ours if t not in doomed and t not in in_use]
        assert all((tags[s], s) > (tags[d], d) for s in survivors for d in doomed)
        # and nothing more than needed is deleted
        assert len(ours) - len(doomed) - len([t for t in in_use if t in tags and t in ours]) <= max(keep, 0) + len(in_use)


def test_plan_digests_spares_a_digest_a_kept_tag_shares() -> None:
    digests = {"dl-a": "sha256:1", "dl-b": "sha256:2", "dl-c": "sha256:2", "latest": "sha256:1", "dl-d": "sha256:3"}
    assert plan_digests(digests, ["dl-a", "dl-b", "dl-d"]) == {"sha256:3": ["dl-d"]}
    assert plan_digests(digests, ["dl-b", "dl-c"]) == {"sha256:2": ["dl-b", "dl-c"]}


def test_parse_time_nanoseconds_and_unknown() -> None:
    assert parse_time("2024-01-01T00:00:01.123456789Z") - parse_time("2024-01-01T00:00:00Z") == pytest.approx(1.123456)
    assert parse_time(None) == parse_time("garbage") == 0.0


def test_node_repositories() -> None:
    assert node_repositories("app", "localhost:5001") == ["docker.io/library/app", "localhost:5001/app"]
    assert node_repositories("team/app", None) == ["docker.io/team/app"]


# -- registry ----------------------------------------------------------------------------------------
@dataclass
class FakeRegistry:
    manifests: dict[str, Manifest]
    deleted: list[str] = field(default_factory=list)
    refuse: bool = False

    def tags(self, name: str) -> list[str]:
        assert name == "app"
        return list(self.manifests)

    def manifest(self, name: str, reference: str) -> Manifest | None:
        return self.manifests.get(reference)

    def delete(self, name: str, digest: str) -> None:
        if self.refuse:
            raise GCError("the local registry does not allow deletes", "start it with REGISTRY_STORAGE_DELETE_ENABLED=true")
        self.deleted.append(digest)
        self.manifests = {t: m for t, m in self.manifests.items() if m.digest != digest}


@dataclass
class FakeExec:
    """Answers argv (per container) from a script; records every call."""

    answers: dict[tuple[str, ...], tuple[int, str]]
    calls: list[tuple[str, list[str]]] = field(default_factory=list)

    def __call__(self, container: str, argv: list[str]) -> tuple[int, str]:
        self.calls.append((container, argv))
        return self.answers.get((container, *argv), (127, f"exec: {argv[0]}: no such file or directory"))


def _registry() -> FakeRegistry:
    base = {"sha256:base": 1000}
    return FakeRegistry(
        {
            "latest": Manifest("sha256:m0", 0.0, {**base, "sha256:l0": 10}),
            **{f"dl-{i}": Manifest(f"sha256:m{i}", float(i), {**base, f"sha256:l{i}": 100 * i}) for i in range(1, 7)},
        }
    )


GC = ("devloop-registry", "/bin/registry", "garbage-collect", "--delete-untagged", "/etc/docker/registry/config.yml")
SWEPT = ("devloop-registry", "sh", "-c", SWEEP)


def test_registry_gc_deletes_old_manifests_then_collects_garbage_then_sweeps() -> None:
    reg, ex = _registry(), FakeExec({GC: (0, ""), SWEPT: (0, "4\n")})
    report = GCReport()
    RegistryGC(reg, ex, "devloop-registry").collect("app", 3, {"dl-1"}, report)
    assert report.registry_tags == ["dl-2", "dl-3"]
    assert reg.deleted == ["sha256:m2", "sha256:m3"]
    assert sorted(reg.manifests) == ["dl-1", "dl-4", "dl-5", "dl-6", "latest"]
    assert report.registry_bytes == 500  # the layers only they used; the shared base stays
    # the blob links the garbage collector leaves are removed after it, never before
    assert [c[1] for c in ex.calls] == [list(GC[1:]), list(SWEPT[1:])]
    assert report.registry_links == 4 and report.errors == []


def test_registry_gc_finds_debians_binary() -> None:
    debian = ("devloop-registry", "/usr/bin/docker-registry", *GC[2:])
    ex = FakeExec({debian: (0, ""), SWEPT: (0, "0\n")})
    report = GCReport()
    RegistryGC(_registry(), ex, "devloop-registry").collect("app", 3, set(), report)
    assert [c[1][0] for c in ex.calls] == ["/bin/registry", "/usr/bin/docker-registry", "sh"]
    assert report.errors == []


def test_registry_without_a_shell_is_reported_with_a_hint() -> None:
    ex = FakeExec({GC: (0, "")})  # no sh in the image: exit 127
    report = GCReport()
    RegistryGC(_registry(), ex, "devloop-registry").collect("app", 3, set(), report)
    assert report.registry_tags == ["dl-1", "dl-2", "dl-3"]
    assert len(report.errors) == 1 and "blob links failed in devloop-registry" in report.errors[0]
    assert "build-registry.sh" in report.errors[0]
    assert report.summary().startswith("removed 3 registry tags") and report.errors[0] in report.summary()


def test_sweep_removes_only_links_whose_blob_is_gone() -> None:
    """The script's rule, read: a link goes only when its blob's data file is missing."""
    assert "-path '*/_layers/sha256/*/link'" in SWEEP
    assert '[ -e "blobs/sha256/${h%"${h#??}"}/$h/data" ] ||' in SWEEP
    assert "rm -rf" not in SWEEP.replace('rm -rf "$d"', "")  # nothing else is removed; directories only when empty (rmdir)


def test_registry_gc_nothing_to_do_runs_nothing() -> None:
    ex = FakeExec({})
    report = GCReport()
    RegistryGC(_registry(), ex, "devloop-registry").collect("app", 10, set(), report)
    assert report == GCReport() and ex.calls == []


def test_collect_reports_a_registry_without_deletes_and_goes_on_with_the_nodes() -> None:
    reg = _registry()
    reg.refuse = True
    ex = FakeExec({("node", "crictl", "images", "-o", "json"): (0, json.dumps({"images": []}))})
    report = collect("app", "localhost:5001", ["node"], 3, set(), registry=reg, exec_=ex)
    assert report.registry_tags == [] and len(reg.manifests) == 7
    assert report.errors == ["registry: the local registry does not allow deletes (start it with REGISTRY_STORAGE_DELETE_ENABLED=true)"]
    assert ("node", ["crictl", "images", "-o", "json"]) in ex.calls


# -- nodes -------------------------------------------------------------------------------------------
def _node(
    images: list[dict[str, object]], containers: list[dict[str, object]], created: dict[str, str], pods: dict[str, str] | None = None
) -> FakeExec:
    sandboxes = [{"id": sandbox, "state": state} for sandbox, state in (pods or {"p1": "SANDBOX_READY"}).items()]
    answers: dict[tuple[str, ...], tuple[int, str]] = {
        ("n1", "crictl", "images", "-o", "json"): (0, json.dumps({"images": images})),
        ("n1", "crictl", "pods", "-o", "json"): (0, json.dumps({"items": sandboxes})),
        ("n1", "crictl", "ps", "-a", "-o", "json"): (0, json.dumps({"containers": containers})),
    }
    for image_id, when in created.items():
        answers[("n1", "crictl", "inspecti", "-o", "json", image_id)] = (0, json.dumps({"info": {"imageSpec": {"created": when}}}))
        answers[("n1", "crictl", "rmi", image_id)] = (0, "Deleted")
    return FakeExec(answers)


def _img(i: str, *tags: str, size: int = 1000) -> dict[str, object]:
    return {"id": f"sha256:{i}", "repoTags": list(tags), "size": str(size)}


def test_node_gc_removes_old_dl_images_only() -> None:
    reg = "localhost:5001/app"
    images = [
        _img("a", f"{reg}:dl-a"),
        _img("b", f"{reg}:dl-b"),  # used by an exited container of a ready pod (it may restart): kept
        _img("c", f"{reg}:dl-c"),  # in use per the engine: kept
        _img("d", f"{reg}:dl-d", "docker.io/library/other:v1"),  # also someone else's name: kept
        _img("e", "docker.io/library/app:dl-e"),  # kind-loaded, old: removed
        _img("f", f"{reg}:dl-f"),
        _img("g", f"{reg}:dl-g"),
        _img("h", f"{reg}:dl-h"),
        _img("x", f"{reg}:latest"),  # not devloop's
        _img("k", "registry.k8s.io/pause:3.10"),
    ]
    containers: list[dict[str, object]] = [
        {"image": {"image": "sha256:b"}, "imageRef": "sha256:b", "state": "CONTAINER_EXITED", "podSandboxId": "p1"}
    ]
    created = {f"sha256:{c}": f"2024-01-01T00:00:0{n}Z" for n, c in enumerate("abcdefgh")}
    ex = _node(images, containers, created)
    report = GCReport()
    NodeGC(ex).collect("n1", node_repositories("app", "localhost:5001"), 3, {"dl-c"}, report)
    removed = [argv[-1] for _, argv in ex.calls if argv[:2] == ["crictl", "rmi"]]
    assert removed == ["sha256:a", "sha256:e"]
    assert report.node_images == ["n1: localhost:5001/app:dl-a", "n1: docker.io/library/app:dl-e"]
    assert report.node_bytes == 2000 and report.errors == []
    # each image's creation time asked once
    assert len([a for _, a in ex.calls if a[:2] == ["crictl", "inspecti"]]) == 8


def test_node_gc_a_failed_rmi_is_reported() -> None:
    reg = "localhost:5001/app"
    images = [_img(c, f"{reg}:dl-{c}") for c in "abcd"]
    created = {f"sha256:{c}": f"2024-01-01T00:00:0{n}Z" for n, c in enumerate("abcd")}
    ex = _node(images, [], created)
    ex.answers[("n1", "crictl", "rmi", "sha256:a")] = (1, "image is in use")
    report = GCReport()
    NodeGC(ex).collect("n1", [reg], 3, set(), report)
    assert report.node_images == [] and report.errors == ["crictl rmi sha256:a on n1: image is in use"]


def test_collect_without_a_registry_touches_only_the_nodes() -> None:
    ex = _node([_img("a", "docker.io/library/app:dl-a", size=5_000_000)], [], {"sha256:a": "2024-01-01T00:00:00Z"})
    report = collect("app", None, ["n1"], 0, set(), exec_=ex)
    assert report.node_images == ["n1: docker.io/library/app:dl-a"]
    assert report.summary() == "removed 1 node images (5.0 MB)"
    assert all(c == "n1" for c, _ in ex.calls)


def test_node_gc_passes_over_names_that_are_no_references() -> None:
    reg = "localhost:5001/app"
    images = [_img(c, f"{reg}:dl-{c}") for c in "abcd"] + [_img("z", "import-2024-01-01:")]
    created = {f"sha256:{c}": f"2024-01-01T00:00:0{n}Z" for n, c in enumerate("abcd")}
    ex = _node(images, [], created)
    report = GCReport()
    NodeGC(ex).collect("n1", [reg], 3, set(), report)
    assert report.node_images == ["n1: localhost:5001/app:dl-a"] and report.errors == []


def test_node_gc_a_leaving_pods_image_goes() -> None:
    """Images held only by containers that never start again: an exited one of a stopped sandbox (a
    deleted pod's, until the kubelet removes it) and a running one of a terminating pod. Before issue 23
    they were kept, and the node held 3 to 6 versions instead of keepVersions."""
    reg = "docker.io/library/app"  # kind-loaded names: collect without a registry
    images = [_img(c, f"{reg}:dl-{c}") for c in "abcdef"]
    created = {f"sha256:{c}": f"2024-01-01T00:00:0{n}Z" for n, c in enumerate("abcdef")}

    def ctr(image: str, sandbox: str, uid: str, state: str) -> dict[str, object]:
        return {"imageRef": f"sha256:{image}", "podSandboxId": sandbox, "labels": {"io.kubernetes.pod.uid": uid}, "state": state}

    containers = [
        ctr("a", "old", "u-a", "CONTAINER_EXITED"),  # deleted pod: sandbox stopped
        ctr("b", "term", "u-b", "CONTAINER_RUNNING"),  # terminating pod, still running its grace period
        ctr("c", "live", "u-c", "CONTAINER_RUNNING"),  # another live pod on an old version: kept
        ctr("f", "new", "u-f", "CONTAINER_RUNNING"),
    ]
    pods = {"old": "SANDBOX_NOTREADY", "term": "SANDBOX_READY", "live": "SANDBOX_READY", "new": "SANDBOX_READY"}
    ex = _node(images, containers, created, pods)
    report = collect("app", None, ["n1"], 3, {"dl-f"}, exec_=ex, leaving=lambda: {"u-b"})
    assert [argv[-1] for _, argv in ex.calls if argv[:2] == ["crictl", "rmi"]] == ["sha256:a", "sha256:b"]
    assert report.errors == []


def test_node_gc_unknown_terminating_pods_keep_every_running_image() -> None:
    reg = "docker.io/library/app"  # kind-loaded names: collect without a registry
    images = [_img(c, f"{reg}:dl-{c}") for c in "abcd"]
    created = {f"sha256:{c}": f"2024-01-01T00:00:0{n}Z" for n, c in enumerate("abcd")}
    containers: list[dict[str, object]] = [{"imageRef": "sha256:a", "podSandboxId": "p1", "labels": {"io.kubernetes.pod.uid": "u-a"}}]

    def unanswered() -> set[str]:
        raise GCError("the API server does not answer")

    ex = _node(images, containers, created)
    report = collect("app", None, ["n1"], 3, set(), exec_=ex, leaving=unanswered)
    assert report.node_images == []  # the one to delete is in use, as far as devloop can tell
    assert ("n1", ["crictl", "inspecti", "-o", "json", "sha256:a"]) in ex.calls
    assert report.errors == ["terminating pods: the API server does not answer"]
