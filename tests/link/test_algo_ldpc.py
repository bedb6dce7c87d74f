"""LDPC syndrome reconciliation: codes, decoder, blind protocol and its leak accounting.

Small frames keep this file fast; efficiency and frame error rates are measured by
bench/link/bench_ldpc.py (docs/ldpc.md).
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

from qkdnet.errors import LocalProtocolError, RemoteProtocolError
from qkdnet.link.ldpc import LdpcDecoder, LdpcEncoder, LdpcPlan, Schedule, binary_entropy
from qkdnet.link.ldpc_codes import PROFILES, QCCode, get_code
from qkdnet.link.ldpc_decode import _PSI_SHIFT, PHI_TABLE, PSI_TABLE, SCALE, _phi


def _keys(n: int, errors: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    alice = rng.integers(0, 2, n, dtype=np.uint8)
    bob = alice.copy()
    bob[rng.choice(n, errors, replace=False)] ^= 1
    return alice, bob


class Transcript:
    """Runs the exchange and records every message, to count the disclosed bits."""

    def __init__(self, alice: np.ndarray, bob: np.ndarray, plan: LdpcPlan, seed: int = 0
                 ) -> None:
        rng = np.random.default_rng(seed)
        n = alice.shape[0]
        self.enc = LdpcEncoder(np.packbits(alice), n, plan,
                               lambda k: rng.integers(0, 256, k, dtype=np.uint8).tobytes())
        self.dec = LdpcDecoder(np.packbits(bob), n, plan)
        self.syndromes = self.enc.syndromes()
        self.requests: list[bytes] = []
        self.answers: list[bytes] = []
        self.dec.receive_syndromes(self.syndromes)
        while True:
            self.dec.decode()
            req = self.dec.next_request()
            if req is None:
                break
            self.requests.append(req)
            ans = self.enc.answer(req)
            self.answers.append(ans)
            self.dec.receive(ans)


def _plan(n: int, q: float, seed: int = 1, **kw: object) -> LdpcPlan:
    return LdpcPlan.for_block(n, q, seed, **kw)


# ------------------------------------------------------------------------------ codes
def test_small_code_is_pinned() -> None:
    code = QCCode(48, 12, 96, PROFILES["elk085"], 2)
    h = hashlib.sha256()
    for a in (code.rows, code.cols, code.shifts):
        h.update(a.astype("<i4").tobytes())
    assert (code.n, code.m, code.n_blocks) == (4608, 1152, 243)
    assert code.code_id == "7dca86e4ab91bed8"
    assert h.hexdigest()[:16] == "bf510a625d47352f"
    x = np.random.default_rng(3).integers(0, 2, (1, code.n), dtype=np.uint8)
    syn = code.syndrome(x)
    assert hashlib.sha256(np.packbits(syn).tobytes()).hexdigest()[:16] == "15ebb9ea008eb7d0"


def test_syndrome_matches_dense_matrix_and_girth_is_six() -> None:
    code = QCCode(48, 12, 96, PROFILES["elk085"], 5)
    H = code.dense().astype(np.int64)
    x = np.random.default_rng(0).integers(0, 2, (3, code.n), dtype=np.uint8)
    assert np.array_equal(code.syndrome(x), (x.astype(np.int64) @ H.T) % 2)
    overlap = H @ H.T
    np.fill_diagonal(overlap, 0)
    assert overlap.max() <= 1                       # no two checks share two variables
    assert np.array_equal(H.sum(axis=0).reshape(code.nb, code.Z)[:, 0], code.col_deg)


def test_code_is_deterministic_and_cached() -> None:
    a = get_code(64, 12, 64, "mm080", 9)
    b = QCCode(64, 12, 64, PROFILES["mm080"], 9)
    assert a is get_code(64, 12, 64, "mm080", 9)
    assert a.code_id == b.code_id
    assert QCCode(64, 12, 64, PROFILES["mm080"], 10).code_id != a.code_id


def test_punctured_columns_have_disjoint_supports() -> None:
    code = QCCode(48, 12, 96, PROFILES["elk085"], 2)
    H = code.dense()
    cols = H[:, code.puncture_candidates(code.max_punctured)]
    assert cols.sum(axis=0).min() >= 1
    assert cols.sum(axis=1).max() <= 1              # no check sees two punctured nodes


def test_psi_table_inverts_phi() -> None:
    x = np.array([1e-7, 1e-4, 0.01, 0.2, 1.0, 3.0], dtype=np.float32)
    idx = x.view(np.int32) >> _PSI_SHIFT
    got = PSI_TABLE[idx] / SCALE
    assert np.allclose(got, _phi(x.astype(np.float64)), atol=0.13)
    assert PSI_TABLE[idx + PSI_TABLE.shape[0] // 2].tolist() == (-PSI_TABLE[idx]).tolist()
    assert PHI_TABLE[np.uint16(8)] == PHI_TABLE[np.uint16(65536 - 8)]


# --------------------------------------------------------------------------- protocol
@pytest.mark.parametrize("q", [0.01, 0.03, 0.07])
def test_decodes_random_errors(q: float) -> None:
    n = 20_000
    alice, bob = _keys(n, round(q * n), seed=int(q * 1000))
    plan = _plan(n, q)
    t = Transcript(alice, bob, plan)
    assert t.dec.failed_frames == []
    assert np.array_equal(np.unpackbits(t.dec.corrected(), count=n), alice)
    assert t.enc.leak_bits == t.dec.leak_bits
    f = t.dec.leak_bits / (n * binary_entropy(q))
    assert 1.0 < f < 1.6


def test_several_frames_and_plan_is_public() -> None:
    n = 40_001
    alice, bob = _keys(n, 800, seed=4)
    plan = _plan(n, 0.02, frame_bits=16_384)
    assert plan.frames == 2 and plan.key_bits.sum() == n
    d = plan.describe()
    json.dumps(d)
    assert d["code_id"] == plan.code.code_id == _plan(n, 0.02, frame_bits=16_384).code.code_id
    t = Transcript(alice, bob, plan)
    assert t.dec.failed_frames == []
    assert np.array_equal(np.unpackbits(t.dec.corrected(), count=n), alice)


def _count_disclosed(t: Transcript, plan: LdpcPlan) -> int:
    """Bits on the wire, minus what puncturing hides, plus the implied final reports."""
    syndrome_bits = plan.frames * plan.m
    revealed = sum(8 * (len(a) - 2) for a in t.answers)
    # padding: each answer packs its bits into whole bytes
    revealed -= sum((-int(plan.reveal_sizes[r]) * _asked(req)) % 8
                    for r, req in enumerate(t.requests))
    reports = plan.frames + sum(_asked(req) for req in t.requests)   # 1 bit per decode
    return syndrome_bits - plan.frames * plan.p0 + revealed + reports


def _asked(req: bytes) -> int:
    return int(np.unpackbits(np.frombuffer(req[2:], dtype=np.uint8)).sum())


def test_blind_rounds_leak_exactly_what_was_disclosed() -> None:
    n = 30_000
    q = 0.03
    alice, bob = _keys(n, round(q * n), seed=8)
    # start far below capacity so the first rounds fail and reveals happen
    plan = _plan(n, q, schedule=Schedule(f_first=0.95, f_last=1.35, rounds=5))
    t = Transcript(alice, bob, plan)
    assert len(t.requests) >= 2
    assert t.dec.failed_frames == []
    assert np.array_equal(np.unpackbits(t.dec.corrected(), count=n), alice)
    assert t.enc.leak_bits == t.dec.leak_bits == _count_disclosed(t, plan)
    assert len(t.syndromes) == plan.frames * ((plan.m + 7) // 8)


def test_too_many_errors_fail_cleanly() -> None:
    n = 20_000
    alice, bob = _keys(n, 1400, seed=6)              # 7 % errors, planned for 1 %
    plan = _plan(n, 0.01)
    t = Transcript(alice, bob, plan)
    assert t.dec.failed_frames == [0]
    assert t.dec.done and t.dec.next_request() is None
    assert np.array_equal(np.unpackbits(t.dec.corrected(), count=n), bob)
    assert t.enc.leak_bits == t.dec.leak_bits == _count_disclosed(t, plan)
    assert t.dec.leak_bits <= plan.max_leak_bits


def test_converged_frames_are_right() -> None:
    # near the edge, some frames decode and some do not: a decoded frame is never wrong
    n = 4 * 8192
    alice, bob = _keys(n, round(0.035 * n), seed=11)
    plan = _plan(n, 0.03, frame_bits=8192, schedule=Schedule(1.0, 1.15, 3))
    t = Transcript(alice, bob, plan)
    out = np.unpackbits(t.dec.corrected(), count=n)
    for f in range(plan.frames):
        o, k = int(plan.key_offsets[f]), int(plan.key_bits[f])
        ref = bob if f in t.dec.failed_frames else alice
        assert np.array_equal(out[o:o + k], ref[o:o + k])


# ------------------------------------------------------------------ malformed input
def _fresh(n: int = 20_000, q: float = 0.03) -> tuple[LdpcEncoder, LdpcDecoder, LdpcPlan]:
    alice, bob = _keys(n, round(q * n), seed=2)
    plan = _plan(n, q, schedule=Schedule(f_first=0.9, f_last=1.5, rounds=4))
    enc = LdpcEncoder(np.packbits(alice), n, plan, os.urandom)
    dec = LdpcDecoder(np.packbits(bob), n, plan)
    return enc, dec, plan


def test_malformed_syndromes_are_rejected() -> None:
    enc, dec, plan = _fresh()
    s = enc.syndromes()
    for bad in (s[:-1], s + b"\x00", b"", "text"):
        with pytest.raises(RemoteProtocolError):
            dec.receive_syndromes(bad)  # type: ignore[arg-type]
    if plan.m % 8:
        padded = bytearray(s)
        padded[(plan.m + 7) // 8 - 1] |= 1
        with pytest.raises(RemoteProtocolError):
            dec.receive_syndromes(bytes(padded))
    dec.receive_syndromes(s)
    with pytest.raises(LocalProtocolError):
        dec.receive_syndromes(s)


def test_malformed_requests_and_answers_are_rejected() -> None:
    enc, dec, _ = _fresh()
    dec.receive_syndromes(enc.syndromes())
    dec.decode()
    req = dec.next_request()
    assert req is not None
    for bad in (req[:-1], req + b"\x00", b"X" + req[1:], req[:1] + b"\x05" + req[2:],
                req[:2] + bytes(len(req) - 2), b""):
        with pytest.raises(RemoteProtocolError):
            enc.answer(bad)
    ans = enc.answer(req)
    for bad in (ans[:-1], ans + b"\x00", b"X" + ans[1:], ans[:1] + b"\x07" + ans[2:]):
        with pytest.raises(RemoteProtocolError):
            dec.receive(bad)
    dec.receive(ans)
    with pytest.raises(LocalProtocolError):
        dec.receive(ans)
    with pytest.raises(LocalProtocolError):
        dec.next_request()


def test_api_misuse_is_local_error() -> None:
    alice, bob = _keys(20_000, 200, seed=1)
    plan = _plan(20_000, 0.01)
    with pytest.raises(LocalProtocolError):
        LdpcDecoder(np.packbits(bob), 19_999, plan)
    dec = LdpcDecoder(np.packbits(bob), 20_000, plan)
    with pytest.raises(LocalProtocolError):
        dec.decode()
    enc = LdpcEncoder(np.packbits(alice), 20_000, plan, os.urandom)
    with pytest.raises(LocalProtocolError):
        enc.answer(b"R\x00\x80")
    enc.syndromes()
    with pytest.raises(LocalProtocolError):
        enc.syndromes()
    assert "LdpcPlan" in repr(plan) and "leak" in repr(dec)


def test_punctured_bits_come_from_alices_private_randomness() -> None:
    alice, bob = _keys(20_000, 600, seed=2)
    plan = _plan(20_000, 0.03, schedule=Schedule(f_first=0.9, f_last=1.5, rounds=4))
    asked: list[int] = []
    enc = LdpcEncoder(np.packbits(alice), 20_000, plan,
                      lambda k: asked.append(k) or b"\xff" * k)  # type: ignore[func-returns-value]
    dec = LdpcDecoder(np.packbits(bob), 20_000, plan)
    dec.receive_syndromes(enc.syndromes())
    assert asked == [(plan.frames * plan.p0 + 7) // 8]
    dec.decode()
    req = dec.next_request()
    assert req is not None
    ans = enc.answer(req)
    n_bits = int(plan.reveal_sizes[0]) * _asked(req)
    assert np.unpackbits(np.frombuffer(ans[2:], dtype=np.uint8))[:n_bits].all()
