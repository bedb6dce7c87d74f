"""Trusted-hub routing: spokes, hop-by-hop re-keying, key relay."""
