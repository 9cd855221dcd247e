"""What a running scan writes for pipes and wrappers: `-o jsonl` streamed line by line, `-q`,
and the `--status-file` progress stream.

The scans go to the hostile farm on 127.0.0.1: a server without authentication answers at once,
a silent one (accepts, never speaks) holds the scan until the probe deadline, so a line that
arrives long before the process ends proves the streaming. Each line is checked against the
report's published schema.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from vncaudit.report.schema import report_schema

from hostile import Farm, hostile_farm  # noqa: F401  (hostile_farm is a fixture)

SLOW = 6.0  # the probe deadline: how long the silent server holds the scan


def service_validator() -> jsonschema.Draft202012Validator:
    schema = report_schema()
    for key in ("type", "required", "properties", "additionalProperties"):
        schema.pop(key)
    return jsonschema.Draft202012Validator({**schema, "$ref": "#/$defs/service"})


def vncaudit(*args: str) -> list[str]:
    return [sys.executable, "-m", "vncaudit", *args]


def test_jsonl_lines_reach_a_pipe_while_the_scan_runs(hostile_farm: Farm) -> None:  # noqa: F811
    if shutil.which("jq") is None:
        from conftest import in_ci

        if in_ci():
            pytest.fail("jq is not installed [CI is set: this test must not skip]")
        pytest.skip("jq is not installed")
    fast, slow = hostile_farm.ports["vnc-none"], hostile_farm.ports["silent"]
    # The same pipeline a user types: vncaudit ... -o jsonl | jq -c .
    scan = subprocess.Popen(vncaudit("scan", "127.0.0.1", "-p", f"{fast},{slow}", "-o",
                                     "jsonl", "--timeout", str(SLOW)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert scan.stdout is not None
    jq = subprocess.Popen(["jq", "-c", "--unbuffered", "."], stdin=scan.stdout,
                          stdout=subprocess.PIPE, text=True)
    scan.stdout.close()  # jq holds the read end now
    assert jq.stdout is not None
    arrivals: list[tuple[float, dict[str, Any]]] = []
    for line in jq.stdout:
        arrivals.append((time.monotonic(), json.loads(line)))
    scan.wait(timeout=60)
    ended = time.monotonic()
    jq.wait(timeout=10)
    assert scan.returncode == 0, scan.stderr.read() if scan.stderr else ""
    assert [(d["port"], d["state"]) for _, d in arrivals] == [(fast, "vnc"), (slow, "tarpit")]
    first = arrivals[0][0]
    # The no-auth server's line came while the silent one still held the scan.
    assert ended - first > SLOW / 2, f"first line only {ended - first:.2f} s before the end"
    validator = service_validator()
    for _, doc in arrivals:
        assert not list(validator.iter_errors(doc))
    assert any(f["id"] == "no-auth" for f in arrivals[0][1]["findings"])


def test_jsonl_reader_that_leaves_is_no_error(hostile_farm: Farm) -> None:  # noqa: F811
    ports = ",".join(str(hostile_farm.ports[k]) for k in ("vnc-none", "vnc-auth", "ssh"))
    out = subprocess.run(
        f"{sys.executable} -m vncaudit scan 127.0.0.1 -p {ports} -o jsonl --all "
        f"--timeout 3 | head -n 1",
        shell=True, capture_output=True, text=True, timeout=60, check=False,
        executable="/bin/bash")
    assert len(out.stdout.splitlines()) == 1 and json.loads(out.stdout)["host"] == "127.0.0.1"
    assert out.stderr == ""  # no "Broken pipe", no traceback
    scans = subprocess.run(vncaudit("results", "-o", "json"), capture_output=True, text=True,
                           timeout=60, check=False)
    assert scans.returncode == 0


def test_quiet_leaves_stderr_empty_but_for_errors(hostile_farm: Farm) -> None:  # noqa: F811
    port = str(hostile_farm.ports["vnc-none"])
    loud = subprocess.run(vncaudit("scan", "127.0.0.1", "-p", port, "--timeout", "3"),
                          capture_output=True, text=True, timeout=60, check=False)
    assert loud.returncode == 0 and " probed" in loud.stderr  # the summary line
    quiet = subprocess.run(vncaudit("scan", "127.0.0.1", "-p", port, "--timeout", "3", "-q"),
                           capture_output=True, text=True, timeout=60, check=False)
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert "farm-none" in quiet.stdout
    bad = subprocess.run(vncaudit("scan", "127.0.0.1", "-p", "99999", "-q"),
                         capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("vncaudit: error:")
    assert len(bad.stderr.splitlines()) == 1


def read_events(text: str) -> list[dict[str, Any]]:
    events = [json.loads(line) for line in text.splitlines()]
    assert events and events[0]["event"] == "start" and events[-1]["event"] == "end"
    assert all(e["event"] == "progress" for e in events[1:-1])
    return events


def test_status_file_beats_every_second_and_ends_with_the_counts(
        tmp_path: Path, hostile_farm: Farm) -> None:  # noqa: F811
    fast, slow = hostile_farm.ports["vnc-none"], hostile_farm.ports["silent"]
    status = tmp_path / "status.jsonl"
    out = subprocess.run(vncaudit("scan", "127.0.0.1", "-p", f"{fast},{slow}", "--timeout",
                                  str(SLOW), "-o", "json", "--status-file", str(status)),
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    events = read_events(status.read_text())
    scan_id = json.loads(out.stdout)["scan"]["id"]
    assert {e["scan"] for e in events} == {scan_id}
    assert events[0]["total"] == 2
    # While the silent server held the scan, progress kept coming (one done, one pending).
    waiting = [e for e in events if e["event"] == "progress" and e["done"] == 1]
    assert len(waiting) >= SLOW / 2, events
    end = events[-1]
    assert (end["status"], end["done"], end["total"], end["vnc"], end["shown"]) == (
        "finished", 2, 2, 1, 2)
    assert end["findings"]["high"] + end["findings"]["critical"] >= 1 and "resume" not in end


def test_status_on_stderr_replaces_the_progress_bar(hostile_farm: Farm) -> None:  # noqa: F811
    port = str(hostile_farm.ports["vnc-auth"])
    out = subprocess.run(vncaudit("scan", "127.0.0.1", "-p", port, "--timeout", "3", "-o",
                                  "jsonl", "--status-file", "-"),
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0
    events = read_events(out.stderr)  # every stderr line is a JSON event
    assert events[-1]["status"] == "finished" and events[-1]["vnc"] == 1
    assert json.loads(out.stdout)["port"] == int(port)


def test_a_progress_bar_on_a_terminal_and_the_report_on_a_pipe(
        tmp_path: Path, hostile_farm: Farm) -> None:  # noqa: F811
    """`vncaudit scan ... -o json > file` typed at a terminal: the progress bar draws on
    stderr (a terminal), ends cleanly, and the report on stdout is whole."""
    import pty
    import threading

    master, slave = pty.openpty()
    drawn: list[bytes] = []

    def drain() -> None:
        with contextlib.suppress(OSError):
            while chunk := os.read(master, 65536):
                drawn.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        # A server that accepts and says nothing keeps the scan going for its 1 s timeout,
        # longer than the 0.2 s the bar waits before it draws; a terminal that can draw it.
        silent = hostile_farm.ports["silent"]
        proc = subprocess.run(vncaudit("scan", "127.0.0.1", "-p", str(silent), "--timeout", "1",
                                       "--db", str(tmp_path / "v.db"), "-o", "json", "--all"),
                              stdout=subprocess.PIPE, stderr=slave, timeout=60, check=False,
                              env={**os.environ, "TERM": "xterm-256color"})
    finally:
        os.close(slave)
        reader.join(timeout=5)
        os.close(master)
    screen = b"".join(drawn).decode("utf-8", "replace")
    assert proc.returncode == 0, screen[-1500:]
    assert "scanning" in screen and "Traceback" not in screen and "lost sys.stderr" not in screen
    report = json.loads(proc.stdout)
    assert report["scan"]["ports"] == str(silent)
    assert [s["state"] for s in report["services"]] == ["tarpit"]


def test_interrupted_scan_says_so_and_resume_streams_the_whole_scan(
        tmp_path: Path, hostile_farm: Farm) -> None:  # noqa: F811
    fast, slow = hostile_farm.ports["vnc-none"], hostile_farm.ports["silent"]
    status = tmp_path / "status.jsonl"
    scan = subprocess.Popen(vncaudit("scan", "127.0.0.1", "-p", f"{fast},{slow}", "--timeout",
                                     "8", "-o", "jsonl", "--status-file", str(status)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert scan.stdout is not None
    first = json.loads(scan.stdout.readline())  # the fast one has been streamed
    assert first["port"] == fast
    os.kill(scan.pid, signal.SIGINT)
    rest, stderr = scan.communicate(timeout=30)
    assert scan.returncode == 130, stderr
    assert rest == ""
    end = read_events(status.read_text())[-1]
    assert end["status"] == "interrupted" and end["done"] == 1
    assert end["resume"].startswith("vncaudit scan --resume s-")
    scan_id = end["scan"]
    resumed = subprocess.run(vncaudit("scan", "--resume", scan_id, "-o", "jsonl"),
                             capture_output=True, text=True, timeout=60, check=False)
    # (the silent server is probed again, with the stored deadline of 8 s)
    assert resumed.returncode == 0, resumed.stderr
    lines = [json.loads(line) for line in resumed.stdout.splitlines()]
    assert [(d["port"], d["state"]) for d in lines] == [(fast, "vnc"), (slow, "tarpit")]


@pytest.mark.parametrize(("value", "message"), [
    ("{tmp}/missing/status.jsonl", "does not exist"),
    ("{tmp}", "is a directory"),
    ("{out}", "is also another file"),
])
def test_bad_status_file_is_refused_before_any_packet(tmp_path: Path, value: str,
                                                      message: str) -> None:
    out_file = tmp_path / "report.json"
    path = value.format(tmp=tmp_path, out=out_file)
    out = subprocess.run(vncaudit("scan", "127.0.0.1", "-p", "1", "--output-file",
                                  str(out_file), "--status-file", path),
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2
    assert out.stderr.startswith("vncaudit: error: --status-file") and message in out.stderr
    assert not out_file.exists()




def test_jsonl_all_streams_bulk_verdicts_at_the_end(tmp_path: Path) -> None:
    """A SYN sweep hands closed/filtered verdicts to the store in bulk, never as results: with
    --all their lines come when the scan ends, each verdict exactly once; without --all, none;
    an interrupted scan adds none (the resume repeats what was found)."""
    from vncaudit.cli.live import LiveOutput
    from vncaudit.engine import Progress
    from vncaudit.models import ServiceResult, State

    streamed = ServiceResult("127.0.0.1", 5900, State.CLOSED)
    bulk = ServiceResult("127.0.0.2", 5901, State.FILTERED, error="no answer")
    vnc = ServiceResult("127.0.0.3", 5902, State.TARPIT, error="no banner")
    stored = [streamed, bulk, vnc]
    for include_all, status, expected in ((True, "finished", [5900, 5902, 5901]),
                                          (False, "finished", [5902]),
                                          (True, "interrupted", [5900, 5902])):
        out = tmp_path / f"{include_all}-{status}.jsonl"
        live = LiveOutput("jsonl", out, include_all, None, "s-test", Progress(total=3))
        live.result(streamed)
        live.result(vnc)
        live.end(status, stored)
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        assert [d["port"] for d in lines] == expected, (include_all, status)
        validator = service_validator()
        assert all(not list(validator.iter_errors(d)) for d in lines)


def test_progress_bar_draws_on_a_terminal(tmp_path: Path) -> None:
    """On a terminal (a pseudo-terminal here, 80 columns) a scan that lasts a while draws its
    progress bar on stderr, and takes it away at the end: the bar's live display holds the
    lazily made stderr console as a context manager."""
    import pty
    import select

    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "80", "LINES": "24"}
    env.pop("NO_COLOR", None)
    # 1,024 closed loopback ports at 500 new connections a second: about two seconds.
    proc = subprocess.Popen(vncaudit("scan", "127.0.0.1", "-p", "20000-21023", "--rate", "500",
                                 "--timeout", "1", "--db", str(tmp_path / "bar.db"), "-o",
                                 "json", "--output-file", str(tmp_path / "bar.json")),
                            stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1.0)
        if not ready:
            if proc.poll() is not None:
                break
            continue
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the other end closed
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    assert proc.wait(30) == 0, seen.decode(errors="replace")[-2000:]
    text = seen.decode(errors="replace")
    assert "scanning" in text and "/1024" in text, text[-2000:]
    assert "Traceback" not in text
