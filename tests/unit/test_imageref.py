"""devloop.model.ImageRef: the one parser of image references (Docker's rule for the registry host),
and the names derived from one (local, cluster, familiar, qualified)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devloop.model import ImageRef

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("ref", "want"),
    [
        ("web", ImageRef("web")),
        ("web:1.0", ImageRef("web", "1.0")),
        ("my-web-app:dl-0123456789abcdef", ImageRef("my-web-app", "dl-0123456789abcdef")),
        ("team/web:v1", ImageRef("team/web", "v1")),  # `team` is no host: Docker Hub's team/web
        ("localhost/web", ImageRef("web", "", "localhost")),
        ("localhost:5001/my-web-app:dl-abc", ImageRef("my-web-app", "dl-abc", "localhost:5001")),
        ("registry.example.com:5443/team/apps/web:v1", ImageRef("team/apps/web", "v1", "registry.example.com:5443")),
        ("docker.io/library/web:1", ImageRef("library/web", "1", "docker.io")),
        ("my.registry/web", ImageRef("web", "", "my.registry")),
        (f"web@{DIGEST}", ImageRef("web", "", "", DIGEST)),
        (f"r.example:5443/team/web:v1@{DIGEST}", ImageRef("team/web", "v1", "r.example:5443", DIGEST)),
    ],
)
def test_parse(ref: str, want: ImageRef) -> None:
    got = ImageRef.parse(ref)
    assert got == want
    assert str(got) == ref


def test_a_registry_given_is_taken_whole_with_its_path() -> None:
    got = ImageRef.parse("r.example:5443/team/web:v1", registry="r.example:5443/team")
    assert got == ImageRef("web", "v1", "r.example:5443/team")
    assert got.local == "web:v1" and got.host == "r.example:5443"
    # a reference elsewhere: Docker's rule
    assert ImageRef.parse("other.example/web:v1", registry="r.example:5443/team") == ImageRef("web", "v1", "other.example")


@pytest.mark.parametrize("bad", ["", ":v1", "web:", "a//b", "/web", "web/", "web:a/b", "a:b:c", "web@", "web@sha256", "my web:1"])
def test_what_is_no_reference_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="not an image reference"):
        ImageRef.parse(bad)


def test_the_names_the_engine_uses() -> None:
    ref = ImageRef("my-web-app", "dl-1", "localhost:5001")
    assert (ref.local, ref.cluster, ref.name, ref.host) == (
        "my-web-app:dl-1",
        "localhost:5001/my-web-app:dl-1",
        "localhost:5001/my-web-app",
        "localhost:5001",
    )
    pinned = ImageRef("web", "v1", "r.example:5443/team", DIGEST)
    assert str(pinned) == f"r.example:5443/team/web:v1@{DIGEST}" and pinned.local == "web:v1"
    assert ImageRef("web", "dl-1").cluster == "web:dl-1"  # kind load: the nodes know it by its local name


@pytest.mark.parametrize(
    ("ref", "familiar", "qualified"),
    [
        ("web", "web", "docker.io/library/web"),
        ("team/web:v1", "team/web", "docker.io/team/web"),
        ("docker.io/library/web:1", "web", "docker.io/library/web"),
        ("docker.io/web", "web", "docker.io/library/web"),
        ("index.docker.io/team/web", "team/web", "docker.io/team/web"),
        ("library/web", "web", "docker.io/library/web"),
        ("localhost:5001/web:dl-1", "localhost:5001/web", "localhost:5001/web"),
        ("registry.k8s.io/pause:3.10", "registry.k8s.io/pause", "registry.k8s.io/pause"),
    ],
)
def test_familiar_and_qualified_names(ref: str, familiar: str, qualified: str) -> None:
    assert ImageRef.parse(ref).familiar == familiar
    assert ImageRef.parse(ref).qualified == qualified


_COMPONENT = st.from_regex(r"[a-z0-9]+(?:[._-][a-z0-9]+)*", fullmatch=True)
_HOST = st.one_of(
    st.just("localhost"),
    st.from_regex(r"[a-z0-9]+(?:\.[a-z0-9]+)+", fullmatch=True),
    st.from_regex(r"[a-z0-9]+(?:\.[a-z0-9]+)*:[0-9]{1,5}", fullmatch=True),
)
_TAG = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)
_DIGEST = st.from_regex(r"sha256:[0-9a-f]{64}", fullmatch=True)


@st.composite
def refs(draw: st.DrawFn) -> ImageRef:
    registry = draw(st.one_of(st.just(""), _HOST))
    path = draw(st.lists(_COMPONENT, min_size=1, max_size=4))
    if not registry and len(path) > 1 and ("." in path[0] or path[0] == "localhost"):
        path[0] = path[0].replace(".", "-") + "x"  # Docker would take it for a host: not a Hub path
    return ImageRef("/".join(path), draw(st.one_of(st.just(""), _TAG)), registry, draw(st.one_of(st.just(""), _DIGEST)))


@given(refs())
def test_a_reference_written_out_parses_back_to_itself(ref: ImageRef) -> None:
    assert ImageRef.parse(str(ref)) == ref
    assert ImageRef.parse(str(ref), registry=ref.registry) == ref
