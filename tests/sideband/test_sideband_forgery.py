"""Forged and transplanted frames over real loopback connections consume no key.

Security-review regressions: (A2) a frame whose tag fails must not burn the tag key it
names, or a stranger who knows a port and a spoke name can exhaust the spoke's
bootstrap pool; (A4) a frame withheld on one connection must not verify when
injected at the same ``seq`` of the next connection.
"""

from __future__ import annotations

import functools
import secrets
from pathlib import Path

import pytest
import trio
import trio.testing
from cryptography.hazmat.primitives.poly1305 import Poly1305

from qkdnet.auth import TAG_KEY_BITS, FrameAuthenticator, KeyStoreTagKeys, MemoryTagKeys
from qkdnet.errors import ErrorCode, KeyReuseError
from qkdnet.keystore import BOOTSTRAP_BLOCK_BASE, KeySegment, KeyStore
from qkdnet.sideband import (
    BasicNode,
    ConnState,
    Direction,
    connect_sideband,
    serve_basic_node,
)
from qkdnet.wire import HEADER_LEN, TAG_LEN, Hello, MsgType, Ping, pack_header, unpack_header


@pytest.fixture
def hub_store(tmp_path: Path):  # type: ignore[no-untyped-def]
    """The hub's key store and the bootstrap secret it shares with spoke 'alice'."""
    secret = secrets.token_bytes(4096)
    store = KeyStore(tmp_path / "hub.db")
    store.import_bootstrap("alice", secret, initiator=False)
    yield store, secret
    store.close()


def _resolver(store: KeyStore):  # type: ignore[no-untyped-def]
    def resolve(name: str) -> FrameAuthenticator | None:
        return FrameAuthenticator(KeyStoreTagKeys(store, name)) if store.has_bootstrap(name) \
            else None
    return resolve


def _untaken(store: KeyStore, block: int, offset: int) -> bool:
    try:
        store.peek("alice", "auth-rx", (KeySegment(block, offset, TAG_KEY_BITS),))
    except KeyReuseError:
        return False
    return True


async def test_stranger_cannot_burn_a_spokes_bootstrap_pool(
        nursery: trio.Nursery, hub_store: tuple[KeyStore, bytes]) -> None:
    store, secret = hub_store
    node: BasicNode = await nursery.start(functools.partial(
        serve_basic_node, "hub", _resolver(store)))
    avail = store.available("alice", "auth-rx")
    n_keys = avail // TAG_KEY_BITS
    assert n_keys >= 120  # a 4 KiB secret: about 127 tags each way
    # More forged HELLOs than the pool has keys, each naming one of alice's positions.
    for i in range(n_keys + 5):
        body = bytes(Hello(node_name=b"alice", role=1, nonce=secrets.token_bytes(16)))
        frame = (pack_header(len(body), MsgType.HELLO, akey_block=BOOTSTRAP_BLOCK_BASE,
                             akey_offset=TAG_KEY_BITS * (i % n_keys))
                 + body + secrets.token_bytes(TAG_LEN))
        stream = await trio.open_tcp_stream("127.0.0.1", node.port)
        await stream.send_all(frame)
        assert await stream.receive_some(1024) == b""   # dropped, no ERROR spent on it
        await stream.aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert node.stats.errors == {"AUTHENTICATION_FAILED": n_keys + 5}
    assert store.available("alice", "auth-rx") == avail
    # Alice herself still gets in with the first key of her pool, and talks.
    alice = FrameAuthenticator(MemoryTagKeys.from_bootstrap(secret, initiator=True))
    chan = await connect_sideband("127.0.0.1", node.port, local_name="alice", auth=alice)
    await chan.ping()
    await chan.aclose()
    assert store.available("alice", "auth-rx") == avail - 3 * TAG_KEY_BITS  # HELLO, PING, CLOSE


async def test_forged_frame_on_an_open_connection_leaves_its_key_usable(
        nursery: trio.Nursery, hub_store: tuple[KeyStore, bytes]) -> None:
    store, secret = hub_store
    node: BasicNode = await nursery.start(functools.partial(
        serve_basic_node, "hub", _resolver(store)))
    alice_keys = MemoryTagKeys.from_bootstrap(secret, initiator=True)
    chan = await connect_sideband("127.0.0.1", node.port, local_name="alice",
                                  auth=FrameAuthenticator(alice_keys))
    avail = store.available("alice", "auth-rx")
    # An on-path attacker injects seq 1 naming alice's next tag key, with a guessed tag.
    body = bytes(Ping(nonce=1))
    forged = (pack_header(len(body), MsgType.PING, seq=1, akey_block=BOOTSTRAP_BLOCK_BASE,
                          akey_offset=TAG_KEY_BITS)
              + body + secrets.token_bytes(TAG_LEN))
    await chan.send_raw(forged)
    ev = await chan.receive()
    assert ev.type == MsgType.ERROR and int(ev.body.code) == ErrorCode.AUTHENTICATION_FAILED
    await chan.aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert store.available("alice", "auth-rx") == avail
    assert _untaken(store, BOOTSTRAP_BLOCK_BASE, TAG_KEY_BITS)
    # Alice reconnects; her HELLO uses exactly that key, and it verifies.
    chan2 = await connect_sideband("127.0.0.1", node.port, local_name="alice",
                                   auth=FrameAuthenticator(alice_keys))
    assert chan2.conn.state is ConnState.OPEN
    assert not _untaken(store, BOOTSTRAP_BLOCK_BASE, TAG_KEY_BITS)
    await chan2.aclose()


async def test_frame_withheld_on_one_connection_is_refused_on_the_next(
        nursery: trio.Nursery, hub_store: tuple[KeyStore, bytes]) -> None:
    store, secret = hub_store
    node: BasicNode = await nursery.start(functools.partial(
        serve_basic_node, "hub", _resolver(store)))
    alice = FrameAuthenticator(MemoryTagKeys.from_bootstrap(secret, initiator=True))
    chan1 = await connect_sideband("127.0.0.1", node.port, local_name="alice", auth=alice)
    # Alice's frame k=1 of connection 1, which the attacker withholds ...
    saved = chan1.conn.send(Ping(nonce=42))
    binding1 = chan1.conn.binding(Direction.SEND, MsgType.PING)
    hdr = unpack_header(saved)
    assert hdr.seq == 1 and len(saved) > HEADER_LEN
    # ... it is a genuine frame: its tag verifies over connection 1's binding ...
    s = store.peek("alice", "auth-rx", (KeySegment(hdr.akey_block, hdr.akey_offset,
                                                    TAG_KEY_BITS),))
    Poly1305.verify_tag(store.hash_key("alice", "rx") + s, binding1 + saved[:-TAG_LEN],
                        saved[-TAG_LEN:])
    # ... then the attacker cuts connection 1.
    await chan1.stream.aclose()
    chan2 = await connect_sideband("127.0.0.1", node.port, local_name="alice", auth=alice)
    assert chan2.conn.local_nonce != chan1.conn.local_nonce
    await trio.testing.wait_all_tasks_blocked()
    avail = store.available("alice", "auth-rx")
    # In connection 2 the saved frame replaces alice's real frame at the same seq.
    assert chan2.conn._tx_seq == 1
    await chan2.send_raw(saved)
    ev = await chan2.receive()
    assert ev.type == MsgType.ERROR and int(ev.body.code) == ErrorCode.AUTHENTICATION_FAILED
    await chan2.aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert node.stats.errors.get("AUTHENTICATION_FAILED") == 1
    assert store.available("alice", "auth-rx") == avail   # no key consumed
    assert _untaken(store, hdr.akey_block, hdr.akey_offset)
