"""Wegman–Carter authentication of sideband frames (spec/protocol.md §6).

Construction: the tag of a frame is ``Poly1305(r ‖ s, b ‖ m)`` where ``m`` is every
frame byte before the tag, ``b`` is the connection *binding* (a 48-byte pseudo-header
holding both ends' HELLO nonces and the direction, empty for HELLO itself; built by
:func:`connection_binding`, spec/protocol.md §6.1), ``r`` is a 16-byte hash key fixed
per direction (taken once from the bootstrap secret and *recycled* for every frame),
and ``s`` is 16 bytes of fresh
one-time key drawn from the sender's ``auth-tx`` pool for that frame alone. Poly1305
evaluates ``m`` as a polynomial in the clamped ``r`` over GF(2^130 − 5) and adds ``s``
mod 2^128; with ``s`` uniform and never reused the tag is a one-time-padded
ε-almost-Δ-universal hash, so security rests on no computational assumption:

* forgery probability per frame ≤ 8⌈L/16⌉ / 2^106 for an L-byte message
  (Bernstein 2005, Poly1305-AES paper, Theorem 3.3);
* reusing ``r`` across frames is allowed because each tag is padded with fresh ``s``
  (key recycling, Portmann, IEEE Trans. Inf. Theory 60(7), 2014); the failure
  probability over a key lifetime of n frames grows at most linearly: n · 8⌈L/16⌉/2^106.

Cost: 128 bits of one-time key per frame, no matter the frame's size. The library's
``Poly1305`` clamps ``r`` itself; ``verify`` compares in constant time.

Check before spending: :meth:`FrameAuthenticator.verify` *peeks* the one-time key the
frame names, checks the tag, and *takes* (durably consumes) the key only if the tag is
good. A forged frame therefore costs the receiver no key: otherwise anyone able to
reach the port could burn a peer's whole authentication pool with frames naming its
key positions (the peek/check/take sequence is atomic because one trio thread owns
the key store and nothing yields in between). The price is that the adversary may
try several forgeries against the same ``s``; each try succeeds with probability at
most the per-frame bound, so the bound over a key lifetime counts rejected frames
too (spec/protocol.md §6.2).

Deferred authentication (spec/protocol.md §6.4): a frame may be sent *without* a tag
of its own (header flag DEFERRED); the next tagged frame of the same direction then
authenticates it, because that frame's tag covers the binding, every deferred frame
since the previous tagged one, in order, and the frame itself:
``Poly1305(r ‖ s, b ‖ d_1 ‖ … ‖ d_k ‖ m)``. Both ends keep a :class:`Backlog`, a running
Poly1305 with ``s = 0``: Poly1305 adds ``s`` modulo 2^128 after the polynomial, so the
tag is the backlog's output plus ``s``, and the deferred bytes never need buffering.
One 128-bit key then pays for a whole exchange (Kiktenko et al., IEEE TIT 66 (2020):
one tag per post-processing round); the forgery bound is that of one message of the
total length, 8⌈L/16⌉/2^106 with L the bytes covered.

The key source is abstract (:class:`TagKeySource`) so the same authenticator runs on
the durable key store (:class:`KeyStoreTagKeys`) or on memory (:class:`MemoryTagKeys`,
for tests and for a bootstrap secret without a store).
"""

from __future__ import annotations

import contextlib
import hmac
import math
import secrets
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.poly1305 import Poly1305

from qkdnet.errors import (
    AuthenticationError,
    ErrorCode,
    KeyExhausted,
    KeyReuseError,
    LocalProtocolError,
)
from qkdnet.keystore import KeySegment, KeyStore

#: Bytes of one-time key ``s`` per frame, and of the hash key ``r``.
TAG_KEY_BYTES = 16
HASH_KEY_BYTES = 16
#: Authentication key spent per frame, in bits.
TAG_KEY_BITS = 8 * TAG_KEY_BYTES
#: Smallest bootstrap secret accepted (docs/design.md, key store).
MIN_BOOTSTRAP_BYTES = 4096
#: Block ids of the first bootstrap secret's pools (as ``qkdnet.keystore`` numbers them).
BOOTSTRAP_BLOCK_BASE = 0xFFFF_FFFF << 32


def forgery_bound(message_bytes: int) -> float:
    """Upper bound on the probability that one forged frame of this size is accepted."""
    return 8 * math.ceil(max(message_bytes, 1) / 16) / 2.0**106


def lifetime_forgery_bound(n_frames: int, max_message_bytes: int) -> float:
    """Bound over ``n_frames`` frames that share one hash key ``r`` (Portmann 2014)."""
    return n_frames * forgery_bound(max_message_bytes)


@runtime_checkable
class TagKeySource(Protocol):
    """Where the per-frame one-time keys and the recycled hash keys come from."""

    @property
    def hash_key_tx(self) -> bytes:
        """16-byte Poly1305 ``r`` for frames we send."""
        ...

    @property
    def hash_key_rx(self) -> bytes:
        """16-byte Poly1305 ``r`` for frames we receive."""
        ...

    def reserve_tag_key(self) -> tuple[int, int, bytes]:
        """Consume 128 fresh bits from our ``auth-tx`` pool: ``(block_id, offset, s)``."""
        ...

    def peek_tag_key(self, block_id: int, offset: int) -> bytes:
        """The 128 bits :meth:`take_tag_key` would return, consuming nothing.

        Raises exactly what :meth:`take_tag_key` would raise.
        """
        ...

    def take_tag_key(self, block_id: int, offset: int) -> bytes:
        """Consume the 128 bits the peer used at ``(block_id, offset)`` of our ``auth-rx``.

        Raises :class:`KeyReuseError` if any bit was taken before and
        :class:`KeyExhausted` if the block is unknown or too short.
        """
        ...


@dataclass(repr=False)
class _MemoryPool:
    block_id: int
    data: bytes
    cursor: int = 0                                   # tx: next free byte offset
    taken: set[int] = field(default_factory=set)     # rx: byte offsets already taken


class MemoryTagKeys:
    """A :class:`TagKeySource` on in-memory pools (tests; bootstrap without a store).

    Offsets are in bits, as in the key store, and always multiples of 128 here.
    """

    def __init__(self, hash_key_tx: bytes, hash_key_rx: bytes, tx_pool: bytes,
                 rx_pool: bytes, *, tx_block: int = 0, rx_block: int = 0) -> None:
        if len(hash_key_tx) != HASH_KEY_BYTES or len(hash_key_rx) != HASH_KEY_BYTES:
            raise LocalProtocolError("hash keys must be 16 bytes")
        self._r_tx = bytes(hash_key_tx)
        self._r_rx = bytes(hash_key_rx)
        self._tx = _MemoryPool(tx_block, bytes(tx_pool))
        self._rx = _MemoryPool(rx_block, bytes(rx_pool))

    @classmethod
    def pair(cls, pool_bytes: int = 1 << 16) -> tuple[MemoryTagKeys, MemoryTagKeys]:
        """Two mirrored key sources with fresh random keys, for tests."""
        r_ab, r_ba = secrets.token_bytes(16), secrets.token_bytes(16)
        p_ab, p_ba = secrets.token_bytes(pool_bytes), secrets.token_bytes(pool_bytes)
        return cls(r_ab, r_ba, p_ab, p_ba), cls(r_ba, r_ab, p_ba, p_ab)

    @classmethod
    def from_bootstrap(cls, secret: bytes, *, initiator: bool) -> MemoryTagKeys:
        """Split a bootstrap secret the same way at both ends, mirrored by role.

        Layout (the key store's, so a memory peer interoperates with a store peer
        that imported this secret first): bytes 0–15 are ``r`` initiator→responder,
        16–31 ``r`` responder→initiator; the rest is cut in half, first half the
        initiator→responder pool (block ``BOOTSTRAP_BLOCK_BASE | 0``), second half the
        other direction (``| 1``). Each direction's
        pool is consumed from the start, so one secret serves one pair of processes:
        a restarted process would reuse one-time keys (use the key store for that).
        """
        if len(secret) < MIN_BOOTSTRAP_BYTES:
            raise LocalProtocolError(
                f"bootstrap secret too short: {len(secret)} bytes, need {MIN_BOOTSTRAP_BYTES}")
        r_i2r, r_r2i = secret[:16], secret[16:32]
        rest = secret[32:]
        half = len(rest) // 2
        p_i2r, p_r2i = rest[:half], rest[half:2 * half]
        fwd, back = BOOTSTRAP_BLOCK_BASE | 0, BOOTSTRAP_BLOCK_BASE | 1
        if initiator:
            return cls(r_i2r, r_r2i, p_i2r, p_r2i, tx_block=fwd, rx_block=back)
        return cls(r_r2i, r_i2r, p_r2i, p_i2r, tx_block=back, rx_block=fwd)

    def __repr__(self) -> str:
        return (f"MemoryTagKeys(tx_left={len(self._tx.data) - self._tx.cursor}B, "
                f"rx_taken={len(self._rx.taken)} keys)")

    @property
    def hash_key_tx(self) -> bytes:
        return self._r_tx

    @property
    def hash_key_rx(self) -> bytes:
        return self._r_rx

    def available_tx_bits(self) -> int:
        """Bits left in the send pool."""
        return 8 * (len(self._tx.data) - self._tx.cursor)

    def reserve_tag_key(self) -> tuple[int, int, bytes]:
        pool = self._tx
        if pool.cursor + TAG_KEY_BYTES > len(pool.data):
            raise KeyExhausted(TAG_KEY_BITS, self.available_tx_bits(), pool="auth-tx")
        start = pool.cursor
        pool.cursor += TAG_KEY_BYTES
        return pool.block_id, 8 * start, pool.data[start:start + TAG_KEY_BYTES]

    def _locate_rx(self, block_id: int, offset: int) -> int:
        """Byte offset of the rx key at ``(block_id, offset)`` if it can be taken."""
        pool = self._rx
        if block_id != pool.block_id or offset % 8 or offset // 8 + TAG_KEY_BYTES > len(pool.data):
            raise KeyExhausted(TAG_KEY_BITS, 0, pool="auth-rx")
        start = offset // 8
        # Any overlap with a key taken before is reuse (offsets need not be aligned).
        if any(abs(start - t) < TAG_KEY_BYTES for t in pool.taken):
            raise KeyReuseError("tag key bits were already taken")
        return start

    def available_rx_bits(self) -> int:
        """Bits of the receive pool not yet taken."""
        return 8 * (len(self._rx.data) - TAG_KEY_BYTES * len(self._rx.taken))

    def peek_tag_key(self, block_id: int, offset: int) -> bytes:
        start = self._locate_rx(block_id, offset)
        return self._rx.data[start:start + TAG_KEY_BYTES]

    def take_tag_key(self, block_id: int, offset: int) -> bytes:
        start = self._locate_rx(block_id, offset)
        self._rx.taken.add(start)
        return self._rx.data[start:start + TAG_KEY_BYTES]


class KeyStoreTagKeys:
    """A :class:`TagKeySource` on the durable key store (``qkdnet.keystore``).

    Sends spend 128 contiguous bits of ``(peer, "auth-tx")``; receives take the bits
    the peer names from ``(peer, "auth-rx")``, which the store refuses to hand out
    twice. The hash keys ``r`` come from the bootstrap secret.
    """

    def __init__(self, store: KeyStore, peer: str) -> None:
        self._store = store
        self.peer = peer
        self._r_tx: bytes | None = None
        self._r_rx: bytes | None = None

    def __repr__(self) -> str:
        return f"KeyStoreTagKeys(peer={self.peer!r})"

    def batch(self) -> contextlib.AbstractContextManager[None]:
        """Group commit: the takes inside share one durable commit (KeyStore.batch)."""
        return self._store.batch()

    @property
    def hash_key_tx(self) -> bytes:
        if self._r_tx is None:
            self._r_tx = bytes(self._store.hash_key(self.peer, "tx"))
        return self._r_tx

    @property
    def hash_key_rx(self) -> bytes:
        if self._r_rx is None:
            self._r_rx = bytes(self._store.hash_key(self.peer, "rx"))
        return self._r_rx

    def reserve_tag_key(self) -> tuple[int, int, bytes]:
        grant = self._store.reserve(self.peer, "auth-tx", TAG_KEY_BITS, contiguous=True)
        (segment,) = grant.segments
        return int(segment.block_id), int(segment.offset), bytes(grant.data)

    def peek_tag_key(self, block_id: int, offset: int) -> bytes:
        data = self._store.peek(self.peer, "auth-rx",
                                (KeySegment(block_id, offset, TAG_KEY_BITS),))
        return bytes(data)

    def take_tag_key(self, block_id: int, offset: int) -> bytes:
        data = self._store.take(self.peer, "auth-rx",
                                (KeySegment(block_id, offset, TAG_KEY_BITS),))
        return bytes(data)


class Backlog:
    """The deferred frames of one direction since its last tagged frame (spec §6.4).

    A running Poly1305 keyed with the direction's recycled ``r`` and ``s = 0``, fed
    the binding first and then each deferred frame's bytes before its (zero) tag.
    :meth:`tag` finishes it with the tagged frame's bytes and adds the one-time ``s``.
    A backlog is used once: after :meth:`tag` start a new one.
    """

    def __init__(self, hash_key: bytes, binding: bytes) -> None:
        if len(hash_key) != HASH_KEY_BYTES:
            raise LocalProtocolError("hash keys must be 16 bytes")
        self._mac = Poly1305(bytes(hash_key) + bytes(TAG_KEY_BYTES))
        self._mac.update(binding)
        self._open = True
        #: Deferred frames and their bytes (header and body) covered so far.
        self.frames = 0
        self.bytes = len(binding)

    def __repr__(self) -> str:
        return f"Backlog(frames={self.frames}, bytes={self.bytes})"

    def add(self, frame_without_tag: bytes) -> None:
        """Cover one deferred frame (every byte before its zero tag)."""
        if not self._open:
            raise LocalProtocolError("backlog already finished")
        self._mac.update(frame_without_tag)
        self.frames += 1
        self.bytes += len(frame_without_tag)

    def tag(self, message: bytes, s: bytes) -> bytes:
        """The tag of the tagged frame ``message`` (bytes before its tag) under ``s``."""
        if not self._open:
            raise LocalProtocolError("backlog already finished")
        self._open = False
        self._mac.update(message)
        self.bytes += len(message)
        h = int.from_bytes(self._mac.finalize(), "little")
        return ((h + int.from_bytes(s, "little")) & ((1 << 128) - 1)).to_bytes(16, "little")


@dataclass(frozen=True, repr=False)
class TagKey:
    """A reserved one-time key: where it sits (goes in the header) and its bytes."""

    block_id: int
    offset: int
    s: bytes

    def __repr__(self) -> str:
        return f"TagKey(block_id={self.block_id}, offset={self.offset})"


class FrameAuthenticator:
    """Signs outgoing and checks incoming frames; counts the key it spends.

    ``bits_spent_tx`` / ``bits_spent_rx`` are the authentication key consumed so far
    (128 bits per frame sent or accepted; a frame that fails verification consumes
    nothing), for the link statistics.
    """

    def __init__(self, keys: TagKeySource) -> None:
        self.keys = keys
        self.bits_spent_tx = 0
        self.bits_spent_rx = 0
        self.frames_signed = 0
        self.frames_verified = 0
        self.failures = 0

    def __repr__(self) -> str:
        return (f"FrameAuthenticator(signed={self.frames_signed}, "
                f"verified={self.frames_verified}, failures={self.failures})")

    def batch(self) -> contextlib.AbstractContextManager[None]:
        """A context in which the tag keys of several received frames are taken with one
        durable commit, if the key source supports it (see ``KeyStore.batch``); use it
        only around code that does not yield."""
        batch = getattr(self.keys, "batch", None)
        return batch() if batch is not None else contextlib.nullcontext()

    def reserve(self) -> TagKey:
        """Consume one fresh 128-bit one-time key for the next frame we send."""
        block_id, offset, s = self.keys.reserve_tag_key()
        if len(s) != TAG_KEY_BYTES:
            raise LocalProtocolError("tag key source returned a key of the wrong size")
        self.bits_spent_tx += TAG_KEY_BITS
        return TagKey(block_id, offset, s)

    def sign(self, key: TagKey, message: bytes, binding: bytes = b"",
             backlog: Backlog | None = None) -> bytes:
        """The 16-byte tag of ``binding ‖ message`` (``message``: every frame byte
        before the tag; ``binding``: the connection pseudo-header, see
        :func:`connection_binding`). With a ``backlog`` (which already holds the
        binding) the tag covers the deferred frames in it too (spec §6.4)."""
        self.frames_signed += 1
        if backlog is not None:
            return backlog.tag(message, key.s)
        mac = Poly1305(self.keys.hash_key_tx + key.s)
        if binding:
            mac.update(binding)
        mac.update(message)
        return mac.finalize()

    def verify(self, block_id: int, offset: int, message: bytes, tag: bytes,
               binding: bytes = b"", backlog: Backlog | None = None) -> None:
        """Check a received tag over ``binding ‖ message``; raise
        :class:`AuthenticationError` if it is wrong. With a ``backlog`` (built over
        the binding and the deferred frames received since the last tagged one) the
        tag must cover those frames too (spec §6.4).

        The one-time key is only *peeked* until the tag has verified, and taken (spent
        for good) only then: a forged frame consumes nothing. A key that was already
        taken means a replayed frame (``REPLAY_OR_REORDER``), one we do not hold
        ``KEY_EXHAUSTED``, a wrong tag ``AUTHENTICATION_FAILED``.
        """
        try:
            s = self.keys.peek_tag_key(block_id, offset)
        except KeyReuseError:
            self.failures += 1
            raise AuthenticationError("frame names a tag key that was already used",
                                      ErrorCode.REPLAY_OR_REORDER) from None
        except KeyExhausted:
            self.failures += 1
            raise AuthenticationError("frame names a tag key we do not hold",
                                      ErrorCode.KEY_EXHAUSTED) from None
        if backlog is not None:
            good = hmac.compare_digest(backlog.tag(message, s), tag)  # constant time
        else:
            mac = Poly1305(self.keys.hash_key_rx + s)
            if binding:
                mac.update(binding)
            mac.update(message)
            try:
                mac.verify(tag)  # constant time
                good = True
            except InvalidSignature:
                good = False
        if not good:
            self.failures += 1
            raise AuthenticationError("frame failed its authentication tag"
                                      + (" (covering deferred frames)" if backlog else ""))
        # Nothing has yielded since the peek (one thread owns the store), so the bits
        # are still there; a KeyReuseError here means another *process* took them.
        try:
            self.keys.take_tag_key(block_id, offset)
        except KeyReuseError:
            self.failures += 1
            raise AuthenticationError("frame names a tag key that was already used",
                                      ErrorCode.REPLAY_OR_REORDER) from None
        self.bits_spent_rx += TAG_KEY_BITS
        self.frames_verified += 1


#: Bytes of the connection binding pseudo-header (spec/protocol.md §6.1).
BINDING_LEN = 48
#: Bytes of the per-connection nonce each end puts in HELLO / HELLO_ACK.
NONCE_LEN = 16
#: Direction codes in the binding.
DIR_INITIATOR_TO_RESPONDER = 0x01
DIR_RESPONDER_TO_INITIATOR = 0x02
_BINDING_LABEL = b"qkdnet-bind"
_ZERO_NONCE = bytes(NONCE_LEN)


def connection_binding(direction: int, initiator_nonce: bytes,
                       responder_nonce: bytes | None) -> bytes:
    """The 48-byte pseudo-header every frame after HELLO authenticates (spec §6.1).

    ``"qkdnet-bind"`` (11 bytes) ‖ version 1 (1 byte) ‖ ``direction`` (1 byte:
    1 initiator→responder, 2 responder→initiator) ‖ 3 zero bytes ‖ the initiator's
    HELLO nonce (16) ‖ the responder's HELLO_ACK nonce (16; zeros while it is not
    known, i.e. only for an ERROR the responder sends before HELLO_ACK). It is
    never sent; both ends rebuild it, so a frame verifies only on the connection
    whose two nonces it was signed with.
    """
    if direction not in (DIR_INITIATOR_TO_RESPONDER, DIR_RESPONDER_TO_INITIATOR):
        raise LocalProtocolError(f"bad binding direction {direction}")
    r_nonce = _ZERO_NONCE if responder_nonce is None else responder_nonce
    if len(initiator_nonce) != NONCE_LEN or len(r_nonce) != NONCE_LEN:
        raise LocalProtocolError("connection nonces must be 16 bytes")
    out = (_BINDING_LABEL + bytes([1, direction]) + bytes(3) + bytes(initiator_nonce)
           + bytes(r_nonce))
    assert len(out) == BINDING_LEN
    return out
