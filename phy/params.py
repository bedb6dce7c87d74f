"""Physical parameters of an emulated decoy-state BB84 link (:class:`PhyParams`).

One frozen dataclass holds everything the source, the fibre and Bob's detectors
need. It validates itself on construction: a bad value raises
:class:`qkdnet.errors.ConfigError` whose ``key`` names the parameter, so a user
editing a preset or a command line sees which number is wrong.

Conventions used throughout :mod:`qkdnet.phy`:

* basis 0 = Z (key basis, chosen by Alice with probability ``p_z`` and by Bob's
  passive beam splitter with probability ``q_z``), basis 1 = X;
* intensity index 0 = signal μ1, 1 = decoy μ2, 2 = weak/vacuum μ3 (μ1 > μ2 > μ3 ≥ 0);
  a one-decoy preset sets ``p_mu[2] = 0``;
* Bob has four detectors (two per basis, passive basis choice); ``p_dark`` is the
  dark-count probability per detector per gate, so the vacuum yield is
  Y0 = 1 − (1 − p_dark)^4;
* one gate = one pulse slot; ``dead_time_s`` is turned into whole gates;
* ``dead_time_mode`` "common" (default): a click of any detector makes all four
  detectors dead for the next ``dead_gates`` gates, so Bob's detection probability
  cannot depend on his basis or on his last outcome (the countermeasure to Weier
  et al., NJP 13, 073024 (2011); the argument is in spec/link.md).
  "per-detector": each detector has its own dead time (demonstrates the flaw).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from qkdnet.errors import ConfigError

#: Number of single-photon detectors at Bob (two per basis: passive basis choice).
N_DETECTORS = 4

#: Accepted values of :attr:`PhyParams.dead_time_mode`.
DEAD_TIME_MODES = ("common", "per-detector")


def _check_prob(name: str, value: float, *, open_upper: bool = False) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value)):
        raise ConfigError("must be a finite number", source="parameters", key=name,
                          expected="a probability in [0, 1]")
    if value < 0.0 or value > 1.0 or (open_upper and value >= 1.0):
        raise ConfigError(f"{value!r} is not a probability", source="parameters", key=name,
                          expected="a value in [0, 1)" if open_upper else "a value in [0, 1]")


def _check_nonneg(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value)) or value < 0:
        raise ConfigError(f"{value!r} is negative or not finite", source="parameters",
                          key=name, expected="a finite number >= 0")


@dataclass(frozen=True)
class PhyParams:
    """Parameters of source, fibre and detectors; validated on construction.

    Change one with :meth:`with_overrides` (or :func:`dataclasses.replace`), which
    validates again.
    """

    name: str = "custom"
    #: Pulse slots (gates) per second.
    clock_hz: float = 1e9
    #: Mean photon numbers (μ1 signal, μ2 decoy, μ3 weak or vacuum), strictly decreasing.
    mu: tuple[float, float, float] = (0.5, 0.1, 0.0)
    #: Probability Alice picks each intensity; sums to 1 (p_mu[2] = 0 for one decoy).
    p_mu: tuple[float, float, float] = (0.8, 0.1, 0.1)
    #: Probability Alice prepares in the Z (key) basis.
    p_z: float = 0.5
    #: Probability Bob's passive beam splitter sends a photon to the Z arm.
    q_z: float = 0.5
    #: Fibre attenuation in dB per km.
    alpha_db_per_km: float = 0.2
    #: Fixed loss in dB between the fibre and the detectors (Bob's optics).
    insertion_loss_db: float = 0.0
    #: Detector efficiency (η_Bob when insertion loss is folded into it).
    eta_det: float = 0.1
    #: Dark-count probability per detector per gate.
    p_dark: float = 1e-7
    #: Probability that a click is followed by an afterpulse in the first live gate.
    p_afterpulse: float = 0.0
    #: Dead time after each click, in seconds (rounded to whole gates).
    dead_time_s: float = 0.0
    #: "common": any click blinds all four detectors for the dead time (the
    #: countermeasure; default); "per-detector": only the detector that clicked.
    dead_time_mode: str = "common"
    #: Misalignment / optical error: probability a photon measured in the right basis flips.
    e_mis: float = 0.01
    #: Error-correction inefficiency f used by the asymptotic key-rate estimate.
    f_ec: float = 1.16
    #: Free-text provenance (papers the numbers come from).
    source: str = ""

    def __post_init__(self) -> None:
        _check_nonneg("clock_hz", self.clock_hz)
        if self.clock_hz <= 0:
            raise ConfigError("must be positive", source="parameters", key="clock_hz",
                              expected="a pulse rate > 0 Hz")
        if len(self.mu) != 3:
            raise ConfigError("needs three intensities", source="parameters", key="mu",
                              expected="(mu1, mu2, mu3)")
        if len(self.p_mu) != 3:
            raise ConfigError("needs three probabilities", source="parameters", key="p_mu",
                              expected="(p1, p2, p3)")
        for i, m in enumerate(self.mu):
            _check_nonneg(f"mu[{i}]", m)
        if self.mu[0] > 10.0:
            raise ConfigError("signal intensity too large to emulate", source="parameters",
                              key="mu[0]", expected="a mean photon number <= 10")
        if not self.mu[0] > self.mu[1]:
            raise ConfigError("decoy intensities in the wrong order: mu1 must exceed mu2",
                              source="parameters", key="mu", expected="mu1 > mu2 > mu3 >= 0")
        if self.p_mu[2] > 0 and not self.mu[1] > self.mu[2]:
            raise ConfigError("decoy intensities in the wrong order: mu2 must exceed mu3",
                              source="parameters", key="mu", expected="mu1 > mu2 > mu3 >= 0")
        for i, p in enumerate(self.p_mu):
            _check_prob(f"p_mu[{i}]", p)
        if abs(sum(self.p_mu) - 1.0) > 1e-9:
            raise ConfigError(f"probabilities sum to {sum(self.p_mu)!r}", source="parameters",
                              key="p_mu", expected="p1 + p2 + p3 = 1")
        if self.p_mu[0] <= 0 or self.p_mu[1] <= 0:
            raise ConfigError("signal and first decoy must both be used", source="parameters",
                              key="p_mu", expected="p1 > 0 and p2 > 0")
        _check_prob("p_z", self.p_z)
        _check_prob("q_z", self.q_z)
        _check_nonneg("alpha_db_per_km", self.alpha_db_per_km)
        _check_nonneg("insertion_loss_db", self.insertion_loss_db)
        _check_prob("eta_det", self.eta_det)
        if self.eta_det <= 0:
            raise ConfigError("detector efficiency is zero", source="parameters", key="eta_det",
                              expected="a value in (0, 1]")
        _check_prob("p_dark", self.p_dark, open_upper=True)
        _check_prob("p_afterpulse", self.p_afterpulse, open_upper=True)
        _check_nonneg("dead_time_s", self.dead_time_s)
        if self.dead_time_mode not in DEAD_TIME_MODES:
            raise ConfigError(f"unknown dead-time mode {self.dead_time_mode!r}",
                              source="parameters", key="dead_time_mode",
                              expected='"common" (any click blinds all four detectors) or '
                                       '"per-detector"')
        _check_prob("e_mis", self.e_mis)
        if self.e_mis > 0.5:
            raise ConfigError("misalignment above 50 %", source="parameters", key="e_mis",
                              expected="a value in [0, 0.5]")
        _check_nonneg("f_ec", self.f_ec)
        if self.f_ec < 1.0:
            raise ConfigError("below the Shannon limit", source="parameters", key="f_ec",
                              expected="f >= 1")

    # --- derived quantities -------------------------------------------------------
    @property
    def dead_gates(self) -> int:
        """Dead time in whole gates (slots)."""
        return round(self.dead_time_s * self.clock_hz)

    @property
    def y0(self) -> float:
        """Vacuum yield: probability of at least one dark count in a gate."""
        return 1.0 - (1.0 - self.p_dark) ** N_DETECTORS

    @property
    def eta_bob(self) -> float:
        """Transmittance inside Bob: insertion loss times detector efficiency."""
        return self.eta_det * 10.0 ** (-self.insertion_loss_db / 10.0)

    def fibre_transmittance(self, km: float) -> float:
        """Transmittance of ``km`` of fibre."""
        if km < 0 or not math.isfinite(km):
            raise ConfigError(f"{km!r} km", source="parameters", key="km",
                              expected="a fibre length >= 0")
        return 10.0 ** (-self.alpha_db_per_km * km / 10.0)

    def eta_total(self, km: float) -> float:
        """End-to-end transmittance η = η_fibre · η_Bob (Ma et al. 2005, eq. for η)."""
        return self.fibre_transmittance(km) * self.eta_bob

    def with_overrides(self, **changes: Any) -> PhyParams:
        """A copy with some fields changed (validated); unknown names raise ConfigError."""
        names = {f.name for f in dataclasses.fields(self)}
        for key in changes:
            if key not in names:
                raise ConfigError("no such parameter", source="parameters", key=key,
                                  expected="one of " + ", ".join(sorted(names)))
        if "mu" in changes:
            changes["mu"] = tuple(float(x) for x in changes["mu"])
        if "p_mu" in changes:
            changes["p_mu"] = tuple(float(x) for x in changes["p_mu"])
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """Plain-data view (for JSON output), with the derived quantities added."""
        d = dataclasses.asdict(self)
        d["mu"] = list(self.mu)
        d["p_mu"] = list(self.p_mu)
        d["dead_gates"] = self.dead_gates
        d["y0"] = self.y0
        return d
