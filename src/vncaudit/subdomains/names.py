"""Validation of the user's domain names and resolver addresses.

Owns: `normalize_domain` (lower-case IDNA, no final dot, not an IP address, URL or bare TLD),
`parse_resolver` ("IP", "IP:PORT", "[IPv6]:PORT"), the label check shared with wordlist
entries (`ascii_labels`), and the one-line `UsageError` helpers `fail` and `quote`.

Must not: resolve anything (a resolver given by name would need another resolver), do any I/O,
or import anything of the package but `exceptions`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re

from vncaudit.exceptions import UsageError

_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")


def fail(message: str) -> UsageError:
    return UsageError(message.replace("\r", " ").replace("\n", " "))


def quote(text: str, limit: int = 80) -> str:
    """repr() of user input, shortened: one line whatever the input held."""
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 4] + "...'"


def ascii_labels(text: str, what: str) -> list[str]:
    """IDNA-encode *text* (lower case, no final dot) and check each label; UsageError if bad."""
    if not text:
        raise fail(f"empty {what}")
    labels = text.split(".")
    out: list[str] = []
    for label in labels:
        if not label:
            raise fail(f"invalid {what} {quote(text)}: empty label")
        try:
            # Python's codec is IDNA 2003, the same as vncaudit.targets uses for host names.
            encoded = label.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise fail(f"invalid {what} {quote(text)}: label {quote(label)}: {exc}") from None
        if len(encoded) > 63:
            raise fail(f"invalid {what} {quote(text)}: label {quote(label)} is longer "
                       "than 63 characters")
        if not _LABEL.fullmatch(encoded):
            raise fail(f"invalid {what} {quote(text)}: label {quote(label)} may hold only "
                       "letters, digits, '-' and '_', and may not start or end with '-'")
        out.append(encoded)
    return out


def normalize_domain(domain: str) -> str:
    """The domain as lower-case ASCII (IDNA) without a final dot; `UsageError` when it is not
    a plausible registered domain or subdomain (an IP address, a URL, a bare top-level
    domain, a bad label, over 253 characters)."""
    text = domain.strip().lower()
    if not text:
        raise fail("empty domain: give a domain name such as example.com")
    if "/" in text or "@" in text or " " in text:
        raise fail(f"invalid domain {quote(domain)}: give a bare domain name such as "
                   "example.com (no scheme, path, user or spaces)")
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(text.strip("[]"))
        raise fail(f"{quote(domain)} is an IP address, not a domain: scan it as a target")
    text = text.removesuffix(".")
    labels = ascii_labels(text, "domain")
    name = ".".join(labels)
    if len(name) > 253:
        raise fail(f"invalid domain {quote(domain)}: longer than 253 characters")
    if not re.search("[a-z]", labels[-1]):
        raise fail(f"invalid domain {quote(domain)}: the last label must hold a letter")
    if len(labels) < 2:
        # Guessing names under a TLD ("vnc.com", "remote.com") would scan strangers' domains.
        raise fail(f"invalid domain {quote(domain)}: a top-level domain; give a domain "
                   "such as example.com")
    return name


def parse_resolver(text: str) -> tuple[str, int]:
    """Parse "IP", "IP:PORT", "IPv6" or "[IPv6]:PORT" into (ip, port); port defaults to 53.
    A host name is refused: resolving it would need another resolver."""
    raw = text.strip()
    host, port_text = raw, ""
    if raw.startswith("["):
        host, sep, rest = raw[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise fail(f"invalid resolver {quote(text)}: use IP, IP:PORT or [IPv6]:PORT")
        port_text = rest[1:] if rest else ""
        if rest and not port_text:
            raise fail(f"invalid resolver {quote(text)}: empty port")
    elif raw.count(":") == 1:
        host, _, port_text = raw.partition(":")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise fail(f"invalid resolver {quote(text)}: give an IP address "
                   "(IP, IP:PORT or [IPv6]:PORT), not a host name") from None
    port = 53
    if port_text or raw.endswith(":"):
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise fail(f"invalid resolver {quote(text)}: port must be 1-65535")
        port = int(port_text)
    return str(ip), port


def format_server(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
