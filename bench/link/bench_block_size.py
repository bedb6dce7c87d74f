"""Key per wall-second and memory against the block size, for choosing the default.

Runs ``qkdnet --json link run`` (both ends in one process, the way a user runs it) in
a fresh process per block size, so each size's peak memory is its own, and prints
net key bits per wall-second (ℓ minus authentication, over the whole run including
start-up) and the peak RSS. The default block size (``link/cli.py
default_block_slots``: about 1.5e6 detections per block by the full receiver model)
is marked; docs/block-size.md records a run.

    python bench/link/bench_block_size.py [--preset snspd-metro] [--km 10 50]
        [--clicks 2.5e5 5e5 1e6 1.5e6] [--blocks 4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from qkdnet.link.cli import default_block_slots
from qkdnet.phy import presets


def _run(preset: str, km: float, slots: int, blocks: int, seed: int) -> dict[str, float]:
    cmd = [sys.executable, "-m", "qkdnet", "--json", "link", "run", "--preset", preset,
           "--km", str(km), "--blocks", str(blocks), "--block-slots", str(slots),
           "--seed", str(seed)]
    before = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    out = proc.stdout.read()
    # wait4 rather than Popen.wait: it returns this child's own peak RSS.
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - before
    peak_mib = usage.ru_maxrss / 1024
    data = json.loads(out or b"{}")
    alice = data.get("alice", {})
    ell = sum(b.get("ell") or 0 for b in alice.get("blocks", []))
    auth = int(alice.get("auth_bits", 0))
    stored = sum(1 for b in alice.get("blocks", []) if b.get("abort_reason") is None)
    return {"wall_s": wall, "ell": ell, "auth": auth, "stored": stored,
            "net_bps": max(0, ell - auth) / wall, "peak_mib": peak_mib}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="snspd-metro")
    ap.add_argument("--km", type=float, nargs="+", default=[10.0, 50.0])
    ap.add_argument("--clicks", type=float, nargs="+", default=[2.5e5, 5e5, 1e6, 1.5e6],
                    help="detections per block to try (the default is 1.5e6)")
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    params = presets.get(args.preset)
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    print(f"{'km':>5} {'clicks':>8} {'slots':>10} {'stored':>7} {'net kbit/s':>11} "
          f"{'auth %':>7} {'peak MiB':>9}")
    for km in args.km:
        default = default_block_slots(params, km)
        for clicks in sorted(args.clicks):
            slots = default_block_slots(params, km, target_clicks=clicks)
            r = _run(args.preset, km, slots, args.blocks, args.seed)
            share = 100 * r["auth"] / r["ell"] if r["ell"] else float("nan")
            mark = "  <- default" if slots == default else ""
            print(f"{km:5g} {clicks:8.2g} {slots:10.3g} {int(r['stored']):>4}/{args.blocks:<2} "
                  f"{r['net_bps'] / 1e3:11.1f} {share:7.2f} {r['peak_mib']:9.0f}{mark}",
                  flush=True)


if __name__ == "__main__":
    main()
