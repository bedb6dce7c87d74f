"""Bob's detector internals: the vectorised dead-time filter against plain loops."""

from __future__ import annotations

import numpy as np
import pytest

from qkdnet.phy import presets
from qkdnet.phy.channel import BobDetector, dead_time_afterpulse, dead_time_filter
from qkdnet.phy.source import AliceSource, PulseBatch, derive_key


def loop_filter(t: np.ndarray, d: int, last: int) -> np.ndarray:
    kept = np.zeros(t.size, dtype=bool)
    for i, g in enumerate(t.tolist()):
        if g > last + d:
            kept[i] = True
            last = g
    return kept


@pytest.mark.parametrize(("density", "d"), [(0.01, 3), (0.2, 5), (0.9, 25), (0.05, 0)])
def test_dead_time_filter_matches_a_loop(density: float, d: int) -> None:
    rng = np.random.default_rng(int(density * 100) + d)
    t = np.flatnonzero(rng.random(50_000) < density).astype(np.int64) + 1000
    for last in (-(2**62), 995, 1000 - d):
        assert np.array_equal(dead_time_filter(t, d, last), loop_filter(t, d, last))


def test_afterpulse_chain_matches_a_loop() -> None:
    rng = np.random.default_rng(3)
    d, p_ap, key = 4, 0.3, derive_key(1, 7)
    raw = np.flatnonzero(rng.random(20_000) < 0.05).astype(np.int64)
    kept, last, pending = dead_time_afterpulse(raw, d, p_ap, -(2**62), np.empty(0, np.int64),
                                               20_000, key, 2)
    # Sequential reference with the same afterpulse coins.
    from qkdnet.phy.source import hash_uniform
    events, out, lastk = set(raw.tolist()), [], -(2**62)
    for g in range(20_000):
        if g in events and g > lastk + d:
            out.append(g)
            lastk = g
            coin = hash_uniform(key, np.array([g * 4 + 2], dtype=np.uint64))[0]
            if coin < p_ap:
                events.add(g + d + 1)
    assert kept.tolist() == out
    assert last == out[-1]
    assert all(x >= 20_000 for x in pending.tolist())


def test_fast_dead_time_path_equals_general_path_across_chunks() -> None:
    """Without afterpulses the detector takes a cluster-only shortcut; it must agree
    with the general per-detector path, chunk after chunk."""
    p = presets.get("snspd-metro").with_overrides(dead_time_s=4e-9,     # 10 gates
                                                  dead_time_mode="per-detector")
    src = AliceSource(p, 1)
    fast = BobDetector(p, 1.0, seed=2)
    general = BobDetector(p, 1.0, seed=2)
    start = 0
    for _ in range(5):
        batch: PulseBatch = src.emit(start, 50_000, transmittance=0.3,
                                     rng=np.random.default_rng(start))
        rng = np.random.default_rng(9)
        keys = (batch.slots.astype(np.int64) * 4
                + rng.integers(0, 4, size=len(batch)).astype(np.int64))
        keys = np.unique(keys)
        a = fast._dead_time(keys, start + 50_000)
        kept = []
        for k in range(4):
            g, general._last[k], general._pending[k] = dead_time_afterpulse(
                keys[keys % 4 == k] // 4, p.dead_gates, 0.0, general._last[k],
                general._pending[k], start + 50_000, derive_key(2, 7), k)
            kept.append(g * 4 + k)
        b = np.sort(np.concatenate(kept))
        assert np.array_equal(a, b)
        assert 0 < a.size < keys.size
        start += 50_000


def test_slots_cannot_be_replayed() -> None:
    from qkdnet.errors import LocalProtocolError
    from qkdnet.phy import QuantumChannel
    p = presets.get("gys2004")
    ch = QuantumChannel(p, 10.0, seed=1)
    src = AliceSource(p, 1)
    ch.run(src, 0, 1000)
    with pytest.raises(LocalProtocolError, match="replayed"):
        ch.run(src, 500, 1000)


def test_reprs_hide_bits() -> None:
    p = presets.get("gys2004")
    src = AliceSource(p, 1)
    batch = src.emit(0, 10_000)
    for obj in (batch, src.lookup(batch.slots)):
        text = repr(obj)
        assert "array" not in text and "[" not in text


# --- common dead time: exact against a sequential loop --------------------------------

def sequential_common(keys: list[int], d: int, p_ap: float, key: np.uint64, ends: list[int]
                      ) -> list[int]:
    """Gate by gate, as hardware would: candidates (photon/dark keys and afterpulses) of
    a gate register, all of them, if the gate is more than d after the last registered
    gate; each registered click afterpulses (hash coin of its key) d + 1 gates later."""
    from qkdnet.phy.source import hash_uniform
    by_gate: dict[int, set[int]] = {}
    for kk in keys:
        by_gate.setdefault(kk >> 2, set()).add(kk & 3)
    out: list[int] = []
    last = -(2**62)
    for g in range(ends[-1]):
        dets = by_gate.get(g)
        if not dets or g <= last + d:
            continue
        last = g
        for det in sorted(dets):
            kk = g * 4 + det
            out.append(kk)
            coin = hash_uniform(key, np.array([kk], dtype=np.uint64))[0]
            if coin < p_ap:
                by_gate.setdefault(g + d + 1, set()).add(det)
    return out


@pytest.mark.parametrize("case", range(40))
def test_common_dead_time_equals_a_sequential_loop(case: int) -> None:
    """Random candidates, dead times, afterpulse probabilities and chunk boundaries: the
    vectorised common dead time gives exactly the sequential answer, chunk by chunk."""
    from qkdnet.phy.channel import common_dead_time
    rng = np.random.default_rng(100 + case)
    n = int(rng.integers(200, 3000))
    d = int(rng.integers(0, 30))
    p_ap = float(rng.choice([0.0, 0.05, 0.3, 0.7]))
    density = float(rng.choice([0.01, 0.1, 0.5, 0.9]))
    gates = np.flatnonzero(rng.random(n) < density)
    dets = rng.integers(0, 4, size=gates.size)
    keys = np.unique(gates * 4 + dets)
    # a few multi-detector gates
    extra = rng.choice(gates, size=min(5, gates.size), replace=False) * 4 + 3
    keys = np.unique(np.concatenate([keys, extra])).astype(np.int64)
    cuts = sorted({int(x) for x in rng.integers(1, n, size=int(rng.integers(0, 6)))} | {n})
    key = derive_key(case, 7)
    got: list[int] = []
    last, pending, lo = -(2**62), np.empty(0, np.int64), 0
    for hi in cuts:
        part = keys[(keys >> 2 >= lo) & (keys >> 2 < hi)]
        kept, last, pending = common_dead_time(part, d, p_ap, last, pending, hi, key)
        assert np.all((kept >> 2 >= lo) & (kept >> 2 < hi))
        got.extend(kept.tolist())
        lo = hi
    assert got == sequential_common(keys.tolist(), d, p_ap, key, cuts)


def test_renewal_sampler_is_used_where_detectors_saturate() -> None:
    from qkdnet.phy import QuantumChannel
    p = presets.get("snspd-metro")
    assert QuantumChannel(p, 10.0, seed=1)._renewal is not None
    assert QuantumChannel(p, 100.0, seed=1)._renewal is None          # far from saturation
    assert QuantumChannel(p, 10.0, attack="intercept-resend:1", seed=1)._renewal is None
    assert QuantumChannel(p.with_overrides(dead_time_mode="per-detector"), 10.0,
                          seed=1)._renewal is None
    assert QuantumChannel(p.with_overrides(p_afterpulse=0.01), 10.0, seed=1)._renewal is None
