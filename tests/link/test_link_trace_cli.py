"""``qkdnet link run --trace DIR`` writes a qlog-style JSON-lines trace per link end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_link_run_trace_records_every_block(tmp_path: Path) -> None:
    trace_dir = tmp_path / "traces"
    result = subprocess.run(
        [sys.executable, "-m", "qkdnet", "link", "run", "--preset", "snspd-metro", "--km", "10",
         "--blocks", "2", "--seed", "3", "--trace", str(trace_dir), "--json"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    files = sorted(trace_dir.glob("*.jsonl"))
    assert files, "no trace written"
    events = [json.loads(line) for f in files for line in f.read_text().splitlines()[1:]]
    blocks = [e for e in events if e["category"] == "link"
              and e["event"] in ("block_stored", "block_aborted")]
    # Both ends trace each block, with the public statistics the CLI printed.
    assert len(blocks) == 2 * len(summary["alice"]["blocks"])
    assert all({"time", "category", "event", "data"} <= set(e) for e in events)
    stored = [e["data"] for e in blocks if e["event"] == "block_stored"]
    assert stored and all(d["ell"] > 0 and 0 < d["qber_key"] < 0.05 for d in stored)
