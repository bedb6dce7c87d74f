"""Eavesdroppers as elements on the fibre, acting on the emulated photons.

Every attack sits at Alice's output (the strongest place for Eve), sees each
non-empty pulse as (photon number, basis, bit) and returns the pulses it lets
through, possibly changed. Each records what Eve learned (:class:`EveRecord`).

* :class:`InterceptResend` — Eve measures a fraction of the pulses in a basis of
  her choosing. Measuring a state in its own basis returns its bit; in the
  conjugate basis each photon gives a fair coin (that is the quantum state, not a
  QBER formula), and she squashes multi-photon clicks to one bit. She resends the
  same number of photons prepared in her basis and result, so the click rate is
  unchanged and Bob's errors arise from measuring Eve's state.
* :class:`BeamSplitting` — Eve taps a fraction τ of the light (each photon
  independently); with no τ given she replaces the fibre by a lossless one and
  taps exactly its loss, so Bob sees the usual rate. With a quantum memory she
  learns the bit of every pulse where she kept a photon.
* :class:`PhotonNumberSplitting` — a QND photon-number measurement; from each
  multi-photon pulse Eve keeps one photon (bit learnt after basis announcement)
  and forwards the rest over a lossless line; single photons are blocked with the
  probability that keeps Bob's average click rate equal to the no-Eve rate (and
  multi-photon pulses thinned too if even blocking all single photons is not
  enough). She cannot see the intensity class, so one blocking probability applies
  to all; the decoy estimate notices.

``parse_attack("intercept-resend:0.3")`` builds one from a command-line spec.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from qkdnet.errors import ConfigError
from qkdnet.phy.params import PhyParams
from qkdnet.phy.source import PulseBatch


@dataclass
class EveRecord:
    """What an eavesdropper learned, restricted by the channel to slots Bob detected.

    ``slots`` (uint64, sorted) are the pulses Eve acted on; ``bits`` the bit she holds
    for each; ``known`` whether that bit is certainly Alice's (she measured in, or
    kept a photon for measurement in, Alice's basis). Counters cover every pulse.
    """

    kind: str
    slots: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint64))
    bits: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint8))
    known: np.ndarray = field(default_factory=lambda: np.empty(0, bool))
    pulses_seen: int = 0
    pulses_attacked: int = 0

    def __repr__(self) -> str:  # no bits in reprs
        return (f"EveRecord(kind={self.kind!r}, slots={self.slots.shape[0]}, "
                f"known={int(self.known.sum())}, seen={self.pulses_seen}, "
                f"attacked={self.pulses_attacked})")

    def add(self, slots: np.ndarray, bits: np.ndarray, known: np.ndarray) -> None:
        """Append entries (slots in increasing order after the existing ones)."""
        self.slots = np.concatenate([self.slots, slots.astype(np.uint64)])
        self.bits = np.concatenate([self.bits, bits.astype(np.uint8)])
        self.known = np.concatenate([self.known, known.astype(bool)])

    def restrict(self, slots: np.ndarray) -> None:
        """Keep only the entries whose slot is in ``slots`` (sorted)."""
        if self.slots.size == 0:
            return
        idx = np.searchsorted(slots, self.slots)
        idx[idx >= slots.shape[0]] = 0
        keep = slots[idx] == self.slots if slots.size else np.zeros(self.slots.shape, bool)
        self.slots, self.bits, self.known = self.slots[keep], self.bits[keep], self.known[keep]


class Attack(Protocol):
    """An eavesdropper element on the line."""

    name: str
    #: True if Eve replaces the fibre by a lossless line (the fibre loss is then skipped).
    replaces_fibre: bool

    def configure(self, params: PhyParams, fibre_transmittance: float) -> None:
        """Learn the public link parameters (Eve knows them)."""

    def apply(self, batch: PulseBatch, rng: np.random.Generator,
              record: EveRecord) -> PulseBatch:
        """Act on the pulses; return what goes on towards Bob."""
        ...


class InterceptResend:
    """Intercept-resend on a fraction of pulses; basis strategy random/biased/z/x."""

    name = "intercept-resend"
    replaces_fibre = False

    def __init__(self, fraction: float = 1.0, strategy: str = "random") -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ConfigError(f"{fraction!r}", source="attack", key="fraction",
                              expected="a fraction in [0, 1]")
        if strategy not in ("random", "biased", "z", "x"):
            raise ConfigError(f"unknown basis strategy {strategy!r}", source="attack",
                              key="strategy", expected="random, biased, z or x")
        self.fraction = fraction
        self.strategy = strategy
        self._p_z = 0.5

    def configure(self, params: PhyParams, fibre_transmittance: float) -> None:
        self._p_z = {"random": 0.5, "biased": params.p_z, "z": 1.0, "x": 0.0}[self.strategy]

    def apply(self, batch: PulseBatch, rng: np.random.Generator,
              record: EveRecord) -> PulseBatch:
        n = len(batch)
        record.pulses_seen += n
        hit = np.flatnonzero(rng.random(n) < self.fraction)
        record.pulses_attacked += hit.size
        eve_basis = (rng.random(hit.size) >= self._p_z).astype(np.uint8)
        same = eve_basis == batch.basis[hit]
        # Conjugate-basis measurement of a BB84 state: each outcome is a fair coin.
        coin = rng.integers(0, 2, size=hit.size, dtype=np.uint8)
        eve_bit = np.where(same, batch.bit[hit], coin).astype(np.uint8)
        record.add(batch.slots[hit], eve_bit, same)
        basis = batch.basis.copy()
        bit = batch.bit.copy()
        basis[hit] = eve_basis
        bit[hit] = eve_bit
        return PulseBatch(batch.start_slot, batch.n_slots, batch.slots, batch.photons,
                          basis, bit, batch.transmittance)


class BeamSplitting:
    """Tap a fraction τ of the light; ``tap=None``: replace the fibre, tap its loss."""

    name = "beam-splitting"

    def __init__(self, tap: float | None = None) -> None:
        if tap is not None and not 0.0 <= tap < 1.0:
            raise ConfigError(f"{tap!r}", source="attack", key="tap",
                              expected="a fraction in [0, 1)")
        self.tap = tap
        self.replaces_fibre = tap is None
        self._tau = 0.0 if tap is None else tap

    def configure(self, params: PhyParams, fibre_transmittance: float) -> None:
        if self.tap is None:
            self._tau = 1.0 - fibre_transmittance

    def apply(self, batch: PulseBatch, rng: np.random.Generator,
              record: EveRecord) -> PulseBatch:
        n = len(batch)
        record.pulses_seen += n
        tapped = rng.binomial(batch.photons, self._tau)
        got = tapped > 0
        record.pulses_attacked += int(got.sum())
        record.add(batch.slots[got], batch.bit[got], np.ones(int(got.sum()), bool))
        rest = (batch.photons - tapped).astype(np.uint8)
        t = batch.transmittance * (1.0 - self._tau) if self.tap is not None \
            else batch.transmittance
        return batch.select(rest > 0, photons=rest, transmittance=t)


def _multi_photon_pass_yield(mu: float, eta_b: float, nmax: int = 80) -> float:
    """Σ_{n≥2} P_μ(n) · (1 − (1 − η_B)^(n−1)): click probability of PNS-forwarded pulses."""
    n = np.arange(2, nmax)
    logp = -mu + n * np.log(mu) - np.cumsum(np.log(np.arange(1, nmax)))[n - 1] \
        if mu > 0 else np.full(n.shape, -np.inf)
    return float(np.sum(np.exp(logp) * (1.0 - (1.0 - eta_b) ** (n - 1))))


class PhotonNumberSplitting:
    """PNS: keep one photon of each multi-photon pulse, block singles to hold the rate."""

    name = "photon-number-splitting"
    replaces_fibre = True

    def __init__(self) -> None:
        self.block_single = 0.0
        self.pass_multi = 1.0

    def configure(self, params: PhyParams, fibre_transmittance: float) -> None:
        eta_b = params.eta_bob
        eta = fibre_transmittance * eta_b
        target = single = multi = 0.0
        for mu, p in zip(params.mu, params.p_mu, strict=True):
            target += p * -np.expm1(-mu * eta)
            single += p * mu * np.exp(-mu) * eta_b
            multi += p * _multi_photon_pass_yield(mu, eta_b)
        if multi >= target:
            self.block_single, self.pass_multi = 1.0, target / multi if multi else 0.0
        else:
            self.block_single = float(np.clip(1.0 - (target - multi) / single, 0.0, 1.0))
            self.pass_multi = 1.0

    def apply(self, batch: PulseBatch, rng: np.random.Generator,
              record: EveRecord) -> PulseBatch:
        n = len(batch)
        record.pulses_seen += n
        multi = batch.photons >= 2
        u = rng.random(n)
        keep = np.where(multi, u < self.pass_multi, u >= self.block_single)
        record.pulses_attacked += int(multi.sum()) + int((~multi & ~keep).sum())
        split = multi & keep
        record.add(batch.slots[split], batch.bit[split], np.ones(int(split.sum()), bool))
        photons = np.where(split, batch.photons - 1, batch.photons).astype(np.uint8)
        return batch.select(keep, photons=photons)


def pns_threshold_km(params: PhyParams) -> float:
    """Shortest fibre from which PNS can keep Bob's click rate with multi-photon pulses
    alone (all single photons blocked): Σ_k p_k (1 − e^(−μ_k η)) ≤ Σ_k p_k
    Σ_{n≥2} P_μk(n)(1 − (1 − η_B)^(n−1)). Beyond it the decoy estimate of Y1 collapses;
    before it Eve must let single photons through and the gains per intensity change.
    """
    eta_b = params.eta_bob
    multi = sum(p * _multi_photon_pass_yield(mu, eta_b)
                for mu, p in zip(params.mu, params.p_mu, strict=True))

    def excess(km: float) -> float:
        eta = params.fibre_transmittance(km) * eta_b
        return sum(p * -np.expm1(-mu * eta)
                   for mu, p in zip(params.mu, params.p_mu, strict=True)) - multi

    if excess(0.0) <= 0:
        return 0.0
    lo, hi = 0.0, 1.0
    while excess(hi) > 0:
        lo, hi = hi, hi * 2
        if hi > 1e5:
            return math.inf
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if excess(mid) > 0 else (lo, mid)
    return hi


def parse_attack(spec: str | None) -> Attack | None:
    """Build an attack from ``NAME[:ARG[:ARG]]``.

    ``intercept-resend[:FRACTION[:random|biased|z|x]]``, ``beam-splitting[:TAP]``,
    ``pns`` / ``photon-number-splitting``, ``none``.
    """
    if spec is None or spec in ("", "none"):
        return None
    name, *args = spec.split(":")
    try:
        if name in ("intercept-resend", "ir"):
            frac = float(args[0]) if args else 1.0
            return InterceptResend(frac, args[1] if len(args) > 1 else "random")
        if name in ("beam-splitting", "bs"):
            return BeamSplitting(float(args[0]) if args else None)
        if name in ("pns", "photon-number-splitting") and not args:
            return PhotonNumberSplitting()
    except ValueError:
        raise ConfigError(f"bad number in {spec!r}", source="attack", key="attack",
                          expected="e.g. intercept-resend:0.3") from None
    raise ConfigError(f"unknown attack {spec!r}", source="attack", key="attack",
                      expected="intercept-resend[:F[:random|biased|z|x]], "
                               "beam-splitting[:TAP], pns or none")
