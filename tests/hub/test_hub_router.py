"""The sans-I/O routing core against a real key store: re-keying, identity checks,
unknown peers, key exhaustion naming the hop, throttling and fairness."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qkdnet.errors import ErrorCode
from qkdnet.hub import wire as w
from qkdnet.hub.node import prefill_pair
from qkdnet.hub.router import Disconnect, HubRouter, Send
from qkdnet.keystore import KeyStore

SPOKES = ("alice", "bob", "carol")


@pytest.fixture
def stores(tmp_path: Path):  # type: ignore[no-untyped-def]
    hub = KeyStore(tmp_path / "hub.keys")
    spokes = {n: KeyStore(tmp_path / f"{n}.keys") for n in SPOKES}
    for n in SPOKES:
        prefill_pair(hub, "hub", spokes[n], n, 1 << 14, seed=7)
    yield hub, spokes
    hub.close()
    for s in spokes.values():
        s.close()


def _router(hub: KeyStore, **kw: object) -> HubRouter:
    r = HubRouter("hub", hub, **kw)  # type: ignore[arg-type]
    for n in SPOKES:
        r.connect(n, 0.0)
        acts = r.receive(n, w.HubRegister(spoke=n.encode()), 0.0)
        assert isinstance(acts[0], Send) and acts[0].body.status == 0
    return r


def _data_from(store: KeyStore, src: str, dst: str, msg: bytes, seq: int = 0,
               channel: int = 1) -> w.HubData:
    grant = store.reserve("hub", "data-tx", 8 * len(msg))
    ct = np.bitwise_xor(np.frombuffer(msg, np.uint8),
                        np.frombuffer(grant.data, np.uint8)).tobytes()
    pkt = w.HubData(src=src.encode(), dst=dst.encode(), service=b"svc", channel_id=channel,
                    end=0, msg_seq=seq,
                    segments=[w.KeySegmentField(block_id=s.block_id, offset=s.offset,
                                                n_bits=s.n_bits) for s in grant.segments],
                    ciphertext=ct)
    return w.parse(w.HubMsg.DATA, bytes(pkt))  # as it arrives: dissected from bytes


def _open_at(store: KeyStore, pkt: w.HubData) -> bytes:
    from qkdnet.keystore import KeySegment
    key = store.take("hub", "data-rx", [KeySegment(int(s.block_id), int(s.offset),
                                                   int(s.n_bits)) for s in pkt.segments])
    return np.bitwise_xor(np.frombuffer(pkt.ciphertext, np.uint8),
                          np.frombuffer(key, np.uint8)).tobytes()


def test_rekeys_hop_by_hop(stores) -> None:  # type: ignore[no-untyped-def]
    hub, spokes = stores
    r = _router(hub)
    msg = b"meet at the usual place"
    pkt = _data_from(spokes["alice"], "alice", "bob", msg)
    acts = r.receive("alice", pkt, 1.0)
    assert len(acts) == 1 and isinstance(acts[0], Send) and acts[0].to == "bob"
    fwd = acts[0].body
    assert fwd.ciphertext != pkt.ciphertext          # fresh pad on the second hop
    assert msg not in bytes(fwd) and msg not in bytes(pkt)
    assert _open_at(spokes["bob"], fwd) == msg
    assert r.status()["totals"]["relayed"] == 1


def test_replayed_key_reference_is_refused(stores) -> None:  # type: ignore[no-untyped-def]
    hub, spokes = stores
    r = _router(hub)
    pkt = _data_from(spokes["alice"], "alice", "bob", b"once")
    r.receive("alice", pkt, 1.0)
    again = w.parse(w.HubMsg.DATA, bytes(pkt.copy().__class__(bytes(pkt))))
    again.msg_seq = 1
    acts = r.receive("alice", again, 1.0)
    assert [type(a.body) for a in acts if isinstance(a, Send)] == [w.HubDeliveryNack]
    assert acts[0].body.reason == w.HubReason.PROTOCOL_VIOLATION
    assert b"already used" in acts[0].body.detail


def test_impersonation_and_register_name_mismatch(stores) -> None:  # type: ignore[no-untyped-def]
    hub, spokes = stores
    r = _router(hub)
    forged = _data_from(spokes["alice"], "carol", "bob", b"it's carol, honest")
    acts = r.receive("alice", forged, 1.0)
    assert acts == [Disconnect("alice", ErrorCode.PROTOCOL_VIOLATION, acts[0].reason)]
    assert "'carol'" in acts[0].reason and "'alice'" in acts[0].reason
    r2 = HubRouter("hub", hub)
    r2.connect("alice", 0.0)
    acts = r2.receive("alice", w.HubRegister(spoke=b"bob"), 0.0)
    assert isinstance(acts[0], Send) and acts[0].body.status == w.HubReason.NAME_CONFLICT
    assert isinstance(acts[1], Disconnect) and acts[1].code == ErrorCode.NAME_CONFLICT
    # Anything but REGISTER first is refused too.
    r3 = HubRouter("hub", hub)
    r3.connect("bob", 0.0)
    acts = r3.receive("bob", w.HubOpenChannel(src=b"bob", dst=b"alice", service=b"s"), 0.0)
    assert isinstance(acts[0], Disconnect) and "before REGISTER" in acts[0].reason


def test_unknown_destination_is_nacked(stores) -> None:  # type: ignore[no-untyped-def]
    hub, _ = stores
    r = _router(hub)
    acts = r.receive("alice", w.HubOpenChannel(src=b"alice", dst=b"mallory",
                                               service=b"s", channel_id=4), 0.0)
    (act,) = acts
    assert isinstance(act, Send) and act.to == "alice"
    assert act.body.reason == w.HubReason.UNKNOWN_PEER and act.body.kind == w.NackKind.OPEN
    assert b"mallory" in act.body.detail


def test_key_exhaustion_waits_then_names_the_hop(stores) -> None:  # type: ignore[no-untyped-def]
    hub, spokes = stores
    r = _router(hub, key_wait=2.0)
    # Drain hub->bob key so that the second hop lacks key.
    hub.reserve("bob", "data-tx", hub.available("bob", "data-tx"))
    pkt = _data_from(spokes["alice"], "alice", "bob", b"x" * 100)
    assert r.receive("alice", pkt, 10.0) == []          # waits
    assert r.poll(11.0) == [] and r.blocked()
    (act,) = r.poll(12.5)                                # past the deadline
    nack = act.body
    assert act.to == "alice" and nack.reason == w.HubReason.KEY_EXHAUSTED
    assert nack.hop == b"hub->bob" and nack.bits_needed == 800 and nack.bits_available == 0
    # The channel is now failed: a later message of it is refused, not delivered.
    later = _data_from(spokes["alice"], "alice", "bob", b"y", seq=1)
    (act,) = r.receive("alice", later, 13.0)
    assert act.body.reason == w.HubReason.CHANNEL_FAILED


def test_key_that_arrives_in_time_unblocks(stores) -> None:  # type: ignore[no-untyped-def]
    hub, spokes = stores
    r = _router(hub, key_wait=5.0)
    hub.reserve("bob", "data-tx", hub.available("bob", "data-tx"))
    pkt = _data_from(spokes["alice"], "alice", "bob", b"patience")
    assert r.receive("alice", pkt, 0.0) == []
    prefill_pair(hub, "hub", spokes["bob"], "bob", 1 << 12, seed=9, batch=5)
    (act,) = r.poll(1.0)
    assert act.to == "bob" and _open_at(spokes["bob"], act.body) == b"patience"


def test_flooder_is_throttled_and_others_still_served(stores) -> None:  # type: ignore[no-untyped-def]
    hub, spokes = stores
    r = _router(hub, queue_frames=8, window=4)
    # bob does not drain: frames to bob pile up behind the window.
    flood = [r.receive("alice", _data_from(spokes["alice"], "alice", "bob", b"f", seq=i,
                                           channel=1), 0.01 * i) for i in range(20)]
    kinds = [a.body.reason if isinstance(a.body, w.HubDeliveryNack) else "fwd"
             for acts in flood for a in acts]
    assert kinds.count("fwd") == 4                       # the window to bob
    assert kinds.count(w.HubReason.THROTTLED) == 8       # beyond 8 queued frames
    # carol -> bob still gets a turn as soon as bob drains: round robin across sources.
    c = r.receive("carol", _data_from(spokes["carol"], "carol", "bob", b"c"), 0.3)
    assert c == []
    r.sent("bob", 4)
    order = [a.body.src for a in r.poll(0.4)]
    assert order[:2] in ([b"alice", b"carol"], [b"carol", b"alice"])
    assert b"carol" in order


def test_disconnect_fails_queued_frames_for_that_spoke(stores) -> None:  # type: ignore[no-untyped-def]
    hub, spokes = stores
    r = _router(hub)
    hub.reserve("bob", "data-tx", hub.available("bob", "data-tx"))
    r.receive("alice", _data_from(spokes["alice"], "alice", "bob", b"late"), 0.0)
    (act,) = r.disconnect("bob", 1.0)
    assert act.to == "alice" and act.body.reason == w.HubReason.PEER_DISCONNECTED


def test_key_relay_gives_both_ends_the_same_key(stores) -> None:  # type: ignore[no-untyped-def]
    from qkdnet.keystore import KeySegment

    hub, spokes = stores
    r = _router(hub)
    acts = r.receive("alice", w.HubKeyRelayRequest(src=b"alice", peer=b"carol",
                                                   request_id=3, n_bits=256), 0.0)
    assert [a.to for a in acts] == ["carol", "alice"]    # responder first
    to_c, to_a = acts[0].body, acts[1].body

    def segs(p: w.HubKeyRelay) -> list[KeySegment]:
        return [KeySegment(int(s.block_id), int(s.offset), int(s.n_bits)) for s in p.segments]

    k_a = spokes["alice"].take("hub", "data-rx", segs(to_a))
    k_b = spokes["carol"].take("hub", "data-rx", segs(to_c))
    recovered = np.bitwise_xor(np.frombuffer(bytes(to_c.masked), np.uint8),
                               np.frombuffer(k_b, np.uint8)).tobytes()
    assert recovered == k_a and len(k_a) == 32
    assert to_a.masked == b"" and to_a.e2e_block_id == to_c.e2e_block_id


def test_work_buffer_is_zeroed_after_every_frame(stores) -> None:  # type: ignore[no-untyped-def]
    """Plaintext (between the two XORs) and K_A xor K_B live only in the router's
    scratch buffer, which must hold no set byte once the call returns, whichever
    way it returns."""
    hub, spokes = stores
    r = _router(hub)
    assert r._scratch.capacity == 0
    msg = b"\xff" * 300  # all ones: any byte left behind shows
    (act,) = r.receive("alice", _data_from(spokes["alice"], "alice", "bob", msg), 1.0)
    assert _open_at(spokes["bob"], act.body) == msg
    assert r._scratch.capacity >= 300 and r._scratch.is_clean()
    # To the hub itself (the plaintext is consumed there).
    (act,) = r.receive("alice", _data_from(spokes["alice"], "alice", "hub", msg, seq=1,
                                           channel=2), 2.0)
    assert isinstance(act.body, w.HubDeliveryAck) and r.local_bytes == 300
    assert r._scratch.is_clean()
    # Key relay.
    acts = r.receive("carol", w.HubKeyRelayRequest(src=b"carol", peer=b"bob",
                                                   request_id=1, n_bits=4096), 3.0)
    assert len(acts) == 2 and len(acts[0].body.masked) == 512
    assert r._scratch.capacity >= 512 and r._scratch.is_clean()
