"""The README and the pages under ``docs/`` link only to things that exist.

For README.md and every ``docs/*.md``: every relative link target (``[text](path)``,
``[text](path#anchor)``, ``![alt](path)``, ``[text]: path``) exists relative to the markdown
file's folder, and every ``#anchor`` into a markdown file (the same file included) is produced by
one of its headings under GitHub's slug rule. Links inside fenced code blocks and inline code
are ignored, and so are absolute URLs (``http:``, ``https:``, ``mailto:``). Also: the README
stays a front page (at most :data:`README_MAX_LINES` lines) and links every ``docs/*.md`` page.

Standard library only: no torch import.
"""

from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
DOCS = REPO / "docs"
README_MAX_LINES = 300

PAGES = [README, *sorted(DOCS.glob("*.md"))]

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
_INLINE_CODE = re.compile(r"(`+)(.+?)\1")
# [text](target) and ![alt](target); the text may hold one level of brackets or inline code.
_INLINE_LINK = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+[\"'(][^)]*)?\)"
)
_REF_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
_EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


def prose_lines(text: str) -> list[str]:
    """The lines of ``text`` outside fenced code blocks (fence lines dropped, a fence closed only
    by a fence of the same character at least as long, as in CommonMark)."""
    lines, fence = [], None
    for line in text.splitlines():
        match = _FENCE.match(line)
        if fence is None:
            if match:
                fence = match.group(1)
                continue
            lines.append(line)
        elif (
            match
            and match.group(1)[0] == fence[0]
            and len(match.group(1)) >= len(fence)
            and not line.strip().lstrip(fence[0])  # a closing fence has no info string
        ):
            fence = None
    return lines


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: markdown markup removed, lowercased, every character
    that is not a letter, mark, digit, connector (``_``), space or hyphen dropped, spaces to
    hyphens."""
    text = _INLINE_CODE.sub(lambda m: m.group(2), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links: their text
    text = re.sub(r"(\*\*|__|\*)", "", text)  # emphasis markers (``_`` inside words is kept)
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    kept = []
    for char in text.strip().lower():
        category = unicodedata.category(char)
        if char in " -" or category[0] in "LMN" or category == "Pc":
            kept.append(char)
    return "".join(kept).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor the headings of the markdown file ``path`` produce (duplicates get -1, -2)."""
    seen: dict[str, int] = {}
    result = set()
    for line in prose_lines(path.read_text(encoding="utf-8")):
        match = _HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match.group(2))
        if slug in seen:
            seen[slug] += 1
            result.add(f"{slug}-{seen[slug]}")
        else:
            seen[slug] = 0
            result.add(slug)
    return result


def link_targets(path: Path) -> list[str]:
    """The link targets written in the prose of the markdown file ``path``, in order."""
    targets = []
    for line in prose_lines(path.read_text(encoding="utf-8")):
        definition = _REF_DEFINITION.match(line)
        if definition:
            targets.append(definition.group(1).strip("<>"))
            continue
        line = _INLINE_CODE.sub("", line)
        targets.extend(match.group(1).strip("<>") for match in _INLINE_LINK.finditer(line))
    return targets


def broken_links(path: Path) -> list[str]:
    """The relative link targets of ``path`` that do not resolve, each with the reason."""
    broken = []
    for target in link_targets(path):
        if _EXTERNAL.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        destination = (path.parent / unquote(file_part)).resolve() if file_part else path
        if not destination.exists():
            broken.append(f"{target} (no such file: {os.path.relpath(destination, REPO)})")
            continue
        if anchor and destination.suffix == ".md" and unquote(anchor) not in anchors(destination):
            broken.append(f"{target} (no heading in {destination.name} gives #{anchor})")
    return broken


def resolved_targets(path: Path) -> set[Path]:
    """The files the relative links of ``path`` point to."""
    found = set()
    for target in link_targets(path):
        file_part = target.partition("#")[0]
        if file_part and not _EXTERNAL.match(target):
            found.add((path.parent / unquote(file_part)).resolve())
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page: Path) -> None:
    broken = broken_links(page)
    assert not broken, f"{page.relative_to(REPO)} has broken links:\n  " + "\n  ".join(broken)


def test_readme_is_a_front_page() -> None:
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines (at most {README_MAX_LINES}): move depth into docs/"
    )


def test_readme_links_every_docs_page() -> None:
    linked = resolved_targets(README)
    missing = [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert not missing, f"README.md does not link these docs pages: {', '.join(missing)}"


def test_slug_rule() -> None:
    """GitHub's anchors for the kinds of heading these pages use."""
    assert github_slug("Does it learn?") == "does-it-learn"
    assert github_slug("Speed: `compile`, `channels_last`, precision") == (
        "speed-compile-channels_last-precision"
    )
    assert github_slug("Set-up (two commands on a fresh machine)") == (
        "set-up-two-commands-on-a-fresh-machine"
    )
    assert github_slug("CNN-JEPA with C-JEPA's VICReg regulariser") == (
        "cnn-jepa-with-c-jepas-vicreg-regulariser"
    )
    assert github_slug("Evaluate, export, load in torchvision") == (
        "evaluate-export-load-in-torchvision"
    )
    assert github_slug("Results (2026–12–02) × 3") == "results-20261202--3"
