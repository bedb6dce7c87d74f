"""The link conformance checks pass against our own link receiver over loopback.

The target is a sideband server running :class:`~qkdnet.link.driver.LinkEndpoint` as
the receiver with the emulated PHY; the kit plays the spoke.  A target that accepts
contradicting messages must fail the checks: the last test disables the receiver's
validation of SIFT and expects the corresponding checks to fail.
"""

from __future__ import annotations

import secrets
from typing import Any

import pytest
import trio

from qkdnet import conformance
from qkdnet.auth import FrameAuthenticator, KeyStoreTagKeys
from qkdnet.keystore import KeyStore
from qkdnet.link import conformance as link_checks
from qkdnet.link import conformance_checkpoints  # noqa: F401  (registers its checks)
from qkdnet.link import wire as w
from qkdnet.link.driver import EmulatedPhy, LinkEndpoint, serve_link_channel
from qkdnet.link.session import LinkConfig
from qkdnet.phy import presets
from qkdnet.sideband import serve_sideband

LINK_CHECKS = [n for n, c in conformance.CHECKS.items() if c.group == "link"]


async def _target(nursery: trio.Nursery, tmp_path, secret: bytes, *,
                  link_store: bool = True) -> int:
    store = KeyStore(tmp_path / "target.db")
    store.import_bootstrap("conformance", secret, initiator=False)
    params = presets.get("snspd-metro")
    phy = EmulatedPhy(params, 10.0, seed=1)
    cfg = LinkConfig.from_phy(params, 0)

    async def handler(chan: Any) -> None:
        end = LinkEndpoint("receiver", chan, cfg, peer="conformance",
                           store=store if link_store else None, phy=phy)
        await serve_link_channel(chan, end)

    def auth_for(name: str) -> Any:
        return FrameAuthenticator(KeyStoreTagKeys(store, name)) if name == "conformance" \
            else None

    listeners = await nursery.start(lambda task_status: serve_sideband(
        handler, 0, local_name="hub", auth_for_peer=auth_for, host="127.0.0.1",
        task_status=task_status))
    return listeners[0].socket.getsockname()[1]


async def _run(tmp_path, *, link_store: bool = True) -> dict[str, conformance.CheckResult]:
    secret = secrets.token_bytes(1 << 16)
    async with trio.open_nursery() as nursery:
        port = await _target(nursery, tmp_path, secret, link_store=link_store)
        keys, store = conformance.keys_from_secret(secret, tmp_path / "kit.db",
                                                   label="hub")
        ctx = conformance.CheckContext("127.0.0.1", port, "spoke", "conformance", keys)
        results = await conformance.run_checks(ctx, LINK_CHECKS)
        store.close()
        nursery.cancel_scope.cancel()
    return {r.name: r for r in results}


def test_link_checks_are_registered() -> None:
    assert link_checks.PROBE_SLOTS > 0
    assert {"link.block_start", "link.sift_mask_length", "link.unknown_block"} <= \
        set(LINK_CHECKS)


async def test_link_checks_pass_against_our_receiver(tmp_path) -> None:
    results = await _run(tmp_path)
    failed = {n: r.detail for n, r in results.items() if not r.passed}
    assert not failed
    assert len(results) == len(LINK_CHECKS)


async def test_link_checks_catch_a_receiver_that_skips_validation(tmp_path,
                                                                  monkeypatch) -> None:
    real = w.decode_sift

    def lax(pkt: Any, n_clicks: int, n_intensities: int) -> Any:
        import numpy as np
        keep = np.unpackbits(np.frombuffer(pkt.keep, dtype=np.uint8))[:n_clicks].astype(bool)
        return keep, np.zeros(int(keep.sum()), dtype=np.uint8)

    monkeypatch.setattr(w, "decode_sift", lax)
    try:
        results = await _run(tmp_path)
    finally:
        monkeypatch.setattr(w, "decode_sift", real)
    assert not results["link.sift_mask_length"].passed
    assert not results["link.sift_intensity_range"].passed
    assert results["link.block_start"].passed


pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


async def test_replayed_slots_check_catches_a_receiver_without_a_durable_mark(tmp_path
                                                                          ) -> None:
    """Without the key store's high-water mark the receiver only knows its own
    session's slots: the replay on a new session gets past the link session (and
    only the shared PHY's in-memory guard stops it, with the wrong reason)."""
    results = await _run(tmp_path, link_store=False)
    assert not results["link.replayed_slots"].passed
    assert results["link.block_start"].passed


async def test_checkpoint_checks_catch_a_receiver_that_ignores_deferred_frames(
        tmp_path, monkeypatch) -> None:
    """A sideband whose checkpoint tags do not cover the deferred frames (both ends of
    this process agree on that, so only a tampered frame tells): the flipped-bit
    checks must fail, the untampered control must still pass."""
    from qkdnet.auth import Backlog

    def count_only(self: Backlog, frame_without_tag: bytes) -> None:
        self.frames += 1
        self.bytes += len(frame_without_tag)

    monkeypatch.setattr(Backlog, "add", count_only)
    results = await _run(tmp_path)
    # (A flipped parity is mostly caught earlier, by Cascade's consistency check.)
    for name in ("link.checkpoint_flip_sift", "link.checkpoint_flip_estimate_result"):
        assert not results[name].passed, name
    assert results["link.checkpoint_reached"].passed
