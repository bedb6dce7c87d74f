"""Recompute every block's key length ℓ from a capture of its sideband alone.

Everything ℓ depends on crosses the sideband in the clear, so an observer with a
capture can check the key length each block announced (spec/link.md §2):

* BLOCK_START: the block's slots, the number of intensities, ε_sec and ε_cor;
* DETECTIONS and SIFT: Bob's basis of every click, the clicks kept, the intensity
  of each kept slot — hence n_Z,k and n_X,k per intensity;
* ESTIMATE_RESULT: the X-basis errors m_X,k, the QBER the reconciliation planned
  with, its seed and the method; VERIFY: the key-basis errors m_Z,k and the tag size;
* PARITY_REPLY (Cascade) or LDPC_SYNDROME / LDPC_REQUEST (LDPC): the bits error
  correction disclosed;
* PA: the ℓ Alice announced.

Only the intensities μ_k and their probabilities p_k are not on the wire: they are
the preset's (``params``). :func:`audit_capture` rebuilds each block's counts,
recomputes the leakage under the given accounting and ℓ with the finite-key bound
the link uses, and reports both next to the announced ℓ. ``qkdnet pcap summary FILE
--audit PRESET`` prints it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qkdnet.link import finite_key, ldpc
from qkdnet.link import wire as w


@dataclass
class BlockAudit:
    """One block as the capture shows it, and ℓ recomputed from it."""

    session: str
    block: int
    n_slots: int = 0
    n_intensities: int = 3
    eps_sec: float = 1e-10
    eps_cor: float = 1e-15
    n_z: list[int] = field(default_factory=list)
    n_x: list[int] = field(default_factory=list)
    m_z: list[int] | None = None
    m_x: list[int] | None = None
    qber: float | None = None
    method: str | None = None
    leak_parts: dict[str, int] = field(default_factory=dict)
    ell_announced: int | None = None
    ell_recomputed: int | None = None
    aborted: bool = False
    note: str = ""

    @property
    def matches(self) -> bool | None:
        """ℓ recomputed equals ℓ announced (None: the block never reached PA)."""
        if self.ell_announced is None or self.ell_recomputed is None:
            return None
        return self.ell_announced == self.ell_recomputed

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["matches"] = self.matches
        return out


class _Block:
    """Frames of one block, collected in capture order."""

    def __init__(self) -> None:
        self.start: Any = None
        self.bases: list[np.ndarray] = []
        self.sift: Any = None
        self.estimate_result: Any = None
        self.syndrome_seen = False
        self.ldpc_requests: list[bytes] = []
        self.parities = 0
        self.verify: Any = None
        self.pa: Any = None
        self.aborted = False


def _collect(frames: Iterable[Any]) -> dict[tuple[int, int], _Block]:
    blocks: dict[tuple[int, int], _Block] = {}
    for frame in frames:
        t = int(frame.type)
        if t not in w.LinkMsg._value2member_map_:
            continue
        body = frame.payload
        if not hasattr(body, "block"):
            continue
        blk = blocks.setdefault((int(frame.session), int(body.block)), _Block())
        if t == w.LinkMsg.BLOCK_START:
            blk.start = body
        elif t == w.LinkMsg.DETECTIONS:
            blk.bases.append(w.unpack_bits(body.bases, int(body.n_clicks), "bases"))
        elif t == w.LinkMsg.SIFT:
            blk.sift = body
        elif t == w.LinkMsg.ESTIMATE_RESULT:
            blk.estimate_result = body
        elif t == w.LinkMsg.LDPC_SYNDROME:
            blk.syndrome_seen = True
        elif t == w.LinkMsg.LDPC_REQUEST:
            blk.ldpc_requests.append(bytes(body.data))
        elif t == w.LinkMsg.PARITY_REPLY:
            blk.parities += int(body.leaked_bits)
        elif t == w.LinkMsg.VERIFY:
            blk.verify = body
        elif t == w.LinkMsg.PA:
            blk.pa = body
        elif t == w.LinkMsg.ABORT:
            blk.aborted = True
    return blocks


def _ldpc_leak(n_key: int, qber: float, n_x: int, seed: int, requests: list[bytes]) -> int:
    """What the LDPC exchange disclosed: every frame's syndrome (less its punctured
    part) and one report bit, then per blind round the bits revealed to each frame
    that asked, and its next report bit (as qkdnet.link.ldpc counts it)."""
    from qkdnet.link.session import _ldpc_plan

    plan = _ldpc_plan(n_key, qber, n_x, seed)
    leak = plan.n_frames * (plan.m - plan.p0 + 1)
    active = np.ones(plan.n_frames, dtype=bool)
    for rnd, data in enumerate(requests):
        want = ldpc._parse_request(data, rnd, int(active.sum()), plan)
        idx = np.flatnonzero(active)[want]
        leak += idx.shape[0] * (int(plan.reveal_sizes[rnd]) + 1)
        active[:] = False
        active[idx] = True
    return int(leak)


def _audit_block(session: int, index: int, blk: _Block, mu: tuple[float, ...],
                 p: tuple[float, ...], leak_accounting: str) -> BlockAudit:
    out = BlockAudit(session=f"{session:08x}", block=index, aborted=blk.aborted)
    if blk.start is None or blk.sift is None or not blk.bases:
        out.note = "not all in the capture"
        return out
    k = int(blk.start.n_intensities)
    out.n_slots, out.n_intensities = int(blk.start.n_slots), k
    out.eps_sec, out.eps_cor = float(blk.start.eps_sec), float(blk.start.eps_cor)
    bases = np.concatenate(blk.bases)
    keep = w.unpack_bits(blk.sift.keep, len(bases), "keep").astype(bool)
    intens = w.unpack_2bit(blk.sift.intensities, int(keep.sum()), "intensities")
    z = bases[keep] == 0
    n_z = np.bincount(intens[z], minlength=k)[:k]
    n_x = np.bincount(intens[~z], minlength=k)[:k]
    out.n_z, out.n_x = [int(v) for v in n_z], [int(v) for v in n_x]
    res = blk.estimate_result
    if res is None or blk.verify is None or blk.pa is None:
        out.note = "aborted" if blk.aborted else "no PA in the capture"
        return out
    out.m_x = [int(res.m_x0), int(res.m_x1), int(res.m_x2)][:k]
    out.m_z = [int(blk.verify.m_z0), int(blk.verify.m_z1), int(blk.verify.m_z2)][:k]
    out.qber = float(res.qber)
    n = int(n_z.sum())
    method = w.Reconciliation(int(res.method))
    out.method = method.name.lower()
    ldpc_bits = 0
    if method is w.Reconciliation.LDPC:
        ldpc_bits = _ldpc_leak(n, float(res.qber), int(n_x.sum()), int(res.cascade_seed),
                               blk.ldpc_requests)
    from qkdnet.link.session import leakage_parts

    out.leak_parts = leakage_parts(n_z, ldpc_bits, blk.parities, leak_accounting,
                                   out.eps_cor)
    stats = finite_key.DecoyStats(n_z=tuple(out.n_z), m_z=tuple(out.m_z),
                                  n_x=tuple(out.n_x), m_x=tuple(out.m_x), mu=mu, p=p)
    fkp = finite_key.FiniteKeyParams(eps_sec=out.eps_sec, eps_cor=out.eps_cor)
    fk = finite_key.key_length(stats, float(sum(out.leak_parts.values())), fkp)
    out.ell_recomputed = min(int(fk.ell), n) if fk.ell > 0 else 0
    out.ell_announced = int(blk.pa.final_key_bits)
    return out


def audit_capture(path: str | Path, params: Any, *, leak_accounting: str = "strict",
                  ports: tuple[int, ...] = ()) -> list[BlockAudit]:
    """Every link block in the capture, with ℓ recomputed from its frames and the
    preset ``params`` (a :class:`qkdnet.phy.params.PhyParams`)."""
    from qkdnet.link.session import LinkConfig
    from qkdnet.pcap import iter_frames

    cfg = LinkConfig.from_phy(params, 0)
    blocks = _collect(frame for _, _, _, frame in iter_frames(path, ports=ports))
    return [_audit_block(session, index, blk, tuple(cfg.mu), tuple(cfg.p), leak_accounting)
            for (session, index), blk in sorted(blocks.items())]


__all__ = ["BlockAudit", "audit_capture"]
