"""QKD link layer: sifting, parameter estimation, error correction, verification, privacy amplification."""
