"""Key sources for SecureStream (the :class:`~qkdnet.apps.stream.StreamKeys` protocol).

* :class:`KeyStoreStreamKeys`: the node's durable key store, pools
  ``(peer, "e2e-tx")`` and ``(peer, "e2e-rx")`` (end-to-end key relayed through the
  hub) or any other pair of purposes.
* :class:`MemoryKeyPool` / :func:`memory_key_pair`: in-memory pools shared by the two
  ends of a test or benchmark. The bits come from a seeded numpy generator: they are
  *test key*, fast and reproducible, not secret. Each bit is still handed out once and
  accepted once, so reuse and forgery tests behave as with the real store.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import trio

from qkdnet.apps.wire import KeyRef
from qkdnet.errors import KeyExhausted, KeyReuseError


class MemoryGrant:
    """Key handed to a sender: its references and the bytes (repr hides the bytes).

    ``parts`` holds one zero-copy view per segment (into the pool's blocks), so a
    sender that carves the grant piecewise (:class:`~qkdnet.apps.stream.KeyCursor`)
    never copies key; ``data`` joins the parts, once, for callers that want one buffer.
    """

    __slots__ = ("_data", "parts", "segments")

    def __init__(self, segments: tuple[KeyRef, ...], parts: tuple[memoryview, ...]) -> None:
        self.segments = segments
        self.parts = parts
        self._data: bytes | memoryview | None = None

    @property
    def data(self) -> bytes | memoryview:
        """All the grant's key bytes in one buffer (segment order)."""
        if self._data is None:
            self._data = self.parts[0] if len(self.parts) == 1 else b"".join(self.parts)
        return self._data

    def __repr__(self) -> str:
        return f"MemoryGrant(segments={len(self.segments)}, n_bits={8 * self.n_bytes})"

    @property
    def n_bytes(self) -> int:
        """Key bytes in the grant."""
        return sum(len(p) for p in self.parts)


class MemoryKeyPool:
    """One direction's key: the sender reserves, the receiver takes, each bit once.

    Byte-granular (SecureStream only asks for whole bytes). ``capacity_bits=None``
    makes the pool bottomless (new blocks appear as needed); otherwise it holds what
    :meth:`add_key` put in.
    """

    BLOCK_BYTES = 1 << 20

    def __init__(self, *, seed: int = 0, capacity_bits: int | None = None,
                 name: str = "memory") -> None:
        self._rng = np.random.default_rng(seed)
        self._blocks: dict[int, tuple[bytes, list[tuple[int, int]]]] = {}
        self._order: list[int] = []  # block ids with unreserved bytes, oldest first
        self._next_free: dict[int, int] = {}
        self._next_id = 1
        self._bottomless = capacity_bits is None
        self._changed = trio.Event()
        self.name = name
        self.reserved_bits = 0
        self._free_bytes = 0  # unreserved bytes over all blocks (available() is O(1))
        if capacity_bits:
            self.add_key(capacity_bits)

    def __repr__(self) -> str:
        return f"MemoryKeyPool({self.name!r}, available_bits={self.available()})"

    def add_key(self, n_bits: int) -> None:
        """Add ``n_bits`` (rounded down to bytes) of fresh key and wake waiters."""
        n = n_bits // 8
        while n > 0:
            size = min(n, self.BLOCK_BYTES)
            bid = self._next_id
            self._next_id += 1
            self._blocks[bid] = (self._rng.bytes(size), [])
            self._next_free[bid] = 0
            self._order.append(bid)
            self._free_bytes += size
            n -= size
        self._changed.set()
        self._changed = trio.Event()

    def available(self) -> int:
        """Bits not yet reserved."""
        return 8 * self._free_bytes

    def reserve(self, n_bits: int) -> MemoryGrant:
        """Hand out ``n_bits`` (a multiple of 8) fresh bits, or raise KeyExhausted."""
        if n_bits % 8:
            raise ValueError("memory pools hand out whole bytes")
        need = n_bits // 8
        if self._bottomless and self.available() < n_bits:
            self.add_key(max(n_bits - self.available(), 8 * self.BLOCK_BYTES))
        if self.available() < n_bits:
            raise KeyExhausted(n_bits, self.available(), pool=self.name)
        segs: list[KeyRef] = []
        parts: list[memoryview] = []
        while need:
            bid = self._order[0]
            data, _ = self._blocks[bid]
            pos = self._next_free[bid]
            k = min(need, len(data) - pos)
            segs.append(KeyRef(bid, 8 * pos, 8 * k))
            parts.append(memoryview(data)[pos:pos + k])
            self._next_free[bid] = pos + k
            self._free_bytes -= k
            need -= k
            if pos + k == len(data):
                self._order.pop(0)
        self.reserved_bits += n_bits
        return MemoryGrant(tuple(segs), tuple(parts))

    async def wait_reserve(self, n_bits: int, deadline: float) -> MemoryGrant:
        """:meth:`reserve`, waiting for :meth:`add_key` until ``deadline``."""
        while True:
            try:
                grant = self.reserve(n_bits)
            except KeyExhausted:
                if trio.current_time() >= deadline:
                    raise
                with trio.move_on_at(deadline):
                    await self._changed.wait()
                continue
            await trio.lowlevel.checkpoint()
            return grant

    def take(self, refs: Sequence[Any]) -> bytes | memoryview:
        """The bytes ``refs`` name; KeyReuseError if any was taken, KeyExhausted if unknown.

        Taken ranges are kept per block as sorted, merged intervals (receivers take
        in order, so this stays a handful of entries).
        """
        ranges = self._check(refs)
        for bid, lo, hi in ranges:
            self._mark(bid, lo, hi)
        return self._bytes(ranges)

    def peek(self, refs: Sequence[Any]) -> bytes | memoryview:
        """What :meth:`take` would return (and raise), without consuming anything."""
        return self._bytes(self._check(refs))

    def peek_parts(self, refs: Sequence[Any]) -> list[memoryview]:
        """:meth:`peek` as one zero-copy view per reference (no join of the pieces)."""
        return [memoryview(self._blocks[bid][0])[lo:hi] for bid, lo, hi in self._check(refs)]

    def consume(self, refs: Sequence[Any]) -> None:
        """:meth:`take` without building the bytes (the caller peeked them already)."""
        for bid, lo, hi in self._check(refs):
            self._mark(bid, lo, hi)

    def _bytes(self, ranges: Sequence[tuple[int, int, int]]) -> bytes | memoryview:
        parts = [memoryview(self._blocks[bid][0])[lo:hi] for bid, lo, hi in ranges]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _check(self, refs: Sequence[Any]) -> list[tuple[int, int, int]]:
        """The (block, first byte, end byte) ranges ``refs`` name, if all are untaken."""
        ranges = []
        for r in refs:
            if r.offset % 8 or r.n_bits % 8 or r.n_bits <= 0:
                raise KeyExhausted(r.n_bits, 0, pool=self.name)
            entry = self._blocks.get(r.block_id)
            lo, hi = r.offset // 8, (r.offset + r.n_bits) // 8
            if entry is None or hi > self._next_free[r.block_id]:
                raise KeyExhausted(r.n_bits, 0, pool=self.name)
            ranges.append((r.block_id, lo, hi))
        for i, (bid, lo, hi) in enumerate(ranges):
            if self._overlaps(bid, lo, hi) or any(
                    b == bid and lo < h and l2 < hi for b, l2, h in ranges[:i]):
                raise KeyReuseError("key bits were already taken")
        return ranges

    def _overlaps(self, bid: int, lo: int, hi: int) -> bool:
        taken = self._blocks[bid][1]
        i = bisect.bisect_right(taken, (lo, math.inf)) - 1
        if i >= 0 and taken[i][1] > lo:
            return True
        return i + 1 < len(taken) and taken[i + 1][0] < hi

    def _mark(self, bid: int, lo: int, hi: int) -> None:
        taken = self._blocks[bid][1]
        bisect.insort(taken, (lo, hi))
        merged: list[tuple[int, int]] = []
        for a, b in taken:
            if merged and a <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        taken[:] = merged


class MemoryStreamKeys:
    """One end's view of a pair of memory pools: ``tx`` to send with, ``rx`` to receive."""

    def __init__(self, tx: MemoryKeyPool, rx: MemoryKeyPool) -> None:
        self.tx = tx
        self.rx = rx

    def __repr__(self) -> str:
        return f"MemoryStreamKeys(tx={self.tx!r}, rx={self.rx!r})"

    def reserve(self, n_bits: int) -> MemoryGrant:
        return self.tx.reserve(n_bits)

    async def wait_reserve(self, n_bits: int, deadline: float) -> MemoryGrant:
        return await self.tx.wait_reserve(n_bits, deadline)

    def take(self, refs: Sequence[Any]) -> bytes | memoryview:
        return self.rx.take(refs)

    def peek(self, refs: Sequence[Any]) -> bytes | memoryview:
        return self.rx.peek(refs)

    def peek_parts(self, refs: Sequence[Any]) -> list[memoryview]:
        return self.rx.peek_parts(refs)

    def consume(self, refs: Sequence[Any]) -> None:
        self.rx.consume(refs)

    def available(self) -> int:
        return self.tx.available()


def memory_key_pair(*, seed: int = 0, capacity_bits: int | None = None
                    ) -> tuple[MemoryStreamKeys, MemoryStreamKeys]:
    """Key sources for the two ends of a stream (a→b and b→a pools)."""
    ab = MemoryKeyPool(seed=seed, capacity_bits=capacity_bits, name="a->b")
    ba = MemoryKeyPool(seed=seed + 1, capacity_bits=capacity_bits, name="b->a")
    return MemoryStreamKeys(ab, ba), MemoryStreamKeys(ba, ab)


class KeyStoreStreamKeys:
    """StreamKeys on a :class:`qkdnet.keystore.KeyStore`: pools ``(peer, tx)``/``(peer, rx)``.

    The default purposes are the end-to-end pools that :meth:`SpokeNode.relay_key`
    fills. Reservations are rounded up to whole bytes.
    """

    def __init__(self, store: Any, peer: str, *, tx_purpose: str = "e2e-tx",
                 rx_purpose: str = "e2e-rx") -> None:
        self.store = store
        self.peer = peer
        self.tx_purpose = tx_purpose
        self.rx_purpose = rx_purpose

    def __repr__(self) -> str:
        return f"KeyStoreStreamKeys(peer={self.peer!r}, tx={self.tx_purpose!r})"

    def reserve(self, n_bits: int) -> Any:
        return self.store.reserve(self.peer, self.tx_purpose, 8 * math.ceil(n_bits / 8))

    async def wait_reserve(self, n_bits: int, deadline: float) -> Any:
        return await self.store.wait_reserve(self.peer, self.tx_purpose,
                                             8 * math.ceil(n_bits / 8), deadline=deadline)

    def take(self, refs: Sequence[Any]) -> bytes:
        data: bytes = self.store.take(self.peer, self.rx_purpose, _segments(refs))
        return data

    def peek(self, refs: Sequence[Any]) -> bytes:
        """What :meth:`take` would return (and raise), without consuming anything."""
        data: bytes = self.store.peek(self.peer, self.rx_purpose, _segments(refs))
        return data

    def available(self) -> int:
        n: int = self.store.available(self.peer, self.tx_purpose)
        return n


def _segments(refs: Sequence[Any]) -> list[Any]:
    from qkdnet.keystore import KeySegment

    return [KeySegment(r.block_id, r.offset, r.n_bits) for r in refs]
