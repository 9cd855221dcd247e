"""Merging integer intervals: `merge_blocks`, the one rule by which every target space (and the
launcher's early start) turns address blocks into sorted, disjoint, non-adjacent intervals.

Owns: `merge_blocks`. Must not: import anything (the early start, `cli.launch`, uses it before
the first SYN, when every import is time before the first packet), or know what a key means.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable


def merge_blocks(blocks: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, disjoint, non-adjacent intervals covering the same keys."""
    out: list[tuple[int, int]] = []
    for first, last in sorted(blocks):
        if out and first <= out[-1][1] + 1:
            if last > out[-1][1]:
                out[-1] = (out[-1][0], last)
        else:
            out.append((first, last))
    return out
