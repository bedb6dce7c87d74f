"""Benchmark the key store against raw SQLite with the same durability settings.

Measures, in one run and on the same disk:

* baseline: raw SQLite inserts (WAL, synchronous=FULL, secure_delete) — one 32-byte
  row per committed transaction (rows/s) and one 1 MiB blob per transaction (MB/s);
* ours: 256-bit ``reserve`` calls per second (target >= 10,000/s), large ``reserve``
  throughput in MB/s (target >= 100 MB/s), 256-bit receiver ``take`` calls per second
  (one durable transaction each) and ``add_block`` MB/s;

and prints each figure beside its baseline with the ratio. Usage::

    .venv/bin/python bench/bench_keystore.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from qkdnet.keystore import BlockMeta, KeyStore

META = BlockMeta("bench", 0.0, 1e-10, 1e-15, 0, 0)
MIB = 1 << 20


def raw_sqlite(folder: Path, n_small: int, n_large: int) -> tuple[float, float]:
    """Durable single-row transactions/s (32-byte rows) and MB/s (1 MiB blobs)."""
    path = folder / "raw.sqlite"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA secure_delete=ON")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, data BLOB NOT NULL)")
    row = os.urandom(32)
    start = time.perf_counter()
    for _ in range(n_small):
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t (data) VALUES (?)", (row,))
        db.execute("COMMIT")
    small = n_small / (time.perf_counter() - start)
    blob = os.urandom(MIB)
    start = time.perf_counter()
    for _ in range(n_large):
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t (data) VALUES (?)", (blob,))
        db.execute("COMMIT")
    large = n_large * MIB / 1e6 / (time.perf_counter() - start)
    db.close()
    return small, large


def ours(folder: Path, n_small: int, n_large: int, n_take: int) -> dict[str, float]:
    """Our rates: 256-bit reserves/s, large reserve MB/s, 256-bit takes/s, add MB/s."""
    tx = KeyStore(folder / "tx.sqlite")
    rx = KeyStore(folder / "rx.sqlite")
    block_bytes = 4 * MIB
    need_small = n_small * 32 + tx.lease_bits // 8
    n_blocks_small = need_small // block_bytes + 1
    n_blocks_large = n_large // 4 + 1
    keys = [os.urandom(block_bytes) for _ in range(n_blocks_small + n_blocks_large)]
    start = time.perf_counter()
    for i, key in enumerate(keys):
        tx.add_block("B", "data-tx", i, key, 8 * block_bytes, META)
    add_mbs = len(keys) * block_bytes / 1e6 / (time.perf_counter() - start)
    start = time.perf_counter()
    grants = [tx.reserve("B", "data-tx", 256) for _ in range(n_small)]
    small = n_small / (time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(n_large):
        tx.reserve("B", "data-tx", 8 * MIB)
    large = n_large * MIB / 1e6 / (time.perf_counter() - start)
    # Receiver: mirror the first block and take the first grants, one transaction each.
    rx.add_block("A", "data-rx", 0, keys[0], 8 * block_bytes, META)
    start = time.perf_counter()
    for g in grants[:n_take]:
        rx.take("A", "data-rx", g.segments)
    take = n_take / (time.perf_counter() - start)
    tx.close()
    rx.close()
    return {"reserve_256_per_s": small, "reserve_large_mb_s": large,
            "take_256_per_s": take, "add_block_mb_s": add_mbs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny run (smoke test)")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    args = parser.parse_args(argv)
    n_small, n_large, n_take, n_raw_small, n_raw_large = (
        (2_000, 4, 200, 200, 4) if args.quick else (50_000, 48, 2_000, 2_000, 48))
    with tempfile.TemporaryDirectory(prefix="qkdnet-bench-", dir=os.environ.get("BENCH_DIR")
                                     ) as tmp:
        folder = Path(tmp)
        raw_small, raw_large = raw_sqlite(folder, n_raw_small, n_raw_large)
        res = ours(folder, n_small, n_large, n_take)
    results = {
        "raw_sqlite_tx_per_s": raw_small, "raw_sqlite_insert_mb_s": raw_large, **res,
        "reserve_256_vs_raw_tx": res["reserve_256_per_s"] / raw_small,
        "reserve_large_vs_raw_insert": res["reserve_large_mb_s"] / raw_large,
        "take_256_vs_raw_tx": res["take_256_per_s"] / raw_small,
        "add_block_vs_raw_insert": res["add_block_mb_s"] / raw_large,
    }
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        print()
        return 0
    rows = [
        ("256-bit reserve", f"{res['reserve_256_per_s']:,.0f} /s", ">= 10,000 /s",
         f"{raw_small:,.0f} tx/s", results["reserve_256_vs_raw_tx"]),
        ("large reserve (1 MiB)", f"{res['reserve_large_mb_s']:,.1f} MB/s", ">= 100 MB/s",
         f"{raw_large:,.1f} MB/s", results["reserve_large_vs_raw_insert"]),
        ("256-bit take (receiver)", f"{res['take_256_per_s']:,.0f} /s", "-",
         f"{raw_small:,.0f} tx/s", results["take_256_vs_raw_tx"]),
        ("add_block (4 MiB)", f"{res['add_block_mb_s']:,.1f} MB/s", "-",
         f"{raw_large:,.1f} MB/s", results["add_block_vs_raw_insert"]),
    ]
    print("key store vs raw SQLite (WAL, synchronous=FULL, secure_delete=ON), same disk")
    print(f"{'operation':26} {'qkdnet':>16} {'target':>14} {'raw SQLite':>16} {'ratio':>8}")
    for name, value, target, base, ratio in rows:
        print(f"{name:26} {value:>16} {target:>14} {base:>16} {ratio:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
