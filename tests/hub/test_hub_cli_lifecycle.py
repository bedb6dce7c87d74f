"""``qkdnet hub`` and ``qkdnet node`` as a user runs them: one copy per node, Ctrl-C.

A second copy of a running node (same config, so the same key store) must be refused
with a clear line and leave the first copy untouched: its app socket, its control
socket and its hub connection. One Ctrl-C, through a pseudo-terminal as a user presses
it, stops either daemon at once: exit code 130, one line, no traceback, and the next
start works (the lock died with the process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import pytest
from testkit import free_port

pytestmark = pytest.mark.slow

QKDNET = [sys.executable, "-m", "qkdnet"]




def _configs(folder: Path) -> None:
    """A hub and spoke alice, links off (nothing here needs key)."""
    port = free_port()
    secret = os.urandom(4096)
    (folder / "alice.secret").write_bytes(secret)
    (folder / "hub.toml").write_text(
        '[node]\nname = "hub"\nrole = "hub"\n'
        f'[network]\nlisten_host = "127.0.0.1"\nsideband_port = {port}\n'
        '[keystore]\npath = "state/hub.keys"\n[link]\nenabled = false\n'
        '[spokes.alice]\nbootstrap_secret = "alice.secret"\n')
    (folder / "alice.toml").write_text(
        '[node]\nname = "alice"\nrole = "spoke"\nhub = "hub"\n'
        f'[network]\nhub_host = "127.0.0.1"\nhub_sideband_port = {port}\n'
        'app_socket = "state/alice.sock"\n'
        '[keystore]\npath = "state/alice.keys"\n'
        '[auth]\nbootstrap_secret = "alice.secret"\n[link]\nenabled = false\n')


def _spawn(folder: Path, *args: str) -> pexpect.spawn:
    return pexpect.spawn(QKDNET[0], [*QKDNET[1:], *args], cwd=str(folder), timeout=60,
                         encoding="utf-8", dimensions=(24, 120))


def _status(folder: Path) -> dict:  # type: ignore[type-arg]
    res = subprocess.run([*QKDNET, "node", "status", "--json", "--config", "alice.toml"],
                         cwd=folder, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return dict(json.loads(res.stdout))


def _interrupt(child: pexpect.spawn) -> tuple[float, str]:
    """One Ctrl-C; returns (seconds to exit, what it printed after)."""
    time.sleep(0.3)
    start = time.monotonic()
    child.sendintr()
    child.expect(pexpect.EOF, timeout=20)
    took = time.monotonic() - start
    child.close()
    return took, child.before or ""


def test_a_second_copy_of_a_node_is_refused_and_ctrl_c_stops_both_daemons(
        tmp_path: Path) -> None:
    _configs(tmp_path)
    hub = _spawn(tmp_path, "hub", "--config", "hub.toml")
    node = _spawn(tmp_path, "node", "--config", "alice.toml")
    try:
        hub.expect('hub "hub": listening on 127.0.0.1:')
        node.expect('node "alice": apps connect at')
        deadline = time.monotonic() + 60
        while not _status(tmp_path)["connected"]:
            assert time.monotonic() < deadline, "alice did not connect"
            time.sleep(0.2)
        state = tmp_path / "state"
        assert (state / "alice.sock").exists() and (state / "alice.keys.ctl").exists()

        second = subprocess.run([*QKDNET, "node", "--config", "alice.toml"], cwd=tmp_path,
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 1
        assert "Traceback" not in second.stderr
        assert second.stderr.count("\n") == 1, second.stderr
        assert 'node "alice" is already running' in second.stderr
        assert f"pid {node.pid}" in second.stderr
        # the first copy is untouched: its sockets are there and it still answers
        assert (state / "alice.sock").exists() and (state / "alice.keys.ctl").exists()
        st = _status(tmp_path)
        assert st["connected"] and st["counters"]["connects"] == 1

        second_hub = subprocess.run([*QKDNET, "hub", "--config", "hub.toml"], cwd=tmp_path,
                                    capture_output=True, text=True, timeout=60)
        assert second_hub.returncode == 1
        assert 'hub "hub" is already running' in second_hub.stderr
        assert "listening" not in second_hub.stderr

        took, said = _interrupt(node)
        assert node.exitstatus == 130, said
        assert 'qkdnet: node "alice" stopped' in said and "Traceback" not in said
        assert said.count("qkdnet:") == 1, said
        assert took < 3, f"node took {took:.2f} s to stop"
        assert not (state / "alice.sock").exists()

        took, said = _interrupt(hub)
        assert hub.exitstatus == 130, said
        assert 'qkdnet: hub "hub" stopped' in said and "Traceback" not in said
        assert took < 3, f"hub took {took:.2f} s to stop"

        # the locks went with the processes: the node starts again
        again = _spawn(tmp_path, "node", "--config", "alice.toml")
        again.expect('node "alice": apps connect at')
        _interrupt(again)
        assert again.exitstatus == 130
    finally:
        for child in (hub, node):
            if child.isalive():
                child.kill(9)
