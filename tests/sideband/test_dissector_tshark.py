"""tshark with spec/wireshark/qkdnet.lua against scapy, frame by frame and field by field.

Two captures, both written by qkdnet's own pcap recorder on ports other than 7787 (so
only the heuristic finds them):

* every message type of every layer bound to ``QkdHeader``, each body filled with
  random values, frames split over segments and coalesced in one segment, some
  deferred: each frame tshark shows must carry the same fields, in the same order,
  over the same bytes, with the same values as scapy's dissection of it;
* a real multi-layer run (tests marked slow): a hub and two spokes running the QKD
  link, a relayed channel carrying a SecureStream, a refused open, key relays, a
  status request, and a padded SecureStream on the relayed end-to-end key. Zero
  malformed frames, every frame found (as many as the recorded byte streams hold),
  every type named, and every field of every frame equal to scapy's dissection.
"""

from __future__ import annotations

import functools
import importlib
import itertools
import random
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from scapy.fields import (
    FieldLenField,
    FieldListField,
    FlagsField,
    IEEEDoubleField,
    PacketListField,
    StrField,
    StrFixedLenField,
    StrLenField,
    _EnumField,
)
from scapy.packet import NoPayload, Packet

from qkdnet import wire
from qkdnet.pcap import PcapRecorder
from qkdnet.wire import FrameFlags, QkdHeader

ROOT = Path(__file__).resolve().parents[2]
LUA = ROOT / "spec" / "wireshark" / "qkdnet.lua"
WIRE_MODULES = ("qkdnet.wire", "qkdnet.link.wire", "qkdnet.hub.wire", "qkdnet.apps.wire")
for _mod in WIRE_MODULES:
    importlib.import_module(_mod)

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None,
                                reason="tshark is not installed (CI installs it: .ci/run)")

#: Text fields of the generator (names, reasons, JSON): tshark shows them as strings.
TEXT = {"node_name", "reason", "spoke", "hub", "src", "dst", "service", "peer", "hop",
        "detail", "text"}


def bound() -> dict[int, type[Packet]]:
    """Every message type the wire modules bind (test stand-ins left out)."""
    return {t: cls for t, cls in sorted(wire.bound_types().items())
            if cls.__module__ in WIRE_MODULES}


# --- running tshark -------------------------------------------------------------------


@functools.cache
def claimed_tcp_ports() -> frozenset[int]:
    """TCP ports some built-in Wireshark dissector is registered on."""
    out = subprocess.run(["tshark", "-G", "decodes"], capture_output=True, text=True,
                         timeout=60).stdout
    return frozenset(int(p) for table, p, *_ in (line.split("\t") for line in out.splitlines()
                                                 if line.count("\t") >= 2)
                     if table == "tcp.port" and p.isdigit())


def free_port(start: int) -> int:
    """A port at or above ``start`` that no Wireshark dissector claims (heuristic only)."""
    port = start
    while port in claimed_tcp_ports() or port == wire.DEFAULT_PORT:
        port += 1
    return port


@functools.cache
def lua_loads() -> bool:
    """Whether this tshark runs our Lua file (some distributions refuse Lua for root)."""
    out = subprocess.run(["tshark", "-G", "protocols", "-X", f"lua_script:{LUA}"],
                         capture_output=True, text=True, timeout=60).stdout
    return any(line.split("\t")[2:3] == ["qkdnet"] for line in out.splitlines())


def tshark(pcap: Path, *args: str) -> str:
    """Run tshark with our dissector; fail with its stderr if it fails."""
    if not lua_loads():
        pytest.fail("tshark did not load spec/wireshark/qkdnet.lua (Lua disabled for root? "
                    "see run_user_scripts_when_superuser in init.lua, and .ci/run)")
    cmd = ["tshark", "-X", f"lua_script:{LUA}", "-r", str(pcap), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    if "Lua" in proc.stderr and "rror" in proc.stderr:
        pytest.fail(f"tshark reported a Lua error: {proc.stderr}")
    return proc.stdout


def pdml(pcap: Path, *args: str) -> ET.Element:
    """tshark's PDML of the capture, cut down to what the checks read."""
    layers = "geninfo qkdnet _ws.malformed _ws.lua _ws.unreassembled"
    return ET.fromstring(tshark(pcap, "-T", "pdml", "-J", layers, *args))


def _number(packet: ET.Element) -> int:
    return int(next(f for f in packet.iter("field") if f.get("name") == "num").get("show", 0))


def frames_of(root: ET.Element) -> list[tuple[int, ET.Element]]:
    """(frame number, <proto name="qkdnet">) for every sideband frame tshark found."""
    return [(_number(packet), proto) for packet in root.iter("packet")
            for proto in packet.findall("proto") if proto.get("name") == "qkdnet"]


def pdml_frames(pcap: Path, *args: str) -> list[tuple[int, ET.Element]]:
    return frames_of(pdml(pcap, *args))


#: Our expert infos (spec/wireshark/qkdnet.lua): any of them is a failed frame.
EXPERTS = ("qkdnet.truncated", "qkdnet.trailing", "qkdnet.short_length",
           "qkdnet.unknown_type")


def problems_of(root: ET.Element) -> list[str]:
    """Malformed packets, Lua errors and expert infos of warning or error severity in
    the layers kept (qkdnet's own), one line each."""
    found = []
    for packet in root.iter("packet"):
        for p in packet.iter("proto"):
            if p.get("name", "").startswith("_ws."):
                found.append(f"frame {_number(packet)}: {p.get('showname')}")
        for f in packet.iter("field"):
            name = f.get("name")
            if name in EXPERTS or name == "_ws.malformed" or (
                    name == "_ws.expert.severity" and int(f.get("show", "0")) >= 0x600000):
                found.append(f"frame {_number(packet)}: {f.get('showname')}")
    return found


def problems(pcap: Path, *args: str) -> list[str]:
    return problems_of(pdml(pcap, *args))


def info_column(pcap: Path, *args: str) -> list[str]:
    return tshark(pcap, "-T", "fields", "-e", "_ws.col.Info", *args).splitlines()


# --- sample frames ----------------------------------------------------------------------


def _sample_value(fld: Any, rng: random.Random) -> Any:
    if isinstance(fld, FieldListField):
        return [_sample_value(fld.field, rng) for _ in range(rng.randint(1, 3))]
    if isinstance(fld, PacketListField):
        return [sample_body(fld.cls, rng) for _ in range(rng.randint(1, 3))]
    if isinstance(fld, StrFixedLenField):
        return rng.randbytes(int(fld.length_from(None)))
    if isinstance(fld, StrLenField):
        if fld.name in TEXT:
            return rng.choice([b"alice", b"bob", "c\u00e9sar".encode(), b"hub"])
        return rng.randbytes(rng.choice([0, 1, 7, 33]))
    if type(fld) is StrField:
        return rng.randbytes(rng.choice([0, 5, 40]))
    if isinstance(fld, IEEEDoubleField):
        return rng.choice([1e-10, 0.11, rng.random()])
    if isinstance(fld, FlagsField):
        return rng.randrange(1 << fld.size)
    if isinstance(fld, _EnumField):
        return rng.choice(sorted(fld.i2s))
    return rng.randrange(1 << (8 * int(fld.sz)))


def sample_body(cls: type[Packet], rng: random.Random) -> Packet:
    """A body of ``cls`` with every field set (length and count fields computed)."""
    return cls(**{f.name: _sample_value(f, rng) for f in cls.fields_desc
                  if not isinstance(f, FieldLenField)})


def sample_frame(msg_type: int, rng: random.Random, *, seq: int, deferred: bool = False
                 ) -> bytes:
    body = sample_body(bound()[msg_type], rng)
    flags = (FrameFlags.DEFERRED if deferred else 0) | rng.choice([0, FrameFlags.END_OF_GROUP])
    return bytes(QkdHeader(type=msg_type, flags=flags, session=rng.randrange(1 << 32),
                           seq=seq, akey_block=rng.randrange(1 << 64),
                           akey_offset=rng.randrange(1 << 32), tag=rng.randbytes(16)) / body)


# --- comparing tshark with scapy ----------------------------------------------------------


def _scapy_items(pkt: Packet, prefix: str) -> Iterator[tuple[str, bytes, Any, Any]]:
    """(Wireshark field name, wire bytes, value, scapy field) of every leaf, in order."""
    for fld in pkt.fields_desc:
        name = f"qkdnet.{prefix}.{fld.name}"
        value = pkt.getfieldval(fld.name)
        if isinstance(fld, FieldListField):
            for v in value:
                yield name, fld.field.addfield(pkt, b"", v), v, fld.field
        elif isinstance(fld, PacketListField):
            for item in value:
                yield from _scapy_items(item, _snake(item))
        else:
            yield name, fld.addfield(pkt, b"", value), value, fld


def _snake(pkt_or_cls: Any) -> str:
    import re
    # A Packet class keeps its display name in ``_name`` (``name`` is the instance's).
    raw = pkt_or_cls.name if isinstance(pkt_or_cls, Packet) else pkt_or_cls._name
    name = str(raw).removeprefix("QKD ")
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


@functools.cache
def containers() -> frozenset[str]:
    """Wireshark names of the subtrees that hold fields: one per body (and list element)
    class, one per packet list."""
    names: set[str] = set()

    def add(cls: type[Packet]) -> None:
        prefix = _snake(cls)
        names.add(f"qkdnet.{prefix}")
        for fld in cls.fields_desc:
            if isinstance(fld, PacketListField):
                names.add(f"qkdnet.{prefix}.{fld.name}")
                add(fld.cls)

    for cls in bound().values():
        add(cls)
    return frozenset(names)


def _pdml_leaves(elem: ET.Element) -> Iterator[ET.Element]:
    """Leaf fields under a body, in order: list subtrees opened, flag bits left out."""
    for child in elem.findall("field"):
        if child.get("name") in containers():
            yield from _pdml_leaves(child)
        else:
            yield child


def compare(proto: ET.Element, frame: bytes) -> None:
    """Assert tshark's view of one frame equals scapy's, field by field."""
    pkt = QkdHeader(frame)
    body = pkt.payload
    if isinstance(body, NoPayload):  # scapy adds no layer for an empty body
        body = bound()[int(pkt.type)](b"")
    fields = {f.get("name"): f for f in proto.findall("field")}
    for fld in QkdHeader.fields_desc:
        got = fields[f"qkdnet.{fld.name}"]
        value = pkt.getfieldval(fld.name)
        if fld.name == "tag":
            assert got.get("value") == value.hex()
        else:
            assert int(got.get("show"), 0) == int(value), fld.name
    t = int(pkt.type)
    assert f"({t:#04x})" in fields["qkdnet.type"].get("showname")
    assert "Unknown" not in fields["qkdnet.type"].get("showname")
    prefix = _snake(body)
    container = fields[f"qkdnet.{prefix}"]
    assert container.get("showname") == str(body.name).removeprefix("QKD ")
    want = list(_scapy_items(body, prefix))
    got_leaves = list(_pdml_leaves(container))
    assert [g.get("name") for g in got_leaves] == [w[0] for w in want], prefix
    for g, (name, raw, value, fld) in zip(got_leaves, want, strict=True):
        assert g.get("value", "") == raw.hex(), name
        assert int(g.get("size")) == len(raw), name
        show = g.get("show")
        if isinstance(fld, IEEEDoubleField):
            assert float(show) == pytest.approx(value, rel=1e-6), name
        elif isinstance(fld, StrLenField) and fld.name in TEXT:
            assert show == value.decode(), name
        elif isinstance(fld, StrField):
            pass  # bytes: the raw comparison above is the whole story
        else:
            assert int(show, 0) == int(value), name
            if isinstance(fld, _EnumField):
                assert str(fld.i2s[int(value)]) in g.get("showname"), name
    assert not any(f.get("name", "").startswith("_ws.expert") for f in proto.iter("field"))


def write_every_type(path: Path, port: int, rng: random.Random) -> list[bytes]:
    """Every bound type in both directions, one split, some coalesced, some deferred."""
    recorder = PcapRecorder(path)
    flow = recorder.flow(("10.1.0.2", 50123), ("10.1.0.1", port), initiator=True)
    frames: list[bytes] = []
    seq = 0
    for i, t in enumerate(bound()):
        batch = [sample_frame(t, rng, seq=seq + k, deferred=(0x10 <= t < 0x80 and k == 1))
                 for k in range(2)]
        seq += 2
        send = flow.sent if i % 2 == 0 else flow.received
        if i % 3 == 0:  # the first frame over several segments, cut inside the header
            # (the connection's very first segment holds 9 bytes: the heuristic needs 8)
            first = batch[0]
            cuts = [0, 9, 40, len(first)] if i == 0 else [*range(0, len(first), 5), len(first)]
            for a, b in itertools.pairwise(cuts):
                send(first[a:b])
            send(batch[1])
        else:  # both frames in one segment
            send(batch[0] + batch[1])
        frames += batch
    flow.close()
    recorder.close()
    return frames


# --- tests ------------------------------------------------------------------------------


def test_every_type_of_every_layer_decodes_as_scapy_does(tmp_path: Path) -> None:
    rng = random.Random(14)
    pcap = tmp_path / "every-type.pcap"
    frames = write_every_type(pcap, free_port(47787), rng)
    root = pdml(pcap)
    shown = frames_of(root)
    assert len(shown) == len(frames)
    for (_num, proto), frame in zip(shown, frames, strict=True):
        compare(proto, frame)
    assert problems_of(root) == []
    info = "\n".join(info_column(pcap))
    for t, cls in bound().items():
        assert f" {_type_name(t, cls)} seq=" in info
    assert info.count("(deferred)") == sum(1 for t in bound() if 0x10 <= t < 0x80)


def _type_name(t: int, cls: type[Packet]) -> str:
    mod = importlib.import_module(cls.__module__)
    for enum in (getattr(mod, n, None) for n in ("MsgType", "LinkMsg", "HubMsg", "AppMsgType")):
        if enum is not None and t in {int(m) for m in enum}:
            return str(enum(t).name)
    raise AssertionError(f"type {t:#x} is in no type enum")


def test_the_heuristic_is_what_finds_a_non_default_port(tmp_path: Path) -> None:
    """Without the heuristic, a capture on another port is plain TCP (so the test above
    would fail); on the default port the port registration alone decodes it."""
    rng = random.Random(1)
    other = tmp_path / "other.pcap"
    frames = write_every_type(other, free_port(47787), rng)
    assert pdml_frames(other, "--disable-heuristic", "qkdnet_tcp") == []
    default = tmp_path / "default.pcap"
    write_every_type(default, wire.DEFAULT_PORT, random.Random(1))
    assert len(pdml_frames(default, "--disable-heuristic", "qkdnet_tcp")) == len(frames)


def test_the_heuristic_leaves_other_tcp_alone(tmp_path: Path) -> None:
    """Bytes that are not a sideband header (wrong version, unknown type, reserved set,
    short length) on an unclaimed port are not taken for qkdnet."""
    rng = random.Random(2)
    good = sample_frame(wire.MsgType.PING, rng, seq=0)
    bad = [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(40),
           good[:4] + b"\x02" + good[5:],          # version 2
           good[:5] + b"\x3e" + good[6:],          # a link type nobody defines
           good[:7] + b"\x01" + good[8:],          # reserved byte set
           (20).to_bytes(4, "big") + good[4:]]     # length below 44
    recorder = PcapRecorder(tmp_path / "others.pcap")
    for i, data in enumerate(bad):
        flow = recorder.flow(("10.1.0.2", 51000 + i), ("10.1.0.1", free_port(47900)),
                             initiator=True)
        flow.sent(data)
        flow.close()
    recorder.close()
    assert pdml_frames(tmp_path / "others.pcap") == []


def test_damaged_bodies_are_flagged_malformed(tmp_path: Path) -> None:
    """The malformed check can fail: a body cut inside a field, a body with bytes after
    its last field, and an unknown type on the default port are all reported."""
    rng = random.Random(3)
    from qkdnet.hub.wire import HubMsg
    data = sample_frame(HubMsg.DATA, rng, seq=0)
    body = data[wire.HEADER_LEN:-wire.TAG_LEN]
    cut = wire.pack_header(len(body) - 3, HubMsg.DATA) + body[:-3] + bytes(16)
    extra = wire.pack_header(len(body) + 2, HubMsg.DATA) + body + b"xx" + bytes(16)
    unknown = wire.pack_header(4, 0x3E) + b"abcd" + bytes(16)
    recorder = PcapRecorder(tmp_path / "damaged.pcap")
    flow = recorder.flow(("10.1.0.2", 50000), ("10.1.0.1", wire.DEFAULT_PORT), initiator=True)
    for frame in (cut, extra, unknown):
        flow.sent(frame)
    flow.close()
    recorder.close()
    found = "\n".join(problems(tmp_path / "damaged.pcap"))
    assert "Body ends inside a field" in found or "body ends early" in found
    assert "2 bytes after the last field" in found
    assert "defined by no layer" in found
    assert "LINK_0x3e" in "\n".join(info_column(tmp_path / "damaged.pcap"))


# --- a real multi-layer capture ---------------------------------------------------------


class _RecordedStream(trio.abc.HalfCloseableStream):
    """A TCP stream whose bytes both ways go to a PcapFlow (a padded SecureStream
    between two spokes is an application's own connection: no node records it)."""

    def __init__(self, inner: trio.SocketStream, flow: Any) -> None:
        self.inner, self.flow = inner, flow

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.flow.sent(bytes(data))
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.inner.receive_some(max_bytes)
        self.flow.received(bytes(data))
        return data

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        self.flow.close()
        await self.inner.aclose()


async def _padded_stream(pcap: Path, alice_store: Any, bob_store: Any) -> None:
    """alice -> bob over TCP loopback on the end-to-end key the hub relayed."""
    from qkdnet.apps.keys import KeyStoreStreamKeys
    from qkdnet.apps.stream import SecureStream

    recorder = PcapRecorder(pcap)
    got = bytearray()

    async def serve(raw: trio.SocketStream) -> None:
        s = SecureStream(raw, KeyStoreStreamKeys(bob_store, "alice"), session=77)
        while chunk := await s.receive_some():
            got.extend(chunk)
        await s.send_all(b"ok")
        await s.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, serve, 0,
                                                          host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        raw = await trio.open_tcp_stream("127.0.0.1", port)
        flow = recorder.flow(raw.socket.getsockname()[:2], ("127.0.0.1", port),
                             initiator=True)
        client = SecureStream(_RecordedStream(raw, flow), KeyStoreStreamKeys(alice_store, "bob"),
                              session=77)
        await client.send_all(b"over the relayed key")
        await client.send_eof()
        assert await client.receive_some() == b"ok"
        await client.aclose()
        nursery.cancel_scope.cancel()
    recorder.close()
    assert bytes(got) == b"over the relayed key"


async def _record_network(folder: Path) -> tuple[Path, Path]:
    from qkdnet.apps.api import open_secure_stream, serve_secure
    from qkdnet.errors import QkdnetError
    from qkdnet.hub import wire as hw
    from qkdnet.hub.node import embedded_network

    hub_pcap, stream_pcap = folder / "hub.pcap", folder / "stream.pcap"
    async with embedded_network(["alice", "bob"], folder / "net", link=True, km=5,
                                prefill_key=1 << 16, hub_pcap=hub_pcap) as net:
        with trio.fail_after(240):  # one whole link block (BLOCK_START .. CONFIRM)
            while net.hub.status()["spokes"]["alice"]["link"].get("stored", 0) < 1:
                await trio.sleep(0.1)

        async def echo(stream: Any) -> None:
            await stream.send_all(b"echo:" + await stream.receive_some())

        async with trio.open_nursery() as nursery:
            await nursery.start(functools.partial(serve_secure, echo, "echo", node=net["bob"]))
            stream = await open_secure_stream("bob", "echo", node=net["alice"])
            await stream.send_all(b"through the hub")
            assert await stream.receive_some() == b"echo:through the hub"
            await stream.aclose()
            with pytest.raises(QkdnetError):  # DELIVERY_NACK: nobody listens there
                await net["alice"].open_channel("bob", "nobody")
            await net["alice"].relay_key("bob", 4096)
            await net["bob"].relay_key("alice", 4096)
            alice = net["alice"]
            # No public API asks the hub for status over the sideband; the node's own
            # send path does (STATUS_REQUEST, answered with STATUS).
            await alice._send(hw.HubStatusRequest(request_id=5), alice._epoch)
            await _padded_stream(stream_pcap, net.stores["alice"], net.stores["bob"])
            await trio.sleep(0.5)
            nursery.cancel_scope.cancel()
    return hub_pcap, stream_pcap


def frames_in(pcap: Path) -> list[bytes]:
    """Every whole frame of a recorder's capture, in the packet that completes it.

    The recorder writes each direction's bytes in order without loss or overlap, so
    concatenating the payloads per direction is the whole TCP reassembly.
    """
    from scapy.layers.inet import IP, TCP
    from scapy.utils import PcapReader

    buffers: dict[tuple[Any, ...], bytearray] = {}
    out: list[bytes] = []
    with PcapReader(str(pcap)) as reader:
        for pkt in reader:
            tcp = pkt.getlayer(TCP)
            payload = bytes(tcp.payload)
            if not payload:
                continue
            buf = buffers.setdefault((pkt[IP].src, tcp.sport, pkt[IP].dst, tcp.dport),
                                     bytearray())
            buf += payload
            while len(buf) >= 4 and len(buf) >= 4 + int.from_bytes(buf[:4], "big"):
                n = 4 + int.from_bytes(buf[:4], "big")
                out.append(bytes(buf[:n]))
                del buf[:n]
    return out


@pytest.mark.slow
async def test_real_multilayer_capture_decodes_without_malformed_frames(
        tmp_path: Path) -> None:
    hub_pcap, stream_pcap = await _record_network(tmp_path)
    seen: Counter[str] = Counter()
    for pcap in (hub_pcap, stream_pcap):
        root = pdml(pcap)
        assert problems_of(root) == [], f"{pcap.name}: malformed or flagged frames"
        shown = frames_of(root)
        frames = frames_in(pcap)
        assert len(shown) == len(frames), pcap.name
        names: Counter[str] = Counter()
        for (_num, proto), frame in zip(shown, frames, strict=True):
            compare(proto, frame)  # every field of every frame, as scapy reads it
            showname = next(f for f in proto.findall("field")
                            if f.get("name") == "qkdnet.type").get("showname", "")
            names[showname.split(": ", 1)[1].split(" (")[0]] += 1
        seen += names
    # What this run must contain: a whole link block, the hub's messages, streams.
    want = {"HELLO", "HELLO_ACK", "CLOSE",
            "BLOCK_START", "DETECTIONS", "SIFT", "ESTIMATE", "ESTIMATE_RESULT",
            "VERIFY", "PA", "BLOCK_DONE", "CONFIRM",
            "REGISTER", "REGISTER_ACK", "OPEN_CHANNEL", "CHANNEL_CLOSE", "DATA",
            "DELIVERY_ACK", "DELIVERY_NACK", "KEY_RELAY_REQUEST", "KEY_RELAY",
            "STATUS_REQUEST", "STATUS", "STREAM_NONCE", "STREAM_DATA", "STREAM_EOF"}
    assert want <= set(seen), sorted(want - set(seen))
    # Alice picks the reconciliation per block (LDPC or Cascade, ESTIMATE_RESULT says).
    assert "LDPC_SYNDROME" in seen or {"PARITY_REQUEST", "PARITY_REPLY"} <= set(seen)
    print(f"frame types seen: {dict(sorted(seen.items()))}")
