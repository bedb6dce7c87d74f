"""The quantum port: emulated pulses as framed binary batches over a byte stream.

Theory of operation
-------------------
Alice, the fibre (with or without Eve) and Bob can run as separate processes; the
photons travel between them as *pulse batches* (spec/quantum-port.md). A batch
covers a range of slots and lists only the non-empty pulses, each as (slot,
photon number, basis, bit) — the Fock-state component of a phase-randomised weak
coherent pulse, which is all the physics downstream needs (the intensity class is
not observable and is not sent). Loss is binomial thinning of the photon numbers,
so Alice may fuse loss up to the first element (``transmittance`` field) and
each element applies only what remains.

:class:`PortEncoder` / :class:`PortDecoder` are sans-I/O: the decoder takes bytes
(``b""`` for end of stream) and returns events, and raises
:class:`~qkdnet.errors.RemoteProtocolError` on anything malformed — bad magic,
unknown version or type, a declared length above the configured maximum (checked
on the header, before any body is buffered), inconsistent counts, slots out of
order, zero photons, a truncated frame at end of stream, data after END.
:class:`QuantumPort` is the thin trio adapter; :func:`run_fiber` the fibre
process behind ``qkdnet fiber``; :func:`run_alice` and :func:`run_bob` the two
ends behind ``qkdnet phy alice`` / ``qkdnet phy bob``.
"""

from __future__ import annotations

import contextlib
import logging
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np
import trio

from qkdnet.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from qkdnet.phy.attacks import Attack, EveRecord
from qkdnet.phy.channel import BobDetector, Detections, apply_loss
from qkdnet.phy.params import PhyParams
from qkdnet.phy.source import MAX_SLOT, AliceSource, PulseBatch, derive_key

log = logging.getLogger(__name__)

MAGIC = b"QP"
VERSION = 1
HEADER = struct.Struct(">2sBBI")          # magic, version, type, body length
PULSES_FIXED = struct.Struct(">QIId")     # start_slot, n_slots, count, transmittance
ERROR_FIXED = struct.Struct(">H")
#: Default largest frame body accepted (bytes): about 3 million pulses.
DEFAULT_MAX_FRAME = 16 << 20
MAX_ERROR_TEXT = 1024


class FrameType:
    """Frame types (spec/quantum-port.md, "Frames")."""

    PULSES = 0x01
    END = 0x02
    ERROR = 0x03


@dataclass(frozen=True)
class PulsesReceived:
    """A pulse batch arrived."""

    batch: PulseBatch


@dataclass(frozen=True)
class EndReceived:
    """The sender finished: no more batches on this stream."""


@dataclass(frozen=True)
class ErrorReceived:
    """The peer reported an error and will close."""

    code: int
    message: str


PortEvent = PulsesReceived | EndReceived | ErrorReceived


def pulses_body_size(count: int) -> int:
    """Body length of a PULSES frame holding ``count`` pulses."""
    return PULSES_FIXED.size + 5 * count + 2 * ((count + 7) // 8)


class PortEncoder:
    """Builds frames (sans-I/O)."""

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame_size = max_frame_size

    def pulses(self, batch: PulseBatch) -> bytes:
        """One PULSES frame; raises LocalProtocolError if it would exceed the maximum."""
        count = len(batch)
        size = pulses_body_size(count)
        if size > self.max_frame_size:
            raise LocalProtocolError(
                f"batch of {count} pulses needs a {size}-byte frame, above the "
                f"maximum {self.max_frame_size}: send smaller batches")
        if not 0 < batch.n_slots < 2**32:
            raise LocalProtocolError("a batch must cover 1 to 2**32 - 1 slots")
        offsets = (batch.slots - np.uint64(batch.start_slot)).astype(">u4")
        return b"".join((
            HEADER.pack(MAGIC, VERSION, FrameType.PULSES, size),
            PULSES_FIXED.pack(batch.start_slot, batch.n_slots, count, batch.transmittance),
            offsets.tobytes(),
            batch.photons.astype(np.uint8).tobytes(),
            np.packbits(batch.basis.astype(bool)).tobytes(),
            np.packbits(batch.bit.astype(bool)).tobytes(),
        ))

    @staticmethod
    def end() -> bytes:
        """The END frame."""
        return HEADER.pack(MAGIC, VERSION, FrameType.END, 0)

    @staticmethod
    def error(code: int, message: str) -> bytes:
        """An ERROR frame (message truncated to 1024 bytes of UTF-8)."""
        text = message.encode("utf-8", "replace")[:MAX_ERROR_TEXT]
        return HEADER.pack(MAGIC, VERSION, FrameType.ERROR, 2 + len(text)) + \
            ERROR_FIXED.pack(int(code)) + text


@dataclass
class PortDecoder:
    """Parses frames from a byte stream (sans-I/O); see the module docstring."""

    max_frame_size: int = DEFAULT_MAX_FRAME
    _buf: bytearray = field(default_factory=bytearray, repr=False)
    _need: int | None = None        # body length of the frame being received
    _type: int = 0
    _next_slot: int = 0
    _ended: bool = False
    _closed: bool = False

    def receive_data(self, data: bytes) -> list[PortEvent]:
        """Feed bytes (``b""`` = end of stream); return the complete events."""
        if self._closed:
            raise LocalProtocolError("decoder already saw the end of the stream")
        if not data:
            self._closed = True
            if self._buf:
                want = (self._need + HEADER.size) if self._need is not None else HEADER.size
                raise RemoteProtocolError(
                    f"truncated frame: stream ended after {len(self._buf)} of {want} bytes",
                    ErrorCode.MALFORMED_FRAME)
            if not self._ended:
                raise RemoteProtocolError("stream ended without an END frame",
                                          ErrorCode.PROTOCOL_VIOLATION)
            return []
        if self._ended:
            raise RemoteProtocolError("data after the END frame", ErrorCode.PROTOCOL_VIOLATION)
        self._buf += data
        events: list[PortEvent] = []
        while True:
            if self._need is None:
                if len(self._buf) < HEADER.size:
                    return events
                self._parse_header()
            assert self._need is not None
            total = HEADER.size + self._need
            if len(self._buf) < total:
                return events
            body = bytes(self._buf[HEADER.size:total])
            del self._buf[:total]
            ftype, self._need = self._type, None
            events.append(self._parse_body(ftype, body))
            if self._ended and self._buf:
                raise RemoteProtocolError("data after the END frame",
                                          ErrorCode.PROTOCOL_VIOLATION)

    def _parse_header(self) -> None:
        magic, version, ftype, length = HEADER.unpack_from(self._buf)
        if magic != MAGIC:
            raise RemoteProtocolError("not a quantum-port frame (bad magic)",
                                      ErrorCode.MALFORMED_FRAME)
        if version != VERSION:
            raise RemoteProtocolError(f"unsupported quantum-port version {version}",
                                      ErrorCode.UNSUPPORTED_VERSION)
        if ftype not in (FrameType.PULSES, FrameType.END, FrameType.ERROR):
            raise RemoteProtocolError(f"unknown quantum-port frame type {ftype:#04x}",
                                      ErrorCode.UNKNOWN_MESSAGE_TYPE)
        if length > self.max_frame_size:
            raise RemoteProtocolError(
                f"frame of {length} bytes exceeds the maximum of {self.max_frame_size}",
                ErrorCode.FRAME_TOO_LARGE)
        self._type, self._need = ftype, length

    def _parse_body(self, ftype: int, body: bytes) -> PortEvent:
        if ftype == FrameType.END:
            if body:
                raise RemoteProtocolError("END frame with a body", ErrorCode.MALFORMED_FRAME)
            self._ended = True
            return EndReceived()
        if ftype == FrameType.ERROR:
            if len(body) < ERROR_FIXED.size or len(body) > ERROR_FIXED.size + MAX_ERROR_TEXT:
                raise RemoteProtocolError("bad ERROR frame length", ErrorCode.MALFORMED_FRAME)
            (code,) = ERROR_FIXED.unpack_from(body)
            self._ended = True
            return ErrorReceived(code, body[ERROR_FIXED.size:].decode("utf-8", "replace"))
        return PulsesReceived(self._parse_pulses(body))

    def _parse_pulses(self, body: bytes) -> PulseBatch:
        if len(body) < PULSES_FIXED.size:
            raise RemoteProtocolError("PULSES frame shorter than its fixed part",
                                      ErrorCode.MALFORMED_FRAME)
        start, n_slots, count, trans = PULSES_FIXED.unpack_from(body)
        if len(body) != pulses_body_size(count):
            raise RemoteProtocolError(
                f"PULSES frame of {len(body)} bytes cannot hold {count} pulses",
                ErrorCode.MALFORMED_FRAME)
        if n_slots == 0 or count > n_slots or start + n_slots > MAX_SLOT:
            raise RemoteProtocolError("PULSES frame with a bad slot range",
                                      ErrorCode.MALFORMED_FRAME)
        if not 0.0 < trans <= 1.0:
            raise RemoteProtocolError("PULSES frame with a transmittance outside (0, 1]",
                                      ErrorCode.MALFORMED_FRAME)
        if start < self._next_slot:
            raise RemoteProtocolError(
                f"batch starts at slot {start}, before the end of the previous batch "
                f"({self._next_slot})", ErrorCode.PROTOCOL_VIOLATION)
        pos = PULSES_FIXED.size
        offsets = np.frombuffer(body, dtype=">u4", count=count, offset=pos)
        pos += 4 * count
        photons = np.frombuffer(body, dtype=np.uint8, count=count, offset=pos).copy()
        pos += count
        nb = (count + 7) // 8
        basis = np.unpackbits(np.frombuffer(body, np.uint8, nb, pos), count=count)
        bit = np.unpackbits(np.frombuffer(body, np.uint8, nb, pos + nb), count=count)
        if count and (int(offsets[-1]) >= n_slots or
                      (count > 1 and not bool(np.all(offsets[1:] > offsets[:-1])))):
            raise RemoteProtocolError("PULSES frame with slots out of order or range",
                                      ErrorCode.MALFORMED_FRAME)
        if count and int(photons.min()) == 0:
            raise RemoteProtocolError("PULSES frame with an empty pulse",
                                      ErrorCode.MALFORMED_FRAME)
        self._next_slot = start + n_slots
        slots = offsets.astype(np.uint64) + np.uint64(start)
        return PulseBatch(start, n_slots, slots, photons, basis, bit, trans)


class QuantumPort:
    """trio adapter: a :class:`PortEncoder`/:class:`PortDecoder` pair on a stream.

    On bad input :meth:`receive` sends an ERROR frame (best effort), closes the
    stream and raises :class:`RemoteProtocolError`; an ERROR frame from the peer
    also raises it, with the peer's message.
    """

    def __init__(self, stream: trio.abc.Stream, *, max_frame_size: int = DEFAULT_MAX_FRAME,
                 name: str = "port") -> None:
        self.stream = stream
        self.name = name
        self.encoder = PortEncoder(max_frame_size)
        self.decoder = PortDecoder(max_frame_size)
        self._events: list[PortEvent] = []
        self._done = False

    async def send_batch(self, batch: PulseBatch) -> None:
        """Send one batch."""
        await self.stream.send_all(self.encoder.pulses(batch))

    async def send_end(self) -> None:
        """Tell the peer no more batches follow."""
        await self.stream.send_all(self.encoder.end())

    async def send_error(self, err: RemoteProtocolError) -> None:
        """Best-effort ERROR frame to the peer."""
        with trio.move_on_after(1.0):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self.stream.send_all(self.encoder.error(err.code, str(err)))

    async def receive(self) -> PulseBatch | None:
        """The next batch, or ``None`` after END."""
        while not self._events:
            if self._done:
                return None
            try:
                data = await self.stream.receive_some(1 << 20)
            except trio.BrokenResourceError:
                data = b""
            try:
                self._events.extend(self.decoder.receive_data(bytes(data)))
            except RemoteProtocolError as err:
                log.warning("%s: closing: %s", self.name, err)
                await self.send_error(err)
                await self.aclose()
                raise
        event = self._events.pop(0)
        if isinstance(event, PulsesReceived):
            return event.batch
        self._done = True
        self._events.clear()
        if isinstance(event, ErrorReceived):
            await self.aclose()
            raise RemoteProtocolError(f"peer reported error {event.code}: {event.message}",
                                      ErrorCode.PROTOCOL_VIOLATION)
        return None

    async def __aiter__(self) -> AsyncIterator[PulseBatch]:
        while (batch := await self.receive()) is not None:
            yield batch

    async def aclose(self) -> None:
        """Close the stream."""
        await self.stream.aclose()


class FibreElement:
    """Sans-I/O fibre of ``km`` km with an optional eavesdropper at its entrance.

    :meth:`process` takes a batch and returns what survives. Loss already fused
    upstream (``batch.transmittance``) is subtracted from the fibre's loss.
    """

    def __init__(self, params: PhyParams, km: float, attack: Attack | None = None,
                 seed: int = 0) -> None:
        self.params = params
        self.km = km
        self.fibre_t = params.fibre_transmittance(km)
        self.attack = attack
        if attack is not None:
            attack.configure(params, self.fibre_t)
        self.record = EveRecord(attack.name) if attack is not None else None
        self.rng = np.random.default_rng([int(derive_key(seed, 5))])
        self.pulses_in = 0
        self.pulses_out = 0

    def process(self, batch: PulseBatch) -> PulseBatch:
        """Apply Eve (if any) and the remaining fibre loss."""
        self.pulses_in += len(batch)
        if batch.transmittance < self.fibre_t * (1 - 1e-12):
            raise RemoteProtocolError(
                f"batch already lost more ({batch.transmittance:.3g}) than this "
                f"{self.km} km fibre ({self.fibre_t:.3g})", ErrorCode.PROTOCOL_VIOLATION)
        remaining = min(self.fibre_t / batch.transmittance, 1.0)
        if self.attack is not None and self.record is not None:
            batch = self.attack.apply(batch, self.rng, self.record)
            # Eve's own records only keep counters here: a fibre process has no
            # way to know which slots Bob detected.
            self.record.slots = self.record.slots[:0]
            self.record.bits = self.record.bits[:0]
            self.record.known = self.record.known[:0]
            if self.attack.replaces_fibre:
                remaining = 1.0
        out = apply_loss(batch, remaining, self.rng)
        self.pulses_out += len(out)
        return out


async def run_fiber(element: FibreElement, listen_host: str, listen_port: int,
                    forward_host: str, forward_port: int, *,
                    max_frame_size: int = DEFAULT_MAX_FRAME,
                    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
                    ) -> dict[str, int]:
    """Accept one upstream connection, forward what survives the fibre downstream.

    Reports the bound listening port through ``task_status``; returns counters.
    """
    listeners = await trio.open_tcp_listeners(listen_port, host=listen_host)
    port = listeners[0].socket.getsockname()[1]
    task_status.started(port)
    try:
        up_stream = await listeners[0].accept()
    finally:
        for listener in listeners:
            await listener.aclose()
    upstream = QuantumPort(up_stream, max_frame_size=max_frame_size, name="fiber<-alice")
    down_stream = await trio.open_tcp_stream(forward_host, forward_port)
    downstream = QuantumPort(down_stream, max_frame_size=max_frame_size, name="fiber->bob")
    try:
        async for batch in upstream:
            try:
                out = element.process(batch)
            except RemoteProtocolError as err:
                await upstream.send_error(err)
                raise
            await downstream.send_batch(out)
        await downstream.send_end()
    except RemoteProtocolError as err:
        await downstream.send_error(RemoteProtocolError(f"upstream failed: {err}", err.code))
        raise
    finally:
        await upstream.aclose()
        await downstream.aclose()
    stats = {"pulses_in": element.pulses_in, "pulses_out": element.pulses_out}
    if element.record is not None:
        stats["eve_pulses_seen"] = element.record.pulses_seen
        stats["eve_pulses_attacked"] = element.record.pulses_attacked
    return stats


async def run_alice(source: AliceSource, host: str, port: int, n_slots: int, *,
                    batch_slots: int = 1 << 22, transmittance: float = 1.0,
                    start_slot: int = 0, max_frame_size: int = DEFAULT_MAX_FRAME) -> int:
    """Connect to a quantum port and send ``n_slots`` slots of pulses; returns pulses sent.

    ``transmittance`` fuses that much loss into the emission (leave 1.0 when an
    eavesdropper sits at the fibre entrance).
    """
    stream = await trio.open_tcp_stream(host, port)
    out = QuantumPort(stream, max_frame_size=max_frame_size, name="alice")
    sent = 0
    try:
        pos, end = start_slot, start_slot + n_slots
        while pos < end:
            n = min(batch_slots, end - pos)
            batch = source.emit(pos, n, transmittance)
            sent += len(batch)
            await out.send_batch(batch)
            pos += n
        await out.send_end()
    finally:
        await out.aclose()
    return sent


async def run_bob(params: PhyParams, host: str, port: int, *, seed: int = 0,
                  max_frame_size: int = DEFAULT_MAX_FRAME,
                  task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
                  ) -> Detections:
    """Accept one quantum-port connection and detect what arrives (Bob's receiver).

    Returns all detections (the caller bounds the run length); reports the bound
    port through ``task_status``.
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    task_status.started(listeners[0].socket.getsockname()[1])
    try:
        stream = await listeners[0].accept()
    finally:
        for listener in listeners:
            await listener.aclose()
    inp = QuantumPort(stream, max_frame_size=max_frame_size, name="bob")
    detector = BobDetector(params, params.eta_bob, seed)
    rng = np.random.default_rng([int(derive_key(seed, 6))])
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    first: int | None = None
    last_end = 0
    try:
        async for batch in inp:
            first = batch.start_slot if first is None else first
            last_end = batch.start_slot + batch.n_slots
            parts.append(detector.detect(batch, rng))
    finally:
        await inp.aclose()
    if not parts:
        e8 = np.empty(0, dtype=np.uint8)
        return Detections(np.empty(0, np.uint64), e8, e8, None, 0, 0)
    start = first or 0
    return Detections(np.concatenate([x[0] for x in parts]),
                      np.concatenate([x[1] for x in parts]),
                      np.concatenate([x[2] for x in parts]), None, start, last_end - start)
