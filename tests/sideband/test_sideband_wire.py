"""Frame layout: golden vectors both ways, spec tables vs scapy, fast codec, reassembly."""

from __future__ import annotations

import contextlib
import importlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.poly1305 import Poly1305
from scapy.fields import (
    FieldLenField,
    FieldListField,
    FlagsField,
    PacketField,
    PacketListField,
    StrField,
    StrFixedLenField,
    StrLenField,
)
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw, fuzz
from scapy.sendrecv import sniff
from scapy.sessions import TCPSession
from scapy.utils import wrpcap

from qkdnet import wire
from qkdnet.auth import (
    DIR_INITIATOR_TO_RESPONDER,
    DIR_RESPONDER_TO_INITIATOR,
    FrameAuthenticator,
    MemoryTagKeys,
    connection_binding,
)
from qkdnet.sideband import ConnState, SidebandConnection
from qkdnet.wire import (
    DEFAULT_PORT,
    HEADER_LEN,
    Hello,
    MsgType,
    Ping,
    QkdHeader,
    bound_types,
    pack_header,
    unpack_header,
)

ROOT = Path(__file__).resolve().parents[2]
VECTORS = sorted((ROOT / "spec" / "vectors").glob("*.json"))
SPEC = (ROOT / "spec" / "protocol.md").read_text()

# Other layers bind their bodies in their own wire modules; check them too when present.
for _mod in ("qkdnet.link.wire", "qkdnet.hub.wire", "qkdnet.apps.wire"):
    with contextlib.suppress(ImportError):
        importlib.import_module(_mod)


def _body_value(pkt: Packet, name: str) -> Any:
    v = pkt.getfieldval(name)
    fld = next(f for f in pkt.fields_desc if f.name == name)
    if isinstance(fld, StrFixedLenField) and isinstance(v, bytes):
        return v.hex()  # fixed-size binary fields (nonces) are written in hex
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, list):
        return [int(x) for x in v]
    return int(v)


def _as_field(cls: type[Packet], name: str, value: Any) -> Any:
    fld = next(f for f in cls.fields_desc if f.name == name)
    if isinstance(fld, StrFixedLenField) and isinstance(value, str):
        return bytes.fromhex(value)
    if isinstance(fld, StrLenField) and isinstance(value, str):
        return value.encode()
    return value


def test_vectors_exist_for_every_common_type() -> None:
    types = {json.loads(p.read_text())["type"] for p in VECTORS}
    assert {int(t) for t in MsgType} <= types


@pytest.mark.parametrize("path", VECTORS, ids=[p.stem for p in VECTORS])
def test_vector_bytes_to_fields(path: Path) -> None:
    vec = json.loads(path.read_text())
    raw = bytes.fromhex(vec["hex"])
    pkt = QkdHeader(raw)
    for name, value in vec["header"].items():
        got = pkt.getfieldval(name)
        assert (got.hex() if isinstance(got, bytes) else int(got)) == value, name
    body = pkt.payload
    assert type(body).__name__ == vec["body_class"]
    assert {n: _body_value(body, n) for n in body.fields} == vec["body"]
    # The tag is a real Poly1305 tag under the vector's keys, over binding ‖ frame.
    key = bytes.fromhex(vec["auth"]["r"]) + bytes.fromhex(vec["auth"]["s"])
    binding = bytes.fromhex(vec["auth"].get("binding", ""))
    assert Poly1305.generate_tag(key, binding + raw[:-16]) == raw[-16:]
    if "connection" in vec:
        conn = vec["connection"]
        direction = (DIR_INITIATOR_TO_RESPONDER if conn["direction"] == "initiator->responder"
                     else DIR_RESPONDER_TO_INITIATOR)
        expect = b"" if vec["type"] == MsgType.HELLO else connection_binding(
            direction, bytes.fromhex(conn["initiator_nonce"]),
            bytes.fromhex(conn["responder_nonce"]))
        assert binding == expect


def _vector(name: str) -> dict[str, Any]:
    return dict(json.loads((ROOT / "spec" / "vectors" / f"{name}.json").read_text()))


def test_vectors_are_what_a_connection_sends_and_accepts() -> None:
    """A real SidebandConnection with the vectors' keys and nonces produces the
    initiator's vectors byte for byte and accepts the responder's."""
    hello, ack = _vector("hello"), _vector("hello_ack")
    r, s = bytes.fromhex(hello["auth"]["r"]), bytes.fromhex(hello["auth"]["s"])
    # Every tag key of these pools is ``s``, at the vectors' block ids.
    keys = MemoryTagKeys(r, r, s * 128, s * 128, tx_block=hello["header"]["akey_block"],
                         rx_block=ack["header"]["akey_block"])
    conn = SidebandConnection("alice", FrameAuthenticator(keys),
                              nonce=bytes.fromhex(hello["connection"]["initiator_nonce"]))
    sent = conn.send(Hello(node_name=b"alice", role=1, capabilities=5))
    assert sent.hex() == hello["hex"]
    (ev,) = conn.receive_data(bytes.fromhex(ack["hex"]))
    assert ev.type == MsgType.HELLO_ACK and conn.state is ConnState.OPEN
    assert conn.peer_nonce == bytes.fromhex(ack["connection"]["responder_nonce"])
    assert conn.send(Ping(nonce=0x0123456789ABCDEF)).hex() == _vector("ping")["hex"]
    (pong,) = conn.receive_data(bytes.fromhex(_vector("pong")["hex"]))
    assert pong.type == MsgType.PONG and pong.session == 42


@pytest.mark.parametrize("path", VECTORS, ids=[p.stem for p in VECTORS])
def test_vector_fields_to_bytes(path: Path) -> None:
    vec = json.loads(path.read_text())
    cls = wire.body_class_for(vec["type"])
    assert cls is not None
    header = {k: v for k, v in vec["header"].items() if k not in ("length",)}
    header["tag"] = bytes.fromhex(header["tag"])
    computed = {f.name for f in cls.fields_desc if isinstance(f, FieldLenField)}
    body_fields = {k: _as_field(cls, k, v) for k, v in vec["body"].items()
                   if k not in computed}  # length/count fields are filled in at build time
    pkt = QkdHeader(**header) / cls(**body_fields)
    assert bytes(pkt).hex() == vec["hex"]
    # And the fast codec writes the same header.
    hdr = vec["header"]
    fast = pack_header(hdr["length"] - 44, hdr["type"], session=hdr["session"], seq=hdr["seq"],
                       flags=hdr["flags"], akey_block=hdr["akey_block"],
                       akey_offset=hdr["akey_offset"])
    assert fast.hex() == vec["hex"][:2 * HEADER_LEN]


def _spec_tables() -> dict[str, list[list[str]]]:
    tables: dict[str, list[list[str]]] = {}
    for m in re.finditer(r"<!-- layout: (\w+) -->\n((?:\|.*\n)+)", SPEC):
        rows = [[c.strip() for c in line.strip().strip("|").split("|")]
                for line in m.group(2).strip().splitlines()[2:]]
        tables[m.group(1)] = rows
    return tables


def _field_size(fld: Any) -> str:
    """Bytes a field takes on the wire as the spec tables write it ("var" if variable)."""
    if isinstance(fld, StrFixedLenField):
        return str(fld.length_from(None))
    if isinstance(fld, FlagsField):
        return str(fld.size // 8)
    if isinstance(fld, StrField | FieldListField | PacketListField | PacketField):
        return "var"
    return str(int(fld.sz))


def test_spec_documents_every_common_type() -> None:
    tables = _spec_tables()
    for msg_type, cls in bound_types().items():
        if msg_type <= 0x0F:
            assert cls.__name__ in tables, f"no byte table for {cls.__name__}"


def test_spec_documents_every_layer_type() -> None:
    """Link/hub/apps bodies need their own `<!-- layout: Class -->` table (spec §7-9)."""
    tables = _spec_tables()
    missing = sorted(f"0x{t:02x} {cls.__module__}.{cls.__name__}"
                     for t, cls in bound_types().items()
                     if t > 0x0F and cls.__module__.startswith("qkdnet.")  # not test stand-ins
                     and cls.__name__ not in tables)
    assert not missing, "spec/protocol.md lacks byte tables for: " + ", ".join(missing)


def test_spec_tables_match_scapy_fields() -> None:
    tables = _spec_tables()
    assert "QkdHeader" in tables and "Hello" in tables
    classes = {cls.__name__: cls for cls in bound_types().values()
               if cls.__module__.startswith("qkdnet.")}
    classes["QkdHeader"] = QkdHeader
    for name, rows in tables.items():
        cls = classes[name]
        want = [(f.name, _field_size(f)) for f in cls.fields_desc]
        got = [(row[2], row[1]) for row in rows if not row[2].startswith("(")]  # "(empty)"
        assert got == want, f"spec table for {name} disagrees with {cls.__module__}.{name}"


def test_spec_header_offsets_add_up() -> None:
    rows = _spec_tables()["QkdHeader"]
    offset = 0
    for row in rows[:-1]:  # the tag row is at the frame's end
        assert int(row[0]) == offset, row
        offset += int(row[1])
    assert offset == HEADER_LEN


def test_spec_error_codes_match() -> None:
    block = SPEC.split("<!-- error-codes -->\n", 1)[1].split("\n\n", 1)[0]
    rows = re.findall(r"^\| (\d+) \| (\w+) \|", block, re.M)
    from qkdnet.errors import ErrorCode
    assert [(int(c), n) for c, n in rows] == [(int(c), c.name) for c in ErrorCode]


def _sample(cls: type[Packet]) -> Packet:
    return cls()


@pytest.mark.parametrize("msg_type", sorted(bound_types()), ids=lambda t: f"0x{t:02x}")
def test_fast_codec_agrees_with_scapy_for_every_type(msg_type: int) -> None:
    cls = bound_types()[msg_type]
    for session, seq, flags, block, offset in [(0, 0, 0, 0, 0),
                                               (0xFFFFFFFF, 2**64 - 1, 1, 2**64 - 1, 2**32 - 1),
                                               (7, 12345, 0, 0xFFFFFFFF00000001, 384)]:
        body = bytes(_sample(cls))
        pkt = QkdHeader(type=msg_type, session=session, seq=seq, flags=flags,
                        akey_block=block, akey_offset=offset, tag=b"\xab" * 16) / cls(body)
        raw = bytes(pkt)
        fast = pack_header(len(body), msg_type, session=session, seq=seq, flags=flags,
                           akey_block=block, akey_offset=offset)
        assert raw == fast + body + b"\xab" * 16
        h = unpack_header(raw)
        d = QkdHeader(raw)
        assert (h.length, h.type, h.session, h.seq, h.flags, h.akey_block, h.akey_offset) == (
            d.length, d.type, d.session, d.seq, int(d.flags), d.akey_block, d.akey_offset)
        assert d.tag == b"\xab" * 16


def test_unknown_type_body_is_raw_and_tag_still_found() -> None:
    raw = pack_header(3, 0x0F, seq=4) + b"xyz" + b"T" * 16
    pkt = QkdHeader(raw)
    assert pkt.tag == b"T" * 16
    assert isinstance(pkt.payload, Raw) and pkt.payload.load == b"xyz"
    assert bytes(pkt) == raw


def test_truncated_and_garbage_input_dissects_without_crashing() -> None:
    full = bytes(QkdHeader(type=MsgType.PING, tag=b"t" * 16) / Ping(nonce=5))
    for cut in range(len(full)):
        QkdHeader(full[:cut])  # no exception
    QkdHeader(b"\x00\x00\x00\x02" + b"\xff" * 60)
    for _ in range(50):
        pkt = fuzz(QkdHeader(length=60) / Hello(name_len=3))
        QkdHeader(bytes(pkt))


def _flow(payloads: list[bytes], port: int = DEFAULT_PORT) -> list[Packet]:
    pkts = [Ether() / IP(src="10.0.0.1", dst="10.0.0.2") /
            TCP(sport=40000, dport=port, flags="S", seq=99)]
    seq = 100
    for p in payloads:
        pkts.append(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") /
                    TCP(sport=40000, dport=port, flags="PA", seq=seq) / Raw(p))
        seq += len(p)
    return pkts


def _frames(path: Path) -> list[Packet]:
    out = []
    for pkt in sniff(offline=str(path), session=TCPSession):
        i = 1
        while (layer := pkt.getlayer(QkdHeader, nb=i)) is not None:
            out.append(layer)
            i += 1
    return out


def test_tcp_reassemble_frame_spanning_many_segments(tmp_path: Path) -> None:
    frame = bytes(QkdHeader(type=MsgType.HELLO, seq=0, tag=b"q" * 16) /
                  Hello(node_name=b"x" * 60, role=1))
    chunks = [frame[i:i + 7] for i in range(0, len(frame), 7)]
    path = tmp_path / "split.pcap"
    wrpcap(str(path), _flow(chunks))
    frames = _frames(path)
    assert len(frames) == 1
    assert bytes(frames[0].payload.node_name) == b"x" * 60 and frames[0].tag == b"q" * 16


def test_tcp_reassemble_several_frames_in_one_segment(tmp_path: Path) -> None:
    frames_in = [bytes(QkdHeader(type=MsgType.PING, seq=i, tag=bytes([i]) * 16) /
                       Ping(nonce=i)) for i in range(4)]
    # 4 frames: two in the first segment, the third split across segments 1-2 with the 4th.
    blob = b"".join(frames_in)
    cut = len(frames_in[0]) * 2 + 10
    path = tmp_path / "coalesced.pcap"
    wrpcap(str(path), _flow([blob[:cut], blob[cut:]]))
    got = _frames(path)
    assert b"".join(bytes(f)[:4 + int(f.length)] for f in got) == blob
    assert [int(f.seq) for f in got] == [0, 1, 2, 3]
    assert [int(f.payload.nonce) for f in got] == [0, 1, 2, 3]
    assert [f.tag for f in got] == [bytes([i]) * 16 for i in range(4)]


def test_bind_port_makes_other_ports_decodable(tmp_path: Path) -> None:
    frame = bytes(QkdHeader(type=MsgType.PING, tag=b"z" * 16) / Ping(nonce=9))
    path = tmp_path / "p.pcap"
    wrpcap(str(path), _flow([frame], port=45123))
    assert _frames(path) == []
    wire.bind_port(45123)
    assert [int(f.payload.nonce) for f in _frames(path)] == [9]


def test_tcp_reassemble_gives_up_on_a_garbage_length(tmp_path: Path) -> None:
    from qkdnet.pcap import summarize

    good = bytes(QkdHeader(type=MsgType.PING, tag=b"g" * 16) / Ping(nonce=7))
    garbage = b"\x00\x00\x00\x05" + b"\xee" * 30
    path = tmp_path / "desync.pcap"
    wrpcap(str(path), _flow([good + garbage, good]))
    # The garbage is given up on; the stream resynchronises at the next segment.
    assert [int(f.payload.nonce) for f in _frames(path)] == [7, 7]
    s = summarize(path, detect=False)
    assert s["per_type"] == {"PING": {"frames": 2, "bytes": 2 * len(good)}}
    assert s["undecodable_bytes"] == len(garbage)
