"""LDPC reconciliation bench: efficiency f, frame error rate, speed, against baselines.

For each key length n and QBER, runs the blind LDPC syndrome reconciliation
(qkdnet.link.ldpc) on random keys with exactly round(QBER·n) errors, and reports
f = leak_bits / (n·h(QBER)) (everything disclosed, both directions), the frames that
failed after the last round (before verification), rounds used, and CPU time of
Bob's end (decoding) and Alice's (syndromes, answers). In the same run and on the
same inputs it measures the baselines:

* today's Cascade (CascadeCorrector + CascadeResponder): f and Bob's CPU time;
* the ``ldpc`` package from PyPI (BpDecoder, min-sum), if importable, decoding one
  frame of the same code with the same syndrome (not a project dependency:
  ``pip install ldpc`` into the venv to enable it).

It prints the speed ratios (key bits decoded per CPU second at Bob's end).

    python bench/link/bench_ldpc.py                        # short run
    python bench/link/bench_ldpc.py --n 100000 --qber 0.02 --trials 300 --no-baselines
    python bench/link/bench_ldpc.py --n 1000000 --qber 0.02 --trials 3   # speed point
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from qkdnet.link.cascade import CascadeCorrector, CascadePlan, CascadeResponder
from qkdnet.link.ldpc import LdpcDecoder, LdpcEncoder, LdpcPlan, binary_entropy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_reconciliation import make_keys  # the same keys as Cascade's bench


def run_ldpc(alice: np.ndarray, bob: np.ndarray, qber: float, seed: int) -> dict[str, float]:
    n = alice.shape[0]
    t0 = time.process_time()
    plan = LdpcPlan.for_block(n, qber, seed)
    t_plan = time.process_time() - t0
    ta = tb = 0.0
    t0 = time.process_time()
    enc = LdpcEncoder(np.packbits(alice), n, plan, os.urandom)
    syn = enc.syndromes()
    ta += time.process_time() - t0
    t0 = time.process_time()
    dec = LdpcDecoder(np.packbits(bob), n, plan)
    dec.receive_syndromes(syn)
    tb += time.process_time() - t0
    trips = 0
    while True:
        t0 = time.process_time()
        dec.decode()
        req = dec.next_request()
        tb += time.process_time() - t0
        if req is None:
            break
        trips += 1
        t0 = time.process_time()
        ans = enc.answer(req)
        ta += time.process_time() - t0
        t0 = time.process_time()
        dec.receive(ans)
        tb += time.process_time() - t0
    out = np.unpackbits(dec.corrected(), count=n)
    wrong = 0
    for f in range(plan.frames):
        o, k = int(plan.key_offsets[f]), int(plan.key_bits[f])
        if f not in dec.failed_frames and not np.array_equal(out[o:o + k], alice[o:o + k]):
            wrong += 1
    assert enc.leak_bits == dec.leak_bits
    return {"f": dec.leak_bits / (n * binary_entropy(qber)), "frames": plan.frames,
            "failed": len(dec.failed_frames), "wrong": wrong, "trips": trips,
            "bob": tb, "alice": ta, "plan": t_plan,
            "f_expected": plan.expected_leak_bits / (n * binary_entropy(qber)),
            "frame_len": plan.n}


def run_cascade(alice: np.ndarray, bob: np.ndarray, qber: float, seed: int
                ) -> dict[str, float]:
    n = alice.shape[0]
    tb = ta = 0.0
    t0 = time.process_time()
    corr = CascadeCorrector(np.packbits(bob), n, CascadePlan(n, qber, seed))
    tb += time.process_time() - t0
    t0 = time.process_time()
    resp = CascadeResponder(np.packbits(alice), n, CascadePlan(n, qber, seed))
    ta += time.process_time() - t0
    while True:
        t0 = time.process_time()
        req = corr.next_request()
        tb += time.process_time() - t0
        if req is None:
            break
        t0 = time.process_time()
        ans = resp.answer(req)
        ta += time.process_time() - t0
        t0 = time.process_time()
        corr.receive(ans)
        tb += time.process_time() - t0
    ok = bool(np.array_equal(corr.corrected_bits(), alice))
    return {"f": corr.leaked_bits / (n * binary_entropy(qber)), "ok": ok, "bob": tb,
            "alice": ta}


def run_ldpc_package(alice: np.ndarray, bob: np.ndarray, qber: float, seed: int,
                     max_iter: int) -> dict[str, float] | None:
    """One frame of our code decoded by the PyPI ``ldpc`` BpDecoder (min-sum)."""
    try:
        import scipy.sparse as sp
        from ldpc import BpDecoder
    except ImportError:
        return None
    n = alice.shape[0]
    plan = LdpcPlan.for_block(n, qber, seed)
    code = plan.code
    lay = plan.layout(0)
    Z = code.Z
    r = np.arange(Z)
    rows = (code.rows[:, None] * Z + r[None, :]).ravel()
    cols = (code.cols[:, None] * Z + (r[None, :] + code.shifts[:, None]) % Z).ravel()
    H = sp.csr_matrix((np.ones(rows.shape[0], dtype=np.uint8), (rows, cols)),
                      shape=(code.m, code.n))
    k = lay.key.shape[0]
    x = np.zeros(code.n, dtype=np.uint8)
    y = np.zeros(code.n, dtype=np.uint8)
    x[lay.key] = alice[:k]
    y[lay.key] = bob[:k]
    rnd = np.random.default_rng(seed).integers(0, 2, lay.punctured.shape[0], dtype=np.uint8)
    x[lay.punctured] = rnd
    chan = np.full(code.n, 1e-9)
    chan[lay.key] = qber
    chan[lay.punctured] = 0.5 - 1e-9
    synd = ((H @ x) % 2).astype(np.uint8) ^ ((H @ y) % 2).astype(np.uint8)
    t0 = time.process_time()
    dec = BpDecoder(H, error_channel=list(chan), max_iter=max_iter, bp_method="minimum_sum",
                    ms_scaling_factor=0.75, schedule="serial")
    e = dec.decode(synd)
    cpu = time.process_time() - t0
    ok = bool(np.array_equal((y ^ e)[lay.key], x[lay.key]))
    # first-round rate of our plan: m - p disclosed for k key bits
    f = (plan.m - plan.p0) / (k * binary_entropy(qber))
    return {"ok": ok, "bob": cpu, "bits": k, "f": f}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[100_000])
    ap.add_argument("--qber", type=float, nargs="+", default=[0.01, 0.02, 0.05])
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-baselines", action="store_true", help="LDPC only (FER runs)")
    ap.add_argument("--pkg-iter", type=int, default=50, help="max_iter of the ldpc package")
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; CPU times are "
          "process times (both ends in this process)")
    print("| n | QBER | trials | frames (len) | f mean ± sd [min, max] | expected f | failed "
          "frames | round trips | Bob Mbit/s | Alice Mbit/s | Cascade f | Cascade Bob "
          "Mbit/s | LDPC/Cascade speed |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n in args.n:
        for q in args.qber:
            rs, cs = [], []
            for t in range(args.trials):
                seed = args.seed + 1000 * t
                alice, bob = make_keys(n, q, seed)
                rs.append(run_ldpc(alice, bob, q, seed))
                if not args.no_baselines:
                    cs.append(run_cascade(alice, bob, q, seed))
            fs = np.array([r["f"] for r in rs])
            frames = sum(int(r["frames"]) for r in rs)
            failed = sum(int(r["failed"]) for r in rs)
            wrong = sum(int(r["wrong"]) for r in rs)
            bob_rate = n * len(rs) / sum(r["bob"] for r in rs) / 1e6
            alice_rate = n * len(rs) / sum(r["alice"] for r in rs) / 1e6
            trips = np.mean([r["trips"] for r in rs])
            exp_f = rs[0]["f_expected"]
            if cs:
                cf = np.mean([c["f"] for c in cs])
                crate = n * len(cs) / sum(c["bob"] for c in cs) / 1e6
                cas = f"{cf:.4f} | {crate:.2f} | {bob_rate / crate:.2f}"
            else:
                cas = "- | - | -"
            print(f"| {n:.0e} | {q:.1%} | {len(rs)} | {rs[0]['frames']} ({rs[0]['frame_len']}) | "
                  f"{fs.mean():.4f} ± {fs.std():.4f} [{fs.min():.4f}, {fs.max():.4f}] | "
                  f"{exp_f:.4f} | {failed}/{frames}"
                  f"{f' ({wrong} WRONG)' if wrong else ''} | {trips:.1f} | {bob_rate:.2f} | "
                  f"{alice_rate:.1f} | {cas} |", flush=True)
            if not args.no_baselines:
                alice, bob = make_keys(n, q, args.seed)
                pk = run_ldpc_package(alice, bob, q, args.seed, args.pkg_iter)
                if pk is None:
                    print("  (ldpc package not importable: baseline skipped)")
                else:
                    r0 = run_ldpc(alice, bob, q, args.seed)
                    ours = n / r0["bob"] / 1e6
                    pk_rate = pk["bits"] / pk["bob"] / 1e6
                    print(f"  ldpc package BpDecoder (min-sum, serial, max_iter "
                          f"{args.pkg_iter}) on frame 0 of the same code at its first-round "
                          f"rate (f = {pk['f']:.3f}): decoded={pk['ok']}, "
                          f"{pk_rate:.3f} Mbit/s; ours (all rounds) {ours:.2f} Mbit/s: "
                          f"ratio {ours / pk_rate:.1f}", flush=True)


if __name__ == "__main__":
    main()
