"""Typed errors for the whole package: usage, protocol and network.

Owns: the exception hierarchy and nothing else. Errors say whose fault it was
(`LocalProtocolError`: we misused the protocol object; `RemoteProtocolError`: the peer sent
something wrong), in the style of h11/httpcore. Must not: import anything of the package.
Every message is one line a user can read.
"""

from __future__ import annotations


class VncAuditError(Exception):
    """Base of every error raised on purpose by vncaudit."""


class UsageError(VncAuditError):
    """Bad user input (targets, ports, options): exit code 2, one line on stderr."""


class ProtocolError(VncAuditError):
    """The RFB conversation cannot go on."""


class LocalProtocolError(ProtocolError):
    """We asked the protocol object for something the current state does not allow."""


class RemoteProtocolError(ProtocolError):
    """The server sent bytes that break RFB (or exceed our caps)."""


class NotRfbError(RemoteProtocolError):
    """The server spoke first, but not RFB; `first_bytes` keeps what it said."""

    def __init__(self, message: str, first_bytes: bytes = b"") -> None:
        super().__init__(message)
        self.first_bytes = first_bytes


class LimitExceededError(RemoteProtocolError):
    """A length or count announced by the server is above our configured cap."""


class NetworkError(VncAuditError):
    """Connecting, reading or writing failed at the socket level."""

