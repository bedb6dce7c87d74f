"""Delivery acks of relayed channels: one cumulative ack covers a burst, and a reader
that has caught up still acks what it read (so a sender never waits forever)."""

from __future__ import annotations

from pathlib import Path

import trio

from qkdnet.hub.node import ACK_EVERY, embedded_network


async def test_a_burst_is_acked_with_few_frames_and_completely(tmp_path: Path) -> None:
    async with embedded_network(["alice", "bob"], tmp_path, prefill_key=1 << 18,
                                window=64) as net:
        listener = net["bob"].listen("sink")
        ch = await net["alice"].open_channel("bob", "sink")
        inc = await listener.accept()
        n = 5 * ACK_EVERY
        for i in range(n):  # bob does not read yet: the burst piles up in his inbox
            await ch.send_message(b"m%d" % i)
        with trio.fail_after(10):
            while inc.messages_received + len(inc._inbox) < n:
                await trio.sleep(0.01)
            for i in range(n):
                assert await inc.receive_message() == b"m%d" % i
            await ch.wait_delivered()  # every message acknowledged
        acks = net["bob"].counters["acks_sent"]
        assert 1 <= acks <= n // ACK_EVERY + 1


async def test_a_single_message_is_acked_without_waiting_for_more(tmp_path: Path) -> None:
    async with embedded_network(["alice", "bob"], tmp_path, prefill_key=1 << 16) as net:
        listener = net["bob"].listen("sink")
        ch = await net["alice"].open_channel("bob", "sink")
        inc = await listener.accept()
        for i in range(3):  # one at a time: each read finds the inbox empty after it
            await ch.send_message(b"x")
            assert await inc.receive_message() == b"x"
            with trio.fail_after(5):
                await ch.wait_delivered()
            assert net["bob"].counters["acks_sent"] == i + 1
