"""Test helper process: a hub and spokes in-process, each node served on a local socket.

Run as ``python apps_netfixture.py FOLDER name1 name2 ...``; prints ``READY`` once the
sockets ``FOLDER/<name>.sock`` accept apps, then runs until killed. This stands in for
the ``qkdnet hub`` / ``qkdnet node`` daemons (TEST-ONLY prefilled key).
"""

from __future__ import annotations

import sys
from pathlib import Path

import trio

from qkdnet.apps.local import serve_local
from qkdnet.hub.node import embedded_network


async def main(folder: Path, names: list[str]) -> None:
    async with embedded_network(names, folder / "net", prefill_key=16 << 20) as net, \
            trio.open_nursery() as nursery:
        for name in names:
            await nursery.start(serve_local, net[name], folder / f"{name}.sock")
        print("READY", flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main, Path(sys.argv[1]), sys.argv[2:])
