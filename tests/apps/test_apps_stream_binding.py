"""Padded SecureStreams are bound to the receiver's fresh nonce (issue 7, "replay").

The attack: frames of an earlier stream that the attacker withheld (so the receiver
never took their key) are played into a later stream with the same session id. They
carry seq 0, 1, 2, …, the right session and genuine tags over key the receiver still
holds; without freshness from the receiver they would be accepted as the new stream's
content. Every test here runs the stream for real over memory streams the attacker
controls byte by byte.
"""

from __future__ import annotations

import trio
import trio.testing
from trio.testing import MemoryReceiveStream, MemorySendStream

from qkdnet.apps.keys import memory_key_pair
from qkdnet.apps.stream import SecureStream
from qkdnet.errors import ErrorCode, RemoteProtocolError

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
