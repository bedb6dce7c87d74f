"""``qkdnet chat`` on a real pseudo-terminal, read through a terminal emulator (pyte).

What a user sees is what the screen shows, so these tests render the chat's output
with pyte and look at the screen: peer text with ANSI escapes shows the escapes as
text (nothing turns red, the screen is not cleared), an incoming message leaves the
half-typed input line and its cursor where they were, and Ctrl-C ends the chat at
once with exit code 130 and one line.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pexpect
import pyte
import pytest
from testkit import running_netfixture

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent
QKDNET = [sys.executable, "-m", "qkdnet"]
ROWS, COLS = 24, 100


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("chatnet")
    with running_netfixture(folder, "alice", "bob") as folder_:
        yield folder_


class Terminal:
    """A command on a pty whose output is rendered by pyte."""

    def __init__(self, args: list[str]) -> None:
        self.screen = pyte.Screen(COLS, ROWS)
        self.stream = pyte.Stream(self.screen)
        self.raw = ""
        self.child = pexpect.spawn(QKDNET[0], [*QKDNET[1:], *args], encoding="utf-8",
                                   dimensions=(ROWS, COLS), timeout=30,
                                   env=dict(os.environ, TERM="xterm"))

    def pump(self, seconds: float = 0.1) -> None:
        end = time.monotonic() + seconds
        while True:
            try:
                data = self.child.read_nonblocking(65536, timeout=0.05)
            except pexpect.TIMEOUT:
                data = ""
            except pexpect.EOF:
                return
            self.raw += data
            self.stream.feed(data)
            if time.monotonic() >= end:
                return

    def lines(self) -> list[str]:
        return [line.rstrip() for line in self.screen.display]

    def wait_for(self, check: Callable[[], bool], what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not on screen:\n" + "\n".join(self.lines()))
            self.pump(0.1)

    def shows(self, text: str) -> bool:
        return any(text in line for line in self.lines())

    def finish(self, timeout: float = 10) -> float:
        """Wait for the process to end; returns the seconds it took."""
        start = time.monotonic()
        self.child.expect(pexpect.EOF, timeout=timeout)
        took = time.monotonic() - start
        self.raw += self.child.before or ""
        self.stream.feed(self.child.before or "")
        self.child.close()
        return took


def test_peer_escapes_are_shown_and_the_input_line_survives(network: Path) -> None:
    bob = Terminal(["chat", "alice", "--listen", "--node", str(network / "bob.sock")])
    bob.wait_for(lambda: bob.shows("waiting for alice"), "waiting line")
    # alice types into a pipe: her lines go out exactly as written, escapes and all
    alice = subprocess.Popen([*QKDNET, "chat", "bob", "--node", str(network / "alice.sock")],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        bob.wait_for(lambda: bob.shows("connected to alice"), "connected line")
        bob.child.send("abc")
        bob.child.send("\x1b[D\x1b[D")  # Left, Left: the cursor goes back in bob's line
        bob.child.send("X")
        bob.wait_for(lambda: bob.lines()[bob.screen.cursor.y].startswith("> aXbc"),
                     "bob's edited input line")
        assert alice.stdin is not None
        alice.stdin.write("red \x1b[31mALERT\x1b[0m \x1b[2J\x1b[H gone? \u202eevil\n")
        alice.stdin.flush()
        bob.wait_for(lambda: bob.shows("alice> red"), "alice's message")
        bob.pump(0.5)
        shown = next(line for line in bob.lines() if "alice> red" in line)
        assert shown == ("alice> red \\x1b[31mALERT\\x1b[0m \\x1b[2J\\x1b[H gone? "
                         "\\u202eevil")
        # nothing was drawn in red, and the screen was not cleared
        assert all(char.fg == "default" for row in bob.screen.buffer.values()
                   for char in row.values()), "peer text changed the colours"
        assert bob.shows("connected to alice")
        # the half-typed line is intact, cursor still after the X
        row = bob.screen.cursor.y
        assert bob.lines()[row] == "> aXbc"
        assert bob.screen.cursor.x == len("> aX")
        bob.child.send("\r")
        bob.wait_for(lambda: bob.shows("* sent #1"), "sent line")
        # one press of Ctrl-C ends the chat: one line, exit 130, no traceback
        bob.pump(0.3)
        bob.child.sendintr()
        took = bob.finish()
        assert bob.child.exitstatus == 130, bob.raw[-2000:]
        assert "chat interrupted" in bob.raw and "Traceback" not in bob.raw
        assert took < 3, f"Ctrl-C took {took:.2f} s"
        # alice received bob's edited line and saw him go
        out, _err = alice.communicate(timeout=20)
        assert "bob> aXbc" in out
        assert "bob left the chat" in out
    finally:
        if alice.poll() is None:
            alice.kill()
        if bob.child.isalive():
            bob.child.kill(9)


def test_ctrl_c_while_waiting_for_the_peer(network: Path) -> None:
    bob = Terminal(["chat", "alice", "--listen", "--node", str(network / "bob.sock")])
    bob.wait_for(lambda: bob.shows("waiting for alice"), "waiting line")
    bob.pump(0.3)
    bob.child.sendintr()
    took = bob.finish()
    assert bob.child.exitstatus == 130
    assert bob.raw.count("qkdnet:") == 1 and "chat interrupted" in bob.raw
    assert "Traceback" not in bob.raw
    assert took < 3, f"Ctrl-C took {took:.2f} s"
