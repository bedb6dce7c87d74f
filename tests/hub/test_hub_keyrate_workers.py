"""A hub daemon emulates its spokes' PHYs in worker processes: real `qkdnet hub` and
`qkdnet node` processes, two spokes with QKD links."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from qkdnet.link.driver import write_bootstrap_secret
from qkdnet.link.phy_worker import default_workers

QKDNET = [sys.executable, "-m", "qkdnet"]
SPOKES = ["alice", "bob"]


def _setup(folder: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    hub = ['[node]\nname = "hub"\nrole = "hub"\n',
           f'[network]\nlisten_host = "127.0.0.1"\nsideband_port = {port}\n',
           '[keystore]\npath = "hub.keys"\n[phy]\npreset = "snspd-metro"\nkm = 10\n'
           '[link]\nenabled = true\n']
    for i, name in enumerate(SPOKES):
        write_bootstrap_secret(folder / f"{name}.secret", 1 << 18)
        hub.append(f'[spokes.{name}]\nbootstrap_secret = "{name}.secret"\nseed = {i + 5}\n')
        (folder / f"{name}.toml").write_text(
            f'[node]\nname = "{name}"\nrole = "spoke"\nhub = "hub"\n'
            f'[network]\nhub_host = "127.0.0.1"\nhub_sideband_port = {port}\n'
            f'app_socket = "{name}.sock"\n[keystore]\npath = "{name}.keys"\n'
            f'[auth]\nbootstrap_secret = "{name}.secret"\n'
            f'[phy]\npreset = "snspd-metro"\nkm = 10\nseed = {i + 5}\n'
            '[link]\nenabled = true\nblock_slots = 4000000\n')
    (folder / "hub.toml").write_text("".join(hub))


def _links(folder: Path) -> dict[str, Any]:
    res = subprocess.run([*QKDNET, "hub", "status", "--json", "--config", "hub.toml"],
                         cwd=folder, capture_output=True, timeout=30)
    assert res.returncode == 0, res.stderr.decode()
    spokes = json.loads(res.stdout)["spokes"]
    return {n: spokes.get(n, {}).get("link", {}) for n in SPOKES}


def _wait(folder: Path, what: str, ok: Any, timeout: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        links = _links(folder)
        if ok(links):
            return links
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {links}"
        time.sleep(0.5)


def _workers(pid: int) -> list[int]:
    """The hub's PHY worker processes (its children running qkdnet.link.phy_worker)."""
    kids: list[int] = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        kids += [int(k) for k in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
    return [k for k in kids
            if b"qkdnet.link.phy_worker" in Path(f"/proc/{k}/cmdline").read_bytes()]


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.slow
def test_hub_phy_workers_survive_a_worker_crash_and_stop_with_the_hub(tmp_path: Path) -> None:
    _setup(tmp_path)
    hub = subprocess.Popen([*QKDNET, "hub", "--config", "hub.toml"], cwd=tmp_path,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    nodes: list[subprocess.Popen[bytes]] = []
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "hub.keys.ctl").exists():
            assert hub.poll() is None and time.monotonic() < deadline, "hub did not start"
            time.sleep(0.05)
        for name in SPOKES:
            nodes.append(subprocess.Popen([*QKDNET, "node", "--config", f"{name}.toml"],
                                          cwd=tmp_path, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
        before = _wait(tmp_path, "two stored blocks per link",
                       lambda ls: all(lk.get("stored", 0) >= 2 for lk in ls.values()))
        workers = _workers(hub.pid)
        # Each link's PHY runs in a worker process, two links on two (or one) workers.
        assert len(workers) == min(2, default_workers())
        os.kill(workers[0], signal.SIGKILL)
        after = _wait(tmp_path, "three more stored blocks per link after the crash",
                      lambda ls: all(ls[n].get("stored", 0) >= before[n]["stored"] + 3
                                     for n in SPOKES))
        # The crash costs at most the block that was waiting on the dead worker.  Blocks
        # this small (4e6 slots, for speed) sometimes distil nothing under strict
        # accounting; those end as "no_key", which is not the crash's doing.
        def failed(link: dict) -> int:
            return link.get("aborted", 0) - link.get("abort_reasons", {}).get("no_key", 0)
        lost = {n: failed(after[n]) - failed(before[n]) for n in SPOKES}
        assert sum(lost.values()) <= 1, after
        assert all(lk["state"] == "up" and lk["key_rate_bps"] > 0 for lk in after.values())
        restarted = _workers(hub.pid)
        assert workers[0] not in restarted and len(restarted) == len(workers)
        workers += restarted
    finally:
        for node in nodes:
            node.send_signal(signal.SIGTERM)
        for node in nodes:
            try:
                node.wait(15)
            except subprocess.TimeoutExpired:
                node.kill()
        hub.send_signal(signal.SIGTERM)
        try:
            out, _ = hub.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            hub.kill()
            out, _ = hub.communicate()
    assert hub.returncode == 0, out.decode()[-3000:]
    assert b"PHY worker" in out and b"exited" in out     # the crash was logged
    assert workers and all(_gone(w) for w in workers)
