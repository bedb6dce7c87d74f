"""Capture records longer than 65,535 bytes are read whole.

``tcpdump -i lo`` writes 65,549-byte frames (lo's 64 KiB MTU: a 65,535-byte IP
packet plus the Ethernet header); scapy's own file reader cuts records at 65,535
bytes, which drops TCP payload and desynchronises the frame reassembly.
"""

from __future__ import annotations

from pathlib import Path

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.utils import PcapWriter

from qkdnet.pcap import _sniff


def test_a_full_size_loopback_record_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "big.pcap"
    writer = PcapWriter(str(path), linktype=1, snaplen=262144)
    payload = bytes(range(256)) * 255 + bytes(215)          # 65,495 bytes: IP len 65,535
    writer.write(Ether() / IP(src="127.0.0.1", dst="127.0.0.1")
                 / TCP(sport=40000, dport=9, flags="PA", seq=1) / payload)
    writer.close()
    (pkt,) = _sniff(path)
    assert len(bytes(pkt)) == 65549
    assert bytes(pkt[TCP].payload) == payload
