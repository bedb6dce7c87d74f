"""``qkdnet send`` runs at the key rate: it waits while key keeps arriving and fails,
with one line naming the hop, only once none has arrived for ``key_stall`` seconds.

The real CLI (``python -m qkdnet send`` / ``receive`` as processes) against a hub and
two spokes whose pools start nearly empty and are fed TEST-ONLY key in small steps
(tests/apps/slowkey_netfixture.py), standing in for slow QKD links.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent
QKDNET = [sys.executable, "-m", "qkdnet"]


StartNet = Callable[..., Path]


@pytest.fixture
def slow_net(tmp_path: Path) -> Iterator[StartNet]:
    procs: list[subprocess.Popen[str]] = []

    def start(prefill: int, feed: int, every: float, steps: int, stall: float,
              names: str = "") -> Path:
        args = [sys.executable, str(HERE / "slowkey_netfixture.py"), str(tmp_path),
                str(prefill), str(feed), str(every), str(steps), str(stall)]
        proc = subprocess.Popen(args + ([names] if names else []), stdout=subprocess.PIPE,
                                text=True)
        procs.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "READY"
        return tmp_path

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(10)


def _receiver(folder: Path) -> subprocess.Popen[str]:
    """``qkdnet receive`` for one file, returned once it listens."""
    proc = subprocess.Popen([*QKDNET, "receive", "--into", str(folder / "inbox"),
                             "--count", "1", "--node", str(folder / "bob.sock")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("receiving files into"):
            return proc
    raise AssertionError(f"receive ended: {proc.wait()}")


def _send(folder: Path, src: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    (folder / "go").touch()  # the key feeder starts now
    return subprocess.run([*QKDNET, "send", str(src), "--to", "bob", "--force",
                           "--node", str(folder / "alice.sock"), *extra],
                          capture_output=True, text=True, timeout=180)


def test_send_needing_more_key_than_the_pools_hold_completes_as_key_arrives(
        slow_net: StartNet) -> None:
    # 64 kbit in each pool at the start; the 300 kB file needs ~2.4 Mbit per hop,
    # fed 32 kbit at a time, 10 times a second. One 256 KiB message alone waits for
    # 2 Mbit, far longer than key_stall (3 s), while key keeps arriving.
    folder = slow_net(1 << 16, 1 << 15, 0.1, 1000, 3.0)
    src = folder / "big.bin"
    src.write_bytes(os.urandom(300_000))
    recv = _receiver(folder)
    try:
        res = _send(folder, src, "--json")
        _out, err = recv.communicate(timeout=60)
    finally:
        recv.kill()
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    summary = json.loads(res.stdout)
    assert summary["verified"] is True
    budget = summary["budget"]
    assert all(isinstance(budget[k], int) for k in ("needed_bits", "available_bits"))
    assert budget["available_bits"] < budget["needed_bits"]  # it started short of key
    got = folder / "inbox" / "big.bin"
    assert hashlib.sha256(got.read_bytes()).hexdigest() == summary["sha256"] \
        == hashlib.sha256(src.read_bytes()).hexdigest()
    assert recv.returncode == 0, err


@pytest.mark.parametrize("fed, bits, hop", [("", 1 << 18, "alice->hub"),
                                             ("alice", 1 << 22, "hub->bob")])
def test_send_fails_with_one_line_naming_the_hop_when_key_stops(
        slow_net: StartNet, fed: str, bits: int, hop: str) -> None:
    # Key arrives for a while (on every link, or plenty only on alice's), then stops;
    # the file needs more than ever arrives on the starved hop.
    folder = slow_net(1 << 16, bits, 0.2, 5, 2.0, fed)
    src = folder / "big.bin"
    src.write_bytes(os.urandom(400_000))
    recv = _receiver(folder)
    try:
        res = _send(folder, src)
    finally:
        recv.kill()
        recv.communicate(timeout=10)
    err = res.stderr
    assert res.returncode == 1, err
    assert "Traceback" not in err and "internal error" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("qkdnet: error:")]
    assert len(lines) == 1, err
    assert f"no key arrived on hop {hop} for 2 s" in lines[0], lines[0]
    assert lines[0].count(hop) == 1, lines[0]
