"""The digests devloop trusts for its own kind and kubectl (devloop/tools.py): one per supported
platform for each pinned version, so that no download falls back to a checksum served beside it."""

from __future__ import annotations

import re

import pytest

from devloop import tools

PLATFORMS = [(system, arch) for system in ("linux", "darwin") for arch in ("amd64", "arm64")]


@pytest.mark.parametrize(
    ("name", "version"), [("kind", tools.KIND_VERSION), ("kubectl", tools.KUBECTL_VERSION), ("helm", tools.HELM_VERSION)]
)
@pytest.mark.parametrize(("system", "arch"), PLATFORMS)
def test_every_supported_platform_has_a_pinned_sha256_for_the_pinned_version(
    name: str, version: str, system: str, arch: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tools, "host_platform", lambda: (system, arch))
    dl = tools.download_for(name)
    assert dl.version == version
    assert re.fullmatch(r"[0-9a-f]{64}", tools.pinned_sha256(dl))


def test_no_two_downloads_share_a_digest() -> None:
    digests = [d for table in tools.PINNED_SHA256.values() for d in table.values()]
    assert len(set(digests)) == len(digests)


def test_a_version_without_pinned_digests_is_refused_with_a_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tools, "host_platform", lambda: ("linux", "amd64"))
    monkeypatch.setattr(tools, "KUBECTL_VERSION", "v9.9.9")  # a bump that forgot its digests

    with pytest.raises(tools.NoPinnedDigest) as err:
        tools.pinned_sha256(tools.download_for("kubectl"))

    assert err.value.message.startswith("devloop has no pinned SHA-256 for kubectl v9.9.9 on linux/amd64")
    assert "install kubectl v9.9.9 yourself and put it on PATH" in err.value.hint


def test_kind_built_with_go_has_a_pinned_module_checksum() -> None:
    assert re.fullmatch(r"h1:[A-Za-z0-9+/]{43}=", tools.KIND_GO_SUM[tools.KIND_VERSION])
