"""SYN discovery without numpy: one SYN's bytes, its keyed cookie, and the raw sockets.

Owns: the keyed cookie that is each SYN's sequence number (SipHash-2-4 of the destination
`(address << 16) | port` under a key drawn for the sweep, low 32 bits; an answer acknowledges
cookie + 1, so it is checked by recomputing, with no table), the SYN segment (24-byte TCP
header with an MSS option) built one at a time from its template with the RFC 1071 checksum,
the word sums that checksum adds up, the classic BPF programs and the raw IPPROTO_TCP sockets
that send SYNs and read their answers, the sweep's source port, the SYN rate's default and the
rate cap's burst. `discovery.wire` builds the same bytes a batch at a time with numpy from these
pieces; the early start (`vncaudit.synstart`) sends its first SYNs with them before numpy is
imported.

Imports the standard library only, and only what a SYN needs (`os`, `socket`, `struct`,
`array`): it runs before the rest of the program is imported. Must not: import numpy, ctypes,
typing or anything of the package, decide what to send or when, or send anything itself.
"""

from __future__ import annotations

import array
import os
import socket
import struct

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

SYN_LEN: Final = 24  # TCP header with the MSS option
WINDOW: Final = 65535
MSS_OPTION: Final = struct.pack("!BBH", 2, 4, 1460)
TCP_SYN, TCP_RST, TCP_ACK = 0x02, 0x04, 0x10
DEFAULT_SYN_RATE: Final = 50_000.0  # packets/s when --rate is not given (zmap: ~15,000)

# --rate is a cap in any window, not just on average: a token bucket that holds this much of
# the rate (at least one token), enough that a turn of the loop or a thread woken a few
# milliseconds late keeps the average, too little for any network to see more than the cap.
RATE_BURST_SECONDS: Final = 0.02


def rate_burst(rate: float) -> int:
    """The most starts (connect) or SYNs a rate cap lets out at once."""
    return max(1, int(rate * RATE_BURST_SECONDS))


# ---------------------------------------------------------------------------------------------
# The cookie: SipHash-2-4 (Aumasson and Bernstein, 2012) of one 64-bit word, the pair.

M64: Final = (1 << 64) - 1
IV: Final = (0x736F6D6570736575, 0x646F72616E646F6D, 0x6C7967656E657261, 0x7465646279746573)
LAST_BLOCK: Final = 8 << 56  # the length byte of an 8-byte message, nothing else left


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & M64


def siphash(k0: int, k1: int, message: int) -> int:
    """SipHash-2-4 of one little-endian 64-bit word (the reference for the vector form)."""
    v0, v1, v2, v3 = k0 ^ IV[0], k1 ^ IV[1], k0 ^ IV[2], k1 ^ IV[3]

    def rounds(n: int) -> None:
        nonlocal v0, v1, v2, v3
        for _ in range(n):
            v0 = (v0 + v1) & M64
            v1 = _rotl(v1, 13) ^ v0
            v0 = _rotl(v0, 32)
            v2 = (v2 + v3) & M64
            v3 = _rotl(v3, 16) ^ v2
            v0 = (v0 + v3) & M64
            v3 = _rotl(v3, 21) ^ v0
            v2 = (v2 + v1) & M64
            v1 = _rotl(v1, 17) ^ v2
            v2 = _rotl(v2, 32)

    for block in (message, LAST_BLOCK):
        v3 ^= block
        rounds(2)
        v0 ^= block
    v2 ^= 0xFF
    rounds(4)
    return v0 ^ v1 ^ v2 ^ v3


def cookie_key(secret: bytes) -> tuple[int, int]:
    """The two SipHash key words of a 16-byte secret."""
    if len(secret) != 16:
        raise ValueError("the cookie key is 16 bytes")
    k0, k1 = struct.unpack("<QQ", secret)
    return k0, k1


def cookie(key: tuple[int, int], pair: int) -> int:
    """The sequence number of our SYN to `pair`: the low 32 bits of its SipHash."""
    return siphash(key[0], key[1], pair) & 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------
# The segment and its checksum (RFC 1071: a one's-complement sum of 16-bit words, so the
# constant words are summed once)


def word_sum(data: bytes) -> int:
    """Sum of the big-endian 16-bit words of `data` (even length), not folded."""
    return sum(struct.unpack(f"!{len(data) // 2}H", data))


def folded_complement(total: int) -> int:
    """The checksum of a word sum: folded to 16 bits, complemented."""
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def tcp_template(sport: int) -> bytes:
    """Our SYN with destination port, sequence number and checksum zero."""
    return struct.pack("!HHIIHHHH", sport, 0, 0, 0, (6 << 12) | TCP_SYN, WINDOW, 0, 0) + \
        MSS_OPTION


def template_sum(sport: int) -> int:
    """What every SYN from `sport` adds to its checksum: the template's words and the
    pseudo-header's protocol and length."""
    return word_sum(tcp_template(sport)) + socket.IPPROTO_TCP + SYN_LEN


def syn_segment(sport: int, pair: int, seq: int, source_sum: int) -> bytes:
    """The SYN from `sport` to `pair` ((address << 16) | port) with sequence number `seq`, its
    checksum over the pseudo-header whose source address words sum to `source_sum` (what a
    raw IPPROTO_TCP socket hands the kernel, which adds the IP header)."""
    address, port = pair >> 16, pair & 0xFFFF
    total = (template_sum(sport) + source_sum + (address >> 16) + (address & 0xFFFF) + port
             + (seq >> 16) + (seq & 0xFFFF))
    return struct.pack("!HHIIHHHH", sport, port, seq, 0, (6 << 12) | TCP_SYN, WINDOW,
                       folded_complement(total), 0) + MSS_OPTION


# ---------------------------------------------------------------------------------------------
# Raw sockets

SO_ATTACH_FILTER: Final = 26
KEEP_NOTHING: Final = [(0x06, 0, 0, 0)]  # ret #0


def attach_filter(sock: socket.socket, program: list[tuple[int, int, int, int]]) -> None:
    """Attach a classic BPF program (code, jt, jf, k per instruction) to `sock`. The program
    is in an `array` (its address is what struct sock_fprog points at; the kernel copies it
    during the call)."""
    code = array.array("B", b"".join(struct.pack("HBBI", *insn) for insn in program))
    address, _ = code.buffer_info()
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, struct.pack("HL", len(program),
                                                                     address))


def replies_filter(port: int) -> list[tuple[int, int, int, int]]:
    """Classic BPF for a raw IPv4 TCP socket: keep SYN-ACK and RST-ACK segments to `port`."""
    syn, rst, ack = TCP_SYN, TCP_RST, TCP_ACK
    return [
        (0xB1, 0, 0, 0),  # ldxb 4*([0]&0xf)   x = IP header length
        (0x48, 0, 0, 2),  # ldh [x+2]          TCP destination port
        (0x15, 0, 5, port),  # jeq #port, else drop
        (0x50, 0, 0, 13),  # ldb [x+13]        TCP flags
        (0x54, 0, 0, syn | rst | ack),
        (0x15, 1, 0, syn | ack),  # SYN-ACK: keep
        (0x15, 0, 1, rst | ack),  # RST-ACK: keep, else drop
        (0x06, 0, 0, 0xFFFF),
        (0x06, 0, 0, 0),
    ]


def raw_tcp_socket() -> socket.socket:
    """A raw IPPROTO_TCP socket for sending only: it would get a copy of every TCP segment the
    host receives, so a filter drops them all in the kernel. IP_RECVERR, or a packet the
    device queue drops would be reported as sent (the sweep counts and resends those).
    PermissionError without raw-socket rights."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    try:
        attach_filter(sock, KEEP_NOTHING)
        sock.setsockopt(socket.IPPROTO_IP, getattr(socket, "IP_RECVERR", 11), 1)
        try:
            sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_SNDBUFFORCE", 32), 4 << 20)
        except OSError:
            pass
        # Blocking sends, bounded: a full queue waits for the device, never forever.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 0, 100_000))
    except OSError:
        sock.close()
        raise
    return sock


def replies_socket(port: int) -> socket.socket:
    """A non-blocking raw IPPROTO_TCP socket that reads the answers to SYNs from `port` (a
    filter keeps only those), emptied of whatever came before the filter was attached.
    PermissionError without raw-socket rights."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    try:
        rx.setblocking(False)
        try:
            rx.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), 32 << 20)
        except OSError:
            pass
        attach_filter(rx, replies_filter(port))
        while True:  # anything queued before the filter was attached
            try:
                rx.recv(65535)
            except BlockingIOError:
                break
    except OSError:
        rx.close()
        raise
    return rx


def source_port() -> int:
    """A random port outside the kernel's ephemeral range, so no local socket ever uses it."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
            low, high = (int(x) for x in fh.read().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    if high < 65000:
        first, last = high + 1, 65535
    else:
        first, last = 1024, max(1025, low - 1)
    return first + int.from_bytes(os.urandom(4), "big") % (last - first + 1)


def kernel_source(address: int) -> bytes:
    """The source address the kernel picks for the IPv4 `address` (b"" when it has no
    route): a connected UDP socket, which sends nothing."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        try:
            udp.connect((socket.inet_ntoa(address.to_bytes(4, "big")), 9))
        except OSError:
            return b""
        return socket.inet_aton(udp.getsockname()[0])
