"""Belief-propagation syndrome decoding for the QC-LDPC codes of ldpc_codes.py.

Bob decodes the error pattern ``e = x XOR y`` from the syndrome difference
``s_A XOR H·y``: every key position starts with the same channel LLR
``ln((1-q)/q)`` in favour of "no error", punctured positions with 0, shortened or
revealed positions with a large known value. Frames are decoded side by side (a
leading frame axis) and leave the batch as soon as they converge or stall.

Theory of operation
-------------------
*Schedule.* Layered BP: block row ``i`` of H is one layer; a layer reads the current
totals ``L`` of its ``d_i`` block columns, updates its check-to-variable messages and
writes the totals back at once, so later layers in the same iteration see the news.
This roughly halves the iterations of a flooding schedule. A block row has at most
one block per column, so its reads and writes never collide. Each read is a roll:
the totals of block column ``c`` are kept twice over, at ``L[c, Z:2Z]`` and
``L[c, 2Z:3Z]``, so the rolled column a block with shift ``s`` needs is the window
``L[c, Z+s : 2Z+s]``, taken for all blocks of a layer by one fancy index on a
strided view. A write puts the new totals in the windows at ``s``, ``s+Z`` and
``s+2Z``, which together refresh both copies (``[0, Z)`` and ``[3Z, 4Z)`` catch the
spill). That is one gather and three contiguous copies per edge, no random access.

*Check node (sum-product in the φ domain).* Messages are int16 LLRs at ``SCALE``
units per nat. The check update is the exact tanh rule written with
φ(x) = -ln tanh(x/2): ``|out_e| = φ(Σ_k φ|in_k| - φ|in_e|)``, signs by parity. The
first φ is a table lookup on the message's 16-bit pattern giving a float32; the sum
and the subtraction are float32 (the subtraction is exact for the dominant term,
Sterbenz, and its rounding only matters when the answer is beyond ~16 nats); the
second φ is a table lookup on the float's top bits (exponent and ``PSI_BITS``
mantissa bits: a log-scale index, 6 % wide buckets), whose upper half holds the
negated values so the sign rides along in the index. Outputs are capped at ``CMAX``
(30 nats). The cap matters: density evolution (docs/ldpc.md) shows BP whose
check outputs saturate near 6-9 nats stalls at a residual error rate of 1e-4…1e-5 on
codes with many degree-2 nodes (a saturated wrong message out-votes the channel),
while an integer variant with a 30-nat cap (exact tanh rule below 6 nats, the
min rule above) reproduces the published BP thresholds of the Elkouss et al. and
Martinez-Mateo et al. profiles to 3 digits. The float32 φ sums used here are closer
still to floating-point BP. Normalised or offset min-sum was tried first: its density
evolution stalls on these profiles (docs/ldpc.md), hence sum-product.

*Stopping.* A frame whose checks were all satisfied when their layers read them, in
one full iteration, is checked against its full syndrome and leaves the batch if it
matches. A frame whose count of unsatisfied checks has not improved for
``stall_iters`` iterations gives up early (most frames sent at too high a rate do).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

from qkdnet.link.ldpc_codes import QCCode

__all__ = ["CMAX", "KNOWN_LLR", "SCALE", "BatchDecoder", "channel_llr"]

SCALE = 8            # LLR units per nat
CMAX = 30 * SCALE    # cap of a check-to-variable message (30 nats)
KNOWN_LLR = 3000     # a shortened or revealed position: "certainly 0" / "certainly 1"
PSI_BITS = 4         # mantissa bits kept in the log-scale index of the ψ table
_PSI_SHIFT = 23 - PSI_BITS
_PSI_HALF = 256 << PSI_BITS          # table half for negative outputs


def _phi(x: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", over="ignore"):
        return -np.log(np.tanh(x / 2.0))


def _tables() -> tuple[np.ndarray, np.ndarray]:
    # φ of a signed int16 message, indexed by its uint16 bit pattern
    u = np.arange(1 << 16, dtype=np.int64)
    t = np.where(u < 1 << 15, u, u - (1 << 16))
    mag = np.maximum(np.abs(t), 0.5).astype(np.float64)   # 0 → half a unit
    phi = _phi(mag / SCALE).astype(np.float32)
    # ψ = φ^-1 = φ, indexed by the top bits of a float32 (a log-scale index)
    i = np.arange(_PSI_HALF, dtype=np.uint64)
    with np.errstate(invalid="ignore", over="ignore"):
        lo = (i << _PSI_SHIFT).astype(np.uint32).view(np.float32).astype(np.float64)
        hi = ((i + 1) << _PSI_SHIFT).astype(np.uint32).view(np.float32).astype(np.float64)
        mid = np.sqrt(lo * hi)                  # geometric middle of the bucket
        val = SCALE * _phi(mid)
    val = np.where(np.isfinite(val), val, CMAX)     # 0 → cap; inf/NaN buckets never occur
    val[~np.isfinite(mid)] = 0
    psi = np.minimum(CMAX, np.round(val)).astype(np.int16)
    return phi, np.concatenate([psi, -psi])


PHI_TABLE, PSI_TABLE = _tables()


def channel_llr(qber: float) -> int:
    """Integer channel LLR for a BSC with crossover ``qber``."""
    q = min(max(float(qber), 1e-4), 0.4)
    return max(1, round(SCALE * math.log((1 - q) / q)))


def _window(a: np.ndarray, width: int, writeable: bool = False) -> np.ndarray:
    """Every ``width``-long run of ``a`` (flattened) as a row: ``win[o] = flat[o:o+width]``."""
    flat = a.reshape(-1)
    st = flat.strides[0]
    return as_strided(flat, shape=(flat.shape[0] - width + 1, width), strides=(st, st),
                      writeable=writeable)


class BatchDecoder:
    """Layered BP over a batch of frames of one code; state survives between runs.

    ``llr`` (F, n) int16 channel LLRs (positive = "no error"); ``target`` (F, m) 0/1 the
    syndrome the error pattern must have. :meth:`run` iterates until every frame has
    converged or given up; :meth:`set_known` pins positions (blind rounds) and a later
    :meth:`run` continues from the current messages (warm start).
    """

    def __init__(self, code: QCCode, llr: np.ndarray, target: np.ndarray) -> None:
        F = llr.shape[0]
        Z, nb = code.Z, code.nb
        self.code = code
        self.F = F
        self.ch = llr.astype(np.int16).reshape(F, nb, Z).copy()
        # totals, kept twice over at [Z, 2Z) and [2Z, 3Z); [0, Z) and [3Z, 4Z) are
        # scratch that absorbs the spill of rolled window writes
        self.L_all = np.zeros((F, nb, 4 * Z), dtype=np.int16)
        self.L_all[:, :, Z:2 * Z] = self.ch
        self.L_all[:, :, 2 * Z:3 * Z] = self.ch
        self.C_all = np.zeros((F, code.n_blocks, Z), dtype=np.int16)
        self.target = target.astype(bool).reshape(F, code.mb, Z)
        self.converged = np.zeros(F, dtype=bool)
        self.iterations = np.zeros(F, dtype=np.int64)
        self.hard = np.zeros((F, code.n), dtype=np.uint8)
        rp = code.row_ptr
        self._layers = [(int(rp[i]), int(rp[i + 1]), code.cols[rp[i]:rp[i + 1]],
                         code.shifts[rp[i]:rp[i + 1]]) for i in range(code.mb)]
        self.active = np.empty(0, dtype=np.int64)
        self._thirds = np.array([0, Z, 2 * Z], dtype=np.int64)

    # -- public ---------------------------------------------------------------------
    def set_known(self, frame: int, positions: np.ndarray, values: np.ndarray) -> None:
        """Pin the error bits of ``frame`` at ``positions`` to ``values`` (0/1).

        The channel term of each position inside the running total is replaced, so a
        later :meth:`run` continues from the current messages (warm start).
        """
        Z = self.code.Z
        new = np.where(np.asarray(values).astype(bool), -KNOWN_LLR, KNOWN_LLR).astype(np.int32)
        j, t = positions // Z, positions % Z
        old = self.ch[frame, j, t].astype(np.int32)
        tot = self.L_all[frame, j, t + Z].astype(np.int32) - old + new
        tot = np.clip(tot, -32000, 32000).astype(np.int16)
        self.L_all[frame, j, t + Z] = tot
        self.L_all[frame, j, t + 2 * Z] = tot
        self.ch[frame, j, t] = new.astype(np.int16)
        self.converged[frame] = False

    def run(self, frames: np.ndarray | None = None, max_iter: int = 60,
            stall_iters: int = 8) -> None:
        """Iterate ``frames`` (default: all not yet converged) until each converges,
        stalls for ``stall_iters`` iterations or reaches ``max_iter`` more iterations."""
        if frames is None:
            frames = np.flatnonzero(~self.converged)
        self.active = np.asarray(frames, dtype=np.int64)
        self.L = self.L_all[self.active]
        self.C = self.C_all[self.active]
        best = np.full(self.active.shape[0], np.iinfo(np.int64).max)
        since = np.zeros(self.active.shape[0], dtype=np.int64)
        for _ in range(max_iter):
            if self.active.shape[0] == 0:
                break
            unsat = self._iterate()
            self.iterations[self.active] += 1
            done = np.zeros(self.active.shape[0], dtype=bool)
            cand = np.flatnonzero(unsat == 0)
            if cand.size:
                ok = self._verify(cand)
                self.converged[self.active[cand[ok]]] = True
                done[cand[ok]] = True
            improved = unsat < best
            best = np.where(improved, unsat, best)
            since = np.where(improved, 0, since + 1)
            done |= since >= stall_iters
            if done.any():
                self._retire(done)
                best, since = best[~done], since[~done]
        if self.active.shape[0]:
            self._retire(np.ones(self.active.shape[0], dtype=bool))

    # -- internals ------------------------------------------------------------------
    def _retire(self, mask: np.ndarray) -> None:
        Z = self.code.Z
        rows = np.flatnonzero(mask)
        fr = self.active[rows]
        self.hard[fr] = (self.L[rows, :, Z:2 * Z] < 0).reshape(rows.shape[0], -1)
        self.L_all[fr] = self.L[rows]
        self.C_all[fr] = self.C[rows]
        keep = ~mask
        self.active = self.active[keep]
        self.L = self.L[keep]
        self.C = self.C[keep]

    def _verify(self, rows: np.ndarray) -> np.ndarray:
        Z = self.code.Z
        hard = (self.L[rows, :, Z:2 * Z] < 0).astype(np.uint8).reshape(rows.shape[0], -1)
        syn = self.code.syndrome(hard).astype(bool)
        tgt = self.target[self.active[rows]].reshape(rows.shape[0], -1)
        return np.all(syn == tgt, axis=1)

    def _iterate(self) -> np.ndarray:
        """One layered iteration over the active frames; returns unsatisfied counts."""
        code = self.code
        Z = code.Z
        F = self.active.shape[0]
        L, C = self.L, self.C
        win = _window(L, Z, writeable=True)
        fbase = np.arange(F, dtype=np.int64)[:, None] * (code.nb * 4 * Z)
        tgt = self.target[self.active]
        unsat = np.zeros(F, dtype=np.int64)
        for i, (b0, b1, cols, shifts) in enumerate(self._layers):
            b1 - b0
            off = fbase + (cols * (4 * Z) + shifts)[None, :]         # (F, d)
            Lc = win[off + Z]                                         # (F, d, Z)
            # checks as the layer sees them (stopping rule)
            par_now = np.bitwise_xor.reduce(Lc < 0, axis=1)
            unsat += np.count_nonzero(par_now != tgt[:, i], axis=1)
            Cl = C[:, b0:b1]
            t = Lc - Cl
            neg = t < 0
            # check node: |out_e| = φ(Σ_k φ|in_k| - φ|in_e|), in float32 φ sums
            ph = PHI_TABLE.take(t.view(np.uint16))
            S = np.add.reduce(ph, axis=1)
            ph = np.subtract(S[:, None, :], ph, out=ph)
            idx = ph.view(np.int32)
            idx >>= _PSI_SHIFT
            par = np.bitwise_xor.reduce(neg, axis=1) ^ tgt[:, i]
            flip = (neg ^ par[:, None, :]).view(np.int8)
            idx += flip * np.int32(_PSI_HALF)
            mag = PSI_TABLE.take(idx)
            Cl[...] = mag
            t += mag                                                # new totals
            # write back: the windows at s, s+Z, s+2Z put every total into both
            # copies (see the class notes)
            win[off[:, :, None] + self._thirds] = t[:, :, None, :]
        return unsat
