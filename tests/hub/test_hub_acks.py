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


async def test_a_read_cancelled_while_its_ack_waits_keeps_the_message(tmp_path: Path) -> None:
    # A reader with a timeout can be cancelled while its ack waits for the
    # connection's send lock. The message must then stay readable and unacknowledged,
    # not vanish under a later cumulative ack.
    async with embedded_network(["alice", "bob"], tmp_path, prefill_key=1 << 16) as net:
        listener = net["bob"].listen("sink")
        ch = await net["alice"].open_channel("bob", "sink")
        inc = await listener.accept()
        await ch.send_message(b"first")
        with trio.fail_after(5):
            while not inc._inbox:
                await trio.sleep(0.01)
        chan = net["bob"]._chan
        assert chan is not None
        release = trio.Event()

        async def busy_sender(task_status: trio.TaskStatus[None]) -> None:
            async with chan._send_lock:   # another task is sending on bob's connection
                task_status.started()
                await release.wait()

        async with trio.open_nursery() as nursery:
            await nursery.start(busy_sender)
            with trio.move_on_after(0.2) as scope:
                await inc.receive_message()
            assert scope.cancelled_caught
            release.set()
        assert inc.messages_received == 0 and len(inc._inbox) == 1
        with trio.fail_after(5):
            assert await inc.receive_message() == b"first"
            await ch.wait_delivered()
        await ch.send_message(b"second")
        with trio.fail_after(5):
            assert await inc.receive_message() == b"second"
            await ch.wait_delivered()
