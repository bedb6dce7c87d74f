"""KeyStore.take_many: several takes in one transaction (all or none), and the
receiver path's partial-chunk reads and in-place scrubbing agreeing with a reference."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from qkdnet.errors import KeyExhausted, KeyReuseError, LocalProtocolError
from qkdnet.keystore import CHUNK_BITS, BlockMeta, KeySegment, KeyStore

META = BlockMeta(link_session="s1", created=1.0, eps_sec=1e-10, eps_cor=1e-15,
                 leaked_ec_bits=0, auth_bits_spent=0)


def bits_of(key: bytes, start: int, n: int) -> bytes:
    """Reference: bits [start, start+n) of packed key, repacked (numpy packbits order)."""
    arr = np.unpackbits(np.frombuffer(key, dtype=np.uint8))
    return np.packbits(arr[start:start + n]).tobytes()


KEYS = {"data-rx": os.urandom(5 * CHUNK_BITS // 8 + 100), "auth-rx": os.urandom(4096)}


@pytest.fixture
def rx(tmp_path: Path) -> Iterator[KeyStore]:
    """A receiver store holding block 1 in (hub, data-rx) and block 2 in (hub, auth-rx)."""
    store = KeyStore(tmp_path / "rx.keys")
    store.add_block("hub", "data-rx", 1, KEYS["data-rx"], 5 * CHUNK_BITS + 800, META)
    store.add_block("hub", "auth-rx", 2, KEYS["auth-rx"], 8 * 4096, META)
    yield store
    store.close()


PAD = [KeySegment(1, 5, 8 * 16384)]  # unaligned, crosses chunk boundaries
TAG = [KeySegment(2, 256, 128)]


def test_take_many_returns_what_take_would(rx: KeyStore) -> None:
    pad_ref, tag_ref = rx.peek("hub", "data-rx", PAD), rx.peek("hub", "auth-rx", TAG)
    assert pad_ref == bits_of(KEYS["data-rx"], 5, 8 * 16384)
    assert tag_ref == bits_of(KEYS["auth-rx"], 256, 128)
    pad, tag = rx.take_many([("hub", "data-rx", PAD), ("hub", "auth-rx", TAG)])
    assert (pad, tag) == (pad_ref, tag_ref)
    for purpose, segs in (("data-rx", PAD), ("auth-rx", TAG)):
        with pytest.raises(KeyReuseError):
            rx.take("hub", purpose, segs)


@pytest.mark.parametrize("second", [
    ("hub", "auth-rx", [KeySegment(2, 300, 128)]),      # overlaps bits taken before
    ("hub", "auth-rx", [KeySegment(9, 0, 128)]),        # unknown block
    ("hub", "auth-rx", [KeySegment(2, 8 * 4096 - 8, 128)]),  # runs past the block
    ("hub", "data-rx", [KeySegment(1, 8 * 16384, 64)]),  # overlaps the first request
    ("hub", "data-tx", [KeySegment(1, 0, 8)]),          # not a receiving pool
])
def test_take_many_is_all_or_nothing(
        rx: KeyStore, second: tuple[str, str, list[KeySegment]]) -> None:
    rx.take("hub", "auth-rx", [KeySegment(2, 256, 128)])  # so bits 256..383 are used
    before = {p: rx.available("hub", p) for p in ("data-rx", "auth-rx")}
    with pytest.raises((KeyReuseError, KeyExhausted, LocalProtocolError)):
        rx.take_many([("hub", "data-rx", PAD), second])
    # Nothing was taken: the first request's bits are still there, whole.
    assert {p: rx.available("hub", p) for p in ("data-rx", "auth-rx")} == before
    assert rx.take("hub", "data-rx", PAD) == bits_of(
        KEYS["data-rx"], 5, 8 * 16384)


def test_take_many_is_durable_across_reopen(tmp_path: Path, rx: KeyStore) -> None:
    rx.take_many([("hub", "data-rx", PAD), ("hub", "auth-rx", TAG)])
    again = KeyStore(tmp_path / "rx.keys")
    try:
        for purpose, segs in (("data-rx", PAD), ("auth-rx", TAG)):
            with pytest.raises(KeyReuseError):
                again.take("hub", purpose, segs)
    finally:
        again.close()


def test_take_many_needs_a_request(rx: KeyStore) -> None:
    with pytest.raises(LocalProtocolError):
        rx.take_many([])


def test_errors_do_not_echo_key(rx: KeyStore) -> None:
    key = KEYS["auth-rx"]
    rx.take("hub", "auth-rx", TAG)
    with pytest.raises(KeyReuseError) as info:
        rx.take_many([("hub", "auth-rx", TAG)])
    assert key[32:48].hex() not in str(info.value)
    assert key[32:48] not in str(info.value).encode()


def chunk_rows(path: Path, block_seq: int = 1) -> dict[int, bytes]:
    db = sqlite3.connect(path)
    try:
        return {int(i): bytes(d) for i, d in db.execute(
            "SELECT idx, data FROM chunks WHERE seq=?", (block_seq,))}
    finally:
        db.close()


def test_takes_zero_exactly_their_bits_in_place(tmp_path: Path) -> None:
    """Out-of-order takes at odd offsets: each returns the reference bits, the stored
    chunks keep every other bit and zero the taken ones, wholly taken chunks go."""
    path = tmp_path / "rx.keys"
    store = KeyStore(path)
    n_bits = 2 * CHUNK_BITS + 77
    key = bytearray(os.urandom((n_bits + 7) // 8))
    key[-1] &= (0xFF << (8 - n_bits % 8)) & 0xFF
    store.add_block("hub", "data-rx", 7, bytes(key), n_bits, META)
    ref = np.unpackbits(np.frombuffer(bytes(key), dtype=np.uint8))
    taken = np.zeros(len(ref), dtype=bool)
    cuts = [(CHUNK_BITS - 3, 10), (13, 200), (CHUNK_BITS + 500, CHUNK_BITS - 450),
            (0, 13), (213, CHUNK_BITS - 216), (CHUNK_BITS + 7, 493)]
    for offset, n in cuts:
        got = store.take("hub", "data-rx", [KeySegment(7, offset, n)])
        assert got == bits_of(bytes(key), offset, n)
        taken[offset:offset + n] = True
    store.checkpoint()
    rows = chunk_rows(path)
    # Chunks 0 and 1 were taken whole, in pieces (merging left, right and both ways):
    # deleted. Chunk 2 is partly taken: its taken bits are zero, the others intact.
    assert sorted(rows) == [2]
    for idx, data in rows.items():
        bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
        lo = idx * CHUNK_BITS
        want = ref[lo:lo + len(bits)].copy()
        want[taken[lo:lo + len(bits)]] = 0
        assert np.array_equal(bits, want), idx
    # The bits never taken can still be taken, once.
    free = np.flatnonzero(~taken[:n_bits])
    start = int(free[0])
    assert store.take("hub", "data-rx", [KeySegment(7, start, 3)]) == bits_of(
        bytes(key), start, 3)
    with pytest.raises(KeyReuseError):
        store.take("hub", "data-rx", [KeySegment(7, start, 1)])
    store.close()
