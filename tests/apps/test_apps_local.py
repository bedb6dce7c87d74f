"""Apps reach a node through its local Unix socket (NodeClient) exactly as in-process."""

from __future__ import annotations

import os
import stat
from functools import partial
from pathlib import Path

import pytest
import trio

from qkdnet.apps.api import open_secure_stream, serve_secure
from qkdnet.apps.local import LocalChannelError, NodeClient, serve_local
from qkdnet.apps.stream import SecureStream
from qkdnet.hub.node import embedded_network


async def test_streams_through_local_sockets(tmp_path: Path) -> None:
    async with embedded_network(["alice", "bob"], tmp_path / "net",
                                prefill_key=8 << 20) as net, trio.open_nursery() as nursery:
        a_sock = await nursery.start(serve_local, net["alice"], tmp_path / "a" / "node.sock")
        b_sock = await nursery.start(serve_local, net["bob"], tmp_path / "b" / "node.sock")
        assert stat.S_IMODE(os.stat(a_sock).st_mode) == 0o600
        alice, bob = NodeClient(a_sock), NodeClient(b_sock)

        async def echo(stream: SecureStream) -> None:
            data = bytearray()
            while chunk := await stream.receive_some():
                data += chunk
            await stream.send_all(bytes(reversed(data)))

        await nursery.start(partial(serve_secure, echo, "echo", node=bob))
        payload = os.urandom(500_000)
        stream = await open_secure_stream("bob", "echo", node=alice)
        await stream.send_all(payload)
        await stream.send_eof()
        got = bytearray()
        while chunk := await stream.receive_some():
            got += chunk
        assert bytes(got) == payload[::-1]
        await stream.aclose()
        status = await alice.fetch_status()
        assert status["name"] == "alice" and status["connected"]
        with pytest.raises(LocalChannelError):
            await open_secure_stream("bob", "nobody-listens", node=alice)
        nursery.cancel_scope.cancel()


async def test_missing_daemon_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(LocalChannelError, match="qkdnet node"):
        await NodeClient(tmp_path / "none.sock").open_channel("bob", "x")
