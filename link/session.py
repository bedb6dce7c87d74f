"""Sans-I/O link sessions: decoy-state BB84 post-processing for the two roles.

Theory of operation
-------------------
A link session turns one block of pulse slots at a time into secret key shared by
the transmitter (Alice, a spoke, owns the :class:`~qkdnet.phy.source.AliceSource`)
and the receiver (Bob, the hub, owns the detectors).  Each block runs its own small
state machine; several blocks may be in flight at once (the driver pipelines them),
and messages name their block index.  The session never does I/O: the driver feeds
it received frames (``receive_frame(frame, now)``), PHY results
(``supply_detections``) and timer expiries (``handle_timer(now)``), and executes
the outputs it returns, in order: :class:`Send` a body, :class:`DetectionsNeeded`
(run the PHY for a slot range), :class:`StoreBlock` (write the parts to the key
store — before the next output is executed), and the notifications
:class:`BlockStored` / :class:`BlockAborted`.

One block (A = transmitter, B = receiver).  The exchange messages (DETECTIONS, SIFT,
ESTIMATE, ESTIMATE_RESULT, PARITY_REQUEST/REPLY) travel under the sideband's
*deferred authentication*: they carry no tag of their own, and the next tagged frame
of the same direction authenticates them.  The tagged frames — BLOCK_START, VERIFY,
PA, BLOCK_DONE, CONFIRM, ABORT — are the block's checkpoints, and nothing
irreversible happens before one: B stores only on PA (whose tag covers everything A
sent) and CONFIRM, A only on BLOCK_DONE, and A sends PA only after VERIFY's tag has
covered everything B sent.  A block costs five tags (640 bits), whatever its size::

    A  BLOCK_START(index, slots, eps)  ->  B   B runs the PHY for those slots
    A  <-  DETECTIONS(clicked slots, B's bases)  (one or more chunks)
    A  SIFT(keep mask, intensity of each kept slot)  ->  B
    A  <-  ESTIMATE(B's X-basis bits)          A counts X errors per intensity,
                                               aborts on QBER or on a bound that
                                               cannot give key even without EC leakage
    A  ESTIMATE_RESULT(m_X per intensity, QBER, Cascade seed)  ->  B
    A  <-  PARITY_REQUEST / PARITY_REPLY ->    Cascade, B corrects towards A, one
                                               batched request per step
    A  <-  VERIFY(m_Z per intensity, hash seed, tag)   A compares tags, computes the
                                               finite-key length ell with the exact
                                               leakage, picks the key split
    A  PA(Toeplitz seed, ell, auth split)  ->  B   both hash to ell bits; B stores
                                               its -rx parts
    A  <-  BLOCK_DONE                          A stores the whole block
    A  CONFIRM  ->  B                          B stores its -tx parts

Storage is two-phase so that no end ever holds -tx key whose mirror the other end
lacks (spec/link.md §2): an ABORT from A while B waits for CONFIRM makes B burn its
-rx parts (:class:`BurnParts`), and an ABORT from B for a block A stored makes A
burn its -rx parts.

Either side may send ABORT(reason) at any point; a block that aborts stores nothing.
Alice decides everything that must agree (ell, split, seeds except Bob's
verification seed); Bob re-checks that ell does not exceed the bound he computes
from the same counts.  The whole transition table is :data:`TRANSITIONS`, keyed by
(role, state, input); an input with no entry is a protocol violation that aborts the
block.  Input validation lives in :mod:`qkdnet.link.wire`'s decoders, which raise
RemoteProtocolError; the session turns that into ABORT(PROTOCOL) for the block.
Messages for a block this side already finished or abandoned are ignored (they
cross our own ABORT on the wire); messages for a block never seen are a
connection-level RemoteProtocolError.

Every step arms a deadline (``step_timeout``); :meth:`get_timer` returns the earliest
and :meth:`handle_timer` aborts the blocks that passed theirs (like aioquic).

Key bits never appear in a repr, a log line, an event field that is traced, or an
exception message: :class:`KeyPart` hides them, stats hold only counts.
"""

from __future__ import annotations

import dataclasses
import enum
import hmac
import logging
import math
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from scapy.packet import Packet

from qkdnet.errors import LocalProtocolError, RemoteProtocolError
from qkdnet.link import cascade, finite_key, ldpc, privacy, sifting, verify
from qkdnet.link import wire as w
from qkdnet.link.wire import AbortReason, LinkMsg

log = logging.getLogger(__name__)

#: Bits of auth key one tagged sideband frame spends (one 128-bit Poly1305 pad ``s``).
TAG_KEY_BITS = 128
#: Tagged frames of a stored block: BLOCK_START, VERIFY, PA, BLOCK_DONE, CONFIRM.
TAGGED_FRAMES_PER_BLOCK = 5


#: Leakage conventions (see LinkConfig.leak_accounting).
LEAK_ACCOUNTING = ("strict", "alice-only")
#: Reconciliation choices (see LinkConfig.reconciliation).
RECONCILIATION = ("auto", "ldpc", "cascade")
#: Cascade's efficiency f (disclosed parities / n·h(QBER)) used to predict its leak
#: when choosing the method: measured 1.04–1.07 at n ≥ 1e5, QBER 1–8 % (docs/cascade.md).
CASCADE_F_ESTIMATE = 1.07
#: Smallest key for LDPC frames (qkdnet.link.ldpc.LdpcPlan needs 1024 bits).
LDPC_MIN_BITS = 1024
#: How much more wall time a block costs reconciled by LDPC than by Cascade, measured
#: with ``link run`` at snspd-metro 10 km, default blocks: 21.6 s against 8.2 s for
#: four blocks (docs/block-size.md). "auto" picks LDPC only where its expected key
#: beats Cascade's by more than this, i.e. where it gives more key per wall-second.
LDPC_COST_RATIO = 2.6


class Role(enum.Enum):
    """Which end of the link a session is."""

    TRANSMITTER = "transmitter"   # Alice: holds the source
    RECEIVER = "receiver"         # Bob: holds the detectors


class State(enum.Enum):
    """Per-block states (see the module docstring for the message flow)."""

    NEW = "new"
    WAIT_DETECTIONS = "wait-detections"       # A
    WAIT_ESTIMATE = "wait-estimate"           # A
    RECONCILE = "reconcile"                   # A and B
    WAIT_DONE = "wait-done"                   # A
    WAIT_PHY = "wait-phy"                     # B
    WAIT_SIFT = "wait-sift"                   # B
    WAIT_ESTIMATE_RESULT = "wait-estimate-result"  # B
    WAIT_PA = "wait-pa"                       # B
    WAIT_CONFIRM = "wait-confirm"             # B
    DONE = "done"
    ABORTED = "aborted"


class Local(enum.Enum):
    """Inputs that come from the driver rather than the peer."""

    START = "start_block"
    PHY = "supply_detections"


# (role, state, input) -> (handler method, states the handler may move to).
A, B = Role.TRANSMITTER, Role.RECEIVER
S = State
TRANSITIONS: dict[tuple[Role, State, LinkMsg | Local], tuple[str, tuple[State, ...]]] = {
    (A, S.NEW, Local.START): ("_a_start", (S.WAIT_DETECTIONS,)),
    (A, S.WAIT_DETECTIONS, LinkMsg.DETECTIONS): (
        "_a_detections", (S.WAIT_DETECTIONS, S.WAIT_ESTIMATE)),
    (A, S.WAIT_ESTIMATE, LinkMsg.ESTIMATE): ("_a_estimate", (S.RECONCILE,)),
    (A, S.RECONCILE, LinkMsg.PARITY_REQUEST): ("_a_parity_request", (S.RECONCILE,)),
    (A, S.RECONCILE, LinkMsg.LDPC_REQUEST): ("_a_ldpc_request", (S.RECONCILE,)),
    (A, S.RECONCILE, LinkMsg.VERIFY): ("_a_verify", (S.WAIT_DONE,)),
    (A, S.WAIT_DONE, LinkMsg.BLOCK_DONE): ("_a_block_done", (S.DONE,)),
    (B, S.NEW, LinkMsg.BLOCK_START): ("_b_block_start", (S.WAIT_PHY,)),
    (B, S.WAIT_PHY, Local.PHY): ("_b_detections", (S.WAIT_SIFT,)),
    (B, S.WAIT_SIFT, LinkMsg.SIFT): ("_b_sift", (S.WAIT_ESTIMATE_RESULT,)),
    (B, S.WAIT_ESTIMATE_RESULT, LinkMsg.ESTIMATE_RESULT): (
        "_b_estimate_result", (S.RECONCILE, S.WAIT_PA)),
    (B, S.RECONCILE, LinkMsg.PARITY_REPLY): ("_b_parity_reply", (S.RECONCILE, S.WAIT_PA)),
    (B, S.RECONCILE, LinkMsg.LDPC_SYNDROME): ("_b_ldpc_syndrome", (S.RECONCILE, S.WAIT_PA)),
    (B, S.RECONCILE, LinkMsg.LDPC_REPLY): ("_b_ldpc_reply", (S.RECONCILE, S.WAIT_PA)),
    (B, S.WAIT_PA, LinkMsg.PA): ("_b_pa", (S.WAIT_CONFIRM,)),
    (B, S.WAIT_CONFIRM, LinkMsg.CONFIRM): ("_b_confirm", (S.DONE,)),
}
# ABORT is accepted in every live state of both roles (handled before the table).
del A, B, S

_LIVE = frozenset(State) - {State.NEW, State.DONE, State.ABORTED}


def transition_table_markdown() -> str:
    """:data:`TRANSITIONS` as the markdown table printed in spec/link.md."""
    rows = ["| role | state | input | handler | next state(s) |", "|---|---|---|---|---|"]
    for (role, state, event), (handler, nexts) in TRANSITIONS.items():
        name = event.name if isinstance(event, LinkMsg) else f"({event.value})"
        rows.append(f"| {role.value} | {state.value} | {name} | `{handler}` | "
                    f"{', '.join(n.value for n in nexts)} |")
    rows.append("| both | any live state | ABORT | — | aborted |")
    return "\n".join(rows)


# --------------------------------------------------------------------------------------
# Configuration, inputs and outputs


@dataclass(frozen=True)
class LinkConfig:
    """Parameters both ends of a link must agree on (``mu``/``p`` come from the preset).

    ``mu`` and ``p`` list the intensities actually used (2 for one decoy, 3 for two).
    ``auth_reserve_bits`` is the level the transmitter tops each auth pool up to
    before splitting the rest of a block into data key.
    """

    session_id: int
    mu: tuple[float, ...]
    p: tuple[float, ...]
    eps_sec: float = 1e-10
    eps_cor: float = 1e-15
    qber_max: float = 0.11
    step_timeout: float = 60.0
    auth_reserve_bits: int = 1 << 16
    basis_probs: tuple[float, float] = (0.5, 0.5)   # (Alice P(Z), Bob P(Z)), for Y1 only
    max_cascade_steps: int = 4096
    #: How error-correction leakage enters ℓ: "strict" (default) counts what both ends
    #: disclose (Tupkary & Lütkenhaus, Phys. Rev. Applied 20, 064040 (2023)); the older
    #: "alice-only" convention counts Alice's Cascade parities alone and is not covered
    #: by the cited proofs (kept only to reproduce earlier figures).
    leak_accounting: str = "strict"
    #: Error correction: "auto" (default), "cascade" or "ldpc". Under strict
    #: accounting LDPC discloses less than Cascade, so it distils more key per block,
    #: but its decoder makes a block cost ~2.6x the wall time (docs/block-size.md);
    #: "auto" lets Alice pick, per block, the method with more expected key per
    #: wall-second: LDPC only where its expected ℓ exceeds Cascade's by more than
    #: :data:`LDPC_COST_RATIO` (noisy links, where Cascade leaves little or nothing).
    reconciliation: str = "auto"

    def __post_init__(self) -> None:
        if not 0 <= self.session_id < 1 << 32:
            raise ValueError("session_id must fit 32 bits")
        if self.leak_accounting not in LEAK_ACCOUNTING:
            raise ValueError(f"leak_accounting must be one of {', '.join(LEAK_ACCOUNTING)}")
        if self.reconciliation not in RECONCILIATION:
            raise ValueError(f"reconciliation must be one of {', '.join(RECONCILIATION)}")
        if len(self.mu) not in (2, 3) or len(self.p) != len(self.mu):
            raise ValueError("mu and p need 2 or 3 entries each")

    @classmethod
    def from_phy(cls, params: Any, session_id: int, **kw: Any) -> LinkConfig:
        """Config for a :class:`qkdnet.phy.params.PhyParams` preset (one decoy if p3 = 0)."""
        k = 3 if params.p_mu[2] > 0 else 2
        return cls(session_id=session_id, mu=tuple(params.mu[:k]), p=tuple(params.p_mu[:k]),
                   basis_probs=(params.p_z, params.q_z), **kw)

    @property
    def n_intensities(self) -> int:
        return len(self.mu)


class SlotSource(Protocol):
    """What the transmitter needs from :class:`qkdnet.phy.source.AliceSource`."""

    def lookup(self, slots: np.ndarray) -> Any: ...


@dataclass(frozen=True)
class Send:
    """Send ``body`` on the sideband with header ``session`` = the link session id."""

    block: int
    body: Packet


@dataclass(frozen=True)
class DetectionsNeeded:
    """Receiver: run the PHY for these slots and call :meth:`supply_detections`."""

    block: int
    start_slot: int
    n_slots: int


@dataclass(frozen=True, repr=False)
class KeyPart:
    """One key-store block: ``purpose`` pool of the peer, ``key`` packed MSB first."""

    purpose: str
    block_id: int
    key: bytes
    n_bits: int

    def __repr__(self) -> str:
        return f"KeyPart({self.purpose}, id={self.block_id:#x}, {self.n_bits} bits)"


@dataclass(frozen=True)
class BlockStats:
    """Public statistics of one block (no key material; JSON-able via ``as_dict``)."""

    block: int
    start_slot: int = 0
    n_slots: int = 0
    clicks: int = 0
    sifted: int = 0
    n_key: int = 0                 # key-basis (Z) sifted bits
    n_est: int = 0                 # estimation-basis (X) sifted bits
    qber_est: float | None = None  # X-basis error rate
    qber_key: float | None = None  # Z-basis error rate found by Cascade
    s0_lower: float | None = None
    s1_lower: float | None = None
    y1_lower: float | None = None  # single-photon yield lower bound
    e1_upper: float | None = None  # single-photon X error rate upper bound (v1/s1_x)
    phi_upper: float | None = None
    leak_ec_bits: int = 0
    verify_bits: int = 0
    #: Every count, bound and ε term that enters ℓ (see ``ell_inputs`` in spec/link.md
    #: §2, "Auditing ℓ"), so ℓ can be recomputed from the public output alone.
    ell_inputs: dict[str, Any] = field(default_factory=dict)
    ell: int = 0
    auth_bits: int = 0
    frames: int = 0
    cascade_steps: int = 0         # Cascade requests, or LDPC rounds
    wall_time: float = 0.0
    method: str = ""               # the finite-key bound used
    reconciliation: str = ""       # "cascade" or "ldpc"
    abort_reason: str | None = None
    abort_detail: str = ""
    aborted_by_peer: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class StoreBlock:
    """Write these parts to the key store in one transaction (all or none), then continue.

    The meta fields are those of :class:`qkdnet.keystore.BlockMeta`.  The receiver
    stores a block in two steps (its ``-rx`` parts at PA, its ``-tx`` parts at
    CONFIRM), so one block may give two StoreBlock outputs there.
    """

    block: int
    parts: tuple[KeyPart, ...]
    link_session: str
    created: float
    eps_sec: float
    eps_cor: float
    leaked_ec_bits: int
    auth_bits_spent: int
    qber: float | None


@dataclass(frozen=True)
class BurnParts:
    """Consume these stored ``-rx`` parts so they are never used (no key bytes here).

    Emitted when a block this end already stored half of is abandoned by the peer
    before the peer stored the mirror half: the parts ``(purpose, block_id, n_bits)``
    have no counterpart at the peer (spec/link.md §2, storage).
    """

    block: int
    parts: tuple[tuple[str, int, int], ...]


@dataclass(frozen=True)
class BlockStored:
    """The block's key is in the store at this end."""

    block: int
    stats: BlockStats


@dataclass(frozen=True)
class BlockAborted:
    """The block was abandoned; nothing of it was stored."""

    block: int
    reason: AbortReason
    stats: BlockStats
    error: RemoteProtocolError | None = None


Output = Send | DetectionsNeeded | StoreBlock | BurnParts | BlockStored | BlockAborted


def block_id(session_id: int, index: int, part: int) -> int:
    """Key-store block id (docs/design.md, "Link → key store")."""
    return (session_id << 32) | (index << 2) | part


def leakage_parts(n_z: Any, ldpc_bits: int, alice_parities: int, accounting: str,
                  eps_cor: float) -> dict[str, int]:
    """Every part of λ for a block with key-basis counts ``n_z`` per intensity (see
    :meth:`LinkSession._leakage`; ``qkdnet.link.capture_audit`` counts the same from a
    capture)."""
    n = int(sum(int(v) for v in n_z))
    return {
        "ldpc": ldpc_bits,
        "cascade_alice_parities": alice_parities,
        "cascade_bob_parities": alice_parities if accounting == "strict" else 0,
        "verify_error_counts": int(sum(math.ceil(math.log2(int(v) + 1)) for v in n_z)),
        "verify_tag_extra": extra_verify_leak(verify.tag_bits_for(eps_cor, n), eps_cor),
    }


def extra_verify_leak(tag_bits: int, eps_cor: float) -> int:
    """Tag bits beyond the log2(2/eps_cor) the finite-key formula already subtracts."""
    return max(0, tag_bits - math.floor(math.log2(2.0 / eps_cor)))


class _Abort(Exception):
    """Raised inside a handler to abandon the block with ``reason``."""

    def __init__(self, reason: AbortReason, detail: str = "") -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(repr=False)
class _Block:
    """Everything one block holds while in flight (key bits included: never logged)."""

    index: int
    state: State
    start_slot: int = 0
    n_slots: int = 0
    started: float = 0.0
    deadline: float = math.inf
    frames: int = 0
    tagged: int = 0                # frames with a tag of their own (the rest deferred)
    eps_sec: float = 1e-10
    eps_cor: float = 1e-15
    qber_max: float = 0.11
    stats: dict[str, Any] = field(default_factory=dict)
    # detections / sifting
    offsets: list[np.ndarray] = field(default_factory=list)
    bases: list[np.ndarray] = field(default_factory=list)
    received: int = 0
    last_offset: int = -1
    bob_bits: np.ndarray | None = None
    n_clicks: int = 0
    # key basis (Z) and estimation basis (X), per kept slot
    z_bits: np.ndarray | None = None          # own raw key bits (0/1)
    z_int: np.ndarray | None = None
    x_bits: np.ndarray | None = None
    x_int: np.ndarray | None = None
    n_z: np.ndarray | None = None             # counts per intensity
    n_x: np.ndarray | None = None
    m_x: np.ndarray | None = None
    m_z: np.ndarray | None = None
    qber: float = 0.0
    # reconciliation
    method: Any = None                        # w.Reconciliation
    ldpc_leak: int = 0                        # bits the LDPC exchange disclosed
    plan: Any = None
    corrector: Any = None
    step: int = 0
    outstanding: int = 0
    leaked: int = 0
    corrected: np.ndarray | None = None       # packed
    key: np.ndarray | None = None             # final key, 0/1
    split: tuple[int, int] = (0, 0)
    fk: Any = None
    # receiver: the -rx parts stored at PA, (purpose, block_id, n_bits)
    stored_rx: tuple[tuple[str, int, int], ...] = ()

    def __repr__(self) -> str:
        return f"_Block({self.index}, {self.state.value})"


# --------------------------------------------------------------------------------------
# The session


class LinkSession:
    """Common machinery of both roles: dispatch through :data:`TRANSITIONS`, aborts, timers."""

    role: Role

    def __init__(self, config: LinkConfig, *,
                 random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        self.config = config
        self._random = random_bytes
        self._blocks: dict[int, _Block] = {}
        #: Indices of finished/abandoned blocks, so late frames for them are ignored.
        self._closed: OrderedDict[int, None] = OrderedDict()
        self._finished_limit = 1024
        #: Transmitter: the -rx parts of recently stored blocks, burned if the
        #: receiver abandons the block after all (it then never stored their mirror).
        self._stored_rx: OrderedDict[int, tuple[tuple[str, int, int], ...]] = OrderedDict()

    # -- public API -------------------------------------------------------------------

    @property
    def session_id(self) -> int:
        return self.config.session_id

    def in_flight(self) -> int:
        """Blocks started and not yet stored or aborted."""
        return len(self._blocks)

    def block_state(self, index: int) -> State | None:
        blk = self._blocks.get(index)
        if blk is not None:
            return blk.state
        return State.DONE if index in self._closed else None

    def receive_frame(self, frame: Any, now: float) -> list[Output]:
        """Process one received link frame (``FrameReceived`` or (type, body) pair).

        Raises RemoteProtocolError only for frames that cannot be attributed to a
        block of this session; anything else wrong aborts the block it names.
        """
        msg_type, body = _type_and_body(frame)
        pkt = w.parse_body(msg_type, body)
        t = LinkMsg(msg_type)
        index = int(pkt.block)
        blk = self._blocks.get(index)
        if blk is None:
            if index in self._closed:
                if t is LinkMsg.ABORT and index in self._stored_rx:
                    # The receiver abandoned a block we stored: it has our -tx parts'
                    # mirror (stored at PA) but never stored its -tx parts, so our -rx
                    # parts would never be used; burn them (spec/link.md §2).
                    return [BurnParts(index, self._stored_rx.pop(index))]
                return []           # crossed our ABORT or a retransmission: ignore
            if t is LinkMsg.BLOCK_START and self.role is Role.RECEIVER:
                blk = _Block(index=index, state=State.NEW, started=now)
                self._blocks[index] = blk
            else:
                raise RemoteProtocolError(f"{t.name} for unknown block {index}")
        if getattr(frame, "deferred", False) and t not in w.DEFERRED_MSGS:
            # The sideband refuses this already; a checkpoint must carry its own tag.
            raise RemoteProtocolError(f"{t.name} arrived without a tag of its own")
        _count(blk, t)
        if t is LinkMsg.ABORT:
            reason = w.decode_abort(pkt)
            return self._finish_abort(blk, reason, "aborted by peer", now, remote=True)
        return self._dispatch(blk, t, pkt, now)

    def get_timer(self) -> float | None:
        """Earliest deadline of any block in flight, or None."""
        deadlines = [b.deadline for b in self._blocks.values()]
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> list[Output]:
        """Abort every block whose step deadline has passed."""
        out: list[Output] = []
        for blk in [b for b in self._blocks.values() if b.deadline <= now]:
            out += self._abort(blk, AbortReason.TIMEOUT, "step deadline passed", now)
        return out

    def abort_block(self, index: int, reason: AbortReason, detail: str, now: float
                    ) -> list[Output]:
        """Abandon a block for a local reason (PHY or key-store failure, shutdown)."""
        blk = self._blocks.get(index)
        if blk is None:
            return []
        return self._abort(blk, reason, detail, now)

    def abort_all(self, reason: AbortReason, detail: str, now: float) -> list[Output]:
        out: list[Output] = []
        for index in list(self._blocks):
            out += self.abort_block(index, reason, detail, now)
        return out

    # -- dispatch ---------------------------------------------------------------------

    def _dispatch(self, blk: _Block, event: LinkMsg | Local, arg: Any, now: float
                  ) -> list[Output]:
        entry = TRANSITIONS.get((self.role, blk.state, event))
        try:
            if entry is None:
                name = event.name if isinstance(event, LinkMsg) else event.value
                raise RemoteProtocolError(
                    f"{name} not allowed in state {blk.state.value} of block {blk.index}")
            handler, allowed = entry
            out, new_state = getattr(self, handler)(blk, arg, now)
            if new_state not in allowed:  # pragma: no cover - a bug in this module
                raise LocalProtocolError(f"{handler} moved to {new_state}")
        except RemoteProtocolError as err:
            log.info("link block %d: protocol error: %s", blk.index, err)
            return self._abort(blk, AbortReason.PROTOCOL, str(err), now, error=err)
        except _Abort as ab:
            return self._abort(blk, ab.reason, ab.detail, now)
        except (ValueError, ArithmeticError, LocalProtocolError, MemoryError) as err:
            # A local failure (an algorithm refusing its input, memory): abandon the
            # block, keep the link.  The message names the type only: algorithm
            # errors could in principle quote values derived from key bits.
            log.warning("link block %d: local failure %s", blk.index, type(err).__name__)
            return self._abort(blk, AbortReason.LOCAL, type(err).__name__, now)
        blk.state = new_state
        blk.deadline = now + self.config.step_timeout
        for o in out:
            if isinstance(o, Send):
                _count(blk, w.msg_type(o.body))
        if new_state is State.DONE:
            self._close(blk)
        return out

    def _abort(self, blk: _Block, reason: AbortReason, detail: str, now: float,
               error: RemoteProtocolError | None = None) -> list[Output]:
        out: list[Output] = [Send(blk.index, w.encode_abort(blk.index, reason))]
        _count(blk, LinkMsg.ABORT)
        return out + self._finish_abort(blk, reason, detail, now, error=error)

    def _finish_abort(self, blk: _Block, reason: AbortReason, detail: str, now: float,
                      remote: bool = False, error: RemoteProtocolError | None = None
                      ) -> list[Output]:
        out: list[Output] = []
        if remote and blk.state is State.WAIT_CONFIRM and blk.stored_rx:
            # The transmitter abandoned the block before storing it (it stores all of
            # it, then sends CONFIRM): the -rx parts we stored at PA have no mirror.
            out.append(BurnParts(blk.index, blk.stored_rx))
        blk.state = State.ABORTED
        stats = self._stats(blk, now, abort_reason=reason.word, abort_detail=detail,
                            aborted_by_peer=remote)
        self._close(blk)
        return [*out, BlockAborted(blk.index, reason, stats, error)]

    def _close(self, blk: _Block) -> None:
        self._blocks.pop(blk.index, None)
        self._closed[blk.index] = None
        while len(self._closed) > self._finished_limit:
            self._closed.popitem(last=False)
        # Drop every array the block held; key material must not outlive the block.
        for f in dataclasses.fields(blk):
            if f.name not in ("index", "state", "stats"):
                setattr(blk, f.name, None)

    # -- shared helpers ---------------------------------------------------------------

    def _stats(self, blk: _Block, now: float, **extra: Any) -> BlockStats:
        st = dict(blk.stats)
        st.update(extra)
        frames = blk.frames or 0
        return BlockStats(block=blk.index, frames=frames,
                          auth_bits=(blk.tagged or 0) * TAG_KEY_BITS,
                          wall_time=max(0.0, now - (blk.started or now)), **st)

    def _decoy_stats(self, blk: _Block, m_z: np.ndarray | None = None
                     ) -> finite_key.DecoyStats:
        if m_z is None:
            m_z = blk.m_z if blk.m_z is not None else np.zeros(self.config.n_intensities)
        assert blk.n_z is not None and blk.n_x is not None and blk.m_x is not None
        return finite_key.DecoyStats(
            n_z=tuple(blk.n_z), m_z=tuple(m_z), n_x=tuple(blk.n_x), m_x=tuple(blk.m_x),
            mu=self.config.mu, p=self.config.p)

    def _key_length(self, blk: _Block, leak: float, m_z: np.ndarray | None = None) -> Any:
        fkp = finite_key.FiniteKeyParams(eps_sec=blk.eps_sec, eps_cor=blk.eps_cor)
        return finite_key.key_length(self._decoy_stats(blk, m_z), leak, fkp)

    def _record_bounds(self, blk: _Block, fk: Any) -> None:
        cfg = self.config
        tau1 = sum(p * m * math.exp(-m) for m, p in zip(cfg.mu, cfg.p, strict=True))
        pz = cfg.basis_probs[0] * cfg.basis_probs[1]
        denom = blk.n_slots * tau1 * pz
        blk.stats.update(
            s0_lower=fk.s0_lower, s1_lower=fk.s1_lower, phi_upper=fk.phi_upper,
            e1_upper=(fk.v1_upper / fk.s1_est_lower) if fk.s1_est_lower > 0 else None,
            y1_lower=fk.s1_lower / denom if denom > 0 else None, method=fk.method)
        # Everything ℓ is computed from, for an outside audit (spec/link.md §2).
        assert blk.n_z is not None and blk.n_x is not None and blk.m_x is not None
        m_z = blk.m_z if blk.m_z is not None else np.zeros(cfg.n_intensities)
        inputs = blk.stats.setdefault("ell_inputs", {})
        inputs.update(
            method=fk.method, mu=list(cfg.mu), p=list(cfg.p),
            n_z=[int(v) for v in blk.n_z], m_z=[int(v) for v in m_z],
            n_x=[int(v) for v in blk.n_x], m_x=[int(v) for v in blk.m_x],
            eps_sec=blk.eps_sec, eps_cor=blk.eps_cor,
            hoeffding_events=21 if cfg.n_intensities == 3 else 19,
            s0_lower=fk.s0_lower, s1_lower=fk.s1_lower, s1_est_lower=fk.s1_est_lower,
            v1_upper=fk.v1_upper, gamma=fk.gamma, phi_upper=fk.phi_upper,
            penalty_bits=fk.penalty_bits, leak_bits=fk.leak_ec_bits,
            ell_real=fk.extra.get("ell_real"), ell_bound=int(fk.ell))

    def _leakage(self, blk: _Block) -> int:
        """λ for ℓ: every bit error correction and verification disclosed.

        Cascade: Alice's parities, and under strict accounting (the default) as many
        bits again for Bob's side — each of his requests after the first reveals how
        his parity of a range Alice answered compared with hers (whether he searches
        it, which half he follows), so his whole transcript carries at most one bit
        per parity Alice disclosed (Tupkary & Lütkenhaus, Phys. Rev. Applied 20,
        064040 (2023)). Besides: the per-intensity Z error counts in VERIFY (at most
        log2(n_k + 1) bits each) and the tag bits beyond the log2(2/ε_cor) already in
        the ℓ formula. The parts are recorded in the block's ``ell_inputs``.
        """
        assert blk.n_z is not None
        parts = leakage_parts(blk.n_z, int(blk.ldpc_leak), int(blk.leaked),
                              self.config.leak_accounting, blk.eps_cor)
        total = sum(parts.values())
        blk.stats["leak_ec_bits"] = total
        blk.stats.setdefault("ell_inputs", {}).update(
            leak_accounting=self.config.leak_accounting, leak_parts=parts)
        return total

    def _split_parts(self, blk: _Block, key_bits: np.ndarray, mine_tx_first: bool
                     ) -> tuple[KeyPart, ...]:
        """Cut the final key into auth A->B, auth B->A, data A->B, data B->A parts."""
        auth_ab, auth_ba = blk.split
        rest = len(key_bits) - auth_ab - auth_ba
        sizes = [auth_ab, auth_ba, rest // 2, rest - rest // 2]
        if mine_tx_first:     # transmitter: A->B is what it sends
            purposes = ["auth-tx", "auth-rx", "data-tx", "data-rx"]
        else:
            purposes = ["auth-rx", "auth-tx", "data-rx", "data-tx"]
        parts = []
        pos = 0
        for part, (size, purpose) in enumerate(zip(sizes, purposes, strict=True)):
            if size > 0:
                chunk = key_bits[pos:pos + size]
                parts.append(KeyPart(purpose, block_id(self.session_id, blk.index, part),
                                     np.packbits(chunk).tobytes(), size))
            pos += size
        return tuple(parts)

    def _store(self, blk: _Block, now: float, mine_tx_first: bool, which: str = "all",
               frames_to_come: int = 0) -> StoreBlock:
        """The StoreBlock for this end's parts: ``which`` is "all", "rx" or "tx".

        ``frames_to_come`` counts the block's (tagged) frames still to be exchanged up
        to and including CONFIRM, so both ends record the same ``auth_bits_spent``.
        """
        assert blk.key is not None
        parts = self._split_parts(blk, blk.key, mine_tx_first)
        if which != "all":
            parts = tuple(p for p in parts if p.purpose.endswith("-" + which))
        stats = self._stats(blk, now)
        return StoreBlock(
            block=blk.index, parts=parts, link_session=f"{self.session_id:08x}",
            created=now, eps_sec=blk.eps_sec, eps_cor=blk.eps_cor,
            leaked_ec_bits=int(blk.stats.get("leak_ec_bits", 0)),
            auth_bits_spent=stats.auth_bits + frames_to_come * TAG_KEY_BITS,
            qber=blk.stats.get("qber_key", blk.stats.get("qber_est")))


def _count(blk: _Block, t: LinkMsg) -> None:
    """Count one frame of the block, sent or received (both ends count the same)."""
    blk.frames += 1
    if t not in w.DEFERRED_MSGS:
        blk.tagged += 1


def _type_and_body(frame: Any) -> tuple[int, Any]:
    if isinstance(frame, tuple):
        return int(frame[0]), frame[1]
    return int(frame.type), frame.body


def _per_intensity(intens: np.ndarray, k: int, weights: np.ndarray | None = None
                   ) -> np.ndarray:
    counts = np.bincount(intens, weights=weights, minlength=k)[:k]
    return np.rint(counts).astype(np.int64)


class TransmitterSession(LinkSession):
    """Alice's end (spoke): starts blocks, answers parities, decides ell and the split.

    ``auth_levels`` returns the bits available in this end's (auth-tx, auth-rx) pools
    for the peer; the transmitter tops them up to ``config.auth_reserve_bits`` first.
    """

    role = Role.TRANSMITTER

    def __init__(self, config: LinkConfig, source: SlotSource, *,
                 auth_levels: Callable[[], tuple[int, int]] | None = None,
                 random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        super().__init__(config, random_bytes=random_bytes)
        self.source = source
        self._auth_levels = auth_levels or (lambda: (0, 0))

    def start_block(self, index: int, start_slot: int, n_slots: int, now: float
                    ) -> list[Output]:
        """Open block ``index`` over slots [start_slot, start_slot + n_slots)."""
        if index in self._blocks or index in self._closed or not 0 <= index <= w.MAX_BLOCK_INDEX:
            raise LocalProtocolError(f"block index {index} already used or out of range")
        blk = _Block(index=index, state=State.NEW, started=now)
        self._blocks[index] = blk
        return self._dispatch(blk, Local.START, (start_slot, n_slots), now)

    # -- handlers (see TRANSITIONS) ---------------------------------------------------

    def _a_start(self, blk: _Block, arg: tuple[int, int], now: float) -> Any:
        blk.start_slot, blk.n_slots = arg
        cfg = self.config
        blk.eps_sec, blk.eps_cor, blk.qber_max = cfg.eps_sec, cfg.eps_cor, cfg.qber_max
        blk.stats.update(start_slot=blk.start_slot, n_slots=blk.n_slots)
        body = w.encode_block_start(blk.index, blk.start_slot, blk.n_slots, cfg.n_intensities,
                                    cfg.eps_sec, cfg.eps_cor, cfg.qber_max)
        return [Send(blk.index, body)], State.WAIT_DETECTIONS

    def _a_detections(self, blk: _Block, pkt: Packet, now: float) -> Any:
        offsets, bases = w.decode_detections(pkt, blk.n_slots, blk.received, blk.last_offset)
        blk.offsets.append(offsets)
        blk.bases.append(bases)
        blk.received += len(offsets)
        if len(offsets):
            blk.last_offset = int(offsets[-1])
        if blk.received < pkt.total:
            return [], State.WAIT_DETECTIONS
        offsets = np.concatenate(blk.offsets)
        bob_basis = np.concatenate(blk.bases)
        blk.offsets, blk.bases = [], []
        blk.n_clicks = len(offsets)
        choices = self.source.lookup(offsets + np.uint64(blk.start_slot))
        a_basis = np.asarray(choices.basis, dtype=np.uint8)
        keep = np.asarray(sifting.sift(a_basis, bob_basis), dtype=bool)
        intens = np.asarray(choices.intensity, dtype=np.uint8)[keep]
        if len(intens) and int(intens.max()) >= self.config.n_intensities:
            raise _Abort(AbortReason.LOCAL, "source used an intensity the config lacks")
        basis_k = a_basis[keep]
        bits_k = np.asarray(choices.bit, dtype=np.uint8)[keep]
        z = basis_k == 0
        blk.z_bits, blk.z_int = bits_k[z], intens[z]
        blk.x_bits, blk.x_int = bits_k[~z], intens[~z]
        k = self.config.n_intensities
        blk.n_z, blk.n_x = _per_intensity(blk.z_int, k), _per_intensity(blk.x_int, k)
        blk.stats.update(clicks=blk.n_clicks, sifted=int(keep.sum()), n_key=int(z.sum()),
                         n_est=int((~z).sum()))
        return [Send(blk.index, w.encode_sift(blk.index, keep, intens))], State.WAIT_ESTIMATE

    def _a_estimate(self, blk: _Block, pkt: Packet, now: float) -> Any:
        assert blk.x_bits is not None and blk.x_int is not None and blk.z_bits is not None
        assert blk.n_x is not None
        bob_x = w.decode_estimate(pkt, len(blk.x_bits))
        k = self.config.n_intensities
        errors = (bob_x ^ blk.x_bits).astype(np.float64)
        blk.m_x = _per_intensity(blk.x_int, k, errors)
        n_x = int(blk.n_x.sum())
        qber = float(blk.m_x.sum()) / n_x if n_x else 0.5
        blk.qber = qber
        blk.stats.update(qber_est=qber)
        if qber > blk.qber_max:
            raise _Abort(AbortReason.QBER_TOO_HIGH, f"X-basis QBER {qber:.4f}")
        # Early exit: if even zero EC leakage (and zero Z errors, the most optimistic
        # case for every bound) leaves no key, skip Cascade.
        fk = self._key_length(blk, 0.0)
        self._record_bounds(blk, fk)
        if fk.ell <= 0:
            raise _Abort(AbortReason.NO_KEY, fk.abort_reason or "ell <= 0")
        seed = int.from_bytes(self._random(8), "big") >> 1     # fits a signed LongField
        n = len(blk.z_bits)
        q = max(qber, 1e-4)
        blk.corrected = np.packbits(blk.z_bits)
        plan = self._choose_method(blk, n, q, seed)
        body = w.encode_estimate_result(blk.index, blk.m_x, q, seed, blk.method)
        if blk.method is w.Reconciliation.LDPC:
            blk.plan = plan
            blk.corrector = ldpc.LdpcEncoder(blk.corrected, n, plan, random_bytes=self._random)
            syndrome = w.encode_ldpc(LinkMsg.LDPC_SYNDROME, blk.index,
                                     blk.corrector.syndromes())
            blk.ldpc_leak = int(blk.corrector.leak_bits)
            return [Send(blk.index, body), Send(blk.index, syndrome)], State.RECONCILE
        blk.plan = cascade.CascadePlan(n, q, seed)
        blk.corrector = cascade.CascadeResponder(blk.corrected, n, blk.plan)
        return [Send(blk.index, body)], State.RECONCILE

    def _choose_method(self, blk: _Block, n: int, qber: float, seed: int) -> Any:
        """Pick Cascade or LDPC for this block (see ``LinkConfig.reconciliation``);
        returns the LDPC plan if LDPC was picked. The choice and both methods' expected
        leakage and ℓ go into the block's ``ell_inputs``."""
        choice = self.config.reconciliation
        plan = None
        ldpc_leak = math.inf
        sides = 2 if self.config.leak_accounting == "strict" else 1
        shannon = n * float(finite_key.binary_entropy(qber))
        cascade_leak = sides * CASCADE_F_ESTIMATE * shannon
        ell_cascade = self._expected_ell(blk, qber, cascade_leak)
        # "auto" needs the LDPC plan (~0.15 s for 1e6 bits) only if LDPC could win
        # even at the Shannon limit of its leakage.
        worth_a_plan = choice == "ldpc" or (
            choice == "auto"
            and self._expected_ell(blk, qber, shannon) > LDPC_COST_RATIO * ell_cascade)
        if worth_a_plan and n >= LDPC_MIN_BITS:
            assert blk.n_x is not None
            plan = _ldpc_plan(n, qber, int(blk.n_x.sum()), seed)
            ldpc_leak = float(plan.expected_leak_bits)
        if choice == "ldpc" and plan is None:
            raise _Abort(AbortReason.LOCAL, f"{n} key bits are too few for LDPC frames")
        ell_ldpc = self._expected_ell(blk, qber, ldpc_leak) if plan is not None else 0.0
        use_ldpc = plan is not None and (
            choice == "ldpc" or (choice == "auto" and
                                 ell_ldpc > max(LDPC_COST_RATIO * ell_cascade, 0.0)))
        blk.method = w.Reconciliation.LDPC if use_ldpc else w.Reconciliation.CASCADE
        blk.stats.update(reconciliation=blk.method.name.lower())
        blk.stats.setdefault("ell_inputs", {}).update(
            reconciliation=blk.method.name.lower(),
            expected_leak={"cascade": round(cascade_leak),
                           "ldpc": None if plan is None else int(ldpc_leak)},
            expected_ell={"cascade": int(ell_cascade),
                          "ldpc": None if plan is None else int(ell_ldpc)},
            ldpc_plan=plan.describe() if use_ldpc and plan is not None else None)
        return plan if use_ldpc else None

    def _expected_ell(self, blk: _Block, qber: float, leak: float) -> float:
        """ℓ the block would yield with ``leak`` bits disclosed, its key-basis errors
        taken at the estimated QBER (what "auto" compares the methods by)."""
        if not math.isfinite(leak):
            return 0.0
        assert blk.n_z is not None
        m_z = np.minimum(np.rint(blk.n_z * qber), blk.n_z)
        return max(float(self._key_length(blk, leak, m_z).ell), 0.0)

    def _a_ldpc_request(self, blk: _Block, pkt: Packet, now: float) -> Any:
        if blk.method is not w.Reconciliation.LDPC:
            raise RemoteProtocolError("LDPC_REQUEST for a block reconciled with Cascade")
        answer = blk.corrector.answer(bytes(pkt.data))
        blk.ldpc_leak = int(blk.corrector.leak_bits)
        return [Send(blk.index, w.encode_ldpc(LinkMsg.LDPC_REPLY, blk.index, answer))], \
            State.RECONCILE

    def _a_parity_request(self, blk: _Block, pkt: Packet, now: float) -> Any:
        assert blk.z_bits is not None and blk.corrected is not None
        if blk.method is not w.Reconciliation.CASCADE:
            raise RemoteProtocolError("PARITY_REQUEST for a block reconciled with LDPC")
        n = len(blk.z_bits)
        passes, starts, ends = w.decode_parity_request(pkt, n, _n_passes(blk.plan))
        if pkt.step != blk.step & 0xFFFF:
            raise RemoteProtocolError(f"PARITY_REQUEST step {pkt.step}, expected {blk.step}")
        blk.step += 1
        if blk.step > self.config.max_cascade_steps or blk.leaked + len(starts) > n:
            raise _Abort(AbortReason.EC_FAILED, "Cascade exceeded its step or leakage budget")
        request = cascade.ParityRequest(int(pkt.step), passes.astype(np.uint8), starts, ends)
        parities = blk.corrector.answer(request)
        blk.leaked += len(starts)
        body = w.encode_parity_reply(blk.index, pkt.step, parities)
        return [Send(blk.index, body)], State.RECONCILE

    def _a_verify(self, blk: _Block, pkt: Packet, now: float) -> Any:
        assert blk.z_bits is not None and blk.corrected is not None and blk.n_z is not None
        n = len(blk.z_bits)
        tag_bits = verify.tag_bits_for(blk.eps_cor, n)
        blk.m_z, seed, tag = w.decode_verify(pkt, blk.n_z, tag_bits)
        mine = verify.verification_tag(blk.corrected, seed, tag_bits, n)
        blk.stats.update(leak_ec_bits=blk.leaked, verify_bits=tag_bits, cascade_steps=blk.step,
                         qber_key=float(blk.m_z.sum()) / n if n else None)
        if not hmac.compare_digest(bytes(mine), tag):
            raise _Abort(AbortReason.VERIFY_FAILED, "verification tags differ")
        leak = self._leakage(blk)
        fk = self._key_length(blk, float(leak))
        self._record_bounds(blk, fk)
        if fk.ell <= 0:
            raise _Abort(AbortReason.NO_KEY, fk.abort_reason or "ell <= 0")
        ell = min(int(fk.ell), n)
        tx_level, rx_level = self._auth_levels()
        reserve = self.config.auth_reserve_bits
        auth_ab = min(max(reserve - tx_level, 0), ell // 2)
        auth_ba = min(max(reserve - rx_level, 0), ell // 2)
        blk.split = (auth_ab, auth_ba)
        seed_bits = np.unpackbits(np.frombuffer(self._random((n + ell - 1 + 7) // 8),
                                                dtype=np.uint8))[:n + ell - 1]
        blk.key = _pa(blk.corrected, n, ell, seed_bits)
        blk.stats.update(ell=ell)
        body = w.encode_pa(blk.index, n, ell, auth_ab, auth_ba, seed_bits)
        return [Send(blk.index, body)], State.WAIT_DONE

    def _a_block_done(self, blk: _Block, pkt: Packet, now: float) -> Any:
        # The receiver stored its -rx parts before sending BLOCK_DONE, so all of ours
        # (the -tx parts mirror its -rx parts) can be stored now, in one transaction.
        # CONFIRM is counted in the meta: both ends record the same frame count.
        store = self._store(blk, now, mine_tx_first=True, frames_to_come=1)
        self._stored_rx[blk.index] = tuple((p.purpose, p.block_id, p.n_bits)
                                           for p in store.parts if p.purpose.endswith("-rx"))
        while len(self._stored_rx) > self._finished_limit:
            self._stored_rx.popitem(last=False)
        blk.frames += 1   # the CONFIRM below (_dispatch counts Sends after the stats)
        blk.tagged += 1
        stats = self._stats(blk, now)
        blk.frames -= 1
        blk.tagged -= 1
        return [store, Send(blk.index, w.ConfirmMsg(block=blk.index)),
                BlockStored(blk.index, stats)], State.DONE


class ReceiverSession(LinkSession):
    """Bob's end (hub): runs the PHY on request, reconciles with Cascade, checks ell."""

    role = Role.RECEIVER

    def __init__(self, config: LinkConfig, *,
                 random_bytes: Callable[[int], bytes] = os.urandom,
                 slot_floor: Callable[[], int] | None = None) -> None:
        super().__init__(config, random_bytes=random_bytes)
        self._next_slot = 0
        #: The first slot a new block may use, across sessions and restarts (the
        #: driver reads it from the key store's durable per-peer high-water mark).
        self._slot_floor = slot_floor or (lambda: 0)

    def supply_detections(self, index: int, detections: Any, now: float) -> list[Output]:
        """Hand over the PHY's detections for block ``index`` (after DetectionsNeeded)."""
        blk = self._blocks.get(index)
        if blk is None:
            return []           # aborted meanwhile
        return self._dispatch(blk, Local.PHY, detections, now)

    # -- handlers (see TRANSITIONS) ---------------------------------------------------

    def _b_block_start(self, blk: _Block, pkt: Packet, now: float) -> Any:
        w.check_block_start(pkt)
        if pkt.n_intensities != self.config.n_intensities:
            raise RemoteProtocolError(
                f"BLOCK_START: {pkt.n_intensities} intensities, this end has "
                f"{self.config.n_intensities}")
        cfg = self.config
        if pkt.eps_sec > cfg.eps_sec or pkt.eps_cor > cfg.eps_cor or pkt.qber_max > cfg.qber_max:
            # The transmitter may ask for more security than our policy, never less.
            raise RemoteProtocolError("BLOCK_START: security parameters weaker than this "
                                      "end's policy")
        floor = max(self._next_slot, int(self._slot_floor()))
        if int(pkt.start_slot) < floor:
            # Re-using slots would re-use Alice's choices, hence key bits: refuse any
            # range below the durable high-water mark, not just this session's.
            raise RemoteProtocolError(
                f"BLOCK_START: slot range overlaps slots already used (starts at "
                f"{int(pkt.start_slot)}, first unused slot {floor})")
        blk.start_slot, blk.n_slots = int(pkt.start_slot), int(pkt.n_slots)
        self._next_slot = blk.start_slot + blk.n_slots
        blk.eps_sec, blk.eps_cor, blk.qber_max = pkt.eps_sec, pkt.eps_cor, pkt.qber_max
        blk.stats.update(start_slot=blk.start_slot, n_slots=blk.n_slots)
        return [DetectionsNeeded(blk.index, blk.start_slot, blk.n_slots)], State.WAIT_PHY

    def _b_detections(self, blk: _Block, det: Any, now: float) -> Any:
        slots = np.asarray(det.slots, dtype=np.uint64)
        offsets = slots - np.uint64(blk.start_slot)
        if len(slots) and (int(slots[0]) < blk.start_slot
                           or int(offsets[-1]) >= blk.n_slots
                           or not (np.diff(offsets.astype(np.int64)) > 0).all()):
            raise _Abort(AbortReason.LOCAL, "PHY returned slots outside the block")
        if len(slots) > w.MAX_CLICKS:
            raise _Abort(AbortReason.LOCAL, f"{len(slots)} clicks exceed the per-block limit")
        basis = np.asarray(det.basis, dtype=np.uint8)
        blk.bases = [basis]
        blk.bob_bits = np.asarray(det.bit, dtype=np.uint8)
        blk.n_clicks = len(slots)
        blk.stats.update(clicks=blk.n_clicks)
        bodies = w.encode_detections(blk.index, offsets, basis)
        return [Send(blk.index, b) for b in bodies], State.WAIT_SIFT

    def _b_sift(self, blk: _Block, pkt: Packet, now: float) -> Any:
        assert blk.bob_bits is not None
        keep, intens = w.decode_sift(pkt, blk.n_clicks, self.config.n_intensities)
        basis_k = blk.bases[0][keep]
        bits_k = blk.bob_bits[keep]
        blk.bases, blk.bob_bits = [], None
        z = basis_k == 0
        blk.z_bits, blk.z_int = bits_k[z], intens[z]
        blk.x_bits, blk.x_int = bits_k[~z], intens[~z]
        k = self.config.n_intensities
        blk.n_z, blk.n_x = _per_intensity(blk.z_int, k), _per_intensity(blk.x_int, k)
        blk.stats.update(sifted=int(keep.sum()), n_key=int(z.sum()), n_est=int((~z).sum()))
        body = w.encode_estimate(blk.index, blk.x_bits)
        return [Send(blk.index, body)], State.WAIT_ESTIMATE_RESULT

    def _b_estimate_result(self, blk: _Block, pkt: Packet, now: float) -> Any:
        assert blk.z_bits is not None and blk.n_x is not None
        blk.m_x, qber, seed = w.decode_estimate_result(pkt, blk.n_x)
        n_x = int(blk.n_x.sum())
        blk.qber = float(blk.m_x.sum()) / n_x if n_x else 0.5
        blk.stats.update(qber_est=blk.qber)
        if blk.qber > blk.qber_max:
            raise RemoteProtocolError("ESTIMATE_RESULT: QBER above the block's threshold")
        n = len(blk.z_bits)
        if n == 0:
            raise RemoteProtocolError("ESTIMATE_RESULT: no key-basis bits to reconcile")
        blk.method = w.decode_method(pkt)
        blk.stats.update(reconciliation=blk.method.name.lower())
        if blk.method is w.Reconciliation.LDPC:
            if n < LDPC_MIN_BITS:
                raise RemoteProtocolError(f"ESTIMATE_RESULT: LDPC for only {n} key bits")
            blk.plan = _ldpc_plan(n, qber, n_x, seed)
            blk.corrector = ldpc.LdpcDecoder(np.packbits(blk.z_bits), n, blk.plan)
            blk.stats.setdefault("ell_inputs", {}).update(
                reconciliation="ldpc", ldpc_plan=blk.plan.describe())
            return [], State.RECONCILE          # the syndromes follow
        blk.plan = cascade.CascadePlan(n, qber, seed)
        blk.corrector = cascade.CascadeCorrector(np.packbits(blk.z_bits), n, blk.plan)
        blk.stats.setdefault("ell_inputs", {}).update(reconciliation="cascade")
        return self._b_next(blk)

    def _b_ldpc_syndrome(self, blk: _Block, pkt: Packet, now: float) -> Any:
        if blk.method is not w.Reconciliation.LDPC or blk.step != 0:
            raise RemoteProtocolError("LDPC_SYNDROME not expected for this block")
        blk.corrector.receive_syndromes(bytes(pkt.data))
        return self._b_ldpc_round(blk)

    def _b_ldpc_reply(self, blk: _Block, pkt: Packet, now: float) -> Any:
        if blk.method is not w.Reconciliation.LDPC or blk.outstanding != 1:
            raise RemoteProtocolError("LDPC_REPLY without an outstanding LDPC_REQUEST")
        blk.outstanding = 0
        blk.corrector.receive(bytes(pkt.data))
        return self._b_ldpc_round(blk)

    def _b_ldpc_round(self, blk: _Block) -> Any:
        """Decode the frames of this round; ask for more, or finish with VERIFY."""
        dec = blk.corrector
        dec.decode()
        request = dec.next_request()
        blk.ldpc_leak = int(dec.leak_bits)
        blk.step += 1
        if request is not None:
            blk.outstanding = 1
            body = w.encode_ldpc(LinkMsg.LDPC_REQUEST, blk.index, request)
            return [Send(blk.index, body)], State.RECONCILE
        if dec.failed_frames:
            # Verification would fail: stop here (nothing disclosed beyond what counts).
            raise _Abort(AbortReason.EC_FAILED, f"{len(dec.failed_frames)} LDPC frame(s) "
                                                f"did not decode after {dec.rounds_used} rounds")
        assert blk.z_bits is not None
        corrected = np.unpackbits(np.asarray(dec.corrected(), dtype=np.uint8),
                                  count=len(blk.z_bits))
        blk.corrector = None
        return self._b_verify(blk, corrected)

    def _b_parity_reply(self, blk: _Block, pkt: Packet, now: float) -> Any:
        if blk.method is not w.Reconciliation.CASCADE:
            raise RemoteProtocolError("PARITY_REPLY for a block reconciled with LDPC")
        parities = w.decode_parity_reply(pkt, blk.step - 1, blk.outstanding)
        blk.leaked += blk.outstanding
        blk.corrector.receive(parities)
        return self._b_next(blk)

    def _b_next(self, blk: _Block) -> Any:
        assert blk.z_bits is not None and blk.z_int is not None
        request = blk.corrector.next_request()
        if request is not None:
            passes, starts, ends = _request_arrays(request)
            if blk.step >= self.config.max_cascade_steps or len(starts) > w.MAX_RANGES:
                raise _Abort(AbortReason.EC_FAILED, "Cascade exceeded its step or size budget")
            blk.outstanding = len(starts)
            body = w.encode_parity_request(blk.index, blk.step, passes, starts, ends)
            blk.step += 1
            return [Send(blk.index, body)], State.RECONCILE
        corrected_bits = blk.corrector.corrected_bits()
        blk.corrector = None
        return self._b_verify(blk, corrected_bits)

    def _b_verify(self, blk: _Block, corrected_bits: np.ndarray) -> Any:
        """Reconciliation done: VERIFY with the per-intensity corrections and the tag."""
        assert blk.z_bits is not None and blk.z_int is not None
        n = len(blk.z_bits)
        blk.corrected = np.packbits(corrected_bits)
        flips = corrected_bits ^ blk.z_bits
        blk.m_z = _per_intensity(blk.z_int, self.config.n_intensities, flips.astype(np.float64))
        tag_bits = verify.tag_bits_for(blk.eps_cor, n)
        seed = self._random(16)
        tag = verify.verification_tag(blk.corrected, seed, tag_bits, n)
        blk.stats.update(leak_ec_bits=blk.leaked, verify_bits=tag_bits, cascade_steps=blk.step,
                         qber_key=float(blk.m_z.sum()) / n)
        body = w.encode_verify(blk.index, blk.m_z, tag_bits, seed, bytes(tag))
        return [Send(blk.index, body)], State.WAIT_PA

    def _b_pa(self, blk: _Block, pkt: Packet, now: float) -> Any:
        assert blk.z_bits is not None and blk.corrected is not None
        n = len(blk.z_bits)
        ell, auth_ab, auth_ba, seed_bits = w.decode_pa(pkt, n)
        leak = self._leakage(blk)
        fk = self._key_length(blk, float(leak))
        self._record_bounds(blk, fk)
        if ell > fk.ell:
            raise RemoteProtocolError(f"PA: ell {ell} exceeds the finite-key bound {fk.ell}")
        blk.split = (auth_ab, auth_ba)
        blk.key = _pa(blk.corrected, n, ell, seed_bits)
        blk.stats.update(ell=ell)
        # Phase 1: store our -rx parts before BLOCK_DONE.  Holding -rx key the peer
        # lacks is harmless (nobody sends with its mirror), so from here on no end
        # ever holds -tx key whose mirror the other end lacks (spec/link.md §2).
        out: list[Output] = []
        store = self._store(blk, now, mine_tx_first=False, which="rx", frames_to_come=2)
        if store.parts:
            out.append(store)
            blk.stored_rx = tuple((p.purpose, p.block_id, p.n_bits) for p in store.parts)
        return [*out, Send(blk.index, w.BlockDoneMsg(block=blk.index))], State.WAIT_CONFIRM

    def _b_confirm(self, blk: _Block, pkt: Packet, now: float) -> Any:
        # Phase 2: the transmitter stored the whole block (its -rx parts mirror ours
        # -tx), so our -tx parts are safe to use now.
        out: list[Output] = []
        store = self._store(blk, now, mine_tx_first=False, which="tx")
        if store.parts:
            out.append(store)
        return [*out, BlockStored(blk.index, self._stats(blk, now))], State.DONE


# --------------------------------------------------------------------------------------
# Adapters to the algorithm modules


def _ldpc_plan(n_key: int, qber: float, n_x: int, seed: int) -> ldpc.LdpcPlan:
    """The LDPC plan both ends build from public values (n, the announced QBER, the
    number of X-basis bits it was estimated from, the seed).

    The blind rounds must reach the key basis' actual error rate, which the estimate
    misses by its statistical error: the last round is stretched to cover the QBER
    three standard deviations above the estimate (sqrt(q(1 - q)/n_x)), in steps of
    0.02 in efficiency. The first round stays where it was, so a block whose key basis
    is as clean as the estimate discloses no more than before.
    """
    base = ldpc.default_schedule(qber, min(n_key, ldpc.FRAME_BITS))
    q = min(max(qber, 0.002), 0.11)
    sigma = math.sqrt(q * (1.0 - q) / max(n_x, 1))
    h = float(finite_key.binary_entropy(q))
    need = float(finite_key.binary_entropy(min(q + 3.0 * sigma, 0.2))) / h
    f_mid = base.f_first + 0.04
    f_last = max(base.f_last, f_mid * need + 0.02)
    rounds = min(16, max(base.rounds, math.ceil((f_last - base.f_first) / 0.02) + 1))
    schedule = ldpc.Schedule(f_first=base.f_first, f_last=f_last, rounds=rounds)
    return ldpc.LdpcPlan.for_block(n_key, qber, seed, schedule=schedule)


def _pa(corrected_packed: np.ndarray, n: int, ell: int, seed_bits: np.ndarray) -> np.ndarray:
    out = privacy.toeplitz_hash(corrected_packed, n, ell, np.packbits(seed_bits))
    return np.unpackbits(np.asarray(out, dtype=np.uint8), count=ell)


def _n_passes(plan: cascade.CascadePlan) -> int:
    return int(plan.n_passes)


def _request_arrays(request: cascade.ParityRequest
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (np.asarray(request.passes), np.asarray(request.starts), np.asarray(request.ends))
