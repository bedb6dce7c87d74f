"""Residual frame error rate of Cascade before verification, over many frames.

Zero failures in N frames bounds the FER below 1 − 0.05^(1/N) ≈ 3/N at 95 %
confidence, so showing FER ≤ 1e-4 takes about 30,000 frames: this script spreads
them over worker processes (one per core by default) and prints the count, the
efficiency f and that bound.

    python bench/link/bench_residual_fer.py --n 100000 --qber 0.02 --frames 30000

Each frame is a random key with exactly round(QBER·n) errors, seeded from
``--first-seed`` upwards, so a run is reproducible.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from qkdnet.link.cascade import CascadeCorrector, CascadePlan, CascadeResponder


def one_frame(n: int, qber: float, seed: int) -> tuple[bool, int]:
    """(Bob's key still wrong after Cascade, parities disclosed) for one seeded frame."""
    rng = np.random.default_rng(seed)
    alice = rng.integers(0, 2, n, dtype=np.uint8)
    bob = alice.copy()
    bob[rng.choice(n, round(qber * n), replace=False)] ^= 1
    corrector = CascadeCorrector(np.packbits(bob), n, CascadePlan(n, qber, seed))
    responder = CascadeResponder(np.packbits(alice), n, CascadePlan(n, qber, seed))
    while (request := corrector.next_request()) is not None:
        corrector.receive(responder.answer(request))
    return not np.array_equal(corrector.corrected_bits(), alice), corrector.leaked_bits


def run_range(n: int, qber: float, first: int, count: int) -> tuple[int, int]:
    """(failures, total parities disclosed) over ``count`` frames from seed ``first``."""
    failures = leaked = 0
    for seed in range(first, first + count):
        failed, bits = one_frame(n, qber, seed)
        failures += failed
        leaked += bits
    return failures, leaked


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="key bits per frame")
    ap.add_argument("--qber", type=float, default=0.02)
    ap.add_argument("--frames", type=int, default=2_000)
    ap.add_argument("--first-seed", type=int, default=1_000_000)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    chunk = 200
    starts = range(args.first_seed, args.first_seed + args.frames, chunk)
    t0 = time.monotonic()
    failures = leaked = 0
    with ProcessPoolExecutor(args.workers) as pool:
        futures = [pool.submit(run_range, args.n, args.qber, s,
                               min(chunk, args.first_seed + args.frames - s)) for s in starts]
        for future in futures:
            f, bits = future.result()
            failures += f
            leaked += bits
    h = -args.qber * math.log2(args.qber) - (1 - args.qber) * math.log2(1 - args.qber)
    bound = 1 - 0.05 ** (1 / args.frames) if failures == 0 else float("nan")
    print(f"n={args.n} QBER={args.qber:g}: {failures} failures in {args.frames} frames "
          f"(seeds {args.first_seed}..{args.first_seed + args.frames - 1}); "
          f"f = {leaked / args.frames / (args.n * h):.4f}; "
          + (f"FER < {bound:.2e} at 95 % confidence" if failures == 0
             else f"FER ≈ {failures / args.frames:.2e}")
          + f"; {time.monotonic() - t0:.0f} s on {args.workers} workers")


if __name__ == "__main__":
    main()
