"""vncaudit: find exposed VNC services, read their RFB handshake without logging in, grade, fix.

The public API is what this module exports; everything else is internal.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vncaudit.models import Finding, Product, RfbFacts, ServiceResult, Severity, State, Target

if TYPE_CHECKING:
    from vncaudit.engine import scan

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


def __getattr__(name: str) -> Any:
    # The engine (asyncio, the probe, discovery) is imported when `scan` is first used, not by
    # every `import vncaudit`: the command line starts faster, and `local` never needs it.
    if name == "scan":
        from vncaudit.engine import scan

        return scan
    if name == "__version__":
        # One source for the version: pyproject.toml, read back from the installed package's
        # metadata (`--version`, scan records, reports); looked up when first asked for.
        from importlib import metadata

        try:
            version = metadata.version("vncaudit")
        except metadata.PackageNotFoundError:  # a source tree on PYTHONPATH, never installed
            version = "0+unknown"
        globals()["__version__"] = version
        return version
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
