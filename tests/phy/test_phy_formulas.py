"""The emulated gains and error rates agree with Ma et al. (2005) within 4 sigma."""

from __future__ import annotations

import numpy as np
import pytest

from qkdnet.phy import presets, theory
from qkdnet.phy.channel import QuantumChannel
from qkdnet.phy.estimate import measure
from qkdnet.phy.source import AliceSource

DISTANCES = {
    "gys2004": (0.0, 50.0, 100.0),
    "lim2014-apd": (0.0, 60.0, 120.0),
    "rusca2018-snspd": (0.0, 100.0, 200.0),
    "snspd-metro": (0.0, 50.0, 150.0),
    "ull-longhaul": (0.0, 200.0, 350.0),
}


def _run(name: str, km: float, target_clicks: float = 1.5e5):
    p = presets.get(name).with_overrides(p_afterpulse=0.0, dead_time_s=0.0)
    q, _ = theory.gains(p, km)
    n_slots = int(min(target_clicks / q[0, 0], 4e9))
    src = AliceSource(p, seed=11)
    det = QuantumChannel(p, km, seed=12).run(src, 0, n_slots)
    return p, measure(src, det)


@pytest.mark.parametrize("name", presets.names())
def test_gains_and_errors_within_4_sigma(name: str) -> None:
    for km in DISTANCES[name]:
        p, st = _run(name, km)
        q, e = theory.gains(p, km)
        q, e = q[:, 0], e[:, 0]
        for k in range(3):
            if p.p_mu[k] == 0:
                assert st.clicks[k] == 0
                continue
            sd_q = np.sqrt(q[k] * (1 - q[k]) / st.sent[k])
            assert abs(st.gains[k] - q[k]) < 4 * sd_q, (name, km, k, st.gains[k], q[k])
            if st.sifted[k] >= 20:
                sd_e = np.sqrt(e[k] * (1 - e[k]) / st.sifted[k])
                assert abs(st.qber[k] - e[k]) < 4 * sd_e, (name, km, k, st.qber[k], e[k])


def test_formula_check_has_power() -> None:
    """The same comparison rejects a channel whose loss is off by 0.3 dB."""
    p, st = _run("gys2004", 50.0)
    q, _ = theory.gains(p.with_overrides(insertion_loss_db=0.3), 50.0)
    sd = np.sqrt(q[0, 0] / st.sent[0])
    assert abs(st.gains[0] - q[0, 0]) > 4 * sd


def test_decoy_estimate_from_emulation_tracks_theory() -> None:
    p, st = _run("gys2004", 50.0, target_clicks=1e6)
    est = st.decoy()
    r_theory = theory.key_rate(p, 50.0)[0]
    assert est.key_rate[0] == pytest.approx(r_theory, rel=0.15)
    assert est.y1_lower[0] == pytest.approx(theory.yield_n(p, 50.0, 1)[0], rel=0.15)
