"""The connection ledger's admission as the early start of a connect scan needs it: the SQL
of an intent, who owns one, our source address for a destination, and the rule that grants a
pair with no history, on the standard library alone (`sqlite3`, `socket`, `os`, `struct`).

Owns: intents' owners (`owner`, `owner_alive`) and pairs text (`pairs_text`, `parse_pairs`),
the intent's SQL (`next_intent_id`, `insert_intent`), this host's interface addresses read
from the kernel (`interface_addresses`, netlink's RTM_GETADDR: what getifaddrs(3) reads) and
the route's source address (`route_source`), and `admit_first`: one pair admitted, in one
write transaction, where the ledger's decision needs neither the blacklist rules nor a row.
`budget.ledger.Ledger` (every other admission, settling, charging) and `budget.sources` use
these same functions, so the early start and the ledger cannot write or decide differently.

The first-grant rule: a pair whose server has no ledger row (from any of our addresses) while
no intent of any process is unsettled has nothing counted and nothing in flight, so the ledger
grants it one connection whatever product it turns out to be: `blacklists.load` refuses an
[unknown] rule that lets fewer than `FIRST_FREE` connections pass. Anything else (a row, an
intent, a schema that is not this version's, a busy store) and `admit_first` declines: the
ledger decides, as it always does.

Must not: import anything beyond the standard library's `os`, `socket`, `sqlite3`, `struct`
and `time` (it runs before typer, asyncio and dataclasses are imported), open a TCP
connection, or grant anything but that first rule.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import struct
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Final

    Key = tuple[str, str, int]  # (our source address, server address, port)

FIRST_FREE: Final = 1  # connections every [unknown] rule lets pass (blacklists.load checks)
LOOPBACK_SOURCE: Final = "127.0.0.1"  # the key of every 127/8 destination

_NEXT_INTENT: Final = "SELECT coalesce(max(id), 0) + 1 FROM budget_intents"
_INSERT_INTENT: Final = ("INSERT INTO budget_intents (id, owner, created, pairs) "
                         "VALUES (?, ?, ?, ?)")


# -- owners ---------------------------------------------------------------------------------


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def start_ticks(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def owner() -> str:
    """host|boot|pid|start|token: enough to tell, on this host, whether the process still
    runs; the token tells two ledgers of one process (web jobs) apart."""
    return "|".join((socket.gethostname(), boot_id(), str(os.getpid()),
                     start_ticks(os.getpid()), os.urandom(4).hex()))


def owner_alive(text: str) -> bool:
    """Whether the process that wrote an intent still runs. An owner on another host, or one
    this host cannot check, counts as alive (its intents keep counting: the safe side)."""
    try:
        host, boot, pid_text, start, _token = text.split("|")
        pid = int(pid_text)
    except ValueError:
        return True
    if host != socket.gethostname() or not boot:
        return True
    if boot != boot_id():
        return False  # this host rebooted since: that process is gone
    if not os.path.exists(f"/proc/{pid}"):
        return not os.path.isdir("/proc/self")  # no procfs: cannot tell
    return not start or start_ticks(pid) == start


# -- intents --------------------------------------------------------------------------------


def pairs_text(counts: Mapping[Key, int]) -> str:
    """An intent's grants as text: "src dst port n" per line (addresses hold no spaces)."""
    return "\n".join(f"{s} {d} {p} {n}" for (s, d, p), n in counts.items())


def parse_pairs(text: str) -> dict[Key, int]:
    out: dict[Key, int] = {}
    for line in text.splitlines():
        try:
            src, dst, port, n = line.split(" ")
            out[(src, dst, int(port))] = out.get((src, dst, int(port)), 0) + int(n)
        except ValueError:
            continue  # a line this version cannot read: the safe side is to skip it
    return out


def next_intent_id(conn: sqlite3.Connection) -> int:
    """The id the next intent takes; the caller holds the write lock, so it is its own."""
    return int(conn.execute(_NEXT_INTENT).fetchone()[0])


def insert_intent(conn: sqlite3.Connection, intent_id: int, by: str, created: float,
                  counts: Mapping[Key, int]) -> None:
    conn.execute(_INSERT_INTENT, (intent_id, by, created, pairs_text(counts)))


# -- our source address -----------------------------------------------------------------------

_RTM_NEWADDR, _RTM_GETADDR = 20, 22
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_IFA_ADDRESS, _IFA_LOCAL = 1, 2


def interface_addresses() -> frozenset[str]:
    """This host's (this network namespace's) interface addresses, IPv4 dotted and IPv6 as
    `inet_ntop` writes them, read from the kernel over netlink as getifaddrs(3) reads them (an
    IPv4 address is the local one where the kernel names both); empty if it cannot tell."""
    found: set[str] = set()
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as nl:
            # nlmsghdr + ifaddrmsg: a dump of every address of every family
            nl.send(struct.pack("=IHHIIBBBBI", 24, _RTM_GETADDR, 0x301, 1, 0,
                                socket.AF_UNSPEC, 0, 0, 0, 0))
            while True:
                data = nl.recv(65536)
                if not data:
                    return frozenset()
                at = 0
                while at + 16 <= len(data):
                    length, kind = struct.unpack_from("=IH", data, at)
                    if length < 16:
                        return frozenset()
                    if kind == _NLMSG_DONE:
                        return frozenset(found)
                    if kind == _NLMSG_ERROR:
                        return frozenset()
                    if kind == _RTM_NEWADDR:
                        _address(data, at, length, found)
                    at += (length + 3) & ~3
    except (OSError, struct.error, ValueError):
        return frozenset()


def _address(data: bytes, at: int, length: int, found: set[str]) -> None:
    family = data[at + 16]
    size = 4 if family == socket.AF_INET else 16 if family == socket.AF_INET6 else 0
    if not size:
        return
    attrs: dict[int, bytes] = {}
    end = at + length
    i = at + 24
    while i + 4 <= end:
        alen, atype = struct.unpack_from("=HH", data, i)
        if alen < 4:
            break
        attrs[atype] = data[i + 4:i + alen]
        i += (alen + 3) & ~3
    raw = attrs.get(_IFA_LOCAL) or attrs.get(_IFA_ADDRESS)
    if raw is not None and len(raw) == size:
        found.add(socket.inet_ntop(family, raw))


def route_source(host: str, family: int = socket.AF_INET) -> str:
    """Our address the kernel's route towards `host` leaves from, asked with a UDP socket's
    connect (which sends nothing); "" when there is no route."""
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as udp:
            udp.connect((host, 9))
            return str(udp.getsockname()[0])
    except OSError:
        return ""


def ipv4_source(host: str, local: frozenset[str] | None = None) -> str:
    """Our address towards a dotted-quad IPv4 `host` as `budget.sources.SourceResolver` keys
    it: 127.0.0.1 for 127/8, the address itself when it is one of ours, else the route's."""
    if host.startswith("127."):
        return LOOPBACK_SOURCE
    if host in (interface_addresses() if local is None else local):
        return host
    return route_source(host)


# -- the early admission ------------------------------------------------------------------------


class FirstGrant:
    """One pair granted by `admit_first`: its key, the intent (id, owner, creation time) that
    holds the grant until the ledger settles it, and the store's connection (kept open until
    the ledger takes the grant over, so that closing it does not checkpoint the store)."""

    __slots__ = ("key", "intent", "owner", "created", "conn")

    def __init__(self, key: Key, intent: int, by: str, created: float,
                 conn: sqlite3.Connection) -> None:
        self.key = key
        self.intent = intent
        self.owner = by
        self.created = created
        self.conn = conn

    def close(self) -> None:
        self.conn.close()


def admit_first(conn: sqlite3.Connection, key: Key, version: int) -> FirstGrant | None:
    """Grant `key` one connection by the first-grant rule (the module's docstring) and record
    the intent, committed before this returns; None (nothing written) when the rule cannot
    decide: the store is not at schema `version`, it has any unsettled intent or a row for
    the server's (address, port), or another process holds its write lock."""
    _, dst, port = key
    if int(conn.execute("PRAGMA user_version").fetchone()[0]) != version:
        return None
    conn.execute("BEGIN IMMEDIATE")
    try:
        if conn.execute("SELECT 1 FROM budget_intents LIMIT 1").fetchone() is not None or \
                conn.execute("SELECT 1 FROM budget_ledger WHERE dst = ? AND port = ? LIMIT 1",
                             (dst, port)).fetchone() is not None:
            conn.execute("ROLLBACK")
            return None
        intent_id = next_intent_id(conn)
        by, created = owner(), time.time()
        insert_intent(conn, intent_id, by, created, {key: 1})
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return FirstGrant(key, intent_id, by, created, conn)


def withdraw(grant: FirstGrant) -> None:
    """Remove a grant whose connection was certainly never tried (its intent deleted, as the
    ledger's `release` settles one), and close its store connection."""
    try:
        grant.conn.execute("DELETE FROM budget_intents WHERE id = ? AND owner = ?",
                           (grant.intent, grant.owner))
    finally:
        grant.close()
