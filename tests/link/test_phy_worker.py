"""PHY emulation in worker processes (qkdnet.link.phy_worker): real child processes.

The worker PHY must give the detections the in-process EmulatedPhy gives for the same
seeds, survive a worker crash with an error for the block in flight only, and leave no
process behind.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import numpy as np
import pytest
import trio

from qkdnet.errors import LocalProtocolError
from qkdnet.link.driver import EmulatedPhy
from qkdnet.link.phy_worker import PhyWorkerError, PhyWorkerPool
from qkdnet.phy import presets

PARAMS = presets.get("snspd-metro")
BLOCK = 2_000_000


def _same(a: Any, b: Any) -> None:
    assert (a.start_slot, a.n_slots) == (b.start_slot, b.n_slots)
    assert len(a) == len(b) > 0
    assert np.array_equal(a.slots, b.slots)
    assert np.array_equal(a.basis, b.basis)
    assert np.array_equal(a.bit, b.bit)
    if a.eve is None or b.eve is None:
        assert a.eve is None and b.eve is None
    else:
        assert np.array_equal(a.eve.slots, b.eve.slots)
        assert np.array_equal(a.eve.bits, b.eve.bits)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it has exited all the same.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_worker_detections_equal_in_process_emulation() -> None:
    """Three links on one worker (one with an eavesdropper), consecutive blocks each:
    every block's detections equal the in-process EmulatedPhy's, bit for bit."""
    recipes = [dict(km=10.0, seed=11, noise_seed=1234),
               dict(km=25.0, seed=12, noise_seed=None),
               dict(km=10.0, seed=13, noise_seed=99, attack="intercept-resend:0.5")]

    async def main() -> None:
        async with PhyWorkerPool(1) as pool:
            links = [await pool.open_link(PARAMS, **r) for r in recipes]   # type: ignore[arg-type]
            local = [EmulatedPhy(PARAMS, r.pop("km"), **r) for r in recipes]  # type: ignore[arg-type]
            assert len(pool.pids) == 1 and links[0].worker_pid == links[2].worker_pid
            assert links[0].params == PARAMS
            assert np.array_equal(links[0].source.lookup(np.arange(5, dtype=np.uint64)).bit,
                                  local[0].source.lookup(np.arange(5, dtype=np.uint64)).bit)
            start = 10**12
            for block in range(3):
                s = start + block * BLOCK
                for remote, here in zip(links, local, strict=True):
                    _same(await remote.arun(s, BLOCK), here.run(s, BLOCK))

    trio.run(main)


def test_links_run_in_parallel_on_two_workers_and_refuse_replayed_slots() -> None:
    async def main() -> None:
        async with PhyWorkerPool(2) as pool:
            a = await pool.open_link(PARAMS, 10.0, seed=1, noise_seed=5)
            b = await pool.open_link(PARAMS, 10.0, seed=2, noise_seed=6)
            assert a.worker_pid != b.worker_pid and len(pool.pids) == 2
            got: dict[str, Any] = {}

            async def run(name: str, phy: Any) -> None:
                got[name] = await phy.arun(0, BLOCK)

            async with trio.open_nursery() as n:
                n.start_soon(run, "a", a)
                n.start_soon(run, "b", b)
            _same(got["a"], EmulatedPhy(PARAMS, 10.0, seed=1, noise_seed=5).run(0, BLOCK))
            _same(got["b"], EmulatedPhy(PARAMS, 10.0, seed=2, noise_seed=6).run(0, BLOCK))
            with pytest.raises(LocalProtocolError, match="cannot be replayed"):
                await a.arun(BLOCK - 1, 10)
            _same(await a.arun(BLOCK * 10, BLOCK),
                  EmulatedPhy(PARAMS, 10.0, seed=1, noise_seed=5).run(BLOCK * 10, BLOCK))
            # A PHY error in the worker comes back as an error for that request only
            # (the range counts as used, as in EmulatedPhy); the worker carries on.
            with pytest.raises(PhyWorkerError, match=r"ConfigError: .*out of bounds"):
                await a.arun(2**62, 10)
            _same(await b.arun(BLOCK, BLOCK),
                  EmulatedPhy(PARAMS, 10.0, seed=2, noise_seed=6).run(BLOCK, BLOCK))
            c = await pool.open_link(PARAMS, 10.0, seed=3, noise_seed=9)
            assert c.worker_pid == a.worker_pid
            _same(await c.arun(0, BLOCK),
                  EmulatedPhy(PARAMS, 10.0, seed=3, noise_seed=9).run(0, BLOCK))

    trio.run(main)


def test_worker_crash_fails_the_block_in_flight_only() -> None:
    """SIGKILL the worker while a block is in flight: that arun fails with a clear
    error, the link on the other worker is untouched, and the crashed link's next
    block runs in a restarted worker with the detections in-process emulation gives."""
    # The worker is stopped (SIGSTOP) before the block is sent, so the kill always
    # lands while the block is in flight, however fast the emulation is.
    big, far = 60_000_000, 10.0

    async def main() -> None:
        async with PhyWorkerPool(2) as pool:
            a = await pool.open_link(PARAMS, far, seed=21, noise_seed=7)
            b = await pool.open_link(PARAMS, 10.0, seed=22, noise_seed=8)
            victim = a.worker_pid
            assert victim is not None and victim != b.worker_pid
            errors: list[BaseException] = []

            async def long_block() -> None:
                try:
                    await a.arun(0, big)
                except PhyWorkerError as err:
                    errors.append(err)

            os.kill(victim, signal.SIGSTOP)
            async with trio.open_nursery() as n:
                n.start_soon(long_block)
                await trio.sleep(0.3)
                os.kill(victim, signal.SIGKILL)
                # The other worker's link keeps working meanwhile.
                _same(await b.arun(0, BLOCK),
                      EmulatedPhy(PARAMS, 10.0, seed=22, noise_seed=8).run(0, BLOCK))
            assert len(errors) == 1 and "exited" in str(errors[0])
            assert "-9" in str(errors[0])
            assert not _alive(victim)
            # Next block of the same link: a new worker process, correct detections.
            s = big + 1000
            _same(await a.arun(s, BLOCK),
                  EmulatedPhy(PARAMS, far, seed=21, noise_seed=7).run(s, BLOCK))
            assert a.worker_pid not in (None, victim)
            # The restarted worker refuses nothing it should not: the slots of the
            # failed block stay used on this side.
            with pytest.raises(LocalProtocolError, match="cannot be replayed"):
                await a.arun(0, 10)

    trio.run(main)


def test_pool_shuts_down_its_workers() -> None:
    pids: list[int] = []

    async def main() -> None:
        async with PhyWorkerPool(2) as pool:
            for seed in range(3):
                phy = await pool.open_link(PARAMS, 10.0, seed=seed)
                await phy.arun(0, 100_000)
            pids.extend(pool.pids)
            assert len(pids) == 2 and all(_alive(p) for p in pids)
            await phy.aclose()
            with pytest.raises(PhyWorkerError, match="closed"):
                await phy.arun(10**6, 10)

    trio.run(main)
    assert pids and not any(_alive(p) for p in pids)


def test_pool_cancelled_midway_stops_workers() -> None:
    """Cancelled while a block is in flight (a hub stopping): no worker survives."""
    pids: list[int] = []

    async def main() -> None:
        with trio.CancelScope() as scope:
            async with PhyWorkerPool(1) as pool, trio.open_nursery() as n:
                phy = await pool.open_link(PARAMS, 10.0, seed=3)
                pids.extend(pool.pids)
                n.start_soon(phy.arun, 0, 600_000_000)
                await trio.sleep(0.3)
                scope.cancel()
        assert scope.cancelled_caught

    trio.run(main)
    assert pids and not any(_alive(p) for p in pids)
