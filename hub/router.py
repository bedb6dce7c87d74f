"""The hub's routing core, sans-I/O: directory, hop-by-hop re-keying, key relay.

Theory of operation
-------------------
The daemon feeds :class:`HubRouter` three kinds of input, each with ``now``:
``connect(spoke)`` when a sideband connection authenticated as ``spoke`` is up,
``receive(spoke, body)`` for every hub message the sideband accepted (its
Wegman–Carter tag already verified), and ``disconnect(spoke)``. ``poll(now)`` runs
the dispatcher; every call returns a list of actions (:class:`Send`,
:class:`Disconnect`) for the daemon to carry out. The router never reads a clock
or touches a socket; the only side effect is on the key store, whose ``take`` and
``reserve`` are synchronous and durable.

Identity. The sideband authenticated the peer with that peer's bootstrap secret,
so ``spoke`` (the argument) *is* the peer; every name a frame claims (REGISTER's
name, the ``src`` of DATA, acks and requests) must equal it, else the frame is an
impersonation attempt and the spoke is disconnected with a protocol error.

Data path. Each source spoke has one FIFO per destination. The dispatcher visits
sources round robin, and a source's destinations round robin, taking at most one
frame from a queue per visit, so a flooding spoke gets its share and no more.
A DATA frame at the head of its queue is re-keyed when the hub→B pool holds
enough key and fewer than ``window`` frames to B are unsent: the hub takes the
A→hub key the frame names (pool ``(A, "data-rx")``), reserves hub→B key (pool
``(B, "data-tx")``), and computes ``ct ⊕ k_in ⊕ k_out`` in one numpy buffer; the
plaintext exists only inside that buffer between the two XORs, and the buffer is
zeroed before the call returns (:class:`_Scratch`; the key store's own ``bytes``
copies of the pads cannot be wiped from Python, only dropped at once). A head waiting for
key past its deadline fails with KEY_EXHAUSTED naming the hop, the channel is
marked failed, and later frames of that channel are refused (CHANNEL_FAILED), so
a receiver never sees a gap. A head waiting for *new* key on hop hub→B (its pool
short) waits as long as key keeps arriving in that pool: it fails only when none has
arrived for ``key_stall`` seconds (:class:`KeyArrivals`), so a transfer through the
hub runs at the key rate of the slower hop instead of failing when the pool runs
dry. Queues are bounded per source (frames and bytes); beyond that frames are
refused with THROTTLED at once.

Key relay. For A asking n bits with B the hub reserves K_A from ``(A, "data-tx")``
and K_B from ``(B, "data-tx")``, sends B ``K_A ⊕ K_B`` with the K_B references, and
A the K_A references. Both then hold K_A — and so does the hub (spec/hub.md).
"""

from __future__ import annotations

import collections
import contextlib
import json
from collections import OrderedDict, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import numpy as np
from scapy.packet import Packet

from qkdnet.errors import ErrorCode, KeyExhausted, LocalProtocolError, QkdnetError
from qkdnet.hub import wire as w

try:  # the key store's segment type; any object with these three fields works
    from qkdnet.keystore import KeySegment as _StoreSegment
except ImportError:  # pragma: no cover - only before the key store lands
    class _StoreSegment(NamedTuple):  # type: ignore[no-redef]
        block_id: int
        offset: int
        n_bits: int


class _EmptyGrant:
    """The grant of an empty message: no key."""

    segments: tuple[Any, ...] = ()
    data = b""


class _Scratch:
    """The router's one work buffer for pads and plaintext, zeroed after every use.

    Python cannot wipe what the key store hands out (immutable ``bytes``), but it
    can keep every value the router *computes* from key -- the plaintext between
    the two XORs of a re-keyed frame, ``K_A ⊕ K_B`` of a relay -- in memory it owns
    and zeroes before the call returns, so those never outlive the frame in freed
    heap blocks. One buffer (grown on demand, the old one already zero) also saves
    an allocation per frame.
    """

    def __init__(self) -> None:
        self._buf = np.zeros(0, dtype=np.uint8)

    @contextlib.contextmanager
    def use(self, n: int) -> Iterator[np.ndarray]:
        """A zeroed ``n``-byte view, zeroed again when the ``with`` block exits."""
        if len(self._buf) < n:
            self._buf = np.zeros(max(n, 2 * len(self._buf)), dtype=np.uint8)
        view = self._buf[:n]
        try:
            yield view
        finally:
            view.fill(0)

    @property
    def capacity(self) -> int:
        """Bytes allocated so far (0 until the first use)."""
        return len(self._buf)

    def is_clean(self) -> bool:
        """True when no byte of the buffer is set (nothing left behind)."""
        return not self._buf.any()


def _xor_into(buf: np.ndarray, data: bytes) -> None:
    np.bitwise_xor(buf, np.frombuffer(data, dtype=np.uint8), out=buf)


class Grant(Protocol):
    """What ``reserve`` returns (``qkdnet.keystore.KeyGrant``)."""

    segments: Sequence[Any]
    data: bytes


class KeyPools(Protocol):
    """The subset of :class:`qkdnet.keystore.KeyStore` the router uses."""

    def available(self, peer: str, purpose: str) -> int: ...
    def reserve(self, peer: str, purpose: str, n_bits: int) -> Any: ...
    def take(self, peer: str, purpose: str, segments: Sequence[Any]) -> bytes: ...


def as_built(pkt: Packet) -> Packet:
    """Mark ``pkt``, made from concrete field values, as explicit; returns it.

    Before building a packet scapy normally expands it into a copy (resolving
    random or list-of-choices field values), and does so again for every packet in
    a list field; hub bodies never hold such values, so the expansion only costs
    time (about half of building a DATA body). The bytes are the same
    (tests/hub/test_hub_fast_build.py); dissected packets are explicit already.
    """
    pkt.explicit = 1
    for value in pkt.fields.values():
        if isinstance(value, list):
            for item in value:
                if isinstance(item, Packet):
                    item.explicit = 1
    return pkt


@dataclass(frozen=True)
class Send:
    """Send hub message ``body`` to spoke ``to`` on its sideband connection."""

    to: str
    body: Packet

    def __post_init__(self) -> None:
        as_built(self.body)  # every body the router sends is cheap to build

    def __repr__(self) -> str:  # bodies may hold ciphertext / masked key: keep out
        return f"Send(to={self.to!r}, {type(self.body).__name__})"


@dataclass(frozen=True)
class Disconnect:
    """Close the spoke's connection with an ERROR frame (``code``, ``reason``)."""

    spoke: str
    code: ErrorCode
    reason: str


Action = Send | Disconnect


class KeyStalled(KeyExhausted):
    """No new key arrived on ``hop`` for ``stalled_s`` seconds while a message needed it.

    A :class:`~qkdnet.errors.KeyExhausted` (so callers that handle running out of key
    handle this too) whose message is one line naming the hop once, e.g. ``no key
    arrived on hop hub->bob for 60 s (2097152 bits needed, 0 available)``.
    """

    def __init__(self, requested_bits: int, available_bits: int, *, hop: str,
                 stalled_s: float, pool: str = "", message: str = "") -> None:
        super().__init__(requested_bits, available_bits, pool=pool, hop=hop)
        self.stalled_s = stalled_s
        self.args = (message or stall_message(hop, stalled_s, requested_bits,
                                              available_bits),)


def stall_message(hop: str, stalled_s: float, needed: int, available: int) -> str:
    """The one line of a :class:`KeyStalled` (also the hub's NACK detail)."""
    return (f"no key arrived on hop {hop} for {stalled_s:g} s ({needed} bits needed, "
            f"{available} available)")


class KeyArrivals:
    """When key last arrived in one sending pool, as seen by the pool's only consumer.

    The owner (the hub's router for its ``data-tx`` pools, a spoke for its own) calls
    :meth:`observe` with the pool's level whenever it looks at it and
    :meth:`consumed` after each reserve; a level above what the owner left behind is
    new key, arrived no later than that observation. Sans-I/O: times are arguments.
    """

    __slots__ = ("last", "seen")

    def __init__(self) -> None:
        self.seen: int | None = None  # the level the owner last saw or left
        self.last: float | None = None  # when new key was last seen arriving

    def observe(self, available: int, now: float) -> None:
        """The pool holds ``available`` bits at ``now``."""
        if self.seen is not None and available > self.seen:
            self.last = now
        self.seen = available

    def consumed(self, n_bits: int) -> None:
        """The owner reserved ``n_bits`` from the pool."""
        if self.seen is not None:
            self.seen = max(0, self.seen - n_bits)

    def deadline(self, since: float, stall: float) -> float:
        """When a wait that began at ``since`` fails: ``stall`` seconds after the
        later of its start and the last arrival of key."""
        last = self.last if self.last is not None else since
        return max(since, last) + stall


@dataclass
class _Item:
    """A queued message from one source to one destination."""

    body: Packet
    deadline: float
    n_bytes: int
    kind: w.NackKind
    since: float = 0.0  # when it was queued (the start of any wait for key)

    def __repr__(self) -> str:
        return f"_Item({type(self.body).__name__}, {self.n_bytes} B)"


@dataclass
class SpokeEntry:
    """Directory entry for one connected spoke."""

    name: str
    registered: bool = False
    connected_at: float = 0.0
    queues: OrderedDict[str, deque[_Item]] = field(default_factory=OrderedDict)
    queued_frames: int = 0
    queued_bytes: int = 0
    unsent: int = 0  # frames handed to the daemon for this spoke and not yet written
    frames_in: int = 0
    frames_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    relays: int = 0
    drops: collections.Counter[str] = field(default_factory=collections.Counter)


_FAILED_CHANNELS_MAX = 4096


class HubRouter:
    """The hub's sans-I/O routing core (see the module docstring)."""

    def __init__(self, hub_name: str, keys: KeyPools, *, key_wait: float = 5.0,
                 key_stall: float | None = None, queue_frames: int = 64,
                 queue_bytes: int = 2 << 20, window: int = 64,
                 relay_id_base: int = 0) -> None:
        self.hub_name = hub_name
        self.keys = keys
        self.key_wait = key_wait
        #: Seconds without new key on a hop after which a frame waiting for it fails
        #: (None: ``key_wait``).
        self.key_stall = key_wait if key_stall is None else key_stall
        self._arrivals: dict[str, KeyArrivals] = {}  # spoke -> its (spoke, data-tx)
        self.queue_frames = queue_frames
        self.queue_bytes = queue_bytes
        self.window = window
        self.spokes: dict[str, SpokeEntry] = {}
        self._rr: deque[str] = deque()  # sources with queued frames, round-robin order
        self._failed: OrderedDict[tuple[str, str, int, int], int] = OrderedDict()
        self._relay_seq = 0
        self._relay_base = relay_id_base & 0xFFFFFFFF
        self.totals: collections.Counter[str] = collections.Counter()
        self._scratch = _Scratch()
        #: Hook the hub's own local service uses (single-hop DATA to the hub).
        self.local_bytes = 0

    # -- inputs -------------------------------------------------------------------

    def connect(self, spoke: str, now: float) -> list[Action]:
        """A sideband connection authenticated as ``spoke`` is up (not yet registered)."""
        actions: list[Action] = []
        if spoke in self.spokes:  # a reconnect racing the old connection's teardown
            actions += self.disconnect(spoke, now)
        self.spokes[spoke] = SpokeEntry(spoke, connected_at=now)
        return actions

    def disconnect(self, spoke: str, now: float) -> list[Action]:
        """The spoke's connection is gone: drop its queues, fail frames bound to it."""
        entry = self.spokes.pop(spoke, None)
        if entry is None:
            return []
        if spoke in self._rr:
            self._rr.remove(spoke)
        actions: list[Action] = []
        for src, other in self.spokes.items():
            q = other.queues.pop(spoke, None)
            if not q:
                continue
            for item in q:
                other.queued_frames -= 1
                other.queued_bytes -= item.n_bytes
                actions += self._nack(src, item, w.HubReason.PEER_DISCONNECTED,
                                      f"hub->{spoke}", f"{spoke} disconnected")
            if not other.queues and src in self._rr:
                self._rr.remove(src)
        self.totals["disconnects"] += 1
        return actions

    def sent(self, spoke: str, n: int = 1) -> None:
        """The daemon wrote ``n`` frames handed to it for ``spoke`` (flow control)."""
        entry = self.spokes.get(spoke)
        if entry is not None:
            entry.unsent = max(0, entry.unsent - n)

    def receive(self, spoke: str, body: Packet, now: float) -> list[Action]:
        """A hub message arrived from ``spoke`` (sideband-authenticated)."""
        entry = self.spokes.get(spoke)
        if entry is None:
            return []
        try:
            w.check(body)
        except QkdnetError as err:
            return [Disconnect(spoke, ErrorCode.MALFORMED_FRAME, str(err))]
        entry.frames_in += 1
        if isinstance(body, w.HubRegister):
            return self._register(entry, body)
        if not entry.registered:
            return [Disconnect(spoke, ErrorCode.PROTOCOL_VIOLATION,
                               f"{type(body).__name__} before REGISTER")]
        claimed = w.as_text(getattr(body, "src", spoke.encode()))
        if claimed != spoke:
            self.totals["impersonation"] += 1
            return [Disconnect(spoke, ErrorCode.PROTOCOL_VIOLATION,
                               f"frame claims to come from {claimed!r} but the sideband "
                               f"authenticated {spoke!r}")]
        if isinstance(body, w.HubData | w.HubOpenChannel | w.HubChannelClose
                      | w.HubKeyRelayRequest):
            return self._enqueue(entry, body, now) + self.poll(now)
        if isinstance(body, w.HubDeliveryAck | w.HubDeliveryNack):
            dst = w.as_text(body.dst)
            if dst in self.spokes and self.spokes[dst].registered:
                self.spokes[dst].frames_out += 1
                return [Send(dst, body)]
            return []
        if isinstance(body, w.HubStatusRequest):
            text = json.dumps(self.spoke_status(spoke), sort_keys=True).encode()
            return [Send(spoke, w.HubStatus(request_id=body.request_id, text=text))]
        return [Disconnect(spoke, ErrorCode.PROTOCOL_VIOLATION,
                           f"a spoke may not send {type(body).__name__}")]

    def poll(self, now: float, budget: int = 256) -> list[Action]:
        """Dispatch queued frames (fair round robin) and expire waits past deadline."""
        actions: list[Action] = []
        idle_rounds = 0
        while self._rr and budget > 0 and idle_rounds < len(self._rr):
            src = self._rr[0]
            self._rr.rotate(-1)
            entry = self.spokes[src]
            progressed = False
            for dst in list(entry.queues):
                q = entry.queues[dst]
                item = q[0]
                done, acts = self._try(entry, dst, item, now)
                if done:
                    q.popleft()
                    entry.queued_frames -= 1
                    entry.queued_bytes -= item.n_bytes
                    if not q:
                        del entry.queues[dst]
                    actions += acts
                    budget -= 1
                    progressed = True
                    if dst in entry.queues:
                        entry.queues.move_to_end(dst)
                    break  # one frame per source per visit: fairness across sources
            if not entry.queues:
                self._rr.remove(src)
            idle_rounds = 0 if progressed else idle_rounds + 1
        return actions

    def next_deadline(self) -> float | None:
        """Earliest deadline of a queued frame, or None when nothing waits."""
        best: float | None = None
        for src in self._rr:
            for q in self.spokes[src].queues.values():
                if q and (best is None or q[0].deadline < best):
                    best = q[0].deadline
        return best

    def blocked(self) -> bool:
        """True when frames wait (for key or for a slow receiver)."""
        return bool(self._rr)

    # -- internals ----------------------------------------------------------------

    def _register(self, entry: SpokeEntry, body: Packet) -> list[Action]:
        claimed = w.as_text(body.spoke)
        if claimed != entry.name:
            self.totals["impersonation"] += 1
            detail = (f"name {claimed!r} does not match the sideband identity "
                      f"{entry.name!r}")
            ack = w.HubRegisterAck(status=int(w.HubReason.NAME_CONFLICT),
                                   spoke=body.spoke, hub=self.hub_name.encode(),
                                   detail=detail.encode())
            return [Send(entry.name, ack),
                    Disconnect(entry.name, ErrorCode.NAME_CONFLICT, detail)]
        entry.registered = True
        return [Send(entry.name, w.HubRegisterAck(status=0, spoke=body.spoke,
                                                  hub=self.hub_name.encode()))]

    def _enqueue(self, entry: SpokeEntry, body: Packet, now: float) -> list[Action]:
        if isinstance(body, w.HubKeyRelayRequest):
            dst, kind, size = w.as_text(body.peer), w.NackKind.RELAY, 0
        else:
            dst = w.as_text(body.dst)
            kind = w.NackKind.OPEN if isinstance(body, w.HubOpenChannel) else w.NackKind.DATA
            size = len(body.ciphertext) if isinstance(body, w.HubData) else 0
        item = _Item(body, now + self.key_wait, size, kind, now)
        if isinstance(body, w.HubChannelClose):
            item.kind = w.NackKind.DATA
        known = dst == self.hub_name or (dst in self.spokes and self.spokes[dst].registered)
        if not known or dst == entry.name:
            if isinstance(body, w.HubChannelClose):
                return []
            return self._nack(entry.name, item, w.HubReason.UNKNOWN_PEER, f"hub->{dst}",
                              f"no spoke named {dst!r} is connected to hub "
                              f"{self.hub_name!r}")
        if (entry.queued_frames >= self.queue_frames
                or entry.queued_bytes + size > self.queue_bytes):
            return self._nack(entry.name, item, w.HubReason.THROTTLED, f"{entry.name}->hub",
                              f"{entry.name} has {entry.queued_frames} frames "
                              f"({entry.queued_bytes} bytes) queued at the hub; slow down")
        q = entry.queues.get(dst)
        if q is None:
            q = entry.queues[dst] = deque()
        q.append(item)
        entry.queued_frames += 1
        entry.queued_bytes += size
        if entry.name not in self._rr:
            self._rr.append(entry.name)
        return []

    def _try(self, entry: SpokeEntry, dst: str, item: _Item,
             now: float) -> tuple[bool, list[Action]]:
        """Try to dispatch ``item``; (done, actions). Not done means: still waiting."""
        body = item.body
        src = entry.name
        if dst != self.hub_name:
            out = self.spokes.get(dst)
            if out is None or not out.registered:
                return True, self._nack(src, item, w.HubReason.PEER_DISCONNECTED,
                                        f"hub->{dst}", f"{dst} is not connected")
            if out.unsent >= self.window:
                if now >= item.deadline:
                    return True, self._fail(entry, dst, item, w.HubReason.TIMEOUT,
                                            f"hub->{dst}", f"{dst} is not reading")
                return False, []
        if isinstance(body, w.HubData):
            return self._relay_data(entry, dst, item, now)
        if isinstance(body, w.HubKeyRelayRequest):
            return self._relay_key(entry, dst, item, now)
        if isinstance(body, w.HubChannelClose):
            self._failed.pop(self._chan(body, src, dst), None)
        if dst == self.hub_name:  # the hub's own endpoint accepts opens and closes
            if isinstance(body, w.HubOpenChannel):
                return True, [Send(src, w.HubDeliveryAck(
                    kind=int(w.NackKind.OPEN), src=dst.encode(), dst=src.encode(),
                    channel_id=body.channel_id, end=0, msg_seq=0))]
            return True, []
        return True, self._out(dst, body)

    def _relay_data(self, entry: SpokeEntry, dst: str, item: _Item,
                    now: float) -> tuple[bool, list[Action]]:
        body = item.body
        src = entry.name
        chan = self._chan(body, src, dst)
        if chan in self._failed:
            return True, self._nack(src, item, w.HubReason.CHANNEL_FAILED, f"hub->{dst}",
                                    "an earlier message of this channel failed")
        ciphertext = body.ciphertext  # scapy attribute reads are slow: read once
        n_bytes = len(ciphertext)
        n_bits = 8 * n_bytes
        to_hub = dst == self.hub_name
        if not to_hub and (short := self._key_short(entry, dst, item, dst, n_bits, now)):
            return short
        segs = [_StoreSegment(int(s.block_id), int(s.offset), int(s.n_bits))
                for s in body.segments]
        try:
            k_in = self.keys.take(src, "data-rx", segs) if n_bits else b""
        except KeyExhausted as err:
            # Usually the A->hub block has not reached the hub's store yet: wait.
            if now >= item.deadline:
                return True, self._fail(entry, dst, item, w.HubReason.KEY_EXHAUSTED,
                                        f"{src}->hub", f"key exhausted on hop {src}->hub: "
                                        f"the referenced key is not in the hub's pool "
                                        f"({err.requested_bits} bits asked)",
                                        err.requested_bits, err.available_bits)
            return False, []
        except LocalProtocolError:  # KeyReuseError, overlapping or invalid segments
            self.totals["key_reuse"] += 1
            return True, self._fail(entry, dst, item, w.HubReason.PROTOCOL_VIOLATION,
                                    f"{src}->hub", "the frame names key bits already "
                                    "used (replayed or forged key reference)")
        with self._scratch.use(n_bytes) as buf:
            buf[:] = np.frombuffer(ciphertext, dtype=np.uint8)
            _xor_into(buf, k_in)
            del k_in  # the store's copy: the router keeps no reference to it
            # buf now holds the plaintext: the only place it exists at the hub, and
            # _Scratch zeroes it on every way out of this block.
            entry.bytes_in += n_bytes
            if to_hub:
                self.local_bytes += n_bytes
                self.totals["local_delivered"] += 1
                entry.frames_out += 1
                return True, [Send(src, w.HubDeliveryAck(
                    kind=int(w.NackKind.DATA), src=dst.encode(), dst=src.encode(),
                    channel_id=body.channel_id, end=body.end, msg_seq=body.msg_seq))]
            try:
                grant = (self.keys.reserve(dst, "data-tx", n_bits) if n_bits
                         else _EmptyGrant())
            except KeyExhausted as err:
                return True, self._fail(entry, dst, item, w.HubReason.KEY_EXHAUSTED,
                                        f"hub->{dst}", str(err))
            self._arrived(dst).consumed(n_bits)
            _xor_into(buf, grant.data)
            segments = [w.KeySegmentField(block_id=s.block_id, offset=s.offset,
                                          n_bits=s.n_bits) for s in grant.segments]
            del grant
            ciphertext = buf.tobytes()
        fwd = w.HubData(
            src=body.src, dst=body.dst, service=body.service, channel_id=body.channel_id,
            end=body.end, msg_seq=body.msg_seq, segments=segments, ciphertext=ciphertext)
        self.totals["relayed"] += 1
        self.totals["relayed_bytes"] += n_bytes
        return True, self._out(dst, fwd, n_bytes)

    def _key_short(self, entry: SpokeEntry, dst: str, item: _Item, who: str, n_bits: int,
                   now: float) -> tuple[bool, list[Action]] | None:
        """None if hub->``who`` holds ``n_bits`` of key; else wait while key keeps
        arriving, or fail once none has arrived for ``key_stall`` seconds."""
        have = self.keys.available(who, "data-tx")
        arrivals = self._arrived(who)
        arrivals.observe(have, now)
        if have >= n_bits:
            return None
        if now < arrivals.deadline(item.since, self.key_stall):
            return False, []
        hop = f"hub->{who}"
        return True, self._fail(
            entry, dst, item, w.HubReason.KEY_EXHAUSTED, hop,
            stall_message(hop, self.key_stall, n_bits, have), n_bits, have)

    def _arrived(self, who: str) -> KeyArrivals:
        arrivals = self._arrivals.get(who)
        if arrivals is None:
            arrivals = self._arrivals[who] = KeyArrivals()
        return arrivals

    def _relay_key(self, entry: SpokeEntry, dst: str, item: _Item,
                   now: float) -> tuple[bool, list[Action]]:
        body = item.body
        src = entry.name
        n = int(body.n_bits)
        for who in (src, dst):
            if short := self._key_short(entry, dst, item, who, n, now):
                return short
        try:
            ga = self.keys.reserve(src, "data-tx", n)
            gb = self.keys.reserve(dst, "data-tx", n)
        except KeyExhausted as err:
            return True, self._fail(entry, dst, item, w.HubReason.KEY_EXHAUSTED,
                                    err.hop or "hub", str(err))
        self._arrived(src).consumed(n)
        self._arrived(dst).consumed(n)
        # K_A xor K_B is sent in the clear (the sideband authenticates, it does not
        # encrypt), but it is computed in the scratch buffer so no extra copy of the
        # intermediate lingers; the store's K_A / K_B bytes are dropped at once.
        with self._scratch.use(len(ga.data)) as buf:
            buf[:] = np.frombuffer(ga.data, dtype=np.uint8)
            _xor_into(buf, gb.data)
            masked = buf.tobytes()
        seg_a, seg_b = ga.segments, gb.segments
        del ga, gb
        self._relay_seq += 1
        block_id = (self._relay_base << 32) | (self._relay_seq & 0xFFFFFFFF)

        def segs(segments: Sequence[Any]) -> list[Any]:
            return [w.KeySegmentField(block_id=s.block_id, offset=s.offset, n_bits=s.n_bits)
                    for s in segments]

        to_b = w.HubKeyRelay(peer=src.encode(), request_id=body.request_id, role=1,
                             e2e_block_id=block_id, n_bits=n, segments=segs(seg_b),
                             masked=masked)
        to_a = w.HubKeyRelay(peer=dst.encode(), request_id=body.request_id, role=0,
                             e2e_block_id=block_id, n_bits=n, segments=segs(seg_a))
        entry.relays += 1
        self.totals["key_relays"] += 1
        # B first: its store holds the key before A can use it on any path via B.
        return True, self._out(dst, to_b) + self._out(src, to_a)

    def _out(self, dst: str, body: Packet, data_bytes: int | None = None) -> list[Action]:
        """Send ``body`` to ``dst``; ``data_bytes``: its ciphertext length, if known."""
        out = self.spokes.get(dst)
        if out is None:
            return []
        out.frames_out += 1
        if isinstance(body, w.HubData | w.HubKeyRelay):
            out.unsent += 1  # the daemon calls sent() when it has written these
        if isinstance(body, w.HubData):
            out.bytes_out += len(body.ciphertext) if data_bytes is None else data_bytes
        return [Send(dst, body)]

    @staticmethod
    def _chan(body: Packet, src: str, dst: str) -> tuple[str, str, int, int]:
        end = int(getattr(body, "end", 0))
        opener, acceptor = (src, dst) if end == 0 else (dst, src)
        return (opener, acceptor, int(body.channel_id), 0)

    def _fail(self, entry: SpokeEntry, dst: str, item: _Item, reason: w.HubReason,
              hop: str, detail: str, needed: int = 0, available: int = 0) -> list[Action]:
        if item.kind == w.NackKind.DATA and hasattr(item.body, "channel_id"):
            self._failed[self._chan(item.body, entry.name, dst)] = 1
            while len(self._failed) > _FAILED_CHANNELS_MAX:
                self._failed.popitem(last=False)
        return self._nack(entry.name, item, reason, hop, detail, needed, available)

    def _nack(self, src: str, item: _Item, reason: w.HubReason, hop: str,
              detail: str, needed: int = 0, available: int = 0) -> list[Action]:
        """DELIVERY_NACK from the hub to ``src`` about ``item``."""
        body = item.body
        self.totals[f"nack_{reason.name.lower()}"] += 1
        entry = self.spokes.get(src)
        if entry is not None:
            entry.drops[reason.name.lower()] += 1
        if isinstance(body, w.HubChannelClose):
            return []
        if isinstance(body, w.HubKeyRelayRequest):
            chan, end, seq, peer = body.request_id, 0, 0, body.peer
        else:
            chan, end, seq, peer = (body.channel_id, int(getattr(body, "end", 0)),
                                    int(getattr(body, "msg_seq", 0)), body.dst)
        nack = w.HubDeliveryNack(kind=int(item.kind), src=self.hub_name.encode(),
                                 dst=peer if isinstance(peer, bytes) else peer.encode(),
                                 channel_id=chan, end=end, msg_seq=seq, reason=int(reason),
                                 bits_needed=min(needed, 0xFFFFFFFF),
                                 bits_available=min(available, 0xFFFFFFFF),
                                 hop=hop.encode()[:255], detail=detail.encode()[:w.MAX_DETAIL])
        return [Send(src, nack)] if entry is not None else []

    # -- status -------------------------------------------------------------------

    def spoke_status(self, spoke: str) -> dict[str, Any]:
        """Counters for one spoke (no key material: counts only)."""
        e = self.spokes.get(spoke)
        if e is None:
            return {"name": spoke, "connected": False}
        return {
            "name": spoke, "connected": True, "registered": e.registered,
            "frames_in": e.frames_in, "frames_out": e.frames_out,
            "bytes_in": e.bytes_in, "bytes_out": e.bytes_out,
            "queued_frames": e.queued_frames, "queued_bytes": e.queued_bytes,
            "key_relays": e.relays, "drops": dict(e.drops),
            "key_bits": {
                "hub_to_spoke": _avail(self.keys, spoke, "data-tx"),
                "spoke_to_hub": _avail(self.keys, spoke, "data-rx"),
                # Authentication pools: the sideband's tags spend them; the link
                # tops them up from distilled key (a link stops if one runs dry).
                "auth_hub_to_spoke": _avail(self.keys, spoke, "auth-tx"),
                "auth_spoke_to_hub": _avail(self.keys, spoke, "auth-rx"),
            },
        }

    def status(self) -> dict[str, Any]:
        """The whole directory and totals."""
        return {
            "hub": self.hub_name,
            "spokes": {name: self.spoke_status(name) for name in sorted(self.spokes)},
            "totals": dict(self.totals),
        }


def _avail(keys: KeyPools, peer: str, purpose: str) -> int:
    try:
        return int(keys.available(peer, purpose))
    except QkdnetError:
        return 0

