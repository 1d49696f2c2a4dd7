"""Links between the project's markdown pages lead somewhere.

Every relative link in README.md and docs/*.md names a file that exists and, when it has
a ``#anchor``, a heading of that page (GitHub's anchor for a heading: lower case, spaces
as hyphens, punctuation but ``-`` and ``_`` dropped, ``-1``, ``-2`` ... for repeats).
Links inside code (fenced blocks, backticks) are text, not links.
"""

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code spans."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def anchors(text: str) -> Iterator[str]:
    """The anchors GitHub gives the headings of a markdown page."""
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#+ (.+)$", re.sub(r"^```.*?^```", "", text, flags=re.S | re.M),
                              flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        seen[slug] = seen.get(slug, -1) + 1
        yield slug if seen[slug] == 0 else f"{slug}-{seen[slug]}"


def broken_links(page: Path, text: str) -> list[str]:
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", prose(text)):
        if re.match(r"[a-z]+:", target):
            continue                                    # a URL, not a file of ours
        name, _, anchor = target.partition("#")
        dest = (page.parent / name) if name else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in set(anchors(dest.read_text())):
            broken.append(f"{target}: no such heading")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_leads_somewhere(page):
    assert broken_links(page, page.read_text()) == []


def test_a_broken_link_is_caught():
    page = ROOT / "README.md"
    assert broken_links(page, "[a](docs/no-such-page.md)") == ["docs/no-such-page.md: no such file"]
    assert broken_links(page, "[a](docs/run.md#no-such-heading)") == \
        ["docs/run.md#no-such-heading: no such heading"]
    assert broken_links(page, "[a](docs/run.md#exit-status) `[b](BDF)`") == []
