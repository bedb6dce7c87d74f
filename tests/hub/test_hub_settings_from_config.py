"""The daemons' settings come from the config file: each [routing] key reaches them."""

from __future__ import annotations

from pathlib import Path

from qkdnet.config import load_config
from qkdnet.hub.cli import hub_settings_from_config, spoke_settings_from_config


def _write(folder: Path, name: str, body: str) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(body)
    return path


def test_routing_key_wait_and_key_stall_reach_both_daemons(tmp_path: Path) -> None:
    (tmp_path / "alice.secret").write_bytes(bytes(range(256)) * 16)
    routing = "[routing]\nkey_wait = 7.5\nkey_stall = 42.0\n"
    hub = _write(tmp_path, "hub", '[node]\nname = "hub"\nrole = "hub"\n'
                 f'[keystore]\npath = "{tmp_path / "hub.keys"}"\n{routing}'
                 f'[spokes.alice]\nbootstrap_secret = "{tmp_path / "alice.secret"}"\n')
    spoke = _write(tmp_path, "alice", '[node]\nname = "alice"\nrole = "spoke"\nhub = "hub"\n'
                   f'[keystore]\npath = "{tmp_path / "alice.keys"}"\n'
                   '[network]\nhub_host = "127.0.0.1"\n'
                   f'[auth]\nbootstrap_secret = "{tmp_path / "alice.secret"}"\n{routing}')
    for settings in (hub_settings_from_config(load_config(hub)),
                     spoke_settings_from_config(spoke)):
        assert (settings.key_wait, settings.key_stall) == (7.5, 42.0)
