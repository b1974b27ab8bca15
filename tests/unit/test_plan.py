from __future__ import annotations

import os

import pytest

from devloop.ignore import IgnoreRules, parse_dockerignore
from devloop.plan import Change, Plan, ServiceChange, ServiceLayout, everything, plan

CTX = "/p/sample-app"
CONFIGS = ("/p/devloop.yaml", "/p/kind-config.yaml")
DOCKERIGNORE = parse_dockerignore("node_modules\nnpm-debug.log\n.git\nk8s\ntest\n*.md\n# comment\n")
LAYOUT = ServiceLayout("web", context=CTX, rules=IgnoreRules(tuple(DOCKERIGNORE), "Dockerfile", ("*.log",)), manifests=(f"{CTX}/k8s",))


def one(p: Plan) -> ServiceChange | None:
    assert len(p.services) <= 1
    return p.services[0] if p.services else None


@pytest.mark.parametrize(
    ("paths", "rebuild", "reapply", "reload"),
    [
        (["server.js"], True, False, False),
        (["lib/util.js"], True, False, False),
        (["package.json"], True, False, False),
        (["Dockerfile"], True, False, False),
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
        (["../devloop.yaml"], False, False, True),
        (["../other.txt"], False, False, False),
        (["server.js", "k8s/service.yaml"], True, True, False),
    ],
)
def test_plan_table(paths: list[str], rebuild: bool, reapply: bool, reload: bool) -> None:
    p = plan([Change(os.path.normpath(f"{CTX}/{x}")) for x in paths], [LAYOUT], CONFIGS)
    c = one(p)
    assert (c.rebuild if c else False, c.reapply if c else False, p.reload) == (rebuild, reapply, reload)
    assert p.nothing == (not (rebuild or reapply or reload))


def test_plan_names_its_trigger_files_and_reason() -> None:
    p = plan([Change(f"{CTX}/server.js"), Change(f"{CTX}/README.md")], [LAYOUT])
    c = one(p)
    assert c is not None and c.image_files == ("server.js",) and c.trigger_files == ("server.js",)
    assert p.ignored == (f"{CTX}/README.md",)
    assert c.reason == "image source changed"


def test_deleted_source_file_rebuilds() -> None:
    c = one(plan([Change(f"{CTX}/old.js", deleted=True)], [LAYOUT]))
    assert c is not None and c.rebuild


def test_dockerignore_negation_is_honoured() -> None:
    rules = IgnoreRules(tuple(parse_dockerignore("*.md\n!KEEP.md\n")), "Dockerfile")
    assert rules.reaches_image("KEEP.md")
    assert not rules.reaches_image("OTHER.md")


def test_dockerfile_always_reaches_image_even_if_ignored() -> None:
    rules = IgnoreRules(("Dockerfile", "*.dockerfile"), "Dockerfile")
    assert rules.reaches_image("Dockerfile")


LIVE = ServiceLayout(
    "web", CTX, LAYOUT.rules, LAYOUT.manifests, live_fallback=("package.json", "package-lock.json", "Dockerfile", ".dockerignore")
)


@pytest.mark.parametrize(
    ("changes", "sync", "rebuild"),
    [
        ([Change(f"{CTX}/server.js")], ("server.js",), False),
        ([Change(f"{CTX}/server.js"), Change(f"{CTX}/lib/a.js")], ("lib/a.js", "server.js"), False),
        ([Change(f"{CTX}/package.json")], (), True),
        ([Change(f"{CTX}/server.js"), Change(f"{CTX}/Dockerfile")], (), True),
        ([Change(f"{CTX}/old.js", deleted=True)], (), True),  # deletions rebuild
        ([Change(f"{CTX}/server.js", deleted=True), Change(f"{CTX}/server.js")], ("server.js",), False),  # delete+recreate = save
        ([Change(f"{CTX}/server.js"), Change(f"{CTX}/k8s/deployment.yaml")], (), True),
    ],
)
def test_live_update_plan(changes: list[Change], sync: tuple[str, ...], rebuild: bool) -> None:
    c = one(plan(changes, [LIVE]))
    assert c is not None and c.sync == sync and c.rebuild is rebuild
    if sync:
        assert c.reason == "live update" and not c.reapply


def test_a_temp_file_created_and_renamed_away_is_not_a_trigger() -> None:
    # sed -i: create sedXXXXXX, write it, rename it over server.js
    batch = [
        Change(f"{CTX}/sed5ArWQK", created=True),
        Change(f"{CTX}/sed5ArWQK"),
        Change(f"{CTX}/sed5ArWQK", deleted=True),
        Change(f"{CTX}/server.js", created=True),
    ]
    c = one(plan(batch, [LIVE]))
    assert c is not None and c.trigger_files == ("server.js",) and c.sync == ("server.js",)


# -- several services ---------------------------------------------------------------------------------

RULES = IgnoreRules((), "Dockerfile")
SHOP = "/s"
WEB = ServiceLayout("web", f"{SHOP}/web", RULES, (f"{SHOP}/k8s/web.yaml", f"{SHOP}/k8s"), foreign=(f"{SHOP}/k8s/api.yaml",))
API = ServiceLayout("api", f"{SHOP}/api", RULES, (f"{SHOP}/k8s/api.yaml", f"{SHOP}/k8s"), foreign=(f"{SHOP}/k8s/web.yaml",))
# two services built from one context (different Dockerfiles): the worker's .dockerignore-like rules hide docs/
SHARED_A = ServiceLayout("a", f"{SHOP}/mono", IgnoreRules(("k8s",), "Dockerfile.a"), (f"{SHOP}/mono/k8s",))
SHARED_B = ServiceLayout("b", f"{SHOP}/mono", IgnoreRules(("docs", "k8s"), "Dockerfile.b"), (f"{SHOP}/mono/k8s",))


@pytest.mark.parametrize(
    ("layouts", "path", "want"),
    [
        ([WEB, API], f"{SHOP}/api/server.js", {"api": "rebuild"}),
        ([WEB, API], f"{SHOP}/web/server.js", {"web": "rebuild"}),
        ([WEB, API], f"{SHOP}/k8s/api.yaml", {"api": "reapply"}),  # a shared directory: only the file's owner
        ([WEB, API], f"{SHOP}/k8s/common.yaml", {"web": "reapply", "api": "reapply"}),  # a new shared file: both
        ([SHARED_A, SHARED_B], f"{SHOP}/mono/lib/x.js", {"a": "rebuild", "b": "rebuild"}),  # a shared context triggers both
        ([SHARED_A, SHARED_B], f"{SHOP}/mono/docs/guide.txt", {"a": "rebuild"}),  # hidden from b by its ignore rules
        ([SHARED_A, SHARED_B], f"{SHOP}/mono/k8s/deploy.yaml", {"a": "reapply", "b": "reapply"}),
        ([WEB, API], f"{SHOP}/README", {}),
    ],
)
def test_a_change_reaches_exactly_the_services_it_touches(layouts: list[ServiceLayout], path: str, want: dict[str, str]) -> None:
    p = plan([Change(path)], layouts)
    got = {c.service: ("rebuild" if c.rebuild else "reapply") for c in p.services}
    assert got == want


def test_a_config_change_is_a_reload_and_nothing_else() -> None:
    p = plan([Change("/p/devloop.yaml"), Change(f"{CTX}/server.js")], [LAYOUT], CONFIGS)
    assert p.reload and p.config_files == ("devloop.yaml",) and p.services == ()


def test_files_are_named_relative_to_the_project_each_once_and_image_files_as_the_context_sees_them() -> None:
    changes = [Change(f"{CTX}/server.js"), Change(f"{CTX}/k8s/deployment.yaml"), Change(f"{CTX}/server.js"), Change("/p/notes.txt")]
    p = plan(changes, [LAYOUT], CONFIGS, root="/p")
    c = one(p)
    assert c is not None and c.trigger_files == ("server.js", "sample-app/k8s/deployment.yaml")
    assert p.ignored == ("notes.txt",)
    assert not any(os.path.isabs(f) for f in (*c.trigger_files, *p.ignored))


def test_a_manifest_that_also_reaches_the_image_is_named_once() -> None:
    layout = ServiceLayout("web", context=CTX, rules=IgnoreRules((), "Dockerfile", ()), manifests=(f"{CTX}/k8s",))
    c = one(plan([Change(f"{CTX}/k8s/deployment.yaml")], [layout], root="/p"))
    assert c is not None and c.rebuild and c.reapply and c.trigger_files == ("sample-app/k8s/deployment.yaml",)


def test_a_reload_names_its_configuration_files_relative_to_the_project() -> None:
    p = plan([Change("/p/devloop.yaml"), Change("/kind-config.yaml")], [LAYOUT], ("/p/devloop.yaml", "/kind-config.yaml"), root="/p")
    assert p.reload and p.config_files == ("../kind-config.yaml", "devloop.yaml")
    (c, *_) = everything([LAYOUT], "configuration changed", p.config_files).services
    assert c.trigger_files == ("../kind-config.yaml", "devloop.yaml")
