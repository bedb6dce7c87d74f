"""Trio driver for the link sessions: sideband frames, the PHY, the key store, timers.

Theory of operation
-------------------
:class:`LinkEndpoint` runs one end of a link on an existing
:class:`~qkdnet.sideband.SidebandChannel`.  It does not own the channel's receive
loop: whoever does (the hub, a spoke, or :func:`run_point_to_point`) routes link
frames (types 0x10–0x3F) to :meth:`LinkEndpoint.handle_frame`, e.g. through a
:class:`~qkdnet.sideband.FrameRouter`.  Inside, three tasks cooperate:

* the *core* task owns the sans-I/O session.  It takes one input at a time from an
  inbox (a received frame, PHY results, a request to start a block), calls the
  session in a worker thread (``trio.to_thread``: Cascade and privacy amplification
  are numpy work that releases the GIL in its big loops) and executes the outputs in
  order — send a frame, write a block to the key store (in the trio thread: the
  store is single-threaded), publish stats.  Timers: the inbox wait is bounded by
  ``session.get_timer()`` and expiry calls ``handle_timer``.
* the *PHY* task (receiver) runs the emulated quantum channel for each requested
  slot range, in order, in another worker thread, and posts the detections back
  to the inbox.  Blocks are pipelined: while block k is being reconciled, the PHY
  already emulates block k + 1.
* the *scheduler* task (transmitter, :meth:`LinkEndpoint.run_blocks`) keeps up to
  ``max_in_flight`` blocks open and backs off after an aborted block.

Key reaches the store only through :class:`~qkdnet.link.session.StoreBlock`
outputs, i.e. after verification and privacy amplification, in two phases (the
receiver's -rx parts at PA, the transmitter's whole block at BLOCK_DONE, the
receiver's -tx parts at CONFIRM), each one key-store transaction.  Slot ranges are
claimed durably in the key store before they are used (the transmitter's
``link.next_slot:<peer>``, the receiver's ``link.rx_next_slot:<peer>``), so no
range is ever used twice for a peer, across sessions and restarts.  Every finished
or aborted block is appended to :attr:`LinkEndpoint.stats` and reported to
``on_block`` callbacks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import secrets
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import trio

from qkdnet.errors import (
    ErrorCode,
    KeyExhausted,
    LinkAborted,
    LocalProtocolError,
    QkdnetError,
    RemoteProtocolError,
)
from qkdnet.link import wire as w
from qkdnet.link.session import (
    BlockAborted,
    BlockStats,
    BlockStored,
    BurnParts,
    DetectionsNeeded,
    LinkConfig,
    LinkSession,
    Output,
    ReceiverSession,
    Send,
    State,
    StoreBlock,
    TransmitterSession,
)
from qkdnet.link.wire import AbortReason

log = logging.getLogger(__name__)

#: Message types the link layer owns (register them with a FrameRouter).
LINK_TYPES = range(0x10, 0x40)

#: Durable per-peer slot high-water marks in the key store (``KeyStore.counter``):
#: the transmitter's next unused slot, and the receiver's first acceptable slot.
TX_SLOT_COUNTER = "link.next_slot:{peer}"
RX_SLOT_COUNTER = "link.rx_next_slot:{peer}"

_STORE_ERRORS: tuple[type[BaseException], ...] = (QkdnetError, OSError, sqlite3.Error)

#: Frames whose handling is numpy work worth a worker thread (sifting, estimation,
#: syndromes and decoding, verification and privacy amplification).
_HEAVY_FRAMES = frozenset(int(t) for t in (
    w.LinkMsg.DETECTIONS, w.LinkMsg.SIFT, w.LinkMsg.ESTIMATE, w.LinkMsg.ESTIMATE_RESULT,
    w.LinkMsg.VERIFY, w.LinkMsg.PA, w.LinkMsg.LDPC_SYNDROME, w.LinkMsg.LDPC_REPLY))


class _LinkDown(Exception):
    """The channel can no longer carry link frames."""


#: Why a link stops when its sideband connection closes: its normal end.
CONNECTION_ENDED = "sideband connection ended"


class EmulatedPhy:
    """The in-process quantum link: Alice's source and the fibre + detectors to Bob.

    Alice's end uses :attr:`source` (for ``lookup``); Bob's end calls :meth:`run`.
    In emulation the fibre needs Alice's pulses, so the receiver side holds an
    :class:`~qkdnet.phy.source.AliceSource` with the same seed; across processes
    both ends build an ``EmulatedPhy`` from the same (preset, km, seed).
    ``keep_eve`` keeps every block's Detections, attack record included, in
    :attr:`detections` keyed by first slot (tests compare them with the bounds).

    Emulated key is only as secret as ``seed``: Alice's choices are a pure function
    of (seed, slot) and slot numbers are public (BLOCK_START).  It tests the
    protocol; it is no source of secrets.

    The channel's randomness (loss, detector noise, Eve's coins) is drawn per block
    from ``noise_seed`` and the block's slot range, so it never repeats for a new
    range, whatever the connection: ``noise_seed=None`` derives it from ``seed``
    (reproducible runs); the hub passes fresh entropy.  The PHY refuses a range
    that starts before the end of the previous one.
    """

    def __init__(self, params: Any, km: float, *, attack: Any = None, seed: int = 0,
                 keep_eve: bool = False, noise_seed: int | None = None) -> None:
        from qkdnet.phy.attacks import parse_attack
        from qkdnet.phy.channel import QuantumChannel
        from qkdnet.phy.source import AliceSource

        self.params = params
        self.km = km
        self.attack = parse_attack(attack) if isinstance(attack, str) or attack is None \
            else attack
        self.source = AliceSource(params, seed)
        self._noise_key = (seed + 1 if noise_seed is None else noise_seed) % (1 << 64)
        self.channel = QuantumChannel(params, km, attack=self.attack, seed=self._noise_key)
        self.keep_eve = keep_eve
        self.detections: dict[int, Any] = {}
        self._next_slot = 0

    def __repr__(self) -> str:
        return f"EmulatedPhy({self.channel!r})"

    def _block_seed(self, start_slot: int, n_slots: int) -> int:
        import hashlib

        h = hashlib.blake2b(digest_size=8, person=b"qkdnet-phy-noise")
        h.update(b"".join(int(v).to_bytes(8, "big")
                          for v in (self._noise_key, start_slot, n_slots)))
        return int.from_bytes(h.digest(), "big") >> 2

    def run(self, start_slot: int, n_slots: int) -> Any:
        """Bob's detections for ``[start_slot, start_slot + n_slots)``."""
        from qkdnet.phy.channel import QuantumChannel

        if start_slot < self._next_slot:
            raise LocalProtocolError(
                f"slot range starts at {start_slot}, before the end of the previous one "
                f"({self._next_slot}): slots cannot be replayed")
        self._next_slot = start_slot + n_slots
        # A channel per block, seeded from the range: its noise never repeats for a
        # new range, even on a fresh connection (detector dead time does not carry
        # over block boundaries, which blocks never rely on).
        self.channel = QuantumChannel(self.params, self.km, attack=self.attack,
                                      seed=self._block_seed(start_slot, n_slots))
        # A block must stay within the wire's detection limit; stop emulating as soon
        # as it cannot, so a peer asking for 2^34 slots costs bounded memory.
        from qkdnet.link.wire import MAX_CLICKS

        det = self.channel.run(self.source, start_slot, n_slots, max_detections=MAX_CLICKS)
        if self.keep_eve:
            self.detections[start_slot] = det
        return det


class PortEmitter:
    """Transmitter's side of a quantum port (:mod:`qkdnet.phy.port`): emits each
    block's pulses, in block order, as batches of at most ``batch_slots`` slots.

    ``transmittance`` is loss fused into the emission (leave 1.0 when a fibre
    process or an eavesdropper sits downstream and applies it).
    """

    def __init__(self, source: Any, port: Any, *, transmittance: float = 1.0,
                 batch_slots: int = 1 << 22) -> None:
        self.source = source
        self.port = port
        self.transmittance = transmittance
        self.batch_slots = batch_slots

    def __repr__(self) -> str:
        return f"PortEmitter({self.port.name})"

    async def aclose(self) -> None:
        """Send END (no more pulses) and close the port."""
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.port.send_end()
        await self.port.aclose()

    async def emit(self, start_slot: int, n_slots: int) -> None:
        pos, end = start_slot, start_slot + n_slots
        while pos < end:
            k = min(self.batch_slots, end - pos)
            batch = await trio.to_thread.run_sync(self.source.emit, pos, k, self.transmittance)
            await self.port.send_batch(batch)
            pos += k


class PortPhy:
    """Receiver's PHY fed by a quantum port: Bob's detectors on the batches that arrive.

    :meth:`arun` collects the batches of ``[start_slot, start_slot + n_slots)`` (in
    order; batches of earlier, abandoned ranges are dropped, later ones kept) and
    returns the squashed detections, as :meth:`QuantumChannel.run` does in process.
    """

    def __init__(self, params: Any, port: Any = None, *, seed: int = 0) -> None:
        from qkdnet.phy.channel import BobDetector
        from qkdnet.phy.source import derive_key

        self.params = params
        self.port = port
        #: Set once a port is attached (the port may connect after the sideband).
        self.connected = trio.Event()
        if port is not None:
            self.connected.set()
        self.detector = BobDetector(params, params.eta_bob, seed)
        self._rng = np.random.default_rng([int(derive_key(seed, 6))])
        self._early: list[Any] = []

    def __repr__(self) -> str:
        return f"PortPhy({self.port.name if self.port is not None else 'not connected'})"

    def attach(self, port: Any) -> None:
        """Use ``port`` (a :class:`qkdnet.phy.port.QuantumPort`) from now on."""
        self.port = port
        self.connected.set()

    async def _next_batch(self) -> Any:
        if self._early:
            return self._early.pop(0)
        await self.connected.wait()
        batch = await self.port.receive()
        if batch is None:
            raise LocalProtocolError("quantum port ended")
        return batch

    async def arun(self, start_slot: int, n_slots: int) -> Any:
        from qkdnet.phy.channel import Detections

        end = start_slot + n_slots
        parts = []
        pos = start_slot
        while pos < end:
            batch = await self._next_batch()
            b_end = batch.start_slot + batch.n_slots
            if b_end <= start_slot:
                continue                     # pulses of a block abandoned earlier
            if batch.start_slot >= end:
                self._early.insert(0, batch)  # the next block's pulses
                break
            if batch.start_slot != pos or b_end > end:
                raise LocalProtocolError("quantum port batches do not tile the block")
            parts.append(await trio.to_thread.run_sync(self.detector.detect, batch,
                                                       self._rng))
            pos = b_end
        if pos < end:
            raise LocalProtocolError("quantum port skipped part of the block")
        return Detections(np.concatenate([x[0] for x in parts]),
                          np.concatenate([x[1] for x in parts]),
                          np.concatenate([x[2] for x in parts]), None, start_slot, n_slots)


@dataclass
class LinkStats:
    """What an endpoint has done so far (public numbers only)."""

    blocks: list[BlockStats] = field(default_factory=list)
    stored: int = 0
    aborted: int = 0
    key_bits: int = 0
    auth_bits: int = 0
    abort_reasons: dict[str, int] = field(default_factory=dict)

    def record(self, st: BlockStats) -> None:
        self.blocks.append(st)
        self.auth_bits += st.auth_bits
        if st.abort_reason is None:
            self.stored += 1
            self.key_bits += st.ell
        else:
            self.aborted += 1
            self.abort_reasons[st.abort_reason] = self.abort_reasons.get(st.abort_reason, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return {"stored": self.stored, "aborted": self.aborted, "key_bits": self.key_bits,
                "auth_bits": self.auth_bits, "abort_reasons": dict(self.abort_reasons),
                "blocks": [b.as_dict() for b in self.blocks]}


BlockCallback = Callable[[BlockStats], None]


class LinkEndpoint:
    """One end of a QKD link over a sideband channel (see the module docstring).

    ``role`` is ``"transmitter"`` (needs ``source`` — an AliceSource) or
    ``"receiver"`` (needs ``phy`` with ``run(start_slot, n_slots) -> Detections``).
    ``store`` (a :class:`qkdnet.keystore.KeyStore`) receives the key for ``peer``;
    ``None`` keeps no key (dry runs).  ``tracer`` (:mod:`qkdnet.tracing`) gets a
    ``link``/``block_stored`` or ``block_aborted`` event per block with its stats
    and abort reason.  ``config`` is the transmitter's link config;
    the receiver builds one per link session id it sees from ``config`` (only
    ``mu``, ``p`` and local limits are used; the session id comes from the peer).
    """

    def __init__(self, role: str, channel: Any, config: LinkConfig, *, peer: str,
                 store: Any = None, source: Any = None, phy: Any = None,
                 on_block: BlockCallback | None = None, use_threads: bool = True,
                 max_inbox: int = 256, tracer: Any = None, emitter: Any = None) -> None:
        if role not in ("transmitter", "receiver"):
            raise ValueError("role must be 'transmitter' or 'receiver'")
        if role == "transmitter" and source is None:
            raise ValueError("the transmitter needs the AliceSource")
        if role == "receiver" and phy is None:
            raise ValueError("the receiver needs a PHY (run(start, n) -> Detections)")
        self.role = role
        self.channel = channel
        self.config = config
        self.peer = peer
        self.store = store
        self.phy = phy
        self.stats = LinkStats()
        if tracer is None:
            from qkdnet.tracing import NULL_TRACER
            tracer = NULL_TRACER
        #: qlog-style tracer: one ``link`` event per block (public statistics only).
        self.tracer = tracer
        self._callbacks: list[BlockCallback] = [on_block] if on_block else []
        self._threads = use_threads
        self._inbox_send, self._inbox = trio.open_memory_channel[tuple[Any, ...]](max_inbox)
        #: Transmitter over a quantum port: emits each started block's pulses.
        self.emitter = emitter
        self._emit_send, self._emit_recv = trio.open_memory_channel[tuple[int, int]](math.inf)
        self._phy_send, self._phy_recv = trio.open_memory_channel[
            tuple[int, DetectionsNeeded]](math.inf)
        self._sessions: dict[int, LinkSession] = {}
        self._finished = trio.Event()
        #: Set (and replaced) whenever the core has processed an input.
        self._changed = trio.Event()
        self._consecutive_aborts = 0
        self._levels = (0, 0)
        #: Receiver: the durable first acceptable slot (refreshed from the store).
        self._slot_floor = 0
        #: The RemoteProtocolError that ended this endpoint, if any.
        self.fatal_error: BaseException | None = None
        if role == "transmitter":
            self._sessions[config.session_id] = TransmitterSession(
                config, source, auth_levels=self._auth_levels)

    def __repr__(self) -> str:
        return f"LinkEndpoint({self.role}, peer={self.peer!r}, stored={self.stats.stored})"

    # -- wiring -----------------------------------------------------------------------

    def add_callback(self, cb: BlockCallback) -> None:
        """Call ``cb(stats)`` after every block this end stores or abandons."""
        self._callbacks.append(cb)

    def register(self, router: Any) -> None:
        """Route link frame types of a :class:`qkdnet.sideband.FrameRouter` to this end."""
        router.register(LINK_TYPES, self.handle_frame)

    async def handle_frame(self, channel: Any, frame: Any) -> None:
        """FrameRouter handler: queue a received link frame for the core task."""
        await self._inbox_send.send(("frame", frame))

    @property
    def session(self) -> LinkSession | None:
        """The transmitter's session, or the receiver's most recent one."""
        if not self._sessions:
            return None
        return list(self._sessions.values())[-1]

    # -- tasks ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Run the core (and, at the receiver, the PHY) until cancelled or :meth:`stop`."""
        async with trio.open_nursery() as nursery:
            if self.role == "receiver":
                nursery.start_soon(self._phy_task)
            if self.emitter is not None:
                nursery.start_soon(self._emit_task)
            task_status.started()
            await self._core()
            nursery.cancel_scope.cancel()

    async def stop(self) -> None:
        """Abandon blocks in flight (ABORT sent) and end :meth:`run`."""
        if not self._finished.is_set():
            await self._inbox_send.send(("stop",))

    async def link_down(self, reason: str) -> None:
        """The channel is gone: abandon blocks in flight (no frames sent), end :meth:`run`."""
        if not self._finished.is_set():
            await self._inbox_send.send(("down", reason))
            await self._finished.wait()

    @property
    def finished(self) -> trio.Event:
        """Set once :meth:`run`'s core has ended (stopped, link down, fatal error)."""
        return self._finished

    async def run_blocks(self, n_blocks: int | None, block_slots: int, *,
                         first_index: int = 0, slot_base: int = 0, max_in_flight: int = 2,
                         backoff: float = 0.05, max_backoff: float = 5.0) -> LinkStats:
        """Transmitter: run ``n_blocks`` blocks (None: forever) of ``block_slots`` slots.

        Returns when every started block has been stored or abandoned.  After an
        abandoned block the next one starts after ``backoff`` seconds (doubling
        while blocks keep aborting, up to ``max_backoff``).  ``slot_base`` is a lower
        bound: with a store, each block starts at or after the durable per-peer
        high-water mark, which is advanced before the block starts
        (:meth:`claim_tx_slots`), so blocks are consecutive but not necessarily at
        ``slot_base + index * block_slots``.
        """
        if self.role != "transmitter":
            raise ValueError("only the transmitter starts blocks")
        index = first_index
        started = 0
        sess = self.session
        assert sess is not None
        pos = slot_base
        while (n_blocks is None or started < n_blocks) and not self._finished.is_set():
            while sess.in_flight() >= max_in_flight and not self._finished.is_set():
                await self._changed.wait()
            if self._consecutive_aborts:
                await trio.sleep(min(backoff * 2 ** (self._consecutive_aborts - 1),
                                     max_backoff))
            if self._finished.is_set():
                break
            start = self.claim_tx_slots(pos, block_slots)
            pos = start + block_slots
            await self._inbox_send.send(("start", index, start, block_slots))
            started += 1
            index += 1
            # Wait for the core to open the block before counting blocks in flight again.
            while sess.block_state(index - 1) is None and not self._finished.is_set():
                await self._changed.wait()
        while sess.in_flight() > 0 and not self._finished.is_set():
            await self._changed.wait()
        return self.stats

    def claim_tx_slots(self, at_least: int, n_slots: int) -> int:
        """Transmitter: the first slot of a new block of ``n_slots``, made durable first.

        The block starts at ``at_least`` or at the store's per-peer high-water mark
        (:data:`TX_SLOT_COUNTER`), whichever is later, and the mark is advanced past
        the block (one committed transaction) before the slots are used, so no slot
        range is ever used twice for this peer, across sessions and restarts.
        Without a store only ``at_least`` counts.
        """
        if self.store is None:
            return at_least
        name = TX_SLOT_COUNTER.format(peer=self.peer)
        start = max(at_least, self.store.counter(name))
        if start + n_slots > w.SLOT_LIMIT:
            raise LocalProtocolError("the link has used up its slot numbers (2^60)")
        self.store.advance_counter(name, start + n_slots)
        return start

    def _claim_rx_slots(self, need: DetectionsNeeded) -> bool:
        """Receiver: durably accept ``need``'s slot range, or refuse it (False).

        Check and advance run in the trio thread with no await in between, so two
        endpoints for one peer (a reconnect racing the old connection) cannot both
        accept a range.
        """
        if self.store is None:
            return True
        name = RX_SLOT_COUNTER.format(peer=self.peer)
        floor = self.store.counter(name)
        if need.start_slot < floor:
            self._slot_floor = floor
            return False
        self._slot_floor = self.store.advance_counter(name, need.start_slot + need.n_slots)
        return True

    async def _emit_task(self) -> None:
        async for start, n in self._emit_recv:
            try:
                await self.emitter.emit(start, n)
            except (QkdnetError, OSError, trio.BrokenResourceError,
                    trio.ClosedResourceError) as err:
                # Without pulses the receiver's blocks time out; say why here.
                log.warning("quantum port emission failed: %s", type(err).__name__)
                return

    async def _phy_task(self) -> None:
        async for sid, need in self._phy_recv:
            try:
                if hasattr(self.phy, "arun"):
                    det = await self.phy.arun(need.start_slot, need.n_slots)
                else:
                    det = await self._call(self.phy.run, need.start_slot, need.n_slots,
                                           heavy=True)
            except Exception as err:  # any PHY failure abandons just that block
                # PHY errors describe counts and sizes, never key material.
                what = f"{type(err).__name__}: {err}"[:300]
                log.warning("PHY failed for block %d: %s", need.block, what)
                await self._inbox_send.send(("phy_error", sid, need, what))
            else:
                await self._inbox_send.send(("phy", sid, need, det))

    async def _core(self) -> None:
        try:
            await self._core_loop()
        except _LinkDown as down:
            # A closed connection is how a link normally ends; anything else is news.
            log.log(logging.INFO if str(down) == CONNECTION_ENDED else logging.WARNING,
                    "link endpoint stops: %s", down)
            now = trio.current_time()
            for sess in self._sessions.values():
                for out in sess.abort_all(AbortReason.LOCAL, f"link down: {down}", now):
                    if isinstance(out, BlockAborted):   # its ABORT frame cannot be sent
                        self._publish(out.stats)
        finally:
            self._finished.set()
            self._kick()

    def _kick(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _core_loop(self) -> None:
        while True:
            self._kick()
            deadline = min((t for s in self._sessions.values()
                            if (t := s.get_timer()) is not None), default=math.inf)
            item: tuple[Any, ...] | None = None
            with trio.move_on_at(deadline):
                item = await self._inbox.receive()
            now = trio.current_time()
            if item is not None and item[0] == "frame":
                self._refresh_levels(int(item[1].type))
            if item is None:
                for sid, sess in list(self._sessions.items()):
                    await self._execute(sid, await self._call(sess.handle_timer, now,
                                                              heavy=False))
                continue
            kind = item[0]
            if kind == "down":
                raise _LinkDown(item[1])
            if kind == "stop":
                for sid, sess in list(self._sessions.items()):
                    await self._execute(sid, sess.abort_all(AbortReason.CANCELLED,
                                                            "link stopping", now))
                return
            if kind == "frame":
                try:
                    await self._on_frame(item[1], now)
                except RemoteProtocolError as err:
                    # A frame no block of ours can own: the connection is unusable.
                    log.warning("link: %s; closing the sideband connection", err)
                    for sess in self._sessions.values():
                        sess.abort_all(AbortReason.PROTOCOL, str(err), now)
                    if hasattr(self.channel, "abort"):
                        await self.channel.abort(err)
                    self.fatal_error = err
                    return
            elif kind == "start":
                sess = self._sessions[self.config.session_id]
                assert isinstance(sess, TransmitterSession)
                _, index, start, n = item
                await self._execute(self.config.session_id,
                                    await self._call(sess.start_block, index, start, n, now,
                                                     heavy=False))
                if self.emitter is not None:
                    self._emit_send.send_nowait((start, n))
            elif kind == "phy":
                _, sid, need, det = item
                rsess = self._sessions.get(sid)
                if isinstance(rsess, ReceiverSession):
                    outs = await self._call(rsess.supply_detections, need.block, det, now,
                                            heavy=True)
                    await self._execute(sid, outs)
            elif kind == "phy_error":
                _, sid, need, what = item
                if (rsess := self._sessions.get(sid)) is not None:
                    await self._execute(sid, rsess.abort_block(
                        need.block, AbortReason.LOCAL, f"PHY failed: {what}", now))

    async def _on_frame(self, frame: Any, now: float) -> None:
        sid = int(frame.session)
        sess = self._sessions.get(sid)
        if sess is None:
            if self.role != "receiver":
                raise RemoteProtocolError(f"link frame for unknown session {sid:#x}")
            cfg = dataclasses.replace(self.config, session_id=sid)
            sess = ReceiverSession(cfg, slot_floor=lambda: self._slot_floor)
            # Keep only a few receiver sessions (a transmitter restart opens a new one).
            while len(self._sessions) >= 4:
                self._sessions.pop(next(iter(self._sessions)))
            self._sessions[sid] = sess
        outs = await self._call(sess.receive_frame, frame, now,
                                heavy=int(frame.type) in _HEAVY_FRAMES)
        await self._execute(sid, outs)

    async def _call(self, fn: Callable[..., Any], *args: Any, heavy: bool) -> Any:
        # numpy-heavy steps go to a worker thread (numpy releases the GIL in its big
        # loops, so they overlap with the other end, the PHY and other links); short
        # steps (a Cascade round, an LDPC request, a store) run inline: a thread hop
        # costs two GIL hand-offs and a wake-up, more than most such steps.
        if self._threads and heavy:
            return await trio.to_thread.run_sync(fn, *args)
        return fn(*args)

    async def _execute(self, sid: int, outputs: list[Output]) -> None:
        skip_block: int | None = None
        for out in outputs:
            if skip_block is not None and getattr(out, "block", None) == skip_block:
                continue
            if isinstance(out, Send):
                await self._send(out.body, sid)
            elif isinstance(out, DetectionsNeeded):
                try:
                    claimed = self._claim_rx_slots(out)
                except _STORE_ERRORS as err:
                    log.error("key store failed for block %d: %s", out.block,
                              type(err).__name__)
                    skip_block = out.block
                    await self._abandon(sid, out.block, AbortReason.LOCAL,
                                        "key store failed")
                    continue
                if not claimed:
                    # Lost a race with another connection of this peer that accepted
                    # an overlapping range since the session checked the floor.
                    skip_block = out.block
                    await self._abandon(sid, out.block, AbortReason.PROTOCOL,
                                        "BLOCK_START: slot range already used")
                    continue
                await self._phy_send.send((sid, out))
            elif isinstance(out, StoreBlock):
                try:
                    self._store(out)
                except _STORE_ERRORS as err:
                    # add_blocks is one transaction: nothing of this step is stored.
                    # Tell the peer and report the block as abandoned.
                    log.error("key store failed for block %d: %s", out.block,
                              type(err).__name__)
                    skip_block = out.block
                    await self._abandon(sid, out.block, AbortReason.LOCAL,
                                        "key store failed")
            elif isinstance(out, BurnParts):
                self._burn(out)
            elif isinstance(out, BlockStored | BlockAborted):
                self._publish(out.stats)
                if isinstance(out, BlockAborted) and out.error is not None:
                    log.info("link block %d aborted on a protocol error: %s",
                             out.block, out.error)

    async def _send(self, body: Any, sid: int) -> None:
        # The block's exchange goes under deferred authentication; its checkpoints
        # (BLOCK_START, VERIFY, PA, BLOCK_DONE, CONFIRM, ABORT) carry their own tags.
        deferred = w.msg_type(body) in w.DEFERRED_MSGS
        try:
            await self.channel.send(body, session=sid, deferred=deferred)
        except (QkdnetError, trio.BrokenResourceError, trio.ClosedResourceError) as err:
            # Out of authentication key, or the connection is gone: the link cannot
            # continue on this channel.  Blocks in flight are abandoned, nothing stored.
            self.fatal_error = err
            state = getattr(getattr(getattr(self.channel, "conn", None), "state", None),
                            "name", "")
            if state.startswith("CLOSE"):
                # The peer (or we) began closing the connection: the link's normal end,
                # not a failure (the endpoint logs it as such).
                raise _LinkDown(CONNECTION_ENDED) from None
            raise _LinkDown(f"{type(err).__name__}: {err}") from None

    async def _abandon(self, sid: int, block: int, reason: AbortReason, detail: str
                       ) -> None:
        """Abandon ``block`` for a local reason found while executing its outputs."""
        sess = self._sessions.get(sid)
        if sess is not None and sess.block_state(block) not in (None, State.DONE):
            # Still live in the session: let it send ABORT and report the block.
            await self._execute(sid, sess.abort_block(block, reason, detail,
                                                      trio.current_time()))
            return
        # The session already finished it (the transmitter after BLOCK_DONE, the
        # receiver after CONFIRM): tell the peer and report it here.
        await self._send(w.encode_abort(block, reason), sid)
        self._publish(BlockStats(block=block, abort_reason=reason.word, abort_detail=detail))

    def _store(self, out: StoreBlock) -> None:
        if self.store is None or not out.parts:
            return
        from qkdnet.keystore import BlockMeta

        meta = BlockMeta(link_session=out.link_session, created=time.time(),
                         eps_sec=out.eps_sec, eps_cor=out.eps_cor,
                         leaked_ec_bits=out.leaked_ec_bits,
                         auth_bits_spent=out.auth_bits_spent, qber=out.qber)
        # One transaction: all parts of this step or none (no half-stored block).
        self.store.add_blocks(self.peer, [(p.purpose, p.block_id, p.key, p.n_bits)
                                          for p in out.parts], meta)

    def _burn(self, out: BurnParts) -> None:
        """Consume stored -rx parts that the peer never mirrored (they are dead key)."""
        if self.store is None:
            return
        from qkdnet.keystore import KeySegment

        log.warning("link block %d abandoned by the peer after this end stored part of "
                    "it; burning %d stored part(s)", out.block, len(out.parts))
        for purpose, bid, n_bits in out.parts:
            try:
                self.store.take(self.peer, purpose, [KeySegment(bid, 0, n_bits)])
            except _STORE_ERRORS as err:
                log.error("could not burn block %#x of %s: %s", bid, purpose,
                          type(err).__name__)

    def _publish(self, st: BlockStats) -> None:
        self.stats.record(st)
        if self.tracer.enabled:
            self.tracer.event("link", "block_stored" if st.abort_reason is None
                              else "block_aborted", {"role": self.role, **st.as_dict()})
        self._consecutive_aborts = 0 if st.abort_reason is None else \
            self._consecutive_aborts + 1
        for cb in self._callbacks:
            try:
                cb(st)
            except Exception:  # a faulty observer must not stop the link
                log.exception("link block callback failed")

    def _refresh_levels(self, msg_type: int) -> None:
        # Read here, in the trio thread: the key store is bound to its thread, and the
        # session (which asks for the levels / the slot floor) runs in a worker thread.
        # Only before the frames that use them (two queries per frame were most of the
        # key store's work): VERIFY at the transmitter (it splits ℓ), BLOCK_START at
        # the receiver (it checks the slot floor).
        if self.store is not None and self.role == "transmitter":
            if msg_type != w.LinkMsg.VERIFY:
                return
            self._levels = (self.store.available(self.peer, "auth-tx"),
                            self.store.available(self.peer, "auth-rx"))
        elif self.store is not None and msg_type == w.LinkMsg.BLOCK_START:
            self._slot_floor = self.store.counter(RX_SLOT_COUNTER.format(peer=self.peer))

    def _auth_levels(self) -> tuple[int, int]:
        return self._levels


async def serve_link_channel(channel: Any, endpoint: LinkEndpoint, router: Any = None, *,
                             task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                             ) -> None:
    """Run ``endpoint`` on ``channel`` until the connection ends, then stop it.

    Owns the channel's receive loop (``channel.run(router)``, link types routed to
    the endpoint).  If the connection ends, blocks in flight are abandoned
    (:meth:`LinkEndpoint.link_down`); if the endpoint stops on its own (out of
    authentication key, an unattributable frame) the connection is closed so the
    peer learns at once.  The channel's ending error is re-raised as itself, not
    wrapped in an ExceptionGroup, so servers such as
    :func:`qkdnet.sideband.serve_sideband` can handle it.
    """
    from qkdnet.sideband import FrameRouter

    if router is None:
        router = FrameRouter()
    endpoint.register(router)
    failure: BaseException | None = None

    async def close_when_endpoint_fails() -> None:
        await endpoint.finished.wait()
        if endpoint.fatal_error is not None:
            code = ErrorCode.KEY_EXHAUSTED if isinstance(endpoint.fatal_error, KeyExhausted) \
                else ErrorCode.LINK_ABORTED
            try:
                await channel.abort(code, "link endpoint stopped")
            except QkdnetError:     # not even a tag key for ERROR: just hang up
                await channel.stream.aclose()

    async with trio.open_nursery() as n:
        await n.start(endpoint.run)
        n.start_soon(close_when_endpoint_fails)
        task_status.started()
        try:
            await channel.run(router)
        except (QkdnetError, trio.BrokenResourceError, trio.ClosedResourceError) as err:
            failure = err
        await endpoint.link_down(CONNECTION_ENDED
                                 + (f": {type(failure).__name__}" if failure else ""))
        n.cancel_scope.cancel()
    if failure is not None:
        raise failure


def time_slot_base() -> int:
    """A first slot for a new link session that lies after every earlier session's.

    The emulated source is a pure function of (seed, slot), so a session that
    restarted at slot 0 would repeat Alice's choices (and key bits); the PHY also
    refuses slots it has already emulated.  256 slots per microsecond of wall time
    stays below the PHY's 2^60 bound for centuries.
    """
    return (time.time_ns() // 1000) << 8


#: Session ids from here up are reserved (docs/design.md): 0xFFFFFFFF names the
#: bootstrap blocks, 0xFFFFFFFE the hub's test-only prefill.
RESERVED_SESSION_IDS = 0xFFFFFFFE


def new_session_id(randbits: Callable[[int], int] = secrets.randbits) -> int:
    """A random 32-bit link session id in ``[1, 0xFFFFFFFE)`` (block ids derive from it).

    0 and the reserved ids (:data:`RESERVED_SESSION_IDS` and up) are drawn again.
    """
    while True:
        sid = randbits(32)
        if 0 < sid < RESERVED_SESSION_IDS:
            return sid


def aborted_error(st: BlockStats) -> LinkAborted | None:
    """The :class:`LinkAborted` describing an abandoned block, or None if it was stored."""
    if st.abort_reason is None:
        return None
    return LinkAborted(st.abort_reason, st.abort_detail)


def compare_data_pools(store_a: Any, store_b: Any, peer_of_a: str, peer_of_b: str
                       ) -> dict[str, Any]:
    """Check that both ends hold the same data key, bit for bit (CONSUMES that key).

    For each direction, the sending end reserves everything in its ``data-tx`` pool
    and the other end takes the same segments from ``data-rx``; the bytes are
    compared with a constant-time comparison and never shown.  Meant for the end of
    a test or of ``qkdnet link run``, whose stores are temporary.
    """
    import hmac

    result: dict[str, Any] = {"identical": True, "bits_compared": 0}
    for tx, rx, tx_peer, rx_peer in ((store_a, store_b, peer_of_a, peer_of_b),
                                     (store_b, store_a, peer_of_b, peer_of_a)):
        n_tx, n_rx = tx.available(tx_peer, "data-tx"), rx.available(rx_peer, "data-rx")
        if n_tx != n_rx:
            result["identical"] = False
            result.setdefault("mismatch", []).append(f"{n_tx} vs {n_rx} bits")
            continue
        if n_tx == 0:
            continue
        grant = tx.reserve(tx_peer, "data-tx", n_tx)
        got = rx.take(rx_peer, "data-rx", grant.segments)
        if not hmac.compare_digest(bytes(grant.data), bytes(got)):
            result["identical"] = False
        result["bits_compared"] += n_tx
    return result


# --------------------------------------------------------------------------------------
# A whole point-to-point link on loopback (CLI ``qkdnet link run`` and the tests)


class TamperingChannel:
    """Wraps a channel and passes every body it sends through ``tamper`` (tests only)."""

    def __init__(self, channel: Any, tamper: Callable[[Any], Any]) -> None:
        self.channel = channel
        self.tamper = tamper

    async def send(self, body: Any, session: int = 0, flags: int = 0, *,
                   deferred: bool = False) -> None:
        body = self.tamper(body)
        # A substituted message goes the way its own type is sent.
        deferred = deferred and type(body) in w.BODIES.values() \
            and w.msg_type(body) in w.DEFERRED_MSGS
        await self.channel.send(body, session=session, flags=flags, deferred=deferred)


@dataclass
class PointToPointResult:
    """Outcome of :func:`run_point_to_point` (public numbers only)."""

    alice: LinkStats
    bob: LinkStats
    comparison: dict[str, Any]
    session_id: int
    detections: dict[int, Any] = field(default_factory=dict)
    inspected: Any = None
    phy: Any = None

    @property
    def identical(self) -> bool:
        return bool(self.comparison.get("identical"))

    def as_dict(self) -> dict[str, Any]:
        return {"session_id": f"{self.session_id:08x}", "alice": self.alice.as_dict(),
                "bob": self.bob.as_dict(), "comparison": self.comparison}


def write_bootstrap_secret(path: Any, n_bytes: int = 1 << 20) -> None:
    """Write a fresh random bootstrap secret file (mode 0600)."""
    import os

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(n_bytes))


async def run_point_to_point(params: Any, km: float, n_blocks: int, block_slots: int, *,
                             workdir: Any, attack: Any = None, seed: int | None = None,
                             config_overrides: dict[str, Any] | None = None,
                             max_in_flight: int = 2, on_block: BlockCallback | None = None,
                             tamper_alice: Callable[[Any], Any] | None = None,
                             tamper_bob: Callable[[Any], Any] | None = None,
                             keep_eve: bool = False, compare: bool = True,
                             use_threads: bool = True, session_id: int | None = None,
                             tracer: Any = None, secret_bytes: int = 1 << 20,
                             quantum_port: bool = False,
                             inspect: Callable[[Any, Any], Any] | None = None,
                             stores: tuple[Any, Any] | None = None,
                             relay: Callable[[trio.Nursery, int], Awaitable[int]] | None = None
                             ) -> PointToPointResult:
    """Run a transmitter ("alice") and a receiver ("bob") over TCP on 127.0.0.1.

    Key stores and the bootstrap secret are created in ``workdir``; both ends run in
    this process (each with its own store and sideband connection end).  At the end
    the data pools are compared bit for bit (which consumes them) unless
    ``compare`` is false.  ``on_block(stats)`` sees the transmitter's blocks;
    ``inspect(store_a, store_b)`` runs before the comparison and its result is kept
    in ``result.inspected``.  With ``quantum_port`` the pulses travel over TCP too:
    Alice's quantum port → a fibre element (loss, Eve) → Bob's quantum port
    (:mod:`qkdnet.phy.port`), instead of the in-process channel.  ``stores`` (alice's,
    bob's) runs on open key stores instead (a reconnect; they stay open, and the
    bootstrap secret is imported only if they have none).  ``relay(nursery, port)``
    puts something between the ends (tests: an on-path attacker): given bob's port it
    returns the port alice connects to.
    """
    from pathlib import Path

    from qkdnet.auth import FrameAuthenticator, KeyStoreTagKeys
    from qkdnet.keystore import KeyStore
    from qkdnet.sideband import connect_sideband, serve_sideband

    workdir = Path(workdir)
    if stores is None:
        store_a, store_b = KeyStore(workdir / "alice.db"), KeyStore(workdir / "bob.db")
    else:
        store_a, store_b = stores
    try:
        if not (store_a.has_bootstrap("bob") and store_b.has_bootstrap("alice")):
            secret_path = workdir / "bootstrap.secret"
            write_bootstrap_secret(secret_path, secret_bytes)
            secret = secret_path.read_bytes()
            store_a.import_bootstrap("bob", secret, initiator=True)
            store_b.import_bootstrap("alice", secret, initiator=False)
            del secret
        seed = secrets.randbits(62) if seed is None else seed
        phy = EmulatedPhy(params, km, attack=attack, seed=seed, keep_eve=keep_eve)
        receiver_phy: Any = phy
        emitter: Any = None
        sid = new_session_id() if session_id is None else session_id
        cfg = LinkConfig.from_phy(params, sid, **(config_overrides or {}))
        bob_ready = trio.Event()
        bob_box: list[LinkEndpoint] = []

        async def bob_handler(chan: Any) -> None:
            ch = TamperingChannel(chan, tamper_bob) if tamper_bob else chan
            bob = LinkEndpoint("receiver", ch, cfg, peer="alice", store=store_b,
                               phy=receiver_phy, use_threads=use_threads, tracer=tracer)
            bob_box.append(bob)
            bob_ready.set()
            await serve_link_channel(chan, bob)

        def auth_for(name: str) -> Any:
            return FrameAuthenticator(KeyStoreTagKeys(store_b, name)) if name == "alice" \
                else None

        async with trio.open_nursery() as nursery:
            if quantum_port:
                receiver_phy, emitter = await _quantum_link(nursery, params, km, attack, seed,
                                                            phy.source)
            listeners = await nursery.start(lambda task_status: serve_sideband(
                bob_handler, 0, local_name="bob", auth_for_peer=auth_for, host="127.0.0.1",
                task_status=task_status))
            port = listeners[0].socket.getsockname()[1]
            if relay is not None:
                port = await relay(nursery, port)
            chan = await connect_sideband(
                "127.0.0.1", port, local_name="alice",
                auth=FrameAuthenticator(KeyStoreTagKeys(store_a, "bob")))
            ch = TamperingChannel(chan, tamper_alice) if tamper_alice else chan
            alice = LinkEndpoint("transmitter", ch, cfg, peer="bob", store=store_a,
                                 source=phy.source, on_block=on_block,
                                 use_threads=use_threads, tracer=tracer, emitter=emitter)
            async def alice_side(task_status: trio.TaskStatus[None]) -> None:
                try:
                    await serve_link_channel(chan, alice, task_status=task_status)
                except (QkdnetError, trio.BrokenResourceError, trio.ClosedResourceError) as err:
                    log.info("transmitter's sideband ended: %s", type(err).__name__)

            async with trio.open_nursery() as inner:
                await inner.start(alice_side)
                await bob_ready.wait()
                await alice.run_blocks(n_blocks, block_slots, max_in_flight=max_in_flight)
                # Let the receiver finish its last CONFIRM before closing.
                bob = bob_box[0]
                with trio.move_on_after(10 if alice.fatal_error is None else 0.5):
                    while bob.stats.stored + bob.stats.aborted < len(alice.stats.blocks):
                        await trio.sleep(0.01)
                await alice.stop()
                if emitter is not None:
                    await emitter.aclose()
                inner.cancel_scope.cancel()
            try:
                await chan.aclose()
            except QkdnetError:     # e.g. no auth key left even for CLOSE
                await chan.abort(ErrorCode.KEY_EXHAUSTED, "out of authentication key")
            nursery.cancel_scope.cancel()
        inspected = inspect(store_a, store_b) if inspect is not None else None
        comparison = compare_data_pools(store_a, store_b, "bob", "alice") if compare else {}
        return PointToPointResult(alice.stats, bob_box[0].stats, comparison, sid,
                                  phy.detections, inspected, phy)
    finally:
        if stores is None:
            store_a.close()
            store_b.close()


async def _quantum_link(nursery: trio.Nursery, params: Any, km: float, attack: Any, seed: int,
                        source: Any) -> tuple[PortPhy, PortEmitter]:
    """Alice's quantum port → fibre element → Bob's quantum port, all on 127.0.0.1."""
    from qkdnet.phy.attacks import parse_attack
    from qkdnet.phy.port import FibreElement, QuantumPort, run_fiber

    eve = parse_attack(attack) if isinstance(attack, str) or attack is None else attack
    bob_listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    bob_port = bob_listeners[0].socket.getsockname()[1]
    element = FibreElement(params, km, eve, seed=seed + 2)
    fibre_port = await nursery.start(lambda task_status: run_fiber(
        element, "127.0.0.1", 0, "127.0.0.1", bob_port, task_status=task_status))
    alice_stream = await trio.open_tcp_stream("127.0.0.1", fibre_port)
    bob_stream = await bob_listeners[0].accept()
    await bob_listeners[0].aclose()
    # Without Eve, Alice fuses the fibre's loss into the emission (fewer pulses on the
    # wire); the fibre element then applies only what remains (nothing).
    fused = params.fibre_transmittance(km) if eve is None else 1.0
    emitter = PortEmitter(source, QuantumPort(alice_stream, name="alice"), transmittance=fused)
    return PortPhy(params, QuantumPort(bob_stream, name="bob"), seed=seed + 3), emitter
