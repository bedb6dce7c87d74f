"""Key store behaviour on real SQLite files: grants, takes, exhaustion, bootstrap, erasure."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from qkdnet.errors import ConfigError, KeyExhausted, KeyReuseError, LocalProtocolError
from qkdnet.keystore import (
    BOOTSTRAP_BLOCK_BASE,
    BlockMeta,
    KeyGrant,
    KeySegment,
    KeyStore,
    concat_bits,
    extract_bits,
)

META = BlockMeta(link_session="s1", created=1.0, eps_sec=1e-10, eps_cor=1e-15,
                 leaked_ec_bits=123, auth_bits_spent=64, qber=0.02)


def bits_of(key: bytes, start: int, n: int) -> bytes:
    """Reference: bits [start, start+n) of packed key, repacked (numpy packbits order)."""
    arr = np.unpackbits(np.frombuffer(key, dtype=np.uint8))
    return np.packbits(arr[start:start + n]).tobytes()


def segments_data(keys: dict[int, bytes], grant: KeyGrant) -> bytes:
    arr = np.concatenate([
        np.unpackbits(np.frombuffer(keys[s.block_id], dtype=np.uint8))[s.offset:s.stop]
        for s in grant.segments])
    return np.packbits(arr).tobytes()


@pytest.fixture
def pair(tmp_path: Path):
    """A sender store (pool B/data-tx) and a receiver store (pool A/data-rx)."""
    tx = KeyStore(tmp_path / "a.sqlite", lease_bits=4096)
    rx = KeyStore(tmp_path / "b.sqlite")
    yield tx, rx
    tx.close()
    rx.close()


def add_both(tx: KeyStore, rx: KeyStore, block_id: int, n_bits: int) -> bytes:
    key = bytearray(os.urandom((n_bits + 7) // 8))
    if n_bits % 8:
        key[-1] &= (0xFF << (8 - n_bits % 8)) & 0xFF
    tx.add_block("B", "data-tx", block_id, bytes(key), n_bits, META)
    rx.add_block("A", "data-rx", block_id, bytes(key), n_bits, META)
    return bytes(key)


# ------------------------------------------------------------------- bit helpers

@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=64), st.data())
def test_extract_bits_matches_numpy_reference(buf: bytes, data: st.DataObject) -> None:
    total = len(buf) * 8
    start = data.draw(st.integers(0, total - 1))
    n = data.draw(st.integers(1, total - start))
    assert extract_bits(buf, start, n) == bits_of(buf, start, n)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.binary(min_size=1, max_size=16), st.integers(0, 7)),
                min_size=1, max_size=5))
def test_concat_bits_matches_numpy_reference(parts: list[tuple[bytes, int]]) -> None:
    pieces = []
    ref = []
    for buf, cut in parts:
        n = max(1, len(buf) * 8 - cut)
        pieces.append((bits_of(buf, 0, n), n))
        ref.append(np.unpackbits(np.frombuffer(buf, dtype=np.uint8))[:n])
    assert concat_bits(pieces) == np.packbits(np.concatenate(ref)).tobytes()


# ------------------------------------------------------------- grants and takes

def test_reserve_and_take_agree_and_follow_packbits_order(pair) -> None:
    tx, rx = pair
    keys = {7: add_both(tx, rx, 7, 10_000), 9: add_both(tx, rx, 9, 5_003)}
    sizes = [256, 13, 1, 4000, 8, 700, 6000, 3000, 31]
    grants = [tx.reserve("B", "data-tx", n) for n in sizes]
    for n, g in zip(sizes, grants, strict=True):
        assert g.n_bits == n
        assert len(g.data) == (n + 7) // 8
        assert g.data == segments_data(keys, g)
    # The receiver takes them in another order and gets the same bits.
    for g in reversed(grants):
        assert rx.take("A", "data-rx", g.segments) == g.data
    # A grant crossing blocks names both.
    crossing = [g for g in grants if len({s.block_id for s in g.segments}) == 2]
    assert crossing, "no grant spanned two blocks"
    used = sum(sizes)
    assert tx.available("B", "data-tx") == 15_003 - used
    assert rx.available("A", "data-rx") == 15_003 - used


def test_segments_never_overlap_across_reservations(pair) -> None:
    tx, rx = pair
    add_both(tx, rx, 1, 50_000)
    add_both(tx, rx, 2, 50_000)
    seen = np.zeros((3, 50_000), dtype=np.uint8)
    rng = np.random.default_rng(1)
    for n in rng.integers(1, 2_000, size=80):
        g = tx.reserve("B", "data-tx", int(n), contiguous=bool(n % 3 == 0))
        for s in g.segments:
            seen[s.block_id, s.offset:s.stop] += 1
    assert seen.max() == 1


def test_take_twice_is_refused_and_nothing_is_taken_on_failure(pair) -> None:
    tx, rx = pair
    key = add_both(tx, rx, 5, 2_000)
    g = tx.reserve("B", "data-tx", 300)
    assert rx.take("A", "data-rx", g.segments) == g.data
    with pytest.raises(KeyReuseError, match="already taken"):
        rx.take("A", "data-rx", g.segments)
    # Partial overlap is also reuse.
    with pytest.raises(KeyReuseError):
        rx.take("A", "data-rx", [KeySegment(5, 299, 10)])
    # A failing multi-segment take takes nothing: the fresh segment is still there.
    fresh = KeySegment(5, 1000, 64)
    with pytest.raises(KeyReuseError):
        rx.take("A", "data-rx", [fresh, KeySegment(5, 0, 8)])
    assert rx.take("A", "data-rx", [fresh]) == bits_of(key, 1000, 64)
    with pytest.raises(KeyReuseError):
        rx.take("A", "data-rx", [fresh])
    # Overlapping segments inside one call.
    with pytest.raises(KeyReuseError):
        rx.take("A", "data-rx", [KeySegment(5, 400, 10), KeySegment(5, 405, 10)])


def test_take_survives_reopen_and_refuses_after_block_is_used_up(tmp_path: Path) -> None:
    key = os.urandom(128)
    with KeyStore(tmp_path / "rx.sqlite") as rx:
        rx.add_block("A", "data-rx", 3, key, 1024, META)
        assert rx.take("A", "data-rx", [KeySegment(3, 0, 512)]) == key[:64]
    with KeyStore(tmp_path / "rx.sqlite") as rx:
        with pytest.raises(KeyReuseError):
            rx.take("A", "data-rx", [KeySegment(3, 500, 20)])
        assert rx.take("A", "data-rx", [KeySegment(3, 512, 512)]) == key[64:]
        assert rx.available("A", "data-rx") == 0
        with pytest.raises(KeyReuseError):
            rx.take("A", "data-rx", [KeySegment(3, 0, 1)])


def test_take_unknown_or_short_block_is_exhausted(pair) -> None:
    _tx, rx = pair
    rx.add_block("A", "data-rx", 1, os.urandom(16), 128, META)
    with pytest.raises(KeyExhausted, match="asked for 8 bits, 0 available") as info:
        rx.take("A", "data-rx", [KeySegment(99, 0, 8)])
    assert info.value.requested_bits == 8
    with pytest.raises(KeyExhausted, match="asked for 64 bits, 28 available"):
        rx.take("A", "data-rx", [KeySegment(1, 100, 64)])
    with pytest.raises(KeyExhausted):
        rx.take("Z", "data-rx", [KeySegment(1, 0, 8)])


def test_exhaustion_reports_counts_and_consumes_nothing(pair) -> None:
    tx, rx = pair
    add_both(tx, rx, 1, 1000)
    tx.reserve("B", "data-tx", 100)
    with pytest.raises(KeyExhausted) as info:
        tx.reserve("B", "data-tx", 5000)
    err = info.value
    assert (err.requested_bits, err.available_bits) == (5000, 900)
    assert "asked for 5000 bits, 900 available" in str(err)
    assert "B/data-tx" in str(err)
    assert tx.available("B", "data-tx") == 900
    assert tx.reserve("B", "data-tx", 900).n_bits == 900
    with pytest.raises(KeyExhausted, match="asked for 1 bits, 0 available"):
        tx.reserve("Q", "data-tx", 1)


def test_contiguous_grants_stay_in_one_block_and_burn_short_tails(pair) -> None:
    tx, rx = pair
    keys = {1: add_both(tx, rx, 1, 300), 2: add_both(tx, rx, 2, 300)}
    g1 = tx.reserve("B", "data-tx", 128, contiguous=True)
    g2 = tx.reserve("B", "data-tx", 128, contiguous=True)
    assert [s.block_id for s in g1.segments + g2.segments] == [1, 1]
    g3 = tx.reserve("B", "data-tx", 128, contiguous=True)
    assert g3.segments == (KeySegment(2, 0, 128),)
    assert g3.data == segments_data(keys, g3)
    # Block 1's 44-bit tail is burned: 600 - 3*128 - 44 bits remain.
    assert tx.available("B", "data-tx") == 600 - 3 * 128 - 44
    with pytest.raises(KeyExhausted, match="contiguous"):
        tx.reserve("B", "data-tx", 200, contiguous=True)


def test_purposes_and_sides_are_checked(pair) -> None:
    tx, rx = pair
    add_both(tx, rx, 1, 64)
    with pytest.raises(LocalProtocolError, match="reserve"):
        rx.reserve("A", "data-rx", 8)
    with pytest.raises(LocalProtocolError, match="take"):
        tx.take("B", "data-tx", [KeySegment(1, 0, 8)])
    with pytest.raises(LocalProtocolError, match="purpose"):
        tx.add_block("B", "data", 2, b"\0", 8, META)
    with pytest.raises(LocalProtocolError, match="bytes given"):
        tx.add_block("B", "data-tx", 2, b"\0\0", 8, META)
    with pytest.raises(LocalProtocolError):
        KeySegment(-1, 0, 8)


def test_block_ids_are_never_reused_even_after_retirement(pair) -> None:
    tx, rx = pair
    add_both(tx, rx, 2**64 - 1, 64)  # the largest u64 id round-trips
    g = tx.reserve("B", "data-tx", 64)
    assert g.segments == (KeySegment(2**64 - 1, 0, 64),)
    assert tx.block_meta("B", "data-tx", 2**64 - 1) == META
    with pytest.raises(LocalProtocolError, match="never reused"):
        tx.add_block("B", "data-tx", 2**64 - 1, os.urandom(8), 64, META)


def test_grant_repr_hides_key(pair) -> None:
    tx, rx = pair
    add_both(tx, rx, 1, 4096)
    g = tx.reserve("B", "data-tx", 256)
    for text in (repr(g), str(g), f"{g}", repr(tx)):
        assert g.data.hex() not in text
        assert str(g.data) not in text
    assert "256 bits" in repr(g)


def test_reopen_never_reissues_and_burns_the_lease(tmp_path: Path) -> None:
    path = tmp_path / "ks.sqlite"
    with KeyStore(path, lease_bits=10_000) as ks:
        ks.add_block("B", "data-tx", 1, os.urandom(12_500), 100_000, META)
        first = ks.reserve("B", "data-tx", 256)
        assert ks.available("B", "data-tx") == 100_000 - 256
    with KeyStore(path, lease_bits=10_000) as ks:
        # The unused rest of the lease was burned, not returned.
        assert ks.available("B", "data-tx") == 90_000
        second = ks.reserve("B", "data-tx", 256)
    assert second.segments[0].offset >= first.segments[0].stop
    assert second.segments[0].offset == 10_000


# ------------------------------------------------------------------------ trio

async def test_concurrent_tasks_get_disjoint_ranges(tmp_path: Path) -> None:
    ks = KeyStore(tmp_path / "ks.sqlite", lease_bits=2048)
    keys = {}
    for bid in range(4):
        keys[bid] = os.urandom(5000)
        ks.add_block("B", "data-tx", bid, keys[bid], 40_000, META)
    grants: list[KeyGrant] = []

    async def worker(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(40):
            n = int(rng.integers(1, 600))
            grants.append(await ks.wait_reserve("B", "data-tx", n,
                                                deadline=trio.current_time() + 5,
                                                contiguous=bool(rng.integers(0, 2))))
            await trio.sleep(0)

    async with trio.open_nursery() as nursery:
        for seed in range(8):
            nursery.start_soon(worker, seed)
    seen = np.zeros((4, 40_000), dtype=np.uint8)
    for g in grants:
        assert g.data == segments_data(keys, g)
        for s in g.segments:
            seen[s.block_id, s.offset:s.stop] += 1
    assert len(grants) == 320
    assert seen.max() == 1
    ks.close()


async def test_wait_reserve_wakes_when_key_arrives(tmp_path: Path, autojump_clock) -> None:
    ks = KeyStore(tmp_path / "ks.sqlite", poll_interval=1000.0)
    got: list[tuple[float, KeyGrant]] = []

    async def waiter() -> None:
        g = await ks.wait_reserve("B", "auth-tx", 128, deadline=trio.current_time() + 500,
                                  contiguous=True)
        got.append((trio.current_time(), g))

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.sleep(3)
        assert not got
        ks.add_block("B", "auth-tx", 1, os.urandom(32), 256, META)
    # Woken by add_block at t+3, long before the 1000 s poll would have fired.
    assert got and got[0][0] - start == pytest.approx(3)
    ks.close()


async def test_wait_reserve_times_out_at_deadline(tmp_path: Path, autojump_clock) -> None:
    ks = KeyStore(tmp_path / "ks.sqlite", poll_interval=0.5)
    ks.add_block("B", "data-tx", 1, os.urandom(8), 64, META)
    start = trio.current_time()
    with pytest.raises(KeyExhausted, match="asked for 128 bits, 64 available"):
        await ks.wait_reserve("B", "data-tx", 128, deadline=start + 7)
    assert trio.current_time() - start == pytest.approx(7)
    assert ks.available("B", "data-tx") == 64
    ks.close()


async def test_wait_reserve_sees_key_added_by_another_process(tmp_path: Path,
                                                               autojump_clock) -> None:
    # A second KeyStore object on the same file stands in for another process: no wake-up,
    # so only polling can find the key.
    path = tmp_path / "ks.sqlite"
    ks = KeyStore(path, poll_interval=2.0)
    other = KeyStore(path)
    result: list[KeyGrant] = []

    async def waiter() -> None:
        result.append(await ks.wait_reserve("B", "data-tx", 64,
                                            deadline=trio.current_time() + 60))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.sleep(5)
        other.add_block("B", "data-tx", 1, os.urandom(8), 64, META)
    assert result and result[0].n_bits == 64
    other.close()
    ks.close()


# -------------------------------------------------------------------- bootstrap

def test_bootstrap_mirrors_hash_keys_and_auth_pools(tmp_path: Path) -> None:
    secret = os.urandom(4096)
    spoke = KeyStore(tmp_path / "spoke.sqlite")
    hub = KeyStore(tmp_path / "hub.sqlite")
    assert spoke.import_bootstrap("hub", secret, initiator=True)
    assert hub.import_bootstrap("spoke", secret, initiator=False)
    assert spoke.hash_key("hub", "tx") == hub.hash_key("spoke", "rx")
    assert spoke.hash_key("hub", "rx") == hub.hash_key("spoke", "tx")
    assert spoke.hash_key("hub", "tx") != spoke.hash_key("hub", "rx")
    assert len(spoke.hash_key("hub", "tx")) == 16
    half_bits = (4096 - 32) // 2 * 8
    for store, peer in ((spoke, "hub"), (hub, "spoke")):
        assert store.available(peer, "auth-tx") == half_bits
        assert store.available(peer, "auth-rx") == half_bits
    # Spoke -> hub and hub -> spoke tag keys match and differ from each other.
    g = spoke.reserve("hub", "auth-tx", 128, contiguous=True)
    assert g.segments[0].block_id & ~3 == BOOTSTRAP_BLOCK_BASE
    assert hub.take("spoke", "auth-rx", g.segments) == g.data
    h = hub.reserve("spoke", "auth-tx", 128, contiguous=True)
    assert spoke.take("hub", "auth-rx", h.segments) == h.data
    assert g.data != h.data
    # The halves and hash keys are disjoint slices of the secret.
    assert g.data == secret[32:48]
    assert h.data == secret[32 + (4096 - 32) // 2:][:16]
    spoke.close()
    hub.close()


def test_bootstrap_secret_is_imported_once(tmp_path: Path) -> None:
    secret = os.urandom(5000)
    path = tmp_path / "spoke.sqlite"
    with KeyStore(path) as ks:
        assert ks.import_bootstrap("hub", secret, initiator=True)
        before = ks.available("hub", "auth-tx"), ks.available("hub", "auth-rx")
    with KeyStore(path) as ks:
        assert ks.import_bootstrap("hub", secret, initiator=True) is False
        assert (ks.available("hub", "auth-tx"), ks.available("hub", "auth-rx")) == before
        with pytest.raises(KeyReuseError, match="already imported for peer hub"):
            ks.import_bootstrap("other", secret, initiator=True)
        assert ks.available("other", "auth-tx") == 0
        # A new secret for the same peer is a second bootstrap with fresh block ids.
        assert ks.import_bootstrap("hub", os.urandom(4096), initiator=True)
        assert ks.available("hub", "auth-tx") == before[0] + (4096 - 32) // 2 * 8


def test_bootstrap_rejects_short_or_constant_secrets_without_echoing_them(tmp_path: Path
                                                                          ) -> None:
    with KeyStore(tmp_path / "ks.sqlite") as ks:
        short = os.urandom(100)
        with pytest.raises(ConfigError, match="at least 4096") as info:
            ks.import_bootstrap("hub", short, initiator=True)
        assert short.hex() not in str(info.value)
        with pytest.raises(ConfigError, match="random"):
            ks.import_bootstrap("hub", b"\x07" * 4096, initiator=True)
        with pytest.raises(LocalProtocolError, match="no bootstrap secret"):
            ks.hash_key("hub", "tx")
        assert not ks.has_bootstrap("hub")


# ---------------------------------------------------------------------- erasure

def file_bytes(path: Path) -> bytes:
    out = b""
    for suffix in ("", "-wal", "-shm", "-journal"):
        p = Path(str(path) + suffix)
        if p.exists():
            out += p.read_bytes()
    return out


def test_consumed_key_is_erased_from_the_files(tmp_path: Path) -> None:
    path_tx, path_rx = tmp_path / "tx.sqlite", tmp_path / "rx.sqlite"
    tx, rx = KeyStore(path_tx, lease_bits=8192), KeyStore(path_rx)
    keys = {b: add_both(tx, rx, b, 8 * 20_000) for b in range(3)}
    # Consume all of block 0, and part of block 1 at an unaligned bit position.
    grants = [tx.reserve("B", "data-tx", n) for n in [8 * 20_000, 8 * 6_000 + 5]]
    for g in grants:
        rx.take("A", "data-rx", g.segments)
    # The receiver also takes a range out of order in block 2, so only part of it is gone.
    rx.take("A", "data-rx", [KeySegment(2, 8 * 10_000, 8 * 4_000)])
    # Burn the rest of the sender's lease so the sender's view matches.
    tx.checkpoint()
    rx.checkpoint()
    leased_to = grants[1].segments[-1].stop  # the lease may extend further; that is fine
    consumed = {0: (0, 20_000), 1: (0, leased_to // 8)}
    for path, store, extra in ((path_tx, tx, {}), (path_rx, rx, {2: (10_000, 14_000)})):
        blob = file_bytes(path)
        for b, (lo, hi) in {**consumed, **extra}.items():
            key = keys[b]
            for off in range(lo, hi - 16, 16):
                assert key[off:off + 16] not in blob, (path.name, b, off)
        # Unconsumed key is still there (so the search above can find key bytes at all).
        assert keys[2][:16] in blob
        store.close()
        # Closing checkpoints again; still nothing.
        blob = file_bytes(path)
        assert keys[0][100:116] not in blob


def test_file_size_stays_bounded_over_many_cycles(tmp_path: Path) -> None:
    path = tmp_path / "ks.sqlite"
    ks = KeyStore(path, lease_bits=1 << 14, checkpoint_bytes=1 << 20)
    rx = KeyStore(tmp_path / "rx.sqlite")
    sizes = []
    block = 8 * 64 * 1024
    for cycle in range(60):
        key = os.urandom(block // 8)
        ks.add_block("B", "data-tx", cycle, key, block, META)
        rx.add_block("A", "data-rx", cycle, key, block, META)
        g = ks.reserve("B", "data-tx", block)
        rx.take("A", "data-rx", g.segments)
        if cycle % 10 == 9:
            ks.checkpoint()
            rx.checkpoint()
            sizes.append((os.path.getsize(path), os.path.getsize(tmp_path / "rx.sqlite")))
    total_stored = 60 * block // 8
    for tx_size, rx_size in sizes:
        assert tx_size < total_stored / 10
        assert rx_size < total_stored / 10
    # No growth after the first round beyond the per-block records.
    assert sizes[-1][0] <= sizes[0][0] + 64 * 1024
    assert sizes[-1][1] <= sizes[0][1] + 64 * 1024
    ks.close()
    rx.close()


def test_store_settings_are_wal_full_secure_delete(tmp_path: Path) -> None:
    path = tmp_path / "ks.sqlite"
    KeyStore(path).close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
    ks = KeyStore(path)
    assert ks.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert ks.db.execute("PRAGMA secure_delete").fetchone()[0] == 1
    ks.close()


def test_not_a_key_store_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "junk.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ConfigError, match=r"junk\.sqlite"):
        KeyStore(bad)


def test_status_reports_counts(pair) -> None:
    tx, rx = pair
    add_both(tx, rx, 1, 1000)
    tx.reserve("B", "data-tx", 1000)
    add_both(tx, rx, 2, 500)
    (status,) = tx.status()
    assert status == {"peer": "B", "purpose": "data-tx", "available_bits": 500,
                      "live_blocks": 1, "retired_blocks": 1, "leased_bits": 0}


def test_frequent_checkpoints_during_multi_block_grants(tmp_path: Path) -> None:
    # A checkpoint after every consumption, while grants span several blocks: the
    # checkpoint must not trip over the transaction's own statements.
    ks = KeyStore(tmp_path / "ks.sqlite", lease_bits=512, checkpoint_bytes=1)
    keys = {}
    for b in range(6):
        keys[b] = os.urandom(125)
        ks.add_block("B", "data-tx", b, keys[b], 1000, META)
    wal = Path(str(tmp_path / "ks.sqlite") + "-wal")
    grants = []
    for n in (700, 900, 1500, 1, 2000):
        grants.append(ks.reserve("B", "data-tx", n))
        assert grants[-1].data == segments_data(keys, grants[-1])
        if n > 1:  # these went to the database, so a TRUNCATE checkpoint emptied the WAL
            assert wal.stat().st_size == 0
    assert ks.available("B", "data-tx") == 6000 - 5101
    ks.close()


def test_two_store_objects_on_one_file_never_overlap(tmp_path: Path) -> None:
    # Two processes' stores on the same file behave like two objects: leases are disjoint.
    path = tmp_path / "ks.sqlite"
    one, two = KeyStore(path, lease_bits=1000), KeyStore(path, lease_bits=1000)
    one.add_block("B", "data-tx", 1, os.urandom(2500), 20_000, META)
    seen = np.zeros(20_000, dtype=np.uint8)
    for i in range(60):
        g = (one if i % 2 else two).reserve("B", "data-tx", 300)
        for s in g.segments:
            seen[s.offset:s.stop] += 1
    assert seen.max() == 1
    one.close()
    two.close()


def test_bench_smoke(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_keystore", Path(__file__).parents[2] / "bench" / "bench_keystore.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = bench.ours(tmp_path, n_small=200, n_large=1, n_take=20)
    assert set(res) == {"reserve_256_per_s", "reserve_large_mb_s", "take_256_per_s",
                        "add_block_mb_s"}
    assert all(v > 0 for v in res.values())


def test_store_files_are_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "ks.sqlite"
    old = os.umask(0o022)
    try:
        ks = KeyStore(path)
        ks.add_block("B", "data-tx", 1, os.urandom(8), 64, META)
        for p in (path, Path(str(path) + "-wal")):
            assert p.stat().st_mode & 0o777 == 0o600, p.name
        ks.close()
    finally:
        os.umask(old)


def test_prune_retired_keeps_the_newest_records(pair) -> None:
    tx, rx = pair
    for b in range(5):
        add_both(tx, rx, b, 64)
    for _ in range(4):  # contiguous leases stay inside one block: blocks 0-3 used up
        tx.reserve("B", "data-tx", 64, contiguous=True)
    assert tx.prune_retired(keep=2) == 2
    (status,) = tx.status()
    assert (status["retired_blocks"], status["live_blocks"]) == (2, 1)
    with pytest.raises(LocalProtocolError, match="never reused"):
        tx.add_block("B", "data-tx", 3, os.urandom(8), 64, META)  # still remembered
    tx.add_block("B", "data-tx", 0, os.urandom(8), 64, META)      # pruned: accepted
    assert tx.prune_retired(keep=0) == 2
    assert tx.available("B", "data-tx") == 128
