"""Per-intensity statistics of an emulated run, and the decoy estimate from them.

:func:`measure` counts, per intensity class, the clicks and the errors among the
sifted clicks (Bob's basis equals Alice's) of a :class:`Detections`, looking up
Alice's choices from the counter-based source. The number of pulses sent per
class is taken as its expectation n_slots·p_k: drawing it exactly would mean a
lookup per slot, and its relative spread (≈ 1/sqrt(n_slots·p_k)) is negligible
next to that of the click counts. Only counts leave this module, never bits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qkdnet.phy import theory
from qkdnet.phy.channel import Detections
from qkdnet.phy.params import PhyParams
from qkdnet.phy.source import AliceSource


@dataclass(frozen=True)
class IntensityStats:
    """Counts per intensity class (arrays of length 3)."""

    params: PhyParams
    n_slots: int
    sent: np.ndarray      #: expected pulses per class, n_slots·p_k
    clicks: np.ndarray    #: detections per class
    sifted: np.ndarray    #: detections with Bob's basis = Alice's
    errors: np.ndarray    #: sifted detections with Bob's bit ≠ Alice's

    @property
    def gains(self) -> np.ndarray:
        """Q_k = clicks / pulses sent."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.sent > 0, self.clicks / self.sent, 0.0)

    @property
    def qber(self) -> np.ndarray:
        """E_k = errors / sifted (0 where nothing was sifted)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.sifted > 0, self.errors / np.maximum(self.sifted, 1), 0.0)

    def decoy(self) -> theory.DecoyEstimate:
        """Decoy bounds and asymptotic key rate from the emulated gains and errors."""
        return theory.decoy_bounds(self.params, self.gains[:, None], self.qber[:, None])

    def as_dict(self) -> dict[str, list[float]]:
        """Plain-data view for JSON."""
        return {"sent": self.sent.tolist(), "clicks": self.clicks.tolist(),
                "sifted": self.sifted.tolist(), "errors": self.errors.tolist(),
                "gain": self.gains.tolist(), "qber": self.qber.tolist()}


def measure_bases(source: AliceSource, det: Detections) -> tuple[np.ndarray, np.ndarray]:
    """Per-basis sifted gains and error rates, arrays (3, 2): ``gain[k, b]`` = detections
    with Alice and Bob both in basis b per pulse Alice sent with intensity k in b;
    ``error[k, b]`` the error rate among them (as the link sifts)."""
    p = source.params
    a = source.lookup(det.slots)
    both = a.basis == det.basis
    wrong = both & (a.bit != det.bit)
    cell = a.intensity.astype(np.int64) * 2 + a.basis
    n = np.bincount(cell, weights=both, minlength=6).reshape(3, 2)
    m = np.bincount(cell, weights=wrong, minlength=6).reshape(3, 2)
    sent = det.n_slots * np.outer(p.p_mu, [p.p_z, 1 - p.p_z])
    with np.errstate(divide="ignore", invalid="ignore"):
        gain = np.where(sent > 0, n / sent, 0.0)
        error = np.where(n > 0, m / np.maximum(n, 1), 0.0)
    return gain, error


def measure(source: AliceSource, det: Detections) -> IntensityStats:
    """Per-intensity click, sifted and error counts of ``det``."""
    p = source.params
    a = source.lookup(det.slots)
    sifted = a.basis == det.basis
    wrong = sifted & (a.bit != det.bit)
    k = a.intensity
    return IntensityStats(
        params=p, n_slots=det.n_slots,
        sent=np.asarray(p.p_mu, dtype=np.float64) * det.n_slots,
        clicks=np.bincount(k, minlength=3).astype(np.int64),
        sifted=np.bincount(k, weights=sifted, minlength=3).astype(np.int64),
        errors=np.bincount(k, weights=wrong, minlength=3).astype(np.int64),
    )
