"""Named parameter sets (:func:`get`, :data:`PRESETS`) with the sources of their numbers.

Where a paper gives a number it is cited next to it; where it does not (decoy
intensities and probabilities chosen for the link class, rates of the "class of"
presets), the comment says the value is ours. Every preset has the four-detector,
passive-basis Bob of :mod:`qkdnet.phy.params`: a paper's total vacuum yield Y0 (the
probability of a click in an empty gate, all detectors together) is split over the
four detectors, p_dark = Y0 / 4 (to first order). Every preset with a dead time uses
the common dead time (``dead_time_mode="common"``, the default): any click blinds all
four detectors, so detection does not depend on Bob's basis (spec/link.md).

Provenance of the cited numbers: the papers' parameter lists as transcribed in the
project's reference notes and in qkdnet.link.finite_key (Lim's detection model
D = 1 − (1 − 2 p_dc) e^(−ημ)); section and table numbers come from those
transcriptions (the papers' full texts were not at hand when they were re-checked).
"""

from __future__ import annotations

from qkdnet.errors import ConfigError
from qkdnet.phy.params import PhyParams

PRESETS: dict[str, PhyParams] = {
    # Gobby, Yuan, Shields, APL 84, 3762 (2004), as tabulated by Ma, Qi, Zhao, Lo,
    # PRA 72, 012326 (2005), Table I: alpha 0.21 dB/km, e_det 3.3 %, Y0 1.7e-6,
    # eta_Bob 4.5 %, f 1.22, mu ~ 0.48 (their optimum), 2 MHz.
    # Decoys, probabilities and basis bias (ours): nu = 0.2 and a near-vacuum 2e-4 with
    # p = (0.5, 0.3, 0.2) and p_z = 0.6, the optimum of
    # qkdnet.link.finite_key.optimise_key_rate at 10 km for ~5e5-bit key-basis blocks
    # with mu kept at 0.48. (Ma et al.'s asymptotic nu << mu, p_z = 1/2 gives no
    # finite-key-positive key at blocks the link can carry.)
    # No afterpulsing or dead time: the tabulated Y0/e_det already include them.
    "gys2004": PhyParams(
        name="gys2004", clock_hz=2e6, mu=(0.48, 0.2, 2e-4), p_mu=(0.5, 0.3, 0.2),
        p_z=0.6, q_z=0.6, alpha_db_per_km=0.21, insertion_loss_db=0.0, eta_det=0.045,
        p_dark=1.7e-6 / 4, p_afterpulse=0.0, dead_time_s=0.0, e_mis=0.033, f_ec=1.22,
        source="Gobby-Yuan-Shields 2004 via Ma-Qi-Zhao-Lo PRA 72 012326 (2005) Table I",
    ),
    # Lim, Curty, Walenta, Xu, Zbinden, PRA 89, 022307 (2014), simulation section
    # (parameters of their Fig. 1): eta_Bob 10 %, p_dc 6e-7, afterpulsing 4 %, e_mis
    # 0.5 %, 0.2 dB/km, f 1.16. Their p_dc is per detector and Bob has two: detection
    # probability 1 - (1 - 2 p_dc) e^(-eta mu), so their vacuum yield is Y0 = 2 p_dc =
    # 1.2e-6 and ours p_dark = Y0 / 4 = 3e-7 (was 6e-7: twice Lim's Y0).
    # Afterpulsing: each registered click is followed with probability 4 % by a click
    # of the same detector in the next live gate (their R = D (1 + p_ap)).
    # Intensities (0.4, 0.2, 2e-4), probabilities (0.5, 0.3, 0.2) and basis bias 0.7 are
    # ours: the optimum of qkdnet.link.finite_key.optimise_key_rate on this channel at
    # 10 km for ~1e6-bit key-basis blocks, afterpulsing included (the paper optimises
    # per distance and block size too; its values are not transcribed here).
    # Repetition rate not part of their model: 1 GHz (ours). No dead time in their model.
    "lim2014-apd": PhyParams(
        name="lim2014-apd", clock_hz=1e9, mu=(0.4, 0.2, 2e-4), p_mu=(0.5, 0.3, 0.2),
        p_z=0.7, q_z=0.7, alpha_db_per_km=0.2, insertion_loss_db=0.0, eta_det=0.10,
        p_dark=2 * 6e-7 / 4, p_afterpulse=0.04, dead_time_s=0.0, e_mis=0.005, f_ec=1.16,
        source="Lim-Curty-Walenta-Xu-Zbinden PRA 89 022307 (2014)",
    ),
    # Rusca, Boaron, Gruenenfelder, Martin, Zbinden, APL 112, 171104 (2018): one decoy,
    # eta_det 50 %, p_dc 1e-8, e_d 1 %, 1 GHz, 100 ns dead time (= 100 gates). Their
    # p_dc is the dark-count probability of the whole receiver per gate (vacuum yield
    # Y0 = p_dc), so ours is p_dark = 1e-8 / 4 (was 1e-8 per detector: four times
    # Rusca's Y0). The dead time is common to the detectors (see module docstring).
    # Intensities, probabilities and basis bias (ours): mu = (0.5, 0.2), p = (0.5, 0.5),
    # p_z = 0.75, near the optimum of qkdnet.link.finite_key.optimise_key_rate (one decoy,
    # Rusca's vacuum bound with both Hoeffding terms) at 10 km for 2-4e5-bit key-basis
    # blocks; a stronger basis bias starves the X-basis estimate at these block sizes.
    # 0.2 dB/km standard fibre.
    "rusca2018-snspd": PhyParams(
        name="rusca2018-snspd", clock_hz=1e9, mu=(0.5, 0.2, 0.0), p_mu=(0.5, 0.5, 0.0),
        p_z=0.75, q_z=0.75, alpha_db_per_km=0.2, insertion_loss_db=0.0, eta_det=0.50,
        p_dark=1e-8 / 4, p_afterpulse=0.0, dead_time_s=100e-9, e_mis=0.01, f_ec=1.16,
        source="Rusca-Boaron-Gruenenfelder-Martin-Zbinden APL 112 171104 (2018)",
    ),
    # Metro link of the class of Gruenenfelder et al., Nat. Photon. 17, 422 (2023) and
    # Li et al., Nat. Photon. 17, 416 (2023): 2.5 GHz source, multi-pixel SNSPDs.
    # Representative values (ours, not one paper's): eta 80 %, dark 100 Hz/detector
    # (4e-8 per 400 ps gate, per detector: Y0 = 1.6e-7), effective dead time 10 ns
    # (= 25 gates) thanks to the pixels, common to the four detectors, e_mis 1 %, one
    # decoy (as both papers use). Decoy settings as for rusca2018-snspd (ours, same
    # optimisation, which ignores dead time: under the common dead time the link
    # saturates at short distance, live ~24 % of gates at 10 km).
    "snspd-metro": PhyParams(
        name="snspd-metro", clock_hz=2.5e9, mu=(0.5, 0.2, 0.0), p_mu=(0.5, 0.5, 0.0),
        p_z=0.75, q_z=0.75, alpha_db_per_km=0.2, insertion_loss_db=1.0, eta_det=0.80,
        p_dark=4e-8, p_afterpulse=0.0, dead_time_s=10e-9, e_mis=0.01, f_ec=1.1,
        source="class of Gruenenfelder et al. 2023 / Li et al. 2023 (representative)",
    ),
    # Long-haul ultra-low-loss fibre of the class of Boaron et al., PRL 121, 190502
    # (2018), 421 km: ~0.17 dB/km ULL fibre, 2.5 GHz, SNSPDs with very low dark counts
    # (order 0.1 Hz => 4e-11 per gate), one decoy. eta 60 %, dead time 40 ns and
    # e_mis 0.5 % are representative values (ours). Decoy settings (ours, same
    # optimisation as rusca2018-snspd): mu = (0.6, 0.2), p = (0.5, 0.5), p_z = 0.75.
    "ull-longhaul": PhyParams(
        name="ull-longhaul", clock_hz=2.5e9, mu=(0.6, 0.2, 0.0), p_mu=(0.5, 0.5, 0.0),
        p_z=0.75, q_z=0.75, alpha_db_per_km=0.17, insertion_loss_db=0.0, eta_det=0.60,
        p_dark=4e-11, p_afterpulse=0.0, dead_time_s=40e-9, e_mis=0.005, f_ec=1.1,
        source="class of Boaron et al. PRL 121 190502 (2018) (representative)",
    ),
}


def names() -> list[str]:
    """Preset names, in a stable order."""
    return list(PRESETS)


def get(name: str) -> PhyParams:
    """The preset called ``name``; unknown names raise :class:`ConfigError`."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}", source="presets", key="preset",
                          expected="one of " + ", ".join(PRESETS)) from None
