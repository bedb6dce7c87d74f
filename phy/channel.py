"""Fibre, Bob's detectors and the whole quantum channel (:class:`QuantumChannel`).

Theory of operation
-------------------
A run over a range of slots is streamed in chunks (bounded memory). For each chunk:

1. Alice emits the non-empty pulses (:meth:`AliceSource.emit`). Without an
   eavesdropper the whole line's transmittance η = η_fibre·η_Bob is fused into the
   emission by Poisson thinning, so only pulses with at least one *detected*
   photon are ever drawn. With an eavesdropper, Alice emits at her output (T = 1),
   the attack acts on the photons, then the fibre keeps each photon with
   probability η_fibre (binomial thinning) unless Eve replaced it.
2. :class:`BobDetector` keeps each arriving photon with the remaining efficiency,
   sends it to the Z arm with probability q_z (passive basis choice, per photon),
   and measures it: in its own basis the outcome is the state's bit flipped with
   probability e_mis (misalignment); in the conjugate basis a fair coin. Photon
   outcomes land on four detectors (arm × bit).
3. Dark counts: a Bernoulli(p_dark) process over the 4 × n gates of the chunk,
   drawn by geometric gaps.
4. Dead time and afterpulsing. ``dead_time_mode="common"`` (default,
   :func:`common_dead_time`): a click of any detector (photon, dark count or
   afterpulse) makes all four detectors dead for the next d gates; clicks inside
   the dead window are lost and blind nothing (non-paralysable), so the kept gates
   are one greedy chain over the merged candidate gates. ``"per-detector"``
   (:func:`dead_time_afterpulse`): the same per detector. In both, a registered
   click is followed with probability p_ap by an afterpulse of the same detector
   in the first live gate (d + 1 later), which may itself afterpulse. The
   afterpulse coin is a hash of (detector, gate), so a fixed-point iteration
   (filter → afterpulses → filter …) converges to the sequential answer (the
   first gate where an iterate differs from the sequential answer moves forward
   every round). State (last click, pending afterpulses) carries over to the next
   chunk.
5. Squashing: clicks in both arms → a random arm; both detectors of the arm → a
   random bit. Every detection carries its slot index.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from qkdnet.errors import ConfigError, LocalProtocolError
from qkdnet.phy.attacks import Attack, EveRecord, parse_attack
from qkdnet.phy.params import N_DETECTORS, PhyParams
from qkdnet.phy.source import (
    MAX_SLOT,
    AliceSource,
    PulseBatch,
    bernoulli_positions,
    derive_key,
    hash_uniform,
)

_NEVER = -(2**62)


class TooManyDetections(LocalProtocolError):
    """A range made more detections than the caller allows (raised mid-emulation, so a
    peer asking for a huge block costs bounded memory)."""


@dataclass(eq=False)
class Detections:
    """Bob's squashed detections in ``[start_slot, start_slot + n_slots)``.

    ``slots`` uint64 sorted, ``basis`` uint8 (0 = Z, 1 = X), ``bit`` uint8; ``eve`` the
    attack record (restricted to these slots) or ``None`` without an attack.
    """

    slots: np.ndarray
    basis: np.ndarray
    bit: np.ndarray
    eve: EveRecord | None = None
    start_slot: int = 0
    n_slots: int = 0

    def __len__(self) -> int:
        return int(self.slots.shape[0])

    def __repr__(self) -> str:  # raw bits stay out of reprs
        return (f"Detections(start_slot={self.start_slot}, n_slots={self.n_slots}, "
                f"clicks={len(self)}, eve={self.eve!r})")


def dead_time_filter(t: np.ndarray, d: int, last: int) -> np.ndarray:
    """Mask of the clicks of one detector that survive a dead time of ``d`` gates.

    ``t`` sorted unique gates (int64), ``last`` the previous click. A click at g
    blinds gates g+1 … g+d. Vectorised: a click whose predecessor (raw) is more than
    d gates back is certainly kept; from each kept click the next kept one is the
    first at least d+1 later, followed in parallel for all clusters.
    """
    n = t.shape[0]
    if n == 0 or d <= 0:
        return np.ones(n, dtype=bool)
    prev = np.empty(n, dtype=np.int64)
    prev[0] = last
    prev[1:] = t[:-1]
    isolated = (t - prev) > d
    kept = isolated.copy()
    # Chains need following only from isolated clicks whose successor is close.
    starts = isolated.copy()
    starts[:-1] &= ~isolated[1:]
    starts[-1] = False
    cur = np.flatnonzero(starts)
    j0 = int(np.searchsorted(t, last + d + 1))
    if j0 < n and not isolated[j0]:
        kept[j0] = True
        cur = np.concatenate([[j0], cur])
    # Follow every chain one step per round: the next kept click of a chain is the
    # first click at least d + 1 gates after the current one.
    while cur.size:
        cur = np.searchsorted(t, t[cur] + (d + 1))
        cur = cur[cur < n]
        cur = cur[~isolated[cur]]
        kept[cur] = True
    return kept


def dead_time_afterpulse(raw: np.ndarray, d: int, p_ap: float, last: int,
                         pending: np.ndarray, end: int, key: np.uint64,
                         detector: int) -> tuple[np.ndarray, int, np.ndarray]:
    """Clicks of one detector in a chunk ending (exclusive) at ``end``.

    ``raw`` sorted unique gates of photon/dark clicks, ``pending`` afterpulse gates
    carried from earlier chunks. Returns (kept clicks, new last click, new pending).
    """
    carried = pending[pending < end]
    later = pending[pending >= end]
    base = np.union1d(raw, carried) if carried.size else raw
    aps = np.empty(0, dtype=np.int64)
    for _ in range(100000):
        events = np.union1d(base, aps) if aps.size else base
        kept = events[dead_time_filter(events, d, last)]
        if p_ap <= 0:
            new_ap = np.empty(0, dtype=np.int64)
        else:
            coin = hash_uniform(key, kept.astype(np.uint64) * np.uint64(N_DETECTORS)
                                + np.uint64(detector))
            new_ap = kept[coin < p_ap] + (d + 1)
        inside = new_ap[new_ap < end]
        if np.array_equal(inside, aps):
            break
        aps = inside
    new_last = int(kept[-1]) if kept.size else last
    return kept, new_last, np.concatenate([later, new_ap[new_ap >= end]])


def _common_filter(keys: np.ndarray, d: int, last: int) -> tuple[np.ndarray, int]:
    """Common dead time on sorted unique keys (gate·4 + detector): (kept keys, last gate).

    Every detector that has a candidate in a kept gate registers; a gate is kept if
    it lies more than ``d`` gates after the last kept one.
    """
    if keys.size == 0:
        return keys, last
    gates = keys >> 2
    gaps = np.empty(gates.shape[0], dtype=np.int64)
    gaps[0] = gates[0] - last if last > _NEVER else d + 1
    np.subtract(gates[1:], gates[:-1], out=gaps[1:])
    close = gaps <= d
    if not close.any():                  # far from saturation: nothing to filter
        return keys, int(gates[-1])
    first = gaps != 0
    if first.all():
        # Only clusters of close clicks (and the click opening each) need the chain;
        # the others are more than d gates from both neighbours and are kept.
        member = close.copy()
        member[:-1] |= close[1:]
        sub = np.flatnonzero(member)
        keep = np.ones(keys.shape[0], dtype=bool)
        keep[sub] = dead_time_filter(gates[sub], d, last)
        kept = np.compress(keep, keys)
    else:
        ug = np.compress(first, gates)
        kept_g = dead_time_filter(ug, d, last)
        kept = np.compress(kept_g[np.cumsum(first) - 1], keys)
    return kept, (int(kept[-1] >> 2) if kept.size else last)


def common_dead_time(keys: np.ndarray, d: int, p_ap: float, last: int, pending: np.ndarray,
                     end: int, key: np.uint64) -> tuple[np.ndarray, int, np.ndarray]:
    """Registered clicks under a common dead time, in a chunk ending (exclusive) at ``end``.

    ``keys`` sorted unique gate·4 + detector of photon and dark-count candidates;
    ``last`` the last registered gate; ``pending`` afterpulse keys carried from
    earlier chunks. Returns (kept keys, new last gate, new pending afterpulse keys).
    """
    end_key = end * N_DETECTORS
    carried = pending[pending < end_key]
    later = pending[pending >= end_key]
    base = np.union1d(keys, carried) if carried.size else keys
    if p_ap <= 0:
        kept, new_last = _common_filter(base, d, last)
        return kept, new_last, later
    aps = np.empty(0, dtype=np.int64)
    step = (d + 1) * N_DETECTORS
    while True:
        events = np.union1d(base, aps) if aps.size else base
        kept, new_last = _common_filter(events, d, last)
        coin = hash_uniform(key, kept.astype(np.uint64))
        new_ap = kept[coin < p_ap] + step
        inside = new_ap[new_ap < end_key]
        if np.array_equal(inside, aps):
            break
        aps = inside
    return kept, new_last, np.concatenate([later, new_ap[new_ap >= end_key]])


class BobDetector:
    """Bob's passive-basis receiver with four detectors; stateful across chunks.

    ``efficiency`` is the probability that a photon of an arriving batch is detected:
    ``params.eta_bob`` for photons at Bob's input, 1.0 when the emission already
    fused the whole line's loss. :meth:`detect` must see consecutive slot ranges.
    """

    def __init__(self, params: PhyParams, efficiency: float, seed: int) -> None:
        if not 0.0 < efficiency <= 1.0:
            raise ConfigError(f"{efficiency!r}", source="parameters", key="efficiency",
                              expected="a value in (0, 1]")
        self.params = params
        self.efficiency = efficiency
        self._ap_key = derive_key(seed, 7)
        self._last = [_NEVER] * N_DETECTORS
        self._pending = [np.empty(0, dtype=np.int64) for _ in range(N_DETECTORS)]
        # Common dead time: the last registered gate and pending afterpulse keys.
        self._common_last = _NEVER
        self._common_pending = np.empty(0, dtype=np.int64)
        self._next_slot = 0

    def detect(self, batch: PulseBatch, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Squashed clicks (slots uint64, basis uint8, bit uint8) for one chunk."""
        p = self.params
        start, n = batch.start_slot, batch.n_slots
        if start < self._next_slot:
            raise LocalProtocolError(
                f"slot range starts at {start}, before the end of the previous one "
                f"({self._next_slot}): slots cannot be replayed")
        self._next_slot = start + n
        photons = batch.photons
        if self.efficiency < 1.0:
            photons = rng.binomial(photons, self.efficiency)
            hit = photons > 0
            batch = batch.select(hit, photons=photons.astype(np.uint8))
            photons = batch.photons
        # One entry per detected photon (almost always one per pulse).
        single = photons.size == 0 or int(photons.max()) == 1
        if single:
            gate = batch.slots.astype(np.int64)
            sb, sv = batch.basis, batch.bit
        else:
            gate = np.repeat(batch.slots, photons).astype(np.int64)
            sb, sv = np.repeat(batch.basis, photons), np.repeat(batch.bit, photons)
        m = gate.shape[0]
        # Passive basis choice per photon, then the measurement: in the photon's own
        # basis its bit (flipped by misalignment), in the other basis a fair coin.
        u = rng.random(m)
        arm = u >= p.q_z
        v = rng.random(m)
        same = arm == sb.astype(bool)
        outcome = np.where(same, sv.astype(bool) ^ (v < p.e_mis), v < 0.5)
        keys = gate * N_DETECTORS
        keys += arm * 2
        keys += outcome
        if not single:
            keys.sort(kind="stable")
        # Dark counts: one Bernoulli process over (detector, gate) pairs, merged in.
        dpos = bernoulli_positions(rng, p.p_dark, N_DETECTORS * n)
        if dpos.size:
            dkeys = (dpos % n + start) * N_DETECTORS + dpos // n
            dkeys.sort(kind="stable")
            keys = np.insert(keys, np.searchsorted(keys, dkeys), dkeys)
        if keys.size > 1 and (not single or dpos.size):
            keys = np.compress(np.concatenate([[True], keys[1:] != keys[:-1]]), keys)
        if p.dead_gates > 0 or p.p_afterpulse > 0:
            keys = self._dead_time(keys, start + n)
        return self._squash(keys, rng)

    def _dead_time(self, keys: np.ndarray, end: int) -> np.ndarray:
        p = self.params
        d = p.dead_gates
        if p.dead_time_mode == "common":
            keys, self._common_last, self._common_pending = common_dead_time(
                keys, d, p.p_afterpulse, self._common_last, self._common_pending, end,
                self._ap_key)
            return keys
        gates = keys >> 2            # key = gate·4 + detector (N_DETECTORS = 4)
        det = keys & 3
        if p.p_afterpulse <= 0 and not any(x.size for x in self._pending):
            # Without afterpulses a click more than d gates after the previous raw
            # click of *any* detector is certainly kept; only clusters of close
            # clicks need the per-detector filter.
            prev = np.empty_like(gates)
            prev[:1] = max(self._last)
            prev[1:] = gates[:-1]
            close = (gates - prev) <= d
            if not close.any():
                self._update_last(keys)
                return keys
            # Members of a cluster: close clicks and the click opening each cluster.
            member = close.copy()
            member[:-1] |= close[1:]
            sub = np.flatnonzero(member)
            gsub, dsub = gates[sub], det[sub]
            # Clicks still inside the dead time of their detector's previous chunk
            # click are lost, and being lost they blind nothing.
            last = np.asarray(self._last, dtype=np.int64)
            alive = gsub > last[dsub] + d
            keep = np.ones(keys.shape[0], dtype=bool)
            keep[sub[~alive]] = False
            sub, gsub = np.compress(alive, sub), np.compress(alive, gsub)
            dsub = np.compress(alive, dsub)
            # Filter all four detectors in one call: lay their clicks end to end,
            # detector k at offset k·2^40 (gates relative to the chunk start).
            order = np.argsort(dsub.astype(np.uint8), kind="stable")   # radix sort
            span = 1 << 40
            rel = gsub[order] - (int(gates[0]) - d - 1) + dsub[order] * span
            keep[sub[order]] = dead_time_filter(rel, d, -span)
            keys = np.compress(keep, keys)     # ~4x faster than keys[keep]
            self._update_last(keys)
            return keys
        parts = []
        for k in range(N_DETECTORS):
            kept, self._last[k], self._pending[k] = dead_time_afterpulse(
                gates[det == k], d, p.p_afterpulse, self._last[k],
                self._pending[k], end, self._ap_key, k)
            parts.append(kept * N_DETECTORS + k)
        out = np.concatenate(parts)
        out.sort(kind="stable")
        return out

    def _update_last(self, keys: np.ndarray) -> None:
        """Remember each detector's last click (``keys`` sorted)."""
        tail = keys[-4096:]          # the last clicks are almost always near the end
        for k in range(N_DETECTORS):
            idx = np.flatnonzero((tail & 3) == k)
            if idx.size:
                self._last[k] = int(tail[idx[-1]] >> 2)
            elif keys.size > tail.size:
                idx = np.flatnonzero((keys & 3) == k)
                if idx.size:
                    self._last[k] = int(keys[idx[-1]] >> 2)

    @staticmethod
    def _squash(keys: np.ndarray, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        gate = keys >> 2
        if gate.size == 0:
            e8 = np.empty(0, dtype=np.uint8)
            return np.empty(0, dtype=np.uint64), e8, e8
        det = keys & 3
        first = np.empty(gate.shape[0], dtype=bool)
        first[0] = True
        np.not_equal(gate[1:], gate[:-1], out=first[1:])
        if first.all():   # one detector per gate: nothing to squash
            d8 = det.astype(np.uint8)
            return gate.view(np.uint64), d8 >> 1, d8 & 1
        # A gate with one click keeps that detector's arm and bit; only gates with
        # several clicks (rare: multi-photon pulses, dark counts) need squashing, so
        # that work runs on those entries alone, and the result is written at the
        # first click of each such gate before one click per gate is kept.
        arm = det >> 1
        bit = det & 1
        repeat = ~first
        member = repeat.copy()
        member[:-1] |= repeat[1:]                 # every click of a multi-click gate
        heads = np.flatnonzero(first & member)
        mask = np.bitwise_or.reduceat(np.left_shift(1, np.compress(member, det)),
                                      np.flatnonzero(np.compress(member, first)))
        z_any = (mask & 3) != 0
        x_any = (mask & 12) != 0
        both = z_any & x_any
        m_arm = x_any.astype(np.int64)
        if both.any():
            m_arm[both] = rng.integers(0, 2, size=int(both.sum()))
        m_sub = (mask >> (2 * m_arm)) & 3
        m_bit = m_sub >> 1
        double = m_sub == 3
        if double.any():
            m_bit[double] = rng.integers(0, 2, size=int(double.sum()))
        arm[heads] = m_arm
        bit[heads] = m_bit
        # np.compress: the same elements as a boolean index, ~4x faster
        return (np.compress(first, gate).astype(np.uint64),
                np.compress(first, arm).astype(np.uint8), np.compress(first, bit).astype(np.uint8))


class QuantumChannel:
    """Fibre of ``km`` kilometres, optional eavesdropper, and Bob's detectors.

    ``attack`` is an :class:`~qkdnet.phy.attacks.Attack`, a spec string such as
    ``"intercept-resend:0.3"``, or ``None``. Successive :meth:`run` calls must cover
    increasing slot ranges (detector state carries over; slots are never replayed).
    """

    #: Target number of candidate pulses per internal chunk (bounds memory).
    chunk_events = 1 << 18

    def __init__(self, params: PhyParams, km: float, attack: Attack | str | None = None,
                 seed: int = 0) -> None:
        self.params = params
        self.km = float(km)
        self.fibre_t = params.fibre_transmittance(self.km)
        self.attack = parse_attack(attack) if isinstance(attack, str) or attack is None \
            else attack
        if self.attack is not None:
            self.attack.configure(params, self.fibre_t)
        self._rng = np.random.default_rng([int(derive_key(seed, 3))])
        self._renewal = None
        if self.attack is None:
            self._emit_t = self.fibre_t * params.eta_bob
            self.bob = BobDetector(params, 1.0, seed)
            # Common dead time without afterpulses: draw only what Bob can register.
            from qkdnet.phy import renewal
            if renewal.applicable(params, self._emit_t):
                self._renewal = renewal.RenewalChannel(params, self._emit_t, self.bob)
        else:
            self._emit_t = 1.0
            self.bob = BobDetector(params, params.eta_bob, seed)

    def __repr__(self) -> str:
        name = self.attack.name if self.attack is not None else None
        return f"QuantumChannel({self.params.name!r}, km={self.km}, attack={name!r})"

    def _chunk_slots(self) -> int:
        p_max = -np.expm1(-self.params.mu[0] * self._emit_t) + 4 * self.params.p_dark
        return int(min(max(self.chunk_events / p_max, 1 << 16), 1 << 31))

    def run(self, source: AliceSource, start_slot: int, n_slots: int, *,
            max_detections: int | None = None) -> Detections:
        """Emulate slots ``[start_slot, start_slot + n_slots)``; return Bob's detections.

        Memory grows with the number of detections; for long runs call :meth:`stream`
        (or :meth:`run` on consecutive ranges) instead. With ``max_detections`` the
        emulation stops with :class:`TooManyDetections` as soon as the range has made
        more than that many, so the memory stays bounded whatever ``n_slots`` is.
        """
        parts: list[Detections] = []
        count = 0
        for part in self.stream(source, start_slot, n_slots):
            parts.append(part)
            count += len(part.slots)
            if max_detections is not None and count > max_detections:
                raise TooManyDetections(
                    f"a block of {n_slots} slots makes more than {max_detections} "
                    f"detections (stopped after {part.start_slot + part.n_slots - start_slot}"
                    " slots); the block is too large for the link's limit")
        if not parts:
            e8 = np.empty(0, dtype=np.uint8)
            record = EveRecord(self.attack.name) if self.attack is not None else None
            return Detections(np.empty(0, np.uint64), e8, e8, record, start_slot, 0)
        if len(parts) == 1:
            return parts[0]
        eve = None
        if self.attack is not None:
            eve = EveRecord(self.attack.name)
            for part in parts:
                assert part.eve is not None
                eve.add(part.eve.slots, part.eve.bits, part.eve.known)
                eve.pulses_seen += part.eve.pulses_seen
                eve.pulses_attacked += part.eve.pulses_attacked
        return Detections(np.concatenate([d.slots for d in parts]),
                          np.concatenate([d.basis for d in parts]),
                          np.concatenate([d.bit for d in parts]), eve, start_slot, n_slots)

    def stream(self, source: AliceSource, start_slot: int, n_slots: int,
               chunk_slots: int | None = None) -> Iterator[Detections]:
        """Emulate the range in chunks, yielding one :class:`Detections` per chunk.

        Memory stays bounded by the chunk size whatever ``n_slots`` is. The chunks
        are consecutive, so the detector state (dead time, afterpulses) carries over.
        """
        if source.params is not self.params and source.params != self.params:
            raise ConfigError("source and channel use different parameters",
                              source="parameters", key="params")
        if self._renewal is not None:
            yield from self._stream_renewal(source, start_slot, n_slots, chunk_slots)
            return
        chunk = chunk_slots or self._chunk_slots()
        pos, end = start_slot, start_slot + n_slots
        while pos < end:
            n = min(chunk, end - pos)
            record = EveRecord(self.attack.name) if self.attack is not None else None
            batch = source.emit(pos, n, self._emit_t, rng=self._rng)
            if self.attack is not None and record is not None:
                batch = self.attack.apply(batch, self._rng, record)
                if not self.attack.replaces_fibre:
                    batch = apply_loss(batch, self.fibre_t, self._rng)
            s, b, v = self.bob.detect(batch, self._rng)
            if record is not None:
                record.restrict(s)
            yield Detections(s, b, v, record, pos, n)
            pos += n


    def _stream_renewal(self, source: AliceSource, start_slot: int, n_slots: int,
                        chunk_slots: int | None) -> Iterator[Detections]:
        renewal = self._renewal
        assert renewal is not None
        if start_slot < self.bob._next_slot:
            raise LocalProtocolError(
                f"slot range starts at {start_slot}, before the end of the previous one "
                f"({self.bob._next_slot}): slots cannot be replayed")
        if start_slot < 0 or start_slot + n_slots > MAX_SLOT:
            raise ConfigError("slot range out of bounds", source="parameters", key="slots",
                              expected="0 <= start and start + n <= 2**60")
        chunk = chunk_slots or renewal.chunk_slots()
        pos, end = start_slot, start_slot + n_slots
        while pos < end:
            n = min(chunk, end - pos)
            gates, hashes = renewal.registered_gates(source, pos, n, self._rng)
            self.bob._next_slot = pos + n
            s, b, v = renewal.detect(source, gates, hashes, self._rng)
            yield Detections(s, b, v, None, pos, n)
            pos += n


def apply_loss(batch: PulseBatch, transmittance: float, rng: np.random.Generator
               ) -> PulseBatch:
    """Keep each photon with probability ``transmittance``; drop emptied pulses."""
    if transmittance >= 1.0:
        return batch
    left = rng.binomial(batch.photons, transmittance).astype(np.uint8)
    return batch.select(left > 0, photons=left,
                        transmittance=batch.transmittance * transmittance)
