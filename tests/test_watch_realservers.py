"""`vncaudit watch` end to end: real VNC servers that change between cycles, a real HTTP receiver
and a real SMTP server (STARTTLS, AUTH LOGIN), each a separate process on loopback.

What must show: the right alert reaches both receivers exactly once; an unchanged cycle sends
nothing; a watcher killed with SIGKILL while it delivers, then restarted, delivers the alert
and the receiver (which honours the idempotency key) processes it once.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import require_binaries

import receivers
import servers

pytestmark = [pytest.mark.realserver, pytest.mark.timeout(600)]

SECRET = "hook-secret-for-tests"


def write_config(path: Path, *, db: Path, ports: str, hook_url: str,
                 smtp_port: int | None = None, cert: Path | None = None,
                 every: str = "1h", extra: str = "") -> None:
    (path.parent / "hook-secret").write_text(SECRET + "\n")
    (path.parent / "smtp-password").write_text(receivers.SMTP_PASSWORD + "\n")
    smtp = ""
    email = ""
    if smtp_port is not None:
        smtp = f"""
[smtp]
host = "127.0.0.1"
port = {smtp_port}
security = "starttls"
username = "{receivers.SMTP_USER}"
password_file = "smtp-password"
from = "vncaudit@example.org"
ca_file = "{cert}"
"""
        email = 'email = ["ops@example.org"]'
    path.write_text(f"""
db = "{db}"
{smtp}
[webhook.recv]
url = "{hook_url}"
secret_file = "hook-secret"
timeout = "20s"

[monitor.lab]
targets = ["127.0.0.1"]
ports = "{ports}"
every = "{every}"
alerts = ["reachable", "no-auth", "severity", "cve", "gone"]
webhook = ["recv"]
{email}
timeout = 3
{extra}
""")


def watch(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vncaudit", "watch", *args],
                          capture_output=True, text=True, timeout=timeout)


def outbox(db: Path) -> list[tuple[str, str, str, int]]:
    with sqlite3.connect(db) as conn:
        return [tuple(r) for r in conn.execute(
            "SELECT alert_key, channel, state, attempts FROM outbox ORDER BY id")]


def accepted(receiver: receivers.Receiver) -> list[dict[str, Any]]:
    return receiver.entries("accepted")


def test_changes_between_cycles_reach_http_and_smtp_once(tmp_path: Path) -> None:
    for kind in ("tigervnc-vncauth", "tigervnc-none"):
        require_binaries(kind)
    cert, key = receivers.self_signed(tmp_path)
    db = tmp_path / "watch.db"
    config = tmp_path / "monitors.toml"
    port_p, port_q = servers.free_port(), servers.free_port()
    hook_log, mail_log = tmp_path / "hook.jsonl", tmp_path / "mail.jsonl"
    started: list[servers.VncServer] = []
    with receivers.http_receiver(hook_log, SECRET) as hook, \
            receivers.smtp_receiver(mail_log, cert, key) as mail:
        write_config(config, db=db, ports=f"{port_p},{port_q}",
                     hook_url=f"http://127.0.0.1:{hook.port}/hook", smtp_port=mail.port,
                     cert=cert)

        def cycle(expect_new: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            before_hook, before_mail = len(accepted(hook)), len(accepted(mail))
            run = watch("--config", str(config), "--once", "--deliver-for", "20")
            assert run.returncode == 0, run.stderr
            hooks = hook.wait_for("accepted", before_hook + expect_new, 10)[before_hook:]
            mails = mail.wait_for("accepted", before_mail + expect_new, 10)[before_mail:]
            assert len(hooks) == expect_new, (run.stderr, hook.entries())
            assert len(mails) == expect_new, (run.stderr, mail.entries())
            return hooks, mails

        try:
            # 1. A password-protected server appears: "newly reachable", not "no-auth".
            started.append(servers.start("tigervnc-vncauth", port=port_p))
            hooks, mails = cycle(1)
            alert = hooks[0]["alert"]
            assert alert["port"] == port_p and alert["rules"][0] == "reachable"
            assert "no-auth" not in alert["rules"]
            assert hooks[0]["signature_ok"] is True
            assert f"127.0.0.1:{port_p}" in hooks[0]["text"]
            assert mails[0]["tls"] is True and mails[0]["login"] == receivers.SMTP_USER
            assert [e["mechanism"] for e in mail.entries("auth")] == ["LOGIN"]
            assert mails[0]["idempotency"] == alert["key"]
            assert mails[0]["key"] == f"<{alert['key']}@vncaudit.invalid>"
            assert f"127.0.0.1:{port_p}" in mails[0]["subject"]
            arrivals = len(hook.entries("arrived")), len(mail.entries("arrived"))

            # 2. Nothing changed: nothing is sent at all.
            cycle(0)
            assert (len(hook.entries("arrived")), len(mail.entries("arrived"))) == arrivals

            # 3. Restarted with None instead of VncAuth on the same port.
            started.pop().stop()
            started.append(servers.start("tigervnc-none", port=port_p))
            hooks, _ = cycle(1)
            alert = hooks[0]["alert"]
            assert alert["port"] == port_p and "no-auth" in alert["rules"]
            assert "reachable" not in alert["rules"]  # it was reachable before
            assert alert["auth_required"] is False

            # 4. Stopped: "gone".
            started.pop().stop()
            hooks, mails = cycle(1)
            assert hooks[0]["alert"]["rules"] == ["gone"]
            assert hooks[0]["alert"]["port"] == port_p
            assert "gone" in mails[0]["subject"]

            # 5. A server on a new port: an alert for that port only.
            started.append(servers.start("tigervnc-none", port=port_q))
            hooks, _ = cycle(1)
            assert hooks[0]["alert"]["port"] == port_q
            assert hooks[0]["alert"]["rules"][:2] == ["reachable", "no-auth"]
        finally:
            for srv in started:
                srv.stop()
        # Every alert reached each receiver exactly once, and the outbox knows it.
        for receiver in (hook, mail):
            keys = [e["key"] for e in accepted(receiver)]
            assert len(keys) == len(set(keys)) == 4
            assert not receiver.entries("duplicate")
        rows = outbox(db)
        assert len(rows) == 8 and {r[2] for r in rows} == {"delivered"}
        assert {r[3] for r in rows} == {1}
        # `vncaudit alerts` shows the history.
        shown = subprocess.run([sys.executable, "-m", "vncaudit", "alerts", "--db", str(db),
                                "-o", "json"], capture_output=True, text=True, check=True)
        history = json.loads(shown.stdout)
        assert [a["rules"][0] for a in history][::-1] == ["reachable", "no-auth", "gone",
                                                         "reachable"]


def test_kill_9_during_delivery_then_restart_delivers_once(tmp_path: Path) -> None:
    require_binaries("tigervnc-none")
    db = tmp_path / "watch.db"
    config = tmp_path / "monitors.toml"
    log = tmp_path / "hook.jsonl"
    with servers.running("tigervnc-none") as srv, \
            receivers.http_receiver(log, SECRET) as hook:
        # The receiver takes 8 s to answer: the watcher is killed while it waits.
        write_config(config, db=db, ports=str(srv.port),
                     hook_url=f"http://127.0.0.1:{hook.port}/slow/8")
        proc = subprocess.Popen([sys.executable, "-m", "vncaudit", "watch", "--config",
                                 str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        try:
            arrived = hook.wait_for("arrived", 1, 60)
            assert len(arrived) == 1, proc.stderr.read() if proc.poll() is not None else ""
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
        key = arrived[0]["key"]
        assert outbox(db) == [(key, "webhook:recv", "pending", 0)]

        # Restarted (the receiver answers at once now): the same alert, the same key.
        write_config(config, db=db, ports=str(srv.port),
                     hook_url=f"http://127.0.0.1:{hook.port}/hook")
        proc = subprocess.Popen([sys.executable, "-m", "vncaudit", "watch", "--config",
                                 str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and outbox(db)[0][2] != "delivered":
                time.sleep(0.1)
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, err
        assert "stopped" in err
        assert outbox(db) == [(key, "webhook:recv", "delivered", 1)]
        # The slow request finishes too: two arrivals, one processed, one duplicate.
        hook.wait_for("duplicate", 1, 15)
        assert [e["key"] for e in hook.entries("arrived")] == [key, key]
        assert [e["key"] for e in hook.entries("accepted")] == [key]
        assert [e["key"] for e in hook.entries("duplicate")] == [key]
        # No second cycle ran on restart (the monitor's period is 1 h): one alert in all.
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT count(*) FROM alerts").fetchone() == (1,)
            assert conn.execute("SELECT count(*) FROM monitor_cycles").fetchone() == (1,)


def test_short_period_monitor_never_arms_tigervnc_blacklist(tmp_path: Path) -> None:
    """A monitor every second over TigerVNC with VncAuth (which refuses an address after 5
    unauthenticated connections): every cycle still reports the service, none reports it
    blacklisted, nothing is alerted after the first cycle, and a plain client from the same
    address still gets the security-type list afterwards."""
    import asyncio

    from vncaudit.models import State, Target
    from vncaudit.probe import probe

    require_binaries("tigervnc-vncauth")
    db = tmp_path / "watch.db"
    with servers.running("tigervnc-vncauth") as srv:
        proc = subprocess.Popen([sys.executable, "-m", "vncaudit", "watch", "127.0.0.1", "-p",
                                 str(srv.port), "--every", "1s", "--db", str(db), "--stdout",
                                 "--timeout", "3"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                time.sleep(0.5)
                try:
                    with sqlite3.connect(db) as conn:
                        (n,) = conn.execute("SELECT count(*) FROM monitor_cycles WHERE "
                                            "status = 'finished'").fetchone()
                except sqlite3.OperationalError:
                    continue  # the watcher has not created its tables yet
                if n >= 12:
                    break
        finally:
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=30)
        with sqlite3.connect(db) as conn:
            states = conn.execute("SELECT r.state FROM monitor_cycles c JOIN results r ON "
                                  "r.scan_id = c.scan_id ORDER BY c.started").fetchall()
            cycles = conn.execute("SELECT count(*) FROM monitor_cycles WHERE status = "
                                  "'finished'").fetchone()[0]
        assert cycles >= 12, err
        assert [s for (s,) in states] == ["vnc"] * cycles
        assert len([line for line in out.splitlines() if line.strip()]) == 1  # first cycle
        after = asyncio.run(probe(Target(srv.host, srv.port)))
        assert after.state is State.VNC and after.rfb is not None
        assert [t.id for t in after.rfb.security_types] == [2]
