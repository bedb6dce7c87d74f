"""Conformance checks for the link messages (``qkdnet conformance``, group ``link``).

The kit plays a link *transmitter* (a spoke) against a target that runs the link
receiver (a hub, or ``qkdnet link bob``).  Each check opens its own connection,
starts a small block with BLOCK_START, checks the DETECTIONS answer is well-formed,
then sends one message that contradicts the protocol and expects the target to
abandon that block with ABORT(PROTOCOL) while keeping the connection usable
(PING → PONG); a message naming a block that never existed must close the
connection with ERROR PROTOCOL_VIOLATION.  A slot range the target already used,
offered again on a new connection and session, must be refused the same way
(re-used slots would re-use the transmitter's choices, hence raw key).
"""

from __future__ import annotations

import secrets
import time

import numpy as np

from qkdnet.conformance import CheckContext, CheckFailed, Peer, conformance_check
from qkdnet.errors import ErrorCode
from qkdnet.link import wire as w
from qkdnet.link.wire import AbortReason, LinkMsg
from qkdnet.wire import MsgType, Ping

#: Slots per probe block: small, so the target's PHY answers at once.
PROBE_SLOTS = 200_000
_last_start = [0]


def _probe_start() -> int:
    """A slot range after every earlier probe's (a target's PHY never replays slots).

    Time-based so that separate kit runs against one target also move forward:
    256 slots per microsecond stays below the PHY's 2^60 slot bound for centuries.
    """
    start = max(_last_start[0] + PROBE_SLOTS, (time.time_ns() // 1000) << 8)
    _last_start[0] = start
    return start


def _session() -> int:
    return secrets.randbits(31) | 1


async def _start_block(peer: Peer, session: int, n_intensities: int = 2
                       ) -> tuple[np.ndarray, np.ndarray]:
    """BLOCK_START for block 0; returns the reported (offsets, bases), validated.

    The slot range comes from :func:`_probe_start`; the first slot and the number of
    intensities the target accepted are left in ``peer.scratch_start`` /
    ``peer.scratch_intensities``.
    """
    start = _probe_start()
    body = w.encode_block_start(0, start, PROBE_SLOTS, n_intensities, 1e-10, 1e-15, 0.11)
    await peer.send(body, session=session)
    offsets, bases, received, last = [], [], 0, -1
    while True:
        ev = await peer.next_frame()
        if ev is None:
            raise CheckFailed("connection closed after BLOCK_START")
        if ev.type == LinkMsg.ABORT:
            reason = w.decode_abort(ev.body)
            if reason is AbortReason.PROTOCOL and n_intensities == 2:
                # The target's preset uses three intensities: retry with three.
                return await _start_block(peer, session + 2, 3)
            raise CheckFailed(f"target aborted a valid BLOCK_START ({reason.word})")
        if ev.type != LinkMsg.DETECTIONS:
            raise CheckFailed(f"expected DETECTIONS, got type 0x{ev.type:02x}")
        if ev.session != session and ev.session != session + 2:
            raise CheckFailed("DETECTIONS carries another link session id")
        try:
            o, b = w.decode_detections(ev.body, PROBE_SLOTS, received, last)
        except w.RemoteProtocolError as err:
            raise CheckFailed(f"target's DETECTIONS is invalid: {err}") from None
        offsets.append(o)
        bases.append(b)
        received += len(o)
        last = int(o[-1]) if len(o) else last
        if received >= int(ev.body.total):
            peer.scratch_session = ev.session  # type: ignore[attr-defined]
            peer.scratch_start = start  # type: ignore[attr-defined]
            peer.scratch_intensities = n_intensities  # type: ignore[attr-defined]
            return np.concatenate(offsets), np.concatenate(bases)


async def _expect_block_abort(peer: Peer) -> None:
    ev = await peer.next_frame()
    if ev is None:
        raise CheckFailed("connection closed; expected ABORT for the block")
    if ev.type == MsgType.ERROR:
        raise CheckFailed("target closed the connection instead of aborting the block")
    if ev.type != LinkMsg.ABORT:
        raise CheckFailed(f"expected ABORT, got type 0x{ev.type:02x}")
    reason = w.decode_abort(ev.body)
    if reason is not AbortReason.PROTOCOL:
        raise CheckFailed(f"ABORT reason {reason.word}, expected protocol")
    ping = Ping(nonce=secrets.randbits(64))
    await peer.send(ping)
    pong = await peer.expect(MsgType.PONG)
    if int(pong.body.nonce) != int(ping.nonce):
        raise CheckFailed("connection unusable after the block abort")


@conformance_check("link.block_start", "BLOCK_START is answered by well-formed DETECTIONS",
                   group="link", roles=("spoke",))
async def _block_start(ctx: CheckContext) -> None:
    async with ctx.connection() as peer:
        offsets, _ = await _start_block(peer, _session())
        if len(offsets) == 0:
            raise CheckFailed("no clicks in a 2e5-slot block (target PHY silent?)")


@conformance_check("link.sift_mask_length", "SIFT with a keep mask of the wrong length → "
                   "ABORT(protocol), connection kept", group="link", roles=("spoke",))
async def _sift_length(ctx: CheckContext) -> None:
    async with ctx.connection() as peer:
        offsets, _ = await _start_block(peer, _session())
        n = len(offsets) + 9
        body = w.encode_sift(0, np.ones(n, dtype=bool), np.zeros(n, dtype=np.uint8))
        await peer.send(body, session=peer.scratch_session)  # type: ignore[attr-defined]
        await _expect_block_abort(peer)


@conformance_check("link.sift_intensity_range", "SIFT naming an intensity that does not "
                   "exist → ABORT(protocol)", group="link", roles=("spoke",))
async def _sift_intensity(ctx: CheckContext) -> None:
    async with ctx.connection() as peer:
        offsets, _ = await _start_block(peer, _session())
        n = len(offsets)
        body = w.encode_sift(0, np.ones(n, dtype=bool), np.full(n, 3, dtype=np.uint8))
        await peer.send(body, session=peer.scratch_session)  # type: ignore[attr-defined]
        await _expect_block_abort(peer)


@conformance_check("link.wrong_state", "a message the block's state does not allow "
                   "(CONFIRM before SIFT) → ABORT(protocol)", group="link", roles=("spoke",))
async def _wrong_state(ctx: CheckContext) -> None:
    async with ctx.connection() as peer:
        await _start_block(peer, _session())
        await peer.send(w.ConfirmMsg(block=0),
                        session=peer.scratch_session)  # type: ignore[attr-defined]
        await _expect_block_abort(peer)


@conformance_check("link.replayed_slots", "BLOCK_START re-using a slot range the target "
                   "already used (new connection, new session) → ABORT(protocol)",
                   group="link", roles=("spoke",))
async def _replayed_slots(ctx: CheckContext) -> None:
    async with ctx.connection() as peer:
        await _start_block(peer, _session())
        start = int(peer.scratch_start)  # type: ignore[attr-defined]
        n_int = int(peer.scratch_intensities)  # type: ignore[attr-defined]
        await peer.send(w.encode_abort(0, AbortReason.CANCELLED),
                        session=peer.scratch_session)  # type: ignore[attr-defined]
    async with ctx.connection() as peer:
        # The tail of the used range: overlapping, not merely identical, is refused.
        replay = w.encode_block_start(0, start + PROBE_SLOTS // 2, PROBE_SLOTS, n_int,
                                      1e-10, 1e-15, 0.11)
        await peer.send(replay, session=_session())
        await _expect_block_abort(peer)


@conformance_check("link.block_start_limits", "BLOCK_START with 0 slots → ABORT(protocol)",
                   group="link", roles=("spoke",))
async def _block_start_limits(ctx: CheckContext) -> None:
    async with ctx.connection() as peer:
        bad = w.encode_block_start(0, 0, 1000, 3, 1e-10, 1e-15, 0.11)
        bad.n_slots = 0
        await peer.send(bad, session=_session())
        await _expect_block_abort(peer)


@conformance_check("link.unknown_block", "a link message for a block never started → "
                   "ERROR PROTOCOL_VIOLATION", group="link", roles=("spoke",))
async def _unknown_block(ctx: CheckContext) -> None:
    async with ctx.connection() as peer:
        await peer.send(w.encode_estimate_result(12345, np.zeros(3), 0.01, 1),
                        session=_session())
        await peer.expect_abort(ErrorCode.PROTOCOL_VIOLATION)
