"""The examples the README shows run as written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.slow
def test_embedded_network_example_relays_a_message_with_qkd_key() -> None:
    result = subprocess.run([sys.executable, str(EXAMPLES / "embedded_network.py")],
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "hello through the hub"
    # A stopping spoke ends its link before it closes the hub connection; it used to
    # try to send link frames on the connection it was closing, every run. (The hub's
    # end can still report the spoke's close: that needs link/driver.py.)
    assert "in state CLOSE_SENT" not in result.stderr, result.stderr


def test_example_configs_load() -> None:
    from qkdnet.config import load_config

    roles = {path.stem: load_config(path).role
             for path in sorted((EXAMPLES / "network").glob("*.toml"))}
    assert roles == {"alice": "spoke", "bob": "spoke", "carol": "spoke", "hub": "hub"}
