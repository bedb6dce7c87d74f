"""Emulated quantum PHY: decoy-state weak-coherent-pulse source, fibre, detectors, attacks.

The link layer uses::

    from qkdnet.phy import PhyParams, presets, AliceSource, QuantumChannel
    params = presets.get("gys2004")
    source = AliceSource(params, seed)
    det = QuantumChannel(params, km, attack=None, seed=1).run(source, start_slot, n_slots)
    choices = source.lookup(det.slots)     # Alice's basis/bit/intensity for those slots
"""

from qkdnet.phy import presets, theory
from qkdnet.phy.attacks import (
    BeamSplitting,
    EveRecord,
    InterceptResend,
    PhotonNumberSplitting,
    parse_attack,
)
from qkdnet.phy.channel import BobDetector, Detections, QuantumChannel
from qkdnet.phy.params import PhyParams
from qkdnet.phy.source import AliceSource, PulseBatch, SlotChoices

__all__ = [
    "AliceSource",
    "BeamSplitting",
    "BobDetector",
    "Detections",
    "EveRecord",
    "InterceptResend",
    "PhotonNumberSplitting",
    "PhyParams",
    "PulseBatch",
    "QuantumChannel",
    "SlotChoices",
    "parse_attack",
    "presets",
    "theory",
]
