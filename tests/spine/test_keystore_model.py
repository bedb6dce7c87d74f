"""Property test: random add/reserve/take/reopen sequences against a bit-level model."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from qkdnet.errors import KeyExhausted, KeyReuseError
from qkdnet.keystore import BlockMeta, KeyGrant, KeyStore

META = BlockMeta("model", 0.0, 1e-10, 1e-15, 0, 0)

ops = st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(1, 3000)),
    st.tuples(st.just("reserve"), st.integers(1, 2500), st.booleans()),
    st.tuples(st.just("take"), st.integers(0, 1000)),
    st.tuples(st.just("retake"), st.integers(0, 1000)),
    st.tuples(st.just("reopen"), st.integers(1, 4000)),
), min_size=1, max_size=40)


@settings(max_examples=100, deadline=None)
@given(ops, st.integers(0, 2**32 - 1))
def test_store_matches_model(program: list[tuple], seed: int) -> None:
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        tx_path, rx_path = Path(tmp) / "tx.sqlite", Path(tmp) / "rx.sqlite"
        tx, rx = KeyStore(tx_path, lease_bits=700), KeyStore(rx_path)
        bits: dict[int, np.ndarray] = {}
        granted: dict[int, np.ndarray] = {}   # block -> bits granted by the sender
        grants: list[KeyGrant] = []
        taken: set[int] = set()
        for op in program:
            if op[0] == "add":
                bid, n = len(bits), op[1]
                b = rng.integers(0, 2, n, dtype=np.uint8)
                bits[bid], granted[bid] = b, np.zeros(n, dtype=bool)
                key = np.packbits(b).tobytes()
                tx.add_block("B", "data-tx", bid, key, n, META)
                rx.add_block("A", "data-rx", bid, key, n, META)
            elif op[0] == "reserve":
                n, contiguous = op[1], op[2]
                free = sum(int((~g).sum()) for g in granted.values())
                before = tx.available("B", "data-tx")
                assert before <= free  # leases burned by reopen only ever shrink it
                try:
                    g = tx.reserve("B", "data-tx", n, contiguous=contiguous)
                except KeyExhausted as err:
                    assert err.requested_bits == n
                    if not contiguous:
                        assert before < n and err.available_bits == before
                    assert tx.available("B", "data-tx") == before
                    continue
                assert g.n_bits == n
                if contiguous:
                    assert len(g.segments) == 1
                expect = []
                for s in g.segments:
                    assert not granted[s.block_id][s.offset:s.stop].any(), "bit granted twice"
                    granted[s.block_id][s.offset:s.stop] = True
                    expect.append(bits[s.block_id][s.offset:s.stop])
                assert g.data == np.packbits(np.concatenate(expect)).tobytes()
                grants.append(g)
            elif op[0] in ("take", "retake") and grants:
                i = op[1] % len(grants)
                g = grants[i]
                if i in taken:
                    try:
                        rx.take("A", "data-rx", g.segments)
                    except KeyReuseError:
                        pass
                    else:
                        raise AssertionError("a taken grant was taken again")
                else:
                    assert rx.take("A", "data-rx", g.segments) == g.data
                    taken.add(i)
            elif op[0] == "reopen":
                tx.close()
                tx = KeyStore(tx_path, lease_bits=op[1])
        # Whatever is left can be drained, and never overlaps what was granted.
        left = tx.available("B", "data-tx")
        if left:
            g = tx.reserve("B", "data-tx", left)
            for s in g.segments:
                assert not granted[s.block_id][s.offset:s.stop].any()
        tx.close()
        rx.close()
