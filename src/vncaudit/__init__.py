"""vncaudit: find exposed VNC services, read their RFB handshake without logging in, grade, fix.

The public API is what this module exports; everything else is internal.
"""

from __future__ import annotations

from vncaudit.engine import scan
from vncaudit.models import Finding, Product, RfbFacts, ServiceResult, Severity, State, Target

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
