"""Sender side of the key store: in-memory leases of ``-tx`` pools and their refills.

Theory of operation
-------------------
``reserve`` must never hand out a bit before the transaction that marks it consumed
has committed, and committing once per 256-bit reservation would cap the rate at the
disk's fsync rate. So a refill (:meth:`Leases.fill`) consumes up to ``lease_bits``
bits of a pool, first in first out, in ONE durable transaction and keeps them in
memory as a :class:`Lease`: a list of :class:`Run` s, each a contiguous piece of one
block with its bits. The reservations that follow are cut from the lease without
touching the disk (:meth:`Lease.take`, consecutive pieces of one block merge into one
segment). If the process dies the rest of the lease dies with it; those bits were
already marked consumed, so they are burned, never reissued. Reservations larger than
a lease are filled to their own size, straight from the file.

Contiguous grants (one segment inside one block, e.g. 128-bit tag keys) are cut from
the first run long enough (:meth:`Lease.take_contiguous`; runs before it are
dropped, i.e. burned); :meth:`Leases.fill_contiguous` refills from the first block
with enough bits left, burning the shorter block tails before it, and takes a whole
block's rest rather than leave a tail no request of that size could use.

Each process's leases are its own, and a refill consumes in the file before it
returns, so several processes sharing a file never lease the same bit. The lease-hit
path of ``reserve`` stays in :class:`~qkdnet.keystore.KeyStore` itself (no call into
this module): it is the hot path; only refills come here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from qkdnet.errors import KeyExhausted
from qkdnet.keystore_blocks import advance_cursor, available_bits, burn_block, live_blocks
from qkdnet.keystore_db import KeyDB
from qkdnet.keystore_types import KeySegment, extract_bits, from_sql_id
from qkdnet.tracing import NodeLoggerAdapter, Tracer

__all__ = ["Lease", "Leases", "Run"]



@dataclass(slots=True)
class Run:
    """Leased bits ``[pos, stop)`` of one block; ``buf`` holds bits from ``base``."""

    block_id: int
    base: int
    pos: int
    stop: int
    buf: bytes = field(repr=False)     # key material: never in a repr or traceback

    @property
    def remaining(self) -> int:
        """Bits of the run not yet granted."""
        return self.stop - self.pos


@dataclass(slots=True)
class Lease:
    """Bits durably consumed from a pool but not yet granted (lost if the process dies)."""

    runs: list[Run] = field(default_factory=list)

    @property
    def remaining(self) -> int:
        """Bits leased and not yet granted."""
        return sum(r.remaining for r in self.runs)

    def take(self, n_bits: int) -> tuple[list[KeySegment], list[tuple[bytes, int]]]:
        """Grant the first ``n_bits`` (at most :attr:`remaining`): their segments and the
        packed pieces ``(data, n_bits)`` to concatenate, in order."""
        segments: list[KeySegment] = []
        pieces: list[tuple[bytes, int]] = []
        left = n_bits
        while left:
            run = self.runs[0]
            k = min(left, run.remaining)
            rel = run.pos - run.base
            if rel == 0 and k == run.stop - run.base:
                pieces.append((run.buf, k))
            else:
                pieces.append((extract_bits(run.buf, rel, k), k))
            last = segments[-1] if segments else None
            if last is not None and last.block_id == run.block_id and last.stop == run.pos:
                # A new lease continued the previous run of the same block: one segment.
                segments[-1] = KeySegment(run.block_id, last.offset, last.n_bits + k)
            else:
                segments.append(KeySegment(run.block_id, run.pos, k))
            run.pos += k
            left -= k
            if run.remaining == 0:
                self.runs.pop(0)
        return segments, pieces

    def take_contiguous(self, n_bits: int) -> tuple[KeySegment, bytes] | None:
        """One segment of ``n_bits`` from the first run long enough; burns runs before it."""
        for i, run in enumerate(self.runs):
            if run.remaining >= n_bits:
                del self.runs[:i]
                seg = KeySegment(run.block_id, run.pos, n_bits)
                data = extract_bits(run.buf, run.pos - run.base, n_bits)
                run.pos += n_bits
                if run.remaining == 0:
                    self.runs.pop(0)
                return seg, data
        return None


class Leases:
    """The leases of one store's ``-tx`` pools (``by_pool``, keyed by pool id) and the
    durable transactions that refill them; ``lease_bits`` is the refill size."""

    def __init__(self, kdb: KeyDB, *, lease_bits: int, tracer: Tracer,
                 log: NodeLoggerAdapter) -> None:
        self.kdb = kdb
        self.lease_bits = lease_bits
        self.tracer = tracer
        self.log = log
        self.by_pool: dict[int, Lease] = {}

    def remaining(self, pool_id: int) -> int:
        """Bits leased from pool ``pool_id`` and not yet granted."""
        lease = self.by_pool.get(pool_id)
        return lease.remaining if lease else 0

    def fill(self, peer: str, purpose: str, pool_id: int, need: int, leased: int) -> list[Run]:
        """Durably consume at least ``need`` bits (up to a lease) FIFO; return them as runs."""
        runs: list[Run] = []
        with self.kdb.tx() as db:
            avail = available_bits(db, pool_id)
            if avail < need:
                raise KeyExhausted(need + leased, avail + leased, pool=f"{peer}/{purpose}")
            want = min(avail, max(need, self.lease_bits))
            rows = live_blocks(db, pool_id)
            todo = want
            plan: list[tuple[int, int, int, int]] = []
            try:
                for seq, bid, n, cur in rows:
                    k = min(todo, n - cur)
                    plan.append((int(seq), from_sql_id(int(bid)), int(n), int(cur)))
                    todo -= k
                    if todo == 0:
                        break
            finally:
                rows.close()  # an open statement would block the WAL checkpoint
            todo = want
            for seq, bid, n, cur in plan:
                k = min(todo, n - cur)
                runs.append(Run(bid, cur, cur, cur + k, advance_cursor(db, seq, n, cur, k)))
                todo -= k
        self._after_fill(peer, purpose, want, runs)
        return runs

    def fill_contiguous(self, peer: str, purpose: str, pool_id: int, n_bits: int) -> list[Run]:
        """Durably consume a lease inside the first block with ``n_bits`` left.

        Live blocks before it (all with fewer than ``n_bits`` left) are burned.
        """
        with self.kdb.tx() as db:
            rows = live_blocks(db, pool_id).fetchall()
            chosen = next((r for r in rows if int(r[2]) - int(r[3]) >= n_bits), None)
            if chosen is None:
                avail = sum(int(r[2]) - int(r[3]) for r in rows)
                lease = self.by_pool.get(pool_id)
                raise KeyExhausted(n_bits, avail + (lease.remaining if lease else 0),
                                   pool=f"{peer}/{purpose} (one contiguous segment)")
            burned = 0
            for seq, _bid, n, cur in rows:
                if seq == chosen[0]:
                    break
                burned += int(n) - int(cur)
                burn_block(db, seq)
            seq, bid, n, cur = (int(v) for v in chosen)
            remaining = n - cur
            k = min(remaining, max(n_bits, self.lease_bits))
            # Do not leave a tail that no request of this size could use.
            if remaining - k < n_bits:
                k = remaining
            run = Run(from_sql_id(bid), cur, cur, cur + k, advance_cursor(db, seq, n, cur, k))
        if burned:
            self.log.debug("burned %d bits of block tails in %s/%s for a contiguous grant",
                           burned, peer, purpose)
        self._after_fill(peer, purpose, k + burned, [run])
        return [run]

    def _after_fill(self, peer: str, purpose: str, n_bits: int, runs: list[Run]) -> None:
        if self.tracer.enabled:
            self.tracer.event("keystore", "lease", {
                "peer": peer, "purpose": purpose, "n_bits": n_bits,
                "runs": [[r.block_id, r.pos, r.remaining] for r in runs]})
        self.kdb.maybe_checkpoint(n_bits)
