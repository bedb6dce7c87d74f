"""Eavesdropping against the whole link over loopback: the bounds hold, or the block aborts.

Ground truth comes from the emulated PHY: the attack record says which of Bob's
clicks Eve holds the bit of, and Alice's source says which clicks were sifted into
the key basis, so the tests can compare what the link stored with what Eve knows.
"""

from __future__ import annotations

import numpy as np
import pytest

from qkdnet.link.driver import run_point_to_point
from qkdnet.phy import presets
from qkdnet.tracing import MemoryTracer


@pytest.mark.slow
async def test_full_intercept_resend_aborts_every_block_on_qber(tmp_path) -> None:
    tracer = MemoryTracer()
    result = await run_point_to_point(presets.get("snspd-metro"), 10.0, 3, 5_000_000,
                                      workdir=tmp_path, attack="intercept-resend:1.0", seed=3,
                                      tracer=tracer)
    assert result.alice.stored == result.bob.stored == 0
    assert result.alice.abort_reasons == {"qber_too_high": 3}
    assert result.bob.abort_reasons == {"qber_too_high": 3}
    for st in result.alice.blocks:
        assert st.qber_est is not None and st.qber_est > 0.15   # ~25 % expected
        assert st.ell == 0 and st.leak_ec_bits == 0             # aborted before Cascade
    assert result.comparison["bits_compared"] == 0
    # the reason reaches the trace, at both ends
    traced = tracer.named("block_aborted")
    assert len(traced) == 6 and {e["data"]["abort_reason"] for e in traced} == {"qber_too_high"}
    assert {e["data"]["role"] for e in traced} == {"transmitter", "receiver"}


def _eve_known_key_bits(result, block_slots: int, index: int) -> tuple[int, int]:
    """(sifted key-basis clicks, of which Eve holds Alice's bit) for one block."""
    det = result.detections[index * block_slots]
    alice = result.phy.source.lookup(det.slots)
    key = (np.asarray(alice.basis) == 0) & (np.asarray(det.basis) == 0)
    eve = det.eve
    known = np.asarray(eve.slots)[np.asarray(eve.known, dtype=bool)]
    return int(key.sum()), int(np.isin(det.slots[key], known).sum())


@pytest.mark.slow
async def test_pns_against_decoys_gives_no_key_beyond_the_bounds(tmp_path) -> None:
    """PNS (Eve keeps a photon of every multi-photon pulse, blocks singles to hide it).

    With decoys the single-photon bound s1 only counts events Eve cannot hold, so
    every stored block must satisfy s1_lower <= (key clicks Eve does not know) and
    ell <= key clicks - Eve-known clicks; and Eve's share must be real (the attack ran).
    """
    slots = 20_000_000
    result = await run_point_to_point(presets.get("snspd-metro"), 10.0, 2, slots,
                                      workdir=tmp_path, attack="pns", seed=9, keep_eve=True)
    assert result.identical
    for st in result.alice.blocks:
        n_key, eve_known = _eve_known_key_bits(result, slots, st.block)
        assert eve_known > 0.05 * n_key          # the attack really split pulses
        if st.abort_reason is None:
            assert st.n_key == n_key
            assert st.s1_lower <= n_key - eve_known
            assert st.ell <= n_key - eve_known - st.leak_ec_bits
        else:
            # ec_failed: LDPC did not converge within its blind rounds (it happens near
            # the code's threshold); the block is dropped whole, nothing is stored.
            assert st.abort_reason in ("no_key", "qber_too_high", "ec_failed")


@pytest.mark.slow
async def test_pns_without_decoy_margin_leaves_no_key_at_long_distance(tmp_path) -> None:
    """Far out, PNS can hide all singles; the decoy bound then leaves nothing to store."""
    slots = 20_000_000
    result = await run_point_to_point(presets.get("snspd-metro"), 120.0, 2, slots,
                                      workdir=tmp_path, attack="pns", seed=4, keep_eve=True)
    assert result.alice.stored == result.bob.stored == 0
    assert set(result.alice.abort_reasons) <= {"no_key", "qber_too_high"}
