"""SecureStream passes trio's own half-closeable stream conformance suite."""

from __future__ import annotations

from functools import partial

import trio
import trio.testing

from qkdnet.apps.keys import memory_key_pair
from qkdnet.apps.stream import SecureStream


def _wrap(pair: tuple[trio.abc.Stream, trio.abc.Stream]) -> tuple[SecureStream, SecureStream]:
    ka, kb = memory_key_pair(seed=7)
    a, b = pair
    return SecureStream(a, ka, session=0x5EC), SecureStream(b, kb, session=0x5EC)


async def test_conformance_over_memory_streams() -> None:
    async def maker() -> tuple[SecureStream, SecureStream]:
        return _wrap(trio.testing.memory_stream_pair())

    async def clogged() -> tuple[SecureStream, SecureStream]:
        return _wrap(trio.testing.lockstep_stream_pair())

    await trio.testing.check_half_closeable_stream(maker, clogged)


async def test_conformance_over_tcp_loopback() -> None:
    send_accepted, accepted = trio.open_memory_channel[trio.SocketStream](10)

    async def accept(stream: trio.SocketStream) -> None:
        await send_accepted.send(stream)
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, accept, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]

        async def maker() -> tuple[SecureStream, SecureStream]:
            client = await trio.open_tcp_stream("127.0.0.1", port)
            server = await accepted.receive()
            return _wrap((client, server))

        await trio.testing.check_half_closeable_stream(maker, None)
        nursery.cancel_scope.cancel()


async def test_conformance_hop_secured_mode_over_memory_streams() -> None:
    # keys=None: the framing used inside hub channels (the hops pad and tag).
    async def maker() -> tuple[SecureStream, SecureStream]:
        a, b = trio.testing.memory_stream_pair()
        return SecureStream(a, None, session=3), SecureStream(b, None, session=3)

    async def clogged() -> tuple[SecureStream, SecureStream]:
        a, b = trio.testing.lockstep_stream_pair()
        return SecureStream(a, None, session=3), SecureStream(b, None, session=3)

    await trio.testing.check_half_closeable_stream(maker, clogged)
