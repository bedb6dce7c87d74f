"""Key store additions on real SQLite: peek (no consumption), atomic add_blocks, counters."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from qkdnet.errors import KeyExhausted, KeyReuseError, LocalProtocolError
from qkdnet.keystore import BlockMeta, KeySegment, KeyStore

META = BlockMeta(link_session="s1", created=1.0, eps_sec=1e-10, eps_cor=1e-15,
                 leaked_ec_bits=0, auth_bits_spent=0)


@pytest.fixture
def store(tmp_path: Path):
    ks = KeyStore(tmp_path / "ks.sqlite")
    yield ks
    ks.close()


def db_snapshot(path: Path) -> list[tuple[object, ...]]:
    """Every row of the tables that change when key is consumed (read via a new connection)."""
    con = sqlite3.connect(path)
    try:
        rows: list[tuple[object, ...]] = []
        for table in ("blocks", "chunks", "taken", "counters"):
            rows += [(table, *r) for r in con.execute(f"SELECT * FROM {table} ORDER BY 1, 2")]
        return rows
    finally:
        con.close()


# --------------------------------------------------------------------------- peek

def test_peek_returns_take_bits_and_consumes_nothing(store: KeyStore, tmp_path: Path) -> None:
    key = os.urandom(64)
    store.add_block("A", "auth-rx", 7, key, 512, META)
    seg = (KeySegment(7, 128, 128),)
    before = db_snapshot(tmp_path / "ks.sqlite")
    avail = store.available("A", "auth-rx")
    first = store.peek("A", "auth-rx", seg)
    again = store.peek("A", "auth-rx", seg)
    assert first == again == key[16:32]
    assert store.available("A", "auth-rx") == avail
    assert db_snapshot(tmp_path / "ks.sqlite") == before
    # The bits are still takeable afterwards, and take returns the same bits.
    assert store.take("A", "auth-rx", seg) == first
    assert store.available("A", "auth-rx") == avail - 128


def test_peek_unaligned_multi_segment_matches_take(store: KeyStore) -> None:
    store.add_block("A", "data-rx", 1, os.urandom(100), 800, META)
    store.add_block("A", "data-rx", 2, os.urandom(100), 800, META)
    segs = (KeySegment(1, 3, 77), KeySegment(2, 500, 300))
    peeked = store.peek("A", "data-rx", segs)
    assert store.take("A", "data-rx", segs) == peeked


def test_peek_raises_what_take_raises(store: KeyStore) -> None:
    store.add_block("A", "auth-rx", 7, os.urandom(32), 256, META)
    store.take("A", "auth-rx", (KeySegment(7, 0, 128),))
    with pytest.raises(KeyReuseError):
        store.peek("A", "auth-rx", (KeySegment(7, 64, 128),))     # overlaps a taken range
    with pytest.raises(KeyExhausted):
        store.peek("A", "auth-rx", (KeySegment(8, 0, 128),))      # unknown block
    with pytest.raises(KeyExhausted):
        store.peek("A", "auth-rx", (KeySegment(7, 200, 128),))    # runs past the end
    with pytest.raises(KeyExhausted):
        store.peek("B", "auth-rx", (KeySegment(7, 0, 128),))      # unknown pool
    with pytest.raises(KeyReuseError):
        store.peek("A", "auth-rx", (KeySegment(7, 128, 64), KeySegment(7, 160, 8)))
    with pytest.raises(LocalProtocolError):
        store.peek("A", "auth-tx", (KeySegment(7, 0, 128),))      # tx pools are reserved
    # None of the failures consumed anything: the untaken half is still takeable.
    assert store.take("A", "auth-rx", (KeySegment(7, 128, 128),))
    with pytest.raises(KeyReuseError):                            # block now used up
        store.peek("A", "auth-rx", (KeySegment(7, 128, 128),))


# ---------------------------------------------------------------------- add_blocks

def test_add_blocks_stores_all_parts(store: KeyStore) -> None:
    data, auth = os.urandom(128), os.urandom(32)
    store.add_blocks("A", [("data-rx", 5, data, 1024), ("auth-rx", 5, auth, 256)], META)
    assert store.available("A", "data-rx") == 1024
    assert store.available("A", "auth-rx") == 256
    assert store.take("A", "auth-rx", (KeySegment(5, 0, 256),)) == auth
    assert store.block_meta("A", "data-rx", 5) == META


def test_add_blocks_is_all_or_nothing(store: KeyStore, tmp_path: Path) -> None:
    store.add_block("A", "auth-tx", 9, os.urandom(32), 256, META)
    before = db_snapshot(tmp_path / "ks.sqlite")
    with pytest.raises(LocalProtocolError):
        # The first part is new; the second duplicates an existing id: neither is stored.
        store.add_blocks("A", [("data-tx", 9, os.urandom(64), 512),
                               ("auth-tx", 9, os.urandom(32), 256)], META)
    assert db_snapshot(tmp_path / "ks.sqlite") == before
    assert store.available("A", "data-tx") == 0
    assert store.available("A", "auth-tx") == 256
    with pytest.raises(LocalProtocolError):
        # An id repeated inside one call is a duplicate too.
        store.add_blocks("A", [("data-tx", 10, os.urandom(8), 64),
                               ("data-tx", 10, os.urandom(8), 64)], META)
    assert store.available("A", "data-tx") == 0
    with pytest.raises(LocalProtocolError):
        store.add_blocks("A", [("data-tx", 11, os.urandom(8), 64),
                               ("bogus", 11, os.urandom(8), 64)], META)
    assert store.available("A", "data-tx") == 0
    # The store still works, and the rolled-back ids are free to use.
    store.add_blocks("A", [("data-tx", 9, os.urandom(64), 512)], META)
    assert store.available("A", "data-tx") == 512


def test_add_blocks_survives_reopen(tmp_path: Path) -> None:
    with KeyStore(tmp_path / "ks.sqlite") as ks:
        ks.add_blocks("A", [("data-rx", 1, os.urandom(16), 128),
                            ("auth-rx", 1, os.urandom(16), 128)], META)
    with KeyStore(tmp_path / "ks.sqlite") as ks:
        assert ks.available("A", "data-rx") == 128
        assert ks.available("A", "auth-rx") == 128


# -------------------------------------------------------------------------- counters

def test_counter_starts_at_zero_and_never_goes_down(store: KeyStore) -> None:
    assert store.counter("slot:A") == 0
    assert store.advance_counter("slot:A", 10) == 10
    assert store.advance_counter("slot:A", 3) == 10
    assert store.counter("slot:A") == 10
    assert store.advance_counter("slot:A", 11) == 11
    assert store.counter("slot:B") == 0
    with pytest.raises(LocalProtocolError):
        store.advance_counter("slot:A", -1)
    with pytest.raises(LocalProtocolError):
        store.advance_counter("slot:A", 1 << 63)
    with pytest.raises(LocalProtocolError):
        store.counter("")
    assert store.counter("slot:A") == 11


def test_counter_is_durable_across_processes_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "ks.sqlite"
    with KeyStore(path) as ks:
        ks.advance_counter("slot:A", (1 << 63) - 1)
        ks.advance_counter("slot:B", 42)
        # A second connection (as another process would) sees the committed value.
        con = sqlite3.connect(path)
        try:
            assert con.execute("SELECT value FROM counters WHERE name='slot:B'").fetchone() == (42,)
        finally:
            con.close()
    with KeyStore(path) as ks:
        assert ks.counter("slot:A") == (1 << 63) - 1
        assert ks.counter("slot:B") == 42
        assert ks.advance_counter("slot:B", 41) == 42
