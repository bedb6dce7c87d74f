"""Fast emulation of a link whose detectors share one dead time (:class:`RenewalChannel`).

Theory of operation
-------------------
With a dead time common to Bob's four detectors, no afterpulses and no
eavesdropper, what Bob registers depends only on the *candidate* gates (a gate is a
candidate when at least one detector would click: a detected photon or a dark
count), and the registered gates are the greedy chain "keep a candidate more than
d gates after the last kept one". Candidates are independent from gate to gate,
with probability c_k = 1 − (1 − Y0)·e^(−η μ_k) set by the gate's intensity k (a
hash of Alice's choices). Candidates inside dead windows never matter, so they need
not be drawn at all: from a live gate x the next candidate is found by a geometric
jump over a Bernoulli(p_max) process, thinned by c_k / p_max at the gate it lands
on (memoryless, so the jump may start at any x). That is a renewal process, and
the cost is per registered click, not per candidate or per slot.

The chain is sequential; it is run in parallel over *segments* of the chunk. The
state entering a segment (how many of its first d gates are still dead) is not
known until the segment before it is done, so each segment begins with an
explicitly drawn *prefix* of its candidates, up to its first *isolated* candidate
g (no other candidate in the d gates before it, g at least d + 1 gates into the
segment). Whatever the entry state, the chain registers g: its last click before g
is more than d gates before g, and no candidate lies between that click's dead
window and g. The gate g is a stopping time of the candidate field read in gate
order, so the field after g is independent of everything drawn so far and the
segment's chain after g is drawn by the memoryless jumps (one *lane* per segment,
all lanes advanced together by numpy). A segment whose prefix holds no isolated
candidate gets its whole field drawn explicitly. Finally one greedy pass
(:func:`~qkdnet.phy.channel.dead_time_filter`) over the explicit candidates and
the lanes' clicks, in gate order and starting from the previous chunk's last
click, yields the registered gates: before each g it resolves the entry state;
after it every lane click is already more than d gates after the one before.

Each registered gate then gets its detector pattern, drawn conditionally on the
gate being a candidate: a photon (then Poisson-many photons, routed and measured
as in :class:`~qkdnet.phy.channel.BobDetector`, plus independent dark counts) with
probability (1 − e^(−η μ_k)) / c_k, otherwise dark counts only (at least one), and
is squashed as usual. The law of the result is exactly that of
:class:`~qkdnet.phy.channel.BobDetector` on :meth:`AliceSource.emit`'s pulses
(tests/phy: chi-square and KS against the per-pulse reference, and the full
renewal model of :mod:`qkdnet.phy.theory`).
"""

from __future__ import annotations

import math

import numpy as np

from qkdnet.phy.channel import BobDetector, dead_time_filter
from qkdnet.phy.params import N_DETECTORS, PhyParams
from qkdnet.phy.source import (
    _GOLDEN,
    AliceSource,
    bernoulli_positions,
    splitmix64,
    truncated_poisson,
)

#: Lanes (segments) advanced together per chunk; enough to amortise numpy's per-call cost.
LANES = 4096
#: Steps of every lane drawn at once.
ROUNDS = 16
#: d·c̄ (dead gates × candidates per gate) from which the renewal sampler is used.
SATURATION = 0.5
#: Largest expected prefix (gates to the first isolated candidate) the sampler accepts;
#: beyond it (a dead time of very many gates at saturation) the general path is used.
MAX_PREFIX = 1 << 16


def expected_prefix(params: PhyParams, transmittance: float) -> float:
    """Expected gates from a segment start to its first isolated candidate (approx.)."""
    c = candidate_probabilities(params, transmittance)
    c_bar = float(np.dot(params.p_mu, c))
    d = params.dead_gates
    if c_bar <= 0:
        return float(d + 1)
    iso = (1.0 - c_bar) ** d
    return d + 1 + (1.0 / (c_bar * iso) if iso > 0 else math.inf)


def candidate_probabilities(params: PhyParams, transmittance: float) -> np.ndarray:
    """c_k = P(some detector has a candidate click | intensity k), per intensity."""
    lam = np.asarray(params.mu, dtype=np.float64) * transmittance
    return 1.0 - (1.0 - params.y0) * np.exp(-lam)


def applicable(params: PhyParams, transmittance: float) -> bool:
    """Whether :class:`RenewalChannel` can emulate this link (common dead time, d > 0,
    no afterpulses, a prefix of reasonable length)."""
    if not (params.dead_time_mode == "common" and params.dead_gates > 0
            and params.p_afterpulse <= 0):
        return False
    c_bar = float(np.dot(params.p_mu, candidate_probabilities(params, transmittance)))
    # Only worth it where dead windows swallow many candidates (d·c̄ large); far from
    # saturation drawing every candidate and filtering is cheaper.
    return (params.dead_gates * c_bar >= SATURATION
            and expected_prefix(params, transmittance) <= MAX_PREFIX)


class RenewalChannel:
    """Emission fused with detection for a no-Eve link with a common dead time.

    ``transmittance`` is the whole line's η (fibre × Bob). The detector state (last
    registered gate, next slot) lives in ``bob`` so it carries over between chunks.
    """

    def __init__(self, params: PhyParams, transmittance: float, bob: BobDetector) -> None:
        self.params = params
        self.bob = bob
        self.d = params.dead_gates
        self.lam = np.asarray(params.mu, dtype=np.float64) * transmittance
        self.c = candidate_probabilities(params, transmittance)
        self.p_max = float(self.c.max())
        self.accept = self.c / self.p_max
        self.thin = bool(np.any(self.accept[np.asarray(params.p_mu) > 0] < 1.0))
        self.log_q = math.log1p(-self.p_max) if self.p_max < 1.0 else -math.inf
        # P(a photon is among the candidate's causes), and P(N = 1 | N >= 1) per intensity.
        with np.errstate(invalid="ignore", divide="ignore"):
            self.p_photon = np.where(self.c > 0, -np.expm1(-self.lam) / self.c, 0.0)
            self.p_one = np.where(self.lam > 0, self.lam * np.exp(-self.lam)
                                  / -np.expm1(-self.lam), 1.0)
        rate = float(np.dot(params.p_mu, self.c))
        per_gate = rate / (1.0 + self.d * rate)
        pre = expected_prefix(params, transmittance)
        # ~128 clicks per lane, and a prefix that is a small part of the segment.
        # ~128+ clicks per lane, and a prefix that is a small part of the segment; the
        # prefix is drawn in stretches of about half its expected length.
        self.width = int(max(32 * pre, 128 / max(per_gate, 1e-12), 4 * (self.d + 1)))
        self.width = min(self.width, 1 << 40)
        self.prefix = int(min(max(pre / 2, 2 * (self.d + 1)), self.width))

    def chunk_slots(self) -> int:
        """Slots per chunk: one segment per lane."""
        return int(min(LANES * self.width, 1 << 44))

    # -- candidate fields ----------------------------------------------------------
    def _field(self, source: AliceSource, starts: np.ndarray, lengths: np.ndarray,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Explicit candidate gates in the ranges [starts_i, starts_i + lengths_i).

        Returns (gates int64 sorted, range index int64)."""
        cum = np.cumsum(lengths)
        total = int(cum[-1]) if cum.size else 0
        pos = bernoulli_positions(rng, self.p_max, total)
        first = cum - lengths
        reg = np.searchsorted(cum, pos, side="right")
        gates = starts[reg] + (pos - first[reg])
        if self.thin and gates.size:
            k = source._intensity(source._hash(gates.astype(np.uint64)))
            keep = rng.random(gates.size) < self.accept[k]
            gates, reg = np.compress(keep, gates), np.compress(keep, reg)
        return gates, reg

    # -- the chain -------------------------------------------------------------------
    def registered_gates(self, source: AliceSource, start: int, n: int,
                         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Registered gates (sorted int64) of ``[start, start + n)`` and Alice's slot
        hashes for them (uint64); updates ``bob``."""
        d = self.d
        if self.p_max <= 0 or n <= 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.uint64)
        n_seg = max(1, -(-n // self.width))
        s = start + np.arange(n_seg, dtype=np.int64) * self.width
        e = np.minimum(s + self.width, start + n)
        g = np.full(n_seg, -1, dtype=np.int64)          # first isolated candidate
        prev_cand = s - 1                                # last candidate drawn so far
        pos = s.copy()
        todo = np.arange(n_seg, dtype=np.int64)          # segments still searching
        ex_parts: list[np.ndarray] = []
        while todo.size:
            # Draw the next stretch of each unresolved segment's field explicitly.
            length = np.minimum(self.prefix, e[todo] - pos[todo])
            gates, r = self._field(source, pos[todo], length, rng)
            reg = todo[r]
            prev = np.empty_like(gates)
            if gates.size:
                prev[1:] = gates[:-1]
                new_seg = np.empty(gates.size, dtype=bool)
                new_seg[0] = True
                np.not_equal(reg[1:], reg[:-1], out=new_seg[1:])
                prev = np.where(new_seg, prev_cand[reg], prev)
            iso = ((gates - prev) > d) & (gates > s[reg] + d)
            idx = np.flatnonzero(iso)
            seg_of, first_idx = np.unique(reg[idx], return_index=True)
            g[seg_of] = gates[idx[first_idx]]
            # Explicit items: the field up to g (found), or all of it (still searching).
            found = g[reg] >= 0
            keep = ~found | (gates <= g[reg])
            ex_parts.append(np.compress(keep, gates))
            pos[todo] += length
            if gates.size:
                last_idx = np.flatnonzero(np.append(reg[1:] != reg[:-1], True))
                prev_cand[reg[last_idx]] = gates[last_idx]
            todo = todo[(g[todo] < 0) & (pos[todo] < e[todo])]
        ex_gates = np.concatenate(ex_parts) if ex_parts else np.empty(0, dtype=np.int64)
        coalesced = g >= 0
        lane_gates, lane_hash, lane_last = self._lanes(source, g[coalesced] + d + 1,
                                                       e[coalesced], rng)
        # The greedy pass needs only the explicit candidates and, per segment, the
        # lane's last click (every lane click is kept: each lies more than d gates
        # after the one before, the first more than d after g).
        marks = lane_last[lane_last >= 0]
        items = np.concatenate([ex_gates, marks])
        items.sort()
        kept = np.compress(dead_time_filter(items, d, self.bob._common_last), items)
        if kept.size:
            self.bob._common_last = int(kept[-1])
        if marks.size:
            kept = np.setdiff1d(kept, marks, assume_unique=True)
        # Merge the kept explicit candidates into the lanes' clicks (both in gate order).
        where = np.searchsorted(lane_gates, kept)
        return (np.insert(lane_gates, where, kept),
                np.insert(lane_hash, where, source._hash(kept.astype(np.uint64))))

    def _lanes(self, source: AliceSource, x: np.ndarray, end: np.ndarray,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Memoryless chains from live gates ``x`` to (exclusive) ``end``, one per lane.

        Returns (all clicks in gate order, Alice's hashes of them, last click per lane
        or -1). The lanes advance in batches of ``ROUNDS`` steps whose randomness is
        drawn at once; a lane that passes its end keeps stepping until the batch is
        over but records nothing (its positions only grow), and finished lanes are
        dropped between batches.
        """
        d = self.d
        n_lanes = x.size
        last = np.full(n_lanes, -1, dtype=np.int64)
        batches: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        lane = np.arange(n_lanes, dtype=np.int64)
        inv_rate = -1.0 / self.log_q           # log_q < 0: p_max > 0 here
        accept = self.accept
        key = source._key
        while lane.size:
            size = (ROUNDS, lane.size)
            # Geometric jumps over Bernoulli(p_max): floor(E / −ln(1 − p_max)), E ~ Exp(1).
            jumps = rng.standard_exponential(size)
            jumps *= inv_rate
            steps = jumps.astype(np.int64)
            coins = rng.random(size) if self.thin else None
            ys = np.empty(size, dtype=np.int64)
            hs = np.empty(size, dtype=np.uint64)
            oks = np.empty(size, dtype=bool)
            for r in range(ROUNDS):
                y = ys[r]
                np.add(x, steps[r], out=y)
                h = hs[r]
                np.multiply(y.view(np.uint64), _GOLDEN, out=h)
                h += key
                splitmix64(h, in_place=True)             # Alice's slot hash
                ok = oks[r]
                np.less(y, end, out=ok)
                if coins is not None:
                    acc = coins[r] < accept[source._intensity(h)]
                    ok &= acc
                    x = y + 1
                    x += acc * d
                else:
                    x = y + (d + 1)
            last[lane] = np.maximum(last[lane], np.where(oks, ys, -1).max(axis=0))
            batches.append((lane, ys, hs, oks))
            alive = x < end
            lane, x, end = np.compress(alive, lane), np.compress(alive, x), \
                np.compress(alive, end)
        if not batches:
            e = np.empty(0, dtype=np.int64)
            return e, e.astype(np.uint64), last
        # Lane-major order (lane, batch, round) is gate order: scatter and squeeze.
        stride = ROUNDS * len(batches)
        grid = np.full(n_lanes * stride, -1, dtype=np.int64)
        hgrid = np.empty(n_lanes * stride, dtype=np.uint64)
        rounds = np.arange(ROUNDS, dtype=np.int64)[:, None]
        for b, (ln, ys, hs, oks) in enumerate(batches):
            where = (ln[None, :] * stride + b * ROUNDS + rounds)[oks]
            grid[where] = ys[oks]
            hgrid[where] = hs[oks]
        ok_all = grid >= 0
        return np.compress(ok_all, grid), np.compress(ok_all, hgrid), last

    # -- detector patterns -----------------------------------------------------------
    def detect(self, source: AliceSource, gates: np.ndarray, h: np.ndarray,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Squashed (slots, basis, bit) for registered gates (sorted) with Alice's slot
        hashes ``h``; each gate's pattern is drawn given that it is a candidate.

        Every registered gate gives one detection. Most hold exactly one photon and no
        dark count: their outcome is that photon's (arm, bit), computed directly; the
        rest (several photons, dark counts) go through the detector keys and the squash.
        """
        p = self.params
        m = gates.size
        basis = np.empty(m, dtype=np.uint8)
        bit = np.empty(m, dtype=np.uint8)
        if m == 0:
            return gates.astype(np.uint64), basis, bit
        k = source._intensity(h)
        a_basis, a_bit = source._basis(h), source._bit(h)
        # One uniform decides "a photon is among the causes" (below p_photon) and,
        # rescaled, whether that photon is alone (below P(N = 1 | N >= 1)).
        u = rng.random(m)
        pp = self.p_photon[k]
        simple = u < pp * self.p_one[k]
        # Dark counts next to the photon(s) of photon gates (a gate without a photon
        # has its dark counts drawn given that there is at least one: _dark_only).
        dpos = bernoulli_positions(rng, p.p_dark, N_DETECTORS * m)
        if dpos.size:
            dpos = dpos[u[dpos % m] < pp[dpos % m]]
            simple[dpos % m] = False
        # Simple gates: one photon, routed (uniform below q_z: Z arm) and measured.
        r = rng.random(m)
        arm = r >= p.q_z
        r -= arm * p.q_z
        r /= np.where(arm, 1.0 - p.q_z, p.q_z)
        same = arm == a_basis.astype(bool)
        outcome = np.where(same, a_bit.astype(bool) ^ (r < p.e_mis), r < 0.5)
        basis[:] = arm
        bit[:] = outcome
        hard = np.flatnonzero(~simple)
        if hard.size:
            b_h, v_h = self._hard(gates, k, a_basis, a_bit, u, pp, hard, dpos, rng)
            basis[hard] = b_h
            bit[hard] = v_h
        return gates.astype(np.uint64), basis, bit

    def _hard(self, gates: np.ndarray, k: np.ndarray, a_basis: np.ndarray,
              a_bit: np.ndarray, u: np.ndarray, pp: np.ndarray, hard: np.ndarray,
              dpos: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Outcomes of the registered gates ``hard`` (indices): several photons, dark
        counts, or dark counts only; through detector keys and the squash."""
        p = self.params
        m = gates.size
        g_h = gates[hard]
        photon = u[hard] < pp[hard]
        ph = hard[photon]
        # Photon numbers given "photon": u / p_photon is uniform, drawing N >= 1.
        n_ph = truncated_poisson(rng, self.lam[k[ph]], u[ph] / pp[ph], self.p_one[k[ph]])
        gate = np.repeat(gates[ph], n_ph)
        sb, sv = np.repeat(a_basis[ph], n_ph), np.repeat(a_bit[ph], n_ph)
        arm = rng.random(gate.size) >= p.q_z
        v = rng.random(gate.size)
        same = arm == sb.astype(bool)
        outcome = np.where(same, sv.astype(bool) ^ (v < p.e_mis), v < 0.5)
        keys = [gate * N_DETECTORS + arm * 2 + outcome]
        if dpos.size:
            keys.append(gates[dpos % m] * N_DETECTORS + dpos // m)
        if not photon.all():
            keys.append(self._dark_only(g_h[~photon], rng))
        allk = np.concatenate(keys)
        allk.sort()
        _, b, v8 = BobDetector._squash(allk, rng)
        return b, v8

    def _dark_only(self, gates: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Dark-count keys of candidate gates without photons: at least one detector."""
        pd = self.params.p_dark
        w = pd * (1.0 - pd) ** np.arange(N_DETECTORS)
        first = np.searchsorted(np.cumsum(w) / w.sum(), rng.random(gates.size), side="right")
        first = np.minimum(first, N_DETECTORS - 1)
        keys = [gates * N_DETECTORS + first]
        later = rng.random((gates.size, N_DETECTORS)) < pd
        later &= np.arange(N_DETECTORS)[None, :] > first[:, None]
        rows, cols = np.nonzero(later)
        if rows.size:
            keys.append(gates[rows] * N_DETECTORS + cols)
        return np.concatenate(keys)
