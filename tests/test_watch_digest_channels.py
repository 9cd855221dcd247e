"""A digest threshold per channel: each webhook and e-mail channel of a monitor may set its own
threshold (monitors.toml `digest_thresholds`, `watch --digest-threshold-for CHANNEL=N`), which
replaces the monitor's for it. Channels with the same threshold share one digest; each digest
names its threshold and has a key of its own.

Real parts: fake RFB servers on loopback addresses (tests/netns.py), the real HTTP receiver and
SMTP server (tests/receivers.py), the `vncaudit` CLI in a subprocess.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from test_watch_digest import HOSTS, SERVICES, farm, one_error_line, outbox, vncaudit

import receivers

pytestmark = pytest.mark.timeout(300)
__all__ = ["farm"]  # the fixture, used by name


def test_each_channel_digests_at_its_own_threshold(tmp_path: Path, farm: int) -> None:
    cert, key = receivers.self_signed(tmp_path)
    db = tmp_path / "w.db"
    config = tmp_path / "m.toml"
    (tmp_path / "pw").write_text(receivers.SMTP_PASSWORD + "\n")
    with receivers.http_receiver(tmp_path / "hook.jsonl") as hook, \
            receivers.smtp_receiver(tmp_path / "mail.jsonl", cert, key) as mail:
        quiet = f"http://127.0.0.1:{hook.port}/quiet"
        config.write_text(receivers.monitors_toml(db, mail.port, hook.port, cert, f"""
targets = {json.dumps(HOSTS)}
ports = "{farm}"
every = "1h"
webhook = ["ops", "{quiet}"]
email = ["ops@example.org", "boss@example.org"]
digest_thresholds = {{ "ops@example.org" = 0, "boss@example.org" = 24, "{quiet}" = 30 }}
timeout = 3
"""))
        run = vncaudit("watch", "--config", str(config), "--once", "--deliver-for", "30")
        assert run.returncode == 0, run.stderr
        # webhook:ops (the monitor's 20): a digest; /quiet (30): every alert; ops@ (0): every
        # alert; boss@ (24): a digest of its own.
        hooks = hook.wait_for("accepted", 1 + SERVICES, 30)
        mails = mail.wait_for("accepted", 1 + SERVICES, 30)
    assert "more than 24: one digest to email:boss@example.org" in run.stderr
    assert "more than 20: one digest to webhook:ops" in run.stderr
    [digest_hook] = [e for e in hooks if e["type"] == "digest"]
    assert digest_hook["path"] == "/hook" and digest_hook["digest"]["threshold"] == 20
    assert sorted(e["alert"]["host"] for e in hooks if e["type"] == "alert") == sorted(HOSTS)
    assert {e["path"] for e in hooks if e["type"] == "alert"} == {"/quiet"}
    [boss] = [m for m in mails if m["rcpt"] == ["boss@example.org"]]
    assert boss["subject"].endswith("(digest)")
    assert "digest threshold (24)" in " ".join(boss["body"].split())
    assert len([m for m in mails if m["rcpt"] == ["ops@example.org"]]) == SERVICES
    assert boss["idempotency"] != digest_hook["key"]  # two digests, two keys
    assert sorted(r[1] for r in outbox(db) if r[0] == "digest") == [
        "email:boss@example.org", "webhook:ops"]
    assert not hook.entries("duplicate") and not mail.entries("duplicate")
    with sqlite3.connect(db) as conn:
        (spec,) = conn.execute("SELECT spec FROM monitors WHERE name = 'lab'").fetchone()
    assert json.loads(spec)["channel_digest_thresholds"] == {
        "email:ops@example.org": 0, "email:boss@example.org": 24,
        next(c for c in json.loads(spec)["channels"] if "#" in c): 30}
    # `alerts --scan` shows each alert's way: in a digest to webhook:ops, on its own to /quiet.
    listing = json.loads(vncaudit("alerts", "--db", str(db), "-o", "json").stdout)
    ways = {d["channel"]: d["digest"] for d in listing[0]["deliveries"]}
    assert ways["webhook:ops"] is not None and ways["email:boss@example.org"] is not None
    assert ways["email:ops@example.org"] is None
    assert ways["webhook:ops"] != ways["email:boss@example.org"]


def test_digest_threshold_for_on_the_command_line(tmp_path: Path, farm: int) -> None:
    db = tmp_path / "w.db"
    with receivers.http_receiver(tmp_path / "hook.jsonl") as hook:
        loud, quiet = (f"http://127.0.0.1:{hook.port}/{p}" for p in ("loud", "quiet"))
        run = vncaudit("watch", *HOSTS, "-p", str(farm), "--once", "--db", str(db),
                       "--webhook", loud, "--webhook", quiet, "--timeout", "3",
                       "--digest-threshold", "30", "--digest-threshold-for", f"{loud}=5",
                       "--deliver-for", "20")
        assert run.returncode == 0, run.stderr
        hooks = hook.wait_for("accepted", 1 + SERVICES, 30)
    [digest] = [e for e in hooks if e["type"] == "digest"]
    assert digest["path"] == "/loud" and digest["digest"]["threshold"] == 5
    assert {e["path"] for e in hooks if e["type"] == "alert"} == {"/quiet"}
    assert len([e for e in hooks if e["type"] == "alert"]) == SERVICES
    assert "more than 5: one digest to webhook:127.0.0.1#" in run.stderr


@pytest.mark.parametrize(("args", "expected"), [
    (["--webhook", "http://127.0.0.1:9/h", "--digest-threshold-for", "ops@example.org=5"],
     "--digest-threshold-for: 'ops@example.org' is not a webhook or e-mail channel of this "
     "monitor; its channels: http://127.0.0.1:9/h"),
    (["--digest-threshold-for", "http://127.0.0.1:9/h=5"],
     "it has no webhook or e-mail channel"),
    (["--webhook", "http://127.0.0.1:9/h", "--digest-threshold-for", "5"],
     "--digest-threshold-for '5': give CHANNEL=N"),
    (["--webhook", "http://127.0.0.1:9/h", "--digest-threshold-for", "http://127.0.0.1:9/h=x"],
     "--digest-threshold-for http://127.0.0.1:9/h must be a whole number of alerts from 0 "
     "(never digest) to 1000000, not 'x'"),
    (["--webhook", "http://127.0.0.1:9/h", "--digest-threshold-for", "http://127.0.0.1:9/h=-1"],
     "not -1"),
])
def test_bad_digest_threshold_for(args: list[str], expected: str) -> None:
    line = one_error_line(vncaudit("watch", "127.0.0.1", "--every", "1h", *args))
    assert expected in line


@pytest.mark.parametrize(("table", "expected"), [
    ('{ "opz" = 5 }', "digest_thresholds: 'opz' is not a webhook or e-mail channel of this "
     "monitor (did you mean 'ops'?); its channels: ops"),
    ('{ ops = "5" }', "digest_thresholds ops must be a whole number of alerts"),
    ('5', "digest_thresholds must be a table, not 5"),
])
def test_bad_digest_thresholds_in_the_monitors_file(tmp_path: Path, table: str,
                                                    expected: str) -> None:
    config = tmp_path / "m.toml"
    config.write_text('[webhook.ops]\nurl = "http://127.0.0.1:9/h"\n[monitor.a]\n'
                      'targets = ["127.0.0.1"]\nevery = "1h"\nwebhook = ["ops"]\n'
                      f"digest_thresholds = {table}\n")
    line = one_error_line(vncaudit("watch", "--config", str(config), "--once"))
    assert f"{config}: [monitor.a]: {expected}" in line
