"""Privacy amplification: Toeplitz hashing computed by FFT.

The ``n_out × n_in`` Toeplitz matrix is fixed by ``n_in + n_out − 1`` public random
seed bits ``s``: ``T[i, j] = s[i − j + n_in − 1]``. Toeplitz matrices with a uniform
seed form a 2-universal family, which is what the leftover hash lemma needs.

Theory of operation
-------------------
``y_i = Σ_j s[i − j + n_in − 1] x_j`` is the linear convolution ``(s ∗ x)`` read at
indices ``n_in − 1 … n_in + n_out − 2``; a circular convolution of any size
``N >= n_in + n_out − 1`` gives those entries without wrap-around. It is computed with
real FFTs in float64 and reduced mod 2. Exactness: each output is an integer count of
at most ``min(n_in, CHUNK)`` ones, far inside 2^53, and the FFT round-off for inputs of
0/1 grows only like ε·√N·log N; inputs longer than ``CHUNK`` bits are split into column
chunks (each a smaller Toeplitz product, results XOR-ed), and every result is checked
to lie within 0.25 of an integer, raising if not (REFERENCES.md: "FFT in float64 is
exact for 0/1 convolutions only while sums stay well inside 2^53: split long inputs
or verify"; Sci. Rep. 2019 "High-speed and large-scale privacy amplification" for the
FFT approach).

Large products are blocked: one FFT of ~1.3M points runs out of cache and costs ~4×
more per point than FFTs of ~1.4e5 points. With a block length ``B`` (~7e4), the
input is cut into ``Q`` chunks and the output into ``R`` blocks; block (r, k) of T
is a ``B × B`` Toeplitz matrix that depends only on the diagonal ``r − k``, so there
are ``Q + R − 1`` distinct seed segments (each ``2B`` seed bits, read through one
strided view). Each chunk and segment is transformed once with a ``2B``-point real
FFT, ``Y_r = Σ_k S_{r−k} · X_k`` is summed in the frequency domain, and one inverse
FFT per output block gives the counts at offsets ``B − 1 … 2B − 2`` (a ``2B``
circular convolution of a ``B``-chunk with a ``2B − 1`` segment has no wrap-around
there). The integer check applies to every output as before.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from qkdnet.link.bits import as_packed, unpack

__all__ = ["CHUNK", "toeplitz_hash", "toeplitz_hash_direct"]

#: Largest number of input bits handled by one convolution.
CHUNK = 1 << 22
#: Products with ``n_in + n_out − 1`` up to this size use one FFT; larger ones are blocked.
_SMALL = 1 << 17
#: Target block length of the blocked product (2B-point FFTs stay in cache).
_BLOCK = 70_000
_MIN_BLOCK = 1 << 13


def _fast_len(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n with a >= 8 (real FFTs of such sizes are fast in
    pocketfft; odd sizes like 3^4·5^6 are ~3× slower than a nearby even one)."""
    best = 1 << max(8, (n - 1).bit_length())
    p35 = 1
    while p35 < best:
        p5 = p35
        while p5 < best:
            p = p5 << 8
            while p < n:
                p *= 2
            best = min(best, p)
            p5 *= 5
        p35 *= 3
    return best


def _conv_rows(x: np.ndarray, s: np.ndarray, n_out: int) -> np.ndarray:
    """Integer counts y_i = Σ_j s[i − j + len(x) − 1] x_j for i < n_out (float64 FFT)."""
    m = x.shape[0]
    small = m + n_out - 1 <= _SMALL
    y = _conv_single(x, s, n_out) if small else _conv_blocked(x, s, n_out)
    r = np.rint(y)
    if y.size and float(np.max(np.abs(y - r))) > 0.25:
        raise ArithmeticError("FFT Toeplitz product lost integer exactness")
    return r.astype(np.int64)


def _conv_single(x: np.ndarray, s: np.ndarray, n_out: int) -> np.ndarray:
    """One circular convolution of size >= len(x) + n_out − 1 (small products)."""
    m = x.shape[0]
    size = _fast_len(m + n_out - 1)
    fx = np.fft.rfft(x.astype(np.float64), size)
    fx *= np.fft.rfft(s.astype(np.float64), size)
    return np.fft.irfft(fx, size)[m - 1:m - 1 + n_out]


def _block_len(n_out: int) -> int:
    """Block length B for :func:`_conv_blocked`: about ``_BLOCK`` and ``R·B`` just above
    ``n_out`` (R output blocks), so little of the last output block is wasted."""
    r = -(-n_out // _BLOCK)
    return _fast_len(max(-(-n_out // r), _MIN_BLOCK))


def _conv_blocked(x: np.ndarray, s: np.ndarray, n_out: int) -> np.ndarray:
    """The Toeplitz product cut into B × B Toeplitz blocks, convolved in the frequency
    domain with FFTs of size 2B (see the module docstring)."""
    m = x.shape[0]
    b = _block_len(n_out)
    q, r = -(-m // b), -(-n_out // b)        # input chunks, output blocks
    d = q + r - 1                            # distinct block diagonals
    xf = np.zeros(q * b)                     # the only float copy of x
    xf[:m] = x
    fx = np.fft.rfft(xf.reshape(q, b), 2 * b, axis=1)
    del xf
    # seed, shifted so that diagonal t (= output block − input chunk + q − 1) reads
    # sp[t·b : t·b + 2b]; zeros outside the seed only meet padding or dropped outputs
    sp = np.zeros((d + 1) * b)
    off = q * b - m
    sp[off:off + s.shape[0]] = s
    seg = as_strided(sp, (d, 2 * b), (b * sp.itemsize, sp.itemsize), writeable=False)
    fs = np.fft.rfft(seg, axis=1)
    del sp, seg
    acc = np.empty((r, b + 1), dtype=np.complex128)
    tmp = np.empty_like(acc)
    np.multiply(fs[q - 1:q - 1 + r], fx[0], out=acc)
    for k in range(1, q):                    # acc[i] += fs[i − k + q − 1] · fx[k]
        np.multiply(fs[q - 1 - k:q - 1 - k + r], fx[k], out=tmp)
        acc += tmp
    del fs, fx, tmp
    return np.fft.irfft(acc, 2 * b, axis=1)[:, b - 1:2 * b - 1].reshape(-1)[:n_out]


def toeplitz_hash(bits_packed: bytes | np.ndarray, n_in: int, n_out: int,
                  seed_bits_packed: bytes | np.ndarray) -> np.ndarray:
    """``T · x`` over GF(2), packed; ``seed_bits_packed`` holds ``n_in + n_out − 1`` bits."""
    if n_out < 0 or n_in < 1:
        raise ValueError("need n_in >= 1 and n_out >= 0")
    if n_out == 0:
        return np.zeros(0, dtype=np.uint8)
    x = unpack(bits_packed, n_in)
    s = unpack(seed_bits_packed, n_in + n_out - 1)
    acc = np.zeros(n_out, dtype=np.int64)
    # column chunk [c0, c1) of T is Toeplitz with seed s[n_in - c1 : n_in - c0 + n_out - 1]
    for c0 in range(0, n_in, CHUNK):
        c1 = min(c0 + CHUNK, n_in)
        acc += _conv_rows(x[c0:c1], s[n_in - c1:n_in - c0 + n_out - 1], n_out)
    return np.packbits((acc & 1).astype(np.uint8))


def toeplitz_hash_direct(bits_packed: bytes | np.ndarray, n_in: int, n_out: int,
                         seed_bits_packed: bytes | np.ndarray) -> np.ndarray:
    """Reference: build T explicitly and multiply mod 2 (small inputs only; for tests)."""
    x = unpack(bits_packed, n_in).astype(np.int64)
    s = unpack(as_packed(seed_bits_packed), n_in + n_out - 1).astype(np.int64)
    i = np.arange(n_out)[:, None]
    j = np.arange(n_in)[None, :]
    t = s[i - j + n_in - 1]
    return np.packbits(((t @ x) & 1).astype(np.uint8))
