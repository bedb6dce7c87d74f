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
Vectorisation: the polynomial is evaluated by Horner's rule run in ``L`` lanes at
once. With the key (front-padded with zero blocks, which change nothing) cut into
rows of ``L`` blocks, ``acc ← acc · r^L ⊕ row`` over the rows leaves in lane ``λ`` the
sum of its blocks weighted by powers of ``r^L``, and ``H = Σ_λ acc_λ · r^(L−λ)`` is the
same kind of polynomial again, of ``L`` terms: recurse until a few terms remain and
finish with scalar Horner. Every vector product is by the constant ``r^L``, done
with eight 256-entry tables (``c · v·x^(8k)`` for each byte ``v`` at byte position
``k``): eight lookups and XORs per product instead of 64 shift-and-XOR rounds.
:func:`gf64_mul` (elementwise, both operands varying) is the reference the tests
check against.
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


_MASK64 = (1 << 64) - 1


def _mul_int(a: int, b: int) -> int:
    """Product of two field elements held as Python ints (scalar work only)."""
    acc = 0
    while a:
        if a & 1:
            acc ^= b
        a >>= 1
        b = ((b << 1) & _MASK64) ^ (0x1B if b >> 63 else 0)
    return acc


def _pow_int(r: int, e: int) -> int:
    """``r^e`` by square-and-multiply (``e >= 0``)."""
    out, base = 1, r
    while e:
        if e & 1:
            out = _mul_int(out, base)
        base = _mul_int(base, base)
        e >>= 1
    return out


def _const_tables(c: int) -> np.ndarray:
    """(8, 256) uint64: entry [k, v] is ``c · (v · x^(8k))``, so ``c · a`` is the XOR of
    ``[k, byte k of a]`` over the eight bytes of ``a``."""
    basis = []                      # c · x^t for t = 0..63
    v = c
    for _ in range(64):
        basis.append(v)
        v = ((v << 1) & _MASK64) ^ (0x1B if v >> 63 else 0)
    tables = np.zeros((8, 256), dtype=np.uint64)
    for k in range(8):
        row = tables[k]
        for b in range(8):          # entries with top bit b: the lower ones XOR basis
            row[1 << b:2 << b] = row[:1 << b] ^ np.uint64(basis[8 * k + b])
    return tables


def _mul_const(a: np.ndarray, tables: np.ndarray) -> np.ndarray:
    """``c · a`` elementwise for the constant ``c`` behind ``tables``."""
    octets = a.astype("<u8", copy=False).view(np.uint8).reshape(-1, 8)   # byte k = bits 8k..
    out = tables[0][octets[:, 0]]
    for k in range(1, 8):
        out ^= tables[k][octets[:, k]]
    return out


def _poly_eval(m: np.ndarray, r: int) -> int:
    """``Σ_i m_i · r^(d − i + 1)`` (i from 1) over GF(2^64), by lane-parallel Horner."""
    d = m.shape[0]
    if d <= 16:
        h = 0
        for v in m.tolist():
            h = _mul_int(h ^ v, r)
        return h
    rows = max(2, math.isqrt(d) // 4)        # few rows: each costs one table product
    lanes = -(-d // rows)
    padded = np.zeros(rows * lanes, dtype=np.uint64)
    padded[rows * lanes - d:] = m
    grid = padded.reshape(rows, lanes)
    tables = _const_tables(_pow_int(r, lanes))
    acc = grid[0].copy()
    for row in grid[1:]:
        acc = _mul_const(acc, tables)
        acc ^= row
    return _poly_eval(acc, r)


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
        h = _poly_eval(m, int(r)) if d else 0
        out += h.to_bytes(8, "big")
    return bytes(out)
