"""``qkdnet hub`` and ``qkdnet node``: run the daemons and ask them for status.

``qkdnet hub --config hub.toml`` runs the hub until SIGINT/SIGTERM;
``qkdnet hub status [--json] (--config F | --socket S)`` asks a running hub through
its control socket. ``qkdnet node …`` is the same for a spoke.

Config files are TOML (``tomllib``); relative paths are relative to the file. Unknown
sections or keys are errors naming the file and the key (typos should not pass
silently). The layout is documented in spec/hub.md, "Configuration".
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qkdnet.cli import CommandSet, emit_json
from qkdnet.errors import ConfigError

_HUB_SCHEMA: dict[str, dict[str, type | tuple[type, ...]]] = {
    "node": {"name": str, "role": str},
    "listen": {"host": str, "port": int},
    "keystore": {"path": str, "lease_bits": int},
    "control": {"socket": str},
    "routing": {"key_wait": (int, float), "queue_frames": int, "queue_bytes": int,
                "window": int},
    "capture": {"pcap": str},
    "link": {"preset": str, "km": (int, float), "seed": int, "block_slots": int,
             "enabled": bool},
}
_SPOKE_ENTRY: dict[str, type | tuple[type, ...]] = {
    "bootstrap_secret": str, "km": (int, float), "seed": int, "preset": str}
_NODE_SCHEMA: dict[str, dict[str, type | tuple[type, ...]]] = {
    "node": {"name": str, "role": str},
    "hub": {"name": str, "host": str, "port": int},
    "keystore": {"path": str, "lease_bits": int},
    "auth": {"bootstrap_secret": str},
    "control": {"socket": str},
    "routing": {"key_wait": (int, float), "window": int, "open_timeout": (int, float)},
    "capture": {"pcap": str},
    "link": {"preset": str, "km": (int, float), "seed": int, "block_slots": int,
             "enabled": bool},
}


def _load(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as err:
        raise ConfigError(f"cannot read config: {err.strerror}", source=str(path)) from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"not valid TOML: {err}", source=str(path)) from None


def _check(data: dict[str, Any], schema: dict[str, dict[str, Any]], src: str,
           extra: tuple[str, ...] = ()) -> None:
    for section, body in data.items():
        if section in extra:
            continue
        if section not in schema:
            raise ConfigError("unknown section", source=src, key=f"[{section}]",
                              expected="one of " + ", ".join(
                                  f"[{s}]" for s in (*schema, *extra)))
        if not isinstance(body, dict):
            raise ConfigError("must be a table", source=src, key=section)
        _check_keys(body, schema[section], src, section)


def _check_keys(body: dict[str, Any], schema: dict[str, Any], src: str, section: str) -> None:
    for key, value in body.items():
        if key not in schema:
            raise ConfigError("unknown key", source=src, key=f"{section}.{key}",
                              expected="one of " + ", ".join(schema))
        want = schema[key]
        # bool is an int subclass: `true` must not pass as a port number.
        if (isinstance(value, bool) and want is not bool) or not isinstance(value, want):
            names = want.__name__ if isinstance(want, type) else " or ".join(
                t.__name__ for t in want)
            raise ConfigError(f"has the wrong type ({type(value).__name__})", source=src,
                              key=f"{section}.{key}", expected=names)


def _need(data: dict[str, Any], section: str, key: str, src: str) -> Any:
    try:
        return data[section][key]
    except KeyError:
        raise ConfigError("missing", source=src, key=f"{section}.{key}") from None


def hub_settings_from_file(path: str | Path) -> Any:
    """Read a hub config file into :class:`qkdnet.hub.daemon.HubSettings`."""
    from qkdnet.hub.daemon import HubSettings

    path = Path(path)
    src, base = str(path), path.resolve().parent
    data = _load(path)
    _check(data, _HUB_SCHEMA, src, extra=("spokes",))
    spokes_raw = data.get("spokes", {})
    if not isinstance(spokes_raw, dict) or not spokes_raw:
        raise ConfigError("no spokes configured", source=src, key="[spokes.NAME]",
                          expected="one table per spoke with bootstrap_secret")
    role = data.get("node", {}).get("role", "hub")
    if role != "hub":
        raise ConfigError(f"role is {role!r}", source=src, key="node.role", expected="'hub'")
    spokes: dict[str, Path | None] = {}
    link_per_spoke: dict[str, dict[str, Any]] = {}
    for name, entry in spokes_raw.items():
        if not isinstance(entry, dict):
            raise ConfigError("must be a table", source=src, key=f"spokes.{name}")
        _check_keys(entry, _SPOKE_ENTRY, src, f"spokes.{name}")
        secret = entry.get("bootstrap_secret")
        spokes[name] = (base / secret) if secret else None
        link_per_spoke[name] = {k: v for k, v in entry.items() if k != "bootstrap_secret"}
    control = data.get("control", {}).get("socket")
    routing = data.get("routing", {})
    listen = data.get("listen", {})
    pcap = data.get("capture", {}).get("pcap")
    link = dict(data.get("link", {}))
    link["spokes"] = link_per_spoke
    return HubSettings(
        name=_need(data, "node", "name", src),
        keystore=base / _need(data, "keystore", "path", src),
        host=listen.get("host", "127.0.0.1"), port=listen.get("port", 7787),
        spokes=spokes, control_socket=(base / control) if control else None,
        key_wait=float(routing.get("key_wait", 5.0)),
        queue_frames=routing.get("queue_frames", 64),
        queue_bytes=routing.get("queue_bytes", 2 << 20), window=routing.get("window", 64),
        pcap=(base / pcap) if pcap else None, link=link,
        lease_bits=data.get("keystore", {}).get("lease_bits", 1 << 16))


def spoke_settings_from_file(path: str | Path) -> Any:
    """Read a spoke config file into :class:`qkdnet.hub.node.SpokeSettings`."""
    from qkdnet.hub.node import SpokeSettings

    path = Path(path)
    src, base = str(path), path.resolve().parent
    data = _load(path)
    _check(data, _NODE_SCHEMA, src)
    role = data.get("node", {}).get("role", "spoke")
    if role != "spoke":
        raise ConfigError(f"role is {role!r}", source=src, key="node.role",
                          expected="'spoke'")
    hub = data.get("hub", {})
    secret = data.get("auth", {}).get("bootstrap_secret")
    control = data.get("control", {}).get("socket")
    routing = data.get("routing", {})
    pcap = data.get("capture", {}).get("pcap")
    return SpokeSettings(
        name=_need(data, "node", "name", src), hub_name=_need(data, "hub", "name", src),
        keystore=base / _need(data, "keystore", "path", src),
        hub_host=hub.get("host", "127.0.0.1"), hub_port=hub.get("port", 7787),
        bootstrap_secret=(base / secret) if secret else None,
        control_socket=(base / control) if control else None,
        key_wait=float(routing.get("key_wait", 5.0)), window=routing.get("window", 32),
        open_timeout=float(routing.get("open_timeout", 10.0)),
        pcap=(base / pcap) if pcap else None, link=dict(data.get("link", {})),
        lease_bits=data.get("keystore", {}).get("lease_bits", 1 << 16))


def spoke_settings_from_config(config: Any) -> Any:
    """``SpokeNode(config)`` with a path (str/Path) to a spoke config file."""
    if isinstance(config, str | Path):
        return spoke_settings_from_file(config)
    raise ConfigError(f"SpokeNode needs SpokeSettings or a config file path, not "
                      f"{type(config).__name__}")


# -- commands ------------------------------------------------------------------------

def _run_hub(args: argparse.Namespace) -> int:
    import trio
    from qkdnet.hub.daemon import HubDaemon, run_until_signal
    from qkdnet.hub.linkrun import hub_link_runner

    if not args.config:
        raise ConfigError("qkdnet hub needs --config FILE", source="command line",
                          key="--config", expected="a hub TOML file")
    settings = hub_settings_from_file(args.config)
    daemon = HubDaemon(settings, link_runner=hub_link_runner(settings))

    async def main(task_status: Any) -> None:
        await daemon.run(task_status=task_status)

    print(f"qkdnet hub {settings.name}: listening on {settings.host}:{settings.port} "
          f"for {', '.join(settings.spokes)}", file=sys.stderr)
    trio.run(run_until_signal, main)
    print(f"qkdnet hub {settings.name}: stopped", file=sys.stderr)
    return 0


def _run_node(args: argparse.Namespace) -> int:
    import trio
    from qkdnet.hub.daemon import run_until_signal
    from qkdnet.hub.linkrun import spoke_link_runner
    from qkdnet.hub.node import SpokeNode

    if not args.config:
        raise ConfigError("qkdnet node needs --config FILE", source="command line",
                          key="--config", expected="a spoke TOML file")
    settings = spoke_settings_from_file(args.config)
    node = SpokeNode(settings, link_runner=spoke_link_runner(settings))

    async def main(task_status: Any) -> None:
        import trio as _trio
        async with node.running():
            task_status.started()
            await _extra_node_services(node)
            await _trio.sleep_forever()

    print(f"qkdnet node {settings.name}: hub {settings.hub_name} at "
          f"{settings.hub_host}:{settings.hub_port}", file=sys.stderr)
    trio.run(run_until_signal, main)
    print(f"qkdnet node {settings.name}: stopped", file=sys.stderr)
    return 0


async def _extra_node_services(node: Any) -> None:
    """Hook for the apps layer's local API; nothing here when it is absent."""
    return None


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
            emit_json(result)
        else:
            _print_status(kind, result)
        return 0
    return handler


def _print_status(kind: str, st: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=False)
    if kind == "hub":
        table = Table(title=f"hub {st.get('hub')} (port {st.get('port')})")
        for col in ("spoke", "up", "QBER", "key rate b/s", "key hub→spoke",
                    "key spoke→hub", "frames in/out", "relays", "drops"):
            table.add_column(col)
        for name, sp in sorted(st.get("spokes", {}).items()):
            link = sp.get("link", {})
            keys = sp.get("key_bits", {})
            qber = link.get("qber")
            table.add_row(
                name, "yes" if sp.get("connected") else "no",
                f"{qber:.3%}" if isinstance(qber, int | float) else "-",
                f"{link.get('key_rate_bps', 0):.0f}",
                str(keys.get("hub_to_spoke", "-")), str(keys.get("spoke_to_hub", "-")),
                f"{sp.get('frames_in', 0)}/{sp.get('frames_out', 0)}",
                str(sp.get("key_relays", 0)),
                ", ".join(f"{k}={v}" for k, v in sp.get("drops", {}).items()) or "-")
        console.print(table)
        totals = st.get("totals", {})
        console.print("totals: " + (", ".join(f"{k}={v}" for k, v in sorted(totals.items()))
                                    or "none"))
    else:
        keys = st.get("key_bits", {})
        link = st.get("link", {})
        console.print(f"node {st.get('name')} → hub {st.get('hub')} "
                      f"({st.get('hub_address')}): "
                      f"{'connected' if st.get('connected') else 'NOT connected'}")
        qber = link.get("qber")
        console.print(f"  link: QBER {qber if qber is not None else '-'}, key rate "
                      f"{link.get('key_rate_bps', '-')} b/s, blocks {link.get('stored', 0)} "
                      f"stored / {link.get('aborted', 0)} aborted")
        console.print(f"  key: to hub {keys.get('to_hub', '-')} bits, from hub "
                      f"{keys.get('from_hub', '-')} bits")
        console.print("  " + ", ".join(f"{k}={v}" for k, v in st.get("counters", {}).items()))
        if st.get("last_error"):
            console.print(f"  last error: {st['last_error']}")


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
