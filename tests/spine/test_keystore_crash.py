"""Crash safety of the key store: SIGKILL a reserving child many times, then audit.

The child (keystore_crash_child.py) reserves key in a loop and records every grant it
received (fsynced). After many kills at random moments the parent reopens the store,
drains what is left, and checks that no bit was ever granted twice — neither between
recorded grants nor between a recorded grant and a later one — and that every
recorded grant carried exactly the bits its segments name.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from qkdnet.errors import KeyExhausted
from qkdnet.keystore import BlockMeta, KeyStore

CHILD = Path(__file__).with_name("keystore_crash_child.py")
N_BLOCKS = 20
BLOCK_BITS = 400_003  # odd on purpose: unaligned block ends
KILLS = 25


def parse_records(path: Path) -> list[tuple[list[tuple[int, int, int]], bytes]]:
    out = []
    text = path.read_text() if path.exists() else ""
    lines = text.split("\n")
    for i, line in enumerate(lines[:-1]):  # the part after the last newline may be torn
        if not line or line == "exhausted":
            continue
        # A line followed by the empty line a new child writes first is the record a
        # killed child was writing: it may be torn, so only whole records count.
        torn = i + 1 < len(lines) - 1 and lines[i + 1] == ""
        parts = line.split(" ")
        if torn and not _whole(parts):
            continue
        segs_text, hexdata = parts
        segs = [tuple(int(v) for v in s.split(",")) for s in segs_text.split(";")]
        out.append(([(b, o, n) for b, o, n in segs], bytes.fromhex(hexdata)))
    return out


def _whole(parts: list[str]) -> bool:
    """A record line that was written completely: its data covers all its segments."""
    try:
        segs_text, hexdata = parts
        n = sum(int(s.split(",")[2]) for s in segs_text.split(";"))
        return len(bytes.fromhex(hexdata)) == (n + 7) // 8
    except ValueError:
        return False


@pytest.mark.slow
def test_sigkill_never_causes_a_bit_to_be_granted_twice(tmp_path: Path) -> None:
    db = tmp_path / "ks.sqlite"
    record = tmp_path / "granted.txt"
    rng = np.random.default_rng(2026)
    bits = {}
    with KeyStore(db) as ks:
        for b in range(N_BLOCKS):
            key = np.packbits(rng.integers(0, 2, BLOCK_BITS, dtype=np.uint8)).tobytes()
            bits[b] = np.unpackbits(np.frombuffer(key, dtype=np.uint8))[:BLOCK_BITS]
            ks.add_block("B", "data-tx", b, key,
                         BLOCK_BITS, BlockMeta("crash", 0.0, 1e-10, 1e-15, 0, 0))
    pyrandom = random.Random(7)
    env = dict(os.environ)
    kills = 0
    for life in range(KILLS):
        before = record.stat().st_size if record.exists() else 0
        child = subprocess.Popen([sys.executable, str(CHILD), str(db), str(record), str(life)],
                                 env=env)
        # Wait until it is reserving (imports take a while), then kill at a random moment.
        limit = time.monotonic() + 10
        while (not record.exists() or record.stat().st_size == before) and child.poll() is None:
            assert time.monotonic() < limit, "child never started reserving"
            time.sleep(0.005)
        time.sleep(pyrandom.uniform(0.0, 0.15))
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
            kills += 1
        child.wait()
        if "exhausted" in record.read_text():
            break
    assert kills >= 20, f"only {kills} kills landed; the child ran out of key too soon"

    granted = np.zeros((N_BLOCKS, BLOCK_BITS), dtype=np.uint8)
    records = parse_records(record)
    assert len(records) > 100
    for segs, data in records:
        expect = np.concatenate([bits[b][o:o + n] for b, o, n in segs])
        assert data == np.packbits(expect).tobytes()
        for b, o, n in segs:
            granted[b, o:o + n] += 1
    assert granted.max() == 1, "a bit was granted twice across crashes"

    # Reopen and drain everything left: nothing recorded comes back.
    with KeyStore(db) as ks:
        left = ks.available("B", "data-tx")
        drained = 0
        while True:
            try:
                g = ks.reserve("B", "data-tx", 4096)
            except KeyExhausted:
                break
            drained += g.n_bits
            for s in g.segments:
                granted[s.block_id, s.offset:s.stop] += 1
        if ks.available("B", "data-tx"):
            g = ks.reserve("B", "data-tx", ks.available("B", "data-tx"))
            drained += g.n_bits
            for s in g.segments:
                granted[s.block_id, s.offset:s.stop] += 1
    assert drained == left
    assert granted.max() == 1, "a bit recorded before a crash was issued again"
    # Burned leases are the only loss: some bits were never granted to anyone.
    assert granted.sum() <= N_BLOCKS * BLOCK_BITS
