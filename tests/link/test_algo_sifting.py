"""Sifting and counting (link/sifting.py) on a simulated block."""

from __future__ import annotations

import numpy as np
import pytest

from qkdnet.link.finite_key import key_length_two_decoy
from qkdnet.link.sifting import decoy_stats, per_intensity, sift, split_bases


def test_sift_split_and_count_match_a_direct_count() -> None:
    rng = np.random.default_rng(0)
    n = 200_000
    a_basis = (rng.random(n) < 0.2).astype(np.uint8)      # 80 % Z
    b_basis = (rng.random(n) < 0.2).astype(np.uint8)
    inten = rng.choice(3, n, p=[0.7, 0.2, 0.1]).astype(np.uint8)
    a_bit = rng.integers(0, 2, n, dtype=np.uint8)
    b_bit = a_bit ^ (rng.random(n) < 0.03).astype(np.uint8)
    keep = sift(a_basis, b_basis)
    idx = split_bases(keep, b_basis)
    assert idx.z.shape[0] + idx.x.shape[0] == int(keep.sum())
    assert (a_basis[idx.z] == 0).all() and (b_basis[idx.x] == 1).all()
    st = decoy_stats(inten[idx.z], inten[idx.x], a_bit[idx.x], b_bit[idx.x],
                     (0.5, 0.1, 0.0002), (0.7, 0.2, 0.1),
                     z_error_mask=a_bit[idx.z] != b_bit[idx.z])
    for k in range(3):
        zk = (keep & (a_basis == 0) & (inten == k))
        xk = (keep & (a_basis == 1) & (inten == k))
        assert st.n_z[k] == zk.sum() and st.n_x[k] == xk.sum()
        assert st.m_z[k] == (zk & (a_bit != b_bit)).sum()
        assert st.m_x[k] == (xk & (a_bit != b_bit)).sum()
    assert 0.025 < st.qber_est < 0.035
    # the stats feed the finite-key bound directly
    assert key_length_two_decoy(st, 0.0).s1_lower >= 0


def test_bad_shapes_and_intensities_raise() -> None:
    with pytest.raises(ValueError):
        sift(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError):
        per_intensity(np.array([0, 3]), 3)
    with pytest.raises(ValueError):
        decoy_stats(np.zeros(2, np.uint8), np.zeros(2, np.uint8), np.zeros(2), np.zeros(3),
                    (0.5, 0.1, 0.0), (0.7, 0.2, 0.1))
