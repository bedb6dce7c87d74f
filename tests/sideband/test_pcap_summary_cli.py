"""``qkdnet pcap summary`` as printed: blocks announced, sessions counted in words.

A capture written by the node's own recorder holds one session with a HELLO and six
link BLOCK_START frames; the summary must report the six announced blocks (it used to
say "block sizes announced: none" beside six BLOCK_START frames) and "1 session".
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from qkdnet.link.wire import BlockStart, LinkMsg
from qkdnet.pcap import PcapRecorder
from qkdnet.wire import DEFAULT_PORT, Hello, MsgType, QkdHeader


def _capture(path: Path, slots: list[int]) -> None:
    rec = PcapRecorder(path)
    flow = rec.flow(("127.0.0.1", 40000), ("127.0.0.1", DEFAULT_PORT), initiator=True)
    flow.sent(bytes(QkdHeader(type=MsgType.HELLO, seq=0, tag=b"h" * 16)
                    / Hello(node_name=b"alice", role=1)))
    for i, n in enumerate(slots):
        flow.sent(bytes(QkdHeader(type=LinkMsg.BLOCK_START, seq=i + 1, session=7,
                                  tag=b"t" * 16) / BlockStart(block=i, n_slots=n)))
    flow.close()
    rec.close()


def _summary(path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qkdnet", "pcap", "summary", str(path),
                           *extra], capture_output=True, text=True, timeout=120)


def test_block_starts_are_the_blocks_announced(tmp_path: Path) -> None:
    path = tmp_path / "alice.pcap"
    _capture(path, [11_600_000] * 6)
    text = _summary(path)
    assert text.returncode == 0, text.stderr
    assert "frames in 1 session\n" in text.stdout
    assert "block sizes announced: 6 blocks of 1.16e+07 pulse slots" in text.stdout
    doc = json.loads(_summary(path, "--json").stdout)
    assert doc["block_slots"] == [11_600_000] * 6
    assert doc["per_type"]["LINK_BLOCK_START"]["frames"] == 6


def test_blocks_of_different_sizes_are_listed(tmp_path: Path) -> None:
    path = tmp_path / "alice.pcap"
    _capture(path, [1_000_000, 2_000_000])
    text = _summary(path)
    assert "block sizes announced: 2 blocks: 1e+06, 2e+06 pulse slots" in text.stdout
