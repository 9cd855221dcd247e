"""A settings file in TOML (`serve --config`, `watch --config`): its text decoded and parsed.

Owns: `parse_toml`, which turns a file's bytes into its table or raises `ValueError` with one
line that names the file. Must not: read the file (the caller does, with its own wording for
a file that cannot be read) or know which keys a file may hold.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any


def parse_toml(raw: bytes, path: str | Path) -> dict[str, Any]:
    """The table of the TOML text `raw` read from `path`; `ValueError` (one line) when it is
    not UTF-8 or not TOML."""
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text (a TOML file was expected)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: invalid TOML: {exc}") from None
