"""The fast frame codec and the scapy definitions agree byte for byte."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from qkdnet.apps import wire
from qkdnet.errors import ErrorCode, RemoteProtocolError
from qkdnet.wire import QkdHeader

GOLDEN = bytes.fromhex(
    "00000046" "01" "60" "00" "00" "00000005" "0000000000000002"
    "0000000000000007" "00000040"
    "0001" "0000000000000007" "00000040" "00000140"
    "6162636465666768"
) + b"T" * 16


def test_codec_builds_the_golden_frame() -> None:
    frame = wire.encode_frame(wire.AppMsgType.STREAM_DATA, 5, 2,
                              [wire.KeyRef(7, 64, 320)], b"abcdefgh") + b"T" * 16
    assert frame == GOLDEN


def test_scapy_builds_and_dissects_the_golden_frame() -> None:
    pkt = QkdHeader(type=0x60, session=5, seq=2, akey_block=7, akey_offset=64, tag=b"T" * 16) / \
        wire.StreamData(refs=[wire.StreamKeyRef(block=7, offset=64, n_bits=320)],
                        ciphertext=b"abcdefgh")
    assert bytes(pkt) == GOLDEN
    back = QkdHeader(GOLDEN)
    body = back[wire.StreamData]
    assert (back.session, back.seq, body.n_refs) == (5, 2, 1)
    assert (body.refs[0].block, body.refs[0].offset, body.refs[0].n_bits) == (7, 64, 320)
    assert body.ciphertext == b"abcdefgh"


def test_codec_decodes_what_scapy_builds_for_eof() -> None:
    pkt = QkdHeader(type=0x61, session=1, seq=9) / wire.StreamEof(
        refs=[wire.StreamKeyRef(block=3, offset=0, n_bits=128),
              wire.StreamKeyRef(block=4, offset=8, n_bits=128)])
    raw = bytes(pkt)
    head = wire.decode_header(raw)
    refs, payload = wire.decode_body(raw)
    assert (head.type, head.session, head.seq) == (0x61, 1, 9)
    assert refs == [wire.KeyRef(3, 0, 128), wire.KeyRef(4, 8, 128)]
    assert bytes(payload) == b""
    assert wire.peek_length(raw) == len(raw)


NONCE_GOLDEN = bytes.fromhex(
    "0000003c" "01" "64" "00" "00" "000005ec" "0000000000000000"
    "0000000000000000" "00000000"
    "000102030405060708090a0b0c0d0e0f"
) + bytes(16)


def test_nonce_frame_golden_bytes_both_ways() -> None:
    nonce = bytes(range(16))
    assert wire.encode_nonce_frame(0x5EC, nonce) == NONCE_GOLDEN
    assert len(NONCE_GOLDEN) == wire.NONCE_FRAME_SIZE == 64
    pkt = QkdHeader(type=0x64, session=0x5EC) / wire.StreamNonce(nonce=nonce)
    assert bytes(pkt) == NONCE_GOLDEN
    back = QkdHeader(NONCE_GOLDEN)
    assert (back.type, back.session, back.seq, back.tag) == (0x64, 0x5EC, 0, bytes(16))
    assert back[wire.StreamNonce].nonce == nonce
    assert wire.decode_nonce_frame(NONCE_GOLDEN, 0x5EC) == nonce


@pytest.mark.parametrize("index, value, code", [
    (3, 0x3D, ErrorCode.MALFORMED_FRAME),           # length 61
    (4, 2, ErrorCode.UNSUPPORTED_VERSION),          # version
    (5, 0x60, ErrorCode.PROTOCOL_VIOLATION),        # a data frame's type
    (11, 0xED, ErrorCode.PROTOCOL_VIOLATION),       # another session
    (19, 1, ErrorCode.MALFORMED_FRAME),             # seq 1
    (6, 1, ErrorCode.MALFORMED_FRAME),              # flags
    (7, 1, ErrorCode.MALFORMED_FRAME),              # reserved
    (27, 1, ErrorCode.MALFORMED_FRAME),             # akey_block
    (63, 1, ErrorCode.MALFORMED_FRAME),             # tag slot
])
def test_nonce_frame_decoder_refuses_anything_else(index: int, value: int,
                                                   code: ErrorCode) -> None:
    bad = bytearray(NONCE_GOLDEN)
    bad[index] = value
    with pytest.raises(RemoteProtocolError) as info:
        wire.decode_nonce_frame(bad, 0x5EC)
    assert info.value.code == code


LUA = Path(__file__).resolve().parents[2] / "spec" / "wireshark" / "qkdnet.lua"


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
def test_wireshark_dissector_shows_the_stream_nonce(tmp_path: Path) -> None:
    from qkdnet.pcap import PcapRecorder
    from qkdnet.wire import DEFAULT_PORT

    recorder = PcapRecorder(tmp_path / "stream.pcap")
    flow = recorder.flow(("10.1.0.2", 50000), ("10.1.0.1", DEFAULT_PORT), initiator=True)
    flow.sent(NONCE_GOLDEN + GOLDEN)  # the nonce frame and a data frame in one segment
    flow.received(wire.encode_nonce_frame(5, bytes(range(0xA0, 0xB0))))
    recorder.close()
    proc = subprocess.run(["tshark", "-X", f"lua_script:{LUA}", "-r",
                           str(tmp_path / "stream.pcap"), "-V"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    if "qkdnet sideband" not in proc.stdout:
        pytest.skip("tshark did not run the Lua dissector (Lua disabled for root?)")
    assert proc.stdout.count("qkdnet sideband, STREAM_NONCE") == 2
    assert "qkdnet sideband, STREAM_DATA" in proc.stdout
    assert "Stream nonce: 000102030405060708090a0b0c0d0e0f" in proc.stdout
    assert "Stream nonce: a0a1a2a3a4a5a6a7a8a9aaabacadaeaf" in proc.stdout
