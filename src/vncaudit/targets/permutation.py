"""The zmap-style cyclic group permutation that orders and shards a scan.

Owns: `CyclicPermutation` (a permutation of range(n) stored in a few integers), the prime test
and factorisation it needs, and `_derive`, which turns a seed into its generator and start the
same way in every process and Python version.

Must not: store the permutation or any per-index state, use Python's `hash` or `random` (not
stable across processes), do I/O, or import anything of the package.
"""

from __future__ import annotations

import math
from itertools import count as _counter

# Not `typing.TYPE_CHECKING`: the early start of a SYN scan imports this module before typing
# (vncaudit.synstart).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Final

    import numpy as np
    import numpy.typing as npt

try:  # hashlib's own blake2b, without the OpenSSL bindings hashlib loads first (~4 ms)
    from _blake2 import blake2b
except ImportError:  # pragma: no cover - an interpreter without the module
    from hashlib import blake2b


def _primes_below(n: int) -> tuple[int, ...]:
    """The primes below `n` (a sieve: this module is imported before a SYN scan's first
    packet)."""
    sieve = bytearray([1]) * n
    sieve[:2] = b"\0\0"
    for i in range(2, math.isqrt(n - 1) + 1):
        if sieve[i]:
            sieve[i * i::i] = bytes(len(range(i * i, n, i)))
    return tuple(i for i, prime in enumerate(sieve) if prime)


_SMALL_PRIMES: Final = _primes_below(1000)
_MR_BASES: Final = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)  # exact below 3.3e24


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    for q in _SMALL_PRIMES:
        if n % q == 0:
            return n == q
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for a in _MR_BASES:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def _pollard_rho(n: int) -> int:
    """A non-trivial factor of the odd composite *n* (deterministic)."""
    for c in _counter(1):
        x = y = 2
        d = 1
        while d == 1:
            x = (x * x + c) % n
            y = (y * y + c) % n
            y = (y * y + c) % n
            d = math.gcd(x - y, n)
        if d != n:
            return d
    raise AssertionError("unreachable")  # pragma: no cover


def _prime_factors(n: int) -> set[int]:
    factors: set[int] = set()
    for q in _SMALL_PRIMES:
        if n % q == 0:
            factors.add(q)
            while n % q == 0:
                n //= q
    stack = [n] if n > 1 else []
    while stack:
        m = stack.pop()
        if _is_prime(m):
            factors.add(m)
        else:
            d = _pollard_rho(m)
            stack += [d, m // d]
    return factors


def _derive(seed: int, label: str, n: int = 0) -> int:
    """A 128-bit number from (seed, label, n): stable across processes and Python versions."""
    digest = blake2b(f"{seed}:{label}:{n}".encode(), digest_size=16).digest()
    return int.from_bytes(digest, "big")


class CyclicPermutation:
    """A permutation of range(n) without storing it, as zmap does (Adrian et al., 2014).

    p is the smallest prime > n; a primitive root g generates the multiplicative group of Z_p,
    so x, x*g, x*g**2, ... visits every value 1..p-1 exactly once. Each value v <= n stands for
    index v - 1; the (at most a few dozen, prime gaps being small) values above n are skipped.
    Shard i of k walks the cycle positions i, i+k, i+2k, ...: disjoint, together complete, and
    each spread over the whole space. g and the start come from the seed.
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        p = n + 1
        while not _is_prime(p):
            p += 1
        self.p = p
        if p <= 3:
            self.g = p - 1
        else:
            factors = _prime_factors(p - 1)
            for attempt in _counter():
                g = 2 + _derive(seed, "generator", attempt) % (p - 3)
                if all(pow(g, (p - 1) // q, p) != 1 for q in factors):
                    self.g = g
                    break
        self.start = 1 + _derive(seed, "start") % (p - 1)

    def indices(self, index: int = 0, count: int = 1) -> Iterator[int]:
        p, n = self.p, self.n
        x = self.start * pow(self.g, index, p) % p
        step = pow(self.g, count, p)
        for _ in range(len(range(index, p - 1, count))):
            if x <= n:
                yield x - 1
            x = x * step % p

    def index_blocks(self, index: int = 0, count: int = 1,
                     size: int = 4096) -> Iterator[npt.NDArray[np.uint64]]:
        """The same indices as `indices(index, count)`, in the same order, as numpy arrays of
        at most `size` (a block may be shorter where values above n were skipped).

        Each block is `x0 * step**j mod p` for j < size, from powers computed once, so the walk
        costs a few vector operations per block instead of a Python step per index. Needs
        p < 2**48 (every IPv4 range times any port list); `ValueError` beyond that.
        """
        import numpy as np

        p, n = self.p, self.n
        if p >= 1 << 48:
            raise ValueError("index_blocks needs p < 2**48")
        total = len(range(index, p - 1, count))
        step = pow(self.g, count, p)
        powers = [1] * max(1, min(size, total))
        for j in range(1, len(powers)):
            powers[j] = powers[j - 1] * step % p
        table = np.array(powers, dtype=np.uint64)
        jump = pow(step, len(powers), p)
        x = self.start * pow(self.g, index, p) % p
        done = 0
        while done < total:
            m = min(len(powers), total - done)
            values = _mulmod(table[:m], x, p)
            yield values[values <= n] - np.uint64(1)
            x = x * jump % p
            done += m


def _mulmod(vector: npt.NDArray[np.uint64], scalar: int, p: int) -> npt.NDArray[np.uint64]:
    """(vector * scalar) % p elementwise without overflowing 64 bits; vector, scalar < p < 2**48.

    Below 2**32 the product fits; above, the scalar is taken 16 bits at a time (Horner), so
    no intermediate exceeds 2**64."""
    import numpy as np

    modulus = np.uint64(p)
    if p <= 1 << 32:
        return (vector * np.uint64(scalar)) % modulus
    out = np.zeros_like(vector)
    for shift in range(32, -1, -16):
        limb = np.uint64((scalar >> shift) & 0xFFFF)
        out = ((out << np.uint64(16)) % modulus + (vector * limb) % modulus) % modulus
    return out
