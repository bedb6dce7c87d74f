"""trio's stream conformance suite on SecureStreams through the daemons, as apps use
them: ``qkdnet hub`` and two ``qkdnet node`` processes, the streams opened with
:class:`~qkdnet.apps.local.NodeClient` on the nodes' Unix sockets.

The clogged maker fills a stream both ways until a sender would block (the channel's
window is full, the receiving app reads nothing and the sockets on both sides are
full), so ``wait_send_all_might_not_block`` returns only once the receiver reads.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing
from testkit import free_port, write_prefilled_network

from qkdnet.apps.api import wrap_channel
from qkdnet.apps.local import NodeClient
from qkdnet.apps.stream import SecureStream

pytestmark = pytest.mark.slow

QKDNET = [sys.executable, "-m", "qkdnet"]
SPOKES = ("alice", "bob")




def _setup(folder: Path, port: int) -> None:
    """Configs, bootstrap secrets, TEST-ONLY prefilled key stores, app sockets."""
    write_prefilled_network(folder, SPOKES, port, data_bits=1 << 27, auth_bits=1 << 23,
                            app_sockets=True)


def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"daemon exited early: {proc.communicate()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear")
        time.sleep(0.05)


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Path]:
    _setup(tmp_path, free_port())
    logs = {name: open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115
            for name in ("hub", *SPOKES)}
    procs = [subprocess.Popen([*QKDNET, "-v", "hub", "--config", "hub.toml"], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=logs["hub"])]
    try:
        _wait_for(tmp_path / "hub.keys.ctl", procs[0])
        for name in SPOKES:
            procs.append(subprocess.Popen([*QKDNET, "-v", "node", "--config",
                                           f"{name}.toml"], cwd=tmp_path,
                                          stdout=subprocess.DEVNULL, stderr=logs[name]))
        for name, proc in zip(SPOKES, procs[1:], strict=True):
            _wait_for(tmp_path / f"{name}.sock", proc)
        yield tmp_path
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@pytest.mark.xfail(run=False, reason="not finished (issue 14 item 9): the one-way checks "
                   "with the clogged maker pass, later ones hang or lose the hub "
                   "connection; see the wt-send report")
async def test_trio_stream_suite_through_hub_and_node_daemons(daemons: Path) -> None:
    alice, bob = NodeClient(daemons / "alice.sock"), NodeClient(daemons / "bob.sock")
    status = await alice.fetch_status()
    with trio.fail_after(30):
        while not status.get("connected"):
            await trio.sleep(0.1)
            status = await alice.fetch_status()
    listener = bob.listen("conformance")
    await listener.ready()

    async def maker() -> tuple[SecureStream, SecureStream]:
        a = await alice.open_channel("bob", "conformance")
        b = await listener.accept()
        return wrap_channel(a), wrap_channel(b)

    async def clog(s: SecureStream) -> None:
        # Send until the sender would block: the other end reads nothing, so the
        # channel's window and the sockets on both sides fill up.
        while True:
            await s.send_all(b"c" * 4096)
            with trio.move_on_after(1.0) as wait:
                await s.wait_send_all_might_not_block()
            if wait.cancelled_caught:
                return

    async def clogged() -> tuple[SecureStream, SecureStream]:
        s, r = await maker()
        await clog(s)
        await clog(r)  # both ways: the suite also runs it flipped
        return s, r

    try:
        with trio.fail_after(240):
            await trio.testing.check_half_closeable_stream(maker, clogged)
    finally:
        await listener.aclose()
