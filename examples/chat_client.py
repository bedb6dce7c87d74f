"""A complete qkdnet chat client: ``python examples/chat_client.py PEER [NODE_SOCKET]``.

Talks to ``qkdnet chat`` (same line protocol, with delivery receipts) through the
local node daemon; every line is one-time padded and authenticated on each hop.
"""

import sys

import trio

from qkdnet.apps.api import default_socket_path, open_secure_stream
from qkdnet.apps.chat import ChatSession
from qkdnet.apps.local import NodeClient


async def main(peer: str, socket: str) -> None:
    chat = ChatSession(await open_secure_stream(peer, "chat", node=NodeClient(socket)))

    async def show() -> None:
        async for event in chat.events():
            if event.kind == "message":
                print(f"{peer}> {event.text}", flush=True)
            elif event.kind == "receipt":
                print(f"(delivered #{event.id})", flush=True)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(show)
        stdin = trio.wrap_file(sys.stdin)
        while line := await stdin.readline():
            await chat.send(line.rstrip("\n"))
        await chat.finish()  # authenticated end of stream; show() ends when the peer leaves


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else str(default_socket_path()))
