"""The early start of a SYN scan (vncaudit.cli.launch, vncaudit.synstart) on the namespace bed
(tests/netns.py, 198.18.0.0/16 in a target namespace the test creates): the first SYN leaves
before typer, asyncio, numpy and sqlite3 are imported (an audit hook on `socket.sendto` in
the scanning process), and a scan that starts early finds exactly the live set, the early pairs
with their verdicts, each SYN of the sweep sent once (none of the early pairs twice), the first
SYNs at the target being the first pairs of the stored seed's walk, under the rate cap.
Needs root: skipped without it, failed under CI.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import site
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from vncaudit import rawsyn, synstart
from vncaudit.cli import launch

from netns import (
    Bed,
    Sniffer,
    fake_servers,
    live_hosts,
    most_in_window,
    netns_bed,
    require_netns,
)

NET = "198.18.40.0/22"
PORTS = (5900, 5901)
LIVE = 20


@pytest.fixture(scope="module")
def bed() -> Iterator[tuple[Bed, list[str]]]:
    require_netns()
    hosts = live_hosts(NET, LIVE, seed=40)
    with netns_bed() as testbed, fake_servers(list(PORTS), hosts, netns=testbed.tgt):
        yield testbed, hosts


_AT_FIRST_SYN = """
import contextlib, runpy, socket, sys
before = set(sys.modules)
seen = []
def hook(event, args):
    # The early start's sendto on a raw socket; the sweep's look-up of sendmmsg (its first
    # batch follows).
    if seen or event not in ("socket.sendto", "socket.sendmsg", "ctypes.dlsym"):
        return
    if event != "ctypes.dlsym" and args[0].type != socket.SOCK_RAW:
        return
    seen.append(event)
    sys.stderr.write("FIRST " + event + " " + repr(args[1]) + " NEW "
                     + " ".join(sorted(set(sys.modules) - before)) + " MODULES "
                     + " ".join(sorted(sys.modules)) + "\\n")
sys.addaudithook(hook)
sys.argv = ["vncaudit", *sys.argv[1:]]
with contextlib.suppress(SystemExit):
    runpy.run_module("vncaudit", run_name="__main__")
"""


def _scan(testbed: Bed, *args: str, code: str | None = None) -> subprocess.CompletedProcess[str]:
    """`vncaudit scan ARGS` in the scanning namespace; with `code`, that script runs it in an
    interpreter without `site` (as a virtual environment's starts: no `.pth` file of this
    machine's site-packages imports anything first), the site-packages on the path."""
    if code is None:
        run, env = ["-m", "vncaudit"], None
    else:
        src = str(Path(synstart.__file__).parents[1])
        run = ["-S", "-c", code]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, *site.getsitepackages()])}
    return subprocess.run(["ip", "netns", "exec", testbed.scn, sys.executable, *run, "scan",
                           *args], capture_output=True, text=True, timeout=120, check=False,
                          env=env)


@pytest.mark.netns
def test_the_first_syn_leaves_before_typer_asyncio_numpy_and_sqlite(
        bed: tuple[Bed, list[str]], tmp_path: Path) -> None:
    testbed, hosts = bed
    out = _scan(testbed, hosts[0], "-p", "5900", "--timeout", "0.5", "--retries", "0",
                "--discovery", "syn", "--db", str(tmp_path / "s.db"), "-o", "json",
                code=_AT_FIRST_SYN)
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stderr.splitlines() if x.startswith("FIRST"))
    event, rest = line.split(" ", 2)[1:]
    assert event == "socket.sendto"
    assert rest.startswith(repr((hosts[0], 0))), line  # the target, on the raw socket
    imported = set(rest.split(" MODULES ")[1].split())
    assert "vncaudit.synstart" in imported
    # What the early start itself imports (runpy and socket were there before): four modules
    # of the package besides the entry, and small parts of the standard library.
    new = set(rest.split(" NEW ")[1].split(" MODULES ")[0].split())
    assert {m for m in new if m.startswith("vncaudit")} == {
        "vncaudit", "vncaudit.cli", "vncaudit.cli.launch", "vncaudit.synstart",
        "vncaudit.rawsyn", "vncaudit.targets", "vncaudit.targets.permutation",
        "vncaudit.targets.blocks"}
    assert {m for m in new if not m.startswith("vncaudit")} <= {
        "__future__", "_blake2", "_bisect", "bisect", "_struct", "struct", "array", "math",
        "itertools"}, new
    for module in ("typer", "click", "asyncio", "numpy", "sqlite3", "ctypes", "dataclasses",
                   "vncaudit.cli.program", "vncaudit.discovery", "vncaudit.store",
                   "vncaudit.engine", "vncaudit.models"):
        assert module not in imported, module
    [service] = json.loads(out.stdout)["services"]
    assert (service["host"], service["state"]) == (hosts[0], "vnc")  # the early pair's probe


def _early_pairs(db: Path, count: int) -> list[tuple[str, int]]:
    """The pairs the early start sent for the stored scan: the first of its seed's walk."""
    with sqlite3.connect(db) as conn:
        (options,) = conn.execute("SELECT options FROM scans").fetchone()
    stored = json.loads(options)
    net = ipaddress.ip_network(NET)
    plan = synstart.EarlyPlan(((int(net.network_address), int(net.broadcast_address)),),
                              PORTS, stored["rate"], stored["retries"], stored["timeout"])
    return [(str(ipaddress.IPv4Address(p >> 16)), p & 0xFFFF)
            for p in synstart.first_pairs(plan, stored["seed"], count)]


@pytest.mark.netns
@pytest.mark.parametrize("rate", [1000, 40000])
def test_an_early_started_scan_finds_exactly_the_live_set_once_under_the_cap(
        bed: tuple[Bed, list[str]], tmp_path: Path, rate: int) -> None:
    """At 1,000/s the early batches go on while the program loads, for at most a second, and
    the sweep takes over in the middle of the walk (2 s long); at 40,000/s they send the
    whole walk before it loads (the sweep then only gives the verdicts). Either way: each
    pair one SYN, under the cap at the target, the live set exactly, the report in a new
    --output-file."""
    testbed, hosts = bed
    out_file = tmp_path / "report.json"
    args = [NET, "-p", ",".join(map(str, PORTS)), "--timeout", "0.5", "--retries", "0",
            "--discovery", "syn", "--rate", str(rate), "-o", "json", "--all", "-v",
            "--output-file", str(out_file)]
    db = tmp_path / "s.db"
    assert launch.preparse(["scan", *args, "--db", str(db)], {}) is not None
    sniffer = Sniffer(testbed, tmp_path / "seen.json")
    out = _scan(testbed, *args, "--db", str(db))
    seen = sniffer.stop()
    assert out.returncode == 0, out.stderr
    report = json.loads(out_file.read_text())
    services = {(s["host"], s["port"]): s["state"] for s in report["services"]}
    total = 1024 * len(PORTS)
    before, batched, framed = _early_counts(out.stderr)
    assert batched > 0, out.stderr  # the batches went on after the first SYNs
    # The bed's range has one route, via a gateway on an Ethernet interface (a veth), whose
    # link-layer address the first SYNs made the kernel resolve: every batch went out as frames.
    assert framed == batched, out.stderr
    if rate == 1000:
        assert before < total, out.stderr  # the sweep took over in the middle of the walk
    else:
        assert before == total, out.stderr  # the whole walk before the program loaded
    assert len(services) == total
    live = {(h, p) for h in hosts for p in PORTS}
    assert {k for k, state in services.items() if state == "vnc"} == live
    assert set(services.values()) == {"vnc", "filtered"}
    syns = sorted((p.at, p.dst, p.dport) for p in seen if p.proto == 6 and p.flags == 0x02)
    per_pair = Counter((dst, dport) for _, dst, dport in syns)
    # One SYN of the sweep to every pair (early ones included, none twice), and the probe's
    # own connection to each live one.
    assert per_pair == Counter({k: 1 + (k in live) for k in services})
    early = min(synstart.EARLY_MAX, rawsyn.rate_burst(rate))
    first = _early_pairs(db, early)
    assert [(dst, dport) for _, dst, dport in syns[:early]] == first
    assert all(k in services for k in first)
    firsts: dict[tuple[str, int], float] = {}
    for at, dst, dport in syns:  # the sweep's SYN to a pair comes before the probe's
        firsts.setdefault((dst, dport), at)
    sweep = sorted(firsts.values())
    for width in (0.05, 0.25, 1.0):
        assert most_in_window(sweep, width) <= rate * (width + 0.005) + rawsyn.rate_burst(rate)
    summary = next(x for x in out.stderr.splitlines() if x.startswith("syn: "))
    assert summary.startswith(f"syn: {total:,} SYNs sent"), summary
    took = re.search(r" in ([\d.]+) s \(asked ", summary)
    if took is None:  # the rate reached, against the cap
        achieved = float(summary.split(" at ")[1].split("/s")[0].replace(",", ""))
        assert achieved <= rate * 1.05, summary
    else:  # a walk too short (under 50 ms after its opening burst) to give a rate: its time
        assert float(took.group(1)) + 0.005 >= (total - rawsyn.rate_burst(rate)) / rate, summary


def _early_counts(stderr: str) -> tuple[int, int, int]:
    """(SYNs sent before the sweep, of them in batches, of them as frames) from the sweep's
    log line about the early start (-v)."""
    line = next(x for x in stderr.splitlines() if "early start: " in x)
    found = re.search(r"(\d+) SYNs sent before the sweep, (\d+) of them in batches, (\d+) as "
                      r"frames", line)
    assert found is not None, line
    before, batched, framed = (int(x) for x in found.groups())
    return before, batched, framed


def _ones_complement_sum(data: bytes) -> int:
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _template(frame: bytes) -> bytes:
    """A SYN frame with what varies per pair (the IPv4 checksum and destination, the port,
    the sequence number, the TCP checksum) zeroed: the same for every frame of one sender."""
    out = bytearray(frame)
    for start, end in ((24, 26), (30, 34), (36, 42), (50, 52)):
        out[start:end] = bytes(end - start)
    return bytes(out)


@pytest.mark.netns
def test_the_early_frames_are_the_sweeps_frames(bed: tuple[Bed, list[str]],
                                                tmp_path: Path) -> None:
    """At 1,000/s the early batches send frames for at most a second, then the sweep sends
    the rest of the walk with its own `LinkTx`: at the target, every SYN after the first
    one-by-one ones (which the kernel made: don't-fragment set) is a 58-byte frame from our
    interface to the gateway, both checksums right, and byte for byte the sweep's frame but
    for the pair's own fields; as many as the log says went out as frames, then the sweep's."""
    testbed, hosts = bed
    rate = 1000
    args = [NET, "-p", ",".join(map(str, PORTS)), "--timeout", "0.5", "--retries", "0",
            "--discovery", "syn", "--rate", str(rate), "-o", "json", "-v", "--output-file",
            str(tmp_path / "report.json"), "--db", str(tmp_path / "s.db")]
    sniffer = Sniffer(testbed, tmp_path / "seen.json", frames=True)
    out = _scan(testbed, *args)
    seen = sniffer.stop()
    assert out.returncode == 0, out.stderr
    before, batched, framed = _early_counts(out.stderr)
    first = min(synstart.EARLY_MAX, rawsyn.rate_burst(rate))
    assert framed == batched == before - first > 0, out.stderr
    total = 1024 * len(PORTS)
    assert before < total, out.stderr  # the sweep sent the rest
    ours = testbed.run(testbed.scn, "cat", f"/sys/class/net/{testbed.veth_s}/address")
    mac = bytes.fromhex(ours.stdout.strip().replace(":", ""))
    gateway = bytes.fromhex(testbed.gateway_mac().replace(":", ""))
    scan = sorted((p for p in seen if p.proto == 6 and p.flags == 0x02 and len(p.frame) == 58),
                  key=lambda p: p.at)
    sport = int.from_bytes(scan[0].frame[34:36], "big")
    scan = [p for p in scan if int.from_bytes(p.frame[34:36], "big") == sport]
    assert len(scan) == total  # one SYN a pair (the probes' SYNs carry more options)
    assert [p.df for p in scan[:first]] == [True] * first  # the kernel's, one by one
    frames = scan[first:]
    assert not any(p.df for p in frames)
    templates = {_template(p.frame) for p in frames}
    assert len(templates) == 1, templates  # the early batches' frames and the sweep's alike
    for p in frames:
        frame = p.frame
        assert frame[:6] == gateway and frame[6:12] == mac
        ip, segment = frame[14:34], frame[34:58]
        assert _ones_complement_sum(ip) == 0xFFFF
        pseudo = ip[12:20] + bytes([0, 6, 0, len(segment)])
        assert _ones_complement_sum(pseudo + segment) == 0xFFFF
        assert (ip[8], ip[4:8]) == (64, bytes(4))  # TTL 64, identification 0, no flags
    report = json.loads((tmp_path / "report.json").read_text())
    assert {(s["host"], s["port"]) for s in report["services"] if s["state"] == "vnc"} == \
        {(h, p) for h in hosts for p in PORTS}


def _answer_arp(testbed: Bed, scanner: subprocess.Popen[str], when: str,
                stop: threading.Event) -> None:
    """Let the gateway answer ARP once the scanning namespace has asked for its link-layer
    address (its entry INCOMPLETE), or once the scanner has gone on to load the program
    (numpy mapped into it: the early start has given up on the gateway by then)."""
    while not stop.is_set():
        if when == "asked":
            shown = subprocess.run(["ip", "-n", testbed.scn, "neigh", "show", "dev",
                                    testbed.veth_s], capture_output=True, text=True,
                                   check=False).stdout
            if "INCOMPLETE" in shown:
                break
        else:
            try:
                if "numpy" in Path(f"/proc/{scanner.pid}/maps").read_text():
                    break
            except OSError:
                break  # the scanner is gone
        stop.wait(0.002)
    subprocess.run(["ip", "-n", testbed.tgt, "link", "set", "dev", testbed.veth_t, "arp", "on"],
                   check=False)


@pytest.mark.netns
@pytest.mark.parametrize("answered", ["asked", "loading"])
def test_the_early_batches_wait_for_the_gateway_or_leave_the_walk_to_the_sweep(
        bed: tuple[Bed, list[str]], tmp_path: Path, answered: str) -> None:
    """The gateway's link-layer address unknown when the scan starts: the first SYNs wait in
    the kernel's queue for it, the batches wait too (nothing more piles up behind them). When
    the gateway answers ARP at once, they then send frames; when it answers only after
    `synbulk.NEIGHBOUR_WAIT` (once the program loads: at 8,000/s the whole walk would have
    gone out before it, so the program waits for the batches), they send nothing and the
    sweep sends the walk as it would have. Either way each pair gets one SYN, under the cap
    at the target, and the live set is found exactly."""
    testbed, hosts = bed
    rate = 8000
    dev = testbed.veth_s
    neigh = f"net.ipv4.neigh.{dev}"
    # ARP asked again every 10 ms (and never given up on), so it resolves as soon as the
    # gateway answers
    testbed.run(testbed.scn, "sysctl", "-qw", f"{neigh}.retrans_time_ms=10",
                f"{neigh}.mcast_solicit=500", f"{neigh}.ucast_solicit=500")
    testbed.run(testbed.tgt, "ip", "link", "set", "dev", testbed.veth_t, "arp", "off")
    testbed.run(testbed.scn, "ip", "neigh", "flush", "dev", dev)
    stop = threading.Event()
    answer: threading.Thread | None = None
    try:
        sniffer = Sniffer(testbed, tmp_path / "seen.json")
        scanner = subprocess.Popen(
            ["ip", "netns", "exec", testbed.scn, sys.executable, "-m", "vncaudit", "scan", NET,
             "-p", ",".join(map(str, PORTS)), "--timeout", "2", "--retries", "0",
             "--discovery", "syn", "--rate", str(rate), "-o", "json", "-v", "--output-file",
             str(tmp_path / "report.json"), "--db", str(tmp_path / "s.db")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        answer = threading.Thread(target=_answer_arp, args=(testbed, scanner, answered, stop))
        answer.start()
        _, stderr = scanner.communicate(timeout=120)
        answer.join()
        seen = sniffer.stop()
    finally:
        stop.set()
        if answer is not None:
            answer.join()
        testbed.run(testbed.tgt, "ip", "link", "set", "dev", testbed.veth_t, "arp", "on")
        testbed.run(testbed.scn, "sysctl", "-qw", f"{neigh}.retrans_time_ms=1000",
                    f"{neigh}.mcast_solicit=3", f"{neigh}.ucast_solicit=3")
    assert scanner.returncode == 0, stderr
    before, batched, framed = _early_counts(stderr)
    first = min(synstart.EARLY_MAX, rawsyn.rate_burst(rate))
    if answered == "asked":
        assert framed == batched == before - first > 0, stderr
    else:
        assert (before, batched, framed) == (first, 0, 0), stderr
        assert "the gateway's link-layer address is not known" in stderr
    services = {(s["host"], s["port"]): s["state"]
                for s in json.loads((tmp_path / "report.json").read_text())["services"]}
    live = {(h, p) for h in hosts for p in PORTS}
    assert {k for k, state in services.items() if state == "vnc"} == live
    syns = sorted((p.at, p.dst, p.dport) for p in seen if p.proto == 6 and p.flags == 0x02)
    firsts: dict[tuple[str, int], float] = {}
    for at, dst, dport in syns:
        firsts.setdefault((dst, dport), at)
    assert Counter((dst, dport) for _, dst, dport in syns) == Counter(
        {k: 1 + (k in live) for k in firsts})
    assert len(firsts) == 1024 * len(PORTS)
    sweep = sorted(firsts.values())
    for width in (0.05, 0.25):
        assert most_in_window(sweep, width) <= rate * (width + 0.005) + rawsyn.rate_burst(rate)


@pytest.mark.netns
def test_a_line_outside_the_subset_starts_as_before(bed: tuple[Bed, list[str]],
                                                    tmp_path: Path) -> None:
    """--exclude is not in the early start's subset: the sweep sends every SYN itself, and the
    excluded pair hears nothing."""
    testbed, hosts = bed
    out = _scan(testbed, hosts[0], hosts[1], "-p", "5900", "--timeout", "0.5", "--retries",
                "0", "--discovery", "syn", "--exclude", hosts[1], "--db",
                str(tmp_path / "s.db"), "-o", "json", code=_AT_FIRST_SYN)
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stderr.splitlines() if x.startswith("FIRST"))
    assert line.split()[1] == "ctypes.dlsym"  # the sweep's sendmmsg, nothing before it
    assert "numpy" in line.split(" MODULES ")[1].split()
    assert [s["host"] for s in json.loads(out.stdout)["services"]] == [hosts[0]]


class _Sink:
    """Where a sweep would deliver verdicts: none are given here (the sweep is not run)."""

    def found(self, target: object, sock: object) -> None:
        raise AssertionError("no verdict expected")

    def finished(self, result: object) -> None:
        raise AssertionError("no verdict expected")

    def room(self) -> int:
        return 1 << 20


@pytest.mark.skipif(os.geteuid() != 0, reason="the early start needs raw sockets (root)")
@pytest.mark.parametrize("same", [True, False])
def test_the_sweep_takes_over_only_its_own_early_start(same: bool) -> None:
    """On loopback (127.0.0.0/8): a sweep over the very walk the early start began takes its
    seed's pairs as pending in its window, its secret, port and sockets, and goes on after
    them, with every pair its batch sender sent after the first ones until the sweep stopped
    it; a sweep over another walk (another seed) closes the early sockets and leaves its
    pairs alone. Both take the batch sender's token bucket: one rate cap for the scan."""
    from vncaudit.discovery import DiscoveryOptions, Mode
    from vncaudit.discovery.syn import SynSweep
    from vncaudit.targets import build_target_space

    args = ["scan", "127.77.0.0/24", "-p", "9,10", "--discovery", "syn", "--rate", "1000",
            "--timeout", "0.5"]
    plan = launch.preparse(args, {})
    assert plan is not None
    early = synstart.start(plan)
    assert early is not None and synstart.started() is early
    first = len(early.pairs)
    burst = rawsyn.rate_burst(1000)
    assert first == min(synstart.EARLY_MAX, burst) > 0
    assert early.bulk is not None  # 1,000/s: the batch sender walks on after them
    time.sleep(0.15)  # the program loading, while the batches go out under the cap
    space = build_target_space(["127.77.0.0/24"], [9, 10])
    walk = space.walk(seed=early.seed if same else early.seed + 1)
    options = DiscoveryOptions(Mode.SYN, 0.5, None, 1000.0)
    sweep = SynSweep(walk, _Sink(), options)
    assert synstart.started() is None  # claimed, once
    assert not any(t.is_alive() for t in early.bulk.threads)  # stopped by the sweep
    flights = early.flights()
    sent = sum(len(pairs) for _, pairs in flights)
    sent_pairs = [p for _, pairs in flights for p in pairs]
    # The batches went on after the first ones (the walk's next pairs, in order), no faster
    # than the cap: 1,000/s after the bucket's burst, which the first ones began.
    assert first < sent <= burst + 1000 * (flights[-1][0] - early.sent_at) + 1
    assert sent_pairs == synstart.first_pairs(early.plan, early.seed, sent)
    assert sweep.bucket is early.bulk.bucket  # one cap for the whole scan, taken over or not
    if same:
        assert (sweep.port, sweep.secret) == (early.port, early.secret)
        assert sweep.pending == set(sent_pairs) and sweep.sent == sent
        assert [(f.deadline, f.pairs.tolist(), f.made) for f in sweep.window] == [
            (at + 0.5, pairs, 1) for at, pairs in flights]
        assert sweep.early_rx is early.rx and early.rx.fileno() >= 0
        rest = sweep.rest
        assert rest is not None and not set(rest.tolist()) & set(sent_pairs)
        assert len(rest) + sent == space.count  # the whole first block: 512 pairs
        early.close()
    else:
        assert early.rx.fileno() == -1 and early.tx.fileno() == -1
        assert sweep.port != early.port or sweep.secret != early.secret
        assert not sweep.pending and not sweep.window and sweep.rest is None
