"""The golden SecureStream transcript (spec/vectors/stream/one_way.json).

Checked three ways: the generator still writes the same file; every tag and
ciphertext in it follows from the spec's formulas alone (Poly1305 over the
receiver's nonce, then the frame; payload XOR pad), without the stream code; and a
receiving core opens the transcript, but not under another nonce.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.poly1305 import Poly1305

from qkdnet.apps import wire
from qkdnet.apps.stream import SecureStreamCore
from qkdnet.errors import ErrorCode, RemoteProtocolError

HERE = Path(__file__).resolve().parents[2] / "spec" / "vectors" / "stream"
VEC: dict[str, Any] = json.loads((HERE / "one_way.json").read_text())


def _hex(i: int) -> bytes:
    return bytes.fromhex(VEC["wire"][i]["hex"])


def test_the_generator_writes_the_committed_file() -> None:
    spec = importlib.util.spec_from_file_location("make_stream_vectors",
                                                  HERE / "make_stream_vectors.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.build() == VEC


def test_tags_and_ciphertext_follow_from_the_formulas() -> None:
    nonce_a, nonce_b = bytes.fromhex(VEC["nonce_a"]), bytes.fromhex(VEC["nonce_b"])
    assert _hex(0) == wire.encode_nonce_frame(VEC["session"], nonce_a)
    assert _hex(1) == wire.encode_nonce_frame(VEC["session"], nonce_b)
    r = bytes.fromhex(VEC["key"]["r"])
    plain = VEC["plaintext"].encode()
    for seq, (frame, key) in enumerate(zip((_hex(2), _hex(3)), VEC["key"]["frames"],
                                           strict=True)):
        head = wire.decode_header(frame)
        assert (head.seq, head.session, head.type) == (seq, VEC["session"],
                                                       0x60 if seq == 0 else 0x61)
        refs, ct = wire.decode_body(frame)
        n_key = (16 if seq == 0 else 0) + 16 + len(ct)
        assert refs == [wire.KeyRef(VEC["key"]["block_id"], key["bit_offset"], 8 * n_key)]
        if seq == 0:
            pad = bytes.fromhex(key["pad"])
            assert bytes(ct) == bytes(p ^ k for p, k in zip(plain, pad, strict=True))
        tag = Poly1305.generate_tag(r + bytes.fromhex(key["s"]), nonce_b + frame[:-16])
        assert frame[-16:] == tag


def _bob(nonce: bytes) -> SecureStreamCore:
    k = VEC["key"]
    key = (bytes.fromhex(k["r"]) + bytes.fromhex(k["frames"][0]["s"])
           + bytes.fromhex(k["frames"][0]["pad"]) + bytes.fromhex(k["frames"][1]["s"]))

    def take(refs: list[wire.KeyRef]) -> bytes:
        assert all(ref.block_id == k["block_id"] for ref in refs)
        return b"".join(key[ref.offset // 8:(ref.offset + ref.n_bits) // 8] for ref in refs)

    return SecureStreamCore(VEC["session"], take, nonce=nonce)


def test_a_receiver_opens_the_transcript_only_under_its_own_nonce() -> None:
    incoming = _hex(0) + _hex(2) + _hex(3)   # what bob reads: alice's nonce, then frames
    bob = _bob(bytes.fromhex(VEC["nonce_b"]))
    assert bob.receive_data(incoming) == (VEC["plaintext"].encode(), True)
    assert bob.peer_nonce == bytes.fromhex(VEC["nonce_a"])
    other = _bob(bytes(16))                   # a later stream: another nonce
    with pytest.raises(RemoteProtocolError) as info:
        other.receive_data(incoming)
    assert info.value.code == ErrorCode.AUTHENTICATION_FAILED
