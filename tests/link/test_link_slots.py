"""Slot ranges never repeat for a peer, and a block is never half stored.

The emulated source is a pure function of (seed, slot), so two blocks over the same
slots would distil the same raw key.  These tests run real loopback links on the
same key stores again and again — reconnects on open stores, and restarts that
reopen the SQLite files — and check that the transmitter's slots only move forward
and that the receiver refuses a replayed range from its own durable high-water
mark.  They also provoke a real key-store failure at the receiver (a block id that
already exists) and check the two-phase storage leaves no -tx key without a mirror.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from qkdnet.errors import KeyReuseError
from qkdnet.keystore import BlockMeta, KeySegment, KeyStore
from qkdnet.link import session as s
from qkdnet.link import wire as w
from qkdnet.link.driver import (
    RESERVED_SESSION_IDS,
    RX_SLOT_COUNTER,
    TX_SLOT_COUNTER,
    EmulatedPhy,
    new_session_id,
    run_point_to_point,
)
from qkdnet.phy import presets

PRESET = "snspd-metro"   # one decoy; 25 km: key in 1e7-slot blocks
KM = 25.0
#: Small blocks: they abort no_key at once, but their slot ranges are used all the same.
SMALL = 200_000
SEED = 7


def _ranges(stats) -> list[tuple[int, int]]:
    return sorted((b.start_slot, b.start_slot + b.n_slots) for b in stats.blocks)


def _replay_at(slot: int):
    """Tamper hook: every BLOCK_START claims ``slot`` (a replayed range)."""
    def tamper(body):
        if isinstance(body, w.BlockStart):
            body = body.copy()
            body.start_slot = slot
        return body
    return tamper


def test_new_session_id_skips_zero_and_the_reserved_ids() -> None:
    draws = iter([0xFFFFFFFF, 0xFFFFFFFE, 0, 0xFFFFFFFD])
    assert new_session_id(lambda _bits: next(draws)) == 0xFFFFFFFD
    assert RESERVED_SESSION_IDS == 0xFFFFFFFE
    assert all(0 < new_session_id() < 0xFFFFFFFE for _ in range(2000))


def test_receiver_session_refuses_a_range_below_the_durable_floor() -> None:
    params = presets.get(PRESET)
    cfg = s.LinkConfig.from_phy(params, 0x55)
    floor = [10_000]
    bob = s.ReceiverSession(cfg, slot_floor=lambda: floor[0])
    body = w.encode_block_start(0, 9_999, 100, 2, 1e-10, 1e-15, 0.11)
    outs = bob.receive_frame((0x10, bytes(body)), 0.0)
    assert isinstance(outs[0].body, w.AbortMsg)
    assert outs[-1].reason is w.AbortReason.PROTOCOL and "overlaps" in str(outs[-1].error)
    ok = bob.receive_frame((0x10, bytes(w.encode_block_start(1, 10_000, 100, 2, 1e-10,
                                                            1e-15, 0.11))), 0.0)
    assert isinstance(ok[0], s.DetectionsNeeded) and ok[0].start_slot == 10_000


def test_slots_beyond_2_pow_60_are_refused() -> None:
    bob = s.ReceiverSession(s.LinkConfig.from_phy(presets.get(PRESET), 0x55))
    body = w.encode_block_start(0, (1 << 60) - 50, 100, 2, 1e-10, 1e-15, 0.11)
    assert bob.receive_frame((0x10, bytes(body)), 0.0)[-1].reason is w.AbortReason.PROTOCOL


def test_emulated_phy_noise_differs_per_range_and_refuses_replays() -> None:
    params = presets.get(PRESET)
    a = EmulatedPhy(params, KM, seed=SEED)
    b = EmulatedPhy(params, KM, seed=SEED)             # the same seed: reproducible
    c = EmulatedPhy(params, KM, seed=SEED, noise_seed=12345)
    da, db, dc = (p.run(0, 2_000_000) for p in (a, b, c))
    assert np.array_equal(da.slots, db.slots)
    assert not np.array_equal(da.slots, dc.slots)     # other noise, same source
    with pytest.raises(Exception, match="replayed"):
        a.run(1_000_000, 10)
    later = a.run(2_000_000, 2_000_000)
    assert len(later.slots) and int(later.slots[0]) >= 2_000_000


@pytest.mark.slow
async def test_slots_move_forward_across_reconnects_and_restarts(tmp_path) -> None:
    params = presets.get(PRESET)
    used: list[tuple[int, int]] = []
    # Two connections on the same open stores (a reconnect) ...
    with KeyStore(tmp_path / "alice.db") as sa, KeyStore(tmp_path / "bob.db") as sb:
        for sid in (0x101, 0x102):
            r = await run_point_to_point(params, KM, 2, SMALL, workdir=tmp_path, seed=SEED,
                                         session_id=sid, compare=False, stores=(sa, sb))
            assert _ranges(r.alice) == _ranges(r.bob)
            assert all(b.abort_reason != "protocol" for b in r.bob.blocks)
            used += _ranges(r.alice)
    # ... then a restart: run_point_to_point reopens both SQLite files.
    r = await run_point_to_point(params, KM, 2, SMALL, workdir=tmp_path, seed=SEED,
                                 session_id=0x103, compare=False)
    assert all(b.abort_reason != "protocol" for b in r.bob.blocks)
    used += _ranges(r.alice)
    assert len(used) == 6
    # Strictly increasing, never overlapping, across sessions and the restart.
    for (_s0, e0), (s1, _e1) in itertools.pairwise(used):
        assert s1 >= e0
    with KeyStore(tmp_path / "alice.db") as sa, KeyStore(tmp_path / "bob.db") as sb:
        assert sa.counter(TX_SLOT_COUNTER.format(peer="bob")) == used[-1][1]
        assert sb.counter(RX_SLOT_COUNTER.format(peer="alice")) == used[-1][1]


@pytest.mark.slow
async def test_receiver_refuses_replayed_ranges_across_sessions_and_restarts(tmp_path) -> None:
    params = presets.get(PRESET)
    with KeyStore(tmp_path / "alice.db") as sa, KeyStore(tmp_path / "bob.db") as sb:
        first = await run_point_to_point(params, KM, 1, SMALL, workdir=tmp_path, seed=SEED,
                                         session_id=0x201, compare=False, stores=(sa, sb))
        (start, end), = _ranges(first.alice)
        # A new session on the same open stores replays the first block's range, and
        # one that overlaps its tail: the receiver (a fresh endpoint, fresh PHY, as the
        # hub builds per connection) refuses both from its durable mark.
        for sid, slot in ((0x202, start), (0x203, end - 1)):
            r = await run_point_to_point(params, KM, 1, SMALL, workdir=tmp_path, seed=SEED,
                                         session_id=sid, compare=False, stores=(sa, sb),
                                         tamper_alice=_replay_at(slot))
            (blk,) = r.bob.blocks
            assert blk.abort_reason == "protocol" and "overlaps" in blk.abort_detail
            assert not blk.aborted_by_peer and blk.clicks == 0      # no PHY run, no clicks
            assert r.alice.blocks[0].aborted_by_peer
    # After a restart (the files reopened) the receiver still refuses the old range.
    r = await run_point_to_point(params, KM, 1, SMALL, workdir=tmp_path, seed=SEED,
                                 session_id=0x204, compare=False, tamper_alice=_replay_at(start))
    assert r.bob.blocks[0].abort_reason == "protocol"
    assert "overlaps" in r.bob.blocks[0].abort_detail
    # An honest transmitter goes on after all of that.
    r = await run_point_to_point(params, KM, 1, SMALL, workdir=tmp_path, seed=SEED,
                                 session_id=0x205, compare=False)
    assert r.bob.blocks[0].abort_reason != "protocol"
    assert _ranges(r.alice)[0][0] >= end


# -- two-phase storage ------------------------------------------------------------------


def _pump_until(alice, bob, phy, outs, stop_at):
    """Deliver outputs in memory; drop (and return) the first body of type ``stop_at``."""
    queue = [(alice, o) for o in outs]
    events, dropped = [], None
    while queue:
        src, o = queue.pop(0)
        if isinstance(o, s.Send):
            if dropped is None and isinstance(o.body, stop_at):
                dropped = o.body
                continue
            dst = bob if src is alice else alice
            queue += [(dst, x) for x in dst.receive_frame((int(w.msg_type(o.body)),
                                                           bytes(o.body)), 0.0)]
        elif isinstance(o, s.DetectionsNeeded):
            det = phy.run(o.start_slot, o.n_slots)
            queue += [(bob, x) for x in bob.supply_detections(o.block, det, 0.0)]
        else:
            events.append(("alice" if src is alice else "bob", o))
    return events, dropped


#: ABORT(block 0, local) as the peer sends it.
_ABORT0 = (int(w.LinkMsg.ABORT), bytes(w.encode_abort(0, w.AbortReason.LOCAL)))


def _sessions():
    params = presets.get(PRESET)
    phy = EmulatedPhy(params, KM, seed=3)
    cfg = s.LinkConfig.from_phy(params, 0xABCD, step_timeout=5.0)
    return phy, s.TransmitterSession(cfg, phy.source), s.ReceiverSession(cfg)


def test_receiver_burns_its_rx_parts_when_the_transmitter_aborts_before_storing() -> None:
    phy, alice, bob = _sessions()
    events, _ = _pump_until(alice, bob, phy, alice.start_block(0, 0, 10_000_000, 0.0),
                            w.BlockDoneMsg)
    (who, rx_store), = [(who, o) for who, o in events if isinstance(o, s.StoreBlock)]
    assert who == "bob" and all(p.purpose.endswith("-rx") for p in rx_store.parts)
    # Alice never saw BLOCK_DONE, so she stored nothing; her ABORT makes Bob burn.
    outs = bob.receive_frame(_ABORT0, 1.0)
    burn, aborted = outs
    assert isinstance(burn, s.BurnParts) and isinstance(aborted, s.BlockAborted)
    assert burn.parts == tuple((p.purpose, p.block_id, p.n_bits) for p in rx_store.parts)


def test_receiver_keeps_its_rx_parts_on_its_own_timeout() -> None:
    """Bob cannot tell whether Alice stored (CONFIRM may be on its way): keep the -rx key."""
    phy, alice, bob = _sessions()
    _pump_until(alice, bob, phy, alice.start_block(0, 0, 10_000_000, 0.0), w.ConfirmMsg)
    outs = bob.handle_timer(100.0)
    assert not any(isinstance(o, s.BurnParts) for o in outs)
    assert any(isinstance(o, s.BlockAborted) for o in outs)


def test_transmitter_burns_its_rx_parts_when_the_receiver_aborts_after_it_stored() -> None:
    phy, alice, bob = _sessions()
    events, confirm = _pump_until(alice, bob, phy, alice.start_block(0, 0, 10_000_000, 0.0),
                                  w.ConfirmMsg)
    assert confirm is not None
    a_store = next(o for who, o in events if who == "alice" and isinstance(o, s.StoreBlock))
    outs = alice.receive_frame(_ABORT0, 1.0)
    (burn,) = outs
    assert isinstance(burn, s.BurnParts)
    assert burn.parts == tuple((p.purpose, p.block_id, p.n_bits) for p in a_store.parts
                               if p.purpose.endswith("-rx"))
    # A second ABORT for that block is ignored (nothing left to burn).
    assert alice.receive_frame(_ABORT0,
                               1.0) == []


@pytest.mark.slow
async def test_receiver_store_failure_after_confirm_leaves_no_unmirrored_key(tmp_path) -> None:
    """A real key-store failure at the receiver's second phase (its -tx parts): block
    0's data-tx id already exists in the hub's file.  The receiver keeps its -rx half
    (the transmitter's -tx half has its mirror), ABORTs, and the transmitter burns
    its -rx half; the next block is stored whole at both ends."""
    params = presets.get(PRESET)
    sid = 0x301
    dummy = s.block_id(sid, 0, 3)
    meta = BlockMeta(link_session="test", created=0.0, eps_sec=1e-10, eps_cor=1e-15,
                     leaked_ec_bits=0, auth_bits_spent=0)
    with KeyStore(tmp_path / "bob.db") as sb:
        sb.add_block("alice", "data-tx", dummy, b"\x00" * 8, 64, meta)

    def inspect(sa, sb):
        return {"a_tx": sa.available("bob", "data-tx"), "b_rx": sb.available("alice", "data-rx"),
                "a_rx": sa.available("bob", "data-rx"), "b_tx": sb.available("alice", "data-tx")}

    r = await run_point_to_point(params, KM, 2, 10_000_000, workdir=tmp_path, seed=3,
                                 session_id=sid, max_in_flight=1, compare=False,
                                 inspect=inspect)
    bob0 = {b.block: b for b in r.bob.blocks}[0]
    assert bob0.abort_reason == "local" and bob0.abort_detail == "key store failed"
    alice0 = {b.block: b for b in r.alice.blocks}[0]
    assert alice0.abort_reason is None and alice0.ell > 0      # Alice had stored it
    got = r.inspected
    # Alice -> hub: every data-tx bit of Alice's has its mirror at the hub.
    assert got["a_tx"] == got["b_rx"] > 0
    # Hub -> Alice: the hub holds block 1's data-tx (plus the 64-bit dummy) and Alice
    # exactly its mirror: block 0's data-rx half was burned.
    assert got["a_rx"] == got["b_tx"] - 64
    with KeyStore(tmp_path / "alice.db") as sa, pytest.raises(KeyReuseError):
        sa.take("bob", "data-rx", [KeySegment(dummy, 0, 1)])


@pytest.mark.slow
@pytest.mark.parametrize("who", ["alice", "bob"])
async def test_store_failure_before_the_peer_stores_leaves_nothing_usable(who, tmp_path
                                                                         ) -> None:
    """A real key-store failure in the first phases: the hub's -rx half (at PA) or the
    transmitter's whole block (at BLOCK_DONE).  Block 0 is then abandoned at both
    ends, and every -rx bit of it that was stored is burned; block 1 is stored whole."""
    params = presets.get(PRESET)
    sid = 0x401
    meta = BlockMeta(link_session="test", created=0.0, eps_sec=1e-10, eps_cor=1e-15,
                     leaked_ec_bits=0, auth_bits_spent=0)
    # The block id of block 0's data A->B part, already present in the failing store.
    clash = s.block_id(sid, 0, 2)
    pool = ("bob", "data-tx") if who == "alice" else ("alice", "data-rx")
    with KeyStore(tmp_path / f"{who}.db") as st:
        st.add_block(*pool, clash, b"\x00" * 8, 64, meta)
    r = await run_point_to_point(params, KM, 2, 10_000_000, workdir=tmp_path, seed=3,
                                 session_id=sid, max_in_flight=1, compare=False,
                                 inspect=lambda sa, sb: (
                                     sa.available("bob", "data-tx"),
                                     sb.available("alice", "data-rx"),
                                     sa.available("bob", "data-rx"),
                                     sb.available("alice", "data-tx")))
    failing = r.alice if who == "alice" else r.bob
    other = r.bob if who == "alice" else r.alice
    assert {b.block: b for b in failing.blocks}[0].abort_detail == "key store failed"
    peer0 = {b.block: b for b in other.blocks}[0]
    assert peer0.abort_reason == "local" and peer0.aborted_by_peer
    assert failing.stored == other.stored == 1                      # block 1
    a_tx, b_rx, a_rx, b_tx = r.inspected
    dummy_at_a_tx = 64 if who == "alice" else 0
    dummy_at_b_rx = 64 if who == "bob" else 0
    assert a_tx - dummy_at_a_tx == b_rx - dummy_at_b_rx > 0          # block 1 only
    assert a_rx == b_tx > 0
    if who == "alice":
        # The hub stored its -rx half at PA, then burned it on Alice's ABORT.
        with KeyStore(tmp_path / "bob.db") as sb, pytest.raises(KeyReuseError):
            sb.take("alice", "data-rx", [KeySegment(clash, 0, 1)])
