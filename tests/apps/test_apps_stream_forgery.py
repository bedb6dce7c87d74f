"""A forged SecureStream frame consumes no key at the receiver (security review A2).

The receiver peeks the key a frame names, checks the Wegman-Carter tag, and takes the
key only if the tag holds; so the honest frame that names the same key still opens.
Real key stores (SQLite) on both ends.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import pytest
import trio

from qkdnet.apps import wire
from qkdnet.apps.keys import KeyStoreStreamKeys
from qkdnet.apps.stream import KeyCursor, SecureStream, SecureStreamCore, peek_function
from qkdnet.errors import ErrorCode, RemoteProtocolError
from qkdnet.keystore import BlockMeta, KeySegment, KeyStore

#: Fixed test nonces (a real stream draws its own): alice sends, bob receives. Cores
#: made with both nonces skip the STREAM_NONCE exchange.
NONCE_A, NONCE_B = bytes(range(0x40, 0x50)), bytes(range(0x50, 0x60))

META = BlockMeta("test", 0.0, 1e-10, 1e-15, 0, 0)


@pytest.fixture
def stores(tmp_path: Path):  # type: ignore[no-untyped-def]
    """alice sends to bob: alice's (bob, e2e-tx) mirrors bob's (alice, e2e-rx)."""
    alice, bob = KeyStore(tmp_path / "alice.db"), KeyStore(tmp_path / "bob.db")
    for i in range(4):
        key = os.urandom(1 << 14)
        alice.add_block("bob", "e2e-tx", 100 + i, key, 8 * len(key), META)
        bob.add_block("alice", "e2e-rx", 100 + i, key, 8 * len(key), META)
    yield alice, bob
    alice.close()
    bob.close()


def _seal(sender: SecureStreamCore, keys: KeyStoreStreamKeys, payload: bytes) -> bytes:
    cursor = KeyCursor(keys.reserve(8 * sender.key_bytes_for(len(payload))))
    (frame,) = sender.seal_data(payload, cursor)
    return bytes(frame)


def _receiver(bob: KeyStore) -> SecureStreamCore:
    keys = KeyStoreStreamKeys(bob, "alice")
    return SecureStreamCore(5, keys.take, nonce=NONCE_B, peer_nonce=NONCE_A,
                            peek=peek_function(keys))


def _forge(frame: bytes, where: str) -> bytes:
    out = bytearray(frame)
    out[-1 if where == "tag" else -20] ^= 0x01   # a tag bit, or a ciphertext bit
    return bytes(out)


@pytest.mark.parametrize("where", ["tag", "ciphertext"])
def test_forged_frame_leaves_the_rx_pool_untouched(stores: tuple[KeyStore, KeyStore],
                                                   where: str) -> None:
    alice, bob = stores
    sender = SecureStreamCore(5, None, nonce=NONCE_A, peer_nonce=NONCE_B)
    f0, f1 = (_seal(sender, KeyStoreStreamKeys(alice, "bob"), p) for p in (b"first", b"second"))
    avail = bob.available("alice", "e2e-rx")
    # Frame 0 (it also carries the hash key r) forged: refused, nothing consumed.
    with pytest.raises(RemoteProtocolError) as info:
        _receiver(bob).receive_data(_forge(f0, where))
    assert info.value.code is ErrorCode.AUTHENTICATION_FAILED
    assert bob.available("alice", "e2e-rx") == avail
    # The honest frame 0 names the very same key and still opens, spending it.
    rx = _receiver(bob)
    assert rx.receive_data(f0)[0] == b"first"
    avail -= 8 * (16 + 16 + 5)
    assert bob.available("alice", "e2e-rx") == avail
    # Frame 1 forged after it: refused, nothing consumed; its key is still there.
    with pytest.raises(RemoteProtocolError) as info:
        rx.receive_data(_forge(f1, where))
    assert info.value.code is ErrorCode.AUTHENTICATION_FAILED
    assert bob.available("alice", "e2e-rx") == avail
    refs, _ = wire.decode_body(memoryview(f1))
    segs = [KeySegment(r.block_id, r.offset, r.n_bits) for r in refs]
    assert len(bob.peek("alice", "e2e-rx", segs)) == 16 + 6
    # A replay of the honest frame 0 on a new stream is still refused (key spent).
    with pytest.raises(RemoteProtocolError):
        _receiver(bob).receive_data(f0)


def test_peek_function_finds_the_store(stores: tuple[KeyStore, KeyStore]) -> None:
    _alice, bob = stores

    class _WithPeek:
        def peek(self, refs: object) -> bytes:
            return b"p"

    assert peek_function(object()) is None
    with_peek = _WithPeek()
    assert peek_function(with_peek) == with_peek.peek
    peek = peek_function(KeyStoreStreamKeys(bob, "alice"))
    assert peek is not None
    ref = wire.KeyRef(100, 64, 128)
    avail = bob.available("alice", "e2e-rx")
    assert peek([ref]) == peek([ref]) == bob.peek("alice", "e2e-rx", [KeySegment(100, 64, 128)])
    assert bob.available("alice", "e2e-rx") == avail


async def _receive_exactly(stream: trio.abc.ReceiveStream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = await stream.receive_some(n - len(buf))
        assert chunk, "the stream ended early"
        buf += chunk
    return bytes(buf)


async def test_forged_frame_on_a_tcp_stream_burns_no_key(
        stores: tuple[KeyStore, KeyStore]) -> None:
    alice, bob = stores
    # One grant: the attacker's forged frame and the real one name the very same key.
    grant = KeyStoreStreamKeys(alice, "bob").reserve(8 * (16 + 16 + 1000))
    avail = bob.available("alice", "e2e-rx")
    outcome: list[str] = []

    async def serve(stream: trio.SocketStream) -> None:
        s = SecureStream(stream, KeyStoreStreamKeys(bob, "alice"), session=7)
        try:
            got = await s.receive_some()
            outcome.append(f"data {len(got)}")
        except trio.BrokenResourceError as err:
            outcome.append(str(err))
        await s.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        for forged in (True, False):          # the attacker's, then the real one
            conn = await trio.open_tcp_stream("127.0.0.1", port)
            sender = SecureStreamCore(7, None, nonce=NONCE_A)
            await conn.send_all(sender.nonce_frame())
            sender.receive_data(await _receive_exactly(conn, wire.NONCE_FRAME_SIZE))
            (frame,) = sender.seal_data(b"x" * 1000, KeyCursor(grant))
            frame = bytes(frame)
            if forged:
                frame = frame[:-1] + bytes([frame[-1] ^ 0x80])
            await conn.send_all(frame)
            await conn.send_eof()
            with trio.fail_after(5):
                while len(outcome) < (1 if forged else 2):
                    await trio.sleep(0.01)
            await conn.aclose()
            if forged:
                assert bob.available("alice", "e2e-rx") == avail
        nursery.cancel_scope.cancel()
    assert "tag check" in outcome[0]
    assert outcome[1] == "data 1000"
    assert bob.available("alice", "e2e-rx") == avail - 8 * (16 + 16 + 1000)
