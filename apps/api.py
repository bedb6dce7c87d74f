"""The application API: ``open_secure_stream`` and ``serve_secure``, shaped like trio's
``open_tcp_stream`` and ``serve_tcp``.

Applications name a *peer* (another spoke) and a *service* (a string, so several
apps share one node). The node is either in the same process (a
:class:`qkdnet.hub.node.SpokeNode`) or a separate daemon reached through its local
Unix socket (:class:`qkdnet.apps.local.NodeClient`); both offer the same
:class:`Node` interface and ``node=None`` means "the local daemon"
(:func:`default_node`).

Which key protects a stream through the hub
-------------------------------------------
A relayed hub channel already one-time-pads each message with fresh link key on
every hop and tags it (Wegman–Carter) per hop. A SecureStream on such a channel
therefore runs in *hop-secured* mode (:class:`~qkdnet.apps.stream.HopSecuredCore`):
sequence numbers, session id and an explicit end of stream, and no second pad. An
end-to-end relayed key (``relay_key``, K_A ⊕ K_B) would cost the same link key again
and buy no secrecy from the hub, which is a trusted node that knows K_A; so it is
not used for streams through the hub. Key cost per link: 1 bit per payload bit
plus the per-message tag key (measured in bench/apps). A SecureStream with its own
pad (``keys=``) is for transports that are not already padded: a direct TCP path
between two parties that share key (one hop), or tests.
"""

from __future__ import annotations

import contextlib
import logging
import os
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import trio

from qkdnet.apps.stream import DEFAULT_FRAME_PAYLOAD, WAIT_FOR_KEY, KeyPolicy, SecureStream
from qkdnet.errors import KeyExhausted, QkdnetError

log = logging.getLogger(__name__)

#: Largest message a hub channel carries (qkdnet.hub.wire.MAX_MESSAGE) minus framing.
CHANNEL_FRAME_PAYLOAD = min(DEFAULT_FRAME_PAYLOAD, 256 * 1024 - 64)
#: How often a blocked sender checks whether the peer closed the channel (seconds).
PEER_CLOSE_POLL = 0.02
#: How long closing a channel may take to tell the peer, even when cancelled.
CLOSE_TIMEOUT = 1.0
#: Environment variable naming the node daemon's local socket.
SOCKET_ENV = "QKDNET_NODE_SOCKET"


@runtime_checkable
class Channel(Protocol):
    """A relayed, ordered, message-preserving channel between two spokes."""

    async def send_message(self, data: bytes) -> None: ...
    async def receive_message(self) -> bytes: ...  # raises trio.EndOfChannel at the end
    async def aclose(self) -> None: ...


class Node(Protocol):
    """What apps need from a node (SpokeNode in-process, NodeClient over the socket)."""

    async def open_channel(self, peer: str, service: str) -> Any: ...
    def listen(self, service: str) -> Any: ...  # async iterable of channels, .close()
    async def relay_key(self, peer: str, n_bits: int) -> Any: ...
    def status(self) -> Any: ...


class ChannelStream(trio.abc.Stream):
    """A hub channel seen as a byte stream: each ``send_all`` is one message.

    SecureStream on top keeps its frames whole per message, checks their order and
    finds the end of stream; this adapter only moves bytes and maps the channel's
    end/close onto trio's stream conventions (b"" at the end).
    """

    def __init__(self, channel: Any, policy: KeyPolicy = WAIT_FOR_KEY) -> None:
        self.channel = channel
        self.policy = policy
        self._buf = bytearray()
        self._eof = False
        self._closed = False

    def __repr__(self) -> str:
        return f"ChannelStream({self.channel!r})"

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError("channel closed")
        if not data:
            await trio.lowlevel.checkpoint()
            return
        if not self.policy.wait:
            self._check_key(8 * len(data))
        if getattr(self.channel, "peer_closed", False):
            raise trio.BrokenResourceError("the peer closed the channel")
        box: dict[str, BaseException | bool] = {}

        async def send(scope: trio.CancelScope) -> None:
            try:
                await self.channel.send_message(bytes(data))
            except (trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError,
                    EOFError, QkdnetError) as err:
                box["error"] = err
            finally:
                scope.cancel()

        async def watch_peer(scope: trio.CancelScope) -> None:
            # A sender blocked on the channel (its window, key, a full socket to the
            # node daemon) must learn that the peer closed the channel or that it
            # failed: a channel through the daemon's socket reads its reports
            # (LocalChannel.watch); an in-process one is polled.
            watch = getattr(self.channel, "watch", None)
            if watch is not None:
                await watch()
            else:
                while not (getattr(self.channel, "peer_closed", False)
                           or getattr(self.channel, "error", None) is not None):
                    await trio.sleep(PEER_CLOSE_POLL)
            failed = getattr(self.channel, "error", None)
            if isinstance(failed, BaseException):
                box.setdefault("error", failed)
            elif getattr(self.channel, "peer_closed", False):
                box["peer_closed"] = True
            else:  # closed at this end
                box.setdefault("error", trio.ClosedResourceError("channel closed"))
            scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send, nursery.cancel_scope)
            nursery.start_soon(watch_peer, nursery.cancel_scope)
        if self._closed:  # another task closed this stream while we sent
            raise trio.ClosedResourceError("channel closed")
        err = box.get("error")
        if isinstance(err, trio.ClosedResourceError):
            raise err
        if isinstance(err, BaseException):
            raise trio.BrokenResourceError(f"channel failed: {err}") from err
        if "peer_closed" in box:
            raise trio.BrokenResourceError("the peer closed the channel")

    def _check_key(self, n_bits: int) -> None:
        """Fail fast: refuse a message the first hop's pool cannot pad right now."""
        node = getattr(self.channel, "node", None)
        store, hub = getattr(node, "store", None), getattr(node, "hub", None)
        if store is None or hub is None:  # e.g. a NodeClient: the daemon's key_wait rules
            return
        have = int(store.available(hub, "data-tx"))
        if have < n_bits:
            raise trio.BrokenResourceError(
                f"out of key: {KeyExhausted(n_bits, have, hop='first hop')}"
            ) from KeyExhausted(n_bits, have, hop="first hop")

    async def wait_send_all_might_not_block(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("channel closed")
        wait = getattr(self.channel, "wait_send_might_not_block", None)
        if wait is None or getattr(self.channel, "peer_closed", False):
            await trio.lowlevel.checkpoint()
            return
        # A failure here is reported by the next send_all.
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError,
                                 OSError, QkdnetError):
            await wait()
        if self._closed:  # another task closed this stream while we waited
            raise trio.ClosedResourceError("channel closed")

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._closed:
            raise trio.ClosedResourceError("channel closed")
        if not self._buf and not self._eof:
            try:
                self._buf += await self.channel.receive_message()
            except (trio.EndOfChannel, EOFError):
                self._eof = True
            except QkdnetError as err:
                raise trio.BrokenResourceError(f"channel failed: {err}") from err
        else:
            await trio.lowlevel.checkpoint()
        n = len(self._buf) if max_bytes is None else min(max_bytes, len(self._buf))
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    async def aclose(self) -> None:
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        # Do not wait for the peer's application to read everything (trio's aclose
        # must not block on the peer): the hub forwards CHANNEL_CLOSE in the same
        # FIFO as the data before it, so nothing already sent is overtaken.
        # Shielded (briefly): even a cancelled close must tell the peer, or its reader
        # would wait forever; the node's CHANNEL_CLOSE is one small frame.
        with trio.move_on_after(CLOSE_TIMEOUT) as scope, contextlib.suppress(QkdnetError):
            scope.shield = True
            try:
                await self.channel.aclose(timeout=0)
            except TypeError:  # a channel whose aclose takes no timeout
                await self.channel.aclose()


def _session_for(channel: Any) -> int:
    """The stream session id: the channel id if the channel has one, else a hash."""
    for attr in ("channel_id", "id"):
        value = getattr(channel, attr, None)
        if isinstance(value, int):
            return value & 0xFFFFFFFF
    return zlib.crc32(repr(getattr(channel, "service", "")).encode())


def wrap_channel(channel: Any, *, policy: KeyPolicy = WAIT_FOR_KEY) -> SecureStream:
    """A hop-secured SecureStream on an open hub channel."""
    return SecureStream(ChannelStream(channel, policy), None, session=_session_for(channel),
                        policy=policy, max_frame_payload=CHANNEL_FRAME_PAYLOAD)


def default_socket_path() -> Path:
    """Where the local node daemon listens: ``$QKDNET_NODE_SOCKET`` or ~/.qkdnet/node.sock."""
    env = os.environ.get(SOCKET_ENV)
    if env:
        return Path(env)
    return Path.home() / ".qkdnet" / "node.sock"


def default_node() -> Node:
    """A client of the local node daemon (its Unix socket)."""
    from qkdnet.apps.local import NodeClient
    return NodeClient(default_socket_path())


async def open_secure_stream(peer: str, service: str, *, node: Node | None = None,
                             policy: KeyPolicy = WAIT_FOR_KEY) -> SecureStream:
    """Open a secure stream to ``service`` on spoke ``peer``, relayed through the hub.

    Like ``trio.open_tcp_stream``: returns a connected ``trio.abc.HalfCloseableStream``.
    Raises the node's errors (unknown peer, no listener, key exhausted on a hop).
    """
    node = node if node is not None else default_node()
    channel = await node.open_channel(peer, service)
    return wrap_channel(channel, policy=policy)


async def serve_secure(handler: Callable[[SecureStream], Awaitable[object]], service: str, *,
                       node: Node | None = None, policy: KeyPolicy = WAIT_FOR_KEY,
                       handler_nursery: trio.Nursery | None = None,
                       task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``service``: run ``handler(stream)`` for every incoming secure stream.

    Like ``trio.serve_tcp``: runs until cancelled; ``task_status.started(service)``
    once the node accepts channels for it. Each handler runs in its own task (in
    ``handler_nursery`` if given); the stream is closed when the handler returns. An
    exception in a handler is logged and ends only that stream.
    """
    node = node if node is not None else default_node()
    listener = node.listen(service)
    try:
        ready = getattr(listener, "ready", None)
        if ready is not None:  # a NodeClient registers the service over its socket
            await ready()
        async with trio.open_nursery() as nursery:
            target = handler_nursery or nursery
            task_status.started(service)
            async for channel in listener:
                target.start_soon(_run_handler, handler, channel, policy, service)
    finally:
        close = getattr(listener, "aclose", None)
        if close is not None:
            with trio.CancelScope(shield=True):
                await close()
        else:
            listener.close()


async def _run_handler(handler: Callable[[SecureStream], Awaitable[object]], channel: Any,
                       policy: KeyPolicy, service: str) -> None:
    stream = wrap_channel(channel, policy=policy)
    try:
        await handler(stream)
    except Exception as err:  # one failing stream must not stop the server
        log.warning("handler for service %s failed: %s", service, err)
    finally:
        with trio.move_on_after(5) as scope:
            scope.shield = True
            await stream.aclose()
