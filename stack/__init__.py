"""qkdnet: a hub-and-spoke, trusted-node QKD network protocol stack.

The spine package. Layers live in subpackages: :mod:`qkdnet.phy` (emulated quantum
PHY), :mod:`qkdnet.link` (QKD link layer), :mod:`qkdnet.hub` (trusted-hub routing)
and :mod:`qkdnet.apps` (OTP-secured streams and apps). This package holds what they
share: errors, configuration, the durable key store, tracing, the sideband frame
and its authentication, and the command line.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("qkdnet")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
