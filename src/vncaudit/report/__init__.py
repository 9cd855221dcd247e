"""Render a scan (its metadata and service results) into the output formats.

Owns: turning `ScanMeta` + `ServiceResult`s into text (json, jsonl, and the formats added by the
assess work). Must not: probe, grade, or touch the store; it only formats what it is given.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from vncaudit.models import SCHEMA_VERSION, ServiceResult, State

FORMATS = ("json", "jsonl")

HIDDEN_BY_DEFAULT = frozenset({State.CLOSED, State.FILTERED})


@dataclass(frozen=True)
class ScanMeta:
    id: str
    started: str  # ISO-8601
    finished: str | None
    targets: Sequence[str]
    ports: str
    tool: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id,
            "started": self.started,
            "finished": self.finished,
            "targets": list(self.targets),
            "ports": self.ports,
            "tool": self.tool,
        }
        d.update(self.extra)
        return d


def visible(results: Iterable[ServiceResult], include_all: bool = False) -> list[ServiceResult]:
    """The services a report shows: all of them with --all, else not closed/filtered."""
    return [r for r in results if include_all or r.state not in HIDDEN_BY_DEFAULT]


def to_document(
    meta: ScanMeta, results: Iterable[ServiceResult], include_all: bool = False
) -> dict[str, Any]:
    """The schema-v1 document (DESIGN.md §7)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "scan": meta.to_dict(),
        "services": [r.to_dict() for r in visible(results, include_all)],
    }


def render(
    fmt: str, meta: ScanMeta, results: Iterable[ServiceResult], include_all: bool = False
) -> str:
    """Render to one of FORMATS; raises ValueError for an unknown format."""
    if fmt == "json":
        return json.dumps(to_document(meta, results, include_all), indent=2) + "\n"
    if fmt == "jsonl":
        return "".join(
            json.dumps(r.to_dict(), separators=(",", ":")) + "\n"
            for r in visible(results, include_all)
        )
    raise ValueError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}")
