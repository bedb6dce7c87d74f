"""SecureStream: a trio byte stream encrypted with a one-time pad and authenticated
with Wegman–Carter tags, over any transport stream.

Theory of operation
-------------------
The shape is trio's ``SSLStream``: a sans-I/O core (:class:`SecureStreamCore`) turns
plaintext plus key into frames and frames plus key into plaintext; the trio adapter
(:class:`SecureStream`) moves frames over a transport ``trio.abc.Stream`` and keeps
the state machine (OK / BROKEN / CLOSED) and the conflict detectors.

Per direction, a stream draws key from a :class:`StreamKeys` source: the sender
``reserve``\\s bits (each bit handed out once, durably), the receiver ``take``\\s the
same bits by reference (each bit accepted once). Every frame names the key it uses,
so the two ends never need to agree on a position in a pool.

Each frame (apps/wire.py) of a direction consumes, in this order::

    r  16 bytes   first frame of the direction only: the Poly1305 hash key, kept
    s  16 bytes   fresh per frame: one-time pad of the tag
    k  n bytes    one-time pad of the n payload bytes

ciphertext = payload XOR k; tag = Poly1305(r ‖ s) over N_rx ‖ every byte of the
frame before the tag (encrypt-then-MAC), where N_rx is the 16-byte nonce the
*receiving* end sent in its STREAM_NONCE frame. With ``r`` recycled and ``s``
fresh, this is the Wegman–Carter construction with key recycling (Portmann, IEEE
TIT 60, 2014): the forgery probability per frame is at most 8⌈L/16⌉/2^106 for an
L-byte frame (Bernstein 2005), adding up linearly over the frames of a stream. The
pad is information-theoretically secure as long as no key bit is used twice, which
the key source enforces at both ends.

Check before spending: the receiver *peeks* the key a frame names (``r``, ``s`` and
the pad), checks the tag, and *takes* the key from its pool only if the tag is good,
so a forged frame costs the receiver no key. The peek needs a key source with
``peek`` (see :func:`peek_function`); with a source that has only ``take``, the key
is taken first as before (a forged frame then burns what it names).

Speed (bench/apps): the receiver opens a frame as its bytes arrive. Once the length,
header and key references are in it checks them and peeks the key; then every piece
of ciphertext goes through Poly1305 (incrementally) and is XORed into the plaintext
buffer straight from the transport's read, so a frame split across reads is never
reassembled. The plaintext is handed out only after the tag has verified and the key
has been taken. Key travels as views of the pool's blocks (``parts`` of a grant,
``peek_parts``/``consume`` of a source) wherever the source offers them, so neither
end copies key before XORing it. The sender writes header, ciphertext and tag into
one uninitialised buffer and MACs it in one call. So each payload byte is touched the
least the construction allows: the sender reads it and its key and writes and MACs
the ciphertext; the receiver MACs the ciphertext and reads it and its key to write
the plaintext. Those passes (about 0.1 ms per MiB each for Poly1305 and for the XOR
with key fresh from memory, per end, on the bench machine) are what bounds the ratio
to plain TCP, not Python: with both ends on one thread it cannot pass about 0.35.
Poly1305 (cryptography) holds the GIL, so it cannot move to a worker thread.

Freshness: each end's first transport bytes are a STREAM_NONCE frame with 16 random
bytes (drawn by the adapter with ``secrets``; the core takes them as an argument).
Sequence numbers, the session id and the key references stop replays *within* a
stream, but a frame an attacker withheld from an earlier stream with the same
session id names key the receiver never took and carries a genuine tag; because the
tag covers the receiver's nonce, which is fresh for every stream, such a frame fails
the tag check in any later stream (spec/apps.md §3). The nonce costs no key. The
hop-secured mode (:class:`HopSecuredCore`) sends no nonce: the hub connection's hop
authentication, bound to that connection's HELLO nonces, gives it the same property.

The header's ``seq`` counts frames per direction from 0; anything else is a replay or
reordering. End of stream is a STREAM_EOF frame, tagged like data, so a transport
that closes without one is a truncation. Every violation breaks the stream: the
adapter raises ``trio.BrokenResourceError`` whose message names the reason (and whose
``__cause__`` is the :class:`~qkdnet.errors.RemoteProtocolError` with its code).

Key cost: 8·n + 128 bits per n-byte frame (+128 once; the nonces cost none), so
with 1 MiB frames a bulk transfer spends 1.00002 key bits per payload bit. (A 1 MiB
frame with the most key references a receiver accepts, ``wire.MAX_REFS``, still
fits ``MAX_FRAME_SIZE``.)
"""

from __future__ import annotations

import collections
import enum
import math
import operator
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import trio
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.poly1305 import Poly1305

from qkdnet.apps import wire
from qkdnet.apps.wire import AppMsgType, KeyRef
from qkdnet.errors import (
    AuthenticationError,
    ErrorCode,
    KeyExhausted,
    LocalProtocolError,
    RemoteProtocolError,
)

#: Payload bytes per frame for bulk data: big, so the per-frame 128-bit tag key, the
#: 50 bytes of framing and the per-frame Python work are negligible (bench/apps: 1 MiB
#: beat 256 and 512 KiB by 5-15 %). Smaller writes make smaller frames.
DEFAULT_FRAME_PAYLOAD = 1 << 20
#: Largest frame a receiver accepts before buffering it (protects memory).
MAX_FRAME_SIZE = (1 << 20) + 8192
#: One reservation covers at most this many key bits (bigger sends take several).
MAX_GRANT_BITS = 1 << 25
#: Bytes asked of the transport per read.
RECEIVE_SIZE = 1 << 20

TAG_KEY_BYTES = 16
HASH_KEY_BYTES = 16


# ---- key sources -----------------------------------------------------------------------


class KeyGrantLike(Protocol):
    """What a key source hands a sender: segments (block_id, offset, n_bits) and data."""

    @property
    def segments(self) -> Sequence[Any]: ...

    @property
    def data(self) -> bytes: ...


class StreamKeys(Protocol):
    """Key for one stream: the sender's pool (tx) and the receiver's pool (rx).

    Backed by the key store pools ``(peer, "e2e-tx")``/``(peer, "e2e-rx")`` in
    :class:`qkdnet.apps.keys.KeyStoreStreamKeys`, or by memory for tests.
    """

    def reserve(self, n_bits: int) -> KeyGrantLike:
        """Hand out ``n_bits`` fresh tx bits now, or raise KeyExhausted."""
        ...

    async def wait_reserve(self, n_bits: int, deadline: float) -> KeyGrantLike:
        """Like :meth:`reserve` but wait for key until ``deadline`` (trio clock)."""
        ...

    def take(self, refs: Sequence[KeyRef]) -> bytes:
        """Return the rx bits named by ``refs``; KeyReuseError if any was taken before."""
        ...

    def available(self) -> int:
        """Tx bits that could be reserved now."""
        ...


def check_frame_size(size: int, max_frame_size: int) -> int:
    """``size`` (of a whole frame, length prefix included) if a frame may be that big,
    else RemoteProtocolError."""
    if size > max_frame_size:
        raise RemoteProtocolError(f"frame of {size} bytes exceeds {max_frame_size}",
                                  ErrorCode.FRAME_TOO_LARGE)
    if size < wire.HEADER_SIZE + wire.TAG_SIZE:
        raise RemoteProtocolError(f"frame of {size} bytes is shorter than its header",
                                  ErrorCode.MALFORMED_FRAME)
    return size


def check_stream_header(head: wire.FrameHeader, allowed_types: tuple[int, ...], *,
                        eof_received: bool, session: int, expected_seq: int) -> None:
    """Refuse a stream frame of the wrong type, after EOF, of another stream, or out of order.

    These checks come before any key is looked at, so a replay costs the receiver nothing.
    """
    if head.type not in allowed_types:
        raise RemoteProtocolError(f"unexpected message type {head.type:#x} in a stream",
                                  ErrorCode.UNKNOWN_MESSAGE_TYPE)
    if eof_received:
        raise RemoteProtocolError("frame after end of stream", ErrorCode.PROTOCOL_VIOLATION)
    if head.session != session:
        raise RemoteProtocolError("frame belongs to another stream",
                                  ErrorCode.PROTOCOL_VIOLATION)
    if head.seq != expected_seq:
        kind = "replayed" if head.seq < expected_seq else "reordered or dropped"
        raise RemoteProtocolError(f"frame {kind}: sequence {head.seq}, expected {expected_seq}",
                                  ErrorCode.REPLAY_OR_REORDER)


def peek_function(keys: object) -> Any:
    """A ``peek(refs) -> bytes`` for ``keys``: the rx bits ``take`` would return, unconsumed.

    Uses ``keys.peek`` if the source has one; for a source on the durable key store
    (``store``/``peer``/``rx_purpose`` attributes, like
    :class:`qkdnet.apps.keys.KeyStoreStreamKeys`) it calls ``KeyStore.peek``. Returns
    ``None`` for a source that can only ``take``.
    """
    peek = getattr(keys, "peek", None)
    if callable(peek):
        return peek
    store = getattr(keys, "store", None)
    peer = getattr(keys, "peer", None)
    purpose = getattr(keys, "rx_purpose", None)
    store_peek = getattr(store, "peek", None)
    if callable(store_peek) and isinstance(peer, str) and isinstance(purpose, str):
        from qkdnet.keystore import KeySegment

        def peek_store(refs: Sequence[KeyRef]) -> bytes:
            data: bytes = store_peek(peer, purpose,
                                     [KeySegment(r.block_id, r.offset, r.n_bits) for r in refs])
            return data

        return peek_store
    return None


class KeyCursor:
    """Carves whole bytes off the front of a grant, with the references of each piece.

    The grant's key is the packed concatenation of its segments, so a piece of ``k``
    bytes starting at byte ``p`` is bits ``8p … 8(p+k)`` of that concatenation. A grant
    with ``parts`` (one buffer per segment, as :class:`~qkdnet.apps.keys.MemoryGrant`)
    is carved without ever joining the parts: :meth:`carve_parts` returns views.
    """

    __slots__ = ("_parts", "_segs")

    def __init__(self, grant: KeyGrantLike) -> None:
        self._segs: list[list[int]] = [[s.block_id, s.offset, s.n_bits] for s in grant.segments]
        parts = getattr(grant, "parts", None)
        self._parts: collections.deque[memoryview] = collections.deque(
            memoryview(p).cast("B") for p in (parts if parts is not None else (grant.data,)))

    def __repr__(self) -> str:  # never show key bytes
        return f"KeyCursor(remaining_bytes={self.remaining})"

    @property
    def remaining(self) -> int:
        """Whole bytes not yet carved."""
        return sum(s[2] for s in self._segs) // 8

    def bytes_within(self, max_segments: int) -> int:
        """Whole bytes the next carve can take while naming at most ``max_segments``."""
        return sum(s[2] for s in self._segs[:max_segments]) // 8

    def carve_parts(self, n_bytes: int) -> tuple[list[KeyRef], list[memoryview]]:
        """The next ``n_bytes`` of key as views, and the references naming those bits."""
        need = 8 * n_bytes
        refs: list[KeyRef] = []
        while need:
            if not self._segs:
                raise LocalProtocolError("key grant used beyond its length")
            seg = self._segs[0]
            take = min(need, seg[2])
            refs.append(KeyRef(seg[0], seg[1], take))
            seg[1] += take
            seg[2] -= take
            need -= take
            if seg[2] == 0:
                self._segs.pop(0)
        pieces: list[memoryview] = []
        need = n_bytes
        while need:
            head = self._parts[0]
            if len(head) <= need:
                pieces.append(self._parts.popleft())
                need -= len(head)
            else:
                pieces.append(head[:need])
                self._parts[0] = head[need:]
                need = 0
        return refs, pieces

    def carve(self, n_bytes: int) -> tuple[list[KeyRef], bytes | memoryview]:
        """The next ``n_bytes`` of key in one buffer and the references naming them."""
        refs, pieces = self.carve_parts(n_bytes)
        return refs, pieces[0] if len(pieces) == 1 else b"".join(pieces)


def _split_key(pieces: list[memoryview], n: int) -> tuple[bytes, list[memoryview]]:
    """The first ``n`` bytes of a list of key views (copied: r or s) and the rest."""
    first = pieces[0]
    if len(first) > n:  # the usual case: one slice, no loop
        return bytes(first[:n]), [first[n:], *pieces[1:]]
    head = bytearray()
    rest = list(pieces)
    while len(head) < n:
        first = rest.pop(0)
        k = n - len(head)
        head += first[:k]
        if len(first) > k:
            rest.insert(0, first[k:])
    return bytes(head), rest


def _xor_pad(arr_out: np.ndarray[Any, Any], data: bytes | memoryview,
             pad: list[memoryview]) -> None:
    """``arr_out = data XOR pad``, the pad given as views (no join), one numpy call each."""
    pos = 0
    arr_in = np.frombuffer(data, np.uint8)
    for piece in pad:
        n = len(piece)
        np.bitwise_xor(arr_in[pos:pos + n], np.frombuffer(piece, np.uint8),
                       out=arr_out[pos:pos + n])
        pos += n


class FrameAssembler:
    """Cuts a byte stream into whole frames with as few copies as possible.

    Frames wholly inside one read are handed on as memoryviews of that read (no
    copy); a frame split across reads is gathered into one preallocated buffer of
    its announced size (one copy). The size is checked before anything is buffered.
    """

    __slots__ = ("_fill", "_hdr", "_partial", "max_frame_size")

    def __init__(self, max_frame_size: int) -> None:
        self.max_frame_size = max_frame_size
        self._hdr = bytearray()
        self._partial: bytearray | None = None
        self._fill = 0

    def feed(self, data: bytes | bytearray | memoryview) -> list[memoryview]:
        """Whole frames completed by ``data``, in order."""
        view = memoryview(data).cast("B")
        out: list[memoryview] = []
        while view:
            if self._partial is not None:
                k = min(len(self._partial) - self._fill, len(view))
                self._partial[self._fill:self._fill + k] = view[:k]
                self._fill += k
                view = view[k:]
                if self._fill == len(self._partial):
                    out.append(memoryview(self._partial))
                    self._partial = None
                continue
            if self._hdr or len(view) < 4:
                k = min(4 - len(self._hdr), len(view))
                self._hdr += view[:k]
                view = view[k:]
                if len(self._hdr) < 4:
                    break
                size = int.from_bytes(self._hdr, "big") + 4
                check_frame_size(size, self.max_frame_size)
                self._partial = bytearray(size)
                self._partial[:4] = self._hdr
                self._fill = 4
                self._hdr = bytearray()
                continue
            size = int.from_bytes(view[:4], "big") + 4
            check_frame_size(size, self.max_frame_size)
            if len(view) >= size:
                out.append(view[:size])
                view = view[size:]
            else:
                self._partial = bytearray(size)
                self._partial[:len(view)] = view
                self._fill = len(view)
                view = view[len(view):]
        return out


# ---- sans-I/O core ---------------------------------------------------------------------


@dataclass
class StreamStats:
    """Counters of one stream (no key material)."""

    frames_tx: int = 0
    frames_rx: int = 0
    payload_bytes_tx: int = 0
    payload_bytes_rx: int = 0
    key_bits_tx: int = 0  # bits carved into frames we sent
    key_bits_reserved: int = 0  # bits reserved from the source (>= key_bits_tx)
    key_bits_rx: int = 0

    def key_per_payload_bit(self) -> float:
        """Key bits reserved per payload bit sent (the stream's key efficiency)."""
        return self.key_bits_reserved / max(1, 8 * self.payload_bytes_tx)


@dataclass
class SecureStreamCore:
    """Sans-I/O SecureStream: frames in and out, key via ``take`` (receiver side).

    ``seal_*`` consume key from a :class:`KeyCursor` the caller obtained from the
    sender's source; ``receive_data`` reads each frame's key with ``peek_parts`` or
    ``peek`` (if given), checks the tag, and only then calls ``consume`` or ``take``
    for the frame's references.

    Nonces: ``nonce`` (this end's, required) goes out first as :meth:`nonce_frame`;
    the first bytes fed to :meth:`receive_chunks` must be the peer's STREAM_NONCE
    frame, which sets :attr:`peer_nonce` (bytes after it in the same call are read
    as frames). Sealing needs :attr:`peer_nonce`. A core made with ``peer_nonce``
    given skips that exchange (tests, benchmarks).
    Raises :class:`RemoteProtocolError` (with an ErrorCode) on any bad input; after
    that the core must not be used again.
    """

    session: int
    take: Any  # Callable[[Sequence[KeyRef]], bytes]
    max_frame_payload: int = DEFAULT_FRAME_PAYLOAD
    max_frame_size: int = MAX_FRAME_SIZE
    stats: StreamStats = field(default_factory=StreamStats)
    _tx_seq: int = 0
    _rx_seq: int = 0
    _tx_r: bytes | None = field(default=None, repr=False)
    _rx_r: bytes | None = field(default=None, repr=False)
    eof_sent: bool = False
    eof_received: bool = False
    #: ``peek(refs)``: the bits ``take`` would return, consuming nothing (None: take first).
    peek: Any = None
    #: Optional zero-copy forms: ``peek_parts(refs)`` returns one view per reference,
    #: ``consume(refs)`` is ``take`` without building the bytes.
    peek_parts: Any = None
    consume: Any = None
    #: This end's fresh 16-byte nonce: every tag the peer sends us authenticates it.
    #: The adapter draws it from ``secrets``; the core never makes randomness.
    nonce: bytes = field(kw_only=True, repr=False)
    #: The peer's nonce, from its STREAM_NONCE frame (None until that has arrived);
    #: every tag we send authenticates it, so nothing can be sealed before it is in.
    peer_nonce: bytes | None = field(default=None, repr=False)
    _nonce_buf: bytearray = field(default_factory=bytearray, repr=False)
    # receive state: the prefix (length, header, key references) being collected,
    # then the frame being opened
    _pre: bytearray = field(default_factory=bytearray, repr=False)
    _frame_size: int = field(default=0, repr=False)
    _prefix_size: int = field(default=0, repr=False)
    _incoming: _Incoming | None = field(default=None, repr=False)
    _head: wire.FrameHeader | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if len(self.nonce) != wire.NONCE_SIZE or (
                self.peer_nonce is not None and len(self.peer_nonce) != wire.NONCE_SIZE):
            raise ValueError(f"a stream nonce is {wire.NONCE_SIZE} bytes")
        self.nonce = bytes(self.nonce)

    def __repr__(self) -> str:
        return (f"SecureStreamCore(session={self.session:#x}, tx_seq={self._tx_seq}, "
                f"rx_seq={self._rx_seq}, eof_sent={self.eof_sent}, "
                f"eof_received={self.eof_received})")

    # -- nonces

    def nonce_frame(self) -> bytes:
        """The STREAM_NONCE frame carrying :attr:`nonce`: the first bytes this end sends."""
        return wire.encode_nonce_frame(self.session, self.nonce)

    def _feed_nonce(self, view: memoryview) -> memoryview:
        """Collect the peer's STREAM_NONCE frame (the first bytes it sends); the rest
        of ``view`` is returned untouched, to be read as frames."""
        buf = self._nonce_buf
        k = min(wire.NONCE_FRAME_SIZE - len(buf), len(view))
        buf += view[:k]
        if len(buf) >= wire.NONCE_START:
            wire.check_nonce_start(buf)  # refuse anything else as soon as we can tell
        if len(buf) == wire.NONCE_FRAME_SIZE:
            self.peer_nonce = wire.decode_nonce_frame(buf, self.session)
            self._nonce_buf = bytearray()
        return view[k:]

    @property
    def nonce_bytes_pending(self) -> int:
        """Bytes of the peer's nonce frame received so far (for error messages)."""
        return len(self._nonce_buf)

    # -- sending

    def key_bytes_for(self, n_payload: int) -> int:
        """Key bytes the next frames carrying ``n_payload`` bytes (0: an EOF) consume."""
        frames = max(1, math.ceil(n_payload / self.max_frame_payload))
        first = HASH_KEY_BYTES if self._tx_r is None else 0
        return n_payload + TAG_KEY_BYTES * frames + first

    def seal_data(self, payload: bytes | memoryview, cursor: KeyCursor | None
                  ) -> list[bytes | bytearray | memoryview]:
        """Frames (one per ``max_frame_payload`` bytes) carrying ``payload``."""
        frames, n = self.seal_some(payload, cursor)
        if n < len(payload):
            raise LocalProtocolError("key grant used beyond its length")
        return frames

    def seal_some(self, payload: bytes | memoryview, cursor: KeyCursor | None
                  ) -> tuple[list[bytes | bytearray | memoryview], int]:
        """Frames carrying as much of ``payload`` as ``cursor``'s key covers, and how much.

        A frame carries up to ``max_frame_payload`` bytes, fewer if its key would
        otherwise span more than ``wire.MAX_REFS`` segments (a grant made of many small
        key blocks): then the frames are shorter, need more tag keys than
        :meth:`key_bytes_for` counted, and the caller reserves key for the rest.
        """
        if self.eof_sent:
            raise LocalProtocolError("data after end of stream")
        if cursor is None:
            raise LocalProtocolError("a SecureStream frame needs key")
        view = memoryview(payload).cast("B")
        out: list[bytes | bytearray | memoryview] = []
        pos = 0
        while pos < len(view):
            overhead = TAG_KEY_BYTES + (HASH_KEY_BYTES if self._tx_r is None else 0)
            n = min(self.max_frame_payload, len(view) - pos,
                    cursor.bytes_within(wire.MAX_REFS) - overhead)
            if n <= 0:
                break
            out.append(self._seal(AppMsgType.STREAM_DATA, view[pos:pos + n], cursor))
            pos += n
        return out, pos

    def seal_eof(self, cursor: KeyCursor | None) -> bytes | bytearray | memoryview:
        """The authenticated end-of-stream frame for this direction."""
        frame = self._seal(AppMsgType.STREAM_EOF, b"", cursor)
        self.eof_sent = True
        return frame

    def _seal(self, mtype: int, payload: bytes | memoryview, cursor: KeyCursor | None
              ) -> memoryview:
        if cursor is None:
            raise LocalProtocolError("a SecureStream frame needs key")
        if self.peer_nonce is None:
            raise LocalProtocolError("cannot seal a frame before the peer's stream nonce "
                                     "has arrived")
        first = self._tx_r is None
        n_key = len(payload) + TAG_KEY_BYTES + (HASH_KEY_BYTES if first else 0)
        refs, key = cursor.carve_parts(n_key)
        if first:
            self._tx_r, key = _split_key(key, HASH_KEY_BYTES)
        assert self._tx_r is not None
        s, pad = _split_key(key, TAG_KEY_BYTES)
        head = wire.encode_frame(mtype, self.session, self._tx_seq, refs, b"",
                                 payload_len=len(payload))
        n_head = len(head)
        end = n_head + len(payload)
        # Uninitialised (np.empty, not a zero-filled bytearray): every byte is written
        # below: header, ciphertext, tag.
        arr = np.empty(end + wire.TAG_SIZE, np.uint8)
        frame = memoryview(arr)  # type: ignore[arg-type]
        frame[:n_head] = head
        if payload:
            _xor_pad(arr[n_head:end], payload, pad)
        # The tag covers the receiver's nonce, then the frame (spec/apps.md §2): 16
        # bytes, one Poly1305 block, so the frame's own blocks keep their alignment.
        mac = Poly1305(self._tx_r + s)
        mac.update(self.peer_nonce)
        mac.update(frame[:end])
        frame[end:] = mac.finalize()
        self._tx_seq += 1
        self.stats.frames_tx += 1
        self.stats.payload_bytes_tx += len(payload)
        self.stats.key_bits_tx += 8 * n_key
        return frame

    # -- receiving

    def receive_chunks(self, data: bytes | bytearray | memoryview
                       ) -> tuple[list[bytearray], bool]:
        """Feed transport bytes; returns (plaintext chunks now available, EOF seen).

        Frames are opened as their bytes arrive (see :class:`_Incoming`): the header
        and key references are checked and the key peeked as soon as they are in,
        then each piece of ciphertext is MACed and decrypted straight out of the
        transport's buffer, so a frame split across reads is never reassembled.
        The plaintext of a frame is returned only after its tag has verified.
        """
        view = memoryview(data).cast("B")
        out: list[bytearray] = []
        while view:
            if self.peer_nonce is None:
                view = self._feed_nonce(view)
                continue
            inc = self._incoming
            if inc is not None:
                view = inc.feed(view)
                if inc.done:
                    self._incoming = None
                    plain = self._finish(inc)
                    if plain:
                        out.append(plain)
                continue
            if not self._pre and len(view) >= wire.REFS_START + wire.TAG_SIZE:
                # Fast path: the frame's length, header and reference count are all in
                # this read (the usual case), so check them without collecting a copy.
                size = check_frame_size(int.from_bytes(view[:4], "big") + 4,
                                        self.max_frame_size)
                head = wire.decode_header(view)
                self._check_header(head)
                n_prefix = wire.prefix_size(view, size)
                if len(view) >= n_prefix:
                    self._incoming = self._start(head, view[:n_prefix], size)
                    view = view[n_prefix:]
                    continue
            view = self._feed_prefix(view)
        return out, self.eof_received

    def receive_data(self, data: bytes | bytearray | memoryview) -> tuple[bytes, bool]:
        """Like :meth:`receive_chunks`, joined into one bytes object."""
        chunks, eof = self.receive_chunks(data)
        return b"".join(chunks), eof

    def _feed_prefix(self, view: memoryview) -> memoryview:
        """Collect the frame's length, header and key references; start the frame."""
        pre = self._pre
        if len(pre) < 4:
            target = 4
        elif self._prefix_size:
            target = self._prefix_size
        else:
            target = min(self._frame_size, wire.REFS_START)
        k = min(target - len(pre), len(view))
        pre += view[:k]
        view = view[k:]
        if len(pre) < target:
            return view
        if target == 4:
            self._frame_size = check_frame_size(int.from_bytes(pre, "big") + 4,
                                                self.max_frame_size)
            return view
        if not self._prefix_size:
            # Header and reference count are in: check them before anything else.
            self._head = wire.decode_header(bytes(pre) + bytes(wire.TAG_SIZE))
            self._check_header(self._head)
            self._prefix_size = wire.prefix_size(pre, self._frame_size)
            return view
        assert self._head is not None
        self._incoming = self._start(self._head, bytes(pre), self._frame_size)
        self._pre = bytearray()
        self._frame_size = self._prefix_size = 0
        return view

    def _check_header(self, head: wire.FrameHeader) -> None:
        check_stream_header(head, (AppMsgType.STREAM_DATA, AppMsgType.STREAM_EOF),
                            eof_received=self.eof_received, session=self.session,
                            expected_seq=self._rx_seq)

    def _start(self, head: wire.FrameHeader, prefix: bytes | memoryview, size: int
               ) -> _Incoming:
        """Checks on the whole prefix (header checked already), then peek the key and
        set up MAC and plaintext."""
        refs = wire.decode_refs(prefix)
        n_ct = size - len(prefix) - wire.TAG_SIZE
        first = self._rx_r is None
        n_key = n_ct + TAG_KEY_BYTES + (HASH_KEY_BYTES if first else 0)
        if head.type == AppMsgType.STREAM_EOF and n_ct:
            raise RemoteProtocolError("end-of-stream frame carries data",
                                      ErrorCode.MALFORMED_FRAME)
        if sum(r.n_bits for r in refs) != 8 * n_key:
            raise RemoteProtocolError("key references do not cover the frame",
                                      ErrorCode.MALFORMED_FRAME)
        try:
            # Peek, so that a frame failing its tag consumes nothing (see module doc).
            if self.peek_parts is not None:
                pieces = [memoryview(p).cast("B") for p in self.peek_parts(refs)]
            else:
                pieces = [memoryview((self.peek or self.take)(refs)).cast("B")]
        except (LocalProtocolError, KeyExhausted) as err:  # includes KeyReuseError
            # A replayed or forged frame naming key we already used (or never had).
            raise AuthenticationError(f"frame names unusable key ({type(err).__name__})",
                                      ErrorCode.AUTHENTICATION_FAILED) from None
        if sum(len(p) for p in pieces) != n_key:
            raise AuthenticationError("key source returned the wrong amount of key",
                                      ErrorCode.AUTHENTICATION_FAILED)
        r: bytes | None = self._rx_r
        if first:
            r, pieces = _split_key(pieces, HASH_KEY_BYTES)
        assert r is not None
        s, pad = _split_key(pieces, TAG_KEY_BYTES)
        mac = Poly1305(r + s)
        mac.update(self.nonce)  # binds the frame to this stream (see _seal)
        mac.update(prefix)
        return _Incoming(head, refs, r, n_key, n_ct, pad, mac)

    def _finish(self, inc: _Incoming) -> bytearray:
        """Verify the tag of a fully received frame; only then spend its key."""
        try:
            inc.mac.verify(bytes(inc.tag))
        except InvalidSignature:
            raise AuthenticationError(
                f"frame {inc.head.seq} failed its Wegman-Carter tag check (forged or "
                f"corrupted, or replayed from another stream: tags bind this stream's "
                f"nonce)", ErrorCode.AUTHENTICATION_FAILED) from None
        if self.peek is not None or self.peek_parts is not None:
            # Authentic: now spend the key for good. Failing here means someone else
            # (another stream on the same pool, another process) took it meanwhile.
            try:
                (self.consume or self.take)(inc.refs)
            except (LocalProtocolError, KeyExhausted) as err:
                raise AuthenticationError(f"frame names unusable key ({type(err).__name__})",
                                          ErrorCode.AUTHENTICATION_FAILED) from None
        self._rx_r = inc.r
        self._rx_seq += 1
        self.stats.frames_rx += 1
        self.stats.payload_bytes_rx += inc.n_ct
        self.stats.key_bits_rx += 8 * inc.n_key
        if inc.head.type == AppMsgType.STREAM_EOF:
            self.eof_received = True
            return bytearray()
        return inc.plain


class _Incoming:
    """A frame whose header and key are in and whose ciphertext and tag are arriving.

    Each piece of ciphertext is fed to the MAC and XORed with the pad into the
    plaintext buffer as it comes (no reassembly copy); the plaintext stays here until
    the core has verified the tag.
    """

    __slots__ = ("_pad", "done", "head", "mac", "n_ct", "n_key", "plain", "pos", "r", "refs",
                 "tag")

    def __init__(self, head: wire.FrameHeader, refs: list[KeyRef], r: bytes, n_key: int,
                 n_ct: int, pad: list[memoryview], mac: Poly1305) -> None:
        self.head = head
        self.refs = refs
        self.r = r
        self.n_key = n_key
        self.n_ct = n_ct
        self.mac = mac
        self.plain = bytearray(n_ct)
        self.pos = 0
        self.tag = bytearray()
        self.done = False
        # (start offset in the ciphertext, pad piece as an array)
        self._pad: list[tuple[int, np.ndarray[Any, Any]]] = []
        start = 0
        for piece in pad:
            self._pad.append((start, np.frombuffer(piece, np.uint8)))
            start += len(piece)

    def __repr__(self) -> str:  # never show key or plaintext
        return f"_Incoming(seq={self.head.seq}, pos={self.pos}, n_ct={self.n_ct})"

    def feed(self, view: memoryview) -> memoryview:
        """Consume what of ``view`` belongs to this frame; return the rest."""
        if self.pos < self.n_ct:
            k = min(self.n_ct - self.pos, len(view))
            piece, view = view[:k], view[k:]
            self.mac.update(piece)
            self._decrypt(piece)
        if view and self.pos == self.n_ct:
            k = min(wire.TAG_SIZE - len(self.tag), len(view))
            self.tag += view[:k]
            view = view[k:]
            self.done = len(self.tag) == wire.TAG_SIZE
        return view

    def _decrypt(self, piece: memoryview) -> None:
        out = np.frombuffer(self.plain, np.uint8)
        data = np.frombuffer(piece, np.uint8)
        lo, hi = self.pos, self.pos + len(piece)
        for start, pad in self._pad:
            a, b = max(lo, start), min(hi, start + len(pad))
            if a < b:
                np.bitwise_xor(data[a - lo:b - lo], pad[a - start:b - start], out=out[a:b])
        self.pos = hi


@dataclass
class HopSecuredCore:
    """Sans-I/O framing for a stream inside a hub channel (no key of its own).

    A relayed hub channel already one-time-pads every message with fresh key on each
    hop and tags it with Wegman–Carter (docs/design.md, "Hub and spokes"); padding it
    again end to end would double the key cost for no secrecy against the hub, which
    as a trusted node sees (or could compute) any end-to-end key anyway. This core
    keeps what the stream adds on top: one session id, per-direction sequence numbers
    (a hop that drops, repeats or reorders is detected) and the explicit end of stream.
    Same interface as :class:`SecureStreamCore`; ``key_bytes_for`` is always 0.
    """

    session: int
    max_frame_payload: int = DEFAULT_FRAME_PAYLOAD
    max_frame_size: int = MAX_FRAME_SIZE
    stats: StreamStats = field(default_factory=StreamStats)
    _tx_seq: int = 0
    _rx_seq: int = 0
    _assembler: FrameAssembler = field(init=False, repr=False)
    eof_sent: bool = False
    eof_received: bool = False

    def __post_init__(self) -> None:
        self._assembler = FrameAssembler(self.max_frame_size)

    def key_bytes_for(self, n_payload: int) -> int:
        """No stream key: the channel's hops supply pad and tag."""
        return 0

    def seal_data(self, payload: bytes | memoryview, cursor: KeyCursor | None) -> list[bytes]:
        """HOP_DATA frames carrying ``payload``."""
        if self.eof_sent:
            raise LocalProtocolError("data after end of stream")
        view = memoryview(payload)
        out = []
        for start in range(0, len(view), self.max_frame_payload):
            piece = view[start:start + self.max_frame_payload]
            out.append(wire.encode_hop_frame(AppMsgType.HOP_DATA, self.session,
                                             self._tx_seq, piece))
            self._tx_seq += 1
            self.stats.frames_tx += 1
            self.stats.payload_bytes_tx += len(piece)
        return out

    def seal_some(self, payload: bytes | memoryview, cursor: KeyCursor | None
                  ) -> tuple[list[bytes], int]:
        """All of ``payload`` as HOP_DATA frames (no key involved)."""
        return self.seal_data(payload, cursor), len(payload)

    def seal_eof(self, cursor: KeyCursor | None) -> bytes:
        """The HOP_EOF frame."""
        frame = wire.encode_hop_frame(AppMsgType.HOP_EOF, self.session, self._tx_seq, b"")
        self._tx_seq += 1
        self.eof_sent = True
        return frame

    def receive_chunks(self, data: bytes | bytearray | memoryview
                       ) -> tuple[list[bytearray], bool]:
        """Feed channel bytes; returns (payload chunks now available, EOF seen)."""
        out: list[bytearray] = []
        for frame in self._assembler.feed(data):
            head = wire.decode_header(frame)
            check_stream_header(head, (AppMsgType.HOP_DATA, AppMsgType.HOP_EOF),
                                eof_received=self.eof_received, session=self.session,
                                expected_seq=self._rx_seq)
            payload = frame[wire.HEADER_SIZE:-wire.TAG_SIZE]
            self._rx_seq += 1
            self.stats.frames_rx += 1
            if head.type == AppMsgType.HOP_EOF:
                if len(payload):
                    raise RemoteProtocolError("end-of-stream frame carries data",
                                              ErrorCode.MALFORMED_FRAME)
                self.eof_received = True
            elif len(payload):
                self.stats.payload_bytes_rx += len(payload)
                out.append(bytearray(payload))
        return out, self.eof_received

    def receive_data(self, data: bytes | bytearray | memoryview) -> tuple[bytes, bool]:
        """Like :meth:`receive_chunks`, joined into one bytes object."""
        chunks, eof = self.receive_chunks(data)
        return b"".join(chunks), eof


# ---- trio adapter ----------------------------------------------------------------------


class StreamState(enum.Enum):
    """Lifecycle of a SecureStream (as trio's SSLStream)."""

    OK = "ok"
    BROKEN = "broken"
    CLOSED = "closed"


@dataclass(frozen=True)
class KeyPolicy:
    """What a stream does when its key pool is empty.

    ``wait=True`` (default): wait up to ``timeout`` seconds for the link layer to
    distil more key, then raise KeyExhausted. ``wait=False``: raise at once.
    """

    wait: bool = True
    timeout: float = 30.0


#: The default policy (wait up to 30 s) and the fail-fast one.
WAIT_FOR_KEY = KeyPolicy()
FAIL_FAST = KeyPolicy(wait=False)


class _Conflict:
    """Raise BusyResourceError when two tasks use the same half at once."""

    __slots__ = ("_busy", "_what")

    def __init__(self, what: str) -> None:
        self._what = what
        self._busy = False

    def __enter__(self) -> None:
        if self._busy:
            raise trio.BusyResourceError(f"another task is already {self._what} this stream")
        self._busy = True

    def __exit__(self, *exc: object) -> None:
        self._busy = False

    @property
    def busy(self) -> bool:
        return self._busy


class SecureStream(trio.abc.HalfCloseableStream):
    """A one-time-pad encrypted, Wegman–Carter authenticated half-closeable stream.

    ``transport`` is any ``trio.abc.Stream`` (TCP, a memory pair, a relayed hub
    channel wrapped as a stream); ``keys`` supplies the key; ``session`` is the
    stream id both ends agree on. Errors: ``trio.BrokenResourceError`` (with the
    reason) when the peer misbehaves, the transport fails or key runs out under the
    fail-fast policy (then ``__cause__`` is KeyExhausted); ``ClosedResourceError``
    after ``aclose``; ``BusyResourceError`` for concurrent senders or receivers.

    Nonce exchange (padded mode, ``keys`` given): each end's first transport bytes
    are its STREAM_NONCE frame, and it cannot seal a frame before the peer's nonce
    has arrived. As in trio's ``SSLStream`` this happens inside whichever call needs
    it first: ``send_all``/``send_eof`` send our nonce and, if the peer's is not in
    yet, read the transport for it (plaintext frames in the same read are kept for
    ``receive_some``); ``receive_some`` sends our nonce while it first reads, so a
    peer that only sends is never left waiting, and it works on transports whose
    sends wait for the peer to read (lockstep). :meth:`do_handshake` does the
    exchange on request.
    Two locks keep concurrent ``send_all`` and ``receive_some`` tasks off each
    other's transport half: ``_hello_lock`` around sending our nonce (the one time
    the receive side writes) and ``_rx_lock`` around reads while the peer's nonce is
    unknown (the only time the send side reads). Once both nonces are through, no
    lock is taken. In hop-secured mode (``keys=None``) there is no nonce exchange.
    """

    def __init__(self, transport: trio.abc.Stream, keys: StreamKeys | None, *,
                 session: int = 0, policy: KeyPolicy = WAIT_FOR_KEY,
                 max_frame_payload: int = DEFAULT_FRAME_PAYLOAD) -> None:
        self.transport = transport
        self.keys = keys
        self.policy = policy
        self._core: SecureStreamCore | HopSecuredCore
        if keys is None:
            self._core = HopSecuredCore(session, max_frame_payload=max_frame_payload)
            self._padded: SecureStreamCore | None = None
        else:
            self._core = self._padded = SecureStreamCore(
                session, keys.take, max_frame_payload=max_frame_payload,
                peek=peek_function(keys), peek_parts=getattr(keys, "peek_parts", None),
                consume=getattr(keys, "consume", None),
                nonce=secrets.token_bytes(wire.NONCE_SIZE))
        self._state = StreamState.OK
        self._broken_reason: str | None = None
        self._send = _Conflict("sending on")
        self._recv = _Conflict("receiving from")
        self._plain: collections.deque[memoryview] = collections.deque()
        # Hop-secured mode has no nonce to send.
        self._hello_sent = self._padded is None
        self._hello_lock = trio.Lock()
        self._rx_lock = trio.Lock()

    def __repr__(self) -> str:
        return f"SecureStream(session={self._core.session:#x}, state={self._state.value})"

    @property
    def state(self) -> StreamState:
        """OK, BROKEN or CLOSED."""
        return self._state

    @property
    def broken_reason(self) -> str | None:
        """Why the stream broke, or None."""
        return self._broken_reason

    @property
    def stats(self) -> StreamStats:
        """Frame, payload and key counters."""
        return self._core.stats

    @property
    def session(self) -> int:
        """The stream id carried in every frame header."""
        return self._core.session

    @property
    def _have_peer_nonce(self) -> bool:
        return self._padded is None or self._padded.peer_nonce is not None

    # -- state helpers

    def _check(self) -> None:
        if self._state is StreamState.CLOSED:
            raise trio.ClosedResourceError("this secure stream was closed")
        if self._state is StreamState.BROKEN:
            raise trio.BrokenResourceError(f"secure stream broken: {self._broken_reason}")

    def _break(self, reason: str) -> trio.BrokenResourceError:
        if self._state is StreamState.OK:
            self._state = StreamState.BROKEN
            self._broken_reason = reason
        return trio.BrokenResourceError(f"secure stream broken: {self._broken_reason}")

    def _translate(self, err: BaseException) -> BaseException:
        """Map a transport error onto this stream's error model."""
        if self._state is StreamState.CLOSED:
            return trio.ClosedResourceError("this secure stream was closed")
        if isinstance(err, trio.BrokenResourceError):
            return self._break(f"transport broke ({err})")
        if isinstance(err, trio.ClosedResourceError):
            return self._break("transport was closed underneath the stream")
        if isinstance(err, OSError):
            return self._break(f"transport error: {err.strerror or err}")
        return err

    async def _transport_send(self, data: bytes | bytearray | memoryview) -> None:
        try:
            await self.transport.send_all(data)
        except trio.Cancelled:
            # Part of a frame may have gone out: the peer's framing is now unknown.
            self._break("a send was cancelled in the middle of a frame")
            raise
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as err:
            raise self._translate(err) from err

    async def _send_hello(self) -> None:
        """Send our STREAM_NONCE frame, once, before anything else we send."""
        if self._hello_sent:
            return
        assert self._padded is not None
        async with self._hello_lock:
            if self._hello_sent:
                return
            self._check()
            await self._transport_send(self._padded.nonce_frame())
            self._hello_sent = True

    async def _read(self) -> None:
        """One transport read fed to the core; plaintext goes to ``_plain``.

        Callers make sure only one task reads at a time (``_recv`` plus ``_rx_lock``
        while the peer's nonce is unknown).
        """
        try:
            data = await self.transport.receive_some(RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as err:
            raise self._translate(err) from err
        if self._state is not StreamState.OK:
            self._check()
        if not data:
            if not self._have_peer_nonce:
                assert self._padded is not None
                raise self._break(
                    f"the transport ended before the peer's stream nonce frame "
                    f"({self._padded.nonce_bytes_pending} of {wire.NONCE_FRAME_SIZE} bytes "
                    f"came)")
            raise self._break("truncated: the transport ended without an "
                              "authenticated end of stream")
        try:
            chunks, _eof = self._core.receive_chunks(data)
        except RemoteProtocolError as err:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self.transport)
            raise self._break(f"{err} [{err.code.name}]") from err
        self._plain.extend(memoryview(c) for c in chunks)

    async def _await_peer_nonce(self) -> None:
        """Read the transport until the peer's nonce is in (send side, first frame)."""
        while not self._have_peer_nonce:
            async with self._rx_lock:
                # A receive_some in another task may have read it meanwhile.
                if self._have_peer_nonce:
                    break
                self._check()
                await self._read()

    async def _receive_step(self) -> None:
        """One read for receive_some, under ``_rx_lock`` while a sender may also read."""
        if self._have_peer_nonce:
            await self._read()  # the send side no longer reads: no lock
            return
        async with self._rx_lock:
            # A send_all waiting for the peer's nonce may have read meanwhile.
            if not self._plain and not self._core.eof_received:
                self._check()
                await self._read()

    async def _receive_until_data(self) -> None:
        while not self._plain and not self._core.eof_received:
            await self._receive_step()

    async def _send_hello_while(self, other: Any) -> None:
        """Send our nonce and run ``other`` (a read loop) at the same time.

        On a transport whose ``send_all`` returns only once the peer has read (trio's
        lockstep streams), a receiver that sent its nonce before reading would keep a
        peer that waits in ``wait_send_all_might_not_block`` waiting for ever; two
        ends that both start this way would each wait for the other to read. The
        first error of either half is raised as is (not as an ExceptionGroup). As
        with any send, cancelling this while the nonce frame is on its way breaks the
        stream (part of it may have gone out).
        """
        failures: list[BaseException] = []

        async def run(fn: Any, scope: trio.CancelScope) -> None:
            try:
                await fn()
            except (trio.BrokenResourceError, trio.ClosedResourceError) as err:
                failures.append(err)
                scope.cancel()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run, self._send_hello, nursery.cancel_scope)
                nursery.start_soon(run, other, nursery.cancel_scope)
        except BaseExceptionGroup as group:
            # Cancelled from outside: raise it plainly, as any trio call would.
            if all(isinstance(e, trio.Cancelled) for e in group.exceptions):
                raise group.exceptions[0] from None
            raise
        if failures:
            raise failures[0]

    async def do_handshake(self) -> None:
        """Exchange stream nonces now; the first send or receive otherwise does it.

        Sends our nonce and reads the peer's concurrently. Never needed for
        correctness; useful to fail early, or to have the exchange done before
        timing-sensitive work. A checkpoint only in hop-secured mode.
        """
        self._check()
        if self._hello_sent and self._have_peer_nonce:
            await trio.lowlevel.checkpoint()
            return
        await self._send_hello_while(self._await_peer_nonce)

    async def _get_key(self, n_bytes: int) -> KeyCursor | None:
        if n_bytes == 0 or self.keys is None:
            return None
        n_bits = 8 * n_bytes
        try:
            try:
                # Key at hand: no extra trip through the scheduler (the transport's
                # send is this send_all's checkpoint).
                grant = self.keys.reserve(n_bits)
            except KeyExhausted:
                if not self.policy.wait:
                    raise
                grant = await self.keys.wait_reserve(
                    n_bits, trio.current_time() + self.policy.timeout)
        except KeyExhausted as err:
            raise self._break(f"out of key: {err}") from err
        self._core.stats.key_bits_reserved += n_bits
        return KeyCursor(grant)

    # -- SendStream

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt, authenticate and send all of ``data`` (waits for key per policy).

        The first call of a padded stream also exchanges nonces (see the class doc).
        """
        with self._send:
            self._check()
            if self._core.eof_sent:
                await trio.lowlevel.checkpoint()
                raise trio.ClosedResourceError("send_eof was already called")
            await trio.lowlevel.checkpoint_if_cancelled()
            view = memoryview(data).cast("B")
            if not view:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return
            await self._send_hello()
            # One reservation per MAX_GRANT_BITS of payload, carved frame by frame.
            chunk = max(self._core.max_frame_payload,
                        (MAX_GRANT_BITS // 8) // self._core.max_frame_payload
                        * self._core.max_frame_payload)
            while view:
                piece = view[:chunk]
                # Key before the peer's nonce: the key policy's deadline holds even
                # when the peer is silent.
                cursor = await self._get_key(self._core.key_bytes_for(len(piece)))
                await self._await_peer_nonce()
                self._check()
                frames, n = self._core.seal_some(piece, cursor)
                if not n:  # cannot happen with segments of at least one bit
                    raise self._break("key too fragmented to carry any payload")
                for frame in frames:
                    await self._transport_send(frame)
                view = view[n:]

    async def wait_send_all_might_not_block(self) -> None:
        """Block until the transport could accept data."""
        with self._send:
            self._check()
            try:
                if self._hello_sent:
                    await self.transport.wait_send_all_might_not_block()
                else:
                    # A receive_some may be sending our nonce right now: wait for it
                    # rather than touch the transport's send half at the same time.
                    async with self._hello_lock:
                        self._check()
                        await self.transport.wait_send_all_might_not_block()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as err:
                raise self._translate(err) from err

    async def send_eof(self) -> None:
        """Send the authenticated end of stream; idempotent. Receiving stays open."""
        with self._send:
            self._check()
            if self._core.eof_sent:
                await trio.lowlevel.checkpoint()
                return
            await trio.lowlevel.checkpoint_if_cancelled()
            await self._send_hello()
            cursor = await self._get_key(self._core.key_bytes_for(0))
            await self._await_peer_nonce()
            self._check()
            await self._transport_send(self._core.seal_eof(cursor))
            # A transport that half-closes passes the EOF on too (not needed for safety).

    # -- ReceiveStream

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        """Up to ``max_bytes`` authenticated plaintext bytes; b"" after the peer's EOF."""
        if max_bytes is not None:
            max_bytes = operator.index(max_bytes)
            if max_bytes < 1:
                raise ValueError("max_bytes must be >= 1")
        with self._recv:
            self._check()
            await trio.lowlevel.checkpoint_if_cancelled()
            if not self._hello_sent:
                # The peer cannot send us anything before it has our nonce: send it,
                # reading at the same time (see _send_hello_while).
                await self._send_hello_while(self._receive_until_data)
            while not self._plain:
                if self._core.eof_received:
                    await trio.lowlevel.checkpoint()
                    return b""
                await self._receive_step()
            else:
                await trio.lowlevel.checkpoint()
            head = self._plain[0]
            if max_bytes is None or max_bytes >= len(head):
                self._plain.popleft()
                obj = head.obj
                if isinstance(obj, bytearray) and len(head) == len(obj):
                    return obj  # the whole decrypted frame: no copy
                return bytes(head)
            self._plain[0] = head[max_bytes:]
            return bytes(head[:max_bytes])

    # -- AsyncResource

    async def aclose(self) -> None:
        """Send the authenticated end of stream if we can, then close the transport.

        A padded stream can authenticate its end only after the nonces were
        exchanged; closed before that, it just closes (the peer sees a truncation).
        It never waits for the peer.
        """
        if self._state is StreamState.CLOSED:
            await trio.lowlevel.checkpoint()
            return
        graceful = (self._state is StreamState.OK and not self._core.eof_sent
                    and not self._send.busy and self._hello_sent and self._have_peer_nonce)
        self._state = StreamState.CLOSED
        try:
            if graceful:
                try:
                    n_eof = self._core.key_bytes_for(0)
                    cursor = None
                    if n_eof and self.keys is not None:
                        cursor = KeyCursor(self.keys.reserve(8 * n_eof))
                        self._core.stats.key_bits_reserved += 8 * n_eof
                    await self.transport.send_all(self._core.seal_eof(cursor))
                except (KeyExhausted, trio.BrokenResourceError, trio.ClosedResourceError,
                        trio.BusyResourceError, OSError):
                    pass
        finally:
            await self.transport.aclose()
