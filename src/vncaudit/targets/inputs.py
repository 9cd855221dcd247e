"""Input files: `-iL` lists (or stdin), nmap XML and masscan output.

Owns: reading the files the user named, line by line or in chunks, as `(location, expression)`
pairs (`expression_sources`, `_list_file`) or as `_Host`s with their open TCP ports
(`read_nmap_xml`, `read_masscan` for -oJ, -oD, -oL and -oX); refusing XML with a DTD or
entities.

Must not: read any file the user did not name, load a whole file when it can be streamed (the
masscan JSON fallback aside), expand an XML entity, or import anything of the package but
`exceptions`. Every read or format error is a one-line `UsageError` naming file and line.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Final, NoReturn

from vncaudit.exceptions import UsageError
from vncaudit.targets.errors import fail, quote
from vncaudit.targets.expressions import hostname_or_none
from vncaudit.targets.ports import PORT_NUMBER

if TYPE_CHECKING:
    from xml.parsers import expat

PathLike = str | Path

def _open_text(path: PathLike) -> IO[str]:
    if str(path) == "-":
        return sys.stdin
    try:
        return open(path, encoding="utf-8")  # closed by the caller
    except OSError as exc:
        raise fail(f"cannot read {path}: {exc.strerror or exc}") from None


MAX_LINE: Final = 65536  # characters; a target list's line is never near this long


class _LongLine(UsageError):
    """A line longer than MAX_LINE: the file is not line-oriented text."""


def _lines(path: PathLike) -> Iterator[tuple[int, str]]:
    """(line number, text) of a text file, as UsageErrors on read or decode failure.

    Lines are read with a bound: a file without line breaks (a disk image, /dev/zero, a
    minified JSON document given to -iL) is refused, never loaded whole into memory."""
    stream = _open_text(path)
    try:
        lineno = 0
        while line := stream.readline(MAX_LINE + 1):
            lineno += 1
            if len(line) > MAX_LINE:
                raise _LongLine(str(fail(f"{path}:{lineno}: line longer than {MAX_LINE} "
                                         "characters; not a text list of targets")))
            yield lineno, line
    except OSError as exc:
        raise fail(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise fail(f"cannot read {path}: not UTF-8 text") from None
    finally:
        if stream is not sys.stdin:
            stream.close()


def _list_file(path: PathLike) -> Iterator[tuple[str, str]]:
    """("path:line: ", expression) for every expression of an -iL style file: several per line
    (whitespace-separated), `#` starts a comment, blank lines are skipped."""
    for lineno, line in _lines(path):
        for expr in line.split("#", 1)[0].split():
            yield f"{path}:{lineno}: ", expr


def expression_sources(
    expressions: Iterable[str], paths: Sequence[PathLike]
) -> Iterator[tuple[str, str]]:
    """(location, expression): location is "" for an argument, "path:line: " for a file."""
    for expr in expressions:
        yield "", expr
    for path in paths:
        yield from _list_file(path)

@dataclass
class _Host:
    """One host read from nmap or masscan output."""

    addr: str
    ports: list[int] | None  # None: no port information, scan the -p ports
    hostname: str | None = None


def read_nmap_xml(path: PathLike) -> Iterator[_Host]:
    """Hosts that are up (or have no status, as in masscan -oX) and their open TCP ports.

    Parsed with expat, streamed in chunks. A bare `<!DOCTYPE nmaprun>` (nmap writes one) is
    accepted; any DTD with an internal subset or external id, and any entity declaration, is
    refused, so no entity is ever expanded or fetched.
    """
    from xml.parsers import expat  # only with --nmap-xml/--masscan, not on every scan

    reader = _NmapXmlReader(path)
    parser = reader.parser()
    try:
        stream = open(path, "rb")
    except OSError as exc:
        raise fail(f"cannot read {path}: {exc.strerror or exc}") from None
    with stream:
        while True:
            try:
                chunk = stream.read(1 << 16)
                parser.Parse(chunk, not chunk)
            except expat.ExpatError as exc:
                raise fail(f"{path}: not valid nmap XML: {exc}") from None
            except OSError as exc:
                raise fail(f"cannot read {path}: {exc.strerror or exc}") from None
            yield from reader.done
            reader.done.clear()
            if not chunk:
                break
    if reader.root is None:
        raise fail(f"{path}: not nmap XML (empty document)")


class _NmapXmlReader:
    """The expat handlers for nmap XML: `done` collects each finished host that is up, one
    `_Host` per address, until the reader takes them."""

    def __init__(self, path: PathLike) -> None:
        self.path = path
        self.done: list[_Host] = []
        self.root: str | None = None  # the document's root element, once seen
        self.host: _Host | None = None  # the <host> being read
        self.status: str | None = None  # its <status state=...>
        self.addrs: list[str] = []  # its IPv4 and IPv6 addresses
        self.in_port: tuple[str | None, str] | None = None  # (protocol, portid) of a <port>

    def parser(self) -> expat.XMLParserType:
        from xml.parsers import expat

        parser = expat.ParserCreate()
        parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
        parser.StartDoctypeDeclHandler = self.doctype
        parser.EntityDeclHandler = self.refuse
        parser.UnparsedEntityDeclHandler = self.refuse
        parser.ExternalEntityRefHandler = self.refuse
        parser.StartElementHandler = self.start
        parser.EndElementHandler = self.end
        return parser

    def refuse(self, *_: object) -> NoReturn:
        raise fail(f"{self.path}: refusing XML with a DTD or entities (nmap XML needs neither)")

    def doctype(self, _name: str, sysid: str | None, pubid: str | None, subset: int) -> None:
        if sysid or pubid or subset:
            self.refuse()

    def start(self, tag: str, attrs: dict[str, str]) -> None:
        if self.root is None:
            self.root = tag
            if tag != "nmaprun":
                raise fail(f"{self.path}: not nmap XML (root element <{tag[:40]}>)")
        host = self.host
        if tag == "host":
            self.host, self.status = _Host("", None), None
            self.addrs = []
        elif host is None:
            return
        elif tag == "status":
            self.status = attrs.get("state")
        elif tag == "address" and attrs.get("addrtype") in ("ipv4", "ipv6"):
            self.addrs.append(attrs.get("addr", ""))
        elif tag == "hostname" and attrs.get("type") == "user" and host.hostname is None:
            host.hostname = hostname_or_none(attrs.get("name", ""))
        elif tag == "ports":
            host.ports = host.ports or []
        elif tag == "port":
            self.in_port = (attrs.get("protocol"), attrs.get("portid", ""))
        elif tag == "state" and self.in_port is not None:
            proto, portid = self.in_port
            if proto == "tcp" and attrs.get("state") == "open":
                if host.ports is None:
                    host.ports = []
                host.ports.append(_file_port(portid, f"{self.path}: port"))

    def end(self, tag: str) -> None:
        if tag == "port":
            self.in_port = None
        elif tag == "host" and self.host is not None:
            host = self.host
            if self.status in (None, "up"):
                for addr in self.addrs:
                    self.done.append(_Host(addr, host.ports, host.hostname))
            self.host = None


def _file_port(value: object, where: str) -> int:
    if isinstance(value, str) and PORT_NUMBER.fullmatch(value.strip()):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise fail(f"{where} {quote(str(value))} is not a port number 1-65535")
    return value


def read_masscan(path: PathLike) -> Iterator[_Host]:
    """Open TCP ports from masscan -oJ (JSON list), -oD (one object per line), -oL (list
    lines `open tcp 5900 1.2.3.4 1700000000`) or -oX (nmap-style XML) output."""
    first = _first_char(path)
    if first == "<":
        yield from read_nmap_xml(path)
    elif first and first in "[{":
        yield from _read_masscan_json(path)
    else:
        for lineno, line in _lines(path):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            if fields[0] in ("closed", "banner"):
                continue
            if fields[0] != "open" or len(fields) < 4:
                raise fail(f"{path}:{lineno}: not a masscan list line: {quote(line.strip())}")
            if fields[1] == "tcp":
                yield _Host(fields[3], [_file_port(fields[2], f"{path}:{lineno}: port")])


def _first_char(path: PathLike) -> str:
    """The first non-blank character of a file ("" for none), read in bounded chunks."""
    stream = _open_text(path)
    try:
        for _ in range(64):  # at most 4 MiB of leading blanks
            chunk = stream.read(MAX_LINE)
            if not chunk:
                return ""
            text = chunk.lstrip()
            if text:
                return text[0]
        return ""
    except OSError as exc:
        raise fail(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise fail(f"cannot read {path}: not UTF-8 text") from None
    finally:
        if stream is not sys.stdin:
            stream.close()


_MASSCAN_TRAILER = re.compile(r"\{\s*finished\s*:\s*1\s*\}")  # masscan 1.0 ends -oJ so


def _read_masscan_json(path: PathLike) -> Iterator[_Host]:
    # masscan writes one record per line (with "[", "]" and separating commas around them);
    # take that streaming path, and fall back to loading the whole document otherwise.
    try:
        for lineno, line in _lines(path):
            text = line.strip().removeprefix("[").removesuffix("]").strip().strip(",").strip()
            if text and not _MASSCAN_TRAILER.fullmatch(text):
                yield from _masscan_record(json.loads(text), f"{path}:{lineno}")
        return
    except (ValueError, _LongLine):  # not one record per line (JSONDecodeError), or minified
        pass
    try:
        with open(path, encoding="utf-8") as stream:
            document = json.load(stream)
    except OSError as exc:
        raise fail(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise fail(f"{path}: not valid masscan JSON: {exc}") from None
    for i, record in enumerate(document if isinstance(document, list) else [document], 1):
        yield from _masscan_record(record, f"{path}: record {i}")


def _masscan_record(record: object, where: str) -> Iterator[_Host]:
    if not isinstance(record, dict):
        raise fail(f"{where}: masscan record is not a JSON object")
    if "ip" not in record:
        return  # e.g. the {"finished": 1} trailer of old masscan versions
    ip = record["ip"]
    entries = record.get("ports", [record])
    if not isinstance(ip, str) or not isinstance(entries, list):
        raise fail(f"{where}: masscan record needs a string 'ip' and a 'ports' list")
    for entry in entries:
        if not isinstance(entry, dict):
            raise fail(f"{where}: masscan port entry is not a JSON object")
        data = entry.get("data")
        status = entry.get("status", data.get("status") if isinstance(data, dict) else None)
        if entry.get("proto", "tcp") == "tcp" and status in (None, "open"):
            yield _Host(ip, [_file_port(entry.get("port"), f"{where}: port")])
