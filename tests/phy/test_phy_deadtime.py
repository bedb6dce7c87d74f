"""The common dead time removes the basis- and history-dependence of Bob's detection.

With a dead time per detector and passive basis choice, Bob's chance to register a
photon depends on which detectors are dead, i.e. on his basis and his last outcome:
the detector-efficiency mismatch that Weier et al., NJP 13, 073024 (2011) exploit,
and that Lim et al., PRA 89, 022307 (2014) (Sec. V: detection independent of the
basis) and Rusca et al., APL 112, 171104 (2018) assume away. With a dead time common
to all four detectors (``dead_time_mode="common"``, the default) every detector is
live or dead together, so these probabilities must not depend on Bob's basis, bit or
previous outcome. The same tests must fail on the per-detector emulation of the same
link (snspd-metro at 10 km, where detectors are dead most of the time): that is the
check that they can fail.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from qkdnet.phy import presets
from qkdnet.phy.channel import QuantumChannel
from qkdnet.phy.params import PhyParams
from qkdnet.phy.source import AliceSource

ALPHA = 1e-4       # per test; a handful of tests per mode


def chi2_p(table: np.ndarray) -> float:
    """p-value of a chi-square homogeneity test (rows × columns), Wilson–Hilferty."""
    table = table[:, table.sum(axis=0) > 0].astype(np.float64)
    table = table[table.sum(axis=1) > 0]
    if min(table.shape) < 2:
        return 1.0
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0) / table.sum()
    x = float(((table - expected) ** 2 / expected).sum())
    k = (table.shape[0] - 1) * (table.shape[1] - 1)
    z = ((x / k) ** (1 / 3) - (1 - 2 / (9 * k))) / math.sqrt(2 / (9 * k))
    return 0.5 * math.erfc(z / math.sqrt(2))


def dependence_stats(params: PhyParams, km: float, n_slots: int, seed: int = 1
                     ) -> dict[str, float]:
    """p-values (small = dependence found) and diagnostics of one emulated run."""
    src = AliceSource(params, seed)
    det = QuantumChannel(params, km, seed=seed + 1).run(src, 0, n_slots)
    s = det.slots.astype(np.int64)
    b, v = det.basis.astype(np.int64), det.bit.astype(np.int64)
    out: dict[str, float] = {"clicks": float(s.size)}
    # 1. Bob's basis given the previous click's basis (2 x 2).
    t1 = np.zeros((2, 2), dtype=np.int64)
    np.add.at(t1, (b[:-1], b[1:]), 1)
    out["basis_vs_previous"] = chi2_p(t1)
    # 2. Share of Z among clicks against the beam splitter's q_z (photon clicks
    # keep q_z through squashing; dark counts, negligible here, are 1/2).
    frac_z = float((b == 0).mean())
    sd = math.sqrt(params.q_z * (1 - params.q_z) / s.size)
    out["z_share"] = frac_z
    out["z_share_p"] = math.erfc(abs(frac_z - params.q_z) / sd / math.sqrt(2))
    # 3. P(click | Alice's basis and bit, Bob's previous outcome): for each previous
    # outcome, the click rate must not depend on the state Alice sent.
    gates = np.arange(int(s[0]) + 1, n_slots, dtype=np.int64)
    prev = np.searchsorted(s, gates, side="left") - 1          # last click before g
    clicked = np.zeros(gates.size, dtype=bool)
    clicked[np.searchsorted(gates, s[1:])] = True
    a = src.lookup(gates.astype(np.uint64))
    alice = a.basis.astype(np.int64) * 2 + a.bit
    bob_prev = b[prev] * 2 + v[prev]
    worst = 1.0
    for cls in range(4):
        sel = bob_prev == cls
        n = np.bincount(alice[sel], minlength=4)
        c = np.bincount(alice[sel], weights=clicked[sel], minlength=4).astype(np.int64)
        worst = min(worst, chi2_p(np.vstack([c, n - c])))
    out["click_vs_alice_given_previous"] = min(1.0, 4 * worst)   # Bonferroni over 4
    # Diagnostic: share of gates the detectors of each basis are live (non-paralysable:
    # every registered click costs d gates of its own detector, or of all four).
    d = params.dead_gates
    for basis, name in ((0, "z"), (1, "x")):
        own = float((b == basis).sum()) / 2 if params.dead_time_mode == "per-detector" \
            else float(s.size)
        out[f"live_{name}"] = 1.0 - d * own / n_slots
    return out


METRO = presets.get("snspd-metro")


def test_common_dead_time_hides_basis_and_history() -> None:
    p = METRO
    assert p.dead_time_mode == "common" and p.dead_gates == 25
    res = dependence_stats(p, 10.0, 2_000_000)
    assert res["clicks"] > 40_000
    for key in ("basis_vs_previous", "z_share_p", "click_vs_alice_given_previous"):
        assert res[key] > ALPHA, (key, res)


def test_the_same_test_catches_per_detector_dead_time() -> None:
    p = METRO.with_overrides(dead_time_mode="per-detector")
    res = dependence_stats(p, 10.0, 2_000_000)
    for key in ("basis_vs_previous", "z_share_p", "click_vs_alice_given_previous"):
        assert res[key] < ALPHA, (key, res)
    # The audit's figures: Z detectors live ~45 % of the gates, X ~70 %.
    assert res["live_z"] < 0.5 < 0.65 < res["live_x"], res


@pytest.mark.parametrize("name", [n for n in presets.names()
                                  if presets.get(n).dead_gates > 0])
def test_every_preset_with_dead_time_uses_the_common_mode(name: str) -> None:
    assert presets.get(name).dead_time_mode == "common"
