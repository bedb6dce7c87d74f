"""Emulated gains and error rates against theory.

* Every preset AS SHIPPED (dead time common to the four detectors, afterpulses, dark
  counts per detector, squashing), at four distances including 0 km where the
  detectors saturate: the emulation agrees with the full renewal model of
  :mod:`qkdnet.phy.theory` within 4 sigma, per intensity and per basis.
* With dead time and afterpulsing switched off, the emulation also agrees with the
  first-order formulas of Ma, Qi, Zhao, Lo, PRA 72, 012326 (2005).
"""

from __future__ import annotations

import numpy as np
import pytest

from qkdnet.phy import presets, theory
from qkdnet.phy.channel import Detections, QuantumChannel
from qkdnet.phy.estimate import IntensityStats, measure
from qkdnet.phy.params import PhyParams
from qkdnet.phy.source import AliceSource

DISTANCES = {
    "gys2004": (0.0, 25.0, 50.0, 100.0),
    "lim2014-apd": (0.0, 40.0, 80.0, 120.0),
    "rusca2018-snspd": (0.0, 50.0, 100.0, 200.0),
    "snspd-metro": (0.0, 10.0, 50.0, 150.0),
    "ull-longhaul": (0.0, 100.0, 200.0, 350.0),
}


def _run(p: PhyParams, km: float, target_clicks: float = 1.5e5, seed: int = 11
         ) -> tuple[AliceSource, Detections, IntensityStats]:
    q, _ = theory.gains(p, km)
    n_slots = int(min(target_clicks / float(np.dot(p.p_mu, q[:, 0])), 4e9))
    src = AliceSource(p, seed=seed)
    det = QuantumChannel(p, km, seed=seed + 1).run(src, 0, n_slots)
    return src, det, measure(src, det)


def _check_intensities(name: str, km: float, p: PhyParams, st: IntensityStats,
                       q: np.ndarray, e: np.ndarray) -> None:
    for k in range(3):
        if p.p_mu[k] == 0:
            assert st.clicks[k] == 0
            continue
        sd_q = np.sqrt(q[k] * (1 - q[k]) / st.sent[k])
        assert abs(st.gains[k] - q[k]) < 4 * sd_q, (name, km, k, st.gains[k], q[k])
        if st.sifted[k] >= 20:
            sd_e = np.sqrt(e[k] * (1 - e[k]) / st.sifted[k])
            assert abs(st.qber[k] - e[k]) < 4 * sd_e, (name, km, k, st.qber[k], e[k])


@pytest.mark.parametrize("name", presets.names())
def test_emulation_matches_the_full_model_on_every_preset_as_shipped(name: str) -> None:
    p = presets.get(name)                   # no overrides: dead time, afterpulses on
    assert len(DISTANCES[name]) >= 4 and DISTANCES[name][0] == 0.0
    for km in DISTANCES[name]:
        src, det, st = _run(p, km)
        q, e = theory.gains(p, km)
        _check_intensities(name, km, p, st, q[:, 0], e[:, 0])
        # Per basis, as the link sifts: Alice and Bob both in basis b.
        bs = theory.basis_stats(p, km)
        a = src.lookup(det.slots)
        for b, p_b in ((0, p.p_z), (1, 1 - p.p_z)):
            both = (a.basis == b) & (det.basis == b)
            for k in range(3):
                if p.p_mu[k] == 0:
                    continue
                n_sent = det.n_slots * p.p_mu[k] * p_b
                n_k = int(np.count_nonzero(both & (a.intensity == k)))
                g = bs.gain[k, b, 0]
                sd = np.sqrt(g * (1 - g) / n_sent)
                assert abs(n_k / n_sent - g) < 4 * sd, (name, km, "basis", b, k, n_k / n_sent, g)


def test_full_model_has_power_against_a_wrong_dead_time() -> None:
    """The comparison rejects the model of a dead time one gate longer (snspd-metro,
    10 km), and the first-order formulas are far off where detectors saturate."""
    p = presets.get("snspd-metro")
    _, _, st = _run(p, 10.0)
    q_wrong, _ = theory.gains(p.with_overrides(dead_time_s=p.dead_time_s + 0.4e-9), 10.0)
    assert p.with_overrides(dead_time_s=p.dead_time_s + 0.4e-9).dead_gates == p.dead_gates + 1
    sd = np.sqrt(q_wrong[0, 0] / st.sent[0])
    assert abs(st.gains[0] - q_wrong[0, 0]) > 4 * sd
    q_ma, _ = theory.gains_ma2005(p, 10.0)
    assert abs(st.gains[0] - q_ma[0, 0]) > 100 * sd


def test_full_model_reduces_to_closed_forms() -> None:
    """No afterpulses: Q_k = c_k / (1 + d c) (non-paralysable renewal); no dead time and
    no afterpulses: Ma et al.'s gain exactly, and their error rate to first order."""
    p = presets.get("snspd-metro")
    km = np.array([0.0, 10.0, 80.0])
    q, _ = theory.gains(p, km)
    q_ma, e_ma = theory.gains_ma2005(p, km)       # c_k without dead time
    c = np.asarray(p.p_mu) @ q_ma
    assert np.allclose(q, q_ma / (1 + p.dead_gates * c), rtol=1e-10)
    assert np.allclose(theory.live_fraction(p, km), 1 / (1 + p.dead_gates * c), rtol=1e-10)
    free = p.with_overrides(dead_time_s=0.0)
    q0, e0 = theory.gains(free, km)
    assert np.allclose(q0, q_ma, rtol=1e-12)
    assert np.allclose(e0, e_ma, rtol=1e-2)     # multi-photon squashing at 0 km


# --- Ma et al. 2005, first order, dead time and afterpulsing off ---------------------

MA_DISTANCES = {
    "gys2004": (0.0, 50.0, 100.0),
    "lim2014-apd": (0.0, 60.0, 120.0),
    "rusca2018-snspd": (0.0, 100.0, 200.0),
    "snspd-metro": (0.0, 50.0, 150.0),
    "ull-longhaul": (0.0, 200.0, 350.0),
}


@pytest.mark.parametrize("name", presets.names())
def test_ma2005_formulas_without_dead_time_or_afterpulses(name: str) -> None:
    p = presets.get(name).with_overrides(p_afterpulse=0.0, dead_time_s=0.0)
    for km in MA_DISTANCES[name]:
        _, _, st = _run(p, km)
        q, e = theory.gains_ma2005(p, km)
        _check_intensities(name, km, p, st, q[:, 0], e[:, 0])


def test_ma2005_check_has_power() -> None:
    """The same comparison rejects a channel whose loss is off by 0.3 dB."""
    p = presets.get("gys2004")
    _, _, st = _run(p, 50.0)
    q, _ = theory.gains_ma2005(p.with_overrides(insertion_loss_db=0.3), 50.0)
    sd = np.sqrt(q[0, 0] / st.sent[0])
    assert abs(st.gains[0] - q[0, 0]) > 4 * sd


def test_decoy_estimate_from_emulation_tracks_theory() -> None:
    p = presets.get("gys2004")
    _, _, st = _run(p, 50.0, target_clicks=1e6)
    est = st.decoy()
    q, e = theory.gains(p, 50.0)
    assert est.key_rate[0] == pytest.approx(theory.decoy_bounds(p, q, e).key_rate[0], rel=0.15)
    assert est.y1_lower[0] == pytest.approx(theory.yield_n(p, 50.0, 1)[0], rel=0.15)


@pytest.mark.parametrize("name", presets.names())
def test_infinite_decoy_rate_is_never_below_the_decoy_bound(name: str) -> None:
    """Exact Y1 and e1 (with the biased-basis sifting weights: key from Z-Z, phase
    error from X-X) can only beat their decoy bounds, so the infinite-decoy cutoff is
    never below the decoy cutoff. (The previous formula, without the sifting weights,
    put lim2014-apd's infinite-decoy cutoff at 175 km, below the decoy one, 177 km.)"""
    p = presets.get(name)
    km = np.arange(0.0, 501.0, 1.0)
    decoy = theory.key_rate(p, km)
    exact = theory.key_rate_infinite_decoy(p, km)
    assert np.all(exact >= decoy * (1 - 1e-12))
    assert decoy[0] > 0
    cut_decoy = km[np.flatnonzero(decoy > 0)[-1]]
    cut_exact = km[np.flatnonzero(exact > 0)[-1]]
    assert cut_exact >= cut_decoy
