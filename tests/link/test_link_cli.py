"""``qkdnet link run`` end to end (real loopback sockets) and the spec's state table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qkdnet.cli import main
from qkdnet.link.session import transition_table_markdown

SPEC = Path(__file__).resolve().parents[2] / "spec" / "link.md"


def test_spec_prints_the_transition_table_of_the_code() -> None:
    assert transition_table_markdown() in SPEC.read_text(encoding="utf-8")


@pytest.mark.slow
def test_link_run_json_reports_blocks_and_identical_keys(capsys) -> None:
    code = main(["link", "run", "--preset", "snspd-metro", "--km", "25", "--blocks", "2",
                 "--block-slots", "1e7", "--seed", "3", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["comparison"]["identical"] is True
    blocks = out["alice"]["blocks"]
    assert sorted(b["block"] for b in blocks) == [0, 1]
    for b in blocks:
        for key in ("sifted", "qber_est", "y1_lower", "phi_upper", "leak_ec_bits", "ell",
                    "auth_bits", "wall_time"):
            assert key in b
        assert b["abort_reason"] is None and b["ell"] > 0


@pytest.mark.slow
def test_link_run_table_names_the_abort_reason(capsys) -> None:
    code = main(["link", "run", "--preset", "snspd-metro", "--km", "10", "--blocks", "1",
                 "--block-slots", "3e6", "--seed", "2", "--attack", "intercept-resend"])
    err = capsys.readouterr().err
    assert code == 0          # nothing stored, but both ends agree (no key at either)
    assert "qber_too_high" in err
    assert "identical keys: yes" in err


def test_link_run_rejects_bad_arguments(capsys) -> None:
    assert main(["link", "run", "--preset", "no-such-preset", "--blocks", "1"]) == 2
    assert "no-such-preset" in capsys.readouterr().err
