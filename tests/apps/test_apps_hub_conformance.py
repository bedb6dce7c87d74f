"""SecureStream over real sockets through a hub: trio's conformance suite, and a
stream between two spokes with the real SpokeNode and hub daemon."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing

from qkdnet.apps.api import open_secure_stream, serve_secure, wrap_channel
from qkdnet.apps.stream import FAIL_FAST, SecureStream
from qkdnet.hub.node import embedded_network

pytestmark = pytest.mark.slow


async def test_conformance_through_the_hub(tmp_path: Path) -> None:
    async with embedded_network(["alice", "bob"], tmp_path, prefill_key=40 << 20) as net:
        listener = net["bob"].listen("conformance")

        async def maker() -> tuple[SecureStream, SecureStream]:
            a = await net["alice"].open_channel("bob", "conformance")
            b = await listener.accept()
            return wrap_channel(a), wrap_channel(b)

        await trio.testing.check_half_closeable_stream(maker, None)


async def test_open_secure_stream_and_serve_secure_share_a_node(tmp_path: Path) -> None:
    async with embedded_network(["alice", "bob"], tmp_path, prefill_key=4 << 20) as net:
        async def upper(stream: SecureStream) -> None:
            data = bytearray()
            while chunk := await stream.receive_some():
                data += chunk
            await stream.send_all(bytes(data).upper())

        async def count(stream: SecureStream) -> None:
            n = 0
            while chunk := await stream.receive_some():
                n += len(chunk)
            await stream.send_all(str(n).encode())

        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve_secure, upper, "upper", node=net["bob"]))
            await nursery.start(partial(serve_secure, count, "count", node=net["bob"]))
            for service, payload, expect in (("upper", b"quantum", b"QUANTUM"),
                                             ("count", b"x" * 300_000, b"300000")):
                stream = await open_secure_stream("bob", service, node=net["alice"])
                await stream.send_all(payload)
                await stream.send_eof()
                got = bytearray()
                while chunk := await stream.receive_some():
                    got += chunk
                assert bytes(got) == expect
                await stream.aclose()
            nursery.cancel_scope.cancel()


async def test_fail_fast_through_the_hub_names_the_shortage(tmp_path: Path) -> None:
    # 64 kbit of (TEST-ONLY) key per direction: a 100 kB write cannot be padded.
    async with embedded_network(["alice", "bob"], tmp_path, prefill_key=1 << 16) as net:
        listener = net["bob"].listen("ff")
        chan = await net["alice"].open_channel("bob", "ff")
        await listener.accept()
        stream = wrap_channel(chan, policy=FAIL_FAST)
        await stream.send_all(b"small enough")
        with pytest.raises(trio.BrokenResourceError, match="key exhausted") as info:
            await stream.send_all(b"x" * 100_000)
        causes = []
        err: BaseException | None = info.value
        while err is not None:
            causes.append(type(err).__name__)
            err = err.__cause__
        assert "KeyExhausted" in causes
