"""The PLOB repeaterless bound (Pirandola et al., Nat. Commun. 8, 15043, 2017).

Checked against hand-computed values of −log2(1 − η) and against the physics it
bounds: no decoy-state key rate the theory module predicts may exceed it.
"""

from __future__ import annotations

import math

import numpy as np

from qkdnet.phy import presets, theory


def test_plob_matches_minus_log2_one_minus_transmittance() -> None:
    params = presets.get("lim2014-apd")  # 0.2 dB/km, no insertion loss
    # 100 km at 0.2 dB/km: η = 10^-2, so −log2(0.99) = 0.0144996...
    assert math.isclose(float(theory.plob(params, 100.0)), -math.log2(0.99), rel_tol=1e-12)
    # 15 km: 3 dB, η = 10^-0.3 ≈ 0.501187
    eta = 10 ** -0.3
    assert math.isclose(float(theory.plob(params, 15.0)), -math.log2(1 - eta), rel_tol=1e-12)


def test_plob_falls_by_alpha_per_km_at_long_distance() -> None:
    # For small η, −log2(1 − η) ≈ η / ln 2, so 10 km more costs 2 dB (a factor 10^-0.2).
    params = presets.get("lim2014-apd")
    ratio = float(theory.plob(params, 310.0) / theory.plob(params, 300.0))
    assert math.isclose(ratio, 10 ** -0.2, rel_tol=1e-6)


def test_no_preset_key_rate_exceeds_plob() -> None:
    km = np.arange(0.0, 300.0, 5.0)
    for name in presets.names():
        params = presets.get(name)
        rate = np.nan_to_num(theory.key_rate(params, km), nan=0.0)
        assert np.all(rate <= theory.plob(params, km)), name
        assert np.any(rate > 0), f"{name}: no positive key rate at any distance"
