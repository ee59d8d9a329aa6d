"""The documents hold together: every relative link in README.md, BENCHMARKS.md and docs/ points at a file that
exists, and the README stays a short front page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers.paths import REPO

DOCUMENTS = [REPO / "README.md", REPO / "BENCHMARKS.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def relative_links(text: str) -> list[str]:
    """Markdown link targets that are files in this repository (no URLs, no in-page anchors)."""
    targets = [match.group(1).split("#")[0] for match in LINK.finditer(text)]
    return [t for t in targets if t and not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


def test_the_link_finder_sees_relative_links_only() -> None:
    text = "[a](docs/a.md) [b](https://x.org/b.md) [c](#here) [d](../BENCHMARKS.md#top) [e](mailto:x@y)"
    assert relative_links(text) == ["docs/a.md", "../BENCHMARKS.md"]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_points_at_a_file(document: Path) -> None:
    broken = [t for t in relative_links(document.read_text(encoding="utf-8")) if not (document.parent / t).exists()]
    assert not broken, f"{document.relative_to(REPO)}: links to missing files: {broken}"


def test_the_readme_is_a_front_page_and_links_every_topic() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 210
    assert readme.index("make demo") < readme.index("make test") < 600  # the two set-up commands open it
    linked = {Path(t).name for t in relative_links(readme)}
    topics = {p.name for p in (REPO / "docs").glob("*.md")}
    assert topics and topics <= linked, f"docs not linked from README.md: {sorted(topics - linked)}"
