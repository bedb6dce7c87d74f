"""The SecureStream speed paths keep the stream's behaviour.

* The sender builds each frame in an uninitialised buffer: every byte must still be
  written, so the same payload and key give the same frame whatever memory held.
* The receiver checks a frame's header and key references straight from the read
  when they are all in it: many frames in one read open exactly as when fed byte by
  byte, spend their key once, and a bad header, replay or forgery there is refused
  before any key is spent.
* The two-process benchmark (bench/apps) runs: a tiny smoke run of its child sender.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qkdnet.apps import wire
from qkdnet.apps.keys import MemoryKeyPool, MemoryStreamKeys
from qkdnet.apps.stream import KeyCursor, SecureStreamCore
from qkdnet.errors import ErrorCode, KeyReuseError, RemoteProtocolError

#: Fixed test nonces (a real stream draws its own): alice sends, bob receives. Cores
#: made with both nonces skip the STREAM_NONCE exchange.
NONCE_A, NONCE_B = bytes(range(0x40, 0x50)), bytes(range(0x50, 0x60))

SESSION = 0x5EC


def _twin_keys(seed: int, n_bytes: int = 1 << 20) -> tuple[MemoryStreamKeys, MemoryStreamKeys]:
    """Sender and receiver key over SEPARATE copies of the same test key (two hosts)."""
    n_bits = 8 * n_bytes
    tx = MemoryStreamKeys(MemoryKeyPool(seed=seed, capacity_bits=n_bits),
                          MemoryKeyPool(seed=seed + 1, capacity_bits=n_bits))
    rx_copy = MemoryKeyPool(seed=seed, capacity_bits=n_bits)
    rx_copy.reserve(rx_copy.available())  # handed out by the sender's host
    return tx, MemoryStreamKeys(MemoryKeyPool(seed=seed + 1, capacity_bits=n_bits), rx_copy)


def _receiver(keys: MemoryStreamKeys) -> SecureStreamCore:
    return SecureStreamCore(SESSION, keys.take, nonce=NONCE_B, peer_nonce=NONCE_A,
                            peek=keys.peek, peek_parts=keys.peek_parts, consume=keys.consume)


def _seal(sender: SecureStreamCore, keys: MemoryStreamKeys, payload: bytes) -> bytes:
    cursor = KeyCursor(keys.reserve(8 * sender.key_bytes_for(len(payload))))
    return b"".join(bytes(f) for f in sender.seal_data(payload, cursor))


@pytest.mark.parametrize("size", [1, 4096, 300_000, 1 << 20])
def test_frames_do_not_depend_on_what_memory_held(size: int) -> None:
    payload = np.random.default_rng(size).bytes(size)
    frames = []
    for fill in (0x00, 0xA5):
        # Leave freed memory full of ``fill``, so an unwritten byte would show.
        junk = [np.full(size + 4096, fill, np.uint8) for _ in range(4)]
        del junk
        keys, _ = _twin_keys(7, 2 * size + 4096)
        sender = SecureStreamCore(SESSION, None, nonce=NONCE_A, peer_nonce=NONCE_B)
        stream = _seal(sender, keys, payload)
        stream += bytes(sender.seal_eof(KeyCursor(keys.reserve(8 * sender.key_bytes_for(0)))))
        frames.append(stream)
    assert frames[0] == frames[1]
    _, bob = _twin_keys(7, 2 * size + 4096)
    assert _receiver(bob).receive_data(frames[0]) == (payload, True)


def _small_frames(seed: int) -> tuple[bytes, list[bytes], MemoryStreamKeys]:
    """A byte stream of many frames of mixed sizes, their payloads and the rx keys."""
    alice, bob = _twin_keys(seed, 300_000)
    sender = SecureStreamCore(SESSION, None, nonce=NONCE_A, peer_nonce=NONCE_B)
    rng = np.random.default_rng(seed)
    payloads = [rng.bytes(int(n)) for n in rng.choice([1, 2, 15, 16, 17, 100, 4096], 60)]
    stream = b"".join(_seal(sender, alice, p) for p in payloads)
    stream += bytes(sender.seal_eof(KeyCursor(alice.reserve(8 * sender.key_bytes_for(0)))))
    return stream, payloads, bob


@pytest.mark.parametrize("seed", [11, 12])
def test_many_frames_in_one_read_open_like_bytes_fed_one_at_a_time(seed: int) -> None:
    stream, payloads, bob = _small_frames(seed)
    whole = _receiver(bob)
    chunks, eof = whole.receive_chunks(stream)  # every frame's prefix is in this read
    assert [bytes(c) for c in chunks] == payloads and eof
    # The same frames, split at every point near and inside the first frame's prefix
    # (so the prefix is gathered piecewise), open the same on a fresh copy of the key.
    for cut in range(1, wire.REFS_START + 3 * wire.KEYREF.size):
        stream2, _, bob2 = _small_frames(seed)
        rx = _receiver(bob2)
        a, _ = rx.receive_data(stream2[:cut])
        b, eof2 = rx.receive_data(stream2[cut:])
        assert a + b == b"".join(payloads) and eof2
        assert rx.stats == whole.stats
    # Every frame's key is spent exactly once: nothing the stream named is left.
    refs = []
    view = memoryview(stream)
    while view:
        size = wire.peek_length(view)
        assert size is not None
        found, _ = wire.decode_body(view[:size])
        refs.extend(found)
        view = view[size:]
    for ref in refs:
        with pytest.raises(KeyReuseError):
            bob.peek([ref])


def _bad(frame: bytes, what: str) -> bytes:
    out = bytearray(frame)
    if what == "too large":
        out[:4] = (50 << 20).to_bytes(4, "big")
    elif what == "too short":
        out[:4] = (10).to_bytes(4, "big")
    elif what == "other session":
        out[8:12] = (SESSION + 1).to_bytes(4, "big")
    elif what == "no key references":
        out[wire.HEADER_SIZE:wire.REFS_START] = bytes(2)
    elif what == "flipped ciphertext bit":
        out[-wire.TAG_SIZE - 1] ^= 1
    return bytes(out)


@pytest.mark.parametrize("what, code", [
    ("too large", ErrorCode.FRAME_TOO_LARGE),
    ("too short", ErrorCode.MALFORMED_FRAME),
    ("other session", ErrorCode.PROTOCOL_VIOLATION),
    ("no key references", ErrorCode.MALFORMED_FRAME),
    ("flipped ciphertext bit", ErrorCode.AUTHENTICATION_FAILED),
    ("replay", ErrorCode.REPLAY_OR_REORDER),
])
def test_bad_frames_whole_in_one_read_are_refused_before_any_key_is_spent(
        what: str, code: ErrorCode) -> None:
    alice, bob = _twin_keys(31, 8192)
    sender = SecureStreamCore(SESSION, None, nonce=NONCE_A, peer_nonce=NONCE_B)
    first = _seal(sender, alice, b"first frame")
    second = _seal(sender, alice, b"second frame" * 300)
    rx = _receiver(bob)
    assert rx.receive_data(first) == (b"first frame", False)
    bad = first if what == "replay" else _bad(second, what)
    with pytest.raises(RemoteProtocolError) as info:
        rx.receive_data(bad + second)  # the bad frame and more in one read
    assert info.value.code == code
    refs, _ = wire.decode_body(memoryview(second))
    assert len(bytes(bob.peek(refs))) == 16 + len(b"second frame" * 300)  # still unspent


def _load_bench() -> Any:
    path = Path(__file__).parents[2] / "bench" / "apps" / "bench_apps.py"
    spec = importlib.util.spec_from_file_location("bench_apps_smoke", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def test_two_process_benchmark_smoke_run() -> None:
    bench = _load_bench()
    jobs = [{"kind": kind, "total": 256 << 10, "write": write}
            for kind in ("tcp", "secure") for write in (4096, 64 << 10)]
    results = await bench._two_process(jobs)
    assert len(results) == len(jobs)
    for job, result in zip(jobs, results, strict=True):
        assert result["rate"] > 0 and result["cpu_tx"] > 0 and result["cpu_rx"] > 0
        key = result["key"]
        if job["kind"] == "secure":  # one 16-byte tag key per frame, one r per stream
            assert 1.0 < key <= 1.0 + 16 / job["write"] + 0.001
        else:
            assert key == 0.0
