"""The conformance kit against our basic node (all pass) and a broken one (caught)."""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from pathlib import Path

import pytest
import trio

from qkdnet.auth import Backlog, FrameAuthenticator, KeyStoreTagKeys
from qkdnet.conformance import (
    CHECKS,
    CheckContext,
    CheckFailed,
    Peer,
    conformance_check,
    keys_from_secret,
    run_checks,
)
from qkdnet.errors import ErrorCode, KeyExhausted, KeyReuseError
from qkdnet.keystore import KeyStore
from qkdnet.sideband import BasicNode, serve_basic_node
from qkdnet.wire import MsgType

REQUIRED = {"handshake.hello", "version.header", "auth.bad_tag", "auth.replay",
            "length.oversized", "length.garbage", "segments.split", "segments.coalesced",
            "types.unknown", "close.graceful", "auth.frame_from_other_connection",
            "auth.forged_frame_keeps_key"}


def _ctx(port: int, secret: Path, tmp_path: Path) -> CheckContext:
    keys, _store = keys_from_secret(secret.read_bytes(), tmp_path / "kit.db")
    return CheckContext("127.0.0.1", port, "spoke", "conformance", keys, timeout=3)


async def test_basic_node_passes_every_check(basic_node: BasicNode, secret: Path,
                                             tmp_path: Path) -> None:
    assert set(CHECKS) >= REQUIRED
    results = await run_checks(_ctx(basic_node.port, secret, tmp_path), groups=["sideband"])
    failed = [(r.name, r.detail) for r in results if not r.passed]
    assert not failed
    assert len(results) == len([c for c in CHECKS.values() if c.group == "sideband"]) >= 20
    # The node saw every abuse and is still serving.
    assert basic_node.stats.errors["AUTHENTICATION_FAILED"] >= 3
    assert basic_node.stats.max_buffered <= 1 << 16


class _TrustingAuthenticator(FrameAuthenticator):
    """A broken implementation: takes the key but never checks the tag."""

    def verify(self, block_id: int, offset: int, message: bytes, tag: bytes,
               binding: bytes = b"", backlog: Backlog | None = None) -> None:
        self.keys.take_tag_key(block_id, offset)


async def test_checks_catch_a_node_that_skips_tag_verification(
        nursery: trio.Nursery, node_store: KeyStore, secret: Path, tmp_path: Path) -> None:
    def resolve(name: str) -> FrameAuthenticator | None:
        return _TrustingAuthenticator(KeyStoreTagKeys(node_store, name))

    node: BasicNode = await nursery.start(functools.partial(serve_basic_node, "bad", resolve))
    results = {r.name: r for r in await run_checks(_ctx(node.port, secret, tmp_path),
                                                   groups=["sideband"])}
    for name in ("auth.bad_tag", "auth.bad_body_bit", "auth.bad_tag_hello"):
        assert not results[name].passed, name
    assert "acted on a bad frame" in results["auth.bad_tag"].detail
    assert results["auth.replay"].passed and results["handshake.ping"].passed


class _TakeFirstAuthenticator(FrameAuthenticator):
    """The pre-review implementation: spends the tag key before checking the tag."""

    def verify(self, block_id: int, offset: int, message: bytes, tag: bytes,
               binding: bytes = b"", backlog: Backlog | None = None) -> None:
        try:
            super().verify(block_id, offset, message, tag, binding, backlog)
        finally:
            with contextlib.suppress(KeyReuseError, KeyExhausted):
                self.keys.take_tag_key(block_id, offset)


async def test_checks_catch_a_node_that_burns_keys_of_forged_frames(
        nursery: trio.Nursery, node_store: KeyStore, secret: Path, tmp_path: Path) -> None:
    def resolve(name: str) -> FrameAuthenticator | None:
        return _TakeFirstAuthenticator(KeyStoreTagKeys(node_store, name))

    node: BasicNode = await nursery.start(functools.partial(serve_basic_node, "bad", resolve))
    results = {r.name: r for r in await run_checks(
        _ctx(node.port, secret, tmp_path),
        names=["auth.forged_frame_keeps_key", "handshake.ping"])}
    assert results["handshake.ping"].passed
    assert not results["auth.forged_frame_keeps_key"].passed
    assert "burned the key" in results["auth.forged_frame_keeps_key"].detail


async def test_check_registry_is_extensible(basic_node: BasicNode, secret: Path,
                                            tmp_path: Path) -> None:
    @conformance_check("test.extra_ping", "an extension check", group="test", roles=("hub",))
    async def extra(ctx: CheckContext) -> None:
        async with ctx.connection() as peer:
            assert isinstance(peer, Peer)
            await peer.send_raw(peer.frame(MsgType.PING, b"\0" * 8))
            await peer.expect(MsgType.PONG)
            raise CheckFailed("deliberate")

    try:
        ctx = _ctx(basic_node.port, secret, tmp_path)
        assert await run_checks(ctx, ["test.extra_ping"]) == []  # not for role spoke
        ctx.role = "hub"
        (res,) = await run_checks(ctx, ["test.extra_ping"])
        assert (res.passed, res.detail, res.group) == (False, "deliberate", "test")
        with pytest.raises(ValueError):
            conformance_check("test.extra_ping", "dup")(extra)
    finally:
        del CHECKS["test.extra_ping"]


async def test_expect_abort_rejects_wrong_code(basic_node: BasicNode, secret: Path,
                                              tmp_path: Path) -> None:
    ctx = _ctx(basic_node.port, secret, tmp_path)
    async with ctx.connection() as peer:
        await peer.send_raw(peer.frame(0x0F, b""))
        with pytest.raises(CheckFailed, match="UNKNOWN_MESSAGE_TYPE, expected MALFORMED"):
            await peer.expect_abort(ErrorCode.MALFORMED_FRAME)


@pytest.mark.slow
async def test_cli_against_live_node(basic_node: BasicNode, secret: Path,
                                     tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "qkdnet", "conformance", "--target",
           f"127.0.0.1:{basic_node.port}", "--secret", str(secret), "--group", "sideband",
           "--json",
           "--keystore", str(tmp_path / "cli.db")]
    proc = await trio.run_process(cmd, capture_stdout=True, capture_stderr=True, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    out = json.loads(proc.stdout)
    assert out["failed"] == 0 and out["passed"] == len(out["checks"]) >= 20
    # Same secret, same (durable) kit store: a second run continues in the pools.
    again = [*cmd[:-3], "--keystore", str(tmp_path / "cli.db"), "--check", "auth.*"]
    table = await trio.run_process(again,
                                   capture_stdout=True, check=False)
    assert table.returncode == 0 and b"auth.replay" in table.stdout and b"pass" in table.stdout
    # Without the secret: a usage error naming the fix.
    bad = await trio.run_process([sys.executable, "-m", "qkdnet", "conformance", "--target",
                                  f"127.0.0.1:{basic_node.port}"], capture_stderr=True,
                                 check=False)
    assert bad.returncode == 2 and b"--secret" in bad.stderr
