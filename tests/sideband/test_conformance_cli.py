"""``qkdnet conformance`` against a real ``qkdnet hub``: it says why the hub refuses it.

The README's first try, the kit run with a spoke's secret and no entry of its own on
the hub, used to end in "2 passed, 22 failed" with no hint. Now the kit says what the
hub needs; with its own ``[spokes.conformance]`` entry the handshake passes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from testkit import free_port

pytestmark = pytest.mark.slow

QKDNET = [sys.executable, "-m", "qkdnet"]




def _hub(folder: Path, port: int, spokes: list[str]) -> subprocess.Popen[str]:
    text = ('[node]\nname = "hub"\nrole = "hub"\n'
            f'[network]\nlisten_host = "127.0.0.1"\nsideband_port = {port}\n'
            '[keystore]\npath = "hub.keys"\n[link]\nenabled = false\n')
    for name in spokes:
        text += f'[spokes.{name}]\nbootstrap_secret = "{name}.secret"\n'
    (folder / "hub.toml").write_text(text)
    proc = subprocess.Popen([*QKDNET, "hub", "--config", "hub.toml"], cwd=folder,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert "listening on" in line, line
    return proc


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.wait(30)


def test_the_kit_says_it_needs_its_own_spoke_entry(tmp_path: Path) -> None:
    for name in ("alice", "conformance"):
        (tmp_path / f"{name}.secret").write_bytes(os.urandom(1 << 16))
    port = free_port()
    kit = ["conformance", "--target", f"127.0.0.1:{port}", "--check", "handshake.hello"]
    hub = _hub(tmp_path, port, ["alice"])
    try:
        refused = subprocess.run([*QKDNET, *kit, "--secret", "alice.secret"], cwd=tmp_path,
                                 capture_output=True, text=True, timeout=120)
    finally:
        _stop(hub)
    assert refused.returncode == 1
    assert "0 passed, 1 failed" in refused.stdout
    assert "add [spokes.conformance] with bootstrap_secret" in refused.stderr
    assert "Traceback" not in refused.stderr

    time.sleep(0.2)
    hub = _hub(tmp_path, port, ["alice", "conformance"])
    try:
        admitted = subprocess.run([*QKDNET, *kit, "--secret", "conformance.secret"],
                                  cwd=tmp_path, capture_output=True, text=True, timeout=120)
    finally:
        _stop(hub)
    assert admitted.returncode == 0, admitted.stdout + admitted.stderr
    assert "1 passed, 0 failed" in admitted.stdout and "[spokes." not in admitted.stderr
