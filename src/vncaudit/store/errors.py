"""The store's errors. Owns: `StoreError` and `UnknownScanError`. Must not: import the rest
of the store (every module of it raises these)."""

from __future__ import annotations

from vncaudit.exceptions import VncAuditError


class StoreError(VncAuditError):
    """The scan database cannot be opened, read or written; the message is one line."""


class UnknownScanError(StoreError):
    """No scan has the given id."""

    def __init__(self, scan_id: str) -> None:
        super().__init__(f"unknown scan id: {scan_id!r} (see `vncaudit results`)")
        self.scan_id = scan_id
