"""A short soak of the example network: hub + three spokes (one idle) on real QKD
links, started from 4 KiB bootstrap secrets, must pay its authentication from
distilled key and keep distilling (the long run: ``python -m qkdnet.hub.soak``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from qkdnet.hub.soak import run_soak


@pytest.mark.slow
async def test_the_network_tops_up_its_auth_pools_and_keeps_distilling(tmp_path: Path) -> None:
    # A reserve above what the bootstrap secret holds per pool (~15.5 kbit): the
    # pools can reach it only from distilled key.
    result = await run_soak(tmp_path, blocks_per_link=8, km=5.0, block_slots=6_000_000,
                            bootstrap_bytes=4096, auth_reserve_bits=24_576,
                            timeout_s=400)
    assert result.ok, result.problems
    for name, link in result.links.items():
        assert link.topped_up_at_s is not None, name
        assert min(link.auth_min_after_topup.values()) >= 24_576 // 2, name
        assert link.stored >= 6 and link.key_bits > 0, name
    assert result.links["alice"].messages_sent > 0 and result.links["bob"].messages_sent > 0
    assert result.links["carol"].messages_sent == 0
