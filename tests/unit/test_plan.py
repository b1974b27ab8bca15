from __future__ import annotations

import pytest

from devloop.ignore import IgnoreRules, parse_dockerignore
from devloop.plan import Change, Layout, plan

CTX = "/p/sample-app"
DOCKERIGNORE = parse_dockerignore("node_modules\nnpm-debug.log\n.git\nk8s\ntest\n*.md\n# comment\n")
LAYOUT = Layout(
    context=CTX,
    rules=IgnoreRules(tuple(DOCKERIGNORE), "Dockerfile", ("*.log",)),
    manifests=(f"{CTX}/k8s",),
    config_files=("/p/devloop.yaml", "/p/kind-config.yaml"),
)


@pytest.mark.parametrize(
    ("paths", "build", "apply", "reload"),
    [
        (["server.js"], True, True, False),
        (["lib/util.js"], True, True, False),
        (["package.json"], True, True, False),
        (["Dockerfile"], True, True, False),
        (["k8s/deployment.yaml"], False, True, False),  # ignored by .dockerignore, but a manifest
        (["README.md"], False, False, False),
        (["test/server.test.js"], False, False, False),
        (["node_modules/x/index.js"], False, False, False),
        ([".git/index"], False, False, False),
        (["server.js.swp"], False, False, False),
        ([".server.js.swp"], False, False, False),
        (["server.js~"], False, False, False),
        (["4913"], False, False, False),
        (["app.log"], False, False, False),
        (["../devloop.yaml"], True, True, True),
        (["../other.txt"], False, False, False),
        (["server.js", "k8s/service.yaml"], True, True, False),
    ],
)
def test_plan_table(paths: list[str], build: bool, apply: bool, reload: bool) -> None:
    import os

    p = plan([Change(os.path.normpath(f"{CTX}/{x}")) for x in paths], LAYOUT)
    assert (p.build, p.apply, p.reload) == (build, apply, reload)
    assert p.nothing == (not (build or apply or reload))


def test_plan_names_its_trigger_files_and_reason() -> None:
    p = plan([Change(f"{CTX}/server.js"), Change(f"{CTX}/README.md")], LAYOUT)
    assert p.image_files == ("server.js",)
    assert p.trigger_files == ("server.js",)
    assert p.ignored == (f"{CTX}/README.md",)
    assert p.reason == "image source changed"


def test_deleted_source_file_rebuilds() -> None:
    assert plan([Change(f"{CTX}/old.js", deleted=True)], LAYOUT).build


def test_dockerignore_negation_is_honoured() -> None:
    rules = IgnoreRules(tuple(parse_dockerignore("*.md\n!KEEP.md\n")), "Dockerfile")
    assert rules.reaches_image("KEEP.md")
    assert not rules.reaches_image("OTHER.md")


def test_dockerfile_always_reaches_image_even_if_ignored() -> None:
    rules = IgnoreRules(("Dockerfile", "*.dockerfile"), "Dockerfile")
    assert rules.reaches_image("Dockerfile")


LIVE = Layout(
    context=CTX,
    rules=LAYOUT.rules,
    manifests=LAYOUT.manifests,
    config_files=LAYOUT.config_files,
    live_fallback=("package.json", "package-lock.json", "Dockerfile", ".dockerignore"),
)


@pytest.mark.parametrize(
    ("changes", "sync", "build"),
    [
        ([Change(f"{CTX}/server.js")], ("server.js",), False),
        ([Change(f"{CTX}/server.js"), Change(f"{CTX}/lib/a.js")], ("lib/a.js", "server.js"), False),
        ([Change(f"{CTX}/package.json")], (), True),
        ([Change(f"{CTX}/server.js"), Change(f"{CTX}/Dockerfile")], (), True),
        ([Change(f"{CTX}/old.js", deleted=True)], (), True),  # deletions rebuild
        ([Change(f"{CTX}/server.js", deleted=True), Change(f"{CTX}/server.js")], ("server.js",), False),  # delete+recreate = save
        ([Change(f"{CTX}/server.js"), Change(f"{CTX}/k8s/deployment.yaml")], (), True),
        ([Change(f"{CTX}/README.md")], (), False),
    ],
)
def test_live_update_plan(changes: list[Change], sync: tuple[str, ...], build: bool) -> None:
    p = plan(changes, LIVE)
    assert p.sync == sync and p.build is build
    if sync:
        assert p.reason == "live update" and not p.apply


def test_without_live_update_source_edits_rebuild() -> None:
    p = plan([Change(f"{CTX}/server.js")], LAYOUT)
    assert p.build and p.sync == ()


def test_a_temp_file_created_and_renamed_away_is_not_a_trigger() -> None:
    # sed -i: create sedXXXXXX, write it, rename it over server.js
    batch = [
        Change(f"{CTX}/sed5ArWQK", created=True),
        Change(f"{CTX}/sed5ArWQK"),
        Change(f"{CTX}/sed5ArWQK", deleted=True),
        Change(f"{CTX}/server.js", created=True),
    ]
    p = plan(batch, LIVE)
    assert p.trigger_files == ("server.js",)
    assert p.sync == ("server.js",)  # not a deletion: live update still applies


def test_a_deleted_existing_file_is_still_a_deletion() -> None:
    p = plan([Change(f"{CTX}/lib/a.js"), Change(f"{CTX}/lib/a.js", deleted=True)], LIVE)
    assert p.build and p.image_files == ("lib/a.js",)
