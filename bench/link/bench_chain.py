"""Whole link chain throughput: sifting -> estimation -> Cascade -> verification -> PA.

Synthetic detections for one block (both ends' data in this process): detection
intensities and error rates follow the Lim 2014 channel model at 25 km (qkdnet.link.
finite_key.expected_stats, with misalignment set for a 2 % QBER), both bases chosen
with probability 0.7 for Z. Every stage is timed in CPU seconds (time.process_time,
both ends' work, one core); throughput is Mbit/s of sifted (key-basis) bits. The same
input is then reconciled by the straightforward serial Cascade
(bench/link/serial_cascade.py) as the baseline, and the ratio printed. Memory: peak
traced allocation of the chain (tracemalloc) and the process's max RSS.

    python bench/link/bench_chain.py               # n = 1e6 sifted bits, QBER 2 %
    python bench/link/bench_chain.py --n 200000
    python bench/link/bench_chain.py --repeat 5    # per stage, the least CPU time of 5 runs

On a shared machine single runs vary by ±30 %; ``--repeat`` reports, for every stage
and end, the minimum over the runs (the run least disturbed by other processes).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serial_cascade import serial_cascade

from qkdnet.link import sifting
from qkdnet.link.bits import expand_seed
from qkdnet.link.cascade import CascadeCorrector, CascadePlan, CascadeResponder
from qkdnet.link.finite_key import ChannelModel, expected_stats, key_length_two_decoy
from qkdnet.link.privacy import toeplitz_hash
from qkdnet.link.verify import tag_bits_for, verification_tag

# intensities, probabilities, Z-basis probability: optimise_key_rate at 25 km, n = 1e6
MU, P, PZ = (0.4, 0.2, 2e-4), (0.5, 0.3, 0.2), 0.7


def synth(n_sifted: int, seed: int) -> dict[str, np.ndarray]:
    """Per-detection arrays for a block with about ``n_sifted`` kept Z detections."""
    rng = np.random.default_rng(seed)
    model = ChannelModel(p_ap=0.0, e_mis=0.02)
    _, a = expected_stats(model, 25.0, 1.0, MU, P, 1.0)   # per-pulse rates, Z only
    rate = a["n_z"]                                      # detections per intensity
    frac = rate / rate.sum()
    err = a["m_z"] / a["n_z"]
    n_det = int(n_sifted / PZ**2)
    inten = rng.choice(3, n_det, p=frac).astype(np.uint8)
    a_basis = (rng.random(n_det) >= PZ).astype(np.uint8)
    b_basis = (rng.random(n_det) >= PZ).astype(np.uint8)
    a_bit = rng.integers(0, 2, n_det, dtype=np.uint8)
    flip = (rng.random(n_det) < err[inten]).astype(np.uint8)
    b_bit = np.where(a_basis == b_basis, a_bit ^ flip, rng.integers(0, 2, n_det, dtype=np.uint8))
    return {"inten": inten, "a_basis": a_basis, "b_basis": b_basis, "a_bit": a_bit,
            "b_bit": b_bit.astype(np.uint8)}


class Clock:
    """Accumulates CPU time per (stage, end)."""

    def __init__(self) -> None:
        self.t: dict[str, dict[str, float]] = {}
        self._stage, self._end, self._c = "", "", 0.0

    def __call__(self, stage: str, end: str) -> Clock:
        self._stage, self._end = stage, end
        return self

    def __enter__(self) -> None:
        self._c = time.process_time()

    def __exit__(self, *exc: object) -> None:
        d = self.t.setdefault(self._stage, {"alice": 0.0, "bob": 0.0})
        d[self._end] += time.process_time() - self._c


def chain(d: dict[str, np.ndarray], seed: int) -> tuple[Clock, int, dict[str, int]]:
    clk = Clock()
    with clk("sifting", "bob"):           # Bob sifts and counts (Alice does the same work)
        keep = sifting.sift(d["a_basis"], d["b_basis"])
        idx = sifting.split_bases(keep, d["b_basis"])
        bob_key = np.packbits(d["b_bit"][idx.z])
        n = int(idx.z.shape[0])
        st0 = sifting.decoy_stats(d["inten"][idx.z], d["inten"][idx.x], d["a_bit"][idx.x],
                                  d["b_bit"][idx.x], MU, P)
    with clk("sifting", "alice"):
        keep_a = sifting.sift(d["a_basis"], d["b_basis"])
        idx_a = sifting.split_bases(keep_a, d["b_basis"])
        alice_key = np.packbits(d["a_bit"][idx_a.z])
    qber = st0.qber_est
    with clk("cascade", "bob"):
        corr = CascadeCorrector(bob_key, n, CascadePlan(n, qber, seed))
    with clk("cascade", "alice"):
        resp = CascadeResponder(alice_key, n, CascadePlan(n, qber, seed))
    trips = 0
    while True:
        with clk("cascade", "bob"):
            req = corr.next_request()
        if req is None:
            break
        trips += 1
        with clk("cascade", "alice"):
            ans = resp.answer(req)
        with clk("cascade", "bob"):
            corr.receive(ans)
    tag_bits = tag_bits_for(1e-15, n)
    with clk("estimation", "bob"):
        bob_bits = corr.corrected_bits()
        z_err = bob_bits != d["b_bit"][idx.z]
        st = sifting.decoy_stats(d["inten"][idx.z], d["inten"][idx.x], d["a_bit"][idx.x],
                                 d["b_bit"][idx.x], MU, P, z_error_mask=z_err)
        fk = key_length_two_decoy(st, corr.leaked_bits + tag_bits)
    vseed = b"public-verify-seed"
    with clk("verify", "bob"):
        bob_packed = np.packbits(bob_bits)
        tag_b = verification_tag(bob_packed, vseed, tag_bits, n)
    with clk("verify", "alice"):
        ok = verification_tag(alice_key, vseed, tag_bits, n) == tag_b
    ell = fk.ell
    seed_bits = expand_seed(b"public-pa-seed", n + ell - 1)
    with clk("privacy", "alice"):
        ka = toeplitz_hash(alice_key, n, ell, seed_bits)
    with clk("privacy", "bob"):
        kb = toeplitz_hash(bob_packed, n, ell, seed_bits)
    assert ok and np.array_equal(ka, kb), "keys differ after the chain"
    info = {"n": n, "ell": ell, "leaked": corr.leaked_bits, "trips": trips,
            "tag_bits": tag_bits}
    return clk, n, info


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="sifted key bits")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=1,
                    help="run the chain this many times; report each stage's minimum")
    args = ap.parse_args()
    d = synth(args.n, args.seed)
    clk, n, info = chain(d, args.seed)
    for _ in range(args.repeat - 1):
        again, _, _ = chain(d, args.seed)
        for stage, ends in again.t.items():
            for end, v in ends.items():
                clk.t[stage][end] = min(clk.t[stage][end], v)
    tracemalloc.start()                  # second run only for memory: tracing slows numpy
    chain(d, args.seed)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    t = clk.t
    print(f"block: {n} sifted bits, QBER ~2 %, ell = {info['ell']} bits, "
          f"leaked {info['leaked']} parities in {info['trips']} round trips, "
          f"tag {info['tag_bits']} bits")
    print(f"{'stage':<12} {'Alice ms':>9} {'Bob ms':>9} {'both ms':>9} {'Mbit/s (both)':>14}")
    for k, v in t.items():
        both = v["alice"] + v["bob"]
        print(f"{k:<12} {1e3 * v['alice']:9.1f} {1e3 * v['bob']:9.1f} {1e3 * both:9.1f} "
              f"{n / both / 1e6 if both > 0 else float('inf'):14.1f}")
    ta = sum(v["alice"] for v in t.values())
    tb = sum(v["bob"] for v in t.values())
    total = ta + tb
    print(f"{'chain':<12} {1e3 * ta:9.1f} {1e3 * tb:9.1f} {1e3 * total:9.1f} "
          f"{n / total / 1e6:14.2f}")
    print(f"per core: Alice's end {n / ta / 1e6:.2f} Mbit/s, Bob's end {n / tb / 1e6:.2f} Mbit/s, "
          f"both ends on one core {n / total / 1e6:.2f} Mbit/s")
    print(f"memory: peak traced {peak / 2**20:.1f} MiB for the block, both ends "
          f"({peak / n:.1f} bytes per sifted bit); max RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    casc = t["cascade"]["alice"] + t["cascade"]["bob"]

    # baseline: serial Cascade on the same sifted keys
    keep = d["a_basis"] == d["b_basis"]
    z = np.flatnonzero(keep & (d["b_basis"] == 0))
    alice, bob = d["a_bit"][z], d["b_bit"][z]
    q = float(np.mean(alice != bob))
    c0 = time.process_time()
    res = serial_cascade(alice, bob, CascadePlan(n, q, args.seed))
    ser = time.process_time() - c0
    base_total = total - casc + ser
    print(f"\nbaseline serial Cascade: {1e3 * ser:.1f} ms CPU, {res.round_trips} round trips, "
          f"correct={bool(np.array_equal(res.corrected, alice))}")
    print(f"cascade speed ratio (serial / vectorised): {ser / casc:.1f}x; "
          f"chain with serial Cascade: {n / base_total / 1e6:.2f} Mbit/s; "
          f"chain ratio {base_total / total:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
