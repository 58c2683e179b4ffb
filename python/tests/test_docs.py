"""The project's own Markdown (README.md, docs/, bench/results/*/README.md):
every relative link names a file or directory that exists, and every
`#anchor` into a Markdown file names one of its headings, so that moving
or renaming a page (docs/ was split into pages on 2026-12-04) cannot leave
readers at dead links."""

import re
from pathlib import Path

import pytest

TOP = Path(__file__).resolve().parents[2]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def pages():
    yield TOP / "README.md"
    yield from sorted((TOP / "docs").glob("*.md"))
    yield from sorted((TOP / "bench" / "results").glob("*/README.md"))


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped,
    spaces to hyphens."""
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def anchors(md):
    text = md.read_text()
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return {slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, re.M)}


def links(md):
    text = re.sub(r"```.*?```", "", md.read_text(), flags=re.S)
    for m in LINK.finditer(text):
        target = m.group(1)
        if re.match(r"^[a-z]+:", target):
            continue  # http:, https:, mailto:
        yield target


def test_the_pages_exist():
    assert (TOP / "docs" / "ARCHITECTURE.md").is_file()
    assert sum(1 for _ in pages()) > 10


def dead_links(md):
    """The relative links of page `md` that lead nowhere, each with why."""
    dead = []
    for target in links(md):
        path, _, anchor = target.partition("#")
        dest = (md.parent / path).resolve() if path else md
        if not dest.exists():
            dead.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            dead.append(f"{target}: no heading #{anchor}")
    return dead


@pytest.mark.parametrize("md", list(pages()), ids=lambda p: str(p.relative_to(TOP)))
def test_relative_links_resolve(md):
    dead = dead_links(md)
    assert not dead, f"{md.relative_to(TOP)}: " + "; ".join(dead)


def test_a_dead_link_is_caught(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "there.md").write_text("# A heading, with punctuation\n")
    page.write_text("[ok](there.md#a-heading-with-punctuation) [gone](missing.md) [bad](there.md#nope) [web](https://example.com/x)\n")
    assert dead_links(page) == ["missing.md: no such file", "there.md#nope: no heading #nope"]
