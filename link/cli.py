"""``qkdnet link run``, ``qkdnet link alice`` and ``qkdnet link bob``.

``run`` starts both ends of a point-to-point link in this process, talking over the
authenticated sideband on 127.0.0.1 (real TCP), with temporary key stores and a
freshly generated bootstrap secret, and prints one row per block: sifted bits,
QBER, the single-photon yield and phase-error bounds, bits leaked in error
correction, the final length ℓ, the authentication key spent and the wall time;
then whether both ends hold identical keys (checked bit for bit, which consumes the
temporary key).

``alice`` / ``bob`` run the two ends as separate processes.  The pulses either
travel over a quantum port (``alice --quantum HOST:PORT`` to ``bob
--quantum-listen HOST:PORT``, optionally through ``qkdnet fiber`` with its own
``--km``/``--attack``), or, by default, Bob's process emulates the fibre itself: Alice's
pulses are a pure function of (seed, slot), so both processes then take the same
``--preset`` and ``--seed`` (and Bob ``--km`` / ``--attack``).  Both need the same bootstrap
secret file (``--secret``); a new one is written by ``bob --new-secret``.

Tables and summaries go to stdout (``> out.txt`` keeps them), per-block progress to
stderr. Exit codes, the same for ``run``, ``alice`` and ``bob``: 0 when key was
stored (for ``run``: and both ends hold identical keys), 3 when the link ran but no
block yielded key (every block aborted: QBER too high under an attack, too few
detections), 1 on a failure (the ends' keys differ, a connection broke), 2 on a
usage or configuration error, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qkdnet.cli import CommandSet, emit_json, fail, run_trio
from qkdnet.errors import ConfigError, Interrupted

if TYPE_CHECKING:
    from qkdnet.link.session import BlockStats

DEFAULT_PORT = 7790
#: Exit code of a link that ran correctly but stored no key (see the module docstring).
NO_KEY = 3
EXIT_CODES = ("\n\nexit codes: 0 key stored; 3 the link ran but no block yielded key;\n"
              "1 failure; 2 usage or configuration error; 130 Ctrl-C")


def register(commands: CommandSet) -> None:
    """Add the link commands."""
    link = commands.group("link", help="QKD link layer: decoy BB84 post-processing to key")
    r = link.add("run", _cmd_run, help="run a point-to-point link on loopback and show "
                                         "per-block statistics", description=__doc__)
    _phy_args(r)
    r.add_argument("--blocks", type=int, default=3, help="number of blocks (default 3)")
    r.add_argument("--block-slots", type=float, default=None,
                   help="pulse slots per block (default: about 1.5e6 clicks per block)")
    r.add_argument("--in-flight", type=int, default=2,
                   help="blocks processed concurrently (pipelining; default 2)")
    r.add_argument("--quantum-port", action="store_true",
                   help="send the pulses over TCP too: alice's quantum port -> fibre -> "
                        "bob's quantum port (default: in-process channel)")
    r.add_argument("--trace", metavar="DIR", default=None,
                   help="write a qlog-style JSON-lines trace of every block into DIR")

    a = link.add("alice", _cmd_alice, help="run the transmitter end (connects to bob)",
                 description="run the transmitter end (connects to bob)" + EXIT_CODES)
    _phy_args(a)
    _end_args(a, default_name="alice", default_peer="bob")
    a.add_argument("--connect", default=f"127.0.0.1:{DEFAULT_PORT}", metavar="HOST:PORT",
                   help="bob's sideband address")
    a.add_argument("--quantum", default=None, metavar="HOST:PORT",
                   help="send pulses to this quantum port (a `qkdnet fiber` or bob's "
                        "--quantum-listen); default: bob emulates the fibre from --seed")
    a.add_argument("--blocks", type=int, default=3, help="number of blocks (default 3)")
    a.add_argument("--block-slots", type=float, default=None,
                   help="pulse slots per block (default: about 1.5e6 clicks per block)")

    b = link.add("bob", _cmd_bob, help="run the receiver end (listens for alice)",
                 description="run the receiver end (listens for alice)" + EXIT_CODES)
    _phy_args(b)
    _end_args(b, default_name="bob", default_peer="alice")
    b.add_argument("--listen", default=f"127.0.0.1:{DEFAULT_PORT}", metavar="HOST:PORT",
                   help="sideband address to listen on")
    b.add_argument("--quantum-listen", default=None, metavar="HOST:PORT",
                   help="receive pulses on this quantum port (from alice or a `qkdnet "
                        "fiber`); default: emulate the fibre in process from --seed")
    b.add_argument("--new-secret", action="store_true",
                   help="write a fresh bootstrap secret to --secret first")
    b.add_argument("--exit-after", type=int, default=None, metavar="N",
                   help="exit after N blocks have finished (default: serve until killed)")


def _phy_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="snspd-metro", help="PHY preset (qkdnet phy presets)")
    p.add_argument("--km", type=float, default=10.0, help="fibre length in km (default 10)")
    p.add_argument("--attack", default=None,
                   help="eavesdropper: intercept-resend[:F[:random|biased|z|x]], "
                        "beam-splitting[:TAP], pns")
    p.add_argument("--seed", type=int, default=None,
                   help="PHY seed (default random; alice and bob must agree)")
    p.add_argument("--eps-sec", type=float, default=1e-10, help="secrecy ε (default 1e-10)")
    p.add_argument("--eps-cor", type=float, default=1e-15,
                   help="correctness ε (default 1e-15)")
    p.add_argument("--qber-max", type=float, default=0.11,
                   help="abort blocks above this QBER (default 0.11)")
    p.add_argument("--reconciliation", choices=("auto", "ldpc", "cascade"),
                   default="auto",
                   help="error correction, set by alice (default auto: per block, the "
                        "method with more expected key per wall-second)")


def _end_args(p: argparse.ArgumentParser, *, default_name: str, default_peer: str) -> None:
    p.add_argument("--name", default=default_name, help="this node's name")
    p.add_argument("--peer", default=default_peer, help="the other end's name")
    p.add_argument("--store", required=True, metavar="PATH", help="key store file")
    p.add_argument("--secret", required=True, metavar="FILE",
                   help="bootstrap secret file (the same at both ends)")


# --------------------------------------------------------------------------------------


def _params(args: argparse.Namespace) -> Any:
    from qkdnet.phy import presets

    return presets.get(args.preset)


def default_block_slots(params: Any, km: float, target_clicks: float = 1.5e6) -> int:
    """Pulse slots giving about ``target_clicks`` detections per block.

    The click probability per slot comes from the full receiver model
    (:func:`qkdnet.phy.theory.gains`: dead time and afterpulsing included), so the
    blocks really hold ``target_clicks``; the channel-only formula overstated it by
    up to 2x at short distances.  1.5e6 is ~70 % of the per-block limit
    (``qkdnet.link.wire.MAX_CLICKS``), far enough below it for the Poisson spread.
    Why this size: finite-key key per wall-second grows with the block (measured in
    docs/block-size.md), and this is the largest block the wire format allows.
    """
    try:
        from qkdnet.phy import theory

        clicks, _ = theory.gains(params, km)
        p_click = float((clicks[:, 0] * params.p_mu).sum())
    except (AttributeError, TypeError, ValueError):
        eta = params.eta_total(km) if hasattr(params, "eta_total") else 0.1
        p_click = sum(p * -math.expm1(-mu * eta) for mu, p in zip(params.mu, params.p_mu,
                                                                      strict=True))
        p_click += 2 * params.p_dark
    return int(min(max(target_clicks / max(p_click, 1e-12), 1e5), 1e10))


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {"eps_sec": args.eps_sec, "eps_cor": args.eps_cor, "qber_max": args.qber_max,
            "reconciliation": args.reconciliation}


def _fmt(v: float | None, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def print_blocks(blocks: list[BlockStats], title: str) -> None:
    """One rich table row per block (public statistics only)."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for col in ("block", "result", "sifted", "QBER", "Y1 ≥", "e1 ≤", "φ ≤", "EC leak",
                "ℓ", "auth bits", "wall s"):
        t.add_column(col, justify="right")
    for st in sorted(blocks, key=lambda s: s.block):
        result = "stored" if st.abort_reason is None else f"[red]{st.abort_reason}[/red]"
        qber = st.qber_key if st.qber_key is not None else st.qber_est
        t.add_row(str(st.block), result, str(st.sifted), _fmt(qber, ".2%"),
                  _fmt(st.y1_lower, ".3g"), _fmt(st.e1_upper, ".3f"), _fmt(st.phi_upper, ".3f"),
                  str(st.leak_ec_bits), str(st.ell), str(st.auth_bits), f"{st.wall_time:.2f}")
    console = Console(file=sys.stdout)
    if not console.is_terminal:
        console.width = 150     # a pipe or a log file: do not squeeze the columns
    console.print(t)


def _cmd_run(args: argparse.Namespace) -> int:
    from qkdnet.link.driver import run_point_to_point

    params = _params(args)
    if args.blocks < 1:
        raise ConfigError("must be at least 1", key="--blocks", expected="a positive count")
    slots = int(args.block_slots) if args.block_slots else default_block_slots(params, args.km)

    def show(st: BlockStats) -> None:
        if not args.json:
            word = "stored" if st.abort_reason is None else f"aborted ({st.abort_reason})"
            print(f"block {st.block}: {word}, ell={st.ell}, {st.wall_time:.2f} s",
                  file=sys.stderr)

    async def main() -> Any:
        import trio

        from qkdnet.tracing import TraceFolder

        traces = TraceFolder(args.trace, node="link-run", clock=trio.current_time) \
            if args.trace else TraceFolder.disabled()
        try:
            with tempfile.TemporaryDirectory(prefix="qkdnet-link-") as tmp:
                return await run_point_to_point(
                    params, args.km, args.blocks, slots, workdir=tmp, attack=args.attack,
                    seed=args.seed, config_overrides=_overrides(args),
                    max_in_flight=args.in_flight, on_block=show,
                    quantum_port=args.quantum_port,
                    tracer=traces.session("link") if traces.enabled else None)
        finally:
            traces.close()

    started = time.monotonic()
    with _quiet_normal_stops(args.verbose):
        result = run_trio(main, message="link run interrupted")
    wall = max(time.monotonic() - started, 1e-9)
    # Net of authentication: the key the blocks' tags spent comes out of the same pools.
    gross, auth = int(result.alice.key_bits), int(result.alice.auth_bits)
    rates = {"wall_s": round(wall, 3), "net_key_bits": max(0, gross - auth),
             "gross_key_rate_bps": round(gross / wall, 1),
             "auth_rate_bps": round(auth / wall, 1),
             "net_key_rate_bps": round(max(0, gross - auth) / wall, 1)}
    if args.json:
        out = result.as_dict()
        out.update(preset=args.preset, km=args.km, block_slots=slots, attack=args.attack,
                   **rates)
        emit_json(out)
    else:
        print_blocks(result.alice.blocks,
                     f"link {args.preset} {args.km:g} km, {slots:.3g} slots/block"
                     + (f", attack {args.attack}" if args.attack else ""))
        same = "yes" if result.identical else "NO"
        print(f"stored {result.alice.stored}/{args.blocks} blocks, "
              f"{result.alice.key_bits} key bits; both ends hold identical keys: {same} "
              f"({result.comparison.get('bits_compared', 0)} data bits compared)")
        print(f"{wall:.1f} s: {rates['gross_key_rate_bps'] / 1e3:.1f} kbit/s gross, "
              f"{auth} bits spent on authentication, "
              f"{rates['net_key_rate_bps'] / 1e3:.1f} kbit/s net")
    if not result.identical:
        return 1
    return 0 if result.alice.stored else NO_KEY


# --------------------------------------------------------------------------------------
# Separate processes


def _open_store(args: argparse.Namespace, *, initiator: bool) -> Any:
    from qkdnet.keystore import KeyStore

    secret_path = Path(args.secret)
    if not secret_path.exists():
        raise ConfigError("bootstrap secret file not found", source=str(secret_path),
                          expected="the same secret file at both ends (bob --new-secret)")
    store = KeyStore(args.store)
    store.import_bootstrap(args.peer, secret_path.read_bytes(), initiator=initiator)
    return store


def _hostport(text: str, flag: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"{text!r} is not HOST:PORT", key=flag, expected="e.g. 127.0.0.1:7790")
    return host, int(port)


def _cmd_alice(args: argparse.Namespace) -> int:
    from qkdnet.auth import FrameAuthenticator, KeyStoreTagKeys
    from qkdnet.link.driver import LinkEndpoint, new_session_id, time_slot_base
    from qkdnet.link.session import LinkConfig
    from qkdnet.phy.source import AliceSource
    from qkdnet.sideband import FrameRouter, connect_sideband

    params = _params(args)
    if args.seed is None and args.quantum:
        import secrets as _secrets

        args.seed = _secrets.randbits(62)     # only alice needs it: pulses go on the port
    if args.seed is None:
        raise ConfigError("needed by the emulated fibre", key="--seed",
                          expected="the same --seed as bob")
    host, port = _hostport(args.connect, "--connect")
    slots = int(args.block_slots) if args.block_slots else default_block_slots(params, args.km)
    store = _open_store(args, initiator=True)

    async def main() -> Any:
        import trio

        chan = await connect_sideband(host, port, local_name=args.name,
                                      auth=FrameAuthenticator(KeyStoreTagKeys(store, args.peer)))
        cfg = LinkConfig.from_phy(params, new_session_id(), **_overrides(args))
        source = AliceSource(params, args.seed)
        emitter = None
        if args.quantum:
            from qkdnet.link.driver import PortEmitter
            from qkdnet.phy.port import QuantumPort

            qhost, qport = _hostport(args.quantum, "--quantum")
            qstream = await trio.open_tcp_stream(qhost, qport)
            emitter = PortEmitter(source, QuantumPort(qstream, name=args.name))
        end = LinkEndpoint("transmitter", chan, cfg, peer=args.peer, store=store,
                           source=source, emitter=emitter)
        router = FrameRouter()
        end.register(router)
        async with trio.open_nursery() as n:
            n.start_soon(chan.run, router)
            await n.start(end.run)
            await end.run_blocks(args.blocks, slots, slot_base=time_slot_base())
            await end.stop()
            if emitter is not None:
                await emitter.aclose()
            n.cancel_scope.cancel()
        await chan.aclose()
        return end.stats

    try:
        with _quiet_normal_stops(args.verbose):
            stats = run_trio(main, message="link alice interrupted")
    finally:
        store.close()
    _report(args, stats, "alice")
    return 0 if stats.stored else NO_KEY


def _cmd_bob(args: argparse.Namespace) -> int:
    from qkdnet.auth import FrameAuthenticator, KeyStoreTagKeys
    from qkdnet.link.driver import (
        EmulatedPhy,
        LinkEndpoint,
        serve_link_channel,
        write_bootstrap_secret,
    )
    from qkdnet.link.session import LinkConfig
    from qkdnet.sideband import serve_sideband

    params = _params(args)
    if args.seed is None and not args.quantum_listen:
        raise ConfigError("needed by the emulated fibre", key="--seed",
                          expected="the same --seed as alice")
    if args.seed is None:
        args.seed = 0
    host, port = _hostport(args.listen, "--listen")
    if args.new_secret:
        write_bootstrap_secret(args.secret)
    store = _open_store(args, initiator=False)
    cfg = LinkConfig.from_phy(params, 0, **_overrides(args))
    ends: list[Any] = []

    async def main() -> None:
        import trio

        phy: Any
        async with trio.open_nursery() as nursery:
            if args.quantum_listen:
                from qkdnet.link.driver import PortPhy
                from qkdnet.phy.port import QuantumPort

                qhost, qport = _hostport(args.quantum_listen, "--quantum-listen")
                listeners = await trio.open_tcp_listeners(qport, host=qhost)
                port_phy = PortPhy(params, seed=args.seed)
                phy = port_phy

                async def accept_pulses() -> None:
                    qstream = await listeners[0].accept()
                    for listener in listeners:
                        await listener.aclose()
                    port_phy.attach(QuantumPort(qstream, name=args.name))

                nursery.start_soon(accept_pulses)
                print(f"bob waiting for pulses on {qhost}:{qport}", file=sys.stderr)
            else:
                import secrets as _secrets

                # Fresh channel noise per process: it must not repeat across runs.
                phy = EmulatedPhy(params, args.km, attack=args.attack, seed=args.seed,
                                  noise_seed=_secrets.randbits(63))

            async def handler(chan: Any) -> None:
                end = LinkEndpoint("receiver", chan, cfg, peer=args.peer, store=store, phy=phy)
                ends.append(end)
                if args.exit_after:
                    def check(_st: BlockStats) -> None:
                        done = sum(e.stats.stored + e.stats.aborted for e in ends)
                        if done >= args.exit_after:      # over every connection so far
                            nursery.cancel_scope.cancel()
                    end.add_callback(check)
                await serve_link_channel(chan, end)

            def auth_for(name: str) -> Any:
                return FrameAuthenticator(KeyStoreTagKeys(store, name)) \
                    if name == args.peer else None

            await nursery.start(lambda task_status: serve_sideband(
                handler, port, local_name=args.name, auth_for_peer=auth_for, host=host,
                task_status=task_status))
            print(f"bob listening on {host}:{port}", file=sys.stderr)

    interrupted = False
    try:
        with _quiet_normal_stops(args.verbose):
            run_trio(main, message="link bob stopped")
    except Interrupted:  # Ctrl-C is how bob ends without --exit-after: report first
        interrupted = True
    finally:
        store.close()
    from qkdnet.link.driver import LinkStats

    total = LinkStats()
    for e in ends:
        for st in e.stats.blocks:
            total.record(st)
    if ends:
        _report(args, total, "bob")
    if interrupted:
        raise Interrupted("link bob stopped")
    return 0 if total.stored else NO_KEY


def _report(args: argparse.Namespace, stats: Any, who: str) -> None:
    if args.json:
        emit_json({"end": who, **stats.as_dict()})
    else:
        print_blocks(stats.blocks, f"link {who}: {args.preset}")
        blocks = "block" if stats.stored == 1 else "blocks"
        print(f"{who}: stored {stats.stored} {blocks}, {stats.key_bits} key bits")


class _NormalStop(logging.Filter):
    """Drops the driver's "link endpoint stops: sideband connection ended" warning.

    When a link command finishes, its ends close the sideband and an endpoint still
    reading reports the close as a warning; it is the normal end of the command, so
    the CLI shows it only with ``--verbose`` (as INFO). Any other reason still shows.
    """

    def __init__(self, verbose: int) -> None:
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage() == "link endpoint stops: sideband connection ended":
            record.levelno, record.levelname = logging.INFO, "INFO"
            return self.verbose > 0
        return True


@contextmanager
def _quiet_normal_stops(verbose: int) -> Iterator[None]:
    driver_log = logging.getLogger("qkdnet.link.driver")
    quiet = _NormalStop(verbose)
    driver_log.addFilter(quiet)
    try:
        yield
    finally:
        driver_log.removeFilter(quiet)


__all__ = ["NO_KEY", "default_block_slots", "fail", "print_blocks", "register"]
