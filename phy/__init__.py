"""Emulated quantum PHY: decoy-state weak-coherent-pulse source, fibre, detectors, attacks."""
