"""Daemons keep the key store's only growing part bounded: used-up block records are
pruned when a hub or node starts and every hour after ([keystore] retired_keep)."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import trio
import trio.testing

from qkdnet.hub.daemon import HubDaemon, HubSettings
from qkdnet.hub.node import SpokeNode, SpokeSettings
from qkdnet.keystore import BlockMeta, KeyStore, prune_retired_periodically

META = BlockMeta(link_session="s1", created=1.0, eps_sec=1e-10, eps_cor=1e-15,
                 leaked_ec_bits=0, auth_bits_spent=0, qber=0.01)


def _use_up_blocks(store: KeyStore, peer: str, ids: range) -> None:
    """Add 64-bit blocks and reserve each whole, so each leaves a retired record."""
    for b in ids:
        store.add_block(peer, "data-tx", b, os.urandom(8), 64, META)
        store.reserve(peer, "data-tx", 64, contiguous=True)


def _retired(store: KeyStore) -> int:
    return sum(st["retired_blocks"] for st in store.status())


async def test_prune_runs_at_start_and_then_every_interval(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    with KeyStore(tmp_path / "k.sqlite") as store:
        _use_up_blocks(store, "peer", range(4))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(prune_retired_periodically, store, keep=1, every=3600))
            await trio.sleep(1)
            assert _retired(store) == 1
            _use_up_blocks(store, "peer", range(4, 6))
            await trio.sleep(1800)
            assert _retired(store) == 3          # not yet: the next pass is an hour on
            await trio.sleep(1800)
            assert _retired(store) == 1
            nursery.cancel_scope.cancel()


async def test_hub_and_node_prune_on_start_as_configured(tmp_path: Path) -> None:
    hub_path, node_path = tmp_path / "hub.keys", tmp_path / "alice.keys"
    for path, peer in ((hub_path, "alice"), (node_path, "hub")):
        with KeyStore(path) as store:
            _use_up_blocks(store, peer, range(5))
            assert _retired(store) == 5
    hub = HubDaemon(HubSettings(name="hub", keystore=hub_path, port=0, spokes={},
                                retired_keep=2))
    node = SpokeNode(SpokeSettings(name="alice", hub_name="hub", keystore=node_path,
                                   hub_port=1, reconnect_max=0.2, retired_keep=3))
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run)
        async with node.running():
            with trio.fail_after(10):
                while _retired(hub.store) > 2 or _retired(node.store) > 3:  # type: ignore[arg-type]
                    await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
