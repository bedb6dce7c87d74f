"""Cascade reconciliation bench: efficiency f, residual frame error rate, round trips.

For each key length n and QBER, runs the vectorised Cascade (qkdnet.link.cascade) on
random keys with exactly round(QBER·n) errors and reports
f = leaked / (n·h(QBER)), the residual frame error rate (frames where Bob's key still
differs from Alice's, before verification), round trips and CPU time; then runs the
straightforward serial Cascade (bench/link/serial_cascade.py) on the same inputs as
the baseline and prints the speed ratio.

    python bench/link/bench_reconciliation.py                 # short run (~1 min)
    python bench/link/bench_reconciliation.py --full          # docs/cascade.md table
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serial_cascade import serial_cascade

from qkdnet.link.cascade import CascadeCorrector, CascadePlan, CascadeResponder


def h(q: float) -> float:
    return -q * math.log2(q) - (1 - q) * math.log2(1 - q)


def make_keys(n: int, qber: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    alice = rng.integers(0, 2, n, dtype=np.uint8)
    bob = alice.copy()
    bob[rng.choice(n, round(qber * n), replace=False)] ^= 1
    return alice, bob


def run_vectorised(alice: np.ndarray, bob: np.ndarray, qber: float, seed: int
                   ) -> tuple[bool, int, int, float]:
    n = alice.shape[0]
    t0 = time.process_time()
    plan_b = CascadePlan(n, qber, seed)
    plan_a = CascadePlan(n, qber, seed)
    corr = CascadeCorrector(np.packbits(bob), n, plan_b)
    resp = CascadeResponder(np.packbits(alice), n, plan_a)
    trips = 0
    while (req := corr.next_request()) is not None:
        trips += 1
        corr.receive(resp.answer(req))
    cpu = time.process_time() - t0
    return bool(np.array_equal(corr.corrected_bits(), alice)), corr.leaked_bits, trips, cpu


def row(n: int, qber: float, trials: int, seed0: int) -> dict[str, float]:
    fs, trips, cpus, fails = [], [], [], 0
    for t in range(trials):
        alice, bob = make_keys(n, qber, seed0 + t)
        ok, leaked, tr, cpu = run_vectorised(alice, bob, qber, seed0 + t)
        fails += not ok
        fs.append(leaked / (n * h(qber)))
        trips.append(tr)
        cpus.append(cpu)
    return {"n": n, "qber": qber, "trials": trials, "f": float(np.mean(fs)),
            "f_sd": float(np.std(fs)), "fails": fails, "trips": float(np.mean(trips)),
            "cpu_ms": 1e3 * float(np.mean(cpus))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="the docs/cascade.md table")
    ap.add_argument("--n", type=int, nargs="*", help="key lengths")
    ap.add_argument("--qber", type=float, nargs="*", default=[0.01, 0.02, 0.05, 0.08])
    ap.add_argument("--trials", type=int, nargs="*",
                    help="trials per n (same order as --n)")
    ap.add_argument("--baseline-n", type=int, default=100_000)
    ap.add_argument("--baseline-trials", type=int, default=2)
    args = ap.parse_args()
    if args.full:
        ns, trials = [10_000, 100_000, 1_000_000], [2000, 200, 10]
    else:
        ns, trials = args.n or [10_000, 100_000], args.trials or [100, 10]
    if len(trials) != len(ns):
        trials = [trials[0]] * len(ns)

    print("| n | QBER | trials | f (mean ± sd) | residual FER | round trips | CPU ms/frame |")
    print("|---|---|---|---|---|---|---|")
    for n, t in zip(ns, trials, strict=True):
        for q in args.qber:
            r = row(n, q, t, seed0=int(n * 1000 * q))
            fer = f"{r['fails']}/{r['trials']}"
            print(f"| {n:.0e} | {q:.0%} | {t} | {r['f']:.4f} ± {r['f_sd']:.4f} | {fer} | "
                  f"{r['trips']:.0f} | {r['cpu_ms']:.1f} |", flush=True)

    # baseline: serial Cascade on the same inputs
    n, q = args.baseline_n, 0.02
    vec_cpu = ser_cpu = 0.0
    vec_f = ser_f = 0.0
    vec_trips = ser_trips = 0
    for t in range(args.baseline_trials):
        alice, bob = make_keys(n, q, 99 + t)
        ok, leaked, tr, cpu = run_vectorised(alice, bob, q, 99 + t)
        vec_cpu += cpu
        vec_f += leaked / (n * h(q))
        vec_trips += tr
        t0 = time.process_time()
        res = serial_cascade(alice, bob, CascadePlan(n, q, 99 + t))
        ser_cpu += time.process_time() - t0
        ser_f += res.leaked_bits / (n * h(q))
        ser_trips += res.round_trips
        assert ok and np.array_equal(res.corrected, alice)
    k = args.baseline_trials
    print(f"\nbaseline at n={n:.0e}, QBER 2 %, {k} frames (CPU time, both ends):")
    print(f"  vectorised: {1e3 * vec_cpu / k:8.1f} ms/frame  f={vec_f / k:.4f}  "
          f"round trips={vec_trips / k:.0f}  {n * k / vec_cpu / 1e6:.2f} Mbit/s")
    print(f"  serial    : {1e3 * ser_cpu / k:8.1f} ms/frame  f={ser_f / k:.4f}  "
          f"round trips={ser_trips / k:.0f}  {n * k / ser_cpu / 1e6:.2f} Mbit/s")
    print(f"  speed ratio vectorised/serial: {ser_cpu / vec_cpu:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
