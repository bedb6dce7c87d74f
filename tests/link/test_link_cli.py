"""``qkdnet link run`` end to end (real loopback sockets) and the spec's state table."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from qkdnet.cli import main
from qkdnet.link.cli import NO_KEY, _quiet_normal_stops
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
    out = capsys.readouterr().out
    assert code == NO_KEY == 3    # the link ran, both ends agree, but there is no key
    assert "qber_too_high" in out
    assert "identical keys: yes" in out


@pytest.mark.slow
def test_link_run_writes_its_table_to_stdout_and_takes_global_options(
        tmp_path: Path) -> None:
    """As a user runs it: ``> out.txt`` keeps the table; ``qkdnet --json link run``."""
    argv = [sys.executable, "-m", "qkdnet", "link", "run", "--blocks", "1",
            "--block-slots", "1e7", "--seed", "5"]
    text = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert text.returncode == 0, text.stderr
    assert "┃ block ┃ result" in text.stdout and "│     0 │ stored" in text.stdout
    assert "both ends hold identical keys: yes" in text.stdout
    assert "WARNING" not in text.stderr  # the normal end of the link is not a warning
    assert text.stderr.startswith("block 0: stored")  # progress stays on stderr
    as_json = subprocess.run([*argv[:3], "--json", *argv[3:]], capture_output=True,
                             text=True, timeout=300)
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert data["comparison"]["identical"] is True
    assert as_json.stderr == ""
    # Net of authentication, per wall-second (the figure the README's table reports).
    assert re.search(r"kbit/s gross, 640 bits spent on authentication, [\d.]+ kbit/s net",
                     text.stdout)
    assert data["net_key_bits"] == data["alice"]["key_bits"] - data["alice"]["auth_bits"] > 0
    assert data["net_key_rate_bps"] == pytest.approx(data["net_key_bits"] / data["wall_s"],
                                                     rel=1e-2)


def test_the_normal_end_of_a_link_is_not_a_warning(caplog) -> None:
    driver = logging.getLogger("qkdnet.link.driver")
    with caplog.at_level(logging.INFO), _quiet_normal_stops(verbose=0):
        driver.warning("link endpoint stops: %s", "sideband connection ended")
        driver.warning("link endpoint stops: %s", "AuthenticationError: bad tag")
    assert [r.getMessage() for r in caplog.records] == [
        "link endpoint stops: AuthenticationError: bad tag"]
    caplog.clear()
    with caplog.at_level(logging.INFO), _quiet_normal_stops(verbose=1):
        driver.warning("link endpoint stops: %s", "sideband connection ended")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", "link endpoint stops: sideband connection ended")]


def test_link_run_rejects_bad_arguments(capsys) -> None:
    assert main(["link", "run", "--preset", "no-such-preset", "--blocks", "1"]) == 2
    assert "no-such-preset" in capsys.readouterr().err
