"""Bad input and failing receivers for `vncaudit watch`: one clear error line, or a recorded
delivery failure with the alert kept for a retry; never a crash, never a lost alert.

Receivers are real processes (tests/receivers.py); the VNC service that raises the alert is a
real TigerVNC server (security type None, so repeated probes never trip its blacklist).
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import receivers
import servers

pytestmark = pytest.mark.timeout(300)


def vncaudit(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vncaudit", *args], capture_output=True,
                          text=True, timeout=timeout)


def one_error_line(run: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert run.returncode == code, (run.returncode, run.stderr)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("vncaudit: error: ")
    assert "Traceback" not in run.stderr
    return lines[0]


# ---------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing scanned


@pytest.mark.parametrize(("args", "expected"), [
    (["127.0.0.1", "--every", "6x"], "is not a duration"),
    (["127.0.0.1", "--every", "0s"], "out of range"),
    (["127.0.0.1", "--cron", "61 * * * *"], "cron expression"),
    (["127.0.0.1", "--every", "1h", "--cron", "* * * * *"], "not both"),
    (["127.0.0.1"], "give a schedule"),
    ([], "nothing to watch"),
    (["127.0.0.1", "--every", "1h", "--alerts", "reachable,no-uath"], "did you mean 'no-auth'"),
    (["127.0.0.1", "--every", "1h", "--remind-every", "soon"], "is not a duration"),
    (["127.0.0.1", "--every", "1h", "--webhook", "ftp://x"], "not an http(s) URL"),
    (["127.0.0.1", "--every", "1h", "--email", "ops@example.org"], "needs --smtp"),
    (["127.0.0.1", "--every", "1h", "--email", "nobody", "--smtp", "x"], "not an e-mail"),
    (["999.1.1.1", "--every", "1h"], "monitor"),
    (["127.0.0.1", "-p", "70000", "--every", "1h"], "monitor"),
])
def test_bad_watch_options_are_one_line(args: list[str], expected: str) -> None:
    line = one_error_line(vncaudit("watch", *args))
    assert expected in line


@pytest.mark.parametrize(("text", "expected"), [
    ('[monitor.a]\ntargets = ["127.0.0.1"]\nevry = "6h"\n', "unknown key 'evry' (did you mean "
     "'every'?)"),
    ('[monitor.a]\ntargets = ["127.0.0.1"]\nevery = "6 hours"\n', "[monitor.a]: period"),
    ('[monitor.a]\ntargets = ["127.0.0.1"]\nevery = "6h"\nalerts = ["gone", "rechable"]\n',
     "did you mean 'reachable'"),
    ('[monitor.a]\ntargets = "127.0.0.1"\nevery = "6h"\nwebhook = ["ops"]\n',
     "webhook 'ops' is neither a URL nor a [webhook.NAME] table"),
    ('[monitors.a]\ntargets = ["127.0.0.1"]\n', "unknown key 'monitors' (did you mean "
     "'monitor'?)"),
    ('[monitor.a]\ntargets = ["127.0.0.1"\n', "invalid TOML"),
    ('[monitor.a]\nevery = "1h"\n', "targets is required"),
    ('[monitor.a]\ntargets = ["127.0.0.1"]\nevery = "1h"\nemail = ["a@example.org"]\n',
     "email needs an [smtp] table"),
    ('[smtp]\nhost = "x"\nsecurity = "ssl"\n[monitor.a]\ntargets = ["127.0.0.1"]\n',
     "security must be one of"),
    ('[monitor.a]\ntargets = ["127.0.0.1"]\nevery = "1h"\ntimeout = "fast"\n',
     "timeout must be a number"),
    ("", "no monitor defined"),
])
def test_monitors_file_mistakes_are_one_line(tmp_path: Path, text: str, expected: str) -> None:
    config = tmp_path / "monitors.toml"
    config.write_text(text)
    line = one_error_line(vncaudit("watch", "--config", str(config), "--once"))
    assert expected in line
    assert str(config) in line


def test_missing_monitors_file_and_mixing_config_with_targets(tmp_path: Path) -> None:
    line = one_error_line(vncaudit("watch", "--config", str(tmp_path / "nope.toml")))
    assert "cannot read" in line and "No such file" in line
    config = tmp_path / "m.toml"
    config.write_text('[monitor.a]\ntargets = ["127.0.0.1"]\nevery = "1h"\n')
    line = one_error_line(vncaudit("watch", "127.0.0.1", "--config", str(config)))
    assert "--config holds the monitors" in line


def test_prune_bad_duration_is_one_line() -> None:
    assert "is not a duration" in one_error_line(vncaudit("prune", "--older-than", "90"))


def test_second_watcher_on_the_same_store_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    first = subprocess.Popen([sys.executable, "-m", "vncaudit", "watch", "127.0.0.1", "-p",
                              str(servers.free_port()), "--every", "1h", "--db", str(db)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lock = Path(str(db) + ".monitors.lock")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (lock.exists() and lock.read_text()):
            time.sleep(0.1)
        line = one_error_line(vncaudit("watch", "127.0.0.1", "--every", "1h", "--db", str(db)),
                              3)
        assert "another vncaudit process" in line and f"pid {first.pid}" in line
    finally:
        first.terminate()
        first.wait(30)
    assert first.returncode == 0


# ---------------------------------------------------------------------------------------------
# Failing receivers: recorded, retried, not lost


def deliveries(db: Path) -> dict[str, dict[str, Any]]:
    run = vncaudit("alerts", "--db", str(db), "-o", "json")
    assert run.returncode == 0, run.stderr
    alerts = json.loads(run.stdout)
    assert len(alerts) == 1
    return {d["channel"]: d for d in alerts[0]["deliveries"]}


@pytest.fixture
def vnc_none(vnc_server_factory: Any) -> servers.VncServer:
    server: servers.VncServer = vnc_server_factory("tigervnc-none")
    return server


@pytest.mark.realserver
def test_failing_webhooks_are_recorded_and_kept(tmp_path: Path, vnc_none: servers.VncServer,
                                                ) -> None:
    cert, key = receivers.self_signed(tmp_path)
    closed = servers.free_port()
    with receivers.http_receiver(tmp_path / "plain.jsonl") as plain, \
            receivers.http_receiver(tmp_path / "tls.jsonl", cert=cert, key=key) as tls:
        base = f"http://127.0.0.1:{plain.port}"
        hooks = {
            "down": f"http://127.0.0.1:{closed}/hook",
            "slow": f"{base}/slow/30",
            "moved": f"{base}/status/301",
            "missing": f"{base}/status/404",
            "broken": f"{base}/status/503",
            "badtls": f"https://127.0.0.1:{tls.port}/hook",
            "goodtls": f"https://127.0.0.1:{tls.port}/hook",
        }
        tables = "".join(
            f'[webhook.{n}]\nurl = "{u}"\ntimeout = "2s"\n'
            + (f'ca_file = "{cert}"\n' if n == "goodtls" else "") for n, u in hooks.items())
        config = tmp_path / "m.toml"
        db = tmp_path / "w.db"
        config.write_text(f'db = "{db}"\n{tables}[monitor.lab]\ntargets = ["127.0.0.1"]\n'
                          f'ports = "{vnc_none.port}"\nevery = "1h"\n'
                          f"webhook = {json.dumps(list(hooks))}\n")
        started = time.monotonic()
        run = vncaudit("watch", "--config", str(config), "--once", "--deliver-for", "0")
        elapsed = time.monotonic() - started
        assert run.returncode == 0, run.stderr
        assert "Traceback" not in run.stderr
        # Each receiver is bounded by its own 2 s deadline; they are tried side by side.
        assert elapsed < 30, elapsed
        found = deliveries(db)
        errors = {name.split(":", 1)[1]: d["last_error"] for name, d in found.items()}
        states = {name.split(":", 1)[1]: d["state"] for name, d in found.items()}
        assert states.pop("goodtls") == "delivered"
        assert set(states.values()) == {"pending"}  # kept for a retry, not lost
        assert "Connection refused" in errors["down"] or "connect" in errors["down"]
        assert "no answer within 2 s" in errors["slow"]
        assert "answered 301" in errors["moved"] and "not followed" in errors["moved"]
        assert "elsewhere.invalid" in errors["moved"]
        assert "answered 404 Not Found" in errors["missing"]
        assert "answered 503 Service Unavailable" in errors["broken"]
        assert "TLS error" in errors["badtls"] and "certificate" in errors["badtls"]
        for name, error in errors.items():
            if error is not None:
                assert "\n" not in error, name
        assert all(d["attempts"] == 1 for d in found.values())
        assert len(tls.entries("accepted")) == 1

        # The receivers are fixed: the next run delivers what was kept (retry_failed is not
        # needed: the rows are pending, only their back-off is waited for).
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE outbox SET next_attempt = 0 WHERE state = 'pending'")
        fixed = config.read_text()
        for name in ("down", "slow", "moved", "missing", "broken", "badtls"):
            fixed = fixed.replace(f'url = "{hooks[name]}"', f'url = "{base}/hook"')
        config.write_text(fixed)
        run = vncaudit("watch", "--config", str(config), "--once", "--deliver-for", "5")
        assert run.returncode == 0, run.stderr
        assert {d["state"] for d in deliveries(db).values()} == {"delivered"}


@pytest.mark.realserver
def test_smtp_refusals_are_recorded(tmp_path: Path, vnc_none: servers.VncServer) -> None:
    cert, key = receivers.self_signed(tmp_path)
    with receivers.smtp_receiver(tmp_path / "mail.jsonl", cert, key) as mail:
        (tmp_path / "wrong").write_text("not-the-password\n")
        db = tmp_path / "w.db"
        run = vncaudit("watch", "127.0.0.1", "-p", str(vnc_none.port), "--once", "--db",
                       str(db), "--email", "ops@example.org", "--smtp",
                       f"127.0.0.1:{mail.port}", "--smtp-user", receivers.SMTP_USER,
                       "--smtp-password-file", str(tmp_path / "wrong"), "--deliver-for", "0")
        assert run.returncode == 0, run.stderr
        (only,) = deliveries(db).values()
        assert only["state"] == "pending"
        # The server's certificate is self-signed: refused before any password is sent.
        assert "TLS error" in only["last_error"]
        assert "certificate" in only["last_error"]
        assert not mail.entries("auth")
        # Trusting it (SSL_CERT_FILE, as for any OpenSSL client), the login is refused.
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE outbox SET next_attempt = 0")
        run = subprocess.run([sys.executable, "-m", "vncaudit", "watch", "127.0.0.1", "-p",
                              str(vnc_none.port), "--once", "--db", str(db), "--email",
                              "ops@example.org", "--smtp", f"127.0.0.1:{mail.port}",
                              "--smtp-user", receivers.SMTP_USER, "--smtp-password-file",
                              str(tmp_path / "wrong"), "--deliver-for", "0"],
                             capture_output=True, text=True, timeout=120,
                             env={**os.environ, "SSL_CERT_FILE": str(cert)})
        assert run.returncode == 0, run.stderr
        (only,) = deliveries(db).values()
        assert only["state"] == "pending" and only["attempts"] == 2
        assert "login refused: 535" in only["last_error"]
        assert [e["ok"] for e in mail.entries("auth")] == [False]
        assert not mail.entries("accepted")


def test_a_hanging_receiver_never_delays_the_cycles(tmp_path: Path) -> None:
    """Foreground watcher, 1 s period, a receiver that holds each request for 20 s: the cycles
    keep their schedule while the delivery waits."""
    from vncaudit.store import Store
    from vncaudit.watch import Watcher
    from vncaudit.watch.config import (
        AlertRules,
        Monitor,
        ScanSettings,
        WatchConfig,
        WebhookChannel,
    )
    from vncaudit.watch.schedule import Schedule

    sys.path.insert(0, str(Path(__file__).parent))
    import netns

    port = servers.free_port()
    with netns.fake_servers(port, ["127.0.0.1"]), \
            receivers.http_receiver(tmp_path / "hook.jsonl") as hook:
        channel = WebhookChannel("webhook:slow", f"http://127.0.0.1:{hook.port}/slow/20",
                                 timeout=30)
        monitor = Monitor("lab", ("127.0.0.1",), str(port), Schedule(every=1.0),
                          AlertRules(), (channel,), ScanSettings(timeout=2))
        cycles: list[float] = []
        with Store.open(tmp_path / "w.db") as store:
            watcher = Watcher(store, WatchConfig((monitor,)),
                              on_cycle=lambda o: cycles.append(time.monotonic()))
            watcher.start()

            async def main() -> None:
                task = asyncio.create_task(watcher.run_forever())
                await asyncio.sleep(5)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

            try:
                asyncio.run(main())
            finally:
                watcher.stop()
        assert len(hook.entries("arrived")) == 1  # the delivery is still waiting
        assert len(cycles) >= 4, cycles
        gaps = [b - a for a, b in zip(cycles, cycles[1:], strict=False)]
        assert max(gaps) < 2.0, gaps
