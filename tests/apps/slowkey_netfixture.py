"""Test helper process: a hub, alice and bob in-process, key fed in small steps.

``python slowkey_netfixture.py FOLDER PREFILL_BITS FEED_BITS EVERY_S STEPS STALL_S
[FEED_NAMES]`` starts an embedded network whose pools hold only ``PREFILL_BITS`` of
(TEST-ONLY) key per direction, serves ``FOLDER/<name>.sock`` for apps, prints
``READY``, waits for the file ``FOLDER/go``, then adds ``FEED_BITS`` per direction
to the links of ``FEED_NAMES`` (comma-separated, default every spoke) every
``EVERY_S`` seconds, ``STEPS`` times, standing in for QKD links that distil key
slowly; then key stops arriving. The daemons' ``key_stall`` is ``STALL_S``. Runs
until killed.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import trio

from qkdnet.apps.local import serve_local
from qkdnet.hub.node import embedded_network


async def main(folder: Path, prefill: int, feed: int, every: float, steps: int,
               stall: float, names: list[str] | None) -> None:
    # (Before key_stall existed, key_wait was the whole wait: run such code with it.)
    waits = ({"key_wait": 1.0, "key_stall": stall}
             if "key_stall" in inspect.signature(embedded_network).parameters
             else {"key_wait": stall})
    async with embedded_network(["alice", "bob"], folder / "net", prefill_key=prefill,
                                **waits) as net, \
            trio.open_nursery() as nursery:
        for name in ("alice", "bob"):
            await nursery.start(serve_local, net[name], folder / f"{name}.sock")
        print("READY", flush=True)
        while not (folder / "go").exists():
            await trio.sleep(0.05)
        for _ in range(steps):
            await trio.sleep(every)
            net.prefill(feed, names=names)
        print("FEED DONE", flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":
    a = sys.argv[1:]
    trio.run(main, Path(a[0]), int(a[1]), int(a[2]), float(a[3]), int(a[4]), float(a[5]),
             a[6].split(",") if len(a) > 6 else None)
