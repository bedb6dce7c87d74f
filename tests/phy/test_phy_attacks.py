"""Eavesdroppers leave the fingerprints they leave on real hardware."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qkdnet.errors import ConfigError
from qkdnet.phy import presets, theory
from qkdnet.phy.attacks import PhotonNumberSplitting, parse_attack, pns_threshold_km
from qkdnet.phy.channel import QuantumChannel
from qkdnet.phy.estimate import measure
from qkdnet.phy.source import AliceSource

# Rusca's SNSPD link without dead time, e_mis 0: every error comes from Eve or darks.
CLEAN = presets.get("rusca2018-snspd").with_overrides(dead_time_s=0.0, e_mis=0.0)


def _qber(src: AliceSource, det) -> tuple[float, int]:
    a = src.lookup(det.slots)
    sift = a.basis == det.basis
    return float((a.bit[sift] != det.bit[sift]).mean()), int(sift.sum())


def test_full_intercept_resend_gives_25_percent() -> None:
    src = AliceSource(CLEAN, 1)
    det = QuantumChannel(CLEAN, 0.0, attack="intercept-resend:1.0", seed=2).run(src, 0, 400_000)
    qber, n = _qber(src, det)
    assert n > 30_000
    assert abs(qber - 0.25) < 0.01
    eve = det.eve
    assert eve is not None and eve.slots.size == len(det)       # every pulse was attacked
    a = src.lookup(eve.slots)
    # Where Eve measured in Alice's basis she holds Alice's bit; about half the time.
    assert np.array_equal(eve.bits[eve.known], a.bit[eve.known])
    assert abs(eve.known.mean() - 0.5) < 0.02
    assert abs((eve.bits[~eve.known] == a.bit[~eve.known]).mean() - 0.5) < 0.02


@pytest.mark.parametrize("name", presets.names())
def test_full_intercept_resend_qber_is_a_quarter_plus_half_the_misalignment(name: str) -> None:
    """Every preset as shipped, 10 km, Eve on every pulse (random basis): on clicks of
    Eve's photons the sifted QBER is 1/4 + e_mis/2 (Eve's basis right half the time:
    error e_mis; wrong: a fair coin). Dark counts and afterpulses err half the time
    and multi-photon squashing shifts it slightly; the full model includes them, and
    where they are negligible (every preset but lim2014-apd, 4 % afterpulses) the
    emulation is within 4 sigma of 1/4 + e_mis/2 itself."""
    p = presets.get(name)
    km = 10.0
    q_th, e_th = theory.intercept_resend(p, km)
    n = int(3e5 / float(np.dot(p.p_mu, q_th[:, 0])))
    src = AliceSource(p, 21)
    det = QuantumChannel(p, km, attack="intercept-resend:1.0", seed=22).run(src, 0, n)
    st = measure(src, det)
    assert st.sifted[0] > 50_000
    e_sig = float(e_th[0, 0])
    sd = math.sqrt(e_sig * (1 - e_sig) / st.sifted[0])
    assert abs(st.qber[0] - e_sig) < 4 * sd, (name, st.qber[0], e_sig, sd)
    textbook = 0.25 + p.e_mis / 2
    if p.p_afterpulse == 0:
        assert abs(e_sig - textbook) < 1e-4
        assert abs(st.qber[0] - textbook) < 4 * sd, (name, st.qber[0], textbook)
    else:
        # Afterpulse clicks (a share f of the clicks) err half the time.
        assert e_sig > textbook + 4 * sd
        assert abs(st.qber[0] - textbook) > 4 * sd


def test_intercept_resend_test_has_power() -> None:
    """A misalignment of 2 % instead of 1 % is told apart by the same statistics."""
    p = presets.get("snspd-metro")
    _, e_th = theory.intercept_resend(p.with_overrides(e_mis=0.02), 10.0)
    q_th, _ = theory.intercept_resend(p, 10.0)
    n = int(6e5 / float(np.dot(p.p_mu, q_th[:, 0])))
    src = AliceSource(p, 21)
    st = measure(src, QuantumChannel(p, 10.0, attack="intercept-resend:1.0",
                                     seed=22).run(src, 0, n))
    sd = math.sqrt(0.25 * 0.75 / st.sifted[0])
    assert abs(st.qber[0] - e_th[0, 0]) > 4 * sd


@pytest.mark.parametrize(("name", "below", "above"),
                         [("gys2004", 15.0, 55.0), ("snspd-metro", 20.0, 60.0)])
def test_pns_on_both_sides_of_its_threshold(name: str, below: float, above: float) -> None:
    """PNS (Eve keeps one photon of every multi-photon pulse, blocks single photons to
    keep Bob's click rate). Beyond the distance where multi-photon pulses alone can
    carry Bob's click rate she blocks every single photon: the click rate is unchanged,
    the decoy estimate of Y1 collapses and the key goes to 0. Before it she must let
    single photons through: the total click rate is kept but the gains per intensity
    change, the decoy bound stays below the single-photon yield she leaves, and the
    key shrinks but stays positive (and secure)."""
    p = presets.get(name)
    threshold = pns_threshold_km(p)
    assert below < threshold < above
    for km, beyond in ((below, False), (above, True)):
        q, _ = theory.gains(p, km)
        n = int(3e5 / float(np.dot(p.p_mu, q[:, 0])))
        src = AliceSource(p, 9)
        plain = QuantumChannel(p, km, seed=10).run(src, 0, n)
        pns = QuantumChannel(p, km, attack="pns", seed=11).run(src, 0, n)
        eve = PhotonNumberSplitting()
        eve.configure(p, p.fibre_transmittance(km))
        assert (eve.block_single == 1.0) == beyond
        assert abs(len(pns) - len(plain)) < 4 * math.sqrt(len(plain) + len(pns))
        s_plain, s_pns = measure(src, plain), measure(src, pns)
        e_plain, e_pns = s_plain.decoy(), s_pns.decoy()
        assert e_plain.key_rate[0] > 0
        z = (s_pns.gains[:2] - s_plain.gains[:2]) / np.sqrt(
            (s_pns.gains[:2] + s_plain.gains[:2]) / s_pns.sent[:2])
        assert np.max(np.abs(z)) > 5                     # the gains betray her
        if beyond:
            assert e_pns.y1_lower[0] < 0.1 * e_plain.y1_lower[0]
            assert e_pns.key_rate[0] == 0.0
        else:
            y1_left = (1.0 - eve.block_single) * p.eta_bob    # what she lets through
            assert e_pns.y1_lower[0] <= y1_left
            assert 0 < e_pns.key_rate[0] < e_plain.key_rate[0]


def test_partial_intercept_resend_and_no_attack_qber() -> None:
    p = presets.get("lim2014-apd").with_overrides(p_afterpulse=0.0)
    src = AliceSource(p, 3)
    det = QuantumChannel(p, 20.0, seed=4).run(src, 0, 4_000_000)
    st = measure(src, det)
    _, e = theory.gains(p, 20.0)
    sd = math.sqrt(e[0, 0] * (1 - e[0, 0]) / st.sifted[0])
    assert abs(st.qber[0] - e[0, 0]) < 4 * sd      # the preset's QBER without Eve
    det30 = QuantumChannel(p, 20.0, attack="intercept-resend:0.3", seed=5).run(src, 0, 4_000_000)
    qber, n = _qber(src, det30)
    expect = 0.3 * (0.25 + 0.5 * p.e_mis) + 0.7 * e[0, 0]
    assert abs(qber - expect) < 4 * math.sqrt(expect * (1 - expect) / n)
    assert det30.eve is not None
    assert abs(det30.eve.slots.size / len(det30) - 0.3) < 0.02


def test_beam_splitting_keeps_rate_and_qber_and_learns_bits() -> None:
    p = CLEAN.with_overrides(e_mis=0.01)
    src = AliceSource(p, 6)
    plain = QuantumChannel(p, 50.0, seed=7).run(src, 0, 2_000_000)
    tapped = QuantumChannel(p, 50.0, attack="beam-splitting", seed=8).run(src, 0, 2_000_000)
    assert abs(len(tapped) - len(plain)) < 4 * math.sqrt(len(plain) + len(tapped))
    q_plain, n1 = _qber(src, plain)
    q_tap, n2 = _qber(src, tapped)
    assert abs(q_plain - q_tap) < 4 * math.sqrt(0.01 / n1 + 0.01 / n2)
    eve = tapped.eve
    assert eve is not None and eve.slots.size > 0 and eve.known.all()
    assert np.array_equal(eve.bits, src.lookup(eve.slots).bit)
    # Eve holds a photon of a detected pulse iff the pulse had ≥ 2 photons at Alice,
    # of which one went her way: a few percent of the detections at mu ~ 0.5.
    assert 0.05 < eve.slots.size / len(tapped) < 0.4


def test_pns_keeps_click_rate_but_kills_the_decoy_estimate() -> None:
    p = CLEAN.with_overrides(e_mis=0.01)
    km, n = 100.0, 20_000_000
    src = AliceSource(p, 9)
    plain = QuantumChannel(p, km, seed=10).run(src, 0, n)
    pns = QuantumChannel(p, km, attack="pns", seed=11).run(src, 0, n)
    # The click rate stays as without Eve.
    assert abs(len(pns) - len(plain)) < 4 * math.sqrt(len(plain) + len(pns))
    est_plain = measure(src, plain).decoy()
    est_pns = measure(src, pns).decoy()
    y1_true = theory.yield_n(p, km, 1)[0]
    assert est_plain.y1_lower[0] == pytest.approx(y1_true, rel=0.25)
    assert est_plain.key_rate[0] > 0
    # ... while the single-photon yield estimate collapses and so does the key.
    assert est_pns.y1_lower[0] < 0.2 * y1_true
    assert est_pns.key_rate[0] == 0.0
    eve = pns.eve
    assert eve is not None and eve.known.all()
    assert np.array_equal(eve.bits, src.lookup(eve.slots).bit)
    # Eve learnt the bit of (almost) every detection: single photons are blocked.
    assert eve.slots.size / len(pns) > 0.9


def test_pns_blocking_probability() -> None:
    p = CLEAN
    short, far = PhotonNumberSplitting(), PhotonNumberSplitting()
    short.configure(p, p.fibre_transmittance(5.0))
    far.configure(p, p.fibre_transmittance(100.0))
    assert 0.0 <= short.block_single < far.block_single <= 1.0


@pytest.mark.parametrize("spec", ["teleport", "intercept-resend:x", "intercept-resend:2",
                                  "intercept-resend:0.5:diagonal", "beam-splitting:1.5"])
def test_bad_attack_specs(spec: str) -> None:
    with pytest.raises(ConfigError):
        parse_attack(spec)
