"""Plumbing of `vncaudit scan` between its options and the `ScanSpec`: the discovery mode
check, kept -iL/--nmap-xml/--masscan inputs and domain targets found by DNS.

Owns: checking and converting those inputs (one-line errors, exit 2, before any packet). Must
not: define commands, run the scan or render results.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from vncaudit.cli.common import (
    err,
    fail,
)
from vncaudit.display import escape
from vncaudit.exceptions import UsageError
from vncaudit.store import Store


def check_discovery(mode: str) -> None:
    """--discovery: a known mode, and raw-socket rights for syn (exit 2 before any packet)."""
    from vncaudit import discovery

    if mode not in tuple(discovery.Mode):
        raise fail(f"unknown --discovery {mode!r}; use connect or syn")
    if mode == discovery.Mode.SYN:
        try:
            discovery.check_syn_allowed()
        except UsageError as exc:
            raise fail(str(exc)) from None


_MAX_STREAM_INPUT = 64 * 1024 * 1024  # bytes of an -iL/--nmap-xml/--masscan stream kept


def kept_input(name: str, store: Store) -> str:
    """An input file that cannot be read twice (`-` for stdin, a pipe, `<(cmd)`, /dev/stdin) is
    copied next to the store first, and the copy is what the scan records: --resume must see
    the same targets in the same order, and the masscan reader looks at a file twice."""
    import stat

    path = Path(name)
    if name != "-":
        try:
            mode = path.stat().st_mode
        except OSError:
            return name  # the target reader reports it
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
            return name  # a file (or a device, a directory: the reader refuses those)
    if store.path is None:
        return name  # an in-memory store (tests): nothing to resume
    import hashlib
    import tempfile

    shown = "standard input" if name == "-" else name
    kept = store.path.parent / "inputs"
    try:
        kept.mkdir(mode=0o700, exist_ok=True)
        source = sys.stdin.buffer if name == "-" else path.open("rb")
        digest = hashlib.sha256()
        with tempfile.NamedTemporaryFile(dir=kept, delete=False) as copy:
            try:
                size = 0
                while chunk := source.read(1 << 20):
                    size += len(chunk)
                    if size > _MAX_STREAM_INPUT:
                        raise UsageError(f"{shown} holds more than "
                                         f"{_MAX_STREAM_INPUT >> 20} MiB; write it to a file "
                                         "and name that file")
                    digest.update(chunk)
                    copy.write(chunk)
            except BaseException:
                os.unlink(copy.name)
                raise
            finally:
                if source is not sys.stdin.buffer:
                    source.close()
        final = kept / f"{digest.hexdigest()[:32]}.txt"
        os.replace(copy.name, final)
    except OSError as exc:
        raise UsageError(f"cannot read {shown}: {exc.strerror or exc}") from None
    return str(final)


def domain_targets(
    domains: list[str], resolver: str | None
) -> tuple[list[str], dict[str, list[str]], list[dict[str, Any]]]:
    """Discover each domain's hosts: their names, the addresses each resolved to, and the
    discovery records (how every name was found) to keep with the scan.

    Names that resolve to special addresses (black-holed to 0.0.0.0, multicast, reserved) are
    dropped with a warning instead of aborting the whole scan.
    """
    import ipaddress

    from vncaudit import subdomains

    names: list[str] = []
    known: dict[str, list[str]] = {}
    records: list[dict[str, Any]] = []
    for name in domains:
        found = subdomains.discover_sync(name, resolver=resolver)
        records.append(found.to_dict())
        for host in found.hosts:
            if not host.addresses or subdomains.is_external(host, found.domain):
                continue
            usable = []
            for address in host.addresses:
                ip = ipaddress.ip_address(address)
                if ip.is_unspecified or ip.is_multicast or ip.is_reserved:
                    err.print(f"warning: {host.name} resolves to {address}; not scanned",
                              style="yellow", markup=False)
                    continue
                usable.append(address)
            if usable and not _plain_target_name(host.name, usable):
                # A zone transfer may carry any label ("a/b", "x:y", "10.0.0.1-9."): one such
                # name must not abort the scan of the domain's other hosts.
                err.print(f"warning: {escape(host.name)} is not a plain host name; not scanned",
                          style="yellow", markup=False)
                continue
            if usable:
                names.append(host.name)
                known[host.name] = usable
        err.print(f"{found.domain}: {len(known)} hosts found "
                  f"({found.queries} DNS queries)", style="dim", markup=False)

    return names, known, records


def _plain_target_name(name: str, addresses: list[str]) -> bool:
    """Does the target parser take *name* as a host name (not a network, range or error)?"""
    from vncaudit import targets as targets_mod

    try:
        space = targets_mod.build_target_space([name], (1,), allow_special=True,
                                               resolve=lambda _name: addresses)
    except UsageError:
        return False
    return space.describe() == [name.lower().removesuffix(".")]
