"""``qkdnet hub`` and ``qkdnet node``: run the daemons and ask them for status.

``qkdnet hub --config hub.toml`` runs the hub until SIGINT/SIGTERM;
``qkdnet hub status [--json] (--config F | --socket S)`` asks a running hub through
its control socket (``<key store>.ctl``). ``qkdnet node …`` is the same for a spoke.

Config files are the project's node configuration (:mod:`qkdnet.config`): TOML,
validated, unknown keys are errors naming the file and the key.
"""

from __future__ import annotations

import argparse
import errno
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qkdnet.cli import CommandSet, emit_json
from qkdnet.errors import ConfigError, QkdnetError


def control_socket_for(keystore: Path) -> Path:
    """Where a daemon's status socket lives: next to its key store, ``<store>.ctl``."""
    return keystore.with_name(keystore.name + ".ctl")


def _link_dict(cfg: Any) -> dict[str, Any]:
    def phy_entry(phy: Any) -> dict[str, Any]:
        return {"preset": phy.preset, "km": phy.km, "seed": phy.seed or 0,
                "attack": phy.attack, "params": dict(phy.params)}

    link: dict[str, Any] = {
        "enabled": cfg.link.enabled, "block_slots": cfg.link.block_slots,
        "in_flight": cfg.link.in_flight, "phy_workers": cfg.link.phy_workers,
        # Both ends must agree on these or the receiver aborts every block.
        "config": {"eps_sec": cfg.link.eps_sec, "eps_cor": cfg.link.eps_cor,
                   "qber_max": cfg.link.qber_threshold,
                   "auth_reserve_bits": cfg.link.auth_reserve_bits,
                   "step_timeout": cfg.link.step_timeout,
                   "reconciliation": cfg.link.reconciliation},
        **phy_entry(cfg.phy_for(None)),
        # [trace]: the link endpoints write one JSON-lines file per link session here.
        "trace": str(cfg.trace.folder) if cfg.trace.enabled and cfg.trace.folder else None,
    }
    link["spokes"] = {name: phy_entry(cfg.phy_for(name)) for name in cfg.spokes}
    return link


def hub_settings_from_config(cfg: Any) -> Any:
    """:class:`~qkdnet.hub.daemon.HubSettings` from a ``qkdnet.config.NodeConfig``."""
    from qkdnet.hub.daemon import HubSettings

    if cfg.role != "hub":
        raise ConfigError(f"role is {cfg.role!r}", source=cfg.source, key="node.role",
                          expected='"hub" for qkdnet hub')
    if not cfg.spokes:
        raise ConfigError("no spokes configured", source=cfg.source, key="[spokes.NAME]",
                          expected="one table per spoke with bootstrap_secret")
    r = cfg.routing
    return HubSettings(
        name=cfg.name, keystore=Path(cfg.keystore.path), host=cfg.network.listen_host,
        port=cfg.network.sideband_port,
        spokes={n: e.bootstrap_secret for n, e in cfg.spokes.items()},
        control_socket=control_socket_for(Path(cfg.keystore.path)),
        key_wait=r.key_wait, key_stall=r.key_stall, queue_frames=r.queue_frames,
        queue_bytes=r.queue_bytes,
        window=r.window or 64, pcap=cfg.pcap.path, link=_link_dict(cfg),
        lease_bits=cfg.keystore.lease_bits, retired_keep=cfg.keystore.retired_keep)


def spoke_settings_from_config(config: Any) -> Any:
    """:class:`~qkdnet.hub.node.SpokeSettings` from a ``NodeConfig`` or a config path."""
    from qkdnet.config import NodeConfig, load_config
    from qkdnet.hub.node import SpokeSettings

    cfg = config if isinstance(config, NodeConfig) else load_config(config)
    if cfg.role != "spoke":
        raise ConfigError(f"role is {cfg.role!r}", source=cfg.source, key="node.role",
                          expected='"spoke" for qkdnet node')
    r = cfg.routing
    # qkdnet.config guarantees both for a spoke; keep the type checker informed.
    assert cfg.node.hub is not None and cfg.network.hub_host is not None
    return SpokeSettings(
        name=cfg.name, hub_name=cfg.node.hub, keystore=Path(cfg.keystore.path),
        hub_host=cfg.network.hub_host, hub_port=cfg.network.hub_sideband_port,
        bootstrap_secret=cfg.auth.bootstrap_secret,
        control_socket=control_socket_for(Path(cfg.keystore.path)),
        key_wait=r.key_wait, key_stall=r.key_stall, window=r.window or 32,
        open_timeout=r.open_timeout,
        pcap=cfg.pcap.path, link=_link_dict(cfg), lease_bits=cfg.keystore.lease_bits,
        retired_keep=cfg.keystore.retired_keep, app_socket=cfg.network.app_socket)


def hub_settings_from_file(path: str | Path) -> Any:
    """Read a hub config file (``qkdnet.config`` format) into HubSettings."""
    from qkdnet.config import load_config
    return hub_settings_from_config(load_config(path))


def spoke_settings_from_file(path: str | Path) -> Any:
    """Read a spoke config file (``qkdnet.config`` format) into SpokeSettings."""
    return spoke_settings_from_config(path)


# -- commands ------------------------------------------------------------------------

def _busy_port(err: BaseException, settings: Any, config: str) -> QkdnetError | None:
    """The one line for a hub whose sideband port is taken, else None."""
    from qkdnet.cli_errors import primary_error

    first = primary_error(err)
    if isinstance(first, OSError) and first.errno == errno.EADDRINUSE:
        return QkdnetError(
            f"cannot listen on {settings.host}:{settings.port}: the port is in use "
            f"(another qkdnet hub?); stop that program, or set [network] sideband_port "
            f"in {config}")
    return None


def _run_hub(args: argparse.Namespace) -> int:
    import trio

    from qkdnet.cli import run_trio
    from qkdnet.hub.daemon import HubDaemon
    from qkdnet.hub.lifecycle import single_instance
    from qkdnet.hub.linkrun import hub_link_runner

    settings = hub_settings_from_config(_config_with_trace(args, "hub"))
    label = f'hub "{settings.name}"'

    async def main() -> None:
        daemon = HubDaemon(settings, link_runner=hub_link_runner(settings))
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.run)
            # Only now: the port is bound and the control socket answers.
            print(f"qkdnet {label}: listening on {settings.host}:{daemon.port} for "
                  f"spokes {', '.join(settings.spokes)}", file=sys.stderr)

    with single_instance(settings.keystore, label):
        try:
            run_trio(main, stop_signals=(signal.SIGTERM,), message=f"{label} stopped")
        except BaseException as err:
            busy = _busy_port(err, settings, args.config)
            if busy is not None:
                raise busy from None
            raise
    print(f"qkdnet {label}: stopped", file=sys.stderr)
    return 0


def _run_node(args: argparse.Namespace) -> int:
    import trio

    from qkdnet.cli import run_trio
    from qkdnet.hub.lifecycle import single_instance
    from qkdnet.hub.linkrun import spoke_link_runner
    from qkdnet.hub.node import SpokeNode

    settings = spoke_settings_from_config(_config_with_trace(args, "node"))
    label = f'node "{settings.name}"'

    async def main() -> None:
        node = SpokeNode(settings, link_runner=spoke_link_runner(settings))
        async with node.running(), trio.open_nursery() as nursery:
            print(f"qkdnet {label}: connecting to hub \"{settings.hub_name}\" at "
                  f"{settings.hub_host}:{settings.hub_port}", file=sys.stderr)
            app_socket = _app_socket(settings)
            if app_socket is not None:  # the apps layer's local API for other processes
                from qkdnet.apps.local import serve_local
                await nursery.start(serve_local, node, app_socket)
                print(f"qkdnet {label}: apps connect at {app_socket}", file=sys.stderr)

    with single_instance(settings.keystore, label):
        run_trio(main, stop_signals=(signal.SIGTERM,), message=f"{label} stopped")
    print(f"qkdnet {label}: stopped", file=sys.stderr)
    return 0


def _config_with_trace(args: argparse.Namespace, kind: str) -> Any:
    """The ``--config`` file of ``qkdnet KIND``, with ``--trace [DIR]`` switching tracing on."""
    from qkdnet.config import load_config

    if not args.config:
        raise ConfigError(f"qkdnet {kind} needs --config FILE", source="command line",
                          key="--config",
                          expected=f"a {'hub' if kind == 'hub' else 'spoke'} TOML file")
    cfg = load_config(args.config)
    if args.trace is not None:
        cfg = cfg.with_trace(True, args.trace or None)
    return cfg


def _app_socket(settings: Any) -> Path | None:
    """The local socket apps use: ``[network] app_socket``, else the apps default."""
    import importlib.util

    if importlib.util.find_spec("qkdnet.apps.local") is None:
        return None
    if settings.app_socket is not None:
        return Path(settings.app_socket)
    from qkdnet.apps.api import default_socket_path
    return Path(default_socket_path())


def _status(kind: str, loader: Callable[[str], Any]) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        import trio

        from qkdnet.hub.daemon import read_control_socket

        if args.socket:
            sock = Path(args.socket)
        elif args.config:
            settings = loader(args.config)
            if settings.control_socket is None:
                raise ConfigError("no control socket configured", source=args.config,
                                  key="control.socket", expected="a socket path")
            sock = settings.control_socket
        else:
            raise ConfigError(f"qkdnet {kind} status needs --config FILE or --socket PATH",
                              source="command line", key="--config")
        try:
            result = trio.run(read_control_socket, sock)
        except (OSError, trio.TooSlowError) as err:
            print(f"qkdnet: error: cannot reach the {kind} at {sock}: "
                  f"{getattr(err, 'strerror', None) or err}; is it running?",
                  file=sys.stderr)
            return 1
        if args.json:
            from qkdnet.hub.status_view import rounded
            emit_json(rounded(result))
        else:
            _print_status(kind, result)
        return 0
    return handler


def _print_status(kind: str, st: dict[str, Any]) -> None:
    from rich.console import Console

    from qkdnet.hub.status_view import print_hub, print_node

    console = Console(highlight=False)
    if not console.is_terminal:
        console.width = 120     # a pipe or a file: no reason to squeeze the table
    (print_hub if kind == "hub" else print_node)(st, console)


def register(commands: CommandSet) -> None:
    """Add ``hub`` (run / status) and ``node`` (run / status)."""
    for kind, runner, loader, what in (
            ("hub", _run_hub, hub_settings_from_file,
             "run the trusted hub daemon (routes and re-keys spoke traffic)"),
            ("node", _run_node, spoke_settings_from_file,
             "run a spoke node daemon (QKD link to the hub, relayed channels)")):
        parser = commands.add(kind, runner, help=what,
                              description=f"{what}.\n\n  qkdnet {kind} --config FILE\n"
                                          f"  qkdnet {kind} status [--json] --config FILE")
        parser.add_argument("--config", metavar="FILE", help=f"the {kind} TOML config")
        parser.add_argument("--trace", metavar="DIR", nargs="?", const="", default=None,
                            help="write qlog-style JSON-lines traces of every link session "
                                 "(into DIR, else the config's [trace] folder)")
        sub = parser.add_subparsers(title="commands", metavar="COMMAND")
        status_parser = sub.add_parser(
            "status", help=f"show a running {kind}'s links, key and counters",
            description=f"show a running {kind}'s links, QBER, key rate, key per "
                        "direction, frames relayed, drops and why")
        # SUPPRESS: `qkdnet hub --config F status` keeps the parent's value.
        status_parser.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                                   help=f"the {kind} TOML config (for its control socket)")
        status_parser.add_argument("--socket", metavar="PATH",
                                   help="the control socket, instead of --config")
        status_parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                                   help="print the status as JSON on stdout")
        status_parser.add_argument("-v", "--verbose", action="count",
                                   default=argparse.SUPPRESS,
                                   help="more detail; tracebacks on errors")
        status_parser.set_defaults(handler=_status(kind, loader))
