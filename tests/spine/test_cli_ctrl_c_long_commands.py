"""One Ctrl-C ends the long-running measuring commands cleanly.

``qkdnet link run`` and ``qkdnet phy sweep`` run on a pseudo-terminal and get the
terminal's ^C while they work: each must end within seconds, exit 130, print one
line, and show no traceback.
"""

from __future__ import annotations

import sys

import pexpect
import pytest

pytestmark = pytest.mark.slow

QKDNET = [sys.executable, "-m", "qkdnet"]


def _ctrl_c_once_busy(args: list[str], busy: str) -> tuple[int | None, str]:
    child = pexpect.spawn(QKDNET[0], [*QKDNET[1:], *args], encoding="utf-8", timeout=120,
                          dimensions=(24, 200), codec_errors="replace")
    child.expect(busy)                 # the command is working, not starting up
    child.sendintr()
    child.expect(pexpect.EOF, timeout=20)
    child.close()
    return child.exitstatus, child.before or ""


@pytest.mark.parametrize(("args", "busy"), [
    (["link", "run", "--km", "10", "--blocks", "50", "--block-slots", "1e7"], "block 0:"),
    (["phy", "sweep", "--km", "0:200:1", "--pulses", "3e6"], "sweep: 0 km done"),
])
def test_one_ctrl_c_ends_the_command_with_one_line(args: list[str], busy: str) -> None:
    code, out = _ctrl_c_once_busy(args, busy)
    assert code == 130, out[-500:]
    assert "Traceback" not in out and "internal error" not in out
    # The terminal echoes ^C, then the command says why it stopped, once.
    assert out.count("qkdnet:") == 1 and "interrupted" in out, out[-500:]
