"""KEY_RELAY at the spoke over a real hub connection: a good relay gives both ends the
same key; a bad one (unsolicited, replayed, naming key the spoke lacks) ends the
connection with an ERROR frame the hub receives, and stores nothing."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio

from qkdnet.hub import wire as w
from qkdnet.hub.node import EmbeddedNetwork, embedded_network
from qkdnet.hub.router import Send
from qkdnet.keystore import KeySegment


def _segs(grant) -> list[w.KeySegmentField]:  # type: ignore[no-untyped-def]
    return [w.KeySegmentField(block_id=s.block_id, offset=s.offset, n_bits=s.n_bits)
            for s in grant.segments]


async def _hub_sends(net: EmbeddedNetwork, to: str, body: w.HubKeyRelay) -> None:
    net.hub._execute([Send(to, body)])


async def _aborted_with(caplog: pytest.LogCaptureFixture, net: EmbeddedNetwork,
                        spoke: str, code: str) -> str:
    """Wait until the hub logs that ``spoke`` aborted its connection with ERROR
    ``code`` (a connection dropped without ERROR logs no "peer aborted")."""
    with trio.fail_after(30):
        while True:
            for rec in caplog.records:
                msg = rec.getMessage()
                if f"connection of {spoke} ended" in msg and "peer aborted" in msg:
                    assert code in msg, msg
                    return msg
            await trio.sleep(0.02)


async def test_relay_gives_both_ends_the_same_key(tmp_path: Path) -> None:
    async with embedded_network(["alice", "bob"], tmp_path, prefill_key=1 << 14) as net:
        got = await net["alice"].relay_key("bob", 256)
        assert got.peer == "bob" and got.n_bits == 256
        bob_store = net.stores["bob"]
        with trio.fail_after(30):  # bob stores his half before alice is told
            while bob_store.available("alice", "e2e-rx") < 256:
                await trio.sleep(0.01)
        a = net.stores["alice"].reserve("bob", "e2e-tx", 256)
        b = bob_store.take("alice", "e2e-rx", a.segments)
        assert a.data == b and len(b) == 32
        assert net["alice"].connected and net["bob"].connected


async def test_unsolicited_initiator_relay_is_refused(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="qkdnet.hub.daemon")
    async with embedded_network(["alice", "bob"], tmp_path, prefill_key=1 << 14) as net:
        before = net.stores["alice"].available("hub", "data-rx")
        grant = net.hub_store.reserve("alice", "data-tx", 128)
        await _hub_sends(net, "alice", w.HubKeyRelay(
            peer=b"bob", request_id=77, role=0, e2e_block_id=5, n_bits=128,
            segments=_segs(grant)))
        msg = await _aborted_with(caplog, net, "alice", "PROTOCOL_VIOLATION")
        assert "answers no request" in msg
        # Nothing was taken or stored on the strength of it.
        store = net.stores["alice"]
        assert store.available("hub", "data-rx") == before
        assert store.available("bob", "e2e-tx") == 0
        await net["alice"].wait_connected(10)  # it reconnects on its own


async def test_replayed_relay_key_is_a_protocol_error(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="qkdnet.hub.daemon")
    async with embedded_network(["alice", "bob"], tmp_path, prefill_key=1 << 14) as net:
        grant = net.hub_store.reserve("bob", "data-tx", 64)
        first = w.HubKeyRelay(peer=b"alice", request_id=9, role=1, e2e_block_id=1,
                              n_bits=64, segments=_segs(grant), masked=b"\x55" * 8)
        await _hub_sends(net, "bob", first)
        with trio.fail_after(30):
            while net["bob"].counters["key_relays"] < 1:
                await trio.sleep(0.01)
        # Same key bits again (a replay, or a hub reusing key): never a crash, never
        # a silent drop: ERROR, and the second block is not stored.
        again = w.HubKeyRelay(peer=b"alice", request_id=9, role=1, e2e_block_id=2,
                              n_bits=64, segments=_segs(grant), masked=b"\x55" * 8)
        await _hub_sends(net, "bob", again)
        await _aborted_with(caplog, net, "bob", "PROTOCOL_VIOLATION")
        assert net.stores["bob"].available("alice", "e2e-rx") == 64
        assert net["bob"].counters["key_relays"] == 1


async def test_relay_naming_key_the_spoke_lacks_is_key_exhausted(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="qkdnet.hub.daemon")
    async with embedded_network(["alice", "bob"], tmp_path, prefill_key=1 << 14,
                                key_wait=0.3) as net:
        missing = [KeySegment(0xDEAD, 0, 64)]
        await _hub_sends(net, "bob", w.HubKeyRelay(
            peer=b"alice", request_id=3, role=1, e2e_block_id=4, n_bits=64,
            segments=_segs(type("G", (), {"segments": missing})), masked=b"\x00" * 8))
        await _aborted_with(caplog, net, "bob", "KEY_EXHAUSTED")
        assert net.stores["bob"].available("alice", "e2e-rx") == 0


async def test_relay_with_oneself_is_refused(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="qkdnet.hub.daemon")
    async with embedded_network(["alice", "bob"], tmp_path, prefill_key=1 << 14) as net:
        grant = net.hub_store.reserve("bob", "data-tx", 64)
        await _hub_sends(net, "bob", w.HubKeyRelay(
            peer=b"bob", request_id=1, role=1, e2e_block_id=1, n_bits=64,
            segments=_segs(grant), masked=b"\x00" * 8))
        await _aborted_with(caplog, net, "bob", "PROTOCOL_VIOLATION")
