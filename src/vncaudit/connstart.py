"""The early start of a connect scan: its first connection, admitted by the connection ledger's
rule and recorded as an intent, then started, before the rest of the program loads.

Owns: `start` (for a plan the launcher read from the command line, `synstart.EarlyPlan` in
"connect" mode: draw the walk's seed, take the walk's first pair, open the store the scan will
use (`store.schema.connect`: the same pragmas and migrations as `Store.open`), admit the pair
there with `admission.admit_first` (the intent is committed before anything is sent), then one
non-blocking connect), and the hand-off: `started` (the seed the scan record must use),
`claim_grant` (the scan's `Ledger` takes the grant over: it settles, or charges, its intent as
its own) and `claim_socket` (the connect sweep takes the connection in progress, only once the
ledger has its grant).

Declines (nothing written, nothing sent; the program then runs as it would without it): a
store in memory or in a directory that does not exist, a store another process is writing, a
schema that is not this version's, anything the first-grant rule cannot decide (a row for the
server, an unsettled intent of any process: `vncaudit.admission`), no route to the pair.
A process that stops between the admission and the hand-off leaves its intent, which the next
ledger charges as a connection (it may have been made); Ctrl-C before the connect was tried
removes it.

Imports the standard library's `os`, `socket`, `sqlite3`, `time` and the package's
`admission`, `store.schema` and `synstart` (for the walk) only: it runs before typer, asyncio,
dataclasses and the `Store`. Must not: connect to anything but the walk's first pair, connect
without the ledger's grant committed first, or decide whether a command line may start early
(the launcher, `cli.launch`, does).
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time

from vncaudit import admission
from vncaudit.synstart import MAX_COUNT, EarlyPlan, first_pairs

TYPE_CHECKING = False
if TYPE_CHECKING:
    from vncaudit.admission import FirstGrant


class EarlyConnect:
    """What `start` did: the walk's seed, the pair (address, port) and the grant its connect
    was admitted by, the store file, the socket (non-blocking, connecting), what `connect_ex`
    returned, and when the attempt began (`time.monotonic()`, before the socket existed)."""

    __slots__ = ("plan", "seed", "host", "port", "grant", "db", "sock", "code", "started")

    def __init__(self, plan: EarlyPlan, seed: int, host: str, port: int, grant: FirstGrant,
                 db: str, sock: socket.socket, code: int, started: float) -> None:
        self.plan = plan
        self.seed = seed
        self.host = host
        self.port = port
        self.grant = grant
        self.db = db
        self.sock = sock
        self.code = code
        self.started = started


_started: EarlyConnect | None = None
_granted = False  # the grant was taken over by a ledger: the socket may be handed on


def started() -> EarlyConnect | None:
    """The early start of this process, if one was made."""
    return _started


def claim_grant(db: str | None) -> FirstGrant | None:
    """The early connect's grant, for the one ledger of the store file `db` (the early start's
    own file: `os.path.samefile`) that takes it over; None otherwise, or once taken."""
    global _granted
    early = _started
    if early is None or _granted or db is None:
        return None
    try:
        if not os.path.samefile(early.db, db):
            return None
    except OSError:
        return None
    _granted = True
    return early.grant


def claim_socket(host: str, port: int) -> EarlyConnect | None:
    """The early connect to (host, port), for the connect sweep that meets that pair first,
    once its grant is a ledger's (`claim_grant`); the socket is then the sweep's to close."""
    global _started
    early = _started
    if early is None or not _granted or (early.host, early.port) != (host, port):
        return None
    _started = None
    return early


def start(plan: EarlyPlan) -> EarlyConnect | None:
    """Admit the walk's first pair and start its connect now; None (nothing written, nothing
    sent) when the plan, the store or the first-grant rule says no (the module's docstring)."""
    global _started
    if _started is not None or plan.mode != "connect" or not 0 < plan.count <= MAX_COUNT:
        return None
    from vncaudit.store import schema

    db = plan.db if plan.db is not None else schema.default_db_file(os.environ)
    if db == ":memory:" or not os.path.isdir(os.path.dirname(db) or "."):
        return None
    # 64 bits from os.urandom, as the target space draws its seed.
    seed = int.from_bytes(os.urandom(8), "big")
    pair = first_pairs(plan, seed, 1)[0]
    host, port = socket.inet_ntoa((pair >> 16).to_bytes(4, "big")), pair & 0xFFFF
    src = admission.ipv4_source(host)
    if not src:
        return None
    try:
        # No wait for another writer's lock: a busy store is the ledger's to wait for.
        conn, _ = schema.connect(db, timeout=0)
    except Exception:  # sqlite3.Error, or a schema newer than this code (StoreError)
        return None
    try:
        grant = admission.admit_first(conn, (src, host, port), schema.DB_VERSION)
    except sqlite3.Error:  # another writer holds the lock: nothing was written
        conn.close()
        return None
    except BaseException:
        conn.close()
        raise
    if grant is None:
        conn.close()
        return None
    tried = False
    try:
        began = time.monotonic()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        tried = True
        code = sock.connect_ex((host, port))
    except BaseException:
        if not tried:  # certainly no connection: the grant goes back
            admission.withdraw(grant)
        raise
    _started = EarlyConnect(plan, seed, host, port, grant, db, sock, code, began)
    return _started
