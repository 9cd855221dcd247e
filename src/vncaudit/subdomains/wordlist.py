"""Wordlists of host labels, and the wildcard detection that keeps them honest.

Owns: the built-in labels (`data/subdomain_labels.txt`, read once through
`importlib.resources`), reading a user's wordlist file, turning an entry into a name under the
domain (`candidate_name`), and `wildcard`: WILDCARD_PROBES random labels, whose answers tell which
wordlist hits are indistinguishable from a wildcard record.

Must not: send a query other than through the run's `lookup`, read any file but the built-in
list and the files the user named, or import anything of the package but `exceptions`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import string
from collections.abc import Iterable
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Final

import dns.name

from vncaudit.subdomains.lookup import Discovery
from vncaudit.subdomains.names import ascii_labels, fail, quote

log = logging.getLogger(__name__)

WILDCARD_PROBES: Final = 3
WILDCARD_LABEL_LENGTH: Final = 16


@cache
def builtin_wordlist() -> tuple[str, ...]:
    """The built-in host labels (vnc, remote, rdp, desktop, admin, dev, ...), in file order."""
    text = resources.files("vncaudit").joinpath("data/subdomain_labels.txt").read_text("utf-8")
    return tuple(_entries(text.splitlines()))


def _entries(lines: Iterable[str]) -> Iterable[str]:
    for line in lines:
        entry = line.strip()
        if entry and not entry.startswith("#"):
            yield entry


def read_wordlist(path: str | Path) -> list[str]:
    """The entries of a wordlist file (one label or relative name a line, '#' comments);
    `UsageError` when it cannot be read. Entries are checked by `discover`."""
    try:
        with open(path, encoding="utf-8") as fh:
            return list(_entries(fh))
    except (OSError, UnicodeError) as exc:
        raise fail(f"cannot read wordlist {path}: {exc}") from None


def candidate_name(entry: str, domain: str) -> str | None:
    """The fully qualified name a wordlist entry names under *domain*, None for the apex."""
    text = entry.strip().lower().removesuffix(".")
    if text == domain:
        return None
    # A list made for this domain may hold full names; "vnc.example.com" means label "vnc".
    text = text.removesuffix("." + domain)
    labels = ascii_labels(text, "wordlist entry")
    name = ".".join(labels) + "." + domain
    if len(name) > 253:
        raise fail(f"invalid wordlist entry {quote(entry)}: {name} is longer than 253 "
                   "characters")
    return name


async def wildcard(run: Discovery) -> tuple[set[str], set[str]]:
    """(addresses, first CNAME targets) random labels resolve to; both empty: none."""
    alphabet = string.ascii_lowercase + string.digits
    labels = ["".join(secrets.choice(alphabet) for _ in range(WILDCARD_LABEL_LENGTH))
              for _ in range(WILDCARD_PROBES)]
    probes = await asyncio.gather(
        *(run.lookup(dns.name.from_text(label, run.origin)) for label in labels))
    addresses = {a for p in probes for a in p.addresses}
    targets = {p.cnames[0] for p in probes if p.cnames}
    if addresses or targets:
        log.info("%s has wildcard DNS: random names resolve to %s", run.domain,
                 ", ".join(sorted(addresses | targets)))
    return addresses, targets
