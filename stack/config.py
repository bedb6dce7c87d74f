"""Node configuration: a TOML file (stdlib ``tomllib``) turned into frozen dataclasses.

:func:`load_config` reads a file and returns a :class:`NodeConfig`; every problem is a
:class:`~qkdnet.errors.ConfigError` whose ``source`` is the file, ``key`` the dotted
key (``network.sideband_port``) and ``expected`` what would have been accepted.
Unknown keys are errors, with a "did you mean" suggestion, so typos do not silently
fall back to defaults. Relative paths are resolved against the config file's folder.

Example (every key is optional except ``node.name``, ``node.role`` and, for a spoke,
``node.hub``)::

    [node]
    name = "alice"
    role = "spoke"              # "hub" or "spoke"
    hub = "hub"                 # spoke: the name of its hub

    [network]
    listen_host = "127.0.0.1"
    sideband_port = 7787        # hub: where spokes connect (TCP)
    quantum_port = 7788         # emulated quantum channel
    hub_host = "127.0.0.1"      # spoke: where its hub listens
    hub_sideband_port = 7787
    hub_quantum_port = 7788
    app_socket = "alice.sock"   # local socket apps use to reach this node

    [keystore]
    path = "alice-keys.sqlite"

    [phy]
    preset = "snspd-metro"      # see `qkdnet phy presets`
    km = 25.0
    attack = "none"             # e.g. "intercept-resend:0.3"
    [phy.params]                # overrides of the preset's PhyParams fields
    eta_det = 0.1

    [link]
    enabled = true
    block_slots = 10000000      # pulse slots per link block
    eps_sec = 1e-10
    eps_cor = 1e-15
    qber_threshold = 0.11
    decoy = "two"               # "one" or "two"

    [auth]
    bootstrap_secret = "alice-hub.secret"   # spoke: the secret shared with the hub

    [routing]                   # hub/spoke message routing
    key_wait = 5.0              # seconds a send waits for key the other end named
    key_stall = 60.0            # seconds with no new key on a hop before a send fails
    # window, open_timeout, queue_frames, queue_bytes: see RoutingConfig

    [trace]
    enabled = false
    folder = "traces"

    [pcap]
    path = "alice.pcap"

A hub lists its spokes, one table each, with the secret shared with that spoke and
optional per-link ``[phy]`` overrides (each spoke has its own fibre)::

    [spokes.alice]
    bootstrap_secret = "alice-hub.secret"
    km = 25.0
    seed = 1
    # preset, attack: as in [phy]

The ``[phy]`` section is checked by a hook (:data:`phy_validator`): by default it
imports :mod:`qkdnet.phy` lazily (only while validating) and checks the preset, the
parameter overrides and the attack with the PHY layer's own validation.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from qkdnet.errors import ConfigError

if TYPE_CHECKING:
    from qkdnet.tracing import TraceFolder

__all__ = [
    "AuthConfig",
    "KeystoreConfig",
    "LinkConfig",
    "NetworkConfig",
    "NodeConfig",
    "NodeSection",
    "PcapConfig",
    "PhyConfig",
    "RoutingConfig",
    "SpokeEntry",
    "TraceConfig",
    "config_from_dict",
    "load_config",
    "phy_validator",
    "validate_phy",
]

DEFAULT_SIDEBAND_PORT = 7787
DEFAULT_QUANTUM_PORT = 7788

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_NAME_EXPECTED = "1-64 characters from A-Z a-z 0-9 _ . - (starting with a letter or digit)"


# --------------------------------------------------------------- field checks

Check = Callable[[Any], str | None]


def _meta(check: Check | None = None, expected: str | None = None) -> dict[str, Any]:
    return {"check": check, "expected": expected}


def _port(v: int) -> str | None:
    return None if 0 <= v <= 65535 else f"port {v} out of range"


def _positive(v: float) -> str | None:
    return None if v > 0 else f"{v!r} is not positive"


def _open_unit(v: float) -> str | None:
    return None if 0 < v < 1 else f"{v!r} is not strictly between 0 and 1"


def _qber(v: float) -> str | None:
    return None if 0 < v < 0.5 else f"{v!r} is not a QBER threshold"


def _name(v: str) -> str | None:
    return None if _NAME_RE.match(v) else f"{v!r} is not a valid node name"


def _host(v: str) -> str | None:
    return None if v and not any(c.isspace() for c in v) else f"{v!r} is not a host name"


def _block_size(v: int) -> str | None:
    return None if v >= 1000 else f"{v} slots is too small for a block"


# ------------------------------------------------------------------- sections


@dataclass(frozen=True)
class NodeSection:
    """``[node]``: who this node is."""

    #: This node's name: how the hub and the other spokes address it.
    name: str = field(metadata=_meta(_name, _NAME_EXPECTED))
    #: What the node is: the trusted hub (``qkdnet hub``) or a spoke (``qkdnet node``).
    role: Literal["hub", "spoke"] = field(metadata=_meta(expected='"hub" or "spoke"'))
    #: Spoke only, and required there: the name of the hub it connects to.
    hub: str | None = field(default=None, metadata=_meta(_name, _NAME_EXPECTED))


@dataclass(frozen=True)
class NetworkConfig:
    """``[network]``: addresses and ports (0 means "pick a free port")."""

    #: Hub: the address it listens on for spokes (0.0.0.0: every interface).
    listen_host: str = field(default="127.0.0.1", metadata=_meta(_host, "a host name or IP"))
    #: Hub: the TCP port spokes connect to (the authenticated sideband). [TCP port]
    sideband_port: int = field(default=DEFAULT_SIDEBAND_PORT,
                               metadata=_meta(_port, "a TCP port 0-65535"))
    #: Reserved for a quantum port between daemons; today's daemons emulate the fibre
    #: inside the hub and do not open it. [TCP port]
    quantum_port: int = field(default=DEFAULT_QUANTUM_PORT,
                              metadata=_meta(_port, "a TCP port 0-65535"))
    #: Spoke, required there: the host name or address of its hub.
    hub_host: str | None = field(default=None, metadata=_meta(_host, "a host name or IP"))
    #: Spoke: the hub's sideband port (the hub's ``sideband_port``). [TCP port]
    hub_sideband_port: int = field(default=DEFAULT_SIDEBAND_PORT,
                                   metadata=_meta(_port, "a TCP port 0-65535"))
    #: Reserved, like ``quantum_port``: the hub's quantum port. [TCP port]
    hub_quantum_port: int = field(default=DEFAULT_QUANTUM_PORT,
                                  metadata=_meta(_port, "a TCP port 0-65535"))
    #: Spoke: the local (Unix) socket through which apps on this machine reach the node
    #: (``qkdnet send/receive/chat --node``); mode 0600. Unset: ``$QKDNET_NODE_SOCKET``,
    #: else ``~/.qkdnet/node.sock``.
    app_socket: Path | None = None


@dataclass(frozen=True)
class KeystoreConfig:
    """``[keystore]``: the SQLite key store file."""

    #: The SQLite key store file; the daemon also puts ``PATH.ctl`` (its status socket)
    #: and ``PATH.lock`` (one running copy per node) beside it.
    path: Path = Path("keystore.sqlite")
    #: Bits one durable transaction leases for small reservations (see qkdnet.keystore).
    #: [bits]
    lease_bits: int = field(default=1 << 16, metadata=_meta(_positive, "a positive integer"))
    #: Used-up block records kept per pool; daemons prune older ones hourly (their ids
    #: could then be added again, so keep more than a peer could ever resend). [records]
    retired_keep: int = field(default=100_000,
                              metadata=_meta(_positive, "a positive integer"))


@dataclass(frozen=True)
class PhyConfig:
    """``[phy]``: the emulated quantum channel.

    ``params`` holds overrides of the preset's ``PhyParams`` fields as plain TOML
    values; :meth:`phy_params` builds the validated object (imports ``qkdnet.phy``).
    """

    #: The PHY parameter set: source, fibre and detectors (``qkdnet phy presets``).
    preset: str = "snspd-metro"
    #: Fibre length between the spoke and the hub. [km]
    km: float = field(default=10.0, metadata=_meta(
        lambda v: None if v >= 0 else f"{v!r} km is negative", "a fibre length >= 0 km"))
    #: An eavesdropper on the fibre: ``none``, ``intercept-resend[:F[:random|biased|z|x]]``,
    #: ``beam-splitting[:TAP]`` or ``pns``.
    attack: str = "none"
    #: Seed of the emulated pulses (unset: random). Emulated key is only as secret as
    #: this seed (README, "Honest limits").
    seed: int | None = None
    #: ``[phy.params]``: overrides of the preset's fields, e.g. ``eta_det = 0.1``.
    params: dict[str, Any] = field(default_factory=dict)

    def phy_params(self) -> Any:
        """The preset with the overrides applied, as a ``qkdnet.phy.params.PhyParams``."""
        from qkdnet.phy import presets  # lazy: the PHY layer is optional for the spine

        base = presets.get(self.preset)
        return base.with_overrides(**self.params) if self.params else base


@dataclass(frozen=True)
class LinkConfig:
    """``[link]``: parameters of the QKD post-processing both ends must agree on."""

    #: Run QKD on the link (false: route with key already in the store only).
    enabled: bool = True
    #: Pulse slots per link block (unset: about 1.5e6 detections' worth for the preset
    #: and distance, the size with the best measured key per wall-second, see
    #: docs/block-size.md); larger blocks amortise the finite-key penalty. [slots]
    block_slots: int | None = field(default=None,
                                    metadata=_meta(_block_size, "an integer >= 1000"))
    #: Secrecy parameter ε_sec of the finite-key bound (per block).
    eps_sec: float = field(default=1e-10, metadata=_meta(_open_unit, "a number in (0, 1)"))
    #: Correctness parameter ε_cor: the chance that verified keys still differ.
    eps_cor: float = field(default=1e-15, metadata=_meta(_open_unit, "a number in (0, 1)"))
    #: Blocks whose estimated QBER is above this are aborted (``qber_too_high``).
    #: [fraction]
    qber_threshold: float = field(default=0.11, metadata=_meta(_qber, "a number in (0, 0.5)"))
    #: Decoy method the config asks for; the daemons' links follow the preset's
    #: intensities today, so this key is accepted but not yet used.
    decoy: Literal["one", "two"] = field(default="two", metadata=_meta(
        expected='"one" or "two"'))
    #: Level the transmitter tops each auth pool up to before storing data key. [bits]
    auth_reserve_bits: int = field(default=1 << 16,
                                   metadata=_meta(_positive, "a positive integer"))
    #: How long a link step may wait for the peer before the block is aborted. [s]
    step_timeout: float = field(default=60.0, metadata=_meta(_positive, "seconds > 0"))
    #: Error correction: "auto" (per block, the method with more expected key per
    #: wall-second: Cascade, or LDPC where Cascade's leakage leaves little key;
    #: docs/block-size.md), "cascade" or "ldpc".
    reconciliation: Literal["auto", "ldpc", "cascade"] = field(default="auto", metadata=_meta(
        expected='"auto", "ldpc" or "cascade"'))
    #: Blocks a spoke keeps in flight at once (pipelining). [blocks]
    in_flight: int = field(default=2, metadata=_meta(_positive, "a positive integer"))
    #: Hub: processes that emulate the spokes' PHYs (0: in the hub's own process;
    #: None: min(4, CPU cores)).
    phy_workers: int | None = field(default=None, metadata=_meta(
        lambda v: None if v >= 0 else f"{v!r} is negative", "an integer >= 0"))


@dataclass(frozen=True)
class AuthConfig:
    """``[auth]``: a spoke's pre-shared bootstrap secret (>= 4 KiB of random bytes).

    A hub names one secret per spoke in ``[spokes.NAME]`` instead.
    """

    #: Spoke: the secret file shared with its hub, the same file at both ends (unset:
    #: already imported into the key store). At least 4 KiB; give it 1 MiB, since the
    #: first link blocks spend authentication key from it.
    bootstrap_secret: Path | None = None


@dataclass(frozen=True)
class RoutingConfig:
    """``[routing]``: message routing between spokes through the hub."""

    #: How long a send may wait for a slow receiver, or for key the other end of a
    #: hop has already named, before it fails (waiting for *new* key: ``key_stall``).
    #: [s]
    key_wait: float = field(default=5.0, metadata=_meta(_positive, "seconds > 0"))
    #: How long a send waiting for one-time-pad key goes on waiting when no new key
    #: arrives on the hop it needs. While key keeps arriving it waits on, so a long
    #: transfer runs at the key rate; it fails with "no key arrived on hop X for N s"
    #: only after this long without any. [s]
    key_stall: float = field(default=60.0, metadata=_meta(_positive, "seconds > 0"))
    #: Frames in flight per channel (unset: the role's default, hub 64 / spoke 32).
    #: [frames]
    window: int | None = field(default=None, metadata=_meta(_positive, "a positive integer"))
    #: Spoke: how long to wait for a channel to open. [s]
    open_timeout: float = field(default=10.0, metadata=_meta(_positive, "seconds > 0"))
    #: Hub: frames queued per spoke before it throttles. [frames]
    queue_frames: int = field(default=64, metadata=_meta(_positive, "a positive integer"))
    #: Hub: bytes queued per spoke before it throttles. [bytes]
    queue_bytes: int = field(default=2 << 20, metadata=_meta(_positive, "a positive integer"))


@dataclass(frozen=True)
class SpokeEntry:
    """``[spokes.NAME]`` on a hub: the link to one spoke.

    ``preset``, ``km``, ``seed`` and ``attack`` override ``[phy]`` for this link.
    """

    #: The secret file shared with this spoke (the spoke's ``[auth] bootstrap_secret``).
    #: A spoke without one is refused.
    bootstrap_secret: Path | None = None
    #: This link's preset (unset: ``[phy] preset``).
    preset: str | None = None
    #: This link's fibre length (unset: ``[phy] km``). [km]
    km: float | None = field(default=None, metadata=_meta(
        lambda v: None if v >= 0 else f"{v!r} km is negative", "a fibre length >= 0 km"))
    #: This link's seed (unset: ``[phy] seed``).
    seed: int | None = None
    #: An eavesdropper on this link only (unset: ``[phy] attack``).
    attack: str | None = None


@dataclass(frozen=True)
class TraceConfig:
    """``[trace]``: qlog-style JSON-lines traces, one file per session."""

    #: Write a trace of every link session (also ``--trace [DIR]`` on the command line).
    enabled: bool = False
    #: The folder the trace files go into.
    folder: Path = Path("traces")


@dataclass(frozen=True)
class PcapConfig:
    """``[pcap]``: record the sideband traffic this node sends and receives."""

    #: The capture file to write (unset: no capture); read it with ``qkdnet pcap
    #: summary`` or Wireshark.
    path: Path | None = None


@dataclass(frozen=True)
class NodeConfig:
    """A whole node configuration; ``source`` is the file it came from."""

    node: NodeSection
    network: NetworkConfig = NetworkConfig()
    keystore: KeystoreConfig = KeystoreConfig()
    phy: PhyConfig = field(default_factory=PhyConfig)
    link: LinkConfig = LinkConfig()
    auth: AuthConfig = AuthConfig()
    routing: RoutingConfig = RoutingConfig()
    trace: TraceConfig = TraceConfig()
    pcap: PcapConfig = PcapConfig()
    #: Hub only: spoke name -> its link settings (also the set of spokes admitted).
    spokes: dict[str, SpokeEntry] = field(default_factory=dict)
    source: str = "<config>"
    base_dir: Path = Path(".")

    @property
    def name(self) -> str:
        """The node's name."""
        return self.node.name

    @property
    def role(self) -> Literal["hub", "spoke"]:
        """``"hub"`` or ``"spoke"``."""
        return self.node.role

    def secret_for(self, peer: str) -> Path | None:
        """The bootstrap secret file for the link to ``peer``.

        On a hub, the one in ``[spokes.PEER]``; on a spoke, ``[auth] bootstrap_secret``.
        """
        if self.role == "hub":
            entry = self.spokes.get(peer)
            return entry.bootstrap_secret if entry else None
        return self.auth.bootstrap_secret

    def phy_for(self, peer: str | None = None) -> PhyConfig:
        """``[phy]`` with ``[spokes.PEER]``'s overrides applied (hub), else ``[phy]``."""
        entry = self.spokes.get(peer) if peer is not None else None
        if entry is None:
            return self.phy
        changes = {k: getattr(entry, k) for k in ("preset", "km", "seed", "attack")
                   if getattr(entry, k) is not None}
        return dataclasses.replace(self.phy, **changes)

    def with_trace(self, enabled: bool, folder: str | os.PathLike[str] | None = None
                   ) -> NodeConfig:
        """A copy with tracing switched (the CLI's ``--trace`` flag)."""
        trace = TraceConfig(enabled, Path(folder) if folder is not None else self.trace.folder)
        return dataclasses.replace(self, trace=trace)

    def trace_folder(self, clock: Callable[[], float] | None = None) -> TraceFolder:
        """The :class:`~qkdnet.tracing.TraceFolder` this config asks for (disabled if off).

        Pass ``clock=trio.current_time`` from trio adapters so event times match ``now``.
        """
        from qkdnet.tracing import TraceFolder

        if not self.trace.enabled:
            return TraceFolder.disabled()
        if clock is None:
            return TraceFolder(self.trace.folder, node=self.name)
        return TraceFolder(self.trace.folder, node=self.name, clock=clock)

    def as_dict(self) -> dict[str, Any]:
        """Plain data (paths as strings) for ``--json`` output."""
        def plain(v: Any) -> Any:
            if isinstance(v, Path):
                return str(v)
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            if isinstance(v, list | tuple):
                return [plain(x) for x in v]
            return v
        out: dict[str, Any] = plain(dataclasses.asdict(self))
        return out


_SECTIONS: dict[str, type] = {
    "node": NodeSection, "network": NetworkConfig, "keystore": KeystoreConfig,
    "phy": PhyConfig, "link": LinkConfig, "auth": AuthConfig, "routing": RoutingConfig,
    "trace": TraceConfig, "pcap": PcapConfig,
}
#: Top-level tables whose keys are names, each holding a table of this type.
_NAMED_SECTIONS: dict[str, type] = {"spokes": SpokeEntry}


# ------------------------------------------------------------------ the loader


def _did_you_mean(key: str, options: list[str]) -> str:
    close = difflib.get_close_matches(key, options, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _unknown(key: str, options: list[str], where: str, source: str) -> ConfigError:
    return ConfigError(f"unknown key {key!r} in {where}{_did_you_mean(key, options)}",
                       source=source, key=f"{where}.{key}" if where != "the file" else key,
                       expected="one of " + ", ".join(options))


def _type_name(value: object) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            dict: "a table", list: "an array"}.get(type(value), type(value).__name__)


class _Ctx:
    def __init__(self, source: str, base_dir: Path) -> None:
        self.source = source
        self.base_dir = base_dir

    def error(self, key: str, message: str, expected: str | None) -> ConfigError:
        return ConfigError(message, source=self.source, key=key, expected=expected)


def _convert(value: object, tp: Any, key: str, ctx: _Ctx, expected: str | None) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert it (paths resolved)."""
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        # TOML has no null, so ``X | None`` only means "may be absent".
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(value, inner, key, ctx, expected)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ctx.error(key, f"{value!r} is not allowed",
                            expected or " or ".join(repr(c) for c in choices))
        return value
    if origin is dict:
        _kt, vt = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ctx.error(key, f"got {_type_name(value)}", expected or "a table")
        if vt is Any:
            return dict(value)
        return {str(k): _convert(v, vt, f"{key}.{k}", ctx, None) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ctx.error(key, f"got {_type_name(value)}", expected or "true or false")
        return value
    if tp is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ctx.error(key, f"got {_type_name(value)}", expected or "an integer")
        return value
    if tp is float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ctx.error(key, f"got {_type_name(value)}", expected or "a finite number")
        if not math.isfinite(value):
            raise ctx.error(key, f"{value!r} is not a finite number",
                            expected or "a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ctx.error(key, f"got {_type_name(value)}", expected or "a string")
        return value
    if tp is Path:
        if not isinstance(value, str) or not value:
            raise ctx.error(key, f"got {_type_name(value)}", expected or "a file path string")
        path = Path(value).expanduser()
        return path if path.is_absolute() else ctx.base_dir / path
    raise TypeError(f"config field {key} has an unsupported type {tp!r}")  # our bug


def _section(cls: type, table: object, where: str, ctx: _Ctx) -> Any:
    if not isinstance(table, dict):
        raise ctx.error(where, f"got {_type_name(table)}", f"a [{where}] table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in table:
        if key not in fields:
            raise _unknown(key, list(fields), where, ctx.source)
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        dotted = f"{where}.{name}"
        if name not in table:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ctx.error(dotted, "is missing", f.metadata.get("expected")
                                or f"a value for {name}")
            if isinstance(f.default, Path):  # relative defaults live beside the file too
                kwargs[name] = ctx.base_dir / f.default
            continue
        expected = f.metadata.get("expected")
        value = _convert(table[name], hints[name], dotted, ctx, expected)
        check = f.metadata.get("check")
        if check is not None:
            problem = check(value)
            if problem:
                raise ctx.error(dotted, problem, expected)
        kwargs[name] = value
    return cls(**kwargs)


def _relocate(section: Any, base_dir: Path) -> Any:
    """Resolve a default section's relative path defaults against ``base_dir``."""
    changes = {f.name: base_dir / getattr(section, f.name) for f in dataclasses.fields(section)
               if isinstance(getattr(section, f.name), Path)
               and not getattr(section, f.name).is_absolute()}
    return dataclasses.replace(section, **changes) if changes else section


def config_from_dict(data: Mapping[str, object], *, source: str = "<config>",
                     base_dir: str | os.PathLike[str] = ".", validate_phy_section: bool = True
                     ) -> NodeConfig:
    """Build a :class:`NodeConfig` from already-parsed TOML data (tests, embedding)."""
    ctx = _Ctx(source, Path(base_dir))
    for key in data:
        if key not in _SECTIONS and key not in _NAMED_SECTIONS:
            raise _unknown(key, [*_SECTIONS, *_NAMED_SECTIONS], "the file", source)
    if "node" not in data:
        raise ctx.error("node", "section is missing", "a [node] table with name and role")
    sections: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        if name in data:
            sections[name] = _section(cls, data[name], name, ctx)
        elif name != "node":
            sections[name] = _relocate(cls(), ctx.base_dir)
    for name, cls in _NAMED_SECTIONS.items():
        table = data.get(name, {})
        if not isinstance(table, dict):
            raise ctx.error(name, f"got {_type_name(table)}", f"[{name}.NAME] tables")
        entries = {}
        for entry_name, body in table.items():
            problem = _name(entry_name)
            if problem:
                raise ctx.error(f"{name}.{entry_name}", problem, _NAME_EXPECTED)
            entries[entry_name] = _section(cls, body, f"{name}.{entry_name}", ctx)
        sections[name] = entries
    cfg = NodeConfig(**sections, source=source, base_dir=ctx.base_dir)
    _cross_checks(cfg, ctx)
    if validate_phy_section and phy_validator is not None:
        phy_validator(cfg.phy, source, "phy")
        for spoke in cfg.spokes:
            phy_validator(cfg.phy_for(spoke), source, f"spokes.{spoke}")
    return cfg


def _cross_checks(cfg: NodeConfig, ctx: _Ctx) -> None:
    if cfg.role == "spoke":
        if cfg.node.hub is None:
            raise ctx.error("node.hub", "a spoke must name its hub", "the hub's node name")
        if cfg.network.hub_host is None:
            raise ctx.error("network.hub_host", "a spoke must say where its hub listens",
                            "a host name or IP")
        if cfg.spokes:
            raise ctx.error("spokes", "only a hub lists spokes",
                            "[auth] bootstrap_secret and [phy] on a spoke")
        if cfg.node.hub == cfg.node.name:
            raise ctx.error("node.hub", "a spoke cannot be its own hub", "another node's name")
    else:
        if cfg.node.hub is not None:
            raise ctx.error("node.hub", "only a spoke names a hub", "no node.hub on a hub")
        if cfg.auth.bootstrap_secret is not None:
            raise ctx.error("auth.bootstrap_secret", "a hub has one secret per spoke",
                            "bootstrap_secret in each [spokes.NAME] table")
        if cfg.name in cfg.spokes:
            raise ctx.error(f"spokes.{cfg.name}", "a hub cannot be its own spoke",
                            "the names of the spokes")


def load_config(path: str | os.PathLike[str]) -> NodeConfig:
    """Read and validate a node configuration file (see the module docstring)."""
    p = Path(path)
    source = str(p)
    try:
        raw = p.read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read the config file: {err.strerror or err}", source=source,
                          expected="a readable TOML file") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError("the file is not UTF-8 text", source=source,
                          expected="a TOML file") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"TOML syntax error: {err}", source=source,
                          expected="valid TOML (https://toml.io)") from None
    return config_from_dict(data, source=source, base_dir=p.resolve().parent)


# ------------------------------------------------------------------ PHY hook


def validate_phy(phy: PhyConfig, source: str, where: str = "phy") -> None:
    """Default ``[phy]`` check: the PHY layer's own validation, imported lazily.

    ``where`` is the table the preset/attack came from (``phy`` or ``spokes.NAME``).
    Skipped silently when ``qkdnet.phy`` is not importable (the spine stands alone).
    """
    try:
        import importlib
        presets = importlib.import_module("qkdnet.phy.presets")
    except ImportError:
        return
    try:
        params = presets.get(phy.preset)
    except ConfigError as err:
        raise ConfigError(f"unknown PHY preset {phy.preset!r}", source=source,
                          key=f"{where}.preset", expected=err.expected) from None
    names = [f.name for f in dataclasses.fields(params)]
    for key in phy.params:
        if key not in names:
            raise _unknown(key, names, "phy.params", source)
    if phy.params:
        try:
            params.with_overrides(**phy.params)
        except ConfigError as err:
            raise ConfigError(_bare_message(err), source=source,
                              key=f"phy.params.{err.key or ''}".rstrip("."),
                              expected=err.expected) from None
        except (TypeError, ValueError) as err:
            raise ConfigError(f"bad value: {err}", source=source, key="phy.params",
                              expected="values of the types PhyParams declares") from None
    try:
        attacks = importlib.import_module("qkdnet.phy.attacks")
    except ImportError:
        return
    try:
        attacks.parse_attack(phy.attack)
    except ConfigError as err:
        raise ConfigError(f"unknown or malformed attack {phy.attack!r}", source=source,
                          key=f"{where}.attack", expected=err.expected) from None


def _bare_message(err: ConfigError) -> str:
    """The message of a ConfigError made elsewhere, without its source/key/expected parts."""
    text = str(err)
    prefix = ": ".join(p for p in (err.source, err.key) if p)
    if prefix and text.startswith(prefix + ": "):
        text = text[len(prefix) + 2:]
    suffix = f" (expected {err.expected})" if err.expected else ""
    if suffix and text.endswith(suffix):
        text = text[:-len(suffix)]
    return text


#: The hook that checks ``[phy]``; replace it (or set ``None``) to change or skip that.
#: It is called as ``phy_validator(phy, source, where)``.
phy_validator: Callable[[PhyConfig, str, str], None] | None = validate_phy
