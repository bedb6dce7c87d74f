"""Sans-I/O link sessions: the transition table, timers, aborts and key hygiene.

These tests pump bytes between a TransmitterSession and a ReceiverSession in memory
(the real PHY and algorithms, no sockets) to look at the state machine directly.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from qkdnet.errors import RemoteProtocolError
from qkdnet.link import session as s
from qkdnet.link import wire as w
from qkdnet.link.driver import EmulatedPhy
from qkdnet.phy import presets


def _pair(preset: str = "snspd-metro", km: float = 25.0, seed: int = 3):
    params = presets.get(preset)
    phy = EmulatedPhy(params, km, seed=seed)
    cfg = s.LinkConfig.from_phy(params, 0xABCD, step_timeout=5.0)
    return phy, s.TransmitterSession(cfg, phy.source), s.ReceiverSession(cfg)


def _pump(phy, alice, bob, outs, now=0.0, drop=None):
    """Deliver outputs until quiet; returns the non-Send outputs of both ends."""
    queue = [(alice, o) for o in outs]
    events = []
    while queue:
        src, o = queue.pop(0)
        if isinstance(o, s.Send):
            dst = bob if src is alice else alice
            if drop is not None and drop(o.body):
                continue
            frame = (int(w.msg_type(o.body)), bytes(o.body))
            queue += [(dst, x) for x in dst.receive_frame(frame, now)]
        elif isinstance(o, s.DetectionsNeeded):
            det = phy.run(o.start_slot, o.n_slots)
            queue += [(bob, x) for x in bob.supply_detections(o.block, det, now)]
        else:
            events.append(("alice" if src is alice else "bob", o))
    return events


def test_transition_table_is_consistent() -> None:
    for (role, state, _event), (handler, nexts) in s.TRANSITIONS.items():
        cls = s.TransmitterSession if role is s.Role.TRANSMITTER else s.ReceiverSession
        assert callable(getattr(cls, handler))
        assert nexts and state not in (s.State.DONE, s.State.ABORTED)
    # every state a handler can reach is either terminal or has a way out
    reachable = {n for _, nexts in s.TRANSITIONS.values() for n in nexts}
    sources = {state for (_, state, _) in s.TRANSITIONS}
    assert reachable - sources <= {s.State.DONE}


def test_in_memory_block_stores_identical_parts() -> None:
    phy, alice, bob = _pair()
    events = _pump(phy, alice, bob, alice.start_block(0, 0, 10_000_000, 0.0))
    stores = [(who, o) for who, o in events if isinstance(o, s.StoreBlock)]
    # Alice stores the whole block at once; Bob its -rx parts at PA, then its -tx
    # parts at CONFIRM (two-phase: no end ever holds -tx key the other end lacks).
    assert [who for who, _ in stores] == ["bob", "alice", "bob"]
    a = stores[1][1]
    b_rx, b_tx = stores[0][1], stores[2][1]
    assert {p.purpose for p in b_rx.parts} <= {"auth-rx", "data-rx"}
    assert {p.purpose for p in b_tx.parts} <= {"auth-tx", "data-tx"}
    mirror = {"auth-tx": "auth-rx", "auth-rx": "auth-tx", "data-tx": "data-rx",
              "data-rx": "data-tx"}
    b_parts = sorted(b_rx.parts + b_tx.parts, key=lambda p: p.block_id)
    assert len(a.parts) == len(b_parts) >= 2
    assert [(p.block_id, mirror[p.purpose], p.n_bits) for p in a.parts] == \
        [(p.block_id, p.purpose, p.n_bits) for p in b_parts]
    assert all(pa.key == pb.key for pa, pb in zip(a.parts, b_parts, strict=True))
    b = b_tx
    assert {p.block_id for p in a.parts} <= {s.block_id(0xABCD, 0, k) for k in range(4)}
    # Deferred authentication: five tagged frames per block, however many frames in all.
    stored_stats = next(o for w_, o in events if isinstance(o, s.BlockStored)).stats
    assert a.auth_bits_spent == b.auth_bits_spent == b_rx.auth_bits_spent == \
        stored_stats.auth_bits == s.TAG_KEY_BITS * s.TAGGED_FRAMES_PER_BLOCK
    assert stored_stats.frames > 2 * s.TAGGED_FRAMES_PER_BLOCK
    # key bits never show in reprs or stats
    for p in a.parts:
        if p.n_bits >= 64:
            assert p.key.hex() not in repr(p) and str(p.key) not in repr(p)
    stored = [o for _, o in events if isinstance(o, s.BlockStored)]
    # Stats are plain public numbers (JSON), nested only in ell_inputs' counts and bounds.
    for o in stored:
        st = dataclasses.asdict(o.stats)
        json.dumps(st)
        assert all(isinstance(v, int | float | str | bool | type(None))
                   for k, v in st.items() if k != "ell_inputs")
        assert {"n_z", "m_z", "n_x", "m_x", "leak_parts", "phi_upper"} <= set(st["ell_inputs"])
    assert alice.in_flight() == bob.in_flight() == 0


def test_step_timeout_aborts_and_notifies() -> None:
    _phy, alice, _bob = _pair()
    outs = alice.start_block(4, 0, 1_000_000, 100.0)
    assert alice.get_timer() == pytest.approx(105.0)
    assert alice.handle_timer(104.9) == []
    outs = alice.handle_timer(105.0)
    assert isinstance(outs[0], s.Send) and isinstance(outs[0].body, w.AbortMsg)
    assert outs[0].body.reason == int(w.AbortReason.TIMEOUT)
    aborted = outs[1]
    assert isinstance(aborted, s.BlockAborted) and aborted.reason is w.AbortReason.TIMEOUT
    assert alice.get_timer() is None and alice.in_flight() == 0


def test_lost_frame_times_out_at_both_ends_and_stores_nothing() -> None:
    phy, alice, bob = _pair()
    events = _pump(phy, alice, bob, alice.start_block(0, 0, 2_000_000, 0.0),
                   drop=lambda body: isinstance(body, w.SiftMsg))
    assert events == []
    late = alice.handle_timer(10.0) + bob.handle_timer(10.0)
    reasons = [o.reason for o in late if isinstance(o, s.BlockAborted)]
    assert reasons == [w.AbortReason.TIMEOUT, w.AbortReason.TIMEOUT]
    # The crossing ABORT frames are ignored by the other side (block already closed).
    for o in late:
        if isinstance(o, s.Send):
            for dst in (alice, bob):
                assert dst.receive_frame((int(w.msg_type(o.body)), bytes(o.body)), 11.0) == []


def test_frame_for_unknown_block_is_a_connection_error() -> None:
    _phy, alice, bob = _pair()
    with pytest.raises(RemoteProtocolError, match="unknown block 77"):
        bob.receive_frame((0x12, bytes(w.encode_sift(77, np.zeros(1, bool), np.zeros(0)))),
                          0.0)
    with pytest.raises(RemoteProtocolError, match="unknown block 5"):
        alice.receive_frame((0x11, bytes(w.encode_detections(5, np.zeros(0), np.zeros(0))[0])),
                            0.0)


def test_block_start_with_wrong_intensity_count_is_aborted() -> None:
    _phy, _alice, bob = _pair()   # snspd-metro: one decoy, two intensities
    body = w.encode_block_start(0, 0, 1000, 3, 1e-10, 1e-15, 0.11)
    outs = bob.receive_frame((0x10, bytes(body)), 0.0)
    assert isinstance(outs[0].body, w.AbortMsg)
    assert outs[1].reason is w.AbortReason.PROTOCOL
    assert isinstance(outs[1].error, RemoteProtocolError)


def test_block_indices_are_not_reused() -> None:
    _phy, alice, _bob = _pair()
    alice.start_block(1, 0, 1000, 0.0)
    with pytest.raises(Exception, match="already used"):
        alice.start_block(1, 1000, 1000, 0.0)


def test_overlapping_slot_ranges_are_refused() -> None:
    """Re-used slots would re-use Alice's choices, i.e. key bits: the receiver refuses."""
    _phy, _alice, bob = _pair()
    first = bob.receive_frame((0x10, bytes(w.encode_block_start(0, 1000, 500, 2, 1e-10,
                                                                 1e-15, 0.11))), 0.0)
    assert isinstance(first[0], s.DetectionsNeeded)
    again = bob.receive_frame((0x10, bytes(w.encode_block_start(1, 1200, 500, 2, 1e-10,
                                                                 1e-15, 0.11))), 0.0)
    assert again[-1].reason is w.AbortReason.PROTOCOL
    assert "overlaps" in str(again[-1].error)


def test_weaker_security_parameters_than_policy_are_refused() -> None:
    _phy, _alice, bob = _pair()      # policy: eps_sec 1e-10, eps_cor 1e-15, qber_max 0.11
    for eps_sec, eps_cor, qmax in ((1e-6, 1e-15, 0.11), (1e-10, 1e-9, 0.11),
                                   (1e-10, 1e-15, 0.2)):
        body = w.encode_block_start(0, 0, 1000, 2, eps_sec, eps_cor, qmax)
        outs = bob.receive_frame((0x10, bytes(body)), 0.0)
        assert outs[-1].reason is w.AbortReason.PROTOCOL
        bob = _pair()[2]
    stricter = w.encode_block_start(0, 0, 1000, 2, 1e-12, 1e-16, 0.08)
    assert isinstance(bob.receive_frame((0x10, bytes(stricter)), 0.0)[0], s.DetectionsNeeded)
