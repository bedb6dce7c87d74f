"""The sideband over trio: one connection per :class:`SidebandChannel`, plus helpers.

Theory of operation
-------------------
The protocol logic — framing, authentication, the connection state machine — is the
sans-I/O :class:`~qkdnet.sideband_core.SidebandConnection` (its names are re-exported
here). This module only drives it: :class:`SidebandChannel` feeds it the bytes a
``trio.abc.Stream`` delivers and writes the bytes it produces;
:func:`connect_sideband` / :func:`serve_sideband` are shaped like
``trio.open_tcp_stream`` / ``trio.serve_tcp`` and do the HELLO handshake;
:class:`FrameRouter` lets the link, hub and apps layers register handlers for their
message types on one connection; :func:`serve_basic_node` is a minimal responder
(HELLO, PING, CLOSE) used by the conformance tests.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import trio
from scapy.packet import Packet

from qkdnet.auth import FrameAuthenticator
from qkdnet.errors import ErrorCode, LocalProtocolError, QkdnetError, RemoteProtocolError
from qkdnet.sideband_core import (
    DEFAULT_MAX_FRAME_SIZE,
    KINDS,
    MAX_NAME_BYTES,
    TRANSITIONS,
    AuthResolver,
    ConnState,
    Direction,
    FrameReceived,
    SidebandConnection,
    kind_of,
    type_of_body,
)
from qkdnet.wire import PROTOCOL_VERSION, Close, Hello, HelloAck, MsgType, Ping, Pong, Role

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "KINDS",
    "MAX_NAME_BYTES",
    "TRANSITIONS",
    "AuthResolver",
    "BasicNode",
    "BasicNodeStats",
    "ConnState",
    "Direction",
    "FrameHandler",
    "FrameReceived",
    "FrameRouter",
    "PeerAborted",
    "SidebandChannel",
    "SidebandConnection",
    "SyncFrameHandler",
    "connect_sideband",
    "kind_of",
    "serve_basic_node",
    "serve_sideband",
    "type_of_body",
]

log = logging.getLogger(__name__)

class PeerAborted(QkdnetError):
    """The peer sent an ERROR frame; ``code`` and ``reason`` are what it said."""

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason
        try:
            code_name = ErrorCode(code).name
        except ValueError:
            code_name = str(code)
        super().__init__(f"peer aborted the sideband connection: {code_name} ({reason})")


FrameHandler = Callable[["SidebandChannel", FrameReceived], Awaitable[None]]
#: A handler that never yields (see :meth:`FrameRouter.register_sync`).
SyncFrameHandler = Callable[["SidebandChannel", FrameReceived], "bool | None"]


class FrameRouter:
    """Message-type → handler table shared by the layers on one connection.

    Each layer registers the types it serves, e.g.
    ``router.register(range(0x10, 0x40), link_handler)``. Handlers are awaited one at
    a time in frame order, so they should hand long work to their own tasks.
    Connection-level types (HELLO…PONG) are handled by the channel itself.
    """

    def __init__(self) -> None:
        self._handlers: dict[int, FrameHandler] = {}
        self._sync: dict[int, SyncFrameHandler] = {}

    def register(self, types: int | Iterable[int], handler: FrameHandler) -> None:
        """Route ``types`` to ``handler``; a type can have one handler only."""
        for t in [types] if isinstance(types, int) else list(types):
            if kind_of(t) != "LAYER":
                raise LocalProtocolError(f"type 0x{t:02x} is handled by the connection")
            if t in self._handlers:
                raise LocalProtocolError(f"type 0x{t:02x} already has a handler")
            self._handlers[t] = handler

    def register_sync(self, types: int | Iterable[int], handler: SyncFrameHandler,
                      fallback: FrameHandler | None = None) -> None:
        """Route ``types`` to a plain function that handles a frame without yielding.

        :meth:`SidebandChannel.run` calls it for the frames of one read straight after
        checking them, inside the same key-store batch, so the key those frames and
        their handling take (tag keys, one-time pads) is committed once per read. The
        handler must not let anything computed from taken key leave the process or
        reach another task itself: it hands such effects (a frame to forward, a
        message to deliver) to ``KeyStore.after_commit``, which releases them only
        once the batch has committed, and drops them if the commit fails. It may return
        False, having changed nothing, for a frame that needs to wait for something:
        that frame then goes to the async ``fallback`` in frame order.
        """
        async def via_async(chan: SidebandChannel, ev: FrameReceived) -> None:
            auth = chan.conn.auth
            with auth.batch() if auth is not None else contextlib.nullcontext():
                handled = handler(chan, ev)
            if handled is False:
                if fallback is None:
                    raise LocalProtocolError(
                        f"no handler took message type 0x{ev.type:02x}")
                await fallback(chan, ev)

        self.register(types, via_async)
        for t in [types] if isinstance(types, int) else list(types):
            self._sync[t] = handler

    def handler_for(self, msg_type: int) -> FrameHandler | None:
        """The handler registered for ``msg_type``, if any."""
        return self._handlers.get(msg_type)

    def sync_handler_for(self, msg_type: int) -> SyncFrameHandler | None:
        """The non-yielding handler registered for ``msg_type``, if any."""
        return self._sync.get(msg_type)


class SidebandChannel:
    """One sideband connection over a trio stream.

    ``receive()`` returns every frame (including PING, CLOSE, ERROR); ``run(router)``
    is the usual loop: it answers PING, completes CLOSE, and routes layer frames. On a
    :class:`RemoteProtocolError` the channel sends ERROR, closes the stream and
    re-raises. ``pcap_writer`` (a :class:`qkdnet.pcap.PcapFlow`) records both
    directions.
    """

    def __init__(self, stream: trio.abc.Stream, conn: SidebandConnection,
                 pcap_writer: Any = None, *, receive_size: int = 65536) -> None:
        self.stream = stream
        self.conn = conn
        self.pcap = pcap_writer
        self.receive_size = receive_size
        self._events: list[FrameReceived] = []
        self._send_lock = trio.Lock()
        self._stream_closed = False
        self._receiving = False

    def __repr__(self) -> str:
        return f"SidebandChannel({self.conn!r})"

    @property
    def peer_name(self) -> str | None:
        """The authenticated peer name (after the handshake)."""
        return self.conn.peer_name

    async def _write(self, data: bytes) -> None:
        if not data:
            return
        if self.pcap is not None:
            self.pcap.sent(data)
        await self.stream.send_all(data)

    async def send(self, body: Packet, session: int = 0, flags: int = 0, *,
                   msg_type: int | None = None, deferred: bool = False) -> None:
        """Sign and send one frame (frames from concurrent tasks never interleave).

        ``deferred``: no tag of its own; the next tagged frame covers it (spec §6.4).
        """
        async with self._send_lock:
            await self._write(self.conn.send(body, session=session, flags=flags,
                                             msg_type=msg_type, deferred=deferred))

    async def send_raw(self, data: bytes) -> None:
        """Send bytes as they are (conformance testing)."""
        async with self._send_lock:
            await self._write(data)

    async def receive(self) -> FrameReceived:
        """The next frame. Raises ``trio.EndOfChannel`` after a clean close,
        :class:`RemoteProtocolError` (after sending ERROR) on bad input, and
        ``trio.BusyResourceError`` if another task is already receiving."""
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this channel")
        self._receiving = True
        try:
            return await self._receive()
        finally:
            self._receiving = False

    async def _receive(self, router: FrameRouter | None = None) -> FrameReceived:
        """The next frame; with ``router``, frames of a read that have a non-yielding
        handler are handled here, inside the read's key-store batch, and not returned."""
        while not self._events:
            try:
                self.conn.raise_pending()
                if self.conn.state in (ConnState.CLOSED, ConnState.ERROR):
                    raise trio.EndOfChannel
                try:
                    data = await self.stream.receive_some(
                        min(self.receive_size, self.conn.receive_window))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if self.pcap is not None and data:
                    self.pcap.received(data)
                if not data and self.conn.buffered == 0:
                    if self.conn.state in (ConnState.CLOSE_SENT, ConnState.CLOSE_RECEIVED):
                        self.conn.state = ConnState.CLOSED  # peer hung up after CLOSE
                        raise trio.EndOfChannel
                    self.conn.state = ConnState.ERROR
                    raise RemoteProtocolError("peer hung up without CLOSE",
                                              ErrorCode.PROTOCOL_VIOLATION)
                # Every frame of this read is checked (tag keys taken) in one go: with
                # a key store behind the authenticator, that is one durable commit for
                # all of them, not one each. Nothing yields inside.
                auth = self.conn.auth
                with auth.batch() if auth is not None else contextlib.nullcontext():
                    self._events.extend(self.conn.receive_data(bytes(data)))
                    while router is not None and self._events:
                        handle = router.sync_handler_for(self._events[0].type)
                        if handle is None or handle(self, self._events[0]) is False:
                            break  # this one (and what follows) goes the async way
                        self._events.pop(0)
            except RemoteProtocolError as err:
                await self.abort(err)
                raise
        return self._events.pop(0)

    async def abort(self, err: RemoteProtocolError | ErrorCode, reason: str = "") -> None:
        """Send ERROR (best effort) and close the stream."""
        frame = self.conn.error_frame(err, reason)
        with trio.move_on_after(1):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self.send_raw(frame)
        await self._close_stream()

    async def _close_stream(self) -> None:
        if not self._stream_closed:
            self._stream_closed = True
            if self.pcap is not None:
                self.pcap.close()
            await self.stream.aclose()

    async def handshake_initiator(self, role: int = Role.SPOKE, capabilities: int = 0,
                                  *, timeout: float = 10.0) -> FrameReceived:
        """Send HELLO and wait for HELLO_ACK."""
        await self.send(Hello(node_name=self.conn.local_name.encode(), role=int(role),
                              versions=[PROTOCOL_VERSION], capabilities=capabilities))
        return await self._await_handshake(MsgType.HELLO_ACK, timeout)

    async def handshake_responder(self, role: int = Role.HUB, capabilities: int = 0,
                                  *, timeout: float = 10.0) -> FrameReceived:
        """Wait for HELLO and answer HELLO_ACK."""
        hello = await self._await_handshake(MsgType.HELLO, timeout)
        await self.send(HelloAck(node_name=self.conn.local_name.encode(), role=int(role),
                                 chosen_version=PROTOCOL_VERSION, capabilities=capabilities))
        return hello

    async def _await_handshake(self, expected: int, timeout: float) -> FrameReceived:
        with trio.move_on_after(timeout):
            ev = await self.receive()
            if ev.type == MsgType.ERROR:
                await self._close_stream()
                raise PeerAborted(int(ev.body.code), bytes(ev.body.reason).decode(
                    "utf-8", "replace"))
            if ev.type != expected:  # cannot happen: the table only admits `expected`
                raise LocalProtocolError("handshake out of order")
            return ev
        err = RemoteProtocolError("handshake timed out", ErrorCode.TIMEOUT)
        await self.abort(err)
        raise err

    async def run(self, router: FrameRouter | None = None) -> None:
        """Serve the connection until it closes: PING→PONG, CLOSE→CLOSE, route the rest.

        Returns after a graceful close; raises :class:`PeerAborted` if the peer sent
        ERROR and :class:`RemoteProtocolError` on bad input (ERROR already sent).
        """
        router = router or FrameRouter()
        while True:
            try:
                if self._receiving:
                    raise trio.BusyResourceError("another task is receiving on this channel")
                self._receiving = True
                try:
                    ev = await self._receive(router)
                finally:
                    self._receiving = False
            except trio.EndOfChannel:
                await self._close_stream()
                return
            if ev.type == MsgType.PING:
                await self.send(Pong(nonce=ev.body.nonce))
            elif ev.type == MsgType.PONG:
                pass
            elif ev.type == MsgType.CLOSE:
                if self.conn.state is ConnState.CLOSE_RECEIVED:
                    await self.send(Close())
                await self._close_stream()
                return
            elif ev.type == MsgType.ERROR:
                await self._close_stream()
                raise PeerAborted(int(ev.body.code),
                                  bytes(ev.body.reason).decode("utf-8", "replace"))
            else:
                handler = router.handler_for(ev.type)
                if handler is None:
                    err = RemoteProtocolError(f"no handler for message type 0x{ev.type:02x}",
                                              ErrorCode.UNKNOWN_MESSAGE_TYPE)
                    await self.abort(err)
                    raise err
                try:
                    await handler(self, ev)
                except RemoteProtocolError as err:
                    # A layer found the (authentic) frame wrong: ERROR, close, re-raise.
                    if self.conn.state is not ConnState.ERROR:
                        await self.abort(err)
                    raise

    async def ping(self, *, timeout: float = 5.0) -> None:
        """Send PING and wait for the matching PONG (only when nobody else receives)."""
        nonce = secrets.randbits(64)
        await self.send(Ping(nonce=nonce))
        with trio.fail_after(timeout):
            while True:
                ev = await self.receive()
                if ev.type == MsgType.PONG and int(ev.body.nonce) == nonce:
                    return
                if ev.type == MsgType.PING:
                    await self.send(Pong(nonce=ev.body.nonce))

    async def aclose(self, *, timeout: float = 2.0) -> None:
        """Graceful close: CLOSE, wait for the peer's CLOSE, hang up."""
        try:
            if self.conn.state is ConnState.OPEN or self.conn.state is ConnState.CLOSE_RECEIVED:
                await self.send(Close())
            with trio.move_on_after(timeout):
                while self.conn.state is ConnState.CLOSE_SENT:
                    await self.receive()
        except (RemoteProtocolError, trio.EndOfChannel, trio.BrokenResourceError,
                trio.ClosedResourceError):
            pass
        finally:
            await self._close_stream()


def _flow_for(recorder: Any, stream: trio.abc.Stream, *, server: bool) -> Any:
    if recorder is None:
        return None
    sock = getattr(stream, "socket", None)
    try:
        local = sock.getsockname()[:2] if sock is not None else ("127.0.0.1", 0)
        remote = sock.getpeername()[:2] if sock is not None else ("127.0.0.2", 0)
    except OSError:
        local, remote = ("127.0.0.1", 0), ("127.0.0.2", 0)
    return recorder.flow(local, remote, initiator=not server)


async def connect_sideband(host: str, port: int, *, local_name: str,
                           auth: FrameAuthenticator, role: int = Role.SPOKE,
                           capabilities: int = 0,
                           max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
                           pcap: Any = None, timeout: float = 10.0) -> SidebandChannel:
    """Open TCP to ``host:port``, do the HELLO handshake, return the open channel.

    ``pcap`` is a :class:`qkdnet.pcap.PcapRecorder` (or ``None``).
    """
    stream = await trio.open_tcp_stream(host, port)
    conn = SidebandConnection(local_name, auth, max_frame_size)
    chan = SidebandChannel(stream, conn, _flow_for(pcap, stream, server=False))
    try:
        await chan.handshake_initiator(role, capabilities, timeout=timeout)
    except BaseException:
        await chan._close_stream()
        raise
    return chan


ChannelHandler = Callable[[SidebandChannel], Awaitable[None]]


async def serve_sideband(handler: ChannelHandler, port: int, *, local_name: str,
                         auth_for_peer: AuthResolver, host: str | None = None,
                         role: int = Role.HUB, capabilities: int = 0,
                         max_frame_size: int = DEFAULT_MAX_FRAME_SIZE, pcap: Any = None,
                         handshake_timeout: float = 10.0,
                         on_close: Callable[[SidebandChannel, BaseException | None], None]
                         | None = None,
                         task_status: trio.TaskStatus[list[trio.SocketListener]]
                         = trio.TASK_STATUS_IGNORED) -> None:
    """Listen on ``port`` and run ``handler(channel)`` for every peer that says HELLO.

    Like ``trio.serve_tcp`` (``task_status.started`` gets the listeners). A peer that
    breaks the protocol gets ERROR and is dropped; it never takes the server down.
    ``on_close(channel, error_or_None)`` is called as each connection ends.
    """

    async def per_connection(stream: trio.SocketStream) -> None:
        conn = SidebandConnection(local_name, auth_for_peer, max_frame_size)
        chan = SidebandChannel(stream, conn, _flow_for(pcap, stream, server=True))
        failure: BaseException | None = None
        try:
            await chan.handshake_responder(role, capabilities, timeout=handshake_timeout)
            await handler(chan)
        except (QkdnetError, trio.BrokenResourceError, trio.ClosedResourceError,
                trio.EndOfChannel) as err:
            # A refused or failed peer (bad tag, replay, no key left) is worth a
            # warning: it is why a node stays unconnected; a plain hang-up is not.
            level = logging.WARNING if isinstance(err, QkdnetError) else logging.INFO
            log.log(level, "sideband peer %s dropped: %s", conn.peer_name or "?", err)
            failure = err
        except Exception as err:  # a handler bug must not take the whole server down
            log.exception("sideband handler for peer %s failed", conn.peer_name or "?")
            failure = err
            with contextlib.suppress(Exception):
                await chan.abort(ErrorCode.INTERNAL_ERROR, "internal error")
        finally:
            await chan._close_stream()
            if on_close is not None:
                on_close(chan, failure)

    await trio.serve_tcp(per_connection, port, host=host, task_status=task_status)


@dataclass
class BasicNodeStats:
    """What a basic node saw (tests look at these)."""

    connections: int = 0
    closed_gracefully: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    max_buffered: int = 0


@dataclass
class BasicNode:
    """Handle of a running :func:`serve_basic_node`."""

    name: str
    listeners: list[trio.SocketListener]
    stats: BasicNodeStats

    port: int = 0  # the TCP port it listens on

    def __post_init__(self) -> None:
        if not self.port and self.listeners:
            self.port = int(self.listeners[0].socket.getsockname()[1])


async def serve_basic_node(name: str, auth_for_peer: AuthResolver, port: int = 0, *,
                           host: str = "127.0.0.1",
                           max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
                           pcap: Any = None, router: FrameRouter | None = None,
                           task_status: trio.TaskStatus[BasicNode]
                           = trio.TASK_STATUS_IGNORED) -> None:
    """A minimal responder speaking only the connection-level protocol.

    It answers HELLO, PING and CLOSE (plus whatever ``router`` handles) and is the
    target of the conformance tests until the hub exists.
    """
    stats = BasicNodeStats()

    def on_close(chan: SidebandChannel, err: BaseException | None) -> None:
        stats.connections += 1
        stats.max_buffered = max(stats.max_buffered, chan.conn.max_buffered)
        if err is None:
            stats.closed_gracefully += 1
        else:
            key = (err.code.name if isinstance(err, RemoteProtocolError)
                   else type(err).__name__)
            stats.errors[key] = stats.errors.get(key, 0) + 1

    async def handler(chan: SidebandChannel) -> None:
        await chan.run(router)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(
            serve_sideband, handler, port, local_name=name, auth_for_peer=auth_for_peer,
            host=host, role=Role.HUB, max_frame_size=max_frame_size, pcap=pcap,
            on_close=on_close))
        task_status.started(BasicNode(name, listeners, stats))
