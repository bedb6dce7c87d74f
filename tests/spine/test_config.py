"""Node configuration: defaults, path resolution and every validation error path."""

from __future__ import annotations

from pathlib import Path

import pytest

import qkdnet.config as config_module
from qkdnet.config import (
    DEFAULT_QUANTUM_PORT,
    DEFAULT_SIDEBAND_PORT,
    NodeConfig,
    PhyConfig,
    config_from_dict,
    load_config,
)
from qkdnet.errors import ConfigError

SPOKE = """
[node]
name = "alice"
role = "spoke"
hub = "hub"

[network]
hub_host = "127.0.0.1"
"""

FULL_HUB = """
[node]
name = "hub"
role = "hub"

[network]
listen_host = "0.0.0.0"
sideband_port = 9001
quantum_port = 9002
app_socket = "run/hub.sock"

[keystore]
path = "keys/hub.sqlite"
lease_bits = 4096

[phy]
preset = "gys2004"
km = 42.5
attack = "intercept-resend:0.3"
seed = 7
[phy.params]
eta_det = 0.2
mu = [0.6, 0.2, 0.0]

[link]
enabled = false
block_slots = 2000000
eps_sec = 1e-9
eps_cor = 1e-14
qber_threshold = 0.09
decoy = "one"
auth_reserve_bits = 8192
step_timeout = 5

[routing]
key_wait = 2
window = 16
queue_frames = 10
queue_bytes = 65536

[spokes.alice]
bootstrap_secret = "secrets/alice.bin"
km = 80.0
seed = 3

[spokes.bob]
bootstrap_secret = "/abs/bob.bin"
preset = "lim2014-apd"
attack = "pns"

[trace]
enabled = true
folder = "tr"

[pcap]
path = "hub.pcap"
"""


def write(tmp_path: Path, text: str, name: str = "node.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    assert err.source == str(path)
    assert str(path) in str(err)
    assert err.exit_code == 2
    return err


# ---------------------------------------------------------------------- good files

def test_minimal_spoke_gets_defaults_resolved_beside_the_file(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, SPOKE))
    assert isinstance(cfg, NodeConfig)
    assert (cfg.name, cfg.role, cfg.node.hub) == ("alice", "spoke", "hub")
    assert cfg.network.sideband_port == DEFAULT_SIDEBAND_PORT == 7787
    assert cfg.network.quantum_port == DEFAULT_QUANTUM_PORT == 7788
    assert cfg.network.hub_sideband_port == 7787
    assert cfg.keystore.path == tmp_path / "keystore.sqlite"
    assert cfg.trace.folder == tmp_path / "traces"
    assert cfg.trace.enabled is False
    assert cfg.link.eps_sec == 1e-10 and cfg.link.eps_cor == 1e-15
    assert cfg.link.decoy == "two"
    assert cfg.phy.preset == "snspd-metro" and cfg.phy.attack == "none"
    assert cfg.auth.bootstrap_secret is None and cfg.pcap.path is None
    assert cfg.secret_for("hub") is None and cfg.spokes == {}
    assert cfg.routing.window is None and cfg.link.enabled is True
    assert cfg.source == str(tmp_path / "node.toml")


def test_full_hub_file_round_trips_every_key(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, FULL_HUB))
    assert cfg.network.listen_host == "0.0.0.0"
    assert (cfg.network.sideband_port, cfg.network.quantum_port) == (9001, 9002)
    assert cfg.network.app_socket == tmp_path / "run" / "hub.sock"
    assert cfg.keystore.path == tmp_path / "keys" / "hub.sqlite"
    assert cfg.keystore.lease_bits == 4096
    assert cfg.phy == PhyConfig(preset="gys2004", km=42.5, attack="intercept-resend:0.3",
                                seed=7, params={"eta_det": 0.2, "mu": [0.6, 0.2, 0.0]})
    assert cfg.phy.phy_params().eta_det == 0.2
    assert cfg.link.block_slots == 2_000_000 and cfg.link.decoy == "one"
    assert cfg.link.enabled is False
    assert cfg.link.step_timeout == 5.0 and isinstance(cfg.link.step_timeout, float)
    assert sorted(cfg.spokes) == ["alice", "bob"]
    assert cfg.secret_for("alice") == tmp_path / "secrets" / "alice.bin"
    assert cfg.secret_for("bob") == Path("/abs/bob.bin")
    assert cfg.secret_for("carol") is None
    assert cfg.phy_for("alice") == PhyConfig(preset="gys2004", km=80.0,
                                             attack="intercept-resend:0.3", seed=3,
                                             params=cfg.phy.params)
    assert cfg.phy_for("bob").preset == "lim2014-apd" and cfg.phy_for("bob").km == 42.5
    assert cfg.phy_for("bob").attack == "pns"
    assert cfg.phy_for(None) == cfg.phy == cfg.phy_for("carol")
    assert (cfg.routing.key_wait, cfg.routing.window) == (2.0, 16)
    assert (cfg.routing.queue_frames, cfg.routing.queue_bytes) == (10, 65536)
    assert cfg.trace.enabled and cfg.trace.folder == tmp_path / "tr"
    assert cfg.pcap.path == tmp_path / "hub.pcap"
    data = cfg.as_dict()
    assert data["network"]["sideband_port"] == 9001
    assert data["spokes"]["bob"]["bootstrap_secret"] == "/abs/bob.bin"


def test_with_trace_overrides_the_file_and_builds_the_folder(tmp_path: Path) -> None:
    off = load_config(write(tmp_path, SPOKE))
    assert not off.trace_folder().enabled
    cfg = off.with_trace(True, tmp_path / "t2")
    assert cfg.trace.enabled and cfg.trace.folder == tmp_path / "t2"
    folder = cfg.trace_folder(clock=lambda: 5.0)
    folder.session(3).event("test", "hello")
    folder.close()
    (path,) = folder.files()
    assert path == tmp_path / "t2" / "alice_3.jsonl"
    assert '"time":5.0' in path.read_text()


def test_config_from_dict_uses_base_dir(tmp_path: Path) -> None:
    cfg = config_from_dict({"node": {"name": "h", "role": "hub"},
                            "keystore": {"path": "k.sqlite"}}, base_dir=tmp_path)
    assert cfg.keystore.path == tmp_path / "k.sqlite"


# ------------------------------------------------------------------- error paths

@pytest.mark.parametrize(("text", "key", "fragment"), [
    # unknown keys, with suggestions
    ('[node]\nname = "a"\nrole = "hub"\nnmae = "x"\n', "node.nmae", "did you mean 'name'"),
    (SPOKE + "sidebandport = 1\n", "network.sidebandport", "did you mean 'sideband_port'"),
    ('[node]\nname = "a"\nrole = "hub"\n[netwrok]\n', "netwrok", "did you mean 'network'"),
    ('[node]\nname = "a"\nrole = "hub"\n[link]\neps_cr = 1e-9\n', "link.eps_cr",
     "did you mean 'eps_cor'"),
    ('[node]\nname = "a"\nrole = "hub"\n[zzz]\n', "zzz", "unknown key"),
    # missing things
    ('[network]\nsideband_port = 1\n', "node", "missing"),
    ('[node]\nrole = "hub"\n', "node.name", "missing"),
    ('[node]\nname = "a"\n', "node.role", "missing"),
    ('[node]\nname = "a"\nrole = "spoke"\n', "node.hub", "must name its hub"),
    ('[node]\nname = "a"\nrole = "spoke"\nhub = "h"\n', "network.hub_host", "hub listens"),
    # wrong types and values
    ('[node]\nname = "a"\nrole = "router"\n', "node.role", "not allowed"),
    ('[node]\nname = 5\nrole = "hub"\n', "node.name", "got an integer"),
    ('[node]\nname = "bad name"\nrole = "hub"\n', "node.name", "not a valid node name"),
    ('[node]\nname = "a"\nrole = "hub"\nhub = "b"\n', "node.hub", "only a spoke"),
    ('[node]\nname = "a"\nrole = "spoke"\nhub = "a"\n[network]\nhub_host = "x"\n',
     "node.hub", "own hub"),
    (SPOKE + "sideband_port = 70000\n", "network.sideband_port", "out of range"),
    (SPOKE + 'quantum_port = "7788"\n', "network.quantum_port", "got a string"),
    (SPOKE + "quantum_port = true\n", "network.quantum_port", "got a boolean"),
    (SPOKE + "hub_quantum_port = 1.5\n", "network.hub_quantum_port", "got a number"),
    (SPOKE + 'listen_host = ""\n', "network.listen_host", "not a host name"),
    (SPOKE + "app_socket = 3\n", "network.app_socket", "got an integer"),
    (SPOKE + 'app_socket = ""\n', "network.app_socket", "file path"),
    (SPOKE + "[keystore]\npath = []\n", "keystore.path", "got an array"),
    (SPOKE + "[keystore]\nlease_bits = 0\n", "keystore.lease_bits", "not positive"),
    (SPOKE + "[link]\neps_sec = 0\n", "link.eps_sec", "strictly between 0 and 1"),
    (SPOKE + "[link]\neps_cor = 1.5\n", "link.eps_cor", "strictly between 0 and 1"),
    (SPOKE + "[link]\neps_sec = nan\n", "link.eps_sec", "finite"),
    (SPOKE + "[link]\nqber_threshold = 0.6\n", "link.qber_threshold", "QBER"),
    (SPOKE + '[link]\ndecoy = "three"\n', "link.decoy", "not allowed"),
    (SPOKE + "[link]\nblock_slots = 10\n", "link.block_slots", "too small"),
    (SPOKE + "[link]\nblock_size = 10\n", "link.block_size", "did you mean 'block_slots'"),
    (SPOKE + "[routing]\nwindow = 0\n", "routing.window", "not positive"),
    (SPOKE + "[routing]\nkey_wait = -1\n", "routing.key_wait", "not positive"),
    (SPOKE + "[link]\nstep_timeout = -1\n", "link.step_timeout", "not positive"),
    (SPOKE + '[trace]\nenabled = "yes"\n', "trace.enabled", "got a string"),
    (SPOKE + "[pcap]\npath = 1\n", "pcap.path", "got an integer"),
    (SPOKE + "[auth]\npeers = 1\n", "auth.peers", "unknown key"),
    (SPOKE + '[spokes.bob]\nbootstrap_secret = "b.bin"\n', "spokes", "only a hub"),
    (SPOKE + "spokes = 1\n", "network.spokes", "unknown key"),
    ('[node]\nname = "h"\nrole = "hub"\nspokes = 1\n', "node.spokes", "unknown key"),
    ('spokes = 1\n[node]\nname = "h"\nrole = "hub"\n', "spokes", "got an integer"),
    ('[node]\nname = "h"\nrole = "hub"\n[spokes."b c"]\n', "spokes.b c",
     "not a valid node name"),
    ('[node]\nname = "h"\nrole = "hub"\n[spokes]\nb = 1\n', "spokes.b", "got an integer"),
    ('[node]\nname = "h"\nrole = "hub"\n[spokes.b]\nbootstrap_secret = 1\n',
     "spokes.b.bootstrap_secret", "got an integer"),
    ('[node]\nname = "h"\nrole = "hub"\n[spokes.b]\nkm = -1\n', "spokes.b.km", "negative"),
    ('[node]\nname = "h"\nrole = "hub"\n[spokes.b]\nkmm = 1\n', "spokes.b.kmm",
     "did you mean 'km'"),
    ('[node]\nname = "h"\nrole = "hub"\n[spokes.h]\n', "spokes.h", "its own spoke"),
    ('[node]\nname = "h"\nrole = "hub"\n[auth]\nbootstrap_secret = "s"\n',
     "auth.bootstrap_secret", "one secret per spoke"),
    ('node = 3\n', "node", "got an integer"),
    (SPOKE + "[phy]\nkm = -3\n", "phy.km", "negative"),
    (SPOKE + "[phy]\nparams = 3\n", "phy.params", "got an integer"),
])
def test_every_error_names_file_key_and_expectation(tmp_path: Path, text: str, key: str,
                                                     fragment: str) -> None:
    err = error_of(tmp_path, text)
    assert err.key == key
    assert fragment in str(err)
    assert err.expected, "every error says what was expected"


def test_unreadable_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read") as info:
        load_config(tmp_path / "absent.toml")
    assert info.value.source == str(tmp_path / "absent.toml")
    err = error_of(tmp_path, '[node\nname = "a"\n')
    assert "TOML syntax error" in str(err) and "line 1" in str(err)
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'[node]\nname = "\xe9"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(bad)


# ------------------------------------------------------------------- PHY section

def test_phy_section_is_checked_by_the_phy_layer(tmp_path: Path) -> None:
    pytest.importorskip("qkdnet.phy.presets")
    err = error_of(tmp_path, SPOKE + '[phy]\npreset = "gys2005"\n')
    assert err.key == "phy.preset" and "gys2004" in str(err.expected)
    err = error_of(tmp_path, SPOKE + "[phy.params]\neta_dett = 0.1\n")
    assert err.key == "phy.params.eta_dett" and "did you mean 'eta_det'" in str(err)
    err = error_of(tmp_path, SPOKE + "[phy.params]\neta_det = 0.0\n")
    assert err.key == "phy.params.eta_det"
    assert "parameters:" not in str(err)  # re-labelled with the file, not the PHY's source
    err = error_of(tmp_path, SPOKE + '[phy]\nattack = "teleport"\n')
    assert err.key == "phy.attack"
    hub = '[node]\nname = "h"\nrole = "hub"\n[spokes.b]\npreset = "nope"\n'
    assert error_of(tmp_path, hub).key == "spokes.b.preset"


def test_phy_hook_can_be_replaced_or_skipped(tmp_path: Path, monkeypatch) -> None:
    seen: list[tuple[PhyConfig, str, str]] = []
    monkeypatch.setattr(config_module, "phy_validator",
                        lambda phy, src, where: seen.append((phy, src, where)))
    cfg = load_config(write(tmp_path, SPOKE + '[phy]\npreset = "anything"\n'))
    assert seen == [(cfg.phy, cfg.source, "phy")]
    monkeypatch.setattr(config_module, "phy_validator", None)
    assert load_config(write(tmp_path, SPOKE + '[phy]\npreset = "x"\n')).phy.preset == "x"
