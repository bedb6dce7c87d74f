"""The sans-I/O core of the sideband: framing, authentication and connection state.

Theory of operation
-------------------
:class:`SidebandConnection` is a pure state machine in the style of h11: feed it bytes
with :meth:`~SidebandConnection.receive_data` and get :class:`FrameReceived` events;
ask it for bytes with :meth:`~SidebandConnection.send`. It never touches a socket or
a clock. A received frame goes through these gates, in order, and only a frame that
passes all of them becomes an event (nothing a bad frame says is acted on):

1. the 4-byte length is read first and checked against ``max_frame_size`` *before*
   anything is buffered (``FRAME_TOO_LARGE``) and against the minimum (``MALFORMED``);
2. version (``UNSUPPORTED_VERSION``); 3. ``seq`` must be the next expected number
   (``REPLAY_OR_REORDER``); 4. the Wegman–Carter tag (``AUTHENTICATION_FAILED``; a
   reused tag key is ``REPLAY_OR_REORDER``); 5. reserved bits, a known type and a
   body that parses canonically (``MALFORMED_FRAME``, ``UNKNOWN_MESSAGE_TYPE``);
6. the transition table :data:`TRANSITIONS` (``PROTOCOL_VIOLATION``).

Any failure moves the machine to ``ERROR`` and raises :class:`RemoteProtocolError`
carrying the code; :meth:`~SidebandConnection.error_frame` builds the ERROR frame to
send before hanging up. Frames that arrived complete and valid *before* the bad one
in the same chunk are still returned; the error is raised by the next call.

A responder does not know who is calling until HELLO names the peer, and it needs the
peer's keys to check that very frame: so ``auth`` may be a resolver
``peer_name -> FrameAuthenticator | None``. The name in an unauthenticated HELLO only
selects which keys to check it with; if the tag fails nothing else is used, and no
key is spent (the authenticator peeks the tag key and takes it only on success).

Connection binding (spec §6.1): each end draws a fresh 16-byte nonce per connection
and sends it in HELLO / HELLO_ACK. Every frame but HELLO is authenticated together
with a pseudo-header holding both nonces and the direction, so a frame signed for
one connection never verifies on another — even at the same ``seq`` with a tag key
that was never taken (a frame dropped on a cut connection). The initiator learns the
responder's nonce from the last 16 bytes of HELLO_ACK *before* checking its tag
(like the responder reads the name in HELLO); an ERROR the responder sends before
HELLO_ACK uses zeros in its place.

The trio adapter that drives it over a stream is :mod:`qkdnet.sideband`.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from scapy.fields import FieldLenField
from scapy.packet import NoPayload, Packet

from qkdnet.auth import (
    DIR_INITIATOR_TO_RESPONDER,
    DIR_RESPONDER_TO_INITIATOR,
    Backlog,
    FrameAuthenticator,
    connection_binding,
)
from qkdnet.errors import (
    ErrorCode,
    KeyExhausted,
    LocalProtocolError,
    RemoteProtocolError,
)
from qkdnet.wire import (
    DEFERRABLE_TYPES,
    HEADER_LEN,
    MIN_LENGTH,
    NONCE_LEN,
    PROTOCOL_VERSION,
    TAG_LEN,
    Error,
    FrameFlags,
    HeaderFields,
    MsgType,
    QkdHeader,
    body_class_for,
    pack_header,
    unpack_header,
)

#: Default upper bound on a whole frame (length field + everything after it).
DEFAULT_MAX_FRAME_SIZE = 1 << 20
#: Longest node name accepted in HELLO / HELLO_ACK, in UTF-8 bytes.
MAX_NAME_BYTES = 64
#: Most unauthenticated (deferred) bytes / frames a peer may send before a tagged
#: frame (spec §6.4): bounds what is acted on provisionally, and the forgery bound
#: of the tag that covers them (8·2^24/2^106 = 2^-79 at 256 MiB).
MAX_DEFERRED_BYTES = 1 << 28
MAX_DEFERRED_FRAMES = 1 << 20


class ConnState(enum.Enum):
    """States of a sideband connection (spec §4)."""

    IDLE = "IDLE"
    HELLO_SENT = "HELLO_SENT"
    HELLO_RECEIVED = "HELLO_RECEIVED"
    OPEN = "OPEN"
    CLOSE_SENT = "CLOSE_SENT"
    CLOSE_RECEIVED = "CLOSE_RECEIVED"
    CLOSED = "CLOSED"
    ERROR = "ERROR"


class Direction(enum.Enum):
    """Whether a frame is being sent or was received."""

    SEND = "send"
    RECV = "recv"


#: Message kinds in the transition table; every non-common type is ``LAYER``.
KINDS = ("HELLO", "HELLO_ACK", "ERROR", "CLOSE", "PING", "PONG", "LAYER")


def kind_of(msg_type: int) -> str:
    """The transition-table kind of a message type."""
    try:
        return MsgType(msg_type).name
    except ValueError:
        return "LAYER"


def _build_transitions() -> dict[tuple[ConnState, Direction, str], ConnState]:
    S, D = ConnState, Direction
    t: dict[tuple[ConnState, Direction, str], ConnState] = {
        (S.IDLE, D.SEND, "HELLO"): S.HELLO_SENT,
        (S.IDLE, D.RECV, "HELLO"): S.HELLO_RECEIVED,
        (S.HELLO_SENT, D.RECV, "HELLO_ACK"): S.OPEN,
        (S.HELLO_RECEIVED, D.SEND, "HELLO_ACK"): S.OPEN,
        (S.OPEN, D.SEND, "CLOSE"): S.CLOSE_SENT,
        (S.OPEN, D.RECV, "CLOSE"): S.CLOSE_RECEIVED,
        (S.CLOSE_SENT, D.RECV, "CLOSE"): S.CLOSED,
        (S.CLOSE_RECEIVED, D.SEND, "CLOSE"): S.CLOSED,
    }
    for kind in ("PING", "PONG", "LAYER"):
        t[(S.OPEN, D.SEND, kind)] = S.OPEN
        t[(S.OPEN, D.RECV, kind)] = S.OPEN
        # Frames the peer sent before it saw our CLOSE are still delivered.
        t[(S.CLOSE_SENT, D.RECV, kind)] = S.CLOSE_SENT
    for state in (S.IDLE, S.HELLO_SENT, S.HELLO_RECEIVED, S.OPEN, S.CLOSE_SENT,
                  S.CLOSE_RECEIVED):
        t[(state, D.SEND, "ERROR")] = S.ERROR
        t[(state, D.RECV, "ERROR")] = S.ERROR
    return t


#: The whole state machine: ``(state, direction, kind) -> next state``. Anything not
#: listed is a protocol violation (received) or a :class:`LocalProtocolError` (sent).
#: spec/protocol.md §4 prints this table; a test keeps the two identical.
TRANSITIONS: dict[tuple[ConnState, Direction, str], ConnState] = _build_transitions()


@dataclass(frozen=True)
class FrameReceived:
    """One well-formed frame. ``body`` is the scapy body packet.

    ``deferred`` frames (spec §6.4) are *not yet* authenticated: the next frame of the
    peer that is not deferred authenticates them. A layer may act on a deferred frame
    only in ways it can undo or that disclose nothing it does not count (the link
    exchange); everything else is authenticated before it is delivered.
    """

    type: int
    session: int
    body: Packet
    seq: int
    flags: int = 0

    @property
    def deferred(self) -> bool:
        """True for a frame sent under deferred authentication (not yet verified)."""
        return bool(self.flags & FrameFlags.DEFERRED)

    def __repr__(self) -> str:  # bodies of other layers may hold key-derived data
        return (f"FrameReceived(type=0x{self.type:02x}, session={self.session}, "
                f"seq={self.seq}, flags={self.flags})")


AuthResolver = Callable[[str], "FrameAuthenticator | None"]


def type_of_body(body: Packet) -> int:
    """The message type a body class is bound to."""
    for fval, cls in QkdHeader.payload_guess:
        if cls is type(body) and set(fval) == {"type"}:
            return int(fval["type"])
    raise LocalProtocolError(f"{type(body).__name__} is not bound to a sideband type")


class SidebandConnection:
    """Sans-I/O sideband framing, authentication and state for one TCP connection.

    ``auth`` is the :class:`FrameAuthenticator` for the peer, or (responder side) a
    resolver called with the name in the first HELLO that returns one or ``None``
    for an unknown peer. ``nonce`` is this end's 16-byte connection nonce (default:
    fresh from :mod:`secrets`; pass one only for reproducible tests and vectors).
    """

    def __init__(self, local_name: str,
                 auth: FrameAuthenticator | AuthResolver,
                 max_frame_size: int = DEFAULT_MAX_FRAME_SIZE, *,
                 nonce: bytes | None = None) -> None:
        if max_frame_size < 4 + MIN_LENGTH:
            raise LocalProtocolError("max_frame_size is smaller than an empty frame")
        self.local_name = local_name
        self.max_frame_size = max_frame_size
        self.auth: FrameAuthenticator | None
        self._resolver: AuthResolver | None
        if isinstance(auth, FrameAuthenticator):
            self.auth, self._resolver = auth, None
        else:
            self.auth, self._resolver = None, auth
        if nonce is not None and len(nonce) != NONCE_LEN:
            raise LocalProtocolError(f"connection nonce must be {NONCE_LEN} bytes")
        self.local_nonce = secrets.token_bytes(NONCE_LEN) if nonce is None else bytes(nonce)
        self.peer_nonce: bytes | None = None   # from the peer's authentic HELLO/HELLO_ACK
        # Responder: a resolver connection, or one that accepted a HELLO.
        self._responder = self._resolver is not None
        self._ack_sent = False
        self.state = ConnState.IDLE
        self.peer_name: str | None = None
        self.peer_role: int | None = None
        self.peer_capabilities = 0
        self.error: RemoteProtocolError | None = None  # why we entered ERROR
        self.peer_error: tuple[int, str] | None = None  # (code, reason) of a peer ERROR
        self._buf = bytearray()
        self._tx_seq = 0
        self._rx_seq = 0
        # Deferred frames of each direction since its last tagged frame (spec §6.4).
        self._tx_backlog: Backlog | None = None
        self._rx_backlog: Backlog | None = None
        self.frames_deferred_tx = 0
        self.frames_deferred_rx = 0
        self._pending: RemoteProtocolError | None = None
        # Statistics (no key material).
        self.frames_sent = 0
        self.frames_received = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.max_buffered = 0

    def __repr__(self) -> str:
        return (f"SidebandConnection({self.local_name!r}, peer={self.peer_name!r}, "
                f"state={self.state.name}, tx_seq={self._tx_seq}, rx_seq={self._rx_seq})")

    # --- sending ---------------------------------------------------------------------

    def send(self, body: Packet, session: int = 0, flags: int = 0, *,
             msg_type: int | None = None, deferred: bool = False) -> bytes:
        """The bytes of one authenticated frame carrying ``body``; advances the state.

        ``msg_type`` is needed only when the body class is bound to several types.
        ``deferred`` sends it without a tag of its own: the next tagged frame covers
        it (spec §6.4; only types in ``qkdnet.wire.DEFERRABLE_TYPES``).
        """
        if msg_type is None:
            msg_type = type_of_body(body)
        key = (self.state, Direction.SEND, kind_of(msg_type))
        if key not in TRANSITIONS:
            raise LocalProtocolError(
                f"cannot send {kind_of(msg_type)} (0x{msg_type:02x}) in state {self.state.name}")
        if msg_type in (MsgType.HELLO, MsgType.HELLO_ACK) and any(
                f.name == "nonce" for f in body.fields_desc):
            body = body.copy()
            body.nonce = self.local_nonce   # the caller need not know about nonces
        data = self.raw_frame(msg_type, bytes(body), session=session, flags=flags,
                              deferred=deferred)
        self.state = TRANSITIONS[key]
        return data

    def raw_frame(self, msg_type: int, body: bytes, *, session: int = 0, flags: int = 0,
                  seq: int | None = None, version: int = PROTOCOL_VERSION,
                  reserved: int = 0, deferred: bool = False) -> bytes:
        """Build and sign a frame without state checks (conformance testing, ERROR).

        With ``seq=None`` the next sequence number is used and the counter advances.
        ``deferred`` builds a frame without a tag of its own (spec §6.4): it joins
        this direction's backlog, which the next tagged frame's tag covers.
        """
        if self.auth is None:
            raise LocalProtocolError("no authentication key for this peer yet")
        if 4 + len(body) + MIN_LENGTH > self.max_frame_size:
            raise LocalProtocolError(
                f"frame of {len(body) + 4 + MIN_LENGTH} bytes exceeds max_frame_size "
                f"{self.max_frame_size}")
        use_seq = self._tx_seq if seq is None else seq
        if ((msg_type == MsgType.HELLO and self.state is ConnState.IDLE)
                or (msg_type == MsgType.HELLO_ACK and self.state is ConnState.HELLO_RECEIVED)) \
                and len(body) >= NONCE_LEN and not self._ack_sent:
            # Our nonce is the one our handshake frame carries on the wire (a hand-built
            # HELLO in a conformance test may carry another than ``local_nonce``).
            self.local_nonce = bytes(body[-NONCE_LEN:])
        binding = self.binding(Direction.SEND, msg_type)
        if deferred:
            if msg_type not in DEFERRABLE_TYPES:
                raise LocalProtocolError(f"type 0x{msg_type:02x} cannot be sent deferred")
            if self.peer_nonce is None:
                raise LocalProtocolError("no deferred frames before the handshake")
            header = pack_header(len(body), msg_type, session=session, seq=use_seq,
                                 flags=flags | FrameFlags.DEFERRED, version=version,
                                 reserved=reserved)
            message = header + body
            if self._tx_backlog is None:
                self._tx_backlog = Backlog(self.auth.keys.hash_key_tx, binding)
            self._tx_backlog.add(message)
            data = message + bytes(TAG_LEN)
            self.frames_deferred_tx += 1
        else:
            key = self.auth.reserve()
            header = pack_header(len(body), msg_type, session=session, seq=use_seq,
                                 flags=flags & ~FrameFlags.DEFERRED,
                                 akey_block=key.block_id, akey_offset=key.offset,
                                 version=version, reserved=reserved)
            message = header + body
            backlog, self._tx_backlog = self._tx_backlog, None
            data = message + self.auth.sign(key, message, binding, backlog)
        if msg_type == MsgType.HELLO_ACK and self._responder:
            self._ack_sent = True
        if seq is None:
            self._tx_seq += 1
        self.frames_sent += 1
        self.bytes_sent += len(data)
        return data

    def error_frame(self, err: RemoteProtocolError | ErrorCode, reason: str = "") -> bytes:
        """The ERROR frame to send before closing; ``b""`` (just hang up) if it cannot
        be signed or the peer has not yet sent a single authentic frame.

        Moves the machine to ERROR. ``reason`` defaults to the error's message, which
        by the rules of :mod:`qkdnet.errors` holds no key material.
        """
        if isinstance(err, RemoteProtocolError):
            code, text = err.code, reason or str(err)
        else:
            code, text = err, reason
        self.state = ConnState.ERROR
        if self.auth is None or self._rx_seq == 0:
            # Until the peer has sent one authentic frame we spend no key on it: a
            # stranger forging HELLOs must not drain our auth-tx pool with ERRORs.
            return b""
        body = Error(code=int(code), reason=text.encode("utf-8", "replace")[:200])
        try:
            return self.raw_frame(MsgType.ERROR, bytes(body))
        except KeyExhausted:
            return b""

    # --- receiving -------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a whole frame."""
        return len(self._buf)

    @property
    def receive_window(self) -> int:
        """How many bytes the adapter may read next without the buffer ever exceeding
        ``max_frame_size`` (at least 1)."""
        return max(1, self.max_frame_size - len(self._buf))

    def raise_pending(self) -> None:
        """Raise the error found after the frames the last call returned, if any."""
        if self._pending is not None:
            err, self._pending = self._pending, None
            raise err

    def receive_data(self, data: bytes) -> list[FrameReceived]:
        """Feed received bytes; return the frames completed by them.

        ``b""`` means end of stream: a partial frame in the buffer is then a
        truncated frame (``MALFORMED_FRAME``).
        """
        self.raise_pending()
        if self.state is ConnState.ERROR:
            return []
        if self.state is ConnState.CLOSED:
            if data:
                self._fail("data after CLOSE", ErrorCode.PROTOCOL_VIOLATION)
            return []
        events: list[FrameReceived] = []
        if not data:
            if self._buf:
                self._fail(f"stream ended inside a frame ({len(self._buf)} bytes buffered)",
                           ErrorCode.MALFORMED_FRAME)
            return events
        self.bytes_received += len(data)
        self._buf += data
        self.max_buffered = max(self.max_buffered, len(self._buf))
        try:
            while len(self._buf) >= 4:
                total = 4 + int.from_bytes(self._buf[:4], "big")
                if total > self.max_frame_size:
                    self._fail(f"frame of {total} bytes exceeds the limit of "
                               f"{self.max_frame_size}", ErrorCode.FRAME_TOO_LARGE)
                if total < 4 + MIN_LENGTH:
                    self._fail(f"length field {total - 4} below the minimum {MIN_LENGTH}",
                               ErrorCode.MALFORMED_FRAME)
                if len(self._buf) < total:
                    break
                frame = bytes(self._buf[:total])
                del self._buf[:total]
                events.append(self._process(frame))
        except RemoteProtocolError as err:
            self._buf.clear()
            if events:
                self._pending = err
                return events
            raise
        return events

    def _fail(self, message: str, code: ErrorCode) -> None:
        err = RemoteProtocolError(message, code)
        self.state = ConnState.ERROR
        self.error = err
        raise err

    def _process(self, frame: bytes) -> FrameReceived:
        hdr = unpack_header(frame)
        if hdr.version != PROTOCOL_VERSION:
            self._fail(f"unsupported protocol version {hdr.version}",
                       ErrorCode.UNSUPPORTED_VERSION)
        if hdr.seq != self._rx_seq:
            self._fail(f"sequence number {hdr.seq}, expected {self._rx_seq}",
                       ErrorCode.REPLAY_OR_REORDER)
        body_bytes = frame[HEADER_LEN:-TAG_LEN]
        if self.auth is None:
            self._resolve_peer(hdr.type, body_bytes)
        assert self.auth is not None
        ack_nonce: bytes | None = None
        if (hdr.type == MsgType.HELLO_ACK and not self._responder
                and self.peer_nonce is None):
            # The responder's nonce is needed to check the very frame that carries it;
            # it is the body's last 16 bytes (used for nothing else unless the tag holds).
            if len(body_bytes) < NONCE_LEN:
                self._fail("HELLO_ACK too short to hold a nonce", ErrorCode.MALFORMED_FRAME)
            ack_nonce = body_bytes[-NONCE_LEN:]
        binding = self.binding(Direction.RECV, hdr.type, responder_nonce=ack_nonce)
        if hdr.flags & FrameFlags.DEFERRED:
            self._defer(hdr, frame, binding)
        else:
            backlog, self._rx_backlog = self._rx_backlog, None
            try:
                self.auth.verify(hdr.akey_block, hdr.akey_offset, frame[:-TAG_LEN],
                                 frame[-TAG_LEN:], binding, backlog)
            except RemoteProtocolError as err:
                self._fail(str(err), err.code)
        self._rx_seq += 1
        if self.peer_nonce is None:
            # Authentic from here on: learn the peer's nonce (even if the body turns
            # out malformed, so our ERROR is bound to this connection).
            if hdr.type == MsgType.HELLO and self.state is ConnState.IDLE:
                self._responder = True
                if len(body_bytes) >= NONCE_LEN:
                    self.peer_nonce = body_bytes[-NONCE_LEN:]
            elif ack_nonce is not None and self.state is ConnState.HELLO_SENT:
                self.peer_nonce = ack_nonce
        if hdr.reserved != 0:
            self._fail("reserved header byte is not zero", ErrorCode.MALFORMED_FRAME)
        body = self._parse_body(hdr.type, body_bytes)
        key = (self.state, Direction.RECV, kind_of(hdr.type))
        if key not in TRANSITIONS:
            self._fail(f"{kind_of(hdr.type)} (0x{hdr.type:02x}) not allowed in state "
                       f"{self.state.name}", ErrorCode.PROTOCOL_VIOLATION)
        self._check_semantics(hdr.type, body)
        self.state = TRANSITIONS[key]
        self.frames_received += 1
        return FrameReceived(hdr.type, hdr.session, body, hdr.seq, hdr.flags)

    def _defer(self, hdr: HeaderFields, frame: bytes, binding: bytes) -> None:
        """Admit a deferred frame into the receive backlog (spec §6.4), or fail."""
        if self.state not in (ConnState.OPEN, ConnState.CLOSE_SENT) or self.peer_nonce is None:
            self._fail("deferred frame before the handshake completed",
                       ErrorCode.PROTOCOL_VIOLATION)
        if hdr.type not in DEFERRABLE_TYPES:
            self._fail(f"message type 0x{hdr.type:02x} may not be deferred",
                       ErrorCode.PROTOCOL_VIOLATION)
        if hdr.akey_block or hdr.akey_offset or any(frame[-TAG_LEN:]):
            self._fail("deferred frame names a tag key or carries a tag",
                       ErrorCode.MALFORMED_FRAME)
        assert self.auth is not None
        if self._rx_backlog is None:
            self._rx_backlog = Backlog(self.auth.keys.hash_key_rx, binding)
        backlog = self._rx_backlog
        if (backlog.frames >= MAX_DEFERRED_FRAMES
                or backlog.bytes + len(frame) > MAX_DEFERRED_BYTES):
            self._fail("too many deferred frames without a tagged frame",
                       ErrorCode.PROTOCOL_VIOLATION)
        backlog.add(frame[:-TAG_LEN])
        self.frames_deferred_rx += 1

    @property
    def deferred_backlog(self) -> tuple[int, int]:
        """(frames, bytes) received deferred and not yet covered by a tagged frame."""
        b = self._rx_backlog
        return (b.frames, b.bytes) if b is not None else (0, 0)

    def binding(self, direction: Direction, msg_type: int, *,
                responder_nonce: bytes | None = None) -> bytes:
        """The pseudo-header a frame of ``msg_type`` sent/received now authenticates
        (spec §6.1): empty for HELLO, else both nonces and the direction.

        ``responder_nonce`` supplies the responder's nonce when the frame carries it
        (HELLO_ACK received by the initiator).
        """
        if msg_type == MsgType.HELLO:
            return b""
        sending = direction is Direction.SEND
        if self._responder:
            i_nonce = self.peer_nonce
            r_nonce = (self.local_nonce
                       if self._ack_sent or (sending and msg_type == MsgType.HELLO_ACK)
                       else None)
            code = DIR_RESPONDER_TO_INITIATOR if sending else DIR_INITIATOR_TO_RESPONDER
        else:
            i_nonce = self.local_nonce
            r_nonce = self.peer_nonce if self.peer_nonce is not None else responder_nonce
            code = DIR_INITIATOR_TO_RESPONDER if sending else DIR_RESPONDER_TO_INITIATOR
        return connection_binding(code, i_nonce or bytes(NONCE_LEN), r_nonce)

    def _resolve_peer(self, msg_type: int, body_bytes: bytes) -> None:
        if msg_type != MsgType.HELLO or self._resolver is None:
            self._fail("first frame must be HELLO", ErrorCode.PROTOCOL_VIOLATION)
        hello = self._parse_body(MsgType.HELLO, body_bytes)
        name = self._check_name(hello)
        assert self._resolver is not None
        auth = self._resolver(name)
        if auth is None:
            self._fail(f"unknown peer {name!r}", ErrorCode.UNKNOWN_PEER)
        self.auth = auth

    def _parse_body(self, msg_type: int, body_bytes: bytes) -> Packet:
        if msg_type == 0 or msg_type >= 0x80:
            self._fail(f"reserved message type 0x{msg_type:02x}",
                       ErrorCode.UNKNOWN_MESSAGE_TYPE)
        cls = body_class_for(msg_type)
        if cls is None:
            self._fail(f"unknown message type 0x{msg_type:02x}",
                       ErrorCode.UNKNOWN_MESSAGE_TYPE)
        assert cls is not None
        try:
            body = cls(body_bytes)
            # Canonical: nothing left over, re-encodes to the same bytes, and every
            # length/count field agrees with what it measures (scapy silently takes a
            # short string when a length field points past the end of the body).
            canonical = (isinstance(body.payload, NoPayload) and bytes(body) == body_bytes
                         and all(f.i2m(body, None) == body.getfieldval(f.name)
                                 for f in cls.fields_desc if isinstance(f, FieldLenField)))
        except Exception:  # scapy raises many kinds on short or odd input
            canonical = False
        if not canonical:
            self._fail(f"malformed {cls.__name__} body ({len(body_bytes)} bytes)",
                       ErrorCode.MALFORMED_FRAME)
        return body

    def _check_name(self, body: Packet) -> str:
        raw = bytes(body.node_name)
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            name = ""
        if not name or len(raw) > MAX_NAME_BYTES or not name.isprintable():
            self._fail("node name must be 1-64 bytes of printable UTF-8",
                       ErrorCode.MALFORMED_FRAME)
        return name

    def _check_semantics(self, msg_type: int, body: Packet) -> None:
        if msg_type == MsgType.HELLO:
            name = self._check_name(body)
            if PROTOCOL_VERSION not in list(body.versions):
                self._fail("no common protocol version", ErrorCode.UNSUPPORTED_VERSION)
            if self.peer_name is not None and name != self.peer_name:
                self._fail("HELLO name differs from the authenticated peer",
                           ErrorCode.UNKNOWN_PEER)
            if bytes(body.nonce) != self.peer_nonce:  # cannot happen: read from these bytes
                self._fail("HELLO nonce inconsistent", ErrorCode.MALFORMED_FRAME)
            self.peer_name, self.peer_role = name, int(body.role)
            self.peer_capabilities = int(body.capabilities)
        elif msg_type == MsgType.HELLO_ACK:
            name = self._check_name(body)
            if int(body.chosen_version) != PROTOCOL_VERSION:
                self._fail("peer chose a version we did not offer",
                           ErrorCode.UNSUPPORTED_VERSION)
            self.peer_name, self.peer_role = name, int(body.role)
            self.peer_capabilities = int(body.capabilities)
        elif msg_type == MsgType.ERROR:
            self.peer_error = (int(body.code),
                               bytes(body.reason).decode("utf-8", "replace"))
