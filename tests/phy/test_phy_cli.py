"""The PHY command line: presets, sweep, and a real `qkdnet fiber` process."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trio
from testkit import free_port

from qkdnet.cli import main
from qkdnet.phy import presets, theory
from qkdnet.phy.channel import BobDetector
from qkdnet.phy.port import QuantumPort
from qkdnet.phy.source import AliceSource


def test_presets_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["phy", "presets", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == set(presets.names())
    assert data["gys2004"]["alpha_db_per_km"] == 0.21


def test_presets_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["phy", "presets"]) == 0
    assert "Lim-Curty" in capsys.readouterr().out


def test_sweep_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["phy", "sweep", "--preset", "gys2004", "--km", "0:50:25",
                 "--pulses", "2e7", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    rows = data["rows"]
    assert [r["km"] for r in rows] == [0.0, 25.0, 50.0]
    for r in rows:
        assert r["key_rate_theory"] > 0
        assert r["key_rate_emulated"] == pytest.approx(r["key_rate_theory"], rel=0.5)
        assert r["plob"] is None or r["plob"] > r["key_rate_theory"]
        assert len(r["per_intensity"]["qber"]) == 3


def test_sweep_reports_full_model_first_order_and_net_rates(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["phy", "sweep", "--preset", "snspd-metro", "--km", "0,10", "--pulses", "4e6",
                 "--block-bits", "1e5", "--auth-bits-per-block", "1280", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    p = presets.get("snspd-metro")
    assert data["block_bits"] == 1e5 and data["auth_bits_per_block"] == 1280
    for r in data["rows"]:
        q_full, _ = theory.gains(p, r["km"])
        q_ma, _ = theory.gains_ma2005(p, r["km"])
        assert r["gain_theory"] == pytest.approx(q_full[:, 0].tolist())
        assert r["gain_ma2005"] == pytest.approx(q_ma[:, 0].tolist())
        # Saturated detectors: the emulation follows the full model, not the first order.
        sd = math.sqrt(r["gain_theory"][0] / r["per_intensity"]["sent"][0])
        assert abs(r["per_intensity"]["gain"][0] - r["gain_theory"][0]) < 4 * sd
        assert r["gain_ma2005"][0] > 3 * r["gain_theory"][0]
        assert r["key_rate_theory_bps"] == pytest.approx(r["key_rate_theory"] * p.clock_hz)
        blocks = float(theory.sifted_key_bits_per_slot(p, r["km"])[0]) * p.clock_hz / 1e5
        assert r["auth_theory_bps"] == pytest.approx(1280 * blocks)
        assert r["key_rate_theory_net_bps"] == pytest.approx(
            r["key_rate_theory_bps"] - r["auth_theory_bps"])
        assert r["key_rate_infinite_decoy"] >= r["key_rate_theory"] > 0


def test_sweep_table_with_attack(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["phy", "sweep", "--km", "10", "--pulses", "1e6",
                 "--attack", "intercept-resend:1"]) == 0
    assert "intercept-resend" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    ["phy", "sweep", "--km", "10:0:5"],
    ["phy", "sweep", "--km", "0:10:x"],
    ["phy", "sweep", "--preset", "nope"],
    ["phy", "sweep", "--attack", "teleport"],
    ["phy", "sweep", "--pulses", "-5"],
    ["phy", "sweep", "--block-bits", "0"],
    ["phy", "sweep", "--auth-bits-per-block", "x"],
])
def test_sweep_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "qkdnet: error:" in capsys.readouterr().err


def test_plot_needs_matplotlib(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rate.png"
    rc = main(["phy", "sweep", "--km", "0:20:10", "--pulses", "1e6", "--plot", str(out)])
    if importlib.util.find_spec("matplotlib") is None:
        assert rc == 2
        assert "matplotlib" in capsys.readouterr().err
        assert not out.exists()
    else:
        assert rc == 0 and out.stat().st_size > 0




async def test_fiber_command_as_a_process() -> None:
    """`qkdnet fiber` in its own process between an Alice and a Bob on loopback."""
    p = presets.get("gys2004")
    km, n_slots = 25.0, 3_000_000
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    bob_port = listeners[0].socket.getsockname()[1]
    fiber_port = free_port()
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "qkdnet", "fiber", "--listen", f"127.0.0.1:{fiber_port}",
         "--forward", f"127.0.0.1:{bob_port}", "--km", str(km), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        with trio.fail_after(30):
            while True:
                try:
                    alice_stream = await trio.open_tcp_stream("127.0.0.1", fiber_port)
                    break
                except OSError:
                    await trio.sleep(0.1)
            src = AliceSource(p, 3)
            clicks = 0

            async def alice_side() -> None:
                alice = QuantumPort(alice_stream, name="alice")
                for i in range(3):
                    await alice.send_batch(src.emit(i * 1_000_000, 1_000_000))
                await alice.send_end()
                await alice.aclose()

            async def bob_side() -> None:
                nonlocal clicks
                bob = QuantumPort(await listeners[0].accept(), name="bob")
                detector = BobDetector(p, p.eta_bob, seed=4)
                rng = np.random.default_rng(5)
                async for batch in bob:
                    clicks += len(detector.detect(batch, rng)[0])
                await bob.aclose()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(alice_side)
                nursery.start_soon(bob_side)
            assert proc.stdout is not None
            out = b""
            while chunk := await proc.stdout.receive_some(65536):
                out += chunk
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
        await listeners[0].aclose()
    stats = json.loads(out)
    assert stats["pulses_in"] > stats["pulses_out"] > 0
    q, _ = theory.gains(p, km)
    expected = float(np.dot(p.p_mu, q[:, 0])) * n_slots
    assert abs(clicks - expected) < 4 * math.sqrt(expected)


async def _wait_for_line(proc: trio.Process, needle: bytes) -> None:
    assert proc.stderr is not None
    seen = b""
    while needle not in seen:
        chunk = await proc.stderr.receive_some(4096)
        if not chunk:
            raise AssertionError(f"process exited before printing {needle!r}: {seen!r}")
        seen += chunk


async def _read_all(stream: trio.abc.ReceiveStream | None) -> bytes:
    assert stream is not None
    out = b""
    while chunk := await stream.receive_some(65536):
        out += chunk
    return out


@pytest.mark.slow
async def test_alice_fiber_eve_bob_as_four_roles_in_three_processes() -> None:
    """`qkdnet phy bob`, `qkdnet fiber --attack intercept-resend:1` and `qkdnet phy
    alice` as separate processes: Bob sees Eve's 25 % (plus half the misalignment)."""
    preset = "rusca2018-snspd"
    bob_port, fiber_port = free_port(), free_port()
    q = [sys.executable, "-m", "qkdnet"]
    procs: list[trio.Process] = []
    try:
        with trio.fail_after(60):
            bob = await trio.lowlevel.open_process(
                [*q, "phy", "bob", "--listen", f"127.0.0.1:{bob_port}", "--preset", preset,
                 "--alice-seed", "5", "--json"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            procs.append(bob)
            await _wait_for_line(bob, b"listening on")
            fiber = await trio.lowlevel.open_process(
                [*q, "fiber", "--listen", f"127.0.0.1:{fiber_port}", "--forward",
                 f"127.0.0.1:{bob_port}", "--km", "10", "--preset", preset,
                 "--attack", "intercept-resend:1", "--json"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            procs.append(fiber)
            await _wait_for_line(fiber, b"listening on")
            alice = await trio.run_process(
                [*q, "phy", "alice", "--connect", f"127.0.0.1:{fiber_port}", "--preset",
                 preset, "--seed", "5", "--slots", "3e6", "--json"], capture_stdout=True)
            bob_out = await _read_all(bob.stdout)
            fiber_out = await _read_all(fiber.stdout)
            assert await bob.wait() == 0 and await fiber.wait() == 0
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
    sent = json.loads(alice.stdout)["pulses_sent"]
    fib = json.loads(fiber_out)
    assert fib["pulses_in"] == sent == fib["eve_pulses_attacked"]
    res = json.loads(bob_out)
    assert res["clicks"] > 20_000
    e_mis = presets.get(preset).e_mis
    assert abs(res["per_intensity"]["qber"][0] - (0.25 + e_mis / 2)) < 0.015
    assert res["key_rate_emulated"] == 0.0


def test_sweep_reports_progress_per_distance(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--json", "phy", "sweep", "--km", "0,25,50", "--pulses", "1e5"]) == 0
    err = capsys.readouterr().err
    assert [line.split(" (")[0] for line in err.splitlines()] == [
        "sweep: 0 km done", "sweep: 25 km done", "sweep: 50 km done"]


def test_sweep_plot_has_error_bars_no_key_markers_and_honest_labels() -> None:
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    from qkdnet.phy.cli import sweep, sweep_figure

    # gys2004 makes no key at 150 km: that point must be shown, not dropped.
    result = sweep("gys2004", np.array([0.0, 150.0]), 200_000, "intercept-resend:0.1", 3)
    fig = sweep_figure(result)
    key_ax, gain_ax, qber_ax = fig.axes
    labels = [t.get_text() for t in key_ax.get_legend().get_texts()]
    assert "emulated: no key" in labels
    # Under an attack the formulas describe the link without Eve, and say so.
    assert "full model (no eavesdropper)" in labels
    assert gain_ax.containers and qber_ax.containers     # errorbar containers
    assert "signal QBER" in qber_ax.get_ylabel() and "gain" in gain_ax.get_ylabel()
