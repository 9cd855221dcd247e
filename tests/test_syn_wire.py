"""The bytes of SYN discovery (vncaudit.discovery.wire), the route plan (discovery.route) and
the rate cap's token bucket, without sending anything: packets are built into their buffers and
read back, checksums verified the way a receiver does (RFC 1071), cookies checked against the
SipHash-2-4 reference vector and against the scalar implementation.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vncaudit import rawbatch, rawsyn, routetable
from vncaudit.discovery import rate_burst, route, wire
from vncaudit.discovery.syn import TokenBucket


def _ones_complement_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _pairs(n: int, seed: int) -> np.ndarray:
    rng = random.Random(seed)
    values = [(rng.getrandbits(32) << 16) | rng.randrange(1, 65536) for _ in range(n)]
    return np.array(values + [0, (0xFFFFFFFF << 16) | 0xFFFF], dtype=np.uint64)


def test_siphash_matches_the_reference_vector() -> None:
    """SipHash-2-4, key 00..0f, the 8-byte message 00..07 (Aumasson and Bernstein's vectors)."""
    k0, k1 = struct.unpack("<QQ", bytes(range(16)))
    message = int.from_bytes(bytes(range(8)), "little")
    assert wire.siphash(k0, k1, message) == 0x93F5F5799A932462


@settings(max_examples=30, deadline=None)
@given(secret=st.binary(min_size=16, max_size=16), seed=st.integers(0, 1 << 30))
def test_vector_cookies_equal_the_scalar_ones(secret: bytes, seed: int) -> None:
    cookies = wire.Cookies(secret)
    pairs = _pairs(50, seed)
    assert cookies.cookies(pairs).tolist() == [cookies.cookie(p) for p in pairs.tolist()]


def test_kernel_segments_are_valid_syns_with_their_cookies() -> None:
    """A raw-socket batch: each 24-byte segment is a SYN from our port with the MSS option, the
    cookie as sequence number, a checksum that verifies over the pseudo-header with the given
    source, and its destination in the message's sockaddr."""
    cookies = wire.Cookies(bytes(range(16)))
    pairs = _pairs(300, 1)
    source = socket.inet_aton("198.19.255.1")
    with socket.socket() as placeholder:  # never sent on
        tx = wire.KernelTx(61234, placeholder)
        tx.load(pairs, cookies.cookies(pairs), wire.word_sum(source))
        for i, pair in enumerate(pairs.tolist()):
            segment = tx.packet(i)
            assert len(segment) == wire.SYN_LEN
            sport, dport, seq, ack, offset_flags = struct.unpack_from("!HHIIH", segment)
            assert (sport, dport, seq, ack) == (61234, pair & 0xFFFF, cookies.cookie(pair), 0)
            assert offset_flags == (6 << 12) | wire.TCP_SYN
            assert segment[20:] == wire.MSS_OPTION
            address = (pair >> 16).to_bytes(4, "big")
            pseudo = source + address + bytes([0, socket.IPPROTO_TCP]) + \
                len(segment).to_bytes(2, "big")
            assert _ones_complement_sum(pseudo + segment) == 0xFFFF
            name = tx.names[i].tobytes()
            assert name[:2] == struct.pack("=H", socket.AF_INET) and name[4:8] == address


@settings(max_examples=30, deadline=None)
@given(secret=st.binary(min_size=16, max_size=16), seed=st.integers(0, 1 << 30),
       sport=st.integers(1, 65535), source=st.binary(min_size=4, max_size=4))
def test_scalar_syns_are_the_batch_syns_byte_for_byte(secret: bytes, seed: int, sport: int,
                                                      source: bytes) -> None:
    """What the early start sends one at a time without numpy (`rawsyn.syn_segment` with
    `rawsyn.cookie`) is exactly what the sweep's numpy batch makes of the same pairs."""
    cookies = wire.Cookies(secret)
    key = rawsyn.cookie_key(secret)
    pairs = _pairs(60, seed)
    with socket.socket() as placeholder:  # never sent on
        tx = wire.KernelTx(sport, placeholder)
        tx.load(pairs, cookies.cookies(pairs), wire.word_sum(source))
        for i, pair in enumerate(pairs.tolist()):
            scalar = rawsyn.syn_segment(sport, pair, rawsyn.cookie(key, pair),
                                        rawsyn.word_sum(source))
            assert scalar == tx.packet(i), pair


@settings(max_examples=25, deadline=None)
@given(secret=st.binary(min_size=16, max_size=16), seed=st.integers(0, 1 << 30),
       sport=st.integers(1, 65535), n=st.sampled_from([1, 2, 63, 1000, rawbatch.MAX_BATCH]),
       sources=st.lists(st.binary(min_size=4, max_size=4), min_size=1, max_size=3))
def test_stdlib_batches_are_the_numpy_batches_byte_for_byte(secret: bytes, seed: int,
                                                            sport: int, n: int,
                                                            sources: list[bytes]) -> None:
    """What the early start's batches make without numpy (`rawbatch.SynBatch`: the cookies of
    a batch in the lanes of one integer) is exactly what the sweep's numpy batch makes of the
    same pairs: segment, destination, cookie; each pair with its own source address."""
    pairs = _pairs(n, seed)[-n:]  # with the two extremes
    sums = [rawsyn.word_sum(sources[i % len(sources)]) for i in range(n)]
    with socket.socket() as placeholder:  # never sent on
        tx = wire.KernelTx(sport, placeholder)
        tx.load(pairs, wire.Cookies(secret).cookies(pairs), np.array(sums, dtype=np.uint64))
        batch = rawbatch.SynBatch(sport, placeholder, rawsyn.cookie_key(secret))
        batch.load(pairs.tolist(), sums)
        for i, pair in enumerate(pairs.tolist()):
            assert batch.packet(i) == tx.packet(i), pair
            assert batch.destination(i) == pair >> 16
            assert batch.names[i * 16:i * 16 + 8] == tx.names[i].tobytes()[:8]


@settings(max_examples=25, deadline=None)
@given(secret=st.binary(min_size=16, max_size=16), seed=st.integers(0, 1 << 30),
       sport=st.integers(1, 65535), n=st.sampled_from([1, 2, 63, 1000, rawbatch.MAX_BATCH]),
       source=st.binary(min_size=4, max_size=4), ours=st.binary(min_size=6, max_size=6),
       theirs=st.binary(min_size=6, max_size=6))
def test_stdlib_frames_are_the_numpy_frames_byte_for_byte(secret: bytes, seed: int, sport: int,
                                                          n: int, source: bytes, ours: bytes,
                                                          theirs: bytes) -> None:
    """What the early start's frame batches make without numpy (`rawbatch.FrameBatch`: the
    cookies and both checksums of a batch in the lanes of one integer) is exactly what the
    sweep's `LinkTx` makes of the same pairs: every byte of every frame, and no more."""
    pairs = _pairs(n, seed)[-n:]  # with the two extremes
    with socket.socket() as placeholder:  # never sent on
        tx = wire.LinkTx(sport, source, ours, theirs, sock=placeholder)
        tx.load(pairs, wire.Cookies(secret).cookies(pairs), 0)
        batch = rawbatch.FrameBatch(sport, source, ours, theirs, placeholder,
                                    rawsyn.cookie_key(secret))
        batch.load(pairs.tolist())
        for i, pair in enumerate(pairs.tolist()):
            assert batch.packet(i) == tx.packet(i), pair
            assert batch.destination(i) == pair >> 16
        # the message array points at each frame with its length, and names no address
        words = memoryview(batch.mmsg).cast("Q")
        iov = memoryview(batch.iov).cast("Q")
        assert len(batch.packet(0)) == 58
        for i in (0, n - 1):
            assert words[8 * i] == 0 and words[8 * i + 3] == 1
            assert iov[2 * i + 1] == 58


def test_link_frames_are_valid_ethernet_ipv4_syns() -> None:
    """A frame batch: to the gateway's link-layer address from ours, an IPv4 header whose
    checksum verifies (TTL 64, protocol TCP, 44 bytes, our source, the target), and the same
    SYN as the kernel path."""
    cookies = wire.Cookies(bytes(range(1, 17)))
    pairs = _pairs(300, 2)
    source = socket.inet_aton("10.9.8.7")
    ours, theirs = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
    with socket.socket() as placeholder:
        tx = wire.LinkTx(40000, source, ours, theirs, sock=placeholder)
        tx.load(pairs, cookies.cookies(pairs), 0)
        for i, pair in enumerate(pairs.tolist()):
            frame = tx.packet(i)
            assert frame[:6] == theirs and frame[6:12] == ours and frame[12:14] == b"\x08\x00"
            ip, segment = frame[14:34], frame[34:]
            assert _ones_complement_sum(ip) == 0xFFFF
            assert ip[0] == 0x45 and ip[8] == wire.TTL and ip[9] == socket.IPPROTO_TCP
            assert int.from_bytes(ip[2:4], "big") == 44
            address = (pair >> 16).to_bytes(4, "big")
            assert ip[12:16] == source and ip[16:20] == address
            pseudo = source + address + bytes([0, socket.IPPROTO_TCP, 0, len(segment)])
            assert _ones_complement_sum(pseudo + segment) == 0xFFFF
            assert struct.unpack_from("!HHI", segment) == (40000, pair & 0xFFFF,
                                                           cookies.cookie(pair))


def test_replies_are_parsed_and_junk_left_out() -> None:
    def packet(src: str, sport: int, dport: int, ack: int, flags: int, ihl: int = 5) -> bytes:
        header = bytes([0x40 | ihl]) + bytes(11) + socket.inet_aton(src) + bytes(4) + \
            bytes(4 * (ihl - 5))
        return header + struct.pack("!HHIIBB", sport, dport, 7, ack, 0x50, flags) + bytes(6)

    packets = [packet("198.18.0.9", 5900, 999, 1234, 0x12), packet("1.2.3.4", 80, 999, 5, 0x14,
                                                                      ihl=6),
               packet("1.2.3.4", 80, 1000, 5, 0x12), b"\x45" * 10, b"\x41" + bytes(40)]
    pairs, acks, flags = wire.parse_replies(packets, 999)
    assert pairs == [(0xC6120009 << 16) | 5900, (0x01020304 << 16) | 80]
    assert acks == [1234, 5] and flags == [0x12, 0x14]


def _route(first: str, prefix: int, table: int = routetable.TABLE_MAIN, metric: int = 0,
           gateway: str = "", kind: int = routetable.RTN_UNICAST) -> routetable.Route:
    start = int.from_bytes(socket.inet_aton(first), "big")
    return routetable.Route(start, start + (1 << (32 - prefix)) - 1, prefix, metric, table, kind, 2,
                        socket.inet_aton(gateway) if gateway else b"", b"", 0, False)


def test_route_choice_is_the_kernels() -> None:
    """Longest prefix first, then the lowest metric, table local before main before default;
    two equal candidates cannot be told apart (None goes to the kernel)."""
    default = _route("0.0.0.0", 0, gateway="192.0.2.1")
    lan = _route("10.1.0.0", 16)
    host = _route("10.1.2.3", 32, gateway="10.1.0.1")
    local = _route("10.1.0.5", 32, table=routetable.TABLE_LOCAL, kind=2)
    worse = _route("172.16.0.0", 12, metric=100, gateway="192.0.2.9")
    better = _route("172.16.0.0", 12, metric=10, gateway="192.0.2.8")
    twin_a = _route("192.168.0.0", 16, gateway="192.0.2.5")
    twin_b = _route("192.168.0.0", 16, gateway="192.0.2.6")
    routes = [default, lan, host, local, worse, better, twin_a, twin_b]

    def best(address: str) -> routetable.Route | None | bool:
        return routetable.best_route(routes, int.from_bytes(socket.inet_aton(address), "big"))

    assert best("8.8.8.8") is default
    assert best("10.1.9.9") is lan
    assert best("10.1.2.3") is host
    assert best("10.1.0.5") is local
    assert best("172.20.0.1") is better
    assert best("192.168.3.3") is False
    assert routetable.best_route([lan], int.from_bytes(socket.inet_aton("8.8.8.8"), "big")) is None


def test_plan_for_loopback_leaves_it_to_the_kernel() -> None:
    """On this host: 127/8 is a local route on a loopback device, never framed by hand; the
    source address is the kernel's own choice."""
    plan = route.plan()
    [index] = plan.paths_of(np.array([0x7F000001], dtype=np.uint64)).tolist()
    path = plan.paths[index]
    assert path.link is None
    assert path.source == socket.inet_aton("127.0.0.1")


def test_token_bucket_never_grants_more_than_the_cap() -> None:
    """Two threads taking as fast as they can for half a second: in any window of the grant
    times, at most rate × window + burst packets."""
    rate = 40_000.0
    bucket = TokenBucket(rate)
    assert bucket.burst == rate_burst(rate)
    grants: list[tuple[float, int]] = []
    stop = threading.Event()
    lock = threading.Lock()

    def taker() -> None:
        while not stop.is_set():
            n = bucket.take(700, stop)
            with lock:
                grants.append((time.monotonic(), n))

    threads = [threading.Thread(target=taker) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()
    grants.sort()
    total = sum(n for _, n in grants)
    assert total > 0.25 * rate * 0.5  # it does grant, even on a busy machine
    for i, (start, _) in enumerate(grants):
        inside = sum(n for at, n in grants[i:] if at < start + 0.05)
        assert inside <= rate * 0.05 + bucket.burst + 1


def test_token_bucket_counts_packets_sent_before_it() -> None:
    """`spend`: packets the early start sent before the bucket existed take what they would
    have taken from it, less what it would have earned back since; none after a long time,
    all of them just now; later ones as a grant would."""
    bucket = TokenBucket(1000.0)  # burst 20
    made = bucket.last
    bucket.spend(20, made - 0.005)  # 5 ms ago: 5 tokens earned back since
    assert bucket.tokens == pytest.approx(5.0)
    bucket = TokenBucket(1000.0)
    bucket.spend(20, bucket.last - 1.0)  # long ago: nothing left to count
    assert bucket.tokens == 20.0
    bucket = TokenBucket(1000.0)
    bucket.spend(30, bucket.last)  # more than the burst, just now: the bucket owes 10
    assert bucket.tokens == -10.0
    stop = threading.Event()
    started = time.monotonic()
    assert bucket.take(5, stop) == 5  # after the debt is paid back at the rate (15 ms)
    assert time.monotonic() - started >= 0.014


@pytest.mark.parametrize("rate", [0.5, 100.0, 2000.0, 1e9])
def test_rate_burst_is_twenty_milliseconds_of_the_rate(rate: float) -> None:
    assert rate_burst(rate) == max(1, int(rate * 0.02))
