"""PhyParams validation and presets."""

from __future__ import annotations

import dataclasses

import pytest

from qkdnet.errors import ConfigError
from qkdnet.phy import presets
from qkdnet.phy.params import PhyParams


@pytest.mark.parametrize("name", presets.names())
def test_presets_are_valid_and_cited(name: str) -> None:
    p = presets.get(name)
    assert p.name == name
    assert p.source
    assert p.mu[0] > p.mu[1]
    assert dataclasses.replace(p) == p


def test_gys_numbers_match_ma_2005() -> None:
    p = presets.get("gys2004")
    assert p.alpha_db_per_km == 0.21 and p.eta_det == 0.045 and p.e_mis == 0.033
    assert p.y0 == pytest.approx(1.7e-6, rel=1e-3)


@pytest.mark.parametrize(("changes", "key"), [
    ({"alpha_db_per_km": -0.2}, "alpha_db_per_km"),
    ({"insertion_loss_db": -1.0}, "insertion_loss_db"),
    ({"eta_det": 1.5}, "eta_det"),
    ({"p_dark": -1e-6}, "p_dark"),
    ({"p_z": 1.2}, "p_z"),
    ({"q_z": -0.1}, "q_z"),
    ({"e_mis": 0.7}, "e_mis"),
    ({"p_afterpulse": 1.0}, "p_afterpulse"),
    ({"mu": (0.1, 0.5, 0.0)}, "mu"),
    ({"mu": (0.5, 0.1, 0.2)}, "mu"),
    ({"p_mu": (0.5, 0.4, 0.4)}, "p_mu"),
    ({"p_mu": (0.9, -0.1, 0.2)}, "p_mu[1]"),
    ({"dead_time_s": -1e-9}, "dead_time_s"),
    ({"clock_hz": 0.0}, "clock_hz"),
    ({"f_ec": 0.9}, "f_ec"),
    ({"no_such": 1}, "no_such"),
])
def test_bad_parameters_name_the_parameter(changes: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        presets.get("gys2004").with_overrides(**changes)
    assert info.value.key == key
    assert key in str(info.value)


def test_unknown_preset_and_negative_length() -> None:
    with pytest.raises(ConfigError, match="preset"):
        presets.get("nope")
    with pytest.raises(ConfigError, match="km"):
        PhyParams().fibre_transmittance(-1.0)


def test_dead_gates_rounding() -> None:
    p = presets.get("rusca2018-snspd")
    assert p.dead_gates == 100
    assert p.with_overrides(dead_time_s=0.0).dead_gates == 0
