"""SecureStream on the durable key store's end-to-end pools, over TCP loopback."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import trio

from qkdnet.apps.keys import KeyStoreStreamKeys
from qkdnet.apps.stream import SecureStream
from qkdnet.keystore import BlockMeta, KeyStore


def _meta() -> BlockMeta:
    return BlockMeta("test", 0.0, 1e-10, 1e-15, 0, 0)


def _provision(alice: KeyStore, bob: KeyStore, n_bytes: int) -> None:
    # What alice stores as (bob, e2e-tx) bob stores as (alice, e2e-rx), same ids.
    for purpose_a, purpose_b, base in (("e2e-tx", "e2e-rx", 1), ("e2e-rx", "e2e-tx", 1 << 40)):
        for i in range(0, n_bytes, 1 << 18):
            key = os.urandom(min(1 << 18, n_bytes - i))
            alice.add_block("bob", purpose_a, base + i, key, 8 * len(key), _meta())
            bob.add_block("alice", purpose_b, base + i, key, 8 * len(key), _meta())


async def test_stream_over_tcp_with_keystore_key(tmp_path: Path) -> None:
    alice = KeyStore(tmp_path / "alice.db")
    bob = KeyStore(tmp_path / "bob.db")
    _provision(alice, bob, 1 << 20)
    before = alice.available("bob", "e2e-tx")
    payload = os.urandom(300_000)
    got = bytearray()

    async def serve(stream: trio.SocketStream) -> None:
        s = SecureStream(stream, KeyStoreStreamKeys(bob, "alice"), session=1)
        while chunk := await s.receive_some():
            got.extend(chunk)
        await s.send_all(b"thanks")
        await s.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        client = SecureStream(await trio.open_tcp_stream("127.0.0.1", port),
                              KeyStoreStreamKeys(alice, "bob"), session=1)
        await client.send_all(payload)
        await client.send_eof()
        assert await client.receive_some() == b"thanks"
        assert await client.receive_some() == b""
        await client.aclose()
        nursery.cancel_scope.cancel()
    assert bytes(got) == payload
    spent = before - alice.available("bob", "e2e-tx")
    # the store leases key in 64 kbit steps; the stream itself spends ~1.0003 bits/bit
    assert client.stats.key_per_payload_bit() <= 1.03
    assert spent <= 1.03 * 8 * len(payload) + alice.lease_bits
    alice.close()
    bob.close()
