"""Finite-key decoy-state BB84 key length (parameter estimation).

Two decoys (three intensities μ1 > μ2 + μ3, μ2 > μ3 >= 0): Lim, Curty, Walenta, Xu,
Zbinden, "Concise security bounds for practical decoy-state quantum key
distribution", PRA 89, 022307 (2014). One decoy (two intensities μ1 > μ2): Rusca,
Boaron, Grünenfelder, Martin, Zbinden, "Finite-key analysis for the 1-decoy state QKD
protocol", APL 112, 171104 (2018).

Theory of operation
-------------------
Naming: in qkdnet the key is drawn from basis Z (basis 0) and the phase error is
estimated from basis X (basis 1); Lim 2014 uses the opposite letters, so their
``s_{X,1}`` is our ``s1_lower`` (key basis) and their ``v_{Z,1}`` our ``v1_upper``.

1. Hoeffding: with probability >= 1 - ε the expected count behind an observed count
   ``n_k`` (out of ``n`` in total) lies within ``n_k ± sqrt(n/2 · ln(c/ε))``, where
   ``c`` is the number of events the paper splits ε_sec over (21 for two decoys, 19
   for one). The decoy relations are linear in ``(e^{μ_k}/p_k) · E[n_k]``, so the
   prefactor ``e^{μ_k}/p_k`` is applied exactly ONCE, to the Hoeffding-shifted count
   (REFERENCES.md warns that a transcription of Rusca 2018 applies it twice, in the
   definition of ``n^±`` and again in the bounds; applying it once is what the
   derivation ``E[n_k] = p_k Σ_n e^{-μ_k} μ_k^n / n! · s_n / τ_n`` gives).
2. Vacuum events ``s0`` and single-photon events ``s1`` (lower bounds) come from the
   key-basis counts; ``s1`` again from the estimation-basis counts; single-photon
   errors ``v1`` (upper bound) from the estimation-basis errors.
3. Phase error ``φ <= v1/s1_x + γ(ε_sec, v1/s1_x, s1_x, s1_z)`` (random sampling
   without replacement; γ(a, b, c, d) as in Lim 2014, with 21 in the logarithm — for
   one decoy too, as Rusca 2018 Eq. (A21) prints it, see :data:`GAMMA_EVENTS`).
4. ``ℓ = ⌊s0 + s1 (1 − h(φ)) − λ_EC − 6 log2(c/ε_sec) − log2(2/ε_cor)⌋``.

The one-decoy vacuum upper bound needed for ``s1`` follows Rusca 2018: vacuum
contributions err with probability 1/2, so ``s0 <= 2 · (τ_0 (e^{μ2}/p2) · (m_{μ2} + δ(m))
+ δ(n))``; the second Hoeffding term covers the realised vacuum errors falling short of
s0/2 (δ(x) = sqrt(x/2 · ln(19/ε_sec)), n and m the basis' detections and errors).

All bound functions are written on numpy arrays, so a grid of intensities and
probabilities can be evaluated in one call (used by :func:`optimise_key_rate`).

The channel model in :func:`expected_stats` follows Lim 2014's simulation (after Ma,
Qi, Zhao, Lo, PRA 72, 012326 (2005)): two detectors with dark-count probability
``p_dc`` each, afterpulsing ``p_ap``, misalignment ``e_mis``; dead time is ignored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "ChannelModel",
    "DecoyStats",
    "FiniteKeyParams",
    "FiniteKeyResult",
    "binary_entropy",
    "expected_stats",
    "key_length_one_decoy",
    "key_length_two_decoy",
    "optimise_key_rate",
]


def binary_entropy(x: float | np.ndarray) -> np.ndarray:
    """Shannon binary entropy h(x) in bits (h(0) = h(1) = 0), elementwise."""
    x = np.clip(np.asarray(x, dtype=np.float64), 1e-300, 1.0 - 1e-16)
    return -x * np.log2(x) - (1.0 - x) * np.log2(1.0 - x)


@dataclass(frozen=True)
class DecoyStats:
    """Sifted counts per intensity and basis, the input of parameter estimation.

    ``n_z[k]`` / ``m_z[k]``: detections / bit errors in the key basis Z for intensity
    ``k`` (0 = signal μ1, 1 = decoy μ2, 2 = weak/vacuum μ3); ``n_x`` / ``m_x`` the same
    in the estimation basis X (all of X is disclosed). ``mu`` are the intensities and
    ``p`` their probabilities. For one decoy pass length-2 sequences (or ignore the
    third entry). Counts may be floats when they are expectations (simulation).
    """

    n_z: tuple[float, ...]
    m_z: tuple[float, ...]
    n_x: tuple[float, ...]
    m_x: tuple[float, ...]
    mu: tuple[float, ...]
    p: tuple[float, ...]

    def __post_init__(self) -> None:
        lengths = {len(self.n_z), len(self.m_z), len(self.n_x), len(self.m_x),
                   len(self.mu), len(self.p)}
        if len(lengths) != 1 or lengths.pop() not in (2, 3):
            raise ValueError("DecoyStats needs 2 or 3 entries in every field")
        for name in ("n_z", "m_z", "n_x", "m_x"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        object.__setattr__(self, "mu", tuple(float(v) for v in self.mu))
        object.__setattr__(self, "p", tuple(float(v) for v in self.p))
        if any(m > n for m, n in zip(self.m_z + self.m_x, self.n_z + self.n_x, strict=True)):
            raise ValueError("more errors than detections")

    @property
    def n_key(self) -> float:
        """Total key-basis (Z) detections."""
        return float(sum(self.n_z))

    @property
    def qber_key(self) -> float:
        """Observed bit error rate in the key basis (0 if empty)."""
        n = self.n_key
        return float(sum(self.m_z)) / n if n else 0.0

    @property
    def qber_est(self) -> float:
        """Observed bit error rate in the estimation basis (0 if empty)."""
        n = float(sum(self.n_x))
        return float(sum(self.m_x)) / n if n else 0.0


@dataclass(frozen=True)
class FiniteKeyParams:
    """Security parameters: secrecy ε_sec and correctness ε_cor (defaults 1e-10, 1e-15)."""

    eps_sec: float = 1e-10
    eps_cor: float = 1e-15

    def __post_init__(self) -> None:
        if not (0 < self.eps_sec < 1 and 0 < self.eps_cor < 1):
            raise ValueError("eps_sec and eps_cor must lie in (0, 1)")


@dataclass(frozen=True)
class FiniteKeyResult:
    """Key length ℓ and every intermediate bound (counts are in detected events).

    ``abort_reason`` is ``None`` when ``ell > 0`` and otherwise says why no key.
    """

    ell: int
    s0_lower: float          # vacuum events in the key basis (lower bound)
    s1_lower: float          # single-photon events in the key basis (lower bound)
    s1_est_lower: float      # single-photon events in the estimation basis (lower bound)
    v1_upper: float          # single-photon errors in the estimation basis (upper bound)
    phi_upper: float         # phase error rate of the key basis' single photons (upper)
    gamma: float             # the sampling term in phi_upper
    leak_ec_bits: float      # λ_EC as given
    penalty_bits: float      # 6 log2(c/ε_sec) + log2(2/ε_cor)
    n_key: float
    qber_key: float
    qber_est: float
    method: str              # "lim2014-two-decoy" or "rusca2018-one-decoy"
    abort_reason: str | None = None
    extra: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------------------------
# Vectorised bounds. Arguments are arrays broadcastable together; index 0..2 = μ1..μ3.
# ---------------------------------------------------------------------------------

def _tau(n: int, mu: Sequence[np.ndarray], p: Sequence[np.ndarray]) -> np.ndarray:
    """τ_n = Σ_k p_k e^{-μ_k} μ_k^n / n!: probability that Alice sends n photons."""
    return sum(pk * np.exp(-mk) * mk**n / math.factorial(n) for mk, pk in zip(mu, p, strict=True))


def _gamma(a: float, b: np.ndarray, c: np.ndarray, d: np.ndarray, events: int) -> np.ndarray:
    """Lim 2014's γ(a, b, c, d) (random sampling without replacement), ``events``=21 or 19."""
    b = np.clip(b, 1e-12, 0.5)
    c = np.maximum(c, 1e-9)
    d = np.maximum(d, 1e-9)
    bb = (1.0 - b) * b
    inner = (c + d) / (c * d * bb) * (events / a) ** 2
    val = (c + d) * bb / (c * d * math.log(2.0)) * np.log2(np.maximum(inner, 1.0))
    return np.sqrt(np.maximum(val, 0.0))


def _hoeffding(total: np.ndarray, events: int, eps: Any) -> np.ndarray:
    return np.sqrt(np.maximum(total, 0.0) / 2.0 * np.log(events / np.asarray(eps)))


def _bounds_two_decoy(n_z: Any, m_z: Any, n_x: Any, m_x: Any, mu: Any, p: Any,
                      eps_sec: Any) -> tuple[Any, ...]:
    """Lim 2014 bounds on arrays; returns (s0_z, s1_z, s1_x, v1_x, phi, gamma)."""
    c = 21
    m1, m2, m3 = mu
    t0, t1 = _tau(0, mu, p), _tau(1, mu, p)
    pref = [np.exp(mk) / pk for mk, pk in zip(mu, p, strict=True)]

    def s01(n: Any) -> tuple[Any, Any]:
        d = _hoeffding(sum(n), c, eps_sec)
        lo = [pref[k] * (n[k] - d) for k in range(3)]
        hi = [pref[k] * (n[k] + d) for k in range(3)]
        s0 = np.maximum(t0 * (m2 * lo[2] - m3 * hi[1]) / (m2 - m3), 0.0)
        s1 = t1 * m1 * (lo[1] - hi[2] - (m2**2 - m3**2) / m1**2 * (hi[0] - s0 / t0)) / (
            m1 * (m2 - m3) - m2**2 + m3**2)
        return s0, np.maximum(s1, 0.0)

    s0_z, s1_z = s01(n_z)
    _, s1_x = s01(n_x)
    dm = _hoeffding(sum(m_x), c, eps_sec)
    v1 = t1 * (pref[1] * (m_x[1] + dm) - pref[2] * (m_x[2] - dm)) / (m2 - m3)
    v1 = np.maximum(v1, 0.0)
    return s0_z, s1_z, s1_x, v1, *_phase(v1, s1_x, s1_z, eps_sec, c)


def _bounds_one_decoy(n_z: Any, m_z: Any, n_x: Any, m_x: Any, mu: Any, p: Any,
                      eps_sec: Any) -> tuple[Any, ...]:
    """Rusca 2018 bounds on arrays; returns (s0_z, s1_z, s1_x, v1_x, phi, gamma)."""
    c = 19
    m1, m2 = mu[0], mu[1]
    mu2_, p2_ = (mu[0], mu[1]), (p[0], p[1])
    t0, t1 = _tau(0, mu2_, p2_), _tau(1, mu2_, p2_)
    pref = [np.exp(mk) / pk for mk, pk in zip(mu2_, p2_, strict=True)]

    def s01(n: Any, m: Any) -> tuple[Any, Any]:
        d = _hoeffding(n[0] + n[1], c, eps_sec)
        lo = [pref[k] * (n[k] - d) for k in range(2)]
        hi = [pref[k] * (n[k] + d) for k in range(2)]
        s0 = np.maximum(t0 / (m1 - m2) * (m1 * lo[1] - m2 * hi[0]), 0.0)
        # vacuum upper bound from the decoy's errors (vacuum errs with probability 1/2)
        dm = _hoeffding(m[0] + m[1], c, eps_sec)
        s0_up = 2.0 * (t0 * pref[1] * (m[1] + dm) + d)
        s1 = t1 * m1 / (m2 * (m1 - m2)) * (
            lo[1] - m2**2 / m1**2 * hi[0] - (m1**2 - m2**2) / m1**2 * s0_up / t0)
        return s0, np.maximum(s1, 0.0)

    s0_z, s1_z = s01(n_z, m_z)
    _, s1_x = s01(n_x, m_x)
    dm = _hoeffding(m_x[0] + m_x[1], c, eps_sec)
    v1 = t1 / (m1 - m2) * (pref[0] * (m_x[0] + dm) - pref[1] * (m_x[1] - dm))
    v1 = np.maximum(v1, 0.0)
    return s0_z, s1_z, s1_x, v1, *_phase(v1, s1_x, s1_z, eps_sec, c)


#: The constant inside γ's logarithm. Lim 2014 Eq. (5) has 21²/ε_sec², and Rusca 2018
#: Eq. (A21) prints the same 21² although its own ε split (A24) has 19 shares; qkdnet
#: follows the printed formulas (the more conservative reading: ~24 bits per 1.3e5-bit
#: block), so γ uses 21 for one decoy too (tests/link/test_ell_audit.py).
GAMMA_EVENTS = 21


def _phase(v1: Any, s1_x: Any, s1_z: Any, eps_sec: Any, c: int) -> tuple[Any, Any]:
    ratio = np.where(s1_x > 0, v1 / np.maximum(s1_x, 1e-300), 0.5)
    g = _gamma(eps_sec, ratio, s1_x, s1_z, GAMMA_EVENTS)
    phi = np.where(s1_x > 0, np.minimum(ratio + g, 0.5), 0.5)
    return phi, g


def _ell(s0: Any, s1: Any, phi: Any, leak: Any, params: FiniteKeyParams,
         c: int, eps_sec: Any = None) -> tuple[Any, Any]:
    eps = params.eps_sec if eps_sec is None else np.asarray(eps_sec)
    penalty = 6.0 * np.log2(c / eps) + math.log2(2.0 / params.eps_cor)
    return s0 + s1 * (1.0 - binary_entropy(phi)) - leak - penalty, penalty


def _result(stats: DecoyStats, leak: float, params: FiniteKeyParams, two: bool) -> FiniteKeyResult:
    if two and len(stats.mu) != 3:
        raise ValueError("two-decoy bound needs three intensities")
    mu = stats.mu
    if two and not (mu[0] > mu[1] + mu[2] and mu[1] > mu[2] >= 0):
        raise ValueError("Lim 2014 needs μ1 > μ2 + μ3 and μ2 > μ3 >= 0")
    if not two and not (mu[0] > mu[1] > 0):
        raise ValueError("Rusca 2018 needs μ1 > μ2 > 0")
    if leak < 0:
        raise ValueError("leak_ec_bits must be >= 0")
    fn = _bounds_two_decoy if two else _bounds_one_decoy
    c = 21 if two else 19
    nz, mz, nx, mx = (np.asarray(v, dtype=np.float64)
                      for v in (stats.n_z, stats.m_z, stats.n_x, stats.m_x))
    s0, s1, s1x, v1, phi, g = fn(nz, mz, nx, mx, stats.mu, stats.p, params.eps_sec)
    raw, penalty = _ell(s0, s1, phi, leak, params, c)
    ell = max(math.floor(float(raw)), 0)
    reason = None
    if stats.n_key <= 0:
        reason = "no key-basis detections"
    elif float(s1) <= 0:
        reason = "single-photon lower bound is zero"
    elif float(phi) >= 0.5:
        reason = "phase error bound reaches 1/2"
    elif ell <= 0:
        reason = "finite-key length l <= 0"
    if reason is not None:
        ell = 0
    return FiniteKeyResult(
        ell=ell, s0_lower=float(s0), s1_lower=float(s1), s1_est_lower=float(s1x),
        v1_upper=float(v1), phi_upper=float(phi), gamma=float(g), leak_ec_bits=float(leak),
        penalty_bits=float(penalty), n_key=stats.n_key, qber_key=stats.qber_key,
        qber_est=stats.qber_est,
        method="lim2014-two-decoy" if two else "rusca2018-one-decoy", abort_reason=reason,
        extra={"ell_real": float(raw)},
    )


def key_length_two_decoy(stats: DecoyStats, leak_ec_bits: float,
                         params: FiniteKeyParams | None = None) -> FiniteKeyResult:
    """Key length with two decoys (Lim et al., PRA 89, 022307, 2014).

    ``leak_ec_bits`` is λ_EC, every bit disclosed by error correction (the
    verification tag is accounted for in the log2(2/ε_cor) term).
    """
    return _result(stats, leak_ec_bits, params or FiniteKeyParams(), True)


def key_length_one_decoy(stats: DecoyStats, leak_ec_bits: float,
                         params: FiniteKeyParams | None = None) -> FiniteKeyResult:
    """Key length with one decoy (Rusca et al., APL 112, 171104, 2018); uses μ1, μ2 only."""
    return _result(stats, leak_ec_bits, params or FiniteKeyParams(), False)


def key_length(stats: DecoyStats, leak_ec_bits: float,
               params: FiniteKeyParams | None = None) -> FiniteKeyResult:
    """The bound for the decoy method ``stats`` describes: two decoys with three
    intensities (:func:`key_length_two_decoy`), one decoy with two
    (:func:`key_length_one_decoy`)."""
    fn = key_length_two_decoy if len(stats.mu) == 3 else key_length_one_decoy
    return fn(stats, leak_ec_bits, params)


# ---------------------------------------------------------------------------------
# Expected statistics from a channel model (for simulation, tests and planning).
# ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ChannelModel:
    """Fibre + detector model of Lim 2014's simulation (defaults are theirs).

    ``eta_bob``: Bob's transmittance × detector efficiency; ``p_dc``: dark-count
    probability per detector and gate; ``p_ap``: afterpulse probability; ``e_mis``:
    misalignment error; ``alpha_db_km``: fibre loss; ``f_ec``: EC inefficiency used
    for λ_EC = f · n_Z · h(E_Z).
    """

    eta_bob: float = 0.10
    p_dc: float = 6e-7
    p_ap: float = 0.04
    e_mis: float = 0.005
    alpha_db_km: float = 0.2
    f_ec: float = 1.16


def expected_stats(model: ChannelModel, km: float, n_pulses: float | np.ndarray,
                   mu: Sequence[float | np.ndarray], p: Sequence[float | np.ndarray],
                   p_z: float | np.ndarray) -> tuple[DecoyStats | None, dict[str, np.ndarray]]:
    """Expected sifted counts for ``n_pulses`` pulses over ``km`` of fibre.

    Per intensity k: click probability ``D_k = 1 − (1 − 2 p_dc) e^{−η μ_k}``, with
    afterpulsing ``R_k = D_k (1 + p_ap)``; error probability
    ``E_k R_k = p_dc + e_mis (1 − e^{−η μ_k}) + p_ap D_k / 2`` (Lim 2014; Ma et al.
    2005 without afterpulses). Both ends choose Z with probability ``p_z``.
    Returns (DecoyStats if every input is scalar else None, dict of count arrays with
    keys n_z, m_z, n_x, m_x each of shape (k, ...)).
    """
    eta = model.eta_bob * 10.0 ** (-model.alpha_db_km * km / 10.0)
    mu_a = [np.asarray(m, dtype=np.float64) for m in mu]
    p_a = [np.asarray(v, dtype=np.float64) for v in p]
    pz = np.asarray(p_z, dtype=np.float64)
    nz, mz, nx, mx = [], [], [], []
    for mk, pk in zip(mu_a, p_a, strict=True):
        d = 1.0 - (1.0 - 2.0 * model.p_dc) * np.exp(-eta * mk)
        r = d * (1.0 + model.p_ap)
        er = model.p_dc + model.e_mis * (1.0 - np.exp(-eta * mk)) + model.p_ap * d / 2.0
        nz.append(n_pulses * pk * pz**2 * r)
        mz.append(n_pulses * pk * pz**2 * er)
        nx.append(n_pulses * pk * (1 - pz) ** 2 * r)
        mx.append(n_pulses * pk * (1 - pz) ** 2 * er)
    arrays = {k: np.stack(np.broadcast_arrays(*v)) for k, v in
              (("n_z", nz), ("m_z", mz), ("n_x", nx), ("m_x", mx))}
    if all(np.ndim(v) == 0 for v in [*mu_a, *p_a, pz, np.asarray(n_pulses)]):
        st = DecoyStats(tuple(arrays["n_z"]), tuple(arrays["m_z"]), tuple(arrays["n_x"]),
                        tuple(arrays["m_x"]), tuple(float(m) for m in mu_a),
                        tuple(float(v) for v in p_a))
        return st, arrays
    return None, arrays


def optimise_key_rate(model: ChannelModel, km: float, n_key: float, *, decoys: int = 2,
                      params: FiniteKeyParams | None = None,
                      grid: dict[str, Sequence[float]] | None = None,
                      eps_sec_per_bit: float | None = None) -> tuple[float, dict]:
    """Best key rate ℓ/N (bits per pulse) over a coarse grid, for a fixed key-basis block.

    As in Lim 2014 the block is fixed by the number ``n_key`` of key-basis detections;
    N (pulses sent) follows from the channel. The grid (μ1, μ2, p1, p2, p_z; μ3 fixed
    at ``mu3``) is coarse — a planning aid, not a full optimiser. Returns
    ``(rate, best_point)``; rate 0 when no grid point gives ℓ > 0.

    ``eps_sec_per_bit`` (κ) replaces the fixed ``params.eps_sec`` by ε_sec = κ·ℓ, solved
    per grid point by fixed-point iteration; Lim 2014's figures use κ = 1e-15.
    """
    params = params or FiniteKeyParams()
    g = {
        "mu1": np.linspace(0.3, 0.9, 7), "mu2": np.array([0.04, 0.07, 0.1, 0.15, 0.2, 0.3]),
        "p1": np.array([0.05, 0.1, 0.2, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9]),
        "p2": np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]),
        "pz": np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]),
        "mu3": np.array([2e-4]),
    }
    if grid:
        g.update({k: np.asarray(v, dtype=np.float64) for k, v in grid.items()})
    mesh = np.meshgrid(g["mu1"], g["mu2"], g["p1"], g["p2"], g["pz"], g["mu3"], indexing="ij")
    mu1, mu2, p1, p2, pz, mu3 = (m.ravel() for m in mesh)
    if decoys == 2:
        p3 = 1.0 - p1 - p2
        ok = (p3 > 0) & (mu1 > mu2 + mu3) & (mu2 > mu3)
        mu_l, p_l = [mu1, mu2, mu3], [p1, p2, p3]
    else:
        p2 = 1.0 - p1
        ok = (p2 > 0) & (mu1 > mu2)
        mu_l, p_l = [mu1, mu2], [p1, p2]
    _, a = expected_stats(model, km, 1.0, mu_l, p_l, pz)
    per_pulse_key = a["n_z"].sum(axis=0)
    n_pulses = n_key / np.maximum(per_pulse_key, 1e-300)
    n_z, m_z, n_x, m_x = (a[k] * n_pulses for k in ("n_z", "m_z", "n_x", "m_x"))
    e_z = m_z.sum(axis=0) / np.maximum(n_z.sum(axis=0), 1e-300)
    leak = model.f_ec * n_z.sum(axis=0) * binary_entropy(e_z)
    fn = _bounds_two_decoy if decoys == 2 else _bounds_one_decoy
    c = 21 if decoys == 2 else 19
    eps = np.full(mu1.shape, params.eps_sec)
    with np.errstate(all="ignore"):
        for _ in range(1 if eps_sec_per_bit is None else 25):
            s0, s1, _s1x, _v1, phi, _g = fn(list(n_z), list(m_z), list(n_x), list(m_x), mu_l,
                                            p_l, eps)
            raw, _ = _ell(s0, s1, phi, leak, params, c, eps)
            if eps_sec_per_bit is not None:
                eps = np.clip(eps_sec_per_bit * np.maximum(np.floor(np.nan_to_num(raw)), 1.0),
                              1e-300, 0.5)
        rate = np.where(ok & (phi < 0.5), np.floor(raw) / n_pulses, 0.0)
    rate = np.nan_to_num(rate, nan=0.0)
    i = int(np.argmax(rate))
    best = {"mu1": float(mu1[i]), "mu2": float(mu2[i]), "mu3": float(mu3[i]), "p1": float(p1[i]),
            "p2": float(p2[i] if decoys == 2 else 1 - p1[i]), "pz": float(pz[i]),
            "n_pulses": float(n_pulses[i])}
    return max(float(rate[i]), 0.0), best
