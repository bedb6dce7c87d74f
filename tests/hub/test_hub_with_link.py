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
            while (net.stores["alice"].available("hub", "data-tx") < 800
                   or net.hub_store.available("bob", "data-tx") < 800):
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
