"""Slow per-pulse reference model of the same physics as :mod:`qkdnet.phy.channel`.

It walks every slot in order and does what the hardware does, with no skipping
and no fusing: draw the pulse's photon number from Poisson(μ_k), let an optional
intercept-resend Eve measure and resend it, keep each photon with the line's
transmittance, route each to an arm of Bob's passive beam splitter and measure
it, add each detector's dark count and pending afterpulse, then apply the dead
time in time order — common to all four detectors (``dead_time_mode="common"``:
a gate with any candidate click registers all of them if it lies more than d gates
after the last registered gate) or per detector — draw each registered click's
afterpulse, and squash multi-clicks. It exists to be compared
with the fast model (tests/phy, chi-square and KS tests) and as the baseline of
bench/phy; it is far too slow for real runs (a Python loop over slots).
"""

from __future__ import annotations

import numpy as np

from qkdnet.errors import ConfigError
from qkdnet.phy.attacks import EveRecord, InterceptResend
from qkdnet.phy.channel import Detections
from qkdnet.phy.params import N_DETECTORS, PhyParams
from qkdnet.phy.source import AliceSource

_NEVER = -(2**62)


class ReferenceChannel:
    """Per-pulse model: ``ReferenceChannel(params, km, attack=None, seed=0).run(...)``.

    Supports no attack or :class:`InterceptResend` (at Alice's output).
    """

    def __init__(self, params: PhyParams, km: float,
                 attack: InterceptResend | None = None, seed: int = 0) -> None:
        if attack is not None and not isinstance(attack, InterceptResend):
            raise ConfigError("the reference model only emulates intercept-resend",
                              source="parameters", key="attack")
        self.params = params
        self.km = km
        self.attack = attack
        if attack is not None:
            attack.configure(params, params.fibre_transmittance(km))
        self.eta = params.eta_total(km)
        self.rng = np.random.default_rng(seed)
        self.last = [_NEVER] * N_DETECTORS
        self.common_last = _NEVER
        self.pending: list[set[int]] = [set() for _ in range(N_DETECTORS)]

    def run(self, source: AliceSource, start_slot: int, n_slots: int) -> Detections:
        """Emulate every slot of ``[start_slot, start_slot + n_slots)`` one by one."""
        p, rng = self.params, self.rng
        d = p.dead_gates
        common = p.dead_time_mode == "common"
        choice = source.lookup(np.arange(start_slot, start_slot + n_slots, dtype=np.uint64))
        mu = np.asarray(p.mu)
        record = EveRecord(self.attack.name) if self.attack else None
        eve_p_z = {"random": 0.5, "biased": p.p_z, "z": 1.0, "x": 0.0}[
            self.attack.strategy] if self.attack else 0.5
        out_s: list[int] = []
        out_b: list[int] = []
        out_v: list[int] = []
        for i in range(n_slots):
            slot = start_slot + i
            basis, bit = int(choice.basis[i]), int(choice.bit[i])
            n = int(rng.poisson(mu[choice.intensity[i]]))
            if n and self.attack is not None and rng.random() < self.attack.fraction:
                eb = 0 if rng.random() < eve_p_z else 1
                ev = bit if eb == basis else int(rng.integers(0, 2))
                assert record is not None
                record.add(np.array([slot]), np.array([ev]), np.array([eb == basis]))
                basis, bit = eb, ev          # Eve resends n photons in her state
            candidates = [False] * N_DETECTORS
            for _ in range(n):
                if rng.random() >= self.eta:
                    continue
                arm = 0 if rng.random() < p.q_z else 1
                # Own basis: the state's bit, flipped by misalignment; else a fair coin.
                out = (bit ^ int(rng.random() < p.e_mis) if arm == basis
                       else int(rng.integers(0, 2)))
                candidates[arm * 2 + out] = True
            clicked = 0
            for k in range(N_DETECTORS):
                if rng.random() < p.p_dark:
                    candidates[k] = True
                if slot in self.pending[k]:
                    self.pending[k].discard(slot)
                    candidates[k] = True
            if common:
                # One dead time for all four: any candidate in a live gate registers
                # every detector with a candidate; in a dead gate all are lost.
                if any(candidates) and slot > self.common_last + d:
                    self.common_last = slot
                    clicked = sum(1 << k for k in range(N_DETECTORS) if candidates[k])
            else:
                for k in range(N_DETECTORS):
                    if candidates[k] and slot > self.last[k] + d:
                        self.last[k] = slot
                        clicked |= 1 << k
            for k in range(N_DETECTORS):
                if clicked >> k & 1 and rng.random() < p.p_afterpulse:
                    self.pending[k].add(slot + d + 1)
            if not clicked:
                continue
            z, x = clicked & 3, clicked & 12
            arm = int(rng.integers(0, 2)) if (z and x) else (1 if x else 0)
            sub = (clicked >> (2 * arm)) & 3
            out_bit = int(rng.integers(0, 2)) if sub == 3 else sub >> 1
            out_s.append(slot)
            out_b.append(arm)
            out_v.append(out_bit)
        if record is not None:
            record.restrict(np.asarray(out_s, dtype=np.uint64))
        return Detections(np.asarray(out_s, dtype=np.uint64), np.asarray(out_b, np.uint8),
                          np.asarray(out_v, np.uint8), record, start_slot, n_slots)
