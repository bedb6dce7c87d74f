"""Child process for test_keystore_group_commit: make a key-store COMMIT fail for real.

The file-size limit (RLIMIT_FSIZE, with SIGXFSZ ignored) is lowered while a batch holds
takes, so SQLite's COMMIT gets a genuine ``disk I/O error``. Process-wide, hence a child.
Prints one JSON line with what happened. Usage: ``python THIS store|hub|spoke FOLDER``.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
from pathlib import Path
from typing import Any

import trio

from qkdnet.hub.node import ChannelError, embedded_network
from qkdnet.keystore import CHUNK_BITS, BlockMeta, KeySegment, KeyStore

SOFT, HARD = resource.getrlimit(resource.RLIMIT_FSIZE)


def limit_file_size(on: bool) -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 if on else SOFT, HARD))


def untaken(observer: KeyStore, segments: list[KeySegment]) -> bool:
    try:
        observer.peek("hub", "data-rx", segments)
    except Exception:
        return False
    return True


def store_case(folder: Path) -> dict[str, Any]:
    meta = BlockMeta(link_session="s1", created=1.0, eps_sec=1e-10, eps_cor=1e-15,
                     leaked_ec_bits=0, auth_bits_spent=0)
    store = KeyStore(folder / "node.keys")
    store.add_block("hub", "data-rx", 1, os.urandom(CHUNK_BITS // 2), 4 * CHUNK_BITS, meta)
    store.checkpoint()
    released: list[str] = []
    error = ""
    seg = [KeySegment(1, 0, 256)]
    try:
        with store.batch():
            store.take("hub", "data-rx", seg)
            store.after_commit(lambda: released.append("delivered"))
            limit_file_size(True)
    except Exception as err:
        error = type(err).__name__
    finally:
        limit_file_size(False)
    observer = KeyStore(folder / "node.keys")
    return {"error": error, "released": released, "untaken": untaken(observer, seg),
            "in_transaction": store.db.in_transaction}


class FailNextBatchCommit:
    """Make the COMMIT of ``target``'s next batch with a take fail (disk I/O error).

    The limit goes on at the batch's first take and off at the next statement that is
    not part of that batch, or as soon as any of ``others`` writes (they must not fail).
    """

    def __init__(self, target: KeyStore, others: list[KeyStore]) -> None:
        self.armed = self.limited = False
        self.stores = [target, *others]
        target.db.set_trace_callback(self._target)
        for store in others:
            store.db.set_trace_callback(self._other)

    def _lift(self) -> None:
        limit_file_size(False)
        self.limited = False

    def _target(self, stmt: str) -> None:
        if self.limited and stmt.startswith(("BEGIN", "PRAGMA")):
            self._lift()
        if self.armed and stmt == "SAVEPOINT take_in_batch":
            self.armed, self.limited = False, True
            limit_file_size(True)

    def _other(self, stmt: str) -> None:
        if self.limited:
            self._lift()

    def stop(self) -> None:
        self._lift()
        for store in self.stores:
            store.db.set_trace_callback(None)


async def alice_to_bob(net: Any) -> tuple[Any, Any]:
    """A channel alice->bob that has carried one message: (alice's end, bob's end)."""
    listener = net["bob"].listen("sink")
    ch = await net["alice"].open_channel("bob", "sink")
    inc = await listener.accept()
    await ch.send_message(b"one")
    assert await inc.receive_message() == b"one"
    await ch.wait_delivered()
    await trio.sleep(0.3)
    return ch, inc


async def hub_case(folder: Path) -> dict[str, Any]:
    """The hub's batch (tag key and pad of alice's DATA) fails to commit."""
    async with embedded_network(["alice", "bob"], folder, prefill_key=1 << 20) as net:
        ch, inc = await alice_to_bob(net)
        before = net.hub_store.available("alice", "data-rx")
        sabotage = FailNextBatchCommit(net.hub_store, list(net.stores.values()))
        sabotage.armed = True
        await ch.send_message(b"two")
        got = None
        with trio.move_on_after(3):
            got = await inc.receive_message()
        sabotage.stop()
        await trio.sleep(0.5)  # the hub has dropped alice's connection by now
        return {"bob_got": None if got is None else got.decode(),
                "pad_untaken": net.hub_store.available("alice", "data-rx") == before,
                "unsent_to_bob": net.hub.router.spokes["bob"].unsent}


async def spoke_case(folder: Path) -> dict[str, Any]:
    """bob's own batch (tag key and pad of alice's DATA) fails to commit."""
    async with embedded_network(["alice", "bob"], folder, prefill_key=1 << 20) as net:
        ch, inc = await alice_to_bob(net)
        before = net.stores["bob"].available("hub", "data-rx")
        sabotage = FailNextBatchCommit(net.stores["bob"],
                                       [net.hub_store, net.stores["alice"]])
        sabotage.armed = True
        await ch.send_message(b"two")
        got: bytes | None = None
        channel_failed = False
        with trio.move_on_after(3):
            try:
                got = await inc.receive_message()
            except ChannelError:  # bob dropped the connection: its channels fail
                channel_failed = True
        sabotage.stop()
        pad_untaken = net.stores["bob"].available("hub", "data-rx") == before
        error = net["bob"].last_error or ""
        # bob's node is still running: it reconnects and a new channel works.
        with trio.fail_after(20):
            await net["bob"].wait_connected(20)
            listener2 = net["bob"].listen("sink2")
            ch2 = await net["alice"].open_channel("bob", "sink2")
            inc2 = await listener2.accept()
            await ch2.send_message(b"three")
            after = await inc2.receive_message()
        return {"bob_got": None if got is None else got.decode(), "pad_untaken": pad_untaken,
                "channel_failed": channel_failed, "last_error": error,
                "after": after.decode()}


def main() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    case, folder = sys.argv[1], Path(sys.argv[2])
    result = (store_case(folder) if case == "store"
              else trio.run(hub_case if case == "hub" else spoke_case, folder))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
