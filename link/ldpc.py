"""One-way LDPC syndrome reconciliation, rate-adaptive and blind, sans-I/O.

Alice (:class:`LdpcEncoder`) sends the syndromes of her key frames; Bob
(:class:`LdpcDecoder`) decodes the error pattern of each frame by belief propagation
(ldpc_decode.py) and, for frames that fail, asks for the values of some punctured
bits (blind reconciliation). Every bit that leaves either end is counted in
``leak_bits``; both ends compute the same number.

Theory of operation
-------------------
*Frames.* :meth:`LdpcPlan.for_block` cuts the ``n_key`` key bits into frames of about
``frame_bits`` bits (contiguous, sizes differing by at most one) and builds one QC
code (ldpc_codes.py) of length ``n = nb·Z`` for all of them. A frame holds ``k`` key
bits, ``p`` punctured bits (Alice's private random bits, at untainted positions) and
``s = n - k - p`` shortened bits (zero, known to both). The code has ``m = mb·Z``
checks; Alice sends the ``m``-bit syndrome of each frame.

*Rate adaptation* (Elkouss, Martinez-Mateo, Martin, "Information reconciliation for
quantum key distribution", QIC 11 (2011)): with ``p`` punctured and ``s`` shortened
symbols the code's rate is ``(n - m - s)/(n - p - s)``, so the syndrome of ``k`` key
bits costs ``m - p`` bits. The plan picks ``m`` and ``p`` from the QBER estimate.

*Blind rounds* (Martinez-Mateo, Elkouss, Martin, "Blind reconciliation", QIC 12
(2012)): the first round is sent at an optimistic rate (efficiency ``f_first``); when
a frame fails, Bob reports it and Alice reveals the values of the next ``Δ`` punctured
bits, which become shortened; Bob resumes decoding from where he stopped (the
messages are kept). After the last round (all punctured bits revealed, efficiency
``f_last``) a frame that still fails is given up (``failed_frames``).

*Leakage, exactly.* With ``p`` punctured columns of H linearly independent (untainted
puncturing gives them disjoint supports) the syndrome ``H_k·x ⊕ H_p·r`` of key ``x``
and uniform private ``r`` is a one-to-one function of ``m - p`` bits that depend on
``x`` and ``p`` uniform bits independent of everything else; so it discloses exactly
``m - p`` bits. Each revealed punctured bit adds one. Bob's success/failure report is
one bit per frame per round in which the frame is decoded (counted whether it travels
in a request or is implied by the end of the exchange and the link's verification).
``leak_bits = Σ (m - p) + revealed + reports``; nothing else crosses the wire.

Wire formats (all bits packed MSB-first, like the rest of the link):

* syndromes: for each frame in order, its ``m`` syndrome bits packed into ``⌈m/8⌉`` bytes;
* request: ``b"R"``, round (u8), then one bit per frame decoded in that round
  (1 = failed, wants more), packed;
* answer: ``b"A"``, round (u8), then for each frame that asked, in frame order, the
  values of its next ``Δ`` punctured bits, all packed together.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from qkdnet.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from qkdnet.link.ldpc_codes import (
    QCCode,
    get_code,
    profile_for_rate,
    threshold_efficiency,
)
from qkdnet.link.ldpc_decode import KNOWN_LLR, BatchDecoder, channel_llr

__all__ = ["LdpcDecoder", "LdpcEncoder", "LdpcPlan", "binary_entropy"]

#: Default number of key bits per frame (docs/ldpc.md, "Frame size").
FRAME_BITS = 131_072
#: Frames decoded side by side in one batch (bounds the decoder's working set).
BATCH_FRAMES = 8


def binary_entropy(q: float) -> float:
    """h(q) in bits."""
    if q <= 0.0 or q >= 1.0:
        return 0.0
    return -q * math.log2(q) - (1 - q) * math.log2(1 - q)


@dataclass(frozen=True)
class Schedule:
    """Efficiencies of the first and last blind round and the number of rounds."""

    f_first: float
    f_last: float
    rounds: int


def default_schedule(qber: float, frame_bits: int) -> Schedule:
    """Blind schedule for a QBER and frame size (calibrated in docs/ldpc.md).

    ``f_mid`` is where about half the frames decode: the profile's threshold
    efficiency plus a finite-length gap that shrinks as 1/sqrt(n) (measured at
    n = 1.3e5: +0.06). The first round starts 0.04 below it and the last round ends
    0.06 above, in 5 reveals of 0.02 each.
    """
    q = min(max(qber, 0.002), 0.11)
    prof = profile_for_rate(1.0 - 1.1 * binary_entropy(q))
    f_mid = threshold_efficiency(prof) + 0.69 / math.sqrt(frame_bits / 1000)
    return Schedule(f_first=f_mid - 0.04, f_last=f_mid + 0.06, rounds=6)


@dataclass(frozen=True)
class FrameLayout:
    """Positions of one frame: key bits in order, punctured (reveal order), shortened."""

    key: np.ndarray
    punctured: np.ndarray
    shortened: np.ndarray


class LdpcPlan:
    """The public parameters of one reconciliation: frames, code, puncturing, rounds.

    Built identically at both ends from ``(n_key, qber, seed)``; :meth:`describe` lists
    the public facts. ``expected_leak_bits`` is the leak the plan expects (first-round
    syndromes plus the expected reveals and reports, from the calibrated model in
    docs/ldpc.md); ``max_leak_bits`` is the most it can disclose.
    """

    def __init__(self, n_key: int, qber: float, seed: int, *, frame_bits: int = FRAME_BITS,
                 schedule: Schedule | None = None) -> None:
        if n_key < 1024 or n_key >= 1 << 31:
            raise ValueError("n_key must be in [1024, 2**31)")
        if not 0.0 <= qber < 0.5:
            raise ValueError("qber must be in [0, 0.5)")
        self.n_key = int(n_key)
        self.qber = float(qber)
        self.seed = int(seed)
        q = min(max(self.qber, 0.002), 0.11)
        self.design_qber = q
        n_frames = max(1, round(n_key / frame_bits))
        self.n_frames = n_frames
        base, extra = divmod(n_key, n_frames)
        self.key_bits = np.full(n_frames, base, dtype=np.int64)
        self.key_bits[:extra] += 1
        self.key_offsets = np.concatenate(([0], np.cumsum(self.key_bits)))
        k = int(self.key_bits.max())
        self.schedule = schedule or default_schedule(q, k)
        h = binary_entropy(q)
        sched = self.schedule
        leak_last = math.ceil(sched.f_last * k * h)
        leak_first = math.ceil(sched.f_first * k * h)
        p_target = max(0, leak_last - leak_first)
        r_eff = 1.0 - 0.5 * (sched.f_first + sched.f_last) * h
        profile = profile_for_rate(r_eff)
        n_need = k + p_target
        # 256 block columns when the frame is long enough for Z ≥ 96; more for high
        # rates (a column's degree is at most mb), fewer for short frames (Z ≥ 64)
        nb = 256
        while (1 - r_eff) * nb < profile.max_degree + 2 and nb < 1024:
            nb *= 2
        nb = max(32, min(nb, n_need // 64))
        Z = math.ceil(n_need / (nb - 1))    # one spare block column for mb rounding
        mb = max(2, math.ceil(leak_last / Z))
        self.code: QCCode = get_code(nb, mb, Z, profile.name, self.seed)
        code = self.code
        self.n = code.n
        self.m = code.m
        # punctured: whatever the syndrome carries beyond the first-round leak
        p0 = min(code.m - leak_first, code.n - k, code.max_punctured)
        self.p0 = max(0, p0)
        self.rounds = max(1, min(sched.rounds, self.p0 + 1))
        # reveal sizes per round (rounds-1 reveals share the punctured bits)
        r = self.rounds - 1
        self.reveal_sizes = (np.full(r, self.p0 // r, dtype=np.int64) if r else
                             np.zeros(0, dtype=np.int64))
        if r:
            self.reveal_sizes[: self.p0 % r] += 1
        self._layouts: list[FrameLayout] | None = None
        self.expected_leak_bits = self._expected_leak(h)
        self.max_leak_bits = int(n_frames * (code.m + self.rounds))

    @classmethod
    def for_block(cls, n_key: int, qber: float, seed: int, **kw: Any) -> LdpcPlan:
        """The plan for ``n_key`` sifted bits at estimated QBER ``qber`` (public seed)."""
        return cls(n_key, qber, seed, **kw)

    def __repr__(self) -> str:
        return (f"LdpcPlan(n_key={self.n_key}, frames={self.n_frames}, n={self.n}, "
                f"m={self.m}, p={self.p0}, rounds={self.rounds}, code={self.code.code_id})")

    @property
    def frames(self) -> int:
        return self.n_frames

    def layout(self, f: int) -> FrameLayout:
        """Positions of frame ``f`` (all frames share a layout but their key count)."""
        if self._layouts is None:
            self._layouts = self._build_layouts()
        return self._layouts[f]

    def _build_layouts(self) -> list[FrameLayout]:
        code = self.code
        punct = code.puncture_candidates(self.p0)[::-1].copy()   # reveal order
        rest = np.setdiff1d(np.arange(code.n), punct)
        rng = np.random.default_rng([0x1D9C, self.seed & (2**63 - 1)])
        perm = rest[rng.permutation(rest.shape[0])]
        out = []
        cache: dict[int, FrameLayout] = {}
        for f in range(self.n_frames):
            k = int(self.key_bits[f])
            if k not in cache:
                key = np.sort(perm[:k])
                short = np.sort(perm[k:])
                cache[k] = FrameLayout(key, punct, short)
            out.append(cache[k])
        return out

    def describe(self) -> dict[str, Any]:
        """Public facts of the plan, JSON-able."""
        c = self.code
        return {
            "method": "ldpc-syndrome-blind",
            "n_key": self.n_key, "qber": self.qber, "design_qber": self.design_qber,
            "frames": self.n_frames, "key_bits_per_frame": sorted({int(x) for x in
                                                                   self.key_bits}),
            "frame_length": c.n, "syndrome_bits": c.m, "punctured": self.p0,
            "shortened_per_frame": sorted({int(c.n - k - self.p0) for k in self.key_bits}),
            "rounds": self.rounds, "reveal_sizes": [int(x) for x in self.reveal_sizes],
            "f_first": self.schedule.f_first, "f_last": self.schedule.f_last,
            "code_id": c.code_id, "profile": c.profile.name, "nb": c.nb, "mb": c.mb,
            "Z": c.Z, "expected_leak_bits": self.expected_leak_bits,
            "max_leak_bits": self.max_leak_bits,
        }

    def _expected_leak(self, h: float) -> int:
        """Model: a frame needs efficiency f ~ N(f_mid, σ); round r succeeds if f_r ≥ f."""
        k = float(self.key_bits.mean())
        base = self.m - self.p0
        f_of = [(base + float(self.reveal_sizes[:j].sum())) / (k * h) if h > 0 else 1.0
                for j in range(self.rounds)]
        f_mid = self.schedule.f_first + 0.35 * (self.schedule.f_last - self.schedule.f_first)
        sigma = max(0.004, 0.35 / math.sqrt(k / 1000) * 0.1)
        exp = 0.0
        prev_ok = 0.0
        for j, fj in enumerate(f_of):
            ok = 0.5 * (1 + math.erf((fj - f_mid) / (sigma * math.sqrt(2))))
            if j == len(f_of) - 1:
                ok = 1.0
            reach = 1.0 - prev_ok          # probability the frame is decoded in round j
            exp += reach * (1 + (float(self.reveal_sizes[j - 1]) if j else 0.0))
            prev_ok = max(prev_ok, ok)
        return round(self.n_frames * (base + exp))


def _pack_frames(bits: np.ndarray) -> bytes:
    """(F, m) 0/1 → each row packed to whole bytes, concatenated."""
    return np.packbits(bits, axis=1).tobytes()


class LdpcEncoder:
    """Alice's side: syndromes of her frames and the values of revealed punctured bits.

    ``random_bytes(k)`` supplies the private random bits for the punctured positions.
    ``leak_bits`` counts what the exchange disclosed so far, as at :class:`LdpcDecoder`.
    """

    def __init__(self, alice_packed: np.ndarray | bytes, n_key: int, plan: LdpcPlan,
                 random_bytes: Callable[[int], bytes]) -> None:
        if n_key != plan.n_key:
            raise LocalProtocolError("n_key does not match the plan")
        self.plan = plan
        key = np.unpackbits(np.frombuffer(bytes(alice_packed), dtype=np.uint8)
                            if isinstance(alice_packed, bytes | bytearray)
                            else np.asarray(alice_packed, dtype=np.uint8), count=n_key)
        F, n, p = plan.n_frames, plan.n, plan.p0
        self._frames = np.zeros((F, n), dtype=np.uint8)
        rnd = np.unpackbits(np.frombuffer(random_bytes((F * p + 7) // 8), dtype=np.uint8),
                            count=F * p).reshape(F, p) if p else np.zeros((F, 0), np.uint8)
        for f in range(F):
            lay = plan.layout(f)
            o = int(plan.key_offsets[f])
            self._frames[f, lay.key] = key[o:o + lay.key.shape[0]]
            self._frames[f, lay.punctured] = rnd[f]
        self._revealed = np.zeros(F, dtype=np.int64)    # punctured bits revealed so far
        self._round = 0                                  # rounds answered
        self._active = np.ones(F, dtype=bool)            # frames decoded in the next round
        self._sent = False
        self.leak_bits = 0

    def __repr__(self) -> str:
        return f"LdpcEncoder(frames={self.plan.n_frames}, leak={self.leak_bits})"

    def syndromes(self) -> bytes:
        """The first message: every frame's syndrome."""
        if self._sent:
            raise LocalProtocolError("syndromes already sent")
        self._sent = True
        plan = self.plan
        syn = np.concatenate([plan.code.syndrome(self._frames[i:i + BATCH_FRAMES])
                              for i in range(0, plan.n_frames, BATCH_FRAMES)])
        # every frame is decoded in round 0; its report counts one bit
        self.leak_bits = plan.n_frames * (plan.m - plan.p0 + 1)
        return _pack_frames(syn)

    def answer(self, request: bytes) -> bytes:
        """Values of the next punctured bits of each frame that asked for more."""
        if not self._sent:
            raise LocalProtocolError("answer before syndromes")
        plan = self.plan
        want = _parse_request(request, self._round, int(self._active.sum()), plan)
        idx = np.flatnonzero(self._active)[want]
        delta = int(plan.reveal_sizes[self._round])
        parts = []
        for f in idx:
            lay = plan.layout(int(f))
            r0 = int(self._revealed[f])
            parts.append(self._frames[f, lay.punctured[r0:r0 + delta]])
            self._revealed[f] += delta
        self._round += 1
        self._active[:] = False
        self._active[idx] = True
        # reveals, plus one report bit per frame decoded in the coming round
        self.leak_bits += idx.shape[0] * (delta + 1)
        bits = np.concatenate(parts) if parts else np.zeros(0, np.uint8)
        return b"A" + bytes([self._round - 1]) + np.packbits(bits).tobytes()


def _parse_request(data: bytes, expect_round: int, n_active: int, plan: LdpcPlan
                   ) -> np.ndarray:
    if not isinstance(data, bytes | bytearray):
        raise RemoteProtocolError("request is not bytes", ErrorCode.MALFORMED_FRAME)
    if expect_round >= plan.rounds - 1:
        raise RemoteProtocolError("request after the last blind round")
    need = 2 + (n_active + 7) // 8
    if len(data) != need or data[0:1] != b"R":
        raise RemoteProtocolError(f"request of {len(data)} bytes, {need} expected",
                                  ErrorCode.MALFORMED_FRAME)
    if data[1] != expect_round:
        raise RemoteProtocolError(f"request for round {data[1]}, round {expect_round} "
                                  "expected")
    bits = np.unpackbits(np.frombuffer(bytes(data[2:]), dtype=np.uint8))
    if bits[n_active:].any():
        raise RemoteProtocolError("request padding bits set", ErrorCode.MALFORMED_FRAME)
    want = bits[:n_active].astype(bool)
    if not want.any():
        raise RemoteProtocolError("request asks for nothing")
    return want


class LdpcDecoder:
    """Bob's side: decodes every frame, asks for punctured values when a frame fails.

    Loop: :meth:`receive_syndromes`, then repeat :meth:`decode` and
    ``q = next_request()``; stop at ``None``, else send ``q`` and feed the answer to
    :meth:`receive`. :meth:`corrected` is the key (failed frames stay as received).
    """

    def __init__(self, bob_packed: np.ndarray | bytes, n_key: int, plan: LdpcPlan, *,
                 max_iter: int = 80) -> None:
        if n_key != plan.n_key:
            raise LocalProtocolError("n_key does not match the plan")
        self.plan = plan
        self._max_iter = max_iter
        self._bob = np.unpackbits(np.frombuffer(bytes(bob_packed), dtype=np.uint8)
                                  if isinstance(bob_packed, bytes | bytearray)
                                  else np.asarray(bob_packed, dtype=np.uint8), count=n_key)
        F = plan.n_frames
        self._batches: list[BatchDecoder] = []
        self._round = 0
        self._state = "syndromes"            # syndromes -> decode -> request/answer -> done
        self._active = np.ones(F, dtype=bool)  # frames to decode in the current round
        self._revealed = np.zeros(F, dtype=np.int64)
        self._ok = np.zeros(F, dtype=bool)
        self._tried = np.zeros(F, dtype=bool)
        self.rounds_used = 0
        self.leak_bits = 0

    def __repr__(self) -> str:
        return (f"LdpcDecoder(frames={self.plan.n_frames}, round={self._round}, "
                f"leak={self.leak_bits})")

    # ------------------------------------------------------------------ messages
    def receive_syndromes(self, data: bytes) -> None:
        """Alice's first message (validated: exact length)."""
        if self._state != "syndromes":
            raise LocalProtocolError("syndromes already received")
        plan = self.plan
        per = (plan.m + 7) // 8
        if not isinstance(data, bytes | bytearray) or len(data) != per * plan.n_frames:
            raise RemoteProtocolError(
                f"syndrome message of {len(data)} bytes, {per * plan.n_frames} expected",
                ErrorCode.MALFORMED_FRAME)
        raw = np.frombuffer(bytes(data), dtype=np.uint8).reshape(plan.n_frames, per)
        syn = np.unpackbits(raw, axis=1)
        if plan.m % 8 and syn[:, plan.m:].any():
            raise RemoteProtocolError("syndrome padding bits set", ErrorCode.MALFORMED_FRAME)
        syn = syn[:, :plan.m]
        code = plan.code
        llr_key = channel_llr(plan.design_qber)
        for b0 in range(0, plan.n_frames, BATCH_FRAMES):
            fr = range(b0, min(plan.n_frames, b0 + BATCH_FRAMES))
            y = np.zeros((len(fr), code.n), dtype=np.uint8)
            llr = np.full((len(fr), code.n), KNOWN_LLR, dtype=np.int16)
            for i, f in enumerate(fr):
                lay = plan.layout(f)
                o = int(plan.key_offsets[f])
                y[i, lay.key] = self._bob[o:o + lay.key.shape[0]]
                llr[i, lay.key] = llr_key
                llr[i, lay.punctured] = 0
            target = syn[b0:b0 + len(fr)] ^ code.syndrome(y)
            self._batches.append(BatchDecoder(code, llr, target))
        self.leak_bits = plan.n_frames * (plan.m - plan.p0 + 1)
        self._state = "decode"

    def decode(self) -> None:
        """Run belief propagation on the frames of the current round (CPU-heavy)."""
        if self._state != "decode":
            raise LocalProtocolError(f"decode() in state {self._state}")
        for bi, dec in enumerate(self._batches):
            b0 = bi * BATCH_FRAMES
            todo = np.flatnonzero(self._active[b0:b0 + dec.F])
            if todo.size:
                dec.run(todo, max_iter=self._max_iter)
                self._ok[b0:b0 + dec.F] = dec.converged
        self._tried |= self._active
        self.rounds_used = self._round + 1
        self._state = "request"

    def next_request(self) -> bytes | None:
        """The report of this round if some frame wants more, else ``None`` (finished)."""
        if self._state == "done":
            return None
        if self._state != "request":
            raise LocalProtocolError(f"next_request() in state {self._state}")
        failed = self._active & ~self._ok
        if not failed.any() or self._round >= self.plan.rounds - 1:
            self._state = "done"
            return None
        bits = failed[self._active].astype(np.uint8)
        self._state = "answer"
        self._wanted = np.flatnonzero(failed)
        return b"R" + bytes([self._round]) + np.packbits(bits).tobytes()

    def receive(self, answer: bytes) -> None:
        """Alice's revealed punctured values (validated: round and exact length)."""
        if self._state != "answer":
            raise LocalProtocolError("no request outstanding")
        plan = self.plan
        delta = int(plan.reveal_sizes[self._round])
        n_bits = delta * self._wanted.shape[0]
        need = 2 + (n_bits + 7) // 8
        if not isinstance(answer, bytes | bytearray) or len(answer) != need \
                or answer[0:1] != b"A":
            raise RemoteProtocolError(f"answer of {len(answer)} bytes, {need} expected",
                                      ErrorCode.MALFORMED_FRAME)
        if answer[1] != self._round:
            raise RemoteProtocolError(f"answer for round {answer[1]}, "
                                      f"round {self._round} expected")
        bits = np.unpackbits(np.frombuffer(bytes(answer[2:]), dtype=np.uint8))
        if bits[n_bits:].any():
            raise RemoteProtocolError("answer padding bits set", ErrorCode.MALFORMED_FRAME)
        vals = bits[:n_bits].reshape(self._wanted.shape[0], delta)
        for i, f in enumerate(self._wanted):
            lay = plan.layout(int(f))
            r0 = int(self._revealed[f])
            pos = lay.punctured[r0:r0 + delta]
            dec = self._batches[int(f) // BATCH_FRAMES]
            # Bob's y is 0 at punctured positions, so the error bit is the value
            dec.set_known(int(f) % BATCH_FRAMES, pos, vals[i])
            self._revealed[f] += delta
        self.leak_bits += self._wanted.shape[0] * (delta + 1)
        self._active[:] = False
        self._active[self._wanted] = True
        self._round += 1
        self._state = "decode"

    # ------------------------------------------------------------------ results
    @property
    def failed_frames(self) -> list[int]:
        """Frames that did not decode (valid once :meth:`next_request` returned None)."""
        return [int(f) for f in np.flatnonzero(~self._ok)]

    @property
    def done(self) -> bool:
        return self._state == "done"

    def corrected(self) -> np.ndarray:
        """Bob's key with every decoded frame corrected, packed (failed frames as received)."""
        plan = self.plan
        out = self._bob.copy()
        for bi, dec in enumerate(self._batches):
            for i in range(dec.F):
                f = bi * BATCH_FRAMES + i
                if self._ok[f]:
                    lay = plan.layout(f)
                    o = int(plan.key_offsets[f])
                    out[o:o + lay.key.shape[0]] ^= dec.hard[i, lay.key]
        return np.packbits(out)

