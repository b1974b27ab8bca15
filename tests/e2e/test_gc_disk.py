"""keepVersions bounds BYTES, not only tags: a dozen versions rolled out one after the other on a real
kind node from devloop's real local registry (tests/e2e/gcrig.py), each followed by the wiring's
garbage collection, as the engine runs it after a successful rollout.

Measured after every version: the registry's tags and `du` of its storage (inside its container), the
app's images in the node's containerd and `du` of the node's content store. Once keepVersions
versions exist, none of them may grow any more: before issue 23 the registry grew by the blob links
and directories `registry garbage-collect` leaves (about 48 kB per version), and the node kept the
images of the previous versions' pods while they were terminating (3 to 6 instead of 3).

Then a version deleted by the collection is pushed again and the node pulls it (the registry's
garbage collector ran between pushes: every blob of a later push must be whole).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.conftest import Harness
from tests.e2e.gcrig import Figures, Rig, rig

pytestmark = pytest.mark.e2e

CLUSTER = "devloop-gcdisk"
KEEP = 3
VERSIONS = 4 * KEEP  # enough to exceed keepVersions several times
SLACK_KB = 8  # directory files growing by a block as entries come and go


@pytest.fixture(scope="module")
def gcdisk(harness: Harness, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    with rig(harness, CLUSTER, KEEP, tmp_path_factory.mktemp("gcdisk")) as r:
        yield r


def _row(i: int, f: Figures, summary: str) -> str:
    return (
        f"version {i:2d}: registry {f.registry_tags} tags {f.registry_kb:6d} kB | node {f.node_images} images "
        f"{f.node_image_bytes / 1e6:6.1f} MB, content store {f.node_content_kb:6d} kB, containerd {f.node_containerd_kb} kB | {summary}"
    )


def test_registry_and_node_bytes_stop_growing_after_keep_versions(gcdisk: Rig) -> None:
    rows: list[Figures] = []
    for i in range(1, VERSIONS + 1):
        tag = gcdisk.build()
        gcdisk.publish(tag)
        gcdisk.roll_out(tag)
        summary = gcdisk.tidy(tag)
        rows.append(gcdisk.figures())
        print(_row(i, rows[-1], summary))
        assert "failed" not in summary, summary
    steady = rows[KEEP:]  # from the version after the first keepVersions on, something is deleted each time
    assert [f.registry_tags for f in steady] == [KEEP] * len(steady)
    assert max(f.node_images for f in steady) <= KEEP, [f.node_images for f in steady]
    first, last = steady[0], steady[-1]
    assert last.registry_kb <= first.registry_kb + SLACK_KB, [f.registry_kb for f in rows]
    assert last.node_content_kb <= first.node_content_kb + SLACK_KB, [f.node_content_kb for f in rows]
    growth = {k: (getattr(last, k) - getattr(first, k)) / (len(steady) - 1) for k in ("registry_kb", "node_content_kb")}
    print(
        f"per version after the first {KEEP + 1}: registry {growth['registry_kb']:+.1f} kB, node content store {growth['node_content_kb']:+.1f} kB"
    )


def test_a_collected_version_pushed_again_is_pulled_whole(gcdisk: Rig) -> None:
    """Right after a collection (the registry's garbage collector ran): push again a version it
    deleted, and a new one; the node pulls both, and the new one rolls out."""
    assert len(gcdisk.tags) > KEEP, "runs after the test above, on its versions"
    gone = gcdisk.tags[0]
    gcdisk.publish(gone)  # the host still has it: pushed again (its blobs uploaded again, not assumed)
    gcdisk.pull_works(gone)
    tag = gcdisk.build()
    gcdisk.publish(tag)
    gcdisk.roll_out(tag)
    summary = gcdisk.tidy(tag)
    assert "failed" not in summary, summary
    gcdisk.pull_works(tag)  # after that collection too
    assert gcdisk.figures().registry_tags == KEEP
