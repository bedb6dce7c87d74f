"""Regenerate the golden sideband frames of the common types (spec/vectors/*.json).

Run ``python spec/vectors/make_vectors.py``. The frames use published test keys and
fixed connection nonces, so the output is deterministic; tests/sideband checks every
vector both ways (fields → bytes, bytes → fields) and that its tag verifies over
``binding ‖ frame`` (spec/protocol.md §6.1).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.poly1305 import Poly1305
from scapy.fields import StrFixedLenField
from scapy.packet import Packet

from qkdnet.auth import (
    DIR_INITIATOR_TO_RESPONDER,
    DIR_RESPONDER_TO_INITIATOR,
    connection_binding,
)
from qkdnet.wire import (
    Close,
    Error,
    Hello,
    HelloAck,
    MsgType,
    Ping,
    Pong,
    QkdHeader,
)

HERE = Path(__file__).resolve().parent
R = bytes(range(0x10, 0x20))
S = bytes(range(0xA0, 0xB0))
NONCE_I = bytes(range(0xC0, 0xD0))     # the initiator's (alice's) HELLO nonce
NONCE_R = bytes(range(0xD0, 0xE0))     # the responder's (hub's) HELLO_ACK nonce
FWD, BACK = 0xFFFF_FFFF_0000_0000, 0xFFFF_FFFF_0000_0001
I2R, R2I = DIR_INITIATOR_TO_RESPONDER, DIR_RESPONDER_TO_INITIATOR

#: name -> (body, direction, header fields)
FRAMES: dict[str, tuple[Packet, int, dict[str, int]]] = {
    "hello": (Hello(node_name=b"alice", role=1, versions=[1], capabilities=5, nonce=NONCE_I),
              I2R, {"seq": 0, "akey_block": FWD, "akey_offset": 0}),
    "hello_ack": (HelloAck(node_name=b"hub", role=2, chosen_version=1, capabilities=3,
                           nonce=NONCE_R),
                  R2I, {"seq": 0, "akey_block": BACK, "akey_offset": 0}),
    "ping": (Ping(nonce=0x0123456789ABCDEF), I2R,
             {"seq": 1, "akey_block": FWD, "akey_offset": 128}),
    "pong": (Pong(nonce=0x0123456789ABCDEF), R2I,
             {"seq": 1, "session": 42, "akey_block": BACK, "akey_offset": 128}),
    "error": (Error(code=6, reason=b"frame failed its authentication tag"), I2R,
              {"seq": 7, "akey_block": FWD, "akey_offset": 896}),
    "close": (Close(code=0), I2R,
              {"seq": 12, "flags": 1, "akey_block": FWD, "akey_offset": 1536}),
}


def _value(body: Packet, name: str) -> Any:
    fld = next(f for f in body.fields_desc if f.name == name)
    v = body.getfieldval(name)
    if isinstance(fld, StrFixedLenField):
        return bytes(v).hex()
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, list):
        return [int(x) for x in v]
    return int(v)


def build(name: str) -> dict[str, Any]:
    """The vector ``name`` as a JSON-ready dict."""
    body, direction, hdr = FRAMES[name]
    msg_type = int(next(t for t in MsgType if t.name.lower() == name))
    header = {"version": 1, "type": msg_type, "flags": 0, "reserved": 0, "session": 0, **hdr}
    unsigned = bytes(QkdHeader(**header) / body)[:-16]
    binding = b"" if msg_type == MsgType.HELLO else connection_binding(
        direction, NONCE_I, NONCE_R)
    tag = Poly1305.generate_tag(R + S, binding + unsigned)
    raw = unsigned + tag
    pkt = QkdHeader(raw)
    dissected = pkt.payload
    return {
        "name": name,
        "type": msg_type,
        "type_name": MsgType(msg_type).name,
        "body_class": type(body).__name__,
        "auth": {
            "r": R.hex(),
            "s": S.hex(),
            "binding": binding.hex(),
            "note": "tag = Poly1305(r || s, binding || every byte before the tag); the "
                    "binding is empty for HELLO (spec §6.1)",
        },
        "connection": {
            "initiator_nonce": NONCE_I.hex(),
            "responder_nonce": NONCE_R.hex(),
            "direction": "initiator->responder" if direction == I2R else "responder->initiator",
        },
        "hex": raw.hex(),
        "header": {f.name: (pkt.getfieldval(f.name).hex() if f.name == "tag"
                            else int(pkt.getfieldval(f.name)))
                   for f in QkdHeader.fields_desc},
        "body": {n: _value(dissected, n) for n in dissected.fields},
    }


def main() -> None:
    """Write every vector file."""
    for name in FRAMES:
        (HERE / f"{name}.json").write_text(json.dumps(build(name), indent=2) + "\n")


if __name__ == "__main__":
    main()
