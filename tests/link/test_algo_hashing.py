"""Verification hash (link/verify.py), Toeplitz privacy amplification (link/privacy.py)
and packed-bit helpers (link/bits.py)."""

from __future__ import annotations

import numpy as np
import pytest

from qkdnet.link import privacy
from qkdnet.link.bits import expand_seed, hamming_distance, pack, unpack
from qkdnet.link.privacy import toeplitz_hash, toeplitz_hash_direct
from qkdnet.link.verify import collision_bound, gf64_mul, tag_bits_for, verification_tag


def _clmul_mod(a: int, b: int) -> int:
    """Reference GF(2^64) product, bit by bit (modulus x^64 + x^4 + x^3 + x + 1)."""
    r = 0
    for i in range(64):
        if (a >> i) & 1:
            r ^= b << i
    for i in range(127, 63, -1):
        if (r >> i) & 1:
            r ^= (1 << i) ^ (0x1B << (i - 64))
    return r


def test_gf64_mul_matches_reference() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2**64 - 1, 40, dtype=np.uint64, endpoint=True)
    b = rng.integers(0, 2**64 - 1, 40, dtype=np.uint64, endpoint=True)
    got = gf64_mul(a, b)
    for g, x, y in zip(got, a, b, strict=True):
        assert int(g) == _clmul_mod(int(x), int(y))


def test_tag_detects_any_single_bit_change_and_depends_on_seed() -> None:
    rng = np.random.default_rng(1)
    n = 5_003
    key = rng.integers(0, 2, n, dtype=np.uint8)
    tb = tag_bits_for(1e-15, n)
    base = verification_tag(pack(key), b"seed-1", tb, n)
    assert len(base) * 8 == tb
    assert verification_tag(pack(key).tobytes(), b"seed-1", tb, n) == base
    assert verification_tag(pack(key), b"seed-2", tb, n) != base
    for pos in rng.choice(n, 50, replace=False):
        other = key.copy()
        other[pos] ^= 1
        assert verification_tag(pack(other), b"seed-1", tb, n) != base


def test_tag_bits_follow_eps_cor_and_length() -> None:
    assert tag_bits_for(1e-15, 10_000) == 64
    assert tag_bits_for(1e-15, 10**6) == 64
    assert tag_bits_for(1e-15, 10**8) == 128
    assert tag_bits_for(1e-30, 10_000) == 128
    for n in (10**4, 10**6, 10**8):
        assert collision_bound(n, tag_bits_for(1e-15, n)) <= 1e-15
    with pytest.raises(ValueError):
        verification_tag(b"\x00" * 8, b"s", 50)


@pytest.mark.parametrize("n_in,n_out", [(1, 1), (8, 3), (100, 37), (999, 998), (513, 1),
                                        (64, 200)])
def test_toeplitz_fft_matches_matrix_product(n_in: int, n_out: int) -> None:
    rng = np.random.default_rng(n_in * 1000 + n_out)
    x = pack(rng.integers(0, 2, n_in))
    s = pack(rng.integers(0, 2, n_in + n_out - 1))
    assert np.array_equal(toeplitz_hash(x, n_in, n_out, s), toeplitz_hash_direct(x, n_in, n_out, s))


def test_toeplitz_chunked_path_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(privacy, "CHUNK", 64)
    rng = np.random.default_rng(5)
    for n_in, n_out in ((1_000, 700), (300, 17)):
        x = pack(rng.integers(0, 2, n_in))
        s = pack(rng.integers(0, 2, n_in + n_out - 1))
        assert np.array_equal(toeplitz_hash(x, n_in, n_out, s),
                              toeplitz_hash_direct(x, n_in, n_out, s))


def test_toeplitz_large_input_is_linear() -> None:
    # T(x ^ y) = T x ^ T y holds exactly only if every FFT output rounded correctly.
    rng = np.random.default_rng(6)
    n_in, n_out = 300_000, 120_000
    x = pack(rng.integers(0, 2, n_in))
    y = pack(rng.integers(0, 2, n_in))
    s = expand_seed(b"pa-seed", n_in + n_out - 1)
    lhs = toeplitz_hash(x ^ y, n_in, n_out, s)
    rhs = toeplitz_hash(x, n_in, n_out, s) ^ toeplitz_hash(y, n_in, n_out, s)
    assert np.array_equal(lhs, rhs)
    assert 0.45 < unpack(lhs, n_out).mean() < 0.55


def test_bits_helpers() -> None:
    rng = np.random.default_rng(7)
    a = rng.integers(0, 2, 1_001, dtype=np.uint8)
    b = a.copy()
    b[[0, 500, 1_000]] ^= 1
    assert hamming_distance(pack(a), pack(b), 1_001) == 3
    assert hamming_distance(pack(a), pack(b), 1_000) == 2
    s1, s2 = expand_seed(b"x", 1_001), expand_seed(b"x", 1_001, label=b"other")
    assert s1.shape == (126,) and not np.array_equal(s1, s2)
    assert int(s1[-1]) & 0x7F == 0
    with pytest.raises(ValueError):
        unpack(b"\x00", 9)
