"""The `vncaudit watch`, `vncaudit alerts` and `vncaudit prune` commands.

Owns: their options and help, turning `watch` options (or ``--config monitors.toml``) into a
`vncaudit.watch.WatchConfig`, the foreground run (SIGTERM and Ctrl-C stop it cleanly, exit 0)
and `--once`, and printing status lines on stderr and alerts as JSON lines on stdout. Must
not: scan, evaluate alerts or send anything itself (`vncaudit.watch` does).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from vncaudit.cli.common import DbOpt, err, fail, finite, open_store, setup_logging
from vncaudit.cli.program import app
from vncaudit.exceptions import UsageError, VncAuditError
from vncaudit.store import StoreError

_WATCH_EXAMPLES = """Examples:

  vncaudit watch 10.0.0.0/24 -p 5900-5910 --every 6h --webhook https://chat.example.org/hooks/x
  vncaudit watch 10.0.0.0/24 --every 1d --email ops@example.org --smtp smtp.example.org
  vncaudit watch --config /etc/vncaudit/monitors.toml      several named monitors
  vncaudit watch --config monitors.toml --once             one cycle each (cron, timers)

Alert rules (--alerts): reachable (VNC newly reachable), no-auth (authentication newly not
required), severity (worst severity raised), cve (a version with a known CVE appeared), gone
(a service gone; off by default); --remind-every 7d adds a reminder while a service stays open.
One alert per change: a cycle that finds what the previous one found sends nothing.

Digests: a cycle with more alerts than --digest-threshold (default 20) sends each
webhook and e-mail ONE digest instead: counts by rule and severity, the ten worst,
and the command that lists them all (alerts --scan SCAN_ID). Every alert stays in
the store, and stdout still gets each one. Give one channel (a --webhook URL or
an --email address) a threshold of its own with --digest-threshold-for, as in
--digest-threshold-for ops@example.org=5.

Secrets: the webhook HMAC key from --webhook-secret-file or $VNCAUDIT_WEBHOOK_SECRET, the SMTP
password from --smtp-password-file or $VNCAUDIT_SMTP_PASSWORD.

Exit codes: 0 ok (also when stopped by SIGTERM or Ctrl-C), 2 usage or input error, 3 runtime
failure (the store, another watcher running)."""

_ALERT = "Alerts"
_SCAN = "Scanning"


def _duration(value: str | None, option: str) -> float | None:
    from vncaudit.watch.schedule import ScheduleError, parse_duration

    if value is None:
        return None
    try:
        return parse_duration(value, option)
    except ScheduleError as exc:
        raise fail(str(exc)) from None


@dataclass(frozen=True)
class _MonitorOptions:
    """The one monitor `watch` options define on the command line (without --config)."""

    targets: tuple[str, ...]
    ports: str
    every: str | None
    cron: str | None
    once: bool
    name: str | None
    exclude: tuple[str, ...]
    alerts: str
    remind_every: str | None
    digest_threshold: int | None
    channel_thresholds: tuple[str, ...]
    webhooks: tuple[str, ...]
    webhook_secret_file: Path | None
    emails: tuple[str, ...]
    smtp: str | None
    smtp_security: str
    smtp_user: str | None
    smtp_password_file: Path | None
    smtp_from: str | None
    stdout: bool | None
    timeout: float
    concurrency: int
    rate: float | None
    discovery: str
    retention: str | None

    def define_a_monitor(self) -> bool:
        """Whether any option that only a command-line monitor takes was given."""
        return any((self.targets, self.exclude, self.webhooks, self.emails, self.smtp,
                    self.every, self.cron, self.name, self.remind_every,
                    self.digest_threshold is not None, self.channel_thresholds))


def _watch_config(config: Path | None, options: _MonitorOptions) -> Any:
    """The monitors to run: from --config, or the one the options define; each monitor's
    targets checked now, so a mistake is one line before anything starts."""
    from vncaudit.watch import config as cfg
    from vncaudit.watch.cycle import target_space

    try:
        if config is not None:
            if options.define_a_monitor():
                raise fail("--config holds the monitors: give targets, schedule, channels "
                           "and digest_threshold there, not on the command line")
            watch_config = cfg.load(config)
        elif not options.targets:
            raise fail("nothing to watch: give targets (vncaudit watch 10.0.0.0/24 --every "
                       "6h) or --config monitors.toml")
        else:
            if options.discovery not in cfg.DISCOVERY_MODES:
                raise fail(f"unknown discovery mode {options.discovery!r}; use connect or syn")
            watch_config = _config_from_options(options)
        for monitor in watch_config.monitors:
            try:
                target_space(monitor)
            except UsageError as exc:
                raise fail(f"monitor {monitor.name}: {exc}") from None
    except UsageError as exc:
        raise fail(str(exc)) from None
    return watch_config


def _config_from_options(options: _MonitorOptions) -> Any:
    from vncaudit.watch import config as cfg
    from vncaudit.watch.schedule import Schedule

    every = options.every
    if every is None and options.cron is None:
        if not options.once:
            raise fail("give a schedule: --every 6h (or --cron '0 */6 * * *'), or --once "
                       "for one cycle")
        every = "1d"  # only recorded, for the monitors page: a timer runs --once
    schedule = Schedule.parse(every=every, cron=options.cron)
    rules = cfg.AlertRules.from_names(options.alerts.split(","),
                                      _duration(options.remind_every, "--remind-every"))
    threshold = (cfg.DEFAULT_DIGEST_THRESHOLD if options.digest_threshold is None
                 else cfg.check_digest_threshold(options.digest_threshold,
                                                 "--digest-threshold"))
    channels = [*_webhook_channels(options), *_email_channels(options)]
    own = cfg.channel_thresholds(_channel_thresholds(options), channels,
                                 _channel_entries(options), "--digest-threshold-for")
    if options.stdout or (options.stdout is None and not channels):
        channels.append(cfg.StdoutChannel())
    monitor = cfg.Monitor(
        name=options.name or f"{','.join(options.targets)} -p {options.ports}"[:200],
        targets=options.targets, ports=options.ports, schedule=schedule, rules=rules,
        channels=tuple(channels),
        scan=cfg.ScanSettings(timeout=options.timeout, concurrency=options.concurrency,
                              rate=options.rate, discovery=options.discovery),
        excludes=options.exclude, digest_threshold=threshold, channel_thresholds=own)
    return cfg.WatchConfig((monitor,), retention=_duration(options.retention, "--retention"))


def _channel_thresholds(options: _MonitorOptions) -> dict[str, object]:
    """--digest-threshold-for CHANNEL=N, as channel (a --webhook URL or an --email address)
    and N, its own threshold (checked with the channel)."""
    given: dict[str, object] = {}
    for text in options.channel_thresholds:
        channel, sep, number = text.rpartition("=")
        if not sep or not channel.strip():
            raise fail(f"--digest-threshold-for {text!r}: give CHANNEL=N, a --webhook URL or "
                       "an --email address and its threshold")
        given[channel.strip()] = int(number) if re.fullmatch(r"\s*-?\d+\s*", number) \
            else number
    return given


def _channel_entries(options: _MonitorOptions) -> dict[str, str]:
    """Each --webhook URL and --email address as given, and its channel's name."""
    from vncaudit.watch import config as cfg

    entries = {url.strip(): cfg.webhook_name(url.strip()) for url in options.webhooks}
    entries.update({a.strip(): f"email:{a.strip()}" for a in options.emails})
    return entries


def _webhook_channels(options: _MonitorOptions) -> list[Any]:
    """--webhook channels, signed with the key of --webhook-secret-file or the environment."""
    import os

    from vncaudit.watch import config as cfg

    secret: str | None = None
    if options.webhook_secret_file is not None:
        secret = cfg.read_secret(options.webhook_secret_file, "--webhook-secret-file")
    elif os.environ.get(cfg.WEBHOOK_SECRET_ENV):
        secret = os.environ[cfg.WEBHOOK_SECRET_ENV]
    channels: list[Any] = []
    for url in options.webhooks:
        checked = cfg.check_url(url, "--webhook")
        channels.append(cfg.WebhookChannel(cfg.webhook_name(checked), checked,
                                           secret.encode() if secret else None))
    return channels


def _email_channels(options: _MonitorOptions) -> list[Any]:
    """--email channels through the --smtp server (its password from --smtp-password-file
    or the environment)."""
    import os

    from vncaudit.watch import config as cfg

    smtp, security = options.smtp, options.smtp_security
    if not options.emails:
        if smtp is not None:
            raise fail("--smtp is the server for --email; add --email ADDRESS")
        return []
    if smtp is None:
        raise fail("--email needs --smtp HOST[:PORT] (the mail server that sends it)")
    if security not in cfg.SMTP_SECURITY:
        raise fail(f"--smtp-security must be one of {', '.join(cfg.SMTP_SECURITY)}")
    host, port = cfg.parse_smtp_address(smtp)
    password = (cfg.read_secret(options.smtp_password_file, "--smtp-password-file")
                if options.smtp_password_file is not None
                else os.environ.get(cfg.SMTP_PASSWORD_ENV) or None)
    if password and not options.smtp_user:
        raise fail("an SMTP password needs --smtp-user")
    sender = cfg.check_email(options.smtp_from or "vncaudit@localhost", "--smtp-from")
    settings = cfg.SmtpSettings(host=host, port=port or cfg.default_smtp_port(security),
                                security=security, username=options.smtp_user,
                                password=password, sender=sender)
    channels: list[Any] = []
    for address in options.emails:
        to = cfg.check_email(address, "--email")
        channels.append(cfg.EmailChannel(f"email:{to}", to, settings))
    return channels


@app.command(epilog=_WATCH_EXAMPLES)
def watch(
    targets: Annotated[
        list[str] | None,
        typer.Argument(metavar="TARGET", help="What to monitor: IPs, CIDRs, ranges, host "
                       "names (or --config for several named monitors)."),
    ] = None,
    ports: Annotated[
        str, typer.Option("-p", "--ports", metavar="PORTS", help="Ports, as for scan.")
    ] = "5800,5900-5910",
    every: Annotated[
        str | None, typer.Option("--every", metavar="DURATION",
                                 help="Period between cycles: 30m, 6h, 1d, 1h30m.")
    ] = None,
    cron: Annotated[
        str | None, typer.Option("--cron", metavar="EXPR",
                                 help="Cron schedule instead of --every, local time "
                                 "('0 */6 * * *').")
    ] = None,
    once: Annotated[
        bool, typer.Option("--once", help="Run one cycle of every monitor, deliver, exit "
                           "(for cron or a systemd timer).")
    ] = False,
    config: Annotated[
        Path | None, typer.Option("--config", metavar="FILE",
                                  help="monitors.toml with several named monitors "
                                  "(see README).")
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", metavar="NAME",
                                 help="Monitor name (default: targets and ports); cycles of "
                                 "the same name are compared.")
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option("--exclude", metavar="TARGET",
                                       help="Targets to leave out (repeatable).")
    ] = None,
    alerts: Annotated[
        str, typer.Option("--alerts", metavar="RULES", rich_help_panel=_ALERT,
                          help="Alert rules, comma-separated: reachable, no-auth, severity, "
                          "cve, gone.")
    ] = "reachable,no-auth,severity,cve",
    remind_every: Annotated[
        str | None, typer.Option("--remind-every", metavar="DURATION", rich_help_panel=_ALERT,
                                 help="Remind while a service stays reachable, e.g. 7d.")
    ] = None,
    digest_threshold: Annotated[
        int | None, typer.Option("--digest-threshold", metavar="N", rich_help_panel=_ALERT,
                                 help="A cycle with more than N alerts sends each webhook "
                                 "and e-mail one digest instead (default 20; 0: never).",
                                 show_default=False)
    ] = None,
    digest_threshold_for: Annotated[
        list[str] | None, typer.Option("--digest-threshold-for", metavar="CHANNEL=N",
                                       rich_help_panel=_ALERT,
                                       help="This --webhook URL's or --email address's own "
                                       "digest threshold; repeatable.")
    ] = None,
    webhook: Annotated[
        list[str] | None, typer.Option("--webhook", metavar="URL", rich_help_panel=_ALERT,
                                       help="POST alerts here as JSON (Slack, Mattermost, "
                                       "Teams or your own receiver); repeatable.")
    ] = None,
    webhook_secret_file: Annotated[
        Path | None, typer.Option("--webhook-secret-file", metavar="FILE",
                                  rich_help_panel=_ALERT,
                                  help="Key for the X-Vncaudit-Signature HMAC-SHA256 header.")
    ] = None,
    email: Annotated[
        list[str] | None, typer.Option("--email", metavar="ADDRESS", rich_help_panel=_ALERT,
                                       help="Mail alerts to this address; repeatable.")
    ] = None,
    smtp: Annotated[
        str | None, typer.Option("--smtp", metavar="HOST[:PORT]", rich_help_panel=_ALERT,
                                 help="Mail server for --email (port 587 by default).")
    ] = None,
    smtp_security: Annotated[
        str, typer.Option("--smtp-security", metavar="MODE", rich_help_panel=_ALERT,
                          help="starttls, tls (implicit, port 465) or none.")
    ] = "starttls",
    smtp_user: Annotated[
        str | None, typer.Option("--smtp-user", metavar="USER", rich_help_panel=_ALERT,
                                 help="SMTP login.")
    ] = None,
    smtp_password_file: Annotated[
        Path | None, typer.Option("--smtp-password-file", metavar="FILE",
                                  rich_help_panel=_ALERT, help="SMTP password.")
    ] = None,
    smtp_from: Annotated[
        str | None, typer.Option("--smtp-from", metavar="ADDRESS", rich_help_panel=_ALERT,
                                 help="Sender address.")
    ] = None,
    stdout: Annotated[
        bool | None, typer.Option("--stdout/--no-stdout", rich_help_panel=_ALERT,
                                  help="Alerts as JSON lines on stdout (default: on when no "
                                  "webhook or e-mail is given).", show_default=False)
    ] = None,
    deliver_for: Annotated[
        float, typer.Option("--deliver-for", metavar="SECONDS", min=0, callback=finite,
                            rich_help_panel=_ALERT,
                            help="--once: keep retrying failed deliveries this long; what "
                            "still fails waits in the store for the next run.")
    ] = 60.0,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.1, metavar="SECONDS", callback=finite,
                            rich_help_panel=_SCAN, help="One deadline per probe.")
    ] = 5.0,
    concurrency: Annotated[
        int, typer.Option("--concurrency", min=1, metavar="N", rich_help_panel=_SCAN,
                          help="Probes in flight at once.")
    ] = 512,
    rate: Annotated[
        float | None, typer.Option("--rate", min=0.1, metavar="PER_SECOND", callback=finite,
                                   rich_help_panel=_SCAN,
                                   help="Max new connections (syn: packets) per second.")
    ] = None,
    discovery: Annotated[
        str, typer.Option("--discovery", metavar="MODE", rich_help_panel=_SCAN,
                          help="connect or syn, as for scan.")
    ] = "connect",
    retention: Annotated[
        str | None, typer.Option("--retention", metavar="DURATION",
                                 help="Delete scans older than this after cycles (e.g. 90d; "
                                 "each monitor's latest cycle is kept).")
    ] = None,
    db: DbOpt = None,
    verbose: Annotated[
        int, typer.Option("-v", "--verbose", count=True, help="More log lines (-vv: debug).")
    ] = 0,
) -> None:
    """Watch targets on a schedule and alert on what changed.

    Each cycle is a stored scan, compared with the monitor's previous one.
    Runs in the foreground; --once runs one cycle and exits (cron, timers).
    \f
    Length: the option declarations are the command's interface (typer reads them from the
    signature); the body is a few calls to helpers."""
    setup_logging(verbose)
    watch_config = _watch_config(config, _MonitorOptions(
        tuple(targets or ()), ports, every, cron, once, name, tuple(exclude or ()), alerts,
        remind_every, digest_threshold, tuple(digest_threshold_for or ()),
        tuple(webhook or ()), webhook_secret_file,
        tuple(email or ()), smtp, smtp_security, smtp_user, smtp_password_file, smtp_from,
        stdout, timeout, concurrency, rate, discovery, retention))
    _note_unsigned(watch_config)
    if watch_config.db is not None and db is None:
        db = Path(watch_config.db)
    store = open_store(db)
    with store:
        if store.path is None:
            raise fail("watch needs a database file (--db FILE), not :memory:")
        _run(store, watch_config, once, deliver_for)


def _note_unsigned(watch_config: Any) -> None:
    """One dim line naming the webhooks that send without a signature."""
    from vncaudit.watch import config as cfg

    unsigned = sorted({c.name for m in watch_config.monitors for c in m.channels
                       if isinstance(c, cfg.WebhookChannel) and c.secret is None})
    if unsigned:
        err.print(_folded(f"note: {', '.join(unsigned)} not signed (no secret_file, "
                          f"--webhook-secret-file or ${cfg.WEBHOOK_SECRET_ENV})", 6),
                  style="dim", markup=False, soft_wrap=True)


def _status(event: Any) -> None:
    stamp = datetime.now().strftime("%H:%M:%S")
    style = "red" if event.level >= logging.ERROR else \
        "yellow" if event.level >= logging.WARNING else None
    err.print(_folded(f"{stamp} {event.text}", len(stamp) + 1), style=style, markup=False,
              soft_wrap=True, highlight=False)


def _folded(line: str, indent: int) -> str:
    """A status line as a person reads it on a terminal: broken between words at its width,
    the rest indented under the text; elsewhere (a log file, a pipe) one line each, as
    programs read it."""
    if not err.is_terminal:
        return line
    import textwrap

    return textwrap.fill(line, width=max(40, err.width), subsequent_indent=" " * indent,
                         break_long_words=False, break_on_hyphens=False)


def _run(store: Any, watch_config: Any, once: bool, deliver_for: float) -> None:
    from vncaudit.engine import run as run_loop
    from vncaudit.watch import Watcher

    watcher = Watcher(store, watch_config, on_event=_status, stdout=sys.stdout)
    try:
        watcher.start()
    except StoreError as exc:
        raise fail(str(exc), 3) from None

    async def main() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            if once:
                await watcher.run_once(deliver_for)
            else:
                names = ", ".join(m.name for m in watch_config.monitors)
                count = len(watch_config.monitors)
                _status(_event(f"watching {count} monitor{'' if count == 1 else 's'}: "
                               f"{names} (SIGTERM or Ctrl-C stops)"))
                await watcher.run_forever()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    try:
        run_loop(main())
    except asyncio.CancelledError:
        _status(_event("vncaudit watch stopped; undelivered alerts stay queued in the store"))
    except VncAuditError as exc:
        raise fail(str(exc), 3) from None
    finally:
        watcher.stop()


def _event(text: str) -> Any:
    from vncaudit.watch import Event

    return Event(text)


@app.command(epilog="""Examples:

  vncaudit alerts                             the latest alerts of every monitor
  vncaudit alerts --monitor office -o json
  vncaudit alerts --scan SCAN_ID              every alert of one cycle (a digest's rest)
  vncaudit alerts --retry-failed              queue deliveries that gave up again""")
def alerts(
    monitor: Annotated[
        str | None, typer.Option("--monitor", metavar="NAME", help="Only this monitor.")
    ] = None,
    scan: Annotated[
        str | None, typer.Option("--scan", metavar="SCAN_ID",
                                 help="Only the alerts of this cycle (all of them unless "
                                 "--limit is given).")
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, metavar="N",
                                              help="How many alerts (default 50).",
                                              show_default=False)] = None,
    output: Annotated[
        str, typer.Option("-o", "--output", metavar="FORMAT", help="table or json.")
    ] = "table",
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Queue deliveries that failed for good "
                           "again (the next watcher run sends them).")
    ] = False,
    db: DbOpt = None,
) -> None:
    """List the monitors' alerts, newest first, with each delivery's state."""
    from vncaudit.watch.records import MonitorDb

    if output not in ("table", "json"):
        raise fail(f"alerts are printed as table or json, not {output}")
    try:
        with open_store(db) as store:
            records = MonitorDb(store)
            if retry_failed:
                count = records.retry_failed(monitor)
                err.print(f"{count} failed deliver{'y' if count == 1 else 'ies'} queued again",
                          markup=False)
                return
            found = records.alerts(monitor, limit if limit is not None or scan is not None
                                   else 50, scan)
    except StoreError as exc:
        raise fail(str(exc), 3) from None
    if output == "json":
        doc = [{**r.alert.to_dict(), "text": r.alert.text,
                "deliveries": [d.to_dict() for d in r.deliveries]} for r in found]
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return
    if not found:
        err.print(f"no alerts of cycle {scan}" if scan is not None else "no alerts yet",
                  markup=False)
        return
    _alerts_table(found, shown_when=scan is None, shown_monitor=monitor is None and scan is None)


def _alerts_table(found: Sequence[Any], *, shown_when: bool, shown_monitor: bool) -> None:
    """The alerts as a table for a person at 80 columns: the time and the monitor only when
    they differ from row to row (not for one cycle, or one monitor), addresses never broken,
    the severity with the title (which names it most often), the deliveries counted."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(show_lines=False)
    columns = [*(["when"] if shown_when else []), *(["monitor"] if shown_monitor else []),
               "service", "alert", "deliveries"]
    for column in columns:
        table.add_column(column, overflow="fold",
                         no_wrap=column in ("when", "service"),
                         ratio={"alert": 3, "deliveries": 2}.get(column))
    for r in found:
        cells = [*([r.alert.created.replace("T", " ")[5:16]] if shown_when else []),
                 *([r.alert.monitor] if shown_monitor else []), r.alert.address,
                 r.alert.tagged, _deliveries(r.deliveries) or "-"]
        # Text, not markup: "webhook:pager:" must not become an emoji, nor "[x]" a style.
        table.add_row(*(Text(c) for c in cells))
    Console(highlight=False, emoji=False).print(table)


def _deliveries(deliveries: Sequence[Any]) -> str:
    """How many channels got the alert ("4 delivered (2 in a digest)"), then each channel
    it has not reached yet, by state, with its last error: what a person acts on (-o json
    names every channel)."""
    done = [d for d in deliveries if d.state == "delivered"]
    lines = []
    if done:
        carried = sum(1 for d in done if d.digest)
        lines.append(f"{len(done)} delivered" + (f" ({carried} in a digest)" if carried
                                                 else ""))
    for d in deliveries:
        if d.state != "delivered":
            how = " in a digest" if d.digest else ""
            error = f" ({d.last_error})" if d.last_error else ""
            lines.append(f"{d.state}{how}: {d.channel}{error}")
    return "\n".join(lines)


@app.command(epilog="""Examples:

  vncaudit prune --older-than 90d             delete scans older than 90 days
  vncaudit prune --older-than 30d --dry-run   only count what would go""")
def prune(
    older_than: Annotated[
        str, typer.Option("--older-than", metavar="DURATION",
                          help="Delete scans that started longer ago than this (90d, 12w).")
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what would be deleted; delete nothing.")
    ] = False,
    output: Annotated[
        str, typer.Option("-o", "--output", metavar="FORMAT", help="table or json.")
    ] = "table",
    db: DbOpt = None,
) -> None:
    """Delete old scans with their results and screenshots.

    Kept: each monitor's latest cycle and its baseline, and any alert not yet delivered."""
    from vncaudit.watch.prune import prune as run_prune

    if output not in ("table", "json"):
        raise fail(f"prune prints table or json, not {output}")
    seconds = _duration(older_than, "--older-than")
    assert seconds is not None
    try:
        with open_store(db) as store:
            report = run_prune(store, seconds, dry_run=dry_run)
    except StoreError as exc:
        raise fail(str(exc), 3) from None
    if output == "json":
        sys.stdout.write(json.dumps({**report.to_dict(), "dry_run": dry_run}) + "\n")
        return
    verb = "would delete" if dry_run else "deleted"
    typer.echo(f"{verb} {report.describe()}")
