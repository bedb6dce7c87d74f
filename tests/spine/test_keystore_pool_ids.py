"""A refused add_blocks leaves no trace: the pool it created is gone, and no other
peer's pool can inherit its id (that would mix two peers' key in one pool)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from qkdnet.errors import QkdnetError
from qkdnet.keystore import BlockMeta, KeyStore

META = BlockMeta(link_session="t", created=0.0, eps_sec=1e-10, eps_cor=1e-15,
                 leaked_ec_bits=0, auth_bits_spent=0)


def test_refused_add_blocks_does_not_leak_its_pool_id(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "k.db")
    try:
        key = os.urandom(8)
        with pytest.raises((QkdnetError, ValueError)):
            # Second part repeats the first's block id: the whole call is refused.
            store.add_blocks("A", [("data-tx", 1, key, 64), ("data-tx", 1, key, 64)], META)
        assert store.available("A", "data-tx") == 0
        store.add_block("B", "data-tx", 2, os.urandom(8), 64, META)
        assert store.available("B", "data-tx") == 64
        assert store.available("A", "data-tx") == 0     # was 64 with the stale id
        with pytest.raises(QkdnetError):
            store.reserve("A", "data-tx", 8)
    finally:
        store.close()
