"""QKD link layer: decoy-state BB84 from detections to authenticated, finite-key-secure key.

Sifting, finite-key parameter estimation, Cascade error correction, verification and
privacy amplification (pure numpy modules), composed by the sans-I/O sessions in
:mod:`qkdnet.link.session` and driven over real sockets by :mod:`qkdnet.link.driver`.
"""
