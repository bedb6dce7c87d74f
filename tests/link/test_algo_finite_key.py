"""Finite-key bounds (link/finite_key.py) against figures and findings of the papers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qkdnet.link.finite_key import (
    ChannelModel,
    DecoyStats,
    FiniteKeyParams,
    binary_entropy,
    expected_stats,
    key_length_one_decoy,
    key_length_two_decoy,
    optimise_key_rate,
)

# Grid used for the paper reproductions: coarse, but wide enough to contain the small-block
# optimum (small blocks want many decoys and p_z near 1/2).
GRID = {
    "mu1": np.linspace(0.2, 1.0, 9), "mu2": np.linspace(0.02, 0.4, 12),
    "p1": np.linspace(0.05, 0.9, 10), "p2": np.linspace(0.05, 0.7, 8),
    "pz": [0.5, 0.6, 0.8, 0.95], "mu3": [0.0],
}
# Lim 2014 Sec. IV: mu3 fixed at 2e-4, q_x (our p_z) optimised freely. For n_X = 1e4 at long
# distance the optimum chooses the key basis rarely (p_z ~ 0.05-0.3) and sends the signal
# rarely (p1 ~ 0.05), so the grid must reach below 0.5 in p_z.
GRID_LIM = {**GRID, "pz": [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 0.95], "mu3": [2e-4]}


def _max_km(model: ChannelModel, n: float, kms: range, grid: dict = GRID, **kw: object) -> int:
    last = -1
    for km in kms:
        rate, _ = optimise_key_rate(model, km, n, grid=grid, **kw)  # type: ignore[arg-type]
        if rate > 0:
            last = km
    return last


def test_lim2014_small_block_reach_with_the_papers_epsilon_convention() -> None:
    # Lim et al. 2014, Sec. IV and Fig. 1: with n_X = 1e4 key-basis detections "keys can
    # still be distributed over a fiber length of 135 km", model WITH afterpulses
    # (eta_Bob 10 %, p_dc 6e-7, p_ap 4 %, e_mis 0.5 %, 0.2 dB/km, f 1.16, eps_cor 1e-15,
    # mu3 = 2e-4; q_x, p_mu1, p_mu2, mu1, mu2 optimised). The paper fixes the secrecy per
    # key bit, eps_sec = kappa * l with kappa = 1e-15; with that convention and this
    # module's coarse optimiser grid the last distance with a positive key, on a 1 km
    # grid, is exactly 128 km (rate ~1e-9 per pulse, p_z 0.05): 7 km short of the
    # paper's figure, which came from a finer optimisation over all five parameters.
    # A fixed eps_sec = 1e-10 (weaker than kappa * l, about 1e-13 for the ~100-bit keys
    # at that distance) reaches 134 km; that is not the paper's convention.
    km_kappa = _max_km(ChannelModel(), 1e4, range(124, 133), grid=GRID_LIM,
                       eps_sec_per_bit=1e-15)
    assert km_kappa == 128
    km_fixed = _max_km(ChannelModel(), 1e4, range(130, 138, 2), grid=GRID_LIM)
    assert km_fixed == 134


def test_lim2014_reach_grows_with_block_size_and_shrinks_with_afterpulses() -> None:
    with_ap = ChannelModel()
    km_1e4 = _max_km(with_ap, 1e4, range(90, 175, 10), grid=GRID_LIM)
    assert 120 <= km_1e4 <= 135
    km_1e6 = _max_km(with_ap, 1e6, range(130, 230, 10), grid=GRID_LIM)
    assert km_1e6 > km_1e4 + 30


def test_rusca2018_one_decoy_beats_two_for_practical_blocks() -> None:
    # Rusca et al. 2018: for blocks up to 1e8 the one-decoy protocol gives a higher
    # secret key rate than the two-decoy protocol (their parameters: detector 50 %?,
    # p_dc 1e-8, e_d 1 %, eps_sec 1e-9, eps_cor 1e-15).
    model = ChannelModel(eta_bob=0.5, p_dc=1e-8, p_ap=0.0, e_mis=0.01)
    params = FiniteKeyParams(eps_sec=1e-9, eps_cor=1e-15)
    for n in (1e5, 1e7):
        r1, _ = optimise_key_rate(model, 100, n, grid=GRID, params=params, decoys=1)
        r2, _ = optimise_key_rate(model, 100, n, grid=GRID, params=params, decoys=2)
        assert r2 > 0
        assert r1 > r2


def test_asymptotic_limit_approaches_decoy_rate() -> None:
    # Huge block: the finite-key rate approaches the asymptotic decoy-state rate
    # (Ma et al. 2005 / GLLP) computed from the true single-photon yield and error.
    model = ChannelModel(p_ap=0.0)
    km, mu, p, pz = 50.0, (0.5, 0.1, 0.0), (0.8, 0.15, 0.05), 0.9
    n_pulses = 1e16
    st, _ = expected_stats(model, km, n_pulses, mu, p, pz)
    assert st is not None
    leak = model.f_ec * st.n_key * float(binary_entropy(st.qber_key))
    res = key_length_two_decoy(st, leak)
    eta = model.eta_bob * 10 ** (-model.alpha_db_km * km / 10)
    y0 = 2 * model.p_dc
    y1 = y0 + eta - y0 * eta
    e1 = (0.5 * y0 + model.e_mis * eta) / y1
    q1 = sum(pk * mk * math.exp(-mk) for mk, pk in zip(mu, p, strict=True)) * y1
    q0 = sum(pk * math.exp(-mk) for mk, pk in zip(mu, p, strict=True)) * y0
    asym = n_pulses * pz**2 * (q0 + q1 * (1 - float(binary_entropy(e1)))) - leak
    assert res.ell > 0
    assert res.ell <= asym * 1.001
    assert res.ell > 0.9 * asym
    true_s1 = n_pulses * pz**2 * q1
    assert res.s1_lower <= true_s1 * 1.0001
    assert res.s1_lower > 0.9 * true_s1


def test_more_errors_and_more_leakage_shorten_the_key() -> None:
    model = ChannelModel()
    st, _ = expected_stats(model, 25.0, 1e10, (0.5, 0.1, 2e-4), (0.7, 0.2, 0.1), 0.8)
    assert st is not None
    base = key_length_two_decoy(st, 1e5)
    assert base.ell > 0 and base.abort_reason is None
    assert key_length_two_decoy(st, 2e5).ell < base.ell
    noisy = DecoyStats(st.n_z, st.m_z, st.n_x, tuple(m * 3 for m in st.m_x), st.mu, st.p)
    assert key_length_two_decoy(noisy, 1e5).ell < base.ell
    # stricter secrecy costs bits
    assert key_length_two_decoy(st, 1e5, FiniteKeyParams(eps_sec=1e-20)).ell < base.ell


def test_intercept_resend_level_errors_abort() -> None:
    model = ChannelModel()
    st, _ = expected_stats(model, 25.0, 1e10, (0.5, 0.1, 2e-4), (0.7, 0.2, 0.1), 0.8)
    assert st is not None
    bad = DecoyStats(st.n_z, tuple(n * 0.25 for n in st.n_z), st.n_x,
                     tuple(n * 0.25 for n in st.n_x), st.mu, st.p)
    for fn in (key_length_two_decoy, key_length_one_decoy):
        res = fn(bad, 1.1 * bad.n_key * float(binary_entropy(0.25)))
        assert res.ell == 0
        assert res.abort_reason is not None


def test_one_decoy_uses_only_two_intensities() -> None:
    model = ChannelModel()
    st, _ = expected_stats(model, 25.0, 1e10, (0.5, 0.1), (0.7, 0.3), 0.8)
    assert st is not None
    res = key_length_one_decoy(st, 1e5)
    assert res.ell > 0 and res.method == "rusca2018-one-decoy"
    with pytest.raises(ValueError):
        key_length_two_decoy(st, 1e5)


def test_rejects_inconsistent_input() -> None:
    with pytest.raises(ValueError):
        DecoyStats((10, 10, 10), (11, 0, 0), (10, 10, 10), (0, 0, 0), (0.5, 0.1, 0),
                   (0.7, 0.2, 0.1))
    with pytest.raises(ValueError):
        DecoyStats((10, 10), (0, 0, 0), (10, 10, 10), (0, 0, 0), (0.5, 0.1, 0), (0.7, 0.2, 0.1))
    st = DecoyStats((10, 10, 10), (0, 0, 0), (10, 10, 10), (0, 0, 0), (0.1, 0.5, 0),
                    (0.7, 0.2, 0.1))
    with pytest.raises(ValueError):
        key_length_two_decoy(st, 0.0)


def test_one_decoy_vacuum_upper_bound_includes_both_hoeffding_terms() -> None:
    # Rusca 2018: s0 <= 2 [tau0 (e^mu2/p2)(m_mu2 + delta(m)) + delta(n)], prefactor applied once.
    st = DecoyStats((6000.0, 4000.0), (60.0, 80.0), (3000.0, 2000.0), (40.0, 50.0),
                    (0.5, 0.1), (0.7, 0.3))
    eps = 1e-9
    res = key_length_one_decoy(st, 0.0, FiniteKeyParams(eps_sec=eps))
    (m1, m2), (p1, p2) = st.mu, st.p
    t0 = p1 * math.exp(-m1) + p2 * math.exp(-m2)
    t1 = p1 * math.exp(-m1) * m1 + p2 * math.exp(-m2) * m2

    def d(x: float) -> float:
        return math.sqrt(x / 2 * math.log(19 / eps))

    n = sum(st.n_z)
    s0_up = 2 * (t0 * math.exp(m2) / p2 * (st.m_z[1] + d(sum(st.m_z))) + d(n))
    nm2 = math.exp(m2) / p2 * (st.n_z[1] - d(n))
    np1 = math.exp(m1) / p1 * (st.n_z[0] + d(n))
    s1 = t1 * m1 / (m2 * (m1 - m2)) * (
        nm2 - m2**2 / m1**2 * np1 - (m1**2 - m2**2) / m1**2 * s0_up / t0)
    assert math.isclose(res.s1_lower, s1, rel_tol=1e-12)
    assert res.s1_lower > 0
