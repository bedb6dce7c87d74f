"""Pinned transcripts of the link algorithms: optimisations must not change results.

The figures below were recorded from the implementation before the speed work of
issue 5 (commit 96ac457). For fixed seeds, Cascade must disclose exactly the same
number of parities in the same number of round trips, flip the same bits, cancel
the same searches and, strongest of all, exchange byte-identical requests and
answers (hashed transcript). Privacy amplification and the verification tag are
pinned the same way on inputs too long for the explicit-matrix reference.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from qkdnet.link import privacy
from qkdnet.link.bits import expand_seed, pack
from qkdnet.link.cascade import CascadeCorrector, CascadePlan, CascadeResponder
from qkdnet.link.privacy import toeplitz_hash
from qkdnet.link.verify import verification_tag


def _keys(n: int, qber: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    alice = rng.integers(0, 2, n, dtype=np.uint8)
    bob = alice.copy()
    bob[rng.choice(n, round(qber * n), replace=False)] ^= 1
    return alice, bob


# n, QBER, seed, max_ranges -> leaked, requests, steps, flipped, cancelled, transcript
CASCADE_PINS = [
    ((4_097, 0.08, 4, 65536), (1851, 87, 87, 328, 8, "dc6acdd397b255d6")),
    ((30_000, 0.02, 1, 65536), (4525, 186, 186, 600, 12, "5f5cfb27916e1c51")),
    ((30_000, 0.05, 2, 100), (9163, 256, 200, 1500, 33, "54558fc41acd606c")),
    ((100_000, 0.02, 3, 65536), (14894, 139, 139, 2000, 50, "0de1c51c3b75dcd8")),
    ((100_000, 0.01, 5, 65536), (8531, 320, 320, 1000, 23, "d4dfda5c9c04fe78")),
    ((1_000_000, 0.02, 7, 65536), (147780, 213, 213, 20000, 427, "dec79febac0672ca")),
]


@pytest.mark.parametrize("case,pinned", CASCADE_PINS)
def test_cascade_transcript_is_pinned(case: tuple[int, float, int, int],
                                      pinned: tuple[int, int, int, int, int, str]) -> None:
    n, qber, seed, max_ranges = case
    alice, bob = _keys(n, qber, seed)
    corr = CascadeCorrector(np.packbits(bob), n, CascadePlan(n, qber, seed),
                            max_ranges=max_ranges)
    resp = CascadeResponder(np.packbits(alice), n, CascadePlan(n, qber, seed))
    h = hashlib.sha256()
    requests = 0
    while (req := corr.next_request()) is not None:
        requests += 1
        for arr in (req.passes, req.starts, req.ends):
            h.update(np.ascontiguousarray(arr, dtype=np.int64).tobytes())
        ans = resp.answer(req)
        h.update(ans.tobytes())
        corr.receive(ans)
    assert np.array_equal(corr.corrected_bits(), alice)
    got = (corr.leaked_bits, requests, corr.steps, corr.bits_flipped,
           corr.cancelled_searches, h.hexdigest()[:16])
    assert got == pinned


@pytest.mark.parametrize("n_in,n_out,digest", [
    (300_000, 120_000, "d14720a15e027447"),
    (1_000_003, 431_017, "f19d333e384fc190"),
    (5_000, 4_999, "07245f36907dbbe5"),
])
def test_toeplitz_output_is_pinned(n_in: int, n_out: int, digest: str) -> None:
    rng = np.random.default_rng(n_in)
    x = pack(rng.integers(0, 2, n_in))
    s = expand_seed(b"pin", n_in + n_out - 1)
    out = toeplitz_hash(x, n_in, n_out, s)
    assert hashlib.sha256(out.tobytes()).hexdigest()[:16] == digest


def test_toeplitz_chunked_output_is_pinned(monkeypatch: pytest.MonkeyPatch) -> None:
    # the same product computed in many column chunks must give the same bits
    monkeypatch.setattr(privacy, "CHUNK", 1 << 16)
    rng = np.random.default_rng(300_000)
    x = pack(rng.integers(0, 2, 300_000))
    s = expand_seed(b"pin", 300_000 + 120_000 - 1)
    out = toeplitz_hash(x, 300_000, 120_000, s)
    assert hashlib.sha256(out.tobytes()).hexdigest()[:16] == "d14720a15e027447"


def test_verification_tag_is_pinned() -> None:
    rng = np.random.default_rng(9)
    x = pack(rng.integers(0, 2, 1_000_001))
    assert verification_tag(x, b"v", 128, 1_000_001).hex() == "666e57fd507841278a69f56901a268fb"


@pytest.mark.parametrize("n_in,n_out", [(3_001, 1_500), (2_000, 1), (700, 2_600), (4_096, 4_096),
                                        (1, 900), (257, 255)])
def test_toeplitz_blocked_path_matches_matrix_product(monkeypatch: pytest.MonkeyPatch,
                                                       n_in: int, n_out: int) -> None:
    # force the blocked product with tiny blocks: many chunks, diagonals and output blocks
    monkeypatch.setattr(privacy, "_SMALL", 0)
    monkeypatch.setattr(privacy, "_BLOCK", 256)
    monkeypatch.setattr(privacy, "_MIN_BLOCK", 1)
    rng = np.random.default_rng(n_in + 7 * n_out)
    x = pack(rng.integers(0, 2, n_in))
    s = pack(rng.integers(0, 2, n_in + n_out - 1))
    assert np.array_equal(toeplitz_hash(x, n_in, n_out, s),
                          privacy.toeplitz_hash_direct(x, n_in, n_out, s))
