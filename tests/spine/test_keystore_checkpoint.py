"""A WAL checkpoint that another connection's reader blocks is reported and retried,
so consumed key does not linger in the files until another ``checkpoint_bytes``."""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

import pytest

from qkdnet.keystore import BlockMeta, KeySegment, KeyStore

META = BlockMeta(link_session="s1", created=1.0, eps_sec=1e-10, eps_cor=1e-15,
                 leaked_ec_bits=0, auth_bits_spent=0, qber=0.01)


def _main_file(path: Path) -> bytes:
    return path.read_bytes()


def test_blocked_checkpoint_is_reported_and_retried_at_the_next_take(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "rx.sqlite"
    store = KeyStore(path, checkpoint_bytes=4096)
    key = os.urandom(64 * 1024)
    store.add_block("A", "data-rx", 1, key, 8 * len(key), META)
    assert store.checkpoint()                     # the key is now in the main file
    assert key[:16] in _main_file(path)
    reader = sqlite3.connect(path)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM chunks").fetchone()   # holds a read snapshot
    with caplog.at_level(logging.WARNING):
        # crosses checkpoint_bytes: the checkpoint is tried, briefly, and is blocked
        store.take("A", "data-rx", [KeySegment(1, 0, 8 * 8192)])
    assert "checkpoint blocked" in caplog.text    # reported, not pretended
    assert key[:16] in _main_file(path)           # consumed key still in the main file
    reader.rollback()
    reader.close()
    # The next consumption retries at once (the count was not reset by the failure).
    store.take("A", "data-rx", [KeySegment(1, 8 * 8192, 8)])
    blob = _main_file(path)
    for off in range(0, 8192 - 16, 16):
        assert key[off:off + 16] not in blob
    assert key[-16:] in blob                      # unconsumed key is still there
    store.close()
