"""Whole link over real loopback sockets: both ends store identical keys, block after block.

Each test runs a transmitter and a receiver in this process, talking through the
authenticated sideband on 127.0.0.1 (real TCP, key-store-backed Wegman–Carter tags),
with the emulated PHY, and compares the data pools of both stores bit for bit.

Block sizes: finite-key security needs large blocks.  At 10 km the three SNSPD presets
give key with 2–3e7 slots per block (about 1e6 key-basis bits), the two APD presets,
whose decoy settings are finite-key optima for such blocks, with 6e7 (lim2014-apd) and
2e8 (gys2004, a 2 MHz source) slots.  A block too small for the bound is abandoned by
both ends with ``no_key`` and nothing stored.
"""

from __future__ import annotations

import math

import pytest

from qkdnet.link.driver import run_point_to_point
from qkdnet.link.session import LDPC_COST_RATIO, block_id
from qkdnet.phy import presets

KM = 10.0

KEYED = {"snspd-metro": 20_000_000, "rusca2018-snspd": 30_000_000,
         "ull-longhaul": 20_000_000, "lim2014-apd": 60_000_000, "gys2004": 200_000_000}


def test_every_preset_is_covered() -> None:
    assert set(KEYED) == set(presets.names())


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(KEYED))
async def test_identical_keys_block_after_block(preset: str, tmp_path) -> None:
    params = presets.get(preset)

    def inspect(store_a, store_b):
        # Every stored part carries the block's metadata at both ends, identically.
        metas = []
        for st in result_blocks:
            for part, (pa, pb) in enumerate([("auth-tx", "auth-rx"), ("auth-rx", "auth-tx"),
                                             ("data-tx", "data-rx"), ("data-rx", "data-tx")]):
                bid = block_id(sid_box[0], st.block, part)
                try:
                    ma = store_a.block_meta("bob", pa, bid)
                except Exception:
                    continue
                mb = store_b.block_meta("alice", pb, bid)
                metas.append((ma, mb))
        return metas

    result_blocks: list = []
    sid_box = [0x5EED0001]
    result = await run_point_to_point(params, KM, 2, KEYED[preset], workdir=tmp_path,
                                      seed=11, on_block=result_blocks.append, inspect=inspect,
                                      session_id=sid_box[0])

    assert result.alice.stored == 2 and result.bob.stored == 2, result.alice.abort_reasons
    assert result.identical, result.comparison
    assert result.comparison["bits_compared"] > 0
    # blocks are pipelined: they may finish out of order
    methods: set[str] = set()
    for a, b in zip(sorted(result.alice.blocks, key=lambda s: s.block),
                    sorted(result.bob.blocks, key=lambda s: s.block), strict=True):
        assert a.block == b.block
        assert a.ell == b.ell > 0
        assert a.auth_bits == b.auth_bits > 0
        assert a.leak_ec_bits == b.leak_ec_bits > 0
        # Every disclosed parity counts: leakage at least Shannon's n h(QBER).
        h = -a.qber_key * math.log2(a.qber_key) - (1 - a.qber_key) * math.log2(1 - a.qber_key)
        assert a.leak_ec_bits >= a.n_key * h
        assert a.ell < a.n_key - a.leak_ec_bits
        assert a.s1_lower is not None and 0 < a.s1_lower < a.n_key
        assert 0 < a.phi_upper < 0.5
        # auto reconciliation: LDPC only where its expected key beats Cascade's by
        # more than its cost in wall time; the method both ends used is the one chosen.
        expected = a.ell_inputs["expected_ell"]
        want = "ldpc" if (expected["ldpc"] or 0) > LDPC_COST_RATIO * expected["cascade"] \
            else "cascade"
        assert a.reconciliation == b.reconciliation == want, expected
        methods.add(a.reconciliation)
    # Clean links keep Cascade's speed; gys2004's 3-4 % QBER leaves Cascade no key.
    assert methods == ({"ldpc"} if preset == "gys2004" else
                       {"cascade"} if preset == "snspd-metro" else methods)
    metas = result.inspected
    assert len(metas) >= 4, "block metadata missing"
    for ma, mb in metas:
        assert (ma.link_session, ma.leaked_ec_bits, ma.auth_bits_spent, ma.qber) == \
            (mb.link_session, mb.leaked_ec_bits, mb.auth_bits_spent, mb.qber)
        assert ma.link_session == "5eed0001"
        assert ma.auth_bits_spent > 0 and ma.eps_sec == 1e-10 and ma.eps_cor == 1e-15


@pytest.mark.slow
async def test_blocks_too_small_for_the_bound_are_abandoned_consistently(tmp_path) -> None:
    result = await run_point_to_point(presets.get("lim2014-apd"), KM, 2, 10_000_000,
                                      workdir=tmp_path, seed=5)
    assert result.alice.stored == result.bob.stored == 0
    assert result.alice.abort_reasons == {"no_key": 2}
    assert result.bob.aborted == 2
    assert all(b.aborted_by_peer for b in result.bob.blocks)
    assert result.identical and result.comparison["bits_compared"] == 0


@pytest.mark.slow
async def test_identical_keys_with_pulses_over_the_quantum_port(tmp_path) -> None:
    """Pulses over TCP too: Alice's quantum port → fibre element → Bob's quantum port."""
    result = await run_point_to_point(presets.get("snspd-metro"), 25.0, 2, 10_000_000,
                                      workdir=tmp_path, seed=12, quantum_port=True)
    assert result.alice.stored == result.bob.stored == 2, result.alice.abort_reasons
    assert result.identical and result.comparison["bits_compared"] > 0


@pytest.mark.slow
async def test_intercept_resend_on_the_quantum_port_is_caught(tmp_path) -> None:
    result = await run_point_to_point(presets.get("snspd-metro"), KM, 1, 3_000_000,
                                      workdir=tmp_path, seed=13, quantum_port=True,
                                      attack="intercept-resend")
    assert result.alice.abort_reasons == {"qber_too_high": 1}
    assert result.bob.stored == 0
