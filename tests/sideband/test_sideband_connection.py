"""The sans-I/O SidebandConnection: handshake, state table, every rejection path."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from scapy.packet import Packet

from qkdnet.auth import FrameAuthenticator, MemoryTagKeys
from qkdnet.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from qkdnet.sideband import (
    TRANSITIONS,
    ConnState,
    FrameReceived,
    SidebandConnection,
)
from qkdnet.wire import Close, Error, Hello, HelloAck, MsgType, Ping, Pong, pack_header

SPEC = (Path(__file__).resolve().parents[2] / "spec" / "protocol.md").read_text()


def pair(max_frame_size: int = 1 << 16) -> tuple[SidebandConnection, SidebandConnection]:
    """An initiator 'alice' and a responder 'hub' that resolves alice's keys by name."""
    a, b = MemoryTagKeys.pair()
    client = SidebandConnection("alice", FrameAuthenticator(a), max_frame_size)
    server = SidebandConnection(
        "hub", lambda name: FrameAuthenticator(b) if name == "alice" else None,
        max_frame_size)
    return client, server


def deliver(src: SidebandConnection, dst: SidebandConnection, body: Packet,
            **kw: int) -> list[FrameReceived]:
    return dst.receive_data(src.send(body, **kw))


def opened() -> tuple[SidebandConnection, SidebandConnection]:
    client, server = pair()
    (hello,) = deliver(client, server, Hello(node_name=b"alice", role=1))
    assert hello.type == MsgType.HELLO and server.peer_name == "alice"
    (ack,) = deliver(server, client, HelloAck(node_name=b"hub", role=2))
    assert ack.type == MsgType.HELLO_ACK and client.peer_name == "hub"
    assert client.state is server.state is ConnState.OPEN
    return client, server


def rejects(conn: SidebandConnection, data: bytes, code: ErrorCode) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        conn.receive_data(data)
    assert info.value.code is code, info.value
    assert conn.state is ConnState.ERROR


def test_handshake_ping_and_graceful_close() -> None:
    client, server = opened()
    (ev,) = deliver(client, server, Ping(nonce=42), session=3, flags=1)
    assert (ev.type, ev.session, ev.flags, ev.seq, int(ev.body.nonce)) == (
        MsgType.PING, 3, 1, 1, 42)
    deliver(server, client, Pong(nonce=42))
    deliver(client, server, Close())
    assert (client.state, server.state) == (ConnState.CLOSE_SENT, ConnState.CLOSE_RECEIVED)
    deliver(server, client, Close())
    assert client.state is server.state is ConnState.CLOSED
    assert client.frames_sent == server.frames_received == 3


def test_byte_at_a_time_and_coalesced() -> None:
    client, server = opened()
    data = b"".join(client.send(Ping(nonce=i)) for i in range(5))
    events = []
    for i in range(len(data)):
        events += server.receive_data(data[i:i + 1])
    assert [int(e.body.nonce) for e in events] == list(range(5))
    data = b"".join(client.send(Ping(nonce=i)) for i in range(5))
    assert [int(e.body.nonce) for e in server.receive_data(data)] == list(range(5))


def test_unknown_peer_and_non_hello_first() -> None:
    a, _ = MemoryTagKeys.pair()
    client = SidebandConnection("mallory", FrameAuthenticator(a))
    _, server = pair()
    rejects(server, client.send(Hello(node_name=b"mallory")), ErrorCode.UNKNOWN_PEER)
    assert server.error_frame(server.error) == b""  # cannot sign: no keys for mallory
    client, server = pair()
    rejects(server, client.raw_frame(MsgType.PING, bytes(Ping())),
            ErrorCode.PROTOCOL_VIOLATION)


def test_forged_hello_is_not_acted_on() -> None:
    client, server = pair()
    frame = bytearray(client.send(Hello(node_name=b"alice")))
    frame[-1] ^= 1
    rejects(server, bytes(frame), ErrorCode.AUTHENTICATION_FAILED)
    assert server.peer_name is None and server.frames_received == 0
    # No key is spent answering a stranger: the server just hangs up.
    assert server.error_frame(server.error) == b""  # type: ignore[arg-type]
    assert server.auth is not None and server.auth.bits_spent_tx == 0


@pytest.mark.parametrize("mutate,code", [
    (lambda c: c.raw_frame(MsgType.PING, bytes(Ping()), version=2),
     ErrorCode.UNSUPPORTED_VERSION),
    (lambda c: c.raw_frame(MsgType.PING, bytes(Ping()), seq=5), ErrorCode.REPLAY_OR_REORDER),
    (lambda c: c.raw_frame(MsgType.PING, bytes(Ping()), reserved=1),
     ErrorCode.MALFORMED_FRAME),
    (lambda c: c.raw_frame(0x0F, b"abc"), ErrorCode.UNKNOWN_MESSAGE_TYPE),
    (lambda c: c.raw_frame(0x00, b""), ErrorCode.UNKNOWN_MESSAGE_TYPE),
    (lambda c: c.raw_frame(0xF0, b""), ErrorCode.UNKNOWN_MESSAGE_TYPE),
    (lambda c: c.raw_frame(MsgType.PING, b"\x01\x02"), ErrorCode.MALFORMED_FRAME),
    (lambda c: c.raw_frame(MsgType.PING, bytes(Ping()) + b"x"), ErrorCode.MALFORMED_FRAME),
    (lambda c: c.raw_frame(MsgType.HELLO, bytes(Hello(node_name=b"alice"))),
     ErrorCode.PROTOCOL_VIOLATION),
    (lambda c: c.raw_frame(MsgType.HELLO_ACK, bytes(HelloAck(node_name=b"x"))),
     ErrorCode.PROTOCOL_VIOLATION),
    (lambda c: c.raw_frame(MsgType.ERROR, b"\x00"), ErrorCode.MALFORMED_FRAME),
    # reason_len says 100, only 10 bytes follow: scapy would quietly take 10.
    (lambda c: c.raw_frame(MsgType.ERROR, b"\x00\x01\x00\x64" + b"r" * 10),
     ErrorCode.MALFORMED_FRAME),
    (lambda c: c.raw_frame(MsgType.HELLO_ACK, b"\x09hub"), ErrorCode.MALFORMED_FRAME),
])
def test_bad_frames_rejected_with_code(mutate, code) -> None:  # type: ignore[no-untyped-def]
    client, server = opened()
    rejects(server, mutate(client), code)
    # The machine stays in ERROR and ignores anything after.
    assert server.receive_data(client.send(Ping())) == []


def test_hello_semantics() -> None:
    client, server = pair()
    rejects(server, client.raw_frame(MsgType.HELLO, bytes(Hello(node_name=b"alice",
                                                                versions=[2, 3]))),
            ErrorCode.UNSUPPORTED_VERSION)
    client, server = pair()
    rejects(server, client.raw_frame(MsgType.HELLO, bytes(Hello(node_name=b"\xff\xfe"))),
            ErrorCode.MALFORMED_FRAME)
    client, server = pair()
    rejects(server, client.raw_frame(MsgType.HELLO, bytes(Hello(node_name=b"a" * 65))),
            ErrorCode.MALFORMED_FRAME)


def test_length_checked_before_buffering() -> None:
    _client, server = opened()
    rejects(server, pack_header(1 << 20, MsgType.PING, seq=1)[:4], ErrorCode.FRAME_TOO_LARGE)
    assert server.buffered == 0 and server.max_buffered < 100  # the HELLO was the largest
    _client, server = opened()
    rejects(server, b"\x00\x00\x00\x2b", ErrorCode.MALFORMED_FRAME)  # 43 < 44


def test_truncated_frame_at_end_of_stream() -> None:
    client, server = opened()
    frame = client.send(Ping())
    assert server.receive_data(frame[:-5]) == []
    rejects(server, b"", ErrorCode.MALFORMED_FRAME)


def test_good_frames_before_a_bad_one_are_delivered_then_error() -> None:
    client, server = opened()
    good = client.send(Ping(nonce=1))
    bad = bytearray(client.send(Ping(nonce=2)))
    bad[-3] ^= 4
    events = server.receive_data(good + bytes(bad) + client.send(Ping(nonce=3)))
    assert [int(e.body.nonce) for e in events] == [1]
    assert server.state is ConnState.ERROR
    with pytest.raises(RemoteProtocolError) as info:
        server.raise_pending()
    assert info.value.code is ErrorCode.AUTHENTICATION_FAILED


def test_replay_and_reorder() -> None:
    client, server = opened()
    _f1, f2 = client.send(Ping(nonce=1)), client.send(Ping(nonce=2))
    rejects(server, f2, ErrorCode.REPLAY_OR_REORDER)  # f2 before f1
    client, server = opened()
    server.receive_data(f := client.send(Ping()))
    rejects(server, f, ErrorCode.REPLAY_OR_REORDER)


def test_error_frame_and_peer_error() -> None:
    client, server = opened()
    err = RemoteProtocolError("bad thing", ErrorCode.MALFORMED_FRAME)
    frame = server.error_frame(err)
    assert server.state is ConnState.ERROR
    (ev,) = client.receive_data(frame)
    assert ev.type == MsgType.ERROR and int(ev.body.code) == ErrorCode.MALFORMED_FRAME
    assert client.state is ConnState.ERROR and client.peer_error == (2, "bad thing")


def test_local_misuse() -> None:
    client, server = pair()
    with pytest.raises(LocalProtocolError):
        client.send(Ping())  # before HELLO
    with pytest.raises(LocalProtocolError):
        server.send(HelloAck())  # responder: no HELLO yet, no keys
    client, _ = opened()
    with pytest.raises(LocalProtocolError):
        client.send(Ping(), msg_type=MsgType.HELLO)
    with pytest.raises(LocalProtocolError):
        client.raw_frame(MsgType.PING, b"x" * (1 << 16))  # over max_frame_size
    with pytest.raises(LocalProtocolError):
        SidebandConnection("x", FrameAuthenticator(MemoryTagKeys.pair()[0]), 10)


def test_repr_has_no_key_material() -> None:
    client, _ = opened()
    auth = client.auth
    assert auth is not None
    keys = auth.keys
    assert isinstance(keys, MemoryTagKeys)
    text = repr(client) + repr(FrameReceived(1, 0, Ping(), 0))
    assert keys.hash_key_tx.hex() not in text and "hash" not in text


def test_spec_state_table_is_the_code_table() -> None:
    block = SPEC.split("<!-- transitions -->", 1)[1]
    rows = re.findall(r"^\| (\w+) \| (send|recv) \| (\w+) \| (\w+) \|$", block, re.M)
    spec = {(s, d, k): n for s, d, k, n in rows}
    code = {(s.name, d.value, k): n.name for (s, d, k), n in TRANSITIONS.items()}
    assert spec == code


def test_error_body_reason_is_capped_and_error_is_authenticated() -> None:
    client, server = opened()
    frame = server.error_frame(ErrorCode.INTERNAL_ERROR, "x" * 1000)
    (ev,) = client.receive_data(frame)
    assert isinstance(ev.body, Error) and len(bytes(ev.body.reason)) == 200
