"""Benchmark of the emulated PHY: fast model against the per-pulse reference model.

Measures, in one run on one core (numpy is single-threaded here):

* pulse slots per second and detection events per second of
  :class:`qkdnet.phy.QuantumChannel` on ``snspd-metro`` at 100 km (targets:
  2.5e9 slots/s — real time for a 2.5 GHz source — and 1e7 events/s), streamed
  in chunks so memory stays bounded;
* detection events per second at a short distance (10 km), where the detectors are
  saturated by their (common) dead time and detections dominate;
* the same figures for :class:`qkdnet.phy.reference.ReferenceChannel` (a Python
  loop over every slot) on a short run, and the ratio;
* peak resident memory after a short and after a 4x longer fast run (it must not
  grow with run length).

Usage: ``.venv/bin/python bench/phy/bench_phy.py [--quick] [--json]``.
Numbers are printed as measured, whether or not the targets are met, with the load
average (the machine is shared) and CPU seconds next to wall seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

from qkdnet.phy import AliceSource, QuantumChannel, presets
from qkdnet.phy.reference import ReferenceChannel


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def bench_fast(preset: str, km: float, n_slots: int, repeat: int = 3) -> dict[str, float]:
    """Best of ``repeat`` streamed runs of ``n_slots`` slots."""
    p = presets.get(preset)
    src = AliceSource(p, 1)
    ch = QuantumChannel(p, km, seed=2)
    best, best_cpu, events, start = float("inf"), float("inf"), 0, 0
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        events = 0
        for det in ch.stream(src, start, n_slots):
            events += len(det)
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
        start += n_slots
    return {"slots": n_slots, "events": events, "seconds": best, "cpu_seconds": best_cpu,
            "slots_per_s": n_slots / best, "events_per_s": events / best}


def bench_reference(preset: str, km: float, n_slots: int) -> dict[str, float]:
    p = presets.get(preset)
    src = AliceSource(p, 1)
    ch = ReferenceChannel(p, km, seed=2)
    t0, c0 = time.perf_counter(), time.process_time()
    det = ch.run(src, 0, n_slots)
    dt = time.perf_counter() - t0
    return {"slots": n_slots, "events": len(det), "seconds": dt,
            "cpu_seconds": time.process_time() - c0,
            "slots_per_s": n_slots / dt, "events_per_s": len(det) / max(dt, 1e-12)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller runs (smoke test)")
    ap.add_argument("--json", action="store_true", help="print results as JSON")
    args = ap.parse_args()
    scale = 0.1 if args.quick else 1.0

    results: dict[str, dict[str, float]] = {}
    # 1. Real-time check: snspd-metro at 100 km.
    results["fast_metro_100km"] = bench_fast("snspd-metro", 100.0, int(2.5e9 * scale))
    results["reference_metro_100km"] = bench_reference("snspd-metro", 100.0,
                                                        int(2e5 * scale) or 1000)
    # 2. Detection-dominated: snspd-metro at 10 km (about 3 % of slots click; the common
    # dead time keeps the detectors dead ~75 % of the time).
    results["fast_metro_10km"] = bench_fast("snspd-metro", 10.0, int(2e8 * scale))
    results["reference_metro_10km"] = bench_reference("snspd-metro", 10.0,
                                                       int(2e5 * scale) or 1000)
    # 3. Bounded memory: peak RSS after a 4x longer streamed run.
    rss_before = peak_rss_mb()
    bench_fast("snspd-metro", 100.0, int(1e10 * scale), repeat=1)
    rss_after = peak_rss_mb()
    results["memory"] = {"peak_rss_mb_before": rss_before, "peak_rss_mb_after_4x": rss_after}

    f100, r100 = results["fast_metro_100km"], results["reference_metro_100km"]
    f10, r10 = results["fast_metro_10km"], results["reference_metro_10km"]
    summary = {
        "slots_per_s_100km": f100["slots_per_s"],
        "slots_target": 2.5e9,
        "events_per_s_100km": f100["events_per_s"],
        "events_per_s_10km": f10["events_per_s"],
        "events_target": 1e7,
        "ratio_slots_vs_reference_100km": f100["slots_per_s"] / r100["slots_per_s"],
        "ratio_events_vs_reference_10km": f10["events_per_s"] / max(r10["events_per_s"], 1e-9),
    }
    summary["load_average"] = list(os.getloadavg())
    results["summary"] = summary
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        print()
        return 0
    print(f"qkdnet PHY benchmark (one core); load average "
          f"{' / '.join(f'{x:.2f}' for x in summary['load_average'])}")
    for name, r in results.items():
        if name in ("summary", "memory"):
            continue
        print(f"  {name:24s} {r['slots']:>14.3g} slots {r['events']:>10.0f} events "
              f"{r['seconds']:8.3f} s ({r['cpu_seconds']:.3f} CPU) "
              f"{r['slots_per_s']:10.3g} slots/s "
              f"{r['events_per_s']:10.3g} events/s")
    m = results["memory"]
    print(f"  peak RSS {m['peak_rss_mb_before']:.0f} MB, after a 4x longer run "
          f"{m['peak_rss_mb_after_4x']:.0f} MB")
    s = summary
    ok = "met" if s["slots_per_s_100km"] >= s["slots_target"] else "MISSED"
    print(f"  slots/s at 100 km: {s['slots_per_s_100km']:.3g} (target 2.5e9: {ok}); "
          f"{s['ratio_slots_vs_reference_100km']:.3g}x the reference")
    best = max(s["events_per_s_100km"], s["events_per_s_10km"])
    ok = "met" if best >= s["events_target"] else "MISSED"
    print(f"  events/s: {s['events_per_s_100km']:.3g} at 100 km, "
          f"{s['events_per_s_10km']:.3g} at 10 km (target 1e7: {ok}); "
          f"{s['ratio_events_vs_reference_10km']:.3g}x the reference at 10 km")
    return 0


if __name__ == "__main__":
    sys.exit(main())
