"""The command line as a user runs it: exit codes, one-line errors, table and JSON output."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from typing import Any

import pytest
from rich.console import Console

from vncaudit.cli.output import results_table
from vncaudit.models import NamedType, RfbFacts, ServiceResult, State


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vncaudit", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


def test_no_target_is_usage_error_and_scans_nothing() -> None:
    out = run("scan")
    assert out.returncode == 2
    assert "no targets" in out.stderr.lower()
    assert "Traceback" not in out.stderr
    assert out.stdout == ""


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["scan", "127.0.0.1", "-p", "70000"], "70000"),
        (["scan", "not a target!!"], "not a target"),
        (["scan", "127.0.0.1", "-o", "yaml"], "yaml"),
        (["scan", "127.0.0.1", "--fail-on", "severe"], "severe"),
        (["scan", "224.0.0.1"], "224.0.0.1"),
        (["scan", "-iL", "/nonexistent/list.txt"], "/nonexistent/list.txt"),
    ],
)
def test_bad_input_is_one_line_exit_2(args: list[str], needle: str) -> None:
    out = run(*args)
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert needle in lines[0]
    assert "Traceback" not in out.stderr


def test_help_explains() -> None:
    out = run("scan", "--help")
    assert out.returncode == 0
    for word in ("--ports", "--timeout", "--concurrency", "--output", "--fail-on"):
        assert word in out.stdout


def test_json_of_closed_port_with_all(unused_port: int) -> None:
    out = run("scan", "127.0.0.1", "-p", str(unused_port), "-o", "json", "--all",
              "--timeout", "2")
    assert out.returncode == 0, out.stderr
    doc: dict[str, Any] = json.loads(out.stdout)
    assert doc["schema_version"] == 1
    assert doc["scan"]["targets"] and doc["scan"]["ports"] == str(unused_port)
    (svc,) = doc["services"]
    assert (svc["host"], svc["port"], svc["state"]) == ("127.0.0.1", unused_port, "closed")
    # Without --all a closed port is not listed.
    out = run("scan", "127.0.0.1", "-p", str(unused_port), "-o", "json", "--timeout", "2")
    assert json.loads(out.stdout)["services"] == []


def test_the_process_exit_keeps_every_line_code_and_atexit_step(tmp_path: Any) -> None:
    """`python -m vncaudit` ends without the interpreter's teardown (`cli.program.exit_now`):
    its output, however long, arrives whole, its exit code is the command's, its log lines
    and the atexit steps of the libraries it loaded still run (here: one of our own, added
    with `-c` to a program that then runs `run`, as the console script does)."""
    out = run("scan", "127.0.0.1-199", "-p", "1", "--timeout", "1", "-o", "json", "--all", "-vv",
              "--db", str(tmp_path / "s.db"))
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)["services"]) == 199
    assert "store: scan" in out.stderr  # a debug log line of the store, written at the end
    code = ("import atexit, sys; atexit.register(lambda: print('atexit ran', flush=True)); "
            "sys.argv = ['vncaudit', 'scan', '127.0.0.1', '-p', '70000']; "
            "from vncaudit.cli import run; run()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 2 and "70000" in out.stderr
    assert out.stdout == "atexit ran\n"


def test_table_renders_facts() -> None:
    result = ServiceResult(
        "127.0.0.1", 5901, State.VNC,
        RfbFacts("RFB 003.008\n", "3.8", "3.8", (NamedType(1, "None"),), auth_required=False,
                 security_result="ok", desktop_name="lab"),
    )
    buf = io.StringIO()
    Console(file=buf, force_terminal=True, width=120).print(results_table([result]))
    text = buf.getvalue()
    assert "5901" in text and "1 None" in text and "NONE" in text and "lab" in text


@pytest.mark.parametrize("width", [80, 100])
def test_table_keeps_words_whole_at_80_and_100_columns(width: int) -> None:
    """A folding column (security, desktop) gets room for its longest word up to 14 characters:
    "Authentication" is never cut in two, and no line is wider than the terminal."""
    facts = RfbFacts("RFB 003.008\n", "3.8", "3.8", (NamedType(2, "VNC Authentication"),),
                     auth_required=True)
    results = [ServiceResult("127.0.0.1", 48077, State.VNC, facts),
               ServiceResult("127.0.0.1", 45359, State.VNC, RfbFacts(
                   "RFB 003.008\n", "3.8", "3.8", (NamedType(1, "None"),), auth_required=False,
                   security_result="ok", desktop_name="vm:97 (800x600)"))]
    buf = io.StringIO()
    Console(file=buf, width=width).print(results_table(results, width))
    lines = buf.getvalue().splitlines()
    assert any("Authentication" in line for line in lines), buf.getvalue()
    assert max(len(line) for line in lines) <= width, buf.getvalue()


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


LAB_ZONE = """
@ NS ns1
ns1 A 127.0.0.2
vnc A 127.0.0.1
www A 0.0.0.0
"""


@pytest.mark.realserver
def test_scan_domain_finds_host_and_scans_it(x11vnc_none: Any) -> None:
    from dns_server import DnsServer, make_zone

    with DnsServer([make_zone("lab.test", LAB_ZONE)]) as dns:
        out = run("scan", "--domain", "lab.test", "--resolver", dns.resolver,
                  "-p", str(x11vnc_none.port), "-o", "json", "--timeout", "3")
        listing = run("subdomains", "lab.test", "--resolver", dns.resolver, "--json",
                      "--axfr-port", str(dns.port))
    assert out.returncode == 0, out.stderr
    assert "www.lab.test resolves to 0.0.0.0; not scanned" in out.stderr
    doc = json.loads(out.stdout)
    (svc,) = doc["services"]
    assert svc["hostname"] == "vnc.lab.test" and svc["state"] == "vnc"
    # How each name was found is kept with the scan (store) and shown in the report.
    (discovery,) = doc["scan"]["discovery"]
    hosts = {h["name"]: h for h in discovery["hosts"]}
    assert hosts["vnc.lab.test"]["sources"] == ["wordlist"]
    assert hosts["vnc.lab.test"]["addresses"] == ["127.0.0.1"]
    assert svc["rfb"]["auth_required"] is False
    found = json.loads(listing.stdout)
    assert {h["name"] for h in found["hosts"]} >= {"vnc.lab.test", "ns1.lab.test"}


def test_subdomains_bad_domain_is_one_line() -> None:
    out = run("subdomains", "http://x")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1


@pytest.mark.realserver
def test_scan_screenshot_and_password_audit_flags(
    vnc_server_factory: Any, tmp_path: Any
) -> None:
    """The active flags reach the checks: a PNG next to the report, a masked found password."""
    none = vnc_server_factory("x11vnc-none", geometry=(320, 200))
    locked = vnc_server_factory("tigervnc-vncauth", password="123456")
    report_file = tmp_path / "r.json"
    out = run("scan", "127.0.0.1", "-p", f"{none.port},{locked.port}", "-o", "json",
              "--output-file", str(report_file), "--screenshot", "--check-passwords",
              "--timeout", "5", timeout=120)
    assert out.returncode == 0, out.stderr
    doc = json.loads(report_file.read_text())
    by_port = {s["port"]: s for s in doc["services"]}
    shot = by_port[none.port]["extra"]["active"]["screenshot"]
    assert shot["status"] == "ok" and (shot["width"], shot["height"]) == (320, 200)
    assert (tmp_path / "screenshots").is_dir()
    audit = by_port[locked.port]["extra"]["active"]["password_audit"]
    assert audit["status"] == "found" and audit["password"] == "********"
    assert "123456" not in report_file.read_text()


def test_missing_wordlist_is_usage_error() -> None:
    out = run("scan", "127.0.0.1", "--check-passwords", "--wordlist", "/nonexistent/w.txt")
    assert out.returncode == 2 and "/nonexistent/w.txt" in out.stderr


def test_the_progress_bar_is_drawn_throttled_and_ends_on_the_final_count(monkeypatch: Any) -> None:
    """The scan's progress bar is redrawn at most every 0.1 s, not per result, and its last
    state is the real total (127.83.0.x: local addresses nothing listens on, so every port
    answers 'closed' at once)."""
    from vncaudit.cli import scan_run
    from vncaudit.engine import Progress as EngineProgress
    from vncaudit.engine import ScanOptions, run, scan_async
    from vncaudit.models import Target
    from vncaudit.probe import ProbeOptions

    made: list[Any] = []
    real = scan_run.progress_bar

    draws: list[int] = []

    def bar(console: Any) -> Any:
        made.append(real(Console(file=io.StringIO(), force_terminal=True)))
        update = made[-1].update

        def counted(*args: Any, **kwargs: Any) -> None:
            draws.append(1)
            update(*args, **kwargs)

        made[-1].update = counted
        return made[-1]

    monkeypatch.setattr(scan_run, "progress_bar", bar)
    targets = [Target(f"127.83.0.{h}", p) for h in range(1, 41) for p in (5900, 5901)]
    state = EngineProgress(total=len(targets))
    seen: list[ServiceResult] = []
    started = time.monotonic()
    with scan_run.scan_progress(state, True) as update:

        def each(result: ServiceResult) -> None:
            seen.append(result)
            update(result)

        run(scan_async(iter(targets), ScanOptions(probe=ProbeOptions(timeout=1.0)),
                       on_result=each, progress=state, collect=False))
    elapsed = time.monotonic() - started
    assert len(seen) == len(targets) == state.done
    assert 1 <= len(draws) <= 2 + int(elapsed / 0.1) < len(targets)
    task = made[0].tasks[0]
    assert task.completed == len(targets)
    assert task.fields["vnc"] == 0
