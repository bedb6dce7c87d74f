"""KeyStore.batch (group commit for receivers) and its use on the hub's receive path.

A second KeyStore on the same file is a second SQLite connection: it sees only what
is committed, so it shows when the takes of a batch become durable.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from qkdnet.errors import KeyReuseError, LocalProtocolError
from qkdnet.hub.node import embedded_network
from qkdnet.keystore import CHUNK_BITS, BlockMeta, KeySegment, KeyStore

META = BlockMeta(link_session="s1", created=1.0, eps_sec=1e-10, eps_cor=1e-15,
                 leaked_ec_bits=0, auth_bits_spent=0)
N_BITS = 4 * CHUNK_BITS


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[KeyStore, KeyStore]]:
    """(store, observer): block 1 in (hub, data-rx) and block 2 in (hub, data-tx)."""
    store = KeyStore(tmp_path / "node.keys", lease_bits=1024)
    store.add_block("hub", "data-rx", 1, os.urandom(N_BITS // 8), N_BITS, META)
    store.add_block("hub", "data-tx", 2, os.urandom(N_BITS // 8), N_BITS, META)
    observer = KeyStore(tmp_path / "node.keys")
    yield store, observer
    observer.close()
    store.close()


def seg(i: int, n: int = 256) -> list[KeySegment]:
    return [KeySegment(1, i * n, n)]


def taken_by_others_view(observer: KeyStore, i: int) -> bool:
    """Whether segment ``i`` is taken as far as another connection can see."""
    try:
        observer.peek("hub", "data-rx", seg(i))
    except KeyReuseError:
        return True
    return False


def count_commits(store: KeyStore) -> list[str]:
    statements: list[str] = []
    store.db.set_trace_callback(statements.append)
    return statements


def test_takes_in_a_batch_share_one_commit(stores: tuple[KeyStore, KeyStore]) -> None:
    store, _ = stores
    log = count_commits(store)
    for i in range(5):
        store.take("hub", "data-rx", seg(i))
    assert sum(s == "COMMIT" for s in log) == 5
    log.clear()
    with store.batch():
        for i in range(5, 15):
            store.take("hub", "data-rx", seg(i))
    assert sum(s == "COMMIT" for s in log) == 1


def test_takes_become_visible_when_the_batch_exits(stores: tuple[KeyStore, KeyStore]) -> None:
    store, observer = stores
    with store.batch():
        store.take("hub", "data-rx", seg(0))
        # The same connection sees its take at once (a second take is reuse) ...
        with pytest.raises(KeyReuseError):
            store.take("hub", "data-rx", seg(0))
        # ... other connections only after the commit.
        assert not taken_by_others_view(observer, 0)
    assert taken_by_others_view(observer, 0)


def test_a_failing_take_rolls_back_only_itself(stores: tuple[KeyStore, KeyStore]) -> None:
    store, observer = stores
    with store.batch():
        store.take("hub", "data-rx", seg(0))
        with pytest.raises(KeyReuseError):  # segment 2 is fine, segment 0 is reuse
            store.take_many([("hub", "data-rx", seg(2)), ("hub", "data-rx", seg(0))])
        store.take("hub", "data-rx", seg(1))
    assert [taken_by_others_view(observer, i) for i in range(3)] == [True, True, False]


def test_an_exception_still_commits_the_takes_that_succeeded(
        stores: tuple[KeyStore, KeyStore]) -> None:
    store, observer = stores
    with pytest.raises(RuntimeError), store.batch():
        store.take("hub", "data-rx", seg(3))
        raise RuntimeError("the caller failed after using the key")
    assert taken_by_others_view(observer, 3)


def test_a_reserve_in_a_batch_is_durable_before_it_returns(
        stores: tuple[KeyStore, KeyStore]) -> None:
    # A reservation hands out bits to send: it must not wait for the batch to commit.
    store, observer = stores
    before = observer.available("hub", "data-tx")
    with store.batch():
        store.take("hub", "data-rx", seg(4))
        grant = store.reserve("hub", "data-tx", 128)   # refills the lease: a commit
        assert grant.segments[0].n_bits == 128
        assert observer.available("hub", "data-tx") == before - 1024
        # Committing the lease committed the batch so far too; later takes wait again.
        assert taken_by_others_view(observer, 4)
        store.take("hub", "data-rx", seg(5))
        assert not taken_by_others_view(observer, 5)
    assert taken_by_others_view(observer, 5)


def test_nested_batches_commit_once_at_the_outer_exit(
        stores: tuple[KeyStore, KeyStore]) -> None:
    store, observer = stores
    with store.batch():
        with store.batch():
            store.take("hub", "data-rx", seg(6))
        assert not taken_by_others_view(observer, 6)
    assert taken_by_others_view(observer, 6)


async def test_wait_reserve_is_refused_inside_a_batch(
        stores: tuple[KeyStore, KeyStore]) -> None:
    store, _ = stores
    with store.batch(), pytest.raises(LocalProtocolError, match="batch"):
        await store.wait_reserve("hub", "data-tx", 8)


async def test_hub_and_receiver_commit_at_most_once_per_frame(tmp_path: Path) -> None:
    # Per DATA frame the hub and the receiving spoke each take the frame's tag key and
    # its pad. Before group commit each take was its own durable commit (two per
    # frame); now the frames of one read, their tag keys and their pads share one.
    async with embedded_network(["alice", "bob"], tmp_path, prefill_key=1 << 20) as net:
        listener = net["bob"].listen("sink")
        ch = await net["alice"].open_channel("bob", "sink")
        inc = await listener.accept()
        hub_log, bob_log = count_commits(net.hub_store), count_commits(net.stores["bob"])
        n = 20  # within the default window: alice never waits for acks
        with trio.fail_after(20):
            for i in range(n):
                await ch.send_message(b"%d" % i * 500)
            for i in range(n):
                assert await inc.receive_message() == b"%d" % i * 500
            await ch.wait_delivered()
        net.hub_store.db.set_trace_callback(None)
        net.stores["bob"].db.set_trace_callback(None)
    hub_commits = sum(s == "COMMIT" for s in hub_log)
    bob_commits = sum(s == "COMMIT" for s in bob_log)
    frames_in = n + net["bob"].counters["acks_sent"]  # DATA from alice, ACKs from bob
    assert hub_commits <= frames_in + 8, (hub_commits, frames_in)  # + lease refills
    assert bob_commits <= n + 8, (bob_commits, n)


def run_commit_fail_child(case: str, folder: Path) -> dict[str, object]:
    """Run keystore_commit_fail_child.py (a real disk I/O error at COMMIT) and parse it."""
    import json
    import subprocess
    import sys
    child = Path(__file__).with_name("keystore_commit_fail_child.py")
    proc = subprocess.run([sys.executable, str(child), case, str(folder)],
                          capture_output=True, text=True, timeout=120, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, proc.stdout + proc.stderr
    result: dict[str, object] = json.loads(lines[-1])
    return result


def test_a_failed_commit_releases_nothing_and_takes_nothing(tmp_path: Path) -> None:
    result = run_commit_fail_child("store", tmp_path)
    assert result["error"] == "OperationalError"       # SQLite: disk I/O error
    assert result["released"] == []                    # the after_commit effect never ran
    assert result["untaken"] is True                    # the take was rolled back
    assert result["in_transaction"] is False


def test_the_hub_forwards_nothing_from_a_read_whose_commit_failed(tmp_path: Path) -> None:
    # The hub's batch holding alice's DATA frame fails to commit: the forwarded frame
    # must never reach bob (its pad at the hub was not durably taken).
    result = run_commit_fail_child("hub", tmp_path)
    assert result["bob_got"] is None, result
    assert result["pad_untaken"] is True
    assert result["unsent_to_bob"] == 0  # the dropped frame does not hold bob's window


def test_a_spoke_whose_commit_fails_delivers_nothing_and_carries_on(tmp_path: Path) -> None:
    # bob's batch (tag key and pad of a DATA frame) fails to commit: the application
    # must not see the message, and the node must drop the connection and reconnect
    # rather than die.
    result = run_commit_fail_child("spoke", tmp_path)
    assert result["bob_got"] is None, result
    assert result["channel_failed"] is True   # the reader hears the connection went
    assert result["pad_untaken"] is True
    assert "key store error" in str(result["last_error"])
    assert result["after"] == "three"
