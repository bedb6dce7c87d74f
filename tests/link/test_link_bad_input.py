"""Sideband messages that contradict the protocol abort the block, and the link goes on.

One end of a real loopback link rewrites one of its own (authenticated) messages
before sending it — lists of the wrong length, indices out of range, parity replies
of the wrong size, a key length above the bound, a message in the wrong state.  The
other end must abandon that block with ABORT(PROTOCOL) as a RemoteProtocolError,
store nothing of it, and the next block must succeed with identical keys.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from qkdnet.keystore import KeyStore
from qkdnet.link import wire as w
from qkdnet.link.driver import run_point_to_point
from qkdnet.phy import presets

PRESET = "snspd-metro"   # one decoy; 25 km: key in 1e7-slot blocks
KM = 25.0
SLOTS = 10_000_000


def once(msg: type, change: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A tamper hook that rewrites the first ``msg`` of block 0 with ``change``."""
    done = [False]

    def tamper(body: Any) -> Any:
        if not done[0] and isinstance(body, msg) and body.block == 0:
            done[0] = True
            return change(body)
        return body
    return tamper


def _bases_too_short(b: Any) -> Any:
    b.bases, b.bases_len = b.bases[:-1], None
    return b


def _slot_out_of_range(b: Any) -> Any:
    b.first_offset = SLOTS + 7
    return b


def _keep_mask_wrong_length(b: Any) -> Any:
    b.keep, b.keep_len = b.keep + b"\x00", None
    return b


def _intensity_out_of_range(b: Any) -> Any:
    # snspd-metro uses two intensities: index 3 does not exist.
    b.intensities, b.intens_len = b"\xff" + b.intensities[1:], None
    return b


def _range_outside_key(b: Any) -> Any:
    ends = np.frombuffer(b.ends, dtype=">u4").copy()
    ends[0] = 1 << 31
    b.ends, b.ends_len = ends.astype(">u4").tobytes(), None
    return b


def _parity_reply_short(b: Any) -> Any:
    bits = np.unpackbits(np.frombuffer(b.parities, dtype=np.uint8), count=b.leaked_bits)
    return w.encode_parity_reply(b.block, b.step, bits[:-1])


def _ell_above_bound(b: Any) -> Any:
    n = b.n_in
    return w.encode_pa(b.block, n, n, 0, 0, np.ones(2 * n - 1, dtype=np.uint8))


def _wrong_state(b: Any) -> Any:
    return w.ConfirmMsg(block=b.block)


def _syndromes_short(b: Any) -> Any:
    return w.encode_ldpc(w.LinkMsg.LDPC_SYNDROME, b.block, bytes(b.data)[:-1])


def _method_unknown(b: Any) -> Any:
    b.method = 7
    return b


CASES = {
    # Bob -> Alice
    "detections-bases-length": ("bob", w.DetectionsMsg, _bases_too_short),
    "detections-slot-range": ("bob", w.DetectionsMsg, _slot_out_of_range),
    "parity-request-range": ("bob", w.ParityRequestMsg, _range_outside_key),
    # Alice -> Bob
    "sift-mask-length": ("alice", w.SiftMsg, _keep_mask_wrong_length),
    "sift-intensity": ("alice", w.SiftMsg, _intensity_out_of_range),
    "parity-reply-size": ("alice", w.ParityReplyMsg, _parity_reply_short),
    "pa-ell-above-bound": ("alice", w.PaMsg, _ell_above_bound),
    "message-in-wrong-state": ("alice", w.SiftMsg, _wrong_state),
    "ldpc-syndrome-length": ("alice", w.LdpcSyndromeMsg, _syndromes_short),
    "estimate-result-method": ("alice", w.EstimateResultMsg, _method_unknown),
}
#: Cases about Cascade's messages run with Cascade (LDPC is the default).
CASCADE_CASES = {"parity-request-range", "parity-reply-size"}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
async def test_contradiction_aborts_block_with_protocol_error(case: str, tmp_path) -> None:
    liar, msg, change = CASES[case]
    hook = once(msg, change)
    result = await run_point_to_point(
        presets.get(PRESET), KM, 2, SLOTS, workdir=tmp_path, seed=21, max_in_flight=1,
        config_overrides={"reconciliation": "cascade" if case in CASCADE_CASES else "ldpc"},
        tamper_alice=hook if liar == "alice" else None,
        tamper_bob=hook if liar == "bob" else None)
    checker = result.bob if liar == "alice" else result.alice
    other = result.alice if liar == "alice" else result.bob
    first = {st.block: st for st in checker.blocks}[0]
    assert first.abort_reason == "protocol", (case, first.abort_reason, first.abort_detail)
    assert not first.aborted_by_peer
    peer_view = {st.block: st for st in other.blocks}[0]
    assert peer_view.abort_reason == "protocol" and peer_view.aborted_by_peer
    # The link survives: the next block is stored at both ends, keys identical.
    assert {st.block for st in checker.blocks if st.abort_reason is None} == {1}
    assert result.alice.stored == result.bob.stored == 1
    assert result.identical and result.comparison["bits_compared"] > 0


@pytest.mark.slow
async def test_running_out_of_auth_key_stops_the_link_without_partial_key(tmp_path) -> None:
    """The transmitter's auth-tx pool holds two tags: HELLO and BLOCK_START pass, PA
    cannot be signed. The link stops at once and neither end stores anything."""
    secret = secrets.token_bytes(4096)
    store_a, store_b = KeyStore(tmp_path / "alice.db"), KeyStore(tmp_path / "bob.db")
    try:
        store_a.import_bootstrap("bob", secret, initiator=True)
        store_b.import_bootstrap("alice", secret, initiator=False)
        store_a.reserve("bob", "auth-tx", store_a.available("bob", "auth-tx") - 2 * 128)
        result = await run_point_to_point(presets.get(PRESET), KM, 2, SLOTS, workdir=tmp_path,
                                          seed=21, stores=(store_a, store_b),
                                          config_overrides={"auth_reserve_bits": 0})
    finally:
        store_a.close()
        store_b.close()
    assert result.alice.stored == result.bob.stored == 0
    assert result.alice.aborted >= 1 and result.bob.aborted >= 1
    blocks = result.alice.blocks + result.bob.blocks
    assert all(st.abort_reason == "local" and "link down" in st.abort_detail for st in blocks)
    assert any("KeyExhausted" in st.abort_detail for st in blocks)
    assert result.comparison["bits_compared"] == 0
