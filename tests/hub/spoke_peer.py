"""Test helper run as its own OS process: one spoke that talks to every other spoke.

``python spoke_peer.py CONFIG PEERS COUNT OUT``: runs a :class:`SpokeNode` from the
spoke config file, accepts channels on service ``pairs``, opens one channel to each
peer (comma-separated) and sends COUNT numbered messages, then waits until every
peer has closed its channel to us. Writes what it received (per peer, in order) as
JSON to OUT. Exit status 0 on success.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import trio

from qkdnet.hub import wire as w
from qkdnet.hub.cli import spoke_settings_from_file
from qkdnet.hub.node import ChannelError, SpokeNode


async def main(config: str, peers: list[str], count: int, out: Path) -> None:
    node = SpokeNode(spoke_settings_from_file(config))
    received: dict[str, list[str]] = {p: [] for p in peers}
    async with node.running():
        await node.wait_connected(30)
        listener = node.listen("pairs")

        async def collect_all() -> None:
            async with trio.open_nursery() as inner:
                for _ in peers:
                    ch = await listener.accept()

                    async def collect(ch=ch) -> None:  # type: ignore[no-untyped-def]
                        async for msg in ch:
                            received[ch.peer].append(msg.decode())

                    inner.start_soon(collect)

        async def send_to(peer: str) -> None:
            with trio.fail_after(30):
                while True:  # the peer may not have registered yet
                    try:
                        ch = await node.open_channel(peer, "pairs")
                        break
                    except ChannelError as err:
                        if err.reason not in (w.HubReason.UNKNOWN_PEER,
                                              w.HubReason.NO_SUCH_SERVICE):
                            raise
                        await trio.sleep(0.1)
            for i in range(count):
                await ch.send_message(f"{node.name}->{peer} #{i}".encode() + b"." * (i % 50))
            await ch.wait_delivered()
            await ch.aclose()

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(collect_all)
                for peer in peers:
                    nursery.start_soon(send_to, peer)
    out.write_text(json.dumps({"name": node.name, "received": received,
                               "counters": node.counters}))


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2].split(","), int(sys.argv[3]), Path(sys.argv[4]))
