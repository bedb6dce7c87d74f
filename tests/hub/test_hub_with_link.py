"""The whole stack: spokes run real QKD links (emulated PHY + link layer) to the hub,
and a message is relayed with the distilled key — no prefilled key at all."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from qkdnet.hub.node import embedded_network


@pytest.mark.slow
async def test_relay_with_key_from_the_link_layer(tmp_path: Path) -> None:
    async with embedded_network(["alice", "bob"], tmp_path, link=True,
                                preset="snspd-metro", km=5) as net:
        assert net.stores["alice"].available("hub", "data-tx") == 0
        with trio.fail_after(120):
            # The hub counts a block in its status when the spoke's CONFIRM arrives,
            # a moment after the key is in the pools: wait for both.
            while (net.stores["alice"].available("hub", "data-tx") < 800
                   or net.hub_store.available("bob", "data-tx") < 800
                   or any(net.hub.status()["spokes"][n]["link"].get("stored", 0) < 1
                          for n in ("alice", "bob"))):
                await trio.sleep(0.2)
        listener = net["bob"].listen("s")
        ch = await net["alice"].open_channel("bob", "s")
        inc = await listener.accept()
        message = b"distilled, not prefilled " * 2
        await ch.send_message(message)
        assert await inc.receive_message() == message
        await ch.wait_delivered()
        status = net.hub.status()["spokes"]
        for name in ("alice", "bob"):
            link = status[name]["link"]
            assert link["role"] == "receiver" and link["stored"] >= 1
            assert 0 <= link["qber"] < 0.11
        assert net["alice"].status()["link"]["stored"] >= 1


@pytest.mark.slow
async def test_status_shows_a_stopped_link_as_down_with_its_reason(tmp_path: Path) -> None:
    """Up with a net key rate while blocks are stored; when the connection drops, down
    with the reason and a zero rate (not up with the last rate)."""
    async with embedded_network(["alice"], tmp_path, link=True, preset="snspd-metro",
                                km=5) as net:
        with trio.fail_after(120):
            while net.hub.status()["spokes"]["alice"]["link"].get("stored", 0) < 1:
                await trio.sleep(0.1)
        link = net.hub.status()["spokes"]["alice"]["link"]
        assert link["state"] == "up" and link["down_reason"] is None
        assert link["gross_key_rate_bps"] > link["key_rate_bps"] > 0
        assert 0 < link["auth_rate_bps"] < 0.01 * link["gross_key_rate_bps"]
        up_since = link["since"]
        net.hub.sessions["alice"].cancel.cancel()        # the hub drops the connection
        seen: dict = {}
        with trio.fail_after(10):
            while True:
                seen = dict(net.hub.status()["spokes"]["alice"]["link"])
                if seen["state"] == "down":
                    break
                await trio.sleep(0.001)
        assert seen["down_reason"] and seen["key_rate_bps"] == 0
        assert seen["gross_key_rate_bps"] == 0 and seen["since"] >= up_since
        node_link = net["alice"].status()["link"]
        assert node_link["state"] in ("up", "down")      # it reconnects by itself
