"""The trio adapter over loopback TCP: handshake, routing, close, errors, pcap recording."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import trio
import trio.testing
from scapy.fields import IntField
from scapy.packet import bind_layers

from qkdnet.auth import FrameAuthenticator, MemoryTagKeys
from qkdnet.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from qkdnet.pcap import PcapRecorder, register_summarizer, summarize
from qkdnet.sideband import (
    BasicNode,
    ConnState,
    FrameReceived,
    FrameRouter,
    PeerAborted,
    SidebandChannel,
    connect_sideband,
    serve_basic_node,
    serve_sideband,
)
from qkdnet.wire import MsgType, Ping, QkdBody, QkdHeader


class _TestBlock(QkdBody):
    """A stand-in link-layer body (type 0x3E) with summary fields."""

    name = "QKD TEST_BLOCK"
    fields_desc = [IntField("block_bits", 0), IntField("leaked_bits", 0)]  # noqa: RUF012
    summary_fields = ("block_bits", "leaked_bits")


bind_layers(QkdHeader, _TestBlock, type=0x3E)
register_summarizer(0x3E, lambda h, b: {"qber": 0.02, "event": f"block {b.block_bits}"})


def _resolver(keys: MemoryTagKeys, name: str = "alice"):  # type: ignore[no-untyped-def]
    return lambda peer: FrameAuthenticator(keys) if peer == name else None


async def test_handshake_ping_close_and_stats(nursery: trio.Nursery) -> None:
    a, b = MemoryTagKeys.pair()
    node: BasicNode = await nursery.start(functools.partial(
        serve_basic_node, "hub", _resolver(b)))
    chan = await connect_sideband("127.0.0.1", node.port, local_name="alice",
                                  auth=FrameAuthenticator(a))
    assert chan.peer_name == "hub" and chan.conn.state is ConnState.OPEN
    await chan.ping()
    await chan.aclose()
    assert chan.conn.state is ConnState.CLOSED
    await trio.testing.wait_all_tasks_blocked()
    assert node.stats.connections == node.stats.closed_gracefully == 1
    assert chan.conn.auth is not None and chan.conn.auth.bits_spent_tx == 3 * 128


async def test_router_dispatches_layer_frames_on_one_connection(nursery: trio.Nursery) -> None:
    a, b = MemoryTagKeys.pair()
    seen: list[FrameReceived] = []

    async def link_handler(chan: SidebandChannel, ev: FrameReceived) -> None:
        seen.append(ev)
        await chan.send(_TestBlock(block_bits=int(ev.body.block_bits) * 2), session=ev.session)

    router = FrameRouter()
    router.register(0x3E, link_handler)
    with pytest.raises(LocalProtocolError):
        router.register([0x3E], link_handler)  # one handler per type
    with pytest.raises(LocalProtocolError):
        router.register(MsgType.PING, link_handler)  # connection-level types are built in
    node: BasicNode = await nursery.start(functools.partial(
        serve_basic_node, "hub", _resolver(b), router=router))
    chan = await connect_sideband("127.0.0.1", node.port, local_name="alice",
                                  auth=FrameAuthenticator(a))
    await chan.send(_TestBlock(block_bits=21), session=9)
    ev = await chan.receive()
    assert (ev.type, ev.session, int(ev.body.block_bits)) == (0x3E, 9, 42)
    assert [int(e.body.block_bits) for e in seen] == [21]
    await chan.aclose()


async def test_unhandled_type_aborts_with_unknown_message_type(nursery: trio.Nursery) -> None:
    a, b = MemoryTagKeys.pair()
    node: BasicNode = await nursery.start(functools.partial(
        serve_basic_node, "hub", _resolver(b)))
    chan = await connect_sideband("127.0.0.1", node.port, local_name="alice",
                                  auth=FrameAuthenticator(a))
    await chan.send(_TestBlock(block_bits=1))
    with pytest.raises(PeerAborted) as info:
        await chan.run()
    assert info.value.code == ErrorCode.UNKNOWN_MESSAGE_TYPE
    await trio.testing.wait_all_tasks_blocked()
    assert node.stats.errors == {"UNKNOWN_MESSAGE_TYPE": 1}


async def test_unknown_peer_is_refused(nursery: trio.Nursery) -> None:
    a, b = MemoryTagKeys.pair()
    node: BasicNode = await nursery.start(functools.partial(
        serve_basic_node, "hub", _resolver(b, "bob")))
    with pytest.raises(RemoteProtocolError) as info:
        await connect_sideband("127.0.0.1", node.port, local_name="alice",
                               auth=FrameAuthenticator(a), timeout=5)
    # The hub cannot sign an ERROR for a stranger: it just hangs up.
    assert info.value.code is ErrorCode.PROTOCOL_VIOLATION
    await trio.testing.wait_all_tasks_blocked()
    assert node.stats.errors == {"UNKNOWN_PEER": 1}


async def test_channel_side_rejects_bad_input_and_sends_error(nursery: trio.Nursery) -> None:
    """A server handler using receive() sees RemoteProtocolError; the peer gets ERROR."""
    a, b = MemoryTagKeys.pair()
    caught: list[RemoteProtocolError] = []

    async def handler(chan: SidebandChannel) -> None:
        try:
            await chan.receive()
        except RemoteProtocolError as err:
            caught.append(err)
            raise

    listeners = await nursery.start(functools.partial(
        serve_sideband, handler, 0, local_name="hub", auth_for_peer=_resolver(b),
        host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    chan = await connect_sideband("127.0.0.1", port, local_name="alice",
                                  auth=FrameAuthenticator(a))
    frame = bytearray(chan.conn.send(Ping()))
    frame[-1] ^= 1
    await chan.send_raw(bytes(frame))
    with pytest.raises(PeerAborted) as info:
        await chan.run()
    assert info.value.code == ErrorCode.AUTHENTICATION_FAILED
    await trio.testing.wait_all_tasks_blocked()  # the server task finishes its abort
    assert [e.code for e in caught] == [ErrorCode.AUTHENTICATION_FAILED]


async def test_pcap_recorder_and_summary(nursery: trio.Nursery, tmp_path: Path) -> None:
    a, b = MemoryTagKeys.pair()
    recorder = PcapRecorder(tmp_path / "node.pcap")
    router = FrameRouter()

    async def link_handler(chan: SidebandChannel, ev: FrameReceived) -> None:
        await chan.send(_TestBlock(block_bits=1000, leaked_bits=77))

    router.register(0x3E, link_handler)
    node: BasicNode = await nursery.start(functools.partial(
        serve_basic_node, "hub", _resolver(b), pcap=recorder, router=router))
    chan = await connect_sideband("127.0.0.1", node.port, local_name="alice",
                                  auth=FrameAuthenticator(a))
    await chan.send(_TestBlock(block_bits=1000, leaked_bits=0))
    await chan.receive()
    await chan.ping()
    # A bad tag: the node aborts; the capture must show it.
    frame = bytearray(chan.conn.send(Ping()))
    frame[-1] ^= 1
    await chan.send_raw(bytes(frame))
    with pytest.raises(PeerAborted):
        await chan.run()
    await trio.testing.wait_all_tasks_blocked()
    recorder.close()
    s = summarize(tmp_path / "node.pcap")
    assert len(s["sessions"]) == 1
    sess = s["sessions"][0]
    assert sess["names"] == {sess["client"]: "alice", sess["server"]: "hub"}
    assert sess["end"] == "aborted (AUTHENTICATION_FAILED)"
    assert s["per_type"]["PING"]["frames"] == 2 and s["per_type"]["PONG"]["frames"] == 1
    assert s["per_type"]["TEST_BLOCK"] == {"frames": 2, "bytes": 2 * (48 + 8)}
    assert s["block_bits"] == [1000, 1000] and s["leaked_bits"] == 77
    assert s["qber"] == [0.02, 0.02]
    assert s["auth_failures"] == 1 and s["aborts"][0]["code"] == "AUTHENTICATION_FAILED"
    events = [e["event"] for e in s["timeline"]]
    assert events[:3] == ["HELLO from alice", "HELLO_ACK from hub", "block 1000"]
    assert events[-1].startswith("ERROR AUTHENTICATION_FAILED")


async def test_handler_protocol_error_sends_error_and_concurrent_receive_is_refused(
        nursery: trio.Nursery) -> None:
    a, b = MemoryTagKeys.pair()

    async def strict_handler(chan: SidebandChannel, ev: FrameReceived) -> None:
        raise RemoteProtocolError("block bits out of range", ErrorCode.LINK_ABORTED)

    router = FrameRouter()
    router.register(0x3E, strict_handler)
    node: BasicNode = await nursery.start(functools.partial(
        serve_basic_node, "hub", _resolver(b), router=router))
    chan = await connect_sideband("127.0.0.1", node.port, local_name="alice",
                                  auth=FrameAuthenticator(a))
    got: list[FrameReceived] = []

    async def receive_one() -> None:
        got.append(await chan.receive())

    async with trio.open_nursery() as inner:
        inner.start_soon(receive_one)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await chan.receive()
        await chan.send(_TestBlock(block_bits=1))
    (ev,) = got
    assert ev.type == MsgType.ERROR and int(ev.body.code) == ErrorCode.LINK_ABORTED
    assert chan.conn.peer_error == (int(ErrorCode.LINK_ABORTED), "block bits out of range")
