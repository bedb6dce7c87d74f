"""Density evolution for the BP decoder, to check degree profiles (a development tool).

Not used at run time. ``python -m qkdnet.link.ldpc_design elk085 0.90`` prints the
BSC threshold of a profile of :data:`qkdnet.link.ldpc_codes.PROFILES` at a rate
(check degrees concentrated on two values, as the codes are built) and the
efficiency at that threshold, ``f* = (1 - R)/h(p*)``.

Theory of operation
-------------------
Discretised density evolution (Richardson & Urbanke, "The capacity of LDPC codes
under message-passing decoding", IEEE TIT 47 (2001)) under the all-zero error
pattern, for an integer decoder close to ldpc_decode.py: messages are integers at
``s`` units per nat; a variable node adds its channel LLR and ``d - 1`` check
messages (FFT convolutions of the pmfs); a check node applies the tanh rule through
φ(x) = -ln tanh(x/2) tabulated at ``sphi`` units (sums of φ are convolutions of
(sign, φ) pmfs, done with the usual G = P+ + P-, D = P+ - P- generating pair and
truncated where φ⁻¹ rounds to 0); when every other input is beyond the φ table's
reach (φ rounds to 0, about 6 nats) the output is the smallest of them (the large-
input limit of the tanh rule), capped at ``cbig``. That cap is what matters:
capping check outputs at the φ table's own reach (~6-9 nats) leaves a residual
error floor of 1e-4…1e-5 on profiles with many degree-2 nodes, which the finite-
length decoder would meet as frames that never converge.

Checks of this tool: the (3,6)-regular ensemble gives p* = 0.0840 (the known BP
threshold 0.084); Elkouss et al. 2009's rate-0.80/0.85/0.90/0.70 profiles give
0.0298/0.0195/0.0108/0.0504 (published 0.0298/0.0199/0.0109/0.0504) and
Martinez-Mateo et al. 2012's rate-0.80 profile 0.0291 (published 0.0289).
"""

from __future__ import annotations

import math
import sys

import numpy as np

__all__ = ["avg_degree", "de_converges", "rho_for_rate", "threshold"]


def _phi(x: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", over="ignore"):
        return -np.log(np.tanh(np.asarray(x, dtype=np.float64) / 2.0))


def h2(p: float) -> float:
    return -p * math.log2(p) - (1 - p) * math.log2(1 - p)


def avg_degree(lam: dict[int, float]) -> float:
    """Average node degree of an edge-perspective distribution."""
    return 1.0 / sum(w / d for d, w in lam.items())


def rho_for_rate(lam: dict[int, float], rate: float) -> dict[int, float]:
    """Check degrees on two consecutive values giving design ``rate`` with ``lam``."""
    dc = avg_degree(lam) / (1.0 - rate)
    lo = math.floor(dc)
    x = lo + 1 - dc                       # node fraction at degree lo
    e_lo, e_hi = x * lo, (1 - x) * (lo + 1)
    t = e_lo + e_hi
    return {d: e / t for d, e in ((lo, e_lo), (lo + 1, e_hi)) if e / t > 1e-12}


class _Quant:
    def __init__(self, s: int, sphi: int) -> None:
        self.s = s
        self.pmax = math.ceil(sphi * float(_phi(np.array(0.5 / s))))
        cmax = round(s * float(_phi(np.array(0.5 / sphi))))
        self.amax = 4 * cmax
        a = np.arange(self.amax + 1)
        phi = np.empty(self.amax + 1, dtype=np.int64)
        phi[0] = self.pmax
        phi[1:] = np.minimum(self.pmax, np.round(sphi * _phi(a[1:] / s)))
        self.phi = phi
        S = np.arange(self.pmax + 1)
        psi = np.empty(self.pmax + 1, dtype=np.int64)
        psi[0] = cmax
        psi[1:] = np.minimum(cmax, np.round(s * _phi(S[1:] / sphi)))
        self.psi = psi


def _conv_trunc(a: np.ndarray, b: np.ndarray, M: int) -> np.ndarray:
    n = 1
    while n < 2 * (M + 1):
        n *= 2
    r = np.fft.irfft(np.fft.rfft(a, n) * np.fft.rfft(b, n), n)
    out = r[:M + 1].copy()
    out[M] += r[M + 1:2 * M + 1].sum()
    return out


def _power_trunc(a: np.ndarray, k: int, M: int) -> np.ndarray:
    res: np.ndarray | None = None
    base = a
    while k:
        if k & 1:
            res = base if res is None else _conv_trunc(res, base, M)
        k >>= 1
        if k:
            base = _conv_trunc(base, base, M)
    assert res is not None
    return res


def de_converges(p: float, lam: dict[int, float], rho: dict[int, float], *, s: int = 4,
                 sphi: int = 150, cbig: int = 80, max_it: int = 800, tol: float = 1e-7,
                 stall: int = 60) -> tuple[bool, int, float]:
    """Does BP converge on BSC(p)? Returns (converged, iterations, last error rate)."""
    q = _Quant(s, sphi)
    C, M = cbig, q.pmax
    c = round(s * math.log((1 - p) / p))
    dv = np.array(sorted(lam))
    lw = np.array([lam[d] for d in dv])
    dcs = np.array(sorted(rho))
    rw = np.array([rho[d] for d in dcs])
    V = c + int(dv.max() - 1) * C
    N = 1
    while N < 2 * V + 1 + 2 * C:
        N *= 2
    ch = np.zeros(N)
    ch[c] = 1 - p
    ch[N - c] += p
    Fch = np.fft.rfft(ch)
    cm = np.zeros(2 * C + 1)
    cm[C] = 1.0
    phix = np.zeros(max(V, q.amax) + 1, dtype=np.int64)
    phix[:q.amax + 1] = q.phi
    T = int(np.argmax(phix == 0))
    hist: list[float] = []
    perr = 1.0
    for it in range(max_it):
        qq = np.zeros(N)
        qq[:C + 1] = cm[C:]
        qq[N - C:] = cm[:C]
        Fq = np.fft.rfft(qq)
        acc = np.zeros_like(Fq)
        for d, w in zip(dv, lw, strict=True):
            acc += w * Fq ** (d - 1)
        v = np.fft.irfft(Fch * acc, N)
        np.maximum(v, 0, out=v)
        v /= v.sum()
        W = max(V, q.amax)
        pos = np.zeros(W + 1)
        neg = np.zeros(W + 1)
        pos[:V + 1] = v[:V + 1]
        neg[1:V + 1] = v[N - 1:N - V - 1:-1]
        perr = float(neg[1:].sum() + 0.5 * pos[0])
        if perr < tol:
            return True, it, perr
        hist.append(perr)
        if it >= stall + 10 and perr > 0.999 * hist[-stall]:
            return False, it, perr
        Pp = np.bincount(phix, weights=pos, minlength=M + 1)
        Pn = np.bincount(phix[1:], weights=neg[1:], minlength=M + 1)
        G, D = Pp + Pn, Pp - Pn
        a = np.cumsum(pos[::-1])[::-1][T:]
        b = np.cumsum(neg[::-1])[::-1][T:]
        sab, dab = np.minimum(a + b, 1.0), a - b
        mags = np.minimum(np.arange(T, W + 1), C)
        cm = np.zeros(2 * C + 1)
        for dc, w in zip(dcs, rw, strict=True):
            k = int(dc) - 1
            Gk, Dk = _power_trunc(G, k, M), _power_trunc(D, k, M)
            op, on = 0.5 * (Gk + Dk), 0.5 * (Gk - Dk)
            op[0] = on[0] = 0.0               # all others beyond reach: the min rule
            cm += w * np.bincount(C + q.psi, weights=np.maximum(op, 0), minlength=2 * C + 1)
            cm += w * np.bincount(C - q.psi, weights=np.maximum(on, 0), minlength=2 * C + 1)
            Sk, Dk2 = sab ** k, dab ** k
            pge, nge = 0.5 * (Sk + Dk2), 0.5 * (Sk - Dk2)
            yp = pge - np.append(pge[1:], 0.0)
            yn = nge - np.append(nge[1:], 0.0)
            cm += w * np.bincount(C + mags, weights=np.maximum(yp, 0), minlength=2 * C + 1)
            cm += w * np.bincount(C - mags, weights=np.maximum(yn, 0), minlength=2 * C + 1)
        cm /= cm.sum()
    return False, max_it, perr


def threshold(lam: dict[int, float], rho: dict[int, float], lo: float, hi: float,
              steps: int = 8, **kw: float) -> float:
    """Largest crossover probability in [lo, hi] where density evolution converges."""
    if not de_converges(lo, lam, rho, **kw)[0]:     # type: ignore[arg-type]
        return 0.0
    for _ in range(steps):
        mid = math.sqrt(lo * hi)
        if de_converges(mid, lam, rho, **kw)[0]:    # type: ignore[arg-type]
            lo = mid
        else:
            hi = mid
    return lo


def main(argv: list[str]) -> None:
    from qkdnet.link.ldpc_codes import PROFILES
    prof = PROFILES[argv[0]]
    rate = float(argv[1]) if len(argv) > 1 else prof.rate
    lam = dict(prof.lam)
    rho = rho_for_rate(lam, rate)
    # bracket: efficiencies 1.0 .. 1.3
    def inv(y: float) -> float:
        lo, hi = 1e-6, 0.5
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if h2(mid) < y else (lo, mid)
        return lo
    p = threshold(lam, rho, inv((1 - rate) / 1.3), inv(1 - rate), steps=9)
    print(f"{prof.name} at rate {rate}: edges/bit {avg_degree(lam):.2f}, check degrees "
          f"{sorted(rho)}, threshold {p:.5f}, f* = {(1 - rate) / h2(p) if p else math.inf:.4f}")


if __name__ == "__main__":
    main(sys.argv[1:])
