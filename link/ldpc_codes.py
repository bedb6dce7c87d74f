"""Quasi-cyclic LDPC codes for syndrome reconciliation, built from public parameters.

Both ends build the identical parity-check matrix H from ``(nb, mb, Z, profile, seed)``;
nothing about the code travels on the wire but those numbers. Construction is
deterministic (numpy PCG64 seeded by the parameters) and cached per process.

Theory of operation
-------------------
H is an ``mb × nb`` array of ``Z × Z`` blocks (a quasi-cyclic code, "QC"): a block is
either zero or a cyclically shifted identity. Block ``(i, j)`` with shift ``s`` joins
check ``i·Z + r`` to variable ``j·Z + (r + s) mod Z`` for ``r < Z``. So every gather a
belief-propagation decoder needs is a contiguous roll of a ``Z``-long row, which numpy
does at memory speed (ldpc_decode.py), instead of a random gather (4-10x slower).

* Column degrees follow the node-perspective form of an edge degree distribution
  λ(x) (the :data:`PROFILES` table: designed by density evolution for the decoder in
  ldpc_decode.py, after the method of Elkouss, Leverrier, Alléaume, Boutros,
  "Efficient reconciliation protocol for discrete-variable QKD", ISIT 2009,
  arXiv:0901.2140; see docs/ldpc.md). Check degrees are concentrated (two
  consecutive values), the form both Elkouss et al. papers use.
* Degree-2 columns form a forest in the base graph (each joins two block rows in
  different trees), so the lifted degree-2 nodes contain no cycle at all: no
  low-weight codeword made of degree-2 nodes only.
* Shifts are drawn one block at a time, uniformly among the values that close no
  4-cycle (``s_ij - s_ij' + s_i'j' - s_i'j ≠ 0 mod Z``): the lifted graph has girth ≥ 6.
* Puncturing candidates are "untainted" in the sense of Elkouss, Martinez-Mateo,
  Martin, "Untainted puncturing for irregular LDPC codes", IEEE WCL 1 (2012): whole
  block columns that share no block row, lowest degree first. No check then has two
  punctured neighbours, so a punctured node is recoverable in one step and the
  punctured columns of H have disjoint supports — they are linearly independent,
  which makes the leakage of a punctured frame exactly ``m - p`` bits (ldpc.py).
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import as_strided

__all__ = ["PROFILES", "DegreeProfile", "QCCode", "get_code", "profile_for_rate",
           "threshold_efficiency"]

#: Bumped whenever construction changes; part of every code id.
CONSTRUCTION_VERSION = 1


@dataclass(frozen=True)
class DegreeProfile:
    """An edge-perspective variable degree distribution λ designed for ``rate``."""

    name: str
    rate: float
    lam: tuple[tuple[int, float], ...]
    threshold: float        # BSC crossover threshold (published, checked by DE: docs/ldpc.md)
    f_star: float           # efficiency at the threshold, with the check degrees of the source
    source: str

    def node_fractions(self) -> tuple[np.ndarray, np.ndarray]:
        """Degrees and the fraction of variable nodes of each degree."""
        degs = np.array([d for d, _ in self.lam])
        w = np.array([x for _, x in self.lam]) / degs
        return degs, w / w.sum()

    @property
    def edges_per_bit(self) -> float:
        degs, frac = self.node_fractions()
        return float((degs * frac).sum())

    @property
    def max_degree(self) -> int:
        return max(d for d, _ in self.lam)


def _p(name: str, rate: float, thr: float, fs: float, lam: dict[int, float], source: str
       ) -> DegreeProfile:
    s = sum(lam.values())
    return DegreeProfile(name, rate, tuple((d, w / s) for d, w in sorted(lam.items())), thr,
                         fs, source)


#: Variable degree distributions, keyed by name. Filled from density-evolution design
#: runs (docs/ldpc.md, "Codes"); check degrees follow from the rate.
PROFILES: dict[str, DegreeProfile] = {
    p.name: p for p in [
        # Martinez-Mateo, Elkouss, Martin, "Blind reconciliation", QIC 12 (2012),
        # Appendix B (designed for ≤ 6.06 edges per bit)
        _p("mm050", 0.50, 0.102592, 1.047,
           {2: .159673, 3: .121875, 4: .11261, 5: .190871, 10: .0770616, 25: .337909},
           "Martinez-Mateo et al. 2012, App. B.1"),
        _p("mm060", 0.60, 0.0745261, 1.043,
           {2: .11653, 3: .125646, 4: .108507, 5: .0534223, 7: .0727228, 8: .0347964,
            9: .0729986, 18: .0752607, 32: .117103, 45: .223013},
           "Martinez-Mateo et al. 2012, App. B.2"),
        _p("mm070", 0.70, 0.0501875, 1.045,
           {2: .091699, 3: .171401, 4: .0683878, 5: .120523, 11: .187471, 28: .208278,
            30: .152239},
           "Martinez-Mateo et al. 2012, App. B.3"),
        _p("mm080", 0.80, 0.0289413, 1.053,
           {2: .0667948, 3: .194832, 4: .0570523, 5: .0645024, 9: .204606, 15: .0964409,
            29: .23872, 35: .0770523},
           "Martinez-Mateo et al. 2012, App. B.4"),
        # Elkouss, Leverrier, Alléaume, Boutros, ISIT 2009 (arXiv:0901.2140), Table I
        _p("elk085", 0.85, 0.0199, 1.025,
           {2: .04528, 3: .20537, 4: .05878, 5: .094274, 6: .08454, 7: .01176, 9: .05137,
            21: .50015},
           "Elkouss et al. 2009, Table I, rate 0.85"),
        # the same rate-0.85 λ at higher rates (check degrees from the rate); thresholds
        # from density evolution of ldpc_decode.py's decoder (docs/ldpc.md). The
        # paper's own rate-0.90 profile reaches only f* = 1.166 there.
        _p("elk085r90", 0.90, 0.01205, 1.063,
           {2: .04528, 3: .20537, 4: .05878, 5: .094274, 6: .08454, 7: .01176, 9: .05137,
            21: .50015},
           "Elkouss et al. 2009 rate-0.85 λ, at rate 0.90"),
        _p("elk085r95", 0.95, 0.00470, 1.159,
           {2: .04528, 3: .20537, 4: .05878, 5: .094274, 6: .08454, 7: .01176, 9: .05137,
            21: .50015},
           "Elkouss et al. 2009 rate-0.85 λ, at rate 0.95"),
    ]
}


def threshold_efficiency(profile: DegreeProfile) -> float:
    """f at the profile's BSC threshold: (1 - rate)/h(threshold) at its source's rate."""
    return profile.f_star


def profile_for_rate(rate: float) -> DegreeProfile:
    """The profile designed for the rate nearest ``rate``."""
    return min(PROFILES.values(), key=lambda p: (abs(p.rate - rate), p.name))


def _round_counts(frac: np.ndarray, total: int) -> np.ndarray:
    """Integer counts summing to ``total`` (largest remainder)."""
    raw = frac * total
    cnt = np.floor(raw).astype(np.int64)
    short = total - int(cnt.sum())
    if short > 0:
        cnt[np.argsort(-(raw - cnt), kind="stable")[:short]] += 1
    return cnt


def _column_degrees(profile: DegreeProfile, nb: int, mb: int) -> np.ndarray:
    degs, frac = profile.node_fractions()
    cnt = _round_counts(frac, nb)
    degs = np.minimum(degs, mb)
    col = np.repeat(degs, cnt)
    # degree-2 columns must fit in a forest on mb rows
    n2 = int((col == 2).sum())
    if n2 > mb - 1:
        col[np.flatnonzero(col == 2)[: n2 - (mb - 1)]] = 3
    return np.sort(col)


def _base_graph(col_deg: np.ndarray, mb: int, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the nonzero blocks (no repeated block)."""
    col_deg.shape[0]
    total = int(col_deg.sum())
    cap = np.full(mb, total // mb, dtype=np.int64)
    cap[rng.permutation(mb)[: total % mb]] += 1
    rows: list[int] = []
    cols: list[int] = []
    # degree-2 columns: a random recursive forest over a random row order
    two = np.flatnonzero(col_deg == 2)
    order = rng.permutation(mb)
    for k, j in enumerate(two):
        a = int(order[k + 1])
        b = int(order[rng.integers(0, k + 1)])
        rows += [a, b]
        cols += [int(j), int(j)]
        cap[a] -= 1
        cap[b] -= 1
    rest = np.flatnonzero(col_deg != 2)
    rest = rest[np.argsort(-col_deg[rest], kind="stable")]
    for j in rest:
        d = int(col_deg[j])
        # rows with the most room left, ties broken at random
        pick = np.lexsort((rng.random(mb), -cap))[:d]
        rows += [int(r) for r in pick]
        cols += [int(j)] * d
        cap[pick] -= 1
    return np.array(rows, dtype=np.int64), np.array(cols, dtype=np.int64)


def _shifts(rows: np.ndarray, cols: np.ndarray, mb: int, nb: int, Z: int,
            rng: np.random.Generator) -> np.ndarray:
    """Circulant shifts closing no 4-cycle, drawn block by block."""
    S = np.full((mb, nb), -1, dtype=np.int64)
    out = np.empty(rows.shape[0], dtype=np.int64)
    for e in rng.permutation(rows.shape[0]):
        i, j = int(rows[e]), int(cols[e])
        r2 = np.flatnonzero(S[:, j] >= 0)
        c2 = np.flatnonzero(S[i, :] >= 0)
        if r2.size and c2.size:
            sub = S[np.ix_(r2, c2)]
            ok = sub >= 0
            bad = (S[i, c2][None, :] - sub + S[r2, j][:, None]) % Z
            forbidden = np.unique(bad[ok])
        else:
            forbidden = np.empty(0, dtype=np.int64)
        s = int(rng.integers(0, Z))
        # (if every shift closes a 4-cycle — only for tiny Z — keep the random one)
        if 0 < forbidden.size < Z and np.any(forbidden == s):
            allowed = np.setdiff1d(np.arange(Z), forbidden, assume_unique=False)
            s = int(allowed[rng.integers(0, allowed.size)])
        S[i, j] = s
        out[e] = s
    return out


class QCCode:
    """A quasi-cyclic parity-check matrix and the tables its users need.

    Blocks are stored sorted by (row, column); ``row_ptr[i]:row_ptr[i+1]`` are the
    blocks of block row ``i``. Variable ``j·Z + t`` is bit ``t`` of block column ``j``;
    check ``i·Z + r`` is parity ``r`` of block row ``i``.
    """

    def __init__(self, nb: int, mb: int, Z: int, profile: DegreeProfile, seed: int) -> None:
        if not (2 <= mb < nb and Z >= 8):
            raise ValueError("need 2 <= mb < nb and Z >= 8")
        self.nb, self.mb, self.Z = nb, mb, Z
        self.n, self.m = nb * Z, mb * Z
        self.profile = profile
        self.seed = seed
        rng = np.random.default_rng([CONSTRUCTION_VERSION, nb, mb, Z, seed & (2**63 - 1)]
                                    + [int(x * 1e6) for _, x in profile.lam])
        col_deg = _column_degrees(profile, nb, mb)
        rows, cols = _base_graph(col_deg, mb, rng)
        shifts = _shifts(rows, cols, mb, nb, Z, rng)
        order = np.lexsort((cols, rows))
        self.rows = rows[order]
        self.cols = cols[order]
        self.shifts = shifts[order]
        self.row_ptr = np.searchsorted(self.rows, np.arange(mb + 1))
        self.col_deg = np.bincount(self.cols, minlength=nb)
        self.row_deg = np.diff(self.row_ptr)
        self.n_blocks = int(self.rows.shape[0])
        h = hashlib.sha256()
        h.update(f"qkdnet-qc-ldpc/{CONSTRUCTION_VERSION}/{nb}/{mb}/{Z}".encode())
        for a in (self.rows, self.cols, self.shifts):
            h.update(a.astype("<i4").tobytes())
        #: public identifier of H (hash of the construction parameters and blocks)
        self.code_id = h.hexdigest()[:16]
        self._punct = self._untainted_order(rng)

    def __repr__(self) -> str:
        return (f"QCCode(n={self.n}, m={self.m}, Z={self.Z}, blocks={self.n_blocks}, "
                f"id={self.code_id})")

    @property
    def rate(self) -> float:
        return 1.0 - self.m / self.n

    def _untainted_order(self, rng: np.random.Generator) -> np.ndarray:
        """Puncturing candidates: nodes of row-disjoint block columns, low degree first."""
        used = np.zeros(self.mb, dtype=bool)
        picked: list[int] = []
        cand = np.lexsort((rng.random(self.nb), self.col_deg))
        blocks_of = [self.rows[self.cols == j] for j in range(self.nb)]
        for j in cand:
            r = blocks_of[int(j)]
            if not used[r].any():
                used[r] = True
                picked.append(int(j))
        cols = np.array(picked, dtype=np.int64)
        # interleave: position t of every picked column, in a random t order, so a
        # prefix of any length spreads over all picked columns
        ts = rng.permutation(self.Z)
        return (cols[None, :] * self.Z + ts[:, None]).reshape(-1)

    def puncture_candidates(self, count: int) -> np.ndarray:
        """The first ``count`` untainted positions (raises if there are fewer)."""
        if count > self._punct.shape[0]:
            raise ValueError(f"at most {self._punct.shape[0]} untainted positions, "
                             f"{count} asked")
        return self._punct[:count]

    @property
    def max_punctured(self) -> int:
        return int(self._punct.shape[0])

    def gather_offsets(self, frames: int, width: int) -> np.ndarray:
        """Row offsets into a ``(frames, nb, width)`` array flattened, rolled per block."""
        base = np.arange(frames, dtype=np.int64)[:, None] * (self.nb * width)
        return base + (self.cols * width + self.shifts)[None, :]

    def syndrome(self, bits: np.ndarray) -> np.ndarray:
        """H·x for ``bits`` of shape (F, n) (0/1 uint8); returns (F, m) uint8."""
        F = bits.shape[0]
        Z = self.Z
        ext = np.empty((F, self.nb, 2 * Z), dtype=np.uint8)
        x = bits.reshape(F, self.nb, Z)
        ext[:, :, :Z] = x
        ext[:, :, Z:] = x
        flat = ext.reshape(-1)
        win = as_strided(flat, shape=(flat.shape[0] - Z + 1, Z),
                         strides=(flat.strides[0], flat.strides[0]), writeable=False)
        g = win[self.gather_offsets(F, 2 * Z)]          # (F, blocks, Z)
        s = np.bitwise_xor.reduceat(g, self.row_ptr[:-1], axis=1)
        return s.reshape(F, self.m)

    def dense(self) -> np.ndarray:
        """H as a dense 0/1 matrix (tests and small codes only)."""
        if self.n * self.m > 50_000_000:
            raise ValueError("code too large for a dense matrix")
        H = np.zeros((self.m, self.n), dtype=np.uint8)
        r = np.arange(self.Z)
        for i, j, s in zip(self.rows, self.cols, self.shifts, strict=True):
            H[i * self.Z + r, j * self.Z + (r + s) % self.Z] = 1
        return H


@functools.lru_cache(maxsize=16)
def get_code(nb: int, mb: int, Z: int, profile: str, seed: int) -> QCCode:
    """The code for these public parameters, built once per process."""
    return QCCode(nb, mb, Z, PROFILES[profile], seed)


def lifting_for(n_target: int, nb: int) -> int:
    """Circulant size Z so that nb·Z ≥ n_target."""
    return max(8, math.ceil(n_target / nb))
