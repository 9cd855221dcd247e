"""vncaudit: find exposed VNC services, read their RFB handshake without logging in, grade, fix.

The public API is what this module exports; everything else is internal.
"""

from __future__ import annotations

# Not `typing.TYPE_CHECKING`: `vncaudit scan --discovery syn` sends its first SYNs before
# typing is imported (vncaudit.cli.launch).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from vncaudit.engine import scan
    from vncaudit.models import Finding, Product, RfbFacts, ServiceResult, Severity, State, Target

    __version__: str

__all__ = [
    "Finding",
    "Product",
    "RfbFacts",
    "ServiceResult",
    "Severity",
    "State",
    "Target",
    "__version__",
    "scan",
]


_MODELS = frozenset({"Finding", "Product", "RfbFacts", "ServiceResult", "Severity", "State",
                     "Target"})


def __getattr__(name: str) -> Any:
    # The engine (asyncio, the probe, discovery) is imported when `scan` is first used, and the
    # result types when one is first named, not by every `import vncaudit`: every module of
    # the package imports this one first, and a scan sends its first packet before it needs
    # either (`vncaudit.basics`).
    if name == "scan":
        from vncaudit.engine import scan

        return scan
    if name in _MODELS:
        from vncaudit import models

        value = getattr(models, name)
        globals()[name] = value
        return value
    if name == "__version__":
        # One source for the version: pyproject.toml, read back from the installed package's
        # metadata (`--version`, scan records, reports); looked up when first asked for.
        version = _installed_version()
        globals()["__version__"] = version
        return version
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _installed_version() -> str:
    """The installed package's version, as `importlib.metadata.version("vncaudit")` finds it
    (the first vncaudit-*.dist-info along sys.path), read from its METADATA header without
    importing importlib.metadata and the e-mail parser it loads (a scan record needs the
    version before the first packet); importlib.metadata itself for any other layout."""
    import os
    import sys

    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for name in names:
            if name.startswith("vncaudit-") and name.endswith(".dist-info"):
                try:
                    with open(os.path.join(entry or ".", name, "METADATA"),
                              encoding="utf-8") as fh:
                        for line in fh:
                            if line.startswith("Version:"):
                                return line.split(":", 1)[1].strip()
                            if not line.strip():
                                break
                except OSError:
                    pass
                break
        else:
            continue
        break
    from importlib import metadata

    try:
        return metadata.version("vncaudit")
    except metadata.PackageNotFoundError:  # a source tree on PYTHONPATH, never installed
        return "0+unknown"
