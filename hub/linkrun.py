"""Glue between the hub/spoke daemons and the link layer's driver.

The hub holds the detectors, so on each spoke connection it runs the link's
*receiver* (:class:`qkdnet.link.driver.LinkEndpoint` with an emulated PHY), and
each spoke runs the *transmitter*, starting blocks forever. Both ends build the
emulated PHY from the same ``(preset, km, seed)`` (the hub config may set ``km`` and
``seed`` per spoke). Link frames share the spoke's sideband connection with hub
frames; each runner registers the link types on the connection's FrameRouter
before the receive loop starts. Statistics (QBER, key rate, aborts) land in
``daemon.link_stats[spoke]`` / ``node.link_stats`` for status output.

A runner factory returns ``None`` when the link is disabled in the config, so the
daemons then route with whatever key is already in the store.

The hub emulates its links' PHYs in a small pool of worker processes
(:mod:`qkdnet.link.phy_worker`, :class:`HubLinkRunner`), so that numpy work does not
hold the hub's GIL while the trio loop serves every spoke (docs/daemon-keyrate.md).

Slot ranges never repeat for a spoke: the spoke's blocks start at
``max(time_slot_base(), durable per-hub high-water mark)`` and the mark is advanced
before the slots are used; the hub refuses any BLOCK_START below its own durable
per-spoke mark (both marks live in the node's key store, so they survive
reconnects and restarts).  The emulated source is a pure function of
``(seed, slot)``, so a repeated range would repeat the raw key.  Emulated key is
only as secret as the shared ``seed`` (spec/link.md §7): the hub emulates the
spoke's photons from it unless the quantum port is used.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import trio

log = logging.getLogger(__name__)

# The APD presets (gys2004, lim2014-apd) need ~1e9-slot blocks before the finite-key
# bound turns positive at metro distance; an SNSPD link makes key block after block.
DEFAULT_PRESET = "snspd-metro"
DEFAULT_KM = 10.0


#: PHY worker processes a hub runs when ``[link] phy_workers`` is not set (None: one
#: per CPU core, at most four; see :mod:`qkdnet.link.phy_worker`).
DEFAULT_PHY_WORKERS: int | None = None

#: Blocks a spoke keeps in flight when ``[link] in_flight`` is not set.
DEFAULT_IN_FLIGHT = 2

#: Key rates in the status are measured over this many seconds of recent blocks.
RATE_WINDOW_S = 60.0


class LinkStatus:
    """The public state of one link for ``hub status`` / ``node status``.

    Writes into ``target`` (the dict the status output shows): ``state`` ("up" while
    the link endpoint runs, "down" once it has stopped, with ``down_reason``),
    ``since`` (wall-clock time of the last change, ISO 8601), block counters, the last
    QBER, and key rates over the last :data:`RATE_WINDOW_S` seconds — gross (ℓ),
    authentication (what the blocks' tags spent) and net — which drop to 0 when the
    link is down instead of showing the last rate.
    """

    def __init__(self, target: dict[str, Any]) -> None:
        self.target = target
        self._recent: list[tuple[float, int, int]] = []   # (monotonic, ell, auth bits)
        self._up_at = time.monotonic()

    def up(self) -> None:
        self._up_at = time.monotonic()
        self._recent.clear()
        self.target.update(state="up", since=_now_iso(), down_reason=None)
        self._rates()

    def down(self, reason: str) -> None:
        self.target.update(state="down", since=_now_iso(), down_reason=reason)
        self._recent.clear()
        self._rates()

    def on_block(self, st: Any) -> None:
        """``LinkEndpoint`` callback: one block stored or abandoned."""
        target = self.target
        target["blocks"] = target.get("blocks", 0) + 1
        auth = int(st.auth_bits)
        if st.abort_reason is None:
            target["stored"] = target.get("stored", 0) + 1
            target["key_bits"] = target.get("key_bits", 0) + int(st.ell)
            target["qber"] = st.qber_key if st.qber_key is not None else st.qber_est
            self._recent.append((time.monotonic(), int(st.ell), auth))
        else:
            target["aborted"] = target.get("aborted", 0) + 1
            reasons = target.setdefault("abort_reasons", {})
            reasons[st.abort_reason] = reasons.get(st.abort_reason, 0) + 1
            target["last_abort"] = st.abort_reason
            self._recent.append((time.monotonic(), 0, auth))
        target["auth_bits"] = target.get("auth_bits", 0) + auth
        self._rates()

    def _rates(self) -> None:
        now = time.monotonic()
        self._recent = [r for r in self._recent if now - r[0] <= RATE_WINDOW_S]
        span = max(1e-3, min(RATE_WINDOW_S, now - self._up_at))
        if self.target.get("state") == "down" or not self._recent:
            gross = auth = 0.0
        else:
            gross = sum(r[1] for r in self._recent) / span
            auth = sum(r[2] for r in self._recent) / span
        self.target.update(gross_key_rate_bps=round(gross, 1), auth_rate_bps=round(auth, 1),
                           key_rate_bps=round(max(0.0, gross - auth), 1))


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@contextlib.contextmanager
def _link_lifetime(status: LinkStatus, endpoint_box: list[Any]) -> Iterator[None]:
    """Mark the link up while the block runs, down (with why) when it ends."""
    status.up()
    reason = "stopped"
    try:
        yield
    except BaseException as err:
        reason = type(err).__name__
        raise
    finally:
        endpoint = endpoint_box[0] if endpoint_box else None
        fatal = getattr(endpoint, "fatal_error", None)
        if fatal is not None:
            reason = f"{type(fatal).__name__}: {fatal}"
        elif reason == "Cancelled":
            reason = "connection closed"
        status.down(reason)


#: Share of the link's per-block click limit (``qkdnet.link.wire.MAX_CLICKS``) that
#: :func:`daemon_block_slots` aims at.
TARGET_CLICK_SHARE = 0.75
_PROBE_SLOTS = 1 << 22


def daemon_block_slots(params: Any, km: float, share: float = TARGET_CLICK_SHARE) -> int:
    """Pulse slots per block for ``share`` of the per-block click limit.

    The click probability per slot is measured on a short emulated probe (~10 ms),
    because detector dead time makes it much lower than the channel's click
    probability at short distances (snspd-metro at 10 km: 0.067 per slot, where
    ``link run``'s estimate assumes 0.13, so its blocks hold half the clicks allowed).
    Bigger blocks cost less CPU per key bit, but they are not the daemons' default
    yet: with eight spokes on a loaded 2-core machine they ran into the step timeout
    (docs/daemon-keyrate.md).  Set ``[link] block_slots`` to use them.
    """
    from qkdnet.link.driver import EmulatedPhy
    from qkdnet.link.wire import MAX_CLICKS

    probe = EmulatedPhy(params, km, seed=0, noise_seed=0).run(0, _PROBE_SLOTS)
    rate = max(len(probe), 1) / _PROBE_SLOTS
    return int(min(max(share * MAX_CLICKS / rate, 1e5), 1e10))


def _default_slots(preset: str, km: float, overrides: dict[str, Any] | None = None) -> int:
    from qkdnet.link.cli import default_block_slots

    return int(default_block_slots(_params(preset, overrides), km))


def _params(preset: str, overrides: dict[str, Any] | None) -> Any:
    from qkdnet.phy import presets

    params = presets.get(preset)
    return params.with_overrides(**overrides) if overrides else params


def _phy(preset: str, km: float, seed: int, *, attack: str | None = None,
         overrides: dict[str, Any] | None = None, noise_seed: int | None = None) -> Any:
    from qkdnet.link.driver import EmulatedPhy

    if attack in (None, "", "none"):
        attack = None
    return EmulatedPhy(_params(preset, overrides), km, seed=seed, attack=attack,
                       noise_seed=noise_seed)


def _link_config(link: dict[str, Any], params: Any, session_id: int) -> Any:
    """``LinkConfig`` for the preset, with the ``[link]`` settings both ends share."""
    from qkdnet.link.session import LinkConfig

    return LinkConfig.from_phy(params, session_id, **dict(link.get("config", {})))


class HubLinkRunner:
    """The hub's per-spoke link receiver (``await nursery.start(runner, daemon, spoke,
    chan, frames)``), with the resources the links share for the hub's lifetime.

    :meth:`resources` is entered once by :class:`~qkdnet.hub.daemon.HubDaemon` around
    its serving: it runs the pool of PHY worker processes (``[link] phy_workers``,
    :data:`DEFAULT_PHY_WORKERS`; 0 emulates every link's PHY in the hub's own process,
    in a worker thread).  Each spoke connection then opens its link's emulated
    PHY in the pool, pinned to one worker, and closes it when the connection ends.
    """

    def __init__(self, link: dict[str, Any]) -> None:
        self.link = link
        self.pool: Any = None

    def phy_workers(self) -> int:
        """Worker processes to run (0: PHY emulation in the hub's process)."""
        from qkdnet.link.phy_worker import default_workers

        n = self.link.get("phy_workers", DEFAULT_PHY_WORKERS)
        return default_workers() if n is None else int(n)

    @contextlib.asynccontextmanager
    async def resources(self) -> AsyncIterator[None]:
        """Run what the links share (the PHY worker pool) while the hub serves."""
        n = self.phy_workers()
        if n <= 0:
            yield
            return
        from qkdnet.link.phy_worker import PhyWorkerPool

        async with PhyWorkerPool(n) as pool:
            self.pool = pool
            try:
                yield
            finally:
                self.pool = None

    async def _open_phy(self, preset: str, km: float, seed: int, attack: Any,
                        overrides: dict[str, Any] | None, noise_seed: int) -> Any:
        if self.pool is None:
            return _phy(preset, km, seed, attack=attack, overrides=overrides,
                        noise_seed=noise_seed)
        if attack in ("", "none"):
            attack = None
        return await self.pool.open_link(_params(preset, overrides), km, seed=seed,
                                         attack=attack, noise_seed=noise_seed)

    async def __call__(self, daemon: Any, spoke: str, chan: Any, frames: Any, *,
                       task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        from qkdnet.link.driver import LinkEndpoint

        link = self.link
        per = link.get("spokes", {}).get(spoke, {})
        preset = per.get("preset", link.get("preset", DEFAULT_PRESET))
        km = float(per.get("km", link.get("km", DEFAULT_KM)))
        seed = int(per.get("seed", link.get("seed", 0)))
        attack = per.get("attack", link.get("attack"))
        overrides = per.get("params", link.get("params"))
        stats = daemon.link_stats.setdefault(spoke, {})
        stats.update({"preset": preset, "km": km, "role": "receiver"})
        status = LinkStatus(stats)
        # The hub holds the detectors, so the fibre (and any configured eavesdropper)
        # is emulated on its side.  Fresh noise entropy per connection: the channel's
        # coins must not repeat from one connection to the next.
        phy = await self._open_phy(preset, km, seed, attack, overrides,
                                   secrets.randbits(63))
        try:
            config = _link_config(link, phy.params, 1)
            with _link_tracer(link, daemon.settings.name,
                              f"link-{spoke}-{time.time_ns() // 1_000_000}") as tracer:
                endpoint = LinkEndpoint("receiver", chan, config, peer=spoke,
                                        store=daemon.store, phy=phy,
                                        on_block=status.on_block, tracer=tracer)
                endpoint.register(frames)
                task_status.started()
                with _link_lifetime(status, [endpoint]):
                    await endpoint.run()
        finally:
            if hasattr(phy, "aclose"):
                with trio.CancelScope(shield=True):
                    await phy.aclose()


def hub_link_runner(settings: Any) -> HubLinkRunner | None:
    """The hub's per-spoke link receiver, or None if ``[link] enabled = false``."""
    link = dict(settings.link)
    if not link.get("enabled", True):
        return None
    return HubLinkRunner(link)


def spoke_link_runner(settings: Any) -> Any:
    """The spoke's link transmitter, or None if ``[link] enabled = false``."""
    link = dict(settings.link)
    if not link.get("enabled", True):
        return None

    async def run(node: Any, chan: Any, frames: Any, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        from qkdnet.link.driver import new_session_id

        preset = link.get("preset", DEFAULT_PRESET)
        km = float(link.get("km", DEFAULT_KM))
        seed = int(link.get("seed", 0))
        block_slots = int(link.get("block_slots") or 0)
        if not block_slots:
            block_slots = _default_slots(preset, km, link.get("params"))
        node.link_stats.update({"preset": preset, "km": km, "role": "transmitter"})
        sid = new_session_id()
        phy = _phy(preset, km, seed, overrides=link.get("params"))
        config = _link_config(link, phy.params, sid)
        with _link_tracer(link, node.name, f"link-{node.hub}-{sid:08x}") as tracer:
            await _run_transmitter(node, chan, frames, config, phy, block_slots, tracer,
                                   task_status, int(link.get("in_flight") or DEFAULT_IN_FLIGHT))

    return run


async def _run_transmitter(node: Any, chan: Any, frames: Any, config: Any, phy: Any,
                           block_slots: int, tracer: Any,
                           task_status: trio.TaskStatus[None], in_flight: int) -> None:
    from qkdnet.link.driver import LinkEndpoint, time_slot_base

    status = LinkStatus(node.link_stats)
    endpoint = LinkEndpoint("transmitter", chan, config, peer=node.hub, store=node.store,
                            source=phy.source, on_block=status.on_block, tracer=tracer)
    endpoint.register(frames)
    task_status.started()
    with _link_lifetime(status, [endpoint]):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(endpoint.run)
            # Fresh slots per block: the emulated source is a function of (seed, slot).
            # run_blocks starts each block at or after the store's durable per-hub
            # high-water mark and advances it first; the wall-clock base also keeps a
            # spoke whose store was replaced ahead of the hub's own mark.
            await endpoint.run_blocks(None, block_slots, slot_base=time_slot_base(),
                                      max_in_flight=in_flight)
            nursery.cancel_scope.cancel()


@contextlib.contextmanager
def _link_tracer(link: dict[str, Any], node_name: str, session: str) -> Iterator[Any]:
    """The qlog-style tracer of one link session (``[trace]``), or None when off."""
    folder = link.get("trace")
    if not folder:
        yield None
        return
    from qkdnet.tracing import TraceFolder

    traces = TraceFolder(folder, node=node_name, clock=trio.current_time)
    try:
        yield traces.session(session)
    finally:
        traces.close()
