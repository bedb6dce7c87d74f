"""The fast codec (qkdnet.fastcodec) gives exactly scapy's bytes and fields.

Every hub body is built and dissected with the fast path and with scapy's own code
(``fastcodec.enabled = False``) from random field values, random explicit length
fields, truncated and extended inputs; bytes, fields, leftovers and errors must agree.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
from scapy.fields import FieldLenField, PacketListField, StrLenField
from scapy.packet import Packet

from qkdnet import fastcodec
from qkdnet.hub import wire as w

BODY_CLASSES = sorted(set(w.BODIES.values()), key=lambda c: c.__name__)


def random_packet(cls: type[Packet], rng: random.Random, *, explicit_lengths: bool
                  ) -> Packet:
    """A packet of ``cls`` with random values in every field."""
    values: dict[str, Any] = {}
    for f in cls.fields_desc:
        if isinstance(f, FieldLenField):
            if explicit_lengths and rng.random() < 0.5:
                values[f.name] = rng.randrange(0, 6)  # may disagree with what it measures
            continue
        if isinstance(f, StrLenField):
            values[f.name] = rng.randbytes(rng.randrange(0, 40))
        elif isinstance(f, PacketListField):
            values[f.name] = [w.KeySegmentField(block_id=rng.getrandbits(64),
                                                offset=rng.getrandbits(32),
                                                n_bits=rng.getrandbits(32))
                              for _ in range(rng.randrange(0, 4))]
        else:
            values[f.name] = rng.getrandbits(8 * f.sz)
    return cls(**values)


def generic(fn: Any, *args: Any) -> Any:
    """``fn(*args)`` with the fast path switched off (scapy's own code)."""
    fastcodec.enabled = False
    try:
        return fn(*args)
    finally:
        fastcodec.enabled = True


def view(pkt: Packet) -> Any:
    """A comparable picture of a dissected packet: fields, items and what follows."""
    out: dict[str, Any] = {}
    for f in pkt.fields_desc:
        v = pkt.getfieldval(f.name)
        out[f.name] = [view(x) for x in v] if isinstance(v, list) else v
    return type(pkt).__name__, out, type(pkt.payload).__name__, bytes(pkt.payload)


def outcome(cls: type[Packet], raw: bytes) -> Any:
    try:
        pkt = cls(raw)
        return "ok", view(pkt), bytes(pkt)
    except Exception as err:  # scapy raises assorted errors on garbage
        return "error", type(err).__name__


def cases(seed: int, n: int, *, explicit_lengths: bool = True
          ) -> Iterator[tuple[type[Packet], Packet]]:
    """Random packets of every class; with ``explicit_lengths`` some length fields are
    set by hand (and may disagree with what they measure)."""
    rng = random.Random(seed)
    for _ in range(n):
        for cls in BODY_CLASSES:
            yield cls, random_packet(cls, rng,
                                     explicit_lengths=explicit_lengths and rng.random() < 0.3)


def test_every_hub_body_has_a_fast_layout() -> None:
    for cls in [*BODY_CLASSES, w.KeySegmentField]:
        assert fastcodec.fast_layout(cls), cls.__name__


def test_build_gives_scapys_bytes() -> None:
    for cls, pkt in cases(1, 40):
        fast = bytes(pkt)
        slow = generic(lambda p=pkt: bytes(p.copy()))
        assert fast == slow, cls.__name__


def test_dissect_gives_scapys_fields_and_takes_the_fast_path() -> None:
    for cls, pkt in cases(2, 40, explicit_lengths=False):
        raw = generic(lambda p=pkt: bytes(p.copy()))
        fast = cls(raw)
        # The fast path leaves no raw cache (scapy's own dissector always sets one).
        assert fast.raw_packet_cache is None, cls.__name__
        assert generic(cls, raw).raw_packet_cache is not None
        assert view(fast) == generic(lambda r=raw, c=cls: view(c(r))), cls.__name__
        assert bytes(fast) == raw


def test_truncated_and_extended_input_behaves_as_in_scapy() -> None:
    rng = random.Random(3)
    for cls, pkt in cases(3, 6):
        raw = bytes(pkt)
        variants = [raw[:k] for k in range(len(raw))]
        variants += [raw + rng.randbytes(rng.randrange(1, 20)) for _ in range(3)]
        for data in variants:
            assert outcome(cls, data) == generic(outcome, cls, data), (cls.__name__, data)


def test_values_scapy_would_convert_fall_back_to_scapy() -> None:
    # A str where bytes are stored, and an out-of-range integer: scapy's path decides.
    pkt = w.HubStatus(request_id=1, text=b"x")
    pkt.fields["text"] = "text as str"
    assert bytes(pkt) == generic(lambda: bytes(pkt.copy()))
    too_big = w.HubStatusRequest(request_id=1 << 40)
    with pytest.raises(Exception) as fast_err:
        bytes(too_big)
    with pytest.raises(Exception) as slow_err:
        generic(bytes, too_big.copy())
    assert type(fast_err.value) is type(slow_err.value)


def test_parse_and_check_accept_and_reject_alike() -> None:
    rng = random.Random(4)
    for _ in range(60):
        cls = rng.choice(BODY_CLASSES)
        raw = bytes(random_packet(cls, rng, explicit_lengths=True))
        msg_type = w.TYPE_OF[cls]

        def judged(data: bytes, t: int = msg_type) -> Any:
            try:
                return "ok", view(w.parse(t, data))
            except Exception as err:
                return "error", type(err).__name__, str(err)

        assert judged(raw) == generic(judged, raw)
        cut = raw[:rng.randrange(0, len(raw))]
        assert judged(cut) == generic(judged, cut)


def test_more_list_items_than_scapy_accepts_are_refused_alike() -> None:
    # scapy stops a PacketListField at conf.max_list_count items (MaximumItemsCount);
    # the fast path must not accept (and build) what scapy refuses.
    from scapy.config import conf
    segments = [w.KeySegmentField(block_id=i, offset=0, n_bits=8) for i in range(
        conf.max_list_count + 1)]
    raw = generic(lambda: bytes(w.HubData(src=b"a", dst=b"b", service=b"s",
                                          segments=segments,
                                          ciphertext=bytes(len(segments)))))
    assert outcome(w.HubData, raw) == generic(outcome, w.HubData, raw)
    assert outcome(w.HubData, raw)[0] == "error"
    with pytest.raises(Exception) as err:
        w.parse(w.TYPE_OF[w.HubData], raw)
    assert "cannot dissect" in str(err.value) or "truncated" in str(err.value)
