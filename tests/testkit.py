"""Helpers several test folders share (pytest puts tests/ on sys.path: pyproject.toml).

``free_port()`` finds a TCP port nobody listens on; ``running_netfixture(folder,
*spokes)`` runs tests/apps/apps_netfixture.py (a hub and spokes with TEST-ONLY key,
their node sockets in ``folder``) as a separate process for as long as the block
lasts.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

NETFIXTURE = Path(__file__).parent / "apps" / "apps_netfixture.py"


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_netfixture(folder: Path, *spokes: str) -> Iterator[Path]:
    """The fixture network as its own process; yields ``folder`` once it is READY."""
    proc = subprocess.Popen([sys.executable, str(NETFIXTURE), str(folder), *spokes],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "READY"
        yield folder
    finally:
        proc.terminate()
        proc.wait(10)
