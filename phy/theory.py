"""Textbook decoy-state BB84 formulas, vectorised over distance.

* Gains and error rates per intensity for a channel of transmittance η
  (Ma, Qi, Zhao, Lo, PRA 72, 012326 (2005), eqs. for Q_μ and E_μ):
  Q_μ = 1 − (1 − Y0)·e^(−ημ)  (= Y0 + 1 − e^(−ημ) to first order),
  E_μ·Q_μ = e0·Y0 + e_det·(1 − e^(−ημ)), e0 = 1/2 — generalised to biased bases
  (a dark count is sifted with probability 1/2, a photon with
  p_z·q_z + (1 − p_z)(1 − q_z)); identical to Ma et al. for p_z = q_z = 1/2.
* Decoy bounds from measured gains (:func:`decoy_bounds`): with a weak third
  intensity μ3 (vacuum when μ3 = 0) the three-intensity asymptotic bounds of
  Lim et al., PRA 89, 022307 (2014) (which reduce to Ma et al.'s vacuum+weak
  bounds at μ3 = 0):
    Y0 ≥ (μ2 e^μ3 Q3 − μ3 e^μ2 Q2)/(μ2 − μ3),
    Y1 ≥ μ1/(μ1(μ2 − μ3) − μ2² + μ3²) · [e^μ2 Q2 − e^μ3 Q3 − (μ2² − μ3²)/μ1² (e^μ1 Q1 − Y0)],
    e1 ≤ (e^μ2 E2 Q2 − e^μ3 E3 Q3) / ((μ2 − μ3) Y1);
  with one decoy (p3 = 0, Rusca et al., APL 112, 171104 (2018)) the vacuum yield is
  bounded from above by the decoy's errors, Y0 ≤ 2 e^μ2 E2 Q2 (errors of the vacuum
  are 1/2, all others ≥ 0), and from below by the two-intensity bound
  Y0 ≥ (μ1 e^μ2 Q2 − μ2 e^μ1 Q1)/(μ1 − μ2); Y1 uses Ma et al.'s weak-decoy form.
* Asymptotic key rate per pulse slot (GLLP with decoys, Ma et al. 2005):
  R = q·[Q1 (1 − h(e1)) − f·Q_μ1·h(E_μ1)], Q1 = Y1 μ1 e^(−μ1), q = p1·p_z·q_z
  (signal pulses sent and measured in the key basis).
* PLOB repeaterless bound, −log2(1 − η) bits per channel use (Pirandola et al.,
  Nat. Commun. 8, 15043 (2017)), for the fibre transmittance.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from qkdnet.phy.params import PhyParams

E0 = 0.5


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


def gains(params: PhyParams, km: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """(Q, E): arrays of shape (3, len(km)), gain and error rate per intensity."""
    e = eta(params, km)
    mu = np.asarray(params.mu)[:, None]
    y0 = params.y0
    det = -np.expm1(-np.atleast_1d(e)[None, :] * mu)
    q = 1.0 - (1.0 - y0) * (1.0 - det)
    # Sifting weights: a dark count lands on any of the four detectors, so it is
    # sifted with probability 1/2; a photon with p_z·q_z + (1 − p_z)(1 − q_z).
    # At p_z = q_z = 1/2 both are 1/2 and this is Ma et al.'s E_μ exactly.
    s_sig = params.p_z * params.q_z + (1 - params.p_z) * (1 - params.q_z)
    s_dark = 0.5
    e = (E0 * y0 * s_dark + params.e_mis * det * s_sig) / (y0 * s_dark + det * s_sig)
    return q, e


def yield_n(params: PhyParams, km: np.ndarray | float, n: int) -> np.ndarray:
    """Y_n = Y0 + η_n − Y0·η_n, η_n = 1 − (1 − η)^n (Ma et al. 2005)."""
    e = np.atleast_1d(eta(params, km))
    eta_n = 1.0 - (1.0 - e) ** n
    return params.y0 + eta_n - params.y0 * eta_n


class DecoyEstimate(NamedTuple):
    """Decoy-state estimates (arrays over distance)."""

    y0_lower: np.ndarray
    y1_lower: np.ndarray
    e1_upper: np.ndarray
    q1_lower: np.ndarray
    key_rate: np.ndarray  #: asymptotic secret bits per pulse slot, clipped at 0


def decoy_bounds(params: PhyParams, q: np.ndarray, e: np.ndarray) -> DecoyEstimate:
    """Decoy bounds and asymptotic key rate from gains ``q`` and errors ``e`` (3 × N)."""
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
    q1 = y1 * m1 * np.exp(-m1)
    sift = params.p_mu[0] * params.p_z * params.q_z
    rate = sift * (q1 * (1.0 - h2(e1)) - params.f_ec * q[0] * h2(e[0]))
    return DecoyEstimate(y0, y1, e1, q1, np.maximum(rate, 0.0))


def key_rate(params: PhyParams, km: np.ndarray | float) -> np.ndarray:
    """Asymptotic decoy key rate (bits per slot) predicted by the formulas, over ``km``."""
    q, e = gains(params, km)
    return decoy_bounds(params, q, e).key_rate


def key_rate_infinite_decoy(params: PhyParams, km: np.ndarray | float) -> np.ndarray:
    """Key rate with exact Y1, e1 (infinitely many decoys), bits per slot."""
    q, e = gains(params, km)
    y1 = yield_n(params, km, 1)
    e1 = (E0 * params.y0 + params.e_mis * (y1 - params.y0)) / y1
    m1 = params.mu[0]
    sift = params.p_mu[0] * params.p_z * params.q_z
    r = sift * (y1 * m1 * np.exp(-m1) * (1 - h2(e1)) - params.f_ec * q[0] * h2(e[0]))
    return np.maximum(r, 0.0)


def plob(params: PhyParams, km: np.ndarray | float) -> np.ndarray:
    """PLOB bound −log2(1 − η_fibre) in bits per channel use (pulse slot)."""
    km = np.asarray(km, dtype=np.float64)
    log_t = -(params.alpha_db_per_km * km + params.insertion_loss_db) / 10.0 * np.log(10.0)
    with np.errstate(divide="ignore"):
        return -np.log2(-np.expm1(log_t))   # 1 − η computed without cancellation
