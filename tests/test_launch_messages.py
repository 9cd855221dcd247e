"""What a person reads when a scan that started early (cli/launch.py) ends before it ran: Ctrl-C
while the program loads is the same one line as Ctrl-C while the early batches go out, never a
traceback; a store another process keeps locked, and a --db naming the home of no user, are
one line that says so; bad input for each option the launcher pre-parses gets exactly the
full parse's line (the early start never answers for it).

Real parts: the CLI in a subprocess, on the namespace bed (tests/netns.py: 198.18.0.0/16 in a
target namespace the test creates) for the SYN scans; SQLite's own lock held by another
process.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import servers
from netns import Bed, netns_bed, require_netns

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def bed() -> Iterator[Bed]:
    require_netns()
    with netns_bed() as testbed:
        yield testbed


@pytest.mark.parametrize("after", [0.35, 0.5, 0.7])
def test_ctrl_c_while_the_program_loads_is_one_line(bed: Bed, tmp_path: Path,
                                                    after: float) -> None:
    """A /16 at 2,000/s: the early senders run while the program loads (up to 1 s), so a
    Ctrl-C meets the early start, the program's imports, or the scan itself; each is one line
    (the scan's names the resume), exit 130, no traceback."""
    cmd = ["ip", "netns", "exec", bed.scn, "env", f"PYTHONPATH={SRC}", sys.executable, "-m",
           "vncaudit", "scan", "198.18.0.0/16", "-p", "5900", "--discovery", "syn",
           "--rate", "2000", "--db", str(tmp_path / "s.db")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(after)
    os.kill(proc.pid, signal.SIGINT)  # `ip netns exec` and `env` exec: this is the scan
    out, err = proc.communicate(timeout=60)
    # 130; the interpreter may also end by the signal itself, after the line
    assert proc.returncode in (130, -signal.SIGINT), err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("vncaudit: error:")]
    assert len(errors) == 1, err
    assert errors[0] == "vncaudit: error: interrupted; nothing recorded" \
        or errors[0].startswith("vncaudit: error: interrupted; 0 ports recorded. Resume "
                                "with: vncaudit scan --resume s-"), err


def test_a_locked_store_is_one_line(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    port = servers.free_port()
    first = subprocess.run([sys.executable, "-m", "vncaudit", "scan", "127.0.0.1", "-p",
                            str(port), "--db", str(db)], capture_output=True, text=True,
                           timeout=60)
    assert first.returncode == 0, first.stderr
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        for mode in ("connect", "syn"):
            run = subprocess.run([sys.executable, "-m", "vncaudit", "scan", "127.0.0.1", "-p",
                                  str(port), "--discovery", mode, "--db", str(db)],
                                 capture_output=True, text=True, timeout=60)
            assert run.returncode == 3, run.stderr
            [line] = [x for x in run.stderr.splitlines() if x.startswith("vncaudit:")]
            assert line == "vncaudit: error: cannot create scan: another process kept the " \
                           "store locked for 10 s (database is locked); try again when it " \
                           "is done", run.stderr
    finally:
        holder.rollback()
        holder.close()


def test_db_in_the_home_of_no_user_is_one_line(tmp_path: Path) -> None:
    for args in (["scan", "127.0.0.1", "-p", "5900", "--discovery", "syn"], ["results"]):
        run = subprocess.run([sys.executable, "-m", "vncaudit", *args, "--db",
                              "~no-such-user-here/s.db"], capture_output=True, text=True,
                             timeout=60)
        assert run.returncode == 2, run.stderr
        assert run.stderr == "vncaudit: error: --db ~no-such-user-here/s.db: no user named " \
                             "'no-such-user-here' (whose home ~ would name)\n"
    config = tmp_path / "m.toml"
    config.write_text('db = "~no-such-user-here/w.db"\n[monitor.a]\ntargets = ["127.0.0.1"]\n'
                      'every = "1h"\n')
    run = subprocess.run([sys.executable, "-m", "vncaudit", "watch", "--config", str(config),
                          "--once"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and run.stderr == (
        f"vncaudit: error: {config}: ~no-such-user-here/w.db: no user named "
        "'no-such-user-here' (whose home ~ would name)\n"), run.stderr


BAD = [
    ["-p", "0"], ["-p", "70000"], ["-p", "abc"], ["-p", ",5900"], ["-p"], ["--ports="],
    ["--rate", "0"], ["--rate", "abc"], ["--rate", "-1"], ["--rate", "inf"], ["--rate"],
    ["--timeout", "0"], ["--timeout", "x"], ["--timeout", "nan"], ["--retries", "-1"],
    ["--retries", "1.5"], ["--concurrency", "0"], ["--concurrency", "x"],
    ["--discovery", "foo"], ["--discovery"], ["--db", "/nonexistent/x.db"], ["--db", "/"],
    ["-o", "yaml"], ["-o"], ["--output-file", "/nonexistent/dir/x.json"],
    ["--output-file", "/tmp/"], ["--all=1"], ["-q=1"], ["--verbose=2"],
]


@pytest.mark.parametrize("bad", BAD, ids=" ".join)
def test_bad_input_gets_the_full_parses_line(bad: list[str]) -> None:
    """The same command line through the launcher (`python -m vncaudit`, which may start
    early) and through the program alone: the same one line, the same exit code."""
    args = ["scan", "127.0.0.1", "--discovery", "syn", *bad] if bad[0] != "--discovery" \
        else ["scan", "127.0.0.1", *bad]
    launched = subprocess.run([sys.executable, "-m", "vncaudit", *args], capture_output=True,
                              text=True, timeout=60)
    alone = subprocess.run(
        [sys.executable, "-c", "import sys; from vncaudit.cli.program import run; "
         "sys.argv[0] = 'vncaudit'; run()", *args], capture_output=True, text=True, timeout=60)
    assert launched.returncode == alone.returncode == 2, (launched.stderr, alone.stderr)
    assert launched.stderr == alone.stderr
    assert len(launched.stderr.splitlines()) == 1
    assert launched.stderr.startswith("vncaudit: error: ")
