"""Values and bit helpers of the key store (import them from :mod:`qkdnet.keystore`).

The public value types (:class:`KeySegment`, :class:`BlockMeta`, :class:`KeyGrant`,
:class:`PoolStatus`), the constants of the format, and packed-bit arithmetic. Both
layers of the key store use them (the storage in ``keystore_db``/``keystore_blocks``,
the pools in ``keystore``/``keystore_lease``), so they sit below both; nothing here
holds state or touches SQLite. :mod:`qkdnet.keystore` re-exports the public names.

Bit strings are packed MSB first (``numpy.packbits`` order) and zero-padded to a
whole byte; helpers for unaligned offsets are vectorised (numpy shifts), never loops
over bits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from qkdnet.errors import LocalProtocolError

__all__ = [
    "BOOTSTRAP_BLOCK_BASE",
    "BOOTSTRAP_MIN_BYTES",
    "CHUNK_BITS",
    "CHUNK_BYTES",
    "HASH_KEY_BYTES",
    "PURPOSES",
    "U64",
    "BlockMeta",
    "KeyGrant",
    "KeySegment",
    "PoolStatus",
    "check_pool",
    "concat_bits",
    "extract_bits",
    "from_sql_id",
    "tail_mask",
    "to_sql_id",
    "zero_bits",
]

#: Pool purposes; ``-tx`` pools are reserved from, ``-rx`` pools are taken from.
PURPOSES: tuple[str, ...] = ("data-tx", "data-rx", "auth-tx", "auth-rx", "e2e-tx", "e2e-rx")
#: Key bytes per stored chunk row (the unit of deletion).
CHUNK_BYTES = 4096
CHUNK_BITS = CHUNK_BYTES * 8
#: Smallest accepted bootstrap secret.
BOOTSTRAP_MIN_BYTES = 4096
#: Block ids of bootstrap auth blocks are ``BOOTSTRAP_BLOCK_BASE | k``.
BOOTSTRAP_BLOCK_BASE = 0xFFFF_FFFF << 32
#: Bytes of one Poly1305 hash key ``r`` taken from a bootstrap secret.
HASH_KEY_BYTES = 16
#: Block ids are unsigned 64-bit ints: ``0 <= id < U64``.
U64 = 1 << 64


# --------------------------------------------------------------------------- types


@dataclass(frozen=True, slots=True)
class KeySegment:
    """``n_bits`` bits of block ``block_id`` starting at bit ``offset``."""

    block_id: int
    offset: int
    n_bits: int

    def __post_init__(self) -> None:
        if not (0 <= self.block_id < U64):
            raise LocalProtocolError(f"block id {self.block_id} is not an unsigned 64-bit int")
        if self.offset < 0 or self.n_bits <= 0:
            raise LocalProtocolError(
                f"bad key segment: offset {self.offset}, length {self.n_bits} bits")

    @property
    def stop(self) -> int:
        """One past the last bit."""
        return self.offset + self.n_bits


@dataclass(frozen=True, slots=True)
class BlockMeta:
    """Where a block of key came from and what it cost (see docs/design.md)."""

    link_session: str
    created: float
    eps_sec: float
    eps_cor: float
    leaked_ec_bits: int
    auth_bits_spent: int
    qber: float | None = None


@dataclass(frozen=True, slots=True, repr=False)
class KeyGrant:
    """Bits granted to a sender: which ones (``segments``) and their value (``data``).

    ``data`` holds the bits of the segments in order, packed MSB first
    (``numpy.packbits`` order), zero-padded to a whole byte. ``repr`` hides ``data``.
    """

    peer: str
    purpose: str
    segments: tuple[KeySegment, ...]
    data: bytes = field(compare=False)

    @property
    def n_bits(self) -> int:
        """Total bits granted."""
        return sum(s.n_bits for s in self.segments)

    def __repr__(self) -> str:
        segs = ", ".join(f"{s.block_id:#x}@{s.offset}+{s.n_bits}" for s in self.segments)
        return f"KeyGrant({self.peer}/{self.purpose}, {self.n_bits} bits, [{segs}])"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class PoolStatus:
    """Counts describing one pool (no key material)."""

    peer: str
    purpose: str
    available_bits: int
    live_blocks: int
    retired_blocks: int
    leased_bits: int


# ------------------------------------------------------------------ bit helpers


def tail_mask(n_bits: int) -> int:
    """Mask keeping the valid high bits of the last byte of an ``n_bits`` string."""
    tail = n_bits % 8
    return 0xFF if tail == 0 else (0xFF << (8 - tail)) & 0xFF


def extract_bits(buf: bytes, bit_offset: int, n_bits: int) -> bytes:
    """Bits ``[bit_offset, bit_offset + n_bits)`` of packed ``buf``, repacked from bit 0.

    The result has ``ceil(n_bits / 8)`` bytes with zero padding. Vectorised (numpy
    shifts) for unaligned offsets; a plain slice for aligned ones.
    """
    start, shift = divmod(bit_offset, 8)
    n_bytes = (n_bits + 7) // 8
    if shift == 0:
        out = buf[start:start + n_bytes]
        if n_bits % 8 == 0:
            return bytes(out)
        arr = bytearray(out)
        arr[-1] &= tail_mask(n_bits)
        return bytes(arr)
    src = np.frombuffer(buf, dtype=np.uint8, count=min(n_bytes + 1, len(buf) - start),
                        offset=start)
    if src.size < n_bytes + 1:
        src = np.concatenate([src, np.zeros(n_bytes + 1 - src.size, dtype=np.uint8)])
    res = (src[:-1] << np.uint8(shift)) | (src[1:] >> np.uint8(8 - shift))
    res[-1] &= np.uint8(tail_mask(n_bits))
    return res.tobytes()


def concat_bits(pieces: Sequence[tuple[bytes, int]]) -> bytes:
    """Concatenate packed bit strings ``(data, n_bits)`` into one packed string."""
    if len(pieces) == 1:
        return pieces[0][0]
    if all(n % 8 == 0 for _, n in pieces[:-1]):
        return b"".join(d for d, _ in pieces)
    bits = np.concatenate([np.unpackbits(np.frombuffer(d, dtype=np.uint8), count=n)
                           for d, n in pieces])
    return np.packbits(bits).tobytes()


def zero_bits(buf: bytearray, start: int, stop: int) -> None:
    """Clear bits ``[start, stop)`` of packed ``buf`` in place."""
    if start >= stop:
        return
    sb, sr = divmod(start, 8)
    eb, er = divmod(stop, 8)
    if sb == eb:
        buf[sb] &= ~((0xFF >> sr) & (0xFF << (8 - er))) & 0xFF
        return
    if sr:
        buf[sb] &= (0xFF << (8 - sr)) & 0xFF
        sb += 1
    buf[sb:eb] = bytes(eb - sb)
    if er:
        buf[eb] &= 0xFF >> er


def to_sql_id(block_id: int) -> int:
    """A u64 block id as SQLite's signed 64-bit INTEGER (ids >= 2**63 go negative)."""
    return block_id - U64 if block_id >= 1 << 63 else block_id


def from_sql_id(value: int) -> int:
    """Inverse of :func:`to_sql_id`."""
    return value + U64 if value < 0 else value


def check_pool(peer: str, purpose: str) -> None:
    """Raise :class:`LocalProtocolError` unless ``(peer, purpose)`` names a valid pool."""
    if not isinstance(peer, str) or not peer:
        raise LocalProtocolError("peer must be a non-empty string")
    if purpose not in PURPOSES:
        raise LocalProtocolError(
            f"unknown key pool purpose {purpose!r}; expected one of {', '.join(PURPOSES)}")
