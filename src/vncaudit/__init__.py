"""vncaudit: find exposed VNC services, read their RFB handshake without logging in, grade, fix.

The public API is what this module exports; everything else is internal.
"""

from __future__ import annotations

from importlib import metadata as _metadata

# One source for the version: pyproject.toml, read back from the installed package's metadata
# (`--version`, the store's scan records and the reports all show this).
try:
    __version__ = _metadata.version("vncaudit")
except _metadata.PackageNotFoundError:  # a source tree on PYTHONPATH that was never installed
    __version__ = "0+unknown"

from vncaudit.engine import scan  # noqa: E402
from vncaudit.models import (  # noqa: E402
    Finding,
    Product,
    RfbFacts,
    ServiceResult,
    Severity,
    State,
    Target,
)

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
