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
search by one level at once: the step's request carries the left part of every
active search's current range (any pass); Bob derives the right part's parity from the
range's known parity (no disclosure). Ranges split into an aligned power-of-two left
part and the rest (with power-of-two block sizes this is plain halving), so every
node of a block's search tree is an aligned interval and the tree can be navigated
with bit arithmetic. Searches that reach one bit flip it, all at the end of the step;
then

* any other active search whose current range contains a flipped bit is cancelled
  (its "odd" premise may no longer hold), and
* for every pass already started, the block holding each flipped bit is re-checked.
  Bob keeps his block parities up to date incrementally and remembers, per block, the
  last search path (node, Alice's parity of it, and of every sibling along the way).
  The search restarts from the smallest node with known Alice parity that holds the
  flipped bit if that node is now odd (the sub-block reuse of Martinez-Mateo et al.),
  else from the whole block if it is odd. This is the back-tracking, done for all
  flips at once.

A step is one round trip: a pass costs about ``log2 k`` steps plus the back-tracking
depth (a few hundred steps per frame in all, measured in docs/cascade.md), where a
serial Cascade that asks one parity per message needs one round trip per parity
(~1e5 for 1e6 bits). The block parities of every pass are asked for in the first
step (Alice's parities do not depend on Bob's corrections, and every pass discloses
all its block parities anyway), which saves one round trip per pass without changing
what is disclosed; Bob still compares each pass only when he reaches it.

Alice computes any range parity in O(1) from a prefix-XOR array of her permuted key
per pass (built once per pass and cached in :class:`CascadeResponder`). Bob's key
changes as he corrects it, so he gathers each range's bits (from a copy of his key
kept in the pass's order), except in two-block passes, where ranges are ~n/2 long:
there he XORs a prefix array of his *initial* key with the parity of the count of
flipped positions in the range (each bit is flipped at most once).

Parameters (:meth:`CascadeParams.for_qber`): after Yan et al. 2008 and Martinez-Mateo,
Pacher, Peev, Ciurana, Martin, "Demystifying the information reconciliation protocol
Cascade", QIC 15 (2015), arXiv:1407.3257 — power-of-two first block near 0.8/QBER, a
second block 8× longer, then 20 passes of two blocks each (see ``for_qber``).

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
    def for_qber(cls, qber: float, n_bits: int | None = None, *, passes: int | None = None,
                 schedule: str = "pow2") -> CascadeParams:
        """Block sizes for an expected QBER.

        ``"pow2"`` (default): k1 = 2^⌊log2(0.8/QBER)⌋, k2 = 8·k1, then two-block
        passes (blocks of about n/2) up to 22 passes. This is Yan et al. 2008's shape
        (a short first block, a longer second, then n/2) with power-of-two sizes as
        recommended by Martinez-Mateo et al. 2015, which keeps every bisection balanced
        and the sub-block tree aligned. Each n/2 pass discloses 2 parities and halves
        the chance that an undetected even error pattern survives, so 20 of them keep
        the residual frame error rate low at a cost of 40 bits (docs/cascade.md).
        ``"yan"``: Yan et al. as published — k1 = ⌈0.8/QBER⌉, k2 = 5·k1, n/2, 10 passes.
        ``"doubling"``: Brassard–Salvail — k1 = ⌈0.73/QBER⌉, k_{i+1} = 2·k_i, 14 passes.
        Block sizes are capped at ``n_bits`` when it is given.
        """
        q = min(max(float(qber), 1e-4), 0.25)
        big = -(-n_bits // 2) if n_bits else 1 << 30
        if schedule == "pow2":
            k1 = max(4, 1 << math.floor(math.log2(0.8 / q)))
            count = passes or 22
            sizes = [k1, 8 * k1] + [max(big, 8 * k1)] * (count - 2)
        elif schedule == "yan":
            k1 = max(4, math.ceil(0.8 / q))
            count = passes or 10
            sizes = [k1, 5 * k1] + [max(big, 5 * k1)] * (count - 2)
        elif schedule == "doubling":
            k1 = max(4, math.ceil(0.73 / q))
            sizes = [k1 << i for i in range(passes or 14)]
        else:
            raise ValueError(f"unknown Cascade schedule {schedule!r}")
        if n_bits is not None:
            sizes = [max(1, min(k, n_bits)) for k in sizes]
        return cls(tuple(sizes))


class CascadePlan:
    """The public part of a Cascade run: sizes, block sizes and pass permutations.

    Both ends build it from the same ``(n_bits, qber, seed)`` (the seed is public,
    exchanged on the sideband). Passes come in three kinds, all derived from the seed:

    * pass 0: the key order (identity);
    * passes with more than two blocks: a uniformly random permutation (Fisher–Yates;
      a cheaper shuffled-grid interleave was tried and cost ~0.02 in f at 5 % QBER);
    * passes with two blocks (the n/2 passes of the Yan schedule): a uniformly random
      split of the key into two sets, each kept in key order; block 0 is the set
      with side bit 0, so its size varies around n/2 (``block_ranges`` gives it). Their
      block parities need no permutation at all (masked popcounts); a search in such
      a pass takes the key in pass order as two compressions and maps positions both
      ways through running side counts (:meth:`key_index`, :meth:`position`), so no
      permutation array is built for them during a run.

    Permutations of the shuffled passes are cached (int32, 4 bytes per bit per pass;
    inverses where asked).
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
        self._side: dict[int, np.ndarray] = {}
        self._counts: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._ranges: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._is_split = tuple(
            p > 0 and self.n_bits >= 64 and -(-self.n_bits // self.block_sizes[p]) == 2
            for p in range(self.n_passes))
        #: split passes in order; bit j of a key bit's side word = its side in split_ids[j]
        self.split_ids = tuple(p for p in range(self.n_passes) if self._is_split[p])
        self._split_bit = {p: j for j, p in enumerate(self.split_ids)}
        self._words: np.ndarray | None = None
        self._ones: np.ndarray | None = None

    def __repr__(self) -> str:
        return f"CascadePlan(n_bits={self.n_bits}, passes={self.n_passes}, seed=<public>)"

    def _rng(self, p: int) -> np.random.Generator:
        return np.random.default_rng([self.seed & (2**63 - 1), p])

    def is_split(self, p: int) -> bool:
        """True for a two-block (random split) pass."""
        return self._is_split[p]

    def side_words(self) -> np.ndarray:
        """Per key bit, its side in every split pass (bit j: split pass ``split_ids[j]``).

        One random word per key bit drives all split passes, so the block parities of
        all of them come from one XOR-reduction (:meth:`split_parities`).
        """
        if self._words is None:
            dt = np.uint32 if len(self.split_ids) <= 32 else np.uint64
            if len(self.split_ids) > 64:
                raise ValueError("at most 64 two-block passes")
            self._words = self._rng(0xFFFF).integers(   # stream id above any pass index
                0, np.iinfo(dt).max, self.n_bits, dtype=dt, endpoint=True)
        return self._words

    def split_bit(self, p: int) -> int:
        """Bit index of split pass ``p`` in the side words."""
        return self._split_bit[p]

    def split_ones(self, p: int) -> int:
        """How many key bits are on side 1 of split pass ``p`` (all passes counted at once:
        a histogram per 16-bit lane of the side words, then bit sums over it)."""
        if self._ones is None:
            w = self.side_words()
            w = w.astype(w.dtype.newbyteorder("<"), copy=False)   # lane 0 = bits 0..15
            lanes = w.view(np.uint16).reshape(w.shape[0], w.dtype.itemsize // 2)
            bitsof = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None],
                                   axis=1)[:, ::-1].astype(np.int64)   # [byte, bit]
            counts = []
            for lane in range(lanes.shape[1]):
                # one 65536-bin histogram (half the passes over the words of byte-wide
                # ones); rows: high byte, columns: low byte
                hist = np.bincount(lanes[:, lane], minlength=1 << 16).reshape(256, 256)
                counts.append(hist.sum(axis=0) @ bitsof)   # bits 16·lane + 0..7
                counts.append(hist.sum(axis=1) @ bitsof)   # bits 16·lane + 8..15
            self._ones = np.concatenate(counts)
        return int(self._ones[self.split_bit(p)])

    def split_parities(self, bits: np.ndarray) -> tuple[int, int]:
        """(parity of the whole key, side-1 parities as a word) for one uint8 per bit:
        bit j of the word is the parity of block 1 of split pass ``split_ids[j]``."""
        ones = bits != 0
        # multiply instead of a boolean gather: one streaming pass, ~15x faster at 1e6
        w = int(np.bitwise_xor.reduce(self.side_words() * ones)) if ones.shape[0] else 0
        return int(np.count_nonzero(ones)) & 1, w

    def side(self, p: int) -> np.ndarray:
        """For a split pass: 0/1 (uint8) per key bit, the block it belongs to."""
        if p not in self._side:
            j = np.array(self.split_bit(p), dtype=self.side_words().dtype)
            self._side[p] = ((self.side_words() >> j) & 1).astype(np.uint8)
        return self._side[p]

    def n_blocks(self, p: int) -> int:
        """Number of blocks in pass ``p``."""
        return 2 if self.is_split(p) else -(-self.n_bits // self.block_sizes[p])

    def block_ranges(self, p: int) -> tuple[np.ndarray, np.ndarray]:
        """(starts, ends) of every block of pass ``p`` in its permuted order."""
        if p not in self._ranges:
            self._ranges[p] = self._block_ranges(p)
        return self._ranges[p]

    def _block_ranges(self, p: int) -> tuple[np.ndarray, np.ndarray]:
        if self.is_split(p):
            n0 = self.n_bits - self.split_ones(p)
            return np.array([0, n0], dtype=np.int64), np.array([n0, self.n_bits], np.int64)
        k = self.block_sizes[p]
        starts = np.arange(0, self.n_bits, k, dtype=np.int64)
        return starts, np.minimum(starts + k, self.n_bits)

    def perm(self, p: int) -> np.ndarray:
        """Permutation of pass ``p``: position ``j`` of the pass holds key bit ``perm[j]``.

        The protocol itself only needs :meth:`order`, :meth:`key_index` and
        :meth:`position`, which avoid building this array for two-block passes; the
        full array is for tests and the serial baseline.
        """
        if p not in self._perm:
            n = self.n_bits
            if p == 0:
                perm = np.arange(n, dtype=np.int32)
            elif self.is_split(p):
                # side-0 bits then side-1 bits, each in key order
                perm = self.order(p, np.arange(n, dtype=np.int32))
            else:
                perm = np.arange(n, dtype=np.int32)
                self._rng(p).shuffle(perm)
            self._perm[p] = perm
        return self._perm[p]

    def inverse(self, p: int) -> np.ndarray:
        """Inverse permutation of pass ``p``: key bit ``i`` sits at position ``inv[i]``."""
        if p not in self._inv:
            if p == 0:                       # identity: no scatter needed
                self._inv[0] = self.perm(0)
                return self._inv[0]
            perm = self.perm(p)
            inv = np.empty_like(perm)
            inv[perm] = np.arange(self.n_bits, dtype=np.int32)
            self._inv[p] = inv
        return self._inv[p]

    def _split_counts(self, p: int) -> tuple[np.ndarray, np.ndarray]:
        """For a split pass: (side-1 bits, side-0 bits) among key bits ``0..i``
        inclusive, per ``i`` (int32 running counts). They map positions both ways in
        O(log n) per bit, which is all a search needs: building the permutation and
        its inverse costs ~5x more (measured at n = 1e6)."""
        if p not in self._counts:
            ones = np.cumsum(self.side(p), dtype=np.int32)
            zeros = np.arange(1, self.n_bits + 1, dtype=np.int32)
            zeros -= ones
            self._counts[p] = (ones, zeros)
        return self._counts[p]

    def order(self, p: int, bits: np.ndarray) -> np.ndarray:
        """``bits`` (one entry per key bit) rearranged into pass ``p``'s order (a new
        array, except for pass 0, which returns ``bits`` itself)."""
        if p == 0:
            return bits
        if not self.is_split(p):
            return bits[self.perm(p)]
        side = self.side(p).view(bool)
        n0 = self.n_bits - self.split_ones(p)
        out = np.empty_like(bits)
        np.compress(~side, bits, out=out[:n0])      # compress: ~5x a boolean index
        np.compress(side, bits, out=out[n0:])
        return out

    def key_index(self, p: int, pos: np.ndarray) -> np.ndarray:
        """Key bit index held at each position ``pos`` of pass ``p`` (``perm(p)[pos]``)."""
        pos = np.asarray(pos, dtype=np.int64)
        if p == 0:
            return pos
        if not self.is_split(p):
            return self.perm(p)[pos].astype(np.int64)
        ones, zeros = self._split_counts(p)
        n0 = self.n_bits - self.split_ones(p)
        # the k-th (from 0) side-1 bit is the first i with ones[i] = k + 1; same for 0
        return np.where(pos >= n0, np.searchsorted(ones, pos - n0 + 1),
                        np.searchsorted(zeros, pos + 1)).astype(np.int64)

    def position(self, p: int, idx: np.ndarray) -> np.ndarray:
        """Position in pass ``p`` of each key bit index ``idx`` (``inverse(p)[idx]``)."""
        idx = np.asarray(idx, dtype=np.int64)
        if p == 0:
            return idx
        if not self.is_split(p):
            return self.inverse(p)[idx].astype(np.int64)
        ones, _ = self._split_counts(p)
        n0 = self.n_bits - self.split_ones(p)
        before = ones[idx].astype(np.int64)                # side-1 bits up to idx
        return np.where(self.side(p)[idx] != 0, n0 + before - 1, idx - before)

    def block_of(self, p: int, bits: np.ndarray) -> np.ndarray:
        """Block index (in pass ``p``) of each key bit index in ``bits``."""
        if self.is_split(p):
            return self.side(p)[bits].astype(np.int64)
        return self.position(p, bits) // self.block_sizes[p]

    def block_parities(self, p: int, bits: np.ndarray) -> np.ndarray:
        """Parity of every block of pass ``p`` of a key given one uint8 per bit."""
        if self.is_split(p):
            tot, w = self.split_parities(bits)
            one = (w >> self.split_bit(p)) & 1
            return np.array([tot ^ one, one], dtype=np.uint8)
        starts, _ = self.block_ranges(p)
        return np.bitwise_xor.reduceat(self.order(p, bits), starts)


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


def _bitlen(x: np.ndarray) -> np.ndarray:
    """Bit length of non-negative int64 values (< 2^53), elementwise."""
    return np.frexp(np.asarray(x, dtype=np.float64))[1].astype(np.int64)


def _passes_in(passes: np.ndarray) -> np.ndarray:
    """Distinct pass indices (small non-negative ints), ascending: what ``np.unique``
    gives, by a bincount (unique's generic path costs ~10 µs a call, and it is called
    several times per step)."""
    if passes.shape[0] == 0:
        return passes[:0]
    return np.flatnonzero(np.bincount(passes))


def _sorted_distinct(a: np.ndarray) -> np.ndarray:
    """``np.unique(a)`` for a 1-d integer array, by one sort (no hash table, no
    ``numpy.ma`` import on first use)."""
    a = np.sort(a)
    if a.shape[0] < 2:
        return a
    keep = np.empty(a.shape[0], dtype=bool)
    keep[0] = True
    np.not_equal(a[1:], a[:-1], out=keep[1:])
    return a[keep]


def _first_of_each(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(a, return_index=True)``: distinct values, ascending, and the index
    of each one's first occurrence (stable sort, as np.unique does)."""
    order = np.argsort(a, kind="stable")
    v = a[order]
    keep = np.empty(v.shape[0], dtype=bool)
    if v.shape[0]:
        keep[0] = True
        np.not_equal(v[1:], v[:-1], out=keep[1:])
    return v[keep], order[keep]


def _unpack(bits_packed: bytes | np.ndarray, n_bits: int) -> np.ndarray:
    raw = np.frombuffer(bits_packed, dtype=np.uint8) if isinstance(bits_packed, bytes | bytearray) \
        else np.asarray(bits_packed, dtype=np.uint8)
    if raw.shape[0] * 8 < n_bits:
        raise ValueError("packed key shorter than n_bits")
    return np.unpackbits(raw, count=n_bits)


def _range_parities(bits: np.ndarray, perm: np.ndarray | None, starts: np.ndarray,
                    ends: np.ndarray) -> np.ndarray:
    """Parity of ``bits[perm[s:e]]`` (perm None: identity) for every range, by one gather
    and one reduceat."""
    if starts.shape[0] == 0:
        return np.zeros(0, dtype=np.uint8)
    lengths = ends - starts
    offsets = np.zeros(lengths.shape[0], dtype=np.int64)
    np.cumsum(lengths[:-1], out=offsets[1:])
    # gather index of every range bit: a running sum of +1 steps, with a jump to the
    # next range's start at each range boundary (one cumsum; ~6x faster than
    # arange + repeat). Ranges are non-empty (Bob builds them).
    idx = np.ones(int(offsets[-1] + lengths[-1]), dtype=np.int64)
    idx[0] = starts[0]
    idx[offsets[1:]] = starts[1:] - ends[:-1] + 1
    np.cumsum(idx, out=idx)
    return np.bitwise_xor.reduceat(bits[idx] if perm is None else bits[perm[idx]], offsets)


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
        self._split: tuple[int, int] | None = None
        self.disclosed_bits = 0

    def __repr__(self) -> str:
        return f"CascadeResponder(n_bits={self._plan.n_bits}, disclosed={self.disclosed_bits})"

    def _pref(self, p: int) -> np.ndarray:
        if p not in self._prefix:
            c = np.zeros(self._plan.n_bits + 1, dtype=np.uint8)
            np.bitwise_xor.accumulate(self._plan.order(p, self._bits), out=c[1:])
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
        for p in _passes_in(passes):
            p_ = int(p)
            sel = np.flatnonzero(passes == p)
            if self._plan.is_split(p_) and p_ not in self._prefix:
                # whole blocks of a split pass: masked popcount, no permutation needed
                bs, be = self._plan.block_ranges(p_)
                whole = ((starts[sel] == bs[0]) & (ends[sel] == be[0])) | (
                    (starts[sel] == bs[1]) & (ends[sel] == be[1]))
                if whole.all():
                    if self._split is None:
                        self._split = self._plan.split_parities(self._bits)
                    one = (self._split[1] >> self._plan.split_bit(p_)) & 1
                    par = np.array([self._split[0] ^ one, one], dtype=np.uint8)
                    out[sel] = par[(starts[sel] == bs[1]).astype(np.int64)]
                    continue
            c = self._pref(p_)
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
        self._all_fetched = False
        self._step_mids: tuple[np.ndarray, np.ndarray] = (np.zeros(0, np.int64),
                                                          np.zeros(0, np.int64))
        self._searching = [np.zeros(plan.n_blocks(p), dtype=bool) for p in range(P)]
        self._cur = 0                        # current pass
        # active searches: pass, block, current range [s, e) (odd mismatch assumed)
        self._sp = np.zeros(0, dtype=np.int64)
        self._sb = np.zeros(0, dtype=np.int64)
        self._ss = np.zeros(0, dtype=np.int64)
        self._se = np.zeros(0, dtype=np.int64)
        self._sh = np.zeros(0, dtype=np.int64)   # nominal height of the range's node
        self._sa = np.zeros(0, dtype=np.uint8)   # Alice's parity of the range
        self._sm = np.zeros(0, dtype=np.int64)   # known sibling parities along the path
        # per pass, per block: the last search's path (see _remember)
        self._rec: list[tuple[np.ndarray, ...] | None] = [None] * P
        self._bobpar: list[np.ndarray] = [np.zeros(0, np.uint8) for _ in range(P)]
        # two-block passes: Bob's block parities for all of them as words, kept current
        # from the start (bit j: split pass split_ids[j]); see CascadePlan.side_words
        self._btot, self._bw1 = plan.split_parities(self._bits) if plan.split_ids else (0, 0)
        self._flipped = np.zeros(n_bits, dtype=bool)
        # range parities in two-block passes (_gather_parities): prefix-XOR of the
        # initial bits in pass order, positions flipped since (sorted; new ones queued)
        self._orig = self._bits.copy()
        self._prefix: dict[int, np.ndarray] = {}
        self._fpos: dict[int, np.ndarray] = {}
        self._fnew: dict[int, list[np.ndarray]] = {}
        self._pbits: dict[int, np.ndarray] = {}   # other passes p > 0: bits in p's order
        self._resolving = False
        self._aw0 = self._aw1 = 0        # Alice's block parities of fetched split passes
        self._started_split = 0          # bit j: split pass split_ids[j] started
        self._busy = 0                   # bit j: that pass has had a search (not quiet)
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
                self._set_step([], self._unfetched())
                return True
            if self.steps >= self._max_steps:
                raise LocalProtocolError("Cascade did not converge within its step limit")
            self._set_step([True], self._unfetched())
            return True

    def _unfetched(self) -> list[int]:
        """Passes whose block parities are still to be asked for: all of them at once.
        Every pass discloses all its block parities whatever happens, so asking early
        changes nothing in what leaks and saves one round trip per pass."""
        if self._all_fetched:
            return []
        todo = [p for p in range(self._cur, self._plan.n_passes) if not self._fetched[p]]
        self._all_fetched = not todo
        return todo

    def _set_step(self, with_search: list[bool], top: list[int]) -> None:
        ps, ss, es = [], [], []
        if with_search:
            mid, height = self._mids()
            self._step_mids = (mid, height)
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
            if self._plan.is_split(p):
                j = self._plan.split_bit(p)
                self._aw0 |= int(ans[off]) << j
                self._aw1 |= int(ans[off + 1]) << j
            off += nb
        self._step_ranges = None
        self.steps += 1
        if k:
            self._advance_searches(ans[:k])

    def _parities(self, passes: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        out = np.empty(passes.shape[0], dtype=np.uint8)
        for p in _passes_in(passes):
            sel = passes == p
            out[sel] = self._gather_parities(int(p), starts[sel], ends[sel])
        return out

    def _gather_parities(self, p: int, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Bob's current parity of every range of pass ``p``.

        By gathering the bits of each range, except in two-block passes, whose
        searches bisect ranges of about n/2 bits: there, parity of [s, e) = prefix-XOR
        of Bob's *initial* bits in pass order at e and s, XOR the parity of the number
        of positions flipped since that lie in [s, e) (sorted, in pass order; flips
        are queued in :meth:`_resolve_loop` and merged here). Exact because no bit is
        ever flipped twice (enforced there).
        """
        if p == 0:
            return _range_parities(self._bits, None, starts, ends)
        if not self._plan.is_split(p):
            # Bob's bits in pass order, kept current by scattering each step's flips:
            # one gather per range bit instead of two (through the permutation)
            pb = self._pbits.get(p)
            if pb is None:
                pb = self._pbits[p] = self._plan.order(p, self._bits)
            return _range_parities(pb, None, starts, ends)
        pre = self._prefix.get(p)
        if pre is None:
            pre = np.zeros(self._plan.n_bits + 1, dtype=np.uint8)
            np.bitwise_xor.accumulate(self._plan.order(p, self._orig), out=pre[1:])
            self._prefix[p] = pre
            self._fpos[p] = np.zeros(0, dtype=np.int64)
            self._fnew[p] = [np.flatnonzero(self._flipped)]
        f = self._fpos[p]
        if self._fnew[p]:
            add = np.sort(self._plan.position(p, np.concatenate(self._fnew[p])))
            f = self._fpos[p] = np.insert(f, np.searchsorted(f, add), add)
            self._fnew[p] = []
        cnt = np.searchsorted(f, ends) - np.searchsorted(f, starts)
        return pre[ends] ^ pre[starts] ^ (cnt & 1).astype(np.uint8)

    def _split_bob(self, p: int) -> np.ndarray:
        one = (self._bw1 >> self._plan.split_bit(p)) & 1
        return np.array([self._btot ^ one, one], dtype=np.uint8)

    def _start_pass(self, p: int) -> None:
        self._started[p] = True
        if self._plan.is_split(p):
            self._started_split |= 1 << self._plan.split_bit(p)
        if self._plan.is_split(p):
            bob = self._split_bob(p)
        elif p == 0:
            bob = self._plan.block_parities(p, self._bits)
        else:
            # Bob's bits in this pass's order are needed for its searches anyway
            # (_gather_parities): gather them once for the block parities too
            pb = self._pbits[p] = self._plan.order(p, self._bits)
            bob = np.bitwise_xor.reduceat(pb, self._plan.block_ranges(p)[0])
        self._bobpar[p] = bob
        s, e = self._plan.block_ranges(p)
        odd = np.flatnonzero(bob != self._alice_block[p])
        self._push(p, odd, s[odd], e[odd], _bitlen(e[odd] - s[odd] - 1),
                   self._alice_block[p][odd])

    def _push(self, p: int, blocks: np.ndarray, s: np.ndarray, e: np.ndarray, h: np.ndarray,
              a: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Start searches in pass ``p`` on nodes [s, e) of nominal height h with Alice
        parity a; ``mask`` bit j is the known parity of the path's sibling at height j."""
        if blocks.shape[0] == 0:
            return
        if self._plan.is_split(p):
            self._busy |= 1 << self._plan.split_bit(p)
        self._searching[p][blocks] = True
        self._sp = np.concatenate([self._sp, np.full(blocks.shape[0], p, dtype=np.int64)])
        self._sb = np.concatenate([self._sb, blocks.astype(np.int64)])
        self._ss = np.concatenate([self._ss, s.astype(np.int64)])
        self._se = np.concatenate([self._se, e.astype(np.int64)])
        self._sh = np.concatenate([self._sh, h.astype(np.int64)])
        self._sa = np.concatenate([self._sa, a.astype(np.uint8)])
        self._sm = np.concatenate([self._sm, np.zeros(blocks.shape[0], np.int64)
                                   if mask is None else mask.astype(np.int64)])
        if ((e - s) == 1).any() and not self._resolving:   # a one-bit range is located
            self._resolve()

    def _keep(self, keep: np.ndarray) -> None:
        self._sp, self._sb = self._sp[keep], self._sb[keep]
        self._ss, self._se = self._ss[keep], self._se[keep]
        self._sh, self._sa, self._sm = self._sh[keep], self._sa[keep], self._sm[keep]

    def _mids(self) -> tuple[np.ndarray, np.ndarray]:
        """Split of every active search: left child = the aligned power-of-two part."""
        height = _bitlen(self._se - self._ss - 1) - 1        # children's nominal height
        return self._ss + (np.int64(1) << height), height

    def _advance_searches(self, alice_left: np.ndarray) -> None:
        mid, height = self._step_mids        # the splits this step asked about
        bob_left = self._parities(self._sp, self._ss, mid)
        left_odd = bob_left != alice_left
        right = (self._sa ^ alice_left).astype(np.uint8)
        sib = np.where(left_odd, right, alice_left).astype(np.int64)
        self._sm = self._sm | (sib << height)
        self._se = np.where(left_odd, mid, self._se)
        self._ss = np.where(left_odd, self._ss, mid)
        self._sa = np.where(left_odd, alice_left, right).astype(np.uint8)
        self._sh = height
        self._resolve()

    def _remember(self, sel: np.ndarray) -> None:
        """Keep the path of finished or cancelled searches (sub-block reuse,
        Martinez-Mateo et al. 2015): per block, the last search's node, its Alice
        parity and the parities of the siblings along its path."""
        for p in _passes_in(self._sp[sel]):
            p_ = int(p)
            rec = self._rec[p_]
            if rec is None:
                nb = self._plan.n_blocks(p_)
                rec = (np.zeros(nb, np.int64), np.full(nb, -1, np.int64),
                       np.zeros(nb, np.uint8), np.zeros(nb, np.int64))
                self._rec[p_] = rec
            rs, rh, ra, rm = rec
            w = sel & (self._sp == p)
            b = self._sb[w]
            rs[b], rh[b], ra[b], rm[b] = self._ss[w], self._sh[w], self._sa[w], self._sm[w]

    def _restart_nodes(self, p: int, blk: np.ndarray, at: np.ndarray
                       ) -> tuple[np.ndarray, ...]:
        """For flipped positions ``at`` (pass order) in blocks ``blk``: the smallest node
        with known Alice parity that holds each, as (s, e, height, parity, mask).

        Nodes are aligned: a node of nominal height h covers offsets [j·2^h, (j+1)·2^h)
        from the block start (clipped to the block), so where a position leaves the
        recorded search path is the highest bit in which their offsets differ.
        """
        bs, be = self._plan.block_ranges(p)
        s0, e0 = bs[blk], be[blk]
        root = self._alice_block[p][blk]
        rec = self._rec[p]
        assert rec is not None
        rs, rh, ra, rm = (r[blk] for r in rec)
        live = rh >= 0
        r_off, s_off = at - s0, rs - s0
        hh = np.maximum(rh, 0)
        inside = live & ((r_off >> hh) == (s_off >> hh))
        hb = _bitlen(r_off ^ s_off) - 1                      # divergence height
        hb = np.where(live & ~inside, hb, 0)
        sib_par = ((rm >> hb) & 1).astype(np.uint8)
        path_par = (root ^ (np.bitwise_count(rm >> hb) & 1)).astype(np.uint8)
        div_mask = ((rm >> (hb + 1)) << (hb + 1)) | (path_par.astype(np.int64) << hb)
        div_s = s0 + ((r_off >> hb) << hb)
        root_h = _bitlen(e0 - s0 - 1)
        s = np.where(inside, rs, np.where(live, div_s, s0))
        h = np.where(inside, rh, np.where(live, hb, root_h))
        e = np.minimum(s + (np.int64(1) << h), e0)
        par = np.where(inside, ra, np.where(live, sib_par, root)).astype(np.uint8)
        mask = np.where(inside, rm, np.where(live, div_mask, 0))
        return s, e, h, par, mask

    def _resolve(self) -> None:
        """Flip every located error, cancel hit searches, back-track into earlier passes."""
        self._resolving = True
        try:
            self._resolve_loop()
        finally:
            self._resolving = False

    def _resolve_loop(self) -> None:
        while True:
            found = (self._se - self._ss) == 1
            if not found.any():
                return
            pos = np.empty(int(found.sum()), dtype=np.int64)
            fp, fs = self._sp[found], self._ss[found]
            for p in _passes_in(fp):
                sel = fp == p
                pos[sel] = self._plan.key_index(int(p), fs[sel])
            flips = _sorted_distinct(pos)
            # With honest answers every search ends on a wrong bit, so no bit is ever
            # flipped twice; a second flip means the peer's parities contradict each other
            # (and could otherwise make Bob flip one bit back and forth forever).
            if self._flipped[flips].any():
                raise RemoteProtocolError("parity answers contradict each other")
            self._flipped[flips] = True
            self._bits[flips] ^= 1
            for p, pb in self._pbits.items():
                pb[self._plan.position(p, flips)] ^= 1
            for pend in self._fnew.values():     # merged lazily in _gather_parities
                pend.append(flips)
            self.bits_flipped += int(flips.shape[0])
            self._remember(found)
            for p in _passes_in(fp):
                self._searching[int(p)][self._sb[found][fp == p]] = False
            self._keep(~found)
            # Bob's block parities in every started pass follow the flips
            if self._plan.split_ids:
                self._btot ^= int(flips.shape[0]) & 1
                self._bw1 ^= int(np.bitwise_xor.reduce(self._plan.side_words()[flips]))
            blocks_of: dict[int, np.ndarray] = {}
            for p in range(self._plan.n_passes):
                if not self._started[p]:
                    continue
                if self._plan.is_split(p):
                    if not (self._busy >> self._plan.split_bit(p)) & 1:
                        continue           # quiet split pass: handled by words below
                    self._bobpar[p] = self._split_bob(p)
                    blocks_of[p] = self._plan.block_of(p, flips)
                else:
                    blocks_of[p] = self._plan.block_of(p, flips)
                    np.bitwise_xor.at(self._bobpar[p], blocks_of[p], 1)
            # cancel searches whose current range holds a flipped bit
            hit = np.zeros(self._sp.shape[0], dtype=bool)
            for p in _passes_in(self._sp):
                sel = np.flatnonzero(self._sp == p)
                # _searching[p] marks exactly the blocks of pass p's active searches
                if not self._searching[int(p)][blocks_of[int(p)]].any():
                    continue
                where = np.sort(self._plan.position(int(p), flips))
                cnt = np.searchsorted(where, self._se[sel]) - np.searchsorted(where, self._ss[sel])
                hit[sel] = cnt > 0
            if hit.any():
                self.cancelled_searches += int(hit.sum())
                self._remember(hit)
                for p in _passes_in(self._sp[hit]):
                    self._searching[int(p)][self._sb[hit & (self._sp == p)]] = False
                self._keep(~hit)
            # back-track: in every started pass, re-check the smallest known node holding
            # each flipped bit, else its whole block
            # quiet split passes (no search yet): odd blocks straight from the words
            quiet = self._started_split & ~self._busy
            if quiet:
                full = (1 << 64) - 1 if self._btot else 0
                odd_w = ((self._bw1 ^ self._aw1) | (full ^ self._bw1 ^ self._aw0)) & quiet
                while odd_w:
                    j = (odd_w & -odd_w).bit_length() - 1
                    odd_w &= odd_w - 1
                    p = self._plan.split_ids[j]
                    self._bobpar[p] = self._split_bob(p)
                    odd = np.flatnonzero(self._bobpar[p] != self._alice_block[p])
                    bs, be = self._plan.block_ranges(p)
                    self._push(p, odd, bs[odd], be[odd], _bitlen(be[odd] - bs[odd] - 1),
                               self._alice_block[p][odd])
            for p, blk_all in blocks_of.items():
                free = ~self._searching[p][blk_all]
                if not free.any():
                    continue
                blk, first = _first_of_each(blk_all[free])
                flip = flips[free][first]            # one candidate per block
                root_odd = self._bobpar[p][blk] != self._alice_block[p][blk]
                bs, be = self._plan.block_ranges(p)
                if self._rec[p] is None:
                    b = blk[root_odd]
                    self._push(p, b, bs[b], be[b], _bitlen(be[b] - bs[b] - 1),
                               self._alice_block[p][b])
                    continue
                at = self._plan.position(p, flip)
                s, e, h, a, mask = self._restart_nodes(p, blk, at)
                odd = root_odd.copy()
                deep = (s != bs[blk]) | (e != be[blk])
                if deep.any():
                    di = np.flatnonzero(deep)
                    node_odd = self._gather_parities(p, s[di], e[di]) != a[di]
                    # where the smallest known node is even, fall back to the whole block
                    back = di[~node_odd]
                    s[back], e[back] = bs[blk[back]], be[blk[back]]
                    h[back] = _bitlen(e[back] - s[back] - 1)
                    mask[back] = 0
                    a[back] = self._alice_block[p][blk[back]]
                    odd[di[node_odd]] = True
                self._push(p, blk[odd], s[odd], e[odd], h[odd], a[odd], mask[odd])
