"""Versions and version ranges of products, for matching CVE entries.

Owns: `parse_version`, `parse_range` (the range syntax documented in data/cves.toml),
`VersionRange` and `match_versions`. A version with fewer components stands for every version
that starts with it. Must not: know products or CVEs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

Version = tuple[int, ...]
_VERSION_RE: Final = re.compile(r"[vVrRpPeE]?(\d+(?:\.\d+)*)(?:\.[xX*])?")
_COMPARE_RE: Final = re.compile(r"(>=|<=|==|=|>|<)?\s*(\S+)")
_SPAN_RE: Final = re.compile(r"(\S+)\s*(?:\s-\s|–|\.\.|\bto\b)\s*(\S+)")


def parse_version(text: str) -> Version:
    """'4.1.1' → (4, 1, 1); 'v1.12', '5.x', 'E4.4.2' are accepted; ValueError otherwise."""
    m = _VERSION_RE.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"not a version: {text!r}")
    return tuple(int(p) for p in m.group(1).split("."))


def _norm(v: Version) -> Version:
    # 1.7 and 1.7.0 are the same version; comparing normalised tuples makes them equal.
    while len(v) > 1 and v[-1] == 0:
        v = v[:-1]
    return v


def _after_prefix(v: Version) -> Version:
    """The first version that no longer starts with `v`: (1, 7) → (1, 8)."""
    return (*v[:-1], v[-1] + 1)


@dataclass(frozen=True)
class VersionRange:
    """Half-open [lo, hi) over normalised versions; None is unbounded."""

    lo: Version | None = None
    hi: Version | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "lo", _norm(self.lo) if self.lo is not None else None)
        object.__setattr__(self, "hi", _norm(self.hi) if self.hi is not None else None)

    @property
    def empty(self) -> bool:
        return self.lo is not None and self.hi is not None and self.lo >= self.hi

    def intersect(self, other: VersionRange) -> VersionRange:
        lo = max((v for v in (self.lo, other.lo) if v is not None), default=None)
        hi = min((v for v in (self.hi, other.hi) if v is not None), default=None)
        return VersionRange(lo, hi)

    def overlaps(self, other: VersionRange) -> bool:
        return not self.intersect(other).empty

    def contains(self, other: VersionRange) -> bool:
        lo_ok = self.lo is None or (other.lo is not None and other.lo >= self.lo)
        hi_ok = self.hi is None or (other.hi is not None and other.hi <= self.hi)
        return lo_ok and hi_ok and not other.empty


EVERY_VERSION: Final = VersionRange()


def _term(text: str) -> VersionRange:
    text = text.strip()
    if text in ("*", "any", ""):
        return EVERY_VERSION
    if text.endswith("+"):  # "5.3+"
        return VersionRange(parse_version(text[:-1]), None)
    span = _SPAN_RE.fullmatch(text)
    if span is not None:
        return VersionRange(parse_version(span.group(1)),
                            _after_prefix(parse_version(span.group(2))))
    m = _COMPARE_RE.fullmatch(text)
    if m is None:
        raise ValueError(f"not a version range: {text!r}")
    op, v = m.group(1) or "==", parse_version(m.group(2))
    if op == ">=":
        return VersionRange(v, None)
    if op == ">":
        return VersionRange(_after_prefix(v), None)
    if op == "<=":
        return VersionRange(None, _after_prefix(v))
    if op == "<":
        return VersionRange(None, v)
    return VersionRange(v, _after_prefix(v))  # "==" / "=" / bare: the version and its prefix


# Grading asks the same few questions for every service (its product's version against each
# CVE's ranges), so answers are kept: both functions are pure and VersionRange is frozen.
@lru_cache(maxsize=4096)
def parse_range(text: str) -> VersionRange:
    """One range: a comma-separated conjunction of terms (syntax in data/cves.toml)."""
    out = EVERY_VERSION
    for term in text.split(","):
        out = out.intersect(_term(term))
    return out


def match_versions(version: str | None, affected: Sequence[str]) -> str | None:
    """Compare a product version (or range) with affected ranges.

    Returns "affected" when every version the product may be lies in an affected range,
    "possible" when some may, None when none may or `affected` is empty (range unknown).
    An unknown or unreadable product version can be anything, so it is at most "possible"
    (unless every version is affected).
    """
    if not affected:
        return None
    if isinstance(affected, tuple):
        return _match_cached(version, affected)
    return _match(version, affected)


@lru_cache(maxsize=4096)
def _match_cached(version: str | None, affected: tuple[str, ...]) -> str | None:
    return _match(version, affected)


def _match(version: str | None, affected: Sequence[str]) -> str | None:
    product = EVERY_VERSION
    if version:
        try:
            product = parse_range(version)
        except ValueError:
            product = EVERY_VERSION
    ranges = [parse_range(a) for a in affected]
    if any(r.contains(product) for r in ranges):
        return "affected"
    if any(r.overlaps(product) for r in ranges):
        return "possible"
    return None
