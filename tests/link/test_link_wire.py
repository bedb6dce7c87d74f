"""Link message bodies: golden bytes both ways, codec round trips, and input validation."""

from __future__ import annotations

import numpy as np
import pytest

from qkdnet.errors import ErrorCode, RemoteProtocolError
from qkdnet.link import wire as w
from qkdnet.wire import QkdHeader, body_class_for


def test_every_link_type_is_bound_to_the_header() -> None:
    for t, cls in w.BODIES.items():
        assert body_class_for(int(t)) is cls
        assert 0x10 <= int(t) <= 0x3F


def test_block_start_golden_bytes_both_ways() -> None:
    body = w.encode_block_start(5, 1000, 20_000_000, 2, 1e-10, 1e-15, 0.11)
    golden = bytes.fromhex(
        "00000005" "00000000000003e8" "0000000001312d00" "02" "00"
        "3ddb7cdfd9d7bdbb" "3cd203af9ee75616" "3fbc28f5c28f5c29")
    assert bytes(body) == golden
    back = w.parse_body(0x10, golden)
    assert (back.block, back.start_slot, back.n_slots, back.n_intensities) == \
        (5, 1000, 20_000_000, 2)
    assert back.eps_sec == 1e-10 and back.eps_cor == 1e-15


def test_detections_golden_bytes_and_header_dissection() -> None:
    [body] = w.encode_detections(3, np.array([2, 5, 300]), np.array([0, 1, 1]))
    golden = bytes.fromhex(
        "00000003" "00000003" "00000000" "00000003" "0000000000000002" "02"
        "00000004" "0003" "0127" "00000001" "60")
    assert bytes(body) == golden
    # Inside a whole frame the header dissects to the same body class.
    frame = bytes(QkdHeader(type=0x11, session=7) / body)
    pkt = QkdHeader(frame)
    assert isinstance(pkt.payload, w.DetectionsMsg)
    offsets, bases = w.decode_detections(pkt.payload, 1000, 0, -1)
    assert offsets.tolist() == [2, 5, 300]
    assert bases.tolist() == [0, 1, 1]


def test_detections_chunks_round_trip() -> None:
    rng = np.random.default_rng(1)
    offsets = np.sort(rng.choice(10_000_000, 150_000, replace=False)).astype(np.uint64)
    bases = rng.integers(0, 2, offsets.shape[0]).astype(np.uint8)
    bodies = w.encode_detections(9, offsets, bases)
    assert len(bodies) == 3
    got_o, got_b, received, last = [], [], 0, -1
    for b in bodies:
        pkt = w.parse_body(0x11, bytes(b))
        o, s = w.decode_detections(pkt, 10_000_000, received, last)
        received += len(o)
        last = int(o[-1])
        got_o.append(o)
        got_b.append(s)
    assert np.array_equal(np.concatenate(got_o), offsets)
    assert np.array_equal(np.concatenate(got_b), bases)


def test_sift_round_trip_with_two_bit_intensities() -> None:
    keep = np.array([1, 0, 1, 1, 0, 1, 1], dtype=bool)
    intens = np.array([0, 2, 1, 0, 1], dtype=np.uint8)
    pkt = w.parse_body(0x12, bytes(w.encode_sift(1, keep, intens)))
    k, i = w.decode_sift(pkt, 7, 3)
    assert k.tolist() == keep.tolist() and i.tolist() == intens.tolist()
    with pytest.raises(RemoteProtocolError, match="intensity index"):
        w.decode_sift(pkt, 7, 2)


@pytest.mark.parametrize("mutate, match", [
    (lambda p: setattr(p, "n_clicks", 9), "keep mask for 9 clicks"),
    (lambda p: setattr(p, "n_kept", 4), "n_kept"),
    (lambda p: setattr(p, "intensities", b"\x00"), "two-bit values"),
    (lambda p: setattr(p, "keep", b"\xff\xff"), "bytes for 7 bits"),
    (lambda p: setattr(p, "keep", b"\xb7"), "pad bits"),
])
def test_sift_contradictions_are_remote_protocol_errors(mutate, match) -> None:
    body = w.encode_sift(1, np.array([1, 0, 1, 1, 0, 1, 1], dtype=bool),
                         np.array([0, 2, 1, 0, 1], dtype=np.uint8))
    mutate(body)
    body.keep_len = body.intens_len = None
    with pytest.raises(RemoteProtocolError, match=match):
        w.decode_sift(w.parse_body(0x12, bytes(body)), 7, 3)


@pytest.mark.parametrize("offsets, n_slots, match", [
    ([5, 5], 100, "strictly increasing"),
    ([5, 100], 100, "out of range"),
    ([200], 100, "out of range"),
])
def test_detections_indices_out_of_range(offsets, n_slots, match) -> None:
    [body] = w.encode_detections(0, np.array(offsets, dtype=np.uint64) if offsets[0] <= offsets[-1]
                                 else np.array(offsets), np.zeros(len(offsets)))
    if offsets == [5, 5]:   # the encoder refuses nothing; forge a zero gap by hand
        body.deltas = b"\x00"
        body.width = 1
        body.deltas_len = None
    with pytest.raises(RemoteProtocolError, match=match):
        w.decode_detections(w.parse_body(0x11, bytes(body)), n_slots, 0, -1)


def test_detections_chunk_order_and_sizes_are_checked() -> None:
    [body] = w.encode_detections(0, np.array([1, 2, 3]), np.zeros(3))
    pkt = w.parse_body(0x11, bytes(body))
    with pytest.raises(RemoteProtocolError, match="expected 3"):
        w.decode_detections(pkt, 100, 3, 50)
    body.bases = b""
    body.bases_len = None
    with pytest.raises(RemoteProtocolError, match="bytes for 3 bits"):
        w.decode_detections(w.parse_body(0x11, bytes(body)), 100, 0, -1)
    body = w.encode_detections(0, np.array([1, 2, 3]), np.zeros(3))[0]
    body.total = w.MAX_CLICKS + 1
    with pytest.raises(RemoteProtocolError, match="exceeds"):
        w.decode_detections(w.parse_body(0x11, bytes(body)), 1 << 30, 0, -1)


def test_parity_request_and_reply_validation() -> None:
    body = w.encode_parity_request(2, 7, np.array([0, 1]), np.array([0, 10]), np.array([8, 20]))
    pkt = w.parse_body(0x15, bytes(body))
    p, s, e = w.decode_parity_request(pkt, 20, 2)
    assert p.tolist() == [0, 1] and s.tolist() == [0, 10] and e.tolist() == [8, 20]
    with pytest.raises(RemoteProtocolError, match="out of the key"):
        w.decode_parity_request(pkt, 19, 2)
    with pytest.raises(RemoteProtocolError, match="pass index"):
        w.decode_parity_request(pkt, 20, 1)
    body.ends = body.ends[:4]
    body.ends_len = None
    with pytest.raises(RemoteProtocolError, match="list lengths"):
        w.decode_parity_request(w.parse_body(0x15, bytes(body)), 20, 2)

    reply = w.parse_body(0x16, bytes(w.encode_parity_reply(2, 7, np.array([1, 0, 1]))))
    assert w.decode_parity_reply(reply, 7, 3).tolist() == [1, 0, 1]
    with pytest.raises(RemoteProtocolError, match="3 parities for 4 ranges"):
        w.decode_parity_reply(reply, 7, 4)
    with pytest.raises(RemoteProtocolError, match="step"):
        w.decode_parity_reply(reply, 8, 3)


def test_pa_and_verify_validation() -> None:
    seed = np.ones(100 + 40 - 1, dtype=np.uint8)
    pkt = w.parse_body(0x18, bytes(w.encode_pa(1, 100, 40, 10, 10, seed)))
    ell, a, b, s = w.decode_pa(pkt, 100)
    assert (ell, a, b, len(s)) == (40, 10, 10, 139)
    with pytest.raises(RemoteProtocolError, match="input length"):
        w.decode_pa(pkt, 101)
    bad = w.encode_pa(1, 100, 40, 30, 30, seed)
    with pytest.raises(RemoteProtocolError, match="auth top-up"):
        w.decode_pa(w.parse_body(0x18, bytes(bad)), 100)
    v = w.parse_body(0x17, bytes(w.encode_verify(1, np.array([3, 1]), 64, b"s" * 16, b"t" * 8)))
    m, sd, tg = w.decode_verify(v, np.array([10, 10]), 64)
    assert m.tolist() == [3, 1] and sd == b"s" * 16 and tg == b"t" * 8
    with pytest.raises(RemoteProtocolError, match="error counts"):
        w.decode_verify(v, np.array([2, 10]), 64)
    with pytest.raises(RemoteProtocolError, match="tag of 64 bits"):
        w.decode_verify(v, np.array([10, 10]), 128)


def test_truncated_and_trailing_bytes_are_malformed() -> None:
    raw = bytes(w.encode_estimate(4, np.array([1, 0, 1, 1])))
    for cut in range(len(raw)):
        with pytest.raises(RemoteProtocolError) as info:
            w.parse_body(0x13, raw[:cut])
        assert info.value.code in (ErrorCode.MALFORMED_FRAME, ErrorCode.PROTOCOL_VIOLATION)
    with pytest.raises(RemoteProtocolError, match="trailing"):
        w.parse_body(0x13, raw + b"\x00")
    with pytest.raises(RemoteProtocolError) as info:
        w.parse_body(0x3E, raw)
    assert info.value.code is ErrorCode.UNKNOWN_MESSAGE_TYPE


def test_block_start_limits() -> None:
    ok = w.encode_block_start(0, 0, 1000, 3, 1e-10, 1e-15, 0.11)
    w.check_block_start(ok)
    for field, value in [("n_slots", 0), ("n_intensities", 4), ("eps_sec", 0.0),
                         ("eps_cor", 1.5), ("qber_max", 0.9)]:
        bad = w.encode_block_start(0, 0, 1000, 3, 1e-10, 1e-15, 0.11)
        setattr(bad, field, value)
        with pytest.raises(RemoteProtocolError):
            w.check_block_start(w.parse_body(0x10, bytes(bad)))
