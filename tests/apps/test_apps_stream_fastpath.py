"""The SecureStream fast paths agree with the plain definitions.

* The sender carves key as views of several key blocks (no join): its frames equal,
  byte for byte, frames built the slow way (joined key, numpy XOR, one-shot Poly1305)
  and scapy dissects them to the same references and ciphertext.
* The receiver opens frames as their bytes arrive (no reassembly): any split of the
  byte stream gives the same plaintext, nothing is released before the tag holds,
  and a forged frame fed in pieces still burns no key.
* Key made of many small blocks gives shorter frames, never frames naming more key
  segments than a receiver accepts.
"""

from __future__ import annotations

import numpy as np
import pytest
import trio
import trio.testing
from cryptography.hazmat.primitives.poly1305 import Poly1305

from qkdnet.apps import wire
from qkdnet.apps.keys import MemoryKeyPool, MemoryStreamKeys
from qkdnet.apps.stream import DEFAULT_FRAME_PAYLOAD, KeyCursor, SecureStream, SecureStreamCore
from qkdnet.errors import ErrorCode, KeyReuseError, RemoteProtocolError
from qkdnet.wire import QkdHeader

#: Fixed test nonces (a real stream draws its own): alice sends, bob receives. Cores
#: made with both nonces skip the STREAM_NONCE exchange.
NONCE_A, NONCE_B = bytes(range(0x40, 0x50)), bytes(range(0x50, 0x60))

SESSION = 0x77


def _keys(block_bytes: int) -> tuple[MemoryStreamKeys, MemoryStreamKeys]:
    """A bottomless a->b pool whose key blocks are small, so frames span blocks."""
    ab, ba = MemoryKeyPool(seed=21, name="a->b"), MemoryKeyPool(seed=22, name="b->a")
    ab.BLOCK_BYTES = ba.BLOCK_BYTES = block_bytes
    return MemoryStreamKeys(ab, ba), MemoryStreamKeys(ba, ab)


def _receiver(keys: MemoryStreamKeys) -> SecureStreamCore:
    return SecureStreamCore(SESSION, keys.take, nonce=NONCE_B, peer_nonce=NONCE_A,
                            peek=keys.peek, peek_parts=keys.peek_parts, consume=keys.consume)


def _seal(sender: SecureStreamCore, keys: MemoryStreamKeys, payload: bytes) -> list[bytes]:
    cursor = KeyCursor(keys.reserve(8 * sender.key_bytes_for(len(payload))))
    return [bytes(f) for f in sender.seal_data(payload, cursor)]


def test_grant_parts_carve_like_the_joined_data() -> None:
    alice, _bob = _keys(1000)
    grant = alice.reserve(8 * 3500)
    assert len(grant.parts) >= 4
    assert b"".join(grant.parts) == bytes(grant.data)
    cursor = KeyCursor(grant)
    got = b""
    for n in (16, 984, 1, 1999, 500):
        refs, pieces = cursor.carve_parts(n)
        assert sum(len(p) for p in pieces) == n == sum(r.n_bits for r in refs) // 8
        got += b"".join(pieces)
    assert got == bytes(grant.data)
    assert cursor.remaining == 0


def test_sealed_frames_match_the_slow_construction_and_scapy() -> None:
    alice, _bob = _keys(3001)
    sender = SecureStreamCore(SESSION, None, nonce=NONCE_A, peer_nonce=NONCE_B,
                              max_frame_payload=5000)
    payload = np.random.default_rng(5).bytes(12345)
    grant = alice.reserve(8 * sender.key_bytes_for(len(payload)))
    key = bytes(grant.data)
    frames = sender.seal_data(payload, KeyCursor(grant))
    assert len(frames) == 3
    r, pos = key[:16], 16
    for seq, frame in enumerate(frames):
        piece = payload[5000 * seq:5000 * (seq + 1)]
        s, pad = key[pos:pos + 16], key[pos + 16:pos + 16 + len(piece)]
        pos += 16 + len(piece)
        refs, _ = wire.decode_body(memoryview(frame))
        n_prefix = wire.prefix_size(frame[:wire.REFS_START], len(frame))
        assert wire.decode_refs(frame[:n_prefix]) == refs  # the receiver's piecewise parse
        ct = bytes(a ^ b for a, b in zip(piece, pad, strict=True))
        head = wire.encode_frame(wire.AppMsgType.STREAM_DATA, SESSION, seq, refs, ct)
        # The tag covers the receiver's nonce, then the frame (spec/apps.md §2).
        assert bytes(frame) == head + Poly1305.generate_tag(r + s, NONCE_B + head)
        pkt = QkdHeader(bytes(frame))
        body = pkt[wire.StreamData]
        assert (pkt.seq, pkt.session, body.n_refs) == (seq, SESSION, len(refs))
        assert [(x.block, x.offset, x.n_bits) for x in body.refs] == [tuple(x) for x in refs]
        assert body.ciphertext == ct
    assert pos == len(key)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_any_split_of_the_byte_stream_opens_the_same(seed: int) -> None:
    alice, bob = _keys(2999)
    sender = SecureStreamCore(SESSION, None, nonce=NONCE_A, peer_nonce=NONCE_B,
                              max_frame_payload=4096)
    rng = np.random.default_rng(seed)
    payload = rng.bytes(20000)
    stream = b"".join(_seal(sender, alice, payload[:7000]) + _seal(sender, alice, payload[7000:]))
    stream += bytes(sender.seal_eof(KeyCursor(alice.reserve(8 * sender.key_bytes_for(0)))))
    rx = _receiver(bob)
    got, eof, i = bytearray(), False, 0
    while i < len(stream):
        n = int(rng.choice([1, 2, 3, 17, 50, 1000, 5000]))
        chunk, eof = rx.receive_data(memoryview(stream)[i:i + n])
        got += chunk
        i += n
    assert bytes(got) == payload and eof
    assert rx.stats.frames_rx == sender.stats.frames_tx == 7  # 6 data frames and the EOF


@pytest.mark.parametrize("where", [-1, -20, 40])  # tag, ciphertext, key reference
def test_nothing_is_released_before_the_tag_and_forgeries_burn_nothing(where: int) -> None:
    alice, bob = _keys(1 << 16)
    sender = SecureStreamCore(SESSION, None, nonce=NONCE_A, peer_nonce=NONCE_B)
    (frame,) = _seal(sender, alice, b"secret" * 1000)
    refs, _ = wire.decode_body(memoryview(frame))
    forged = bytearray(frame)
    forged[where] ^= 0x04
    rx = _receiver(bob)
    with pytest.raises(RemoteProtocolError) as info:
        # A bad key reference is refused as soon as the references are in; anything
        # else when the tag is: nothing comes out before that.
        assert rx.receive_data(forged[:-1]) == (b"", False)
        rx.receive_data(forged[-1:])
    assert info.value.code in (ErrorCode.AUTHENTICATION_FAILED, ErrorCode.MALFORMED_FRAME)
    assert bytes(bob.peek(refs)) == bytes(bob.peek(refs))  # still unspent
    honest = _receiver(bob)
    assert honest.receive_data(frame[:-1]) == (b"", False)
    assert honest.receive_data(frame[-1:]) == (b"secret" * 1000, False)
    with pytest.raises(KeyReuseError):
        bob.peek(refs)  # spent by the honest frame


async def test_fragmented_key_gives_shorter_frames_never_too_many_refs() -> None:
    # Key in 100-byte blocks: a 512 KiB frame would name over 5000 segments, more
    # than a receiver accepts; the sender cuts frames to fit and reserves the rest.
    alice, bob = _keys(100)
    a_raw, b_raw = trio.testing.memory_stream_pair()
    a, b = SecureStream(a_raw, alice, session=SESSION), SecureStream(b_raw, bob, session=SESSION)
    payload = np.random.default_rng(9).bytes(300_000)
    got = bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.send_all, payload)
        while len(got) < len(payload):
            got += await b.receive_some()
    assert bytes(got) == payload
    assert a.stats.frames_tx >= len(payload) // (wire.MAX_REFS * 100)
    assert a.stats.key_per_payload_bit() <= 1.03


async def test_largest_frames_with_most_references_are_accepted() -> None:
    # 4 KiB key blocks: a full-size frame names about MAX_REFS segments and must still
    # be within the receiver's MAX_FRAME_SIZE.
    alice, bob = _keys(4097)
    a_raw, b_raw = trio.testing.memory_stream_pair()
    a, b = SecureStream(a_raw, alice, session=SESSION), SecureStream(b_raw, bob, session=SESSION)
    payload = np.random.default_rng(10).bytes(2 * DEFAULT_FRAME_PAYLOAD)
    got = bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.send_all, payload)
        while len(got) < len(payload):
            got += await b.receive_some()
    assert bytes(got) == payload
    assert a.stats.frames_tx <= 4
