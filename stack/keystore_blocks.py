"""Key-material rows of the key store: storing blocks, reading bits, consuming and erasing.

Theory of operation
-------------------
A block is one ``blocks`` row (ids, size, metadata, the consumption counters) and its
key bytes in ``chunks`` rows of :data:`CHUNK_BYTES` each. How far a block is consumed
is kept per side: a ``-tx`` block has a *cursor* (bits ``[0, cursor)`` are consumed,
first in first out), a ``-rx`` block keeps the merged ranges already taken in
``taken`` rows; both count consumed bits in ``used``, and a block with
``used == n_bits`` is *retired*: its chunks and ranges are deleted and only the
``blocks`` row remains, so its id is refused if it ever comes back.

Erasure happens in the same transaction as the consumption it follows: a chunk
wholly consumed is deleted, a chunk partly consumed has just the consumed bits
overwritten with zeros in place (incremental BLOB I/O, only the bytes that held
them). Reads fetch only the bytes that hold the requested bits, not whole chunks.

These are functions of an open :class:`sqlite3.Connection`, not methods: they hold no
state, and every one that writes runs inside a transaction its caller opened
(``KeyDB.tx``), so the caller decides what is all or none. Which blocks to draw and
when (leases, contiguous grants, validation of requests) is the pool layer's job
(``keystore``, ``keystore_lease``); the file, its transactions and checkpoints are
``keystore_db``'s.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from qkdnet.errors import KeyExhausted, KeyReuseError, LocalProtocolError
from qkdnet.keystore_types import (
    CHUNK_BITS,
    CHUNK_BYTES,
    U64,
    BlockMeta,
    KeySegment,
    extract_bits,
    tail_mask,
    to_sql_id,
    zero_bits,
)

__all__ = [
    "Span",
    "advance_cursor",
    "available_bits",
    "burn_block",
    "check_new_block",
    "insert_block",
    "live_blocks",
    "locate",
    "read_span",
    "retire",
    "take_segment",
    "zero_spans",
]


@dataclass(slots=True)
class Span:
    """Bytes ``[b0, b1)`` of chunk ``idx`` (row ``rowid``) as read (``data``)."""

    idx: int
    b0: int
    b1: int
    rowid: int
    data: bytes

    def __repr__(self) -> str:  # data is key material
        return f"Span(chunk {self.idx}, bytes {self.b0}..{self.b1})"


# -------------------------------------------------------------------- producers


def check_new_block(block_id: int, key: bytes, n_bits: int) -> None:
    """Raise :class:`LocalProtocolError` unless the arguments describe a valid block."""
    if not isinstance(block_id, int) or not (0 <= block_id < U64):
        raise LocalProtocolError(f"block id {block_id!r} is not an unsigned 64-bit int")
    if n_bits <= 0:
        raise LocalProtocolError(f"a key block needs at least one bit, got {n_bits}")
    n_bytes = (n_bits + 7) // 8
    if len(key) != n_bytes:
        raise LocalProtocolError(
            f"key block {block_id:#x}: {len(key)} bytes given for {n_bits} bits "
            f"(expected {n_bytes})")


def insert_block(db: sqlite3.Connection, pool_id: int, pool: str, block_id: int, key: bytes,
                 n_bits: int, meta: BlockMeta) -> None:
    """In a transaction: store a block checked by :func:`check_new_block` in pool
    ``pool_id`` (named ``pool`` in errors); refuse an id the pool holds or once held."""
    exists = db.execute("SELECT 1 FROM blocks WHERE pool_id=? AND block_id=?",
                        (pool_id, to_sql_id(block_id))).fetchone()
    if exists:
        raise LocalProtocolError(
            f"block {block_id:#x} already exists in pool {pool}; "
            "block ids are never reused")
    cur = db.execute(
        "INSERT INTO blocks (pool_id, block_id, n_bits, link_session, created, eps_sec, "
        "eps_cor, leaked_ec_bits, auth_bits_spent, qber) VALUES (?,?,?,?,?,?,?,?,?,?)",
        (pool_id, to_sql_id(block_id), n_bits, meta.link_session, meta.created,
         meta.eps_sec, meta.eps_cor, meta.leaked_ec_bits, meta.auth_bits_spent, meta.qber))
    seq = int(cur.lastrowid or 0)
    data = bytearray(key)
    data[-1] &= tail_mask(n_bits)
    n_bytes = (n_bits + 7) // 8
    db.executemany(
        "INSERT INTO chunks (seq, idx, data) VALUES (?, ?, ?)",
        ((seq, i, bytes(data[o:o + CHUNK_BYTES]))
         for i, o in enumerate(range(0, n_bytes, CHUNK_BYTES))))


# ---------------------------------------------------------- reading and erasing


def available_bits(db: sqlite3.Connection, pool_id: int) -> int:
    """Bits of pool ``pool_id`` not yet consumed in the file."""
    row = db.execute(
        "SELECT COALESCE(SUM(n_bits - used), 0) FROM blocks WHERE pool_id=? AND used < n_bits",
        (pool_id,)).fetchone()
    return int(row[0])


def retire(db: sqlite3.Connection, seq: int) -> None:
    """Forget the key bytes and taken ranges of the used-up block ``seq``."""
    db.execute("DELETE FROM chunks WHERE seq=?", (seq,))
    db.execute("DELETE FROM taken WHERE seq=?", (seq,))


def read_span(db: sqlite3.Connection, seq: int, start: int, stop: int
              ) -> tuple[bytes, list[Span]]:
    """Bits ``[start, stop)`` of block ``seq``, reading only the bytes that hold
    them (not whole chunks), and where each piece lives (for :func:`zero_spans`)."""
    first, last = start // CHUNK_BITS, (stop - 1) // CHUNK_BITS
    spans: list[Span] = []
    for idx in range(first, last + 1):
        c0 = idx * CHUNK_BITS
        b0 = (max(start, c0) - c0) // 8
        b1 = (min(stop, c0 + CHUNK_BITS) - c0 + 7) // 8
        spans.append(Span(idx, b0, b1, 0, b""))
    rows = db.execute(
        "SELECT idx, rowid, substr(data, ? + 1, ?) FROM chunks "
        "WHERE seq=? AND idx BETWEEN ? AND ? ORDER BY idx",
        # One substr for all rows: the first chunk from its start byte, the others
        # from byte 0; ask each for at most the bytes of one chunk.
        (0, CHUNK_BYTES, seq, first, last)).fetchall() if first != last else \
        db.execute(
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


def zero_spans(db: sqlite3.Connection, spans: list[Span], start: int, stop: int,
               gone: set[int], seq: int) -> None:
    """Delete the chunks in ``gone``; in the others zero bits ``[start, stop)`` in
    place, writing only the bytes that held them (incremental BLOB I/O)."""
    if gone:  # contiguous chunk indices: one statement
        assert max(gone) - min(gone) + 1 == len(gone)
        db.execute("DELETE FROM chunks WHERE seq=? AND idx BETWEEN ? AND ?",
                   (seq, min(gone), max(gone)))
    for span in spans:
        if span.idx in gone:
            continue
        base = span.idx * CHUNK_BITS + span.b0 * 8
        buf = bytearray(span.data)
        zero_bits(buf, max(start, base) - base, min(stop, base + 8 * len(buf)) - base)
        with db.blobopen("chunks", "data", span.rowid) as blob:
            blob.seek(span.b0)
            blob.write(bytes(buf))


# ------------------------------------------------------------- -tx: the cursor


def live_blocks(db: sqlite3.Connection, pool_id: int) -> sqlite3.Cursor:
    """``(seq, block_id, n_bits, cursor)`` of the pool's live blocks, oldest first.

    Close the cursor (or exhaust it) before committing: an open statement would block
    the WAL checkpoint. ``block_id`` is as stored (see :func:`from_sql_id`).
    """
    return db.execute(
        "SELECT seq, block_id, n_bits, cursor FROM blocks "
        "WHERE pool_id=? AND used < n_bits ORDER BY seq", (pool_id,))


def advance_cursor(db: sqlite3.Connection, seq: int, n: int, cur: int, k: int) -> bytes:
    """In a transaction: move block ``seq``'s cursor (``n`` bits, at ``cur``) by ``k``,
    scrub the bits passed, and return them."""
    new = cur + k
    data, spans = read_span(db, seq, cur, new)
    db.execute("UPDATE blocks SET cursor=?, used=? WHERE seq=?", (new, new, seq))
    if new == n:
        retire(db, seq)
    else:
        # Bits before ``cur`` are consumed already, so a chunk ending at or before
        # ``new`` is wholly consumed: delete it; zero the consumed bits of the rest.
        gone = {sp.idx for sp in spans if (sp.idx + 1) * CHUNK_BITS <= new}
        zero_spans(db, spans, cur, new, gone, seq)
    return data


def burn_block(db: sqlite3.Connection, seq: int) -> None:
    """In a transaction: consume the rest of block ``seq`` unread and retire it."""
    db.execute("UPDATE blocks SET cursor=n_bits, used=n_bits WHERE seq=?", (seq,))
    retire(db, seq)


# ------------------------------------------------------- -rx: the taken ranges


def locate(db: sqlite3.Connection, pool: str, pool_id: int, s: KeySegment
           ) -> tuple[bytes, int, int, int, list[Span]]:
    """Check segment ``s`` is takeable; return its bits, the block's seq, size, used
    count and the byte spans of the chunks it covers. Reads only."""
    row = db.execute(
        "SELECT b.seq, b.n_bits, b.used, EXISTS (SELECT 1 FROM taken t "
        " WHERE t.seq = b.seq AND t.start < ? AND t.stop > ?) "
        "FROM blocks b WHERE b.pool_id=? AND b.block_id=?",
        (s.stop, s.offset, pool_id, to_sql_id(s.block_id))).fetchone()
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
    data, spans = read_span(db, seq, s.offset, s.stop)
    return data, seq, n, used, spans


def take_segment(db: sqlite3.Connection, pool: str, pool_id: int, s: KeySegment) -> bytes:
    """In a transaction: take segment ``s`` (checked by :func:`locate`), record its
    range, scrub its bits and return them."""
    data, seq, n, used, spans = locate(db, pool, pool_id, s)
    used += s.n_bits
    db.execute("UPDATE blocks SET used=? WHERE seq=?", (used, seq))
    if used == n:
        retire(db, seq)
        return data
    # Merge with the taken ranges that touch this one (at most one on each side:
    # stored ranges are merged, and none overlaps [offset, stop)).
    start, stop = s.offset, s.stop
    left = right = None
    for r_start, r_stop in db.execute(
            "SELECT start, stop FROM taken WHERE seq=? AND (stop=? OR start=?)",
            (seq, start, stop)).fetchall():
        if r_stop == start:
            left = int(r_start)
        else:
            right = int(r_stop)
    if right is not None:
        db.execute("DELETE FROM taken WHERE seq=? AND start=?", (seq, stop))
        stop = right
    if left is not None:
        start = left
        db.execute("UPDATE taken SET stop=? WHERE seq=? AND start=?", (stop, seq, start))
    else:
        db.execute("INSERT INTO taken (seq, start, stop) VALUES (?, ?, ?)", (seq, start, stop))
    # A chunk is gone once the merged range around this segment covers it.
    gone = {sp.idx for sp in spans
            if start <= sp.idx * CHUNK_BITS and min((sp.idx + 1) * CHUNK_BITS, n) <= stop}
    zero_spans(db, spans, s.offset, s.stop, gone, seq)
    return data
