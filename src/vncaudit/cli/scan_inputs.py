"""Plumbing of `vncaudit scan` between its options and the engine: the discovery mode check,
the active options (screenshot, password list, auth-bypass) and the post-probe that runs them,
kept -iL/--nmap-xml/--masscan inputs, the target space of a stored spec (for --resume) and
domain targets found by DNS.

Owns: checking and converting those inputs (one-line errors, exit 2, before any packet). Must
not: define commands, run the scan or render results.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import IO, Any

from vncaudit.budget import Ledger
from vncaudit.cli.common import (
    _fail,
    err,
    log,
)
from vncaudit.cli.output import _plain
from vncaudit.exceptions import UsageError
from vncaudit.models import ServiceResult, State, Target
from vncaudit.probe import ProbeOptions
from vncaudit.store import Store


def _check_discovery(mode: str) -> None:
    """--discovery: a known mode, and raw-socket rights for syn (exit 2 before any packet)."""
    from vncaudit import discovery

    if mode not in tuple(discovery.Mode):
        raise _fail(f"unknown --discovery {mode!r}; use connect or syn")
    if mode == discovery.Mode.SYN:
        try:
            discovery.check_syn_allowed()
        except UsageError as exc:
            raise _fail(str(exc)) from None


def _active_options(
    screenshot: bool,
    password: str | None,
    check_passwords: bool,
    wordlist: Path | None,
    max_attempts: int,
    show_passwords: bool,
    active_checks: bool,
    output_file: Path | None,
) -> Any:
    from vncaudit import active

    if wordlist is not None and not check_passwords:
        # Read and then ignored, a list would let the user believe it had been tried.
        raise UsageError("--wordlist is the password list of --check-passwords; add "
                         "--check-passwords (or leave --wordlist out)")
    try:
        words = _read_password_list(wordlist) if wordlist else None
    except OSError as exc:
        raise UsageError(f"cannot read {wordlist}: {exc.strerror}") from None
    # Absolute, so a report rendered later from the store (`results -o html`) finds the PNGs.
    shots = ((output_file.parent if output_file else Path.cwd()) / "screenshots").absolute()
    return active.ActiveOptions(
        screenshot=screenshot,
        screenshot_dir=shots if screenshot else None,
        password=password,
        check_passwords=check_passwords,
        wordlist=words,
        wordlist_source="wordlist" if words else "builtin",
        max_attempts=max_attempts,
        show_passwords=show_passwords,
        active_checks=active_checks,
    )


_MAX_STREAM_INPUT = 64 * 1024 * 1024  # bytes of an -iL/--nmap-xml/--masscan stream kept


def _kept_input(name: str, store: Store) -> str:
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


_MAX_WORDLIST_LINE = 4096  # a VNC password counts 8 bytes; a longer line is not a password


def _read_password_list(path: Path) -> list[str]:
    """--wordlist, line by line with a bound (a binary file or /dev/zero is refused, never
    loaded whole); bytes that are not UTF-8 are kept as replacement characters."""
    from vncaudit import active

    def lines(stream: IO[str]) -> Iterator[str]:
        lineno = 0
        while line := stream.readline(_MAX_WORDLIST_LINE + 1):
            lineno += 1
            if len(line) > _MAX_WORDLIST_LINE:
                raise UsageError(f"{path}:{lineno}: line longer than {_MAX_WORDLIST_LINE} "
                                 "characters; not a password list")
            yield line

    with path.open(encoding="utf-8", errors="replace") as fh:
        return active.read_wordlist(lines(fh))


def _maybe_http(result: ServiceResult) -> bool:
    """Could an HTTP server be behind this non-RFB answer? Silence (HTTP waits for the client),
    a close before any byte, or text that looks like HTTP; not SSH, SMTP and the like."""
    if result.state is State.TARPIT:
        return True
    guess = result.extra.get("protocol_guess")
    return result.state is State.OPEN_NOT_VNC and guess in (None, "http", "xml/html", "json")


def _post_probe(
    active_options: Any, probe_options: ProbeOptions, web: bool, ledger: Ledger | None = None
) -> Callable[[ServiceResult], Awaitable[ServiceResult]] | None:
    """What runs after each probe: web front-end detection, then the opt-in active checks;
    with a `ledger`, every connection they make is granted and counted there first."""
    from dataclasses import replace

    from vncaudit import active, websocket
    from vncaudit.budget.extra import checked

    if not web and not active_options.enabled:
        return None

    async def post(result: ServiceResult) -> ServiceResult:
        listed = result.port in websocket.WEB_PORTS
        if web and (listed or _maybe_http(result)) and result.state in (State.TARPIT,
                                                                         State.OPEN_NOT_VNC):
            # VNC is found on any port by its banner; a web front end on any port by one GET
            # (an HTTP server waits silently for it); on the usual web ports, always.
            target = Target(result.host, result.port, result.hostname)
            # Through websockify, a WebSocket session is a connection to the VNC server
            # behind it, from the proxy's address that every user of the front end shares.
            (grant,) = ledger.admit([target], kind="web check") if ledger else (None,)
            if grant is None or grant.allowed:
                found = await websocket.probe_web(target, probe_options,
                                                  require_http=not listed)
                if ledger is not None and grant is not None:
                    ledger.record([(grant, found)])
                if found.state is State.VNC or (found.extra.get("web") or {}).get("transport"):
                    result = found
        if active_options.enabled and result.state is State.VNC:
            connector = None
            ws = (result.extra.get("web") or {}).get("websocket") or {}
            if ws.get("path"):
                connector = websocket.connector(ws["path"])
            wanted = (active_options.password is not None) + bool(active_options.screenshot) \
                + bool(active_options.active_checks)

            async def run(used: int) -> dict[str, Any]:
                out: dict[str, Any] = await active.run_active(
                    result, active_options, connector, connections_used=used)
                return out

            try:
                if ledger is None:
                    checks = await active.run_active(result, active_options, connector)
                else:
                    checks = await checked(ledger, result, run, required=wanted)
            except Exception as exc:  # an active check must never cost the probe's result
                log.warning("active checks on %s:%s failed: %s", result.host, result.port, exc)
                checks = {"error": f"{type(exc).__name__}: {exc}"}
            if checks:
                result = replace(result, extra={**result.extra, "active": checks})
        return result

    return post


def _space_from_spec(spec: dict[str, Any]) -> Any:
    """The target space a stored or new scan describes (same seed → same order on resume)."""
    from vncaudit import targets as targets_mod

    resolved: dict[str, list[str]] = spec.get("resolved") or {}

    def resolve(name: str) -> list[str]:
        # Names found by --domain keep the addresses discovery saw: resolved once, even on resume.
        return resolved.get(name) or targets_mod.default_resolver(name)

    space = targets_mod.build_target_space(
        spec["expressions"],
        targets_mod.parse_ports(spec["ports"]),
        resolve=resolve,
        input_files=spec["input_files"],
        nmap_xml=spec["nmap_xml"],
        masscan=spec["masscan"],
        excludes=spec["excludes"],
        exclude_files=spec["exclude_files"],
        allow_special=spec["allow_special"],
    )
    if spec.get("seed") is not None:
        space.seed = int(spec["seed"])
    return space


def _domain_targets(
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
                err.print(f"warning: {_plain(host.name)} is not a plain host name; not scanned",
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
