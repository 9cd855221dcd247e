"""Network-namespace test hosts (docs/design.md §4) and the fake RFB servers that live in them.

Owns: building and deleting the two-namespace bed (scanner `scn`, targets `tgt`, one veth; tgt
owns 198.18.0.0/16 and answers nothing but its listening sockets, so every other address is
silent, as on the internet), picking random live addresses, and running many fake RFB servers
in a subprocess (`python tests/netns.py serve PORTS HOSTS_JSON`). Used by test_cluster,
test_discovery and the benchmarks in bench/, so tests and benchmarks measure the same thing.

Must not: send traffic anywhere but 127.0.0.0/8 and the namespaces it created; leave a
namespace or a server process behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve()
TARGET_NET = "198.18.0.0/16"
SCN_ADDR = "198.19.255.1"
TGT_ADDR = "198.19.255.2"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


# ---------------------------------------------------------------------------------------------
# Fake RFB servers: one process, one listening socket per (address, port), asyncio protocols
# (no streams) so one core answers thousands of handshakes per second.

# Security-type lists (mixed products). A list with None (1) gets the whole no-auth path:
# SecurityResult ok, ClientInit, ServerInit, so the probe stores a full fingerprint.
TYPE_LISTS = (b"\x01\x02", b"\x03\x0d\x05\x06", b"\x02\x1e\x21", b"\x02\x02\x05", b"\x01\x05")


def types_for(host: str) -> bytes:
    digest = hashlib.blake2b(host.encode(), digest_size=2).digest()
    return TYPE_LISTS[digest[0] % len(TYPE_LISTS)]


def server_init(name: bytes) -> bytes:
    pixel_format = bytes([32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0])
    return (1024).to_bytes(2, "big") + (768).to_bytes(2, "big") + pixel_format + \
        len(name).to_bytes(4, "big") + name


class _Rfb(asyncio.Protocol):
    """RFB 3.8 server side up to ServerInit; never authenticates anyone."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.host = transport.get_extra_info("sockname")[0]
        self.buf = b""
        self.stage = 0
        self.types = types_for(self.host)
        transport.write(b"RFB 003.008\n")
        self.timer = asyncio.get_running_loop().call_later(5, transport.close)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.stage == 0 and len(self.buf) >= 12:
            self.buf = self.buf[12:]
            self.stage = 1
            self.transport.write(bytes([len(self.types)]) + self.types)
        if self.stage == 1 and self.buf:
            chosen, self.buf = self.buf[0], self.buf[1:]
            if chosen != 1 or 1 not in self.types:
                self.transport.close()
                return
            self.stage = 2
            self.transport.write(b"\x00\x00\x00\x00")  # SecurityResult: ok
        if self.stage == 2 and self.buf:
            self.stage = 3
            self.transport.write(server_init(b"fake " + self.host.encode()))
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.timer.cancel()


async def _serve(ports: list[int], hosts: list[str]) -> None:
    loop = asyncio.get_running_loop()
    servers = []
    for host in hosts:
        for port in ports:
            servers.append(await loop.create_server(_Rfb, host, port, backlog=256))
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    try:
        await asyncio.Event().wait()  # until killed
    finally:
        for server in servers:
            server.close()


@contextlib.contextmanager
def fake_servers(port: int | list[int], hosts: list[str],
                 netns: str | None = None) -> Iterator[int]:
    """Fake RFB servers on every (host, port) in a subprocess (in `netns` if given); yields
    the server process id. Killed on exit."""
    ports = [port] if isinstance(port, int) else list(port)
    cmd = [sys.executable, str(HERE), "serve", json.dumps(ports), json.dumps(hosts)]
    if netns is not None:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "ready":
            proc.kill()
            raise RuntimeError(f"fake servers did not start: {proc.communicate()[1][-2000:]}")
        yield proc.pid
    finally:
        proc.kill()
        proc.wait(10)


# ---------------------------------------------------------------------------------------------
# The namespace test bed


def netns_problem() -> str | None:
    """Why the namespace bed cannot be built here (None when it can)."""
    if os.geteuid() != 0:
        return "network-namespace tests need root"
    if subprocess.run(["ip", "netns", "list"], capture_output=True, check=False).returncode:
        return "`ip netns` does not work here"
    return None


def require_netns() -> None:
    """Skip without root (fail under CI, where netns tests must run)."""
    import pytest

    problem = netns_problem()
    if problem:
        if in_ci():
            pytest.fail(problem + " [CI is set: netns tests must not skip]", pytrace=False)
        pytest.skip(problem)


@dataclass(frozen=True)
class Bed:
    scn: str  # the scanning namespace: run the scanner (and its Dask workers) here
    tgt: str  # the target namespace: owns TARGET_NET, fake servers live here
    veth_s: str = ""  # scn's interface
    veth_t: str = ""  # tgt's interface

    def run(self, ns: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", ns, *cmd], check=check,
                              capture_output=True, text=True, timeout=60)

    def allow_rst_from(self, address: str) -> None:
        """Let `address` answer with RST (a closed port), ahead of the silent-drop rule."""
        self.run(self.tgt, "iptables", "-I", "OUTPUT", "1", "-p", "tcp", "-s", address,
                 "--tcp-flags", "RST", "RST", "-j", "ACCEPT")

    def gateway_mac(self) -> str:
        return self.run(self.tgt, "cat", f"/sys/class/net/{self.veth_t}/address").stdout.strip()


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@contextlib.contextmanager
def netns_bed(tag: str = "") -> Iterator[Bed]:
    """Namespaces scn and tgt joined by one veth; tgt owns 198.18.0.0/16 and answers nothing
    but its listening sockets (outgoing RSTs dropped): every other address is silent, as on the
    internet. Names are unique per process; everything is deleted on exit."""
    tag = tag or f"{os.getpid() % 1_000_000}"
    veth_s, veth_t = f"vcs{tag}", f"vct{tag}"  # interface names: at most 15 characters
    bed = Bed(scn=f"vcs{tag}", tgt=f"vct{tag}", veth_s=veth_s, veth_t=veth_t)
    try:
        _ip("netns", "add", bed.scn)
        _ip("netns", "add", bed.tgt)
        _ip("link", "add", veth_s, "type", "veth", "peer", "name", veth_t)
        _ip("link", "set", veth_s, "netns", bed.scn)
        _ip("link", "set", veth_t, "netns", bed.tgt)
        _ip("-n", bed.scn, "addr", "add", f"{SCN_ADDR}/24", "dev", veth_s)
        _ip("-n", bed.tgt, "addr", "add", f"{TGT_ADDR}/24", "dev", veth_t)
        for ns, dev in ((bed.scn, veth_s), (bed.tgt, veth_t)):
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        # One gateway for the whole range: no ARP per target.
        _ip("-n", bed.scn, "route", "add", "198.18.0.0/15", "via", TGT_ADDR)
        _ip("-n", bed.tgt, "route", "add", "local", TARGET_NET, "dev", "lo")
        for cmd in (["sysctl", "-qw", "net.ipv4.ip_nonlocal_bind=1"],
                    ["sysctl", "-qw", "net.core.somaxconn=4096"],
                    ["sysctl", "-qw", "net.ipv4.tcp_max_syn_backlog=65536"],
                    ["iptables", "-A", "OUTPUT", "-p", "tcp", "--tcp-flags", "RST", "RST",
                     "-j", "DROP"]):
            bed.run(bed.tgt, *cmd)
        yield bed
    finally:
        for ns in (bed.scn, bed.tgt):  # deleting a namespace deletes its end of the veth
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False,
                           timeout=30)


# ---------------------------------------------------------------------------------------------
# What arrives in the target namespace


@dataclass(frozen=True)
class Seen:
    """One IPv4 packet that arrived at the target namespace's interface."""

    at: float  # kernel receive timestamp, seconds
    proto: int
    dst: str
    dport: int  # 0 unless TCP or UDP
    flags: int  # TCP flags, 0 otherwise
    df: bool = False  # the IPv4 header's don't-fragment bit
    frame: bytes = b""  # the whole frame, when the sniffer was asked to keep them


class Sniffer:
    """Every IPv4 packet arriving on `bed.veth_t` (an AF_PACKET socket in the target namespace,
    kernel timestamps), in a subprocess; `stop()` returns them. Raises if the socket itself
    dropped any (a capture that lost packets proves nothing). `frames`: keep each packet's
    whole frame too."""

    def __init__(self, bed: Bed, out: Path, frames: bool = False) -> None:
        self.out = out
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", bed.tgt, sys.executable, str(HERE), "sniff", bed.veth_t,
             str(out), *(["frames"] if frames else [])], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            self.proc.kill()
            raise RuntimeError(f"sniffer did not start: {self.proc.communicate()[1][-2000:]}")

    def stop(self) -> list[Seen]:
        self.proc.terminate()
        _, err = self.proc.communicate(timeout=60)
        doc = json.loads(self.out.read_text())
        if doc["dropped"]:
            raise RuntimeError(f"the sniffer's socket dropped {doc['dropped']} packets {err}")
        return [Seen(*row[:6], bytes.fromhex(row[6]) if len(row) > 6 else b"")
                for row in doc["packets"]]


def _sniff(ifname: str, out: str, frames: bool = False) -> None:
    import signal
    import socket
    import struct

    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))  # ETH_P_ALL
    sock.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE
    sock.setsockopt(socket.SOL_SOCKET, 35, 1)  # SO_TIMESTAMPNS
    sock.bind((ifname, 0))
    sock.settimeout(0.1)
    rows: list[list[object]] = []
    print("ready", flush=True)
    while True:
        try:
            data, anc, _, addr = sock.recvmsg(256, 64)
        except TimeoutError:
            if stop:
                break
            continue
        except InterruptedError:
            continue
        if addr[2] == 4 or len(data) < 34 or data[12:14] != b"\x08\x00":
            continue  # our own outgoing packets, or not IPv4
        at = 0.0
        for level, kind, value in anc:
            if level == socket.SOL_SOCKET and kind == 35:
                sec, nsec = struct.unpack("qq", value[:16])
                at = sec + nsec / 1e9
        ip = data[14:]
        ihl = (ip[0] & 0x0F) * 4
        proto = ip[9]
        dport = flags = 0
        if proto in (6, 17) and len(ip) >= ihl + 4:
            dport = int.from_bytes(ip[ihl + 2:ihl + 4], "big")
        if proto == 6 and len(ip) >= ihl + 14:
            flags = ip[ihl + 13]
        row: list[object] = [at, proto, socket.inet_ntoa(ip[16:20]), dport, flags,
                             bool(ip[6] & 0x40)]
        if frames:
            row.append(data.hex())
        rows.append(row)
    stats = sock.getsockopt(263, 6, 8)  # SOL_PACKET, PACKET_STATISTICS: packets, drops
    _, drops = struct.unpack("II", stats)
    Path(out).write_text(json.dumps({"packets": rows, "dropped": drops}))


def live_hosts(network: str, n: int, seed: int) -> list[str]:
    """`n` distinct random host addresses of `network`, sorted (same seed, same hosts)."""
    net = ipaddress.ip_network(network)
    rng = random.Random(seed)
    picks = rng.sample(range(1, net.num_addresses - 1), n)
    return sorted((str(net.network_address + i) for i in picks),
                  key=lambda h: ipaddress.ip_address(h))


if __name__ == "__main__" and len(sys.argv) in (4, 5) and sys.argv[1] == "sniff":
    _sniff(sys.argv[2], sys.argv[3], sys.argv[4:] == ["frames"])
elif __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "serve":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    port_arg = json.loads(sys.argv[2])
    asyncio.run(_serve(port_arg if isinstance(port_arg, list) else [port_arg],
                       json.loads(sys.argv[3])))


def most_in_window(times: list[float], width: float) -> int:
    """The largest number of `times` (sorted) inside any window [t, t + width): what a rate
    cap bounds."""
    most = j = 0
    for i, start in enumerate(times):
        while j < len(times) and times[j] < start + width:
            j += 1
        most = max(most, j - i)
    return most
