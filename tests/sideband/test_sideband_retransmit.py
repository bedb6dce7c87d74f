"""Reading captures with TCP retransmissions: every sideband frame is counted once.

scapy 2.8's ``TCPSession`` loses track of a direction's delivered offset when a
segment ends exactly on a frame boundary, so a retransmission of it used to be
dissected again (a hub capture with 12 spurious retransmissions summarised 307
HubData frames instead of 300). These captures are built the way a sniffer sees TCP:
IPv4 segments with real sequence numbers, both directions, retransmissions that
repeat a segment exactly, start mid-frame, overlap partly (repacketised), or arrive
out of order.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.packet import Packet
from scapy.sendrecv import sniff
from scapy.sessions import TCPSession
from scapy.utils import wrpcap

from qkdnet.pcap import summarize
from qkdnet.wire import DEFAULT_PORT, Hello, MsgType, Ping, Pong, QkdHeader

CLIENT = ("10.0.0.1", 41017)
SERVER = ("10.0.0.2", DEFAULT_PORT)


def _ping(seq: int) -> bytes:
    """A PING frame whose header seq and nonce are both ``seq``."""
    return bytes(QkdHeader(type=MsgType.PING, seq=seq, tag=bytes([seq % 256]) * 16)
                 / Ping(nonce=seq))


def _pong(seq: int) -> bytes:
    return bytes(QkdHeader(type=MsgType.PONG, seq=seq, tag=b"p" * 16) / Pong(nonce=seq))


def _hello(name: bytes) -> bytes:
    return bytes(QkdHeader(type=MsgType.HELLO, seq=0, tag=b"h" * 16)
                 / Hello(node_name=name, role=1))


class _Flow:
    """Builds one TCP connection's packets; offsets are stream offsets per direction."""

    def __init__(self, isn_c: int = 1000, isn_s: int = 9000) -> None:
        self.isn = {True: isn_c, False: isn_s}
        self.pkts: list[Packet] = []
        self._tcp(True, "S", self.isn[True] - 1, b"")
        self._tcp(False, "SA", self.isn[False] - 1, b"")
        self._tcp(True, "A", self.isn[True], b"")

    def _tcp(self, from_client: bool, flags: str, seq: int, data: bytes) -> None:
        src, dst = (CLIENT, SERVER) if from_client else (SERVER, CLIENT)
        pkt = (Ether() / IP(src=src[0], dst=dst[0])
               / TCP(sport=src[1], dport=dst[1], flags=flags, seq=seq & 0xFFFFFFFF,
                     ack=self.isn[not from_client] & 0xFFFFFFFF))
        if data:
            pkt = pkt / data
        self.pkts.append(pkt)

    def seg(self, from_client: bool, stream: bytes, start: int, end: int) -> None:
        """Send ``stream[start:end]`` of one direction as one segment."""
        self._tcp(from_client, "PA", self.isn[from_client] + start, stream[start:end])


def _write(tmp_path: Path, pkts: list[Packet], name: str = "retx.pcap") -> Path:
    path = tmp_path / name
    wrpcap(str(path), pkts)
    return path


def _dissected(path: Path) -> list[tuple[str, int]]:
    """(source, header seq) of every frame ``TCPSession`` yields, in order."""
    out: list[tuple[str, int]] = []
    for pkt in sniff(offline=str(path), session=TCPSession):
        nb = 1
        while (frame := pkt.getlayer(QkdHeader, nb=nb)) is not None:
            out.append((str(pkt[IP].src), int(frame.seq)))
            nb += 1
    return out


def test_retransmitted_segment_ending_on_a_frame_boundary(tmp_path: Path) -> None:
    # The scapy 2.8 bug itself: the original segment ends exactly at a frame's end.
    f = [_ping(i) for i in range(3)]
    s = b"".join(f)
    flow = _Flow()
    b1, b2 = len(f[0]), len(f[0]) + len(f[1])
    flow.seg(True, s, 0, b1)
    flow.seg(True, s, 0, b1)        # exact retransmission of a whole frame
    flow.seg(True, s, b1, b2)
    flow.seg(True, s, b1, b2)
    flow.seg(True, s, b1, b2)       # twice
    flow.seg(True, s, b2, len(s))
    path = _write(tmp_path, flow.pkts)
    assert _dissected(path) == [("10.0.0.1", i) for i in range(3)]
    summary = summarize(path, detect=False)
    assert summary["per_type"] == {"PING": {"frames": 3, "bytes": len(s)}}
    assert summary["undecodable_bytes"] == 0
    # ``qkdnet pcap summary`` reads the capture the same way.
    out = subprocess.run([sys.executable, "-m", "qkdnet", "pcap", "summary", str(path),
                          "--json"], capture_output=True, check=True)
    cli = json.loads(out.stdout)
    assert cli["frames"] == 3 and cli["sessions"][0]["frames"] == 3


def test_retransmitted_segment_starting_mid_frame(tmp_path: Path) -> None:
    f = [_ping(i) for i in range(4)]
    s = b"".join(f)
    flow = _Flow()
    cut = len(f[0]) + 10            # the first segment ends inside frame 1
    end2 = len(f[0]) + len(f[1])    # the second starts mid-frame and ends on a boundary
    flow.seg(True, s, 0, cut)
    flow.seg(True, s, cut, end2)
    flow.seg(True, s, cut, end2)
    flow.seg(True, s, end2, end2 + 7)  # starts on a boundary, ends mid-frame
    flow.seg(True, s, end2 + 7, len(s))
    flow.seg(True, s, end2 + 7, len(s))
    flow.seg(True, s, cut, end2)    # late duplicate of something long delivered
    path = _write(tmp_path, flow.pkts)
    assert [seq for _, seq in _dissected(path)] == [0, 1, 2, 3]
    assert summarize(path, detect=False)["frames"] == 4


def test_partially_overlapping_retransmissions(tmp_path: Path) -> None:
    # Repacketised retransmissions: each covers the tail of old data plus new bytes.
    f = [_ping(i) for i in range(5)]
    s = b"".join(f)
    n = len(f[0])
    flow = _Flow()
    flow.seg(True, s, 0, n)             # frame 0 exactly
    flow.seg(True, s, n - 5, n + 12)    # 5 old bytes + start of frame 1
    flow.seg(True, s, 0, 2 * n)         # everything so far again, finishes frame 1
    flow.seg(True, s, 2 * n + 3, 3 * n + 1)  # out of order: arrives before the gap fills
    flow.seg(True, s, 2 * n, 2 * n + 4)      # fills the gap, overlapping by one byte
    flow.seg(True, s, 3 * n - 2, len(s))     # overlaps the previous one, ends the stream
    path = _write(tmp_path, flow.pkts)
    assert [seq for _, seq in _dissected(path)] == [0, 1, 2, 3, 4]
    assert summarize(path, detect=False)["per_type"]["PING"]["frames"] == 5


def test_sequence_numbers_wrapping_at_2_32(tmp_path: Path) -> None:
    f = [_ping(i) for i in range(4)]
    s = b"".join(f)
    n = len(f[0])
    flow = _Flow(isn_c=(1 << 32) - n - 3)   # wraps inside frame 1
    for i in range(4):
        flow.seg(True, s, i * n, (i + 1) * n)
        flow.seg(True, s, i * n, (i + 1) * n)
    path = _write(tmp_path, flow.pkts)
    assert [seq for _, seq in _dissected(path)] == [0, 1, 2, 3]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_busy_two_way_capture_with_random_retransmissions(tmp_path: Path, seed: int) -> None:
    """Both directions, frames of varied sizes cut at random, ~1 in 4 segments resent."""
    rng = random.Random(seed)
    streams = {
        True: [_hello(b"spoke")] + [_ping(i) for i in range(1, 60)],
        False: [_hello(b"hub-" + b"x" * 200)] + [_pong(i) for i in range(1, 60)],
    }
    data = {d: b"".join(fs) for d, fs in streams.items()}
    sent = {True: 0, False: 0}
    flow = _Flow(isn_c=rng.randrange(1 << 32), isn_s=rng.randrange(1 << 32))
    history: dict[bool, list[tuple[int, int]]] = {True: [], False: []}
    while sent[True] < len(data[True]) or sent[False] < len(data[False]):
        d = rng.choice([k for k in (True, False) if sent[k] < len(data[k])])
        # Segments that end on frame boundaries are common in real traffic: favour them.
        bounds = [b for b in _boundaries(streams[d]) if b > sent[d]]
        end = (bounds[0] if rng.random() < 0.5
               else min(len(data[d]), sent[d] + rng.randrange(1, 150)))
        flow.seg(d, data[d], sent[d], end)
        history[d].append((sent[d], end))
        sent[d] = end
        if rng.random() < 0.25:
            kind = rng.randrange(3)
            a, b = history[d][rng.randrange(len(history[d]))]
            if kind == 0:
                flow.seg(d, data[d], a, b)                         # exact
            elif kind == 1:
                flow.seg(d, data[d], history[d][-1][0], sent[d])   # the latest one
            else:
                flow.seg(d, data[d], max(0, a - 9), min(sent[d], b + 9))  # overlapping
    path = _write(tmp_path, flow.pkts)
    got = _dissected(path)
    for ip in ("10.0.0.1", "10.0.0.2"):
        assert [seq for src, seq in got if src == ip] == list(range(60))
    summary = summarize(path, detect=False)  # detect would bind the client port too
    assert summary["per_type"] == {
        "HELLO": {"frames": 2, "bytes": len(streams[True][0]) + len(streams[False][0])},
        "PING": {"frames": 59, "bytes": len(data[True]) - len(streams[True][0])},
        "PONG": {"frames": 59, "bytes": len(data[False]) - len(streams[False][0])},
    }
    assert summary["undecodable_bytes"] == 0


def _boundaries(frames: list[bytes]) -> list[int]:
    out, pos = [], 0
    for f in frames:
        pos += len(f)
        out.append(pos)
    return out


def test_a_new_connection_on_the_same_ports_starts_afresh(tmp_path: Path) -> None:
    # The second connection reuses the 4-tuple with an ISN far from the first one's
    # (scapy shows tcp_reassemble no SYN, so the jump is what marks a new stream): its
    # frames are neither taken for retransmissions nor held behind a gap.
    s1 = b"".join(_ping(i) for i in range(3))
    s2 = b"".join(_ping(i) for i in range(10, 12))
    first, second = _Flow(isn_c=3_000_000_000), _Flow(isn_c=2_000)
    first.seg(True, s1, 0, len(s1))
    second.seg(True, s2, 0, len(s2))
    path = _write(tmp_path, first.pkts + second.pkts)
    assert [seq for _, seq in _dissected(path)] == [0, 1, 2, 10, 11]


def _lossy_flow(n_frames: int, *, fin: bool) -> tuple[list[Packet], int]:
    """One frame per segment; frame 2's segment and the head of frame 5's are missing,
    as in a capture whose sniffer dropped packets. Returns packets and the stray bytes
    (frame 5's tail, which starts inside its tag)."""
    f = [_ping(i) for i in range(n_frames)]
    s = b"".join(f)
    bounds = [0, *_boundaries(f)]
    flow = _Flow()
    tail = 12
    for i in range(n_frames):
        if i == 2:
            continue
        if i == 5:
            flow.seg(True, s, bounds[6] - tail, bounds[6])
            continue
        flow.seg(True, s, bounds[i], bounds[i + 1])
    if fin:
        flow._tcp(True, "FA", flow.isn[True] + len(s), b"")
    return flow.pkts, tail


@pytest.mark.parametrize("fin", [True, False])
def test_segments_lost_from_the_capture(tmp_path: Path, fin: bool) -> None:
    # With a FIN the held segments are parsed at once; without one, after a few
    # segments have piled up behind the gap. Either way every whole frame is reported.
    n = 8 if fin else 20
    pkts, tail = _lossy_flow(n, fin=fin)
    path = _write(tmp_path, pkts)
    want = [i for i in range(n) if i not in (2, 5)]
    assert [seq for _, seq in _dissected(path)] == want
    summary = summarize(path, detect=False)
    assert summary["frames"] == len(want)
    assert summary["undecodable_bytes"] == tail
