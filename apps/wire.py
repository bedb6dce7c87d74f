"""Wire format of the application layer: message types 0x60–0x7F.

Every SecureStream frame is a sideband frame (docs/design.md, "Sideband frames"):
the 32-byte ``QkdHeader``, a typed body and a 16-byte Wegman–Carter tag. The bodies
are defined here twice, on purpose:

* as scapy ``Packet`` classes bound to :class:`qkdnet.wire.QkdHeader`, which is what
  the spec, dissectors, pcap files and golden tests use, and
* as a ``struct`` codec (:func:`encode_frame`, :func:`decode_header`,
  :func:`decode_body`) that the SecureStream hot path uses, because building a scapy
  packet costs about 0.1 ms and a bulk stream sends thousands of frames per second.

Tests check that both produce and accept the same bytes. No other module of
``qkdnet.apps`` knows a byte layout.

Body of STREAM_DATA (0x60) and STREAM_EOF (0x61)::

    n_refs   u16                       number of key references
    refs     n_refs × (block u64, offset u32, n_bits u32)   key the frame consumes
    ciphertext  rest (STREAM_EOF: absent)  payload XOR one-time pad

The header's ``akey_block``/``akey_offset`` repeat the first key reference (where
the frame's one-time tag key ``s`` starts), so a generic sideband dissector shows
where the tag key came from.

STREAM_NONCE (0x64) opens each direction of a padded stream, before any other frame:
a fixed 64-byte frame (header with this stream's session, seq/flags/akey 0; body the
16-byte random nonce of the end that sends it; a tag slot of 16 zero bytes, as it is
not authenticated). Every tag the *other* end sends authenticates this nonce
(spec/apps.md §2), which is what makes a frame of an old stream fail in a new one.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import Any, ClassVar, NamedTuple

from scapy.fields import (
    FieldLenField,
    IntField,
    PacketListField,
    StrField,
    StrFixedLenField,
    XLongField,
)
from scapy.packet import Packet, bind_layers

from qkdnet.errors import ErrorCode, RemoteProtocolError
from qkdnet.wire import QkdBody, QkdHeader


class AppMsgType(IntEnum):
    """Application message types (range 0x60–0x7F of ``MsgType``)."""

    STREAM_DATA = 0x60  #: one-time-pad encrypted payload bytes
    STREAM_EOF = 0x61  #: authenticated end of this direction (send_eof / aclose)
    HOP_DATA = 0x62  #: payload on a channel the hub already pads and tags hop by hop
    HOP_EOF = 0x63  #: end of this direction on such a channel
    STREAM_NONCE = 0x64  #: first frame of a padded stream's direction: the sender's nonce
    LOCAL_REQUEST = 0x70  #: node-client request on the local Unix socket (JSON)
    LOCAL_REPLY = 0x71  #: node daemon's reply on the local Unix socket (JSON)
    LOCAL_DATA = 0x72  #: one channel message on a local-socket channel connection


VERSION = 1
HEADER = struct.Struct(">IBBBBIQQI")  # length, version, type, flags, reserved, session,
#                                       seq, akey_block, akey_offset
HEADER_SIZE = HEADER.size  # 32
TAG_SIZE = 16
KEYREF = struct.Struct(">QII")
N_REFS = struct.Struct(">H")
#: A frame can name at most this many key segments (a grant spanning many blocks).
MAX_REFS = 256
#: Bytes of a stream nonce, and of the whole STREAM_NONCE frame that carries one.
NONCE_SIZE = 16
NONCE_FRAME_SIZE = HEADER_SIZE + NONCE_SIZE + TAG_SIZE  # 64


class KeyRef(NamedTuple):
    """Where a run of key bits lives: ``n_bits`` bits at bit ``offset`` of ``block_id``."""

    block_id: int
    offset: int
    n_bits: int


class FrameHeader(NamedTuple):
    """The decoded fixed header of one frame."""

    length: int
    version: int
    type: int
    flags: int
    session: int
    seq: int
    akey_block: int
    akey_offset: int

    @property
    def frame_size(self) -> int:
        """Total bytes of the frame including the length field."""
        return self.length + 4


def encode_frame(msg_type: int, session: int, seq: int, refs: list[KeyRef],
                 payload: bytes, *, flags: int = 0, payload_len: int | None = None) -> bytes:
    """Build a frame without its tag (the caller appends the 16-byte tag).

    With ``payload_len`` (and ``payload=b""``) only the header and key references
    are built, for a caller that writes the payload and tag into its own buffer.
    """
    first = refs[0] if refs else KeyRef(0, 0, 0)
    n_payload = len(payload) if payload_len is None else payload_len
    body_len = N_REFS.size + KEYREF.size * len(refs) + n_payload
    head = HEADER.pack(HEADER_SIZE - 4 + body_len + TAG_SIZE, VERSION, msg_type, flags, 0,
                       session, seq, first.block_id, first.offset)
    parts = [head, N_REFS.pack(len(refs))]
    parts.extend(KEYREF.pack(*r) for r in refs)
    parts.append(payload)
    return b"".join(parts)


def encode_hop_frame(msg_type: int, session: int, seq: int, payload: bytes | memoryview
                     ) -> bytes:
    """HOP_DATA / HOP_EOF frame: header, plaintext body, 16 zero bytes in the tag slot.

    Only sent inside a hub channel, whose every hop one-time-pads and authenticates
    the whole message (so this frame needs neither key references nor a tag).
    """
    head = HEADER.pack(HEADER_SIZE - 4 + len(payload) + TAG_SIZE, VERSION, msg_type, 0, 0,
                       session, seq, 0, 0)
    return b"".join((head, payload, bytes(TAG_SIZE)))


def encode_nonce_frame(session: int, nonce: bytes) -> bytes:
    """The STREAM_NONCE frame announcing ``nonce`` (64 bytes, zero tag slot)."""
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"a stream nonce is {NONCE_SIZE} bytes")
    head = HEADER.pack(NONCE_FRAME_SIZE - 4, VERSION, AppMsgType.STREAM_NONCE, 0, 0,
                       session, 0, 0, 0)
    return b"".join((head, nonce, bytes(TAG_SIZE)))


#: Bytes of a STREAM_NONCE frame that :func:`check_nonce_start` needs (length, version, type).
NONCE_START = 6


def check_nonce_start(start: bytes | bytearray | memoryview) -> None:
    """Refuse early what cannot be a STREAM_NONCE frame, from its first NONCE_START bytes.

    So a peer that sends something else first gets a clear error at once instead of
    the receiver waiting for 64 bytes that may never come.
    """
    if start[4] != VERSION:
        raise RemoteProtocolError(f"unsupported frame version {start[4]}",
                                  ErrorCode.UNSUPPORTED_VERSION)
    if start[5] != AppMsgType.STREAM_NONCE:
        raise RemoteProtocolError(
            f"expected the peer's stream nonce frame first, got type {start[5]:#x}",
            ErrorCode.PROTOCOL_VIOLATION)
    length = int.from_bytes(start[:4], "big") + 4
    if length != NONCE_FRAME_SIZE:
        raise RemoteProtocolError(
            f"stream nonce frame of {length} bytes, expected {NONCE_FRAME_SIZE}",
            ErrorCode.MALFORMED_FRAME)


def decode_nonce_frame(frame: bytes | bytearray | memoryview, session: int) -> bytes:
    """The nonce of a whole ``NONCE_FRAME_SIZE``-byte STREAM_NONCE frame of ``session``.

    Anything else in its place (another type, version or length, another stream, a
    non-zero seq, flags, reserved byte, key position or tag slot) is a
    RemoteProtocolError.
    """
    frame = bytes(frame)
    if len(frame) != NONCE_FRAME_SIZE:
        raise RemoteProtocolError(f"stream nonce frame is {len(frame)} bytes, expected "
                                  f"{NONCE_FRAME_SIZE}", ErrorCode.MALFORMED_FRAME)
    check_nonce_start(frame)
    head = decode_header(frame)
    if head.session != session:
        raise RemoteProtocolError("stream nonce frame belongs to another stream",
                                  ErrorCode.PROTOCOL_VIOLATION)
    if (head.seq or head.flags or head.akey_block or head.akey_offset or frame[7]
            or any(frame[-TAG_SIZE:])):
        raise RemoteProtocolError("stream nonce frame has a non-zero seq, flags, reserved "
                                  "byte, key position or tag", ErrorCode.MALFORMED_FRAME)
    return frame[HEADER_SIZE:HEADER_SIZE + NONCE_SIZE]


def peek_length(buf: bytes | bytearray | memoryview) -> int | None:
    """Total size of the frame at the start of ``buf``, or None if fewer than 4 bytes."""
    if len(buf) < 4:
        return None
    return int.from_bytes(buf[:4], "big") + 4


def decode_header(frame: bytes | memoryview) -> FrameHeader:
    """Decode the fixed header; raises RemoteProtocolError if it is malformed."""
    if len(frame) < HEADER_SIZE + TAG_SIZE:
        raise RemoteProtocolError("frame shorter than header and tag", ErrorCode.MALFORMED_FRAME)
    length, version, mtype, flags, _res, session, seq, ablock, aoff = HEADER.unpack_from(frame)
    if version != VERSION:
        raise RemoteProtocolError(f"unsupported frame version {version}",
                                  ErrorCode.UNSUPPORTED_VERSION)
    return FrameHeader(length, version, mtype, flags, session, seq, ablock, aoff)


#: Bytes of header and reference count: where the key references of a body start.
REFS_START = HEADER_SIZE + N_REFS.size


def prefix_size(start: bytes | bytearray | memoryview, frame_size: int) -> int:
    """Bytes of header, reference count and references, from the first REFS_START bytes.

    For a receiver that reads a frame piecewise; the checks (and messages) are those
    of :func:`decode_body`.
    """
    if frame_size < REFS_START + TAG_SIZE:
        raise RemoteProtocolError("frame too short for its body", ErrorCode.MALFORMED_FRAME)
    (n_refs,) = N_REFS.unpack_from(start, HEADER_SIZE)
    if n_refs == 0 or n_refs > MAX_REFS:
        raise RemoteProtocolError(f"frame names {n_refs} key segments", ErrorCode.MALFORMED_FRAME)
    size = REFS_START + KEYREF.size * n_refs
    if size > frame_size - TAG_SIZE:
        raise RemoteProtocolError("key references overrun the frame", ErrorCode.MALFORMED_FRAME)
    return size


def decode_refs(prefix: bytes | bytearray | memoryview) -> list[KeyRef]:
    """The key references of a prefix (header, count, references) checked by prefix_size."""
    n_refs = (len(prefix) - REFS_START) // KEYREF.size
    return [KeyRef(*KEYREF.unpack_from(prefix, REFS_START + i * KEYREF.size))
            for i in range(n_refs)]


def decode_body(frame: bytes | memoryview) -> tuple[list[KeyRef], memoryview]:
    """Split a whole frame (header … tag) into its key references and payload."""
    view = memoryview(frame)
    if len(view) < HEADER_SIZE + N_REFS.size + TAG_SIZE:
        raise RemoteProtocolError("frame too short for its body", ErrorCode.MALFORMED_FRAME)
    (n_refs,) = N_REFS.unpack_from(view, HEADER_SIZE)
    if n_refs == 0 or n_refs > MAX_REFS:
        raise RemoteProtocolError(f"frame names {n_refs} key segments", ErrorCode.MALFORMED_FRAME)
    start = HEADER_SIZE + N_REFS.size
    end = start + KEYREF.size * n_refs
    if end > len(view) - TAG_SIZE:
        raise RemoteProtocolError("key references overrun the frame", ErrorCode.MALFORMED_FRAME)
    refs = [KeyRef(*KEYREF.unpack_from(view, start + i * KEYREF.size)) for i in range(n_refs)]
    return refs, view[end:len(view) - TAG_SIZE]


# ---- scapy definitions (spec, dissection, golden tests) -------------------------------


class StreamKeyRef(Packet):  # a list element, not a body
    """One key reference inside a SecureStream frame body."""

    name = "StreamKeyRef"
    fields_desc = [  # noqa: RUF012 - scapy field list
        XLongField("block", 0), IntField("offset", 0), IntField("n_bits", 0)]

    def extract_padding(self, s: bytes) -> tuple[bytes, bytes]:
        return b"", s


class StreamData(QkdBody):
    """Body of STREAM_DATA (0x60): key references, then ciphertext."""

    name = "StreamData"
    fields_desc = [  # noqa: RUF012 - scapy field list
        FieldLenField("n_refs", None, count_of="refs", fmt="H"),
        PacketListField("refs", [], StreamKeyRef, count_from=lambda p: p.n_refs),
        StrField("ciphertext", b""),
    ]


class StreamEof(QkdBody):
    """Body of STREAM_EOF (0x61): the key references of its tag key; no payload."""

    name = "StreamEof"
    fields_desc = [  # noqa: RUF012 - scapy field list
        FieldLenField("n_refs", None, count_of="refs", fmt="H"),
        PacketListField("refs", [], StreamKeyRef, count_from=lambda p: p.n_refs),
    ]


class HopData(QkdBody):
    """Body of HOP_DATA (0x62): plaintext payload (the hub channel pads it per hop)."""

    name = "HopData"
    fields_desc = [  # noqa: RUF012 - scapy field list
        StrField("data", b"")]


class HopEof(QkdBody):
    """Body of HOP_EOF (0x63): empty."""

    name = "HopEof"
    fields_desc: ClassVar[list[Any]] = []


class StreamNonce(QkdBody):
    """Body of STREAM_NONCE (0x64): the sender's fresh 16-byte stream nonce."""

    name = "StreamNonce"
    fields_desc = [  # noqa: RUF012 - scapy field list
        StrFixedLenField("nonce", b"\x00" * NONCE_SIZE, NONCE_SIZE)]


class LocalMessage(QkdBody):
    """Body of LOCAL_REQUEST / LOCAL_REPLY / LOCAL_DATA on the node's Unix socket."""

    name = "LocalMessage"
    fields_desc = [  # noqa: RUF012 - scapy field list
        StrField("data", b"")]


bind_layers(QkdHeader, StreamData, type=AppMsgType.STREAM_DATA)
bind_layers(QkdHeader, StreamEof, type=AppMsgType.STREAM_EOF)
bind_layers(QkdHeader, HopData, type=AppMsgType.HOP_DATA)
bind_layers(QkdHeader, HopEof, type=AppMsgType.HOP_EOF)
bind_layers(QkdHeader, StreamNonce, type=AppMsgType.STREAM_NONCE)
for _t in (AppMsgType.LOCAL_REQUEST, AppMsgType.LOCAL_REPLY, AppMsgType.LOCAL_DATA):
    bind_layers(QkdHeader, LocalMessage, type=_t)
