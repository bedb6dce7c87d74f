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
straight to the database.

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
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import trio

from qkdnet.errors import ConfigError, KeyExhausted, KeyReuseError, LocalProtocolError
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


#: How long a transaction waits for another connection's lock (SQLite busy timeout).
_BUSY_TIMEOUT_MS = 10_000
#: How long the checkpoint after every ``checkpoint_bytes`` of consumption waits.
_OPPORTUNISTIC_WAIT_MS = 50

#: Pool purposes; ``-tx`` pools are reserved from, ``-rx`` pools are taken from.
PURPOSES: tuple[str, ...] = ("data-tx", "data-rx", "auth-tx", "auth-rx", "e2e-tx", "e2e-rx")
#: Key bytes per stored chunk row (the unit of deletion).
CHUNK_BYTES = 4096
CHUNK_BITS = CHUNK_BYTES * 8
#: Smallest accepted bootstrap secret.
BOOTSTRAP_MIN_BYTES = 4096
#: Block ids of bootstrap auth blocks are ``BOOTSTRAP_BLOCK_BASE | k``.
BOOTSTRAP_BLOCK_BASE = 0xFFFF_FFFF << 32
HASH_KEY_BYTES = 16
_U64 = 1 << 64
_SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pools (
    pool_id INTEGER PRIMARY KEY,
    peer TEXT NOT NULL,
    purpose TEXT NOT NULL,
    UNIQUE (peer, purpose)
);
CREATE TABLE IF NOT EXISTS blocks (
    seq INTEGER PRIMARY KEY,              -- insertion order (FIFO for reserve)
    pool_id INTEGER NOT NULL,
    block_id INTEGER NOT NULL,            -- the u64 id stored as signed 64-bit
    n_bits INTEGER NOT NULL,
    cursor INTEGER NOT NULL DEFAULT 0,    -- tx pools: bits [0, cursor) are consumed
    used INTEGER NOT NULL DEFAULT 0,      -- bits consumed (both sides)
    link_session TEXT NOT NULL,
    created REAL NOT NULL,
    eps_sec REAL NOT NULL,
    eps_cor REAL NOT NULL,
    leaked_ec_bits INTEGER NOT NULL,
    auth_bits_spent INTEGER NOT NULL,
    qber REAL,
    UNIQUE (pool_id, block_id)
);
CREATE INDEX IF NOT EXISTS blocks_live ON blocks (pool_id, seq) WHERE used < n_bits;
CREATE TABLE IF NOT EXISTS chunks (
    seq INTEGER NOT NULL,                 -- blocks.seq
    idx INTEGER NOT NULL,                 -- chunk covers bits [idx*CHUNK_BITS, ...)
    data BLOB NOT NULL,
    PRIMARY KEY (seq, idx)
);
CREATE TABLE IF NOT EXISTS taken (        -- rx pools: merged ranges already taken
    seq INTEGER NOT NULL,
    start INTEGER NOT NULL,
    stop INTEGER NOT NULL,
    PRIMARY KEY (seq, start)
);
CREATE INDEX IF NOT EXISTS taken_stop ON taken (seq, stop);
CREATE TABLE IF NOT EXISTS bootstrap (
    digest TEXT PRIMARY KEY,
    peer TEXT NOT NULL,
    ordinal INTEGER NOT NULL,
    imported REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (    -- durable monotonic counters (advance_counter)
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS hash_keys (
    peer TEXT NOT NULL,
    direction TEXT NOT NULL,
    r BLOB NOT NULL,
    PRIMARY KEY (peer, direction)
);
"""


# --------------------------------------------------------------------------- types


@dataclass(frozen=True, slots=True)
class KeySegment:
    """``n_bits`` bits of block ``block_id`` starting at bit ``offset``."""

    block_id: int
    offset: int
    n_bits: int

    def __post_init__(self) -> None:
        if not (0 <= self.block_id < _U64):
            raise LocalProtocolError(f"block id {self.block_id} is not an unsigned 64-bit int")
        if self.offset < 0 or self.n_bits <= 0:
            raise LocalProtocolError(
                f"bad key segment: offset {self.offset}, length {self.n_bits} bits")

    @property
    def stop(self) -> int:
        """One past the last bit."""
        return self.offset + self.n_bits


@dataclass(frozen=True, slots=True)
class BlockMeta:
    """Where a block of key came from and what it cost (see docs/design.md)."""

    link_session: str
    created: float
    eps_sec: float
    eps_cor: float
    leaked_ec_bits: int
    auth_bits_spent: int
    qber: float | None = None


@dataclass(frozen=True, slots=True, repr=False)
class KeyGrant:
    """Bits granted to a sender: which ones (``segments``) and their value (``data``).

    ``data`` holds the bits of the segments in order, packed MSB first
    (``numpy.packbits`` order), zero-padded to a whole byte. ``repr`` hides ``data``.
    """

    peer: str
    purpose: str
    segments: tuple[KeySegment, ...]
    data: bytes = field(compare=False)

    @property
    def n_bits(self) -> int:
        """Total bits granted."""
        return sum(s.n_bits for s in self.segments)

    def __repr__(self) -> str:
        segs = ", ".join(f"{s.block_id:#x}@{s.offset}+{s.n_bits}" for s in self.segments)
        return f"KeyGrant({self.peer}/{self.purpose}, {self.n_bits} bits, [{segs}])"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class PoolStatus:
    """Counts describing one pool (no key material)."""

    peer: str
    purpose: str
    available_bits: int
    live_blocks: int
    retired_blocks: int
    leased_bits: int


# ------------------------------------------------------------------ bit helpers


def _tail_mask(n_bits: int) -> int:
    """Mask keeping the valid high bits of the last byte of an ``n_bits`` string."""
    tail = n_bits % 8
    return 0xFF if tail == 0 else (0xFF << (8 - tail)) & 0xFF


def extract_bits(buf: bytes, bit_offset: int, n_bits: int) -> bytes:
    """Bits ``[bit_offset, bit_offset + n_bits)`` of packed ``buf``, repacked from bit 0.

    The result has ``ceil(n_bits / 8)`` bytes with zero padding. Vectorised (numpy
    shifts) for unaligned offsets; a plain slice for aligned ones.
    """
    start, shift = divmod(bit_offset, 8)
    n_bytes = (n_bits + 7) // 8
    if shift == 0:
        out = buf[start:start + n_bytes]
        if n_bits % 8 == 0:
            return bytes(out)
        arr = bytearray(out)
        arr[-1] &= _tail_mask(n_bits)
        return bytes(arr)
    src = np.frombuffer(buf, dtype=np.uint8, count=min(n_bytes + 1, len(buf) - start),
                        offset=start)
    if src.size < n_bytes + 1:
        src = np.concatenate([src, np.zeros(n_bytes + 1 - src.size, dtype=np.uint8)])
    res = (src[:-1] << np.uint8(shift)) | (src[1:] >> np.uint8(8 - shift))
    res[-1] &= np.uint8(_tail_mask(n_bits))
    return res.tobytes()


def concat_bits(pieces: Sequence[tuple[bytes, int]]) -> bytes:
    """Concatenate packed bit strings ``(data, n_bits)`` into one packed string."""
    if len(pieces) == 1:
        return pieces[0][0]
    if all(n % 8 == 0 for _, n in pieces[:-1]):
        return b"".join(d for d, _ in pieces)
    bits = np.concatenate([np.unpackbits(np.frombuffer(d, dtype=np.uint8), count=n)
                           for d, n in pieces])
    return np.packbits(bits).tobytes()


def _zero_bits(buf: bytearray, start: int, stop: int) -> None:
    """Clear bits ``[start, stop)`` of packed ``buf`` in place."""
    if start >= stop:
        return
    sb, sr = divmod(start, 8)
    eb, er = divmod(stop, 8)
    if sb == eb:
        buf[sb] &= ~((0xFF >> sr) & (0xFF << (8 - er))) & 0xFF
        return
    if sr:
        buf[sb] &= (0xFF << (8 - sr)) & 0xFF
        sb += 1
    buf[sb:eb] = bytes(eb - sb)
    if er:
        buf[eb] &= 0xFF >> er


def _to_sql_id(block_id: int) -> int:
    return block_id - _U64 if block_id >= 1 << 63 else block_id


def _from_sql_id(value: int) -> int:
    return value + _U64 if value < 0 else value


# ------------------------------------------------------------------------ lease


@dataclass(slots=True)
class _Run:
    """Leased bits ``[pos, stop)`` of one block; ``buf`` holds bits from ``base``."""

    block_id: int
    base: int
    pos: int
    stop: int
    buf: bytes = field(repr=False)     # key material: never in a repr or traceback

    @property
    def remaining(self) -> int:
        return self.stop - self.pos


@dataclass(slots=True)
class _Lease:
    """Bits durably consumed from a pool but not yet granted (lost if the process dies)."""

    runs: list[_Run] = field(default_factory=list)

    @property
    def remaining(self) -> int:
        return sum(r.remaining for r in self.runs)

    def take(self, n_bits: int) -> tuple[list[KeySegment], list[tuple[bytes, int]]]:
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


@dataclass(slots=True)
class _Span:
    """Bytes ``[b0, b1)`` of chunk ``idx`` (row ``rowid``) as read (``data``)."""

    idx: int
    b0: int
    b1: int
    rowid: int
    data: bytes

    def __repr__(self) -> str:  # data is key material
        return f"_Span(chunk {self.idx}, bytes {self.b0}..{self.b1})"


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
        self.lease_bits = lease_bits
        self.checkpoint_bytes = checkpoint_bytes
        self.poll_interval = poll_interval
        self.tracer = tracer
        self.log = get_logger(__name__, node or self.path.stem)
        self._leases: dict[int, _Lease] = {}
        self._pool_ids: dict[tuple[str, str], int] = {}
        self._hash_keys: dict[tuple[str, str], bytes] = {}
        self._waiters: dict[tuple[str, str], trio.Event] = {}
        self._scrubbed_since_checkpoint = 0
        self._batch_depth = 0   # > 0 inside batch(): takes share one transaction
        # (released by the batch's commit, run instead if that commit fails)
        self._after_commit: list[tuple[Callable[[], None], Callable[[], None] | None]] = []
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Create the file owner-only before SQLite does (it would use the umask);
            # SQLite gives the -wal and -shm files the same permissions.
            with contextlib.suppress(FileExistsError):
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            self._db: sqlite3.Connection | None = sqlite3.connect(
                self.path, isolation_level=None, timeout=_BUSY_TIMEOUT_MS / 1000)
        except (OSError, sqlite3.Error) as err:
            raise ConfigError(f"cannot open the key store: {err}", source=str(self.path),
                              expected="a writable SQLite file path") from err
        db = self._db
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise ConfigError(f"SQLite refused WAL mode (got {mode})", source=str(self.path))
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA secure_delete=ON")
            db.execute("PRAGMA foreign_keys=OFF")
            db.execute("PRAGMA journal_size_limit=0")   # truncate the WAL when it restarts
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.DatabaseError as err:
            db.close()
            raise ConfigError(f"not a usable key store: {err}", source=str(self.path),
                              expected="a qkdnet key store (SQLite)") from err
        try:
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    db.execute(stmt)
            row = db.execute("SELECT v FROM meta WHERE k='schema'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta (k, v) VALUES ('schema', ?)", (_SCHEMA_VERSION,))
            elif row[0] != _SCHEMA_VERSION:
                raise ConfigError(f"key store schema {row[0]} is not supported",
                                  source=str(self.path), expected=f"schema {_SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            db.close()
            self._db = None
            raise

    # ------------------------------------------------------------- plumbing

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise LocalProtocolError("the key store is closed")
        return self._db

    def close(self) -> None:
        """Checkpoint (scrubbing the WAL) and close. Unused leased bits are burned."""
        if self._db is None:
            return
        try:
            self.checkpoint()
        finally:
            self._db.close()
            self._db = None
            self._leases.clear()
            self._hash_keys.clear()

    def __enter__(self) -> KeyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._db is None else "open"
        return f"KeyStore({str(self.path)!r}, {state})"

    def checkpoint(self) -> bool:
        """Copy the WAL into the main file and truncate it (scrubbed pages land on disk).

        Returns False when another connection's reader blocked it (SQLite reports that
        rather than raising): consumed key may then still sit in the main file, so the
        next consumption tries again instead of waiting for another ``checkpoint_bytes``.
        """
        busy = self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        if busy:
            self.log.warning("WAL checkpoint blocked by another reader; consumed key is "
                             "erased from the main file at the next checkpoint")
            return False
        self._scrubbed_since_checkpoint = 0
        return True

    def _maybe_checkpoint(self, scrubbed_bits: int) -> None:
        self._scrubbed_since_checkpoint += scrubbed_bits // 8
        if self._batch_depth:
            return  # not inside a transaction: the batch checks when it commits
        if self._scrubbed_since_checkpoint >= self.checkpoint_bytes:
            # Do not stall the caller for the connection's 10 s busy timeout while
            # another connection reads: try briefly, and again at the next consumption.
            self.db.execute(f"PRAGMA busy_timeout={_OPPORTUNISTIC_WAIT_MS}")
            try:
                self.checkpoint()
            except sqlite3.OperationalError as err:
                # Another connection is busy; the scrubbed pages reach the main file at the
                # next checkpoint. The consumption itself is already committed.
                self.log.debug("WAL checkpoint postponed: %s", err)
            finally:
                self.db.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")

    class _Tx:
        """``with self._tx():`` — BEGIN IMMEDIATE … COMMIT, ROLLBACK on any exception.

        Inside :meth:`batch` a *deferrable* transaction (a ``take``) becomes a SAVEPOINT
        of the batch's transaction (all or none on its own, committed with the batch);
        any other one first commits what the batch holds so far, commits itself, and
        reopens the batch, so everything but takes stays durable on return.
        """

        def __init__(self, store: KeyStore, deferrable: bool) -> None:
            self.store = store
            self.db = store.db
            self.savepoint = deferrable and store._batch_depth > 0

        def __enter__(self) -> sqlite3.Connection:
            if self.savepoint:
                self.db.execute("SAVEPOINT take_in_batch")
                return self.db
            if self.store._batch_depth and self.db.in_transaction:
                self.db.execute("COMMIT")  # the batch so far becomes durable first
            self.db.execute("BEGIN IMMEDIATE")
            return self.db

        def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
            if self.savepoint:
                if exc_type is not None:
                    self.db.execute("ROLLBACK TO take_in_batch")
                self.db.execute("RELEASE take_in_batch")
                return
            if exc_type is None:
                self.db.execute("COMMIT")
            elif self.db.in_transaction:
                self.db.execute("ROLLBACK")
            if self.store._batch_depth:
                self.db.execute("BEGIN IMMEDIATE")  # reopen the batch

    def _tx(self, *, deferrable: bool = False) -> KeyStore._Tx:
        return KeyStore._Tx(self, deferrable)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
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
        if self._batch_depth:
            self._batch_depth += 1
            try:
                yield
            finally:
                self._batch_depth -= 1
            return
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        self._batch_depth = 1
        try:
            yield
        finally:
            self._batch_depth = 0
            release, self._after_commit = self._after_commit, []
            if db.in_transaction:
                # If this fails the takes are rolled back and ``release`` is dropped:
                # nothing computed from their key is acted on.
                try:
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:  # SQLite keeps some failed commits open
                        db.execute("ROLLBACK")
                    for _fn, if_dropped in release:
                        if if_dropped is not None:
                            if_dropped()
                    raise
            self._maybe_checkpoint(0)
            for fn, _if_dropped in release:
                fn()

    def after_commit(self, fn: Callable[[], None], *,
                     if_dropped: Callable[[], None] | None = None) -> None:
        """Run ``fn`` once the takes made so far are durable.

        Outside a batch that is now. Inside :meth:`batch` it is when the batch commits
        (in the order given); if that commit fails, ``fn`` never runs and
        ``if_dropped`` (if given) runs instead, to undo bookkeeping that expected
        ``fn``. Receivers put everything that would let taken key's effects leave the
        process (a forwarded frame, a delivered message) behind it.
        """
        if self._batch_depth:
            self._after_commit.append((fn, if_dropped))
        else:
            fn()

    @staticmethod
    def _check_pool(peer: str, purpose: str) -> None:
        if not isinstance(peer, str) or not peer:
            raise LocalProtocolError("peer must be a non-empty string")
        if purpose not in PURPOSES:
            raise LocalProtocolError(
                f"unknown key pool purpose {purpose!r}; expected one of {', '.join(PURPOSES)}")

    def _pool_id(self, peer: str, purpose: str, *, create: bool) -> int | None:
        key = (peer, purpose)
        pid = self._pool_ids.get(key)
        if pid is not None:
            return pid
        row = self.db.execute("SELECT pool_id FROM pools WHERE peer=? AND purpose=?",
                              key).fetchone()
        if row is None:
            if not create:
                return None
            cur = self.db.execute("INSERT INTO pools (peer, purpose) VALUES (?, ?)", key)
            pid = int(cur.lastrowid or 0)
        else:
            pid = int(row[0])
        self._pool_ids[key] = pid
        return pid

    def _db_available(self, pool_id: int) -> int:
        row = self.db.execute(
            "SELECT COALESCE(SUM(n_bits - used), 0) FROM blocks WHERE pool_id=? AND used < n_bits",
            (pool_id,)).fetchone()
        return int(row[0])

    def _retire(self, seq: int) -> None:
        self.db.execute("DELETE FROM chunks WHERE seq=?", (seq,))
        self.db.execute("DELETE FROM taken WHERE seq=?", (seq,))

    # -------------------------------------------------------------- producers

    def add_block(self, peer: str, purpose: str, block_id: int, key: bytes, n_bits: int,
                  meta: BlockMeta) -> None:
        """Store ``n_bits`` bits of key (packed, ``ceil(n_bits/8)`` bytes) as a new block.

        Raises :class:`LocalProtocolError` if the pool already holds (or once held)
        ``block_id``: a block id is never reused.
        """
        self._check_pool(peer, purpose)
        with self._tx():
            self._add_block_in_tx(peer, purpose, block_id, key, n_bits, meta)
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
            self._check_pool(peer, purpose)
        with self._tx():
            for purpose, block_id, key, n_bits in parts:
                self._add_block_in_tx(peer, purpose, block_id, key, n_bits, meta)
        for purpose, block_id, _key, n_bits in parts:
            self.tracer.event("keystore", "block_added", {
                "peer": peer, "purpose": purpose, "block_id": block_id, "n_bits": n_bits,
                "link_session": meta.link_session})
            self.log.debug("added block %#x (%d bits) to %s/%s", block_id, n_bits, peer,
                           purpose)
        for purpose in dict.fromkeys(p[0] for p in parts):
            self._wake(peer, purpose)

    def _add_block_in_tx(self, peer: str, purpose: str, block_id: int, key: bytes,
                         n_bits: int, meta: BlockMeta) -> None:
        if not isinstance(block_id, int) or not (0 <= block_id < _U64):
            raise LocalProtocolError(f"block id {block_id!r} is not an unsigned 64-bit int")
        if n_bits <= 0:
            raise LocalProtocolError(f"a key block needs at least one bit, got {n_bits}")
        n_bytes = (n_bits + 7) // 8
        if len(key) != n_bytes:
            raise LocalProtocolError(
                f"key block {block_id:#x}: {len(key)} bytes given for {n_bits} bits "
                f"(expected {n_bytes})")
        pool_id = self._pool_id(peer, purpose, create=True)
        exists = self.db.execute("SELECT 1 FROM blocks WHERE pool_id=? AND block_id=?",
                                 (pool_id, _to_sql_id(block_id))).fetchone()
        if exists:
            raise LocalProtocolError(
                f"block {block_id:#x} already exists in pool {peer}/{purpose}; "
                "block ids are never reused")
        cur = self.db.execute(
            "INSERT INTO blocks (pool_id, block_id, n_bits, link_session, created, eps_sec, "
            "eps_cor, leaked_ec_bits, auth_bits_spent, qber) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (pool_id, _to_sql_id(block_id), n_bits, meta.link_session, meta.created,
             meta.eps_sec, meta.eps_cor, meta.leaked_ec_bits, meta.auth_bits_spent, meta.qber))
        seq = int(cur.lastrowid or 0)
        data = bytearray(key)
        data[-1] &= _tail_mask(n_bits)
        self.db.executemany(
            "INSERT INTO chunks (seq, idx, data) VALUES (?, ?, ?)",
            ((seq, i, bytes(data[o:o + CHUNK_BYTES]))
             for i, o in enumerate(range(0, n_bytes, CHUNK_BYTES))))

    def _wake(self, peer: str, purpose: str) -> None:
        event = self._waiters.pop((peer, purpose), None)
        if event is not None:
            event.set()

    # ---------------------------------------------------------------- senders

    def available(self, peer: str, purpose: str) -> int:
        """Bits of the pool not yet consumed (for ``-tx`` pools: including the lease)."""
        self._check_pool(peer, purpose)
        pool_id = self._pool_id(peer, purpose, create=False)
        if pool_id is None:
            return 0
        lease = self._leases.get(pool_id)
        return self._db_available(pool_id) + (lease.remaining if lease else 0)

    def reserve(self, peer: str, purpose: str, n_bits: int, *,
                contiguous: bool = False) -> KeyGrant:
        """Grant ``n_bits`` unused bits of a ``-tx`` pool, durably consumed before return.

        With ``contiguous=True`` the grant is one segment inside one block; block tails
        too short for it are burned. Raises :class:`KeyExhausted` (nothing consumed) if
        the pool cannot supply the bits.
        """
        self._check_pool(peer, purpose)
        if not purpose.endswith("-tx"):
            raise LocalProtocolError(
                f"reserve() draws from sending pools (-tx); {purpose} is taken with take()")
        if not isinstance(n_bits, int) or n_bits <= 0:
            raise LocalProtocolError(f"reserve() needs a positive bit count, got {n_bits!r}")
        pool_id = self._pool_id(peer, purpose, create=False)
        if pool_id is None:
            raise KeyExhausted(n_bits, 0, pool=f"{peer}/{purpose}")
        lease = self._leases.setdefault(pool_id, _Lease())
        if contiguous:
            got = lease.take_contiguous(n_bits)
            if got is None:
                lease.runs.extend(self._consume_contiguous(peer, purpose, pool_id, n_bits))
                got = lease.take_contiguous(n_bits)
                assert got is not None
            segments, data = [got[0]], got[1]
        else:
            have = lease.remaining
            if have < n_bits:
                lease.runs.extend(self._consume(peer, purpose, pool_id, n_bits - have, have))
            segments, pieces = lease.take(n_bits)
            data = concat_bits(pieces)
        grant = KeyGrant(peer, purpose, tuple(segments), data)
        if self.tracer.enabled:
            self.tracer.event("keystore", "reserve", {
                "peer": peer, "purpose": purpose, "n_bits": n_bits,
                "segments": [[s.block_id, s.offset, s.n_bits] for s in segments]})
        return grant

    def _consume(self, peer: str, purpose: str, pool_id: int, need: int,
                 leased: int) -> list[_Run]:
        """Durably consume at least ``need`` bits (up to a lease) FIFO; return them as runs."""
        runs: list[_Run] = []
        with self._tx():
            avail = self._db_available(pool_id)
            if avail < need:
                raise KeyExhausted(need + leased, avail + leased, pool=f"{peer}/{purpose}")
            want = min(avail, max(need, self.lease_bits))
            rows = self.db.execute(
                "SELECT seq, block_id, n_bits, cursor FROM blocks "
                "WHERE pool_id=? AND used < n_bits ORDER BY seq", (pool_id,))
            todo = want
            plan: list[tuple[int, int, int, int]] = []
            try:
                for seq, bid, n, cur in rows:
                    k = min(todo, n - cur)
                    plan.append((int(seq), _from_sql_id(int(bid)), int(n), int(cur)))
                    todo -= k
                    if todo == 0:
                        break
            finally:
                rows.close()  # an open statement would block the WAL checkpoint
            todo = want
            for seq, bid, n, cur in plan:
                k = min(todo, n - cur)
                runs.append(self._consume_in_block(seq, bid, n, cur, k))
                todo -= k
        self._after_consume(peer, purpose, want, runs)
        return runs

    def _consume_contiguous(self, peer: str, purpose: str, pool_id: int,
                            n_bits: int) -> list[_Run]:
        """Durably consume a lease inside the first block with ``n_bits`` left.

        Live blocks before it (all with fewer than ``n_bits`` left) are burned.
        """
        with self._tx():
            rows = self.db.execute(
                "SELECT seq, block_id, n_bits, cursor FROM blocks "
                "WHERE pool_id=? AND used < n_bits ORDER BY seq", (pool_id,)).fetchall()
            chosen = next((r for r in rows if int(r[2]) - int(r[3]) >= n_bits), None)
            if chosen is None:
                avail = sum(int(r[2]) - int(r[3]) for r in rows)
                lease = self._leases.get(pool_id)
                raise KeyExhausted(n_bits, avail + (lease.remaining if lease else 0),
                                   pool=f"{peer}/{purpose} (one contiguous segment)")
            burned = 0
            for seq, _bid, n, cur in rows:
                if seq == chosen[0]:
                    break
                burned += int(n) - int(cur)
                self.db.execute("UPDATE blocks SET cursor=n_bits, used=n_bits WHERE seq=?",
                                (seq,))
                self._retire(int(seq))
            seq, bid, n, cur = (int(v) for v in chosen)
            remaining = n - cur
            k = min(remaining, max(n_bits, self.lease_bits))
            # Do not leave a tail that no request of this size could use.
            if remaining - k < n_bits:
                k = remaining
            run = self._consume_in_block(seq, _from_sql_id(bid), n, cur, k)
        if burned:
            self.log.debug("burned %d bits of block tails in %s/%s for a contiguous grant",
                      burned, peer, purpose)
        self._after_consume(peer, purpose, k + burned, [run])
        return [run]

    def _consume_in_block(self, seq: int, block_id: int, n: int, cur: int, k: int) -> _Run:
        """Inside a transaction: move block ``seq``'s cursor by ``k``, scrub, return the bits."""
        new = cur + k
        data, spans = self._read_span(seq, cur, new)
        self.db.execute("UPDATE blocks SET cursor=?, used=? WHERE seq=?", (new, new, seq))
        if new == n:
            self._retire(seq)
        else:
            # Bits before ``cur`` are consumed already, so a chunk ending at or before
            # ``new`` is wholly consumed: delete it; zero the consumed bits of the rest.
            gone = {sp.idx for sp in spans if (sp.idx + 1) * CHUNK_BITS <= new}
            self._zero_spans(spans, cur, new, gone, seq)
        return _Run(block_id, cur, cur, new, data)

    def _after_consume(self, peer: str, purpose: str, n_bits: int, runs: list[_Run]) -> None:
        if self.tracer.enabled:
            self.tracer.event("keystore", "lease", {
                "peer": peer, "purpose": purpose, "n_bits": n_bits,
                "runs": [[r.block_id, r.pos, r.remaining] for r in runs]})
        self._maybe_checkpoint(n_bits)

    async def wait_reserve(self, peer: str, purpose: str, n_bits: int, *,
                           deadline: float = math.inf, contiguous: bool = False) -> KeyGrant:
        """Like :meth:`reserve`, but wait (until trio time ``deadline``) for key to arrive.

        Woken at once by :meth:`add_block` on this object; also polls every
        ``poll_interval`` seconds for key added by another process. Raises
        :class:`KeyExhausted` at the deadline.
        """
        if self._batch_depth:
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

    def _check_take(self, peer: str, purpose: str, segments: Sequence[KeySegment],
                    what: str) -> tuple[list[KeySegment], str, int]:
        """Validate a take/peek request; return the segments, pool name and pool id.

        Raises what :meth:`take` documents for errors that need no block lookup.
        """
        self._check_pool(peer, purpose)
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
        with self._tx(deferrable=True):
            for _peer, _purpose, segs, pool, pool_id in checked:
                out.append(concat_bits([(self._take_one(pool, pool_id, s), s.n_bits)
                                        for s in segs]))
        total = 0
        for peer, purpose, segs, _pool, _pid in checked:
            n_bits = sum(s.n_bits for s in segs)
            total += n_bits
            if self.tracer.enabled:  # recorded once durable (a failed commit took nothing)
                self.after_commit(partial(self.tracer.event, "keystore", "take", {
                    "peer": peer, "purpose": purpose, "n_bits": n_bits,
                    "segments": [[s.block_id, s.offset, s.n_bits] for s in segs]}))
        self._maybe_checkpoint(total)
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
        pieces = [(self._locate(pool, pool_id, s)[0], s.n_bits) for s in segs]
        return concat_bits(pieces)

    def _locate(self, pool: str, pool_id: int, s: KeySegment
                ) -> tuple[bytes, int, int, int, list[_Span]]:
        """Check segment ``s`` is takeable; return its bits, the block's seq, size, used
        count and the byte spans of the chunks it covers. Reads only."""
        row = self.db.execute(
            "SELECT b.seq, b.n_bits, b.used, EXISTS (SELECT 1 FROM taken t "
            " WHERE t.seq = b.seq AND t.start < ? AND t.stop > ?) "
            "FROM blocks b WHERE b.pool_id=? AND b.block_id=?",
            (s.stop, s.offset, pool_id, _to_sql_id(s.block_id))).fetchone()
        if row is None:
            raise KeyExhausted(s.n_bits, 0, pool=f"{pool} block {s.block_id:#x} (unknown)")
        seq, n, used, overlap = (int(v) for v in row)
        if s.stop > n:
            raise KeyExhausted(s.n_bits, max(0, n - s.offset),
                               pool=f"{pool} block {s.block_id:#x} at bit {s.offset}")
        if used >= n or overlap:
            raise KeyReuseError(
                f"key bits {s.offset}..{s.stop - 1} of block {s.block_id:#x} in {pool} "
                "were already taken")
        data, spans = self._read_span(seq, s.offset, s.stop)
        return data, seq, n, used, spans

    def _read_span(self, seq: int, start: int, stop: int) -> tuple[bytes, list[_Span]]:
        """Bits ``[start, stop)`` of block ``seq``, reading only the bytes that hold
        them (not whole chunks), and where each piece lives (for :meth:`_zero_spans`)."""
        first, last = start // CHUNK_BITS, (stop - 1) // CHUNK_BITS
        spans: list[_Span] = []
        for idx in range(first, last + 1):
            c0 = idx * CHUNK_BITS
            b0 = (max(start, c0) - c0) // 8
            b1 = (min(stop, c0 + CHUNK_BITS) - c0 + 7) // 8
            spans.append(_Span(idx, b0, b1, 0, b""))
        rows = self.db.execute(
            "SELECT idx, rowid, substr(data, ? + 1, ?) FROM chunks "
            "WHERE seq=? AND idx BETWEEN ? AND ? ORDER BY idx",
            # One substr for all rows: the first chunk from its start byte, the others
            # from byte 0; ask each for at most the bytes of one chunk.
            (0, CHUNK_BYTES, seq, first, last)).fetchall() if first != last else \
            self.db.execute(
                "SELECT idx, rowid, substr(data, ? + 1, ?) FROM chunks WHERE seq=? AND idx=?",
                (spans[0].b0, spans[0].b1 - spans[0].b0, seq, first)).fetchall()
        if len(rows) != len(spans):
            # Only reachable if the file was edited behind our back.
            raise LocalProtocolError(f"key store is missing key chunks of a block (seq {seq})")
        for span, (_idx, rowid, data) in zip(spans, rows, strict=True):
            span.rowid = int(rowid)
            span.data = bytes(data) if first == last else bytes(data[span.b0:span.b1])
            if len(span.data) != span.b1 - span.b0:
                raise LocalProtocolError(
                    f"key store holds a short key chunk of a block (seq {seq})")
        joined = b"".join(sp.data for sp in spans)
        return extract_bits(joined, start - (first * CHUNK_BITS + spans[0].b0 * 8),
                            stop - start), spans

    def _zero_spans(self, spans: list[_Span], start: int, stop: int,
                    gone: set[int], seq: int) -> None:
        """Delete the chunks in ``gone``; in the others zero bits ``[start, stop)`` in
        place, writing only the bytes that held them (incremental BLOB I/O)."""
        if gone:  # contiguous chunk indices: one statement
            assert max(gone) - min(gone) + 1 == len(gone)
            self.db.execute("DELETE FROM chunks WHERE seq=? AND idx BETWEEN ? AND ?",
                            (seq, min(gone), max(gone)))
        for span in spans:
            if span.idx in gone:
                continue
            base = span.idx * CHUNK_BITS + span.b0 * 8
            buf = bytearray(span.data)
            _zero_bits(buf, max(start, base) - base, min(stop, base + 8 * len(buf)) - base)
            with self.db.blobopen("chunks", "data", span.rowid) as blob:
                blob.seek(span.b0)
                blob.write(bytes(buf))

    def _take_one(self, pool: str, pool_id: int, s: KeySegment) -> bytes:
        data, seq, n, used, spans = self._locate(pool, pool_id, s)
        used += s.n_bits
        self.db.execute("UPDATE blocks SET used=? WHERE seq=?", (used, seq))
        if used == n:
            self._retire(seq)
            return data
        # Merge with the taken ranges that touch this one (at most one on each side:
        # stored ranges are merged, and none overlaps [offset, stop)).
        start, stop = s.offset, s.stop
        left = right = None
        for r_start, r_stop in self.db.execute(
                "SELECT start, stop FROM taken WHERE seq=? AND (stop=? OR start=?)",
                (seq, start, stop)).fetchall():
            if r_stop == start:
                left = int(r_start)
            else:
                right = int(r_stop)
        if right is not None:
            self.db.execute("DELETE FROM taken WHERE seq=? AND start=?", (seq, stop))
            stop = right
        if left is not None:
            start = left
            self.db.execute("UPDATE taken SET stop=? WHERE seq=? AND start=?",
                            (stop, seq, start))
        else:
            self.db.execute("INSERT INTO taken (seq, start, stop) VALUES (?, ?, ?)",
                            (seq, start, stop))
        # A chunk is gone once the merged range around this segment covers it.
        gone = {sp.idx for sp in spans
                if start <= sp.idx * CHUNK_BITS and min((sp.idx + 1) * CHUNK_BITS, n) <= stop}
        self._zero_spans(spans, s.offset, s.stop, gone, seq)
        return data

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
        self._check_pool(peer, "auth-tx")
        if len(secret) < BOOTSTRAP_MIN_BYTES:
            raise ConfigError(f"bootstrap secret for {peer} has {len(secret)} bytes",
                              key="bootstrap secret",
                              expected=f"at least {BOOTSTRAP_MIN_BYTES} random bytes")
        if len(set(secret[:512])) < 64:
            raise ConfigError(f"bootstrap secret for {peer} does not look random",
                              key="bootstrap secret",
                              expected="bytes from a cryptographic random source")
        digest = hashlib.sha256(b"qkdnet bootstrap digest v1\0" + secret).hexdigest()
        r_fwd, r_back = secret[:HASH_KEY_BYTES], secret[HASH_KEY_BYTES:2 * HASH_KEY_BYTES]
        rest = secret[2 * HASH_KEY_BYTES:]
        half = len(rest) // 2
        fwd, back = rest[:half], rest[half:2 * half]
        now = time.time()
        with self._tx():
            row = self.db.execute("SELECT peer FROM bootstrap WHERE digest=?",
                                  (digest,)).fetchone()
            if row is not None:
                if row[0] == peer:
                    self.log.info("bootstrap secret for %s already imported; not adding it again",
                             peer)
                    return False
                raise KeyReuseError(
                    f"this bootstrap secret was already imported for peer {row[0]}; "
                    f"every link needs its own secret (refused for {peer})")
            ordinal = int(self.db.execute("SELECT COUNT(*) FROM bootstrap WHERE peer=?",
                                          (peer,)).fetchone()[0])
            self.db.execute("INSERT INTO bootstrap (digest, peer, ordinal, imported) "
                            "VALUES (?, ?, ?, ?)", (digest, peer, ordinal, now))
            tx_r, rx_r = (r_fwd, r_back) if initiator else (r_back, r_fwd)
            for direction, r in (("tx", tx_r), ("rx", rx_r)):
                self.db.execute(
                    "INSERT INTO hash_keys (peer, direction, r) VALUES (?, ?, ?) "
                    "ON CONFLICT (peer, direction) DO UPDATE SET r=excluded.r",
                    (peer, direction, r))
            id_fwd = BOOTSTRAP_BLOCK_BASE | (2 * ordinal)
            id_back = BOOTSTRAP_BLOCK_BASE | (2 * ordinal + 1)
            meta = BlockMeta(link_session=f"bootstrap-{ordinal}", created=now, eps_sec=0.0,
                             eps_cor=0.0, leaked_ec_bits=0, auth_bits_spent=0)
            if initiator:
                self._add_block_in_tx(peer, "auth-tx", id_fwd, fwd, 8 * half, meta)
                self._add_block_in_tx(peer, "auth-rx", id_back, back, 8 * half, meta)
            else:
                self._add_block_in_tx(peer, "auth-tx", id_back, back, 8 * half, meta)
                self._add_block_in_tx(peer, "auth-rx", id_fwd, fwd, 8 * half, meta)
        self._hash_keys.pop((peer, "tx"), None)
        self._hash_keys.pop((peer, "rx"), None)
        self.tracer.event("keystore", "bootstrap_imported", {
            "peer": peer, "initiator": initiator, "ordinal": ordinal,
            "auth_bits_each_way": 8 * half})
        self.log.info("imported bootstrap secret #%d for %s (%d auth bits each way)",
                 ordinal, peer, 8 * half)
        self._wake(peer, "auth-tx")
        return True

    def has_bootstrap(self, peer: str) -> bool:
        """Whether hash keys for ``peer`` exist (a bootstrap secret was imported)."""
        return self.db.execute("SELECT 1 FROM hash_keys WHERE peer=? LIMIT 1",
                               (peer,)).fetchone() is not None

    def hash_key(self, peer: str, direction: Literal["tx", "rx"]) -> bytes:
        """The 16-byte Poly1305 ``r`` for frames to (``"tx"``) or from (``"rx"``) ``peer``."""
        if direction not in ("tx", "rx"):
            raise LocalProtocolError(f"hash key direction must be 'tx' or 'rx', not {direction!r}")
        cached = self._hash_keys.get((peer, direction))
        if cached is not None:
            return cached
        row = self.db.execute("SELECT r FROM hash_keys WHERE peer=? AND direction=?",
                              (peer, direction)).fetchone()
        if row is None:
            raise LocalProtocolError(
                f"no bootstrap secret imported for peer {peer}; "
                "set [auth] bootstrap_secret in the node config")
        r = bytes(row[0])
        self._hash_keys[(peer, direction)] = r
        return r

    # --------------------------------------------------------------- counters

    @staticmethod
    def _check_counter_name(name: str) -> None:
        if not isinstance(name, str) or not name:
            raise LocalProtocolError("a counter name must be a non-empty string")

    def counter(self, name: str) -> int:
        """The durable counter ``name`` (0 if it was never advanced)."""
        self._check_counter_name(name)
        row = self.db.execute("SELECT value FROM counters WHERE name=?", (name,)).fetchone()
        return 0 if row is None else int(row[0])

    def advance_counter(self, name: str, value: int) -> int:
        """Durably set counter ``name`` to ``max(current, value)``; return the new value.

        The counter never goes down, and the new value is on disk when this returns
        (one committed transaction), so a restarted process reads at least it — the
        link layer keeps per-peer high-water marks (e.g. the last slot used) here.
        ``value`` must fit a signed 64-bit integer and be >= 0.
        """
        self._check_counter_name(name)
        if not isinstance(value, int) or not (0 <= value < 1 << 63):
            raise LocalProtocolError(f"counter value must be an int in [0, 2**63), got {value!r}")
        with self._tx():
            self.db.execute(
                "INSERT INTO counters (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value=MAX(value, excluded.value)",
                (name, value))
            row = self.db.execute("SELECT value FROM counters WHERE name=?",
                                  (name,)).fetchone()
        return int(row[0])

    def prune_retired(self, keep: int = 100_000) -> int:
        """Forget all but the newest ``keep`` used-up blocks of each pool; return how many.

        A used-up block leaves a small record (id and metadata, no key) so that its id
        is refused if it is ever added again. Those records are the only part of the
        file that grows with time (about 100 bytes per block); a long-running node
        calls this now and then. An id pruned here could be added again, so ``keep``
        should cover any block a peer could still (wrongly) resend.
        """
        if keep < 0:
            raise LocalProtocolError(f"keep must be >= 0, got {keep}")
        with self._tx():
            cur = self.db.execute(
                "DELETE FROM blocks WHERE used >= n_bits AND seq IN ("
                " SELECT seq FROM (SELECT seq, ROW_NUMBER() OVER ("
                "  PARTITION BY pool_id ORDER BY seq DESC) AS rn"
                "  FROM blocks WHERE used >= n_bits) WHERE rn > ?)", (keep,))
            removed = cur.rowcount
        if removed:
            self.log.info("pruned %d used-up block records", removed)
        return removed

    # ----------------------------------------------------------------- status

    def block_meta(self, peer: str, purpose: str, block_id: int) -> BlockMeta:
        """The metadata of a block (also of a retired one)."""
        self._check_pool(peer, purpose)
        pool_id = self._pool_id(peer, purpose, create=False)
        row = None if pool_id is None else self.db.execute(
            "SELECT link_session, created, eps_sec, eps_cor, leaked_ec_bits, auth_bits_spent, "
            "qber FROM blocks WHERE pool_id=? AND block_id=?",
            (pool_id, _to_sql_id(block_id))).fetchone()
        if row is None:
            raise LocalProtocolError(f"no block {block_id:#x} in pool {peer}/{purpose}")
        return BlockMeta(str(row[0]), float(row[1]), float(row[2]), float(row[3]),
                         int(row[4]), int(row[5]), None if row[6] is None else float(row[6]))

    def pools(self) -> Iterator[PoolStatus]:
        """Every pool with its counts."""
        rows = self.db.execute(
            "SELECT p.pool_id, p.peer, p.purpose, "
            "COALESCE(SUM(CASE WHEN b.used < b.n_bits THEN b.n_bits - b.used END), 0), "
            "COUNT(CASE WHEN b.used < b.n_bits THEN 1 END), "
            "COUNT(CASE WHEN b.used >= b.n_bits THEN 1 END) "
            "FROM pools p LEFT JOIN blocks b ON b.pool_id = p.pool_id "
            "GROUP BY p.pool_id ORDER BY p.peer, p.purpose").fetchall()
        for pid, peer, purpose, avail, live, retired in rows:
            lease = self._leases.get(int(pid))
            leased = lease.remaining if lease else 0
            yield PoolStatus(str(peer), str(purpose), int(avail) + leased, int(live),
                             int(retired), leased)

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
