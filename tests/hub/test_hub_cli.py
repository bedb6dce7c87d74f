"""``qkdnet hub`` / ``qkdnet node``: status through the control socket, config errors."""

from __future__ import annotations

import json
import re
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


_HUB_STATUS = {
    "hub": "hub", "port": 7787, "totals": {"relayed": 12},
    "spokes": {name: {
        "connected": True, "frames_in": 123456, "frames_out": 654321, "key_relays": 7,
        "drops": {"unknown_peer": 2} if name == "alice" else {},
        "key_bits": {"hub_to_spoke": 987654321, "spoke_to_hub": 123456789},
        "link": {"state": "up", "since": "2026-12-03T12:14:33Z", "qber": 0.010399560443608168,
                 "key_rate_bps": 32109.87654321}}
        for name in ("alice", "bob", "carol-the-long-named")},
}
_NODE_STATUS = {
    "name": "alice", "hub": "hub", "hub_address": "127.0.0.1:7787", "connected": True,
    "counters": {"connects": 1}, "key_bits": {"to_hub": 377153, "from_hub": 377154},
    "link": {"state": "up", "since": "2026-12-03T12:14:33Z", "qber": 0.010399560443608168,
             "gross_key_rate_bps": 26152.3123, "auth_rate_bps": 155.3333333,
             "key_rate_bps": 25997.0000001, "stored": 7, "aborted": 0}}


async def test_status_fits_80_columns_without_cutting_numbers(tmp_path: Path) -> None:
    """The daemons' own control socket serves a status with large numbers; the CLI, on an
    80-column terminal, shows every number whole and rounds floats sensibly."""
    import pexpect

    from qkdnet.hub.daemon import serve_control_socket

    async with trio.open_nursery() as nursery:
        for name, doc in (("hub.ctl", _HUB_STATUS), ("node.ctl", _NODE_STATUS)):
            await nursery.start(serve_control_socket, tmp_path / name,
                                lambda doc=doc: doc)

        def show(kind: str, sock: str) -> str:
            child = pexpect.spawn(QKDNET[0], [*QKDNET[1:], kind, "status", "--socket",
                                              str(tmp_path / sock)],
                                  dimensions=(50, 80), encoding="utf-8", timeout=60)
            child.expect(pexpect.EOF)
            child.close()
            assert child.exitstatus == 0, child.before
            return re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", str(child.before))

        hub = await trio.to_thread.run_sync(show, "hub", "hub.ctl")
        assert "…" not in hub
        assert max(len(line) for line in hub.splitlines()) <= 80
        assert hub.count("120563.3") == 3 and hub.count("15070.4") == 3
        assert hub.count("1.04 %") == 3 and hub.count("32.1 kb/s") == 3
        assert hub.count("123456/654321") == 3 and "unknown_peer=2" in hub
        node = await trio.to_thread.run_sync(show, "node", "node.ctl")
        assert 'node "alice" → hub "hub" at 127.0.0.1:7787: connected' in node
        assert "QBER 1.04 %" in node and "26.2 kb/s gross" in node
        assert "155 b/s authentication" in node and "26.0 kb/s net" in node
        assert "0.0103995" not in node and "155.33" not in node
        res = await trio.run_process([*QKDNET, "node", "status", "--json", "--socket",
                                      str(tmp_path / "node.ctl")], capture_stdout=True)
        st = json.loads(res.stdout)
        assert st["link"]["qber"] == 0.0103996 and st["key_bits"]["to_hub"] == 377153
        nursery.cancel_scope.cancel()
