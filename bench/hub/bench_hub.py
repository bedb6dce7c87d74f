"""Hub benchmark: relayed vs single-hop throughput, added latency, memory per spoke,
spokes per hub.

Run: ``.venv/bin/python bench/hub/bench_hub.py [--messages N] [--size BYTES]
[--spokes N] [--json]``.

* **Throughput.** alice sends N messages on a channel and waits for every delivery
  ack. *Single hop* (the baseline): the channel ends at the hub itself (the hub
  takes alice's key, decrypts, acknowledges). *Relayed*: the channel goes to bob;
  the hub also reserves hub→bob key, re-encrypts and forwards, and bob decrypts and
  acknowledges. Same key stores, same process, same run; the ratio is printed
  (target >= 0.8).
* **Latency.** One small message at a time (send, wait for the ack): the relayed
  round trip minus the single-hop round trip is the latency the relay adds.
* **Memory per spoke** and **spokes per hub**: a hub with ``--spokes`` spokes in
  one process (hub and nodes share the process, so the figure covers both sides),
  each spoke sending one message to another; reports Python heap (tracemalloc) and
  max-RSS growth per spoke and whether every message arrived (target >= 200 spokes).

All key is TEST-ONLY prefilled key (see ``qkdnet.hub.node.prefill_pair``): this
measures routing, not QKD. Key stores live in /dev/shm when it exists, so the
numbers are not those of the disk's fsync rate.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
import tracemalloc
from typing import Any

import trio

from qkdnet.hub.node import embedded_network


def _tmpdir() -> str:
    return tempfile.mkdtemp(prefix="qkdnet-bench-hub-",
                            dir="/dev/shm" if os.path.isdir("/dev/shm") else None)


async def _throughput(net: Any, dst: str, n: int, size: int) -> float:
    payload = os.urandom(size)
    ch = await net["alice"].open_channel(dst, "sink")
    t0 = time.perf_counter()
    for _ in range(n):
        await ch.send_message(payload)
    await ch.wait_delivered()
    dt = time.perf_counter() - t0
    await ch.aclose()
    return n * size / dt


async def _latency(net: Any, dst: str, n: int) -> float:
    ch = await net["alice"].open_channel(dst, "sink")
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        await ch.send_message(b"x" * 64)
        await ch.wait_delivered()
        samples.append(time.perf_counter() - t0)
    await ch.aclose()
    return statistics.median(samples)


async def bench_paths(n: int, size: int, lease_bits: int) -> dict[str, Any]:
    folder = _tmpdir()
    need = 8 * size * (3 * n + n // 10 + 10) + (1 << 20)
    async with embedded_network(["alice", "bob"], folder, prefill_key=need,
                                auth_bits=1 << 22, window=64, lease_bits=lease_bits) as net:
        listener = net["bob"].listen("sink")

        async def drain() -> None:
            async with trio.open_nursery() as nursery:
                async for ch in listener:
                    async def read(ch: Any = ch) -> None:
                        async for _ in ch:
                            pass
                    nursery.start_soon(read, ch)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            await _throughput(net, "bob", max(4, n // 10), size)   # warm-up
            hop = await _throughput(net, "hub", n, size)
            relay = await _throughput(net, "bob", n, size)
            hop2 = await _throughput(net, "hub", n, size)          # drift check
            lat_hop = await _latency(net, "hub", 200)
            lat_relay = await _latency(net, "bob", 200)
            nursery.cancel_scope.cancel()
    single = (hop + hop2) / 2
    return {
        "message_bytes": size, "messages": n,
        "single_hop_MBps": single / 1e6, "relayed_MBps": relay / 1e6,
        "relayed_over_single_hop": relay / single,
        "single_hop_rtt_ms": lat_hop * 1e3, "relayed_rtt_ms": lat_relay * 1e3,
        "added_latency_ms": (lat_relay - lat_hop) * 1e3,
    }


async def bench_paths_split(n: int, size: int, lease_bits: int) -> dict[str, Any]:
    """The same measurement with the hub in its own OS process (``qkdnet hub``)."""
    import signal
    import socket
    import subprocess
    from pathlib import Path

    from qkdnet.hub.cli import spoke_settings_from_file
    from qkdnet.hub.node import SpokeNode, prefill_pair
    from qkdnet.keystore import KeyStore

    folder = Path(_tmpdir())
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    need = 8 * size * (3 * n + n // 10 + 10) + (1 << 20)
    hub_store = KeyStore(folder / "hub.keys")
    lines = ['[node]\nname = "hub"\nrole = "hub"\n',
             f'[network]\nsideband_port = {port}\n',
             f'[keystore]\npath = "hub.keys"\nlease_bits = {lease_bits}\n',
             '[link]\nenabled = false\n']
    for name in ("alice", "bob"):
        secret = os.urandom(4096)
        (folder / f"{name}.bootstrap").write_bytes(secret)
        store = KeyStore(folder / f"{name}.keys")
        hub_store.import_bootstrap(name, secret, initiator=False)
        store.import_bootstrap("hub", secret, initiator=True)
        prefill_pair(hub_store, "hub", store, name, need, auth_bits=1 << 22)
        store.close()
        lines.append(f'[spokes.{name}]\nbootstrap_secret = "{name}.bootstrap"\n')
        (folder / f"{name}.toml").write_text(
            f'[node]\nname = "{name}"\nrole = "spoke"\nhub = "hub"\n'
            f'[network]\nhub_host = "127.0.0.1"\nhub_sideband_port = {port}\n'
            f'[keystore]\npath = "{name}.keys"\nlease_bits = {lease_bits}\n'
            '[routing]\nwindow = 64\n'
            '[link]\nenabled = false\n')
    hub_store.close()
    (folder / "hub.toml").write_text("".join(lines))
    hub = subprocess.Popen([sys.executable, "-m", "qkdnet", "hub", "--config", "hub.toml"],
                           cwd=folder, stderr=subprocess.DEVNULL)
    try:
        while not (folder / "hub.keys.ctl").exists():
            await trio.sleep(0.05)
        alice = SpokeNode(spoke_settings_from_file(folder / "alice.toml"))
        bob = SpokeNode(spoke_settings_from_file(folder / "bob.toml"))
        async with alice.running(), bob.running():
            await alice.wait_connected()
            await bob.wait_connected()
            net = {"alice": alice, "bob": bob}
            listener = bob.listen("sink")

            async def drain() -> None:
                async with trio.open_nursery() as nursery:
                    async for ch in listener:
                        async def read(ch: Any = ch) -> None:
                            async for _ in ch:
                                pass
                        nursery.start_soon(read, ch)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain)
                await _throughput(net, "bob", max(4, n // 10), size)
                hop = await _throughput(net, "hub", n, size)
                relay = await _throughput(net, "bob", n, size)
                hop2 = await _throughput(net, "hub", n, size)
                lat_hop = await _latency(net, "hub", 200)
                lat_relay = await _latency(net, "bob", 200)
                nursery.cancel_scope.cancel()
    finally:
        hub.send_signal(signal.SIGTERM)
        hub.wait(10)
    single = (hop + hop2) / 2
    return {
        "message_bytes": size, "messages": n,
        "single_hop_MBps": single / 1e6, "relayed_MBps": relay / 1e6,
        "relayed_over_single_hop": relay / single,
        "single_hop_rtt_ms": lat_hop * 1e3, "relayed_rtt_ms": lat_relay * 1e3,
        "added_latency_ms": (lat_relay - lat_hop) * 1e3,
    }


async def bench_spokes(n_spokes: int) -> dict[str, Any]:
    folder = _tmpdir()
    names = [f"s{i:03d}" for i in range(n_spokes)]
    tracemalloc.start()
    heap0 = tracemalloc.get_traced_memory()[0]
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    delivered = 0
    async with embedded_network(names, folder, prefill_key=1 << 13, auth_bits=1 << 13,
                                key_wait=30) as net:
        setup = time.perf_counter() - t0
        heap = (tracemalloc.get_traced_memory()[0] - heap0) / n_spokes
        tracemalloc.stop()
        rss = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) * 1024 / n_spokes
        got: dict[str, bytes] = {}

        async def accept(name: str, lst: Any) -> None:
            ch = await lst.accept()
            got[name] = await ch.receive_message()

        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(accept, name, net[name].listen("ping"))

            async def send(i: int) -> None:
                src, dst = names[i], names[(i + 1) % n_spokes]
                ch = await net[src].open_channel(dst, "ping")
                await ch.send_message(f"{src}->{dst}".encode())
                await ch.wait_delivered()

            t1 = time.perf_counter()
            async with trio.open_nursery() as senders:
                for i in range(n_spokes):
                    senders.start_soon(send, i)
            exchange = time.perf_counter() - t1
        for i, name in enumerate(names):
            src = names[(i - 1) % n_spokes]
            delivered += got.get(name) == f"{src}->{name}".encode()
        connected = sum(1 for s in net.hub.status()["spokes"].values() if s.get("connected"))
    return {"spokes": n_spokes, "connected": connected, "delivered": delivered,
            "setup_s": setup, "exchange_s": exchange,
            "heap_KiB_per_spoke": heap / 1024, "max_rss_KiB_per_spoke": rss / 1024}



def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=300)
    ap.add_argument("--size", type=int, default=16384)
    ap.add_argument("--spokes", type=int, default=200)
    ap.add_argument("--lease-bits", type=int, default=1 << 22,
                    help="key-store lease per pool (both paths; see [keystore] lease_bits)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    spokes = trio.run(bench_spokes, args.spokes)  # first: max-RSS only grows
    paths = trio.run(bench_paths, args.messages, args.size, args.lease_bits)
    split = trio.run(bench_paths_split, args.messages, args.size, args.lease_bits)
    result = {"paths_one_process": paths, "paths_hub_process": split, "spokes": spokes}
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
        return 0
    s = spokes
    for label, p in (("hub, alice and bob in one process", paths),
                     ("hub in its own process (alice and bob in another)", split)):
        print(f"{label}: {p['messages']} x {p['message_bytes']} B messages, acked, "
              f"key-store lease {args.lease_bits} bits")
        print(f"  single hop (alice->hub)     {p['single_hop_MBps']:8.2f} MB/s   (baseline)")
        print(f"  relayed (alice->hub->bob)   {p['relayed_MBps']:8.2f} MB/s")
        print(f"  ratio relayed / single hop  {p['relayed_over_single_hop']:8.2f}      "
              f"(target >= 0.8)")
        print(f"  latency, 64 B message to ack: single hop {p['single_hop_rtt_ms']:.3f} ms, "
              f"relayed {p['relayed_rtt_ms']:.3f} ms, added by the relay "
              f"{p['added_latency_ms']:.3f} ms")
    print(f"spokes per hub: {s['connected']}/{s['spokes']} connected, "
          f"{s['delivered']}/{s['spokes']} messages delivered (target >= 200); "
          f"setup {s['setup_s']:.1f} s, exchange {s['exchange_s']:.2f} s")
    print(f"memory per spoke (hub + node in one process): "
          f"{s['heap_KiB_per_spoke']:.1f} KiB Python heap, "
          f"{s['max_rss_KiB_per_spoke']:.1f} KiB max-RSS growth")
    return 0


if __name__ == "__main__":
    sys.exit(main())
