"""The fix guide: what to type to fix each finding, filled with the real host and port.

Owns: reading `data/remedies.toml` (one entry per remediation id that `assess` puts in
`Finding.remediation`), choosing the steps that fit a product, filling their placeholders, and
refusing any host or trusted-network value that is not a plain IP address, network or host name
(the commands are meant to be pasted into a root shell, so nothing else may reach them).
Must not: do I/O beyond reading its data file once, run any command (that is `harden`), or
import anything of the package but `models` and `exceptions`.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from vncaudit.exceptions import UsageError
from vncaudit.models import ServiceResult

log = logging.getLogger(__name__)

TRUSTED_PLACEHOLDER = "<trusted-cidr>"
DISPLAY_PLACEHOLDER = "<display>"
HOST_PLACEHOLDER = "<host>"
# Fill-in markers a reader must replace before running a command (harden --apply refuses them).
PLACEHOLDERS = (TRUSTED_PLACEHOLDER, DISPLAY_PLACEHOLDER, HOST_PLACEHOLDER, "<vm-name>",
                "<vnc-server>")

_FIELDS = frozenset({"host", "port", "trusted", "display", "ip_family", "iptables"})
_FIELD_RE = re.compile(r"\{([A-Za-z_]+)\}")
_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
# An IPv6 zone id (fe80::1%eth0) is an interface name: keep it to characters a shell ignores.
_ZONE_RE = re.compile(r"[A-Za-z0-9_.-]{1,32}")


class UnsafeValueError(UsageError, ValueError):
    """A host, trusted network or port that cannot go into a shell command as it is."""


@dataclass(frozen=True)
class FixStep:
    """One thing to do: where it applies, what it does, and the exact commands."""

    platform: str  # "ufw" | "iptables" | "nftables" | "windows" | "macos" | "tigervnc" | ...
    text: str  # one sentence: what this step does
    commands: tuple[str, ...] = ()  # exact commands/config lines, filled with real host/port

    def to_dict(self) -> dict[str, Any]:
        return {"platform": self.platform, "text": self.text, "commands": list(self.commands)}


@dataclass(frozen=True)
class ProductSteps:
    """The steps of one product that the service may be (its product was not identified)."""

    product: str
    steps: tuple[FixStep, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"product": self.product, "steps": [s.to_dict() for s in self.steps]}


@dataclass(frozen=True)
class Remedy:
    """A remediation id with its title and the steps that fit the service.

    `steps` apply as they are. When the product is unknown, `by_product` holds the steps of each
    candidate product apart, for a reader to open the one that fits (folded in every view)."""

    id: str
    title: str
    steps: tuple[FixStep, ...]
    by_product: tuple[ProductSteps, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "title": self.title,
                             "steps": [s.to_dict() for s in self.steps]}
        if self.by_product:
            d["by_product"] = [p.to_dict() for p in self.by_product]
        return d


@dataclass(frozen=True)
class _Template:
    platform: str
    text: str
    commands: tuple[str, ...]
    products: frozenset[str]  # casefolded product families; empty = any product
    fallback: bool
    names: tuple[str, ...] = ()  # the product names as written (for headings)


@dataclass(frozen=True)
class _Entry:
    title: str
    steps: tuple[_Template, ...]


@cache
def _guide() -> dict[str, _Entry]:
    text = resources.files("vncaudit").joinpath("data/remedies.toml").read_text("utf-8")
    return parse_guide(tomllib.loads(text))


def parse_guide(doc: dict[str, Any]) -> dict[str, _Entry]:
    """Check the data file's shape once, so a typo fails on load, not in a user's report."""
    guide: dict[str, _Entry] = {}
    for rid, entry in doc.items():
        steps = []
        for raw in entry["steps"]:
            template = _Template(
                platform=str(raw["platform"]),
                text=str(raw["text"]),
                commands=tuple(str(c) for c in raw.get("commands", ())),
                products=frozenset(str(p).casefold() for p in raw.get("products", ())),
                fallback=bool(raw.get("fallback", False)),
                names=tuple(str(p) for p in raw.get("products", ())),
            )
            for piece in (template.text, *template.commands):
                unknown = set(_FIELD_RE.findall(piece)) - _FIELDS
                if unknown:
                    raise ValueError(f"remedies.toml [{rid}]: unknown placeholder "
                                     f"{sorted(unknown)} in {piece!r}")
            steps.append(template)
        guide[rid] = _Entry(str(entry["title"]), tuple(steps))
    return guide


REMEDY_IDS: tuple[str, ...] = tuple(_guide())


def check_host(host: str) -> str:
    """`host` if it is a plain IP address or host name; UnsafeValueError otherwise."""
    if not isinstance(host, str) or not host:
        raise UnsafeValueError(f"not a host: {host!r}")
    if _is_ip(host) or _is_hostname(host):
        return host
    raise UnsafeValueError(f"not a plain IP address or host name: {host!r}")


def check_trusted(trusted: str) -> str:
    """`trusted` if it is an IP address, a network (CIDR) or a host name."""
    if not isinstance(trusted, str) or not trusted:
        raise UnsafeValueError(f"not a trusted network: {trusted!r}")
    if "/" in trusted:
        address, _, prefix = trusted.partition("/")
        if prefix.isdigit() and prefix.isascii() and "%" not in address:
            try:
                ipaddress.ip_network(trusted, strict=False)
            except ValueError:
                pass
            else:
                return trusted
        raise UnsafeValueError(f"not a network in CIDR notation: {trusted!r}")
    if _is_ip(trusted) or _is_hostname(trusted):
        return trusted
    raise UnsafeValueError(f"not a plain IP address, CIDR network or host name: {trusted!r}")


def _is_ip(text: str) -> bool:
    address, sep, zone = text.partition("%")
    if sep and not _ZONE_RE.fullmatch(zone):
        return False
    if not re.fullmatch(r"[0-9A-Fa-f.:]+", address):
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return not sep or ip.version == 6


def _is_hostname(text: str) -> bool:
    name = text[:-1] if text.endswith(".") else text
    if not name or len(name) > 253:
        return False
    labels = name.split(".")
    # All-numeric names are malformed addresses (999.1.1.1), not host names.
    if all(label.isdigit() for label in labels):
        return False
    return all(_LABEL_RE.fullmatch(label) for label in labels)


def _check_port(port: int) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise UnsafeValueError(f"not a TCP port: {port!r}")
    return port


def _is_ipv6(value: str) -> bool:
    try:
        return ipaddress.ip_network(value.partition("%")[0], strict=False).version == 6
    except ValueError:
        return False


def _fill(template: str, values: dict[str, str]) -> str:
    return _FIELD_RE.sub(lambda m: values[m.group(1)], template)


def _display(port: int, display: int | None) -> str:
    if display is not None:
        if not 0 <= display <= 65535:
            raise UnsafeValueError(f"display number {display} is out of range")
        return str(display)
    # Only the classic range maps port to display; 15977 is not display 10077.
    return str(port - 5900) if 5900 <= port <= 5999 else DISPLAY_PLACEHOLDER


def remedy(
    remedy_id: str,
    *,
    host: str,
    port: int,
    product: str | None = None,
    trusted: str | None = None,
    display: int | None = None,
    candidates: Sequence[str] | None = None,
) -> Remedy:
    """The fix `remedy_id` for `host`:`port`, its commands filled in.

    With a known `product` (a fingerprint family such as "TigerVNC") only that product's
    steps are kept, plus the steps for any product. With None or "unknown", `steps` are the
    steps for any product (and the generic fallback), and each product's own steps go to
    `by_product`: those of the `candidates` the fingerprint named, or of every product when
    it named none. `trusted` is the network allowed to keep access (firewall-allowlist);
    without it the commands carry the placeholder `<trusted-cidr>`. Raises KeyError for an
    unknown id and UnsafeValueError for a host, trusted value or port that is not plain.
    `display` is the X display number when the caller knows it (a local listener's command
    line); otherwise it is port - 5900 for the ports 5900-5999, and a placeholder for any
    other port.
    """
    entry = _guide()[remedy_id]
    values = {
        "host": check_host(host),
        "port": str(_check_port(port)),
        "trusted": check_trusted(trusted) if trusted is not None else TRUSTED_PLACEHOLDER,
        "display": _display(port, display),
    }
    v6 = trusted is not None and _is_ipv6(trusted)
    values["ip_family"] = "ip6" if v6 else "ip"
    values["iptables"] = "ip6tables" if v6 else "iptables"
    def filled(chosen: Iterable[_Template]) -> tuple[FixStep, ...]:
        return tuple(FixStep(t.platform, _fill(t.text, values),
                             tuple(_fill(c, values) for c in t.commands)) for t in chosen)

    wanted = (product or "").strip().casefold()
    if wanted and wanted != "unknown":
        return Remedy(remedy_id, entry.title, filled(_select(entry.steps, wanted)))
    general = [t for t in entry.steps if not t.products]
    groups: dict[str, list[_Template]] = {}
    for t in entry.steps:
        for name in t.names:
            groups.setdefault(name, []).append(t)
    if candidates:
        wanted_names = {c.casefold() for c in candidates}
        groups = {n: ts for n, ts in groups.items() if n.casefold() in wanted_names}
    by_product = tuple(ProductSteps(name, filled(ts)) for name, ts in groups.items())
    return Remedy(remedy_id, entry.title, filled(general), by_product)


def _select(templates: tuple[_Template, ...], wanted: str) -> list[_Template]:
    specific = [t for t in templates if wanted in t.products]
    keep = [t for t in templates
            if (not t.products and not t.fallback) or wanted in t.products
            or (t.fallback and not specific)]
    return keep


def candidate_products(evidence: Iterable[str]) -> tuple[str, ...]:
    """The product names an "unknown" identification lists as its candidates (the fingerprint's
    "...; candidates: TigerVNC (score 0.75), QEMU (score 0.75)"), in its order."""
    for line in evidence:
        _, found, rest = line.partition("candidates: ")
        if found:
            return tuple(m.group(1) for m in _CANDIDATE_RE.finditer(rest))
    return ()


_CANDIDATE_RE = re.compile(r"(?:^|, )(.+?) \(score [0-9.]+\)")


def remedies_for(result: ServiceResult, *, trusted: str | None = None) -> list[Remedy]:
    """Every remediation of the result's findings, worst finding first, each id once, filled
    with the result's host, port and product."""
    ids: list[str] = []
    for finding in sorted(result.findings, key=lambda f: -f.severity.rank):
        for rid in finding.remediation:
            if rid not in ids:
                ids.append(rid)
    product = result.product.name if result.product is not None else None
    candidates = (candidate_products(result.product.evidence)
                  if result.product is not None and result.product.name == "unknown" else ())
    try:
        host = check_host(result.host)
    except UnsafeValueError:
        log.warning("remedies for %r: host is not plain, commands keep %s",
                    result.host, HOST_PLACEHOLDER)
        host = None
    out: list[Remedy] = []
    for rid in ids:
        if rid not in _guide():
            log.warning("finding on %s:%s names remediation %r, which the fix guide lacks",
                        result.host, result.port, rid)
            continue
        fixed = remedy(rid, host=host or "placeholder.invalid", port=result.port,
                       product=product, trusted=trusted, candidates=candidates)
        if host is None:
            fixed = _replace_host(fixed, "placeholder.invalid")
        out.append(fixed)
    return out


def _replace_host(fixed: Remedy, stand_in: str) -> Remedy:
    def swap(text: str) -> str:
        return text.replace(stand_in, HOST_PLACEHOLDER)

    def swapped(steps: tuple[FixStep, ...]) -> tuple[FixStep, ...]:
        return tuple(FixStep(s.platform, swap(s.text), tuple(swap(c) for c in s.commands))
                     for s in steps)

    return Remedy(fixed.id, fixed.title, swapped(fixed.steps),
                  tuple(ProductSteps(p.product, swapped(p.steps)) for p in fixed.by_product))
