"""``qkdnet hub`` / ``qkdnet node``: status through the control socket, config errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import trio

from qkdnet.hub.node import embedded_network

QKDNET = [sys.executable, "-m", "qkdnet"]


async def test_node_and_hub_status_over_the_control_socket(tmp_path: Path) -> None:
    async with embedded_network(["alice", "bob"], tmp_path, prefill_key=1 << 12,
                                control_sockets=True) as net:
        lst = net["bob"].listen("s")
        ch = await net["alice"].open_channel("bob", "s")
        await (await lst.accept()).send_message(b"hi")
        assert await ch.receive_message() == b"hi"
        node = await trio.run_process([*QKDNET, "node", "status", "--json", "--socket",
                                       str(tmp_path / "alice.sock")], capture_stdout=True)
        st = json.loads(node.stdout)
        assert st["name"] == "alice" and st["connected"] is True
        assert st["key_bits"]["to_hub"] > 0 and st["counters"]["channels_opened"] == 1
        hub = await trio.run_process([*QKDNET, "hub", "status", "--json", "--socket",
                                      str(tmp_path / "hub.sock")], capture_stdout=True)
        hst = json.loads(hub.stdout)
        assert hst["spokes"]["bob"]["frames_in"] >= 3 and hst["totals"]["relayed"] == 1
        text = await trio.run_process([*QKDNET, "node", "status", "--socket",
                                       str(tmp_path / "bob.sock")], capture_stdout=True)
        assert b"connected" in text.stdout


def test_bad_config_is_one_clear_line(tmp_path: Path) -> None:
    cfg = tmp_path / "hub.toml"
    cfg.write_text('[node]\nname = "hub"\nrole = "hub"\n[routing]\nkey_wiat = 3\n')
    res = subprocess.run([*QKDNET, "hub", "--config", str(cfg)], capture_output=True,
                         timeout=60)
    assert res.returncode == 2
    err = res.stderr.decode()
    assert "key_wiat" in err and "Traceback" not in err
    cfg.write_text('[node]\nname = "hub"\nrole = "hub"\n')
    res = subprocess.run([*QKDNET, "hub", "--config", str(cfg)], capture_output=True,
                         timeout=60)
    assert res.returncode == 2 and b"no spokes configured" in res.stderr
    res = subprocess.run([*QKDNET, "node"], capture_output=True, timeout=60)
    assert res.returncode == 2 and b"--config" in res.stderr
