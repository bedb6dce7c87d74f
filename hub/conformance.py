"""Conformance checks for the hub messages (``qkdnet conformance``, group ``hub``).

The kit plays a *spoke* against a hub: the target must know the kit's name (default
``conformance``) as a spoke with the bootstrap secret the kit was given. Each check
opens its own connection. The checks need no data key: they exercise registration
and identity binding, refusals (unknown destination, unknown relay peer), the hub's
own sink endpoint, and the hub's reaction to malformed or impersonating hub frames
(ERROR with the right code, nothing acted on). spec/hub.md describes the behaviour.
"""

from __future__ import annotations

import secrets

from qkdnet.conformance import CheckContext, CheckFailed, Peer, conformance_check
from qkdnet.errors import ErrorCode
from qkdnet.hub import wire as w
from qkdnet.wire import MsgType, Ping


async def _register(ctx: CheckContext) -> tuple[Peer, str]:
    """Connect, handshake, REGISTER; returns the peer and the hub's name."""
    peer = await ctx.open()
    hello_ack = peer.conn.peer_name or ""
    await peer.send(w.HubRegister(spoke=ctx.local_name.encode()))
    ev = await _next_hub(peer, w.HubMsg.REGISTER_ACK)
    if int(ev.body.status) != 0:
        raise CheckFailed(f"REGISTER as {ctx.local_name!r} refused with status "
                          f"{int(ev.body.status)} ({w.as_text(ev.body.detail)})")
    return peer, w.as_text(ev.body.hub) or hello_ack


async def _next_hub(peer: Peer, msg_type: int):  # type: ignore[no-untyped-def]
    """The next frame of ``msg_type``, skipping link-layer frames the hub may send."""
    while True:
        ev = await peer.next_frame()
        if ev is None:
            raise CheckFailed(f"connection closed; expected {w.HubMsg(msg_type).name}")
        if 0x10 <= ev.type < 0x40:
            continue
        if ev.type != msg_type:
            raise CheckFailed(f"expected {w.HubMsg(msg_type).name}, got type 0x{ev.type:02x}")
        return ev


async def _still_usable(peer: Peer) -> None:
    nonce = secrets.randbits(64)
    await peer.send(Ping(nonce=nonce))
    while True:
        ev = await peer.next_frame()
        if ev is None:
            raise CheckFailed("connection closed after a refusal that should not close it")
        if ev.type == MsgType.PONG and int(ev.body.nonce) == nonce:
            return


def _nobody() -> bytes:
    return f"nobody-{secrets.token_hex(4)}".encode()


@conformance_check("hub.register", "REGISTER with our own name is accepted",
                   group="hub", roles=("spoke",))
async def _register_ok(ctx: CheckContext) -> None:
    peer, hub = await _register(ctx)
    if not hub:
        raise CheckFailed("REGISTER_ACK does not name the hub")
    await peer.aclose()


@conformance_check("hub.register_other_name",
                   "REGISTER naming another spoke: REGISTER_ACK NAME_CONFLICT, then ERROR",
                   group="hub", roles=("spoke",))
async def _register_other(ctx: CheckContext) -> None:
    async with ctx.connection() as peer:
        await peer.send(w.HubRegister(spoke=_nobody()))
        ev = await _next_hub(peer, w.HubMsg.REGISTER_ACK)
        if int(ev.body.status) != w.HubReason.NAME_CONFLICT:
            raise CheckFailed(f"status {int(ev.body.status)}, expected NAME_CONFLICT (11)")
        await peer.expect_abort(ErrorCode.NAME_CONFLICT)


@conformance_check("hub.before_register", "a hub message before REGISTER is refused",
                   group="hub", roles=("spoke",))
async def _before_register(ctx: CheckContext) -> None:
    async with ctx.connection() as peer:
        await peer.send(w.HubOpenChannel(src=ctx.local_name.encode(), dst=_nobody(),
                                         service=b"x", channel_id=1))
        await peer.expect_abort(ErrorCode.PROTOCOL_VIOLATION)


@conformance_check("hub.unknown_destination",
                   "OPEN_CHANNEL to an unknown spoke: NACK UNKNOWN_PEER, connection kept",
                   group="hub", roles=("spoke",))
async def _unknown_destination(ctx: CheckContext) -> None:
    peer, _ = await _register(ctx)
    try:
        await peer.send(w.HubOpenChannel(src=ctx.local_name.encode(), dst=_nobody(),
                                         service=b"x", channel_id=7))
        ev = await _next_hub(peer, w.HubMsg.DELIVERY_NACK)
        if int(ev.body.reason) != w.HubReason.UNKNOWN_PEER or ev.body.kind != w.NackKind.OPEN:
            raise CheckFailed(f"NACK reason {int(ev.body.reason)} kind {ev.body.kind}, "
                              "expected UNKNOWN_PEER for OPEN")
        if int(ev.body.channel_id) != 7:
            raise CheckFailed("NACK names the wrong channel")
        await _still_usable(peer)
    finally:
        await peer.aclose()


@conformance_check("hub.relay_unknown_peer",
                   "KEY_RELAY_REQUEST with an unknown peer: NACK kind RELAY UNKNOWN_PEER",
                   group="hub", roles=("spoke",))
async def _relay_unknown(ctx: CheckContext) -> None:
    peer, _ = await _register(ctx)
    try:
        await peer.send(w.HubKeyRelayRequest(src=ctx.local_name.encode(), peer=_nobody(),
                                             request_id=99, n_bits=128))
        ev = await _next_hub(peer, w.HubMsg.DELIVERY_NACK)
        if (ev.body.kind != w.NackKind.RELAY or int(ev.body.channel_id) != 99
                or int(ev.body.reason) != w.HubReason.UNKNOWN_PEER):
            raise CheckFailed("expected NACK kind RELAY, request 99, UNKNOWN_PEER")
        await _still_usable(peer)
    finally:
        await peer.aclose()


@conformance_check("hub.sink_open", "OPEN_CHANNEL to the hub's own name is accepted",
                   group="hub", roles=("spoke",))
async def _sink_open(ctx: CheckContext) -> None:
    peer, hub = await _register(ctx)
    try:
        await peer.send(w.HubOpenChannel(src=ctx.local_name.encode(), dst=hub.encode(),
                                         service=b"sink", channel_id=3))
        ev = await _next_hub(peer, w.HubMsg.DELIVERY_ACK)
        if ev.body.kind != w.NackKind.OPEN or int(ev.body.channel_id) != 3:
            raise CheckFailed("expected DELIVERY_ACK kind OPEN for channel 3")
    finally:
        await peer.aclose()


@conformance_check("hub.impersonation", "DATA claiming another sender closes the connection",
                   group="hub", roles=("spoke",))
async def _impersonation(ctx: CheckContext) -> None:
    peer, hub = await _register(ctx)
    try:
        await peer.send(w.HubData(src=_nobody(), dst=hub.encode(), service=b"x",
                                  channel_id=1, msg_seq=0))
        await _expect_abort_skipping_link(peer, ErrorCode.PROTOCOL_VIOLATION)
    finally:
        await peer.aclose()


@conformance_check("hub.data_key_mismatch",
                   "DATA whose key references do not cover the ciphertext is refused",
                   group="hub", roles=("spoke",))
async def _key_mismatch(ctx: CheckContext) -> None:
    peer, hub = await _register(ctx)
    try:
        await peer.send(w.HubData(
            src=ctx.local_name.encode(), dst=hub.encode(), service=b"x", channel_id=1,
            msg_seq=0, segments=[w.KeySegmentField(block_id=1, offset=0, n_bits=8)],
            ciphertext=b"\x00\x01"))
        await _expect_abort_skipping_link(peer, ErrorCode.MALFORMED_FRAME)
    finally:
        await peer.aclose()


async def _expect_abort_skipping_link(peer: Peer, code: ErrorCode) -> None:
    while True:
        ev = await peer.next_frame()
        if ev is None:
            raise CheckFailed(f"connection closed without ERROR {code.name}")
        if 0x10 <= ev.type < 0x40:
            continue
        if ev.type != MsgType.ERROR:
            raise CheckFailed(f"target acted on a bad frame (answered type 0x{ev.type:02x})")
        if int(ev.body.code) != code:
            raise CheckFailed(f"ERROR code {int(ev.body.code)}, expected {code.name}")
        await peer.expect_closed()
        return
