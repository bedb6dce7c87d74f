"""The key store's file: SQLite connection, schema, transactions, checkpoints, small tables.

Theory of operation
-------------------
:class:`KeyDB` owns the one ``sqlite3`` connection of a :class:`~qkdnet.keystore.KeyStore`
and everything about the file that is not a pool's policy:

* Opening. The file is created owner-only (0600) before SQLite touches it, then runs
  in WAL mode with ``synchronous=FULL`` (a transaction is on disk when ``COMMIT``
  returns), ``secure_delete`` (freed space is zeroed) and ``journal_size_limit=0``.
  The schema is created or checked in one transaction.
* Transactions. :meth:`KeyDB.tx` is ``BEGIN IMMEDIATE … COMMIT`` (``ROLLBACK`` on any
  exception); writers of several processes serialise on SQLite's lock, waiting up to
  the busy timeout.
* Group commit. Inside :meth:`KeyDB.batch` a *deferrable* transaction (a receiver's
  take) becomes a SAVEPOINT of the batch's one transaction, so many takes pay one
  fsync; every other transaction first commits what the batch holds, commits itself
  and reopens the batch, so it is durable on return as outside a batch. Effects that
  must wait for the takes to be durable are queued with :meth:`KeyDB.after_commit`
  and run (or their ``if_dropped`` instead) when the batch's commit succeeds (fails).
* Checkpoints. Consumption scrubs key in the WAL; every ``checkpoint_bytes`` of
  consumed key (counted by the callers through :meth:`KeyDB.maybe_checkpoint`), and on
  :meth:`KeyDB.checkpoint` / :meth:`KeyDB.close`, ``wal_checkpoint(TRUNCATE)`` copies
  the scrubbed pages into the main file and empties the WAL. The automatic one waits
  only briefly for other connections' readers and is retried at the next consumption.
* Small tables and housekeeping: pool ids (cached), durable counters, bootstrap
  secrets and their hash keys, block metadata, pruning of retired block records and
  the per-pool counts for status.

The key-material rows themselves (blocks, chunks, taken ranges) are read and written
by the functions of ``keystore_blocks`` inside transactions opened here; the pool
logic (leases, reservations, takes, waiting) lives in ``keystore`` and
``keystore_lease`` and reaches the file only through this class and those functions.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

from qkdnet.errors import ConfigError, KeyReuseError, LocalProtocolError
from qkdnet.keystore_blocks import check_new_block, insert_block
from qkdnet.keystore_types import (
    BOOTSTRAP_BLOCK_BASE,
    BOOTSTRAP_MIN_BYTES,
    HASH_KEY_BYTES,
    BlockMeta,
    check_pool,
    to_sql_id,
)
from qkdnet.tracing import NodeLoggerAdapter, Tracer

__all__ = ["KeyDB"]

#: How long a transaction waits for another connection's lock (SQLite busy timeout).
_BUSY_TIMEOUT_MS = 10_000
#: How long the checkpoint after every ``checkpoint_bytes`` of consumption waits.
_OPPORTUNISTIC_WAIT_MS = 50
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


class _Tx:
    """``with kdb.tx():`` — BEGIN IMMEDIATE … COMMIT, ROLLBACK on any exception.

    Inside :meth:`KeyDB.batch` a *deferrable* transaction (a ``take``) becomes a
    SAVEPOINT of the batch's transaction (all or none on its own, committed with the
    batch; the batch's transaction begins with its first take); any other one first
    commits what the batch holds so far and commits itself, so everything but takes
    stays durable on return.
    """

    def __init__(self, kdb: KeyDB, deferrable: bool) -> None:
        self.kdb = kdb
        self.db = kdb.db
        self.savepoint = deferrable and kdb._batch_depth > 0

    def __enter__(self) -> sqlite3.Connection:
        if self.savepoint:
            if not self.db.in_transaction:   # the batch's transaction starts lazily
                self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("SAVEPOINT take_in_batch")
            return self.db
        if self.kdb._batch_depth and self.db.in_transaction:
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
            self.kdb.forget_uncommitted()
        # Inside a batch the next take reopens the batch's transaction (lazily).


class KeyDB:
    """The SQLite file of one key store (see the module docstring).

    ``KeyDB(path, ...)`` creates or opens the file and raises :class:`ConfigError` if
    it cannot. ``log`` and ``tracer`` are the owning store's (its logger name and
    ``keystore`` trace category). One object per process and thread.
    """

    def __init__(self, path: Path, *, checkpoint_bytes: int, log: NodeLoggerAdapter,
                 tracer: Tracer) -> None:
        self.path = path
        self.checkpoint_bytes = checkpoint_bytes
        self.log = log
        self.tracer = tracer
        self._pool_ids: dict[tuple[str, str], int] = {}
        self._hash_keys: dict[tuple[str, str], bytes] = {}
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

    # ------------------------------------------------------------- connection

    @property
    def db(self) -> sqlite3.Connection:
        """The open connection; :class:`LocalProtocolError` once closed."""
        if self._db is None:
            raise LocalProtocolError("the key store is closed")
        return self._db

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run."""
        return self._db is None

    def close(self) -> None:
        """Checkpoint (scrubbing the WAL) and close; a second call does nothing."""
        if self._db is None:
            return
        try:
            self.checkpoint()
        finally:
            self._db.close()
            self._db = None
            self._hash_keys.clear()

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

    def maybe_checkpoint(self, scrubbed_bits: int) -> None:
        """Count ``scrubbed_bits`` of committed consumption; checkpoint (briefly) once
        ``checkpoint_bytes`` have accumulated, outside a batch."""
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

    # ----------------------------------------------------------- transactions

    def tx(self, *, deferrable: bool = False) -> _Tx:
        """A write transaction (``with kdb.tx() as db:``); ``deferrable`` ones (takes)
        join an open :meth:`batch` as a savepoint instead of committing on their own."""
        return _Tx(self, deferrable)

    @property
    def in_batch(self) -> bool:
        """Whether a :meth:`batch` is open."""
        return self._batch_depth > 0

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Group commit: deferrable transactions inside share ONE transaction, committed
        when the outermost block exits (also by an exception). Reentrant.

        If that commit fails it is rolled back, the :meth:`after_commit` callbacks are
        dropped (their ``if_dropped`` run instead) and the error propagates.
        """
        if self._batch_depth:
            self._batch_depth += 1
            try:
                yield
            finally:
                self._batch_depth -= 1
            return
        db = self.db
        # The transaction begins with the batch's first take (see _Tx): most reads of
        # a sideband connection take no key now (deferred authentication), and an
        # empty BEGIN IMMEDIATE / COMMIT per read was a large share of a hub's work.
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
                    self.forget_uncommitted()
                    for _fn, if_dropped in release:
                        if if_dropped is not None:
                            if_dropped()
                    raise
            self.maybe_checkpoint(0)
            for fn, _if_dropped in release:
                fn()

    def after_commit(self, fn: Callable[[], None], *,
                     if_dropped: Callable[[], None] | None = None) -> None:
        """Run ``fn`` now, or inside a batch when it commits (``if_dropped`` if that fails)."""
        if self._batch_depth:
            self._after_commit.append((fn, if_dropped))
        else:
            fn()

    # ------------------------------------------------------------------ pools

    def forget_uncommitted(self) -> None:
        """After a ROLLBACK: drop cached pool ids, which may name rows that were never
        committed (a pool created by a refused ``add_blocks``). A stale id would be
        handed to the next pool created and mix two peers' key in one pool."""
        self._pool_ids.clear()

    def pool_id(self, peer: str, purpose: str, *, create: bool) -> int | None:
        """The id of pool ``(peer, purpose)``; ``None`` if it has none and not ``create``
        (creating it writes, so ``create=True`` belongs inside a transaction)."""
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

    def add_block_in_tx(self, peer: str, purpose: str, block_id: int, key: bytes,
                        n_bits: int, meta: BlockMeta) -> None:
        """Inside a transaction: check and store one block (creating its pool)."""
        check_new_block(block_id, key, n_bits)
        pool_id = self.pool_id(peer, purpose, create=True)
        assert pool_id is not None
        insert_block(self.db, pool_id, f"{peer}/{purpose}", block_id, key, n_bits, meta)

    def block_meta(self, peer: str, purpose: str, block_id: int) -> BlockMeta:
        """The metadata of a block (also of a retired one)."""
        check_pool(peer, purpose)
        pool_id = self.pool_id(peer, purpose, create=False)
        row = None if pool_id is None else self.db.execute(
            "SELECT link_session, created, eps_sec, eps_cor, leaked_ec_bits, auth_bits_spent, "
            "qber FROM blocks WHERE pool_id=? AND block_id=?",
            (pool_id, to_sql_id(block_id))).fetchone()
        if row is None:
            raise LocalProtocolError(f"no block {block_id:#x} in pool {peer}/{purpose}")
        return BlockMeta(str(row[0]), float(row[1]), float(row[2]), float(row[3]),
                         int(row[4]), int(row[5]), None if row[6] is None else float(row[6]))

    def pool_counts(self) -> list[tuple[int, str, str, int, int, int]]:
        """``(pool_id, peer, purpose, available_bits, live_blocks, retired_blocks)`` of
        every pool, ordered by peer and purpose (leases not counted)."""
        rows = self.db.execute(
            "SELECT p.pool_id, p.peer, p.purpose, "
            "COALESCE(SUM(CASE WHEN b.used < b.n_bits THEN b.n_bits - b.used END), 0), "
            "COUNT(CASE WHEN b.used < b.n_bits THEN 1 END), "
            "COUNT(CASE WHEN b.used >= b.n_bits THEN 1 END) "
            "FROM pools p LEFT JOIN blocks b ON b.pool_id = p.pool_id "
            "GROUP BY p.pool_id ORDER BY p.peer, p.purpose").fetchall()
        return [(int(pid), str(peer), str(purpose), int(avail), int(live), int(retired))
                for pid, peer, purpose, avail, live, retired in rows]

    def prune_retired(self, keep: int = 100_000) -> int:
        """Forget all but the newest ``keep`` used-up blocks of each pool; return how many."""
        if keep < 0:
            raise LocalProtocolError(f"keep must be >= 0, got {keep}")
        with self.tx():
            cur = self.db.execute(
                "DELETE FROM blocks WHERE used >= n_bits AND seq IN ("
                " SELECT seq FROM (SELECT seq, ROW_NUMBER() OVER ("
                "  PARTITION BY pool_id ORDER BY seq DESC) AS rn"
                "  FROM blocks WHERE used >= n_bits) WHERE rn > ?)", (keep,))
            removed = cur.rowcount
        if removed:
            self.log.info("pruned %d used-up block records", removed)
        return removed

    # -------------------------------------------------------------- bootstrap

    def import_bootstrap(self, peer: str, secret: bytes, *, initiator: bool) -> bool:
        """Store a bootstrap secret's hash keys and auth blocks for ``peer`` (one
        transaction); ``False`` if it was imported for ``peer`` before. See
        :meth:`qkdnet.keystore.KeyStore.import_bootstrap` for the contract."""
        check_pool(peer, "auth-tx")
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
        with self.tx():
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
                self.add_block_in_tx(peer, "auth-tx", id_fwd, fwd, 8 * half, meta)
                self.add_block_in_tx(peer, "auth-rx", id_back, back, 8 * half, meta)
            else:
                self.add_block_in_tx(peer, "auth-tx", id_back, back, 8 * half, meta)
                self.add_block_in_tx(peer, "auth-rx", id_fwd, fwd, 8 * half, meta)
        self._hash_keys.pop((peer, "tx"), None)
        self._hash_keys.pop((peer, "rx"), None)
        self.tracer.event("keystore", "bootstrap_imported", {
            "peer": peer, "initiator": initiator, "ordinal": ordinal,
            "auth_bits_each_way": 8 * half})
        self.log.info("imported bootstrap secret #%d for %s (%d auth bits each way)",
                      ordinal, peer, 8 * half)
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
        """Durably set counter ``name`` to ``max(current, value)``; return the new value."""
        self._check_counter_name(name)
        if not isinstance(value, int) or not (0 <= value < 1 << 63):
            raise LocalProtocolError(f"counter value must be an int in [0, 2**63), got {value!r}")
        with self.tx():
            self.db.execute(
                "INSERT INTO counters (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value=MAX(value, excluded.value)",
                (name, value))
            row = self.db.execute("SELECT value FROM counters WHERE name=?",
                                  (name,)).fetchone()
        return int(row[0])
