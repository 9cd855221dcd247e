"""Configuration of the web service (`vncaudit serve`): one frozen `Settings` per app instance.

Owns: every operator knob with its safe default, and reading them from a TOML file
(`Settings.from_toml`). Must not: import FastAPI or open anything; the app reads these values.

Exposure decision (README, "Web service"): the service reports what the world sees of the
checked address. By default (`assume_exposure = None`) `vncaudit.assess` grades each result by
the address itself (`exposure_of`), which for the requester's own public address is "public".
An operator who allow-lists an address that stands in for a public host (tests allow-list
127.0.0.1) sets `assume_exposure = "public"` so findings are graded as for the internet.
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from vncaudit.web.policy import DEFAULT_MAX_ADDRESSES, DEFAULT_MAX_PORTS, Policy, Resolver

EXPOSURES = ("loopback", "private", "public", "all-interfaces", "unknown")


def hash_token(token: str) -> str:
    """The at-rest form of an API token: ``sha256:<hex>`` (tokens are high-entropy, so a
    plain digest is enough; nobody can brute-force 256 random bits)."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh API token (256 random bits, URL-safe)."""
    return "vnca_" + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Settings:
    """Everything `create_app` needs. Defaults are the safe public port-check setup."""

    db_path: str = ""  # "" = vncaudit.store.default_db_path()
    allow: tuple[str, ...] = ()  # CIDRs / domains the operator allows (beats special ranges)
    allow_own_address: bool = True  # the requester may check the address it connects from
    allowed_ports: str | None = None  # e.g. "5900-5910": only these may be scanned
    max_ports: int = DEFAULT_MAX_PORTS
    max_addresses: int = DEFAULT_MAX_ADDRESSES
    token_hashes: tuple[str, ...] = ()  # "sha256:<hex>"; when set, /api/* (and /metrics) need one
    rate_per_minute: float = 10.0  # scan submissions per client address
    rate_burst: int = 5
    workers: int = 4  # scans running at once
    max_active_per_client: int = 3  # queued + running scans one client address may have
    queue_size: int = 1000  # scans waiting; a full queue answers 503
    scan_concurrency: int = 256  # connections at once within one scan
    probe_timeout: float = 5.0
    scan_deadline: float = 1800.0  # a scan still running then is stopped (interrupted)
    assume_exposure: str | None = None  # see the module docstring
    secret_key: str = field(default_factory=lambda: secrets.token_hex(32), repr=False)
    # Reverse proxies whose X-Forwarded-For is believed (CIDRs). Empty: the TCP peer is the
    # client, and the header is ignored (anyone could forge it).
    trusted_proxies: tuple[str, ...] = ()
    history_limit: int = 100
    public_history: bool = False  # False: each client sees only the scans it asked for
    resolver: Resolver | None = field(default=None, compare=False, repr=False)  # tests inject
    # Subdomain discovery (only for allow-listed domains): DNS server "IP[:PORT]" (None: the
    # system's), the port zone transfers go to, the per-query timeout.
    dns_resolver: str | None = None
    dns_axfr_port: int = 53
    dns_timeout: float = 2.0
    # Screenshots (proof, only of services that need no password): off by default, since a
    # public port-check site would otherwise keep pictures of strangers' desktops. The PNGs
    # go to screenshot_dir/<scan id>/ ("" = a "screenshots" folder next to the store).
    allow_screenshots: bool = False
    screenshot_dir: str = ""
    max_screenshots_per_scan: int = 4
    # Monitors (vncaudit.watch): a monitors.toml this service runs ("" = none; off by
    # default), who may open the /monitors page (it describes the operator's own networks),
    # and how long scans are kept ("" = for ever; e.g. "90d"; pruned daily).
    monitors: str = ""
    monitors_page_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    retention: str = ""

    def __post_init__(self) -> None:
        if self.assume_exposure is not None and self.assume_exposure not in EXPOSURES:
            raise ValueError(f"assume_exposure must be one of {', '.join(EXPOSURES)}")
        for h in self.token_hashes:
            if not (h.startswith("sha256:") and len(h) == 71):
                raise ValueError("token hashes look like sha256:<64 hex digits>")
        if min(self.workers, self.queue_size, self.scan_concurrency,
               self.max_active_per_client, self.max_screenshots_per_scan) < 1:
            raise ValueError("workers, queue_size, scan_concurrency, max_active_per_client "
                             "and max_screenshots_per_scan must be >= 1")
        if (not self.probe_timeout > 0 or not self.rate_per_minute > 0 or self.rate_burst < 1
                or not self.scan_deadline > 0):
            raise ValueError("probe_timeout, scan_deadline and rate_per_minute must be > 0, "
                             "rate_burst >= 1")
        self.policy()  # validates the allow-list now, not at the first request
        self.proxy_networks()
        try:
            for net in self.monitors_page_networks:
                ipaddress.ip_network(net, strict=False)
        except ValueError as exc:
            raise ValueError(f"monitors_page_networks: {exc}") from None
        if self.retention:
            from vncaudit.watch.schedule import ScheduleError, parse_duration

            try:
                parse_duration(self.retention, "retention")
            except ScheduleError as exc:
                raise ValueError(str(exc)) from None

    def proxy_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        try:
            return tuple(ipaddress.ip_network(n, strict=False) for n in self.trusted_proxies)
        except ValueError as exc:
            raise ValueError(f"trusted_proxies: {exc}") from None

    def policy(self) -> Policy:
        return Policy.build(self.allow, allow_own_address=self.allow_own_address,
                            max_ports=self.max_ports, max_addresses=self.max_addresses,
                            allowed_ports=self.allowed_ports, resolve=self.resolver)

    def with_changes(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> Settings:
        """Read a TOML file of the same keys (a ``[serve]`` table or top level). Unknown keys
        are an error, so a typo never silently weakens the policy."""
        with open(path, "rb") as fh:
            raw = fh.read()
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise ValueError(f"{path}: not UTF-8 text (a TOML file was expected)") from None
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path}: invalid TOML: {exc}") from None
        table = data.get("serve", data)
        if not isinstance(table, dict):
            raise ValueError(f"{path}: [serve] must be a table")
        known = {f.name for f in fields(cls)} - {"resolver"}
        unknown = sorted(set(table) - known)
        if unknown:
            raise ValueError(f"{path}: unknown setting(s): {', '.join(unknown)}")
        values: dict[str, Any] = {}
        for key, value in table.items():
            _check_type(path, key, value)
            values[key] = tuple(value) if isinstance(value, list) else value
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


# What a TOML value of each setting must be (by the field's annotation), so that a wrong type
# is named in the error instead of failing later inside a comparison.
_TOML_TYPES: dict[str, tuple[str, tuple[type, ...]]] = {
    "str": ("a string", (str,)),
    "str | None": ("a string", (str,)),
    "int": ("an integer", (int,)),
    "float": ("a number", (int, float)),
    "bool": ("true or false", (bool,)),
    "tuple[str, ...]": ("a list of strings", (list,)),
}


def _check_type(path: str | Path, key: str, value: Any) -> None:
    annotation = str(next(f.type for f in fields(Settings) if f.name == key))
    if annotation not in _TOML_TYPES:
        return
    what, types = _TOML_TYPES[annotation]
    ok = isinstance(value, types) and (annotation == "bool" or not isinstance(value, bool))
    if ok and annotation == "tuple[str, ...]":
        ok = all(isinstance(item, str) for item in value)
    if not ok:
        raise ValueError(f"{path}: {key} must be {what}, not {value!r}")


def tokens_from(lines: Sequence[str]) -> tuple[str, ...]:
    """Token hashes from lines of a file (blank lines and # comments skipped)."""
    return tuple(s for line in lines if (s := line.split("#", 1)[0].strip()))
