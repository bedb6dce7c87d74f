"""Wegman–Carter authentication: tags, key spending, reuse, the key-store source."""

from __future__ import annotations

import math
import secrets
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.poly1305 import Poly1305

from qkdnet import keystore
from qkdnet.auth import (
    BINDING_LEN,
    BOOTSTRAP_BLOCK_BASE,
    DIR_INITIATOR_TO_RESPONDER,
    DIR_RESPONDER_TO_INITIATOR,
    TAG_KEY_BITS,
    FrameAuthenticator,
    KeyStoreTagKeys,
    MemoryTagKeys,
    TagKeySource,
    connection_binding,
    forgery_bound,
    lifetime_forgery_bound,
)
from qkdnet.errors import (
    AuthenticationError,
    ErrorCode,
    KeyExhausted,
    KeyReuseError,
    LocalProtocolError,
)
from qkdnet.keystore import KeyStore


def _sign(auth: FrameAuthenticator, msg: bytes) -> tuple[int, int, bytes]:
    key = auth.reserve()
    return key.block_id, key.offset, auth.sign(key, msg)


def test_tag_is_poly1305_with_recycled_r_and_fresh_s(key_pair: tuple[MemoryTagKeys, ...]) -> None:
    a, b = key_pair
    tx = FrameAuthenticator(a)
    block, offset, tag = _sign(tx, b"hello frame")
    s = a._tx.data[offset // 8: offset // 8 + 16]
    assert tag == Poly1305.generate_tag(a.hash_key_tx + s, b"hello frame")
    _, offset2, tag2 = _sign(tx, b"hello frame")
    assert offset2 == offset + TAG_KEY_BITS and tag2 != tag  # fresh s every frame
    rx = FrameAuthenticator(b)
    rx.verify(block, offset, b"hello frame", tag)
    rx.verify(block, offset2, b"hello frame", tag2)
    assert tx.bits_spent_tx == rx.bits_spent_rx == 2 * TAG_KEY_BITS


def test_every_single_bit_flip_is_rejected(key_pair: tuple[MemoryTagKeys, ...]) -> None:
    a, b = key_pair
    tx, rx = FrameAuthenticator(a), FrameAuthenticator(b)
    msg = secrets.token_bytes(40)
    honest = []
    available = b.available_rx_bits()
    for bit in range(8 * (len(msg) + 16)):
        block, offset, tag = _sign(tx, msg)
        honest.append((block, offset, tag))
        data = bytearray(msg + tag)
        data[bit // 8] ^= 0x80 >> (bit % 8)
        with pytest.raises(AuthenticationError) as info:
            rx.verify(block, offset, bytes(data[:-16]), bytes(data[-16:]))
        assert info.value.code is ErrorCode.AUTHENTICATION_FAILED
    assert rx.failures == 8 * 56
    # A rejected frame consumes no key: the receive pool is untouched and every honest
    # frame at those key positions still verifies afterwards.
    assert rx.bits_spent_rx == 0 and b.available_rx_bits() == available
    for block, offset, tag in honest:
        rx.verify(block, offset, msg, tag)
    assert rx.bits_spent_rx == 8 * 56 * TAG_KEY_BITS
    assert b.available_rx_bits() == available - 8 * 56 * TAG_KEY_BITS


def test_binding_is_authenticated(key_pair: tuple[MemoryTagKeys, ...]) -> None:
    a, b = key_pair
    tx, rx = FrameAuthenticator(a), FrameAuthenticator(b)
    n_i, n_r = secrets.token_bytes(16), secrets.token_bytes(16)
    bind = connection_binding(DIR_INITIATOR_TO_RESPONDER, n_i, n_r)
    assert len(bind) == BINDING_LEN and bind[16:32] == n_i and bind[32:] == n_r
    key = tx.reserve()
    tag = tx.sign(key, b"frame", bind)
    s = a._tx.data[key.offset // 8: key.offset // 8 + 16]
    assert tag == Poly1305.generate_tag(a.hash_key_tx + s, bind + b"frame")
    others = [b"", connection_binding(DIR_RESPONDER_TO_INITIATOR, n_i, n_r),
              connection_binding(DIR_INITIATOR_TO_RESPONDER, n_i, secrets.token_bytes(16)),
              connection_binding(DIR_INITIATOR_TO_RESPONDER, secrets.token_bytes(16), n_r),
              connection_binding(DIR_INITIATOR_TO_RESPONDER, n_i, None)]
    for other in others:
        with pytest.raises(AuthenticationError) as info:
            rx.verify(key.block_id, key.offset, b"frame", tag, other)
        assert info.value.code is ErrorCode.AUTHENTICATION_FAILED
    rx.verify(key.block_id, key.offset, b"frame", tag, bind)
    with pytest.raises(LocalProtocolError):
        connection_binding(3, n_i, n_r)
    with pytest.raises(LocalProtocolError):
        connection_binding(DIR_INITIATOR_TO_RESPONDER, b"short", n_r)


def test_peek_tag_key_matches_take_and_consumes_nothing(
        key_pair: tuple[MemoryTagKeys, ...]) -> None:
    _a, b = key_pair
    avail = b.available_rx_bits()
    assert b.peek_tag_key(0, 256) == b.peek_tag_key(0, 256)
    assert b.available_rx_bits() == avail
    assert b.take_tag_key(0, 256) == b._rx.data[32:48]
    with pytest.raises(KeyReuseError):
        b.peek_tag_key(0, 256)
    with pytest.raises(KeyExhausted):
        b.peek_tag_key(7, 0)


def test_reused_tag_key_is_a_replay(key_pair: tuple[MemoryTagKeys, ...]) -> None:
    a, b = key_pair
    tx, rx = FrameAuthenticator(a), FrameAuthenticator(b)
    block, offset, tag = _sign(tx, b"m")
    rx.verify(block, offset, b"m", tag)
    with pytest.raises(AuthenticationError) as info:
        rx.verify(block, offset, b"m", tag)
    assert info.value.code is ErrorCode.REPLAY_OR_REORDER
    # An overlapping (unaligned) window is reuse too.
    with pytest.raises(AuthenticationError) as info:
        rx.verify(block, offset + 8, b"m", tag)
    assert info.value.code is ErrorCode.REPLAY_OR_REORDER


def test_unknown_block_and_exhaustion(key_pair: tuple[MemoryTagKeys, ...]) -> None:
    _a, b = key_pair
    with pytest.raises(AuthenticationError) as info:
        FrameAuthenticator(b).verify(12345, 0, b"m", b"\0" * 16)
    assert info.value.code is ErrorCode.KEY_EXHAUSTED
    small = MemoryTagKeys(b"r" * 16, b"r" * 16, b"s" * 32, b"")
    auth = FrameAuthenticator(small)
    auth.reserve()
    auth.reserve()
    with pytest.raises(KeyExhausted):
        auth.reserve()


def test_repr_hides_keys(key_pair: tuple[MemoryTagKeys, ...]) -> None:
    a, _ = key_pair
    auth = FrameAuthenticator(a)
    key = auth.reserve()
    for text in (repr(a), repr(auth), repr(key)):
        assert a.hash_key_tx.hex() not in text and key.s.hex() not in text
        assert str(a.hash_key_tx) not in text and str(key.s) not in text


def test_forgery_bounds() -> None:
    assert forgery_bound(16) == 8 / 2**106
    assert forgery_bound(17) == 16 / 2**106
    assert math.log2(forgery_bound(1 << 20)) == -87
    assert lifetime_forgery_bound(2**40, 1 << 20) == 2**40 * forgery_bound(1 << 20)


def test_bootstrap_split_is_mirrored() -> None:
    secret = secrets.token_bytes(4096)
    spoke = MemoryTagKeys.from_bootstrap(secret, initiator=True)
    hub = MemoryTagKeys.from_bootstrap(secret, initiator=False)
    assert spoke.hash_key_tx == hub.hash_key_rx == secret[:16]
    assert spoke.hash_key_rx == hub.hash_key_tx == secret[16:32]
    s_auth, h_auth = FrameAuthenticator(spoke), FrameAuthenticator(hub)
    block, offset, tag = _sign(s_auth, b"x")
    h_auth.verify(block, offset, b"x", tag)
    block, offset, tag = _sign(h_auth, b"y")
    s_auth.verify(block, offset, b"y", tag)
    with pytest.raises(LocalProtocolError):
        MemoryTagKeys.from_bootstrap(secret[:100], initiator=True)


def test_memory_bootstrap_matches_key_store_layout(tmp_path: Path) -> None:
    """A memory peer and a key-store peer holding the same secret talk to each other."""
    assert keystore.BOOTSTRAP_BLOCK_BASE == BOOTSTRAP_BLOCK_BASE
    secret = secrets.token_bytes(8192)
    store = KeyStore(tmp_path / "hub.db")
    try:
        store.import_bootstrap("spoke", secret, initiator=False)
        hub_keys = KeyStoreTagKeys(store, "spoke")
        assert isinstance(hub_keys, TagKeySource)
        spoke = FrameAuthenticator(MemoryTagKeys.from_bootstrap(secret, initiator=True))
        hub = FrameAuthenticator(hub_keys)
        for i in range(5):  # spoke -> hub
            msg = f"frame {i}".encode()
            block, offset, tag = _sign(spoke, msg)
            hub.verify(block, offset, msg, tag)
        for i in range(5):  # hub -> spoke
            msg = f"answer {i}".encode()
            block, offset, tag = _sign(hub, msg)
            spoke.verify(block, offset, msg, tag)
        # A forged frame naming the spoke's next key consumes nothing at the hub ...
        avail = store.available("spoke", "auth-rx")
        nxt = spoke.keys.reserve_tag_key()
        with pytest.raises(AuthenticationError) as info:
            hub.verify(nxt[0], nxt[1], b"forged", b"\0" * 16)
        assert info.value.code is ErrorCode.AUTHENTICATION_FAILED
        assert store.available("spoke", "auth-rx") == avail
        # ... so the honest frame at that key still verifies, and then it is spent.
        spoke_tag = Poly1305.generate_tag(spoke.keys.hash_key_tx + nxt[2], b"honest")
        hub.verify(nxt[0], nxt[1], b"honest", spoke_tag)
        assert store.available("spoke", "auth-rx") == avail - TAG_KEY_BITS
        # The store refuses to hand the same tag key out twice.
        with pytest.raises(AuthenticationError) as info:
            hub.verify(BOOTSTRAP_BLOCK_BASE, 0, b"frame 0", b"\0" * 16)
        assert info.value.code is ErrorCode.REPLAY_OR_REORDER
        assert hub.bits_spent_rx == 6 * TAG_KEY_BITS and hub.bits_spent_tx == 5 * TAG_KEY_BITS
        assert "spoke" in repr(hub_keys) and secret[:16].hex() not in repr(hub_keys)
    finally:
        store.close()
