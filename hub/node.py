"""The spoke side: :class:`SpokeNode`, relayed channels, key relay, embedded networks.

Theory of operation
-------------------
A :class:`SpokeNode` keeps one sideband connection to its hub (reconnecting with
exponential backoff when it breaks) and runs, per connection: the hub-message
handler, the link layer's transmitter when one is attached, and REGISTER. Its key
store holds the pools it shares with the hub: ``(hub, "data-tx")`` for frames it
sends, ``(hub, "data-rx")`` for frames it receives, and ``(peer, "e2e-tx"/"e2e-rx")``
for end-to-end key obtained by :meth:`SpokeNode.relay_key`.

Channels. :meth:`SpokeNode.open_channel` sends OPEN_CHANNEL and waits for the
peer's acceptance (a DELIVERY_ACK of kind OPEN, relayed by the hub). A channel is
identified by ``(opener, channel_id)``; each DATA frame carries which end sent it
and a per-direction message number from 0. A message is one-time-padded with
``(hub, "data-tx")`` key before it leaves; the receiver takes the key the hub
named and checks the number: a duplicate is dropped (never delivered twice), a
gap breaks the channel (never delivered out of order). The receiver acknowledges a
message when the application has read it, and a sender keeps at most ``window``
unacknowledged messages, so a channel is flow-controlled end to end.

Waiting for key. A message whose first-hop pool ``(hub, "data-tx")`` is short waits
for key as long as key keeps arriving in that pool, and fails only when none has
arrived for ``key_stall`` seconds (the hub does the same for its hop to the
receiver), so a long transfer runs at the key rate rather than failing when the
pools run dry.

Failures. A NACK (from the hub or the peer) breaks the channel with the reason:
:class:`~qkdnet.errors.KeyExhausted` naming the hop for KEY_EXHAUSTED (a
:class:`~qkdnet.hub.router.KeyStalled` when the hub gave up waiting for new key),
:class:`ChannelError` otherwise. Losing the hub connection breaks every channel of
that connection ("delivery unknown" for unacknowledged messages); nothing is
retransmitted, so nothing can be delivered twice. New channels can be opened once
the node has reconnected.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sqlite3
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import trio
from scapy.packet import Packet

from qkdnet.auth import FrameAuthenticator, KeyStoreTagKeys
from qkdnet.errors import (
    ConfigError,
    ErrorCode,
    KeyExhausted,
    LocalProtocolError,
    QkdnetError,
    RemoteProtocolError,
)
from qkdnet.hub import wire as w
from qkdnet.hub.lifecycle import start_in_scope
from qkdnet.hub.router import KeyArrivals, KeyStalled, as_built
from qkdnet.keystore import BlockMeta, KeySegment, KeyStore, prune_retired_periodically
from qkdnet.sideband import FrameReceived, FrameRouter, SidebandChannel, connect_sideband
from qkdnet.wire import Close, Role

log = logging.getLogger(__name__)

HUB_TYPES = range(0x40, 0x60)
#: A receiver acknowledges at least every ACK_EVERY messages (acks are cumulative).
ACK_EVERY = 8
#: Unanswered key-relay requests remembered per connection (oldest forgotten first).
MAX_RELAY_ASKS = 1024

#: Hook that runs the link layer on the spoke's hub connection (the spoke transmits):
#: ``await nursery.start(link_runner, node, channel, frame_router)``: registers the
#: link types, calls ``task_status.started()``, runs until cancelled.
SpokeLinkRunner = Callable[["SpokeNode", SidebandChannel, FrameRouter], Any]


class ChannelError(QkdnetError):
    """A relayed channel failed; ``reason`` (:class:`~qkdnet.hub.wire.HubReason`) says
    why and ``hop`` where (e.g. ``"hub->bob"``)."""

    def __init__(self, message: str, reason: w.HubReason = w.HubReason.INTERNAL_ERROR,
                 hop: str = "") -> None:
        self.reason = reason
        self.hop = hop
        super().__init__(message)


@dataclass
class SpokeSettings:
    """What a spoke needs (built from a config file or by :func:`embedded_network`)."""

    name: str
    hub_name: str
    keystore: Path
    hub_host: str = "127.0.0.1"
    hub_port: int = 7787
    bootstrap_secret: Path | None = None
    control_socket: Path | None = None
    key_wait: float = 5.0
    #: Seconds without new key on the first hop before a message waiting for it
    #: fails (``[routing] key_stall``; None: ``key_wait``).
    key_stall: float | None = 60.0
    open_timeout: float = 10.0
    window: int = 32
    #: Bytes of unacknowledged messages per channel (at most the hub's per-spoke queue,
    #: ``[routing] queue_bytes``, default 2 MiB, so one channel is never THROTTLED).
    window_bytes: int = 2 << 20
    reconnect_initial: float = 0.05
    reconnect_max: float = 2.0
    pcap: Path | None = None
    link: dict[str, Any] = field(default_factory=dict)
    #: Key-store lease per pool (see HubSettings.lease_bits).
    lease_bits: int = 1 << 16
    #: Used-up block records kept per pool (``[keystore] retired_keep``).
    retired_keep: int = 100_000
    #: Where ``qkdnet node`` serves the apps layer's local API (None: apps default).
    app_socket: Path | None = None


def _xor(a: bytes, b: bytes) -> bytes:
    buf = np.frombuffer(a, dtype=np.uint8).copy()
    try:
        np.bitwise_xor(buf, np.frombuffer(b, dtype=np.uint8), out=buf)
        return buf.tobytes()
    finally:
        buf.fill(0)  # the result is key (relay) or plaintext: leave no second copy


def _segments(pkt_segments: Sequence[Any]) -> list[KeySegment]:
    return [KeySegment(int(s.block_id), int(s.offset), int(s.n_bits)) for s in pkt_segments]


def _wire_segments(segments: Sequence[KeySegment]) -> list[Any]:
    return [w.KeySegmentField(block_id=s.block_id, offset=s.offset, n_bits=s.n_bits)
            for s in segments]


def _nack_error(nack: Packet) -> QkdnetError:
    reason = _reason(int(nack.reason))
    hop = w.as_text(nack.hop)
    detail = w.as_text(nack.detail)
    if reason is w.HubReason.KEY_EXHAUSTED:
        if detail.startswith("no key arrived"):  # the hub's waiting for key ran out
            return KeyStalled(int(nack.bits_needed), int(nack.bits_available), hop=hop,
                              stalled_s=0.0, message=detail)
        return KeyExhausted(int(nack.bits_needed), int(nack.bits_available), hop=hop)
    return ChannelError(f"{reason.name} on hop {hop}: {detail}", reason, hop)


def _reason(code: int) -> w.HubReason:
    try:
        return w.HubReason(code)
    except ValueError:
        return w.HubReason.INTERNAL_ERROR


@dataclass(frozen=True)
class RelayedKey:
    """Result of :meth:`SpokeNode.relay_key`: where the end-to-end key was stored.

    The key itself is in the key store: pool ``(peer, "e2e-tx")`` at the requester,
    ``(requester, "e2e-rx")`` at the peer, block ``block_id``, ``n_bits`` bits.
    """

    peer: str
    block_id: int
    n_bits: int
    purpose: str


class Channel:
    """A relayed, ordered, message-oriented channel to one peer (see the module doc).

    ``send_message`` returns once the message is on its way (at most ``window``
    unacknowledged); ``wait_delivered`` waits for every acknowledgement.
    ``receive_message`` raises ``trio.EndOfChannel`` after the peer closed.
    """

    def __init__(self, node: SpokeNode, peer: str, service: str, channel_id: int,
                 end: int, epoch: int) -> None:
        self.node = node
        self.peer = peer
        self.service = service
        self.channel_id = channel_id
        self.end = end  # 0: we opened it, 1: we accepted it
        self.epoch = epoch
        self.opener = node.name if end == 0 else peer
        self._tx_seq = 0
        self._rx_next = 0
        self._last_acked = -1
        self._ack_due = -1  # highest message read by the application
        self._unacked: set[int] = set()
        self._sizes: dict[int, int] = {}  # bytes of each unacknowledged message
        self._unacked_bytes = 0
        self._room = trio.Event()  # set when acks free bytes of the window
        self._window = trio.Semaphore(node.settings.window)
        self._send_lock = trio.Lock()
        self._inbox: deque[tuple[int, bytes]] = deque()
        self._inbox_event = trio.Event()
        self._acked_event = trio.Event()
        self.error: QkdnetError | None = None
        self.peer_closed = False
        self._closed_unacked = False  # the peer closed with messages unacknowledged
        self.closed = False
        self.messages_sent = 0
        self.messages_received = 0

    def __repr__(self) -> str:
        return (f"Channel({self.node.name}<->{self.peer}, service={self.service!r}, "
                f"id={self.channel_id}, end={self.end})")

    @property
    def key(self) -> tuple[str, int]:
        """``(opener, channel_id)``: the channel's identity at both ends."""
        return (self.opener, self.channel_id)

    def _raise_if_broken(self) -> None:
        if self.error is not None:
            raise self.error
        if self.closed:
            raise trio.ClosedResourceError("channel was closed")

    async def send_message(self, data: bytes) -> None:
        """Send one whole message (at most ``wire.MAX_MESSAGE`` bytes)."""
        data = bytes(data)
        if len(data) > w.MAX_MESSAGE:
            raise LocalProtocolError(f"message of {len(data)} bytes exceeds the "
                                     f"{w.MAX_MESSAGE}-byte limit; split it")
        self._raise_if_broken()
        self._raise_if_peer_closed()
        async with self._send_lock:
            await self._window.acquire()
            counted = False
            try:
                self._raise_if_broken()
                self._raise_if_peer_closed()
                # Bytes in flight stay within what the hub queues per spoke, so a
                # sender ahead of a key-starved second hop waits here instead of
                # being refused (THROTTLED) at the hub.
                while (self._unacked and self._unacked_bytes + len(data)
                       > self.node.settings.window_bytes):
                    self._room = trio.Event()
                    await self._room.wait()
                    self._raise_if_broken()
                    self._raise_if_peer_closed()
                seq = self._tx_seq
                body = await self.node._encrypt_data(self, seq, data)
                self._raise_if_broken()
                self._unacked.add(seq)  # from here the ack (or _fail) releases the slot
                self._sizes[seq] = len(data)
                self._unacked_bytes += len(data)
                counted = True
                self._tx_seq += 1
                await self.node._send(body, self.epoch)
                self.messages_sent += 1
                self.node.counters["messages_sent"] += 1
            except BaseException:
                if not counted:
                    self._window.release()
                raise

    def _raise_if_peer_closed(self) -> None:
        if self.peer_closed:
            raise ChannelError(f"{self.peer} closed the channel",
                               w.HubReason.CHANNEL_CLOSED, f"hub->{self.peer}")

    async def wait_delivered(self) -> None:
        """Wait until the peer's application has read every message sent so far."""
        while self._unacked:
            self._raise_if_broken()
            self._acked_event = trio.Event()
            await self._acked_event.wait()
        self._raise_if_broken()
        if self._closed_unacked:
            raise ChannelError(f"{self.peer} closed the channel before acknowledging "
                               "every message", w.HubReason.CHANNEL_CLOSED, f"hub->{self.peer}")

    async def receive_message(self) -> bytes:
        """The next message, in order; ``trio.EndOfChannel`` after the peer closed."""
        while not self._inbox:
            if self.error is not None:
                raise self.error
            if self.peer_closed:
                raise trio.EndOfChannel
            if self.closed:
                raise trio.ClosedResourceError("channel was closed")
            self._inbox_event = trio.Event()
            await self._inbox_event.wait()
        seq, data = self._inbox.popleft()
        self.messages_received += 1
        # Acks are cumulative: one acknowledges every message up to ``seq``. Ack every
        # ACK_EVERY messages, and when the application has caught up (inbox empty)
        # after letting the connection's reader run once more: a message that had
        # already reached this process is then in the inbox, and the next read acks
        # it too. One ack per burst keeps a pipelined sender's window open at a
        # fraction of the frames (each costs both hops a tag key and a frame's work).
        prev_due, prev_acked = self._ack_due, self._last_acked
        self._ack_due = seq
        try:
            if seq - self._last_acked >= ACK_EVERY:
                await self._send_ack()
            elif not self._inbox:
                # A yield that cannot be cancelled (the message is out of the inbox).
                await trio.lowlevel.cancel_shielded_checkpoint()
                if not self._inbox:
                    await self._send_ack()
        except BaseException:
            # Cancelled (or failed) while sending the ack, e.g. waiting for the
            # connection's send lock: the ack frame was not written and the message
            # was not handed out, so it is neither delivered nor acknowledged. Put it
            # back for the next read instead of losing it under a later cumulative ack.
            self._inbox.appendleft((seq, data))
            self.messages_received -= 1
            self._ack_due, self._last_acked = prev_due, prev_acked
            raise
        return data

    async def _send_ack(self) -> None:
        """Acknowledge every message up to ``_ack_due`` (if not done already)."""
        seq = self._ack_due
        if seq <= self._last_acked or self.error is not None or self.closed:
            return
        self._last_acked = seq
        await self.node._send_quietly(as_built(w.HubDeliveryAck(
            kind=int(w.NackKind.DATA), src=self.node.name.encode(),
            dst=self.peer.encode(), channel_id=self.channel_id, end=self.end ^ 1,
            msg_seq=seq)), self.epoch)
        self.node.counters["acks_sent"] += 1

    def __aiter__(self) -> Channel:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.receive_message()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    async def aclose(self, *, timeout: float = 5.0) -> None:
        """Wait (up to ``timeout``) for outstanding acks, then close both directions."""
        if self.closed:
            return
        with trio.move_on_after(timeout):
            with contextlib.suppress(QkdnetError):
                await self.wait_delivered()
        self.closed = True
        self.node._channels.pop(self.key, None)
        if self.error is None:
            await self.node._send_quietly(w.HubChannelClose(
                src=self.node.name.encode(), dst=self.peer.encode(),
                channel_id=self.channel_id, end=self.end,
                reason=int(w.HubReason.CHANNEL_CLOSED)), self.epoch)
        self._wake_all()

    async def __aenter__(self) -> Channel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- called by the node ---------------------------------------------------------

    def _fail(self, err: QkdnetError) -> None:
        if self.error is None:
            self.error = err
        self._wake_all()

    def _wake_all(self) -> None:
        self._inbox_event.set()
        self._acked_event.set()
        for _ in range(len(self._unacked)):
            self._window.release()
        self._unacked.clear()
        self._sizes.clear()
        self._unacked_bytes = 0
        self._room.set()

    def _deliver(self, seq: int, data: bytes) -> bool:
        """Queue a received message; False for a duplicate (dropped)."""
        if seq < self._rx_next:
            return False
        if seq > self._rx_next:
            self._fail(ChannelError(
                f"message {self._rx_next} of channel {self.channel_id} from {self.peer} "
                f"never arrived (got {seq}); the channel is broken",
                w.HubReason.CHANNEL_FAILED, f"hub->{self.node.name}"))
            return False
        self._rx_next += 1
        self._inbox.append((seq, data))
        self._inbox_event.set()
        return True

    def _ack(self, seq: int) -> None:
        """Cumulative ack: every message up to ``seq`` was read by the peer."""
        done = [s for s in self._unacked if s <= seq]
        for s in done:
            self._unacked.discard(s)
            self._unacked_bytes -= self._sizes.pop(s, 0)
            self._window.release()
        if done:
            self._acked_event.set()
            self._room.set()


class Listener:
    """Incoming channels for one service: ``async for chan in listener`` or ``accept()``."""

    def __init__(self, node: SpokeNode, service: str) -> None:
        self.node = node
        self.service = service
        self._send, self._recv = trio.open_memory_channel[Channel](math.inf)

    async def accept(self) -> Channel:
        """The next incoming channel."""
        return await self._recv.receive()

    def __aiter__(self) -> Listener:
        return self

    async def __anext__(self) -> Channel:
        try:
            return await self._recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None

    def close(self) -> None:
        """Stop listening (channels already accepted stay open)."""
        if self.node._listeners.get(self.service) is self:
            del self.node._listeners[self.service]
        self._send.close()


class SpokeNode:
    """A spoke: link to the hub, routing client, relayed channels (see module doc)."""

    def __init__(self, config: SpokeSettings | Any, *, store: KeyStore | None = None,
                 link_runner: SpokeLinkRunner | None = None) -> None:
        self.settings = config if isinstance(config, SpokeSettings) else settings_from(config)
        self.name = self.settings.name
        self.hub = self.settings.hub_name
        self.store = store
        self._own_store = store is None
        self.link_runner = link_runner
        self._chan: SidebandChannel | None = None
        self._epoch = 0
        self._connected = trio.Event()
        self._registered = False
        self._channels: dict[tuple[str, int], Channel] = {}
        self._listeners: dict[str, Listener] = {}
        self._opens: dict[int, tuple[trio.Event, list[QkdnetError | None]]] = {}
        self._relays: dict[int, tuple[trio.Event, list[RelayedKey | QkdnetError]]] = {}
        #: request id -> (peer, n_bits) of every KEY_RELAY_REQUEST sent on the current
        #: connection and not yet answered (kept after a caller times out, so a late
        #: answer is stored, not mistaken for an unsolicited relay).
        self._relay_asks: OrderedDict[int, tuple[str, int]] = OrderedDict()
        self._next_channel = 1
        self._next_request = 1
        self.link_stats: dict[str, Any] = {}
        self.counters: dict[str, int] = {
            "connects": 0, "connect_failures": 0, "messages_sent": 0,
            "messages_received": 0, "duplicates_dropped": 0, "nacks": 0,
            "channels_opened": 0, "channels_accepted": 0, "key_relays": 0,
            "acks_sent": 0,
        }
        self.last_error: str | None = None
        self._stopping = False
        self._serve_done = trio.Event()
        self._recorder: Any = None
        self._link_scope = trio.CancelScope()
        self._tx_arrivals = KeyArrivals()  # new key in (hub, "data-tx")

    def __repr__(self) -> str:
        return f"SpokeNode({self.name!r}, hub={self.hub!r})"

    # -- lifecycle ----------------------------------------------------------------

    def _open_store(self) -> KeyStore:
        if self.store is None:
            self.store = KeyStore(self.settings.keystore,
                                  lease_bits=self.settings.lease_bits)
        secret_file = self.settings.bootstrap_secret
        if secret_file is not None:
            try:
                secret = Path(secret_file).read_bytes()
            except OSError as err:
                raise ConfigError(f"cannot read bootstrap secret: {err.strerror}",
                                  source=str(secret_file), key="bootstrap_secret") from None
            self.store.import_bootstrap(self.hub, secret, initiator=True)
        return self.store

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[SpokeNode]:
        """Run the node (hub connection with reconnects, link, status socket)."""
        store = self._open_store()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._connection_loop)
                nursery.start_soon(partial(prune_retired_periodically, store,
                                           keep=self.settings.retired_keep))
                if self.settings.control_socket is not None:
                    from qkdnet.hub.daemon import serve_control_socket
                    await nursery.start(serve_control_socket, self.settings.control_socket,
                                        self.status)
                try:
                    yield self
                finally:
                    self._stopping = True
                    # The link first: a block in flight must not send on a closing
                    # connection (LocalProtocolError in state CLOSE_SENT).
                    self._link_scope.cancel()
                    await self._say_goodbye()
                    nursery.cancel_scope.cancel()
        finally:
            self._fail_connection("node stopped")
            if self._recorder is not None:
                self._recorder.close()
            if self._own_store:
                store.close()

    async def _say_goodbye(self) -> None:
        """Graceful CLOSE on the hub connection (its run loop completes the close)."""
        chan, done = self._chan, self._serve_done
        if chan is None:
            return
        with trio.move_on_after(1.0) as scope:
            scope.shield = True
            with contextlib.suppress(QkdnetError, trio.BrokenResourceError,
                                     trio.ClosedResourceError):
                await chan.send(Close())
                await done.wait()

    async def wait_connected(self, timeout: float = 10.0) -> None:
        """Wait until the node is registered with the hub."""
        with trio.fail_after(timeout):
            while not self._registered:
                await self._connected.wait()

    @property
    def connected(self) -> bool:
        """Whether the node is registered with the hub right now."""
        return self._registered

    async def _connection_loop(self) -> None:
        delay = self.settings.reconnect_initial
        assert self.store is not None
        while not self._stopping:
            try:
                chan = await connect_sideband(
                    self.settings.hub_host, self.settings.hub_port, local_name=self.name,
                    auth=FrameAuthenticator(KeyStoreTagKeys(self.store, self.hub)),
                    role=Role.SPOKE, pcap=self._pcap())
            except (OSError, QkdnetError, sqlite3.Error, trio.BrokenResourceError,
                    trio.ClosedResourceError, trio.EndOfChannel) as err:
                self.counters["connect_failures"] += 1
                self.last_error = f"cannot connect to hub: {err}"
                log.info("%s: %s; retrying in %.2fs", self.name, self.last_error, delay)
                await trio.sleep(delay)
                delay = min(self.settings.reconnect_max, delay * 2)
                continue
            if chan.peer_name != self.hub:
                await chan.abort(ErrorCode.UNKNOWN_PEER, "not the configured hub")
                self.last_error = f"expected hub {self.hub!r}, reached {chan.peer_name!r}"
                await trio.sleep(delay)
                continue
            delay = self.settings.reconnect_initial
            self.counters["connects"] += 1
            try:
                await self._serve(chan)
            except* (QkdnetError, trio.BrokenResourceError, trio.ClosedResourceError,
                     trio.EndOfChannel) as group:
                self.last_error = "hub connection lost: " + "; ".join(
                    str(e) for e in group.exceptions)
                log.info("%s: %s", self.name, self.last_error)
            except* sqlite3.Error as group:
                # The key store failed (disk full, I/O error, locked past the busy
                # timeout): what the failed transaction took was rolled back and
                # nothing derived from it was released (KeyStore.after_commit), so
                # dropping the connection and trying again later is safe.
                self.last_error = "key store error, connection dropped: " + "; ".join(
                    str(e) for e in group.exceptions)
                log.warning("%s: %s", self.name, self.last_error)
            finally:
                self._fail_connection("connection to the hub was lost; delivery of "
                                      "unacknowledged messages is unknown")
            if not self._stopping:
                await trio.sleep(delay)

    def _pcap(self) -> Any:
        """One recorder for the node's lifetime (every reconnect adds a flow to it)."""
        if self.settings.pcap is None:
            return None
        if self._recorder is None:
            from qkdnet.pcap import PcapRecorder
            self._recorder = PcapRecorder(self.settings.pcap)
        return self._recorder

    async def _serve(self, chan: SidebandChannel) -> None:
        self._epoch += 1
        self._chan = chan
        self._serve_done = trio.Event()
        frames = FrameRouter()

        async def on_hub_frame(_c: SidebandChannel, ev: FrameReceived) -> None:
            try:
                await self._on_frame(ev.body)
            except RemoteProtocolError as err:
                self.last_error = f"hub sent a bad frame: {err}"
                await chan.abort(err)
                raise

        def on_hub_frame_now(_c: SidebandChannel, ev: FrameReceived) -> bool:
            # DATA and acks without yielding (their key is committed with the rest of
            # the read, see FrameRouter.register_sync); anything that must wait or send
            # goes to on_hub_frame.
            try:
                return self._on_frame_now(ev.body)
            except RemoteProtocolError as err:
                self.last_error = f"hub sent a bad frame: {err}"
                raise

        frames.register_sync(HUB_TYPES, on_hub_frame_now, on_hub_frame)
        try:
            async with trio.open_nursery() as nursery:
                if self.link_runner is not None:  # registers link types first
                    # in a scope of its own: a stopping node ends its link first
                    self._link_scope = trio.CancelScope()
                    await nursery.start(start_in_scope, self._link_scope,
                                        self.link_runner, self, chan, frames)
                await chan.send(w.HubRegister(version=1, spoke=self.name.encode()))
                await chan.run(frames)
                nursery.cancel_scope.cancel()
        finally:
            self._serve_done.set()

    def _fail_connection(self, why: str) -> None:
        self._chan = None
        self._registered = False
        err = ChannelError(why, w.HubReason.PEER_DISCONNECTED, f"{self.name}->hub")
        for ch in list(self._channels.values()):
            ch._fail(err)
        self._channels.clear()
        for ev, box in self._opens.values():
            box.append(err)
            ev.set()
        for ev, rbox in self._relays.values():
            rbox.append(err)
            ev.set()
        self._relay_asks.clear()  # a new connection's hub owes us nothing

    # -- sending ------------------------------------------------------------------

    async def _send(self, body: Packet, epoch: int) -> None:
        chan = self._chan
        if chan is None or epoch != self._epoch or not self._registered:
            raise ChannelError("not connected to the hub (the channel belongs to a "
                               "connection that is gone)", w.HubReason.PEER_DISCONNECTED,
                               f"{self.name}->hub")
        try:
            await chan.send(body)
        except (LocalProtocolError, trio.BrokenResourceError,
                trio.ClosedResourceError) as err:  # the connection broke under us
            raise ChannelError(f"connection to the hub is broken ({err})",
                               w.HubReason.PEER_DISCONNECTED, f"{self.name}->hub") from None

    async def _send_quietly(self, body: Packet, epoch: int) -> None:
        with contextlib.suppress(QkdnetError, trio.BrokenResourceError,
                                 trio.ClosedResourceError):
            await self._send(body, epoch)

    @property
    def key_stall(self) -> float:
        """Seconds without new key after which a wait for key fails."""
        stall = self.settings.key_stall
        return self.settings.key_wait if stall is None else stall

    async def _reserve_tx(self, n_bits: int) -> Any:
        """Key for the first hop: wait while key keeps arriving (see the module doc)."""
        assert self.store is not None
        store, arrivals, stall = self.store, self._tx_arrivals, self.key_stall
        since = trio.current_time()
        while True:
            # Short slices, so new key that is still not enough extends the wait.
            limit = min(arrivals.deadline(since, stall), trio.current_time() + 0.5)
            try:
                grant = await store.wait_reserve(self.hub, "data-tx", n_bits,
                                                 deadline=limit)
            except KeyExhausted as err:
                now = trio.current_time()
                arrivals.observe(err.available_bits, now)
                if now >= arrivals.deadline(since, stall):
                    raise KeyStalled(n_bits, err.available_bits, stalled_s=stall,
                                     pool=f"({self.hub}, data-tx)",
                                     hop=f"{self.name}->hub") from None
                continue
            arrivals.consumed(n_bits)
            return grant

    async def _encrypt_data(self, ch: Channel, seq: int, data: bytes) -> Packet:
        assert self.store is not None
        n_bits = 8 * len(data)
        if n_bits:
            grant = await self._reserve_tx(n_bits)
            segs, ct = _wire_segments(grant.segments), _xor(data, grant.data)
        else:
            segs, ct = [], b""
        return w.HubData(src=self.name.encode(), dst=ch.peer.encode(),
                         service=ch.service.encode(), channel_id=ch.channel_id, end=ch.end,
                         msg_seq=seq, segments=segs, ciphertext=ct)

    # -- public API ---------------------------------------------------------------

    async def open_channel(self, peer: str, service: str) -> Channel:
        """Open a relayed channel to ``peer``'s ``service`` (waits for acceptance)."""
        await self.wait_connected(self.settings.open_timeout)
        cid = self._next_channel
        self._next_channel = (self._next_channel + 1) & 0xFFFFFFFF or 1
        ch = Channel(self, peer, service, cid, 0, self._epoch)
        event = trio.Event()
        box: list[QkdnetError | None] = []
        self._opens[cid] = (event, box)
        self._channels[ch.key] = ch
        try:
            await self._send(w.HubOpenChannel(src=self.name.encode(), dst=peer.encode(),
                                              service=service.encode(), channel_id=cid),
                             ch.epoch)
            with trio.move_on_after(self.settings.open_timeout):
                await event.wait()
        finally:
            self._opens.pop(cid, None)
        if not box:
            self._channels.pop(ch.key, None)
            raise ChannelError(f"{peer} did not answer the open of {service!r} within "
                               f"{self.settings.open_timeout}s", w.HubReason.TIMEOUT)
        if box[0] is not None:
            self._channels.pop(ch.key, None)
            raise box[0]
        self.counters["channels_opened"] += 1
        return ch

    def listen(self, service: str) -> Listener:
        """Accept channels for ``service`` (registered at once; see :class:`Listener`)."""
        if service in self._listeners:
            raise LocalProtocolError(f"already listening on service {service!r}")
        w.name_of(service.encode(), "service")
        lst = Listener(self, service)
        self._listeners[service] = lst
        return lst

    async def relay_key(self, peer: str, n_bits: int, *,
                        timeout: float | None = None) -> RelayedKey:
        """Obtain ``n_bits`` of end-to-end key with ``peer`` via the hub (K_A xor K_B).

        Stored in ``(peer, "e2e-tx")`` here and ``(self.name, "e2e-rx")`` at the peer.
        The hub learns this key too (it is the trusted node).
        """
        if n_bits <= 0 or n_bits % 8 or n_bits > 8 * w.MAX_MESSAGE:
            raise LocalProtocolError(f"n_bits must be a positive multiple of 8 up to "
                                     f"{8 * w.MAX_MESSAGE}, got {n_bits}")
        await self.wait_connected(self.settings.open_timeout)
        rid = self._next_request
        self._next_request = (self._next_request + 1) & 0xFFFFFFFF or 1
        event = trio.Event()
        box: list[RelayedKey | QkdnetError] = []
        self._relays[rid] = (event, box)
        self._relay_asks[rid] = (peer, n_bits)
        while len(self._relay_asks) > MAX_RELAY_ASKS:  # a hub that never answers
            self._relay_asks.popitem(last=False)
        try:
            await self._send(w.HubKeyRelayRequest(src=self.name.encode(),
                                                  peer=peer.encode(), request_id=rid,
                                                  n_bits=n_bits), self._epoch)
            # The hub waits for key while it keeps arriving (key_stall): wait longer.
            limit = timeout if timeout is not None else max(
                self.settings.key_wait, self.key_stall) + 5.0
            with trio.move_on_after(limit):
                await event.wait()
        finally:
            self._relays.pop(rid, None)
        if not box:
            raise ChannelError(f"key relay with {peer} got no answer", w.HubReason.TIMEOUT)
        if isinstance(box[0], QkdnetError):
            raise box[0]
        return box[0]

    def status(self) -> dict[str, Any]:
        """Connection, link and key-pool state, counters (no key material)."""
        store = self.store
        key_bits: dict[str, int] = {}
        if store is not None:
            with contextlib.suppress(QkdnetError):
                key_bits = {"to_hub": store.available(self.hub, "data-tx"),
                            "from_hub": store.available(self.hub, "data-rx"),
                            "auth_to_hub": store.available(self.hub, "auth-tx"),
                            "auth_from_hub": store.available(self.hub, "auth-rx")}
        return {
            "name": self.name, "hub": self.hub, "connected": self._registered,
            "hub_address": f"{self.settings.hub_host}:{self.settings.hub_port}",
            "channels": len(self._channels), "listening": sorted(self._listeners),
            "key_bits": key_bits, "link": dict(self.link_stats),
            "counters": dict(self.counters), "last_error": self.last_error,
        }

    # -- receiving ----------------------------------------------------------------

    async def _on_frame(self, body: Packet) -> None:
        try:
            w.check(body)
        except RemoteProtocolError:
            raise
        if isinstance(body, w.HubRegisterAck):
            if body.status != 0:
                self.last_error = (f"hub refused registration: "
                                   f"{_reason(int(body.status)).name}: "
                                   f"{w.as_text(body.detail)}")
                raise RemoteProtocolError(self.last_error, ErrorCode.NAME_CONFLICT)
            self._registered = True
            self._connected.set()
            self._connected = trio.Event()
            return
        if not self._registered:
            raise RemoteProtocolError(f"{type(body).__name__} before REGISTER_ACK",
                                      ErrorCode.PROTOCOL_VIOLATION)
        if isinstance(body, w.HubData):
            await self._on_data(body)
        elif isinstance(body, w.HubDeliveryAck):
            self._on_ack(body)
        elif isinstance(body, w.HubDeliveryNack):
            self._on_nack(body)
        elif isinstance(body, w.HubOpenChannel):
            await self._on_open(body)
        elif isinstance(body, w.HubChannelClose):
            self._on_close(body)
        elif isinstance(body, w.HubKeyRelay):
            await self._on_relay(body)
        elif isinstance(body, w.HubStatus):
            pass
        else:
            raise RemoteProtocolError(f"a hub may not send {type(body).__name__}",
                                      ErrorCode.PROTOCOL_VIOLATION)

    def _check_dst(self, body: Packet) -> None:
        dst = w.as_text(body.dst)
        if dst != self.name:  # the hub must never hand us someone else's frame
            raise RemoteProtocolError(f"hub delivered a frame addressed to {dst!r}",
                                      ErrorCode.PROTOCOL_VIOLATION)

    def _on_frame_now(self, body: Packet) -> bool:
        """DATA and DELIVERY_ACK handled without yielding; False (nothing changed) for
        any frame that needs :meth:`_on_frame` (to send a NACK, wait for key, ...)."""
        if not self._registered:
            return False
        if isinstance(body, w.HubData):
            w.check(body)
            return self._data_now(body)
        if isinstance(body, w.HubDeliveryAck):
            w.check(body)
            assert self.store is not None
            self.store.after_commit(partial(self._on_ack, body))
            return True
        return False

    def _data_channel(self, body: Packet) -> Channel | None:
        """The open channel a DATA frame belongs to (checked to come from its peer)."""
        self._check_dst(body)
        src = w.as_text(body.src)
        opener = src if body.end == 0 else self.name
        ch = self._channels.get((opener, int(body.channel_id)))
        return ch if ch is not None and ch.peer == src else None

    def _data_now(self, body: Packet) -> bool:
        """Decrypt and deliver a DATA frame if its channel is open and its key stored."""
        assert self.store is not None
        ch = self._data_channel(body)
        if ch is None:
            return False
        if body.ciphertext:
            try:
                key = self.store.take(self.hub, "data-rx", _segments(body.segments))
            except KeyExhausted:
                return False  # the link has not stored the block yet: wait in _on_data
            except LocalProtocolError:  # reuse: a replayed or forged reference
                raise RemoteProtocolError("hub named key bits already used",
                                          ErrorCode.PROTOCOL_VIOLATION) from None
            data = _xor(body.ciphertext, key)
        else:
            data = b""
        # The application sees the message only once its key's take is durable (at
        # once outside a key-store batch; at the batch's commit inside one).
        self.store.after_commit(partial(self._count_delivery, ch, body, data))
        return True

    def _count_delivery(self, ch: Channel, body: Packet, data: bytes) -> None:
        if ch._deliver(int(body.msg_seq), data):
            self.counters["messages_received"] += 1
        else:
            self.counters["duplicates_dropped"] += 1

    async def _on_data(self, body: Packet) -> None:
        assert self.store is not None
        if self._data_now(body):
            return
        ch = self._data_channel(body)
        if ch is None:
            await self._send_quietly(w.HubDeliveryNack(
                kind=int(w.NackKind.DATA), src=self.name.encode(), dst=body.src,
                channel_id=body.channel_id, end=body.end, msg_seq=body.msg_seq,
                reason=int(w.HubReason.CHANNEL_CLOSED), hop=f"hub->{self.name}".encode(),
                detail=b"no such channel at the receiver"), self._epoch)
            return
        # _data_now declined an open channel only because the key is not stored yet
        # (so there is ciphertext): wait for it.
        key = await self._take(body.segments)
        self._count_delivery(ch, body, _xor(body.ciphertext, key))

    async def _take(self, segments: Sequence[Any]) -> bytes:
        """Take hub->spoke key; wait briefly if the link has not stored the block yet."""
        assert self.store is not None
        segs = _segments(segments)
        deadline = trio.current_time() + self.settings.key_wait
        while True:
            try:
                return self.store.take(self.hub, "data-rx", segs)
            except KeyExhausted:
                if trio.current_time() >= deadline:
                    raise RemoteProtocolError("hub used key this spoke does not hold",
                                              ErrorCode.KEY_EXHAUSTED) from None
                await trio.sleep(0.01)
            except LocalProtocolError:  # reuse: a replayed or forged reference
                raise RemoteProtocolError("hub named key bits already used",
                                          ErrorCode.PROTOCOL_VIOLATION) from None

    def _on_ack(self, body: Packet) -> None:
        self._check_dst(body)
        src = w.as_text(body.src)
        if body.kind == w.NackKind.OPEN:
            slot = self._opens.get(int(body.channel_id))
            if slot is not None:
                slot[1].append(None)
                slot[0].set()
            return
        opener = self.name if body.end == 0 else src
        ch = self._channels.get((opener, int(body.channel_id)))
        if ch is not None and ch.peer == src:
            ch._ack(int(body.msg_seq))

    def _on_nack(self, body: Packet) -> None:
        # No dst check: a hub-made NACK names the far peer in dst, a peer-made one us.
        self.counters["nacks"] += 1
        err = _nack_error(body)
        if body.kind == w.NackKind.OPEN:
            slot = self._opens.get(int(body.channel_id))
            if slot is not None:
                slot[1].append(err)
                slot[0].set()
            return
        if body.kind == w.NackKind.RELAY:
            self._relay_asks.pop(int(body.channel_id), None)
            rslot = self._relays.get(int(body.channel_id))
            if rslot is not None:
                rslot[1].append(err)
                rslot[0].set()
            return
        # A NACK about a DATA message we sent (end == our end) or about one sent to us.
        for ch in list(self._channels.values()):
            if ch.channel_id == int(body.channel_id) and ch.end == int(body.end) and (
                    ch.peer in (w.as_text(body.dst), w.as_text(body.src))):
                ch._fail(err)
                self._channels.pop(ch.key, None)

    async def _on_open(self, body: Packet) -> None:
        self._check_dst(body)
        src, service = w.as_text(body.src), w.as_text(body.service)
        listener = self._listeners.get(service)
        if listener is None:
            await self._send_quietly(w.HubDeliveryNack(
                kind=int(w.NackKind.OPEN), src=self.name.encode(), dst=body.src,
                channel_id=body.channel_id, reason=int(w.HubReason.NO_SUCH_SERVICE),
                hop=f"hub->{self.name}".encode(),
                detail=f"{self.name} does not listen on {service!r}".encode()), self._epoch)
            return
        ch = Channel(self, src, service, int(body.channel_id), 1, self._epoch)
        old = self._channels.get(ch.key)
        if old is not None:
            old._fail(ChannelError("channel id reused by the opener",
                                   w.HubReason.PROTOCOL_VIOLATION))
        self._channels[ch.key] = ch
        self.counters["channels_accepted"] += 1
        listener._send.send_nowait(ch)
        await self._send_quietly(w.HubDeliveryAck(
            kind=int(w.NackKind.OPEN), src=self.name.encode(), dst=body.src,
            channel_id=body.channel_id, end=0, msg_seq=0), self._epoch)

    def _on_close(self, body: Packet) -> None:
        self._check_dst(body)
        src = w.as_text(body.src)
        opener = src if body.end == 0 else self.name
        ch = self._channels.pop((opener, int(body.channel_id)), None)
        if ch is not None and ch.peer == src:
            ch.peer_closed = True
            # Acks travel before the close: what is unacknowledged now never will be.
            # Wake senders blocked on the window (their send then fails) and
            # wait_delivered (it reports the loss) instead of leaving them waiting.
            ch._closed_unacked = bool(ch._unacked)
            ch._wake_all()

    async def _on_relay(self, body: Packet) -> None:
        """Store the hub's half of a key relay. Anything wrong with it is the hub's
        fault (RemoteProtocolError, so the connection ends with ERROR): a relay to
        ourselves, an initiator's half (role 0) this spoke never asked for or that
        does not match the request, key this spoke does not hold or already used."""
        assert self.store is not None
        peer = w.as_text(body.peer)
        n = int(body.n_bits)
        role = int(body.role)
        rid = int(body.request_id)
        if n == 0 or peer == self.name:
            raise RemoteProtocolError(f"KEY_RELAY of {n} bits with {peer!r} makes no sense",
                                      ErrorCode.PROTOCOL_VIOLATION)
        if role == 0:
            asked = self._relay_asks.get(rid)
            if asked != (peer, n):
                raise RemoteProtocolError(
                    f"KEY_RELAY for request {rid} ({peer!r}, {n} bits) answers no request "
                    "of this spoke", ErrorCode.PROTOCOL_VIOLATION)
            del self._relay_asks[rid]
        mine = await self._take(body.segments)
        if role == 0:
            key, purpose = mine, "e2e-tx"
        else:
            key, purpose = _xor(bytes(body.masked), mine), "e2e-rx"
        meta = BlockMeta(link_session=f"relay:{self.hub}", created=time.time(),
                         eps_sec=0.0, eps_cor=0.0, leaked_ec_bits=0, auth_bits_spent=0)
        try:
            self.store.add_block(peer, purpose, int(body.e2e_block_id), key, n, meta)
        except LocalProtocolError:  # e.g. a block id the hub already used with peer
            raise RemoteProtocolError(f"KEY_RELAY block {int(body.e2e_block_id):#x} cannot "
                                      f"be stored for {peer!r}",
                                      ErrorCode.PROTOCOL_VIOLATION) from None
        self.counters["key_relays"] += 1
        if role == 0:
            slot = self._relays.get(rid)
            if slot is not None:  # else the caller gave up waiting; the key is stored
                slot[1].append(RelayedKey(peer, int(body.e2e_block_id), n, purpose))
                slot[0].set()


def settings_from(config: Any) -> SpokeSettings:
    """Build :class:`SpokeSettings` from a ``qkdnet.config`` node configuration."""
    from qkdnet.hub.cli import spoke_settings_from_config
    return spoke_settings_from_config(config)


# -- embedded networks (tests, the demo) -------------------------------------------

#: Link-session label of test-only prefilled key (shown in block metadata and status).
TEST_ONLY_SESSION = "TEST-ONLY-prefill (not QKD key)"
_PREFILL_SESSION = 0xFFFF_FFFE


def prefill_pair(hub_store: KeyStore, hub_name: str, spoke_store: KeyStore, spoke: str,
                 data_bits: int, *, auth_bits: int = 0, seed: int = 0,
                 batch: int = 0) -> None:
    """TEST-ONLY: seed mirrored hub<->spoke pools from a deterministic generator.

    This is *not* QKD key: it comes from numpy's PCG64 seeded by ``(seed, spoke,
    batch)`` and exists so routing tests need not wait for the link layer. Both
    directions of ``data`` (and ``auth`` if ``auth_bits``) get ``*_bits`` bits, with
    the mirrored block ids the link layer would use (session 0xFFFFFFFE).
    """
    rng = np.random.Generator(np.random.PCG64(
        [seed, batch, *spoke.encode("utf-8")]))
    meta = BlockMeta(link_session=TEST_ONLY_SESSION, created=time.time(), eps_sec=1.0,
                     eps_cor=1.0, leaked_ec_bits=0, auth_bits_spent=0)
    plan = [("data-tx", "data-rx", data_bits, 0), ("data-rx", "data-tx", data_bits, 1),
            ("auth-tx", "auth-rx", auth_bits, 2), ("auth-rx", "auth-tx", auth_bits, 3)]
    for hub_purpose, spoke_purpose, bits, part in plan:
        if bits <= 0:
            continue
        bits -= bits % 8
        block_id = (_PREFILL_SESSION << 32) | ((batch & 0x3FFFFFFF) << 2) | part
        key = rng.bytes(bits // 8)
        hub_store.add_block(spoke, hub_purpose, block_id, key, bits, meta)
        spoke_store.add_block(hub_name, spoke_purpose, block_id, key, bits, meta)


@dataclass
class EmbeddedNetwork:
    """A hub and its spokes running in this process (see :func:`embedded_network`)."""

    folder: Path
    hub: Any  # qkdnet.hub.daemon.HubDaemon
    nodes: dict[str, SpokeNode]
    hub_store: KeyStore
    stores: dict[str, KeyStore]
    seed: int = 0
    _batch: int = 1

    def __getitem__(self, name: str) -> SpokeNode:
        return self.nodes[name]

    def prefill(self, data_bits: int, *, auth_bits: int = 0,
                names: Sequence[str] | None = None) -> None:
        """TEST-ONLY: add ``data_bits`` each way (and ``auth_bits``) to spoke links."""
        for name in names or list(self.stores):
            prefill_pair(self.hub_store, self.hub.settings.name, self.stores[name], name,
                         data_bits, auth_bits=auth_bits, seed=self.seed, batch=self._batch)
        self._batch += 1


@contextlib.asynccontextmanager
async def embedded_network(names: Sequence[str], folder: str | Path, *,
                           hub_name: str = "hub", prefill_key: int = 0,
                           auth_bits: int | None = None, seed: int = 0,
                           key_wait: float = 5.0, key_stall: float | None = None,
                           window: int = 32,
                           queue_frames: int = 64, link: bool = False,
                           preset: str | None = None, km: float | None = None,
                           control_sockets: bool = False, wait: bool = True,
                           extra_spokes: Sequence[str] = (), lease_bits: int = 1 << 16,
                           block_slots: int | None = None, hub_pcap: Path | None = None,
                           bootstrap_bytes: int | None = None,
                           link_config: dict[str, Any] | None = None
                           ) -> AsyncIterator[EmbeddedNetwork]:
    """A hub and spokes ``names`` on loopback, key stores in ``folder``.

    ``prefill_key`` bits per direction per spoke are seeded (TEST-ONLY deterministic
    key, see :func:`prefill_pair`) together with ``auth_bits`` of authentication key
    (default: enough for ~8000 frames each way), so routing can be exercised without
    QKD. ``link=True`` runs the QKD link layer (emulated PHY ``preset`` at ``km``,
    ``block_slots`` pulse slots per block, default sized for ~1.5e6 clicks) on every
    spoke link, so real distilled key flows into the pools.
    ``bootstrap_bytes`` sizes each spoke's bootstrap secret (default 256 KiB with a
    link, 4 KiB without); ``link_config`` overrides ``LinkConfig`` fields on both ends
    of every link (e.g. ``auth_reserve_bits``).
    ``hub_pcap`` records the hub's sideband (every spoke connection) to a pcap file.
    ``extra_spokes`` are known to the hub (bootstrap secret, key store, prefill in
    ``net.stores``) but get no running node: tests connect them by hand.
    """
    from qkdnet.hub.daemon import HubSettings, open_hub
    from qkdnet.hub.linkrun import hub_link_runner, spoke_link_runner

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    link_cfg: dict[str, Any] = {"enabled": link, "preset": preset or "snspd-metro",
                                "km": 10.0 if km is None else float(km), "seed": seed}
    if block_slots:
        link_cfg["block_slots"] = block_slots
    if link_config:
        link_cfg["config"] = dict(link_config)
    if auth_bits is None:
        auth_bits = 1 << 20 if prefill_key else 0
    import os
    all_names = [*names, *extra_spokes]
    secrets_: dict[str, Path] = {}
    for name in all_names:
        path = folder / f"{name}.bootstrap"
        if not path.exists():
            # The link's first blocks authenticate with bootstrap key only, and a block
            # takes a few hundred frames: give the link a secret that lasts until the
            # link's own key tops the auth pools up.
            size = bootstrap_bytes or (1 << 18 if link else 4096)
            path.write_bytes(os.urandom(size))
            path.chmod(0o600)
        secrets_[name] = path
    hub_store = KeyStore(folder / f"{hub_name}.keys", lease_bits=lease_bits)
    stores = {name: KeyStore(folder / f"{name}.keys", lease_bits=lease_bits)
              for name in all_names}
    try:
        for name in all_names:
            hub_store.import_bootstrap(name, secrets_[name].read_bytes(), initiator=False)
            stores[name].import_bootstrap(hub_name, secrets_[name].read_bytes(),
                                          initiator=True)
        net_seed = seed
        hub_settings = HubSettings(
            name=hub_name, keystore=folder / f"{hub_name}.keys", port=0,
            spokes={n: None for n in all_names}, key_wait=key_wait, key_stall=key_stall,
            queue_frames=queue_frames,
            control_socket=(folder / f"{hub_name}.sock") if control_sockets else None,
            link=dict(link_cfg), pcap=hub_pcap)
        async with open_hub(hub_settings, store=hub_store,
                            link_runner=hub_link_runner(hub_settings)) as hub:
            net = EmbeddedNetwork(folder, hub, {}, hub_store, stores, net_seed)
            if prefill_key or auth_bits:
                net.prefill(prefill_key, auth_bits=auth_bits)
            async with contextlib.AsyncExitStack() as stack:
                for name in names:
                    spoke_settings = SpokeSettings(
                        name=name, hub_name=hub_name, keystore=folder / f"{name}.keys",
                        hub_port=hub.port, key_wait=key_wait, key_stall=key_stall,
                        window=window,
                        control_socket=(folder / f"{name}.sock") if control_sockets
                        else None, link=dict(link_cfg))
                    node = SpokeNode(spoke_settings, store=stores[name],
                                     link_runner=spoke_link_runner(spoke_settings))
                    net.nodes[name] = await stack.enter_async_context(node.running())
                if wait:
                    for node in net.nodes.values():
                        await node.wait_connected(30.0)
                yield net
    finally:
        for st in stores.values():
            st.close()
        hub_store.close()
