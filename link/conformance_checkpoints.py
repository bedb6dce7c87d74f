"""Conformance checks for the link's authentication checkpoints (group ``link``).

Theory of operation
-------------------
A block's exchange messages travel under deferred authentication (spec/protocol.md
§6.4, spec/link.md §2): the target (a link receiver) acts on them provisionally and
must store nothing until a tagged checkpoint — for what the transmitter sent, PA —
has authenticated every one of them.  The kit plays the transmitter through a whole
block: BLOCK_START, SIFT (keeps every X-basis click and 64 Z-basis ones),
ESTIMATE_RESULT, PARITY_REPLYs answered by a real Cascade responder over a random
64-bit key (the kit does not know the target's emulation seed, so the keys disagree,
which is irrelevant here), up to the target's VERIFY, then PA with a one-bit key.

Each check then acts as an on-path attacker on its own frames *after* signing: one bit
of a deferred SIFT, ESTIMATE_RESULT or PARITY_REPLY is flipped on the wire, or the PA
checkpoint is withheld, replayed or sent out of order.  The target must end the
connection (AUTHENTICATION_FAILED at PA for a flipped bit, REPLAY_OR_REORDER for the
sequence attacks) and must never answer BLOCK_DONE, which it sends only after storing
its half of the block.  The control check runs the same block untouched and requires
the target to reach the checkpoint and answer PA (BLOCK_DONE, or ABORT if the
one-bit key exceeds its finite-key bound), so the attack checks cannot pass merely
because the kit's block never got that far.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

import numpy as np
from scapy.packet import Packet

from qkdnet.conformance import CheckContext, CheckFailed, Peer, conformance_check
from qkdnet.errors import ErrorCode
from qkdnet.link import cascade
from qkdnet.link import wire as w
from qkdnet.link.conformance import _session, _start_block
from qkdnet.link.wire import AbortReason, LinkMsg
from qkdnet.sideband_core import FrameReceived
from qkdnet.wire import HEADER_LEN, TAG_LEN, MsgType

#: Key-basis clicks the kit keeps (its random key's length), and the QBER it claims.
KEY_BITS = 64
QBER = 0.02

#: What a check does to one message: given the genuine body, the body put on the wire
#: instead (same length), or None to leave it alone.
Tamper = Callable[[Packet], Packet | None]


async def _send_deferred(peer: Peer, body: Packet, session: int,
                         tamper: Tamper | None) -> None:
    """Sign ``body`` as a deferred frame, then (attacker) replace its body bytes."""
    frame = peer.conn.send(body, session=session, deferred=True)
    forged = tamper(body) if tamper is not None else None
    if forged is not None:
        raw = bytes(forged)
        if len(raw) != len(frame) - HEADER_LEN - TAG_LEN:
            raise CheckFailed("kit bug: a tampered body must keep its length")
        frame = frame[:HEADER_LEN] + raw + frame[-TAG_LEN:]
    await peer.send_raw(frame)


async def _run_to_verify(peer: Peer, tampers: dict[LinkMsg, Tamper]) -> tuple[int, int]:
    """Drive block 0 up to the target's VERIFY; returns (session, key-basis bits n)."""
    offsets, bases = await _start_block(peer, _session())
    session = int(peer.scratch_session)  # type: ignore[attr-defined]
    k = int(peer.scratch_intensities)  # type: ignore[attr-defined]
    z_clicks = np.flatnonzero(bases == 0)
    if len(z_clicks) < KEY_BITS or len(z_clicks) == len(offsets):
        raise CheckFailed("probe block has too few clicks in one of the bases")
    keep = bases != 0
    keep[z_clicks[:KEY_BITS]] = True
    n_kept = int(keep.sum())
    await _send_deferred(peer, w.encode_sift(0, keep, np.zeros(n_kept, dtype=np.uint8)),
                         session, tampers.get(LinkMsg.SIFT))
    await _expect(peer, LinkMsg.ESTIMATE)
    seed = secrets.randbits(63)
    result = w.encode_estimate_result(0, np.zeros(k), QBER, seed)
    await _send_deferred(peer, result, session, tampers.get(LinkMsg.ESTIMATE_RESULT))
    plan = cascade.CascadePlan(KEY_BITS, QBER, seed)
    key = np.frombuffer(secrets.token_bytes(KEY_BITS // 8), dtype=np.uint8)
    responder = cascade.CascadeResponder(key, KEY_BITS, plan)
    while True:
        ev = await _expect(peer, LinkMsg.PARITY_REQUEST, LinkMsg.VERIFY)
        if ev.type == LinkMsg.VERIFY:
            return session, KEY_BITS
        try:
            passes, starts, ends = w.decode_parity_request(ev.body, KEY_BITS,
                                                           int(plan.n_passes))
        except w.RemoteProtocolError as err:
            raise CheckFailed(f"target's PARITY_REQUEST is invalid: {err}") from None
        step = int(ev.body.step)
        parities = responder.answer(cascade.ParityRequest(step, passes.astype(np.uint8),
                                                          starts, ends))
        reply = w.encode_parity_reply(0, step, parities)
        await _send_deferred(peer, reply, session, tampers.pop(LinkMsg.PARITY_REPLY, None))


async def _expect(peer: Peer, *types: LinkMsg) -> FrameReceived:
    ev = await peer.next_frame()
    if ev is None:
        raise CheckFailed(f"connection closed; expected {types[0].name}")
    if ev.type == LinkMsg.ABORT:
        raise CheckFailed(f"target aborted the block ({w.decode_abort(ev.body).word}) "
                          f"before {types[-1].name}")
    if ev.type not in types:
        raise CheckFailed(f"expected {'/'.join(t.name for t in types)}, "
                          f"got type 0x{ev.type:02x}")
    return ev


def _pa(n: int) -> Packet:
    seed = np.frombuffer(secrets.token_bytes(n), dtype=np.uint8) & 1
    return w.encode_pa(0, n, 1, 0, 0, seed)


async def _expect_refused(peer: Peer, code: ErrorCode) -> None:
    """The target must close with ERROR ``code`` and must not send BLOCK_DONE."""
    while True:
        ev = await peer.next_frame()
        if ev is None:
            raise CheckFailed(f"connection closed without ERROR {code.name}")
        if ev.type == LinkMsg.BLOCK_DONE:
            raise CheckFailed("target stored the block (BLOCK_DONE) after a bad checkpoint")
        if ev.type == MsgType.ERROR:
            if int(ev.body.code) != code:
                raise CheckFailed(f"ERROR {ErrorCode(int(ev.body.code)).name}, "
                                  f"expected {code.name}")
            await peer.expect_closed()
            return
        if ev.type == LinkMsg.ABORT:
            continue         # the block's ABORT may precede the connection's ERROR


def _flip_sift(body: Packet) -> Packet:
    forged = body.copy()
    raw = bytearray(bytes(forged.intensities))
    raw[0] ^= 0x40                       # first kept click: intensity 0 -> 1
    forged.intensities = bytes(raw)
    return forged


def _flip_seed(body: Packet) -> Packet:
    forged = body.copy()
    forged.cascade_seed = int(forged.cascade_seed) ^ 1
    return forged


def _flip_parity(body: Packet) -> Packet:
    forged = body.copy()
    raw = bytearray(bytes(forged.parities))
    raw[0] ^= 0x80                       # the first parity
    forged.parities = bytes(raw)
    return forged


async def _flip_check(ctx: CheckContext, target: LinkMsg, tamper: Tamper, *,
                      early_abort_ok: bool = False) -> None:
    async with ctx.connection() as peer:
        try:
            session, n = await _run_to_verify(peer, {target: tamper})
        except CheckFailed as failed:
            # Cascade checks its parities for consistency: a flipped parity is often
            # caught as a contradiction (ABORT protocol) before the checkpoint.
            if early_abort_ok and "aborted the block (protocol)" in str(failed):
                return
            raise
        await peer.send(_pa(n), session=session)
        await _expect_refused(peer, ErrorCode.AUTHENTICATION_FAILED)


@conformance_check("link.checkpoint_reached", "an untampered block under deferred "
                   "authentication reaches its PA checkpoint and the target answers it",
                   group="link", roles=("spoke",))
async def _control(ctx: CheckContext) -> None:
    async with ctx.connection() as peer:
        session, n = await _run_to_verify(peer, {})
        await peer.send(_pa(n), session=session)
        ev = await peer.next_frame()
        if ev is None or ev.type == MsgType.ERROR:
            raise CheckFailed("target refused an authentic PA checkpoint")
        if ev.type == LinkMsg.ABORT and w.decode_abort(ev.body) is not AbortReason.PROTOCOL:
            raise CheckFailed(f"target aborted at PA: {w.decode_abort(ev.body).word}")
        if ev.type not in (LinkMsg.ABORT, LinkMsg.BLOCK_DONE):
            raise CheckFailed(f"expected BLOCK_DONE or ABORT, got type 0x{ev.type:02x}")


@conformance_check("link.checkpoint_flip_sift", "one flipped bit in a deferred SIFT → the "
                   "PA checkpoint fails (ERROR AUTHENTICATION_FAILED), nothing stored",
                   group="link", roles=("spoke",))
async def _flip_sift_check(ctx: CheckContext) -> None:
    await _flip_check(ctx, LinkMsg.SIFT, _flip_sift)


@conformance_check("link.checkpoint_flip_estimate_result", "one flipped bit in a deferred "
                   "ESTIMATE_RESULT → the PA checkpoint fails, nothing stored",
                   group="link", roles=("spoke",))
async def _flip_result_check(ctx: CheckContext) -> None:
    await _flip_check(ctx, LinkMsg.ESTIMATE_RESULT, _flip_seed)


@conformance_check("link.checkpoint_flip_parity_reply", "one flipped bit in a deferred "
                   "PARITY_REPLY → ABORT(protocol) for contradicting parities, or the PA "
                   "checkpoint fails; nothing stored", group="link", roles=("spoke",))
async def _flip_parity_check(ctx: CheckContext) -> None:
    await _flip_check(ctx, LinkMsg.PARITY_REPLY, _flip_parity, early_abort_ok=True)


@conformance_check("link.checkpoint_withheld", "PA withheld and a later frame sent in its "
                   "place → ERROR REPLAY_OR_REORDER, nothing stored",
                   group="link", roles=("spoke",))
async def _withheld(ctx: CheckContext) -> None:
    async with ctx.connection() as peer:
        session, n = await _run_to_verify(peer, {})
        peer.conn.send(_pa(n), session=session)          # signed, never sent
        await peer.send(w.ConfirmMsg(block=0), session=session)
        await _expect_refused(peer, ErrorCode.REPLAY_OR_REORDER)


@conformance_check("link.checkpoint_replayed", "an earlier tagged frame replayed in place "
                   "of PA → ERROR REPLAY_OR_REORDER, nothing stored",
                   group="link", roles=("spoke",))
async def _replayed(ctx: CheckContext) -> None:
    async with ctx.connection() as peer:
        old = await peer.send(_ping())                   # a genuine tagged frame
        await peer.expect(MsgType.PONG)
        session, n = await _run_to_verify(peer, {})
        peer.conn.send(_pa(n), session=session)          # the real one is dropped
        await peer.send_raw(old)
        await _expect_refused(peer, ErrorCode.REPLAY_OR_REORDER)


@conformance_check("link.checkpoint_reordered", "PA sent before the deferred frame that "
                   "precedes it → ERROR REPLAY_OR_REORDER, nothing stored",
                   group="link", roles=("spoke",))
async def _reordered(ctx: CheckContext) -> None:
    async with ctx.connection() as peer:
        session, n = await _run_to_verify(peer, {})
        # One more deferred frame (a late parity reply), then PA; sent swapped.
        late = peer.conn.send(w.encode_parity_reply(0, 0xFFFF, np.zeros(1, np.uint8)),
                              session=session, deferred=True)
        pa = peer.conn.send(_pa(n), session=session)
        await peer.send_raw(pa + late)
        await _expect_refused(peer, ErrorCode.REPLAY_OR_REORDER)


def _ping() -> Packet:
    from qkdnet.wire import Ping

    return Ping(nonce=7)
