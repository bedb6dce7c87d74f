"""The app commands driven as a user would: ``qkdnet chat`` in pseudo-terminals
(pexpect), ``qkdnet send`` / ``qkdnet receive`` as processes, against node sockets."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
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
    with running_netfixture(tmp_path, "alice", "bob", "carol") as folder_:
        yield folder_


def test_chat_in_two_terminals(network: Path) -> None:
    env = dict(os.environ, COLUMNS="100", TERM="dumb")
    bob = pexpect.spawn(QKDNET[0], [*QKDNET[1:], "chat", "alice", "--listen", "--node",
                                     str(network / "bob.sock")], env=env, timeout=20,
                        encoding="utf-8")
    bob.expect("waiting for alice")
    alice = pexpect.spawn(QKDNET[0], [*QKDNET[1:], "chat", "bob", "--node",
                                       str(network / "alice.sock")], env=env, timeout=20,
                          encoding="utf-8")
    alice.expect("connected to bob")
    alice.expect(r"key left \(hop to hub\): [\d.]+ KiB \| hop QBER")
    bob.expect("connected to alice")
    alice.sendline("hello bob, one-time padded")
    bob.expect("alice> hello bob, one-time padded")
    alice.expect(r"delivered #1")
    bob.sendline("hi alice")
    alice.expect("bob> hi alice")
    bob.expect(r"delivered #1")
    alice.sendeof()
    bob.expect("alice left the chat")
    bob.sendeof()
    alice.expect(r"chat ended: 1 sent, 1 delivered, 1 received")
    bob.expect(r"chat ended: 1 sent, 1 delivered, 1 received")
    alice.expect(pexpect.EOF)
    bob.expect(pexpect.EOF)


def test_send_and_receive_commands(network: Path) -> None:
    src = network / "data.bin"
    src.write_bytes(os.urandom(300_000))
    inbox = network / "inbox"
    recv = subprocess.Popen([*QKDNET, "receive", "--into", str(inbox), "--count", "1",
                             "--json", "--node", str(network / "alice.sock")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(100):  # wait until the receiver listens
            sent = subprocess.run([*QKDNET, "send", str(src), "--to", "alice", "--node",
                                   str(network / "carol.sock")],
                                  capture_output=True, text=True, timeout=60)
            if "does not listen" not in sent.stderr:
                break
        assert sent.returncode == 0, sent.stderr
        assert "key budget: needs 0.29 MiB of key" in sent.stderr
        assert "verified" in sent.stderr
        out, _err = recv.communicate(timeout=30)
    finally:
        recv.kill()
    result = json.loads(out)
    assert result["files"][0]["verified"]
    final = inbox / "data.bin"
    assert hashlib.sha256(final.read_bytes()).hexdigest() == hashlib.sha256(
        src.read_bytes()).hexdigest()
    assert not (inbox / "data.bin.part").exists()


def test_send_refuses_when_key_is_short(network: Path) -> None:
    big = network / "big.bin"
    with open(big, "wb") as f:
        f.truncate(64 << 20)  # 64 MiB: more than the 16 Mbit the fixture holds
    sent = subprocess.run([*QKDNET, "send", str(big), "--to", "alice", "--node",
                           str(network / "carol.sock")], capture_output=True, text=True,
                          timeout=60)
    assert sent.returncode == 1
    assert "needs 64.64 MiB of key, 2.00 MiB available" in sent.stderr
    assert "key exhausted" in sent.stderr


def test_example_chat_client_talks_to_qkdnet_chat(network: Path) -> None:
    example = HERE.parent.parent / "examples" / "chat_client.py"
    env = dict(os.environ, COLUMNS="100", TERM="dumb")
    bob = pexpect.spawn(QKDNET[0], [*QKDNET[1:], "chat", "alice", "--listen", "--node",
                                     str(network / "bob.sock")], env=env, timeout=20,
                        encoding="utf-8")
    bob.expect("waiting for alice")
    alice = pexpect.spawn(sys.executable, [str(example), "bob", str(network / "alice.sock")],
                          env=env, timeout=20, encoding="utf-8")
    bob.expect("connected to alice")
    alice.sendline("written in 20 lines")
    bob.expect("alice> written in 20 lines")
    alice.expect(r"\(delivered #1\)")
    bob.sendline("and it works")
    alice.expect("bob> and it works")
    alice.sendeof()
    bob.expect("alice left the chat")
    bob.sendeof()
    alice.expect(pexpect.EOF)
    bob.expect(pexpect.EOF)
