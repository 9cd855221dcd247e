"""Monitors and their alert channels: the frozen model, read from a TOML file or built from
`vncaudit watch` options.

Owns: `Monitor`, `AlertRules`, the channel settings (`WebhookChannel`, `EmailChannel`,
`StdoutChannel`, `SmtpSettings`), `WatchConfig`, and reading ``monitors.toml`` strictly: an
unknown key, a wrong type or a bad schedule is ONE `ConfigError` line naming the file, the
table and the key (with "did you mean" for a typo). Secrets (webhook HMAC key, SMTP password)
come from files or environment variables, never from the TOML itself or the command line.
Must not: scan, send, or open the store.

The file (every table but ``[monitor.NAME]`` is optional)::

    db = "/var/lib/vncaudit/vncaudit.db"      # --db wins
    retention = "90d"                          # prune older cycles after each cycle
    [smtp]                                     # for every monitor's `email`
    host = "smtp.example.org"                  # port 587, STARTTLS, login by default
    username = "vncaudit"
    password_file = "/etc/vncaudit/smtp-password"
    from = "vncaudit@example.org"
    [webhook.ops]                              # a named receiver, `webhook = ["ops"]`
    url = "https://chat.example.org/hooks/xyz"
    secret_file = "/etc/vncaudit/webhook-secret"
    [monitor.office]
    targets = ["10.0.0.0/24"]
    ports = "5900-5910"
    every = "6h"                               # or cron = "0 */6 * * *"
    alerts = ["reachable", "no-auth", "severity", "cve", "gone"]
    remind_every = "7d"                        # opt-in reminder while still open
    digest_threshold = 20                      # more alerts in a cycle: one digest (0: never)
    webhook = ["ops"]                          # names above, or URLs
    email = ["ops@example.org"]
    digest_thresholds = { "ops@example.org" = 5 }  # per channel, as named in webhook/email
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from vncaudit.exceptions import UsageError
from vncaudit.tomlfile import parse_toml
from vncaudit.watch.schedule import Schedule, ScheduleError, parse_duration

WEBHOOK_SECRET_ENV = "VNCAUDIT_WEBHOOK_SECRET"
SMTP_PASSWORD_ENV = "VNCAUDIT_SMTP_PASSWORD"

RULES = ("reachable", "no-auth", "severity", "cve", "gone")
"""Alert rules by name. `reminder` is switched on by a reminder period (`remind_every`)."""
DEFAULT_RULES = ("reachable", "no-auth", "severity", "cve")
DEFAULT_DIGEST_THRESHOLD = 20
"""A cycle with more alerts than this sends each webhook and e-mail channel one digest."""
MAX_DIGEST_THRESHOLD = 1_000_000
SMTP_SECURITY = ("starttls", "tls", "none")
DISCOVERY_MODES = ("connect", "syn")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@:/ -]{0,199}")
_EMAIL = re.compile(r"[^@\s<>,;]+@[^@\s<>,;.][^@\s<>,;]*")


class ConfigError(UsageError):
    """A monitors file or watch option that cannot be used; the message is one line."""


@dataclass(frozen=True)
class AlertRules:
    """Which changes raise an alert (see `vncaudit.watch.alerts`)."""

    reachable: bool = True  # VNC newly reachable
    no_auth: bool = True  # authentication newly not required
    severity: bool = True  # worst severity raised
    cve: bool = True  # a version with a known CVE appeared
    gone: bool = False  # a service gone (opt-in)
    remind_every: float | None = None  # seconds; reminder while still open (opt-in)

    @classmethod
    def from_names(cls, names: Sequence[str], remind_every: float | None = None) -> AlertRules:
        chosen = set()
        for raw in names:
            name = raw.strip().lower().replace("_", "-")
            if not name:
                continue
            if name == "reminder":
                raise ConfigError("the reminder is switched on by a period: remind_every = "
                                  "\"7d\" (--remind-every 7d)")
            if name not in RULES:
                raise ConfigError(f"unknown alert rule {raw!r}{_suggest(name, RULES)}; "
                                  f"rules: {', '.join(RULES)}")
            chosen.add(name)
        return cls(reachable="reachable" in chosen, no_auth="no-auth" in chosen,
                   severity="severity" in chosen, cve="cve" in chosen, gone="gone" in chosen,
                   remind_every=remind_every)

    def names(self) -> tuple[str, ...]:
        on = (self.reachable, self.no_auth, self.severity, self.cve, self.gone)
        out = tuple(n for n, flag in zip(RULES, on, strict=True) if flag)
        return out + (("reminder",) if self.remind_every else ())


@dataclass(frozen=True)
class WebhookChannel:
    """A JSON POST receiver. `secret` signs each body (HMAC-SHA256); None: unsigned."""

    name: str
    url: str
    secret: bytes | None = field(default=None, repr=False)
    ca_file: str | None = None
    timeout: float = 10.0


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int = 587
    security: str = "starttls"  # starttls | tls | none
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sender: str = "vncaudit@localhost"
    ca_file: str | None = None
    timeout: float = 30.0


@dataclass(frozen=True)
class EmailChannel:
    """One recipient (so a refused address is retried alone)."""

    name: str
    to: str
    smtp: SmtpSettings


@dataclass(frozen=True)
class StdoutChannel:
    """JSON lines on standard output, for pipelines."""

    name: str = "stdout"


Channel = WebhookChannel | EmailChannel | StdoutChannel


@dataclass(frozen=True)
class ScanSettings:
    """How each cycle scans (the `vncaudit scan` options a monitor may set)."""

    timeout: float = 5.0
    concurrency: int = 512
    rate: float | None = None
    discovery: str = "connect"
    retries: int | None = None


@dataclass(frozen=True)
class Monitor:
    name: str
    targets: tuple[str, ...]
    ports: str
    schedule: Schedule
    rules: AlertRules = AlertRules()
    channels: tuple[Channel, ...] = ()
    scan: ScanSettings = ScanSettings()
    excludes: tuple[str, ...] = ()
    digest_threshold: int = DEFAULT_DIGEST_THRESHOLD  # 0: never a digest
    # (channel name, threshold) of the webhook and e-mail channels that set their own
    channel_thresholds: tuple[tuple[str, int], ...] = ()

    def describe(self) -> str:
        return f"{' '.join(self.targets)} -p {self.ports}, {self.schedule.describe()}"

    def threshold_for(self, channel: Channel) -> int:
        """The digest threshold of one of this monitor's channels: its own, else the
        monitor's."""
        return dict(self.channel_thresholds).get(channel.name, self.digest_threshold)


@dataclass(frozen=True)
class WatchConfig:
    monitors: tuple[Monitor, ...]
    db: str | None = None
    retention: float | None = None  # seconds

    def channels(self) -> dict[str, Channel]:
        """Every channel by its stable name (the outbox keys deliveries by it)."""
        return {c.name: c for m in self.monitors for c in m.channels}


# ---------------------------------------------------------------------------------------------
# Building channels


def webhook_name(url: str) -> str:
    """A stable, shown name for an inline webhook URL that does not reveal its path (chat
    webhook URLs carry their secret there): ``webhook:host#abcdef``."""
    host = urlsplit(url).hostname or "?"
    return f"webhook:{host}#{hashlib.sha256(url.encode()).hexdigest()[:6]}"


def check_url(url: str, where: str) -> str:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}: {url!r} is not an http(s) URL")
    return url.strip()


def check_digest_threshold(value: object, where: str) -> int:
    """A digest threshold: a whole number of alerts, 0 (never digest) or more."""
    if isinstance(value, bool) or not isinstance(value, int) \
            or not 0 <= value <= MAX_DIGEST_THRESHOLD:
        raise ConfigError(f"{where} must be a whole number of alerts from 0 (never digest) "
                          f"to {MAX_DIGEST_THRESHOLD}, not {value!r}")
    return value


def channel_thresholds(given: Mapping[str, object], channels: Sequence[Channel],
                       entries: Mapping[str, str], where: str) -> tuple[tuple[str, int], ...]:
    """Per-channel digest thresholds: `given` maps a channel as the user named it (a webhook
    URL or name, an e-mail address) to its threshold; `entries` maps each such name of the
    monitor's webhook and e-mail channels to the channel's own name. `ConfigError` for a
    name that is not one of them, or a bad threshold."""
    own = {c.name for c in channels if digests(c)}
    out: dict[str, int] = {}
    for named, value in given.items():
        channel = entries.get(named.strip())
        if channel is None or channel not in own:
            known = sorted(entries)
            listed = f"; its channels: {', '.join(known)}" if known else \
                "; it has no webhook or e-mail channel"
            raise ConfigError(f"{where}: {named!r} is not a webhook or e-mail channel of this "
                              f"monitor{_suggest(named, known)}{listed}")
        out[channel] = check_digest_threshold(value, f"{where} {named}")
    return tuple(sorted(out.items()))


def digests(channel: Channel) -> bool:
    """Whether a channel takes a digest in place of a burst (a person reads it); standard
    output feeds programs and always gets every alert."""
    return isinstance(channel, WebhookChannel | EmailChannel)


def check_email(address: str, where: str) -> str:
    if not _EMAIL.fullmatch(address.strip()):
        raise ConfigError(f"{where}: {address!r} is not an e-mail address")
    return address.strip()


def read_secret(path: str | Path, where: str) -> str:
    """A secret from a file (first line, surrounding blanks removed)."""
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: {path} is not UTF-8 text") from None
    secret = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not secret:
        raise ConfigError(f"{where}: {path} is empty")
    return secret


def parse_smtp_address(text: str) -> tuple[str, int | None]:
    """``HOST``, ``HOST:PORT`` or ``[IPv6]:PORT``."""
    value = text.strip()
    match = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?|([^:\[\]]+)(?::(\d+))?", value)
    if not match or not value:
        raise ConfigError(f"--smtp {text!r}: give HOST or HOST:PORT")
    host = match.group(1) or match.group(3)
    port_text = match.group(2) or match.group(4)
    port = int(port_text) if port_text else None
    if port is not None and not 1 <= port <= 65535:
        raise ConfigError(f"--smtp {text!r}: port must be 1-65535")
    return host, port


def default_smtp_port(security: str) -> int:
    return {"starttls": 587, "tls": 465, "none": 25}[security]


# ---------------------------------------------------------------------------------------------
# Reading monitors.toml


def load(path: str | Path, environ: Mapping[str, str] | None = None) -> WatchConfig:
    """Read and check a monitors file; `ConfigError` (one line) for anything wrong."""
    env = os.environ if environ is None else environ
    where = Path(path)
    try:
        raw = where.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        doc = parse_toml(raw, path)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return _Reader(where, env).read(doc)


class _Reader:
    def __init__(self, path: Path, env: Mapping[str, str]) -> None:
        self.path = path
        self.env = env
        self.base = path.parent

    def fail(self, table: str, message: str) -> ConfigError:
        return ConfigError(f"{self.path}: {table}: {message}" if table
                           else f"{self.path}: {message}")

    def keys(self, table: str, data: Mapping[str, Any], known: Sequence[str]) -> None:
        for key in data:
            if key not in known:
                raise self.fail(table, f"unknown key {key!r}{_suggest(key, known)}")

    def get(self, table: str, data: Mapping[str, Any], key: str, kind: str,
            default: Any = None) -> Any:
        if key not in data:
            return default
        value = data[key]
        checks: dict[str, tuple[str, Callable[[Any], bool]]] = {
            "str": ("a string", lambda v: isinstance(v, str)),
            "bool": ("true or false", lambda v: isinstance(v, bool)),
            "int": ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
            "number": ("a number", lambda v: isinstance(v, int | float)
                       and not isinstance(v, bool)),
            "strings": ("a list of strings", lambda v: isinstance(v, list)
                        and all(isinstance(i, str) for i in v)),
            "table": ("a table", lambda v: isinstance(v, dict)),
        }
        what, ok = checks[kind]
        if kind == "strings" and isinstance(value, str):
            value = [value]  # a single value where a list is expected is what was meant
        if not ok(value):
            raise self.fail(table, f"{key} must be {what}, not {value!r}")
        return value

    def duration(self, table: str, data: Mapping[str, Any], key: str) -> float | None:
        value = data.get(key)
        if value is None:
            return None
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)  # plain seconds
        if not isinstance(value, str):
            raise self.fail(table, f"{key} must be a duration such as \"6h\", not {value!r}")
        try:
            return parse_duration(value, key)
        except ScheduleError as exc:
            raise self.fail(table, str(exc)) from None

    def file(self, value: str) -> Path:
        try:
            path = Path(value).expanduser()
        except RuntimeError:  # ~name of no user: pathlib cannot tell whose home it is
            raise self.fail("", f"{value}: no user named {value.split('/')[0][1:]!r} "
                            "(whose home ~ would name)") from None
        return path if path.is_absolute() else self.base / path

    def read(self, doc: dict[str, Any]) -> WatchConfig:
        self.keys("", doc, ("db", "retention", "smtp", "webhook", "monitor"))
        db = self.get("", doc, "db", "str")
        retention = self.duration("", doc, "retention")
        smtp_table = self.get("", doc, "smtp", "table")
        smtp = self.smtp(smtp_table) if smtp_table is not None else None
        hooks: dict[str, WebhookChannel] = {}
        for name, table in (self.get("", doc, "webhook", "table", {}) or {}).items():
            hooks[name] = self.webhook(name, table)
        monitors_table = self.get("", doc, "monitor", "table", {})
        if not monitors_table:
            raise self.fail("", "no monitor defined; add a [monitor.NAME] table with targets, "
                            "ports and every")
        monitors = tuple(self.monitor(name, table, hooks, smtp)
                         for name, table in monitors_table.items())
        return WatchConfig(monitors, db=str(self.file(db)) if db else None,
                           retention=retention)

    def smtp(self, table: Any) -> SmtpSettings:
        where = "[smtp]"
        if not isinstance(table, dict):
            raise self.fail(where, "must be a table")
        self.keys(where, table, ("host", "port", "security", "username", "password_file",
                                 "from", "ca_file", "timeout"))
        host = self.get(where, table, "host", "str")
        if not host:
            raise self.fail(where, "host is required")
        security = self.get(where, table, "security", "str", "starttls").lower()
        if security not in SMTP_SECURITY:
            raise self.fail(where, f"security must be one of {', '.join(SMTP_SECURITY)}")
        port = self.get(where, table, "port", "int", default_smtp_port(security))
        if not 1 <= port <= 65535:
            raise self.fail(where, "port must be 1-65535")
        password_file = self.get(where, table, "password_file", "str")
        password = (read_secret(self.file(password_file), f"{self.path}: {where}")
                    if password_file else self.env.get(SMTP_PASSWORD_ENV) or None)
        username = self.get(where, table, "username", "str")
        if password and not username:
            raise self.fail(where, "a password needs a username")
        sender = self.get(where, table, "from", "str", "vncaudit@localhost")
        check_email(sender, f"{self.path}: {where} from")
        ca = self.get(where, table, "ca_file", "str")
        return SmtpSettings(host=host, port=port, security=security, username=username,
                            password=password, sender=sender,
                            ca_file=str(self.file(ca)) if ca else None,
                            timeout=self.duration(where, table, "timeout") or 30.0)

    def webhook(self, name: str, table: Any) -> WebhookChannel:
        where = f"[webhook.{name}]"
        if not isinstance(table, dict):
            raise self.fail(where, "must be a table")
        self.keys(where, table, ("url", "secret_file", "ca_file", "timeout"))
        url = self.get(where, table, "url", "str")
        if not url:
            raise self.fail(where, "url is required")
        check_url(url, f"{self.path}: {where} url")
        secret_file = self.get(where, table, "secret_file", "str")
        secret = (read_secret(self.file(secret_file), f"{self.path}: {where}")
                  if secret_file else self.env.get(WEBHOOK_SECRET_ENV) or None)
        ca = self.get(where, table, "ca_file", "str")
        return WebhookChannel(name=f"webhook:{name}", url=url,
                              secret=secret.encode() if secret else None,
                              ca_file=str(self.file(ca)) if ca else None,
                              timeout=self.duration(where, table, "timeout") or 10.0)

    def monitor(self, name: str, table: Any, hooks: Mapping[str, WebhookChannel],
                smtp: SmtpSettings | None) -> Monitor:
        where = f"[monitor.{name}]"
        if not isinstance(table, dict):
            raise self.fail(where, "must be a table")
        if not _NAME.fullmatch(name):
            raise self.fail(where, "a monitor name is letters, digits and . _ - @ : / "
                            "(at most 200)")
        self.keys(where, table, (
            "targets", "ports", "every", "cron", "exclude", "alerts", "remind_every",
            "webhook", "email", "stdout", "digest_threshold", "digest_thresholds", "timeout",
            "concurrency", "rate", "discovery", "retries"))
        targets = tuple(self.get(where, table, "targets", "strings", []))
        if not targets:
            raise self.fail(where, "targets is required (a list of addresses, networks, "
                            "ranges or host names)")
        ports = self.get(where, table, "ports", "str", "5800,5900-5910")
        every = table.get("every")
        if isinstance(every, int | float) and not isinstance(every, bool):
            every = f"{every}s"
        if every is not None and not isinstance(every, str):
            raise self.fail(where, f"every must be a duration such as \"6h\", not {every!r}")
        cron = self.get(where, table, "cron", "str")
        try:
            schedule = Schedule.parse(every=every, cron=cron)
        except ScheduleError as exc:
            raise self.fail(where, str(exc)) from None
        try:
            rules = AlertRules.from_names(self.get(where, table, "alerts", "strings",
                                                   list(DEFAULT_RULES)),
                                          self.duration(where, table, "remind_every"))
        except ConfigError as exc:
            raise self.fail(where, str(exc)) from None
        channels = self.channels(where, table, hooks, smtp)
        try:
            threshold = check_digest_threshold(
                table.get("digest_threshold", DEFAULT_DIGEST_THRESHOLD), "digest_threshold")
            own = channel_thresholds(
                self.get(where, table, "digest_thresholds", "table", {}), channels,
                self.channel_entries(where, table, hooks), "digest_thresholds")
        except ConfigError as exc:
            raise self.fail(where, str(exc)) from None
        discovery = self.get(where, table, "discovery", "str", "connect")
        if discovery not in DISCOVERY_MODES:
            raise self.fail(where, f"discovery must be connect or syn, not {discovery!r}")
        timeout = float(self.get(where, table, "timeout", "number", 5.0))
        concurrency = self.get(where, table, "concurrency", "int", 512)
        rate = self.get(where, table, "rate", "number")
        retries = self.get(where, table, "retries", "int")
        if not 0.1 <= timeout <= 300 or concurrency < 1 or (rate is not None and rate <= 0) \
                or (retries is not None and retries < 0):
            raise self.fail(where, "timeout must be 0.1-300 s, concurrency >= 1, rate > 0, "
                            "retries >= 0")
        return Monitor(
            name=name, targets=targets, ports=ports, schedule=schedule, rules=rules,
            channels=channels,
            scan=ScanSettings(timeout=timeout, concurrency=concurrency,
                              rate=float(rate) if rate is not None else None,
                              discovery=discovery, retries=retries),
            excludes=tuple(self.get(where, table, "exclude", "strings", [])),
            digest_threshold=threshold, channel_thresholds=own)

    def channel_entries(self, where: str, table: Mapping[str, Any],
                        hooks: Mapping[str, WebhookChannel]) -> dict[str, str]:
        """Each webhook and e-mail entry of a monitor, as written, and its channel's name."""
        entries: dict[str, str] = {}
        for hook in self.get(where, table, "webhook", "strings", []):
            entries[hook.strip()] = webhook_name(hook.strip()) if "://" in hook \
                else hooks[hook].name
        for address in self.get(where, table, "email", "strings", []):
            entries[address.strip()] = f"email:{address.strip()}"
        return entries

    def channels(self, where: str, table: Mapping[str, Any],
                 hooks: Mapping[str, WebhookChannel],
                 smtp: SmtpSettings | None) -> tuple[Channel, ...]:
        """A monitor's webhook, e-mail and stdout channels (stdout alone when none is given)."""
        channels: list[Channel] = []
        for hook in self.get(where, table, "webhook", "strings", []):
            if "://" in hook:
                url = check_url(hook, f"{self.path}: {where} webhook")
                secret = self.env.get(WEBHOOK_SECRET_ENV)
                channels.append(WebhookChannel(webhook_name(url), url,
                                               secret.encode() if secret else None))
            elif hook in hooks:
                channels.append(hooks[hook])
            else:
                known = list(hooks)
                raise self.fail(where, f"webhook {hook!r} is neither a URL nor a "
                                f"[webhook.NAME] table{_suggest(hook, known)}")
        emails = self.get(where, table, "email", "strings", [])
        if emails and smtp is None:
            raise self.fail(where, "email needs an [smtp] table (host, username, "
                            "password_file, from)")
        for address in emails:
            to = check_email(address, f"{self.path}: {where} email")
            assert smtp is not None
            channels.append(EmailChannel(f"email:{to}", to, smtp))
        stdout = self.get(where, table, "stdout", "bool", not channels)
        if stdout:
            channels.append(StdoutChannel())
        return tuple(channels)


def _suggest(word: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_names_unique(monitors: Sequence[Monitor]) -> None:
    seen: set[str] = set()
    for m in monitors:
        if m.name in seen:
            raise ConfigError(f"two monitors are named {m.name!r}")
        seen.add(m.name)
