"""The user's documentation holds together: every relative link in README.md and docs/*.md points at a
file that exists, every #anchor at a heading of its page (GitHub's slug rules), and the README stays a
short door (at most 250 lines)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README_MAX_LINES = 250

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
HTML_ATTR = re.compile(r"<(?:a|img)\b[^>]*?\b(?:href|src)=\"([^\"]+)\"", re.IGNORECASE)
HTML_ANCHOR = re.compile(r"<a\b[^>]*?\b(?:id|name)=\"([^\"]+)\"", re.IGNORECASE)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def docs() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks (a link or heading in a code block is text)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lower-cased, without punctuation other than
    '-' and '_', each space a '-'."""
    text = INLINE_LINK.sub(lambda m: m.group(0)[m.group(0).index("[") + 1 : m.group(0).index("](")], heading)
    text = INLINE_CODE.sub(lambda m: m.group(2), text)
    text = re.sub(r"<[^>]+>", "", text).replace("*", "")
    return "".join(c for c in text.lower() if c.isalnum() or c in "-_ ").replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor a page has: its headings' slugs (a repeated one gets -1, -2, … as on GitHub) and
    explicit <a id=…> / <a name=…>."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    for line in prose_lines(path.read_text()):
        found.update(HTML_ANCHOR.findall(line))
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(path: Path) -> list[str]:
    out: list[str] = []
    for line in prose_lines(path.read_text()):
        line_without_code = INLINE_CODE.sub("", line)
        out += INLINE_LINK.findall(line_without_code)
        out += HTML_ATTR.findall(line_without_code)
        m = REFERENCE_DEF.match(line_without_code)
        if m:
            out.append(m.group(1))
    return out


def broken_links(path: Path, repo: Path = REPO) -> list[str]:
    """The relative links of one page that do not resolve, each with the reason."""
    broken = []
    for target in links(path):
        if not target or SCHEME.match(target) or target.startswith("//"):
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(f"{target}: no such file {dest}")
            continue
        if repo.resolve() not in (dest, *dest.parents):
            broken.append(f"{target}: outside the repository")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(repo.resolve())}")
    return broken


@pytest.mark.parametrize("page", docs(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    assert broken_links(page) == []


def test_the_docs_pages_exist_and_the_readme_links_each_one() -> None:
    pages = {p.name for p in docs()[1:]}
    assert {"reference.md", "how-it-works.md", "benchmarks.md", "troubleshooting.md", "development.md"} <= pages
    readme_targets = {t.partition("#")[0] for t in links(REPO / "README.md")}
    assert {f"docs/{p}" for p in pages} <= readme_targets


def test_readme_is_a_short_door() -> None:
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("Quick start", "quick-start"),
        ("The end-to-end tests (a real kind cluster)", "the-end-to-end-tests-a-real-kind-cluster"),
        ("Production: the registry flow", "production-the-registry-flow"),
        ("`devloop.yaml` reference", "devloopyaml-reference"),
        ("Up / down", "up--down"),
        ("Against [Tilt](https://tilt.dev) and Skaffold", "against-tilt-and-skaffold"),
        ("Where_things live", "where_things-live"),
    ],
)
def test_slugs_follow_githubs_rules(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor


def test_a_broken_link_or_anchor_is_reported(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Other\n\n## Known part\n")
    page = tmp_path / "README.md"
    page.write_text(
        "# Title\n\n## Known part\n\n"
        "[ok](docs/other.md#known-part) [ok](#known-part) [web](https://example.com/x)\n"
        "[gone](docs/missing.md) [bad anchor](docs/other.md#unknown) [bad local](#nowhere)\n"
        "`[in code](docs/not-a-link.md)`\n\n```\n[in a block](docs/not-a-link.md)\n```\n"
    )
    found = broken_links(page, repo=tmp_path)
    assert [b.split(":")[0] for b in found] == ["docs/missing.md", "docs/other.md#unknown", "#nowhere"]
