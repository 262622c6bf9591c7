"""Deterministic hashing and Klaviyo-style identifiers.

``mix64`` is the splitmix64 finaliser, a bijection on 64-bit integers, so ids derived from distinct
indices never collide and an event id can be mapped back to its index.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
_C1 = 0xBF58476D1CE4E5B9
_C2 = 0x94D049BB133111EB
_C1_INV = pow(_C1, -1, 1 << 64)
_C2_INV = pow(_C2, -1, 1 << 64)

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_B62_INDEX = {c: i for i, c in enumerate(BASE62)}
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def mix64(x: int) -> int:
    """splitmix64 finaliser: a well-mixing bijection on 64-bit integers."""
    x &= MASK64
    x = ((x ^ (x >> 30)) * _C1) & MASK64
    x = ((x ^ (x >> 27)) * _C2) & MASK64
    return x ^ (x >> 31)


def _unxorshift(x: int, shift: int) -> int:
    result = x
    for _ in range(64 // shift + 1):
        result = x ^ (result >> shift)
    return result & MASK64


def unmix64(x: int) -> int:
    """Inverse of :func:`mix64`."""
    x = _unxorshift(x & MASK64, 31)
    x = (x * _C2_INV) & MASK64
    x = _unxorshift(x, 27)
    x = (x * _C1_INV) & MASK64
    return _unxorshift(x, 30)


def stable_hash(*parts: object) -> int:
    """A 64-bit hash of ``parts`` that is stable across processes (unlike ``hash``)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class Draws(random.Random):
    """A deterministic stream of pseudo-random numbers seeded from a 64-bit state."""

    def __init__(self, state: int) -> None:
        super().__init__(state & MASK64)

    def next(self) -> int:
        """A 64-bit value."""
        return self.getrandbits(64)

    def below(self, n: int) -> int:
        """An integer in ``[0, n)``."""
        return self._randbelow(n)

    def unit(self) -> float:
        """A float in ``[0, 1)``."""
        return self.random()

    def chance(self, p: float) -> bool:
        """True with probability ``p``."""
        return self.random() < p

    def pick(self, seq: tuple | list) -> Any:
        """One element of ``seq``."""
        return seq[self._randbelow(len(seq))]


def base62(n: int, width: int) -> str:
    """``n`` in base 62, left-padded with ``0`` to ``width`` characters."""
    out = []
    while n:
        n, r = divmod(n, 3844)
        out.append(_B62_PAIRS[r])
    text = "".join(reversed(out)).lstrip("0")
    return text.rjust(width, "0")


def unbase62(s: str) -> int | None:
    """Inverse of :func:`base62`; None if ``s`` is not base 62."""
    n = 0
    for c in s:
        i = _B62_INDEX.get(c)
        if i is None:
            return None
        n = n * 62 + i
    return n


def short_id(h: int, length: int = 6) -> str:
    """A Klaviyo-style short alphanumeric id starting with a letter (lists, metrics: ``R2p3ry``)."""
    d = Draws(h)
    return BASE62[10 + d.below(52)] + "".join(BASE62[d.below(62)] for _ in range(length - 1))


_CROCKFORD_PAIRS = tuple(CROCKFORD[i >> 5] + CROCKFORD[i & 31] for i in range(1024))
_B62_PAIRS = tuple(BASE62[i // 62] + BASE62[i % 62] for i in range(62 * 62))


def ulid(ms: int, rand: int) -> str:
    """A 26-character ULID (Crockford base 32) from a millisecond time and random bits (a 64-bit
    value is widened to the 80 random bits a ULID has)."""
    if rand < 1 << 64:
        rand = rand << 16 | mix64(rand) & 0xFFFF
    value = ((ms & ((1 << 48) - 1)) << 80) | (rand & ((1 << 80) - 1))
    pairs = _CROCKFORD_PAIRS
    return "".join([pairs[(value >> shift) & 1023] for shift in range(120, -1, -10)])


def uuid1_like(epoch_us: int, node: int, clock_seq: int) -> str:
    """A version-1 style UUID for a time, as Klaviyo gives events (``adc8d000-b769-11eb-...``)."""
    ticks = epoch_us * 10 + 0x01B21DD213814000
    time_low = ticks & 0xFFFFFFFF
    time_mid = (ticks >> 32) & 0xFFFF
    time_hi = ((ticks >> 48) & 0x0FFF) | 0x1000
    seq = (clock_seq & 0x3FFF) | 0x8000
    return f"{time_low:08x}-{time_mid:04x}-{time_hi:04x}-{seq:04x}-{node & 0xFFFFFFFFFFFF:012x}"


def hex_id(h: int, length: int = 32) -> str:
    """A lowercase hex id of ``length`` characters (attribution ids)."""
    value = mix64(h) << 64 | mix64(h ^ GOLDEN)
    return f"{value:032x}"[:length]


def uuid4_like(h: int) -> str:
    """A random-looking version-4 UUID string (tag ids)."""
    value = (mix64(h) << 64 | mix64(h + GOLDEN)) & ((1 << 128) - 1)
    value = (value & ~(0xF << 76)) | (0x4 << 76)
    value = (value & ~(0x3 << 62)) | (0x2 << 62)
    s = f"{value:032x}"
    return f"{s[:8]}-{s[8:12]}-{s[12:16]}-{s[16:20]}-{s[20:]}"
