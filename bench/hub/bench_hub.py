"""Hub benchmark: relayed vs single-hop throughput, added latency, memory per spoke,
spokes per hub.

Run: ``.venv/bin/python bench/hub/bench_hub.py [--messages N] [--size BYTES]
[--rounds R] [--spokes N] [--configs one,split,three,spokes] [--own-sessions]
[--profile-dir DIR] [--json]``.

* **Throughput.** alice sends N messages on a channel and waits for every delivery
  ack. *Single hop* (the baseline): the channel ends at the hub itself (the hub
  takes alice's key, decrypts, acknowledges every message). *Relayed*: the channel
  goes to bob; the hub also reserves hub→bob key, re-encrypts and forwards, and bob
  decrypts and acknowledges (cumulatively, once per burst). Same key stores, same
  run: R rounds of a single-hop run then a relayed run; the best run of each path
  (the least disturbed on a shared machine) gives the headline ratio (target >=
  0.8), and each round's ratio is printed too. Three shapes: hub, alice and bob in
  one process; the hub in its own process (``qkdnet hub``); and the deployment
  shape, alice, hub and bob each in its own process (``--child`` runs the hub and
  bob parties of this script).
* **Where the CPU goes.** Per process and path: CPU ms per message (user + kernel,
  from /proc), frames through the hub per message (from its status), and the ratio
  those CPU times predict with one core for all (total CPU) and with a core per
  process (the busiest one sets the pace). With ``--profile-dir`` each process of
  the three-process shape writes a cProfile (CPU clock) of the first round of each
  path, ``<role>-hop0.prof`` / ``<role>-relay0.prof``.
* **Latency.** One small message at a time (send, wait for the ack): the relayed
  round trip minus the single-hop round trip is the latency the relay adds.
* **Memory per spoke** and **spokes per hub**: a hub with ``--spokes`` spokes in
  one process (hub and nodes share the process, so the figure covers both sides),
  each spoke sending one message to another; reports Python heap (tracemalloc) and
  max-RSS growth per spoke and whether every message arrived (target >= 200 spokes).

All key is TEST-ONLY prefilled key (see ``qkdnet.hub.node.prefill_pair``): this
measures routing, not QKD. By default the key stores live in /dev/shm when it exists,
so the figures leave out the disk's fsync rate; ``--store-dir DIR`` puts them on a disk
instead, so every durable commit waits for its fsync. On a machine with fewer cores than
busy processes the processes share the cores; with Linux's autogroup scheduling,
processes of one session share one session's share (``--own-sessions`` starts hub
and bob in sessions of their own, as daemons would be). The output says which.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import trio

from qkdnet.hub.node import embedded_network

#: Where key stores go (``--store-dir``); None: /dev/shm when it exists.
STORE_DIR: str | None = None


def _tmpdir() -> str:
    """A scratch folder for key stores, removed when this process exits: in
    ``--store-dir`` if given (a disk: every commit waits for its fsync), else in
    /dev/shm (memory) when that exists. Each run fills it with key."""
    base = STORE_DIR or ("/dev/shm" if os.path.isdir("/dev/shm") else None)
    folder = tempfile.mkdtemp(prefix="qkdnet-bench-hub-", dir=base)
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


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


async def bench_paths(n: int, size: int, lease_bits: int, rounds: int) -> dict[str, Any]:
    folder = _tmpdir()
    need = _key_bits(n, size, rounds)
    async with (embedded_network(["alice", "bob"], folder, prefill_key=need,
                                 auth_bits=1 << 22, window=64, lease_bits=lease_bits) as net,
                trio.open_nursery() as nursery):
        nursery.start_soon(_drain, net["bob"])
        async def status() -> dict[str, Any]:
            return dict(net.hub.status())

        result = await _measure(net, n, size, rounds,
                                _Phases({"all": os.getpid()}, hub_status=status))
        nursery.cancel_scope.cancel()
    return result


def _deployment(folder: Path, need: int, lease_bits: int) -> int:
    """Key stores, bootstrap secrets and config files for hub, alice and bob in
    ``folder`` (TEST-ONLY prefilled key); returns the hub's sideband port."""
    import socket

    from qkdnet.hub.node import prefill_pair
    from qkdnet.keystore import KeyStore

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
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
    return port


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid``."""
    user, system = _proc_times(pid)
    return user + system


def _proc_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds used so far by process ``pid`` (Linux /proc)."""
    if pid == os.getpid():
        t = os.times()
        return t.user, t.system
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan"), float("nan")
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


class _Phases:
    """Per-phase CPU seconds of each process, and optional cProfile toggling.

    ``procs`` maps a role name to a pid. When ``profile_dir`` is set, child processes
    (started with ``--child ... --profile-dir``) start profiling on SIGUSR1 and dump
    on SIGUSR2; this process profiles itself directly.
    """

    def __init__(self, procs: dict[str, int], profile_dir: Path | None = None,
                 profiled: tuple[str, ...] = ("hop0", "relay0"),
                 hub_status: Any = None) -> None:
        self.procs = procs
        self.profile_dir = profile_dir
        self.profiled = profiled
        self.hub_status = hub_status  # async () -> the hub's status dict
        self.cpu: dict[str, dict[str, float]] = {}
        self.sys: dict[str, dict[str, float]] = {}
        self.frames: dict[str, int] = {}
        self._prof: Any = None
        self._frames0 = 0

    async def _hub_frames(self) -> int:
        """Frames the hub received plus frames it sent, all spokes."""
        if self.hub_status is None:
            return 0
        st = await self.hub_status()
        return sum(int(sp.get("frames_in", 0)) + int(sp.get("frames_out", 0))
                   for sp in st["spokes"].values())

    async def start(self, phase: str) -> dict[str, tuple[float, float]]:
        self._frames0 = await self._hub_frames()
        if self.profile_dir is not None and phase in self.profiled:
            import cProfile
            import signal
            (self.profile_dir / "phase").write_text(phase)
            for pid in self.procs.values():
                if pid != os.getpid():
                    os.kill(pid, signal.SIGUSR1)
            self._prof = cProfile.Profile(time.process_time)
            self._prof.enable()
        return {role: _proc_times(pid) for role, pid in self.procs.items()}

    async def stop(self, phase: str, before: dict[str, tuple[float, float]]) -> None:
        after = {role: _proc_times(pid) for role, pid in self.procs.items()}
        self.frames[phase] = await self._hub_frames() - self._frames0
        if self._prof is not None:
            import signal
            self._prof.disable()
            assert self.profile_dir is not None
            me = next(r for r, p in self.procs.items() if p == os.getpid())
            self._prof.dump_stats(self.profile_dir / f"{me}-{phase}.prof")
            self._prof = None
            for pid in self.procs.values():
                if pid != os.getpid():
                    os.kill(pid, signal.SIGUSR2)
            for role, pid in self.procs.items():  # let the children write their dumps
                for _ in range(500):
                    if pid == os.getpid() or (
                            self.profile_dir / f"{role}-{phase}.prof").exists():
                        break
                    time.sleep(0.02)
        self.cpu[phase] = {role: sum(after[role]) - sum(before[role]) for role in after}
        self.sys[phase] = {role: after[role][1] - before[role][1] for role in after}


def _control_status(folder: Path) -> Any:
    """An async function returning the status of the hub process serving ``folder``."""
    from qkdnet.hub.daemon import read_control_socket

    async def status() -> dict[str, Any]:
        return await read_control_socket(folder / "hub.keys.ctl")
    return status


async def _drain(node: Any) -> None:
    """Accept every channel on service "sink" and read it to the end."""
    listener = node.listen("sink")
    async with trio.open_nursery() as nursery:
        async for ch in listener:
            async def read(ch: Any = ch) -> None:
                async for _ in ch:
                    pass
            nursery.start_soon(read, ch)


def _key_bits(n: int, size: int, rounds: int) -> int:
    """Key each data pool needs for the measurement (warm-up, rounds, latency runs)."""
    return 8 * size * ((2 * rounds + 1) * n + n // 10 + 10) + (1 << 20)


async def _measure(net: Any, n: int, size: int, rounds: int,
                   phases: _Phases | None = None) -> dict[str, Any]:
    """The throughput and latency runs shared by every configuration.

    ``rounds`` times: a single-hop run then a relayed run, ``n`` messages each. On a
    shared machine the best run of each path is the one least disturbed, so the
    headline ratio is best relayed over best single hop; the per-round ratios are
    reported too.
    """
    async def timed(phase: str, dst: str) -> float:
        before = await phases.start(phase) if phases else {}
        rate = await _throughput(net, dst, n, size)
        if phases:
            await phases.stop(phase, before)
        return rate

    await _throughput(net, "bob", max(4, n // 10), size)   # warm-up
    hops, relays = [], []
    for i in range(rounds):
        hops.append(await timed(f"hop{i}", "hub"))
        relays.append(await timed(f"relay{i}", "bob"))
    lat_hop = await _latency(net, "hub", 200)
    lat_relay = await _latency(net, "bob", 200)
    out: dict[str, Any] = {
        "message_bytes": size, "messages": n, "rounds": rounds,
        "single_hop_MBps": max(hops) / 1e6, "relayed_MBps": max(relays) / 1e6,
        "relayed_over_single_hop": max(relays) / max(hops),
        "round_ratios": [r / h for h, r in zip(hops, relays, strict=True)],
        "single_hop_runs_MBps": [h / 1e6 for h in hops],
        "relayed_runs_MBps": [r / 1e6 for r in relays],
        "single_hop_rtt_ms": lat_hop * 1e3, "relayed_rtt_ms": lat_relay * 1e3,
        "added_latency_ms": (lat_relay - lat_hop) * 1e3,
    }
    if phases:
        def cpu_ms(path: str, table: dict[str, dict[str, float]]) -> dict[str, float]:
            # The median over rounds of each process's CPU time per message.
            return {r: statistics.median(table[f"{path}{i}"][r] for i in range(rounds))
                    / n * 1e3 for r in phases.procs}
        hop_cpu, relay_cpu = cpu_ms("hop", phases.cpu), cpu_ms("relay", phases.cpu)
        out["cpu_ms_per_message"] = {"single_hop": hop_cpu, "relayed": relay_cpu}
        out["kernel_cpu_ms_per_message"] = {"single_hop": cpu_ms("hop", phases.sys),
                                            "relayed": cpu_ms("relay", phases.sys)}
        # What the CPU times alone predict: all processes on one core (throughput ~
        # 1 / total CPU), and one core each (the busiest process sets the pace).
        out["cpu_ratio_one_core"] = sum(hop_cpu.values()) / sum(relay_cpu.values())
        out["cpu_ratio_core_each"] = max(hop_cpu.values()) / max(relay_cpu.values())
        if phases.hub_status is not None:
            out["hub_frames_per_message"] = {
                path: statistics.median(phases.frames[f"{path}{i}"] for i in range(rounds)) / n
                for path in ("hop", "relay")}
    return out


async def bench_paths_split(n: int, size: int, lease_bits: int, rounds: int
                            ) -> dict[str, Any]:
    """The same measurement with the hub in its own OS process (``qkdnet hub``)."""
    import signal
    import subprocess

    from qkdnet.hub.cli import spoke_settings_from_file
    from qkdnet.hub.node import SpokeNode

    folder = Path(_tmpdir())
    _deployment(folder, _key_bits(n, size, rounds), lease_bits)
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
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_drain, bob)
                phases = _Phases({"hub": hub.pid, "alice+bob": os.getpid()},
                                 hub_status=_control_status(folder))
                result = await _measure(net, n, size, rounds, phases)
                nursery.cancel_scope.cancel()
    finally:
        hub.send_signal(signal.SIGTERM)
        hub.wait(10)
    return result


async def bench_paths_three(n: int, size: int, lease_bits: int, rounds: int,
                            profile_dir: Path | None = None,
                            own_sessions: bool = False) -> dict[str, Any]:
    """The deployment shape: alice (this process), hub and bob each in its own OS
    process. With ``profile_dir``, every process writes ``<role>-<phase>.prof``
    (cProfile) for the single-hop and relayed runs. With ``own_sessions`` hub and bob
    start in sessions of their own, as daemons do: with Linux's autogroup scheduling
    each session then gets its own share of the CPUs (instead of the three sharing
    one session's share with everything else on the machine)."""
    import signal
    import subprocess

    from qkdnet.hub.cli import spoke_settings_from_file
    from qkdnet.hub.node import SpokeNode

    folder = Path(_tmpdir())
    _deployment(folder, _key_bits(n, size, rounds), lease_bits)
    extra = ["--profile-dir", str(profile_dir)] if profile_dir else []
    me = [sys.executable, os.path.abspath(__file__)]
    hub = subprocess.Popen([*me, "--child", "hub", "--config", "hub.toml", *extra],
                           cwd=folder, stderr=(folder / "hub.err").open("wb"),
                           start_new_session=own_sessions)
    bob = None
    try:
        while not (folder / "hub.keys.ctl").exists():
            await trio.sleep(0.05)
        bob = subprocess.Popen([*me, "--child", "sink", "--config", "bob.toml", *extra],
                               cwd=folder, stderr=(folder / "bob.err").open("wb"),
                               start_new_session=own_sessions)
        while not (folder / "bob.ready").exists():
            if bob.poll() is not None:
                raise RuntimeError("the bob process exited early")
            await trio.sleep(0.05)
        alice = SpokeNode(spoke_settings_from_file(folder / "alice.toml"))
        async with alice.running():
            await alice.wait_connected()
            phases = _Phases({"alice": os.getpid(), "hub": hub.pid, "bob": bob.pid},
                             profile_dir, hub_status=_control_status(folder))
            result = await _measure({"alice": alice}, n, size, rounds, phases)
    finally:
        for proc in (bob, hub):
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(10)
    return result


def _child(role: str, config: str, profile_dir: str | None) -> int:
    """``--child hub|sink``: run one party of :func:`bench_paths_three`.

    SIGUSR1 starts cProfile and SIGUSR2 dumps it to ``<profile_dir>/<role>-<phase>.prof``
    (the phase name is in ``<profile_dir>/phase``) when ``profile_dir`` is given.
    """
    import signal

    name = "hub" if role == "hub" else "bob"
    if profile_dir is not None:
        import cProfile
        box: list[Any] = []

        def on(_sig: int, _frame: Any) -> None:
            box[:] = [cProfile.Profile(time.process_time),
                      (Path(profile_dir) / "phase").read_text()]
            box[0].enable()
            print(f"profiling {box[1]}", file=sys.stderr, flush=True)

        def off(_sig: int, _frame: Any) -> None:
            print(f"dump {box[1] if box else None}", file=sys.stderr, flush=True)
            if box:
                prof, phase = box
                prof.disable()
                prof.dump_stats(Path(profile_dir) / f"{name}-{phase}.prof")
                box.clear()

        signal.signal(signal.SIGUSR1, on)
        signal.signal(signal.SIGUSR2, off)
    if role == "hub":
        from qkdnet.cli import main as qkdnet_main
        return qkdnet_main(["hub", "--config", config])

    from qkdnet.hub.cli import spoke_settings_from_file
    from qkdnet.hub.daemon import run_until_signal
    from qkdnet.hub.node import SpokeNode

    node = SpokeNode(spoke_settings_from_file(config))

    async def main(task_status: Any) -> None:
        async with node.running(), trio.open_nursery() as nursery:
            await node.wait_connected()
            nursery.start_soon(_drain, node)
            task_status.started()
            Path("bob.ready").touch()
            await trio.sleep_forever()

    trio.run(run_until_signal, main)
    return 0


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



def _sched_note(own_sessions: bool) -> str:
    """How Linux shares the CPUs between the benchmark's processes."""
    try:
        autogroup = Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip()
    except OSError:
        return "scheduler grouping unknown"
    if autogroup != "1":
        return "autogroup scheduling is off: each process competes on its own"
    if own_sessions:
        return ("autogroup scheduling is on and hub and bob run in sessions of their own: "
                "each session gets an equal share of the cores")
    return ("autogroup scheduling is on and all three run in one session: together they "
            "get one session's share of the cores (one core if another session keeps "
            "one busy); try --own-sessions")


_CONFIGS = {
    "one": "hub, alice and bob in one process",
    "split": "hub in its own process (alice and bob in another)",
    "three": "alice, hub and bob each in its own process (the deployment shape)",
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=300)
    ap.add_argument("--size", type=int, default=16384)
    ap.add_argument("--spokes", type=int, default=200)
    ap.add_argument("--lease-bits", type=int, default=1 << 22,
                    help="key-store lease per pool (both paths; see [keystore] lease_bits)")
    ap.add_argument("--configs", default=None,
                    help="comma-separated subset of: one, split, three, spokes (default: all)")
    ap.add_argument("--profile-dir", type=Path, default=None,
                    help="three-process run: each process writes <role>-<phase>.prof")
    ap.add_argument("--rounds", type=int, default=3,
                    help="single-hop/relayed run pairs per configuration (best of each)")
    ap.add_argument("--own-sessions", action="store_true",
                    help="three-process run: start hub and bob in sessions of their own "
                         "(with autogroup scheduling each then gets its own CPU share)")
    ap.add_argument("--store-dir", default=None,
                    help="put the key stores in this folder (e.g. on a disk, to include "
                         "the fsync of every commit); default /dev/shm (memory)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", choices=("hub", "sink"), help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    args = ap.parse_args()
    global STORE_DIR
    STORE_DIR = args.store_dir
    if args.child:
        return _child(args.child, args.config,
                      str(args.profile_dir) if args.profile_dir else None)
    chosen = (args.configs or "one,split,three,spokes").split(",")
    if args.profile_dir is not None:
        args.profile_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {}
    if "spokes" in chosen:
        result["spokes"] = trio.run(bench_spokes, args.spokes)  # first: max-RSS only grows
    if "one" in chosen:
        result["one"] = trio.run(bench_paths, args.messages, args.size, args.lease_bits,
                                 args.rounds)
    if "split" in chosen:
        result["split"] = trio.run(bench_paths_split, args.messages, args.size,
                                   args.lease_bits, args.rounds)
    if "three" in chosen:
        result["three"] = trio.run(bench_paths_three, args.messages, args.size,
                                   args.lease_bits, args.rounds, args.profile_dir,
                                   args.own_sessions)
    result["cpus"] = os.cpu_count()
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
        return 0
    for key, label in _CONFIGS.items():
        p = result.get(key)
        if p is None:
            continue
        print(f"{label}: {p['messages']} x {p['message_bytes']} B messages, acked, "
              f"key-store lease {args.lease_bits} bits, best of {p['rounds']} runs each")
        print(f"  key stores in {args.store_dir or '/dev/shm (memory)'}")
        if key == "three":
            print(f"  note: {os.cpu_count()} CPU cores for 3 busy processes (plus whatever "
                  "else runs on this machine): they share the cores; on 3 hosts each "
                  "would have its own")
            print(f"  note: {_sched_note(args.own_sessions)}")
        print(f"  single hop (alice->hub)     {p['single_hop_MBps']:8.2f} MB/s   (baseline)")
        print(f"  relayed (alice->hub->bob)   {p['relayed_MBps']:8.2f} MB/s")
        print(f"  ratio relayed / single hop  {p['relayed_over_single_hop']:8.2f}      "
              f"(target >= 0.8); per round: "
              + ", ".join(f"{r:.2f}" for r in p["round_ratios"]))
        print(f"  latency, 64 B message to ack: single hop {p['single_hop_rtt_ms']:.3f} ms, "
              f"relayed {p['relayed_rtt_ms']:.3f} ms, added by the relay "
              f"{p['added_latency_ms']:.3f} ms")
        frames = p.get("hub_frames_per_message")
        if frames:
            print(f"  frames through the hub per message (in + out): single hop "
                  f"{frames['hop']:.2f}, relayed {frames['relay']:.2f}")
        for path, cpu in p.get("cpu_ms_per_message", {}).items():
            kernel = p["kernel_cpu_ms_per_message"][path]
            parts = ", ".join(f"{role} {ms:.2f} ({kernel[role]:.2f})"
                              for role, ms in cpu.items())
            print(f"  CPU ms per message (of which kernel), {path:10s}: {parts}; "
                  f"sum {sum(cpu.values()):.2f}")
        if "cpu_ratio_one_core" in p and len(p["cpu_ms_per_message"]["relayed"]) > 1:
            print(f"  ratio the CPU times predict: {p['cpu_ratio_one_core']:.2f} if the "
                  f"processes share one core, {p['cpu_ratio_core_each']:.2f} with a core "
                  "each (the busiest process sets the pace)")
    s = result.get("spokes")
    if s is not None:
        print(f"spokes per hub: {s['connected']}/{s['spokes']} connected, "
              f"{s['delivered']}/{s['spokes']} messages delivered (target >= 200); "
              f"setup {s['setup_s']:.1f} s, exchange {s['exchange_s']:.2f} s")
        print(f"memory per spoke (hub + node in one process): "
              f"{s['heap_KiB_per_spoke']:.1f} KiB Python heap, "
              f"{s['max_rss_KiB_per_spoke']:.1f} KiB max-RSS growth")
    return 0


if __name__ == "__main__":
    sys.exit(main())
