"""Sideband captures: record a node's own traffic, and summarise any capture.

:class:`PcapRecorder` writes what a node sends and receives as synthetic
Ethernet/IPv4(or 6)/TCP packets with consistent sequence numbers (a three-way handshake
first, a FIN at the end), so Wireshark, tshark and scapy's ``TCPSession`` read it like
a real capture, and no root is needed. One recorder serves a whole node; each
connection gets a :class:`PcapFlow` from :meth:`PcapRecorder.flow`.

:func:`summarize` reads any capture (self-written or sniffed) with scapy's
``TCPSession`` and :meth:`qkdnet.wire.QkdHeader.tcp_reassemble`, and reports sessions,
per-type counts, what the link layer announced, authentication failures, aborts and a
timeline. Retransmitted or overlapping TCP segments count once (the reassembly follows
TCP sequence numbers); frames are deliberately not de-duplicated by their header
``seq``, so a frame replayed as new TCP bytes still shows up.
Layers contribute per-type summarisers: either list field names in their
body class's ``summary_fields`` (``qber``, ``block_bits``, ``leaked_bits``,
``final_key_bits``) or call :func:`register_summarizer` with a function returning such
a dict (an ``"event"`` key adds a line to the timeline). A body with an ``n_slots``
field announces a block of that many pulse slots (the link layer's BLOCK_START); the
summary lists those as ``block_slots``, beside any ``block_bits`` a layer declares.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import NoPayload, Packet, Raw
from scapy.sendrecv import sniff
from scapy.sessions import TCPSession
from scapy.utils import PcapReader, PcapWriter

from qkdnet.errors import ErrorCode
from qkdnet.wire import (
    HEADER_LEN,
    MIN_LENGTH,
    PROTOCOL_VERSION,
    MsgType,
    QkdHeader,
    bind_port,
    type_name,
    unpack_header,
)

#: Largest payload per synthetic segment (about a loopback MSS).
SEGMENT_BYTES = 16384
#: Longest capture record read whole. scapy cuts records at 65,535 bytes by default,
#: but ``tcpdump -i lo`` writes 65,549-byte frames (lo's 64 KiB MTU plus the link and
#: IP headers); a cut frame loses TCP bytes and desynchronises the reassembly. scapy
#: reads at most 4 x 65,535 bytes of a record, so that is the most we can ask for.
MAX_RECORD_BYTES = 4 * 65535


class PcapFlow:
    """One TCP connection inside a :class:`PcapRecorder`."""

    def __init__(self, recorder: PcapRecorder, local: tuple[str, int],
                 remote: tuple[str, int], *, initiator: bool) -> None:
        self._rec = recorder
        self.local, self.remote = (str(local[0]), int(local[1])), (str(remote[0]), int(remote[1]))
        self._tx_seq = 1000
        self._rx_seq = 5000
        self._closed = False
        # Three-way handshake, from whichever side opened the connection.
        if initiator:
            self._packet(True, b"", "S", seq=self._tx_seq - 1, ack=0)
            self._packet(False, b"", "SA", seq=self._rx_seq - 1, ack=self._tx_seq)
            self._packet(True, b"", "A")
        else:
            self._packet(False, b"", "S", seq=self._rx_seq - 1, ack=0)
            self._packet(True, b"", "SA", seq=self._tx_seq - 1, ack=self._rx_seq)
            self._packet(False, b"", "A")

    def __repr__(self) -> str:
        return f"PcapFlow({self.local} -> {self.remote})"

    def _packet(self, outgoing: bool, payload: bytes, flags: str, *,
                seq: int | None = None, ack: int | None = None) -> None:
        src, dst = (self.local, self.remote) if outgoing else (self.remote, self.local)
        if seq is None:
            seq = self._tx_seq if outgoing else self._rx_seq
        if ack is None:
            ack = self._rx_seq if outgoing else self._tx_seq
        ip: Packet = (IPv6(src=src[0], dst=dst[0]) if ":" in src[0]
                      else IP(src=src[0], dst=dst[0]))
        pkt = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / ip / TCP(
            sport=src[1], dport=dst[1], flags=flags, seq=seq & 0xFFFFFFFF,
            ack=ack & 0xFFFFFFFF, window=65535)
        if payload:
            pkt = pkt / Raw(payload)
        self._rec._write(pkt)

    def _data(self, outgoing: bool, data: bytes) -> None:
        if self._closed:
            return
        for start in range(0, len(data), SEGMENT_BYTES):
            chunk = data[start:start + SEGMENT_BYTES]
            self._packet(outgoing, chunk, "PA")
            if outgoing:
                self._tx_seq += len(chunk)
            else:
                self._rx_seq += len(chunk)

    def sent(self, data: bytes) -> None:
        """Record bytes this node sent."""
        self._data(True, data)

    def received(self, data: bytes) -> None:
        """Record bytes this node received."""
        self._data(False, data)

    def close(self) -> None:
        """Record our FIN (once)."""
        if not self._closed:
            self._packet(True, b"", "FA")
            self._tx_seq += 1
            self._closed = True


class PcapRecorder:
    """Writes a node's sideband traffic to a pcap file (``--pcap FILE``).

    ``clock`` gives packet timestamps (wall clock by default; this is I/O-side code).
    """

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        self._writer = PcapWriter(str(self.path), linktype=1, sync=True)
        self.packets = 0

    def __repr__(self) -> str:
        return f"PcapRecorder({str(self.path)!r}, packets={self.packets})"

    def flow(self, local: tuple[str, int], remote: tuple[str, int], *,
             initiator: bool) -> PcapFlow:
        """Start recording one connection (writes its TCP handshake)."""
        return PcapFlow(self, local, remote, initiator=initiator)

    def _write(self, pkt: Packet) -> None:
        pkt.time = self._clock()
        self._writer.write(pkt)
        self.packets += 1

    def close(self) -> None:
        """Flush and close the file."""
        self._writer.close()


# --- summary ------------------------------------------------------------------------

Summarizer = Callable[[Packet, Packet], dict[str, Any]]
_SUMMARIZERS: dict[int, Summarizer] = {}
#: Fields aggregated into the summary, and how: list of values, or a sum.
LISTED_FIELDS = ("qber", "block_bits", "block_slots")
SUMMED_FIELDS = ("leaked_bits", "final_key_bits")


def register_summarizer(msg_type: int, fn: Summarizer) -> None:
    """Add a per-type summariser: ``fn(header, body) -> {"qber": ..., "event": ...}``."""
    _SUMMARIZERS[int(msg_type)] = fn


def _common_summary(header: Packet, body: Packet) -> dict[str, Any]:
    t = int(header.type)
    if t == MsgType.HELLO:
        return {"event": f"HELLO from {bytes(body.node_name).decode('utf-8', 'replace')}"}
    if t == MsgType.HELLO_ACK:
        return {"event": f"HELLO_ACK from {bytes(body.node_name).decode('utf-8', 'replace')}"}
    if t == MsgType.ERROR:
        return {"event": f"ERROR {_code_name(int(body.code))}: "
                         f"{bytes(body.reason).decode('utf-8', 'replace')}"}
    if t == MsgType.CLOSE:
        return {"event": "CLOSE"}
    return {}


for _t in (MsgType.HELLO, MsgType.HELLO_ACK, MsgType.ERROR, MsgType.CLOSE):
    register_summarizer(_t, _common_summary)


def _code_name(code: int) -> str:
    try:
        return ErrorCode(code).name
    except ValueError:
        return str(code)


@dataclass
class _Session:
    client: str
    server: str
    names: dict[str, str] = field(default_factory=dict)
    frames: int = 0
    bytes: int = 0
    first: float = 0.0
    last: float = 0.0
    end: str = "open"
    link_sessions: set[int] = field(default_factory=set)


def _frames_of(pkt: Packet) -> list[Packet]:
    """Every sideband frame stacked in one reassembled packet."""
    out: list[Packet] = []
    while (layer := pkt.getlayer(QkdHeader, nb=len(out) + 1)) is not None:
        out.append(layer)
    return out


def _endpoints(pkt: Packet) -> tuple[str, str]:
    ip = pkt.getlayer(IP) or pkt.getlayer(IPv6)
    tcp = pkt.getlayer(TCP)
    if ip is None or tcp is None:
        return "?", "?"
    return f"{ip.src}:{tcp.sport}", f"{ip.dst}:{tcp.dport}"


def detect_ports(path: str | Path) -> set[int]:
    """Server ports of TCP flows that open with a sideband HELLO (seq 0, version 1)."""
    found: set[int] = set()
    with PcapReader(str(path)) as reader:
        for pkt in reader:
            tcp = pkt.getlayer(TCP)
            if tcp is None or not isinstance(tcp.payload, Raw | QkdHeader):
                continue
            data = bytes(tcp.payload)
            if len(data) < HEADER_LEN:
                continue
            hdr = unpack_header(data)
            if (hdr.version == PROTOCOL_VERSION and hdr.type == MsgType.HELLO
                    and hdr.seq == 0 and hdr.reserved == 0 and hdr.length >= MIN_LENGTH):
                found.add(int(tcp.dport))
    return found


#: The layers' wire modules: importing one binds its bodies (and summarisers) by type.
LAYER_WIRE_MODULES = ("qkdnet.link.wire", "qkdnet.hub.wire", "qkdnet.apps.wire")


def _load_layer_bodies() -> None:
    """Bind every layer's bodies, so a capture names and decodes them all."""
    import importlib
    import importlib.util

    for module in LAYER_WIRE_MODULES:
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)


def summarize(path: str | Path, *, ports: tuple[int, ...] = (),
              detect: bool = True) -> dict[str, Any]:
    """Summarise the sideband frames in a capture (see module docstring).

    Port 7787 and ``ports`` are decoded; with ``detect`` so is every port that a flow
    opened with a HELLO frame (nodes often listen on other ports).
    """
    _load_layer_bodies()
    for port in set(ports) | (detect_ports(path) if detect else set()):
        bind_port(port)
    packets = _sniff(path)
    sessions: dict[frozenset[str], _Session] = {}
    per_type: dict[str, dict[str, int]] = {}
    listed: dict[str, list[Any]] = {k: [] for k in LISTED_FIELDS}
    summed: Counter[str] = Counter()
    timeline: list[dict[str, Any]] = []
    auth_failures = 0
    aborts: list[dict[str, Any]] = []
    undecodable = 0
    t0: float | None = None
    for pkt in packets:
        frames = _frames_of(pkt)
        tcp = pkt.getlayer(TCP)
        if not frames:
            if tcp is not None and isinstance(tcp.payload, Raw) and (
                    tcp.sport in _bound_ports() or tcp.dport in _bound_ports()):
                undecodable += len(tcp.payload.load)
            continue
        undecodable += _stray_bytes(frames[0])
        src, dst = _endpoints(pkt)
        now = float(pkt.time)
        t0 = now if t0 is None else min(t0, now)
        key = frozenset((src, dst))
        sess = sessions.get(key)
        if sess is None:
            sess = sessions[key] = _Session(client=src, server=dst, first=now)
        for frame in frames:
            t = int(frame.type)
            name = type_name(t)
            size = 4 + int(frame.length)
            entry = per_type.setdefault(name, {"frames": 0, "bytes": 0})
            entry["frames"] += 1
            entry["bytes"] += size
            sess.frames += 1
            sess.bytes += size
            if int(frame.session):
                sess.link_sessions.add(int(frame.session))
            sess.last = now
            body = frame.payload
            info: dict[str, Any] = {}
            fn = _SUMMARIZERS.get(t)
            if fn is not None:
                info.update(fn(frame, body))
            for fname in getattr(type(body), "summary_fields", ()):
                if body.haslayer(type(body)) and fname in body.fields:
                    info.setdefault(fname, body.getfieldval(fname))
            if "n_slots" in getattr(body, "fields", {}):  # a block announced, in slots
                info.setdefault("block_slots", int(body.getfieldval("n_slots")))
            for fname in LISTED_FIELDS:
                if info.get(fname) is not None:
                    listed[fname].append(info[fname])
            for fname in SUMMED_FIELDS:
                if info.get(fname) is not None:
                    summed[fname] += int(info[fname])
            if t in (MsgType.HELLO, MsgType.HELLO_ACK):
                sess.names[src] = bytes(body.node_name).decode("utf-8", "replace")
            if t == MsgType.ERROR:
                code = _code_name(int(body.code))
                if int(body.code) in (ErrorCode.AUTHENTICATION_FAILED,
                                      ErrorCode.REPLAY_OR_REORDER):
                    auth_failures += 1
                aborts.append({"time": now, "from": src, "code": code,
                               "reason": bytes(body.reason).decode("utf-8", "replace")})
                sess.end = f"aborted ({code})"
            elif t == MsgType.CLOSE:
                sess.end = "closed" if sess.end == "close sent" else "close sent"
            if "event" in info:
                timeline.append({"time": now, "from": src, "to": dst, "event": info["event"]})
    base = t0 or 0.0
    for item in timeline + aborts:
        item["t"] = round(item.pop("time") - base, 6)
    return {
        "file": str(path),
        "sessions": [
            {"client": s.client, "server": s.server, "names": s.names, "frames": s.frames,
             "bytes": s.bytes, "start": round(s.first - base, 6),
             "duration": round(s.last - s.first, 6), "end": s.end,
             "link_sessions": [f"{x:08x}" for x in sorted(s.link_sessions)]}
            for s in sessions.values()],
        "per_type": per_type,
        "frames": sum(v["frames"] for v in per_type.values()),
        "qber": listed["qber"],
        "block_bits": listed["block_bits"],
        "block_slots": listed["block_slots"],
        "leaked_bits": summed["leaked_bits"],
        "final_key_bits": summed["final_key_bits"],
        "auth_failures": auth_failures,
        "aborts": aborts,
        "undecodable_bytes": undecodable,
        "timeline": timeline,
    }


def _sniff(path: str | Path) -> Any:
    """The capture's packets through scapy's TCP reassembly, records read whole up to
    :data:`MAX_RECORD_BYTES` (sniff's own file reader cuts them at 65,535)."""
    reader = PcapReader(str(path))     # picks the pcapng reader by the file's magic
    read = reader.recv

    def recv(size: int = MAX_RECORD_BYTES, **kwargs: Any) -> Any:
        return read(max(size, MAX_RECORD_BYTES), **kwargs)

    reader.recv = recv  # type: ignore[method-assign]
    try:
        return sniff(opened_socket=reader, session=TCPSession)
    finally:
        reader.close()


def iter_frames(path: str | Path, *, ports: tuple[int, ...] = (), detect: bool = True
                ) -> Iterator[tuple[float, str, str, Packet]]:
    """Every sideband frame in a capture, in order: (time, source, destination, frame).

    The frame is the :class:`qkdnet.wire.QkdHeader` with its decoded body as payload;
    ports are chosen as in :func:`summarize`. For tools that need the frames
    themselves (``qkdnet.link.capture_audit`` recomputes ℓ from them).
    """
    _load_layer_bodies()
    for port in set(ports) | (detect_ports(path) if detect else set()):
        bind_port(port)
    for pkt in _sniff(path):
        frames = _frames_of(pkt)
        if frames:
            src, dst = _endpoints(pkt)
            for frame in frames:
                yield float(pkt.time), src, dst, frame


def _stray_bytes(first: Packet) -> int:
    """Bytes in a reassembled chain that belong to no frame (a desynchronised stream)."""
    stray = 0
    layer = first
    while layer is not None and not isinstance(layer, NoPayload):
        if isinstance(layer, Raw) and not isinstance(layer.underlayer, QkdHeader):
            stray += len(layer.load)
        layer = layer.payload
    return stray


def _bound_ports() -> set[int]:
    ports: set[int] = set()
    for fval, cls in TCP.payload_guess:
        if cls is QkdHeader:
            ports.update(int(v) for v in fval.values())
    return ports
