"""The durable key store: one SQLite file per node, key pools by (peer, purpose).

Theory of operation
-------------------
A *pool* ``(peer, purpose)`` holds *blocks* of distilled key, each with a producer-
chosen unsigned 64-bit id, a bit length and :class:`BlockMeta`. Pools whose purpose
ends in ``-tx`` are drawn by the sending side with :meth:`KeyStore.reserve` (first in,
first out, a cursor per block); pools ending in ``-rx`` are drawn by the receiving
side with :meth:`KeyStore.take`, which names the exact bits (block id, bit offset,
length) the sender used and remembers every range taken, so each bit is given out
at most once. The two ends of a link keep mirrored pools with the same block ids.

Durability. The file runs in WAL mode with ``synchronous=FULL``: a transaction is on
disk when ``COMMIT`` returns. ``reserve`` never hands out a bit before the
transaction that marks it consumed has committed. Committing once per 256-bit
reservation would cap the rate at the disk's fsync rate, so the sender side *leases*:
one transaction consumes up to ``lease_bits`` bits of a pool into memory, and the
following reservations are cut from that lease without touching the disk. If the
process dies, the rest of the lease is lost with it; those bits were already marked
consumed, so they are burned, never reissued. Reservations larger than a lease go
straight to the database. Receivers that take the key of several frames in a row
share one commit with :meth:`KeyStore.batch` (group commit) and hold back what the
key produced until it is durable (:meth:`KeyStore.after_commit`).

Erasure. Key bytes live in ``chunks`` rows of :data:`CHUNK_BYTES`. When a chunk is
wholly consumed its row is deleted; when it is partly consumed, the consumed bits are
overwritten with zeros in place. ``secure_delete`` makes SQLite zero freed space, and
a ``wal_checkpoint(TRUNCATE)`` every ``checkpoint_bytes`` of consumed key (and on
:meth:`KeyStore.checkpoint` / :meth:`KeyStore.close`) copies the scrubbed pages into
the main file and empties the WAL, so consumed key does not linger in either file.
Freed pages are reused, so the file stays as large as the live key (plus a small
record per retired block), not the key ever stored.

Checking before spending. :meth:`KeyStore.peek` returns the bits ``take`` would
return (and raises what it would raise) without writing anything, so a receiver can
verify a frame's tag first and ``take`` its key only if the tag is good: a forged
frame then costs the receiver no key.

Atomic producers and counters. :meth:`KeyStore.add_blocks` stores several blocks (e.g.
the data and auth halves of one distilled block) in one transaction, all or none.
:meth:`KeyStore.advance_counter` keeps named durable monotonic counters (a link's
per-peer high-water marks) in the same file.

Bootstrap. :meth:`KeyStore.import_bootstrap` splits a pre-shared secret file (>= 4 KiB
of random bytes, the same at both ends) directly, without a KDF, so its
information-theoretic security carries over: bytes 0-15 and 16-31 are the Poly1305
hash keys ``r`` of the initiator->responder and responder->initiator directions; the
rest is cut in two halves that seed the ``auth-tx``/``auth-rx`` pools, mirrored
between the ends. Bootstrap blocks take ids ``BOOTSTRAP_BLOCK_BASE | 2k`` and
``| 2k+1`` for the k-th secret imported for that peer (link session id 0xFFFFFFFF is
therefore reserved). A SHA-256 digest of each imported secret is remembered; the same
secret is never imported twice.

Concurrency. A :class:`KeyStore` object belongs to one thread (in qkdnet: the trio
thread); concurrent trio tasks are safe because every method but
:meth:`KeyStore.wait_reserve` runs to completion without yielding. Several processes
may open the same file: writers serialise on SQLite's lock (``BEGIN IMMEDIATE``) and
each process's leases are its own, so they never overlap.

Layout
------
The cut follows what each part must get right. The storage side (``keystore_db``,
``keystore_blocks``) keeps the file consistent, durable and scrubbed; it holds no
lease or waiter and never chooses which bits a request gets. The pool side (this
module, ``keystore_lease``) makes those choices and holds the state that dies with
the process (leases, waiters); it writes to the file only through the storage
layer's transactions and functions. Imports go one way: types <- blocks <- db <-
lease <- keystore.

* ``keystore`` (this module): :class:`KeyStore`, the public façade and the pool
  policy — validating requests, reserve (the lease-hit path is inline: it is the hot
  path), take/take_many/peek, add_block(s), waiting and wake-ups per pool, status.
  It holds no connection state of its own.
* ``keystore_lease``: the in-memory leases of ``-tx`` pools and the durable refills
  that fill them (FIFO and contiguous, with the burning of block tails).
* ``keystore_db``: :class:`~qkdnet.keystore_db.KeyDB`, the file — the sqlite3
  connection, schema, transactions, group commit (``batch``/``after_commit``), WAL
  checkpoints, pool ids, counters, bootstrap secrets and hash keys, block metadata,
  pruning and status counts.
* ``keystore_blocks``: the key-material rows (blocks, chunks, taken ranges) as
  functions run inside KeyDB transactions — storing, reading only the bytes needed,
  advancing a cursor, merging taken ranges, and erasing what was consumed.
* ``keystore_types``: the public value types, constants and packed-bit helpers, used
  by all of the above. Everything public is importable from this module.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Literal

import trio

from qkdnet.errors import KeyExhausted, KeyReuseError, LocalProtocolError
from qkdnet.keystore_blocks import available_bits, locate, take_segment
from qkdnet.keystore_db import KeyDB
from qkdnet.keystore_lease import Lease, Leases
from qkdnet.keystore_types import (
    BOOTSTRAP_BLOCK_BASE,
    BOOTSTRAP_MIN_BYTES,
    CHUNK_BYTES,
    PURPOSES,
    BlockMeta,
    KeyGrant,
    KeySegment,
    PoolStatus,
    check_pool,
    concat_bits,
    extract_bits,
)
from qkdnet.keystore_types import CHUNK_BITS as CHUNK_BITS  # re-exported
from qkdnet.keystore_types import HASH_KEY_BYTES as HASH_KEY_BYTES  # re-exported
from qkdnet.tracing import NULL_TRACER, Tracer, get_logger

__all__ = [
    "BOOTSTRAP_BLOCK_BASE",
    "BOOTSTRAP_MIN_BYTES",
    "CHUNK_BYTES",
    "PRUNE_EVERY_S",
    "PURPOSES",
    "BlockMeta",
    "KeyGrant",
    "KeySegment",
    "KeyStore",
    "PoolStatus",
    "concat_bits",
    "extract_bits",
    "prune_retired_periodically",
]


# ---------------------------------------------------------------------- the store


class KeyStore:
    """A node's durable key store (see the module docstring for how it works).

    ``KeyStore(path)`` creates or opens the SQLite file. ``lease_bits`` is how many bits
    one durable transaction moves into the in-memory lease of a ``-tx`` pool (larger:
    faster small reservations, more key burned by a crash); ``checkpoint_bytes`` is how
    much consumed key triggers a WAL truncation. ``tracer`` receives ``keystore``
    events (ids and counts only); log lines are prefixed with ``node`` (default: the
    file's stem). One object per process and thread.
    """

    def __init__(self, path: str | os.PathLike[str], *, lease_bits: int = 1 << 16,
                 checkpoint_bytes: int = 4 << 20, poll_interval: float = 0.25,
                 tracer: Tracer = NULL_TRACER, node: str | None = None) -> None:
        if lease_bits < 1:
            raise LocalProtocolError(f"lease_bits must be positive, got {lease_bits}")
        self.path = Path(path)
        self.poll_interval = poll_interval
        self.tracer = tracer
        self.log = get_logger(__name__, node or self.path.stem)
        self._waiters: dict[tuple[str, str], trio.Event] = {}
        self._kdb = KeyDB(self.path, checkpoint_bytes=checkpoint_bytes, log=self.log,
                          tracer=tracer)
        self._leasing = Leases(self._kdb, lease_bits=lease_bits, tracer=tracer, log=self.log)
        # Bound once: reserve() is the hot path and reaches both without a lookup chain.
        self._leases = self._leasing.by_pool
        self._pool_id = self._kdb.pool_id

    # ------------------------------------------------------------- plumbing

    @property
    def db(self) -> sqlite3.Connection:
        """The SQLite connection (:class:`LocalProtocolError` once closed)."""
        return self._kdb.db

    @property
    def lease_bits(self) -> int:
        """Bits one durable transaction moves into the lease of a ``-tx`` pool."""
        return self._leasing.lease_bits

    @lease_bits.setter
    def lease_bits(self, value: int) -> None:
        self._leasing.lease_bits = value

    @property
    def checkpoint_bytes(self) -> int:
        """Consumed key (bytes) after which the WAL is checkpointed and truncated."""
        return self._kdb.checkpoint_bytes

    @checkpoint_bytes.setter
    def checkpoint_bytes(self, value: int) -> None:
        self._kdb.checkpoint_bytes = value

    def close(self) -> None:
        """Checkpoint (scrubbing the WAL) and close. Unused leased bits are burned."""
        try:
            self._kdb.close()
        finally:
            self._leases.clear()

    def __enter__(self) -> KeyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._kdb.closed else "open"
        return f"KeyStore({str(self.path)!r}, {state})"

    def checkpoint(self) -> bool:
        """Copy the WAL into the main file and truncate it (scrubbed pages land on disk).

        Returns False when another connection's reader blocked it (SQLite reports that
        rather than raising): consumed key may then still sit in the main file, so the
        next consumption tries again instead of waiting for another ``checkpoint_bytes``.
        """
        return self._kdb.checkpoint()

    def batch(self) -> contextlib.AbstractContextManager[None]:
        """Group commit for receivers: every :meth:`take` inside shares ONE transaction.

        A receiver that takes the key of several frames in a row (a read that brought
        several) wraps them in ``with store.batch():`` and pays one durable commit
        instead of one per frame. Each take is still all or none on its own (a failing
        take rolls back only itself), and what succeeded is committed when the block
        exits, also if it exits by an exception. Everything else (``reserve`` refilling
        a lease, ``add_block``, counters) commits at once as outside a batch.

        Use it only around code that does not yield to other tasks (no ``await``), and
        let nothing computed from the taken key leave the process before the block
        exits, when the takes become durable: hand such effects to
        :meth:`after_commit`, which releases them only if the commit succeeds.
        Reentrant.
        """
        return self._kdb.batch()

    def after_commit(self, fn: Callable[[], None], *,
                     if_dropped: Callable[[], None] | None = None) -> None:
        """Run ``fn`` once the takes made so far are durable.

        Outside a batch that is now. Inside :meth:`batch` it is when the batch commits
        (in the order given); if that commit fails, ``fn`` never runs and
        ``if_dropped`` (if given) runs instead, to undo bookkeeping that expected
        ``fn``. Receivers put everything that would let taken key's effects leave the
        process (a forwarded frame, a delivered message) behind it.
        """
        self._kdb.after_commit(fn, if_dropped=if_dropped)

    # -------------------------------------------------------------- producers

    def add_block(self, peer: str, purpose: str, block_id: int, key: bytes, n_bits: int,
                  meta: BlockMeta) -> None:
        """Store ``n_bits`` bits of key (packed, ``ceil(n_bits/8)`` bytes) as a new block.

        Raises :class:`LocalProtocolError` if the pool already holds (or once held)
        ``block_id``: a block id is never reused.
        """
        check_pool(peer, purpose)
        with self._kdb.tx():
            self._kdb.add_block_in_tx(peer, purpose, block_id, key, n_bits, meta)
        self.tracer.event("keystore", "block_added", {
            "peer": peer, "purpose": purpose, "block_id": block_id, "n_bits": n_bits,
            "link_session": meta.link_session})
        self.log.debug("added block %#x (%d bits) to %s/%s", block_id, n_bits, peer, purpose)
        self._wake(peer, purpose)

    def add_blocks(self, peer: str, parts: Sequence[tuple[str, int, bytes, int]],
                   meta: BlockMeta) -> None:
        """Store several blocks for ``peer`` in ONE transaction: all of them or none.

        ``parts`` are ``(purpose, block_id, key, n_bits)`` as for :meth:`add_block`
        (typically the ``data``/``auth`` halves of one distilled block). If any part
        is invalid or names an id its pool holds (or once held) — including an id
        repeated within ``parts`` — :class:`LocalProtocolError` is raised and no part
        is stored.
        """
        if not parts:
            raise LocalProtocolError("add_blocks() needs at least one part")
        for purpose, _bid, _key, _n in parts:
            check_pool(peer, purpose)
        with self._kdb.tx():
            for purpose, block_id, key, n_bits in parts:
                self._kdb.add_block_in_tx(peer, purpose, block_id, key, n_bits, meta)
        for purpose, block_id, _key, n_bits in parts:
            self.tracer.event("keystore", "block_added", {
                "peer": peer, "purpose": purpose, "block_id": block_id, "n_bits": n_bits,
                "link_session": meta.link_session})
            self.log.debug("added block %#x (%d bits) to %s/%s", block_id, n_bits, peer,
                           purpose)
        for purpose in dict.fromkeys(p[0] for p in parts):
            self._wake(peer, purpose)

    def _wake(self, peer: str, purpose: str) -> None:
        event = self._waiters.pop((peer, purpose), None)
        if event is not None:
            event.set()
    def available(self, peer: str, purpose: str) -> int:
        """Bits of the pool not yet consumed (for ``-tx`` pools: including the lease)."""
        check_pool(peer, purpose)
        pool_id = self._pool_id(peer, purpose, create=False)
        if pool_id is None:
            return 0
        return available_bits(self._kdb.db, pool_id) + self._leasing.remaining(pool_id)

    def reserve(self, peer: str, purpose: str, n_bits: int, *,
                contiguous: bool = False) -> KeyGrant:
        """Grant ``n_bits`` unused bits of a ``-tx`` pool, durably consumed before return.

        With ``contiguous=True`` the grant is one segment inside one block; block tails
        too short for it are burned. Raises :class:`KeyExhausted` (nothing consumed) if
        the pool cannot supply the bits.
        """
        check_pool(peer, purpose)
        if not purpose.endswith("-tx"):
            raise LocalProtocolError(
                f"reserve() draws from sending pools (-tx); {purpose} is taken with take()")
        if not isinstance(n_bits, int) or n_bits <= 0:
            raise LocalProtocolError(f"reserve() needs a positive bit count, got {n_bits!r}")
        pool_id = self._pool_id(peer, purpose, create=False)
        if pool_id is None:
            raise KeyExhausted(n_bits, 0, pool=f"{peer}/{purpose}")
        lease = self._leases.setdefault(pool_id, Lease())
        if contiguous:
            got = lease.take_contiguous(n_bits)
            if got is None:
                lease.runs.extend(self._leasing.fill_contiguous(peer, purpose, pool_id, n_bits))
                got = lease.take_contiguous(n_bits)
                assert got is not None
            segments, data = [got[0]], got[1]
        else:
            have = lease.remaining
            if have < n_bits:
                lease.runs.extend(self._leasing.fill(peer, purpose, pool_id, n_bits - have, have))
            segments, pieces = lease.take(n_bits)
            data = concat_bits(pieces)
        grant = KeyGrant(peer, purpose, tuple(segments), data)
        if self.tracer.enabled:
            self.tracer.event("keystore", "reserve", {
                "peer": peer, "purpose": purpose, "n_bits": n_bits,
                "segments": [[s.block_id, s.offset, s.n_bits] for s in segments]})
        return grant

    async def wait_reserve(self, peer: str, purpose: str, n_bits: int, *,
                           deadline: float = math.inf, contiguous: bool = False) -> KeyGrant:
        """Like :meth:`reserve`, but wait (until trio time ``deadline``) for key to arrive.

        Woken at once by :meth:`add_block` on this object; also polls every
        ``poll_interval`` seconds for key added by another process. Raises
        :class:`KeyExhausted` at the deadline.
        """
        if self._kdb.in_batch:
            raise LocalProtocolError("wait_reserve() inside a key store batch (it may yield; "
                                     "a batch must not)")
        await trio.lowlevel.checkpoint()
        while True:
            try:
                return self.reserve(peer, purpose, n_bits, contiguous=contiguous)
            except KeyExhausted:
                if trio.current_time() >= deadline:
                    raise
            event = self._waiters.setdefault((peer, purpose), trio.Event())
            with trio.move_on_at(min(deadline, trio.current_time() + self.poll_interval)):
                await event.wait()

    # --------------------------------------------------------------- receivers
    # --------------------------------------------------------------- receivers

    def _check_take(self, peer: str, purpose: str, segments: Sequence[KeySegment],
                    what: str) -> tuple[list[KeySegment], str, int]:
        """Validate a take/peek request; return the segments, pool name and pool id.

        Raises what :meth:`take` documents for errors that need no block lookup.
        """
        check_pool(peer, purpose)
        if not purpose.endswith("-rx"):
            raise LocalProtocolError(
                f"{what}() draws from receiving pools (-rx); {purpose} is drawn with reserve()")
        segs = [s if isinstance(s, KeySegment) else KeySegment(*s) for s in segments]
        if not segs:
            raise LocalProtocolError(f"{what}() needs at least one segment")
        by_block: dict[int, list[KeySegment]] = {}
        if len(segs) > 1:  # one segment cannot overlap itself
            for s in segs:
                by_block.setdefault(s.block_id, []).append(s)
        for bsegs in by_block.values():
            ordered = sorted(bsegs, key=lambda s: s.offset)
            for a, b in itertools.pairwise(ordered):
                if b.offset < a.stop:
                    raise KeyReuseError(
                        f"{what}() segments overlap in block {a.block_id:#x} of "
                        f"{peer}/{purpose}")
        pool = f"{peer}/{purpose}"
        pool_id = self._pool_id(peer, purpose, create=False)
        if pool_id is None:
            raise KeyExhausted(sum(s.n_bits for s in segs), 0, pool=pool)
        return segs, pool, pool_id

    def take(self, peer: str, purpose: str, segments: Sequence[KeySegment]) -> bytes:
        """The bits the sender named, from a ``-rx`` pool; each bit is given out once.

        Returns the segments' bits concatenated (packed, zero-padded). Raises
        :class:`KeyReuseError` if any bit was taken before (nothing is taken then) and
        :class:`KeyExhausted` if a block is unknown or shorter than a segment.
        """
        return self.take_many([(peer, purpose, segments)])[0]

    def take_many(self, requests: Sequence[tuple[str, str, Sequence[KeySegment]]]
                  ) -> list[bytes]:
        """Several :meth:`take` calls, ``(peer, purpose, segments)`` each, in ONE
        transaction: all of them or none.

        Returns one ``bytes`` per request, as :meth:`take` would. If any request would
        raise (:class:`KeyReuseError`, :class:`KeyExhausted`, :class:`LocalProtocolError`)
        nothing at all is taken and that error is raised; two requests naming the
        same bits of one pool count as reuse. A receiver uses it to spend every key
        one frame names (e.g. its pad and its tag key) with a single durable commit.
        """
        if not requests:
            raise LocalProtocolError("take_many() needs at least one request")
        checked = [(peer, purpose, *self._check_take(peer, purpose, segments, "take"))
                   for peer, purpose, segments in requests]
        out: list[bytes] = []
        with self._kdb.tx(deferrable=True) as db:
            for _peer, _purpose, segs, pool, pool_id in checked:
                out.append(concat_bits([(take_segment(db, pool, pool_id, s), s.n_bits)
                                        for s in segs]))
        total = 0
        for peer, purpose, segs, _pool, _pid in checked:
            n_bits = sum(s.n_bits for s in segs)
            total += n_bits
            if self.tracer.enabled:  # recorded once durable (a failed commit took nothing)
                self._kdb.after_commit(partial(self.tracer.event, "keystore", "take", {
                    "peer": peer, "purpose": purpose, "n_bits": n_bits,
                    "segments": [[s.block_id, s.offset, s.n_bits] for s in segs]}))
        self._kdb.maybe_checkpoint(total)
        return out

    def peek(self, peer: str, purpose: str, segments: Sequence[KeySegment]) -> bytes:
        """The bits :meth:`take` would return for ``segments``, consuming nothing.

        Raises exactly what :meth:`take` would raise (:class:`KeyReuseError` if any bit
        was taken before, :class:`KeyExhausted` if a block is unknown or too short) and
        writes nothing. Use it to check a tag before committing to spend its key:
        ``peek`` → verify → ``take``. The pair is atomic only because one thread owns
        the store and nothing runs between the two calls; another *process* taking
        the same bits in between makes the ``take`` raise :class:`KeyReuseError`.
        """
        segs, pool, pool_id = self._check_take(peer, purpose, segments, "peek")
        db = self._kdb.db
        pieces = [(locate(db, pool, pool_id, s)[0], s.n_bits) for s in segs]
        return concat_bits(pieces)


    # -------------------------------------------------------------- bootstrap

    def import_bootstrap(self, peer: str, secret: bytes, *, initiator: bool) -> bool:
        """Load a pre-shared bootstrap secret for the link to ``peer``.

        Sets the two Poly1305 hash keys and adds one bootstrap block to each of the
        peer's ``auth-tx`` and ``auth-rx`` pools (mirrored: ``initiator=True`` at the
        spoke, ``False`` at the hub). Returns ``True`` if imported, ``False`` if this
        secret was already imported for ``peer`` (nothing is added again). Raises
        :class:`KeyReuseError` if it was imported for another peer and
        :class:`ConfigError` if it is too short or plainly not random.
        """
        if not self._kdb.import_bootstrap(peer, secret, initiator=initiator):
            return False
        self._wake(peer, "auth-tx")
        return True

    def has_bootstrap(self, peer: str) -> bool:
        """Whether hash keys for ``peer`` exist (a bootstrap secret was imported)."""
        return self._kdb.has_bootstrap(peer)

    def hash_key(self, peer: str, direction: Literal["tx", "rx"]) -> bytes:
        """The 16-byte Poly1305 ``r`` for frames to (``"tx"``) or from (``"rx"``) ``peer``."""
        return self._kdb.hash_key(peer, direction)

    # --------------------------------------------------------------- counters

    def counter(self, name: str) -> int:
        """The durable counter ``name`` (0 if it was never advanced)."""
        return self._kdb.counter(name)

    def advance_counter(self, name: str, value: int) -> int:
        """Durably set counter ``name`` to ``max(current, value)``; return the new value.

        The counter never goes down, and the new value is on disk when this returns
        (one committed transaction), so a restarted process reads at least it — the
        link layer keeps per-peer high-water marks (e.g. the last slot used) here.
        ``value`` must fit a signed 64-bit integer and be >= 0.
        """
        return self._kdb.advance_counter(name, value)

    def prune_retired(self, keep: int = 100_000) -> int:
        """Forget all but the newest ``keep`` used-up blocks of each pool; return how many.

        A used-up block leaves a small record (id and metadata, no key) so that its id
        is refused if it is ever added again. Those records are the only part of the
        file that grows with time (about 100 bytes per block); a long-running node
        calls this now and then. An id pruned here could be added again, so ``keep``
        should cover any block a peer could still (wrongly) resend.
        """
        return self._kdb.prune_retired(keep)

    # ----------------------------------------------------------------- status

    def block_meta(self, peer: str, purpose: str, block_id: int) -> BlockMeta:
        """The metadata of a block (also of a retired one)."""
        return self._kdb.block_meta(peer, purpose, block_id)

    def pools(self) -> Iterator[PoolStatus]:
        """Every pool with its counts."""
        for pid, peer, purpose, avail, live, retired in self._kdb.pool_counts():
            leased = self._leasing.remaining(pid)
            yield PoolStatus(peer, purpose, avail + leased, live, retired, leased)

    def status(self) -> list[dict[str, object]]:
        """:meth:`pools` as plain dicts (for ``--json`` output and node status)."""
        return [{"peer": p.peer, "purpose": p.purpose, "available_bits": p.available_bits,
                 "live_blocks": p.live_blocks, "retired_blocks": p.retired_blocks,
                 "leased_bits": p.leased_bits} for p in self.pools()]


#: How often a daemon prunes used-up block records (seconds).
PRUNE_EVERY_S = 3600.0


async def prune_retired_periodically(store: KeyStore, *, keep: int = 100_000,
                                     every: float = PRUNE_EVERY_S) -> None:
    """Housekeeping task for long-running daemons: :meth:`KeyStore.prune_retired` at
    start and then every ``every`` seconds, so the only part of the file that grows
    with time stays bounded. Runs until cancelled."""
    while True:
        try:
            store.prune_retired(keep)
        except sqlite3.OperationalError as err:
            # another process held the database too long: housekeeping can wait an hour
            store.log.warning("pruning used-up block records postponed: %s", err)
        await trio.sleep(every)
