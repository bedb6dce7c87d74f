"""Key-rate benchmark: ``qkdnet link run`` and the daemons, beside SeQUeNCe 0.8.5.

Run: ``.venv/bin/python bench/link/bench_keyrate.py [--full] [--km 10,50,100]
[--blocks N] [--spokes 1,2,8] [--daemon-km 10] [--seconds S] [--sequence auto|run|recorded]
[--sequence-km 10] [--skip-linkrun] [--skip-daemons] [--json]``.  The default (quick)
run takes about two minutes on 2 cores; ``--full`` runs more blocks, longer daemon
windows and SeQUeNCe at every distance (about ten minutes, most of it SeQUeNCe at
100 km).

* **link run** (issue #13): both ends in one process through the real driver
  (:func:`qkdnet.link.driver.run_point_to_point`, the code behind ``qkdnet link run``,
  default block size and pipelining), snspd-metro at each ``--km``, in a child process
  so its peak memory is its own.  Printed per distance: Σℓ (gross secret bits), the
  authentication key the blocks' tags spent, net = gross − auth, each per wall-second
  of the whole run, and the steady rate after the first stored block (what the
  daemon figures compare with).  Targets: net ≥ 1 Mbit/s, 300 kbit/s, 30 kbit/s at
  10, 50, 100 km.
* **SeQUeNCe 0.8.5** (the baseline): its BB84 + Cascade example, one 10,240-bit key
  (``QKDNode`` pairs, 0.2 dB/km fibre, polarization fidelity 0.97, default light
  source and detectors), final key bits per wall-second of its simulation, run in a
  child process when ``import sequence`` works; otherwise the recorded figures from
  /work/shared/REFERENCES.md (≈ 1,000 / 300 / 33 bit/s).  The output says which.  Its
  key gets neither privacy amplification nor authentication, so the ratio flatters it.
* **Daemons**: a hub and N spokes as separate processes (``qkdnet hub`` / ``qkdnet
  node``, configs and bootstrap secrets generated in a temp dir), snspd-metro at
  ``--daemon-km``, block size as ``link run`` uses at that distance.  After every link
  has stored its first block the hub's status document (the one ``qkdnet hub status
  --json`` prints, read from its control socket) is polled for ``--seconds``; a link's
  net rate is the net key it stored between its first and last block completion in
  that window over that time.  Printed: per-link and total net rate, daemon-link /
  link-run at the same distance, total(N) / total(1), the CPU seconds each process
  used in the window, and the hub's peak RSS (VmHWM of the hub process, plus that of
  any PHY worker processes it started).  Targets: a daemon link ≥ 0.8 × link run,
  total(8) ≥ 1.5 × total(1).
* **Authentication share** of ℓ per distance, from the link-run blocks.

Timings on a shared 2-core machine are noisy: the load average is printed with the
results.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PRESET = "snspd-metro"
#: Issue #13 targets: net secret key bits per wall-second of ``link run``.
TARGETS = {10.0: 1e6, 50.0: 3e5, 100.0: 3e4}
#: SeQUeNCe 0.8.5 BB84 + Cascade, final key bits per wall-second, recorded on this kind
#: of machine (/work/shared/REFERENCES.md, "Peer figures").
RECORDED_SEQUENCE = {10.0: 1000.0, 50.0: 300.0, 100.0: 33.0}
DAEMON_LINK_TARGET = 0.8
SCALING_TARGET = 1.5
QKDNET = [sys.executable, "-m", "qkdnet"]


# -- children -------------------------------------------------------------------------

def _peak_rss_kib(pid: int | str = "self") -> int:
    """VmHWM (peak resident set) of a process in KiB, 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _child_linkrun(km: float, blocks: int, in_flight: int) -> dict[str, Any]:
    """Run ``link run``'s driver in this process; per-block completion times."""
    import trio

    from qkdnet.link.cli import default_block_slots
    from qkdnet.link.driver import run_point_to_point
    from qkdnet.phy import presets

    params = presets.get(PRESET)
    slots = default_block_slots(params, km)
    done: list[tuple[float, int, int, str | None]] = []

    def on_block(st: Any) -> None:
        done.append((time.perf_counter(), int(st.ell), int(st.auth_bits), st.abort_reason))

    with tempfile.TemporaryDirectory(prefix="qkdnet-bench-keyrate-") as tmp:
        t0 = time.perf_counter()
        result = trio.run(lambda: run_point_to_point(
            params, km, blocks, slots, workdir=tmp, max_in_flight=in_flight,
            on_block=on_block, compare=True))
        wall = time.perf_counter() - t0
    return {"km": km, "block_slots": slots, "wall": wall, "identical": result.identical,
            "blocks": [(t - t0, ell, auth, why) for t, ell, auth, why in done],
            "peak_rss_kib": _peak_rss_kib()}


def _child_sequence(km: float) -> dict[str, Any]:
    """SeQUeNCe 0.8.5's BB84 + Cascade example: one 10,240-bit key over ``km``."""
    from sequence.components.optical_channel import ClassicalChannel, QuantumChannel
    from sequence.kernel.timeline import Timeline
    from sequence.qkd.BB84 import pair_bb84_protocols
    from sequence.qkd.cascade import pair_cascade_protocols
    from sequence.topology.node import QKDNode

    class KeySink:
        def __init__(self) -> None:
            self.keys: list[int] = []

        def pop(self, key: int) -> None:
            self.keys.append(key)

    keylen = 10240
    tl = Timeline(1e18)
    n1, n2 = QKDNode("n1", tl, stack_size=2), QKDNode("n2", tl, stack_size=2)
    pair_bb84_protocols(n1.protocol_stack[0], n2.protocol_stack[0])
    pair_cascade_protocols(n1.protocol_stack[1], n2.protocol_stack[1])
    for a, b in ((n1, n2), (n2, n1)):
        cc = ClassicalChannel(f"cc_{a.name}", tl, distance=km * 1e3)
        cc.set_ends(a, b.name)
        qc = QuantumChannel(f"qc_{a.name}", tl, attenuation=0.0002, distance=km * 1e3,
                            polarization_fidelity=0.97)
        qc.set_ends(a, b.name)
    sinks = KeySink(), KeySink()
    n1.protocol_stack[1].upper_protocols.append(sinks[0])
    n2.protocol_stack[1].upper_protocols.append(sinks[1])
    tl.init()
    n1.protocol_stack[1].push(keylen, 1)
    t0 = time.perf_counter()
    tl.run()
    wall = time.perf_counter() - t0
    bits = keylen * len(sinks[0].keys)
    same = sinks[0].keys == sinks[1].keys
    from importlib.metadata import version
    return {"km": km, "bits": bits, "wall": wall, "identical": same,
            "version": version("sequence")}


def _run_child(*args: str, timeout: float) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"child {args} failed: {proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# -- link run -------------------------------------------------------------------------

def measure_linkrun(km: float, blocks: int, in_flight: int) -> dict[str, Any]:
    res = _run_child("linkrun", str(km), str(blocks), str(in_flight), timeout=1800)
    stored = [b for b in res["blocks"] if b[3] is None]
    ell = sum(b[1] for b in res["blocks"])
    auth = sum(b[2] for b in res["blocks"])
    res.update(stored=len(stored), ell=ell, auth=auth, gross=ell / res["wall"],
               net=max(0, ell - auth) / res["wall"])
    # Steady rate: key of the blocks finished after the first stored one, over the
    # time from that first completion to the last.
    if len(stored) >= 2:
        t_first = stored[0][0]
        later = [b for b in res["blocks"] if b[0] > t_first]
        span = res["blocks"][-1][0] - t_first
        res["steady_net"] = sum(b[1] - b[2] for b in later) / span if span > 0 else 0.0
    else:
        res["steady_net"] = res["net"]
    return res


def measure_sequence(km: float, mode: str) -> dict[str, Any]:
    available = _sequence_available()
    if mode == "recorded" or (mode == "auto" and not available):
        why = "recorded figure (REFERENCES.md)" if available else \
            "recorded figure (REFERENCES.md): sequence not importable here"
        return {"km": km, "rate": RECORDED_SEQUENCE[km], "source": why}
    res = _run_child("sequence", str(km), timeout=3600)
    res.update(rate=res["bits"] / res["wall"],
               source=f"measured now (SeQUeNCe {res.get('version', '?')})")
    return res


def _sequence_available() -> bool:
    probe = subprocess.run([sys.executable, "-c", "import sequence.qkd.cascade"],
                           capture_output=True)
    return probe.returncode == 0


# -- daemons --------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_network(folder: Path, n_spokes: int, km: float, block_slots: int,
                   extra_link: str = "") -> list[str]:
    """hub.toml, spoke-N.toml and bootstrap secrets for ``n_spokes`` spokes."""
    from qkdnet.link.driver import write_bootstrap_secret

    port = _free_port()
    names = [f"s{i}" for i in range(n_spokes)]
    hub = ['[node]\nname = "hub"\nrole = "hub"\n',
           f'[network]\nlisten_host = "127.0.0.1"\nsideband_port = {port}\n',
           '[keystore]\npath = "hub.keys"\n',
           f'[phy]\npreset = "{PRESET}"\nkm = {km}\n',
           f'[link]\nenabled = true\nblock_slots = {block_slots}\n{extra_link}']
    for name in names:
        seed = secrets.randbits(48)
        write_bootstrap_secret(folder / f"{name}.secret")
        hub.append(f'[spokes.{name}]\nbootstrap_secret = "{name}.secret"\nseed = {seed}\n')
        (folder / f"{name}.toml").write_text(
            f'[node]\nname = "{name}"\nrole = "spoke"\nhub = "hub"\n'
            f'[network]\nhub_host = "127.0.0.1"\nhub_sideband_port = {port}\n'
            f'app_socket = "{name}.sock"\n'
            f'[keystore]\npath = "{name}.keys"\n'
            f'[auth]\nbootstrap_secret = "{name}.secret"\n'
            f'[phy]\npreset = "{PRESET}"\nkm = {km}\nseed = {seed}\n'
            f'[link]\nenabled = true\nblock_slots = {block_slots}\n{extra_link}')
    (folder / "hub.toml").write_text("".join(hub))
    return names


def _read_status(path: Path) -> dict[str, Any]:
    """The status document from a daemon's control socket (as ``hub status --json``)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(path))
        chunks = []
        while data := s.recv(65536):
            chunks.append(data)
    result: dict[str, Any] = json.loads(b"".join(chunks))
    return result


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _descendants(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            kids = Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
        except OSError:
            continue
        for k in kids:
            out.append(int(k))
            out.extend(_descendants(int(k)))
    return out


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def daemon_slots(km: float, how: str) -> int:
    """Block size for the daemons: ``link run``'s ("linkrun", also the daemons' own
    default), 3/4 of the per-block click limit from a probe of the channel ("probe",
    :func:`qkdnet.hub.linkrun.daemon_block_slots`), or a number."""
    from qkdnet.link.cli import default_block_slots
    from qkdnet.phy import presets

    params = presets.get(PRESET)
    if how == "linkrun":
        return int(default_block_slots(params, km))
    if how == "probe":
        try:
            from qkdnet.hub.linkrun import daemon_block_slots
        except ImportError:      # a hub glue without its own sizing uses link run's
            return int(default_block_slots(params, km))
        return int(daemon_block_slots(params, km))
    return int(float(how))


def measure_daemons(n_spokes: int, km: float, seconds: float, *, start_timeout: float = 180,
                    extra_link: str = "", keep: Path | None = None,
                    slots: int | None = None) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="qkdnet-bench-daemons-"))
    slots = slots or daemon_slots(km, "linkrun")
    names = _write_network(folder, n_spokes, km, slots, extra_link)
    logs = {n: open(folder / f"{n}.log", "wb") for n in ["hub", *names]}  # noqa: SIM115
    hub = subprocess.Popen([*QKDNET, "hub", "--config", "hub.toml"], cwd=folder,
                           stdout=logs["hub"], stderr=subprocess.STDOUT)
    spokes: list[subprocess.Popen[bytes]] = []
    ctl = folder / "hub.keys.ctl"
    try:
        deadline = time.monotonic() + 60
        while not ctl.exists():
            if hub.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("hub did not start: "
                                   + (folder / "hub.log").read_text()[-2000:])
            time.sleep(0.05)
        for name in names:
            spokes.append(subprocess.Popen([*QKDNET, "node", "--config", f"{name}.toml"],
                                           cwd=folder, stdout=logs[name],
                                           stderr=subprocess.STDOUT))
        # Wait until every link has stored a block: then all are in steady state.
        deadline = time.monotonic() + start_timeout
        t_launch = time.monotonic()
        while True:
            st = _read_status(ctl)
            links = {n: st["spokes"].get(n, {}).get("link", {}) for n in names}
            if all(lk.get("stored", 0) >= 1 for lk in links.values()):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"not every link stored a block in {start_timeout} s: "
                                   f"{ {n: lk.get('stored', 0) for n, lk in links.items()} }")
            time.sleep(0.1)
        first_block_s = time.monotonic() - t_launch
        pids = {"hub": hub.pid, **{n: p.pid for n, p in zip(names, spokes, strict=True)}}
        cpu0 = {k: _cpu_seconds(p) for k, p in pids.items()}
        workers0 = {w: _cpu_seconds(w) for w in _descendants(hub.pid)}
        t0 = time.monotonic()
        trace: dict[str, list[tuple[float, int, int, int]]] = {n: [] for n in names}
        last: dict[str, tuple[int, int]] = {}
        while True:
            now = time.monotonic()
            st = _read_status(ctl)
            for n in names:
                lk = st["spokes"].get(n, {}).get("link", {})
                cur = (int(lk.get("key_bits", 0)), int(lk.get("auth_bits", 0)))
                if last.get(n) != cur:
                    trace[n].append((now - t0, *cur, int(lk.get("blocks", 0))))
                    last[n] = cur
            if now - t0 >= seconds:
                break
            time.sleep(0.2)
        wall = time.monotonic() - t0
        cpu = {k: _cpu_seconds(p) - cpu0[k] for k, p in pids.items()}
        workers = _descendants(hub.pid)
        cpu["hub workers"] = sum(_cpu_seconds(w) - workers0.get(w, 0.0) for w in workers)
        peak_hub = _peak_rss_kib(hub.pid)
        peak_workers = sum(_peak_rss_kib(w) for w in workers)
        final = _read_status(ctl)
    finally:
        for p in spokes:
            _stop(p)
        _stop(hub)
        for f in logs.values():
            f.close()
        if keep is not None:
            shutil.copytree(folder, keep / f"daemons-{n_spokes}", dirs_exist_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
    per_link = {}
    total_net = 0.0
    for n in names:
        pts = trace[n]
        # pts[0] is the state when the window opened; a link's rate is the net key of
        # the blocks it completed in the window over the time from its first to its
        # last completion there (unbiased for steady block completions).  With fewer
        # than three completions that is too coarse: count over the whole window.
        (_, k_0, a_0, _), (_, k_end, a_end, _) = pts[0], pts[-1]
        in_window = ((k_end - k_0) - (a_end - a_0)) / wall
        total_net += in_window
        changes = pts[1:]
        if len(changes) >= 3:
            (t_a, k_a, a_a, _), (t_b, k_b, a_b, _) = changes[0], changes[-1]
            net = ((k_b - k_a) - (a_b - a_a)) / (t_b - t_a)
        else:
            net = in_window
        lk = final["spokes"].get(n, {}).get("link", {})
        per_link[n] = {"net": net, "net_window_count": in_window,
                       "blocks_in_window": len(changes),
                       "stored": lk.get("stored", 0), "aborted": lk.get("aborted", 0),
                       "abort_reasons": lk.get("abort_reasons", {}),
                       "status_key_rate_bps": lk.get("key_rate_bps")}
    return {"spokes": n_spokes, "km": km, "block_slots": slots, "window_s": wall,
            "first_block_s": first_block_s, "per_link": per_link,
            "total_net": total_net,
            "cpu_s": cpu, "hub_peak_rss_kib": peak_hub,
            "workers_peak_rss_kib": peak_workers, "n_workers": len(workers)}


# -- report ---------------------------------------------------------------------------

def _kbps(v: float) -> str:
    return f"{v / 1e3:9.1f} kbit/s"


def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="longer runs (about 10 minutes)")
    ap.add_argument("--km", default="10,50,100", help="link run distances (km)")
    ap.add_argument("--blocks", type=int, default=None,
                    help="link run blocks per distance (default 4, --full 16)")
    ap.add_argument("--in-flight", type=int, default=2, help="link run pipelining")
    ap.add_argument("--spokes", default="1,2,8", help="daemon spoke counts")
    ap.add_argument("--daemon-in-flight", type=int, default=None, metavar="N",
                    help="[link] in_flight written into the daemons' configs "
                         "(default: the config default)")
    ap.add_argument("--daemon-km", type=float, default=10.0)
    ap.add_argument("--daemon-block-slots", default="linkrun", metavar="linkrun|probe|N",
                    help="daemon block size written into the configs: link run's (the "
                         "daemons' default too), 3/4 of the click limit (probe), or N")
    ap.add_argument("--seconds", type=float, default=None,
                    help="daemon measuring window (default 20 s, --full 60 s)")
    ap.add_argument("--sequence", choices=("auto", "run", "recorded"), default="auto",
                    help="SeQUeNCe baseline: run it if importable (auto), always, or "
                         "use the recorded figures")
    ap.add_argument("--sequence-km", default=None,
                    help="distances to run SeQUeNCe at (default 10; --full: all)")
    ap.add_argument("--skip-linkrun", action="store_true")
    ap.add_argument("--skip-daemons", action="store_true")
    ap.add_argument("--keep", metavar="DIR", default=None,
                    help="copy each daemon run's folder (configs, logs) into DIR")
    ap.add_argument("--json", action="store_true", help="print the raw results as JSON")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        kind, *rest = args.child
        if kind == "linkrun":
            out = _child_linkrun(float(rest[0]), int(rest[1]), int(rest[2]))
        else:
            out = _child_sequence(float(rest[0]))
        print(json.dumps(out))
        return 0

    kms = [float(k) for k in args.km.split(",") if k]
    blocks = args.blocks or (16 if args.full else 4)
    seconds = args.seconds or (60.0 if args.full else 20.0)
    seq_kms = [float(k) for k in (args.sequence_km or (args.km if args.full else "10"))
               .split(",") if k]
    results: dict[str, Any] = {"load_before": os.getloadavg(), "linkrun": {},
                               "sequence": {}, "daemons": {}}
    print(f"qkdnet key rate, {PRESET}; load average {os.getloadavg()[0]:.2f}, "
          f"{os.cpu_count()} cores", flush=True)

    if not args.skip_linkrun:
        print("\n-- link run (both ends in one process) vs SeQUeNCe 0.8.5 BB84 + Cascade",
              flush=True)
        for km in kms:
            lr = measure_linkrun(km, blocks, args.in_flight)
            results["linkrun"][km] = lr
            mode = args.sequence if km in seq_kms else "recorded"
            sq = measure_sequence(km, mode) if km in RECORDED_SEQUENCE else None
            results["sequence"][km] = sq
            target = TARGETS.get(km)
            print(f"{km:5.0f} km: {lr['stored']}/{len(lr['blocks'])} blocks of "
                  f"{lr['block_slots']:.3g} slots in {lr['wall']:.1f} s; gross "
                  f"{_kbps(lr['gross'])}, auth {lr['auth'] / lr['wall']:.0f} bit/s, net "
                  f"{_kbps(lr['net'])} (steady {_kbps(lr['steady_net'])}); "
                  f"peak RSS {lr['peak_rss_kib'] / 1024:.0f} MiB; identical keys: "
                  f"{lr['identical']}", flush=True)
            if sq is not None:
                print(f"          SeQUeNCe {sq['rate']:9.1f} bit/s [{sq['source']}]; "
                      f"ours / SeQUeNCe = {lr['net'] / sq['rate']:,.0f}x", flush=True)
            if target:
                print(f"          target net >= {target / 1e3:g} kbit/s: "
                      f"{_met(lr['net'] >= target)} ({lr['net'] / target:.2f} of target)")
        print("\n-- authentication share of ell")
        for km, lr in results["linkrun"].items():
            share = lr["auth"] / lr["ell"] if lr["ell"] else float("nan")
            print(f"{km:5.0f} km: {lr['auth']} auth bits / {lr['ell']} ell = {share:.3%}")

    if not args.skip_daemons:
        km = args.daemon_km
        print(f"\n-- daemons: hub + N spokes as processes, {km:g} km, "
              f"{seconds:g} s window after every link's first block", flush=True)
        keep = Path(args.keep) if args.keep else None
        if km not in results["linkrun"] and not args.skip_linkrun:
            results["linkrun"][km] = measure_linkrun(km, blocks, args.in_flight)
        slots = daemon_slots(km, args.daemon_block_slots)
        print(f"   {slots:.3g} slots per block ({args.daemon_block_slots})")
        for n in [int(x) for x in args.spokes.split(",") if x]:
            d = measure_daemons(n, km, seconds, keep=keep, slots=slots,
                                extra_link=(f"in_flight = {args.daemon_in_flight}\n"
                                            if args.daemon_in_flight else ""))
            results["daemons"][n] = d
            rates = [v["net"] for v in d["per_link"].values()]
            cpu = ", ".join(f"{k} {v:.1f}" for k, v in d["cpu_s"].items()
                            if k == "hub" or k == "hub workers" or k == "s0")
            print(f"{n} spoke(s): total net {_kbps(d['total_net'])}; per link min "
                  f"{_kbps(min(rates))}, median {_kbps(statistics.median(rates))}; "
                  f"first blocks after {d['first_block_s']:.1f} s; CPU s in window: {cpu}"
                  f"; hub peak RSS {d['hub_peak_rss_kib'] / 1024:.0f} MiB"
                  + (f" + {d['n_workers']} workers {d['workers_peak_rss_kib'] / 1024:.0f} MiB"
                     if d["n_workers"] else ""), flush=True)
            aborted = sum(v["aborted"] for v in d["per_link"].values())
            if aborted:
                print(f"          aborted blocks: {aborted} "
                      f"{[v['abort_reasons'] for v in d['per_link'].values()]}")
            lr = results["linkrun"].get(km)
            if lr is not None:
                ratio = statistics.median(rates) / lr["steady_net"]
                print(f"          daemon link / link run (steady) = {ratio:.2f} "
                      f"(target >= {DAEMON_LINK_TARGET}: {_met(ratio >= DAEMON_LINK_TARGET)})")
        d1 = results["daemons"].get(1)
        for n, d in results["daemons"].items():
            if d1 is not None and n > 1:
                ratio = d["total_net"] / d1["total_net"]
                tgt = f" (target >= {SCALING_TARGET}: {_met(ratio >= SCALING_TARGET)})" \
                    if n == 8 else ""
                print(f"total({n}) / total(1) = {ratio:.2f}{tgt}")
    results["load_after"] = os.getloadavg()
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        print(json.dumps(results, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
