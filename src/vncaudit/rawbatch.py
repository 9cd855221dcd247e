"""SYN batches without numpy: the cookies and segments of up to `MAX_BATCH` pairs made at once
in Python integers, handed to the kernel with sendmmsg(2), and the rate cap's token bucket.

Owns: `SynBatch` (the keyed cookies of a batch, its segments, and one sendmmsg per chunk on a
raw IPPROTO_TCP socket: byte for byte what `rawsyn.syn_segment` and `discovery.wire.KernelTx`
make of each pair), `FrameBatch` (the same SYNs as whole Ethernet frames to a route's gateway
on an AF_PACKET socket, `packet_socket`: byte for byte `discovery.wire.LinkTx`'s, whose
template, `frame_template`, is this module's), `TokenBucket` (the `--rate` cap shared by
every sender of a scan: the early start's and the sweep's threads take from the same one) and
`send_granted` (one grant of the bucket handed to the kernel, for every sender thread).
The cookie is SipHash-2-4 (`rawsyn.siphash`) of every pair at once: the pairs are the 64-bit
lanes of one integer, additions are made without carries between lanes and rotations with
masks, so a batch costs a few hundred integer operations (~0.6 us a pair here) where the
scalar form costs ~30 us; the checksums are summed in the same lanes.

Imports the standard library only (`array`, `ctypes`, `socket`, `struct`, `sys`,
`threading`, `time`) and `rawsyn`: the early start sends its batches with it while numpy and
the rest of the program are still being imported. Must not: import numpy, decide what to send
or when (its callers do, under the bucket), or send to anything but the pairs it is handed.
"""

from __future__ import annotations

import array
import ctypes
import errno
import socket
import struct
import sys
import threading
import time

from vncaudit.rawsyn import (
    IV,
    LAST_BLOCK,
    SYN_LEN,
    rate_burst,
    tcp_template,
    template_sum,
    word_sum,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Final, Protocol

    class Sends(Protocol):
        """A batch of loaded packets (`SynBatch`, `FrameBatch`, `discovery.wire`'s)."""

        def send(self, start: int, count: int) -> tuple[int, int]: ...

MAX_BATCH: Final = 4096  # packets built at once (one pass over the lanes)
MAX_CALL: Final = 1024  # messages per sendmmsg: the kernel's UIO_MAXIOV limit
SMALL_BATCH: Final = 1024  # a batch this short is made in this many lanes, not MAX_BATCH
STRIDE: Final = 32  # bytes between the segments in the packet buffer
FRAME_STRIDE: Final = 64  # bytes between the frames in the frame buffer
TTL: Final = 64
ETH_P_IP: Final = 0x0800
M64: Final = (1 << 64) - 1
LATE: Final = 0.0005  # a grant sent later than this after it was taken counts as late
REFUSED_PAUSE: Final = 0.0005  # seconds to let a full device queue drain
RETRY_LATER: Final = frozenset({errno.ENOBUFS, errno.EAGAIN, errno.EINTR})


class TokenBucket:
    """The rate cap, shared by the sender threads: at most `burst` + rate × t packets in any t
    seconds. `take(n)` waits until min(n, burst / 4) tokens are there and takes up to n: a
    thread woken late finds the difference still in the bucket, up to `burst`."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.burst = min(MAX_BATCH, rate_burst(rate))
        self.tokens = float(self.burst)
        self.last = time.monotonic()
        self.lock = threading.Lock()

    def take(self, want: int, stopping: threading.Event) -> int:
        while not stopping.is_set():
            with self.lock:
                now = time.monotonic()
                self.tokens = min(float(self.burst), self.tokens + (now - self.last) * self.rate)
                self.last = now
                need = min(want, max(1, self.burst // 4))
                if self.tokens >= need:
                    granted = min(want, int(self.tokens))
                    self.tokens -= granted
                    return granted
                wait = (need - self.tokens) / self.rate
            stopping.wait(wait)
        return 0

    def grant(self, want: int, stopping: threading.Event) -> int:
        """`take`: the packets the caller may send now (0: told to stop); a grant the thread
        was kept from using at once counts as `late`."""
        granted = self.take(want, stopping)
        granted_at = time.monotonic()
        if granted:
            late = time.monotonic() - granted_at
            if late > LATE:
                self.late(late)
        return granted

    def spend(self, count: int, at: float) -> None:
        """`count` packets went out at `at` without a grant (the early start's, sent before
        this bucket was made, when it would have been full): what it holds is then at most
        what it would hold had it let them out."""
        with self.lock:
            if at >= self.last:
                self.tokens = min(float(self.burst), self.tokens + (at - self.last) * self.rate)
                self.tokens -= count
                self.last = at
            else:
                self.tokens = min(self.tokens,
                                  self.burst - count + (self.last - at) * self.rate)

    def late(self, seconds: float) -> None:
        """The packets of a grant went out `seconds` after it (the thread was preempted): what
        the bucket gained meanwhile is void, or the next grant would follow them at once and
        the two together exceed the cap at the wire."""
        with self.lock:
            self.tokens -= seconds * self.rate


def send_granted(tx: Sends, start: int, count: int,
                 stopping: threading.Event) -> tuple[int, int, int]:
    """Hand `tx`'s packets start..start+count-1 to the kernel, waiting and trying again while
    it has no room: (how many it took, how many times it had no room, the errno of the packet
    start + taken that it rejected for good, 0 when it took them all or `stopping` was set).
    The sender threads of the early start and of the sweep send every grant with this."""
    done = refused = 0
    again = False
    while done < count and not stopping.is_set():
        sent, code = tx.send(start + done, count - done)
        if sent:
            done += sent
            again = False
        elif code in RETRY_LATER:
            refused += 1
            stopping.wait(REFUSED_PAUSE)
        elif not again:
            # A raw IP socket also reports, once, an ICMP error that arrived for any earlier
            # segment: the same packet again tells that from its own failure.
            again = True
        else:
            return done, refused, code
    return done, refused, 0


def _lanes(n: int, value: int) -> int:
    """`value` in each of `n` 64-bit lanes."""
    return int.from_bytes(struct.pack("<Q", value) * n, "little")


class _Masks:
    """The lane masks of a batch of `n` lanes."""

    def __init__(self, n: int) -> None:
        self.n = n
        top = _lanes(n, 1 << 63)
        self.top = top  # each lane's top bit
        self.low = _lanes(n, M64) ^ top  # each lane's other 63 bits
        self.m16 = _lanes(n, 0xFFFF)
        self.m32 = _lanes(n, 0xFFFFFFFF)
        self.rot = {b: (_lanes(n, M64 ^ ((1 << b) - 1)), _lanes(n, (1 << b) - 1), 64 - b)
                    for b in (13, 16, 17, 21, 32)}
        self.last = _lanes(n, LAST_BLOCK)
        self.ff = _lanes(n, 0xFF)


_shared: dict[int, _Masks] = {}


def _masks(n: int) -> _Masks:
    """The masks of `n` lanes (SMALL_BATCH or MAX_BATCH), made once: every sender thread
    reads them."""
    lanes = SMALL_BATCH if n <= SMALL_BATCH else MAX_BATCH
    masks = _shared.get(lanes)
    if masks is None:
        masks = _shared[lanes] = _Masks(lanes)
    return masks


def siphash_lanes(masks: _Masks, k0: int, k1: int, message: int) -> int:
    """SipHash-2-4 (key k0, k1) of each 64-bit lane of `message`, in the same lanes."""
    top, low = masks.top, masks.low
    h13, l13, r13 = masks.rot[13]
    h16, l16, r16 = masks.rot[16]
    h17, l17, r17 = masks.rot[17]
    h21, l21, r21 = masks.rot[21]
    h32, l32, _ = masks.rot[32]
    n = masks.n
    v0, v1 = _lanes(n, k0 ^ IV[0]), _lanes(n, k1 ^ IV[1])
    v2, v3 = _lanes(n, k0 ^ IV[2]), _lanes(n, k1 ^ IV[3])

    def rounds(count: int, v0: int, v1: int, v2: int, v3: int) -> tuple[int, int, int, int]:
        for _ in range(count):
            # a + b in each lane: the low 63 bits added, the top bit by xor (no carry out)
            v0 = ((v0 & low) + (v1 & low)) ^ ((v0 ^ v1) & top)
            v1 = (((v1 << 13) & h13) | ((v1 >> r13) & l13)) ^ v0
            v0 = ((v0 << 32) & h32) | ((v0 >> 32) & l32)
            v2 = ((v2 & low) + (v3 & low)) ^ ((v2 ^ v3) & top)
            v3 = (((v3 << 16) & h16) | ((v3 >> r16) & l16)) ^ v2
            v0 = ((v0 & low) + (v3 & low)) ^ ((v0 ^ v3) & top)
            v3 = (((v3 << 21) & h21) | ((v3 >> r21) & l21)) ^ v0
            v2 = ((v2 & low) + (v1 & low)) ^ ((v2 ^ v1) & top)
            v1 = (((v1 << 17) & h17) | ((v1 >> r17) & l17)) ^ v2
            v2 = ((v2 << 32) & h32) | ((v2 >> 32) & l32)
        return v0, v1, v2, v3

    v3 ^= message
    v0, v1, v2, v3 = rounds(2, v0, v1, v2, v3)
    v0 ^= message
    v3 ^= masks.last
    v0, v1, v2, v3 = rounds(2, v0, v1, v2, v3)
    v0 ^= masks.last
    v2 ^= masks.ff
    v0, v1, v2, v3 = rounds(4, v0, v1, v2, v3)
    return v0 ^ v1 ^ v2 ^ v3


def _lane_bytes(values: Sequence[int]) -> bytes:
    """The values as little-endian 64-bit lanes."""
    packed = array.array("Q", values)
    if sys.byteorder != "little":
        packed.byteswap()
    return packed.tobytes()


_libc: ctypes.CDLL | None = None


def sendmmsg() -> Callable[[int, int, int, int], int]:
    """libc's sendmmsg(2) (ctypes releases the GIL for the call)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
        _libc.sendmmsg.restype = ctypes.c_int
    call: Callable[[int, int, int, int], int] = _libc.sendmmsg
    return call


class _Batch:
    """Packets from a template at a fixed stride for up to MAX_BATCH pairs, with the mmsghdr
    and iovec arrays that point at them, and a sockaddr_in per message when `named` (built
    once: a batch rewrites only the fields that vary), handed to the kernel with sendmmsg."""

    stride = STRIDE

    def __init__(self, sock: socket.socket, template: bytes, secret_key: tuple[int, int],
                 named: bool) -> None:
        self.sock = sock
        self.k0, self.k1 = secret_key
        self.length = len(template)
        n, stride = MAX_BATCH, self.stride
        self.packets = bytearray(template.ljust(stride, b"\0") * n)
        self.names = bytearray(struct.pack("=H14x", socket.AF_INET) * n if named else b"")
        packets = ctypes.addressof((ctypes.c_char * len(self.packets)).from_buffer(self.packets))
        # struct iovec (base, len) per packet; struct mmsghdr on 64-bit Linux: msghdr
        # (name, namelen, iov, iovlen, control, controllen, flags: 56 bytes) + msg_len,
        # padded to 64: words of 8 bytes, each column filled at once
        iov_words = array.array("Q", bytes(16 * n))
        iov_words[0::2] = array.array("Q", range(packets, packets + n * stride, stride))
        iov_words[1::2] = array.array("Q", [self.length]) * n
        self.iov = bytearray(iov_words.tobytes())
        iov = ctypes.addressof((ctypes.c_char * len(self.iov)).from_buffer(self.iov))
        words = array.array("Q", bytes(64 * n))
        if named:
            names = ctypes.addressof((ctypes.c_char * len(self.names)).from_buffer(self.names))
            words[0::8] = array.array("Q", range(names, names + n * 16, 16))
            words[1::8] = array.array("Q", [16]) * n
        words[2::8] = array.array("Q", range(iov, iov + n * 16, 16))
        words[3::8] = array.array("Q", [1]) * n
        self.mmsg = bytearray(words.tobytes())
        self.mmsg_at = ctypes.addressof((ctypes.c_char * len(self.mmsg)).from_buffer(self.mmsg))
        self.call = sendmmsg()

    def _cookies(self, pairs: Sequence[int]) -> tuple[_Masks, bytes, int, int]:
        """(the masks, the pairs as lanes: bytes and integer, their cookies in the same
        lanes) of a batch."""
        n = len(pairs)
        if not 0 < n <= MAX_BATCH:
            raise ValueError("a batch is 1 to MAX_BATCH pairs")
        masks = _masks(n)
        raw = _lane_bytes(pairs)
        p = int.from_bytes(raw, "little")
        return masks, raw, p, siphash_lanes(masks, self.k0, self.k1, p) & masks.m32

    def packet(self, index: int) -> bytes:
        """The packet `index` as loaded (what `send` hands over)."""
        start = index * self.stride
        return bytes(self.packets[start:start + self.length])

    def send(self, start: int, count: int) -> tuple[int, int]:
        """Hand packets start..start+count-1 to the kernel: (how many it took, errno of the
        first one it refused, 0 when it took all)."""
        count = min(count, MAX_CALL)
        sent = self.call(self.sock.fileno(), self.mmsg_at + start * 64, count, 0)
        if sent < 0:
            return 0, ctypes.get_errno() or errno.EIO
        return sent, 0


def _fold(total: int, m16: int) -> int:
    """The checksums of the word sums in each lane: folded to 16 bits, complemented."""
    total = (total & m16) + ((total >> 16) & m16)
    total = (total & m16) + ((total >> 16) & m16)
    return total ^ m16


class SynBatch(_Batch):
    """SYN segments from `sport` for up to MAX_BATCH pairs on a raw IPPROTO_TCP socket (the
    kernel routes each and adds the IP header): byte for byte `discovery.wire.KernelTx`'s."""

    def __init__(self, sport: int, sock: socket.socket, secret_key: tuple[int, int]) -> None:
        super().__init__(sock, tcp_template(sport), secret_key, named=True)
        self.base = template_sum(sport)

    def load(self, pairs: Sequence[int], source_sums: Sequence[int]) -> None:
        """Fill segments 0..len(pairs)-1: destination, cookie and checksum (over the
        pseudo-header whose source address words sum to `source_sums[i]` for pair i)."""
        n = len(pairs)
        if len(source_sums) != n:
            raise ValueError("a batch is 1 to MAX_BATCH pairs with a source sum each")
        masks, raw, p, seqs = self._cookies(pairs)
        m16 = masks.m16
        sums = _fold(int.from_bytes(_lane_bytes([self.base + s for s in source_sums]), "little")
                     + ((p >> 32) & m16) + ((p >> 16) & m16) + (p & m16)
                     + ((seqs >> 16) & m16) + (seqs & m16), m16).to_bytes(8 * masks.n, "little")
        seq = seqs.to_bytes(8 * masks.n, "little")
        end, lanes, names = n * STRIDE, 8 * n, 16 * n
        out = self.packets
        out[2:end:STRIDE] = raw[1:lanes:8]  # destination port, big-endian
        out[3:end:STRIDE] = raw[0:lanes:8]
        for k in range(4):  # sequence number, big-endian
            out[4 + k:end:STRIDE] = seq[3 - k:lanes:8]
        out[16:end:STRIDE] = sums[1:lanes:8]  # checksum, big-endian
        out[17:end:STRIDE] = sums[0:lanes:8]
        dest = self.names
        for k in range(4):  # sin_addr, network order: the pair's bits 47..16
            dest[4 + k:names:16] = raw[5 - k:lanes:8]

    def destination(self, index: int) -> int:
        """The address segment `index` goes to, as loaded."""
        return int.from_bytes(self.names[index * 16 + 4:index * 16 + 8], "big")


def frame_template(sport: int, source: bytes, ours: bytes, theirs: bytes) -> bytes:
    """Our SYN from `source`:`sport` as a whole Ethernet frame from `ours` to `theirs` (the
    next hop's link-layer address), with the destination, the sequence number and both
    checksums zero: an IPv4 header of 20 bytes, TTL 64, no options, identification 0."""
    ip_header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + SYN_LEN, 0, 0, TTL,
                            socket.IPPROTO_TCP, 0, source, b"\0\0\0\0")
    return theirs + ours + struct.pack("!H", ETH_P_IP) + ip_header + tcp_template(sport)


class FrameBatch(_Batch):
    """SYNs from `source`:`sport` for up to MAX_BATCH pairs as whole Ethernet frames from
    `ours` to `theirs` (the route's gateway) on an AF_PACKET socket bound to the interface:
    byte for byte `discovery.wire.LinkTx`'s. The IPv4 header's checksum is made in the same
    lanes as the segment's."""

    stride = FRAME_STRIDE

    def __init__(self, sport: int, source: bytes, ours: bytes, theirs: bytes,
                 sock: socket.socket, secret_key: tuple[int, int]) -> None:
        template = frame_template(sport, source, ours, theirs)
        super().__init__(sock, template, secret_key, named=False)
        self.ip_base = word_sum(template[14:34])
        self.tcp_base = template_sum(sport) + word_sum(source)
        self.bases: dict[int, tuple[int, int]] = {}  # lanes → (ip_base, tcp_base) in each

    def load(self, pairs: Sequence[int]) -> None:
        """Fill frames 0..len(pairs)-1: destination address and port, cookie, and the two
        checksums."""
        n = len(pairs)
        masks, raw, p, seqs = self._cookies(pairs)
        bases = self.bases.get(masks.n)
        if bases is None:
            bases = self.bases[masks.n] = (_lanes(masks.n, self.ip_base),
                                           _lanes(masks.n, self.tcp_base))
        m16 = masks.m16
        address = ((p >> 32) & m16) + ((p >> 16) & m16)
        width = 8 * masks.n
        ip_sums = _fold(bases[0] + address, m16).to_bytes(width, "little")
        sums = _fold(bases[1] + address + (p & m16) + ((seqs >> 16) & m16) + (seqs & m16),
                     m16).to_bytes(width, "little")
        seq = seqs.to_bytes(width, "little")
        stride = FRAME_STRIDE
        end, lanes = n * stride, 8 * n
        out = self.packets
        out[24:end:stride] = ip_sums[1:lanes:8]  # the IPv4 header's checksum, big-endian
        out[25:end:stride] = ip_sums[0:lanes:8]
        for k in range(4):  # destination address, big-endian: the pair's bits 47..16
            out[30 + k:end:stride] = raw[5 - k:lanes:8]
        out[36:end:stride] = raw[1:lanes:8]  # destination port, big-endian
        out[37:end:stride] = raw[0:lanes:8]
        for k in range(4):  # sequence number, big-endian
            out[38 + k:end:stride] = seq[3 - k:lanes:8]
        out[50:end:stride] = sums[1:lanes:8]  # the segment's checksum, big-endian
        out[51:end:stride] = sums[0:lanes:8]

    def destination(self, index: int) -> int:
        """The address frame `index` goes to, as loaded."""
        start = index * FRAME_STRIDE + 30
        return int.from_bytes(self.packets[start:start + 4], "big")


def packet_socket(ifindex: int) -> socket.socket:
    """An AF_PACKET socket that sends whole frames on one interface and receives nothing
    (protocol 0); blocking sends, bounded, as the raw IP socket's."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        sock.bind((socket.if_indextoname(ifindex), 0))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 0, 100_000))
    except OSError:
        sock.close()
        raise
    return sock
