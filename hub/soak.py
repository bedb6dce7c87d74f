"""Soak run: does a hub-and-spoke network keep itself alive on its own key?

A hub and three spokes run real QKD links (emulated PHY, whole link layer) in this
process, started from small bootstrap secrets, so authentication must be paid from
distilled key within the first blocks. Two spokes (alice, bob) send each other
messages with whatever data key they have; the third (carol) stays idle. Every
``sample_s`` seconds the run records, per link, the blocks stored and abandoned, the
link's state and both ends' authentication and data pool levels, until every link
has run ``blocks_per_link`` blocks.

The verdict (:class:`SoakResult`): every link still up; no block abandoned for any
reason but ``no_key`` (a block too small or too noisy to distil anything) or
``ec_failed`` (LDPC did not converge; the block is dropped whole, counted); after a
link's first top-up every authentication pool stayed above half its reserve (the
transmitter tops each pool up to the reserve before storing data key, and a block
spends well under half of it); and distilled key still growing over the last tenth
of each link's blocks.

``python -m qkdnet.hub.soak --blocks 2000`` is the long run (docs/soak.md records
one); ``tests/hub/test_soak.py`` runs a short one.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import trio

SPOKES = ("alice", "bob", "carol")
TALKERS = ("alice", "bob")          # carol is idle
MESSAGE_BYTES = 512
#: Hub-side pools (spoke's name, purpose) and spoke-side pools (hub, purpose).
AUTH_PURPOSES = ("auth-tx", "auth-rx")
TOPPED_UP_SHARE = 0.9


@dataclass
class LinkSoak:
    """What one spoke's link did during the run."""

    blocks: int = 0
    stored: int = 0
    abort_reasons: dict[str, int] = field(default_factory=dict)
    key_bits: int = 0
    auth_bits: int = 0
    state: str = "?"
    down_reason: str | None = None
    #: Lowest level of each auth pool after the link's first top-up (hub and spoke).
    auth_min_after_topup: dict[str, int] = field(default_factory=dict)
    auth_final: dict[str, int] = field(default_factory=dict)
    topped_up_at_s: float | None = None
    key_bits_last_tenth: int = 0
    messages_sent: int = 0
    message_bytes_sent: int = 0


@dataclass
class SoakResult:
    """The whole run and its verdict (``problems`` empty: the network kept itself alive)."""

    preset: str
    km: float
    block_slots: int
    reconciliation: str
    bootstrap_bytes: int
    auth_reserve_bits: int
    blocks_per_link: int
    wall_s: float = 0.0
    links: dict[str, LinkSoak] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _pool_levels(net: Any, name: str) -> dict[str, int]:
    levels = {}
    for purpose in AUTH_PURPOSES:
        levels[f"hub:{purpose}"] = net.hub_store.available(name, purpose)
        levels[f"{name}:{purpose}"] = net.stores[name].available("hub", purpose)
    return levels


async def _talk(net: Any, sender: str, receiver: str, counts: dict[str, LinkSoak]) -> None:
    """Send ``receiver`` a message whenever ``sender`` has the key for it."""
    from qkdnet.errors import QkdnetError

    listener = net[receiver].listen(f"soak-{sender}")
    channel = await net[sender].open_channel(receiver, f"soak-{sender}")
    incoming = await listener.accept()

    async def drain() -> None:
        while True:
            await incoming.receive_message()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain)
        payload = bytes(MESSAGE_BYTES)
        while True:
            # Spend only key the link has already distilled (plus a margin), so the
            # traffic competes with authentication for key without stalling on it.
            if net.stores[sender].available("hub", "data-tx") < 4 * MESSAGE_BYTES * 8:
                await trio.sleep(0.2)
                continue
            try:
                await channel.send_message(payload)
            except QkdnetError:
                await trio.sleep(0.2)
                continue
            counts[sender].messages_sent += 1
            counts[sender].message_bytes_sent += len(payload)
            await trio.sleep(0.01)


async def run_soak(folder: Path, *, blocks_per_link: int, preset: str = "snspd-metro",
                   km: float = 5.0, block_slots: int = 6_000_000,
                   bootstrap_bytes: int = 4096, auth_reserve_bits: int = 1 << 16,
                   sample_s: float = 0.5, timeout_s: float | None = None,
                   reconciliation: str = "auto", progress: Any = None) -> SoakResult:
    """Run the network until every link has run ``blocks_per_link`` blocks (see the
    module docstring); ``progress(line)`` gets a one-line summary every few seconds."""
    from qkdnet.hub.node import embedded_network

    result = SoakResult(preset, km, block_slots, reconciliation, bootstrap_bytes,
                        auth_reserve_bits, blocks_per_link)
    links = {name: LinkSoak() for name in SPOKES}
    result.links = links
    history: list[tuple[float, dict[str, tuple[int, int]]]] = []
    started = time.monotonic()
    async with embedded_network(list(SPOKES), folder, link=True, preset=preset, km=km,
                                block_slots=block_slots, bootstrap_bytes=bootstrap_bytes,
                                link_config={"auth_reserve_bits": auth_reserve_bits,
                                             "reconciliation": reconciliation},
                                key_wait=30.0) as net, trio.open_nursery() as nursery:
        nursery.start_soon(_talk, net, "alice", "bob", links)
        nursery.start_soon(_talk, net, "bob", "alice", links)
        last_print = 0.0
        with trio.move_on_after(timeout_s if timeout_s else float("inf")) as scope:
            while True:
                now = time.monotonic() - started
                status = net.hub.status()["spokes"]
                done = True
                for name in SPOKES:
                    link = status[name].get("link", {})
                    soak = links[name]
                    soak.blocks = int(link.get("blocks", 0))
                    soak.stored = int(link.get("stored", 0))
                    soak.abort_reasons = dict(link.get("abort_reasons", {}))
                    soak.key_bits = int(link.get("key_bits", 0))
                    soak.auth_bits = int(link.get("auth_bits", 0))
                    soak.state = str(link.get("state", "?"))
                    soak.down_reason = link.get("down_reason")
                    levels = _pool_levels(net, name)
                    soak.auth_final = levels
                    # Topped up: the transmitter filled the pools to the reserve at its
                    # last PA; tags spent since then may have taken a little off.
                    if (soak.topped_up_at_s is None
                            and min(levels.values()) >= TOPPED_UP_SHARE * auth_reserve_bits):
                        soak.topped_up_at_s = round(now, 1)
                    if soak.topped_up_at_s is not None:
                        for pool, level in levels.items():
                            low = soak.auth_min_after_topup.get(pool, level)
                            soak.auth_min_after_topup[pool] = min(low, level)
                    done = done and soak.blocks >= blocks_per_link
                history.append((now, {n: (links[n].blocks, links[n].key_bits)
                                      for n in SPOKES}))
                if progress is not None and now - last_print >= 5.0:
                    last_print = now
                    progress(f"{now:7.0f} s  " + "  ".join(
                        f"{n}: {links[n].blocks} blocks ({links[n].stored} stored), auth min "
                        f"{min(_pool_levels(net, n).values())} b" for n in SPOKES))
                if done:
                    break
                await trio.sleep(sample_s)
        nursery.cancel_scope.cancel()
    result.wall_s = round(time.monotonic() - started, 1)
    if scope.cancelled_caught:
        result.problems.append(f"timed out after {timeout_s} s before "
                               f"{blocks_per_link} blocks per link")
    _judge(result, history)
    return result


def _judge(result: SoakResult, history: list[tuple[float, dict[str, tuple[int, int]]]]
           ) -> None:
    reserve = result.auth_reserve_bits
    for name, soak in result.links.items():
        if soak.state != "up":
            result.problems.append(f"{name}: link {soak.state} ({soak.down_reason})")
        bad = {r: n for r, n in soak.abort_reasons.items()
               if r not in ("no_key", "ec_failed")}
        if bad:
            result.problems.append(f"{name}: blocks abandoned {bad}")
        if soak.topped_up_at_s is None:
            result.problems.append(f"{name}: auth pools never reached the reserve")
        else:
            low = {p: v for p, v in soak.auth_min_after_topup.items() if v < reserve // 2}
            if low:
                result.problems.append(f"{name}: auth pools fell below half the reserve "
                                       f"after the first top-up: {low}")
        # Still growing at the end: key distilled over the link's last tenth of blocks
        # (at least its last two).
        window = max(2, soak.blocks // 10)
        base = next((kb for _, per in history for b, kb in [per[name]]
                     if b >= soak.blocks - window), soak.key_bits)
        soak.key_bits_last_tenth = soak.key_bits - base
        if soak.key_bits_last_tenth <= 0:
            result.problems.append(f"{name}: no key distilled in its last {window} blocks")
    for name in TALKERS:
        if result.links[name].messages_sent == 0:
            result.problems.append(f"{name}: sent no message")


def main(argv: list[str] | None = None) -> int:
    """``python -m qkdnet.hub.soak``: run, print progress and the verdict (exit 0 ok,
    1 a problem); ``--json FILE`` writes the whole result."""
    ap = argparse.ArgumentParser(prog="python -m qkdnet.hub.soak", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=2000, help="blocks per link (2000)")
    ap.add_argument("--preset", default="snspd-metro")
    ap.add_argument("--km", type=float, default=5.0)
    ap.add_argument("--block-slots", type=int, default=6_000_000)
    ap.add_argument("--bootstrap-bytes", type=int, default=4096)
    ap.add_argument("--auth-reserve-bits", type=int, default=1 << 16)
    ap.add_argument("--reconciliation", choices=("auto", "ldpc", "cascade"),
                    default="auto")
    ap.add_argument("--folder", type=Path, help="key stores here (default: a temp dir)")
    ap.add_argument("--json", type=Path, metavar="FILE", help="write the result here")
    args = ap.parse_args(argv)

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="qkdnet-soak-") as tmp:
        folder = args.folder or Path(tmp)
        result = trio.run(lambda: run_soak(
            folder, blocks_per_link=args.blocks, preset=args.preset, km=args.km,
            block_slots=args.block_slots, bootstrap_bytes=args.bootstrap_bytes,
            auth_reserve_bits=args.auth_reserve_bits, reconciliation=args.reconciliation,
            progress=say))
    data = asdict(result) | {"ok": result.ok}
    if args.json:
        args.json.write_text(json.dumps(data, indent=1) + "\n")
    for name, soak in result.links.items():
        print(f"{name}: {soak.blocks} blocks, {soak.stored} stored, aborts "
              f"{soak.abort_reasons or 'none'}, {soak.key_bits} key bits "
              f"({soak.key_bits_last_tenth} in the last tenth), auth spent {soak.auth_bits}, "
              f"auth pools min after top-up {min(soak.auth_min_after_topup.values(), default=0)}"
              f" (reserve {result.auth_reserve_bits}), {soak.messages_sent} messages sent, "
              f"link {soak.state}")
    print(f"{result.wall_s} s wall: " + ("OK, the network kept itself alive" if result.ok
                                         else "PROBLEMS: " + "; ".join(result.problems)))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
