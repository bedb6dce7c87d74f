"""``as_built``: hub bodies marked explicit build to exactly the bytes scapy's usual
build gives, and the router's forwarded DATA dissects back to what it carried."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from scapy.packet import Packet

from qkdnet.hub import wire as w
from qkdnet.hub.node import prefill_pair
from qkdnet.hub.router import HubRouter, Send, as_built
from qkdnet.keystore import KeySegment, KeyStore


def segs(n: int) -> list[w.KeySegmentField]:
    return [w.KeySegmentField(block_id=(1 << 63) + i, offset=8 * i, n_bits=64)
            for i in range(n)]


MAKERS: list[Callable[[], Packet]] = [
    lambda: w.HubData(src=b"alice", dst=b"bob", service=b"chat", channel_id=9, end=1,
                      msg_seq=1 << 40, segments=segs(3), ciphertext=os.urandom(24)),
    lambda: w.HubData(src=b"a", dst=b"b", service=b"s", segments=[], ciphertext=b""),
    lambda: w.HubDeliveryAck(kind=int(w.NackKind.DATA), src=b"hub", dst=b"alice",
                             channel_id=3, end=0, msg_seq=77),
    lambda: w.HubDeliveryNack(kind=int(w.NackKind.DATA), src=b"hub", dst=b"bob",
                              channel_id=3, end=1, msg_seq=5,
                              reason=int(w.HubReason.KEY_EXHAUSTED), bits_needed=10,
                              bits_available=2, hop=b"hub->bob", detail=b"no key"),
    lambda: w.HubKeyRelay(peer=b"alice", request_id=4, role=1, e2e_block_id=12,
                          n_bits=128, segments=segs(2), masked=os.urandom(16)),
    lambda: w.HubRegisterAck(status=0, spoke=b"bob", hub=b"hub"),
    lambda: w.HubStatus(request_id=1, text=b'{"a": 1}'),
]


@pytest.mark.parametrize("make", MAKERS)
def test_explicit_build_gives_the_same_bytes(make: Callable[[], Packet]) -> None:
    pkt = make()
    plain = bytes(pkt.copy())
    assert bytes(as_built(pkt)) == plain
    again = type(pkt)(plain)
    assert bytes(again) == plain
    assert w.check(again) is again


def test_forwarded_data_dissects_to_what_the_router_carried(tmp_path: Path) -> None:
    hub, alice = KeyStore(tmp_path / "hub.keys"), KeyStore(tmp_path / "alice.keys")
    bob = KeyStore(tmp_path / "bob.keys")
    prefill_pair(hub, "hub", alice, "alice", 1 << 16)
    prefill_pair(hub, "hub", bob, "bob", 1 << 16)
    router = HubRouter("hub", hub)
    for name in ("alice", "bob"):
        router.connect(name, 0.0)
        router.receive(name, w.HubRegister(version=1, spoke=name.encode()), 0.0)
    message = os.urandom(300)
    grant = alice.reserve("hub", "data-tx", 8 * len(message))
    ct = bytes(x ^ y for x, y in zip(message, grant.data, strict=True))
    data = w.HubData(src=b"alice", dst=b"bob", service=b"s", channel_id=5, end=0,
                     msg_seq=2, segments=[w.KeySegmentField(
                         block_id=s.block_id, offset=s.offset, n_bits=s.n_bits)
                         for s in grant.segments], ciphertext=ct)
    sends = [a for a in router.receive("alice", w.HubData(bytes(data)), 1.0)
             if isinstance(a, Send)]
    assert [s.to for s in sends] == ["bob"]
    fwd = w.check(w.HubData(bytes(sends[0].body)))
    assert (fwd.src, fwd.dst, fwd.service, fwd.channel_id, fwd.end, fwd.msg_seq) == (
        b"alice", b"bob", b"s", 5, 0, 2)
    pad = bob.take("hub", "data-rx", [KeySegment(int(s.block_id), int(s.offset),
                                                 int(s.n_bits)) for s in fwd.segments])
    assert bytes(x ^ y for x, y in zip(fwd.ciphertext, pad, strict=True)) == message
    for store in (hub, alice, bob):
        store.close()
