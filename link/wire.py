"""Link-layer message bodies (sideband types 0x10–0x3F) and their array codecs.

Every link message is a scapy ``Packet`` bound to :class:`qkdnet.wire.QkdHeader` by
its type.  All integers are big-endian; every variable field has its own byte-length
field (default ``None``, filled at build time) and, where packing leaves the count
ambiguous, an explicit element count.  Nothing outside this module knows a byte
layout: the session calls the ``encode_*`` helpers to build bodies and the
``decode_*`` helpers to turn a received body into numpy arrays.

The decoders are the protocol's input validation.  They check every length, count
and index against the limits below and against what the block already agreed on
(number of slots, number of clicks, number of kept slots, the outstanding parity
request) and raise :class:`~qkdnet.errors.RemoteProtocolError` on any
contradiction.  Large arrays never pass through Python loops: they are converted
with ``numpy.frombuffer`` / ``tobytes`` inside ``StrLenField`` values.

Layouts are documented in spec/link.md.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np
from scapy.fields import (
    ByteEnumField,
    ByteField,
    FieldLenField,
    IEEEDoubleField,
    IntField,
    LongField,
    ShortField,
    StrLenField,
)
from scapy.packet import Packet, bind_layers

from qkdnet.errors import ErrorCode, RemoteProtocolError
from qkdnet.wire import QkdBody, QkdHeader, allow_deferred

# --------------------------------------------------------------------------------------
# Message types and protocol limits


class LinkMsg(IntEnum):
    """Sideband message types owned by the link layer (spec/link.md, "Messages")."""

    BLOCK_START = 0x10      # A -> B: block index, slot range, parameters
    DETECTIONS = 0x11       # B -> A: clicked slots (delta-coded) + Bob's bases
    SIFT = 0x12             # A -> B: keep mask over the clicks + intensity per kept slot
    ESTIMATE = 0x13         # B -> A: Bob's X-basis bits (disclosed for estimation)
    ESTIMATE_RESULT = 0x14  # A -> B: X-basis error counts per intensity, Cascade seed
    PARITY_REQUEST = 0x15   # B -> A: one batched step of Cascade ranges
    PARITY_REPLY = 0x16     # A -> B: packed parities of those ranges
    VERIFY = 0x17           # B -> A: universal-hash seed and tag of Bob's corrected key
    PA = 0x18               # A -> B: Toeplitz seed, final length and the key split
    BLOCK_DONE = 0x19       # B -> A: Bob has the final key and is ready to store
    CONFIRM = 0x1A          # A -> B: Alice stored the block; Bob stores it too
    LDPC_SYNDROME = 0x1B    # A -> B: syndromes of Alice's key frames (LDPC reconciliation)
    LDPC_REQUEST = 0x1C     # B -> A: which frames failed this round (blind reconciliation)
    LDPC_REPLY = 0x1D       # A -> B: values of the next punctured bits of those frames
    ABORT = 0x1F            # either: the block is abandoned, with a reason


class AbortReason(IntEnum):
    """Why a block was abandoned (carried in ABORT, shown by the CLI and trace)."""

    QBER_TOO_HIGH = 1
    NO_KEY = 2              # finite-key length ell <= 0
    VERIFY_FAILED = 3
    AUTH_FAILED = 4
    TIMEOUT = 5
    PROTOCOL = 6            # the peer contradicted the protocol (RemoteProtocolError)
    LOCAL = 7               # a local failure (PHY, key store, resources)
    EC_FAILED = 8           # Cascade did not converge within its limits
    CANCELLED = 9           # the link is shutting down

    @property
    def word(self) -> str:
        """Short machine-readable word (used in stats, JSON and LinkAborted)."""
        return self.name.lower()


#: Largest block in slots (pulses); BLOCK_START is rejected above it.
MAX_BLOCK_SLOTS = 1 << 34
#: Slot numbers stay below 2^60 (the PHY's bound, qkdnet.phy.source.MAX_SLOT); the
#: key store's slot high-water marks are signed 64-bit integers.
SLOT_LIMIT = 1 << 60
#: Most clicks one block may report (keeps SIFT and PA below the 1 MiB frame limit).
MAX_CLICKS = 1 << 21
#: Clicks per DETECTIONS chunk (at most 512 KiB of deltas per frame).
CLICKS_PER_CHUNK = 1 << 16
#: Most ranges in one PARITY_REQUEST (9 bytes each on the wire).
MAX_RANGES = 1 << 16
#: Largest verification tag and seed, in bits / bytes.
MAX_TAG_BITS = 256
MAX_SEED_BYTES = 64
#: Block indices are 30 bits: block ids are session << 32 | index << 2 | part.
MAX_BLOCK_INDEX = (1 << 30) - 1


def _bad(message: str, code: ErrorCode = ErrorCode.PROTOCOL_VIOLATION) -> RemoteProtocolError:
    return RemoteProtocolError(message, code)


# --------------------------------------------------------------------------------------
# Bodies


class _Body(QkdBody):
    """Base of every link body: no payload of its own (the tag follows in the frame)."""

    def extract_padding(self, s: bytes) -> tuple[bytes, bytes]:
        return b"", s


class BlockStart(_Body):
    """A → B: open block ``block`` over slots [start_slot, start_slot + n_slots) with
    these security parameters; ``n_intensities`` is 3 (two decoys) or 2 (one decoy)."""

    name = "LINK_BLOCK_START"
    fields_desc = [  # noqa: RUF012 - scapy's declarative field list
        IntField("block", 0),
        LongField("start_slot", 0),
        LongField("n_slots", 0),
        ByteField("n_intensities", 3),
        ByteField("flags", 0),
        IEEEDoubleField("eps_sec", 1e-10),  # type: ignore[arg-type]
        IEEEDoubleField("eps_cor", 1e-15),  # type: ignore[arg-type]
        IEEEDoubleField("qber_max", 0.11),  # type: ignore[arg-type]
    ]


class DetectionsMsg(_Body):
    """One chunk of Bob's detection report (a block's report may span several frames).

    ``first`` is the index of the chunk's first click in the block's report and
    ``total`` the number of clicks in the whole report; ``first_offset`` is the slot
    offset (from the block's first slot) of the chunk's first click, and ``deltas``
    the gaps to each following click of the chunk.
    """

    name = "LINK_DETECTIONS"
    fields_desc = [  # noqa: RUF012
        IntField("block", 0),
        IntField("total", 0),
        IntField("first", 0),
        IntField("n_clicks", 0),
        LongField("first_offset", 0),
        ByteField("width", 1),
        FieldLenField("deltas_len", None, length_of="deltas", fmt="!I"),
        StrLenField("deltas", b"", length_from=lambda p: p.deltas_len),
        FieldLenField("bases_len", None, length_of="bases", fmt="!I"),
        StrLenField("bases", b"", length_from=lambda p: p.bases_len),
    ]


class SiftMsg(_Body):
    """A → B: which reported clicks are kept (bases agree), and the intensity index
    (2 bits each) of every kept slot, in click order."""

    name = "LINK_SIFT"
    fields_desc = [  # noqa: RUF012
        IntField("block", 0),
        IntField("n_clicks", 0),
        IntField("n_kept", 0),
        FieldLenField("keep_len", None, length_of="keep", fmt="!I"),
        StrLenField("keep", b"", length_from=lambda p: p.keep_len),
        FieldLenField("intens_len", None, length_of="intensities", fmt="!I"),
        StrLenField("intensities", b"", length_from=lambda p: p.intens_len),
    ]


class EstimateMsg(_Body):
    """B → A: Bob's bits at the kept X-basis (estimation) slots, disclosed in full."""

    name = "LINK_ESTIMATE"
    fields_desc = [  # noqa: RUF012
        IntField("block", 0),
        IntField("n_bits", 0),
        FieldLenField("bits_len", None, length_of="bits", fmt="!I"),
        StrLenField("bits", b"", length_from=lambda p: p.bits_len),
    ]


class Reconciliation(IntEnum):
    """Error-correction method of a block, chosen by Alice in ESTIMATE_RESULT."""

    CASCADE = 0     # two-way, PARITY_REQUEST / PARITY_REPLY
    LDPC = 1        # one-way syndrome, blind rounds: LDPC_SYNDROME / _REQUEST / _REPLY


class EstimateResultMsg(_Body):
    """A → B: X-basis errors per intensity (m_x0..2), the QBER reconciliation plans
    with, its public seed, and which method reconciles this block."""

    name = "LINK_ESTIMATE_RESULT"
    summary_fields = ("qber",)
    fields_desc = [  # noqa: RUF012
        IntField("block", 0),
        IntField("m_x0", 0),
        IntField("m_x1", 0),
        IntField("m_x2", 0),
        IEEEDoubleField("qber", 0.0),  # type: ignore[arg-type]
        LongField("cascade_seed", 0),
        ByteEnumField("method", int(Reconciliation.CASCADE),
                      {int(r): r.name for r in Reconciliation}),
    ]


class _LdpcBody(_Body):
    """The three LDPC messages share one layout: the block and an opaque payload that
    qkdnet.link.ldpc encodes and checks."""

    fields_desc = [  # noqa: RUF012
        IntField("block", 0),
        FieldLenField("data_len", None, length_of="data", fmt="!I"),
        StrLenField("data", b"", length_from=lambda p: p.data_len),
    ]


class LdpcSyndromeMsg(_LdpcBody):
    """A → B: the syndrome of every key frame of the block (qkdnet.link.ldpc)."""

    name = "LINK_LDPC_SYNDROME"


class LdpcRequestMsg(_LdpcBody):
    """B → A: one bit per frame decoded this round: 1 = it failed, reveal more."""

    name = "LINK_LDPC_REQUEST"


class LdpcReplyMsg(_LdpcBody):
    """A → B: the values of the next punctured bits of each frame that asked."""

    name = "LINK_LDPC_REPLY"


class ParityRequestMsg(_Body):
    """B → A: one batched Cascade request: ranges [start, end) in the permuted order
    of pass ``passes[i]``; ``step`` counts requests from 0."""

    name = "LINK_PARITY_REQUEST"
    fields_desc = [  # noqa: RUF012
        IntField("block", 0),
        ShortField("step", 0),
        IntField("n_ranges", 0),
        FieldLenField("passes_len", None, length_of="passes", fmt="!I"),
        StrLenField("passes", b"", length_from=lambda p: p.passes_len),
        FieldLenField("starts_len", None, length_of="starts", fmt="!I"),
        StrLenField("starts", b"", length_from=lambda p: p.starts_len),
        FieldLenField("ends_len", None, length_of="ends", fmt="!I"),
        StrLenField("ends", b"", length_from=lambda p: p.ends_len),
    ]


class ParityReplyMsg(_Body):
    """A → B: the parity of each requested range (packed); every bit is leakage."""

    name = "LINK_PARITY_REPLY"
    summary_fields = ("leaked_bits",)
    fields_desc = [  # noqa: RUF012
        IntField("block", 0),
        ShortField("step", 0),
        IntField("leaked_bits", 0),  # number of parities
        FieldLenField("parities_len", None, length_of="parities", fmt="!I"),
        StrLenField("parities", b"", length_from=lambda p: p.parities_len),
    ]


class VerifyMsg(_Body):
    """B → A: Z errors Cascade corrected per intensity, and a universal-hash seed and
    tag of Bob's corrected key (tag_bits from ε_cor and the key length)."""

    name = "LINK_VERIFY"
    fields_desc = [  # noqa: RUF012
        IntField("block", 0),
        IntField("m_z0", 0),
        IntField("m_z1", 0),
        IntField("m_z2", 0),
        ShortField("tag_bits", 0),
        FieldLenField("seed_len", None, length_of="seed", fmt="!H"),
        StrLenField("seed", b"", length_from=lambda p: p.seed_len),
        FieldLenField("tag_len", None, length_of="tag", fmt="!H"),
        StrLenField("tag", b"", length_from=lambda p: p.tag_len),
    ]


class PaMsg(_Body):
    """A → B: privacy amplification: Toeplitz seed (n_in + ℓ − 1 bits), the final
    length ℓ, and how many of the ℓ bits top up each auth pool (A→B, B→A)."""

    name = "LINK_PA"
    summary_fields = ("final_key_bits",)
    fields_desc = [  # noqa: RUF012
        IntField("block", 0),
        IntField("n_in", 0),
        IntField("final_key_bits", 0),
        IntField("auth_ab", 0),
        IntField("auth_ba", 0),
        FieldLenField("seed_len", None, length_of="seed", fmt="!I"),
        StrLenField("seed", b"", length_from=lambda p: p.seed_len),
    ]


class BlockDoneMsg(_Body):
    """B → A: Bob holds the final key of the block and is ready to store it."""

    name = "LINK_BLOCK_DONE"
    fields_desc = [IntField("block", 0)]  # noqa: RUF012


class ConfirmMsg(_Body):
    """A → B: Alice stored the block; Bob stores it on receipt."""

    name = "LINK_CONFIRM"
    fields_desc = [IntField("block", 0)]  # noqa: RUF012


class AbortMsg(_Body):
    """Either way: the block is abandoned (``reason`` an AbortReason); nothing of it
    is stored."""

    name = "LINK_ABORT"
    fields_desc = [  # noqa: RUF012
        IntField("block", 0),
        ByteEnumField("reason", int(AbortReason.LOCAL), {int(r): r.word for r in AbortReason}),
    ]


#: Body class of each link message type.
BODIES: dict[LinkMsg, type[Packet]] = {
    LinkMsg.BLOCK_START: BlockStart,
    LinkMsg.DETECTIONS: DetectionsMsg,
    LinkMsg.SIFT: SiftMsg,
    LinkMsg.ESTIMATE: EstimateMsg,
    LinkMsg.ESTIMATE_RESULT: EstimateResultMsg,
    LinkMsg.PARITY_REQUEST: ParityRequestMsg,
    LinkMsg.PARITY_REPLY: ParityReplyMsg,
    LinkMsg.VERIFY: VerifyMsg,
    LinkMsg.PA: PaMsg,
    LinkMsg.BLOCK_DONE: BlockDoneMsg,
    LinkMsg.CONFIRM: ConfirmMsg,
    LinkMsg.ABORT: AbortMsg,
    LinkMsg.LDPC_SYNDROME: LdpcSyndromeMsg,
    LinkMsg.LDPC_REQUEST: LdpcRequestMsg,
    LinkMsg.LDPC_REPLY: LdpcReplyMsg,
}
_TYPE_OF: dict[type[Packet], LinkMsg] = {cls: t for t, cls in BODIES.items()}


def msg_type(body: Packet) -> LinkMsg:
    """The link message type of a body packet (raises LocalProtocolError-free KeyError)."""
    return _TYPE_OF[type(body)]


for _t, _cls in BODIES.items():
    bind_layers(QkdHeader, _cls, type=int(_t))

#: The exchange messages of a block, sent under deferred authentication (spec/link.md
#: §2, "Authentication"): nothing irreversible is done on any of them before a tagged
#: frame of the same direction has authenticated it — BLOCK_START, VERIFY, PA,
#: BLOCK_DONE, CONFIRM and ABORT are always tagged and are the block's checkpoints.
DEFERRED_MSGS = frozenset({
    LinkMsg.DETECTIONS, LinkMsg.SIFT, LinkMsg.ESTIMATE, LinkMsg.ESTIMATE_RESULT,
    LinkMsg.PARITY_REQUEST, LinkMsg.PARITY_REPLY,
    LinkMsg.LDPC_SYNDROME, LinkMsg.LDPC_REQUEST, LinkMsg.LDPC_REPLY,
})
allow_deferred(int(t) for t in DEFERRED_MSGS)


def parse_body(msg_type_value: int, body: Packet | bytes) -> Packet:
    """Return the typed body for a received frame, dissecting raw bytes if needed.

    Raises RemoteProtocolError if the type is not a link type or the body is
    truncated or carries trailing bytes.
    """
    try:
        t = LinkMsg(msg_type_value)
    except ValueError:
        raise _bad(f"unknown link message type 0x{msg_type_value:02x}",
                   ErrorCode.UNKNOWN_MESSAGE_TYPE) from None
    cls = BODIES[t]
    if isinstance(body, cls):
        pkt = body
        raw_len = None
    else:
        data = bytes(body)
        raw_len = len(data)
        try:
            pkt = cls(data)
        except Exception as err:  # scapy raises assorted errors on short input
            raise _bad(f"{t.name}: malformed body ({type(err).__name__})",
                       ErrorCode.MALFORMED_FRAME) from None
    _check_complete(t, pkt, raw_len)
    return pkt


def _check_complete(t: LinkMsg, pkt: Packet, raw_len: int | None) -> None:
    """Reject truncated bodies and bodies with bytes beyond their declared fields."""
    if raw_len == 0:
        raise _bad(f"{t.name}: empty body", ErrorCode.MALFORMED_FRAME)
    if raw_len is not None:
        extra = len(bytes(pkt.payload)) if pkt.payload else 0
        if extra:
            raise _bad(f"{t.name}: {extra} trailing bytes", ErrorCode.MALFORMED_FRAME)
    for f in pkt.fields_desc:
        if isinstance(f, FieldLenField):
            declared = pkt.getfieldval(f.name)
            if declared is None:
                continue
            got = len(pkt.getfieldval(str(f.length_of)))
            if got != declared:
                raise _bad(f"{t.name}: field {f.length_of} truncated ({got} of {declared} bytes)",
                           ErrorCode.MALFORMED_FRAME)
        elif pkt.getfieldval(f.name) is None:
            raise _bad(f"{t.name}: body truncated", ErrorCode.MALFORMED_FRAME)
    if pkt.getfieldval("block") > MAX_BLOCK_INDEX:
        raise _bad(f"{t.name}: block index out of range")


# --------------------------------------------------------------------------------------
# Bit packing helpers (numpy, MSB first as numpy.packbits)


def pack_bits(bits: np.ndarray) -> bytes:
    """Pack a 0/1 uint8 array MSB first."""
    return np.packbits(np.asarray(bits, dtype=np.uint8)).tobytes()


def unpack_bits(data: bytes, n: int, what: str) -> np.ndarray:
    """Unpack exactly ``n`` bits; the byte count and the pad bits must be right."""
    if len(data) != (n + 7) // 8:
        raise _bad(f"{what}: {len(data)} bytes for {n} bits")
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
    if n % 8 and bits[n:].any():
        raise _bad(f"{what}: non-zero pad bits")
    return bits[:n]


def pack_2bit(values: np.ndarray) -> bytes:
    """Pack values 0..3 four to a byte, first value in the top two bits."""
    v = np.asarray(values, dtype=np.uint8)
    pad = (-len(v)) % 4
    if pad:
        v = np.concatenate([v, np.zeros(pad, dtype=np.uint8)])
    q = v.reshape(-1, 4)
    return ((q[:, 0] << 6) | (q[:, 1] << 4) | (q[:, 2] << 2) | q[:, 3]).astype(np.uint8).tobytes()


def unpack_2bit(data: bytes, n: int, what: str) -> np.ndarray:
    """Inverse of :func:`pack_2bit`; exact byte count and zero padding required."""
    if len(data) != (n + 3) // 4:
        raise _bad(f"{what}: {len(data)} bytes for {n} two-bit values")
    b = np.frombuffer(data, dtype=np.uint8)
    q = np.stack([(b >> 6) & 3, (b >> 4) & 3, (b >> 2) & 3, b & 3], axis=1).reshape(-1)
    if q[n:].any():
        raise _bad(f"{what}: non-zero padding")
    return q[:n].astype(np.uint8)


# --------------------------------------------------------------------------------------
# Encoders / decoders per message


def encode_block_start(block: int, start_slot: int, n_slots: int, n_intensities: int,
                       eps_sec: float, eps_cor: float, qber_max: float) -> Packet:
    """BLOCK_START body."""
    return BlockStart(block=block, start_slot=start_slot, n_slots=n_slots,
                      n_intensities=n_intensities, eps_sec=eps_sec, eps_cor=eps_cor,
                      qber_max=qber_max)


def check_block_start(pkt: Packet) -> None:
    """Validate BLOCK_START against the protocol limits."""
    if not 0 < pkt.n_slots <= MAX_BLOCK_SLOTS:
        raise _bad(f"BLOCK_START: n_slots {pkt.n_slots} out of range")
    if pkt.start_slot + pkt.n_slots > SLOT_LIMIT:
        raise _bad("BLOCK_START: slot range ends beyond 2^60")
    if pkt.n_intensities not in (2, 3):
        raise _bad(f"BLOCK_START: {pkt.n_intensities} intensities (expected 2 or 3)")
    for name in ("eps_sec", "eps_cor"):
        v = pkt.getfieldval(name)
        if not 0.0 < v < 1.0:
            raise _bad(f"BLOCK_START: {name} out of (0, 1)")
    if not 0.0 < pkt.qber_max <= 0.5:
        raise _bad("BLOCK_START: qber_max out of (0, 0.5]")


def encode_detections(block: int, offsets: np.ndarray, bases: np.ndarray,
                      chunk: int = CLICKS_PER_CHUNK) -> list[Packet]:
    """DETECTIONS bodies (one per chunk) from sorted click offsets within the block."""
    off = np.asarray(offsets, dtype=np.uint64)
    total = len(off)
    out: list[Packet] = []
    for first in range(0, max(total, 1), chunk):
        o = off[first:first + chunk]
        deltas = np.diff(o) if len(o) > 1 else np.zeros(0, dtype=np.uint64)
        top = int(deltas.max()) if len(deltas) else 0
        width = 1 if top < 1 << 8 else 2 if top < 1 << 16 else 4 if top < 1 << 32 else 8
        out.append(DetectionsMsg(
            block=block, total=total, first=first, n_clicks=len(o),
            first_offset=int(o[0]) if len(o) else 0, width=width,
            deltas=deltas.astype(f">u{width}").tobytes(),
            bases=pack_bits(bases[first:first + chunk])))
    return out


def decode_detections(pkt: Packet, n_slots: int, received: int, last_offset: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(offsets uint64, Bob's bases uint8) of one DETECTIONS chunk, validated.

    ``received`` is the number of clicks already reported for the block and
    ``last_offset`` the offset of the last of them (-1 if none): chunks must arrive
    in order and slots must strictly increase across chunks.
    """
    n = pkt.n_clicks
    if pkt.total > min(MAX_CLICKS, n_slots):
        raise _bad(f"DETECTIONS: {pkt.total} clicks exceeds the limit")
    if pkt.first != received:
        raise _bad(f"DETECTIONS: chunk starts at click {pkt.first}, expected {received}")
    if n > CLICKS_PER_CHUNK or received + n > pkt.total or (n == 0 and pkt.total != 0):
        raise _bad(f"DETECTIONS: chunk of {n} clicks does not fit the report")
    if pkt.width not in (1, 2, 4, 8):
        raise _bad(f"DETECTIONS: delta width {pkt.width}")
    if len(pkt.deltas) != max(n - 1, 0) * pkt.width:
        raise _bad(f"DETECTIONS: {len(pkt.deltas)} delta bytes for {n} clicks")
    if n == 0:
        unpack_bits(pkt.bases, 0, "DETECTIONS bases")
        return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.uint8)
    first = int(pkt.first_offset)
    if first >= n_slots or first <= last_offset:
        raise _bad("DETECTIONS: slot index out of range or not increasing")
    deltas = np.frombuffer(pkt.deltas, dtype=f">u{pkt.width}").astype(np.uint64)
    if len(deltas) and not (deltas > 0).all():
        raise _bad("DETECTIONS: slots not strictly increasing")
    # Bound each gap before summing so the cumulative sum cannot wrap.
    if len(deltas) and int(deltas.max()) >= n_slots:
        raise _bad("DETECTIONS: slot index out of range")
    offsets = np.empty(n, dtype=np.uint64)
    offsets[0] = first
    np.cumsum(deltas, out=offsets[1:])
    offsets[1:] += np.uint64(first)
    if int(offsets[-1]) >= n_slots:
        raise _bad("DETECTIONS: slot index out of range")
    bases = unpack_bits(pkt.bases, n, "DETECTIONS bases")
    return offsets, bases


def encode_sift(block: int, keep: np.ndarray, intensities_kept: np.ndarray) -> Packet:
    """SIFT body: keep mask over the clicks, intensity index of each kept slot."""
    return SiftMsg(block=block, n_clicks=len(keep), n_kept=len(intensities_kept),
                   keep=pack_bits(keep), intensities=pack_2bit(intensities_kept))


def decode_sift(pkt: Packet, n_clicks: int, n_intensities: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """(keep mask bool, intensity per kept slot) validated against the reported clicks."""
    if pkt.n_clicks != n_clicks:
        raise _bad(f"SIFT: keep mask for {pkt.n_clicks} clicks, {n_clicks} reported")
    keep = unpack_bits(pkt.keep, n_clicks, "SIFT keep mask").astype(bool)
    n_kept = int(np.count_nonzero(keep))
    if pkt.n_kept != n_kept:
        raise _bad(f"SIFT: n_kept {pkt.n_kept} but the mask keeps {n_kept}")
    intens = unpack_2bit(pkt.intensities, n_kept, "SIFT intensities")
    if n_kept and int(intens.max()) >= n_intensities:
        raise _bad("SIFT: intensity index out of range")
    return keep, intens


def encode_estimate(block: int, bits: np.ndarray) -> Packet:
    """ESTIMATE body: Bob's bits at the kept X-basis slots."""
    return EstimateMsg(block=block, n_bits=len(bits), bits=pack_bits(bits))


def decode_estimate(pkt: Packet, n_x: int) -> np.ndarray:
    """Bob's X-basis bits; their number must equal the kept X slots."""
    if pkt.n_bits != n_x:
        raise _bad(f"ESTIMATE: {pkt.n_bits} bits for {n_x} X-basis slots")
    return unpack_bits(pkt.bits, n_x, "ESTIMATE bits")


def encode_estimate_result(block: int, m_x: np.ndarray, qber: float, cascade_seed: int,
                           method: Reconciliation = Reconciliation.CASCADE) -> Packet:
    """ESTIMATE_RESULT body: X errors per intensity, the QBER reconciliation plans for,
    its seed and the method."""
    m = [int(v) for v in m_x] + [0] * (3 - len(m_x))
    return EstimateResultMsg(block=block, m_x0=m[0], m_x1=m[1], m_x2=m[2], qber=qber,
                             cascade_seed=cascade_seed, method=int(method))


def decode_method(pkt: Packet) -> Reconciliation:
    """The reconciliation method an ESTIMATE_RESULT names."""
    try:
        return Reconciliation(int(pkt.method))
    except ValueError:
        raise _bad(f"ESTIMATE_RESULT: unknown reconciliation method {pkt.method}") from None


def encode_ldpc(msg: LinkMsg, block: int, data: bytes) -> Packet:
    """An LDPC_SYNDROME / LDPC_REQUEST / LDPC_REPLY body around the algorithm's bytes
    (their layout is qkdnet.link.ldpc's, validated there)."""
    cls = {LinkMsg.LDPC_SYNDROME: LdpcSyndromeMsg, LinkMsg.LDPC_REQUEST: LdpcRequestMsg,
           LinkMsg.LDPC_REPLY: LdpcReplyMsg}[msg]
    return cls(block=block, data=bytes(data))


def decode_estimate_result(pkt: Packet, n_x: np.ndarray) -> tuple[np.ndarray, float, int]:
    """(m_x per intensity, qber, cascade seed) checked against the X counts per intensity."""
    k = len(n_x)
    m = np.array([pkt.m_x0, pkt.m_x1, pkt.m_x2], dtype=np.int64)
    if (m[k:] != 0).any() or (m[:k] > n_x).any():
        raise _bad("ESTIMATE_RESULT: error counts exceed the X-basis counts")
    if not 0.0 <= pkt.qber <= 0.5:
        raise _bad("ESTIMATE_RESULT: qber out of [0, 0.5]")
    return m[:k], float(pkt.qber), int(pkt.cascade_seed)


def encode_parity_request(block: int, step: int, passes: np.ndarray, starts: np.ndarray,
                          ends: np.ndarray) -> Packet:
    """PARITY_REQUEST body: one batched Cascade step as (pass, start, end) triples."""
    return ParityRequestMsg(
        block=block, step=step & 0xFFFF, n_ranges=len(starts),
        passes=np.asarray(passes, dtype=np.uint8).tobytes(),
        starts=np.asarray(starts, dtype=">u4").tobytes(),
        ends=np.asarray(ends, dtype=">u4").tobytes())


def decode_parity_request(pkt: Packet, n_bits: int, n_passes: int
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(passes, starts, ends) with every range inside the key and every pass known."""
    n = pkt.n_ranges
    if not 0 < n <= MAX_RANGES:
        raise _bad(f"PARITY_REQUEST: {n} ranges")
    if len(pkt.passes) != n or len(pkt.starts) != 4 * n or len(pkt.ends) != 4 * n:
        raise _bad(f"PARITY_REQUEST: list lengths do not match {n} ranges")
    passes = np.frombuffer(pkt.passes, dtype=np.uint8).astype(np.int64)
    starts = np.frombuffer(pkt.starts, dtype=">u4").astype(np.int64)
    ends = np.frombuffer(pkt.ends, dtype=">u4").astype(np.int64)
    if (passes >= n_passes).any():
        raise _bad("PARITY_REQUEST: pass index out of range")
    if (starts >= ends).any() or (ends > n_bits).any():
        raise _bad("PARITY_REQUEST: range out of the key")
    return passes, starts, ends


def encode_parity_reply(block: int, step: int, parities: np.ndarray) -> Packet:
    """PARITY_REPLY body from a 0/1 array of parities."""
    return ParityReplyMsg(block=block, step=step & 0xFFFF, leaked_bits=len(parities),
                          parities=pack_bits(parities))


def decode_parity_reply(pkt: Packet, step: int, n_expected: int) -> np.ndarray:
    """Parities (0/1 uint8) answering the outstanding request of ``n_expected`` ranges."""
    if pkt.step != step & 0xFFFF:
        raise _bad(f"PARITY_REPLY: step {pkt.step}, expected {step & 0xFFFF}")
    if pkt.leaked_bits != n_expected:
        raise _bad(f"PARITY_REPLY: {pkt.leaked_bits} parities for {n_expected} ranges")
    return unpack_bits(pkt.parities, n_expected, "PARITY_REPLY parities")


def encode_verify(block: int, m_z: np.ndarray, tag_bits: int, seed: bytes, tag: bytes
                  ) -> Packet:
    """VERIFY body: key-basis errors Cascade corrected per intensity, hash seed and tag."""
    m = [int(v) for v in m_z] + [0] * (3 - len(m_z))
    return VerifyMsg(block=block, m_z0=m[0], m_z1=m[1], m_z2=m[2], tag_bits=tag_bits,
                     seed=seed, tag=tag)


def decode_verify(pkt: Packet, n_z: np.ndarray, tag_bits: int
                  ) -> tuple[np.ndarray, bytes, bytes]:
    """(m_z per intensity, seed, tag); counts within the Z counts, tag of the agreed size."""
    k = len(n_z)
    m = np.array([pkt.m_z0, pkt.m_z1, pkt.m_z2], dtype=np.int64)
    if (m[k:] != 0).any() or (m[:k] > n_z).any():
        raise _bad("VERIFY: error counts exceed the key-basis counts")
    if pkt.tag_bits != tag_bits or len(pkt.tag) != (tag_bits + 7) // 8:
        raise _bad(f"VERIFY: tag of {pkt.tag_bits} bits, expected {tag_bits}")
    if not 0 < len(pkt.seed) <= MAX_SEED_BYTES:
        raise _bad("VERIFY: seed length out of range")
    return m[:k], bytes(pkt.seed), bytes(pkt.tag)


def encode_pa(block: int, n_in: int, ell: int, auth_ab: int, auth_ba: int,
              seed_bits: np.ndarray) -> Packet:
    """PA body: Toeplitz seed (n_in + ell - 1 bits), ell and the auth top-up split."""
    return PaMsg(block=block, n_in=n_in, final_key_bits=ell, auth_ab=auth_ab, auth_ba=auth_ba,
                 seed=pack_bits(seed_bits))


def decode_pa(pkt: Packet, n_in: int) -> tuple[int, int, int, np.ndarray]:
    """(ell, auth_ab, auth_ba, seed bits) validated against the corrected key length."""
    if pkt.n_in != n_in:
        raise _bad(f"PA: input length {pkt.n_in}, expected {n_in}")
    ell = pkt.final_key_bits
    if not 0 < ell <= n_in:
        raise _bad(f"PA: output length {ell} out of (0, {n_in}]")
    if pkt.auth_ab + pkt.auth_ba > ell:
        raise _bad("PA: auth top-up larger than the block")
    seed = unpack_bits(pkt.seed, n_in + ell - 1, "PA seed")
    return ell, int(pkt.auth_ab), int(pkt.auth_ba), seed


def encode_abort(block: int, reason: AbortReason) -> Packet:
    """ABORT body."""
    return AbortMsg(block=block, reason=int(reason))


def decode_abort(pkt: Packet) -> AbortReason:
    """The peer's abort reason (unknown codes map to PROTOCOL)."""
    try:
        return AbortReason(pkt.reason)
    except ValueError:
        return AbortReason.PROTOCOL
