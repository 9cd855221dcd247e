"""Every citation of the design and the reference notes resolves inside the repository.

Code, data files, tests and docs cite `docs/design.md §N` or `docs/design.md "Section name"`,
`docs/rfb.md §N.M` and `docs/peers.md §N` (docs/design.md §5). A cited section must exist in
that file: its number or name in a heading. Reading only, nothing imported.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("design", "rfb", "peers", "scale")
SEARCHED = ("src", "tests", "fuzz", "bench", "docs", "contrib", "README.md", "Makefile")
SUFFIXES = {".py", ".md", ".toml", ".txt", ".j2", ".html", ".cfg", ".ini", ""}

HEADING = re.compile(r"^#{1,6}\s+(?P<number>\d+(?:\.\d+)*)?\.?\s*(?P<title>.*?)\s*$")
SECTION = r"§\s?\d+(?:\.\d+)*"
# `docs/rfb.md §6.2`, `docs/rfb.md §4.3/§6.2`, `docs/rfb.md §1.1, §8.3`, `docs/peers.md §6`
NUMBERED = re.compile(
    r"docs/(?P<doc>" + "|".join(DOCS) + r")\.md,?\s*(?P<sections>" + SECTION
    + r"(?:\s*(?:/|,|and|or)\s*" + SECTION + r")*)")
# `docs/design.md "Probing etiquette"`, `docs/design.md, "The store: schema, writes, ..."`
NAMED = re.compile(
    r"docs/(?P<doc>" + "|".join(DOCS) + r")\.md,?\s+[\"“](?P<name>[^\"”\n]+?)[,.]?[\"”]",
    re.MULTILINE)


@dataclass(frozen=True)
class Citation:
    path: Path
    line: int
    doc: str
    section: str  # a number ("6.2") or a heading's name


@cache
def headings(doc: str) -> tuple[frozenset[str], tuple[str, ...]]:
    """The section numbers and the heading titles of docs/<doc>.md."""
    numbers: set[str] = set()
    titles: list[str] = []
    in_code = False
    for line in (ROOT / "docs" / f"{doc}.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not line.startswith("#"):
            continue
        match = HEADING.match(line)
        if match is None:
            continue
        if match["number"]:
            numbers.add(match["number"])
        titles.append(match["title"])
    return frozenset(numbers), tuple(titles)


def _files() -> Iterator[Path]:
    for name in SEARCHED:
        path = ROOT / name
        if path.is_file():
            yield path
        elif path.is_dir():
            for file in sorted(path.rglob("*")):
                if (file.is_file() and file.suffix in SUFFIXES and "__pycache__" not in file.parts
                        and file != Path(__file__).resolve()):
                    yield file


def _unwrap(text: str) -> str:
    """Citations may wrap across comment or docstring lines: join a line that ends in the
    middle of one with the next, dropping the comment marker."""
    return re.sub(r"\n\s*(?:#\s?)?", " ", text)


def citations(path: Path, text: str) -> Iterator[Citation]:
    lines = text.splitlines()
    for number, line in enumerate(lines, 1):
        if "docs/" not in line:
            continue
        joined = _unwrap(line + "\n" + lines[number]) if number < len(lines) else line
        for match in NUMBERED.finditer(joined):
            if match.start() >= len(line):
                continue
            for section in re.findall(r"\d+(?:\.\d+)*", match["sections"]):
                yield Citation(path, number, match["doc"], section)
        for match in NAMED.finditer(joined):
            if match.start() >= len(line):
                continue
            yield Citation(path, number, match["doc"], match["name"])


def _resolves(citation: Citation) -> bool:
    numbers, titles = headings(citation.doc)
    if citation.section[0].isdigit():
        return citation.section in numbers
    name = citation.section.rstrip(",.").lower()
    return any(name in title.lower() for title in titles)


ALL = [c for path in _files() for c in citations(path, path.read_text(encoding="utf-8",
                                                                     errors="replace"))]


def test_citations_are_found() -> None:
    """The scan itself works: the code does cite both files by number and by name."""
    assert any(c.doc == "rfb" and c.section[0].isdigit() for c in ALL)
    assert any(c.doc == "design" and not c.section[0].isdigit() for c in ALL)


def test_every_cited_section_exists() -> None:
    broken = [f"{c.path.relative_to(ROOT)}:{c.line}: docs/{c.doc}.md {c.section!r}"
              for c in ALL if not _resolves(c)]
    assert not broken, "cited sections that do not exist:\n" + "\n".join(broken)


@pytest.mark.parametrize("doc", DOCS)
def test_sections_are_numbered_once(doc: str) -> None:
    """A number used twice would make a citation ambiguous."""
    lines = (ROOT / "docs" / f"{doc}.md").read_text(encoding="utf-8").splitlines()
    seen: list[str] = []
    in_code = False
    for line in lines:
        if line.startswith("```"):
            in_code = not in_code
        match = HEADING.match(line) if line.startswith("#") and not in_code else None
        if match is not None and match["number"]:
            seen.append(match["number"])
    assert len(seen) == len(set(seen)), sorted(n for n in seen if seen.count(n) > 1)


def test_the_checker_catches_a_missing_section(tmp_path: Path) -> None:
    text = ('# see docs/rfb.md §6.2 and docs/rfb.md §99.1\n'
            'x = 1  # docs/design.md "Probing etiquette"; docs/design.md "No such part"\n'
            '"""docs/rfb.md §4.3/§6.2, docs/design.md, "The store: schema, writes,\n'
            'durability"."""\n')
    found = list(citations(tmp_path / "x.py", text))
    assert [c.section for c in found] == ["6.2", "99.1", "Probing etiquette", "No such part",
                                          "4.3", "6.2", "The store: schema, writes, durability"]
    assert [_resolves(c) for c in found] == [True, False, True, False, True, True, True]


# References that point outside the repository, or at files that are not in it: the design is
# docs/design.md, the reference notes docs/rfb.md and docs/peers.md.
OUTSIDE = re.compile(r"\.\./shared|shared/reference|shared/DESIGN|design-store\.md"
                     r"|(?<![\w/.-])(?:DESIGN|rfb|peers)\.md")


def test_no_reference_leaves_the_repository() -> None:
    found = []
    for path in _files():
        for number, line in enumerate(
                path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, "references outside the repository:\n" + "\n".join(found)


def test_the_outside_pattern() -> None:
    for bad in ("see ../shared/reference/rfb.md", "(DESIGN.md §4)", "rfb.md §6.2", "peers.md §6",
                "docs/design-store.md"):
        assert OUTSIDE.search(bad), bad
    for good in ("docs/rfb.md §6.2", "docs/design.md §4", "docs/peers.md §6", "rfbproto §7.2"):
        assert not OUTSIDE.search(good), good
