"""The plain types a scan needs before its first packet: `Target`, `State` with
`SILENT_STATES`, `Severity`, `SCHEMA_VERSION`, and `CONNECT_CUT` with `connect_cut`.

Owns: these names; `vncaudit.models` re-exports each (the same objects), so either import
gives the same class. They live apart from the result types so that the sweep, the store and
the connection ledger can be imported, and the first packet sent, without building the result
dataclasses (`models`' and `payloads`' ~30 frozen dataclasses, each compiled at import): those
come with the first answer. Must not: import anything of the package, do I/O, or grow result
types (those belong in `models` and `payloads`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

SCHEMA_VERSION = 1


class State(StrEnum):
    """What one (host, port) turned out to be. A closed set, like zgrab2's statuses."""

    VNC = "vnc"
    BLACKLISTED = "blacklisted"  # an RFB server that refused us with a lockout reason
    OPEN_NOT_VNC = "open-not-vnc"  # connected, spoke first, but not RFB
    TARPIT = "tarpit"  # connected, never sent a banner before the deadline
    MALFORMED = "malformed"  # started like RFB, then broke the protocol
    FILTERED = "filtered"  # no answer to the connection attempt
    CLOSED = "closed"  # actively refused (RST)
    # Not connected to: the connection ledger kept the connection that would make the server
    # refuse our address, and nothing was read from it before (extra.budget says why, and
    # whether a half-open SYN found the port open).
    NOT_PROBED = "not-probed"


SILENT_STATES: frozenset[State] = frozenset({State.CLOSED, State.FILTERED})
"""Nothing answered but the TCP stack (refused, or no answer at all): no facts to grade, not
a "service". Reports leave these out by default, and the store keeps only their verdict."""


CONNECT_CUT = "the connection attempt had not finished at the deadline"
"""The error of a `FILTERED` result whose own connect the deadline ended. The kernel may have
completed that handshake while the event loop was busy, and a server counts an accepted
connection whether or not we saw it: the connection ledger charges such a result as a
connection, the safe side."""


def connect_cut(state: State, error: str | None) -> bool:
    """The deadline ended the connection attempt itself: it may have reached the server."""
    return state is State.FILTERED and error == CONNECT_CUT


class Severity(StrEnum):
    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"
    INFO = "info"

    @property
    def rank(self) -> int:
        """Larger is worse; used for --fail-on and sorting."""
        return _SEVERITY_RANK[self]


_SEVERITY_RANK = {
    Severity.INFO: 0,
    Severity.LOW: 1,
    Severity.MEDIUM: 2,
    Severity.HIGH: 3,
    Severity.CRITICAL: 4,
}


@dataclass(frozen=True)
class Target:
    """One address and port to probe. `hostname` is kept when the user gave a name."""

    host: str
    port: int
    hostname: str | None = None
