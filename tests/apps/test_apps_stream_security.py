"""SecureStream refuses replayed, reordered, truncated and forged frames, and never
uses a key bit twice."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from qkdnet.apps import wire
from qkdnet.apps.keys import MemoryKeyPool, memory_key_pair
from qkdnet.apps.stream import (
    FAIL_FAST,
    KeyCursor,
    KeyPolicy,
    SecureStream,
    SecureStreamCore,
    StreamState,
)
from qkdnet.errors import ErrorCode, KeyExhausted, RemoteProtocolError

#: Fixed test nonces (a real stream draws its own): alice sends, bob receives. Cores
#: made with both nonces skip the STREAM_NONCE exchange.
NONCE_A, NONCE_B = bytes(range(0x40, 0x50)), bytes(range(0x50, 0x60))


def _cores(session: int = 9) -> tuple[SecureStreamCore, SecureStreamCore, MemoryKeyPool]:
    ka, kb = memory_key_pair(seed=3)
    return (SecureStreamCore(session, ka.take, nonce=NONCE_A, peer_nonce=NONCE_B),
            SecureStreamCore(session, kb.take, nonce=NONCE_B, peer_nonce=NONCE_A), ka.tx)


def _frames(sender: SecureStreamCore, pool: MemoryKeyPool, *payloads: bytes) -> list[bytes]:
    out = []
    for p in payloads:
        cursor = KeyCursor(pool.reserve(8 * sender.key_bytes_for(len(p))))
        out.extend(sender.seal_data(p, cursor))
    return out


def test_round_trip_and_ciphertext_is_not_plaintext() -> None:
    a, b, pool = _cores()
    frames = _frames(a, pool, b"hello", b"world" * 100)
    assert b"hello" not in frames[0] and b"world" not in frames[1]
    plain, eof = b.receive_data(b"".join(frames))
    assert plain == b"hello" + b"world" * 100 and not eof
    eof_frame = a.seal_eof(KeyCursor(pool.reserve(8 * a.key_bytes_for(0))))
    assert b.receive_data(eof_frame) == (b"", True)


def test_frames_split_anywhere_reassemble() -> None:
    a, b, pool = _cores()
    data = b"".join(_frames(a, pool, bytes(range(256)) * 10, b"x"))
    got = bytearray()
    for i in range(0, len(data), 7):
        got += b.receive_data(data[i:i + 7])[0]
    assert bytes(got) == bytes(range(256)) * 10 + b"x"


def test_replay_is_refused_without_touching_key() -> None:
    a, b, pool = _cores()
    f0, _f1 = _frames(a, pool, b"one", b"two")
    b.receive_data(f0)
    with pytest.raises(RemoteProtocolError, match="replayed") as info:
        b.receive_data(f0)
    assert info.value.code == ErrorCode.REPLAY_OR_REORDER


def test_reorder_is_refused() -> None:
    a, b, pool = _cores()
    _f0, f1 = _frames(a, pool, b"one", b"two")
    with pytest.raises(RemoteProtocolError, match="reordered") as info:
        b.receive_data(f1)
    assert info.value.code == ErrorCode.REPLAY_OR_REORDER


@pytest.mark.parametrize("where", ["payload", "header", "keyref", "tag"])
def test_any_flipped_bit_is_a_forgery(where: str) -> None:
    a, b, pool = _cores()
    frame = bytearray(_frames(a, pool, b"attack at dawn")[0])
    index = {"payload": len(frame) - 17, "header": 2 + 4, "keyref": wire.HEADER_SIZE + 2 + 13,
             "tag": len(frame) - 1}[where]
    frame[index] ^= 0x01
    with pytest.raises(RemoteProtocolError) as info:
        b.receive_data(bytes(frame))
    assert info.value.code in (ErrorCode.AUTHENTICATION_FAILED, ErrorCode.MALFORMED_FRAME,
                               ErrorCode.UNSUPPORTED_VERSION)


def test_frame_reusing_key_is_refused() -> None:
    # A forger re-sends frame 1 with frame 0's key references and a fitting seq.
    a, b, pool = _cores()
    f0, f1 = _frames(a, pool, b"abc", b"def")
    b.receive_data(f0)
    refs0, _ = wire.decode_body(f0)
    reused = wire.KeyRef(refs0[0].block_id, refs0[0].offset, 8 * (16 + 3))
    forged = wire.encode_frame(wire.AppMsgType.STREAM_DATA, 9, 1, [reused], b"xyz")
    with pytest.raises(RemoteProtocolError, match="unusable key") as info:
        b.receive_data(forged + bytes(16))
    assert info.value.code == ErrorCode.AUTHENTICATION_FAILED
    del f1


def test_oversized_frame_is_refused_before_buffering() -> None:
    _a, b, _pool = _cores()
    with pytest.raises(RemoteProtocolError) as info:
        b.receive_data((50 << 20).to_bytes(4, "big") + bytes(40))
    assert info.value.code == ErrorCode.FRAME_TOO_LARGE


def test_repr_hides_key() -> None:
    ka, _kb = memory_key_pair(seed=5)
    grant = ka.reserve(256)
    assert grant.data.hex() not in repr(grant) and grant.data.hex()[:8] not in repr(grant)
    assert "data" not in repr(KeyCursor(grant))


async def _raw_and_secure() -> tuple[trio.abc.Stream, SecureStream, SecureStreamCore,
                                     MemoryKeyPool]:
    ka, kb = memory_key_pair(seed=11)
    raw, other = trio.testing.memory_stream_pair()
    secure = SecureStream(other, kb, session=9)
    sender = SecureStreamCore(9, ka.take, nonce=NONCE_A)
    # The nonce exchange, by hand on the raw side: ours out, the stream's in.
    await raw.send_all(sender.nonce_frame())
    await secure.do_handshake()
    sender.receive_data(await raw.receive_some())
    assert sender.peer_nonce is not None
    return raw, secure, sender, ka.tx


async def test_stream_breaks_on_forgery_with_reason() -> None:
    raw, secure, sender, pool = await _raw_and_secure()
    frame = bytearray(_frames(sender, pool, b"pay alice 10")[0])
    frame[-20] ^= 0x80
    await raw.send_all(bytes(frame))
    with pytest.raises(trio.BrokenResourceError, match="Wegman-Carter") as info:
        await secure.receive_some()
    assert isinstance(info.value.__cause__, RemoteProtocolError)
    assert secure.state is StreamState.BROKEN
    with pytest.raises(trio.BrokenResourceError):
        await secure.send_all(b"still broken")


async def test_stream_breaks_on_replay() -> None:
    raw, secure, sender, pool = await _raw_and_secure()
    f0, = _frames(sender, pool, b"once")
    await raw.send_all(f0)
    assert await secure.receive_some() == b"once"
    await raw.send_all(f0)
    with pytest.raises(trio.BrokenResourceError, match="replayed"):
        await secure.receive_some()


async def test_truncation_is_not_a_clean_eof() -> None:
    raw, secure, sender, pool = await _raw_and_secure()
    f0, = _frames(sender, pool, b"partial")
    await raw.send_all(f0)
    await raw.aclose()  # no authenticated STREAM_EOF
    assert await secure.receive_some() == b"partial"
    with pytest.raises(trio.BrokenResourceError, match="truncated"):
        await secure.receive_some()


async def test_garbage_breaks_the_stream() -> None:
    raw, secure, _sender, _pool = await _raw_and_secure()
    await raw.send_all(b"\x00\x00\x00\x30" + b"\xff" * 0x30)
    with pytest.raises(trio.BrokenResourceError):
        await secure.receive_some()


async def test_fail_fast_policy_raises_key_exhausted() -> None:
    ka, kb = memory_key_pair(seed=1, capacity_bits=8 * 1000)
    a_raw, b_raw = trio.testing.memory_stream_pair()
    a = SecureStream(a_raw, ka, policy=FAIL_FAST)
    b = SecureStream(b_raw, kb)
    # Nonces first, so that one task can send and then receive (the nonces cost no key).
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.do_handshake)
        nursery.start_soon(b.do_handshake)
    assert ka.tx.reserved_bits == 0
    await a.send_all(b"x" * 900)
    assert len(await b.receive_some()) == 900
    with pytest.raises(trio.BrokenResourceError, match="out of key") as info:
        await a.send_all(b"y" * 200)
    assert isinstance(info.value.__cause__, KeyExhausted)


async def test_wait_policy_waits_for_key_then_sends() -> None:
    ka, kb = memory_key_pair(seed=1, capacity_bits=8 * 100)
    a_raw, b_raw = trio.testing.memory_stream_pair()
    a = SecureStream(a_raw, ka, policy=KeyPolicy(wait=True, timeout=30))
    b = SecureStream(b_raw, kb)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.send_all, b"z" * 500)
        await trio.testing.wait_all_tasks_blocked()
        assert a.stats.frames_tx == 0  # still waiting for key
        ka.tx.add_key(8 * 1000)
        assert await b.receive_some() == b"z" * 500


async def test_wait_policy_gives_up_at_deadline() -> None:
    ka, _kb = memory_key_pair(seed=1, capacity_bits=8 * 10)
    a_raw, _b_raw = trio.testing.memory_stream_pair()
    a = SecureStream(a_raw, ka, policy=KeyPolicy(wait=True, timeout=0.05))
    with pytest.raises(trio.BrokenResourceError, match="out of key"):
        await a.send_all(b"q" * 100)


async def test_bulk_key_cost_is_at_most_1_03_bits_per_bit() -> None:
    ka, kb = memory_key_pair(seed=2)
    a_raw, b_raw = trio.testing.memory_stream_pair()
    a, b = SecureStream(a_raw, ka), SecureStream(b_raw, kb)
    payload = bytes(range(256)) * 8192  # 2 MiB
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.send_all, payload)
        got = bytearray()
        while len(got) < len(payload):
            got += await b.receive_some()
    assert got == payload
    ratio = ka.tx.reserved_bits / (8 * len(payload))
    assert 1.0 < ratio <= 1.03
    assert a.stats.key_per_payload_bit() == pytest.approx(ratio)
