"""Padded SecureStreams are bound to the receiver's fresh nonce (issue 7, "replay").

The attack: frames of an earlier stream that the attacker withheld (so the receiver
never took their key) are played into a later stream with the same session id. They
carry seq 0, 1, 2, …, the right session and genuine tags over key the receiver still
holds; without freshness from the receiver they would be accepted as the new stream's
content. Every test here runs the stream for real over memory streams the attacker
controls byte by byte.
"""

from __future__ import annotations

import re

import pytest
import trio
import trio.testing
from trio.testing import MemoryReceiveStream, MemorySendStream

from qkdnet.apps import wire
from qkdnet.apps.keys import memory_key_pair
from qkdnet.apps.stream import KeyCursor, SecureStream, SecureStreamCore, StreamState
from qkdnet.errors import ErrorCode, LocalProtocolError, RemoteProtocolError

SESSION = 0x51


def _tapped() -> tuple[trio.StapledStream[MemorySendStream, MemoryReceiveStream],
                       MemorySendStream, MemoryReceiveStream]:
    """A transport whose every byte goes to the attacker, who delivers by hand."""
    out, inc = MemorySendStream(), MemoryReceiveStream()
    return trio.StapledStream(out, inc), out, inc


async def _forward(src: MemorySendStream, dst: MemoryReceiveStream) -> None:
    """Deliver what ``src``'s owner sends to ``dst``'s owner, until ``src`` is closed."""
    while data := await src.get_data():
        dst.put_data(data)


async def test_withheld_stream_replayed_into_a_new_stream_is_refused() -> None:
    ka, kb = memory_key_pair(seed=21)

    # Stream S1: the attacker forwards bob's bytes to alice but withholds alice's.
    t_a1, out_a1, in_a1 = _tapped()
    t_b1, out_b1, in_b1 = _tapped()
    alice1 = SecureStream(t_a1, ka, session=SESSION)
    bob1 = SecureStream(t_b1, kb, session=SESSION)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(bob1.receive_some)
        nursery.start_soon(_forward, out_b1, in_a1)
        await alice1.send_all(b"S1: transfer 100 to mallory")
        await alice1.send_eof()
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    withheld = out_a1.get_data_nowait()
    assert withheld  # everything alice sent in S1, never delivered
    in_b1.put_eof()  # the attacker cuts S1: alice believes it failed
    await trio.aclose_forcefully(alice1)
    await trio.aclose_forcefully(bob1)

    # Stream S2, same session id: alice's new frames are dropped, S1's are delivered.
    t_a2, out_a2, in_a2 = _tapped()
    t_b2, out_b2, in_b2 = _tapped()
    alice2 = SecureStream(t_a2, ka, session=SESSION)
    bob2 = SecureStream(t_b2, kb, session=SESSION)
    delivered: list[bytes | bytearray] = []
    errors: list[BaseException] = []

    async def bob_reads() -> None:
        try:
            while True:
                chunk = await bob2.receive_some()
                delivered.append(chunk)
                if not chunk:
                    return
        except trio.BrokenResourceError as err:
            errors.append(err)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(bob_reads)
        nursery.start_soon(_forward, out_b2, in_a2)
        await alice2.send_all(b"S2: the real content")
        await trio.testing.wait_all_tasks_blocked()
        out_a2.get_data_nowait()  # dropped by the attacker
        in_b2.put_data(withheld)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()

    assert delivered == [], f"bob accepted withheld S1 data as S2: {delivered!r}"
    assert len(errors) == 1, "bob's receive_some must fail, not hang"
    err = errors[0]
    assert "Wegman-Carter" in str(err) and "another stream" in str(err)
    assert isinstance(err.__cause__, RemoteProtocolError)
    assert err.__cause__.code == ErrorCode.AUTHENTICATION_FAILED


# ---- the nonce exchange -----------------------------------------------------------------


def _peer_core(kb_take: object = None) -> SecureStreamCore:
    """A hand-driven peer: fixed nonce, its frames written straight onto the transport."""
    return SecureStreamCore(SESSION, kb_take, nonce=bytes(range(0x70, 0x80)))


async def _read_exactly(stream: trio.abc.ReceiveStream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = await stream.receive_some(n - len(buf))
        assert chunk
        buf += chunk
    return bytes(buf)


def test_core_keeps_the_bytes_that_follow_the_nonce_frame_in_one_read() -> None:
    ka, kb = memory_key_pair(seed=22)
    alice = SecureStreamCore(SESSION, ka.take, nonce=bytes(16))
    bob = SecureStreamCore(SESSION, kb.take, nonce=bytes(range(16)))
    assert alice.receive_data(bob.nonce_frame()) == (b"", False)
    assert alice.peer_nonce == bob.nonce
    frames = alice.seal_data(b"payload", KeyCursor(ka.reserve(8 * alice.key_bytes_for(7))))
    eof = alice.seal_eof(KeyCursor(ka.reserve(8 * alice.key_bytes_for(0))))
    stream = alice.nonce_frame() + b"".join(bytes(f) for f in frames) + bytes(eof)
    assert bob.receive_data(stream) == (b"payload", True)  # all in one read
    assert bob.peer_nonce == alice.nonce


def test_core_refuses_to_seal_before_the_peer_nonce() -> None:
    ka, _kb = memory_key_pair(seed=23)
    core = SecureStreamCore(SESSION, ka.take, nonce=bytes(16))
    with pytest.raises(LocalProtocolError, match="nonce"):
        core.seal_data(b"x", KeyCursor(ka.reserve(8 * core.key_bytes_for(1))))
    with pytest.raises(ValueError):
        SecureStreamCore(SESSION, ka.take, nonce=bytes(8))
    with pytest.raises(ValueError):
        SecureStreamCore(SESSION, ka.take, nonce=bytes(16), peer_nonce=bytes(15))


def test_frame_sealed_for_one_receiver_nonce_fails_under_another() -> None:
    # The heart of the fix, without transports: same key, same seq, same session.
    ka, kb = memory_key_pair(seed=24)
    alice = SecureStreamCore(SESSION, ka.take, nonce=bytes(16), peer_nonce=b"\x01" * 16)
    (frame,) = alice.seal_data(b"old", KeyCursor(ka.reserve(8 * alice.key_bytes_for(3))))
    refs, _ = wire.decode_body(memoryview(frame))
    bob = SecureStreamCore(SESSION, kb.take, nonce=b"\x02" * 16, peer_nonce=bytes(16),
                           peek=kb.peek)
    with pytest.raises(RemoteProtocolError, match="another stream") as info:
        bob.receive_data(bytes(frame))
    assert info.value.code == ErrorCode.AUTHENTICATION_FAILED
    kb.peek(refs)  # nothing taken: the key is still there
    right = SecureStreamCore(SESSION, kb.take, nonce=b"\x01" * 16, peer_nonce=bytes(16),
                             peek=kb.peek)
    assert right.receive_data(bytes(frame)) == (b"old", False)


async def test_send_all_reading_the_peer_nonce_keeps_data_that_came_with_it() -> None:
    ka, kb = memory_key_pair(seed=25)
    raw, other = trio.testing.memory_stream_pair()
    alice = SecureStream(other, ka, session=SESSION)
    peer = _peer_core(kb.take)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(alice.send_all, b"to the peer")
        # alice's nonce frame comes first; the peer answers with its own nonce frame
        # and, in the same write, data for alice: all of it lands in one read that
        # alice's send_all makes while it waits for the nonce.
        peer.receive_data(await _read_exactly(raw, wire.NONCE_FRAME_SIZE))
        frames = peer.seal_data(b"from the peer",
                                KeyCursor(kb.reserve(8 * peer.key_bytes_for(13))))
        await raw.send_all(peer.nonce_frame() + b"".join(bytes(f) for f in frames))
    assert alice.state is StreamState.OK
    assert await alice.receive_some() == b"from the peer"
    got, _eof = peer.receive_data(await raw.receive_some())
    assert got == b"to the peer"


@pytest.mark.parametrize("garbage, reason, code", [
    (b"", "before the peer's stream nonce frame (0 of 64", None),
    (None, "before the peer's stream nonce frame (30 of 64", None),
    ("data first", "expected the peer's stream nonce frame first, got type 0x60",
     ErrorCode.PROTOCOL_VIOLATION),
    ("other session", "another stream", ErrorCode.PROTOCOL_VIOLATION),
    ("tag slot", "non-zero", ErrorCode.MALFORMED_FRAME),
    ("long", "stream nonce frame of 65 bytes", ErrorCode.MALFORMED_FRAME),
])
@pytest.mark.parametrize("side", ["receive_some", "send_all"])
async def test_missing_short_or_garbled_nonce_frame_breaks_the_stream(
        garbage: bytes | str | None, reason: str, code: ErrorCode | None, side: str) -> None:
    ka, kb = memory_key_pair(seed=26)
    raw, other = trio.testing.memory_stream_pair()
    stream = SecureStream(other, kb, session=SESSION)
    good = wire.encode_nonce_frame(SESSION, bytes(range(16)))
    if garbage is None:
        data = good[:30]
    elif garbage == "data first":
        core = SecureStreamCore(SESSION, ka.take, nonce=bytes(16), peer_nonce=bytes(16))
        data = b"".join(bytes(f) for f in core.seal_data(
            b"hi", KeyCursor(ka.reserve(8 * core.key_bytes_for(2)))))
    elif garbage == "other session":
        data = wire.encode_nonce_frame(SESSION + 1, bytes(16))
    elif garbage == "tag slot":
        data = good[:-1] + b"\x01"
    elif garbage == "long":
        data = (61).to_bytes(4, "big") + good[4:] + b"\x00"
    else:
        assert isinstance(garbage, bytes)
        data = garbage
    await raw.send_all(data)
    await raw.send_eof()
    with trio.fail_after(5), pytest.raises(trio.BrokenResourceError,
                                           match=re.escape(reason)) as info:
        if side == "send_all":
            await stream.send_all(b"never sealed")
        else:
            await stream.receive_some()
    assert stream.state is StreamState.BROKEN
    if code is not None:
        cause = info.value.__cause__
        assert isinstance(cause, RemoteProtocolError) and cause.code == code
    # Only the stream's own nonce frame went out: nothing was sealed.
    assert wire.decode_nonce_frame(await raw.receive_some(), SESSION)


async def _both_ends_send_first(a: SecureStream, b: SecureStream) -> None:
    got: dict[str, bytes] = {}

    async def run(me: SecureStream, name: str, data: bytes) -> None:
        await me.send_all(data)  # before either end has read anything
        await me.send_eof()
        buf = bytearray()
        while chunk := await me.receive_some():
            buf += chunk
        got[name] = bytes(buf)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, a, "a", b"a" * 300_000)
            nursery.start_soon(run, b, "b", b"b" * 5)
    assert got == {"a": b"b" * 5, "b": b"a" * 300_000}


async def test_both_ends_send_first_over_loopback_tcp() -> None:
    ka, kb = memory_key_pair(seed=27)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listeners[0].accept()
    await listeners[0].aclose()
    a, b = SecureStream(client, ka, session=SESSION), SecureStream(server, kb, session=SESSION)
    await _both_ends_send_first(a, b)
    await a.aclose()
    await b.aclose()


async def test_both_ends_send_first_over_lockstep_streams_after_handshake() -> None:
    # On a transport whose send waits for the peer to read, two ends that both send
    # first deadlock with or without SecureStream; do_handshake is what avoids it.
    ka, kb = memory_key_pair(seed=28)
    ra, rb = trio.testing.lockstep_stream_pair()
    a, b = SecureStream(ra, ka, session=SESSION), SecureStream(rb, kb, session=SESSION)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.do_handshake)
        nursery.start_soon(b.do_handshake)
    assert ka.tx.reserved_bits == kb.tx.reserved_bits == 0  # the nonces cost no key


async def test_concurrent_send_and_receive_tasks_at_both_ends() -> None:
    # Each end has a sending task and a receiving task from the start, so the nonce
    # is needed by a send_all while a receive_some in the other task is reading.
    ka, kb = memory_key_pair(seed=29)
    ra, rb = trio.testing.memory_stream_pair()
    a, b = SecureStream(ra, ka, session=SESSION), SecureStream(rb, kb, session=SESSION)
    got: dict[str, bytes] = {}

    async def send(me: SecureStream, data: bytes) -> None:
        for i in range(0, len(data), 1000):
            await me.send_all(data[i:i + 1000])
        await me.send_eof()

    async def receive(me: SecureStream, name: str) -> None:
        buf = bytearray()
        while chunk := await me.receive_some(777):
            buf += chunk
        got[name] = bytes(buf)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive, a, "a")
            nursery.start_soon(receive, b, "b")
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(send, a, b"x" * 20_000)
            nursery.start_soon(send, b, b"y" * 30_000)
    assert got == {"a": b"y" * 30_000, "b": b"x" * 20_000}


async def test_each_stream_draws_a_fresh_nonce() -> None:
    ka, kb = memory_key_pair(seed=30)
    seen = set()
    for _ in range(5):
        raw, other = trio.testing.memory_stream_pair()
        stream = SecureStream(other, kb, session=SESSION)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.do_handshake)
            seen.add(wire.decode_nonce_frame(await _read_exactly(raw, 64), SESSION))
            await raw.send_all(wire.encode_nonce_frame(SESSION, bytes(16)))
        assert "nonce" not in repr(stream) and stream.state is StreamState.OK
    assert len(seen) == 5
    del ka


async def test_closing_before_the_exchange_sends_no_unauthenticated_eof() -> None:
    ka, kb = memory_key_pair(seed=31)
    ra, rb = trio.testing.memory_stream_pair()
    a, b = SecureStream(ra, ka, session=SESSION), SecureStream(rb, kb, session=SESSION)
    await a.aclose()  # never exchanged nonces: it cannot seal an EOF, so it just closes
    # b's own nonce cannot be delivered, or the transport ends before a's: either way
    # a broken stream, never a clean (unauthenticated) end of stream.
    with pytest.raises(trio.BrokenResourceError,
                       match=r"before the peer's stream nonce|transport broke"):
        await b.receive_some()
    assert ka.tx.reserved_bits == 0


async def test_hop_secured_mode_sends_no_nonce_and_its_bytes_are_unchanged() -> None:
    raw, other = trio.testing.memory_stream_pair()
    stream = SecureStream(other, None, session=SESSION)
    await stream.send_all(b"hop")
    assert await raw.receive_some() == wire.encode_hop_frame(
        wire.AppMsgType.HOP_DATA, SESSION, 0, b"hop")


async def test_receive_some_timing_out_during_the_exchange_raises_plain_cancelled() -> None:
    ka, kb = memory_key_pair(seed=32)
    # Memory streams: the nonce goes out at once, the read then waits; a timeout
    # there leaves the stream usable, and the caller sees a plain Cancelled.
    ra, rb = trio.testing.memory_stream_pair()
    a, b = SecureStream(ra, ka, session=SESSION), SecureStream(rb, kb, session=SESSION)
    caught: list[BaseException] = []
    with trio.move_on_after(0.05):
        try:
            await b.receive_some()
        except BaseException as err:
            caught.append(err)
            raise
    assert len(caught) == 1 and isinstance(caught[0], trio.Cancelled)
    assert b.state is StreamState.OK
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.send_all, b"after the timeout")
        assert await b.receive_some() == b"after the timeout"
    # Lockstep: the nonce frame cannot go out until the peer reads, so the timeout
    # hits it in flight; the stream breaks (as SSLStream does), still a plain Cancelled.
    ra2, _rb2 = trio.testing.lockstep_stream_pair()
    c = SecureStream(ra2, ka, session=SESSION)
    caught.clear()
    with trio.move_on_after(0.05):
        try:
            await c.receive_some()
        except BaseException as err:
            caught.append(err)
            raise
    assert len(caught) == 1 and isinstance(caught[0], trio.Cancelled)
    assert c.state is StreamState.BROKEN
