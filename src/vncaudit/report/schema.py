"""The published JSON Schema of the report (schema version 1): the file this package ships.

Owns: locating and reading `schema/report-v1.schema.json`, which describes the `-o json`
document, each `-o jsonl` line (`$defs/service`) and the services the web API embeds. Must
not: validate anything itself (the tests and users do that with a JSON Schema library) or build
reports.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

SCHEMA_FILE = "report-v1.schema.json"


def schema_text() -> str:
    """The schema as shipped (JSON text, UTF-8)."""
    return (resources.files("vncaudit.report") / "schema" / SCHEMA_FILE).read_text(
        encoding="utf-8")


def report_schema() -> dict[str, Any]:
    """The schema, parsed (a new copy on each call)."""
    doc: dict[str, Any] = json.loads(schema_text())
    return doc
