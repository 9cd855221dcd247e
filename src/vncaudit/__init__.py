"""vncaudit: find exposed VNC services, read their RFB handshake without logging in, grade, fix.

The public API is what this module exports; everything else is internal.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vncaudit.models import Finding, Product, RfbFacts, ServiceResult, Severity, State, Target

if TYPE_CHECKING:
    from vncaudit.engine import scan

__version__ = "0.1.0"

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
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
