"""What changed between two scans: services that appeared, disappeared or changed.

Owns: `Change`, `ServiceDiff`, `ScanDiff`, `compare_results` (the facts that matter between two
results of one service), `diff_key` (those facts as one string, stored with each result so
equal services are never decoded) and `diff_scans` (the diff of two scans from their keys).

Must not: read or write the database (the store hands in what it read), probe, grade or print.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from typing import TYPE_CHECKING, Any, Final, Literal

if TYPE_CHECKING:
    from vncaudit.models import ServiceResult

__all__ = ["Change", "ScanDiff", "ServiceDiff", "address", "compare_results", "diff_key",
           "diff_scans", "host_sort_key", "summary"]


@dataclass(frozen=True)
class Change:
    """One difference for one service: `kind` is a stable id, `text` a human phrase."""

    kind: str  # appeared, disappeared, state, security_type_added, newly_no_auth, …
    field: str  # the result field it concerns ("state", "rfb.security_types", …)
    before: Any
    after: Any
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "field": self.field,
            "before": self.before,
            "after": self.after,
            "text": self.text,
        }


@dataclass(frozen=True)
class ServiceDiff:
    """How one (host, port) differs between two scans."""

    host: str
    port: int
    status: Literal["appeared", "disappeared", "changed"]
    before: ServiceResult | None
    after: ServiceResult | None
    changes: tuple[Change, ...]

    @property
    def address(self) -> str:
        return address(self.host, self.port)

    def lines(self) -> list[str]:
        """Human lines: ``+`` appeared, ``-`` disappeared, ``~`` changed."""
        mark = {"appeared": "+", "disappeared": "-", "changed": "~"}[self.status]
        return [f"{mark} {self.address} {c.text}" for c in self.changes]

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "status": self.status,
            "changes": [c.to_dict() for c in self.changes],
        }


@dataclass(frozen=True)
class ScanDiff:
    """Services that appeared, disappeared or changed from scan `scan_a` to scan `scan_b`.

    `not_rescanned` lists services of A whose (host, port) B never probed (B was interrupted
    or had other targets): they are not called "disappeared".
    """

    scan_a: str
    scan_b: str
    appeared: tuple[ServiceDiff, ...] = ()
    disappeared: tuple[ServiceDiff, ...] = ()
    changed: tuple[ServiceDiff, ...] = ()
    not_rescanned: tuple[tuple[str, int], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.appeared or self.disappeared or self.changed)

    @property
    def to_tell(self) -> bool:
        """Anything to say: a change, or services of A that B never probed. "No change" is
        true only without either (two scans of one host on other ports compare nothing)."""
        return bool(self) or bool(self.not_rescanned)

    def lines(self) -> list[str]:
        out: list[str] = []
        for group in (self.appeared, self.disappeared, self.changed):
            for item in group:
                out.extend(item.lines())
        if self.not_rescanned:
            shown = ", ".join(address(h, p) for h, p in self.not_rescanned[:3])
            more = len(self.not_rescanned) - 3
            out.append(
                f"? not probed by {self.scan_b}: {shown}"
                + (f" and {more} more" if more > 0 else "")
                + f" (found by {self.scan_a}; nothing to compare)"
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "scan_a": self.scan_a,
            "scan_b": self.scan_b,
            "appeared": [d.to_dict() for d in self.appeared],
            "disappeared": [d.to_dict() for d in self.disappeared],
            "changed": [d.to_dict() for d in self.changed],
            "not_rescanned": [{"host": h, "port": p} for h, p in self.not_rescanned],
        }


def address(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def host_sort_key(host: str, port: int) -> tuple[int, int, str, int]:
    """Addresses in numeric order (IPv4 before IPv6), then names; then the port."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return (99, 0, host, port)
    return (ip.version, int(ip), "", port)


# ---------------------------------------------------------------------------------------------
# Two scans

ServiceKeys = Mapping[tuple[str, int], tuple[str, int]]
"""(host, port) → (diff_key, row id) of one scan's services, as the store reads them."""


def diff_scans(
    scan_a: str,
    scan_b: str,
    before: ServiceKeys,
    after: ServiceKeys,
    done_a: Mapping[tuple[str, int], str],
    done_b: Mapping[tuple[str, int], str],
    load: Callable[[int], ServiceResult],
) -> ScanDiff:
    """What changed from scan A (older) to scan B (newer), given each scan's service keys and
    the state of every pair each one probed (`done_*`). `load` decodes one stored result by
    row id; it is called only for the services whose keys differ."""
    appeared: list[ServiceDiff] = []
    disappeared: list[ServiceDiff] = []
    changed: list[ServiceDiff] = []
    not_rescanned: list[tuple[str, int]] = []
    differ = {k for k in before.keys() | after.keys()
              if before.get(k, ("", 0))[0] != after.get(k, ("", 0))[0]}
    for key in sorted(differ, key=lambda k: host_sort_key(*k)):
        ka, kb = before.get(key), after.get(key)
        if ka is None and kb is not None:
            b = load(kb[1])
            note = "" if key in done_a else f" (not probed by {scan_a})"
            change = Change("appeared", "service", done_a.get(key), b.state.value,
                            f"appeared: {summary(b)}{note}")
            appeared.append(ServiceDiff(*key, "appeared", None, b, (change,)))
        elif kb is None and ka is not None:
            now_state = done_b.get(key)
            if now_state is None:
                not_rescanned.append(key)
                continue
            a = load(ka[1])
            change = Change("disappeared", "service", a.state.value, now_state,
                            f"disappeared (now {now_state}; was {summary(a)})")
            disappeared.append(ServiceDiff(*key, "disappeared", a, None, (change,)))
        elif ka is not None and kb is not None:
            a, b = load(ka[1]), load(kb[1])
            changes = compare_results(a, b)
            if changes:
                changed.append(ServiceDiff(*key, "changed", a, b, changes))
    return ScanDiff(scan_a, scan_b, tuple(appeared), tuple(disappeared), tuple(changed),
                    tuple(not_rescanned))


# ---------------------------------------------------------------------------------------------
# Two results of the same (host, port)

_LITERAL: Final = {True: "true", False: "false", None: "null"}


def diff_key(r: ServiceResult) -> str:
    """The facts `compare_results` looks at, as one string stored with each result: equal keys
    mean "no change", so a diff decodes only the services that differ.

    The text is the compact JSON (separators "," and ":", ASCII only, as the store writes) of
    [state, sorted security type ids, sorted VeNCrypt sub-type ids, auth_required, product
    text, sorted "finding-id severity"]; keys are compared across scans, so it never changes.
    Written piece by piece: a JSON encoder builds itself anew on each call, and every stored
    result has a key."""
    rfb = r.rfb
    quoted = encode_basestring_ascii
    number = int.__repr__  # as json writes an int
    if rfb is not None:
        types = ",".join(map(number, sorted(t.id for t in rfb.security_types)))
        sub = ",".join(map(number, sorted(s.id for s in rfb.vencrypt.subtypes))) \
            if rfb.vencrypt else ""
        auth = rfb.auth_required
    else:
        types = sub = ""
        auth = None
    findings = ",".join(map(quoted, sorted(f"{f.id} {f.severity.value}" for f in r.findings)))
    return (f"[{quoted(r.state.value)},[{types}],[{sub}],{_LITERAL[auth]},"
            f"{quoted(product_text(r))},[{findings}]]")


def _types_text(types: dict[int, str]) -> str:
    return ", ".join(f"{i} ({n})" for i, n in sorted(types.items())) or "none"


def summary(r: ServiceResult) -> str:
    """One short phrase for a service: state, no auth, types, product, worst severity."""
    parts = [r.state.value]
    if r.rfb is not None:
        if r.rfb.auth_required is False:
            parts.append("no auth")
        if r.rfb.security_types:
            parts.append("types " + ",".join(str(t.id) for t in r.rfb.security_types))
    if r.product is not None and r.product.name != "unknown":
        parts.append(product_text(r))
    worst = r.worst_severity
    if worst is not None:
        parts.append(f"worst {worst.value}")
    return ", ".join(parts)


def product_text(r: ServiceResult) -> str:
    """``name version`` of the identified product, or "unknown"."""
    if r.product is None:
        return "unknown"
    return f"{r.product.name} {r.product.version}" if r.product.version else r.product.name


def _set_changes(
    kind: str, field_name: str, label: str, a: dict[int, str], b: dict[int, str]
) -> list[Change]:
    out: list[Change] = []
    added = {i: b[i] for i in b.keys() - a.keys()}
    removed = {i: a[i] for i in a.keys() - b.keys()}
    if added:
        word = label if len(added) == 1 else label + "s"
        out.append(Change(f"{kind}_added", field_name, sorted(a), sorted(b),
                          f"new {word} {_types_text(added)}"))
    if removed:
        word = label if len(removed) == 1 else label + "s"
        out.append(Change(f"{kind}_removed", field_name, sorted(a), sorted(b),
                          f"{word} no longer offered: {_types_text(removed)}"))
    return out


def compare_results(a: ServiceResult, b: ServiceResult) -> tuple[Change, ...]:
    """The differences that matter between two results of one service, older `a` first:
    state, security types, VeNCrypt sub-types, auth_required, product, worst severity and
    findings."""
    out: list[Change] = []
    if a.state != b.state:
        out.append(Change("state", "state", a.state.value, b.state.value,
                          f"state {a.state.value} → {b.state.value}"))
    ra, rb = a.rfb, b.rfb
    types_a = {t.id: t.name for t in ra.security_types} if ra else {}
    types_b = {t.id: t.name for t in rb.security_types} if rb else {}
    out += _set_changes("security_type", "rfb.security_types", "security type", types_a, types_b)
    ven_a = {t.id: t.name for t in ra.vencrypt.subtypes} if ra and ra.vencrypt else {}
    ven_b = {t.id: t.name for t in rb.vencrypt.subtypes} if rb and rb.vencrypt else {}
    out += _set_changes("vencrypt_subtype", "rfb.vencrypt.subtypes", "VeNCrypt sub-type",
                        ven_a, ven_b)
    out += _auth_changes(ra.auth_required if ra else None, rb.auth_required if rb else None)
    prod_a, prod_b = product_text(a), product_text(b)
    if prod_a != prod_b:
        out.append(Change("product", "product", prod_a, prod_b, f"product {prod_a} → {prod_b}"))
    worst_a, worst_b = a.worst_severity, b.worst_severity
    if worst_a != worst_b:
        rank_a = worst_a.rank if worst_a else -1
        rank_b = worst_b.rank if worst_b else -1
        direction = "worse" if rank_b > rank_a else "better"
        va = worst_a.value if worst_a else None
        vb = worst_b.value if worst_b else None
        out.append(Change(f"severity_{direction}", "findings", va, vb,
                          f"worst severity {va or 'none'} → {vb or 'none'} ({direction})"))
    ids_a = {f.id: f for f in a.findings}
    ids_b = {f.id: f for f in b.findings}
    for fid in sorted(ids_b.keys() - ids_a.keys()):
        f = ids_b[fid]
        out.append(Change("finding_added", "findings", None, fid,
                          f"new finding {fid} ({f.severity.value}): {f.title}"))
    for fid in sorted(ids_a.keys() - ids_b.keys()):
        f = ids_a[fid]
        out.append(Change("finding_removed", "findings", fid, None,
                          f"finding {fid} ({f.severity.value}) gone: {f.title}"))
    return tuple(out)


def _auth_changes(auth_a: bool | None, auth_b: bool | None) -> list[Change]:
    if auth_a == auth_b:
        return []
    if auth_b is False:
        kind, text = "newly_no_auth", "newly no-auth: a connection needs no password"
    elif auth_b is True and auth_a is False:
        kind, text = "auth_now_required", "now requires authentication (was no-auth)"
    else:
        kind = "auth_required"
        text = f"auth_required {_tri(auth_a)} → {_tri(auth_b)}"
    return [Change(kind, "rfb.auth_required", auth_a, auth_b, text)]


def _tri(value: bool | None) -> str:
    return "unknown" if value is None else ("yes" if value else "no")
