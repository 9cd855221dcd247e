"""What a person reads from `vncaudit watch` and `vncaudit alerts`, at 80 columns: status lines
broken between words on a terminal (one line each in a pipe), counts with their plurals, the
digest mail within 78 columns with its top items in address order and the severity named once,
and the alerts table of a cycle in the digest's order with its addresses whole.

Real parts: fake RFB servers on loopback (tests/netns.py), the real HTTP receiver and SMTP
server (tests/receivers.py), the CLI in a subprocess; a terminal is what rich takes for one
(TTY_COMPATIBLE=1, COLUMNS=80).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from test_watch_digest import HOSTS, SERVICES

import netns
import receivers
import servers

pytestmark = pytest.mark.timeout(300)


def _run(*args: str, terminal: bool = False) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    if terminal:
        env.update(TTY_COMPATIBLE="1", COLUMNS="80", NO_COLOR="1")
    return subprocess.run([sys.executable, "-m", "vncaudit", *args], capture_output=True,
                          text=True, timeout=120, env=env)


@pytest.fixture(scope="module")
def cycle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One first cycle of 25 services, watched from a terminal, with a webhook and a mail
    channel (a digest each)."""
    tmp = tmp_path_factory.mktemp("messages")
    cert, key = receivers.self_signed(tmp)
    (tmp / "pw").write_text(receivers.SMTP_PASSWORD + "\n")
    db, config = tmp / "w.db", tmp / "m.toml"
    port = servers.free_port()
    with receivers.http_receiver(tmp / "hook.jsonl") as hook, \
            receivers.smtp_receiver(tmp / "mail.jsonl", cert, key) as mail, \
            netns.fake_servers(port, HOSTS):
        config.write_text(receivers.monitors_toml(db, mail.port, hook.port, cert, f"""
targets = {json.dumps(HOSTS)}
ports = "{port}"
every = "1h"
webhook = ["ops"]
email = ["ops@example.org"]
timeout = 3
"""))
        run = _run("watch", "--config", str(config), "--once", "--deliver-for", "20",
                   terminal=True)
        assert run.returncode == 0, run.stderr
        [posted] = hook.wait_for("accepted", 1, 20)
        [mailed] = mail.wait_for("accepted", 1, 20)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", run.stderr)  # the dim note's style
    yield {"stderr": plain, "db": db, "hook": posted, "mail": mailed,
           "scan": posted["digest"]["scan_id"]}


def test_status_lines_break_between_words_on_a_terminal(cycle: dict[str, Any]) -> None:
    lines = cycle["stderr"].rstrip("\n").split("\n")
    assert all(len(line) <= 80 for line in lines), lines
    # A continuation is indented under the text after the time; no word was cut in two.
    assert any(line.startswith(" " * 9) and line[9] != " " for line in lines), lines
    whole = re.sub(r"\n {6,9}", " ", cycle["stderr"])
    assert "25 ports, 25 VNC services, 25 alerts (first cycle); more than 20: one digest " \
           "to webhook:ops, email:ops@example.org" in whole, cycle["stderr"]
    assert "note: webhook:ops not signed (no secret_file, --webhook-secret-file or " \
           "$VNCAUDIT_WEBHOOK_SECRET)" in whole


def test_digest_mail_fits_78_columns_in_address_order(cycle: dict[str, Any]) -> None:
    body = cycle["mail"]["body"].replace("\r\n", "\n")
    # A command is never broken (it is copied whole); every other line fits.
    assert all(len(line) <= 78 for line in body.splitlines()
               if not line.startswith("  vncaudit ")), body
    top = re.findall(r"^  (127\.0\.77\.\d+):\d+ (.*)$", body.replace("\n      ", " "),
                     re.M)
    assert len(top) == 10
    # Most severe first, then by address as numbers (127.0.77.2 before 127.0.77.10).
    ranks = {"high": 0, "medium": 1}
    order = [(ranks[t.rsplit(" ", 1)[-1]], ipaddress.ip_address(h)) for h, t in top]
    assert order == sorted(order), top
    assert not any(t.endswith("]") for _, t in top), top  # "severity high", not "... [high]"
    assert cycle["hook"]["text"].count("[high]") == 0


def test_alerts_of_a_cycle_in_the_digest_order_at_80_columns(cycle: dict[str, Any]) -> None:
    run = _run("alerts", "--db", str(cycle["db"]), "--scan", cycle["scan"], terminal=True)
    assert run.returncode == 0, run.stderr
    out = re.sub(r"\x1b\[[0-9;]*m", "", run.stdout)  # the header's bold
    lines = out.splitlines()
    assert all(len(line) <= 80 for line in lines), out
    header = lines[1]
    assert "when" not in header and "monitor" not in header  # one cycle: the same for all
    listed = re.findall(r"^│ (127\.0\.77\.\d+:\d+) ", out, re.M)
    assert len(listed) == SERVICES  # each address whole, on its first line
    top = [f"{t['host']}:{t['port']}" for t in cycle["hook"]["digest"]["top"]]
    assert listed[:10] == top
    assert "│ 2 delivered (2 in a" in out
