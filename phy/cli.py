"""``qkdnet phy presets``, ``qkdnet phy sweep`` and ``qkdnet fiber``.

``sweep`` runs the emulated link at each distance and reports, per intensity, the
counts, gains and QBER next to two theories: the full model of the emulated
receiver (``gain_theory``/``qber_theory``: common dead time by renewal theory,
afterpulses, dark counts per detector, squashing) and the first-order formulas of
Ma et al. 2005 (``gain_ma2005``/``qber_ma2005``: no dead time, no afterpulses).
Key rates are asymptotic decoy-state rates (per basis, as the link sifts): from the
emulated counts, from the full model, with exact single-photon figures (infinite
decoys), from Ma et al.'s formulas; and in bit/s gross, minus the authentication
key a link spends per block (``--auth-bits-per-block`` per ``--block-bits`` sifted
key bits), net. PLOB is the repeaterless bound.
``fiber`` runs a fibre (and optionally Eve) process between two quantum ports.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import trio

from qkdnet.cli import CommandSet, emit_json, fail
from qkdnet.errors import ConfigError
from qkdnet.phy import presets, theory
from qkdnet.phy.attacks import parse_attack
from qkdnet.phy.channel import QuantumChannel
from qkdnet.phy.estimate import measure, measure_bases
from qkdnet.phy.port import DEFAULT_MAX_FRAME, FibreElement, run_alice, run_bob, run_fiber
from qkdnet.phy.source import AliceSource


def register(commands: CommandSet) -> None:
    """Add the PHY commands."""
    phy = commands.group("phy", help="emulated quantum PHY: presets and distance sweeps")
    p = phy.add("presets", _cmd_presets, help="list the PHY presets and their parameters")
    del p
    s = phy.add("sweep", _cmd_sweep,
                help="emulate a link over a range of distances; compare with theory",
                description=__doc__)
    s.add_argument("--preset", default="gys2004", help="preset name (qkdnet phy presets)")
    s.add_argument("--km", default="0:150:25",
                   help="distances: START:STOP:STEP (STOP included), or a comma list")
    s.add_argument("--pulses", default="1e8",
                   help="pulse slots emulated per distance (default 1e8)")
    s.add_argument("--attack", default=None,
                   help="intercept-resend[:F[:random|biased|z|x]], beam-splitting[:TAP], pns")
    s.add_argument("--seed", type=int, default=1, help="random seed")
    s.add_argument("--block-bits", default="1e6",
                   help="sifted key-basis bits per link block, for the net rate "
                        "(default 1e6)")
    s.add_argument("--auth-bits-per-block", default=str(theory.AUTH_BITS_PER_BLOCK),
                   help="authentication key spent per block, bits (default "
                        f"{theory.AUTH_BITS_PER_BLOCK}: 5 tagged frames x 128 bits)")
    s.add_argument("--plot", metavar="FILE.png", default=None,
                   help="plot key rates against distance (needs the 'plot' extra)")
    a = phy.add("alice", _cmd_alice,
                help="emit pulse batches to a quantum port (a fibre or Bob)")
    a.add_argument("--connect", required=True, metavar="HOST:PORT", help="where to send")
    a.add_argument("--preset", default="gys2004", help="preset (must match the others)")
    a.add_argument("--seed", type=int, default=1, help="Alice's seed (her choices)")
    a.add_argument("--slots", default="1e8", help="pulse slots to emit (default 1e8)")
    a.add_argument("--batch", default="4194304", help="slots per batch frame")
    a.add_argument("--fuse-km", type=float, default=0.0,
                   help="fuse this much of the fibre's loss into the emission "
                        "(0 when an eavesdropper sits at the fibre entrance)")
    b = phy.add("bob", _cmd_bob,
                help="receive pulse batches on a quantum port and detect them")
    b.add_argument("--listen", required=True, metavar="HOST:PORT", help="where to listen")
    b.add_argument("--preset", default="gys2004", help="preset (must match the others)")
    b.add_argument("--seed", type=int, default=2, help="seed of Bob's detector randomness")
    b.add_argument("--alice-seed", type=int, default=None,
                   help="diagnostics only: Alice's seed, to report gains and QBER "
                        "per intensity (a real Bob learns these by sifting)")
    f = commands.add("fiber", _cmd_fiber,
                     help="run a fibre (and optional eavesdropper) between two quantum ports")
    f.add_argument("--listen", required=True, metavar="HOST:PORT",
                   help="where Alice's pulse batches arrive")
    f.add_argument("--forward", required=True, metavar="HOST:PORT",
                   help="Bob's quantum port, where surviving pulses go")
    f.add_argument("--km", type=float, required=True, help="fibre length in km")
    f.add_argument("--preset", default="gys2004", help="preset giving the fibre's loss")
    f.add_argument("--attack", default=None, help="eavesdropper at the fibre entrance")
    f.add_argument("--seed", type=int, default=1, help="random seed")
    f.add_argument("--max-frame", type=int, default=DEFAULT_MAX_FRAME,
                   help="largest frame body accepted, bytes")


def parse_km(text: str) -> np.ndarray:
    """``START:STOP:STEP`` (STOP included) or ``A,B,C`` → array of distances."""
    try:
        if ":" in text:
            start, stop, step = (float(x) for x in text.split(":"))
            if step <= 0 or stop < start:
                raise ValueError
            km = np.arange(start, stop + step / 2, step)
        else:
            km = np.array([float(x) for x in text.split(",")])
    except ValueError:
        raise ConfigError(f"cannot read {text!r}", source="command line", key="--km",
                          expected="START:STOP:STEP with STEP > 0, or a comma list") from None
    if km.size == 0 or np.any(km < 0) or not np.all(np.isfinite(km)):
        raise ConfigError(f"{text!r}", source="command line", key="--km",
                          expected="non-negative distances")
    return km


def parse_hostport(text: str, option: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` allowed)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536 or not host:
        raise ConfigError(f"{text!r}", source="command line", key=option,
                          expected="HOST:PORT")
    return host.strip("[]"), int(port)


def _cmd_presets(args: argparse.Namespace) -> int:
    rows = {name: presets.get(name).as_dict() for name in presets.names()}
    if args.json:
        emit_json(rows)
        return 0
    from rich.console import Console
    from rich.table import Table
    table = Table(title="qkdnet PHY presets")
    table.add_column("parameter")
    for name in rows:
        table.add_column(name, justify="right")
    for key in rows[presets.names()[0]]:
        if key in ("name", "source"):
            continue
        table.add_row(key, *(_fmt(d[key]) for d in rows.values()))
    console = Console()
    console.print(table)
    for name, d in rows.items():
        console.print(f"[bold]{name}[/bold]: {d['source']}")
    return 0


def _fmt(v: Any) -> str:
    if isinstance(v, list):
        return "/".join(_fmt(x) for x in v)
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def sweep(preset: str, km: np.ndarray, pulses: int, attack: str | None, seed: int,
          block_bits: float = 1e6,
          auth_bits_per_block: float = theory.AUTH_BITS_PER_BLOCK,
          progress: Callable[[int, int, float], None] | None = None) -> dict[str, Any]:
    """Run the sweep; plain-data result (what ``--json`` prints).

    ``progress(done, total, km)`` is called after each distance (a sweep of 1e8 slots
    per distance takes seconds to minutes per point)."""
    params = presets.get(preset)
    parse_attack(attack)               # validate the spec before the first run
    if not block_bits > 0 or not auth_bits_per_block >= 0:
        raise ConfigError("block size must be positive, authentication cost >= 0",
                          source="command line", key="--block-bits")
    theory_rate = theory.key_rate(params, km)
    inf_rate = theory.key_rate_infinite_decoy(params, km)
    ma_rate = theory.key_rate_ma2005(params, km)
    plob = theory.plob(params, km)
    q_th, e_th = theory.gains(params, km)
    q_ma, e_ma = theory.gains_ma2005(params, km)
    live = theory.live_fraction(params, km)
    gross, auth, net = theory.net_key_rate(params, km, theory_rate, block_bits,
                                           auth_bits_per_block)
    rows = []
    for i, d in enumerate(km):
        src = AliceSource(params, seed + i)
        channel = QuantumChannel(params, float(d), attack=attack, seed=seed + 1000 + i)
        det = channel.run(src, 0, pulses)
        st = measure(src, det)
        est = st.decoy()
        b_gain, b_err = measure_bases(src, det)
        r_emu = float(theory.key_rate_from_stats(params, b_gain, b_err)[0])
        sifted_z = float(params.p_z * np.dot(params.p_mu, b_gain[:, 0]))
        emu_gross = r_emu * params.clock_hz
        emu_auth = sifted_z * params.clock_hz / block_bits * auth_bits_per_block
        rows.append({
            "km": float(d),
            "clicks": len(det),
            "per_intensity": st.as_dict(),
            "gain_theory": q_th[:, i].tolist(),
            "qber_theory": e_th[:, i].tolist(),
            "gain_ma2005": q_ma[:, i].tolist(),
            "qber_ma2005": e_ma[:, i].tolist(),
            "live_fraction_theory": float(live[i]),
            "y1_lower": float(est.y1_lower[0]),
            "e1_upper": float(est.e1_upper[0]),
            "key_rate_emulated": r_emu,
            "key_rate_emulated_bps": emu_gross,
            "auth_emulated_bps": emu_auth,
            "key_rate_emulated_net_bps": emu_gross - emu_auth,
            "key_rate_theory": float(theory_rate[i]),
            "key_rate_theory_bps": float(gross[i]),
            "auth_theory_bps": float(auth[i]),
            "key_rate_theory_net_bps": float(net[i]),
            "key_rate_infinite_decoy": float(inf_rate[i]),
            "key_rate_ma2005": float(ma_rate[i]),
            "plob": float(plob[i]) if math.isfinite(plob[i]) else None,
            "eve_known_bits": int(det.eve.known.sum()) if det.eve is not None else None,
        })
        if progress is not None:
            progress(i + 1, len(km), float(d))
    return {"preset": preset, "attack": attack, "pulses": pulses, "seed": seed,
            "clock_hz": params.clock_hz, "block_bits": block_bits,
            "auth_bits_per_block": auth_bits_per_block,
            "units": "key_rate_* and plob: secret bits per pulse slot (asymptotic decoy "
                     "rate, key from Z, phase error from X); *_bps: bit/s; net = gross - "
                     "auth_bits_per_block per block of block_bits sifted Z bits",
            "rows": rows}


def _cmd_sweep(args: argparse.Namespace) -> int:
    km = parse_km(args.km)
    try:
        pulses = int(float(args.pulses))
    except ValueError:
        raise ConfigError(f"{args.pulses!r}", source="command line", key="--pulses",
                          expected="a number of slots such as 1e8") from None
    if pulses <= 0:
        raise ConfigError(f"{pulses}", source="command line", key="--pulses",
                          expected="a positive number of slots")
    try:
        block_bits = float(args.block_bits)
        auth_bits = float(args.auth_bits_per_block)
    except ValueError:
        raise ConfigError("not a number", source="command line", key="--block-bits",
                          expected="numbers such as 1e6 and 640") from None
    if args.plot:
        try:
            import matplotlib
            matplotlib.use("Agg")
        except ImportError:
            return fail("--plot needs matplotlib: install the extra with "
                        "pip install 'qkdnet[plot]' (in this checkout: "
                        ".venv/bin/pip install -e '.[plot]')", 2)
    started = time.monotonic()

    def show(done: int, total: int, d: float) -> None:
        # Progress on stderr (stdout keeps the table or the JSON), one line per point.
        print(f"sweep: {d:g} km done ({done}/{total}, {time.monotonic() - started:.0f} s)",
              file=sys.stderr, flush=True)

    result = sweep(args.preset, km, pulses, args.attack, args.seed, block_bits, auth_bits,
                   progress=show)
    if args.plot:
        _plot(result, args.plot)
    if args.json:
        emit_json(result)
    else:
        _print_sweep(result)
    return 0


def _print_sweep(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table
    title = f"{result['preset']}, {result['pulses']:.3g} slots per distance"
    if result["attack"]:
        title += f", attack {result['attack']}"
    table = Table(title=title, caption=result["units"])
    for c in ("km", "clicks", "Q1 emul.", "Q1 theory", "Q1 Ma05", "E1 % emul.",
              "E1 % theory", "E1 % Ma05", "R emul.", "R theory", "R Ma05", "gross b/s",
              "auth b/s", "net b/s", "PLOB"):
        table.add_column(c, justify="right")
    for r in result["rows"]:
        pi = r["per_intensity"]
        table.add_row(
            f"{r['km']:g}", str(r["clicks"]), f"{pi['gain'][0]:.3e}",
            f"{r['gain_theory'][0]:.3e}", f"{r['gain_ma2005'][0]:.3e}",
            f"{100 * pi['qber'][0]:.2f}", f"{100 * r['qber_theory'][0]:.2f}",
            f"{100 * r['qber_ma2005'][0]:.2f}",
            f"{r['key_rate_emulated']:.2e}", f"{r['key_rate_theory']:.2e}",
            f"{r['key_rate_ma2005']:.2e}", f"{r['key_rate_theory_bps']:.3g}",
            f"{r['auth_theory_bps']:.3g}", f"{r['key_rate_theory_net_bps']:.3g}",
            "inf" if r["plob"] is None else f"{r['plob']:.2e}")
    console = Console()
    Console(width=max(console.width, 170)).print(table)


def _plot(result: dict[str, Any], path: str) -> None:
    import matplotlib.pyplot as plt

    fig = sweep_figure(result)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"plot written to {path}", file=sys.stderr)


def sweep_figure(result: dict[str, Any]) -> Any:
    """The ``--plot`` figure of a :func:`sweep` result (a matplotlib Figure).

    Three panels against distance: key rate, signal gain and signal QBER, each
    emulated (with 1σ statistical error bars) beside the full model and Ma et al.
    Distances where the emulated decoy estimate gives no key are marked on the floor
    of the key-rate panel, not dropped.
    """
    import matplotlib.pyplot as plt

    rows = result["rows"]
    km = np.array([r["km"] for r in rows])
    attacked = bool(result["attack"])
    eve = " (no eavesdropper)" if attacked else ""
    fig, (ax_key, ax_gain, ax_qber) = plt.subplots(1, 3, figsize=(15, 4.5))

    emulated = np.array([r["key_rate_emulated"] or 0.0 for r in rows])
    theory_rate = np.array([r["key_rate_theory"] or np.nan for r in rows])
    positive = emulated > 0
    ax_key.semilogy(km[positive], emulated[positive], "o", label="emulated (decoy estimate)")
    floor = np.nanmin(np.concatenate([emulated[positive], theory_rate[theory_rate > 0],
                                      [1e-6]])) / 10
    if (~positive).any():
        ax_key.semilogy(km[~positive], np.full((~positive).sum(), floor), "v",
                        color="tab:red", label="emulated: no key")
    ax_key.semilogy(km, theory_rate, "-", label="full model" + eve)
    ax_key.semilogy(km, [r["key_rate_ma2005"] or np.nan for r in rows], ":",
                    label="Ma et al. 2005, first order" + eve)
    ax_key.semilogy(km, [np.nan if r["plob"] is None else r["plob"] for r in rows], "--",
                    label="PLOB bound")
    ax_key.set_ylabel("secret key rate (bits per pulse)")

    # Signal intensity (index 0): gain Q = clicks / sent, QBER = errors / sifted.
    sent = np.array([r["per_intensity"]["sent"][0] for r in rows], dtype=float)
    clicks = np.array([r["per_intensity"]["clicks"][0] for r in rows], dtype=float)
    sifted = np.array([r["per_intensity"]["sifted"][0] for r in rows], dtype=float)
    errors = np.array([r["per_intensity"]["errors"][0] for r in rows], dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        gain = clicks / sent
        gain_err = np.sqrt(clicks) / sent
        qber = errors / sifted
        qber_err = np.sqrt(np.maximum(qber * (1 - qber), 0) / sifted)
    ax_gain.errorbar(km, gain, yerr=gain_err, fmt="o", label="emulated ± 1σ")
    ax_gain.semilogy(km, [r["gain_theory"][0] for r in rows], "-", label="full model" + eve)
    ax_gain.semilogy(km, [r["gain_ma2005"][0] for r in rows], ":", label="Ma et al. 2005" + eve)
    ax_gain.set_yscale("log")
    ax_gain.set_ylabel("signal gain Q (clicks per pulse)")
    ax_qber.errorbar(km, 100 * qber, yerr=100 * qber_err, fmt="o", label="emulated ± 1σ")
    ax_qber.plot(km, [100 * r["qber_theory"][0] for r in rows], "-", label="full model" + eve)
    ax_qber.plot(km, [100 * r["qber_ma2005"][0] for r in rows], ":",
                 label="Ma et al. 2005" + eve)
    ax_qber.set_ylabel("signal QBER (%)")
    for ax in (ax_key, ax_gain, ax_qber):
        ax.set_xlabel("distance (km)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(f"{result['preset']}" + (f", attack {result['attack']}" if attacked else "")
                 + f", {result['pulses']:.3g} slots per distance")
    fig.tight_layout()
    return fig


def _cmd_fiber(args: argparse.Namespace) -> int:
    params = presets.get(args.preset)
    listen = parse_hostport(args.listen, "--listen")
    forward = parse_hostport(args.forward, "--forward")
    element = FibreElement(params, args.km, attack=parse_attack(args.attack), seed=args.seed)

    async def main() -> dict[str, int]:
        async def report(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
                         ) -> dict[str, int]:
            return await run_fiber(element, listen[0], listen[1], forward[0], forward[1],
                                   max_frame_size=args.max_frame, task_status=task_status)

        result: dict[str, int] = {}

        async def runner(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
                         ) -> None:
            result.update(await report(task_status=task_status))

        async with trio.open_nursery() as nursery:
            port = await nursery.start(runner)
            print(f"qkdnet fiber: {args.km:g} km ({args.preset}), attack "
                  f"{args.attack or 'none'}, listening on {listen[0]}:{port}, "
                  f"forwarding to {forward[0]}:{forward[1]}", file=sys.stderr, flush=True)
        return result

    stats = trio.run(main)
    if args.json:
        emit_json(stats)
    else:
        print(" ".join(f"{k}={v}" for k, v in stats.items()), file=sys.stderr)
    return 0


def _count(text: str, option: str) -> int:
    try:
        value = int(float(text))
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(f"{text!r}", source="command line", key=option,
                          expected="a positive number such as 1e8")
    return value


def _cmd_alice(args: argparse.Namespace) -> int:
    params = presets.get(args.preset)
    host, port = parse_hostport(args.connect, "--connect")
    n_slots = _count(args.slots, "--slots")
    batch = _count(args.batch, "--batch")
    source = AliceSource(params, args.seed)
    t = params.fibre_transmittance(args.fuse_km)
    sent = trio.run(lambda: run_alice(source, host, port, n_slots, batch_slots=batch,
                                      transmittance=t))
    result = {"slots": n_slots, "pulses_sent": sent, "transmittance_fused": t}
    if args.json:
        emit_json(result)
    else:
        print(" ".join(f"{k}={v}" for k, v in result.items()), file=sys.stderr)
    return 0


def _cmd_bob(args: argparse.Namespace) -> int:
    params = presets.get(args.preset)
    host, port = parse_hostport(args.listen, "--listen")

    async def main() -> Any:
        async def runner(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
                         ) -> None:
            out.append(await run_bob(params, host, port, seed=args.seed,
                                     task_status=task_status))

        out: list[Any] = []
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(runner)
            print(f"qkdnet phy bob: listening on {host}:{bound}", file=sys.stderr, flush=True)
        return out[0]

    det = trio.run(main)
    result: dict[str, Any] = {"slots": det.n_slots, "clicks": len(det),
                              "basis_z": int((det.basis == 0).sum())}
    if args.alice_seed is not None:
        st = measure(AliceSource(params, args.alice_seed), det)
        result["per_intensity"] = st.as_dict()
        result["key_rate_emulated"] = float(st.decoy().key_rate[0])
    if args.json:
        emit_json(result)
    else:
        print(json.dumps(result), file=sys.stderr)
    return 0
