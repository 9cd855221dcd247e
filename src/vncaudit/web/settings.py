"""Configuration of the web service (`vncaudit serve`): one frozen `Settings` per app instance.

Owns: every operator knob with its safe default, its validation (each error a `SettingError`
naming the setting), and reading the settings from a TOML file and from `VNCAUDIT_SERVE_*`
environment variables with the same checks (`Settings.load`: defaults < TOML < environment <
command line; an error names the file or the variable it came from). Must not: import FastAPI
or open anything but the TOML file; the app reads these values.

Exposure decision (README, "Web service"): the service reports what the world sees of the
checked address. By default (`assume_exposure = None`) `vncaudit.assess` grades each result by
the address itself (`exposure_of`), which for the requester's own public address is "public".
An operator who allow-lists an address that stands in for a public host (tests allow-list
127.0.0.1) sets `assume_exposure = "public"` so findings are graded as for the internet.

Host names (`allowed_hosts`): the service answers only requests whose Host header names one of
them, so a page on a name that rebinds to the service's address (DNS rebinding) cannot use a
browser as a client. Empty means the localhost names; `serve` adds the address it binds.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from vncaudit.exceptions import UsageError
from vncaudit.targets import parse_ports
from vncaudit.tomlfile import parse_toml
from vncaudit.web.policy import DEFAULT_MAX_ADDRESSES, DEFAULT_MAX_PORTS, Policy, Resolver
from vncaudit.web.security import LOCAL_HOSTS, host_pattern_problem

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
    # Host header names answered (see the module docstring); "*.example.org" matches
    # subdomains, "*" everything (not behind a proxy that checks the name itself: unsafe).
    allowed_hosts: tuple[str, ...] = ()
    # One line per request: "" off, "-" stderr, else a file (appended, reopened when a log
    # rotation moves it); "plain" (combined log format + seconds) or "json" lines.
    access_log: str = ""
    access_log_format: str = "plain"
    # TLS served directly (both PEM files), else plain HTTP (behind a TLS proxy, or local).
    tls_cert: str = ""
    tls_key: str = ""
    # Strict-Transport-Security on responses served over HTTPS (directly, or by a trusted
    # proxy that says so in X-Forwarded-Proto); 0 sends none.
    hsts_max_age: int = 31536000

    def __post_init__(self) -> None:
        _validate(self)

    def proxy_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        try:
            return tuple(ipaddress.ip_network(n, strict=False) for n in self.trusted_proxies)
        except ValueError as exc:
            raise SettingError("trusted_proxies", f"trusted_proxies: {exc}") from None

    def hosts(self) -> tuple[str, ...]:
        """The Host names answered: `allowed_hosts`, else the localhost names."""
        return self.allowed_hosts or LOCAL_HOSTS

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
        return cls.load(path, {}, **overrides)

    @classmethod
    def load(cls, path: str | Path | None = None, environ: Mapping[str, str] | None = None,
             **overrides: Any) -> Settings:
        """Defaults, then the TOML file at *path*, then `VNCAUDIT_SERVE_*` variables of
        *environ* (by default none), then *overrides* (command-line options; None = not
        given). A wrong value is a ValueError whose one line names where it came from."""
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        if path is not None:
            for key, value in _toml_values(path).items():
                values[key], sources[key] = value, str(path)
        for key, (variable, value) in env_values(environ or {}).items():
            values[key], sources[key] = value, variable
        for key, value in overrides.items():
            if value is not None:
                values[key] = value
                sources.pop(key, None)
        try:
            return cls(**values)
        except SettingError as exc:
            where = sources.get(exc.key)
            raise ValueError(f"{where}: {exc}" if where else str(exc)) from None


class SettingError(ValueError):
    """A setting's value is wrong; `key` names the setting."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


ACCESS_LOG_FORMATS = ("plain", "json")
_AT_LEAST_ONE = ("workers", "queue_size", "scan_concurrency", "max_active_per_client",
                 "max_screenshots_per_scan", "rate_burst", "max_ports", "max_addresses")
_POSITIVE = ("probe_timeout", "scan_deadline", "rate_per_minute", "dns_timeout")


def _validate(s: Settings) -> None:
    if s.assume_exposure is not None and s.assume_exposure not in EXPOSURES:
        raise SettingError("assume_exposure",
                           f"assume_exposure must be one of {', '.join(EXPOSURES)}")
    for h in s.token_hashes:
        if not (h.startswith("sha256:") and len(h) == 71):
            raise SettingError("token_hashes", "token hashes look like sha256:<64 hex digits>")
    for key in _AT_LEAST_ONE:
        if getattr(s, key) < 1:
            raise SettingError(key, f"{key} must be >= 1")
    for key in _POSITIVE:
        value = getattr(s, key)
        if not (value > 0 and math.isfinite(value)):
            raise SettingError(key, f"{key} must be a number > 0")
    if not 1 <= s.dns_axfr_port <= 65535:
        raise SettingError("dns_axfr_port", "dns_axfr_port must be 1-65535")
    if s.allowed_ports:
        try:
            parse_ports(s.allowed_ports)
        except (ValueError, UsageError) as exc:
            raise SettingError("allowed_ports", f"allowed_ports: {exc}") from None
    try:
        s.policy()  # validates the allow-list now, not at the first request
    except ValueError as exc:
        raise SettingError("allow", str(exc)) from None
    s.proxy_networks()
    for entry in s.allowed_hosts:
        if (problem := host_pattern_problem(entry)) is not None:
            raise SettingError("allowed_hosts", f"allowed_hosts entry {entry!r}: {problem}")
    if s.access_log_format not in ACCESS_LOG_FORMATS:
        raise SettingError("access_log_format",
                           f"access_log_format must be one of {', '.join(ACCESS_LOG_FORMATS)}")
    if bool(s.tls_cert) != bool(s.tls_key):
        raise SettingError("tls_cert" if s.tls_cert else "tls_key",
                           "tls_cert and tls_key go together (the certificate chain and its "
                           "private key, PEM)")
    for key in ("tls_cert", "tls_key"):
        value = getattr(s, key)
        if value and not os.access(value, os.R_OK):
            raise SettingError(key, f"{key} {value}: cannot be read")
    if s.hsts_max_age < 0:
        raise SettingError("hsts_max_age", "hsts_max_age must be >= 0 (0: no HSTS header)")
    try:
        for net in s.monitors_page_networks:
            ipaddress.ip_network(net, strict=False)
    except ValueError as exc:
        raise SettingError("monitors_page_networks", f"monitors_page_networks: {exc}") from None
    if s.retention:
        from vncaudit.watch.schedule import ScheduleError, parse_duration

        try:
            parse_duration(s.retention, "retention")
        except ScheduleError as exc:
            raise SettingError("retention", str(exc)) from None


def _toml_values(path: str | Path) -> dict[str, Any]:
    with open(path, "rb") as fh:
        raw = fh.read()
    data = parse_toml(raw, path)
    table = data.get("serve", data)
    if not isinstance(table, dict):
        raise ValueError(f"{path}: [serve] must be a table")
    unknown = sorted(set(table) - _KNOWN)
    if unknown:
        raise ValueError(f"{path}: unknown setting(s): {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for key, value in table.items():
        _check_type(path, key, value)
        values[key] = tuple(value) if isinstance(value, list) else value
    return values


ENV_PREFIX = "VNCAUDIT_SERVE_"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def env_values(environ: Mapping[str, str]) -> dict[str, tuple[str, Any]]:
    """Settings from `VNCAUDIT_SERVE_<KEY>` variables: {key: (variable, value)}. Lists are
    comma-separated; booleans true/false (1/0, yes/no, on/off); an empty optional string is
    unset. An unknown variable or a value of the wrong type is a ValueError naming it."""
    out: dict[str, tuple[str, Any]] = {}
    for variable in sorted(environ):
        if not variable.startswith(ENV_PREFIX):
            continue
        key = variable[len(ENV_PREFIX):].lower()
        raw = environ[variable]
        if key not in _KNOWN:
            raise ValueError(f"{variable}: unknown setting {key!r} (see README, "
                             "'Web service settings')")
        annotation = _annotation(key)
        text = raw.strip()
        value: Any
        if annotation == "bool":
            if text.lower() not in _TRUE | _FALSE:
                raise ValueError(f"{variable}: {key} must be true or false, not {raw!r}")
            value = text.lower() in _TRUE
        elif annotation == "int":
            try:
                value = int(text)
            except ValueError:
                raise ValueError(f"{variable}: {key} must be an integer, not {raw!r}") from None
        elif annotation == "float":
            try:
                value = float(text)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise ValueError(f"{variable}: {key} must be a number, not {raw!r}")
        elif annotation == "tuple[str, ...]":
            value = tuple(item.strip() for item in raw.split(",") if item.strip())
        elif annotation == "str | None":
            value = text or None
        else:
            value = raw if key == "secret_key" else text
        out[key] = (variable, value)
    return out


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


_KNOWN = frozenset(f.name for f in fields(Settings)) - {"resolver"}


def _annotation(key: str) -> str:
    return str(next(f.type for f in fields(Settings) if f.name == key))


def _check_type(path: str | Path, key: str, value: Any) -> None:
    annotation = _annotation(key)
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
