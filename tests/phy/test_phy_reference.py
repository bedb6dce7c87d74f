"""The fast model and the per-pulse reference model give the same distributions.

Two-sample chi-square (homogeneity) and Kolmogorov–Smirnov tests on small runs,
with dead time and afterpulsing switched on (exaggerated where the preset's
values would leave too few events to see them in a short run), for both dead-time
modes: common to the four detectors (the default) and per detector.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from qkdnet.phy import presets
from qkdnet.phy.attacks import InterceptResend
from qkdnet.phy.channel import Detections, QuantumChannel
from qkdnet.phy.params import PhyParams
from qkdnet.phy.reference import ReferenceChannel
from qkdnet.phy.source import AliceSource

ALPHA = 1e-3      # reject "same distribution" below this p-value


def chi2_pvalue(table: np.ndarray) -> float:
    """p-value of the chi-square homogeneity test on a 2 × k table (Wilson–Hilferty)."""
    table = table[:, table.sum(axis=0) > 0].astype(np.float64)
    if table.shape[1] < 2:
        return 1.0
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0) / table.sum()
    x = float(((table - expected) ** 2 / expected).sum())
    k = table.shape[1] - 1
    z = ((x / k) ** (1 / 3) - (1 - 2 / (9 * k))) / math.sqrt(2 / (9 * k))
    return 0.5 * math.erfc(z / math.sqrt(2))


def ks_pvalue(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample KS p-value (asymptotic Kolmogorov law; conservative for ties)."""
    grid = np.union1d(a, b)
    fa = np.searchsorted(np.sort(a), grid, side="right") / a.size
    fb = np.searchsorted(np.sort(b), grid, side="right") / b.size
    d = float(np.abs(fa - fb).max())
    en = math.sqrt(a.size * b.size / (a.size + b.size))
    lam = (en + 0.12 + 0.11 / en) * d
    j = np.arange(1, 101)
    return float(min(max(2 * np.sum((-1.0) ** (j - 1) * np.exp(-2 * j**2 * lam**2)), 0), 1))


def categories(src: AliceSource, det: Detections) -> np.ndarray:
    """Counts per (intensity, Bob basis, error) cell: 12 cells."""
    a = src.lookup(det.slots)
    err = (a.basis == det.basis) & (a.bit != det.bit)
    cell = a.intensity.astype(np.int64) * 4 + det.basis * 2 + err
    return np.bincount(cell, minlength=12)


def gap_histogram(det: Detections, params: PhyParams, top: int = 30) -> np.ndarray:
    """Gaps between detections, from the shortest possible one (d + 1 with a common
    dead time) up to ``top`` gates beyond it."""
    low = params.dead_gates + 1 if params.dead_time_mode == "common" else 1
    gaps = np.diff(det.slots.astype(np.int64)) - low
    assert gaps.size == 0 or gaps.min() >= 0
    return np.bincount(np.minimum(gaps, top), minlength=top + 1)


def compare(p_fast: PhyParams, p_ref: PhyParams, km: float, n_slots: int,
            attack: str | None = None) -> dict[str, float]:
    src_f, src_r = AliceSource(p_fast, 21), AliceSource(p_ref, 22)
    fast = QuantumChannel(p_fast, km, attack=attack, seed=23).run(src_f, 0, n_slots)
    ref_attack = InterceptResend(1.0) if attack else None
    ref = ReferenceChannel(p_ref, km, attack=ref_attack, seed=24).run(src_r, 0, n_slots)
    n_f, n_r = len(fast), len(ref)
    z_rate = (n_f - n_r) / math.sqrt(n_f + n_r)
    return {
        "rate": math.erfc(abs(z_rate) / math.sqrt(2)),
        "cells": chi2_pvalue(np.vstack([categories(src_f, fast), categories(src_r, ref)])),
        "gaps_chi2": chi2_pvalue(np.vstack([gap_histogram(fast, p_fast),
                                            gap_histogram(ref, p_fast)])),
        "gaps_ks": ks_pvalue(np.diff(fast.slots.astype(np.int64)),
                             np.diff(ref.slots.astype(np.int64))),
        "n": float(min(n_f, n_r)),
    }


MODES = ("common", "per-detector")

# Dead time of 3 gates and 20 % afterpulsing on a 0 km SNSPD link: about one click
# every four gates, so both effects shape the gap distribution strongly.
HEAVY = presets.get("rusca2018-snspd").with_overrides(dead_time_s=3e-9, p_afterpulse=0.2)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("params", "km", "n_slots"), [
    (HEAVY, 0.0, 150_000),
    (presets.get("lim2014-apd").with_overrides(dead_time_s=5e-9), 0.0, 300_000),
    (presets.get("snspd-metro"), 0.0, 200_000),
])
def test_fast_matches_reference(params: PhyParams, km: float, n_slots: int, mode: str) -> None:
    params = params.with_overrides(dead_time_mode=mode)
    res = compare(params, params, km, n_slots)
    assert res["n"] > 5000
    for name in ("rate", "cells", "gaps_chi2", "gaps_ks"):
        assert res[name] > ALPHA, (name, res)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", presets.names())
def test_fast_matches_reference_on_every_preset(name: str, mode: str) -> None:
    """Each preset as published (its own dead time and afterpulsing), at 0 and 30 km."""
    p = presets.get(name).with_overrides(dead_time_mode=mode)
    for km in (0.0, 30.0):
        res = compare(p, p, km, 60_000)
        for test in ("rate", "cells"):
            assert res[test] > ALPHA, (name, km, test, res)


@pytest.mark.parametrize("mode", MODES)
def test_fast_matches_reference_under_intercept_resend(mode: str) -> None:
    p = presets.get("gys2004").with_overrides(dead_time_s=2e-6, p_afterpulse=0.1,
                                              dead_time_mode=mode)
    res = compare(p, p, 0.0, 150_000, attack="intercept-resend:1.0")
    for name in ("rate", "cells"):
        assert res[name] > ALPHA, (name, res)


@pytest.mark.parametrize("mode", MODES)
def test_comparison_detects_a_one_gate_dead_time_error(mode: str) -> None:
    """Power check: the same tests reject a reference with 4 dead gates instead of 3."""
    heavy = HEAVY.with_overrides(dead_time_mode=mode)
    res = compare(heavy, heavy.with_overrides(dead_time_s=4e-9), 0.0, 150_000)
    assert min(res["gaps_chi2"], res["gaps_ks"]) < ALPHA, res


@pytest.mark.parametrize("mode", MODES)
def test_comparison_detects_a_wrong_afterpulse_probability(mode: str) -> None:
    heavy = HEAVY.with_overrides(dead_time_mode=mode)
    res = compare(heavy, heavy.with_overrides(p_afterpulse=0.1), 0.0, 150_000)
    assert min(res["rate"], res["gaps_chi2"]) < ALPHA, res


def test_comparison_tells_the_two_dead_time_modes_apart() -> None:
    """Power check: a common-dead-time reference is rejected against per-detector."""
    res = compare(HEAVY.with_overrides(dead_time_mode="per-detector"), HEAVY, 0.0, 150_000)
    assert min(res["rate"], res["gaps_chi2"], res["gaps_ks"]) < ALPHA, res


def test_renewal_sampler_matches_the_general_path_across_chunks() -> None:
    """The renewal sampler (saturated common dead time) against the general
    emit-and-filter path of the same link, in small chunks so that segment and chunk
    boundaries are crossed often."""
    p = presets.get("snspd-metro")
    n_slots = 3_000_000
    src = AliceSource(p, 31)
    renewal = QuantumChannel(p, 10.0, seed=32)
    general = QuantumChannel(p, 10.0, seed=33)
    assert renewal._renewal is not None
    general._renewal = None
    parts = list(renewal.stream(src, 0, n_slots, chunk_slots=70_001))
    fast = Detections(np.concatenate([x.slots for x in parts]),
                      np.concatenate([x.basis for x in parts]),
                      np.concatenate([x.bit for x in parts]), None, 0, n_slots)
    slow = general.run(src, 0, n_slots)
    assert np.all(np.diff(fast.slots.astype(np.int64)) > p.dead_gates)
    n_f, n_s = len(fast), len(slow)
    assert n_f > 50_000
    assert math.erfc(abs(n_f - n_s) / math.sqrt(n_f + n_s) / math.sqrt(2)) > ALPHA
    assert chi2_pvalue(np.vstack([categories(src, fast), categories(src, slow)])) > ALPHA
    gaps = np.vstack([gap_histogram(fast, p), gap_histogram(slow, p)])
    assert chi2_pvalue(gaps) > ALPHA
    assert ks_pvalue(np.diff(fast.slots.astype(np.int64)),
                     np.diff(slow.slots.astype(np.int64))) > ALPHA
