"""Line chat over a SecureStream, with delivery receipts.

The chat protocol rides inside the stream (already padded and authenticated), one
JSON object per line::

    {"t": "msg", "id": 7, "text": "hello"}     a message
    {"t": "ack", "id": 7}                      receipt: the peer's app displayed it

:class:`ChatSession` is the protocol engine on a stream; :func:`run_chat_cli` is the
interactive front end behind ``qkdnet chat PEER`` (typed lines out, peer lines and
receipts in, a status line with key left and hop QBER), on the terminal of
:mod:`qkdnet.apps.chat_tty` (an input line that incoming messages leave intact, peer
text shown with its control characters escaped).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from qkdnet.apps.chat_tty import ChatTerminal, printable
from qkdnet.apps.stream import SecureStream
from qkdnet.errors import ErrorCode, QkdnetError, RemoteProtocolError

SERVICE = "chat"
MAX_LINE = 64 * 1024


@dataclass
class ChatEvent:
    """Something that happened in a chat: ``kind`` is "message", "receipt" or "closed"."""

    kind: str
    id: int = 0
    text: str = ""


@dataclass
class ChatSession:
    """Chat protocol engine on one stream (either end)."""

    stream: SecureStream
    sent: int = 0
    received: int = 0
    delivered: set[int] = field(default_factory=set)
    _buf: bytearray = field(default_factory=bytearray)
    _next_id: int = 1
    finished: bool = False
    _lock: trio.Lock = field(default_factory=trio.Lock)

    async def send(self, text: str) -> int:
        """Send one line; returns its id (a receipt with this id will follow)."""
        if self.finished:
            raise trio.ClosedResourceError("this chat was finished")
        mid = self._next_id
        self._next_id += 1
        await self._write({"t": "msg", "id": mid, "text": text})
        self.sent += 1
        return mid

    async def _write(self, obj: dict[str, Any]) -> None:
        async with self._lock:
            if self.finished:
                return
            await self.stream.send_all(json.dumps(obj, ensure_ascii=False).encode() + b"\n")

    async def finish(self) -> None:
        """End our direction (authenticated EOF); receiving continues."""
        async with self._lock:
            if not self.finished:
                self.finished = True
                await self.stream.send_eof()

    async def events(self) -> Any:
        """Async iterator of ChatEvents; acknowledges each message as it yields it."""
        while True:
            while b"\n" not in self._buf:
                if len(self._buf) > MAX_LINE:
                    raise RemoteProtocolError("chat line too long", ErrorCode.FRAME_TOO_LARGE)
                chunk = await self.stream.receive_some()
                if not chunk:
                    yield ChatEvent("closed")
                    return
                self._buf += chunk
            line, _, rest = bytes(self._buf).partition(b"\n")
            self._buf = bytearray(rest)
            try:
                obj = json.loads(line)
                kind, mid = obj["t"], int(obj["id"])
            except (ValueError, KeyError, TypeError):
                raise RemoteProtocolError("malformed chat line",
                                          ErrorCode.MALFORMED_FRAME) from None
            if kind == "msg":
                self.received += 1
                # Acknowledge before handing the line up, so a caller that ends the
                # chat on this event never leaves a receipt unsent.
                await self._write({"t": "ack", "id": mid})
                yield ChatEvent("message", mid, str(obj.get("text", "")))
            elif kind == "ack":
                self.delivered.add(mid)
                yield ChatEvent("receipt", mid)


async def chat_exchange(stream: SecureStream, lines: list[str],
                        on_event: Callable[[ChatEvent], Awaitable[None] | None] | None = None,
                        *, expect_incoming: int = 0) -> ChatSession:
    """Scripted chat (used by the demo and tests): send ``lines``, wait for their
    receipts and for ``expect_incoming`` messages from the peer, then send EOF."""
    session = ChatSession(stream)
    done = trio.Event()

    async def reader() -> None:
        async for ev in session.events():
            if on_event is not None:
                res = on_event(ev)
                if res is not None:
                    await res
            if (len(session.delivered) >= len(lines)
                    and session.received >= expect_incoming):
                done.set()
            if ev.kind == "closed":
                done.set()
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        for line in lines:
            await session.send(line)
        if not lines and expect_incoming == 0:
            done.set()
        await done.wait()
        await session.finish()
        # keep reading until the peer ends too (receipts for its last lines go out)
    return session


async def status_line(node: Any, peer: str) -> str:
    """The chat status line: key left on our hop to the hub and that hop's QBER."""
    try:
        fetch = getattr(node, "fetch_status", None)
        status = await fetch() if fetch is not None else node.status()
    except Exception:  # a status failure must not end the chat
        return "[status unavailable]"
    if not isinstance(status, dict):
        return "[status unavailable]"
    keys = status.get("key_bits") or {}
    tx = keys.get("to_hub") if isinstance(keys, dict) else None
    link = status.get("link") or {}
    qber = link.get("qber") if isinstance(link, dict) else None
    key_txt = f"{tx / 8192:.1f} KiB" if isinstance(tx, int | float) else "?"
    qber_txt = f"{100 * float(qber):.2f} %" if isinstance(qber, int | float) else "n/a"
    return f"[to {peer}] key left (hop to hub): {key_txt} | hop QBER: {qber_txt}"


async def run_chat_cli(node: Any, peer: str, *, service: str = SERVICE,
                       listen: bool = False, terminal: ChatTerminal | None = None) -> int:
    """Interactive chat: the user's lines are sent, peer lines and receipts shown.

    With ``listen=True`` waits for the peer to open the chat; otherwise opens it and
    falls back to waiting if the peer does not listen. Peer text is shown through
    :func:`printable`, so it cannot drive the terminal. Returns an exit code; Ctrl-C
    raises :class:`~qkdnet.errors.Interrupted`.
    """
    term = terminal or ChatTerminal()
    async with term:
        return await _chat(node, peer, service, listen, term)


async def _chat(node: Any, peer: str, service: str, listen: bool, term: ChatTerminal) -> int:
    from qkdnet.apps.api import open_secure_stream

    say = term.say
    shown = printable(peer)
    stream: SecureStream | None = None
    if not listen:
        try:
            stream = await open_secure_stream(peer, service, node=node)
        except QkdnetError as err:
            say(f"* {shown} is not listening ({printable(str(err))}); "
                f"waiting for {shown} to call")
    if stream is None:
        listener = node.listen(service)
        ready = getattr(listener, "ready", None)
        if ready is not None:
            await ready()
        say(f"* waiting for {shown} …")
        async for channel in listener:
            from qkdnet.apps.api import wrap_channel
            stream = wrap_channel(channel)
            break
        close = getattr(listener, "aclose", None)
        if close is not None:
            await close()
        else:
            listener.close()
    assert stream is not None
    session = ChatSession(stream)
    say(f"* connected to {shown}. Type lines; Ctrl-D to leave.")
    say(await status_line(node, shown))
    pending: dict[int, str] = {}

    async def reader(cancel: trio.CancelScope) -> None:
        async for ev in session.events():
            if ev.kind == "message":
                say(f"{shown}> {printable(ev.text)}")
            elif ev.kind == "receipt":
                text = pending.pop(ev.id, "")
                say(f"* delivered #{ev.id} ({printable(text[:20])})")
                say(await status_line(node, shown))
            elif ev.kind == "closed":
                say(f"* {shown} left the chat")
                cancel.cancel()
                return

    async def writer(cancel: trio.CancelScope) -> None:
        async for text in term.lines():
            if not text:
                continue
            mid = await session.send(text)
            pending[mid] = text
            say(f"* sent #{mid}")
        await session.finish()
        with trio.move_on_after(2):
            while pending:
                await trio.sleep(0.05)
        cancel.cancel()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader, nursery.cancel_scope)
            nursery.start_soon(writer, nursery.cancel_scope)
    finally:
        # A short goodbye, also when interrupted: the peer sees the chat end.
        with trio.move_on_after(0.5) as scope:
            scope.shield = True
            await stream.aclose()
    say(f"* chat ended: {session.sent} sent, {len(session.delivered)} delivered, "
        f"{session.received} received")
    return 0
