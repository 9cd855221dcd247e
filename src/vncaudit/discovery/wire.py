"""The bytes of SYN discovery, made and read a batch at a time (numpy), sent with sendmmsg(2).

Owns: the keyed cookie of `vncaudit.rawsyn` (SipHash-2-4 of the pair, the SYN's sequence
number) computed for a whole batch as vector operations, the SYN of `rawsyn` (24-byte TCP header
with an MSS option, as the kernel's own SYNs carry one) built for a whole batch from its
template with the checksums summed as vectors (RFC 1071: the constant words summed once), and
handing a batch to the kernel with one sendmmsg(2) through ctypes (the GIL is released for the
call). The scalar pieces (the cookie, the template, the word sums, the raw sockets) are
`rawsyn`'s, re-exported here; a batch is byte for byte what `rawsyn.syn_segment` makes of each
of its pairs:

* `KernelTx`: a raw IPPROTO_TCP socket; the kernel routes each segment, adds the IP header and
  resolves the next hop (any route, any interface, policy routing, IPsec);
* `LinkTx`: whole Ethernet frames on an AF_PACKET socket bound to one interface, to the gateway's
  link-layer address, as zmap and masscan send (no route lookup or IP output path per packet:
  about a sixth less CPU per SYN measured here). Only used where `discovery.route` has shown
  the route exactly (see there).

Also: `parse_replies`, the (address, port, ack, flags) of the SYN-ACK and RST segments read
from a raw socket.

Must not: decide what to send or when (the sweep in `discovery.syn` does, under the rate cap),
touch asyncio, or send to any destination but those it is handed.
"""

from __future__ import annotations

import ctypes
import errno
import socket
import struct

import numpy as np
import numpy.typing as npt

from vncaudit.rawbatch import (
    ETH_P_IP,
    MAX_BATCH,
    MAX_CALL,
    TTL,
    frame_template,
    packet_socket,
    sendmmsg,
)
from vncaudit.rawsyn import (
    IV,
    LAST_BLOCK,
    MSS_OPTION,
    SYN_LEN,
    TCP_ACK,
    TCP_RST,
    TCP_SYN,
    attach_filter,
    cookie,
    cookie_key,
    raw_tcp_socket,
    siphash,
    tcp_template,
    template_sum,
    word_sum,
)

__all__ = ["ETH_P_IP", "MAX_BATCH", "MAX_CALL", "MSS_OPTION", "SYN_LEN", "TCP_ACK", "TCP_RST",
           "TCP_SYN", "TTL", "Cookies", "KernelTx", "LinkTx", "attach_filter", "packet_socket",
           "parse_replies", "raw_tcp_socket", "siphash", "word_sum"]

U64 = npt.NDArray[np.uint64]


# ---------------------------------------------------------------------------------------------
# The cookie (`rawsyn.siphash`), a batch at a time

class Cookies:
    """The sweep's cookie function: `cookie(pair)` = low 32 bits of SipHash-2-4 of the pair."""

    def __init__(self, secret: bytes) -> None:
        self.key = cookie_key(secret)
        self.k0, self.k1 = self.key

    def cookie(self, pair: int) -> int:
        return cookie(self.key, pair)

    def cookies(self, pairs: U64) -> U64:
        """`cookie` of every element, as vector operations (a few hundred for any length)."""
        n = len(pairs)
        v0 = np.full(n, self.k0 ^ IV[0], np.uint64)
        v1 = np.full(n, self.k1 ^ IV[1], np.uint64)
        v2 = np.full(n, self.k0 ^ IV[2], np.uint64)
        v3 = np.full(n, self.k1 ^ IV[3], np.uint64)
        t = np.empty(n, np.uint64)

        def rotl(x: U64, b: int) -> None:
            np.left_shift(x, np.uint64(b), out=t)
            np.right_shift(x, np.uint64(64 - b), out=x)
            np.bitwise_or(x, t, out=x)

        def rounds(count: int) -> None:
            for _ in range(count):
                np.add(v0, v1, out=v0)
                rotl(v1, 13)
                np.bitwise_xor(v1, v0, out=v1)
                rotl(v0, 32)
                np.add(v2, v3, out=v2)
                rotl(v3, 16)
                np.bitwise_xor(v3, v2, out=v3)
                np.add(v0, v3, out=v0)
                rotl(v3, 21)
                np.bitwise_xor(v3, v0, out=v3)
                np.add(v2, v1, out=v2)
                rotl(v1, 17)
                np.bitwise_xor(v1, v2, out=v1)
                rotl(v2, 32)

        message = pairs.astype(np.uint64, copy=False)
        np.bitwise_xor(v3, message, out=v3)
        rounds(2)
        np.bitwise_xor(v0, message, out=v0)
        last = np.uint64(LAST_BLOCK)
        np.bitwise_xor(v3, last, out=v3)
        rounds(2)
        np.bitwise_xor(v0, last, out=v0)
        np.bitwise_xor(v2, np.uint64(0xFF), out=v2)
        rounds(4)
        out: U64 = (v0 ^ v1 ^ v2 ^ v3) & np.uint64(0xFFFFFFFF)
        return out


# ---------------------------------------------------------------------------------------------
# Checksums


def _folded_complement(total: U64) -> U64:
    total = (total & np.uint64(0xFFFF)) + (total >> np.uint64(16))
    total = (total & np.uint64(0xFFFF)) + (total >> np.uint64(16))
    out: U64 = ~total & np.uint64(0xFFFF)
    return out


def _words(value: U64) -> U64:
    """The two 16-bit words of 32-bit values, summed."""
    out: U64 = (value >> np.uint64(16)) + (value & np.uint64(0xFFFF))
    return out


# ---------------------------------------------------------------------------------------------
# sendmmsg through ctypes

# struct mmsghdr on 64-bit Linux: msghdr (name, namelen, iov, iovlen, control, controllen,
# flags: 56 bytes) + msg_len, padded to 64; struct iovec: base, len (16 bytes).
_MMSG_WORDS = 8
_IOV_WORDS = 2


class _Tx:
    """Packets for up to MAX_BATCH destinations at a fixed stride, and the mmsghdr and iovec
    arrays that point at them (built once: a batch only rewrites the varying fields)."""

    stride = 64

    def __init__(self, sock: socket.socket, template: bytes, offset: int, named: bool) -> None:
        self.sock = sock
        self.length = len(template)
        raw = np.frombuffer(template.ljust(self.stride, b"\0") * MAX_BATCH, np.uint8).copy()
        self.raw = raw
        self.iov = np.zeros((MAX_BATCH, _IOV_WORDS), np.uint64)
        base = np.uint64(raw.ctypes.data + offset)
        index = np.arange(MAX_BATCH, dtype=np.uint64)
        self.iov[:, 0] = base + index * np.uint64(self.stride)
        self.iov[:, 1] = self.length - offset
        self.mmsg = np.zeros((MAX_BATCH, _MMSG_WORDS), np.uint64)
        self.mmsg[:, 2] = np.uint64(self.iov.ctypes.data) + index * np.uint64(16)
        self.mmsg[:, 3] = 1
        self.names = np.zeros((MAX_BATCH, 16), np.uint8)
        if named:  # sockaddr_in per message: family AF_INET, port 0, the destination
            self.names[:, 0] = socket.AF_INET
            self.mmsg[:, 0] = np.uint64(self.names.ctypes.data) + index * np.uint64(16)
            self.mmsg[:, 1] = 16
        self.call = sendmmsg()

    def packet(self, index: int) -> bytes:
        """The bytes of packet `index` as loaded (what `send` hands over)."""
        start = index * self.stride
        return bytes(self.raw[start:start + self.length])

    def send(self, start: int, count: int) -> tuple[int, int]:
        """Hand packets start..start+count-1 to the kernel: (how many it took, errno of the
        first one it refused, 0 when it took all)."""
        count = min(count, MAX_CALL)
        address = self.mmsg.ctypes.data + start * _MMSG_WORDS * 8
        sent = self.call(self.sock.fileno(), address, count, 0)
        if sent < 0:
            return 0, ctypes.get_errno() or errno.EIO
        return sent, 0

    def close(self) -> None:
        self.sock.close()


class KernelTx(_Tx):
    """SYN segments on a raw IPPROTO_TCP socket: the kernel routes them and adds the IP header.

    The TCP checksum covers the source address the kernel will pick, which the sweep asks of the
    kernel beforehand (per route, `discovery.route`) and passes to `load` as its word sum."""

    stride = 32
    _fields = np.dtype({"names": ["dport", "seq", "sum"], "formats": [">u2", ">u4", ">u2"],
                        "offsets": [2, 4, 16], "itemsize": 32})

    def __init__(self, sport: int, sock: socket.socket) -> None:
        template = tcp_template(sport)
        super().__init__(sock, template, 0, named=True)
        self.fields = self.raw.view(self._fields)
        self.base = template_sum(sport)
        self.dest = self.names[:, 4:8]

    def load(self, pairs: U64, seqs: U64, source_sums: U64 | int) -> None:
        """Fill packets 0..len(pairs)-1: destination (address << 16 | port), sequence number,
        and the checksum over the pseudo-header with the given source word sums."""
        n = len(pairs)
        addresses = pairs >> np.uint64(16)
        ports = pairs & np.uint64(0xFFFF)
        fields = self.fields[:n]
        fields["dport"] = ports
        fields["seq"] = seqs
        fields["sum"] = _folded_complement(
            self.base + source_sums + _words(addresses) + ports + _words(seqs))
        self.dest[:n] = addresses.astype(">u4").view(np.uint8).reshape(n, 4)


class LinkTx(_Tx):
    """Whole Ethernet frames on an AF_PACKET socket bound to one interface, all to one next
    hop (the route's gateway), from one source address."""

    _fields = np.dtype({"names": ["ipsum", "dst", "dport", "seq", "sum"],
                        "formats": [">u2", ">u4", ">u2", ">u4", ">u2"],
                        "offsets": [24, 30, 36, 38, 50], "itemsize": 64})

    def __init__(self, sport: int, source: bytes, our_mac: bytes, next_hop_mac: bytes,
                 sock: socket.socket) -> None:
        frame = frame_template(sport, source, our_mac, next_hop_mac)
        super().__init__(sock, frame, 0, named=False)
        self.fields = self.raw.view(self._fields)
        self.ip_base = word_sum(frame[14:34])
        self.tcp_base = word_sum(source) + socket.IPPROTO_TCP + SYN_LEN + word_sum(frame[34:])

    def load(self, pairs: U64, seqs: U64, source_sums: U64 | int = 0) -> None:
        n = len(pairs)
        addresses = pairs >> np.uint64(16)
        ports = pairs & np.uint64(0xFFFF)
        address_words = _words(addresses)
        fields = self.fields[:n]
        fields["dst"] = addresses
        fields["dport"] = ports
        fields["seq"] = seqs
        fields["ipsum"] = _folded_complement(self.ip_base + address_words)
        fields["sum"] = _folded_complement(self.tcp_base + address_words + ports + _words(seqs))


# ---------------------------------------------------------------------------------------------
# Replies


def parse_replies(packets: list[bytes], port: int) -> tuple[list[int], list[int], list[int]]:
    """(pairs, acks, flags) of the TCP segments to our `port` in raw IPv4 packets (each
    `(source address << 16) | source port`); anything short or malformed is left out."""
    pairs: list[int] = []
    acks: list[int] = []
    flags: list[int] = []
    unpack = struct.unpack_from
    for data in packets:
        if len(data) < 20:
            continue
        ihl = (data[0] & 0x0F) * 4
        if ihl < 20 or len(data) < ihl + 14:
            continue
        sport, dport, _seq, ack = unpack("!HHII", data, ihl)
        if dport != port:
            continue
        pairs.append((int.from_bytes(data[12:16], "big") << 16) | sport)
        acks.append(ack)
        flags.append(data[ihl + 13])
    return pairs, acks, flags
