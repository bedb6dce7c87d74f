"""Sideband frame layout: the common header, the common bodies, and a fast header codec.

Every classical qkdnet message is one *frame* on a TCP stream (spec/protocol.md §3)::

    length u32 | version u8 | type u8 | flags u8 | reserved u8 | session u32 | seq u64
    | akey_block u64 | akey_offset u32 | body (length - 44 bytes) | tag (16 bytes)

``length`` counts every byte after itself. The tag is the Wegman–Carter authenticator
(:mod:`qkdnet.auth`) over every byte before it, preceded (for every frame but HELLO) by
a pseudo-header binding the frame to its connection (spec §6.1).

Theory of operation (scapy side)
--------------------------------
On the wire the tag *trails* the body, but scapy dissects fields front to back. So
:class:`QkdHeader` carries ``tag`` as its last header field and moves the 16 bytes
around: ``pre_dissect`` moves the trailing tag up behind the fixed header, and
``post_build`` moves it back behind the body. ``extract_padding`` then hands exactly
``length - 44`` bytes to the body layer and returns whatever follows the frame as
padding, which is how scapy's ``TCPSession`` keeps the next frame buffered.

Adding message types in another layer
-------------------------------------
Each layer keeps its bodies in its own ``wire.py``::

    from scapy.packet import Packet, bind_layers
    from qkdnet.wire import QkdBody, QkdHeader

    class BlockAnnounce(QkdBody):           # link layer, type 0x10
        name = "QKD BlockAnnounce"
        fields_desc = [...]
        summary_fields = ("block_bits",)    # optional, read by ``qkdnet pcap summary``

    bind_layers(QkdHeader, BlockAnnounce, type=0x10)

and adds its type numbers (in its own range: link 0x10-0x3F, hub 0x40-0x5F, apps
0x60-0x7F) to its own ``IntEnum``. The sideband connection looks bodies up by type
through these bindings (:func:`body_class_for`), so nothing else needs changing. Add a
byte-layout table to spec/protocol.md and golden vectors under spec/vectors/ as well:
tests/sideband checks both against the scapy definitions.

The fast codec (:func:`pack_header` / :func:`unpack_header`) exists because building a
scapy packet costs ~0.1 ms; the connection uses it for the fixed header only, and
tests check byte-for-byte agreement with :class:`QkdHeader` for every type.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from enum import IntEnum
from typing import Any, ClassVar, NamedTuple

from scapy.config import conf
from scapy.fields import (
    ByteEnumField,
    ByteField,
    FieldLenField,
    FieldListField,
    FlagsField,
    IntField,
    LongField,
    ShortEnumField,
    StrFixedLenField,
    StrLenField,
    XLongField,
)
from scapy.layers.inet import TCP
from scapy.packet import NoPayload, Packet, Raw, bind_layers

from qkdnet.errors import ErrorCode

#: Protocol version this implementation speaks (spec §3.1).
PROTOCOL_VERSION = 1
#: Default TCP port of the sideband (spec §2).
DEFAULT_PORT = 7787
#: Bytes of fixed header (length field included) and of the trailing tag.
HEADER_LEN = 32
TAG_LEN = 16
#: Smallest legal value of the length field: header after ``length`` + empty body + tag.
MIN_LENGTH = HEADER_LEN - 4 + TAG_LEN
#: Bytes of the per-connection nonce in HELLO and HELLO_ACK (spec §5.1, §6.1).
NONCE_LEN = 16
#: Upper bound on the length field that :meth:`QkdHeader.tcp_reassemble` will wait for
#: when reading captures; anything larger is treated as a desynchronised stream.
CAPTURE_MAX_LENGTH = 1 << 26


class MsgType(IntEnum):
    """Sideband message types of the common range 0x01–0x0F (spec §5).

    Other ranges belong to other layers: 0x10–0x3F link, 0x40–0x5F hub, 0x60–0x7F
    apps. 0x00 and 0x80–0xFF are reserved and always rejected.
    """

    HELLO = 0x01  # spec §5.1: opens a connection, names the sender, offers versions
    HELLO_ACK = 0x02  # spec §5.2: accepts, names the responder, picks the version
    ERROR = 0x03  # spec §5.3: the sender aborts the connection with an ErrorCode
    CLOSE = 0x04  # spec §5.4: graceful close, answered with CLOSE
    PING = 0x05  # spec §5.5: liveness probe carrying a nonce
    PONG = 0x06  # spec §5.6: echoes the PING nonce


#: Inclusive type ranges per owning layer (spec §5).
TYPE_RANGES: dict[str, tuple[int, int]] = {
    "common": (0x01, 0x0F),
    "link": (0x10, 0x3F),
    "hub": (0x40, 0x5F),
    "apps": (0x60, 0x7F),
}


class Role(IntEnum):
    """What a node is, as announced in HELLO (spec §5.1)."""

    UNSPECIFIED = 0
    SPOKE = 1
    HUB = 2
    APP = 3
    TESTER = 4


#: Capability bits announced in HELLO / HELLO_ACK (spec §5.1).
CAPABILITIES = ["link", "relay", "apps", "keystore"]


class FrameFlags:
    """Bits of the header ``flags`` byte (spec §3.1)."""

    END_OF_GROUP = 0x01
    #: The frame carries no tag of its own (tag, akey_block and akey_offset are zero);
    #: the next tagged frame in the same direction authenticates it (spec §6.4).
    DEFERRED = 0x02


_FLAG_NAMES = ["end_of_group", "deferred", "f2", "f3", "f4", "f5", "f6", "f7"]

#: Message types that may be sent DEFERRED (spec §6.4). A layer adds its types with
#: :func:`allow_deferred` when its wire module is imported (like ``bind_layers``); a
#: deferred frame of any other type is a protocol violation.
DEFERRABLE_TYPES: set[int] = set()


def allow_deferred(types: Iterable[int]) -> None:
    """Let frames of ``types`` be sent under deferred authentication (spec §6.4).

    Only for messages whose receiver acts on nothing irreversible before the next
    tagged frame of the same direction has verified (link exchange messages).
    """
    for t in types:
        if not 0x10 <= int(t) < 0x80:
            raise ValueError(f"type 0x{int(t):02x} cannot be deferred")
        DEFERRABLE_TYPES.add(int(t))


class QkdHeader(Packet):
    """The common sideband header; ``tag`` is dissected from the frame's end."""

    name = "QKD Sideband"
    fields_desc: ClassVar[list[Any]] = [
        IntField("length", None),
        ByteField("version", PROTOCOL_VERSION),
        ByteEnumField("type", 0, {int(t): t.name for t in MsgType}),
        FlagsField("flags", 0, 8, _FLAG_NAMES),
        ByteField("reserved", 0),
        IntField("session", 0),
        LongField("seq", 0),
        LongField("akey_block", 0),
        IntField("akey_offset", 0),
        StrFixedLenField("tag", b"\x00" * TAG_LEN, TAG_LEN),
    ]

    def pre_dissect(self, s: bytes) -> bytes:
        # Move the trailing tag up behind the fixed header (see module docstring). A
        # truncated frame takes its last available bytes as the tag.
        if len(s) < HEADER_LEN:
            return s
        end = min(len(s), 4 + int.from_bytes(s[:4], "big"))
        end = max(end, HEADER_LEN)
        tag_start = max(HEADER_LEN, end - TAG_LEN)
        return s[:HEADER_LEN] + s[tag_start:end] + s[HEADER_LEN:tag_start] + s[end:]

    def post_dissect(self, s: bytes) -> bytes:
        # The cached raw header holds the tag in its dissection position; drop the
        # cache so rebuilding goes through post_build and puts the tag back at the end.
        self.raw_packet_cache = None
        return s

    def extract_padding(self, s: bytes) -> tuple[bytes, bytes]:
        length = self.length if self.length is not None else MIN_LENGTH
        body_len = max(0, int(length) - MIN_LENGTH)
        return s[:body_len], s[body_len:]

    def do_dissect(self, s: bytes) -> bytes:
        try:
            return super().do_dissect(s)
        except struct.error:
            # A header cut short (truncated capture): keep the fields that were whole.
            return b""

    def post_build(self, pkt: bytes, pay: bytes) -> bytes:
        header, tag = pkt[:HEADER_LEN], pkt[HEADER_LEN:]
        # ``pay`` may hold further frames chained after this one's body (a segment
        # carrying several frames): the tag goes right after *this* body.
        following = self.payload.getlayer(QkdHeader)
        rest_len = len(bytes(following)) if following is not None else 0
        body = pay[:len(pay) - rest_len]
        if self.length is None:
            header = struct.pack("!I", len(pkt) - 4 + len(body)) + header[4:]
        return header + body + tag + pay[len(body):]

    @classmethod
    def tcp_reassemble(cls, data: bytes, metadata: dict[str, Any],
                       session: dict[str, Any]) -> Packet | None:
        """Whole frames from a TCP byte stream (scapy ``TCPSession``).

        Every whole frame buffered comes back as one chained packet; ``None`` means
        no frame is complete yet. When scapy hands over the segment it just read
        (``metadata["original"]``, as ``TCPSession`` does for captures) the stream is
        reassembled here, per direction, by TCP sequence number (see
        :class:`_CaptureStream`), so a retransmitted or overlapping segment yields no
        frame twice. Without it (``StreamSocket``-style use) ``data`` is parsed as is.
        A length field that cannot be right desynchronises the stream: the bytes
        buffered are returned raw and parsing resumes at the next segment.
        """
        original = metadata.get("original")
        tcp = original.getlayer(TCP) if isinstance(original, Packet) else None
        if tcp is None:
            return cls._stateless_reassemble(data)
        ident = metadata.get("ident")
        key = "qkdnet.wire:" + (ident.hex() if isinstance(ident, bytes) else repr(ident))
        stream = session.get(key)
        seq = int(tcp.seq)
        if not isinstance(stream, _CaptureStream):
            stream = session[key] = _CaptureStream(seq)
        stream.add(seq, _segment_payload(tcp))
        # After a FIN or RST nothing will fill a gap: parse what is held beyond it.
        frames, stray = stream.take_frames(flush=bool(tcp.flags.F or tcp.flags.R))
        if not frames:
            return Raw(stray) if stray else None
        pkt: Packet = cls(frames[0])
        for frame in frames[1:]:
            pkt.add_payload(cls(frame))
        if stray:
            pkt.add_payload(Raw(stray))
        # Never any padding: scapy's own retransmission tracking is not relied on.
        return pkt

    @classmethod
    def _stateless_reassemble(cls, data: bytes) -> Packet | None:
        """Frames at the start of ``data``; leftover bytes come back as padding."""
        frames, pos, bad = _split_frames(data)
        if bad and not frames:
            return Raw(data)
        if not frames:
            return None
        # Chain every whole frame buffered into one result, leftover bytes as padding.
        # (Returning one frame at a time trips scapy 2.6-2.8's TCPSession, which
        # miscounts its sequence offset after two frames and a partial one.)
        pkt: Packet = cls(frames[0])
        for frame in frames[1:]:
            pkt.add_payload(cls(frame))
        if pos < len(data):
            pkt.add_payload(conf.padding_layer(data[pos:]))
        return pkt

    def mysummary(self) -> str:
        return self.sprintf("QKD %type% sess=%session% seq=%seq% len=%length%")


# --- capture reassembly -------------------------------------------------------------
#
# Theory of operation. scapy 2.8's TCPSession remembers how far a direction has been
# delivered (``next_seq``) in per-flow metadata, but when a returned packet leaves no
# padding it deletes that metadata first and records ``next_seq`` on the orphaned
# copy. A segment that ended exactly on a frame boundary is then not recognised when
# it is retransmitted, and its frames are dissected twice. Its ``next_seq`` is also
# computed from the *first* segment of a multi-segment frame. So for captures
# ``QkdHeader.tcp_reassemble`` keeps its own per-direction stream (in the TCPSession
# ``session`` dict, keyed by scapy's one-way flow ident) built from each segment's
# sequence number and payload, and ignores scapy's buffer: bytes below the stream's
# end are dropped, segments beyond a gap are held until it fills.

#: A segment this far (in sequence space) from the stream's end, either way, starts a
#: new stream: a new connection reusing the 4-tuple (TCPSession shows
#: ``tcp_reassemble`` no SYN) or a capture that lost that much.
CAPTURE_MAX_JUMP = 1 << 24
#: Out-of-order segments (and bytes) held beyond a gap before the gap is taken as lost
#: for good (a capture that dropped a segment): the partial frame before it is then
#: reported as stray bytes and parsing resumes at the first held segment. A FIN or RST
#: gives up on gaps at once. Reordering inside a capture spans a few segments at most.
CAPTURE_MAX_HELD_SEGMENTS = 8
CAPTURE_MAX_HELD = 1 << 18


def _split_frames(data: bytes | bytearray) -> tuple[list[bytes], int, bool]:
    """Whole frames at the start of ``data``, the offset after them, and whether the
    bytes there hold a length field that cannot be right (a desynchronised stream)."""
    frames: list[bytes] = []
    pos = 0
    while len(data) - pos >= 4:
        length = int.from_bytes(data[pos:pos + 4], "big")
        if length < MIN_LENGTH or length > CAPTURE_MAX_LENGTH:
            return frames, pos, True
        if len(data) - pos < 4 + length:
            break
        frames.append(bytes(data[pos:pos + 4 + length]))
        pos += 4 + length
    return frames, pos, False


def _segment_payload(tcp: Packet) -> bytes:
    """The TCP payload bytes exactly as captured (scapy keeps them in ``original``)."""
    pay = tcp.payload
    if isinstance(pay, NoPayload):
        return b""
    raw = getattr(pay, "original", None)
    return bytes(raw) if raw is not None else bytes(pay)


class _CaptureStream:
    """One direction of one TCP connection being read from a capture.

    Offsets count stream bytes from ``base`` (the sequence number of the first byte);
    ``end`` is the offset just past the last contiguous byte in hand, and ``pending``
    holds the bytes from the first one not yet returned as a frame up to ``end``.
    ``starts`` lists where segments began inside ``pending``: after a bad length field,
    parsing resumes at the next one (a sender starts a segment with a frame more often
    than not, so that is the best guess at where frames line up again).
    """

    __slots__ = ("base", "end", "held", "pending", "starts", "stray")

    def __init__(self, base: int) -> None:
        self.base = base & 0xFFFFFFFF
        self.end = 0
        self.pending = bytearray()
        self.held: dict[int, bytes] = {}
        self.starts: list[int] = []
        self.stray = bytearray()

    def add(self, seq: int, payload: bytes) -> None:
        """Take one segment: keep only bytes not seen before, in stream order."""
        if not payload:
            return
        # Sequence numbers wrap at 2**32: place the segment relative to ``end``.
        delta = (seq - self.base - self.end) & 0xFFFFFFFF
        if delta >= 1 << 31:
            delta -= 1 << 32
        if abs(delta) > CAPTURE_MAX_JUMP:
            self.stray += self.pending
            self.pending = bytearray()
            self.starts.clear()
            self.held.clear()
            self.base, self.end, delta = seq & 0xFFFFFFFF, 0, 0
        off = self.end + delta
        if off > self.end:
            if len(payload) > len(self.held.get(off, b"")):
                self.held[off] = payload
            if (len(self.held) > CAPTURE_MAX_HELD_SEGMENTS
                    or sum(len(p) for p in self.held.values()) > CAPTURE_MAX_HELD):
                self._skip_gap()
            return
        self._append(off, payload)
        self._drain_held()

    def _append(self, off: int, payload: bytes) -> None:
        if off + len(payload) > self.end:
            if off == self.end:
                self.starts.append(off)
            self.pending += payload[self.end - off:]
            self.end = off + len(payload)

    def _drain_held(self) -> None:
        while self.held:
            off = min(self.held)
            if off > self.end:
                return
            self._append(off, self.held.pop(off))

    def _skip_gap(self) -> None:
        self.stray += self.pending
        self.pending = bytearray()
        self.starts.clear()
        self.end = min(self.held)
        self._drain_held()

    def take_frames(self, *, flush: bool = False) -> tuple[list[bytes], bytes]:
        """Whole frames now in hand, and bytes given up on (lost gap, bad length).

        ``flush`` gives up on every gap, parsing each held run of bytes in turn.
        """
        out: list[bytes] = []
        while True:
            frames, pos, bad = _split_frames(self.pending)
            out += frames
            first = self.end - len(self.pending)
            if bad:
                # Resynchronise at the next segment start; drop the bytes before it.
                nxt = next((o for o in self.starts if o > first + pos), self.end)
                self.stray += self.pending[pos:nxt - first]
                pos = nxt - first
            del self.pending[:pos]
            first += pos
            self.starts = [o for o in self.starts if o > first]
            if bad and self.pending:
                continue
            if not (flush and self.held):
                break
            self._skip_gap()
        stray = bytes(self.stray)
        self.stray = bytearray()
        return out, stray


class QkdBody(Packet):
    """Base class of every sideband body.

    ``summary_fields`` names fields that ``qkdnet pcap summary`` aggregates (``qber``,
    ``block_bits``, ``leaked_bits``, ``final_key_bits``); see :mod:`qkdnet.pcap`.
    """

    summary_fields: tuple[str, ...] = ()


def _name_fields() -> list[Any]:
    return [
        FieldLenField("name_len", None, length_of="node_name", fmt="B"),
        StrLenField("node_name", b"", length_from=lambda p: p.name_len),
        ByteEnumField("role", Role.UNSPECIFIED, {int(r): r.name.lower() for r in Role}),
    ]


class Hello(QkdBody):
    """HELLO (spec §5.1): who I am, which protocol versions I speak, and my nonce."""

    name = "QKD HELLO"
    fields_desc: ClassVar[list[Any]] = [
        *_name_fields(),
        FieldLenField("n_versions", None, count_of="versions", fmt="B"),
        FieldListField("versions", [PROTOCOL_VERSION], ByteField("v", 0),  # type: ignore[list-item]
                       count_from=lambda p: p.n_versions),
        FlagsField("capabilities", 0, 32, CAPABILITIES),
        # Fresh random per connection; the connection binding (spec §6.1) covers it.
        # Last in the body, so a receiver finds it before parsing (HELLO_ACK).
        StrFixedLenField("nonce", b"\x00" * NONCE_LEN, NONCE_LEN),
    ]


class HelloAck(QkdBody):
    """HELLO_ACK (spec §5.2): the responder's name, the chosen version and its nonce."""

    name = "QKD HELLO_ACK"
    fields_desc: ClassVar[list[Any]] = [
        *_name_fields(),
        ByteField("chosen_version", PROTOCOL_VERSION),
        FlagsField("capabilities", 0, 32, CAPABILITIES),
        StrFixedLenField("nonce", b"\x00" * NONCE_LEN, NONCE_LEN),
    ]


_ERROR_NAMES = {int(c): c.name for c in ErrorCode}


class Error(QkdBody):
    """ERROR (spec §5.3): abort with a code and a human-readable reason."""

    name = "QKD ERROR"
    fields_desc: ClassVar[list[Any]] = [
        ShortEnumField("code", ErrorCode.PROTOCOL_VIOLATION, _ERROR_NAMES),
        FieldLenField("reason_len", None, length_of="reason", fmt="!H"),
        StrLenField("reason", b"", length_from=lambda p: p.reason_len),
    ]


class Close(QkdBody):
    """CLOSE (spec §5.4): graceful close; the peer answers CLOSE and both hang up."""

    name = "QKD CLOSE"
    fields_desc: ClassVar[list[Any]] = [ShortEnumField("code", ErrorCode.NO_ERROR, _ERROR_NAMES)]


class Ping(QkdBody):
    """PING (spec §5.5)."""

    name = "QKD PING"
    fields_desc: ClassVar[list[Any]] = [XLongField("nonce", 0)]


class Pong(QkdBody):
    """PONG (spec §5.6): echoes the PING's nonce."""

    name = "QKD PONG"
    fields_desc: ClassVar[list[Any]] = [XLongField("nonce", 0)]


bind_layers(QkdHeader, Hello, type=MsgType.HELLO)
bind_layers(QkdHeader, HelloAck, type=MsgType.HELLO_ACK)
bind_layers(QkdHeader, Error, type=MsgType.ERROR)
bind_layers(QkdHeader, Close, type=MsgType.CLOSE)
bind_layers(QkdHeader, Ping, type=MsgType.PING)
bind_layers(QkdHeader, Pong, type=MsgType.PONG)


def bind_port(port: int) -> None:
    """Dissect TCP traffic on ``port`` (either direction) as sideband frames."""
    bind_layers(TCP, QkdHeader, sport=port)
    bind_layers(TCP, QkdHeader, dport=port)


bind_port(DEFAULT_PORT)


def body_class_for(msg_type: int) -> type[Packet] | None:
    """The body class bound to ``msg_type`` with ``bind_layers``, or ``None``."""
    for fval, cls in QkdHeader.payload_guess:
        if set(fval) == {"type"} and fval["type"] == msg_type:
            return cls
    return None


def bound_types() -> dict[int, type[Packet]]:
    """Every message type with a bound body class."""
    out: dict[int, type[Packet]] = {}
    for fval, cls in QkdHeader.payload_guess:
        if set(fval) == {"type"}:
            out.setdefault(int(fval["type"]), cls)
    return out


def type_name(msg_type: int) -> str:
    """A display name for a type: the body's name if bound, else hex."""
    cls = body_class_for(msg_type)
    if cls is not None:
        return str(getattr(cls, "_name", cls.__name__)).removeprefix("QKD ")
    return f"0x{msg_type:02x}"


# --- fast header codec --------------------------------------------------------------

_HEADER = struct.Struct("!IBBBBIQQI")
assert _HEADER.size == HEADER_LEN


class HeaderFields(NamedTuple):
    """The fixed header fields, as the fast codec reads them."""

    length: int
    version: int
    type: int
    flags: int
    reserved: int
    session: int
    seq: int
    akey_block: int
    akey_offset: int


def pack_header(body_len: int, msg_type: int, *, session: int = 0, seq: int = 0,
                flags: int = 0, akey_block: int = 0, akey_offset: int = 0,
                version: int = PROTOCOL_VERSION, reserved: int = 0) -> bytes:
    """The 32 header bytes of a frame whose body is ``body_len`` bytes long."""
    return _HEADER.pack(body_len + MIN_LENGTH, version, msg_type, flags, reserved, session,
                        seq, akey_block, akey_offset)


def unpack_header(data: bytes) -> HeaderFields:
    """Decode the first 32 bytes of ``data`` (no validation)."""
    return HeaderFields(*_HEADER.unpack_from(data))
