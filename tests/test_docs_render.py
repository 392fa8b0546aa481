"""The README and docs render as Markdown (no stray fence swallowing sections) and their links resolve.

A leftover ``` fence once turned half the README into one code block; CI catches that here.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

markdown_it = pytest.importorskip("markdown_it", reason="markdown-it-py is in the dev extra: pip install -e '.[dev]'")

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), *(ROOT / "deploy").rglob("*.md")])


def _tokens(path: Path):
    return markdown_it.MarkdownIt("commonmark").enable("table").parse(path.read_text())


def _headings(tokens) -> list[str]:
    return [tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open"]


def test_readme_sections_are_headings_not_code() -> None:
    headings = _headings(_tokens(ROOT / "README.md"))
    for wanted in ("edgepipe", "Using it", "Benchmarks and results", "Deploy on a device", "Layout"):
        assert wanted in headings, f"README heading {wanted!r} does not render as a heading: {headings}"


def test_readme_first_screen_says_what_and_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    first_screen = "\n".join(text.splitlines()[:30])
    assert "make demo" in first_screen and "make test" in first_screen
    assert re.search(r"fewer HEVC bits", first_screen), "the first screen must say what it saves at equal accuracy"
    assert "equal" in first_screen


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_fences_are_closed(path: Path) -> None:
    # An unclosed fence runs to the end of the file: its last token is then a fence holding the rest.
    tokens = _tokens(path)
    text = path.read_text()
    fences = [t for t in tokens if t.type == "fence"]
    if fences and text.rstrip().splitlines()[-1].strip() not in ("```", "~~~"):
        last = fences[-1]
        assert last.map[1] < len(text.splitlines()), f"{path.name}: a code fence is never closed"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    missing = []
    for token in _tokens(path):
        for child in token.children or []:
            target = child.attrs.get("href") or child.attrs.get("src") if child.attrs else None
            if not target or re.match(r"^[a-z]+:|^#|^mailto:", target):
                continue
            if not (path.parent / target.split("#")[0]).exists():
                missing.append(target)
    assert not missing, f"{path.name}: links to files that do not exist: {missing}"
