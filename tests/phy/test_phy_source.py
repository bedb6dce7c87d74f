"""Alice's counter-based source and the fused-loss emission."""

from __future__ import annotations

import math

import numpy as np

from qkdnet.phy import presets
from qkdnet.phy.source import AliceSource, bernoulli_positions, truncated_poisson


def test_lookup_is_a_pure_function_of_seed_and_slot() -> None:
    p = presets.get("lim2014-apd")
    a, b = AliceSource(p, 7), AliceSource(p, 7)
    slots = np.arange(10_000, 20_000, dtype=np.uint64)
    perm = np.random.default_rng(0).permutation(slots)
    x, y = a.lookup(slots), b.lookup(perm)
    order = np.argsort(perm)
    for field in ("basis", "bit", "intensity"):
        assert np.array_equal(getattr(x, field), getattr(y, field)[order])
    other = AliceSource(p, 8).lookup(slots)
    assert not np.array_equal(x.bit, other.bit)


def test_choice_frequencies_and_independence() -> None:
    p = presets.get("lim2014-apd")            # p_z 0.7, p_mu (0.5, 0.3, 0.2)
    n = 2_000_000
    c = AliceSource(p, 3).lookup(np.arange(n, dtype=np.uint64))
    assert abs((c.basis == 0).mean() - p.p_z) < 4 * math.sqrt(0.16 / n)
    assert abs(c.bit.mean() - 0.5) < 4 * math.sqrt(0.25 / n)
    freq = np.bincount(c.intensity, minlength=3) / n
    for k in range(3):
        assert abs(freq[k] - p.p_mu[k]) < 4 * math.sqrt(p.p_mu[k] / n)
    # The bit fields are independent: the bit is balanced within each basis/intensity.
    for k in range(3):
        sel = (c.intensity == k) & (c.basis == 1)
        assert abs(c.bit[sel].mean() - 0.5) < 4 * math.sqrt(0.25 / sel.sum())


def test_emission_matches_per_slot_poisson() -> None:
    p = presets.get("gys2004")
    t = 0.3
    n = 1_000_000
    src = AliceSource(p, 5)
    batch = src.emit(0, n, transmittance=t)
    k = src.lookup(batch.slots).intensity
    for i, mu in enumerate(p.mu):
        lam = mu * t
        expect = n * p.p_mu[i] * -math.expm1(-lam)
        got = int((k == i).sum())
        assert abs(got - expect) < 4 * math.sqrt(expect) + 1
        if i == 0:
            counts = np.bincount(batch.photons[k == 0], minlength=4)[1:4]
            pk = np.array([math.exp(-lam) * lam**j / math.factorial(j) for j in (1, 2, 3)])
            pk /= -math.expm1(-lam)
            chi2 = float(((counts - pk * got) ** 2 / (pk * got))[pk * got > 5].sum())
            assert chi2 < 20
    assert np.all(np.diff(batch.slots.astype(np.int64)) > 0)
    assert batch.basis.tolist() == src.lookup(batch.slots).basis.tolist()


def test_bernoulli_positions_and_truncated_poisson() -> None:
    rng = np.random.default_rng(1)
    pos = bernoulli_positions(rng, 0.01, 10_000_000)
    assert abs(pos.size - 1e5) < 4 * math.sqrt(1e5)
    assert pos.min() >= 0 and pos.max() < 10_000_000
    assert np.all(np.diff(pos) > 0)
    x = truncated_poisson(rng, np.full(200_000, 2.0))
    assert x.min() >= 1
    assert abs(x.mean() - 2.0 / -math.expm1(-2.0)) < 0.01
