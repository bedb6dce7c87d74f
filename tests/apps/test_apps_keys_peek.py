"""Stream key sources can show a frame's key without consuming it (forgeries burn nothing)."""

from __future__ import annotations

import pytest

from qkdnet.apps.keys import memory_key_pair
from qkdnet.errors import KeyExhausted, KeyReuseError


def test_memory_peek_consumes_nothing_and_matches_take() -> None:
    alice, bob = memory_key_pair(seed=3, capacity_bits=8 * 4096)
    grant = alice.reserve(8 * 100)
    assert bytes(bob.peek(grant.segments)) == bytes(grant.data)
    assert bytes(bob.peek(grant.segments)) == bytes(grant.data)  # still there
    assert bytes(bob.take(grant.segments)) == bytes(grant.data)
    with pytest.raises(KeyReuseError):
        bob.peek(grant.segments)
    with pytest.raises(KeyReuseError):
        bob.take(grant.segments)


def test_memory_peek_refuses_key_never_reserved() -> None:
    alice, bob = memory_key_pair(seed=4, capacity_bits=8 * 1024)
    grant = alice.reserve(8 * 16)
    (seg,) = grant.segments
    beyond = type(seg)(seg.block_id, seg.offset + seg.n_bits, 8 * 16)
    with pytest.raises(KeyExhausted):
        bob.peek([beyond])
