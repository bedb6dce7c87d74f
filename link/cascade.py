"""Cascade information reconciliation, vectorised and sans-I/O.

Bob (the :class:`CascadeCorrector`) corrects his sifted key towards Alice's; Alice only
answers parity requests (:class:`CascadeResponder` / :func:`answer_parities`). Every
parity Alice discloses is one bit of leakage, counted in ``leaked_bits``.

Theory of operation
-------------------
Cascade (Brassard & Salvail 1993) runs passes; pass ``i`` permutes the key with a
public permutation (pass 0: identity), cuts it into blocks of ``k_i`` bits and compares
block parities. A block whose parities differ holds an odd number of errors; a binary
search (BINARY) over halves finds one error and Bob flips it. Flipping a bit changes
the parity of the block holding it in every *earlier* pass, so those blocks now
disagree again and are searched too (the "cascade", back-tracking).

Serial Cascade does one binary search at a time. Here one *step* advances every active
search by one level at once: the step's request carries the left half of every
active search's current range (any pass); Bob derives the right half's parity from the
range's known parity (no disclosure). Searches that reach one bit flip it, all at the
end of the step; then

* any other active search whose current range contains a flipped bit is cancelled
  (its "odd" premise may no longer hold), and
* for every pass already started, each block holding a flipped bit is re-checked
  against Alice's block parity; odd blocks with no active search start a new search
  at block level (this is the back-tracking, done for all flips at once).

A step is one round trip, so the round trips per pass are about ``log2 k`` plus the
cascade depth, as in serial Cascade. The top-level block parities of pass ``i + 1``
ride along with the first search step of pass ``i`` (Alice's parities do not depend
on Bob's corrections, and every pass discloses all its block parities anyway), which
saves one round trip per pass without changing what is disclosed.

Alice computes any range parity in O(1) from a prefix-XOR array of her permuted key
per pass (built once per pass and cached in :class:`CascadeResponder`).

Parameters (:meth:`CascadeParams.for_qber`): block sizes after Martinez-Mateo, Pacher,
Peev, Ciurana, Martin, "Demystifying the information reconciliation protocol
Cascade", QIC 15 (2015), arXiv:1407.3257 — first block about 0.73/QBER, doubling each
pass (Yan et al. 2008 use the same doubling), and 16 passes so that the residual frame
error rate is negligible.

Bits: the public API takes and returns packed ``numpy.packbits`` (MSB-first) keys;
internally Bob keeps one uint8 per bit because the work is gathers through
permutations, which packed bytes cannot do without unpacking.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from qkdnet.errors import ErrorCode, LocalProtocolError, RemoteProtocolError

__all__ = [
    "CascadeCorrector",
    "CascadeParams",
    "CascadePlan",
    "CascadeResponder",
    "ParityRequest",
    "answer_parities",
]

#: Most ranges per request (the wire's PARITY_REQUEST limit, link/wire.py MAX_RANGES).
DEFAULT_MAX_RANGES = 1 << 16


@dataclass(frozen=True)
class CascadeParams:
    """Block size of each pass (pass 0 first)."""

    block_sizes: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.block_sizes or min(self.block_sizes) < 1 or len(self.block_sizes) > 255:
            raise ValueError("1..255 passes with block sizes >= 1 are required")

    @classmethod
    def for_qber(cls, qber: float, n_bits: int | None = None, *, passes: int = 14,
                 schedule: str = "yan") -> CascadeParams:
        """Block sizes for an expected QBER.

        ``"yan"`` (default): Yan et al. 2008's shape as evaluated by Martinez-Mateo et
        al. 2015 — k1 = ⌈0.8/QBER⌉, a larger second block, then n/2 for every further
        pass (14 in all; each n/2 pass discloses only 2 block parities). With sub-block
        reuse the second block works best at 7·k1 (Yan et al.: 5·k1); measured in
        docs/cascade.md.
        ``"doubling"``: the original schedule k1 = ⌈0.73/QBER⌉, k_{i+1} = 2·k_i.
        Block sizes are capped at ``n_bits`` when it is given.
        """
        q = min(max(float(qber), 1e-4), 0.25)
        big = (n_bits // 2) if n_bits else 1 << 30
        if schedule == "yan":
            k1 = max(4, math.ceil(0.8 / q))
            sizes = [k1, 7 * k1] + [max(big, 7 * k1)] * (passes - 2)
        elif schedule == "doubling":
            k1 = max(4, math.ceil(0.73 / q))
            sizes = [k1 << i for i in range(passes)]
        else:
            raise ValueError(f"unknown Cascade schedule {schedule!r}")
        if n_bits is not None:
            sizes = [max(1, min(k, n_bits)) for k in sizes]
        return cls(tuple(sizes))


class CascadePlan:
    """The public part of a Cascade run: sizes, block sizes and pass permutations.

    Both ends build it from the same ``(n_bits, qber, seed)`` (the seed is public,
    exchanged on the sideband). Permutations are generated lazily per pass and
    cached (int32, 4 bytes per bit per pass; inverses only where asked for).
    """

    def __init__(self, n_bits: int, qber: float, seed: int,
                 params: CascadeParams | None = None) -> None:
        if n_bits < 1 or n_bits >= 1 << 31:
            raise ValueError("n_bits must be in [1, 2**31)")
        self.n_bits = int(n_bits)
        self.qber = float(qber)
        self.seed = int(seed)
        self.params = params or CascadeParams.for_qber(qber, n_bits)
        self.block_sizes = tuple(max(1, min(k, n_bits)) for k in self.params.block_sizes)
        self.n_passes = len(self.block_sizes)
        self._perm: dict[int, np.ndarray] = {}
        self._inv: dict[int, np.ndarray] = {}

    def __repr__(self) -> str:
        return f"CascadePlan(n_bits={self.n_bits}, passes={self.n_passes}, seed=<public>)"

    def n_blocks(self, p: int) -> int:
        """Number of blocks in pass ``p``."""
        return -(-self.n_bits // self.block_sizes[p])

    def perm(self, p: int) -> np.ndarray:
        """Permutation of pass ``p``: position ``j`` of the pass holds key bit ``perm[j]``."""
        if p not in self._perm:
            rng = np.random.default_rng([self.seed & (2**63 - 1), p])
            if p == 0:
                perm = np.arange(self.n_bits, dtype=np.int32)
            elif self.n_blocks(p) <= 2:
                # Two blocks: all that matters is which half each bit lands in, so a
                # uniformly random split (kept in key order) does the job of a full
                # shuffle at a tenth of the cost. Block 0 is the first k entries.
                side = np.unpackbits(np.frombuffer(rng.bytes((self.n_bits + 7) // 8),
                                                   dtype=np.uint8), count=self.n_bits)
                perm = np.concatenate([np.flatnonzero(side == 0),
                                       np.flatnonzero(side)]).astype(np.int32)
            else:
                perm = np.arange(self.n_bits, dtype=np.int32)
                rng.shuffle(perm)
            self._perm[p] = perm
        return self._perm[p]

    def inverse(self, p: int) -> np.ndarray:
        """Inverse permutation of pass ``p``: key bit ``i`` sits at position ``inv[i]``."""
        if p not in self._inv:
            perm = self.perm(p)
            inv = np.empty_like(perm)
            inv[perm] = np.arange(self.n_bits, dtype=np.int32)
            self._inv[p] = inv
        return self._inv[p]

    def block_ranges(self, p: int) -> tuple[np.ndarray, np.ndarray]:
        """(starts, ends) of every block of pass ``p``."""
        k = self.block_sizes[p]
        starts = np.arange(0, self.n_bits, k, dtype=np.int64)
        return starts, np.minimum(starts + k, self.n_bits)


@dataclass(frozen=True)
class ParityRequest:
    """One batched request: range ``i`` is ``[starts[i], ends[i])`` in pass ``passes[i]``'s
    permuted order. ``step`` counts requests from 0 (for the wire's step field)."""

    step: int
    passes: np.ndarray   # uint8
    starts: np.ndarray   # int64
    ends: np.ndarray     # int64

    def __len__(self) -> int:
        return int(self.starts.shape[0])

    def __repr__(self) -> str:
        return f"ParityRequest(step={self.step}, ranges={len(self)})"


def _unpack(bits_packed: bytes | np.ndarray, n_bits: int) -> np.ndarray:
    raw = np.frombuffer(bits_packed, dtype=np.uint8) if isinstance(bits_packed, bytes | bytearray) \
        else np.asarray(bits_packed, dtype=np.uint8)
    if raw.shape[0] * 8 < n_bits:
        raise ValueError("packed key shorter than n_bits")
    return np.unpackbits(raw, count=n_bits)


def _range_parities(bits: np.ndarray, perm: np.ndarray, starts: np.ndarray,
                    ends: np.ndarray) -> np.ndarray:
    """Parity of ``bits[perm[s:e]]`` for every range, by one gather and one reduceat."""
    if starts.shape[0] == 0:
        return np.zeros(0, dtype=np.uint8)
    lengths = ends - starts
    offsets = np.zeros(lengths.shape[0], dtype=np.int64)
    np.cumsum(lengths[:-1], out=offsets[1:])
    idx = np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(starts - offsets, lengths)
    return np.bitwise_xor.reduceat(bits[perm[idx]], offsets)


class CascadeResponder:
    """Alice's side: answers parity requests from prefix-XOR arrays (O(1) per range).

    The prefix array of a pass is built the first time the pass is asked about
    (one gather and one XOR-accumulate over the key).
    """

    def __init__(self, alice_bits_packed: bytes | np.ndarray, n_bits: int,
                 plan: CascadePlan) -> None:
        if n_bits != plan.n_bits:
            raise ValueError("n_bits does not match the plan")
        self._bits = _unpack(alice_bits_packed, n_bits)
        self._plan = plan
        self._prefix: dict[int, np.ndarray] = {}
        self.disclosed_bits = 0

    def __repr__(self) -> str:
        return f"CascadeResponder(n_bits={self._plan.n_bits}, disclosed={self.disclosed_bits})"

    def _pref(self, p: int) -> np.ndarray:
        if p not in self._prefix:
            c = np.zeros(self._plan.n_bits + 1, dtype=np.uint8)
            np.bitwise_xor.accumulate(self._bits[self._plan.perm(p)], out=c[1:])
            self._prefix[p] = c
        return self._prefix[p]

    def answer(self, request: ParityRequest) -> np.ndarray:
        """One uint8 0/1 parity per range. Raises RemoteProtocolError on a bad request."""
        passes = np.asarray(request.passes).astype(np.int64)
        starts = np.asarray(request.starts).astype(np.int64)
        ends = np.asarray(request.ends).astype(np.int64)
        n = self._plan.n_bits
        if not (passes.shape == starts.shape == ends.shape) or passes.ndim != 1:
            raise RemoteProtocolError("parity request arrays differ in length",
                                      ErrorCode.MALFORMED_FRAME)
        if ((passes < 0) | (passes >= self._plan.n_passes)).any() \
                or ((starts < 0) | (starts >= ends) | (ends > n)).any():
            raise RemoteProtocolError("parity request range out of the key")
        out = np.empty(passes.shape[0], dtype=np.uint8)
        for p in np.unique(passes):
            sel = passes == p
            c = self._pref(int(p))
            out[sel] = c[ends[sel]] ^ c[starts[sel]]
        self.disclosed_bits += int(out.shape[0])
        return out


def answer_parities(alice_bits_packed: bytes | np.ndarray, n_bits: int, plan: CascadePlan,
                    request: ParityRequest) -> np.ndarray:
    """Alice's answer to one request: one uint8 0/1 per range.

    Stateless convenience wrapper: it rebuilds the prefix arrays each call (O(n) per
    pass asked); a session answering many steps should keep a :class:`CascadeResponder`.
    """
    return CascadeResponder(alice_bits_packed, n_bits, plan).answer(request)


class CascadeCorrector:
    """Bob's side of Cascade, sans-I/O.

    Loop: ``q = next_request()``; if ``None`` the run is finished; else send ``q``,
    feed Alice's parities to :meth:`receive`. ``corrected`` is the key (packed) and
    ``leaked_bits`` the number of parities disclosed so far (= ranges requested).
    ``max_ranges`` splits large steps into several requests (the wire's limit).
    """

    def __init__(self, bob_bits_packed: bytes | np.ndarray, n_bits: int, plan: CascadePlan,
                 *, max_ranges: int = DEFAULT_MAX_RANGES, max_steps: int = 100_000) -> None:
        if n_bits != plan.n_bits:
            raise ValueError("n_bits does not match the plan")
        self._plan = plan
        self._bits = _unpack(bob_bits_packed, n_bits)
        self._max_ranges = int(max_ranges)
        self._max_steps = max_steps
        P = plan.n_passes
        self._alice_block = [np.zeros(0, dtype=np.uint8) for _ in range(P)]
        self._fetched = [False] * P          # top-level parities of the pass received
        self._started = [False] * P          # pass compared and its searches launched
        self._searching = [np.zeros(plan.n_blocks(p), dtype=bool) for p in range(P)]
        self._cur = 0                        # current pass
        # active searches: pass, block, current range [s, e) (odd mismatch assumed)
        self._sp = np.zeros(0, dtype=np.int64)
        self._sb = np.zeros(0, dtype=np.int64)
        self._ss = np.zeros(0, dtype=np.int64)
        self._se = np.zeros(0, dtype=np.int64)
        self._sd = np.zeros(0, dtype=np.int64)   # depth of the range in its block's tree
        self._sa = np.zeros(0, dtype=np.uint8)   # Alice's parity of the range
        # sub-block reuse: per pass and position, depth and Alice parity of the deepest
        # node (range of the block's halving tree) whose parity Alice disclosed
        self._kdepth: list[np.ndarray] = [np.zeros(0, np.uint8) for _ in range(P)]
        self._kpar: list[np.ndarray] = [np.zeros(0, np.uint8) for _ in range(P)]
        # the step being exchanged: its ranges, and how far they were sent/answered
        self._step_ranges: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._step_top: list[int] = []       # passes whose block parities are in the step
        self._n_search_ranges = 0
        self._sent = 0
        self._answers: list[np.ndarray] = []
        self._outstanding: int | None = None
        self._requests = 0
        self.steps = 0                       # completed steps (batched round trips)
        self.leaked_bits = 0
        self.bits_flipped = 0
        self.cancelled_searches = 0
        self._done = False

    def __repr__(self) -> str:
        return (f"CascadeCorrector(n_bits={self._plan.n_bits}, pass={self._cur}, "
                f"steps={self.steps}, leaked={self.leaked_bits})")

    # ---------------------------------------------------------------- public API
    @property
    def done(self) -> bool:
        """True once every pass has finished."""
        return self._done

    @property
    def corrected(self) -> bytes:
        """Bob's current (after the run: corrected) key, packed."""
        return np.packbits(self._bits).tobytes()

    def corrected_bits(self) -> np.ndarray:
        """Copy of the current key, one uint8 per bit."""
        return self._bits.copy()

    def next_request(self) -> ParityRequest | None:
        """The next request to send to Alice, or ``None`` when Cascade is finished."""
        if self._outstanding is not None:
            raise LocalProtocolError("previous parity request not answered yet")
        if self._step_ranges is None and (self._done or not self._build_step()):
            self._done = True
            return None
        assert self._step_ranges is not None
        passes, starts, ends = self._step_ranges
        lo, hi = self._sent, min(self._sent + self._max_ranges, passes.shape[0])
        req = ParityRequest(self._requests, passes[lo:hi].astype(np.uint8), starts[lo:hi],
                            ends[lo:hi])
        self._requests += 1
        self._sent = hi
        self._outstanding = hi - lo
        self.leaked_bits += hi - lo
        return req

    def receive(self, parities: np.ndarray | bytes) -> None:
        """Alice's parities for the last request (one 0/1 per range, in order)."""
        if self._outstanding is None:
            raise LocalProtocolError("no parity request outstanding")
        ans = np.frombuffer(parities, dtype=np.uint8) if isinstance(parities, bytes | bytearray) \
            else np.asarray(parities)
        if ans.ndim != 1 or ans.shape[0] != self._outstanding:
            raise RemoteProtocolError(
                f"parity answer has {ans.shape[0] if ans.ndim == 1 else -1} entries, "
                f"expected {self._outstanding}")
        if ans.size and int(ans.max()) > 1:
            raise RemoteProtocolError("parity answer entries must be 0 or 1")
        self._answers.append(ans.astype(np.uint8))
        self._outstanding = None
        assert self._step_ranges is not None
        if self._sent == self._step_ranges[0].shape[0]:
            self._finish_step(np.concatenate(self._answers))

    # ---------------------------------------------------------------- internals
    def _build_step(self) -> bool:
        """Assemble the next step's ranges; False when Cascade is complete."""
        while True:
            if self._sp.shape[0] == 0:
                # no searches: start the current pass if its block parities are known
                if self._cur >= self._plan.n_passes:
                    return False
                if self._started[self._cur]:
                    self._cur += 1
                    continue
                if self._fetched[self._cur]:
                    self._start_pass(self._cur)
                    continue
                else:
                    self._set_step([], [self._cur])
                    return True
            if self.steps >= self._max_steps:
                raise LocalProtocolError("Cascade did not converge within its step limit")
            # searches advance; prefetch the next pass's block parities alongside
            nxt = self._cur + 1
            top = [nxt] if nxt < self._plan.n_passes and not self._fetched[nxt] else []
            self._set_step([True], top)
            return True

    def _set_step(self, with_search: list[bool], top: list[int]) -> None:
        ps, ss, es = [], [], []
        if with_search:
            mid = self._ss + (self._se - self._ss) // 2
            ps.append(self._sp)
            ss.append(self._ss)
            es.append(mid)
        self._n_search_ranges = int(self._sp.shape[0]) if with_search else 0
        for p in top:
            s, e = self._plan.block_ranges(p)
            ps.append(np.full(s.shape[0], p, dtype=np.int64))
            ss.append(s)
            es.append(e)
        self._step_top = top
        self._step_ranges = (np.concatenate(ps), np.concatenate(ss), np.concatenate(es))
        self._sent = 0
        self._answers = []

    def _finish_step(self, ans: np.ndarray) -> None:
        k = self._n_search_ranges
        off = k
        for p in self._step_top:
            nb = self._plan.n_blocks(p)
            self._alice_block[p] = ans[off:off + nb]
            self._fetched[p] = True
            off += nb
        self._step_ranges = None
        self.steps += 1
        if k:
            self._advance_searches(ans[:k])

    def _parities(self, passes: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        out = np.empty(passes.shape[0], dtype=np.uint8)
        for p in np.unique(passes):
            sel = passes == p
            out[sel] = _range_parities(self._bits, self._plan.perm(int(p)), starts[sel], ends[sel])
        return out

    def _start_pass(self, p: int) -> None:
        self._started[p] = True
        self._kdepth[p] = np.zeros(self._plan.n_bits, dtype=np.uint8)
        self._kpar[p] = np.repeat(self._alice_block[p], self._plan.block_sizes[p])[
            :self._plan.n_bits]
        s, e = self._plan.block_ranges(p)
        bob = _range_parities(self._bits, self._plan.perm(p), s, e)
        odd = np.flatnonzero(bob != self._alice_block[p])
        self._push(p, odd, s[odd], e[odd], np.zeros(odd.shape[0], np.int64),
                   self._alice_block[p][odd])

    def _push(self, p: int, blocks: np.ndarray, s: np.ndarray, e: np.ndarray, d: np.ndarray,
              a: np.ndarray) -> None:
        """Start searches in pass ``p`` on ranges [s, e) at tree depth d, Alice parity a."""
        if blocks.shape[0] == 0:
            return
        self._searching[p][blocks] = True
        self._sp = np.concatenate([self._sp, np.full(blocks.shape[0], p, dtype=np.int64)])
        self._sb = np.concatenate([self._sb, blocks.astype(np.int64)])
        self._ss = np.concatenate([self._ss, s.astype(np.int64)])
        self._se = np.concatenate([self._se, e.astype(np.int64)])
        self._sd = np.concatenate([self._sd, d.astype(np.int64)])
        self._sa = np.concatenate([self._sa, a.astype(np.uint8)])
        if ((e - s) == 1).any():          # a one-bit range with odd mismatch is located
            self._resolve()

    def _keep(self, keep: np.ndarray) -> None:
        self._sp, self._sb = self._sp[keep], self._sb[keep]
        self._ss, self._se = self._ss[keep], self._se[keep]
        self._sd, self._sa = self._sd[keep], self._sa[keep]

    def _advance_searches(self, alice_left: np.ndarray) -> None:
        mid = self._ss + (self._se - self._ss) // 2
        bob_left = self._parities(self._sp, self._ss, mid)
        self._record(alice_left, mid)
        left_odd = bob_left != alice_left
        self._se = np.where(left_odd, mid, self._se)
        self._ss = np.where(left_odd, self._ss, mid)
        self._sa = np.where(left_odd, alice_left, self._sa ^ alice_left).astype(np.uint8)
        self._sd = self._sd + 1
        self._resolve()

    def _record(self, alice_left: np.ndarray, mid: np.ndarray) -> None:
        """Remember the parities of both children of every searched range (sub-block
        reuse, Martinez-Mateo et al. 2015): per position, the deepest known node."""
        for p in np.unique(self._sp):
            sel = np.flatnonzero(self._sp == p)
            s, e, m = self._ss[sel], self._se[sel], mid[sel]
            lengths = e - s
            offsets = np.zeros(sel.shape[0], dtype=np.int64)
            np.cumsum(lengths[:-1], out=offsets[1:])
            rep = np.repeat(np.arange(sel.shape[0]), lengths)
            idx = np.arange(int(lengths.sum()), dtype=np.int64) - offsets[rep] + s[rep]
            depth = (self._sd[sel] + 1)[rep]
            kd = self._kdepth[int(p)]
            upd = depth > kd[idx]
            idx, rep, depth = idx[upd], rep[upd], depth[upd]
            al = alice_left[sel]
            val = np.where(idx < m[rep], al[rep], (self._sa[sel] ^ al)[rep])
            kd[idx] = depth
            self._kpar[int(p)][idx] = val

    def _node_of(self, p: int, pos: np.ndarray, depth: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
        """[s, e) of the node at ``depth`` containing each position (pass p's tree)."""
        k = self._plan.block_sizes[p]
        s = (pos // k) * k
        e = np.minimum(s + k, self._plan.n_bits)
        for lvl in range(int(depth.max(initial=0))):
            go = depth > lvl
            m = s + (e - s) // 2
            left = pos < m
            e = np.where(go & left, m, e)
            s = np.where(go & ~left, m, s)
        return s, e

    def _resolve(self) -> None:
        """Flip every located error, cancel hit searches, back-track into earlier passes."""
        while True:
            found = (self._se - self._ss) == 1
            if not found.any():
                return
            pos = np.empty(int(found.sum()), dtype=np.int64)
            fp, fs = self._sp[found], self._ss[found]
            for p in np.unique(fp):
                sel = fp == p
                pos[sel] = self._plan.perm(int(p))[fs[sel]]
            flips = np.unique(pos)
            self._bits[flips] ^= 1
            self.bits_flipped += int(flips.shape[0])
            for p in np.unique(fp):
                self._searching[int(p)][self._sb[found][fp == p]] = False
            self._keep(~found)
            # cancel searches whose current range holds a flipped bit
            hit = np.zeros(self._sp.shape[0], dtype=bool)
            for p in np.unique(self._sp):
                sel = np.flatnonzero(self._sp == p)
                where = np.sort(self._plan.inverse(int(p))[flips])
                cnt = np.searchsorted(where, self._se[sel]) - np.searchsorted(where, self._ss[sel])
                hit[sel] = cnt > 0
            if hit.any():
                self.cancelled_searches += int(hit.sum())
                for p in np.unique(self._sp[hit]):
                    self._searching[int(p)][self._sb[hit & (self._sp == p)]] = False
                self._keep(~hit)
            # back-track: in every started pass, re-check the smallest known node holding
            # each flipped bit, else its whole block
            for p in range(self._plan.n_passes):
                if not self._started[p]:
                    continue
                k = self._plan.block_sizes[p]
                at = self._plan.inverse(p)[flips].astype(np.int64)
                blk = at // k
                free = ~self._searching[p][blk]
                at, blk = at[free], blk[free]
                if at.shape[0] == 0:
                    continue
                # one candidate per block: the flip seen first
                blk, first = np.unique(blk, return_index=True)
                at = at[first]
                depth = self._kdepth[p][at].astype(np.int64)
                s, e = self._node_of(p, at, depth)
                a = self._kpar[p][at]
                bob = _range_parities(self._bits, self._plan.perm(p), s, e)
                odd = bob != a
                # where the deepest node is even, fall back to the block itself
                ev = ~odd & (depth > 0)
                if ev.any():
                    rs = blk[ev] * k
                    re_ = np.minimum(rs + k, self._plan.n_bits)
                    rb = _range_parities(self._bits, self._plan.perm(p), rs, re_)
                    rodd = rb != self._alice_block[p][blk[ev]]
                    idx = np.flatnonzero(ev)[rodd]
                    s[idx], e[idx] = rs[rodd], re_[rodd]
                    depth[idx] = 0
                    a[idx] = self._alice_block[p][blk[idx]]
                    odd[idx] = True
                self._push(p, blk[odd], s[odd], e[odd], depth[odd], a[odd])
