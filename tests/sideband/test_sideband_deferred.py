"""Deferred authentication (spec/protocol.md §6.4): frames without a tag of their own,
covered by the next tagged frame of the same direction."""

from __future__ import annotations

import secrets

import pytest
from cryptography.hazmat.primitives.poly1305 import Poly1305

import qkdnet.sideband_core as core
from qkdnet.auth import Backlog, FrameAuthenticator, MemoryTagKeys
from qkdnet.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from qkdnet.link.wire import DEFERRED_MSGS, LinkMsg, ParityReplyMsg, VerifyMsg
from qkdnet.sideband import ConnState, SidebandConnection
from qkdnet.wire import (
    DEFERRABLE_TYPES,
    HEADER_LEN,
    TAG_LEN,
    FrameFlags,
    Hello,
    HelloAck,
    MsgType,
    Ping,
    pack_header,
    unpack_header,
)


def opened() -> tuple[SidebandConnection, SidebandConnection, MemoryTagKeys, MemoryTagKeys]:
    a, b = MemoryTagKeys.pair()
    client = SidebandConnection("alice", FrameAuthenticator(a))
    server = SidebandConnection("hub", lambda n: FrameAuthenticator(b) if n == "alice" else None)
    server.receive_data(client.send(Hello(node_name=b"alice", role=1)))
    client.receive_data(server.send(HelloAck(node_name=b"hub", role=2)))
    assert client.state is server.state is ConnState.OPEN
    return client, server, a, b


def reply(i: int) -> ParityReplyMsg:
    return ParityReplyMsg(block=7, step=i, leaked_bits=16, parities=bytes([i, 255 - i]))


def test_link_exchange_types_are_deferrable_and_checkpoints_are_not() -> None:
    assert {int(t) for t in DEFERRED_MSGS} <= DEFERRABLE_TYPES
    for t in (LinkMsg.BLOCK_START, LinkMsg.VERIFY, LinkMsg.PA, LinkMsg.BLOCK_DONE,
              LinkMsg.CONFIRM, LinkMsg.ABORT):
        assert int(t) not in DEFERRABLE_TYPES
    for t in MsgType:
        assert int(t) not in DEFERRABLE_TYPES


def test_deferred_frames_are_delivered_flagged_and_the_tagged_frame_covers_them() -> None:
    client, server, _, _ = opened()
    spent = client.auth.bits_spent_tx                     # type: ignore[union-attr]
    frames = [client.send(reply(i), session=5, deferred=True) for i in range(3)]
    for f in frames:
        hdr = unpack_header(f)
        assert hdr.flags & FrameFlags.DEFERRED and hdr.akey_block == hdr.akey_offset == 0
        assert f[-TAG_LEN:] == bytes(TAG_LEN)
    events = server.receive_data(b"".join(frames))
    assert [e.deferred for e in events] == [True, True, True]
    assert [int(e.body.step) for e in events] == [0, 1, 2]
    assert server.deferred_backlog[0] == 3
    (ping,) = server.receive_data(client.send(Ping(nonce=1)))
    assert not ping.deferred and server.deferred_backlog == (0, 0)
    # One tag key for four frames.
    assert client.auth.bits_spent_tx - spent == 128       # type: ignore[union-attr]
    assert client.frames_deferred_tx == server.frames_deferred_rx == 3


def test_backlog_tag_equals_poly1305_over_binding_deferred_frames_and_message() -> None:
    r, s = secrets.token_bytes(16), secrets.token_bytes(16)
    binding, d1, d2, m = (secrets.token_bytes(n) for n in (48, 100, 33, 61))
    backlog = Backlog(r, binding)
    backlog.add(d1)
    backlog.add(d2)
    mac = Poly1305(r + s)
    mac.update(binding + d1 + d2 + m)
    assert backlog.tag(m, s) == mac.finalize()
    with pytest.raises(LocalProtocolError):
        backlog.add(d1)                                   # used once only


@pytest.mark.parametrize("which", [0, 1, 2])
def test_any_flipped_bit_in_a_deferred_frame_is_caught_by_the_next_tagged_frame(
        which: int) -> None:
    """Every bit of a deferred frame (header and body): the deferred frame is refused at
    once, or the next tagged frame fails; never are both accepted, and the failing
    tagged frame consumes no tag key."""
    frame_len = None
    positions: list[int] = []
    for trial in range(400):
        client, server, _, b = opened()
        frames = [client.send(reply(i), deferred=True) for i in range(3)]
        tagged = client.send(Ping(nonce=9))
        frame_len = len(frames[which])
        pos = trial % (frame_len - TAG_LEN)
        positions.append(pos)
        bad = bytearray(frames[which])
        bad[pos] ^= 1 << (trial % 8)
        frames[which] = bytes(bad)
        rx_before = b.available_rx_bits()
        with pytest.raises(RemoteProtocolError) as info:
            server.receive_data(b"".join(frames))
            server.receive_data(tagged)
            server.receive_data(b"")      # end of stream: a longer length field shows
        assert server.state is ConnState.ERROR
        assert info.value.code in (ErrorCode.AUTHENTICATION_FAILED, ErrorCode.MALFORMED_FRAME,
                                   ErrorCode.REPLAY_OR_REORDER, ErrorCode.PROTOCOL_VIOLATION,
                                   ErrorCode.UNSUPPORTED_VERSION, ErrorCode.FRAME_TOO_LARGE,
                                   ErrorCode.KEY_EXHAUSTED, ErrorCode.UNKNOWN_MESSAGE_TYPE)
        assert b.available_rx_bits() == rx_before
    assert frame_len is not None and set(positions) == set(range(frame_len - TAG_LEN))


def test_a_body_bit_flip_that_still_parses_fails_at_the_tagged_frame() -> None:
    client, server, _, b = opened()
    frames = [client.send(reply(i), deferred=True) for i in range(2)]
    bad = bytearray(frames[1])
    bad[-TAG_LEN - 1] ^= 0x01                    # a parity bit: still a valid body
    events = server.receive_data(frames[0] + bytes(bad))
    assert len(events) == 2                      # acted on provisionally ...
    before = b.available_rx_bits()
    with pytest.raises(RemoteProtocolError) as info:
        server.receive_data(client.send(Ping(nonce=2)))
    assert info.value.code is ErrorCode.AUTHENTICATION_FAILED     # ... caught here
    assert b.available_rx_bits() == before


def test_only_registered_types_may_be_deferred() -> None:
    client, server, _, _ = opened()
    with pytest.raises(LocalProtocolError):
        client.send(Ping(nonce=1), deferred=True)
    # A hand-built deferred VERIFY (a checkpoint type) is refused by the receiver.
    body = bytes(VerifyMsg(block=1))
    raw = pack_header(len(body), int(LinkMsg.VERIFY), seq=1, flags=FrameFlags.DEFERRED) + body
    with pytest.raises(RemoteProtocolError) as info:
        server.receive_data(raw + bytes(TAG_LEN))
    assert info.value.code is ErrorCode.PROTOCOL_VIOLATION


def test_deferred_frame_naming_a_tag_key_or_carrying_a_tag_is_malformed() -> None:
    for akey, tag in ((1, bytes(TAG_LEN)), (0, b"\x01" + bytes(TAG_LEN - 1))):
        _client, server, _, _ = opened()
        body = bytes(reply(0))
        raw = pack_header(len(body), int(LinkMsg.PARITY_REPLY), seq=1,
                          flags=FrameFlags.DEFERRED, akey_block=akey) + body
        with pytest.raises(RemoteProtocolError) as info:
            server.receive_data(raw + tag)
        assert info.value.code is ErrorCode.MALFORMED_FRAME


def test_no_deferred_frames_before_the_handshake() -> None:
    a, _ = MemoryTagKeys.pair()
    client = SidebandConnection("alice", FrameAuthenticator(a))
    with pytest.raises(LocalProtocolError):
        client.raw_frame(int(LinkMsg.PARITY_REPLY), bytes(reply(0)), deferred=True)


def test_a_dropped_deferred_frame_breaks_the_sequence() -> None:
    client, server, _, _ = opened()
    frames = [client.send(reply(i), deferred=True) for i in range(3)]
    with pytest.raises(RemoteProtocolError) as info:
        server.receive_data(frames[0] + frames[2])
        server.receive_data(b"")
    assert info.value.code is ErrorCode.REPLAY_OR_REORDER


def test_backlog_without_a_tagged_frame_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core, "MAX_DEFERRED_FRAMES", 4)
    client, server, _, _ = opened()
    frames = [client.send(reply(i), deferred=True) for i in range(5)]
    server.receive_data(b"".join(frames[:4]))
    with pytest.raises(RemoteProtocolError) as info:
        server.receive_data(frames[4])
    assert info.value.code is ErrorCode.PROTOCOL_VIOLATION


def test_header_layout_of_a_deferred_frame() -> None:
    client, _, _, _ = opened()
    frame = client.send(reply(3), session=9, deferred=True)
    assert frame[6] == FrameFlags.DEFERRED and frame[HEADER_LEN - 12:HEADER_LEN] == bytes(12)
