"""Quantum port: frame codec (golden bytes, malformed input) and a fibre on loopback."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import trio

from qkdnet.errors import ErrorCode, RemoteProtocolError
from qkdnet.phy import presets, theory
from qkdnet.phy.attacks import parse_attack
from qkdnet.phy.channel import BobDetector
from qkdnet.phy.port import (
    HEADER,
    EndReceived,
    ErrorReceived,
    FibreElement,
    PortDecoder,
    PortEncoder,
    PulsesReceived,
    QuantumPort,
    run_fiber,
)
from qkdnet.phy.source import AliceSource, PulseBatch

GOLDEN_BATCH = PulseBatch(
    start_slot=1000, n_slots=16,
    slots=np.array([1000, 1003, 1015], dtype=np.uint64),
    photons=np.array([1, 2, 1], dtype=np.uint8),
    basis=np.array([0, 1, 1], dtype=np.uint8),
    bit=np.array([1, 0, 1], dtype=np.uint8),
    transmittance=0.5,
)
GOLDEN_HEX = (
    "5150" "01" "01" "00000029"                   # magic QP, v1, PULSES, 41-byte body
    "00000000000003e8" "00000010" "00000003"      # start 1000, 16 slots, 3 pulses
    "3fe0000000000000"                            # transmittance 0.5
    "00000000" "00000003" "0000000f"              # slot offsets
    "010201"                                      # photon numbers
    "60" "a0"                                     # basis 011, bit 101 (packbits, MSB first)
)


def test_golden_bytes_both_ways() -> None:
    data = PortEncoder().pulses(GOLDEN_BATCH)
    assert data.hex() == GOLDEN_HEX
    events = PortDecoder().receive_data(bytes.fromhex(GOLDEN_HEX))
    assert len(events) == 1 and isinstance(events[0], PulsesReceived)
    got = events[0].batch
    assert (got.start_slot, got.n_slots, got.transmittance) == (1000, 16, 0.5)
    for name in ("slots", "photons", "basis", "bit"):
        assert np.array_equal(getattr(got, name), getattr(GOLDEN_BATCH, name))


def test_byte_by_byte_then_end() -> None:
    data = PortEncoder().pulses(GOLDEN_BATCH) + PortEncoder.end()
    dec = PortDecoder()
    events = []
    for i in range(len(data)):
        events += dec.receive_data(data[i:i + 1])
    assert [type(e) for e in events] == [PulsesReceived, EndReceived]
    assert dec.receive_data(b"") == []


def _err(data: bytes, max_frame: int = 1 << 20) -> RemoteProtocolError:
    dec = PortDecoder(max_frame)
    with pytest.raises(RemoteProtocolError) as info:
        dec.receive_data(data)
        dec.receive_data(b"")
    return info.value


def _frame(ftype: int, body: bytes, version: int = 1, magic: bytes = b"QP") -> bytes:
    return HEADER.pack(magic, version, ftype, len(body)) + body


GOOD_BODY = bytes.fromhex(GOLDEN_HEX)[8:]


@pytest.mark.parametrize(("data", "code", "words"), [
    (_frame(1, GOOD_BODY, magic=b"XX"), ErrorCode.MALFORMED_FRAME, "magic"),
    (_frame(1, GOOD_BODY, version=9), ErrorCode.UNSUPPORTED_VERSION, "version"),
    (_frame(0x7F, b""), ErrorCode.UNKNOWN_MESSAGE_TYPE, "type"),
    (HEADER.pack(b"QP", 1, 1, 0x7FFFFFFF), ErrorCode.FRAME_TOO_LARGE, "exceeds"),
    (bytes.fromhex(GOLDEN_HEX)[:-3], ErrorCode.MALFORMED_FRAME, "truncated"),
    (b"QP\x01", ErrorCode.MALFORMED_FRAME, "truncated"),
    (b"", ErrorCode.PROTOCOL_VIOLATION, "without an END"),
    (_frame(1, GOOD_BODY + b"\x00"), ErrorCode.MALFORMED_FRAME, "cannot hold"),
    (_frame(1, GOOD_BODY[:5]), ErrorCode.MALFORMED_FRAME, "shorter"),
    (_frame(1, GOOD_BODY[:24] + bytes.fromhex("00000003000000000000000f010201" "60a0")),
     ErrorCode.MALFORMED_FRAME, "out of order"),
    (_frame(1, GOOD_BODY[:24] + bytes.fromhex("000000000000000300000010010201" "60a0")),
     ErrorCode.MALFORMED_FRAME, "out of order"),
    (_frame(1, GOOD_BODY[:36] + b"\x01\x00\x01" + GOOD_BODY[39:]),
     ErrorCode.MALFORMED_FRAME, "empty pulse"),
    (_frame(1, GOOD_BODY[:16] + struct.pack(">d", 1.5) + GOOD_BODY[24:]),
     ErrorCode.MALFORMED_FRAME, "transmittance"),
    (_frame(1, GOOD_BODY) + _frame(1, GOOD_BODY), ErrorCode.PROTOCOL_VIOLATION, "before the end"),
    (_frame(2, b"") + b"junk", ErrorCode.PROTOCOL_VIOLATION, "after the END"),
    (_frame(2, b"x"), ErrorCode.MALFORMED_FRAME, "END frame with a body"),
])
def test_malformed_input_is_rejected(data: bytes, code: ErrorCode, words: str) -> None:
    err = _err(data)
    assert err.code == code
    assert words in str(err)


def test_error_frame_round_trip() -> None:
    data = PortEncoder.error(ErrorCode.FRAME_TOO_LARGE, "too big")
    (event,) = PortDecoder().receive_data(data)
    assert event == ErrorReceived(int(ErrorCode.FRAME_TOO_LARGE), "too big")


def test_encoder_refuses_oversized_batch() -> None:
    src = AliceSource(presets.get("gys2004"), 1)
    batch = src.emit(0, 100_000)
    from qkdnet.errors import LocalProtocolError
    with pytest.raises(LocalProtocolError, match="maximum"):
        PortEncoder(max_frame_size=1000).pulses(batch)


async def test_fibre_between_two_sockets_on_loopback() -> None:
    """Alice → fibre process (25 km) → Bob, all over loopback TCP."""
    p = presets.get("gys2004")
    km, batches, per_batch = 25.0, 20, 200_000
    src = AliceSource(p, 42)
    bob_result: dict[str, object] = {}
    fibre = FibreElement(p, km, seed=7)

    async def bob(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        stream = await listeners[0].accept()
        await listeners[0].aclose()
        port = QuantumPort(stream, name="bob")
        detector = BobDetector(p, p.eta_bob, seed=8)
        rng = np.random.default_rng(9)
        slots, pulses = [], 0
        async for batch in port:
            pulses += len(batch)
            s, _, _ = detector.detect(batch, rng)
            slots.append(s)
        await port.aclose()
        bob_result["slots"] = np.concatenate(slots)
        bob_result["pulses"] = pulses

    async with trio.open_nursery() as nursery:
        bob_port = await nursery.start(bob)
        fibre_stats: dict[str, int] = {}

        async def fibre_task(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
                             ) -> None:
            fibre_stats.update(await run_fiber(fibre, "127.0.0.1", 0, "127.0.0.1", bob_port,
                                               task_status=task_status))

        fibre_port = await nursery.start(fibre_task)
        alice = QuantumPort(await trio.open_tcp_stream("127.0.0.1", fibre_port), name="alice")
        for i in range(batches):
            await alice.send_batch(src.emit(i * per_batch, per_batch, transmittance=1.0))
        await alice.send_end()
        await alice.aclose()

    n_slots = batches * per_batch
    assert fibre_stats["pulses_out"] == bob_result["pulses"]
    slots = bob_result["slots"]
    assert isinstance(slots, np.ndarray)
    # Bob's detections follow the gain formula for 25 km.
    q, _ = theory.gains(p, km)
    expected = float(np.dot(p.p_mu, q[:, 0])) * n_slots
    assert abs(slots.size - expected) < 4 * math.sqrt(expected)
    # And Alice recognises every detected slot (dark counts included).
    assert np.all(np.diff(slots.astype(np.int64)) > 0)


async def test_fibre_with_intercept_resend_over_loopback() -> None:
    p = presets.get("rusca2018-snspd").with_overrides(dead_time_s=0.0, e_mis=0.0)
    src = AliceSource(p, 5)
    fibre = FibreElement(p, 0.0, attack=parse_attack("intercept-resend:1.0"), seed=1)
    received: list[PulseBatch] = []

    async def bob(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        stream = await listeners[0].accept()
        await listeners[0].aclose()
        received.extend([b async for b in QuantumPort(stream)])

    async with trio.open_nursery() as nursery:
        bob_port = await nursery.start(bob)

        async def fibre_task(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
                             ) -> None:
            await run_fiber(fibre, "127.0.0.1", 0, "127.0.0.1", bob_port,
                            task_status=task_status)

        alice = QuantumPort(await trio.open_tcp_stream(
            "127.0.0.1", await nursery.start(fibre_task)))
        await alice.send_batch(src.emit(0, 300_000))
        await alice.send_end()
        await alice.aclose()

    det = BobDetector(p, p.eta_bob, seed=2)
    s, b, v = det.detect(received[0], np.random.default_rng(3))
    a = src.lookup(s)
    sift = a.basis == b
    assert abs((a.bit[sift] != v[sift]).mean() - 0.25) < 0.02


async def test_garbage_into_fibre_closes_with_clear_error() -> None:
    p = presets.get("gys2004")
    fibre = FibreElement(p, 10.0, seed=1)
    bob_got: list[BaseException] = []

    async def bob(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        stream = await listeners[0].accept()
        await listeners[0].aclose()
        try:
            await QuantumPort(stream).receive()
        except RemoteProtocolError as err:
            bob_got.append(err)

    fibre_err: list[BaseException] = []
    async with trio.open_nursery() as nursery:
        bob_port = await nursery.start(bob)

        async def fibre_task(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
                             ) -> None:
            try:
                await run_fiber(fibre, "127.0.0.1", 0, "127.0.0.1", bob_port,
                                task_status=task_status)
            except RemoteProtocolError as err:
                fibre_err.append(err)

        stream = await trio.open_tcp_stream("127.0.0.1", await nursery.start(fibre_task))
        await stream.send_all(HEADER.pack(b"QP", 1, 1, 0x7FFFFFF0))   # absurd length
        reply = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some(4096):
                reply += chunk
        await stream.aclose()

    (event,) = PortDecoder().receive_data(reply)
    assert isinstance(event, ErrorReceived) and event.code == ErrorCode.FRAME_TOO_LARGE
    assert fibre_err and "exceeds the maximum" in str(fibre_err[0])
    assert bob_got and "upstream failed" in str(bob_got[0])
