"""ℓ recomputed from a capture alone: ``qkdnet pcap summary FILE --audit PRESET``.

A hub records its sideband while a spoke's real link stores blocks; the command
rebuilds every block's counts, leakage and key length from the frames and the
preset, and must land on exactly the ℓ each block announced in its PA frame, for
Cascade and for LDPC. Recomputed under the other leakage convention it must not
(that is how the audit fails when the announced ℓ is wrong).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from qkdnet.hub.node import embedded_network

pytestmark = pytest.mark.slow

QKDNET = [sys.executable, "-m", "qkdnet"]


async def _capture(folder: Path, reconciliation: str) -> Path:
    pcap = folder / "hub.pcap"
    async with embedded_network(["alice"], folder, link=True, preset="snspd-metro", km=25,
                                block_slots=10_000_000, hub_pcap=pcap,
                                link_config={"reconciliation": reconciliation}) as net:
        with trio.fail_after(180):
            while net.hub.status()["spokes"]["alice"]["link"].get("stored", 0) < 2:
                await trio.sleep(0.1)
    return pcap


def _audit(pcap: Path, *extra: str) -> tuple[int, list[dict]]:
    proc = subprocess.run([*QKDNET, "--json", "pcap", "summary", str(pcap), "--audit",
                           "snspd-metro", *extra], capture_output=True, text=True,
                          timeout=300)
    return proc.returncode, json.loads(proc.stdout)["audit"]


@pytest.mark.parametrize("reconciliation", ["cascade", "ldpc"])
async def test_every_stored_block_ell_is_recomputed_exactly(tmp_path: Path,
                                                            reconciliation: str) -> None:
    pcap = await _capture(tmp_path, reconciliation)
    code, audit = await trio.to_thread.run_sync(_audit, pcap)
    done = [b for b in audit if b["ell_announced"] is not None]
    assert len(done) >= 2
    for b in done:
        assert b["method"] == reconciliation
        assert b["matches"] is True, b
        assert b["ell_recomputed"] == b["ell_announced"] > 0
        assert sum(b["n_z"]) > 0 and sum(b["n_x"]) > 0 and b["m_x"] is not None
        disclosed = b["leak_parts"]["ldpc" if reconciliation == "ldpc"
                                    else "cascade_alice_parities"]
        assert disclosed > 0
    assert code == 0
    if reconciliation == "cascade":
        # Counting only Alice's parities gives a longer key than the link announced.
        code, lax = await trio.to_thread.run_sync(_audit, pcap, "--leak-accounting",
                                                  "alice-only")
        assert code == 1
        assert all(b["matches"] is False for b in lax if b["ell_announced"] is not None)


def test_an_unknown_audit_preset_is_a_one_line_usage_error(tmp_path: Path) -> None:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    from scapy.utils import PcapWriter

    pcap = tmp_path / "tiny.pcap"
    writer = PcapWriter(str(pcap), linktype=1)
    writer.write(Ether() / IP() / TCP(dport=9))
    writer.close()
    proc = subprocess.run([*QKDNET, "pcap", "summary", str(pcap), "--audit", "nosuch"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("qkdnet: error:") and "unknown preset 'nosuch'" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1
