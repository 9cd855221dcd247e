"""Digests: a cycle with more alerts than the monitor's `digest_threshold` sends each webhook
and e-mail channel ONE message that stands for them all; below it, or with 0, every alert goes
on its own. Nothing is lost: every alert stays in the store, the digest's delivery is retried
and recorded like an alert's.

Real parts: fake RFB servers on loopback addresses (tests/netns.py, a separate process), a
real HTTP receiver and a real SMTP server (STARTTLS, AUTH LOGIN; tests/receivers.py), and the
`vncaudit` CLI in a subprocess, as a timer would run `watch --once`.
"""

from __future__ import annotations

import ipaddress
import json
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import netns
import receivers
import servers

pytestmark = pytest.mark.timeout(300)

SERVICES = 25  # more than the default threshold (20)
HOSTS = [f"127.0.77.{i}" for i in range(1, SERVICES + 1)]
RANKS = {"critical": 5, "high": 4, "medium": 3, "low": 2, "info": 1, None: 0}


def vncaudit(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vncaudit", *args], capture_output=True,
                          text=True, timeout=timeout)


def listed(db: Path, scan_id: str) -> list[dict[str, Any]]:
    """Every alert of one cycle, as `vncaudit alerts --scan` lists them (no --limit)."""
    run = vncaudit("alerts", "--db", str(db), "--scan", scan_id, "-o", "json")
    assert run.returncode == 0, run.stderr
    found: list[dict[str, Any]] = json.loads(run.stdout)
    return found


def outbox(db: Path) -> list[tuple[str, str, str, int, str | None]]:
    with sqlite3.connect(db) as conn:
        return [tuple(r) for r in conn.execute(
            "SELECT a.rule, o.channel, o.state, o.attempts, o.last_error FROM outbox o "
            "JOIN alerts a ON a.key = o.alert_key ORDER BY o.id")]


def last_scan(db: Path) -> str:
    with sqlite3.connect(db) as conn:
        (scan_id,) = conn.execute("SELECT scan_id FROM monitor_cycles ORDER BY started DESC, "
                                  "rowid DESC LIMIT 1").fetchone()
    return str(scan_id)


@pytest.fixture
def farm() -> Iterator[int]:
    port = servers.free_port()
    with netns.fake_servers(port, HOSTS):
        yield port


def test_a_burst_is_one_digest_per_channel_and_a_small_cycle_is_alerts(tmp_path: Path) -> None:
    cert, key = receivers.self_signed(tmp_path)
    db = tmp_path / "w.db"
    config = tmp_path / "m.toml"
    (tmp_path / "pw").write_text(receivers.SMTP_PASSWORD + "\n")
    port = servers.free_port()
    with receivers.http_receiver(tmp_path / "hook.jsonl") as hook, \
            receivers.smtp_receiver(tmp_path / "mail.jsonl", cert, key) as mail:
        config.write_text(receivers.monitors_toml(db, mail.port, hook.port, cert, f"""
targets = {json.dumps(HOSTS)}
ports = "{port}"
every = "1h"
alerts = ["reachable", "no-auth", "severity", "cve", "gone"]
webhook = ["ops"]
email = ["ops@example.org"]
stdout = true
timeout = 3
"""))
        with netns.fake_servers(port, HOSTS):
            run = vncaudit("watch", "--config", str(config), "--once", "--deliver-for", "20")
        assert run.returncode == 0, run.stderr
        assert "more than 20: one digest to webhook:ops, email:ops@example.org" in run.stderr
        scan_id = last_scan(db)
        alerts = listed(db, scan_id)
        assert len(alerts) == SERVICES  # every alert is in the store, one by one

        # One digest per person-facing channel, standing for all of them ...
        (posted,) = hook.wait_for("accepted", 1, 10)
        (mailed,) = mail.wait_for("accepted", 1, 10)
        assert posted["type"] == "digest" and posted["alert"] is None
        digest = posted["digest"]
        assert digest["count"] == SERVICES and digest["scan_id"] == scan_id
        assert digest["key"] == posted["key"] == mailed["idempotency"]
        assert mailed["key"] == f"<{digest['key']}@vncaudit.invalid>"
        # ... while stdout (a pipe for programs) got every alert.
        lines = [json.loads(line) for line in run.stdout.splitlines() if line.strip()]
        assert sorted(line["host"] for line in lines) == sorted(HOSTS)
        assert {line["type"] for line in lines} == {"alert"}
        rows = outbox(db)
        assert sorted(r[1] for r in rows if r[0] == "digest") == ["email:ops@example.org",
                                                                   "webhook:ops"]
        assert {r[1] for r in rows if r[0] != "digest"} == {"stdout"}
        assert {r[2] for r in rows} == {"delivered"}

        # Its counts are the stored alerts' counts.
        rules = Counter(a["rule"] for a in alerts)
        severities = Counter(a["severity"] or "none" for a in alerts)
        no_auth = sum(1 for a in alerts if a["auth_required"] is False)
        assert 0 < no_auth < SERVICES  # the farm mixes None with password-only servers
        assert digest["by_rule"] == dict(rules) == {"reachable": SERVICES}
        assert digest["by_severity"] == dict(severities)
        assert digest["no_auth"] == no_auth
        assert [t["key"] for t in digest["top"]] == [a["key"] for a in sorted(
            alerts, key=lambda a: (-RANKS[a["severity"]], ipaddress.ip_address(a["host"]),
                                   a["port"]))][:10]
        assert digest["commands"] == [f"vncaudit alerts --monitor lab --scan {scan_id} "
                                      f"--db {db}", f"vncaudit results {scan_id} --db {db}"]
        assert posted["text"].startswith(f"vncaudit monitor lab: {SERVICES} alerts: "
                                         f"{SERVICES} newly reachable")
        assert f"{no_auth} need no password" in posted["text"]
        assert f"… and {SERVICES - 10} more" in posted["text"]
        assert f"All {SERVICES}: vncaudit alerts --monitor lab --scan {scan_id}" \
            in posted["text"]
        assert mailed["subject"].startswith(f"vncaudit lab: {SERVICES} alerts: ")
        assert mailed["subject"].endswith("(digest)")
        for sev, n in severities.items():
            assert f"  {sev:<8}  {n:>7}" in mailed["body"]
        assert f"Services that need no password: {no_auth}" in mailed["body"]
        assert f"vncaudit results {scan_id} --db {db}" in mailed["body"]

        # Each alert shows the digest's delivery for the channels the digest carried it to.
        for a in alerts:
            ways = {d["channel"]: d for d in a["deliveries"]}
            assert set(ways) == {"email:ops@example.org", "webhook:ops", "stdout"}
            assert ways["webhook:ops"]["digest"] == digest["key"]
            assert ways["stdout"]["digest"] is None
            assert {d["state"] for d in ways.values()} == {"delivered"}

        # A second cycle with 3 services gone: below the threshold, 3 alerts on their own.
        with netns.fake_servers(port, HOSTS[3:]):
            run = vncaudit("watch", "--config", str(config), "--once", "--deliver-for", "20")
        assert run.returncode == 0, run.stderr
        assert "digest" not in run.stderr
        hooks = hook.wait_for("accepted", 4, 10)[1:]
        mails = mail.wait_for("accepted", 4, 10)[1:]
        assert sorted(e["alert"]["host"] for e in hooks) == HOSTS[:3]
        assert {e["type"] for e in hooks} == {"alert"}
        assert all(e["alert"]["rules"] == ["gone"] for e in hooks)
        assert len(mails) == 3 and all("gone" in m["subject"] for m in mails)
        assert not hook.entries("duplicate") and not mail.entries("duplicate")


def test_the_digest_is_signed_and_numbers_the_threshold(tmp_path: Path, farm: int) -> None:
    secret = "digest-secret"
    (tmp_path / "secret").write_text(secret + "\n")
    db = tmp_path / "w.db"
    with receivers.http_receiver(tmp_path / "hook.jsonl", secret) as hook:
        run = vncaudit("watch", *HOSTS, "-p", str(farm), "--once", "--db", str(db),
                       "--webhook", f"http://127.0.0.1:{hook.port}/hook",
                       "--webhook-secret-file", str(tmp_path / "secret"), "--timeout", "3",
                       "--digest-threshold", "24")
        assert run.returncode == 0, run.stderr
        (entry,) = hook.wait_for("accepted", 1, 10)
    assert entry["signature_ok"] is True
    digest = entry["digest"]
    assert {"key", "monitor", "scan_id", "previous_scan_id", "count", "by_rule",
            "by_severity", "no_auth", "top", "commands", "created", "threshold",
            "title"} == set(digest)
    assert digest["count"] == SERVICES and digest["threshold"] == 24
    assert sum(digest["by_rule"].values()) == sum(digest["by_severity"].values()) == SERVICES
    assert len(digest["top"]) == 10
    assert all(set(t) >= {"host", "port", "rules", "severity", "title"} for t in digest["top"])


def test_threshold_zero_sends_every_alert_on_its_own(tmp_path: Path, farm: int) -> None:
    db = tmp_path / "w.db"
    with receivers.http_receiver(tmp_path / "hook.jsonl") as hook:
        run = vncaudit("watch", *HOSTS, "-p", str(farm), "--once", "--db", str(db),
                       "--webhook", f"http://127.0.0.1:{hook.port}/hook", "--timeout", "3",
                       "--digest-threshold", "0", "--deliver-for", "20")
        assert run.returncode == 0, run.stderr
        hooks = hook.wait_for("accepted", SERVICES, 20)
    assert len(hooks) == SERVICES
    assert sorted(e["alert"]["host"] for e in hooks) == sorted(HOSTS)
    assert "digest" not in run.stderr
    assert not [r for r in outbox(db) if r[0] == "digest"]


def test_exactly_the_threshold_is_not_a_digest(tmp_path: Path, farm: int) -> None:
    db = tmp_path / "w.db"
    with receivers.http_receiver(tmp_path / "hook.jsonl") as hook:
        run = vncaudit("watch", *HOSTS, "-p", str(farm), "--once", "--db", str(db),
                       "--webhook", f"http://127.0.0.1:{hook.port}/hook", "--timeout", "3",
                       "--digest-threshold", str(SERVICES), "--deliver-for", "20")
        assert run.returncode == 0, run.stderr
        assert len(hook.wait_for("accepted", SERVICES, 20)) == SERVICES


def test_a_failed_digest_is_recorded_retried_and_given_up_like_an_alert(
        tmp_path: Path, farm: int) -> None:
    db = tmp_path / "w.db"
    config = tmp_path / "m.toml"
    with receivers.http_receiver(tmp_path / "hook.jsonl") as hook:
        base = f"http://127.0.0.1:{hook.port}"
        text = (f'db = "{db}"\n[webhook.ops]\nurl = "{base}/status/503"\n'
                f'[monitor.lab]\ntargets = {json.dumps(HOSTS)}\nports = "{farm}"\n'
                'every = "1h"\nwebhook = ["ops"]\ntimeout = 3\n')
        config.write_text(text)
        run = vncaudit("watch", "--config", str(config), "--once", "--deliver-for", "0")
        assert run.returncode == 0, run.stderr
        assert "lab: digest of 25 alerts to webhook:ops not delivered (try 1" in run.stderr
        assert "answered 503 Service Unavailable" in run.stderr
        ((rule, channel, state, attempts, error),) = outbox(db)
        assert (rule, channel, state, attempts) == ("digest", "webhook:ops", "pending", 1)
        assert error is not None and "answered 503" in error
        # Every alert it stands for shows that delivery as pending, with the error.
        for a in listed(db, last_scan(db)):
            (way,) = a["deliveries"]
            assert way["state"] == "pending" and "answered 503" in way["last_error"]
            assert way["digest"] is not None

        # The receiver is fixed: the next run (nothing changed, no new alert) delivers it.
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE outbox SET next_attempt = 0")
        config.write_text(text.replace("/status/503", "/hook"))
        run = vncaudit("watch", "--config", str(config), "--once", "--deliver-for", "5")
        assert run.returncode == 0, run.stderr
        (entry,) = hook.wait_for("accepted", 1, 10)
        assert entry["type"] == "digest" and entry["digest"]["count"] == SERVICES
        assert [r[2:4] for r in outbox(db)] == [("delivered", 2)]

        # Failing for a week, it is recorded as failed, and --retry-failed queues it again.
        config.write_text(text)
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE outbox SET state = 'pending', next_attempt = 0, "
                         "created = '2020-01-01T00:00:00+00:00'")
        run = vncaudit("watch", "--config", str(config), "--once", "--deliver-for", "0")
        assert run.returncode == 0, run.stderr
        assert "lab: digest of 25 alerts to webhook:ops failed for good" in run.stderr
        assert [r[2] for r in outbox(db)] == ["failed"]
        run = vncaudit("alerts", "--db", str(db), "--retry-failed", "--monitor", "lab")
        assert run.returncode == 0 and "1 failed delivery queued again" in run.stderr
        assert [r[2] for r in outbox(db)] == ["pending"]
    assert len(hook.entries("accepted")) == 1


# ---------------------------------------------------------------------------------------------
# Configuration mistakes: one line, exit 2


def one_error_line(run: subprocess.CompletedProcess[str]) -> str:
    assert run.returncode == 2, (run.returncode, run.stderr)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vncaudit: error: "), run.stderr
    return lines[0]


@pytest.mark.parametrize(("value", "shown"), [("-1", "-1"), ('"20"', "'20'"), ("2.5", "2.5"),
                                              ("true", "True"), ("2000000", "2000000")])
def test_bad_digest_threshold_in_the_monitors_file(tmp_path: Path, value: str,
                                                   shown: str) -> None:
    config = tmp_path / "m.toml"
    config.write_text(f'[monitor.a]\ntargets = ["127.0.0.1"]\nevery = "1h"\n'
                      f"digest_threshold = {value}\n")
    line = one_error_line(vncaudit("watch", "--config", str(config), "--once"))
    assert f"{config}: [monitor.a]: digest_threshold must be a whole number of alerts from 0 " \
           f"(never digest) to 1000000, not {shown}" in line


@pytest.mark.parametrize(("args", "expected"), [
    (["--digest-threshold", "-5"], "--digest-threshold must be a whole number of alerts from "
     "0 (never digest) to 1000000, not -5"),
    (["--digest-threshold", "many"], "Invalid value for '--digest-threshold'"),
])
def test_bad_digest_threshold_option(args: list[str], expected: str) -> None:
    line = one_error_line(vncaudit("watch", "127.0.0.1", "--every", "1h", *args))
    assert expected in line


def test_digest_threshold_option_with_a_monitors_file(tmp_path: Path) -> None:
    config = tmp_path / "m.toml"
    config.write_text('[monitor.a]\ntargets = ["127.0.0.1"]\nevery = "1h"\n')
    line = one_error_line(vncaudit("watch", "--config", str(config), "--digest-threshold", "5"))
    assert "--config holds the monitors" in line and "digest_threshold there" in line
