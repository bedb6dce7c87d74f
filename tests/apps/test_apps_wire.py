"""The fast frame codec and the scapy definitions agree byte for byte."""

from __future__ import annotations

from qkdnet.apps import wire
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
