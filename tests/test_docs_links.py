"""The README and the docs pages link only to files and headings that exist.

Each relative link of README.md, docs/*.md and bench/README.md must name a file of the
repository, and its `#anchor`, if any, a heading of the page it points at, spelled as
GitHub spells heading anchors. Links starting with `/` name the running service's own pages
(`/openapi.json`, `/docs`), not files, and links with a scheme leave the repository.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.processes import ROOT

PAGES = sorted([ROOT / "README.md", ROOT / "bench" / "README.md", *(ROOT / "docs").glob("*.md")])
FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"(?<!!)\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")


def prose(text: str) -> list[str]:
    """The lines of a page outside fenced code blocks."""
    lines: list[str] = []
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: its text, lowercased, punctuation but `-`, `_` dropped."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text, not its target
    text = CODE_SPAN.sub(lambda match: match.group(2), text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of a page, repeats numbered as GitHub numbers them (`-1`, `-2`)."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    for line in prose(page.read_text()):
        match = re.match(r"#{1,6}\s+(.+?)\s*#*\s*$", line)
        if not match:
            continue
        slug = anchor(match.group(1))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def links(page: Path) -> list[str]:
    """The targets of a page's links, outside code blocks and code spans."""
    # Joined, so that a link whose text is wrapped over two lines is still found.
    text = "\n".join(CODE_SPAN.sub("", line) for line in prose(page.read_text()))
    return LINK.findall(text)


def test_the_pages_are_there() -> None:
    names = {page.relative_to(ROOT).as_posix() for page in PAGES}
    for name in (
        "README.md",
        "bench/README.md",
        "docs/settings.md",
        "docs/api.md",
        "docs/delivery.md",
        "docs/production.md",
        "docs/browser-client.md",
        "docs/security.md",
        "docs/layout.md",
    ):
        assert name in names, name


def test_the_readme_links_every_docs_page() -> None:
    targets = {target.split("#", 1)[0] for target in links(ROOT / "README.md")}
    for page in (ROOT / "docs").glob("*.md"):
        assert page.relative_to(ROOT).as_posix() in targets, page.name


def test_the_anchor_spelling_is_githubs() -> None:
    assert anchor("The browser client (`inngest-gateway.js`)") == (
        "the-browser-client-inngest-gatewayjs"
    )
    assert anchor("Run it beside your Flask app (`IDENTITY=flask-session`)") == (
        "run-it-beside-your-flask-app-identityflask-session"
    )
    assert anchor("`POST /api`") == "post-api"
    assert anchor("Logs & metrics") == "logs--metrics"
    assert anchor("Where the time goes, and what was tried") == (
        "where-the-time-goes-and-what-was-tried"
    )


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_relative_link_reaches_a_file_and_heading(page: Path) -> None:
    broken: list[str] = []
    for target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("/"):
            continue
        path, _, fragment = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists() or not linked.is_relative_to(ROOT):
            broken.append(f"{target}: no such file")
        elif fragment and (linked.suffix != ".md" or fragment not in anchors(linked)):
            broken.append(f"{target}: no such heading in {linked.relative_to(ROOT)}")
    assert not broken, broken


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_code_block_is_closed(page: Path) -> None:
    """An unclosed fence would hide the rest of the page, its links included."""
    fences = [line for line in page.read_text().splitlines() if FENCE.match(line)]
    assert len(fences) % 2 == 0, f"{page.name}: {len(fences)} fences"
