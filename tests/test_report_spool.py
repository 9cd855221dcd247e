"""The `-o json` report built while a scan runs (`report.spool`): byte for byte the report that
`report.render` writes from the same results read back, in the same order, with the same summary.

The unit tests feed the spool the real recorded handshakes of `test_report` (and hostile strings:
control characters, non-ASCII, lone surrogates, a float json writes its own way) in shuffled
order and compare with `report.render("json", ...)` of the results sorted as `vncaudit results`
sorts them. The CLI tests scan the hostile farm on 127.0.0.1 and compare the scan's own report
with `vncaudit results ID -o json`, which reads every row back from the store.
"""

from __future__ import annotations

import io
import ipaddress
import json
import os
import random
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from test_report import DES_ONLY, META, NO_AUTH, NONSTD, replayed

from vncaudit import report
from vncaudit.cli.output import summary_line
from vncaudit.models import Finding, ServiceResult, Severity, State
from vncaudit.payloads import BudgetNote
from vncaudit.report.spool import JsonSpool
from vncaudit.store import Store

from hostile import Farm, hostile_farm  # noqa: F401  (hostile_farm is a fixture)


def address_order(results: list[ServiceResult]) -> list[ServiceResult]:
    """How `vncaudit results` orders a report: host names first, then addresses numerically
    (IPv4 first)."""
    def key(r: ServiceResult) -> tuple[int, bytes, int]:
        try:
            ip = ipaddress.ip_address(r.host)
        except ValueError:
            return (2, r.host.encode(), r.port)
        return (ip.version, ip.packed, r.port)
    return sorted(results, key=key)


def spooled(results: list[ServiceResult]) -> tuple[str, JsonSpool]:
    spool = JsonSpool()
    spool.add_all(results)
    out = io.StringIO()
    spool.write(META, out)
    return out.getvalue(), spool


def many() -> list[ServiceResult]:
    tiger = replayed("tigervnc-default-38", 5900)
    x11 = replayed("x11vnc-none-38", 5901)
    tight = replayed("xtightvnc-38", 5902)
    hosts = ["10.0.0.9", "9.0.0.1", "10.0.0.10", "::1", "2001:db8::5", "vnc.example",
             "a.example", "198.18.0.1"]
    out = []
    for n, host in enumerate(hosts):
        for port, base, findings in ((5900, tiger, ()), (5901, x11, (NONSTD, NO_AUTH)),
                                     (5902 + n, tight, (DES_ONLY,))):
            out.append(replace(base, host=host, port=port, findings=findings,
                               elapsed=0.001 * (n + 1)))
    return out


def test_the_spool_writes_the_json_report_byte_for_byte() -> None:
    results = many()
    expected = report.render("json", META, address_order(results))
    for seed in range(5):
        shuffled = results[:]
        random.Random(seed).shuffle(shuffled)
        text, spool = spooled(shuffled)
        assert text == expected
        hosts = [s["host"] for s in json.loads(text)["services"]]
        assert hosts[::3] == ["a.example", "vnc.example", "9.0.0.1", "10.0.0.9", "10.0.0.10",
                              "198.18.0.1", "::1", "2001:db8::5"]
        spool.close()


def test_hostile_strings_and_floats_come_out_as_render_writes_them() -> None:
    x11 = replayed("x11vnc-none-38", 5901)
    assert x11.rfb is not None
    odd = [
        replace(x11, host="127.0.0.1", rfb=replace(x11.rfb, desktop_name="caf\u00e9 \x1b[2J\x7f")),
        replace(x11, host="127.0.0.2", rfb=replace(x11.rfb, desktop_name="\ud800 lone")),
        replace(x11, host="127.0.0.3", rfb=replace(x11.rfb, desktop_name="\U0001f600 \u2028")),
        replace(x11, host="127.0.0.4", elapsed=1e20),  # json's exponent form, not orjson's
        replace(x11, host="127.0.0.5", elapsed=float("nan")),
        replace(x11, host="127.0.0.6", hostname="\u202eevil", error="a\nb\"c\\"),
    ]
    text, _ = spooled(list(reversed(odd)))
    assert text == report.render("json", META, odd)
    assert text.isascii() and "NaN" in text and "1e+20" in text


def test_no_service_is_the_empty_document() -> None:
    text, spool = spooled([])
    assert text == report.render("json", META, [])
    assert spool.tally.shown == 0 and spool.tally.at_or_above(Severity.INFO) == 0


def test_a_pair_given_twice_keeps_the_first_as_the_store_does() -> None:
    first = replace(replayed("x11vnc-none-38", 5901), findings=(NO_AUTH,))
    second = replace(first, findings=(DES_ONLY, NONSTD), elapsed=0.5)
    other = replayed("tigervnc-default-38", 5900)
    text, spool = spooled([first, other, second])
    assert text == report.render("json", META, [other, first])
    assert len(spool) == 2 and spool.tally.shown == 2
    assert spool.tally.findings[Severity.CRITICAL] == 1
    assert spool.tally.findings[Severity.MEDIUM] == 0


def test_the_tally_counts_what_the_report_holds() -> None:
    note = BudgetNote(probed=False, reason="budget", source="10.0.0.1", rule="r", spent=3,
                      free=0)
    results = many()
    results[3] = results[3].with_extra(budget=note)
    _, spool = spooled(results)
    tally = spool.tally
    assert tally.shown == len(results)
    expected: dict[Severity, int] = dict.fromkeys(Severity, 0)
    for r in results:
        for f in r.findings:
            expected[f.severity] += 1
    assert dict(tally.findings) == expected
    assert list(tally.findings) == sorted(Severity, key=lambda s: -s.rank)  # worst first
    assert tally.budget_notes == (note,)
    assert tally.at_or_above(Severity.MEDIUM) == (expected[Severity.CRITICAL]
                                                  + expected[Severity.HIGH]
                                                  + expected[Severity.MEDIUM])


def test_closing_removes_the_spool_file() -> None:
    before = len(os.listdir("/proc/self/fd"))
    spool = JsonSpool()
    spool.add(ServiceResult("127.0.0.1", 5900, State.VNC, findings=(
        Finding("x", Severity.LOW, "t"),)))
    assert len(os.listdir("/proc/self/fd")) == before + 1  # an unnamed file: nothing to delete
    with spool:
        pass
    assert len(os.listdir("/proc/self/fd")) == before


# -- the command line ------------------------------------------------------------------------


def vncaudit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vncaudit", *args], capture_output=True,
                          text=True, timeout=120, check=False)


FARM_PORTS = ("vnc-none", "vnc-auth", "ssh", "http", "honeypot-any", "realvnc-4.1.1",
              "reason-binary", "count255-garbage", "vencrypt-absurd")


def test_the_scans_json_report_is_the_stored_ones(
        tmp_path: Path, hostile_farm: Farm) -> None:  # noqa: F811
    ports = ",".join(str(hostile_farm.ports[k]) for k in FARM_PORTS)
    db, out_file, status = tmp_path / "s.db", tmp_path / "scan.json", tmp_path / "status.jsonl"
    scan = vncaudit("scan", "127.0.0.1", "-p", f"{ports},1", "--timeout", "3", "--db", str(db),
                    "-o", "json", "--output-file", str(out_file), "--status-file", str(status),
                    "--fail-on", "high")
    assert scan.returncode == 1, scan.stderr  # the no-auth server is critical
    scan_id = json.loads(out_file.read_text())["scan"]["id"]
    again = tmp_path / "again.json"
    back = vncaudit("results", scan_id, "--db", str(db), "-o", "json", "--output-file",
                    str(again))
    assert back.returncode == 0, back.stderr
    assert out_file.read_bytes() == again.read_bytes()
    doc = json.loads(out_file.read_text())
    assert len(doc["services"]) == len(FARM_PORTS)  # port 1 is closed: not shown
    # The summary line the results read back from the store make (the --fail-on reason too).
    with Store.open(db) as store:
        record, results = store.require_scan(scan_id), store.results(scan_id)
    failing = sum(f.severity.rank >= Severity.HIGH.rank for r in results for f in r.findings)
    reason = f"{failing} findings at high or worse (--fail-on high)"
    line = summary_line(record, results, results, "json", out_file, reason)
    assert scan.stderr.splitlines()[-1] == line
    assert f"{len(FARM_PORTS)} shown" in line
    end = json.loads(status.read_text().splitlines()[-1])
    counted = dict.fromkeys((s.value for s in sorted(Severity, key=lambda s: -s.rank)), 0)
    for service in doc["services"]:
        for finding in service["findings"]:
            counted[finding["severity"]] += 1
    assert end["findings"] == counted and end["shown"] == len(FARM_PORTS)
    # On stdout: the same document.
    stdout = vncaudit("results", scan_id, "--db", str(db), "-o", "json")
    assert stdout.stdout == out_file.read_text()
    piped = vncaudit("scan", "127.0.0.1", "-p", ports, "--timeout", "3", "--db", str(db),
                     "-o", "json")
    assert piped.returncode == 0, piped.stderr
    piped_id = json.loads(piped.stdout)["scan"]["id"]
    assert piped.stdout == vncaudit("results", piped_id, "--db", str(db), "-o", "json").stdout


ODD_HOSTS = ["1.2.3.4", "01.2.3.4", "1.2.3", "256.1.1.1", "1.2.3.4 ", "1.2.3.-0", "0.0.0.0",
             "255.255.255.255", "::1", "::ffff:1.2.3.4", "a.b.c.d", "1.2.3.\u0664", "+1.2.3.4",
             "2001:db8::5", "vnc.example", "1.2.3.5", "9.9.9.9", "10.0.0.1"]


def test_odd_hosts_are_in_the_order_ipaddress_gives() -> None:
    results = [ServiceResult(h, 5900, State.VNC) for h in ODD_HOSTS]
    random.Random(3).shuffle(results)
    text, _ = spooled(results)
    assert text == report.render("json", META, address_order(results))
