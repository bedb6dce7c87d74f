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


def write_prefilled_network(folder: Path, spokes: tuple[str, ...] | list[str], port: int, *,
                            hub_host: str = "127.0.0.1", listen_host: str = "127.0.0.1",
                            data_bits: int = 1 << 17, auth_bits: int = 1 << 17,
                            app_sockets: bool = False) -> None:
    """Configs for a hub and ``spokes`` as daemons (links off), fresh bootstrap
    secrets, and key stores prefilled with TEST-ONLY key (``data_bits`` each way)."""
    import os

    from qkdnet.hub.node import prefill_pair
    from qkdnet.keystore import KeyStore

    hub = KeyStore(folder / "hub.keys")
    lines = ['[node]\nname = "hub"\nrole = "hub"\n',
             f'[network]\nlisten_host = "{listen_host}"\nsideband_port = {port}\n',
             '[keystore]\npath = "hub.keys"\n', '[link]\nenabled = false\n']
    for name in spokes:
        secret = os.urandom(4096)
        (folder / f"{name}.bootstrap").write_bytes(secret)
        store = KeyStore(folder / f"{name}.keys")
        hub.import_bootstrap(name, secret, initiator=False)
        store.import_bootstrap("hub", secret, initiator=True)
        prefill_pair(hub, "hub", store, name, data_bits, auth_bits=auth_bits)
        store.close()
        lines.append(f'[spokes.{name}]\nbootstrap_secret = "{name}.bootstrap"\n')
        app = f'app_socket = "{folder / (name + ".sock")}"\n' if app_sockets else ""
        (folder / f"{name}.toml").write_text(
            f'[node]\nname = "{name}"\nrole = "spoke"\nhub = "hub"\n'
            f'[network]\nhub_host = "{hub_host}"\nhub_sideband_port = {port}\n{app}'
            f'[keystore]\npath = "{name}.keys"\n'
            f'[auth]\nbootstrap_secret = "{name}.bootstrap"\n[link]\nenabled = false\n')
    hub.close()
    (folder / "hub.toml").write_text("".join(lines))
