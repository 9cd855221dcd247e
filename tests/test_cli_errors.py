"""Bad and odd command-line input, as a sysadmin or pentester types it: every failure is ONE line
on stderr starting with `vncaudit: error:`, exit 2 for usage/input errors and 3 for runtime
failures, never a traceback, and nothing half-done left in the store.

Most cases run in-process through typer's CliRunner (the same click entry point the console
script uses, so the one-line handler of `vncaudit.cli.common` is what is tested); the entry point,
signals and the web server's socket are tested as subprocesses. Every case is refused before
any packet is sent, except the interrupt tests, which scan closed ports of a loopback address
no test server uses, at a capped rate.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vncaudit.cli import app
from vncaudit.store import Store

ERROR = "vncaudit: error: "


@pytest.fixture()
def files(tmp_path: Path) -> Path:
    """A directory of odd input files, referred to as {d} in the table below."""
    (tmp_path / "binary.dat").write_bytes(bytes(range(256)) * 8)
    (tmp_path / "nul.txt").write_bytes(b"127.0.0.1\n\x00\x01\n")
    (tmp_path / "list.json").write_text("[]")
    (tmp_path / "empty.json").write_text("{}")
    (tmp_path / "inside.json").write_text('{"kind": "local-audit", "listeners": []}')
    (tmp_path / "bad.toml").write_text("[serve\nworkers = \n")
    (tmp_path / "badtype.toml").write_text('[serve]\nworkers = "four"\n')
    (tmp_path / "badallow.toml").write_text('[serve]\nallow = "127.0.0.1/32"\n')
    (tmp_path / "notdb.db").write_text("this is not a SQLite database\n")
    (tmp_path / "longline.txt").write_text("127.0.0.1," * 20000)  # no line break
    (tmp_path / "words.txt").write_text("secret\n")
    (tmp_path / "tokens.txt").write_text("# ops\n" + "sha256:" + "0" * 64 + "\nsha256:abc\n")
    (tmp_path / "rawtoken.txt").write_text("vnca_notahash\n")
    (tmp_path / "subdir").mkdir()
    return tmp_path


# (arguments, exit code, text the one line must hold). {d}: the files fixture's directory.
CASES: list[tuple[list[str], int, str]] = [
    # targets
    (["scan", "999.1.1.1"], 2, "'999.1.1.1'"),
    (["scan", "10.0.0.0/33"], 2, "prefix length must be a number 0-32"),  # the input once
    (["scan", "host.test/24"], 2, "cannot resolve host.test"),  # nmap's name/prefix
    # habits from other tools get a hint, not a bare "invalid IPv6 address" / "not a network"
    (["scan", "127.0.0.1:5900"], 2, "a port goes in -p, not after the host (127.0.0.1 -p 5900)"),
    (["scan", "[::1]:5901"], 2, "(::1 -p 5901)"),
    (["scan", "vnc://127.0.0.1:5900"], 2, "not a URL"),
    (["scan", "host..name"], 2, "host..name"),
    (["scan", ""], 2, "empty target"),
    (["scan", "127.0.0.1-127.0.0.0"], 2, "before the start"),
    (["scan", "127.0.0.1", "--exclude", "bad..name"], 2, "bad..name"),
    (["scan", "fe80::1%nosuchif9", "-p", "1"], 2, "no network interface"),  # not "filtered"
    # ports
    (["scan", "127.0.0.1", "-p", "70000"], 2, "70000"),
    (["scan", "127.0.0.1", "-p", "5900-5800"], 2, "reversed"),
    (["scan", "127.0.0.1", "-p", "abc"], 2, "'abc'"),
    (["scan", "127.0.0.1", "-p", ":"], 2, "display number"),
    (["scan", "127.0.0.1", "-p", ""], 2, "empty port list"),  # not the default ports
    (["scan", "127.0.0.1", "-p", ","], 2, "empty item"),
    (["scan", "127.0.0.1", "-p"], 2, "'-p' requires an argument"),
    # option values and click's own errors: one line, not click's usage box
    (["scan", "127.0.0.1", "--timeout", "0"], 2, "--timeout"),
    (["scan", "127.0.0.1", "--concurrency", "0"], 2, "--concurrency"),
    (["scan", "127.0.0.1", "--rate", "-1"], 2, "--rate"),
    (["scan", "127.0.0.1", "--retries", "-1"], 2, "--retries"),
    (["scan", "127.0.0.1", "--max-attempts", "9"], 2, "--max-attempts"),
    (["scan", "127.0.0.1", "--timeout", "soon"], 2, "--timeout"),
    # inf passes click's range check: refused here, not exit 3 later or a wait forever
    (["scan", "127.0.0.1", "--timeout", "inf"], 2, "not a finite number"),
    (["scan", "127.0.0.1", "--rate", "inf"], 2, "not a finite number"),
    (["local", "--timeout", "inf"], 2, "not a finite number"),
    (["check", "127.0.0.1", "--timeout", "inf"], 2, "not a finite number"),
    (["subdomains", "example.test", "--dns-timeout", "inf"], 2, "not a finite number"),
    (["serve", "--rate", "inf"], 2, "not a finite number"),
    (["serve", "--timeout", "nan"], 2, "not a finite number"),
    (["scan", "127.0.0.1", "--bogus"], 2, "--bogus"),
    (["scan", "127.0.0.1", "--workers", "0"], 2, "--workers"),
    (["scan", "127.0.0.1", "--fail-on", "bogus"], 2, "bogus"),
    (["scan", "127.0.0.1", "-o", "bogus"], 2, "bogus"),
    (["scan", "127.0.0.1", "--discovery", "bogus"], 2, "bogus"),
    (["scan", "127.0.0.1", "--cluster", "bogus"], 2, "bogus"),
    (["scan", "127.0.0.1", "--trusted", "x;rm -rf /"], 2, "--trusted"),
    (["scan", "127.0.0.1", "--trusted", "0.0.0.0/1"], 2, "open to the internet"),
    (["bogus-command"], 2, "bogus-command"),
    # input files
    (["scan", "-iL", "{d}/missing.txt"], 2, "No such file"),
    (["scan", "-iL", "{d}/subdir"], 2, "Is a directory"),
    (["scan", "-iL", "{d}/binary.dat"], 2, "not UTF-8"),
    (["scan", "-iL", "{d}/nul.txt"], 2, "nul.txt:2"),
    (["scan", "--nmap-xml", "{d}/binary.dat"], 2, "nmap XML"),
    (["scan", "--nmap-xml", "{d}/missing.xml"], 2, "No such file"),
    (["scan", "--masscan", "{d}/binary.dat"], 2, "not UTF-8"),
    (["scan", "127.0.0.1", "--exclude-file", "{d}/missing.txt"], 2, "No such file"),
    (["scan", "127.0.0.1", "--check-passwords", "--wordlist", "{d}/missing.txt"], 2,
     "missing.txt"),
    # files without line breaks are refused, never loaded whole (/dev/zero would eat all
    # memory; a bounded file stands in for it here, so that a failing check cannot take the
    # test machine down)
    (["scan", "-iL", "{d}/longline.txt"], 2, "longline.txt:1: line longer than"),
    (["scan", "--masscan", "{d}/longline.txt"], 2, "line longer than"),
    (["scan", "127.0.0.1", "--exclude-file", "{d}/longline.txt"], 2, "line longer than"),
    (["scan", "127.0.0.1", "--check-passwords", "--wordlist", "{d}/longline.txt"], 2,
     "not a password list"),
    # options that only mean something with another one: refused, never silently ignored
    (["scan", "127.0.0.1", "--wordlist", "{d}/words.txt"], 2, "--check-passwords"),
    (["scan", "127.0.0.1", "--resolver", "127.0.0.1:1"], 2, "--domain"),
    # where the report and the store go: checked before the scan, no directory created
    (["scan", "127.0.0.1", "--output-file", "{d}/no/such/dir/r.json"], 2, "does not exist"),
    (["scan", "127.0.0.1", "--output-file", "{d}/subdir"], 2, "is a directory"),
    # the report must not overwrite the store or the target list (they would be lost)
    (["scan", "127.0.0.1", "--output-file", "{d}/notdb.db", "--db", "{d}/notdb.db"], 2,
     "would overwrite"),
    (["scan", "-iL", "{d}/words.txt", "--output-file", "{d}/words.txt"], 2, "would overwrite"),
    (["scan", "127.0.0.1", "--db", "{d}/subdir"], 2, "is a directory"),
    (["scan", "127.0.0.1", "--db", "{d}/no/such/dir/v.db"], 2, "does not exist"),
    (["scan", "127.0.0.1", "--db", "{d}/notdb.db"], 3, "not a database"),
    (["results", "--db", "{d}/notdb.db"], 3, "not a database"),
    # stored scans
    (["scan", "--resume", "s-19990101-000000"], 2, "unknown scan id"),  # a usage error, exit 2
    (["scan", "--resume", "s-19990101-000000", "127.0.0.1"], 2, "takes no targets"),
    # a resume runs with the stored settings: one typed again would be ignored, so it is refused
    (["scan", "--resume", "s-19990101-000000", "--timeout", "3", "--no-web"], 2,
     "leave out --timeout, --no-web"),
    (["results", "s-19990101-000000"], 2, "unknown scan id"),
    (["results", "-o", "csv"], 2, "table or json"),  # not JSON whatever -o says
    (["results", "-o", "bogus"], 2, "bogus"),
    (["results", "--limit", "0"], 2, "--limit"),
    (["results", "--output-file", "{d}/no/such/dir/list.txt"], 2, "does not exist"),
    (["diff", "s-19990101-000000", "s-19990101-000001"], 2, "unknown scan id"),
    (["diff", "s-19990101-000000"], 2, "Missing argument"),
    # the host's own view
    (["local", "--output-file", "{d}/no/such/dir/l.txt"], 2, "does not exist"),  # no traceback
    (["local", "-o", "json", "--output-file", "{d}/no/such/dir/l.json"], 2, "does not exist"),
    (["local", "--only-port", "0"], 2, "--only-port 0"),  # not an audit of nothing
    (["local", "--only-port", "70000"], 2, "--only-port 70000"),
    (["local", "--only-port", "x"], 2, "--only-port"),
    (["local", "-o", "bogus"], 2, "bogus"),
    (["local", "--fail-on", "bogus"], 2, "bogus"),
    (["local", "--timeout", "0"], 2, "--timeout"),
    (["harden", "--backend", "bogus"], 2, "bogus"),
    (["harden", "--only-port", "70000"], 2, "--only-port 70000"),
    # an allow-list of everyone is no fix, however fixed the plan would read
    (["harden", "--allow", "0.0.0.0/0"], 2, "open to the internet"),
    (["harden", "--allow", "::/0"], 2, "open to the internet"),
    (["harden", "--rollback", "--backup-dir", "{d}/no-backups"], 2, "harden"),
    (["check", "127.0.0.1", "--outside", "{d}/missing.json"], 2, "cannot read"),
    (["check", "127.0.0.1", "--outside", "{d}/binary.dat"], 2, "not UTF-8"),
    (["check", "127.0.0.1", "--outside", "{d}/list.json"], 2, "services"),
    (["check", "127.0.0.1", "--inside", "{d}/list.json", "--outside", "{d}/empty.json"], 2,
     "--inside"),  # a usage error, not an internal one
    (["check", "127.0.0.1", "--inside", "{d}/empty.json"], 2, "local -o json"),
    (["check", "127.0.0.0/24", "--outside", "{d}/empty.json"], 2, "one host"),
    (["check", "127.0.0.1-9", "--outside", "{d}/empty.json"], 2, "one host"),
    (["check", "999.1.1.1", "--only-port", "0"], 2, "--only-port 0"),
    (["check", "127.0.0.1", "-p", "", "--inside", "{d}/inside.json"], 2, "empty port list"),
    # DNS (all refused before any query)
    (["subdomains", ""], 2, "empty domain"),
    (["subdomains", "host..name"], 2, "host..name"),
    (["subdomains", "example.test", "--resolver", "bogus"], 2, "bogus"),
    (["subdomains", "example.test", "--resolver", "127.0.0.1:1", "--wordlist",
      "{d}/missing.txt"], 2, "missing.txt"),
    (["subdomains", "example.test", "--dns-concurrency", "0"], 2, "--dns-concurrency"),
    # the web service's settings
    (["serve", "--config", "{d}/missing.toml"], 2, "missing.toml"),
    (["serve", "--config", "{d}/bad.toml"], 2, "bad.toml: invalid TOML"),
    (["serve", "--config", "{d}/badtype.toml"], 2, "workers must be an integer"),
    (["serve", "--config", "{d}/badallow.toml"], 2, "allow must be a list of strings"),
    (["serve", "--config", "{d}/binary.dat"], 2, "not UTF-8"),
    (["serve", "--token-file", "{d}/tokens.txt"], 2, "tokens.txt:3: not a token hash"),
    (["serve", "--token-file", "{d}/rawtoken.txt"], 2, "that is a token itself"),
    (["serve", "--token-file", "{d}/binary.dat"], 2, "not UTF-8"),
    (["serve", "--port", "0"], 2, "--port"),
    (["serve", "--port", "70000"], 2, "--port"),
    (["serve", "--workers", "0"], 2, "workers"),
    (["serve", "--host", "999.1.1.1", "--port", "18999"], 2, "--host"),
]


def _invoke(args: list[str], db: Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, args, env={"VNCAUDIT_DB": str(db), "COLUMNS": "200"})
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{args}: escaped {result.exception!r}")
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize(("args", "code", "needle"), CASES,
                         ids=[" ".join(c[0]) or "empty" for c in CASES])
def test_bad_input_is_one_error_line(files: Path, args: list[str], code: int,
                                     needle: str) -> None:
    db = files / "store.db"
    argv = [a.replace("{d}", str(files)) for a in args]
    exit_code, _, stderr = _invoke(argv, db)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert exit_code == code, (argv, stderr)
    assert len(lines) == 1, (argv, stderr)
    assert lines[0].startswith(ERROR), (argv, stderr)
    assert needle in lines[0], (argv, lines[0])
    assert "Traceback" not in stderr
    # Nothing half-done: a refused scan leaves no scan record behind (no "running" scan that
    # never ran, whatever input was refused), and a mistyped --db creates nothing.
    if db.exists():
        with Store.open(db) as store:
            assert store.list_scans() == [], argv
    assert not (files / "no").exists(), argv


def test_stdin_list_errors_name_stdin(files: Path) -> None:
    result = CliRunner().invoke(app, ["scan", "-iL", "-"], input="127.0.0.1\nbad..name\n",
                                env={"VNCAUDIT_DB": str(files / "s.db")})
    assert result.exit_code == 2, result.stderr
    assert result.stderr.splitlines() == [
        ERROR + "-:2: invalid target 'bad..name': not an IP address, CIDR, range or hostname"]


@pytest.mark.parametrize("output", ["table", "json"])
def test_report_write_failing_after_the_scan_is_exit_3_and_keeps_results(
        files: Path, output: str) -> None:
    """A disk that fills up (/dev/full) while the report is written: one line, exit 3, and the
    results stay in the store (the table is written through rich, whose write error must
    become the same one line)."""
    db = files / "s.db"
    code, _, stderr = _invoke(["scan", _QUIET_TARGET, "-p", "20000", "-o", output,
                               "--output-file", "/dev/full", "--timeout", "2"], db)
    (line,) = stderr.strip().splitlines()
    assert code == 3 and line.startswith(ERROR + "cannot write /dev/full"), stderr
    with Store.open(db) as store:
        (scan,) = store.list_scans()
        assert scan.status == "finished" and store.done_pairs(scan.id) == {(_QUIET_TARGET, 20000)}
    assert f"vncaudit results {scan.id}" in line


def test_local_report_write_failing_is_exit_3(files: Path) -> None:
    code, _, stderr = _invoke(["local", "--only-port", "20000", "--no-sniff", "--output-file",
                               "/dev/full"], files / "s.db")
    assert code == 3 and stderr.strip().splitlines() == [
        ERROR + "cannot write /dev/full: No space left on device"], stderr


def test_results_of_an_empty_store_say_so(files: Path) -> None:
    code, stdout, stderr = _invoke(["results"], files / "empty.db")
    assert code == 0 and stdout == ""
    assert stderr.strip() == f"no scans stored in {files / 'empty.db'}"


def test_ctrl_c_outside_a_scan_is_one_line_exit_130(tmp_path: Path) -> None:
    """Ctrl-C while `subdomains` waits on DNS: one line, exit 130, never a silent exit. The resolver
    is a UDP socket of this test that never answers."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    resolver = f"127.0.0.1:{silent.getsockname()[1]}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "vncaudit", "subdomains", "example.test", "--resolver", resolver,
         "--dns-timeout", "20", "--no-axfr", "--no-builtin-wordlist"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # wait for the first query, then interrupt
            silent.settimeout(0.5)
            try:
                silent.recv(512)
                break
            except TimeoutError:
                continue
        proc.send_signal(signal.SIGINT)  # our own child, by its handle
        _, stderr = proc.communicate(timeout=30)
    finally:
        silent.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines() == [ERROR + "interrupted"]


def test_dash_h_is_help(files: Path) -> None:
    code, stdout, _ = _invoke(["scan", "-h"], files / "s.db")
    assert code == 0 and "--ports" in stdout and "Examples:" in stdout


def test_version_option(files: Path) -> None:
    code, stdout, _ = _invoke(["--version"], files / "s.db")
    assert code == 0 and stdout.startswith("vncaudit ")


def test_usage_errors_name_the_command_help(files: Path) -> None:
    _, _, stderr = _invoke(["scan", "127.0.0.1", "--timeout", "0"], files / "s.db")
    assert stderr.strip().endswith("(see: vncaudit scan --help)")


def test_bare_command_prints_help_not_an_error(files: Path) -> None:
    code, stdout, stderr = _invoke([], files / "s.db")
    assert code == 2
    assert "scan" in stdout + stderr and ERROR not in stderr


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vncaudit", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


def test_console_entry_point_prints_one_line(tmp_path: Path) -> None:
    out = _cli("scan", "127.0.0.1", "--concurrency", "0", "--db", str(tmp_path / "s.db"))
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and out.stderr.startswith(ERROR), out.stderr
    assert "╭" not in out.stderr and "Usage:" not in out.stderr


def test_serve_port_in_use_is_one_line_exit_3(tmp_path: Path) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        out = _cli("serve", "--port", str(port), "--db", str(tmp_path / "w.db"), timeout=60)
    finally:
        holder.close()
    assert out.returncode == 3, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(ERROR), out.stderr
    assert f"127.0.0.1:{port}" in lines[0] and "in use" in lines[0]


def test_serve_stops_on_ctrl_c_without_an_error(tmp_path: Path) -> None:
    """Ctrl-C is how `serve` is stopped ("Ctrl-C stops"): exit 0, no error line."""
    import httpx

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    holder.close()
    proc = subprocess.Popen([sys.executable, "-m", "vncaudit", "serve", "--port", str(port),
                             "--db", str(tmp_path / "w.db")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        http = httpx.Client(trust_env=False, timeout=5)  # loopback: never via a proxy
        deadline = time.monotonic() + 30
        while True:
            try:
                assert http.get(f"http://127.0.0.1:{port}/api/health").status_code == 200
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        proc.send_signal(signal.SIGINT)  # our own child, by its handle
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    assert ERROR not in stderr and stderr.strip().endswith("vncaudit web service stopped")


def test_help_of_every_command_explains_every_option() -> None:
    """Every option of every command has a help text, and the main ones have examples."""
    import typer.main

    group = typer.main.get_command(app)
    ctx = group.make_context("vncaudit", ["version"])
    for name in group.list_commands(ctx):  # type: ignore[attr-defined]
        command = group.get_command(ctx, name)  # type: ignore[attr-defined]
        assert command is not None and command.help, name
        for param in command.params:
            if param.name == "axfr_port" or getattr(param, "hidden", False):
                continue
            assert getattr(param, "help", None), f"{name} {param.name} has no help text"
        if name not in ("version",):
            assert command.epilog and "vncaudit " in command.epilog, f"{name}: no examples"


# Closed ports of a loopback address no test server binds, probed at a capped rate so that the
# scan is still running when the signal comes (one connection per port, each refused at once).
_QUIET_TARGET = "127.77.0.1"
_PORTS = "20000-20199"


def _start_scan(db: Path, from_stdin: bool) -> subprocess.Popen[str]:
    target = ["-iL", "-"] if from_stdin else [_QUIET_TARGET]
    proc = subprocess.Popen(
        [sys.executable, "-m", "vncaudit", "scan", *target, "-p", _PORTS, "--rate", "60",
         "--timeout", "30", "--db", str(db), "-o", "json", "--all"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdin is not None
    if from_stdin:
        proc.stdin.write(_QUIET_TARGET + "\n")
    proc.stdin.close()
    return proc


def _wait_for_progress(db: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if db.exists():
            with Store.open(db) as store:
                scans = store.list_scans()
                if scans and store.done_pairs(scans[0].id):
                    return
        time.sleep(0.2)
    raise AssertionError("the scan stored nothing within 30 s")


@pytest.mark.parametrize(("signum", "code", "word", "from_stdin"),
                         [(signal.SIGINT, 130, "interrupted", True),
                          (signal.SIGTERM, 143, "terminated", False)])
def test_signal_during_scan_stores_and_prints_resume(tmp_path: Path, signum: int, code: int,
                                                     word: str, from_stdin: bool) -> None:
    """Ctrl-C (or SIGTERM: kill, systemd, timeout) mid-scan: one line with the resume command,
    the scan stored as interrupted, and the resume finishes it. A target list read from stdin
    is kept with the scan: stdin cannot be read a second time on resume."""
    db = tmp_path / "s.db"
    proc = _start_scan(db, from_stdin)
    try:
        _wait_for_progress(db)
        proc.send_signal(signum)  # our own child, by its handle
        proc.wait(timeout=30)  # nothing goes to stdout on an interrupt: no pipe fills up
        assert proc.stderr is not None
        stderr = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(ERROR + word), stderr
    scan_id = lines[0].rsplit("--resume ", 1)[1]
    with Store.open(db) as store:
        record = store.require_scan(scan_id)
        before = store.done_pairs(scan_id)
    assert record.status == "interrupted"
    assert 0 < len(before) < 200
    # The store is consistent: the resume probes exactly the rest, nothing twice.
    resumed = subprocess.run(
        [sys.executable, "-m", "vncaudit", "scan", "--resume", scan_id, "--db", str(db),
         "-o", "json", "--all"], stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=60, check=False)
    assert resumed.returncode == 0, resumed.stderr
    with Store.open(db) as store:
        after = store.done_pairs(scan_id)
        assert store.require_scan(scan_id).status == "finished"
    assert before <= after and len(after) == 200
    assert {port for _, port in after} == set(range(20000, 20200))
    assert len(json.loads(resumed.stdout)["services"]) == 200
