"""The node daemon's local socket: apps in other processes use the node through it.

Theory of operation
-------------------
The node daemon runs :func:`serve_local` on a Unix socket created with mode 0600
inside a 0700 folder, so only its owner can connect (the socket is the only access
control: whoever can open it can use the node's key). Apps use
:class:`NodeClient`, which has the node interface apps need (``open_channel``,
``listen``, ``relay_key``, ``status``), so ``open_secure_stream(..., node=client)``
works exactly as with an in-process :class:`~qkdnet.hub.node.SpokeNode`.

One connection per purpose. Every message on the socket is a frame with the
sideband header (apps/wire.py: LOCAL_REQUEST 0x70, LOCAL_REPLY 0x71, LOCAL_DATA
0x72; body in the place of a StreamData body, zero tag: the socket is local and
not authenticated). A connection starts with one LOCAL_REQUEST (JSON):

* ``{"op": "status"}`` → one LOCAL_REPLY with the node's status, then close;
* ``{"op": "relay_key", "peer", "n_bits"}`` → LOCAL_REPLY with the result;
* ``{"op": "open", "peer", "service"}`` → LOCAL_REPLY ``{"ok": true}`` and the
  connection *becomes* the channel: each LOCAL_DATA frame is one channel message,
  a LOCAL_DATA with flags bit 0 set is the end of the channel;
* ``{"op": "listen", "service"}`` → LOCAL_REPLY ``{"ok": true}``, then one
  LOCAL_REPLY ``{"event": "incoming", "token": T, "peer"}`` per incoming channel;
  the client attaches with a new connection ``{"op": "attach", "token": T}``,
  which becomes that channel.

Errors come back as LOCAL_REPLY ``{"ok": false, "error": "...", "kind": "..."}``.
A request the server cannot parse (bad frame, bad or too deeply nested JSON, missing
fields, nothing within REQUEST_TIMEOUT) gets ``"kind": "request"`` and the connection
is closed; every other connection and the server itself carry on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
from collections import deque
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import trio

from qkdnet.apps import wire
from qkdnet.apps.wire import AppMsgType
from qkdnet.errors import ErrorCode, KeyExhausted, QkdnetError, RemoteProtocolError

log = logging.getLogger(__name__)

END = 0x01  # LOCAL_DATA flag: end of the channel
MAX_LOCAL_FRAME = (1 << 20) + 4096
#: Seconds a new local connection has to send its request.
REQUEST_TIMEOUT = 30.0
#: Seconds a client's close may spend telling the daemon (then it just hangs up).
CLOSE_TIMEOUT = 0.5


# ---- framing ---------------------------------------------------------------------------


def _frame(mtype: int, payload: bytes, flags: int = 0) -> bytes:
    head = wire.HEADER.pack(wire.HEADER_SIZE - 4 + len(payload) + wire.TAG_SIZE, wire.VERSION,
                            mtype, flags, 0, 0, 0, 0, 0)
    return b"".join((head, payload, bytes(wire.TAG_SIZE)))


class _Framed:
    """Frames over a Unix socket stream."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._buf = bytearray()
        self._send_lock = trio.Lock()

    async def send(self, mtype: int, payload: bytes, flags: int = 0, *,
                   writable: bool = False) -> None:
        """Send one frame; ``writable``: first wait until the socket is writable, so a
        send blocks exactly when ``wait_send_all_might_not_block`` would."""
        async with self._send_lock:
            if writable:
                await self.stream.wait_send_all_might_not_block()
            await self.stream.send_all(_frame(mtype, payload, flags))

    async def send_json(self, mtype: int, obj: dict[str, Any]) -> None:
        await self.send(mtype, json.dumps(obj).encode())

    async def receive(self) -> tuple[int, int, bytes] | None:
        """(type, flags, payload), or None at a clean end of the connection."""
        while True:
            size = wire.peek_length(self._buf)
            if size is not None:
                if size > MAX_LOCAL_FRAME or size < wire.HEADER_SIZE + wire.TAG_SIZE:
                    raise RemoteProtocolError(f"local frame of {size} bytes",
                                              ErrorCode.FRAME_TOO_LARGE)
                if len(self._buf) >= size:
                    frame = bytes(self._buf[:size])
                    del self._buf[:size]
                    head = wire.decode_header(frame)
                    return head.type, head.flags, frame[wire.HEADER_SIZE:-wire.TAG_SIZE]
            data = await self.stream.receive_some(1 << 18)
            if not data:
                if self._buf:
                    raise RemoteProtocolError("local connection ended mid-frame",
                                              ErrorCode.MALFORMED_FRAME)
                return None
            self._buf += data

    async def receive_json(self) -> dict[str, Any]:
        got = await self.receive()
        if got is None:
            raise trio.EndOfChannel
        mtype, _flags, payload = got
        if mtype not in (AppMsgType.LOCAL_REQUEST, AppMsgType.LOCAL_REPLY):
            raise RemoteProtocolError("expected a JSON request or reply",
                                      ErrorCode.PROTOCOL_VIOLATION)
        try:
            obj = json.loads(payload)
        except ValueError:
            raise RemoteProtocolError("malformed JSON", ErrorCode.MALFORMED_FRAME) from None
        except RecursionError:  # "[[[[..." a frame deep: the parser runs out of stack
            raise RemoteProtocolError("JSON nested too deeply",
                                      ErrorCode.MALFORMED_FRAME) from None
        if not isinstance(obj, dict):
            raise RemoteProtocolError("malformed JSON", ErrorCode.MALFORMED_FRAME)
        return obj

    async def aclose(self) -> None:
        await self.stream.aclose()


def _error(err: BaseException) -> dict[str, Any]:
    if isinstance(err, KeyExhausted):
        return {"ok": False, "error": str(err), "kind": "key_exhausted", "hop": err.hop,
                "needed_bits": err.requested_bits, "available_bits": err.available_bits}
    return {"ok": False, "error": str(err), "kind": type(err).__name__}


def _reply_error(info: dict[str, Any]) -> QkdnetError:
    """The error a LOCAL_REPLY reports, with the daemon's one-line message as is."""
    msg = str(info.get("error", "channel failed"))
    if info.get("kind") == "key_exhausted":
        err: QkdnetError = KeyExhausted(int(info.get("needed_bits", 0) or 0),
                                        int(info.get("available_bits", 0) or 0),
                                        hop=str(info.get("hop", "")))
        err.args = (msg,)  # already names the hop: do not wrap it in a second message
        return err
    return LocalChannelError(msg)


# ---- server half (runs inside the node daemon) -------------------------------------


async def serve_local(node: Any, path: str | os.PathLike[str], *,
                      task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``node`` to local apps on Unix socket ``path`` (mode 0600) until cancelled."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    old = os.umask(0o177)  # the socket file is created 0600, never briefly wider
    try:
        await sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(64)
    listener = trio.SocketListener(sock)
    pending: dict[str, Any] = {}  # token -> incoming channel not yet attached
    try:
        async def handle(stream: trio.SocketStream) -> None:
            await _serve_one(node, stream, pending)

        task_status.started(path)
        await trio.serve_listeners(handle, [listener])
    finally:
        with contextlib.suppress(OSError):
            path.unlink()


async def _serve_one(node: Any, stream: trio.abc.Stream, pending: dict[str, Any]) -> None:
    """One local connection. Whatever the client sends, this returns (after an error
    reply where the connection still works) and never raises: one bad client must not
    end :func:`serve_local` (``trio.serve_listeners`` would re-raise)."""
    conn = _Framed(stream)
    try:
        await _answer(node, conn, pending)
    except Exception as err:  # sorted below: a bug costs one connection, not the server
        leaves = list(_leaves(err))
        if all(isinstance(e, _GONE) for e in leaves):
            log.debug("local connection ended: %s", type(leaves[0]).__name__)
        elif all(isinstance(e, _GONE + _CLIENT_FAULT) for e in leaves):
            # The client's fault: a bad frame, bad JSON, a bad or missing field, silence.
            fault = next(e for e in leaves if isinstance(e, _CLIENT_FAULT))
            log.debug("local client refused: %s", type(fault).__name__)
            reason = str(fault) if isinstance(fault, RemoteProtocolError) else (
                f"bad request ({type(fault).__name__})")
            await _try_reply(conn, {"ok": False, "error": reason, "kind": "request"})
        else:
            log.exception("local connection failed")
            await _try_reply(conn, {"ok": False, "error": "internal error",
                                    "kind": "internal"})
    finally:
        await trio.aclose_forcefully(stream)


#: The client went away; the client sent something unusable.
_GONE = (trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError)
_CLIENT_FAULT = (RemoteProtocolError, KeyError, ValueError, TypeError, trio.TooSlowError)


def _leaves(err: BaseException) -> Iterator[BaseException]:
    """The exceptions inside (possibly nested) exception groups."""
    if isinstance(err, BaseExceptionGroup):
        for sub in err.exceptions:
            yield from _leaves(sub)
    else:
        yield err


async def _try_reply(conn: _Framed, obj: dict[str, Any]) -> None:
    """Best-effort error reply on a connection that is about to be closed."""
    with trio.move_on_after(1), contextlib.suppress(Exception):
        await conn.send_json(AppMsgType.LOCAL_REPLY, obj)


async def _answer(node: Any, conn: _Framed, pending: dict[str, Any]) -> None:
    with trio.fail_after(REQUEST_TIMEOUT):  # a client that never asks holds a task
        req = await conn.receive_json()
    op = req.get("op")
    if op == "status":
        await conn.send_json(AppMsgType.LOCAL_REPLY, {"ok": True, "status": node.status()})
    elif op == "relay_key":
        peer, n_bits = str(req["peer"]), int(req["n_bits"])
        try:
            res = await node.relay_key(peer, n_bits)
            await conn.send_json(AppMsgType.LOCAL_REPLY, {
                "ok": True, "peer": res.peer, "block_id": res.block_id,
                "n_bits": res.n_bits, "purpose": res.purpose})
        except QkdnetError as err:
            await conn.send_json(AppMsgType.LOCAL_REPLY, _error(err))
    elif op == "open":
        peer, service = str(req["peer"]), str(req["service"])
        try:
            chan = await node.open_channel(peer, service)
        except QkdnetError as err:
            await conn.send_json(AppMsgType.LOCAL_REPLY, _error(err))
            return
        await conn.send_json(AppMsgType.LOCAL_REPLY, {"ok": True,
                                                      "channel_id": chan.channel_id})
        await _pump(conn, chan)
    elif op == "listen":
        await _serve_listen(node, conn, str(req["service"]), pending)
    elif op == "attach":
        chan = pending.pop(str(req.get("token")), None)
        if chan is None:
            await conn.send_json(AppMsgType.LOCAL_REPLY,
                                 {"ok": False, "error": "unknown token", "kind": "token"})
            return
        await conn.send_json(AppMsgType.LOCAL_REPLY, {"ok": True,
                                                      "channel_id": chan.channel_id})
        await _pump(conn, chan)
    else:
        await conn.send_json(AppMsgType.LOCAL_REPLY,
                             {"ok": False, "error": f"unknown op {op!r}", "kind": "op"})


async def _serve_listen(node: Any, conn: _Framed, service: str,
                        pending: dict[str, Any]) -> None:
    try:
        listener = node.listen(service)
    except QkdnetError as err:
        await conn.send_json(AppMsgType.LOCAL_REPLY, _error(err))
        return
    try:
        await conn.send_json(AppMsgType.LOCAL_REPLY, {"ok": True})

        async def watch_client(scope: trio.CancelScope) -> None:
            # The client closing its listen connection stops the listener.
            with contextlib.suppress(Exception):
                await conn.receive()
            scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_client, nursery.cancel_scope)
            async for chan in listener:
                token = secrets.token_hex(16)
                pending[token] = chan
                await conn.send_json(AppMsgType.LOCAL_REPLY, {
                    "event": "incoming", "token": token, "peer": chan.peer,
                    "channel_id": chan.channel_id})
    finally:
        listener.close()


async def _pump(conn: _Framed, chan: Any) -> None:
    """Move messages between a local connection and a channel until either ends."""

    async def up(scope: trio.CancelScope) -> None:  # socket -> channel
        try:
            while True:
                got = await conn.receive()
                if got is None or got[1] & END:
                    break
                await chan.send_message(got[2])
        except QkdnetError as err:
            with contextlib.suppress(Exception):
                await conn.send_json(AppMsgType.LOCAL_REPLY, _error(err))
        finally:
            with trio.move_on_after(1) as s:
                s.shield = True
                with contextlib.suppress(QkdnetError):
                    await chan.aclose(timeout=0)
            scope.cancel()

    async def down(scope: trio.CancelScope) -> None:  # channel -> socket
        try:
            while True:
                try:
                    data = await chan.receive_message()
                except trio.EndOfChannel:
                    await conn.send(AppMsgType.LOCAL_DATA, b"", END)
                    return  # keep the up direction open (half close)
                await conn.send(AppMsgType.LOCAL_DATA, data)
        except (QkdnetError, trio.ClosedResourceError) as err:
            with contextlib.suppress(Exception):
                await conn.send_json(AppMsgType.LOCAL_REPLY, _error(err))
            scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(up, nursery.cancel_scope)
        nursery.start_soon(down, nursery.cancel_scope)


# ---- client half ------------------------------------------------------------------------


class LocalChannelError(QkdnetError):
    """The node daemon reported an error for a channel or request."""


class LocalChannel:
    """A relayed channel reached through the node's local socket (Channel interface).

    A send never reads (that would drain the peer's data and unclog the other
    direction): the daemon closes the connection when the channel ends under a send
    (the peer closed it, or it failed, e.g. no key arrived on a hop), which breaks
    the blocked send; the send then reads what the daemon sent before hanging up,
    keeping data for :meth:`receive_message`, and raises the daemon's reason. One
    task at a time reads the socket (``_read_lock``).
    """

    def __init__(self, conn: _Framed, peer: str, service: str, channel_id: int) -> None:
        self._conn = conn
        self.peer = peer
        self.service = service
        self.channel_id = channel_id
        self.peer_closed = False
        self.closed = False
        self.error: QkdnetError | None = None
        self._inbox: deque[bytes] = deque()
        self._read_lock = trio.Lock()

    def __repr__(self) -> str:
        return f"LocalChannel(peer={self.peer!r}, service={self.service!r})"

    async def send_message(self, data: bytes) -> None:
        if self.error is not None:
            raise self.error
        if self.closed:
            raise trio.ClosedResourceError("channel was closed")
        try:
            await self._conn.send(AppMsgType.LOCAL_DATA, bytes(data), writable=True)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as err:
            if self.closed:
                raise trio.ClosedResourceError("channel was closed") from None
            raise await self._hung_up(err) from None

    async def wait_send_might_not_block(self) -> None:
        """Return when the daemon would take a message (its socket has room)."""
        if self.error is not None:
            raise self.error
        async with self._conn._send_lock:  # not while a send is on its way
            await self._conn.stream.wait_send_all_might_not_block()

    async def _read_one(self) -> None:
        """Read one frame into the inbox or the channel's state (``_read_lock`` held)."""
        try:
            got = await self._conn.receive()
        except trio.ClosedResourceError:
            if not self.closed:  # closed by us: receive_message says so, watch ends
                self.error = LocalChannelError("node connection was closed")
            return
        except (trio.BrokenResourceError, OSError, RemoteProtocolError) as err:
            self.error = LocalChannelError(f"node connection lost: {err}")
            return
        if got is None:
            self.peer_closed = True
            return
        mtype, flags, payload = got
        if mtype == AppMsgType.LOCAL_REPLY:
            try:
                info = json.loads(payload)
            except ValueError:
                info = {}
            self.error = _reply_error(info if isinstance(info, dict) else {})
            return
        if flags & END:
            self.peer_closed = True
            return
        self._inbox.append(payload)

    def _settled(self) -> bool:
        return self.error is not None or self.peer_closed

    async def _hung_up(self, err: BaseException) -> QkdnetError:
        """The daemon closed the connection under a send: read what it sent before
        (data for a receiver, the peer's end, its error report) and say why."""
        with trio.move_on_after(CLOSE_TIMEOUT):
            async with self._read_lock:
                while not self._settled() and not self.closed:
                    await self._read_one()
        if self.error is not None:
            return self.error
        if self.peer_closed:
            return LocalChannelError(f"{self.peer} closed the channel")
        return LocalChannelError(f"node connection lost: {err}")

    async def receive_message(self) -> bytes:
        while True:
            if self._inbox:
                return self._inbox.popleft()
            if self.error is not None:
                raise self.error
            if self.peer_closed:
                raise trio.EndOfChannel
            if self.closed:
                raise trio.ClosedResourceError("channel was closed")
            async with self._read_lock:
                if not self._inbox and not self._settled():
                    await self._read_one()

    async def aclose(self, *, timeout: float = 0) -> None:
        if self.closed:
            return
        self.closed = True
        if not self._settled():
            # Tell the daemon the channel ends; closing the socket says the same, so a
            # daemon that is not reading (its send waits for key) costs no more than this.
            with trio.move_on_after(CLOSE_TIMEOUT), contextlib.suppress(Exception):
                await self._conn.send(AppMsgType.LOCAL_DATA, b"", END)
        await trio.aclose_forcefully(self._conn.stream)


class LocalListener:
    """Incoming channels for a service, through the node's local socket."""

    def __init__(self, client: NodeClient, service: str) -> None:
        self.client = client
        self.service = service
        self._conn: _Framed | None = None

    async def ready(self) -> None:
        """Register the service with the node (call before iterating)."""
        if self._conn is None:
            self._conn = await self.client._request({"op": "listen", "service": self.service})

    def __aiter__(self) -> AsyncIterator[LocalChannel]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[LocalChannel]:
        await self.ready()
        assert self._conn is not None
        while True:
            try:
                event = await self._conn.receive_json()
            except trio.EndOfChannel:
                return
            if event.get("event") != "incoming":
                continue
            conn = await self.client._request({"op": "attach", "token": event["token"]})
            yield LocalChannel(conn, str(event["peer"]), self.service,
                               int(event.get("channel_id", 0)))

    async def accept(self) -> LocalChannel:
        """The next incoming channel."""
        async for chan in self:
            return chan
        raise trio.EndOfChannel

    async def aclose(self) -> None:
        if self._conn is not None:
            await trio.aclose_forcefully(self._conn.stream)
            self._conn = None

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.stream.socket.close()  # type: ignore[attr-defined]
            self._conn = None


class NodeClient:
    """The node interface over the daemon's local socket (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._status: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"NodeClient({str(self.path)!r})"

    async def _connect(self) -> _Framed:
        try:
            stream = await trio.open_unix_socket(str(self.path))
        except OSError as err:
            raise LocalChannelError(
                f"cannot reach the node daemon at {self.path}: {err.strerror or err} "
                f"(start it with `qkdnet node --config FILE`, or pass --node SOCKET)"
            ) from None
        return _Framed(stream)

    async def _request(self, req: dict[str, Any]) -> _Framed:
        conn = await self._connect()
        await conn.send_json(AppMsgType.LOCAL_REQUEST, req)
        try:
            reply = await conn.receive_json()
        except trio.EndOfChannel:
            raise LocalChannelError("the node daemon closed the connection") from None
        if not reply.get("ok"):
            await trio.aclose_forcefully(conn.stream)
            raise _reply_error(reply)
        conn.reply = reply  # type: ignore[attr-defined]
        return conn

    async def open_channel(self, peer: str, service: str) -> LocalChannel:
        """Open a relayed channel to ``peer``'s ``service`` through the daemon."""
        conn = await self._request({"op": "open", "peer": peer, "service": service})
        return LocalChannel(conn, peer, service, int(conn.reply.get("channel_id", 0)))  # type: ignore[attr-defined]

    def listen(self, service: str) -> LocalListener:
        """Incoming channels for ``service`` (``await listener.ready()`` registers)."""
        return LocalListener(self, service)

    async def relay_key(self, peer: str, n_bits: int) -> dict[str, Any]:
        """End-to-end key with ``peer`` via the hub (stored in the daemon's key store)."""
        conn = await self._request({"op": "relay_key", "peer": peer, "n_bits": n_bits})
        await trio.aclose_forcefully(conn.stream)
        return dict(conn.reply)  # type: ignore[attr-defined]

    async def fetch_status(self) -> dict[str, Any]:
        """Ask the daemon for its status (cached for :meth:`status`)."""
        conn = await self._request({"op": "status"})
        await trio.aclose_forcefully(conn.stream)
        self._status = dict(conn.reply.get("status", {}))  # type: ignore[attr-defined]
        return self._status

    def status(self) -> dict[str, Any]:
        """The last status fetched with :meth:`fetch_status` (sync, like SpokeNode's)."""
        return self._status
