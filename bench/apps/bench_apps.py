"""SecureStream throughput and key cost, against plain trio TCP in the same run.

Measures, over loopback on this machine, each against plain ``trio`` TCP measured the
same way in the same run:

1. **one process**: sender and receiver are two tasks on ONE trio thread, so both
   ends' one-time pad and Poly1305 run on the same core as both ends' TCP work;
2. **two processes** (the deployment shape: two spokes are two hosts): the sender
   runs in a child OS process, the receiver in this one, so each end's work can run
   on its own core -- if the machine has a core free (it is shared; the header
   prints the load);

   both as a table over write sizes (``send_all`` of 4 KiB, 64 KiB, 1 MiB), with
   in-memory test key pre-generated (so the key generator is not measured; each end
   reads its own copy, as two hosts do): MB/s of payload and the ratio to TCP; CPU
   time per MiB (the process; in two processes each end, the busier one setting the
   pace) and the ratio of CPU times, which other jobs on a shared machine disturb far
   less than wall-clock MB/s; key bits consumed per payload bit (reserved from the
   source / payload sent);
3. the SecureStream core alone (seal and open, no I/O): the one-time pad and
   Poly1305 cost CPU time TCP does not spend, which bounds the ratio to TCP;
4. SecureStream on the durable key store's e2e pools (one hop, one process); whether
   Poly1305 and numpy XOR would gain from a second thread (they would need to release
   the GIL, and a core would need to be free: sha256 shows the latter);
5. a hop-secured stream relayed through a real hub (two padded, tagged hops; TEST-ONLY
   prefilled key) against the one-hop SecureStream over TCP with key-store key, and
   the key each link spends per payload bit.

Usage: ``python bench/apps/bench_apps.py [--mib N] [--rounds R] [--hub-mib M]``. Short
by default (the machine is shared); each figure is the best of R interleaved runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import trio

from qkdnet.apps.api import open_secure_stream, serve_secure
from qkdnet.apps.keys import KeyStoreStreamKeys, MemoryKeyPool, MemoryStreamKeys
from qkdnet.apps.stream import KeyCursor, SecureStream, SecureStreamCore
from qkdnet.keystore import BlockMeta, KeyStore

CHUNK = 1 << 20
KIB = 1 << 10
#: write sizes of the tables, and the share of ``--mib`` each one sends (small writes
#: cost per call, so they send less to keep the run short)
WRITE_SIZES = ((4 * KIB, 8), (64 * KIB, 2), (CHUNK, 1))


async def _tcp_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listeners[0].accept()
    await listeners[0].aclose()
    return client, server


async def _pump(sender: Any, receiver: Any, total: int, write: int = CHUNK) -> float:
    """Seconds to send ``total`` bytes in ``write``-byte ``send_all`` calls and receive them."""
    data = os.urandom(write)
    got = 0

    async def send() -> None:
        for _ in range(total // write):
            await sender.send_all(data)

    async def recv() -> None:
        nonlocal got
        while got < total:
            got += len(await receiver.receive_some(CHUNK))

    t = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        nursery.start_soon(recv)
    return time.perf_counter() - t


def _key_bytes(total: int, write: int) -> int:
    """Key a SecureStream spends sending ``total`` bytes in ``write``-byte calls, + EOF."""
    frames = total // write * -(-write // CHUNK)
    return total + 16 * (frames + 1) + 16 + 4096


def _memory_keys(seed: int, n_bytes: int, *, sender: bool) -> MemoryStreamKeys:
    """One end's memory test key, identical in two processes (same seed and size).

    The receiver's copy of the sender's pool marks every bit handed out (as the
    sender's process does when it reserves), so the receiver can peek and take them.
    """
    ab = MemoryKeyPool(seed=seed, capacity_bits=8 * n_bytes, name="a->b")
    ba = MemoryKeyPool(seed=seed + 1, capacity_bits=8 * 4096, name="b->a")
    if sender:
        ba.reserve(ba.available())
        return MemoryStreamKeys(ab, ba)
    ab.reserve(ab.available())
    return MemoryStreamKeys(ba, ab)


async def _in_process(kind: str, total: int, write: int) -> dict[str, float]:
    """One in-process run: MB/s, key bits per payload bit, CPU µs per MiB (the process)."""
    c, s = await _tcp_pair()
    a: Any = c
    b: Any = s
    if kind == "secure":
        n = _key_bytes(total, write)
        a = SecureStream(c, _memory_keys(write, n, sender=True), session=1)
        b = SecureStream(s, _memory_keys(write, n, sender=False), session=1)
    cpu = time.process_time()
    t = await _pump(a, b, total, write)
    cpu = time.process_time() - cpu
    key = a.stats.key_per_payload_bit() if kind == "secure" else 0.0
    await a.aclose()
    await b.aclose()
    return {"rate": total / t / 1e6, "key": key, "cpu": cpu / total * CHUNK * 1e6}


# ---- two processes: this process receives, a child process sends ----------------------


async def _child_sender(port: int, jobs: list[dict[str, Any]]) -> None:
    """Child process: for each job, connect, send, report key cost and CPU time."""
    for job in jobs:
        total, write = job["total"], job["write"]
        c = await trio.open_tcp_stream("127.0.0.1", port)
        stream: Any = c
        if job["kind"] == "secure":
            stream = SecureStream(c, _memory_keys(write, _key_bytes(total, write), sender=True),
                                  session=1)
        data = os.urandom(write)
        await stream.send_all(b"\0")  # ready: the receiver starts its clock at this byte
        cpu = time.process_time()
        for _ in range(total // write):
            await stream.send_all(data)
        cpu = time.process_time() - cpu
        key = stream.stats.key_per_payload_bit() if job["kind"] == "secure" else 0.0
        await stream.send_eof()
        assert await stream.receive_some(1) == b""  # the receiver has everything
        await stream.aclose()
        print(json.dumps({"key": key, "cpu_tx": cpu / total * CHUNK * 1e6}), flush=True)


async def _two_process(jobs: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Run ``jobs`` with a child process as sender: MB/s, key bits per payload bit, and
    each end's CPU µs per MiB (``cpu_tx``, ``cpu_rx``) of each job.

    The clock runs from the receiver's first byte to its last payload byte, the same
    for TCP and SecureStream; key generation in either process is outside it.
    """
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    cmd = [sys.executable, os.path.abspath(__file__), "--child-sender", str(port),
           json.dumps(jobs)]
    results: list[dict[str, float]] = []
    report = bytearray()

    async def read_report(stdout: Any) -> None:
        while chunk := await stdout.receive_some():
            report.extend(chunk)

    async with trio.open_nursery() as nursery:
        proc = await nursery.start(partial(trio.run_process, cmd, stdout=-1))
        nursery.start_soon(read_report, proc.stdout)
        for job in jobs:
            total, write = job["total"], job["write"]
            s = await listeners[0].accept()
            stream: Any = s
            if job["kind"] == "secure":
                keys = _memory_keys(write, _key_bytes(total, write), sender=False)
                stream = SecureStream(s, keys, session=1)
            assert await stream.receive_some(1) == b"\0"
            got = 0
            t, cpu = time.perf_counter(), time.process_time()
            while got < total:
                got += len(await stream.receive_some(CHUNK))
            t, cpu = time.perf_counter() - t, time.process_time() - cpu
            results.append({"rate": total / t / 1e6, "cpu_rx": cpu / total * CHUNK * 1e6})
            assert await stream.receive_some(CHUNK) == b""
            await stream.aclose()
    await listeners[0].aclose()
    for result, line in zip(results, report.decode().splitlines(), strict=True):
        result.update(json.loads(line))
    return results


def _core_only(total: int) -> tuple[float, float]:
    """MB/s of seal and of open (XOR, Poly1305, framing, key bookkeeping), no I/O.

    Each end reads its own copy of the key, as two hosts do.
    """
    n = _key_bytes(total, CHUNK)
    ka, kb = _memory_keys(3, n, sender=True), _memory_keys(3, n, sender=False)
    # Fixed nonces given to both cores: the STREAM_NONCE exchange is the adapter's job.
    nonce_a, nonce_b = os.urandom(16), os.urandom(16)
    tx = SecureStreamCore(1, None, nonce=nonce_a, peer_nonce=nonce_b)
    rx = SecureStreamCore(1, kb.take, peek=kb.peek, peek_parts=kb.peek_parts,
                          consume=kb.consume, nonce=nonce_b, peer_nonce=nonce_a)
    data = os.urandom(CHUNK)
    t_seal = t_open = 0.0
    for _ in range(total // CHUNK):
        t0 = time.perf_counter()
        frames = tx.seal_data(data, KeyCursor(ka.reserve(8 * tx.key_bytes_for(CHUNK))))
        t1 = time.perf_counter()
        for frame in frames:
            rx.receive_chunks(frame)
        t_seal += t1 - t0
        t_open += time.perf_counter() - t1
    return total / t_seal / 1e6, total / t_open / 1e6


def _two_threads(work: Any) -> float:
    """Speed-up of running ``work`` on two threads at once over running it twice in a row."""
    t = time.perf_counter()
    work()
    work()
    serial = time.perf_counter() - t
    threads = [threading.Thread(target=work) for _ in range(2)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return serial / (time.perf_counter() - t)


def _off_thread_check() -> None:
    """Could seal/open run off the trio thread usefully? Only if the primitive releases
    the GIL and a second core is free: measure both (2.0 = perfect, 1.0 = no gain)."""
    import hashlib

    import numpy as np
    from cryptography.hazmat.primitives.poly1305 import Poly1305

    data, key = os.urandom(CHUNK), os.urandom(32)
    bufs = [(np.frombuffer(os.urandom(CHUNK), np.uint8), np.empty(CHUNK, np.uint8))
            for _ in range(3)]  # the main thread's and one per thread
    per_thread = threading.local()

    def xor() -> None:
        if not hasattr(per_thread, "buf"):
            per_thread.buf = bufs.pop()
        a, out = per_thread.buf
        for _ in range(300):
            np.bitwise_xor(a, np.frombuffer(data, np.uint8), out=out)

    def poly() -> None:
        for _ in range(100):
            Poly1305.generate_tag(key, data)

    def sha() -> None:
        for _ in range(40):
            hashlib.sha256(data).digest()

    print(f"off the trio thread? two threads vs one (2.0 = a free core and no GIL): "
          f"Poly1305 {_two_threads(poly):.2f}, numpy XOR 1 MiB {_two_threads(xor):.2f}, "
          f"sha256 (releases the GIL; shows whether a core is free) {_two_threads(sha):.2f}")


def _provision(a: KeyStore, b: KeyStore, n_bytes: int) -> None:
    meta = BlockMeta("bench", time.time(), 1e-10, 1e-15, 0, 0)
    rng = __import__("numpy").random.default_rng(1)
    for i in range(0, n_bytes, 4 << 20):
        key = rng.bytes(min(4 << 20, n_bytes - i))
        a.add_block("b", "e2e-tx", 1 + i, key, 8 * len(key), meta)
        b.add_block("a", "e2e-rx", 1 + i, key, 8 * len(key), meta)


def _summary(runs: list[dict[str, float]]) -> dict[str, Any]:
    """Best of interleaved runs: highest MB/s, least CPU (the least disturbed runs)."""
    out: dict[str, Any] = {"rate": max(r["rate"] for r in runs), "key": runs[-1]["key"],
                           "rates": [r["rate"] for r in runs]}
    if "cpu" in runs[0]:
        out["cpu"] = min(r["cpu"] for r in runs)
    else:  # two processes: the busier end sets the pace
        least = min(runs, key=lambda r: max(r["cpu_tx"], r["cpu_rx"]))
        out.update(cpu_tx=least["cpu_tx"], cpu_rx=least["cpu_rx"],
                   cpu=max(least["cpu_tx"], least["cpu_rx"]))
    return out


def _paired(sec: list[float], tcp: list[float]) -> float:
    """Median over rounds of SecureStream's MB/s over the TCP run next to it."""
    return statistics.median(s / t for s, t in zip(sec, tcp, strict=True))


def _size(n: int) -> str:
    return f"{n // KIB} KiB" if n < CHUNK else f"{n // CHUNK} MiB"


def _table(rows: list[tuple[int, int, dict[str, Any], dict[str, Any]]]) -> None:
    two = "cpu_tx" in rows[0][2]
    what = "busier end's CPU" if two else "CPU"
    print("    write     total | plain TCP: MB/s  µs/MiB | SecureStream: MB/s  µs/MiB | "
          "ratio: MB/s paired  CPU | key bits/payload bit")
    for write, total, tcp, sec in rows:
        print(f"    {_size(write):>6} {total // CHUNK:5d} MiB | "
              f"{tcp['rate']:15.0f} {tcp['cpu']:7.0f} | "
              f"{sec['rate']:18.0f} {sec['cpu']:7.0f} | {sec['rate'] / tcp['rate']:11.2f} "
              f"{_paired(sec['rates'], tcp['rates']):6.2f} {tcp['cpu'] / sec['cpu']:4.2f} | "
              f"{sec['key']:.5f}")
    print(f"    (ratio MB/s: best / best; paired: median over rounds of the ratio of the two "
          f"runs made one after the other;\n     µs/MiB: {what} time per MiB of payload; "
          f"ratio CPU = TCP's / SecureStream's, the MB/s ratio an otherwise idle machine "
          f"would show)")
    if two:
        print("    per end, µs/MiB sender / receiver: " + "; ".join(
            f"{_size(w)}: TCP {t['cpu_tx']:.0f} / {t['cpu_rx']:.0f}, SecureStream "
            f"{s['cpu_tx']:.0f} / {s['cpu_rx']:.0f}" for w, _, t, s in rows))


async def bench(mib: int, hub_mib: int, rounds: int) -> None:
    total = mib * CHUNK
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{os.cpu_count()} CPUs, load average {load} (a busy shared machine lowers and "
          f"scatters the MB/s figures; each is the best of {rounds} interleaved runs)")
    sizes = [(w, max(w, total // share // w * w)) for w, share in WRITE_SIZES]
    # Interleaved, best of ``rounds``: the machine is shared and single runs swing by 2x.
    runs: dict[tuple[str, str, int], list[dict[str, float]]] = {}
    seal = open_ = 0.0
    for _ in range(rounds):
        seal_1, open_1 = _core_only(total)
        seal, open_ = max(seal, seal_1), max(open_, open_1)
        for write, n in sizes:
            for kind in ("tcp", "secure"):
                runs.setdefault(("one", kind, write), []).append(
                    await _in_process(kind, n, write))
        jobs = [{"kind": kind, "total": n, "write": write}
                for write, n in sizes for kind in ("tcp", "secure")]
        for job, result in zip(jobs, await _two_process(jobs), strict=True):
            runs.setdefault(("two", job["kind"], job["write"]), []).append(result)
    best = {k: _summary(v) for k, v in runs.items()}
    for shape, title in (
            ("one", "ONE process: sender and receiver are tasks on one trio thread, so both "
                    "ends' crypto and TCP work share one core"),
            ("two", "TWO processes (deployment shape, two spokes = two hosts): sender in a "
                    "child process, receiver in this one; each end can use its own core")):
        print(title)
        _table([(w, n, best[(shape, "tcp", w)], best[(shape, "secure", w)]) for w, n in sizes])
    tcp, mem = best[("one", "tcp", CHUNK)]["rate"], best[("one", "secure", CHUNK)]["rate"]
    tcp2, mem2 = best[("two", "tcp", CHUNK)]["rate"], best[("two", "secure", CHUNK)]["rate"]
    print(f"plain trio TCP loopback, 1 MiB writes: one process {tcp:8.1f} MB/s, "
          f"two processes {tcp2:8.1f} MB/s")
    print(f"SecureStream, memory key, 1 MiB      : one process {mem:8.1f} MB/s (ratio "
          f"{mem / tcp:.2f}), two processes {mem2:8.1f} MB/s (ratio {mem2 / tcp2:.2f})")
    core = 1 / (1 / seal + 1 / open_)
    print(f"  core alone (no I/O, one thread): seal {seal:.0f} MB/s, open {open_:.0f} MB/s, "
          f"seal+open {core:.0f} MB/s; so the ratio to TCP is at most")
    print(f"    one process : core / (core + TCP) = {core / (core + tcp):.2f} (both ends' "
          f"crypto and TCP on one core)")
    t2 = best[("two", "tcp", CHUNK)]
    us_seal, us_open = CHUNK / seal, CHUNK / open_
    bound = min(t2["cpu_tx"] / (t2["cpu_tx"] + us_seal), t2["cpu_rx"] / (t2["cpu_rx"] + us_open))
    print(f"    two processes: {bound:.2f} (an end's TCP CPU / (that + its seal or open), "
          f"the worse end; TCP {t2['cpu_tx']:.0f} / {t2['cpu_rx']:.0f} µs/MiB, seal "
          f"{us_seal:.0f}, open {us_open:.0f} µs/MiB)")
    # 2b. SecureStream, durable key store (e2e pools)
    with tempfile.TemporaryDirectory() as d:
        sa, sb = KeyStore(Path(d) / "a.db"), KeyStore(Path(d) / "b.db")
        n = min(total, 32 * CHUNK)
        _provision(sa, sb, int(n * 1.01) + (1 << 20))
        before = sa.available("b", "e2e-tx")
        c, s = await _tcp_pair()
        a = SecureStream(c, KeyStoreStreamKeys(sa, "b"), session=2)
        b = SecureStream(s, KeyStoreStreamKeys(sb, "a"), session=2)
        t_ks = await _pump(a, b, n)
        ks = n / t_ks / 1e6
        spent = before - sa.available("b", "e2e-tx")
        await a.aclose()
        await b.aclose()
        sa.close()
        sb.close()
    print(f"SecureStream, key store (1 hop, one process, 1 MiB writes): {ks:8.1f} MB/s  "
          f"ratio to TCP {ks / tcp:.2f}  "
          f"key bits per payload bit {spent / (8 * n):.5f} (store, incl. lease)  "
          f"({n // CHUNK} MiB)")
    _off_thread_check()
    # 3. relayed through a hub (hop-secured)
    from qkdnet.hub.node import embedded_network
    htotal = hub_mib * CHUNK
    with tempfile.TemporaryDirectory() as d:
        async with embedded_network(["alice", "bob"], d, prefill_key=int(8 * htotal * 1.2),
                                    auth_bits=1 << 22) as net:
            got = 0
            done = trio.Event()

            async def sink(stream: SecureStream) -> None:
                nonlocal got
                while chunk := await stream.receive_some():
                    got += len(chunk)
                done.set()

            a_before = net.stores["alice"].available("hub", "data-tx")
            b_before = net.hub_store.available("bob", "data-tx")
            async with trio.open_nursery() as nursery:
                await nursery.start(partial(serve_secure, sink, "bench", node=net["bob"]))
                stream = await open_secure_stream("bob", "bench", node=net["alice"])
                data = os.urandom(CHUNK)
                t = time.perf_counter()
                for _ in range(hub_mib):
                    await stream.send_all(data)
                await stream.send_eof()
                await done.wait()
                t_hub = time.perf_counter() - t
                await stream.aclose()
                nursery.cancel_scope.cancel()
            a_spent = a_before - net.stores["alice"].available("hub", "data-tx")
            b_spent = b_before - net.hub_store.available("bob", "data-tx")
    hub = htotal / t_hub / 1e6
    print(f"relayed via hub (hop-secured)  : {hub:8.1f} MB/s  ratio to 1-hop key-store "
          f"stream {hub / ks:.2f}, to TCP {hub / tcp:.3f}  ({hub_mib} MiB)")
    print(f"  key per payload bit, per link: alice->hub {a_spent / (8 * htotal):.5f}, "
          f"hub->bob {b_spent / (8 * htotal):.5f} (pad only; tags use the auth pools)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hub-mib", type=int, default=16)
    parser.add_argument("--child-sender", nargs=2, metavar=("PORT", "JOBS"),
                        help=argparse.SUPPRESS)  # internal: the two-process sender
    args = parser.parse_args()
    if args.child_sender:
        trio.run(_child_sender, int(args.child_sender[0]), json.loads(args.child_sender[1]))
        return
    trio.run(bench, args.mib, args.hub_mib, args.rounds)


if __name__ == "__main__":
    main()
