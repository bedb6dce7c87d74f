"""Hub message bodies: golden bytes both ways, binding to the sideband header, and
validation of counts and lengths."""

from __future__ import annotations

import pytest

from qkdnet.errors import ErrorCode, RemoteProtocolError
from qkdnet.hub import wire as w
from qkdnet.wire import QkdHeader, body_class_for

DATA_HEX = (
    "05" "616c696365"            # src "alice"
    "03" "626f62"                # dst "bob"
    "04" "63686174"              # service "chat"
    "00000003"                   # channel id 3
    "00"                         # end: from the opener
    "0000000000000007"           # msg seq 7
    "0001"                       # one key segment
    "0000000000000001" "00000000" "00000018"   # block 1, offset 0, 24 bits
    "00000003" "616263"          # ciphertext "abc"
)


def _data(**kw: object) -> w.HubData:
    fields: dict[str, object] = dict(
        src=b"alice", dst=b"bob", service=b"chat", channel_id=3, end=0, msg_seq=7,
        segments=[w.KeySegmentField(block_id=1, offset=0, n_bits=24)], ciphertext=b"abc")
    fields.update(kw)
    return w.HubData(**fields)


def test_data_golden_bytes_both_ways() -> None:
    assert bytes(_data()).hex() == DATA_HEX
    pkt = w.parse(w.HubMsg.DATA, bytes.fromhex(DATA_HEX))
    assert (pkt.src, pkt.dst, pkt.service) == (b"alice", b"bob", b"chat")
    assert (pkt.channel_id, pkt.end, pkt.msg_seq) == (3, 0, 7)
    assert [(s.block_id, s.offset, s.n_bits) for s in pkt.segments] == [(1, 0, 24)]
    assert pkt.ciphertext == b"abc"


def test_nack_golden_bytes() -> None:
    nack = w.HubDeliveryNack(kind=0, src=b"hub", dst=b"bob", channel_id=9, end=1, msg_seq=2,
                             reason=int(w.HubReason.KEY_EXHAUSTED), bits_needed=64,
                             bits_available=8, hop=b"hub->bob", detail=b"x")
    raw = bytes(nack)
    assert raw.hex() == ("00" "03687562" "03626f62" "00000009" "01" "0000000000000002"
                         "0008" "00000040" "00000008" "08" + b"hub->bob".hex()
                         + "0001" "78")
    back = w.parse(w.HubMsg.DELIVERY_NACK, raw)
    assert back.reason == w.HubReason.KEY_EXHAUSTED and back.hop == b"hub->bob"


def test_every_type_is_bound_to_the_header_and_round_trips() -> None:
    samples = {
        w.HubMsg.REGISTER: w.HubRegister(spoke=b"alice"),
        w.HubMsg.REGISTER_ACK: w.HubRegisterAck(status=0, spoke=b"alice", hub=b"hub"),
        w.HubMsg.OPEN_CHANNEL: w.HubOpenChannel(src=b"a", dst=b"b", service=b"s",
                                                channel_id=1),
        w.HubMsg.CHANNEL_CLOSE: w.HubChannelClose(src=b"a", dst=b"b", channel_id=1),
        w.HubMsg.DATA: _data(),
        w.HubMsg.DELIVERY_ACK: w.HubDeliveryAck(src=b"b", dst=b"a", channel_id=1),
        w.HubMsg.DELIVERY_NACK: w.HubDeliveryNack(src=b"hub", dst=b"a", hop=b"h"),
        w.HubMsg.KEY_RELAY_REQUEST: w.HubKeyRelayRequest(src=b"a", peer=b"b", n_bits=64),
        w.HubMsg.KEY_RELAY: w.HubKeyRelay(
            peer=b"a", role=1, n_bits=16, masked=b"\x01\x02",
            segments=[w.KeySegmentField(block_id=5, offset=8, n_bits=16)]),
        w.HubMsg.STATUS_REQUEST: w.HubStatusRequest(request_id=4),
        w.HubMsg.STATUS: w.HubStatus(request_id=4, text=b"{}"),
    }
    assert set(samples) == set(w.HubMsg)
    for msg_type, body in samples.items():
        assert body_class_for(int(msg_type)) is type(body)
        raw = bytes(body)
        assert bytes(w.parse(int(msg_type), raw)) == raw
        frame = QkdHeader(type=int(msg_type)) / body
        again = QkdHeader(bytes(frame))
        assert isinstance(again.payload, type(body))
        assert bytes(again.payload) == raw


@pytest.mark.parametrize("mutate, why", [
    (lambda b: b[:-1], "short ciphertext"),
    (lambda b: b + b"\x00", "trailing byte"),
    (lambda b: b[:3], "cut inside a name"),
    (lambda b: b"\x00" + b[1:], "empty src name"),
])
def test_malformed_data_is_a_remote_protocol_error(mutate, why) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RemoteProtocolError) as info:
        w.parse(w.HubMsg.DATA, mutate(bytes.fromhex(DATA_HEX)))
    assert info.value.code == ErrorCode.MALFORMED_FRAME, why


def test_key_references_must_cover_the_ciphertext_exactly() -> None:
    short = _data(segments=[w.KeySegmentField(block_id=1, offset=0, n_bits=16)])
    with pytest.raises(RemoteProtocolError, match="cover 16 bits"):
        w.parse(w.HubMsg.DATA, bytes(short))
    empty_seg = _data(segments=[w.KeySegmentField(block_id=1, offset=0, n_bits=24),
                                w.KeySegmentField(block_id=2, offset=0, n_bits=0)])
    with pytest.raises(RemoteProtocolError, match="empty key segment"):
        w.parse(w.HubMsg.DATA, bytes(empty_seg))
    lying_count = bytearray(bytes(_data()))
    lying_count[28:30] = (2).to_bytes(2, "big")  # nseg says 2, one present
    with pytest.raises(RemoteProtocolError):
        w.parse(w.HubMsg.DATA, bytes(lying_count))


def test_relay_masked_length_and_request_bounds() -> None:
    bad = w.HubKeyRelay(peer=b"a", role=1, n_bits=16, masked=b"\x01",
                        segments=[w.KeySegmentField(block_id=5, offset=0, n_bits=16)])
    with pytest.raises(RemoteProtocolError, match="masked key"):
        w.parse(w.HubMsg.KEY_RELAY, bytes(bad))
    with pytest.raises(RemoteProtocolError, match="multiple of 8"):
        w.parse(w.HubMsg.KEY_RELAY_REQUEST,
                bytes(w.HubKeyRelayRequest(src=b"a", peer=b"b", n_bits=12)))


def test_unknown_type_and_bad_names() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        w.parse(0x5F, b"")
    assert info.value.code == ErrorCode.UNKNOWN_MESSAGE_TYPE
    with pytest.raises(RemoteProtocolError, match="control characters"):
        w.parse(w.HubMsg.REGISTER, bytes(w.HubRegister(spoke=b"a\nb")))
    with pytest.raises(RemoteProtocolError, match="UTF-8"):
        w.parse(w.HubMsg.REGISTER, bytes(w.HubRegister(spoke=b"\xff\xfe")))


def test_summaries_show_no_payload_bytes() -> None:
    secret_looking = b"PLAINTEXT-LOOKING"
    pkt = _data(ciphertext=secret_looking,
                segments=[w.KeySegmentField(block_id=1, offset=0,
                                            n_bits=8 * len(secret_looking))])
    assert secret_looking.decode() not in pkt.summary()
