"""Decoy-state BB84 theory: the emulator's exact model, and the textbook formulas.

Two models of the gains Q_k and error rates E_k per intensity, vectorised over distance:

* :func:`gains` — the **full model** of :mod:`qkdnet.phy.channel` as shipped: four
  detectors behind a passive basis splitter, dark counts per detector, squashing of
  multi-clicks, a non-paralysable dead time common to the four detectors, and
  afterpulses (a registered click is followed with probability p_ap by a click of
  the same detector in the first live gate, d + 1 gates later, which may itself
  afterpulse). Exact at any distance, including 0 km where the detectors saturate.
* :func:`gains_ma2005` — the first-order formulas of Ma, Qi, Zhao, Lo, PRA 72,
  012326 (2005): Q_μ = 1 − (1 − Y0)·e^(−ημ), E_μ·Q_μ = e0·Y0 + e_det·(1 − e^(−ημ)),
  e0 = 1/2, with the biased-basis sifting weights (a dark count is sifted with
  probability 1/2, a photon with p_z·q_z + (1 − p_z)(1 − q_z); identical to Ma et al.
  at p_z = q_z = 1/2). No dead time, no afterpulses.

Theory of operation (full model)
--------------------------------
Detection. Given Alice's intensity k, basis β and bit x, the detected photons are
Poisson(η μ_k); each goes to the Z arm with probability q_z and is measured there:
in its own basis it lands on the detector of bit x (flipped with probability e_mis),
in the other on either detector with probability 1/2. Splitting a Poisson number
leaves independent Poisson numbers per detector, so each detector j has a
candidate click independently with probability 1 − (1 − p_dark)·e^(−η μ_k w_j),
w_j its share of the photons. A registered pattern S (subset of the four detectors)
is squashed to Bob's (basis, bit) exactly as :meth:`BobDetector._squash` does.

Dead time and afterpulses (renewal theory). After a registered click with pattern S,
each detector of S afterpulses independently (probability p_ap): the set A of
afterpulsing detectors. All four detectors are dead for d gates. If A is empty the
next gates are live until the first candidate (a geometric number of gates, success
probability c = Σ_k p_k (1 − (1 − Y0) e^(−η μ_k)), Y0 = 1 − (1 − p_dark)^4); if not,
the gate d + 1 later registers A together with that gate's own candidates. The click
types S form a Markov chain (15 states); its stationary law ρ and the mean cycle
length ℓ(S) = d + 1 + P(A = ∅ | S)(1/c − 1) give the click rate r = 1/Σ ρ(S) ℓ(S)
and the probability that a gate is *live-normal* (P_ln = r Σ ρ(S) P(∅|S)/c) or
*forced* by afterpulse set A (P_A = r Σ ρ(S) P(A|S)). A gate's state depends only
on the past, never on its own pulse, so for any input (intensity, state, photon
number) P(register S) = P_ln·P_in(S) + Σ_A P_A Σ_{C: A ∪ C = S} P_in(C). Without
afterpulses this is Q_k = c_k / (1 + d·c). Since the gate state is independent of
the pulse, yields per photon number Y_n exist and the decoy method applies.

Decoy bounds (:func:`decoy_bounds`), from measured gains: with a weak third intensity
μ3 (vacuum when μ3 = 0) the three-intensity asymptotic bounds of Lim et al., PRA 89,
022307 (2014) (which reduce to Ma et al.'s vacuum+weak bounds at μ3 = 0):
    Y0 ≥ (μ2 e^μ3 Q3 − μ3 e^μ2 Q2)/(μ2 − μ3),
    Y1 ≥ μ1/(μ1(μ2 − μ3) − μ2² + μ3²) · [e^μ2 Q2 − e^μ3 Q3 − (μ2² − μ3²)/μ1² (e^μ1 Q1 − Y0)],
    e1 ≤ (e^μ2 E2 Q2 − e^μ3 E3 Q3) / ((μ2 − μ3) Y1);
with one decoy (p3 = 0, Rusca et al., APL 112, 171104 (2018)) the vacuum yield is
bounded from above by the decoy's errors, Y0 ≤ 2 e^μ2 E2 Q2 (errors of the vacuum
are 1/2, all others ≥ 0), and from below by Y0 ≥ (μ1 e^μ2 Q2 − μ2 e^μ1 Q1)/(μ1 − μ2);
Y1 uses Ma et al.'s weak-decoy form.

Key rates (asymptotic, bits per pulse slot; GLLP with decoys, Ma et al. 2005, per basis
as the link sifts): key from signal pulses sent and measured in Z, phase error from
the X basis: R = p1·p_z·[μ1 e^(−μ1) Y1^Z (1 − h(e1^X)) − f·Q1^Z·h(E1^Z)], where Q^β_k
and E^β_k are the gains and error rates of the pulses Alice sent in basis β that Bob
detected in β. :func:`key_rate` bounds Y1^Z and e1^X with the decoy bounds,
:func:`key_rate_infinite_decoy` uses their exact values (so it is never below
:func:`key_rate`), :func:`key_rate_ma2005` is Ma et al.'s first-order version.
:func:`net_key_rate` subtracts the authentication key a link spends per block.

PLOB repeaterless bound, −log2(1 − η) bits per channel use (Pirandola et al., Nat.
Commun. 8, 15043 (2017)), for the fibre transmittance.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import numpy as np

from qkdnet.errors import ConfigError
from qkdnet.phy.params import N_DETECTORS, PhyParams

E0 = 0.5

#: Authentication key spent per link block, in bits: 5 tagged frames × 128-bit
#: Wegman–Carter tags per block under deferred authentication (spec/link.md).
AUTH_BITS_PER_BLOCK = 640

_NPAT = 1 << N_DETECTORS           # 16 detector patterns (bit j = detector j = arm·2 + bit)


def h2(x: np.ndarray | float) -> np.ndarray:
    """Binary entropy in bits (0 at 0 and 1; inputs clipped to [0, 1])."""
    x = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = -x * np.log2(x) - (1 - x) * np.log2(1 - x)
    return np.nan_to_num(out, nan=0.0)


def eta(params: PhyParams, km: np.ndarray | float) -> np.ndarray:
    """End-to-end transmittance η = η_Bob · 10^(−αL/10), vectorised."""
    km = np.asarray(km, dtype=np.float64)
    return params.eta_bob * 10.0 ** (-params.alpha_db_per_km * km / 10.0)


# ------------------------------------------------------------------------------------
# First-order formulas (Ma et al. 2005)
# ------------------------------------------------------------------------------------

def gains_ma2005(params: PhyParams, km: np.ndarray | float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """First-order (Q, E) of Ma et al. 2005, arrays (3, len(km)); no dead time/afterpulses."""
    e = eta(params, km)
    mu = np.asarray(params.mu)[:, None]
    y0 = params.y0
    det = -np.expm1(-np.atleast_1d(e)[None, :] * mu)
    q = 1.0 - (1.0 - y0) * (1.0 - det)
    s_sig = params.p_z * params.q_z + (1 - params.p_z) * (1 - params.q_z)
    s_dark = 0.5
    err = (E0 * y0 * s_dark + params.e_mis * det * s_sig) / (y0 * s_dark + det * s_sig)
    return q, err


def yield_n(params: PhyParams, km: np.ndarray | float, n: int) -> np.ndarray:
    """Y_n = Y0 + η_n − Y0·η_n, η_n = 1 − (1 − η)^n (Ma et al. 2005; no dead time)."""
    e = np.atleast_1d(eta(params, km))
    eta_n = 1.0 - (1.0 - e) ** n
    return params.y0 + eta_n - params.y0 * eta_n


# ------------------------------------------------------------------------------------
# Full model
# ------------------------------------------------------------------------------------

def _patterns() -> tuple[np.ndarray, np.ndarray]:
    """(member[S, j], squash[S, b, y]): detector membership and Bob's outcome law."""
    member = np.array([[(s >> j) & 1 for j in range(N_DETECTORS)] for s in range(_NPAT)],
                      dtype=bool)
    squash = np.zeros((_NPAT, 2, 2))
    for s in range(1, _NPAT):
        arms = [a for a in (0, 1) if (s >> (2 * a)) & 3]
        for a in arms:
            sub = (s >> (2 * a)) & 3
            bits = (0, 1) if sub == 3 else ((sub >> 1),)
            for y in bits:
                squash[s, a, y] += 1.0 / (len(arms) * len(bits))
    return member, squash


_MEMBER, _SQUASH = _patterns()
# _UNION[a, c] = a | c; _SUBSET[a, s] = a ⊆ s.
_UNION = np.bitwise_or.outer(np.arange(_NPAT), np.arange(_NPAT))
_SUBSET = (np.bitwise_and.outer(np.arange(_NPAT), np.arange(_NPAT))
           == np.arange(_NPAT)[:, None])


def _routing(params: PhyParams) -> np.ndarray:
    """w[β, x, j]: share of detected photons of Alice's state (β, x) reaching detector j."""
    q = (params.q_z, 1.0 - params.q_z)
    w = np.zeros((2, 2, N_DETECTORS))
    for beta, x, arm, out in itertools.product((0, 1), (0, 1), (0, 1), (0, 1)):
        # Own basis: Alice's bit, flipped by misalignment; other basis: a fair coin.
        right = 1.0 - params.e_mis if out == x else params.e_mis
        p_out = right if arm == beta else 0.5
        w[beta, x, arm * 2 + out] = q[arm] * p_out
    return w


def _pattern_law(p_click: np.ndarray) -> np.ndarray:
    """P(pattern S) for independent detector click probabilities (..., 4) -> (..., 16)."""
    p = p_click[..., None, :]
    return np.where(_MEMBER, p, 1.0 - p).prod(axis=-1)


class GateStates(NamedTuple):
    """Stationary state of Bob's receiver per gate (arrays over distance)."""

    live_normal: np.ndarray   #: live, no afterpulse due
    forced: np.ndarray        #: (16, N): forced by afterpulse set A (A = 0 unused)
    dead: np.ndarray          #: inside a dead window
    click_rate: np.ndarray    #: registered clicks per gate


def _input_laws(params: PhyParams, km: np.ndarray) -> np.ndarray:
    """P_in[k, β, x, S, N]: candidate patterns of a gate for each intensity and state."""
    e = np.atleast_1d(eta(params, km))
    lam = np.asarray(params.mu)[:, None] * e[None, :]                        # (3, N)
    w = _routing(params)                                                      # (2, 2, 4)
    rate = lam[:, None, None, None, :] * w[None, :, :, :, None]               # (3,2,2,4,N)
    p_click = -np.expm1(-rate) * (1 - params.p_dark) + params.p_dark
    law = _pattern_law(np.moveaxis(p_click, -1, -2))                          # (3,2,2,N,16)
    return np.moveaxis(law, -1, -2)                                           # (3,2,2,16,N)


def _check_mode(params: PhyParams) -> None:
    if params.dead_time_mode != "common" and params.dead_gates > 0:
        raise ConfigError("the renewal model describes a dead time common to the four "
                          "detectors", source="parameters", key="dead_time_mode",
                          expected='"common" (or no dead time)')


def gate_states(params: PhyParams, km: np.ndarray | float,
                laws: np.ndarray | None = None) -> GateStates:
    """Stationary gate-state probabilities of the common-dead-time receiver.

    ``laws[k, β, x, S, N]``: candidate-pattern laws of a gate given Alice's intensity
    and state (default: the line without Eve, :func:`_input_laws`)."""
    _check_mode(params)
    km = np.atleast_1d(np.asarray(km, dtype=np.float64))
    if laws is None:
        laws = _input_laws(params, km)
    weights = np.asarray(params.p_mu)[:, None, None] * np.array(
        [params.p_z, 1 - params.p_z])[None, :, None] * 0.5                   # (3, 2, 2)
    mix = np.einsum("kbx,kbxsn->sn", weights, laws)                          # (16, N)
    c = 1.0 - mix[0]                                                          # candidate prob
    norm = np.zeros_like(mix)
    norm[1:] = mix[1:] / c
    d = params.dead_gates
    p = params.p_afterpulse
    # P(A | S): each detector of S afterpulses independently.
    size_a = _MEMBER.sum(axis=1)
    size_s = size_a
    pa = np.where(_SUBSET, p ** size_a[:, None] * (1 - p) ** (size_s[None, :] - size_a[:, None]),
                  0.0)                                                        # (A, S)
    # F[A, S', N]: pattern after forcing A onto a gate's own candidates.
    forced_law = np.zeros((_NPAT, _NPAT, km.size))
    for a in range(1, _NPAT):
        np.add.at(forced_law[a], _UNION[a], mix)
    # Transition T[S, S', N] between registered click types.
    trans = pa[0][:, None, None] * norm[None, :, :] + np.einsum(
        "as,atn->stn", pa[1:], forced_law[1:])
    n = km.size
    rho = np.empty((n, _NPAT - 1))
    for i in range(n):
        t = trans[1:, 1:, i]
        m = t.T - np.eye(_NPAT - 1)
        m[-1] = 1.0
        rhs = np.zeros(_NPAT - 1)
        rhs[-1] = 1.0
        rho[i] = np.linalg.lstsq(m, rhs, rcond=None)[0]
    p_none = pa[0, 1:]                                                        # (15,)
    with np.errstate(divide="ignore"):
        inv_c = np.where(c > 0, 1.0 / c, np.inf)
    cycle = d + 1 + p_none[None, :] * (inv_c[:, None] - 1.0)                 # (N, 15)
    r = 1.0 / np.sum(rho * cycle, axis=1)
    live = r * (rho @ p_none) * inv_c
    forced = np.zeros((_NPAT, n))
    forced[1:] = (r[:, None] * (rho @ pa[1:, 1:].T)).T
    return GateStates(live, forced, r * d, r)


def _registered(states: GateStates, p_in: np.ndarray) -> np.ndarray:
    """P(register pattern S) for candidate laws p_in[..., 16, N] -> [..., 16, N]."""
    out = states.live_normal * p_in
    out[..., 0, :] = 0.0
    for a in range(1, _NPAT):
        if not np.any(states.forced[a]):
            continue
        contrib = np.zeros_like(p_in)
        np.add.at(np.moveaxis(contrib, -2, 0), _UNION[a], np.moveaxis(p_in, -2, 0))
        out = out + states.forced[a] * contrib
    return out


class BasisStats(NamedTuple):
    """Per intensity k and Alice's basis β, arrays (3, 2, N) over distance.

    ``gain[k, β]`` = P(Bob detects in basis β | Alice sent k in β); ``error[k, β]`` the
    error rate among those; ``clicks[k]`` (3, N) P(any detection | k).
    """

    gain: np.ndarray
    error: np.ndarray
    clicks: np.ndarray


def _outcomes(reg: np.ndarray) -> np.ndarray:
    """P(Bob's basis b, bit y) from registered-pattern laws [..., 16, N] -> [..., 2, 2, N]."""
    return np.einsum("...sn,sby->...byn", reg, _SQUASH)


def basis_stats(params: PhyParams, km: np.ndarray | float,
                laws: np.ndarray | None = None) -> BasisStats:
    """Full-model sifted gains and error rates per intensity and basis (``laws`` as in
    :func:`gate_states`; errors are counted against Alice's bit)."""
    km = np.atleast_1d(np.asarray(km, dtype=np.float64))
    if laws is None:
        laws = _input_laws(params, km)
    states = gate_states(params, km, laws)
    reg = _registered(states, laws)                                         # (3,2,2,16,N)
    out = _outcomes(reg)                                                    # (3,2,2,2,2,N)
    clicks_kbx = reg.sum(axis=-2)                                           # (3,2,2,N)
    pb = np.array([params.p_z, 1 - params.p_z])
    clicks = 0.5 * np.einsum("b,kbxn->kn", pb, clicks_kbx)
    gain = np.zeros((3, 2, km.size))
    errs = np.zeros((3, 2, km.size))
    for beta, x in itertools.product((0, 1), (0, 1)):
        gain[:, beta] += 0.5 * out[:, beta, x, beta].sum(axis=-2)
        errs[:, beta] += 0.5 * out[:, beta, x, beta, 1 - x]
    with np.errstate(divide="ignore", invalid="ignore"):
        error = np.where(gain > 0, errs / gain, 0.0)
    return BasisStats(gain, error, clicks)


def gains(params: PhyParams, km: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Full-model (Q, E), arrays (3, len(km)), as :func:`qkdnet.phy.estimate.measure`
    counts them: Q_k = detections / pulses of intensity k; E_k = errors / sifted."""
    return _totals(params, basis_stats(params, km))


def intercept_resend(params: PhyParams, km: np.ndarray | float, fraction: float = 1.0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Full-model (Q, E) under intercept-resend of a ``fraction`` of the pulses at
    Alice's output, Eve's basis a fair coin (``InterceptResend(fraction, "random")``).

    Eve resends the pulse's photons in her basis and result: in Alice's basis (1/2)
    Alice's state; in the other (1/2) a random bit of the other basis. On clicks of
    Eve's photons alone, a single photon, E = 1/2·e_mis + 1/2·1/2 = 1/4 + e_mis/2;
    dark counts and afterpulses (error 1/2) and multi-photon squashing shift it.
    """
    km = np.atleast_1d(np.asarray(km, dtype=np.float64))
    laws = _input_laws(params, km)                                         # (3,2,2,16,N)
    other = 0.5 * (laws[:, ::-1, 0] + laws[:, ::-1, 1])                    # (3,2,16,N)
    resent = 0.5 * laws + 0.5 * other[:, :, None]
    mixed = (1.0 - fraction) * laws + fraction * resent
    return _totals(params, basis_stats(params, km, mixed))


def _totals(params: PhyParams, st: BasisStats) -> tuple[np.ndarray, np.ndarray]:
    pb = np.array([params.p_z, 1 - params.p_z])[None, :, None]
    sifted = (pb * st.gain).sum(axis=1)
    errors = (pb * st.gain * st.error).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        e = np.where(sifted > 0, errors / sifted, 0.0)
    return st.clicks, e


def photon_yields(params: PhyParams, km: np.ndarray | float, n: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Full-model sifted yield Y_n^β and error rate e_n^β, arrays (2, N), for n ∈ {0, 1}."""
    if n not in (0, 1):
        raise ValueError("yields are tabulated for n = 0 and n = 1")
    km = np.atleast_1d(np.asarray(km, dtype=np.float64))
    states = gate_states(params, km)
    pd = params.p_dark
    dark = _pattern_law(np.full(N_DETECTORS, pd))                          # (16,)
    p_in = np.zeros((2, 2, _NPAT, km.size))
    p_in[...] = dark[None, None, :, None]
    if n == 1:
        e = np.atleast_1d(eta(params, km))
        w = _routing(params)
        for j in range(N_DETECTORS):
            forced_dark = np.full(N_DETECTORS, pd)
            forced_dark[j] = 1.0
            law = _pattern_law(forced_dark)
            p_in = p_in + (w[:, :, j, None, None] * (law - dark)[None, None, :, None]
                           * e[None, None, None, :])
    out = _outcomes(_registered(states, p_in))                              # (2,2,2,2,N)
    y = np.zeros((2, km.size))
    err = np.zeros((2, km.size))
    for beta, x in itertools.product((0, 1), (0, 1)):
        y[beta] += 0.5 * out[beta, x, beta].sum(axis=-2)
        err[beta] += 0.5 * out[beta, x, beta, 1 - x]
    with np.errstate(divide="ignore", invalid="ignore"):
        return y, np.where(y > 0, err / y, 0.5)


def live_fraction(params: PhyParams, km: np.ndarray | float) -> np.ndarray:
    """Share of gates in which Bob's detectors are live (all four together)."""
    st = gate_states(params, km)
    return 1.0 - st.dead


# ------------------------------------------------------------------------------------
# Decoy bounds and key rates
# ------------------------------------------------------------------------------------

class DecoyEstimate(NamedTuple):
    """Decoy-state estimates (arrays over distance)."""

    y0_lower: np.ndarray
    y1_lower: np.ndarray
    e1_upper: np.ndarray
    q1_lower: np.ndarray
    key_rate: np.ndarray  #: asymptotic secret bits per pulse slot, clipped at 0


def _bounds(params: PhyParams, q: np.ndarray, e: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Y0, Y1 lower, e1 upper) from gains ``q`` and error rates ``e`` (3 × N)."""
    q = np.atleast_2d(np.asarray(q, dtype=np.float64))
    e = np.atleast_2d(np.asarray(e, dtype=np.float64))
    m1, m2, m3 = params.mu
    x1, x2, x3 = (np.exp(m) * q[i] for i, m in enumerate((m1, m2, m3)))
    with np.errstate(divide="ignore", invalid="ignore"):
        if params.p_mu[2] > 0:
            y0 = np.maximum((m2 * x3 - m3 * x2) / (m2 - m3), 0.0)
            y1 = m1 / (m1 * (m2 - m3) - m2**2 + m3**2) * (
                x2 - x3 - (m2**2 - m3**2) / m1**2 * (x1 - y0))
            e1 = (x2 * e[1] - x3 * e[2]) / ((m2 - m3) * y1)
        else:
            y0 = np.maximum((m1 * x2 - m2 * x1) / (m1 - m2), 0.0)
            y0_up = 2.0 * x2 * e[1]
            y1 = m1 / (m1 * m2 - m2**2) * (x2 - x1 * m2**2 / m1**2
                                           - (m1**2 - m2**2) / m1**2 * y0_up)
            e1 = (x2 * e[1] - E0 * y0) / (m2 * y1)
    y1 = np.where(np.isfinite(y1), np.maximum(y1, 0.0), 0.0)
    e1 = np.where((y1 > 0) & np.isfinite(e1), np.clip(e1, 0.0, 0.5), 0.5)
    return y0, y1, e1


def _rate(params: PhyParams, y1_z: np.ndarray, e1_x: np.ndarray, q_z: np.ndarray,
          e_z: np.ndarray) -> np.ndarray:
    m1 = params.mu[0]
    r = params.p_mu[0] * params.p_z * (
        m1 * np.exp(-m1) * y1_z * (1.0 - h2(e1_x)) - params.f_ec * q_z * h2(e_z))
    return np.maximum(r, 0.0)


def decoy_bounds(params: PhyParams, q: np.ndarray, e: np.ndarray) -> DecoyEstimate:
    """Decoy bounds and asymptotic key rate from all-basis gains ``q`` and errors ``e``.

    This is the estimate from per-intensity totals (what :mod:`qkdnet.phy.estimate`
    measures); with q_z = p_z the key-basis factor is p_z·q_z.
    """
    y0, y1, e1 = _bounds(params, q, e)
    q = np.atleast_2d(np.asarray(q, dtype=np.float64))
    e = np.atleast_2d(np.asarray(e, dtype=np.float64))
    m1 = params.mu[0]
    q1 = y1 * m1 * np.exp(-m1)
    rate = params.p_mu[0] * params.p_z * params.q_z * (
        q1 * (1.0 - h2(e1)) - params.f_ec * q[0] * h2(e[0]))
    return DecoyEstimate(y0, y1, e1, q1, np.maximum(rate, 0.0))


def key_rate_from_stats(params: PhyParams, gain: np.ndarray, error: np.ndarray
                        ) -> np.ndarray:
    """Asymptotic decoy key rate (bits per slot) from per-basis sifted statistics.

    ``gain[k, b]`` / ``error[k, b]`` (shape (3, 2) or (3, 2, N)): Alice and Bob both in
    basis b, intensity k. Y1 of the key basis Z and e1 of the X basis are bounded
    with :func:`decoy_bounds`' formulas.
    """
    gain = np.asarray(gain, dtype=np.float64)
    error = np.asarray(error, dtype=np.float64)
    if gain.ndim == 2:
        gain, error = gain[..., None], error[..., None]
    _, y1_z, _ = _bounds(params, gain[:, 0], error[:, 0])
    _, _, e1_x = _bounds(params, gain[:, 1], error[:, 1])
    return _rate(params, y1_z, e1_x, gain[0, 0], error[0, 0])


def key_rate(params: PhyParams, km: np.ndarray | float) -> np.ndarray:
    """Asymptotic decoy key rate (bits per slot) of the full model, per basis as sifted."""
    st = basis_stats(params, km)
    return key_rate_from_stats(params, st.gain, st.error)


def key_rate_infinite_decoy(params: PhyParams, km: np.ndarray | float) -> np.ndarray:
    """Key rate with the exact single-photon yield and error (infinitely many decoys)."""
    st = basis_stats(params, km)
    y1, e1 = photon_yields(params, km, 1)
    return _rate(params, y1[0], e1[1], st.gain[0, 0], st.error[0, 0])


def key_rate_ma2005(params: PhyParams, km: np.ndarray | float) -> np.ndarray:
    """Asymptotic decoy key rate from Ma et al.'s first-order gains (bits per slot)."""
    q, e = gains_ma2005(params, km)
    return decoy_bounds(params, q, e).key_rate


def sifted_key_bits_per_slot(params: PhyParams, km: np.ndarray | float) -> np.ndarray:
    """Key-basis sifted detections per slot (Alice and Bob in Z, every intensity)."""
    st = basis_stats(params, km)
    return params.p_z * np.einsum("k,kn->n", np.asarray(params.p_mu), st.gain[:, 0])


def net_key_rate(params: PhyParams, km: np.ndarray | float, gross_per_slot: np.ndarray,
                 block_bits: float, auth_bits_per_block: float = AUTH_BITS_PER_BLOCK
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(gross, auth, net) key rates in bit/s for blocks of ``block_bits`` sifted key bits.

    Blocks per second = sifted key-basis bits per second / ``block_bits``; each block
    spends ``auth_bits_per_block`` of key on authentication.
    """
    if block_bits <= 0 or auth_bits_per_block < 0:
        raise ConfigError("block size must be positive and authentication cost >= 0",
                          source="parameters", key="block_bits")
    gross = np.asarray(gross_per_slot, dtype=np.float64) * params.clock_hz
    blocks = sifted_key_bits_per_slot(params, km) * params.clock_hz / block_bits
    auth = blocks * auth_bits_per_block
    return gross, auth, gross - auth


def plob(params: PhyParams, km: np.ndarray | float) -> np.ndarray:
    """PLOB bound −log2(1 − η_fibre) in bits per channel use (pulse slot)."""
    km = np.asarray(km, dtype=np.float64)
    log_t = -(params.alpha_db_per_km * km + params.insertion_loss_db) / 10.0 * np.log(10.0)
    with np.errstate(divide="ignore"):
        return -np.log2(-np.expm1(log_t))   # 1 − η computed without cancellation
