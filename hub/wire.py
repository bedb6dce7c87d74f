"""Hub message bodies (sideband types 0x40–0x5F) as scapy Packets.

Every hub message rides a sideband frame (:class:`qkdnet.wire.QkdHeader`): the
frame's Wegman–Carter tag authenticates it hop by hop, so nothing here carries a
MAC of its own. This module is the only place that knows the byte layouts; the
router and the node work on the dissected Packets and call :func:`check` first,
which turns any inconsistency (counts that disagree with lengths, over-long
names, trailing bytes) into :class:`~qkdnet.errors.RemoteProtocolError`.

Names (spoke names, service names) are 1–64 bytes of UTF-8 prefixed by a one-byte
length. Key references are ``(block_id u64, offset u32, n_bits u32)`` segments in
the *sender's* ``data-tx`` pool for the hop (the receiver of the hop finds them in
its ``data-rx`` pool for the sender). All integers are big-endian.
"""

from __future__ import annotations

import functools
from enum import IntEnum
from typing import Any

from scapy.fields import (
    ByteEnumField,
    ByteField,
    FieldLenField,
    IntField,
    LongField,
    PacketListField,
    ShortEnumField,
    StrLenField,
)
from scapy.packet import Packet, bind_layers

from qkdnet.errors import ErrorCode, RemoteProtocolError
from qkdnet.fastcodec import FastCodec
from qkdnet.wire import QkdBody, QkdHeader


class HubMsg(IntEnum):
    """Sideband message types owned by the hub layer."""

    REGISTER = 0x40
    REGISTER_ACK = 0x41
    OPEN_CHANNEL = 0x42
    CHANNEL_CLOSE = 0x43
    DATA = 0x44
    DELIVERY_ACK = 0x45
    DELIVERY_NACK = 0x46
    KEY_RELAY_REQUEST = 0x47
    KEY_RELAY = 0x48
    STATUS_REQUEST = 0x49
    STATUS = 0x4A


class HubReason(IntEnum):
    """Reason codes in DELIVERY_NACK / CHANNEL_CLOSE / REGISTER_ACK.

    Values below 0x40 are the sideband :class:`~qkdnet.errors.ErrorCode` values with
    the same meaning; 0x40 and up are hub-specific.
    """

    OK = 0
    PROTOCOL_VIOLATION = int(ErrorCode.PROTOCOL_VIOLATION)
    MALFORMED_FRAME = int(ErrorCode.MALFORMED_FRAME)
    AUTHENTICATION_FAILED = int(ErrorCode.AUTHENTICATION_FAILED)
    KEY_EXHAUSTED = int(ErrorCode.KEY_EXHAUSTED)
    UNKNOWN_PEER = int(ErrorCode.UNKNOWN_PEER)
    NAME_CONFLICT = int(ErrorCode.NAME_CONFLICT)
    TIMEOUT = int(ErrorCode.TIMEOUT)
    INTERNAL_ERROR = int(ErrorCode.INTERNAL_ERROR)
    THROTTLED = int(ErrorCode.THROTTLED)
    NO_SUCH_SERVICE = 0x40      # nobody listens on that service at the destination
    PEER_DISCONNECTED = 0x41    # destination went away while the frame was queued
    CHANNEL_FAILED = 0x42       # an earlier message of the channel failed; order kept
    CHANNEL_CLOSED = 0x43       # normal close
    NOT_REGISTERED = 0x44       # a hub message before REGISTER succeeded


class NackKind(IntEnum):
    """What a DELIVERY_ACK / DELIVERY_NACK refers to."""

    DATA = 0
    OPEN = 1
    RELAY = 2
    REGISTER = 3


#: Names of the reason and kind codes, for scapy's display and the dissector.
_REASONS = {int(r): r.name for r in HubReason}
_KINDS = {int(k): k.name for k in NackKind}


class Direction(IntEnum):
    """Which end of a channel sent a frame (the channel id is the opener's)."""

    FROM_OPENER = 0
    FROM_ACCEPTOR = 1


MAX_NAME = 64
MAX_DETAIL = 256
MAX_SEGMENTS = 4096
#: Largest message a DATA frame carries (the sideband frame limit is 1 MiB).
MAX_MESSAGE = 256 * 1024
MAX_STATUS = 64 * 1024


def _name(field: str) -> list[Any]:
    length_field = f"{field}_len"

    def length_of(p: Any) -> int:
        return int(getattr(p, length_field))

    return [
        FieldLenField(length_field, None, length_of=field, fmt="B"),
        StrLenField(field, b"", length_from=length_of),
    ]


class _Body(FastCodec, QkdBody):
    """Base of hub bodies: nothing follows a body inside a frame."""

    def extract_padding(self, s: bytes) -> tuple[bytes, bytes]:
        return b"", s


class KeySegmentField(FastCodec, Packet):
    """One key reference: ``block_id`` u64, ``offset`` u32 (bits), ``n_bits`` u32."""

    name = "KeySegment"
    fields_desc = [  # noqa: RUF012 - scapy's declarative layout
        LongField("block_id", 0),
        IntField("offset", 0),
        IntField("n_bits", 0),
    ]

    def extract_padding(self, s: bytes) -> tuple[bytes, bytes]:
        return b"", s


def _segments() -> list[Any]:
    return [
        FieldLenField("nseg", None, count_of="segments", fmt="H"),
        PacketListField("segments", [], KeySegmentField, count_from=lambda p: p.nseg),
    ]


class HubRegister(_Body):
    """REGISTER: a spoke announces its name (must equal its sideband identity)."""

    name = "HubRegister"
    fields_desc = [ByteField("version", 1), *_name("spoke")]  # noqa: RUF012


class HubRegisterAck(_Body):
    """REGISTER_ACK: the hub accepts (status 0) or refuses the name."""

    name = "HubRegisterAck"
    fields_desc = [  # noqa: RUF012
        ShortEnumField("status", 0, _REASONS),
        *_name("spoke"),
        *_name("hub"),
        FieldLenField("detail_len", None, length_of="detail", fmt="H"),
        StrLenField("detail", b"", length_from=lambda p: p.detail_len),
    ]


class HubOpenChannel(_Body):
    """OPEN_CHANNEL: ``src`` opens channel ``channel_id`` to ``dst``'s ``service``."""

    name = "HubOpenChannel"
    fields_desc = [  # noqa: RUF012
        *_name("src"), *_name("dst"), *_name("service"), IntField("channel_id", 0),
    ]


class HubChannelClose(_Body):
    """CHANNEL_CLOSE: either end closes the channel (``reason`` 0x43 = normal)."""

    name = "HubChannelClose"
    fields_desc = [  # noqa: RUF012
        *_name("src"), *_name("dst"), IntField("channel_id", 0), ByteField("end", 0),
        ShortEnumField("reason", int(HubReason.CHANNEL_CLOSED), _REASONS),
    ]


class HubData(_Body):
    """DATA: one whole message, one-time-padded with the referenced key segments."""

    name = "HubData"
    fields_desc = [  # noqa: RUF012
        *_name("src"), *_name("dst"), *_name("service"),
        IntField("channel_id", 0), ByteField("end", 0), LongField("msg_seq", 0),
        *_segments(),
        FieldLenField("ct_len", None, length_of="ciphertext", fmt="I"),
        StrLenField("ciphertext", b"", length_from=lambda p: p.ct_len),
    ]

    def mysummary(self) -> str:
        # Never show the ciphertext bytes in summaries (they are harmless, but keep
        # the habit: counts and identifiers only).
        return self.sprintf("DATA %src%->%dst% ch=%channel_id% seq=%msg_seq% ct=%ct_len%")


class HubDeliveryAck(_Body):
    """DELIVERY_ACK: ``src`` confirms delivery of (channel, direction, seq) to ``dst``."""

    name = "HubDeliveryAck"
    fields_desc = [  # noqa: RUF012
        ByteEnumField("kind", int(NackKind.DATA), _KINDS), *_name("src"),
        *_name("dst"),
        IntField("channel_id", 0), ByteField("end", 0), LongField("msg_seq", 0),
    ]


class HubDeliveryNack(_Body):
    """DELIVERY_NACK: a message, open or relay failed; ``hop`` names where."""

    name = "HubDeliveryNack"
    fields_desc = [  # noqa: RUF012
        ByteEnumField("kind", int(NackKind.DATA), _KINDS), *_name("src"),
        *_name("dst"),
        IntField("channel_id", 0), ByteField("end", 0), LongField("msg_seq", 0),
        ShortEnumField("reason", 0, _REASONS),
        IntField("bits_needed", 0), IntField("bits_available", 0),
        FieldLenField("hop_len", None, length_of="hop", fmt="B"),
        StrLenField("hop", b"", length_from=lambda p: p.hop_len),
        FieldLenField("detail_len", None, length_of="detail", fmt="H"),
        StrLenField("detail", b"", length_from=lambda p: p.detail_len),
    ]


class HubKeyRelayRequest(_Body):
    """KEY_RELAY_REQUEST: ``src`` asks for ``n_bits`` of end-to-end key with ``peer``."""

    name = "HubKeyRelayRequest"
    fields_desc = [  # noqa: RUF012
        *_name("src"), *_name("peer"), IntField("request_id", 0), IntField("n_bits", 0),
    ]


class HubKeyRelay(_Body):
    """KEY_RELAY: the hub's half of a key relay.

    To the initiator (``role`` 0) it names segments of hub→initiator key K_A (no
    payload: the initiator already holds K_A). To the responder (``role`` 1) it names
    segments of hub→responder key K_B and carries ``masked`` = K_A xor K_B, from which
    the responder recovers K_A. Both store K_A as block ``e2e_block_id``.
    """

    name = "HubKeyRelay"
    fields_desc = [  # noqa: RUF012
        *_name("peer"), IntField("request_id", 0), ByteField("role", 0),
        LongField("e2e_block_id", 0), IntField("n_bits", 0),
        *_segments(),
        FieldLenField("masked_len", None, length_of="masked", fmt="I"),
        StrLenField("masked", b"", length_from=lambda p: p.masked_len),
    ]

    def mysummary(self) -> str:
        return self.sprintf("KEY_RELAY peer=%peer% role=%role% bits=%n_bits%")


class HubStatusRequest(_Body):
    """STATUS_REQUEST: ask the hub for its view of this spoke's link."""

    name = "HubStatusRequest"
    fields_desc = [IntField("request_id", 0)]  # noqa: RUF012


class HubStatus(_Body):
    """STATUS: JSON (UTF-8) with the hub's counters for the asking spoke."""

    name = "HubStatus"
    fields_desc = [  # noqa: RUF012
        IntField("request_id", 0),
        FieldLenField("text_len", None, length_of="text", fmt="I"),
        StrLenField("text", b"", length_from=lambda p: p.text_len),
    ]


BODIES: dict[int, type[Packet]] = {
    HubMsg.REGISTER: HubRegister,
    HubMsg.REGISTER_ACK: HubRegisterAck,
    HubMsg.OPEN_CHANNEL: HubOpenChannel,
    HubMsg.CHANNEL_CLOSE: HubChannelClose,
    HubMsg.DATA: HubData,
    HubMsg.DELIVERY_ACK: HubDeliveryAck,
    HubMsg.DELIVERY_NACK: HubDeliveryNack,
    HubMsg.KEY_RELAY_REQUEST: HubKeyRelayRequest,
    HubMsg.KEY_RELAY: HubKeyRelay,
    HubMsg.STATUS_REQUEST: HubStatusRequest,
    HubMsg.STATUS: HubStatus,
}
TYPE_OF: dict[type[Packet], int] = {cls: int(t) for t, cls in BODIES.items()}


for _msg_type, _cls in BODIES.items():
    bind_layers(QkdHeader, _cls, type=int(_msg_type))


def _bad(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, ErrorCode.MALFORMED_FRAME)


def name_of(raw: bytes, what: str) -> str:
    """Decode and validate a name field (1–64 bytes UTF-8, no control characters)."""
    if not 1 <= len(raw) <= MAX_NAME:
        raise _bad(f"{what} name must be 1-{MAX_NAME} bytes, got {len(raw)}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad(f"{what} name is not UTF-8") from None
    if not text.isprintable():
        raise _bad(f"{what} name contains control characters")
    return text


@functools.cache
def _name_fields_of(cls: type[Packet]) -> tuple[str, ...]:
    """The name fields (1-64 bytes of UTF-8 with a length byte) a body class has."""
    return tuple(n for n in ("spoke", "src", "dst", "service", "peer", "hub")
                 if any(f.name == n for f in cls.fields_desc))


def check(pkt: Packet) -> Packet:
    """Validate a dissected hub body; returns it or raises RemoteProtocolError.

    Checks what scapy's dissector does not: no trailing or missing bytes, counts and
    lengths agree with the lists they describe, names are sane, key references
    cover exactly the bits the payload needs.
    """
    cls = type(pkt)
    if cls not in TYPE_OF:
        raise _bad(f"not a hub message: {cls.__name__}")
    if not _is_no_payload(pkt):
        raise _bad(f"{cls.__name__}: {len(bytes(pkt.payload))} trailing bytes")
    get = pkt.getfieldval
    for fname in _name_fields_of(cls):
        raw = get(fname)
        if fname == "hub" and not raw:
            continue
        name_of(bytes(raw), fname)
        if get(f"{fname}_len") not in (None, len(raw)):
            raise _bad(f"{cls.__name__}: {fname} truncated")
    if cls in (HubData, HubKeyRelay):
        segs = pkt.segments
        if pkt.nseg not in (None, len(segs)) or len(segs) > MAX_SEGMENTS:
            raise _bad(f"{cls.__name__}: segment count {pkt.nseg} but {len(segs)} present")
        total = sum(int(s.n_bits) for s in segs)
        if any(int(s.n_bits) == 0 for s in segs):
            raise _bad(f"{cls.__name__}: empty key segment")
        if cls is HubData:
            if pkt.ct_len not in (None, len(pkt.ciphertext)) or len(pkt.ciphertext) > MAX_MESSAGE:
                raise _bad("DATA: ciphertext length field disagrees with the payload")
            if total != 8 * len(pkt.ciphertext):
                raise _bad(f"DATA: key segments cover {total} bits, ciphertext needs "
                           f"{8 * len(pkt.ciphertext)}")
            if pkt.end not in (0, 1):
                raise _bad("DATA: bad end")
        else:
            if pkt.n_bits % 8 or total != pkt.n_bits or pkt.role not in (0, 1):
                raise _bad("KEY_RELAY: key segments disagree with n_bits")
            want = 0 if pkt.role == 0 else pkt.n_bits // 8
            if pkt.masked_len not in (None, len(pkt.masked)) or len(pkt.masked) != want:
                raise _bad("KEY_RELAY: masked key has the wrong length")
    if cls is HubDeliveryNack and (pkt.hop_len not in (None, len(pkt.hop))
                                   or pkt.detail_len not in (None, len(pkt.detail))
                                   or len(pkt.detail) > MAX_DETAIL):
        raise _bad("DELIVERY_NACK: hop/detail length fields disagree")
    if cls is HubRegisterAck and (pkt.detail_len not in (None, len(pkt.detail))
                                  or len(pkt.detail) > MAX_DETAIL):
        raise _bad("REGISTER_ACK: detail length field disagrees")
    if cls is HubStatus and (pkt.text_len not in (None, len(pkt.text))
                             or len(pkt.text) > MAX_STATUS):
        raise _bad("STATUS: length field disagrees")
    if cls is HubKeyRelayRequest and (pkt.n_bits == 0 or pkt.n_bits % 8
                                      or pkt.n_bits > 8 * MAX_MESSAGE):
        raise _bad("KEY_RELAY_REQUEST: n_bits must be a positive multiple of 8 "
                   f"up to {8 * MAX_MESSAGE}")
    return pkt


def _is_no_payload(pkt: Packet) -> bool:
    from scapy.packet import NoPayload
    return isinstance(pkt.payload, NoPayload)


def parse(msg_type: int, data: bytes) -> Packet:
    """Dissect and validate a hub body from its bytes (for tests, pcaps and fuzzing)."""
    cls = BODIES.get(msg_type)
    if cls is None:
        raise RemoteProtocolError(f"unknown hub message type 0x{msg_type:02x}",
                                  ErrorCode.UNKNOWN_MESSAGE_TYPE)
    try:
        pkt = cls(data)
    except Exception as err:  # scapy raises assorted errors on garbage
        raise _bad(f"{cls.__name__}: cannot dissect ({type(err).__name__})") from None
    # scapy silently leaves short fields at defaults: rebuilding must give the input.
    if bytes(pkt) != data:
        raise _bad(f"{cls.__name__}: truncated or inconsistent lengths")
    return check(pkt)


def as_text(raw: bytes | str) -> str:
    """Field value as text (scapy gives bytes for StrLenField)."""
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
