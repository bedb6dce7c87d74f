"""Conformance kit: play the peer against any sideband implementation, h2spec-style.

Each *check* is an async function that opens its own TCP connection to the target,
sends well-formed or deliberately broken frames and asserts on the answer (raise
:class:`CheckFailed` to fail). Checks live in a registry so the link, hub and apps
layers can add theirs from their own modules::

    from qkdnet.conformance import CheckContext, CheckFailed, conformance_check

    @conformance_check("link.block_announce", "BLOCK_ANNOUNCE is answered", group="link",
                       roles=("spoke",))
    async def _(ctx: CheckContext) -> None:
        peer = await ctx.open()                      # TCP + HELLO/HELLO_ACK done
        await peer.send(BlockAnnounce(...), session=7)
        ev = await peer.expect(LinkMsgType.BLOCK_ACCEPT)
        ...

and list the module in :data:`CHECK_MODULES` (imported if present) so
``qkdnet conformance`` finds it.

Keys: the kit needs the bootstrap secret the target shares with it. It imports the
secret into a key store (a temporary one unless ``keystore`` is given) as the
initiator and authenticates with :class:`qkdnet.auth.KeyStoreTagKeys`; the target
must have imported the same secret for the name the kit announces (default
``conformance``). One-time keys are never reused, so a temporary store lets a secret
serve one run; pass a durable ``keystore`` path to run again with the same secret.
"""

from __future__ import annotations

import importlib
import importlib.util
import secrets
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from scapy.packet import Packet

from qkdnet.auth import TAG_KEY_BITS, FrameAuthenticator, KeyStoreTagKeys, TagKeySource
from qkdnet.errors import ErrorCode, RemoteProtocolError
from qkdnet.keystore import KeyStore
from qkdnet.sideband import ConnState, FrameReceived, SidebandConnection
from qkdnet.wire import (
    PROTOCOL_VERSION,
    Close,
    Hello,
    MsgType,
    Ping,
    Role,
    pack_header,
)

#: Modules whose import registers more checks (other layers); missing ones are skipped.
CHECK_MODULES: tuple[str, ...] = (
    "qkdnet.link.conformance",
    "qkdnet.link.conformance_checkpoints",
    "qkdnet.hub.conformance",
    "qkdnet.apps.conformance",
)

ROLES = {"spoke": Role.SPOKE, "hub": Role.HUB, "app": Role.APP, "tester": Role.TESTER}


class CheckFailed(Exception):
    """A conformance check saw the target misbehave; the message says how."""


CheckFn = Callable[["CheckContext"], Awaitable[None]]


@dataclass(frozen=True)
class Check:
    """A registered check. ``roles``: the roles we may play for it (None: any)."""

    name: str
    description: str
    fn: CheckFn
    group: str = "sideband"
    roles: tuple[str, ...] | None = None


#: Every registered check, by name, in registration order.
CHECKS: dict[str, Check] = {}


def conformance_check(name: str, description: str, *, group: str = "sideband",
                      roles: Iterable[str] | None = None) -> Callable[[CheckFn], CheckFn]:
    """Decorator registering a check under a unique dotted ``name``."""

    def register(fn: CheckFn) -> CheckFn:
        if name in CHECKS:
            raise ValueError(f"conformance check {name!r} registered twice")
        CHECKS[name] = Check(name, description, fn, group,
                             tuple(roles) if roles is not None else None)
        return fn

    return register


def load_check_modules() -> None:
    """Import the other layers' check modules that exist."""
    for module in CHECK_MODULES:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if found:
            importlib.import_module(module)


@dataclass
class CheckResult:
    """Outcome of one check."""

    name: str
    group: str
    description: str
    passed: bool
    detail: str = ""
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {"name": self.name, "group": self.group, "description": self.description,
                "passed": self.passed, "detail": self.detail,
                "seconds": round(self.seconds, 4)}


class Peer:
    """Our end of one connection to the target: a stream and a sans-I/O connection."""

    def __init__(self, stream: trio.SocketStream, conn: SidebandConnection,
                 timeout: float) -> None:
        self.stream = stream
        self.conn = conn
        self.timeout = timeout
        self._events: list[FrameReceived] = []
        self.eof = False

    async def send(self, body: Packet, session: int = 0, flags: int = 0, *,
                   deferred: bool = False) -> bytes:
        """Send a correct frame (state-checked); returns its bytes."""
        data = self.conn.send(body, session=session, flags=flags, deferred=deferred)
        await self.stream.send_all(data)
        return data

    async def send_raw(self, data: bytes) -> None:
        """Send bytes as they are."""
        await self.stream.send_all(data)

    def frame(self, msg_type: int, body: bytes, **kw: Any) -> bytes:
        """A signed frame with free-form fields (see ``SidebandConnection.raw_frame``)."""
        return self.conn.raw_frame(msg_type, body, **kw)

    async def next_frame(self) -> FrameReceived | None:
        """The next frame from the target, or None at end of stream.

        Raises :class:`CheckFailed` on timeout or if the target's frame is bad.
        """
        while not self._events:
            if self.eof:
                return None
            data = None
            with trio.move_on_after(self.timeout):
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    data = b""
            if data is None:
                raise CheckFailed(f"no answer within {self.timeout:g} s")
            if not data:
                self.eof = True
            try:
                self._events.extend(self.conn.receive_data(data))
            except RemoteProtocolError as err:
                if not data and not self._events:
                    return None
                raise CheckFailed(f"target sent a bad frame: {err} "
                                  f"({err.code.name})") from None
        return self._events.pop(0)

    async def expect(self, msg_type: int) -> FrameReceived:
        """The next frame, which must be of ``msg_type``."""
        ev = await self.next_frame()
        if ev is None:
            raise CheckFailed(f"connection closed; expected {MsgType(msg_type).name}"
                              if msg_type in MsgType._value2member_map_ else
                              f"connection closed; expected type 0x{msg_type:02x}")
        if ev.type != msg_type:
            raise CheckFailed(f"expected type 0x{msg_type:02x}, got {_describe(ev)}")
        return ev

    async def expect_abort(self, code: ErrorCode, *, allow_silent: bool = False) -> None:
        """The target must send ERROR with ``code`` and then close, acting on nothing.

        ``allow_silent``: a plain close is fine too (the target cannot sign an ERROR
        before it knows who we are).
        """
        while True:
            ev = await self.next_frame()
            if ev is None:
                if allow_silent:
                    return
                raise CheckFailed(f"connection closed without ERROR {code.name}")
            if ev.type == MsgType.ERROR:
                got = int(ev.body.code)
                if got != code:
                    raise CheckFailed(f"ERROR code {_code_name(got)}, expected {code.name}")
                break
            raise CheckFailed(f"target acted on a bad frame: answered {_describe(ev)} "
                              f"instead of ERROR {code.name}")
        await self.expect_closed()

    async def expect_closed(self) -> None:
        """The target must close the connection (nothing more than EOF)."""
        ev = await self.next_frame()
        if ev is not None:
            raise CheckFailed(f"expected the connection to close, got {_describe(ev)}")

    async def handshake(self, role: int) -> FrameReceived:
        """HELLO → HELLO_ACK."""
        await self.send(Hello(node_name=self.conn.local_name.encode(), role=int(role),
                              versions=[PROTOCOL_VERSION]))
        return await self.expect(MsgType.HELLO_ACK)

    async def aclose(self) -> None:
        """Hang up."""
        await self.stream.aclose()


def _code_name(code: int) -> str:
    try:
        return ErrorCode(code).name
    except ValueError:
        return str(code)


def _describe(ev: FrameReceived) -> str:
    if ev.type == MsgType.ERROR:
        return f"ERROR {_code_name(int(ev.body.code))}"
    try:
        return MsgType(ev.type).name
    except ValueError:
        return f"type 0x{ev.type:02x}"


@dataclass
class CheckContext:
    """What a check gets: the target and a way to open authenticated connections."""

    host: str
    port: int
    role: str
    local_name: str
    keys: Callable[[], TagKeySource]
    timeout: float = 5.0
    #: Per-run scratch space shared by checks (e.g. recorded frames).
    scratch: dict[str, Any] = field(default_factory=dict)

    @property
    def role_code(self) -> int:
        """The role as announced in HELLO."""
        return int(ROLES[self.role])

    async def open_raw(self, keys: TagKeySource | None = None) -> Peer:
        """A TCP connection with a fresh sideband connection, no frames sent.

        ``keys`` overrides the tag key source (default: a new ``self.keys()``).
        """
        stream = await trio.open_tcp_stream(self.host, self.port)
        conn = SidebandConnection(self.local_name,
                                  FrameAuthenticator(keys if keys is not None else self.keys()))
        return Peer(stream, conn, self.timeout)

    async def open(self, keys: TagKeySource | None = None) -> Peer:
        """A connection with the handshake done."""
        peer = await self.open_raw(keys)
        await peer.handshake(self.role_code)
        return peer

    @asynccontextmanager
    async def connection(self, *, handshake: bool = True) -> AsyncIterator[Peer]:
        """``async with ctx.connection() as peer:`` closes the stream afterwards."""
        peer = await (self.open() if handshake else self.open_raw())
        try:
            yield peer
        finally:
            await peer.aclose()


async def run_checks(ctx: CheckContext, names: Iterable[str] | None = None, *,
                     groups: Iterable[str] | None = None) -> list[CheckResult]:
    """Run the selected checks (all that fit ``ctx.role`` by default), one at a time.

    ``names`` picks checks by name, ``groups`` by group ("sideband", "link", ...).
    """
    selected = [CHECKS[n] for n in names] if names is not None else list(CHECKS.values())
    if groups is not None:
        wanted = set(groups)
        selected = [c for c in selected if c.group in wanted]
    results = []
    for check in selected:
        if check.roles is not None and ctx.role not in check.roles:
            continue
        start = time.perf_counter()
        try:
            with trio.fail_after(ctx.timeout * 4):
                await check.fn(ctx)
            passed, detail = True, ""
        except CheckFailed as err:
            passed, detail = False, str(err)
        except trio.TooSlowError:
            passed, detail = False, "check timed out"
        except OSError as err:
            passed, detail = False, f"connection failed: {err}"
        except Exception as err:  # a check crashing is a failure, reported, not fatal
            passed, detail = False, f"{type(err).__name__}: {err}"
        results.append(CheckResult(check.name, check.group, check.description, passed,
                                   detail, time.perf_counter() - start))
    return results


def keys_from_secret(secret: bytes, keystore: str | Path | None = None,
                     label: str = "target") -> tuple[Callable[[], TagKeySource], KeyStore]:
    """Key source factory for the kit: a store holding ``secret`` as the initiator."""
    if keystore is None:
        keystore = Path(tempfile.mkdtemp(prefix="qkdnet-conformance-")) / "keys.db"
    # Lease one tag key at a time: a process's unused lease is burned when it exits, and
    # a bootstrap pool holds only ~250 tag keys, so a second run must find them unleased.
    store = KeyStore(keystore, lease_bits=TAG_KEY_BITS)
    store.import_bootstrap(label, secret, initiator=True)
    return (lambda: KeyStoreTagKeys(store, label)), store


# --- the sideband's own checks ------------------------------------------------------


def _ping() -> Ping:
    return Ping(nonce=secrets.randbits(64))


@conformance_check("handshake.hello", "HELLO is answered by HELLO_ACK with version 1")
async def _hello(ctx: CheckContext) -> None:
    async with ctx.connection(handshake=False) as peer:
        ack = await peer.handshake(ctx.role_code)
        if int(ack.body.chosen_version) != PROTOCOL_VERSION:
            raise CheckFailed(f"chose version {ack.body.chosen_version}")
        if not bytes(ack.body.node_name):
            raise CheckFailed("HELLO_ACK carries no node name")


@conformance_check("handshake.ping", "PING is answered by PONG with the same nonce")
async def _ping_pong(ctx: CheckContext) -> None:
    async with ctx.connection() as peer:
        ping = _ping()
        await peer.send(ping)
        pong = await peer.expect(MsgType.PONG)
        if int(pong.body.nonce) != int(ping.nonce):
            raise CheckFailed("PONG nonce differs from the PING's")


@conformance_check("handshake.first_frame_not_hello",
                   "a first frame other than HELLO is refused and the connection closed")
async def _first_not_hello(ctx: CheckContext) -> None:
    async with ctx.connection(handshake=False) as peer:
        await peer.send_raw(peer.frame(MsgType.PING, bytes(_ping())))
        await peer.expect_abort(ErrorCode.PROTOCOL_VIOLATION, allow_silent=True)


@conformance_check("version.header", "a header with version 2 → ERROR UNSUPPORTED_VERSION")
async def _version_header(ctx: CheckContext) -> None:
    async with ctx.connection() as peer:
        await peer.send_raw(peer.frame(MsgType.PING, bytes(_ping()), version=2))
        await peer.expect_abort(ErrorCode.UNSUPPORTED_VERSION)


@conformance_check("version.hello", "HELLO offering only version 9 → ERROR UNSUPPORTED_VERSION")
async def _version_hello(ctx: CheckContext) -> None:
    async with ctx.connection(handshake=False) as peer:
        hello = Hello(node_name=ctx.local_name.encode(), role=ctx.role_code, versions=[9])
        await peer.send_raw(peer.frame(MsgType.HELLO, bytes(hello)))
        await peer.expect_abort(ErrorCode.UNSUPPORTED_VERSION)


def _flip_tag(frame: bytes) -> bytes:
    return frame[:-1] + bytes([frame[-1] ^ 0x01])


@conformance_check("auth.bad_tag", "a PING with one tag bit flipped → ERROR "
                   "AUTHENTICATION_FAILED, no PONG")
async def _bad_tag(ctx: CheckContext) -> None:
    async with ctx.connection() as peer:
        await peer.send_raw(_flip_tag(peer.frame(MsgType.PING, bytes(_ping()))))
        await peer.expect_abort(ErrorCode.AUTHENTICATION_FAILED)


@conformance_check("auth.bad_tag_hello", "a HELLO with a bad tag gets no HELLO_ACK, and the "
                   "connection is closed")
async def _bad_tag_hello(ctx: CheckContext) -> None:
    async with ctx.connection(handshake=False) as peer:
        hello = Hello(node_name=ctx.local_name.encode(), role=ctx.role_code)
        await peer.send_raw(_flip_tag(peer.frame(MsgType.HELLO, bytes(hello))))
        await peer.expect_abort(ErrorCode.AUTHENTICATION_FAILED, allow_silent=True)


@conformance_check("auth.bad_body_bit", "a PING whose body was altered after signing → "
                   "ERROR AUTHENTICATION_FAILED")
async def _bad_body(ctx: CheckContext) -> None:
    async with ctx.connection() as peer:
        frame = bytearray(peer.frame(MsgType.PING, bytes(_ping())))
        frame[33] ^= 0x80
        await peer.send_raw(bytes(frame))
        await peer.expect_abort(ErrorCode.AUTHENTICATION_FAILED)


@conformance_check("auth.replay", "a frame sent twice: PONG, then ERROR REPLAY_OR_REORDER")
async def _replay(ctx: CheckContext) -> None:
    async with ctx.connection() as peer:
        frame = await peer.send(_ping())
        await peer.expect(MsgType.PONG)
        await peer.send_raw(frame)
        await peer.expect_abort(ErrorCode.REPLAY_OR_REORDER)


@conformance_check("auth.reorder", "a frame with a skipped sequence number → ERROR "
                   "REPLAY_OR_REORDER")
async def _reorder(ctx: CheckContext) -> None:
    async with ctx.connection() as peer:
        await peer.send_raw(peer.frame(MsgType.PING, bytes(_ping()), seq=2))
        await peer.expect_abort(ErrorCode.REPLAY_OR_REORDER)


@conformance_check("auth.replay_across_connections",
                   "a HELLO replayed on a new connection is refused (tag key reuse)")
async def _replay_cross(ctx: CheckContext) -> None:
    first = await ctx.open_raw()
    hello = await first.send(Hello(node_name=ctx.local_name.encode(), role=ctx.role_code))
    await first.expect(MsgType.HELLO_ACK)
    await first.aclose()
    async with ctx.connection(handshake=False) as peer:
        await peer.send_raw(hello)
        await peer.expect_abort(ErrorCode.REPLAY_OR_REORDER, allow_silent=True)


@conformance_check("auth.frame_from_other_connection",
                   "a frame withheld on one connection and injected at the same seq of the "
                   "next → ERROR AUTHENTICATION_FAILED (frames are bound to their connection)")
async def _cross_connection_frame(ctx: CheckContext) -> None:
    first = await ctx.open()
    saved = first.conn.send(_ping())  # seq 1, signed for connection 1, never delivered
    await first.aclose()
    async with ctx.connection() as peer:
        await peer.send_raw(saved)     # in place of our real seq-1 frame
        await peer.expect_abort(ErrorCode.AUTHENTICATION_FAILED)


class _PinnedTagKeys:
    """A :class:`TagKeySource` that hands out one given tag key first, then ``inner``'s.

    For :func:`_forged_keeps_key` only: the pinned key has never signed anything (the
    forged frame carried a random tag), so using it for one real tag is its only use.
    """

    def __init__(self, inner: TagKeySource, pinned: tuple[int, int, bytes]) -> None:
        self._inner = inner
        self._pinned: tuple[int, int, bytes] | None = pinned

    def __repr__(self) -> str:
        return f"_PinnedTagKeys({self._inner!r})"

    @property
    def hash_key_tx(self) -> bytes:
        return self._inner.hash_key_tx

    @property
    def hash_key_rx(self) -> bytes:
        return self._inner.hash_key_rx

    def reserve_tag_key(self) -> tuple[int, int, bytes]:
        if self._pinned is not None:
            pinned, self._pinned = self._pinned, None
            return pinned
        return self._inner.reserve_tag_key()

    def peek_tag_key(self, block_id: int, offset: int) -> bytes:
        return self._inner.peek_tag_key(block_id, offset)

    def take_tag_key(self, block_id: int, offset: int) -> bytes:
        return self._inner.take_tag_key(block_id, offset)


@conformance_check("auth.forged_frame_keeps_key",
                   "a frame with a wrong tag is refused without consuming the tag key it "
                   "names: a genuine HELLO with that key is then accepted")
async def _forged_keeps_key(ctx: CheckContext) -> None:
    keys = ctx.keys()
    async with ctx.connection() as peer:
        key = keys.reserve_tag_key()   # ours, unused: the forged frame names it
        body = bytes(_ping())
        forged = (pack_header(len(body), MsgType.PING, seq=1, akey_block=key[0],
                              akey_offset=key[1]) + body + secrets.token_bytes(16))
        await peer.send_raw(forged)
        await peer.expect_abort(ErrorCode.AUTHENTICATION_FAILED)
    peer = await ctx.open_raw(_PinnedTagKeys(keys, key))
    try:
        await peer.send(Hello(node_name=ctx.local_name.encode(), role=ctx.role_code,
                              versions=[PROTOCOL_VERSION]))
        ev = await peer.next_frame()
    finally:
        await peer.aclose()
    if ev is None or ev.type != MsgType.HELLO_ACK:
        raise CheckFailed("a HELLO using the key named by an earlier forged frame was "
                          "refused: the target burned the key of a frame that failed its "
                          f"tag ({'closed' if ev is None else _describe(ev)})")


@conformance_check("length.oversized", "length 0x7ffffff0 → ERROR FRAME_TOO_LARGE at once, "
                   "without waiting for the body")
async def _oversized(ctx: CheckContext) -> None:
    async with ctx.connection() as peer:
        await peer.send_raw(pack_header(0x7FFFFFF0 - 44, MsgType.PING, seq=1))
        await peer.expect_abort(ErrorCode.FRAME_TOO_LARGE)


@conformance_check("length.garbage", "length 3 (shorter than a header) → ERROR MALFORMED_FRAME")
async def _garbage_length(ctx: CheckContext) -> None:
    async with ctx.connection() as peer:
        await peer.send_raw(b"\x00\x00\x00\x03" + b"\x01" * 40)
        await peer.expect_abort(ErrorCode.MALFORMED_FRAME)


@conformance_check("length.truncated", "half a frame then EOF → the target closes, "
                   "acting on nothing")
async def _truncated(ctx: CheckContext) -> None:
    async with ctx.connection() as peer:
        frame = peer.frame(MsgType.PING, bytes(_ping()))
        await peer.send_raw(frame[:len(frame) // 2])
        await peer.stream.send_eof()
        await peer.expect_abort(ErrorCode.MALFORMED_FRAME, allow_silent=True)


@conformance_check("segments.split", "a frame sent one byte per segment is reassembled")
async def _split(ctx: CheckContext) -> None:
    async with ctx.connection() as peer:
        ping = _ping()
        frame = peer.conn.send(ping)
        for i in range(len(frame)):
            await peer.send_raw(frame[i:i + 1])
            if i % 8 == 0:
                await trio.sleep(0.001)  # let the bytes leave as separate segments
        pong = await peer.expect(MsgType.PONG)
        if int(pong.body.nonce) != int(ping.nonce):
            raise CheckFailed("PONG nonce differs")


@conformance_check("segments.coalesced", "three frames in one segment get three PONGs in order")
async def _coalesced(ctx: CheckContext) -> None:
    async with ctx.connection() as peer:
        pings = [_ping() for _ in range(3)]
        await peer.send_raw(b"".join(peer.conn.send(p) for p in pings))
        for ping in pings:
            pong = await peer.expect(MsgType.PONG)
            if int(pong.body.nonce) != int(ping.nonce):
                raise CheckFailed("PONGs out of order")


@conformance_check("types.unknown", "an authenticated frame of unassigned type 0x0f → ERROR "
                   "UNKNOWN_MESSAGE_TYPE")
async def _unknown_type(ctx: CheckContext) -> None:
    async with ctx.connection() as peer:
        await peer.send_raw(peer.frame(0x0F, b"\x00\x01\x02\x03"))
        await peer.expect_abort(ErrorCode.UNKNOWN_MESSAGE_TYPE)


@conformance_check("types.reserved", "reserved type 0x80 → ERROR UNKNOWN_MESSAGE_TYPE")
async def _reserved_type(ctx: CheckContext) -> None:
    async with ctx.connection() as peer:
        await peer.send_raw(peer.frame(0x80, b""))
        await peer.expect_abort(ErrorCode.UNKNOWN_MESSAGE_TYPE)


@conformance_check("frame.malformed_body", "a PING with a 3-byte body → ERROR MALFORMED_FRAME")
async def _malformed_body(ctx: CheckContext) -> None:
    async with ctx.connection() as peer:
        await peer.send_raw(peer.frame(MsgType.PING, b"\x01\x02\x03"))
        await peer.expect_abort(ErrorCode.MALFORMED_FRAME)


@conformance_check("frame.reserved_byte", "a header with reserved byte 1 → ERROR "
                   "MALFORMED_FRAME")
async def _reserved_byte(ctx: CheckContext) -> None:
    async with ctx.connection() as peer:
        await peer.send_raw(peer.frame(MsgType.PING, bytes(_ping()), reserved=1))
        await peer.expect_abort(ErrorCode.MALFORMED_FRAME)


@conformance_check("state.hello_twice", "a second HELLO on an open connection → ERROR "
                   "PROTOCOL_VIOLATION")
async def _hello_twice(ctx: CheckContext) -> None:
    async with ctx.connection() as peer:
        hello = Hello(node_name=ctx.local_name.encode(), role=ctx.role_code)
        await peer.send_raw(peer.frame(MsgType.HELLO, bytes(hello)))
        await peer.expect_abort(ErrorCode.PROTOCOL_VIOLATION)


@conformance_check("close.graceful", "CLOSE is answered by CLOSE, then the target hangs up")
async def _graceful_close(ctx: CheckContext) -> None:
    async with ctx.connection() as peer:
        await peer.send(Close())
        await peer.expect(MsgType.CLOSE)
        if peer.conn.state is not ConnState.CLOSED:
            raise CheckFailed(f"state {peer.conn.state.name} after CLOSE exchange")
        await peer.expect_closed()
