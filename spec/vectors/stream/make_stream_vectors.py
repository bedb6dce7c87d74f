"""Regenerate the golden SecureStream transcript (spec/vectors/stream/one_way.json).

Run ``python spec/vectors/stream/make_stream_vectors.py``. One direction of a padded
stream, alice → bob: both STREAM_NONCE frames, one STREAM_DATA frame and the
STREAM_EOF, with the published test key each frame consumed (r, s, pad) and the
nonces, so another implementation can check its frames and tags byte for byte
(spec/apps.md §2). The key and nonces are fixed, so the output is deterministic;
tests/apps/test_apps_stream_vectors.py checks the file against this script and
recomputes every tag and ciphertext from the formulas alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

from qkdnet.apps import wire
from qkdnet.apps.stream import KeyCursor, SecureStreamCore

HERE = Path(__file__).resolve().parent
SESSION = 0x0000_5EC0
NONCE_A = bytes(range(0xC0, 0xD0))   # alice's STREAM_NONCE (binds bob -> alice tags)
NONCE_B = bytes(range(0xD0, 0xE0))   # bob's STREAM_NONCE (binds alice -> bob tags)
BLOCK = 0x0000_0001_0000_0004        # block id of the test key in alice's e2e-tx pool
PLAINTEXT = b"hello, bob: one-time pad and a tag bound to your nonce"
R = bytes(range(0x10, 0x20))
S0 = bytes(range(0xA0, 0xB0))
PAD = bytes((7 * i + 3) & 0xFF for i in range(len(PLAINTEXT)))
S1 = bytes(range(0xB0, 0xC0))


class _Grant(NamedTuple):
    """A key grant as a key source hands it out: where the bits are, and the bits."""

    segments: tuple[wire.KeyRef, ...]
    data: bytes


def build() -> dict[str, Any]:
    """The transcript as a JSON-ready dict."""
    alice = SecureStreamCore(SESSION, None, nonce=NONCE_A)
    bob = SecureStreamCore(SESSION, None, nonce=NONCE_B)
    alice.receive_data(bob.nonce_frame())
    first = R + S0 + PAD
    (data,) = alice.seal_data(PLAINTEXT, KeyCursor(
        _Grant((wire.KeyRef(BLOCK, 0, 8 * len(first)),), first)))
    eof = alice.seal_eof(KeyCursor(_Grant((wire.KeyRef(BLOCK, 8 * len(first), 128),), S1)))
    return {
        "name": "stream_one_way",
        "note": "One direction of a padded SecureStream (spec/apps.md §2). Test key and "
                "nonces, published on purpose. Each end sends its STREAM_NONCE first; "
                "alice's frames are tagged with Poly1305(r || s) over nonce_b || every "
                "byte of the frame before the tag; ciphertext = plaintext XOR pad.",
        "session": SESSION,
        "nonce_a": NONCE_A.hex(),
        "nonce_b": NONCE_B.hex(),
        "plaintext": PLAINTEXT.decode(),
        "key": {
            "block_id": BLOCK,
            "r": R.hex(),
            "frames": [{"seq": 0, "s": S0.hex(), "pad": PAD.hex(), "bit_offset": 0},
                       {"seq": 1, "s": S1.hex(), "bit_offset": 8 * len(first)}],
        },
        "wire": [
            {"from": "alice", "what": "STREAM_NONCE", "hex": alice.nonce_frame().hex()},
            {"from": "bob", "what": "STREAM_NONCE", "hex": bob.nonce_frame().hex()},
            {"from": "alice", "what": "STREAM_DATA seq 0", "hex": bytes(data).hex()},
            {"from": "alice", "what": "STREAM_EOF seq 1", "hex": bytes(eof).hex()},
        ],
    }


def main() -> None:
    """Write the vector file."""
    (HERE / "one_way.json").write_text(json.dumps(build(), indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
