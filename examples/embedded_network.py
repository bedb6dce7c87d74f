"""A hub and two spokes in one process, with real (emulated) QKD links.

``python examples/embedded_network.py`` — alice sends bob one message through the
hub, which re-keys it from alice's link key to bob's. The first data key is
distilled a few seconds after the links come up, so frames may wait up to
``key_wait`` seconds for it.
"""

import tempfile

import trio

from qkdnet.hub.node import embedded_network


async def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        async with embedded_network(["alice", "bob"], folder, link=True,
                                    preset="snspd-metro", km=10, key_wait=60) as net:
            listener = net["bob"].listen("echo")
            chan = await net["alice"].open_channel("bob", "echo")
            incoming = await listener.accept()
            await chan.send_message(b"hello through the hub")
            print((await incoming.receive_message()).decode())


if __name__ == "__main__":
    trio.run(main)
