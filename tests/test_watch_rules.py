"""The pieces of `vncaudit.watch` that need no network: schedules, the monitors file, the alert
rules over two cycles, the webhook signature, the outbox's back-off and its crash rules over a
real SQLite store, and retention."""

from __future__ import annotations

import asyncio
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from vncaudit.models import Finding, Product, RfbFacts, ServiceResult, Severity, State
from vncaudit.payloads import ActiveChecks, Extras, ScreenshotCheck
from vncaudit.store import Store
from vncaudit.watch import config as cfg
from vncaudit.watch.alerts import Change, Tracked, alert_key, evaluate
from vncaudit.watch.channels import sign, verify, webhook_body
from vncaudit.watch.cycle import evaluate_cycle
from vncaudit.watch.outbox import Deliverer
from vncaudit.watch.prune import prune
from vncaudit.watch.records import BACKOFF_CAP, MonitorDb, backoff
from vncaudit.watch.schedule import Schedule, ScheduleError, format_duration, parse_duration

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def vnc(port: int = 5900, auth: bool | None = True, findings: tuple[Finding, ...] = (),
        state: State = State.VNC, product: str | None = None) -> ServiceResult:
    return ServiceResult("10.0.0.5", port, state, rfb=RfbFacts("RFB 003.008\n",
                                                               auth_required=auth),
                         product=Product(product, "1.12.0", 0.9) if product else None,
                         findings=findings)


def finding(fid: str, severity: Severity) -> Finding:
    return Finding(fid, severity, f"title of {fid}")


# ---------------------------------------------------------------------------------------------
# Schedules


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("30m", 1800), ("6h", 21600),
                                                ("1d", 86400), ("2w", 1209600),
                                                ("1h30m", 5400), (" 1.5h ", 5400)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "6", "6x", "h", "-1h", "1h 30", "six hours", "1h-"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ScheduleError, match="is not a duration"):
        parse_duration(text)


def test_period_counts_from_the_last_start_and_never_catches_up() -> None:
    every = Schedule.parse(every="6h")
    assert every.next_after(None, NOW) == NOW  # a new monitor runs at once
    assert every.next_after(NOW - timedelta(hours=1), NOW) == NOW + timedelta(hours=5)
    assert every.next_after(NOW - timedelta(days=3), NOW) == NOW  # once, not 12 times
    assert format_duration(every.every or 0) == "6h"


def test_cron_schedule() -> None:
    cron = Schedule.parse(cron="0  */6 * * *")
    assert cron.describe() == "cron 0 */6 * * *"
    last = datetime(2026, 12, 1, 6, 0, tzinfo=UTC).astimezone()
    due = cron.next_after(last, last + timedelta(minutes=1))
    assert due - last == timedelta(hours=6)
    with pytest.raises(ScheduleError, match="cron expression"):
        Schedule.parse(cron="every day")


# ---------------------------------------------------------------------------------------------
# The monitors file


def test_monitors_file_is_read_with_secrets_from_files(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("s3cret\n")
    (tmp_path / "smtp-pass").write_text("pw\n")
    path = tmp_path / "monitors.toml"
    path.write_text("""
retention = "90d"
[smtp]
host = "smtp.example.org"
username = "me"
password_file = "smtp-pass"
from = "vncaudit@example.org"
[webhook.ops]
url = "https://chat.example.org/hooks/abc"
secret_file = "secret"
[monitor.office]
targets = ["10.0.0.0/24"]
ports = "5900-5910"
every = "6h"
alerts = ["reachable", "gone"]
remind_every = "7d"
webhook = ["ops", "https://other.example.org/x"]
email = ["a@example.org", "b@example.org"]
digest_threshold = 0
[monitor.lab]
targets = "192.0.2.1"
cron = "0 2 * * *"
""")
    loaded = cfg.load(path, environ={})
    office, lab = loaded.monitors
    assert loaded.retention == 90 * 86400
    assert office.rules.names() == ("reachable", "gone", "reminder")
    assert office.rules.remind_every == 7 * 86400
    names = [c.name for c in office.channels]
    assert names[0] == "webhook:ops" and names[1].startswith("webhook:other.example.org#")
    assert "/x" not in names[1]  # a webhook URL's path (its secret) is never shown
    assert names[2:] == ["email:a@example.org", "email:b@example.org"]
    hook = office.channels[0]
    assert isinstance(hook, cfg.WebhookChannel) and hook.secret == b"s3cret"
    mail = office.channels[2]
    assert isinstance(mail, cfg.EmailChannel)
    assert (mail.smtp.port, mail.smtp.security, mail.smtp.password) == (587, "starttls", "pw")
    assert "pw" not in repr(mail) and "s3cret" not in repr(hook)
    assert lab.targets == ("192.0.2.1",) and lab.schedule.cron == "0 2 * * *"
    assert [c.name for c in lab.channels] == ["stdout"]  # no channel: JSON lines
    assert lab.rules.names() == cfg.DEFAULT_RULES
    assert (office.digest_threshold, lab.digest_threshold) == (0, 20)
    assert [cfg.digests(c) for c in (hook, mail, *lab.channels)] == [True, True, False]


# ---------------------------------------------------------------------------------------------
# Alert rules


RULES = cfg.AlertRules.from_names(cfg.RULES)


def run(changes: list[Change], open_now: dict[tuple[str, int], ServiceResult],
        tracked: dict[tuple[str, int], Tracked] | None = None,
        rules: cfg.AlertRules = RULES, not_probed: tuple[tuple[str, int], ...] = (),
        now: datetime = NOW) -> tuple[list[tuple[str, ...]], dict[tuple[str, int], Tracked]]:
    ev = evaluate("m", rules, "s-2", "s-1", changes, open_now, not_probed, tracked or {}, now)
    return [a.rules for a in ev.alerts], ev.tracked


def test_new_service_is_one_alert_with_every_rule_it_matches() -> None:
    after = vnc(auth=False, findings=(finding("no-auth", Severity.CRITICAL),
                                      finding("known-cve:CVE-2019-15681", Severity.HIGH)))
    rules, tracked = run([Change("10.0.0.5", 5900, None, after)], {("10.0.0.5", 5900): after})
    assert rules == [("reachable", "no-auth", "severity", "cve")]
    assert tracked[("10.0.0.5", 5900)] == Tracked(NOW.isoformat(timespec="seconds"),
                                                  NOW.isoformat(timespec="seconds"))


def test_each_rule_can_be_switched_off() -> None:
    after = vnc(auth=False, findings=(finding("no-auth", Severity.CRITICAL),))
    only = cfg.AlertRules.from_names(["no-auth"])
    assert run([Change("10.0.0.5", 5900, None, after)], {}, rules=only)[0] == [("no-auth",)]
    none = cfg.AlertRules.from_names([])
    assert run([Change("10.0.0.5", 5900, None, after)], {}, rules=none)[0] == []


def test_auth_newly_not_required_on_a_known_service() -> None:
    before, after = vnc(auth=True), vnc(auth=False)
    assert run([Change("10.0.0.5", 5900, before, after)], {})[0] == [("no-auth",)]
    # The reverse (a password now required) is good news: no alert.
    assert run([Change("10.0.0.5", 5900, after, before)], {})[0] == []


def test_severity_raised_only_upwards_and_from_low() -> None:
    low = vnc(findings=(finding("a", Severity.LOW),))
    high = vnc(findings=(finding("b", Severity.HIGH),))
    info = vnc(findings=(finding("c", Severity.INFO),))
    assert run([Change("10.0.0.5", 5900, low, high)], {})[0] == [("severity",)]
    assert run([Change("10.0.0.5", 5900, high, low)], {})[0] == []
    assert run([Change("10.0.0.5", 5900, vnc(), info)], {})[0] == []


def test_known_cve_appeared_but_not_a_possible_one() -> None:
    cve = finding("known-cve:CVE-2006-2369", Severity.HIGH)
    before = vnc(findings=(cve,))
    after = vnc(findings=(cve, finding("known-cve:CVE-2019-15681", Severity.HIGH)))
    ev = evaluate("m", RULES, "s-2", "s-1", [Change("10.0.0.5", 5900, before, after)], {}, (),
                  {}, NOW)
    assert [a.rules for a in ev.alerts] == [("cve",)]
    assert "CVE-2019-15681" in ev.alerts[0].title and "2006" not in ev.alerts[0].title
    possible = vnc(findings=(finding("possible-cves", Severity.INFO),))
    assert run([Change("10.0.0.5", 5900, vnc(), possible)], {})[0] == []


def test_gone_is_opt_in_and_never_for_a_pair_not_probed() -> None:
    before = vnc()
    assert run([Change("10.0.0.5", 5900, before, None)], {})[0] == [("gone",)]
    default = cfg.AlertRules.from_names(cfg.DEFAULT_RULES)
    assert run([Change("10.0.0.5", 5900, before, None)], {}, rules=default)[0] == []
    # VNC replaced by something else on the port is gone too.
    other = vnc(state=State.OPEN_NOT_VNC)
    assert run([Change("10.0.0.5", 5900, before, other)], {})[0] == [("gone",)]
    # Not probed this cycle: still tracked, nothing said.
    seen = {("10.0.0.5", 5900): Tracked("2026-11-01T00:00:00+00:00")}
    alerts, tracked = run([], {}, seen, not_probed=(("10.0.0.5", 5900),))
    assert alerts == [] and tracked == seen


def test_unchanged_service_raises_nothing_and_the_reminder_comes_every_n_days() -> None:
    service = vnc(auth=False)
    key = ("10.0.0.5", 5900)
    weekly = cfg.AlertRules(remind_every=7 * 86400)
    since = (NOW - timedelta(days=3)).isoformat(timespec="seconds")
    alerts, tracked = run([], {key: service}, {key: Tracked(since, since)}, rules=weekly)
    assert alerts == [] and tracked[key] == Tracked(since, since)
    later = NOW + timedelta(days=5)
    alerts, tracked = run([], {key: service}, tracked, rules=weekly, now=later)
    assert alerts == [("reminder",)]
    assert tracked[key].last_alert == later.isoformat(timespec="seconds")
    # Right after a reminder: quiet again.
    alerts, _ = run([], {key: service}, tracked, rules=weekly, now=later + timedelta(hours=6))
    assert alerts == []
    # Without the opt-in there is never a reminder.
    assert run([], {key: service}, tracked, now=later + timedelta(days=30))[0] == []


def test_alert_keys_are_stable_per_cycle_and_service() -> None:
    assert alert_key("m", "s-1", "10.0.0.5", 5900) == alert_key("m", "s-1", "10.0.0.5", 5900)
    keys = {alert_key("m", "s-1", "10.0.0.5", 5900), alert_key("m", "s-2", "10.0.0.5", 5900),
            alert_key("m", "s-1", "10.0.0.5", 5901), alert_key("n", "s-1", "10.0.0.5", 5900)}
    assert len(keys) == 4


def test_webhook_body_has_text_and_a_verifiable_signature() -> None:
    after = vnc(auth=False)
    (alert,) = evaluate("office", RULES, "s-2", None, [Change("10.0.0.5", 5900, None, after)],
                        {}, (), {}, NOW).alerts
    body = webhook_body(alert)
    doc = json.loads(body)
    assert doc["text"].startswith("vncaudit monitor office: 10.0.0.5:5900 VNC newly reachable")
    assert doc["alert"]["key"] == alert.key == doc["idempotency_key"]
    signature = sign(b"k", "1700000000", body)
    assert verify(b"k", "1700000000", body, signature)
    assert not verify(b"other", "1700000000", body, signature)
    assert not verify(b"k", "1700000001", body, signature)  # the timestamp is signed too


def test_backoff_doubles_to_a_cap_and_honours_retry_after() -> None:
    assert 8 <= backoff(1) <= 12 and 16 <= backoff(2) <= 24
    assert backoff(30) <= BACKOFF_CAP * 1.2
    assert backoff(1, retry_after=120) == 120


# ---------------------------------------------------------------------------------------------
# The outbox and evaluation over a real store


def monitor(channels: tuple[cfg.Channel, ...] = (cfg.StdoutChannel(),)) -> cfg.Monitor:
    return cfg.Monitor("lab", ("10.0.0.5",), "5900", Schedule(every=3600), RULES, channels)


def stored_cycle(store: Store, db: MonitorDb, results: list[ServiceResult]) -> str:
    scan_id = store.create_scan(["10.0.0.5"], "5900", {"source": "watch"})
    db.start_cycle("lab", scan_id)
    store.add_results(scan_id, results)
    store.finish_scan(scan_id)
    db.finish_cycle(scan_id, "finished")
    return scan_id


def test_evaluating_a_cycle_twice_queues_nothing_twice(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s.db") as store:
        db = MonitorDb(store)
        db.register(monitor())
        first = stored_cycle(store, db, [vnc(auth=True)])
        assert len(evaluate_cycle(store, db, monitor(), first)[1]) == 1
        second = stored_cycle(store, db, [vnc(auth=False)])
        _, alerts, _ = evaluate_cycle(store, db, monitor(), second)
        assert [a.rules for a in alerts] == [("no-auth",)]
        assert db.baseline("lab") == second
        # A crash before the cycle was marked evaluated: done again, same keys, no duplicate.
        with store.writing("test") as conn:
            conn.execute("UPDATE monitor_cycles SET evaluated = NULL WHERE scan_id = ?",
                         (second,))
        store.flush()
        assert [c.scan_id for c in db.unevaluated("lab")] == [second]
        again = evaluate_cycle(store, db, monitor(), second)[1]
        assert [a.key for a in again] == [a.key for a in alerts]
        assert db.alert_count("lab") == 2
        assert db.outbox_counts() == {"pending": 2, "delivered": 0, "failed": 0}


def test_stdout_delivery_and_a_channel_that_was_removed(tmp_path: Path) -> None:
    out = io.StringIO()
    with Store.open(tmp_path / "s.db") as store:
        db = MonitorDb(store)
        hook = cfg.WebhookChannel("webhook:gone", "http://127.0.0.1:9/")
        m = monitor((cfg.StdoutChannel(), hook))
        db.register(m)
        evaluate_cycle(store, db, m, stored_cycle(store, db, [vnc(auth=False)]))
        deliverer = Deliverer(db, {"stdout": cfg.StdoutChannel()}, stdout=out)
        assert asyncio.run(deliverer.drain(0)) == 1
        line = json.loads(out.getvalue())
        assert line["type"] == "alert" and line["port"] == 5900
        (record,) = db.alerts("lab")
        states = {d.channel: (d.state, d.last_error) for d in record.deliveries}
        assert states == {"stdout": ("delivered", None),
                          "webhook:gone": ("failed",
                                           "channel webhook:gone is no longer configured")}


def test_prune_keeps_each_monitors_latest_and_baseline_cycles(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s.db") as store:
        db = MonitorDb(store)
        db.register(monitor())
        shot = tmp_path / "shot.png"
        shot.write_bytes(b"\x89PNG")
        pictured = vnc()
        pictured = ServiceResult(pictured.host, pictured.port, pictured.state, pictured.rfb,
                                 extra=Extras(active=ActiveChecks(screenshot=ScreenshotCheck(
                                     "ok", path=str(shot), outcome="ok"))))
        plain = store.create_scan(["10.0.0.9"], "5900", {})
        store.add_result(plain, pictured)
        store.finish_scan(plain)
        cycles = [stored_cycle(store, db, [vnc()]) for _ in range(3)]
        for c in cycles:
            evaluate_cycle(store, db, monitor(), c)
        later = datetime.now(UTC) + timedelta(days=100)
        dry = prune(store, 90 * 86400, dry_run=True, now=later)
        assert (dry.scans, dry.screenshots, dry.kept) == (3, 1, 1)
        assert store.get_scan(plain) is not None and shot.exists()
        report = prune(store, 90 * 86400, now=later)
        assert (report.scans, report.results, report.screenshots) == (3, 3, 1)
        assert not shot.exists()
        assert store.get_scan(plain) is None
        assert [s.id for s in store.list_scans()] == [cycles[-1]]
        assert db.baseline("lab") == cycles[-1]
        # The alert of the first cycle is still pending (never delivered): kept.
        assert db.alert_count("lab") == 1


def test_a_cycle_the_ledger_kept_from_probing_raises_no_alert(tmp_path: Path) -> None:
    """`not-probed` (the connection ledger let nothing be sent) is not "gone", and the cycle
    after it, which reads the service again, does not call it newly reachable."""
    gone = cfg.AlertRules.from_names(cfg.RULES)
    with Store.open(tmp_path / "s.db") as store:
        db = MonitorDb(store)
        db.register(monitor())
        lab = cfg.Monitor("lab", ("10.0.0.5",), "5900", Schedule(every=3600), gone,
                          (cfg.StdoutChannel(),))
        first = stored_cycle(store, db, [vnc()])
        assert [a.rules for a in evaluate_cycle(store, db, lab, first)[1]] == [("reachable",)]
        skipped = stored_cycle(store, db, [vnc(state=State.NOT_PROBED)])
        assert not evaluate_cycle(store, db, lab, skipped)[1]
        again = stored_cycle(store, db, [vnc()])
        assert not evaluate_cycle(store, db, lab, again)[1]
        closed = stored_cycle(store, db, [vnc(state=State.CLOSED)])
        assert [a.rules for a in evaluate_cycle(store, db, lab, closed)[1]] == [("gone",)]


def test_alerts_list_the_newest_cycle_first_when_cycles_share_a_second(tmp_path: Path) -> None:
    """`created` has whole seconds: two cycles in one second are still listed newest first,
    each in the order it was queued."""
    with Store.open(tmp_path / "s.db") as store:
        db = MonitorDb(store)
        db.register(monitor())
        first = stored_cycle(store, db, [vnc(auth=True)])
        evaluate_cycle(store, db, monitor(), first)
        second = stored_cycle(store, db, [vnc(auth=False)])
        evaluate_cycle(store, db, monitor(), second)
        with store.writing("test") as conn:  # both in one second, as fast cycles are
            conn.execute("UPDATE alerts SET created = '2026-01-01T00:00:00+00:00'")
        store.flush()
        assert [(r.alert.scan_id, r.alert.rules) for r in db.alerts("lab")] == [
            (second, ("no-auth",)), (first, ("reachable",))]
