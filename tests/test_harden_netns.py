"""`local` → `harden --apply` → re-scan → `--rollback`, for real, in network namespaces.

docs/design.md §4 bed (tests/netns.py): the scanner namespace `scn` reaches 198.18.0.0/16 in the
target namespace `tgt` over one veth. A real TigerVNC Xvnc (security type None) listens on
0.0.0.0 inside `tgt`; RSTs from the target address are let through, so a closed port answers
"closed" and only a firewall DROP makes a port "filtered". Every vncaudit command runs as
`ip netns exec NS python -m vncaudit …`, so the firewall it reads and changes is the
namespace's own, never this machine's. Servers are killed and namespaces deleted even on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require_binaries

from vncaudit import harden

import netns
import servers

pytestmark = [pytest.mark.netns, pytest.mark.realserver]

TARGET = "198.18.77.7"
VNC_PORT = 5901
CLOSED_PORT = 5902


def _vncaudit(bed_ns: str, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", bed_ns, sys.executable, "-m", "vncaudit",
                           *args], capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, "COLUMNS": "200"})


def _listening(bed: netns.Bed, port: int, v6: bool = False) -> bool:
    table = "/proc/net/tcp6" if v6 else "/proc/net/tcp"
    text = bed.run(bed.tgt, "cat", table).stdout
    want = f":{port:04X}"
    return any(f.split()[1].endswith(want) and f.split()[3] == "0A"
               for f in text.splitlines()[1:])


@contextlib.contextmanager
def _process_group(cmd: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        yield proc
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=5)
                break
            except subprocess.TimeoutExpired:
                continue


def _wait(cond, proc: subprocess.Popen[bytes], log: Path, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + 30
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited: {log.read_text()[-1500:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not listening after 30 s: {log.read_text()[-1500:]}")
        time.sleep(0.1)


@pytest.fixture
def tiger_bed(tmp_path: Path) -> Iterator[netns.Bed]:
    """The bed with Xvnc -SecurityTypes None -interface 0.0.0.0 on VNC_PORT inside tgt."""
    netns.require_netns()
    require_binaries("tigervnc-none")
    reservation = servers.reserve_display()
    log = tmp_path / "xvnc.log"
    try:
        with netns.netns_bed() as bed:
            bed.allow_rst_from(TARGET)
            cmd = ["ip", "netns", "exec", bed.tgt, "Xvnc", f":{reservation.display}",
                   "-rfbport", str(VNC_PORT), "-interface", "0.0.0.0", "-SecurityTypes",
                   "None", "-desktop", "netns-tgt", "-geometry", "320x240"]
            with _process_group(cmd, log) as proc:
                _wait(lambda: _listening(bed, VNC_PORT), proc, log, "Xvnc")
                yield bed
    finally:
        reservation.release()


def _scan(bed: netns.Bed) -> dict[int, str]:
    proc = _vncaudit(bed.scn, "scan", TARGET, "-p", f"{VNC_PORT},{CLOSED_PORT}", "-o", "json",
                     "--all", "--timeout", "2", "--no-web")
    assert proc.returncode in (0, 1), proc.stderr
    return {s["port"]: s["state"] for s in json.loads(proc.stdout)["services"]}


def _rules(bed: netns.Bed) -> dict[str, list[str]]:
    return {tool: harden.normalize_rules(bed.run(bed.tgt, *cmd).stdout)
            for tool, cmd in (("iptables", ["iptables-save"]), ("ip6tables", ["ip6tables-save"]),
                              ("nft", ["nft", "list", "ruleset"]))}


def _inside(bed: netns.Bed, path: Path) -> dict:
    proc = _vncaudit(bed.tgt, "local", "--only-port", str(VNC_PORT), "-o", "json",
                     "--output-file", str(path))
    assert proc.returncode == 0, proc.stderr
    return json.loads(path.read_text())


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_local_harden_apply_rescan_rollback(tiger_bed: netns.Bed, backend: str,
                                            tmp_path: Path) -> None:
    bed = tiger_bed
    t0 = time.monotonic()
    # 1. Inside: the listener on 0.0.0.0, None auth, nothing filters it -> critical.
    doc = _inside(bed, tmp_path / "inside-before.json")
    [x] = doc["listeners"]
    assert (x["address"], x["port"], x["scope"]) == ("0.0.0.0", VNC_PORT, "all-interfaces")
    assert x["process"]["name"] == "Xvnc" and "-interface" in x["process"]["cmdline"]
    assert x["severity"] == "critical"
    assert x["firewall"]["ipv4"]["action"] == "allowed"
    assert x["reachable_from_outside"] is True
    # 2. Outside: open; the closed port answers RST.
    assert _scan(bed) == {VNC_PORT: "vnc", CLOSED_PORT: "closed"}
    check = _vncaudit(bed.scn, "check", TARGET, "--inside", str(tmp_path / "inside-before.json"),
                      "--only-port", str(VNC_PORT), "--json", "--timeout", "2")
    assert check.returncode == 1, check.stderr  # exposed
    assert json.loads(check.stdout)["ports"][0]["verdict"].startswith("EXPOSED")

    before = _rules(bed)
    backups = tmp_path / "backups"
    # 3. Apply (inside tgt), with --yes: the plan is printed first.
    applied = _vncaudit(bed.tgt, "harden", "--apply", "--yes", "--backend", backend,
                        "--only-port", str(VNC_PORT), "--backup-dir", str(backups))
    assert applied.returncode == 0, applied.stderr
    [backup_dir] = [d for d in backups.iterdir() if d.is_dir()]
    meta = json.loads((backup_dir / "meta.json").read_text())
    assert meta["backend"] == backend and meta["commands"]
    shown = applied.stdout
    for cmd in meta["commands"]:  # what ran is exactly what was shown
        assert f"     {cmd}\n" in shown
    tool = "nft" if backend == "nftables" else "iptables"
    assert all(c.split()[0] in (tool, "ip6tables") for c in meta["commands"])
    assert "loopback port 5901: answers RFB" in applied.stderr
    changed = _rules(bed)
    assert changed != before

    # 4. Outside again: filtered now (DROP), the closed port still answers RST.
    assert _scan(bed) == {VNC_PORT: "filtered", CLOSED_PORT: "closed"}
    # Loopback inside tgt still works, and SSH's port is still allowed.
    lo = _vncaudit(bed.tgt, "scan", "127.0.0.1", "-p", str(VNC_PORT), "-o", "json", "--no-web")
    assert [s["state"] for s in json.loads(lo.stdout)["services"]] == ["vnc"]
    after = _inside(bed, tmp_path / "inside-after.json")
    assert after["listeners"][0]["firewall"]["ipv4"]["action"] == "dropped"
    assert after["listeners"][0]["reachable_from_outside"] is False
    ssh = bed.run(bed.tgt, sys.executable, "-c",
                  "from vncaudit import firewall as f; s = f.read_state(); "
                  "print(s.verdict('ipv4', 22), s.verdict('ipv6', 22))").stdout.split()
    assert ssh == ["allowed", "allowed"]
    check = _vncaudit(bed.scn, "check", TARGET, "--inside", str(tmp_path / "inside-after.json"),
                      "--only-port", str(VNC_PORT), "--json", "--timeout", "2")
    assert check.returncode == 0, check.stderr
    assert "the firewall (or the path) works" in json.loads(check.stdout)["ports"][0]["verdict"]
    # The same from the host's side: its own audit against a scan file made in scn.
    outside = tmp_path / "outside.json"
    scanned = _vncaudit(bed.scn, "scan", TARGET, "-p", str(VNC_PORT), "-o", "json", "--all",
                        "--timeout", "2", "--no-web", "--output-file", str(outside))
    assert scanned.returncode == 0, scanned.stderr
    here = _vncaudit(bed.tgt, "check", TARGET, "--outside", str(outside), "--only-port",
                     str(VNC_PORT), "--json")
    assert here.returncode == 0, here.stderr
    [row] = json.loads(here.stdout)["ports"]
    assert (row["outside"], row["scope"]) == ("filtered", "all-interfaces")
    assert "ipv4: dropped" in row["firewall"]

    # 5. Rollback restores the rules exactly, and the port is open again.
    rolled = _vncaudit(bed.tgt, "harden", "--rollback", "--yes", "--backup-dir", str(backups))
    assert rolled.returncode == 0, rolled.stderr
    assert "exactly as before" in rolled.stderr
    restored = _rules(bed)
    # iptables-save before == after. (iptables-restore re-creates the empty built-in chains
    # that iptables-nft had not created yet, so only the nft listing of an iptables rollback
    # may show extra empty chains; the nftables rollback leaves every view as it was.)
    compared = ("iptables", "ip6tables") if backend == "iptables" else tuple(before)
    assert {k: restored[k] for k in compared} == {k: before[k] for k in compared}
    assert _scan(bed)[VNC_PORT] == "vnc"
    print(f"\n{backend}: local/apply/rescan/rollback cycle in {time.monotonic() - t0:.1f} s; "
          f"{len(meta['commands'])} commands applied")


def test_apply_refuses_when_nothing_is_exposed(tiger_bed: netns.Bed, tmp_path: Path) -> None:
    # Block it first by hand: then harden has nothing to apply, says so, and changes nothing.
    bed = tiger_bed
    bed.run(bed.tgt, "iptables", "-I", "INPUT", "-p", "tcp", "--dport", str(VNC_PORT),
            "!", "-i", "lo", "-j", "DROP")
    before = _rules(bed)
    proc = _vncaudit(bed.tgt, "harden", "--apply", "--yes", "--only-port", str(VNC_PORT),
                     "--backup-dir", str(tmp_path / "b"))
    assert proc.returncode == 2 and "nothing to apply" in proc.stderr
    assert proc.stderr.count("\n") == 1
    assert _rules(bed) == before
    assert not (tmp_path / "b").exists()


def test_x11vnc_ipv6_wildcard_is_reported_separately(tmp_path: Path) -> None:
    """x11vnc -rfbport 5905 -listen 127.0.0.1 -noipv6 still opens an IPv6 wildcard listener,
    and on [::]:5900, not on its -rfbport (x11vnc 0.9.16, measured: "Listening for VNC
    connections on TCP6 port 5900"); only -rfbportv6 -1 closes it."""
    netns.require_netns()
    require_binaries("x11vnc-none")
    reservation = servers.reserve_display()
    port, port6 = 5905, 5900
    try:
        with netns.netns_bed() as bed, _process_group(
                ["Xvfb", f":{reservation.display}", "-screen", "0", "320x240x24",
                 "-nolisten", "tcp"], tmp_path / "xvfb.log") as xvfb:
            _wait(lambda: servers.x_display_listening(reservation.display), xvfb,
                  tmp_path / "xvfb.log", "Xvfb")
            cmd = ["ip", "netns", "exec", bed.tgt, "x11vnc", "-display",
                   f":{reservation.display}", "-rfbport", str(port), "-listen", "127.0.0.1",
                   "-noipv6", "-nopw", "-forever", "-shared", "-norc"]
            with _process_group(cmd, tmp_path / "x11vnc.log") as proc:
                _wait(lambda: _listening(bed, port) and _listening(bed, port6, v6=True), proc,
                      tmp_path / "x11vnc.log", "x11vnc")
                res = _vncaudit(bed.tgt, "local", "--only-port", str(port), "--only-port",
                                str(port6), "-o", "json")
                assert res.returncode == 0, res.stderr
                doc = json.loads(res.stdout)
                by_addr = {(x["address"], x["port"]): x for x in doc["listeners"]}
                assert set(by_addr) == {("127.0.0.1", port), ("::", port6)}
                v6 = by_addr[("::", port6)]
                assert v6["process"]["name"] == "x11vnc"
                assert (v6["family"], v6["scope"]) == ("ipv6", "all-interfaces")
                # No IPv4 socket on 5900: with bindv6only=0 the [::] socket takes IPv4 too.
                assert v6["served_families"][0] == "ipv6"
                assert v6["service"]["state"] == "vnc"
                assert v6["severity"] == "critical"
                assert by_addr[("127.0.0.1", port)]["scope"] == "loopback"
                notes = " ".join(c["meaning"] for c in v6["config"])
                assert "keeps [::]" in notes
                plan = _vncaudit(bed.tgt, "harden", "--only-port", str(port), "--only-port",
                                 str(port6), "--json")
                assert plan.returncode == 0, plan.stderr
                sections = json.loads(plan.stdout)["sections"]
                assert any("IPv6" in s["title"] and f"[::]:{port6}" in s["title"]
                           for s in sections)
                assert json.loads(plan.stdout)["ports"] == [port6]  # loopback 5905 needs none
    finally:
        reservation.release()


def test_allowlist_keeps_the_trusted_scanner_and_rollback(tiger_bed: netns.Bed,
                                                           tmp_path: Path) -> None:
    bed = tiger_bed
    before = _rules(bed)
    backups = tmp_path / "backups"
    applied = _vncaudit(bed.tgt, "harden", "--apply", "--yes", "--backend", "nftables",
                        "--allow", f"{netns.SCN_ADDR}/32", "--only-port", str(VNC_PORT),
                        "--backup-dir", str(backups))
    assert applied.returncode == 0, applied.stderr
    assert f"ip saddr {netns.SCN_ADDR}/32 tcp dport {VNC_PORT} accept" in applied.stdout
    assert _scan(bed)[VNC_PORT] == "vnc"  # scn is the trusted network
    doc = _inside(bed, tmp_path / "inside.json")
    v4 = doc["listeners"][0]["firewall"]["ipv4"]
    assert (v4["action"], v4["sources"]) == ("restricted", [netns.SCN_ADDR])
    rolled = _vncaudit(bed.tgt, "harden", "--rollback", "--yes", "--backup-dir", str(backups))
    assert rolled.returncode == 0, rolled.stderr
    assert _rules(bed) == before


_FAILING_APPLY = r"""
import sys
from pathlib import Path
from vncaudit import harden, local
audit = local.audit(only_ports=[int(sys.argv[1])])
plan = harden.build_plan(audit, backend="iptables")
# A command that fails half-way: everything before it must be undone.
plan.firewall_commands = (*plan.firewall_commands, "iptables -A NO-SUCH-CHAIN -j DROP")
try:
    harden.apply(plan, backup_dir=Path(sys.argv[2]))
except harden.HardenError as exc:
    print(exc)
else:
    print("applied?!")
"""


def test_a_failing_command_rolls_everything_back(tiger_bed: netns.Bed, tmp_path: Path) -> None:
    bed = tiger_bed
    before = _rules(bed)
    out = bed.run(bed.tgt, sys.executable, "-c", _FAILING_APPLY, str(VNC_PORT),
                  str(tmp_path / "b")).stdout
    assert "NO-SUCH-CHAIN" in out and "previous rules restored" in out
    after = _rules(bed)
    assert after["iptables"] == before["iptables"] and after["ip6tables"] == before["ip6tables"]
    assert _scan(bed)[VNC_PORT] == "vnc"
