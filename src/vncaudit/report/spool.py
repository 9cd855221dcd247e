"""The `-o json` report of a running scan, built as its results arrive.

Owns: `JsonSpool` (each shown service's JSON text, indented as it sits in the report, appended
to an unnamed temporary file the moment the result is handed over; kept in memory: its address
key, where its text is, its findings' severities and its ledger note) and `Tally` (what the
summary line, the status stream's last line and --fail-on need from the same services:
findings per severity, how many are shown, the ledger's notes). At the end the document is
written in address order, a piece at a time: never the whole report, nor the scan's results, in
memory, and no stored row read back and decoded again.

The text is byte for byte `report.render("json", ...)` of the same results (the document with
`json.dumps(indent=2)`'s layout): each service is `dumps_indented` of its `to_dict()`, one level
deeper. Must not: probe, grade or touch the store; decide which results are shown (the caller
adds the shown ones); render any other format.
"""

from __future__ import annotations

import ipaddress
import operator
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, NamedTuple

from vncaudit.basics import SCHEMA_VERSION, Severity
from vncaudit.jsontext import dumps_indented

if TYPE_CHECKING:  # the result types come with the first result, not before the first packet
    from vncaudit.models import ServiceResult
    from vncaudit.payloads import BudgetNote
    from vncaudit.report import ScanMeta

__all__ = ["JsonSpool", "Tally"]

_SERVICES_TAIL = '"services": []\n}'  # how the document ends with no service
_ITEM = "\n    "  # a service's lines inside the document's "services" list
_BUFFER = 1 << 20  # bytes of spooled text held before they go to the file


@dataclass(frozen=True)
class Tally:
    """Counts over the services a report holds: findings per severity (every severity, worst
    first) and the ledger's notes of those that have one."""

    shown: int
    findings: Mapping[Severity, int]
    budget_notes: tuple[BudgetNote, ...]

    def at_or_above(self, threshold: Severity) -> int:
        """Findings at `threshold` or worse."""
        return sum(n for s, n in self.findings.items() if s.rank >= threshold.rank)


class _Entry(NamedTuple):
    key: tuple[int, bytes]
    port: int
    host: str
    offset: int
    length: int
    severities: tuple[Severity, ...]
    note: BudgetNote | None


def _address_key(host: str) -> tuple[int, bytes]:
    # The report's order (`vncaudit results`): names, then addresses numerically, IPv4 first.
    # A dotted quad as ipaddress writes it back (no leading zeros): the same bytes, in a
    # fraction of ipaddress's time.
    parts = host.split(".")
    if len(parts) == 4:
        try:
            octets = bytes(map(int, parts))
        except ValueError:
            pass
        else:
            if ".".join(map(str, octets)) == host:
                return (4, octets)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return (2, host.encode())
    return (ip.version, ip.packed)


class JsonSpool:
    """The services of a `-o json` report, spooled to a temporary file as they come.

    `add` each shown result once it is final (graded, as stored); a second result for a pair
    already added is left out, as the store keeps the first. `write` the document at the end.
    Use as a context manager (or `close`): the file is removed on close."""

    def __init__(self) -> None:
        # Written in large pieces: a service's text is ~3-4 KB, and the default buffer
        # would make a system call of every second one.
        self._file = tempfile.TemporaryFile(buffering=_BUFFER)  # noqa: SIM115 (closed by close())
        self._end = 0
        self._index: list[_Entry] = []  # sorted once, at the end
        self._kept: list[_Entry] | None = None
        self._tally: Tally | None = None

    def add(self, result: ServiceResult, indented: str | None = None) -> None:
        """Add a shown result; `indented`: `dumps_indented(result.to_dict())`, when the caller
        made it already (`jsontext.dumps_both`, with the stored row's text)."""
        if indented is None:
            indented = dumps_indented(result.to_dict())
        text = indented.replace("\n", _ITEM).encode("ascii")
        self._file.write(text)
        self._index.append(_Entry(_address_key(result.host), result.port, result.host,
                                  self._end, len(text),
                                  tuple(f.severity for f in result.findings),
                                  result.extra.budget))
        self._end += len(text)
        self._kept = self._tally = None

    def add_all(self, results: Iterable[ServiceResult]) -> None:
        for result in results:
            self.add(result)

    def __len__(self) -> int:
        return len(self._ordered())

    @property
    def tally(self) -> Tally:
        """The counts over the services the report holds."""
        if self._tally is None:
            entries = self._ordered()
            findings = dict.fromkeys(sorted(Severity, key=lambda s: -s.rank), 0)
            for entry in entries:
                for severity in entry.severities:
                    findings[severity] += 1
            self._tally = Tally(len(entries), findings,
                                tuple(e.note for e in entries if e.note is not None))
        return self._tally

    def write(self, meta: ScanMeta, out: IO[str]) -> None:
        """The whole document, newline-terminated, to `out` (a text stream)."""
        head = dumps_indented({"schema_version": SCHEMA_VERSION, "scan": meta.to_dict(),
                               "services": []})
        assert head.endswith(_SERVICES_TAIL)
        entries = self._ordered()
        if not entries:
            out.write(head + "\n")
            return
        out.write(head[:-len(_SERVICES_TAIL)] + '"services": [' + _ITEM)
        self._file.flush()
        fd = self._file.fileno()
        for i, entry in enumerate(entries):
            if i:
                out.write("," + _ITEM)
            out.write(os.pread(fd, entry.length, entry.offset).decode("ascii"))
        out.write("\n  ]\n}\n")

    def _ordered(self) -> list[_Entry]:
        """Each pair's first text, in the report's order."""
        if self._kept is None:
            # Stable: of two texts for one pair, the first added stays first.
            entries = sorted(self._index, key=operator.itemgetter(0, 1, 2))
            kept: list[_Entry] = []
            for entry in entries:
                if not kept or (entry.host, entry.port) != (kept[-1].host, kept[-1].port):
                    kept.append(entry)
            self._index = self._kept = kept
        return self._kept

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> JsonSpool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
