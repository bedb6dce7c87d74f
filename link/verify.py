"""Verification of the reconciled key with a universal hash sized for ε_cor.

Polynomial hashing over GF(2^64) (the field with modulus x^64 + x^4 + x^3 + x + 1):
the key is cut into ``d`` 64-bit blocks ``m_1 … m_d`` and hashed as
``H_r(m) = Σ_i m_i · r^(d − i + 1)``. For two different keys of the same length the
difference is a non-zero polynomial in ``r`` of degree <= d with no constant term, so
it has at most ``d`` roots: for a uniformly random ``r`` chosen after the keys are
fixed, ``Pr[H_r(a) = H_r(b)] <= d / 2^64``. With ``k`` independent evaluation points
(multiple evaluation, tag = k·64 bits) the bound is ``(d / 2^64)^k``.
:func:`tag_bits_for` picks the smallest ``k`` with ``(d / 2^64)^k <= ε_cor``; that is
at least ``⌈log2(1/ε_cor)⌉`` bits and more only when the key is long (64 bits cover
ε_cor = 1e-15 up to about 1.1e6 key bits).

The evaluation points come from a public seed (fresh per block, sent by the party
that computes the first tag) through SHAKE-256, one 64-bit point per evaluation.
Vectorisation: GF(2^64) products are 64 rounds of shift-and-XOR over whole numpy
arrays; the powers ``r^1 … r^d`` are built by doubling (log2 d array products).
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

from qkdnet.link.bits import as_packed

__all__ = ["collision_bound", "gf64_mul", "tag_bits_for", "verification_tag"]

_POLY = np.uint64(0x1B)   # x^4 + x^3 + x + 1 (the x^64 term is implicit)
_ONE = np.uint64(1)


def gf64_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise product in GF(2^64) of two uint64 arrays (broadcasting)."""
    a = np.asarray(a, dtype=np.uint64)
    b = np.array(b, dtype=np.uint64, copy=True)
    a, b = np.broadcast_arrays(a, b)
    b = b.copy()
    acc = np.zeros_like(b)
    for j in range(64):
        mask = (a >> np.uint64(j)) & _ONE
        acc ^= b * mask             # mask is 0 or 1: select b without a branch
        carry = b >> np.uint64(63)
        b = (b << _ONE) ^ (carry * _POLY)
    return acc


def _powers(r: np.uint64, d: int) -> np.ndarray:
    """r^1 … r^d in GF(2^64) by doubling."""
    pw = np.array([r], dtype=np.uint64)
    while pw.shape[0] < d:
        step = pw[-1:]                                   # r^len
        pw = np.concatenate([pw, gf64_mul(pw[: d - pw.shape[0]], step)])
    return pw[:d]


def _blocks(bits_packed: bytes | np.ndarray, n_bits: int) -> np.ndarray:
    nbytes = (n_bits + 7) // 8
    raw = as_packed(bits_packed)
    if raw.shape[0] < nbytes:
        raise ValueError("packed key shorter than n_bits")
    buf = np.zeros(((nbytes + 7) // 8) * 8, dtype=np.uint8)
    buf[:nbytes] = raw[:nbytes]
    if n_bits % 8:
        buf[nbytes - 1] &= (0xFF << (8 - n_bits % 8)) & 0xFF
    return buf.view(">u8").astype(np.uint64)


def collision_bound(n_bits: int, tag_bits: int) -> float:
    """Upper bound on the probability that two different ``n_bits`` keys share a tag."""
    d = max(1, -(-n_bits // 64))
    return float(min(1.0, d / 2.0**64) ** (tag_bits // 64))


def tag_bits_for(eps_cor: float, n_bits: int) -> int:
    """Smallest multiple of 64 tag bits with collision probability <= ``eps_cor``."""
    if not 0 < eps_cor < 1:
        raise ValueError("eps_cor must lie in (0, 1)")
    d = max(1, -(-n_bits // 64))
    per = 64 - math.log2(d)                     # bits of security per evaluation
    if per <= 0:
        raise ValueError("key too long for GF(2^64) polynomial hashing")
    k = max(1, math.ceil(math.log2(1 / eps_cor) / per))
    return 64 * k


def verification_tag(bits_packed: bytes | np.ndarray, seed: bytes, tag_bits: int,
                     n_bits: int | None = None) -> bytes:
    """Tag of the first ``n_bits`` of a packed key (all of it by default).

    ``tag_bits`` must be a positive multiple of 64 (see :func:`tag_bits_for`).
    """
    if tag_bits <= 0 or tag_bits % 64:
        raise ValueError("tag_bits must be a positive multiple of 64")
    if n_bits is None:
        n_bits = as_packed(bits_packed).shape[0] * 8
    m = _blocks(bits_packed, n_bits)
    d = m.shape[0]
    out = bytearray()
    for k in range(tag_bits // 64):
        r = np.uint64(int.from_bytes(
            hashlib.shake_256(b"qkdnet-verify\x00" + bytes([k]) + seed).digest(8), "big"))
        pw = _powers(r, d)[::-1]                 # m_1 · r^d, ..., m_d · r^1
        h = np.bitwise_xor.reduce(gf64_mul(m, pw)) if d else np.uint64(0)
        out += int(h).to_bytes(8, "big")
    return bytes(out)
