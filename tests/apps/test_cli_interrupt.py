"""One Ctrl-C ends ``qkdnet send`` and ``qkdnet receive`` cleanly, mid-transfer.

Both run on pseudo-terminals and get the interrupt the way a user gives it (the
terminal's ^C). Each must end promptly with exit code 130, one line, no traceback,
and nothing half-written under the file's final name: the receiver keeps the bytes
it has as ``NAME.part``, which the next send resumes from.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest
from testkit import running_netfixture

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent
QKDNET = [sys.executable, "-m", "qkdnet"]


@pytest.fixture
def network(tmp_path: Path) -> Iterator[Path]:
    with running_netfixture(tmp_path, "alice", "carol") as folder_:
        yield folder_


def _spawn(*args: str) -> pexpect.spawn:
    return pexpect.spawn(QKDNET[0], [*QKDNET[1:], *args], encoding="utf-8", timeout=60,
                         dimensions=(24, 120), codec_errors="replace")


def _interrupt(child: pexpect.spawn) -> tuple[float, str]:
    start = time.monotonic()
    child.sendintr()
    child.expect(pexpect.EOF, timeout=20)
    took = time.monotonic() - start
    child.close()
    print(f"{child.args[2:4]} stopped {took:.2f} s after Ctrl-C: {child.before[-300:]!r}")
    return took, child.before or ""


def _wait_for(check: object, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_ctrl_c_mid_transfer_at_either_end(network: Path) -> None:
    big = network / "big.bin"
    with open(big, "wb") as f:  # 64 MiB: more than the fixture's key, so it stalls
        f.truncate(64 << 20)
    inbox = network / "inbox"
    part = inbox / "big.bin.part"
    receiver = _spawn("receive", "--into", str(inbox), "--node", str(network / "alice.sock"))
    sender = None
    try:
        receiver.expect("receiving files into")
        # --force: start although the key budget is short, so the transfer is underway
        sender = _spawn("send", str(big), "--to", "alice", "--force", "--node",
                        str(network / "carol.sock"))
        _wait_for(lambda: part.exists() and part.stat().st_size > 0, "no bytes arrived")
        took, said = _interrupt(sender)
        assert sender.exitstatus == 130, said
        assert "qkdnet: sending big.bin interrupted" in said and "Traceback" not in said
        assert said.count("qkdnet:") == 1, said
        assert took < 3, f"send took {took:.2f} s to stop"

        # again, and this time interrupt the receiver while the bytes flow to it
        sender = _spawn("send", str(big), "--to", "alice", "--force", "--node",
                        str(network / "carol.sock"))
        sender.expect("big.bin -> alice")
        time.sleep(0.5)
        took, said = _interrupt(receiver)
        assert receiver.exitstatus == 130, said
        assert "qkdnet: receiving interrupted" in said and "Traceback" not in said
        assert took < 3, f"receive took {took:.2f} s to stop"
        assert not (inbox / "big.bin").exists(), "a partial file under the final name"
        assert part.exists()
    finally:
        for child in (receiver, sender):
            if child is not None and child.isalive():
                child.kill(9)


def test_ctrl_c_on_an_idle_receiver(network: Path) -> None:
    receiver = _spawn("receive", "--into", str(network / "inbox"), "--node",
                      str(network / "alice.sock"))
    receiver.expect("receiving files into")
    time.sleep(0.3)
    took, said = _interrupt(receiver)
    assert receiver.exitstatus == 130
    assert "Traceback" not in said and said.count("qkdnet:") == 1
    assert took < 3
