"""Packed-bit helpers shared by the link algorithms.

Keys travel as ``numpy.packbits`` arrays (MSB first, design.md); these helpers convert,
expand public seeds into long bit strings, and count bit differences without Python
loops over bits.
"""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["as_packed", "expand_seed", "hamming_distance", "pack", "unpack"]

# popcount of every byte value, for packed Hamming distances
_POP = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def as_packed(bits_packed: bytes | bytearray | np.ndarray) -> np.ndarray:
    """A uint8 view/array of packed bits (no copy for bytes or uint8 arrays)."""
    if isinstance(bits_packed, bytes | bytearray):
        return np.frombuffer(bits_packed, dtype=np.uint8)
    return np.asarray(bits_packed, dtype=np.uint8)


def unpack(bits_packed: bytes | bytearray | np.ndarray, n_bits: int) -> np.ndarray:
    """One uint8 (0/1) per bit, the first ``n_bits`` of a packed string."""
    raw = as_packed(bits_packed)
    if raw.shape[0] * 8 < n_bits:
        raise ValueError(f"packed string holds {raw.shape[0] * 8} bits, {n_bits} needed")
    return np.unpackbits(raw, count=n_bits)


def pack(bits: np.ndarray) -> np.ndarray:
    """Pack a 0/1 array (MSB first); the tail of the last byte is zero."""
    return np.packbits(np.asarray(bits, dtype=np.uint8))


def hamming_distance(a_packed: bytes | np.ndarray, b_packed: bytes | np.ndarray,
                     n_bits: int) -> int:
    """Number of differing bits among the first ``n_bits`` of two packed strings."""
    nbytes = (n_bits + 7) // 8
    x = as_packed(a_packed)[:nbytes] ^ as_packed(b_packed)[:nbytes]
    if n_bits % 8:
        x = x.copy()
        x[-1] &= (0xFF << (8 - n_bits % 8)) & 0xFF
    return int(_POP[x].sum(dtype=np.int64))


def expand_seed(seed: bytes, n_bits: int, *, label: bytes = b"") -> np.ndarray:
    """``n_bits`` public pseudo-random bits (packed) from a short seed, by SHAKE-256.

    Used to turn the short public seed carried on the wire into a Toeplitz matrix or
    permutation seed. ``label`` separates uses of one seed (domain separation).
    """
    nbytes = (n_bits + 7) // 8
    out = np.frombuffer(hashlib.shake_256(label + b"\x00" + seed).digest(nbytes),
                        dtype=np.uint8).copy()
    if n_bits % 8 and nbytes:
        out[-1] &= (0xFF << (8 - n_bits % 8)) & 0xFF
    return out
