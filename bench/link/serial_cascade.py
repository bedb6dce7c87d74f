"""A straightforward serial Cascade, the baseline for bench/link.

Same plan (block sizes, permutations) as ``qkdnet.link.cascade`` so the comparison
isolates the execution strategy: one block and one binary search at a time, each
parity asked separately (one round trip per parity, plus one per pass for the block
parities), back-tracking through a work list as in Brassard & Salvail 1993. Parities
are computed with numpy on slices (no per-bit Python loops), but the control flow is
Python per block and per bisection step, as in common implementations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qkdnet.link.cascade import CascadePlan


@dataclass
class SerialResult:
    corrected: np.ndarray     # one uint8 per bit
    leaked_bits: int
    round_trips: int


def serial_cascade(alice_bits: np.ndarray, bob_bits: np.ndarray, plan: CascadePlan
                   ) -> SerialResult:
    """Correct ``bob_bits`` towards ``alice_bits`` (0/1 uint8 arrays) serially."""
    n = plan.n_bits
    bob = bob_bits.astype(np.uint8).copy()
    perms = [plan.perm(p) for p in range(plan.n_passes)]
    invs = [plan.inverse(p) for p in range(plan.n_passes)]
    alice_blocks: list[np.ndarray] = []
    leaked = 0
    trips = 0

    def alice_par(p: int, s: int, e: int) -> int:
        return int(alice_bits[perms[p][s:e]].sum()) & 1

    def bob_par(p: int, s: int, e: int) -> int:
        return int(bob[perms[p][s:e]].sum()) & 1

    for p in range(plan.n_passes):
        k = plan.block_sizes[p]
        starts = np.arange(0, n, k)
        alice_blocks.append(np.add.reduceat(alice_bits[perms[p]], starts) & 1)
        leaked += starts.shape[0]
        trips += 1
        bob_blocks = np.add.reduceat(bob[perms[p]], starts) & 1
        work = [(p, int(b)) for b in np.flatnonzero(bob_blocks != alice_blocks[p])]
        while work:
            q, b = work.pop()
            kq = plan.block_sizes[q]
            s, e = b * kq, min(b * kq + kq, n)
            if bob_par(q, s, e) == int(alice_blocks[q][b]):
                continue
            while e - s > 1:
                m = s + (e - s) // 2
                a = alice_par(q, s, m)
                leaked += 1
                trips += 1
                if bob_par(q, s, m) != a:
                    e = m
                else:
                    s = m
            j = int(perms[q][s])
            bob[j] ^= 1
            for r in range(p + 1):
                if r != q:
                    work.append((r, int(invs[r][j]) // plan.block_sizes[r]))
    return SerialResult(bob, leaked, trips)
