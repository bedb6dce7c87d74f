"""Emulated PHYs in worker processes: a small pool, each process hosting several links.

A hub emulates every spoke's fibre and detectors (:class:`~qkdnet.link.driver.
EmulatedPhy`).  In the hub's own process that numpy-heavy work shares one GIL with
the trio loop and every link's session, so the hub's links all wait on each other.
:class:`PhyWorkerPool` moves it into a few child processes; :meth:`PhyWorkerPool.
open_link` returns a :class:`WorkerPhy`, which a :class:`~qkdnet.link.driver.
LinkEndpoint` uses unchanged (it has ``params``, ``source`` and ``async arun``).

Theory of operation
-------------------
* **Processes.** Up to ``n_workers`` children run ``python -m qkdnet.link.phy_worker
  --fd N``, started lazily when a link is placed on them, each talking over one end of
  a socketpair (``pass_fds``; stdout/stderr stay free for warnings).  A child exits
  when its socket reaches EOF, i.e. when the pool closes it or the hub dies.
* **Placement.** An emulated channel is stateful from one block to the next (the
  slot high-water mark, and detector state where the PHY carries it over), so a link
  is pinned to one worker for its lifetime: the one hosting the fewest links when it
  opens.  A worker serves its requests one at a time, in order; links on different
  workers run in parallel.
* **Messages.** Length-prefixed pickles (8-byte big-endian length).  Requests:
  ``("open", req, link, recipe)``, ``("run", req, link, start, n)``, ``("close", link)``;
  replies ``(req, True, result)`` or ``(req, False, error type, message)``.  The result
  of ``run`` is the :class:`~qkdnet.phy.channel.Detections` that an in-process
  ``EmulatedPhy`` with the same recipe returns (the worker *is* one).  Only this
  process's own children ever send to it, so unpickling trusts what they send.
* **Failures.** If a worker dies, every request waiting on it fails with
  :class:`PhyWorkerError` (so the driver abandons just those blocks).  The next
  request on one of its links restarts the process and re-opens its links from their
  recipes, past the last slot each link used (detector state restarts, as on a new
  connection); slot ranges are never replayed.
* **Cancellation.** A cancelled :meth:`WorkerPhy.arun` forgets its request; the reply
  is dropped when it comes.  Its slot range counts as used.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import pickle
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

import trio

from qkdnet.errors import LocalProtocolError

log = logging.getLogger(__name__)

#: Replies bigger than this are unpickled in a worker thread, not in the trio thread.
_THREAD_UNPICKLE_BYTES = 1 << 20
_HEADER = 8
_MAX_MESSAGE = 1 << 40


class PhyWorkerError(LocalProtocolError):
    """A PHY worker process failed; the block that asked for detections is lost."""


def default_workers() -> int:
    """Worker processes for a hub: one per CPU core, at most four."""
    return max(1, min(4, os.cpu_count() or 1))


@dataclass
class _Recipe:
    """How to build a link's ``EmulatedPhy`` (and to rebuild it after a crash)."""

    params: Any
    km: float
    seed: int
    attack: Any
    noise_seed: int | None


@dataclass
class _Worker:
    index: int
    proc: Any = None
    sock: Any = None
    alive: bool = False
    #: link id -> the link (for a restart)
    links: dict[int, WorkerPhy] = field(default_factory=dict)
    #: request id -> (event, result box)
    pending: dict[int, tuple[trio.Event, list[Any]]] = field(default_factory=dict)
    send_lock: trio.Lock = field(default_factory=trio.Lock)
    start_lock: trio.Lock = field(default_factory=trio.Lock)
    exits: int = 0


class PhyWorkerPool:
    """Up to ``n_workers`` PHY worker processes (see the module docstring).

    Use as ``async with PhyWorkerPool() as pool: phy = await pool.open_link(...)``;
    leaving the block stops every worker.
    """

    def __init__(self, n_workers: int | None = None) -> None:
        self.n_workers = n_workers or default_workers()
        if self.n_workers < 1:
            raise ValueError("a PHY worker pool needs at least one worker")
        self._workers = [_Worker(i) for i in range(self.n_workers)]
        self._nursery: trio.Nursery | None = None
        self._next_req = 1
        self._next_link = 1
        self._closed = False

    def __repr__(self) -> str:
        live = sum(w.alive for w in self._workers)
        links = sum(len(w.links) for w in self._workers)
        return f"PhyWorkerPool({live}/{self.n_workers} workers, {links} links)"

    @property
    def pids(self) -> list[int]:
        """Process ids of the running workers."""
        return [w.proc.pid for w in self._workers if w.alive and w.proc is not None]

    async def __aenter__(self) -> PhyWorkerPool:
        self._cm = trio.open_nursery()
        self._nursery = await self._cm.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> bool | None:
        self._closed = True
        with trio.CancelScope(shield=True):
            for w in self._workers:
                await self._stop_worker(w)
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()
        return await self._cm.__aexit__(*exc)

    # -- links --------------------------------------------------------------------

    async def open_link(self, params: Any, km: float, *, seed: int = 0, attack: Any = None,
                        noise_seed: int | None = None) -> WorkerPhy:
        """A receiver PHY for one link, emulated in the least busy worker.

        The arguments are those of :class:`~qkdnet.link.driver.EmulatedPhy`; the
        attack, if any, must be picklable (a spec string is).
        """
        from qkdnet.phy.source import AliceSource

        if self._closed or self._nursery is None:
            raise PhyWorkerError("the PHY worker pool is not running")
        worker = min(self._workers, key=lambda w: (len(w.links), w.index))
        link = WorkerPhy(self, worker, self._next_link,
                         _Recipe(params, float(km), seed, attack, noise_seed),
                         AliceSource(params, seed))
        self._next_link += 1
        worker.links[link.link_id] = link
        try:
            await self._ensure_started(worker)
            await self._request(worker, ("open", link.link_id, link._recipe_for_worker()))
        except BaseException:
            worker.links.pop(link.link_id, None)
            raise
        return link

    # -- plumbing -----------------------------------------------------------------

    async def _ensure_started(self, w: _Worker) -> None:
        async with w.start_lock:
            if w.alive:
                return
            if self._closed or self._nursery is None:
                raise PhyWorkerError("the PHY worker pool is not running")
            parent, child = socket.socketpair()
            try:
                w.proc = await trio.lowlevel.open_process(
                    [sys.executable, "-m", "qkdnet.link.phy_worker", "--fd",
                     str(child.fileno())], pass_fds=(child.fileno(),),
                    stdin=subprocess.DEVNULL)
            except BaseException:
                parent.close()
                raise
            finally:
                child.close()
            w.sock = trio.socket.from_stdlib_socket(parent)
            w.alive = True
            self._nursery.start_soon(self._reader, w, w.sock)
            log.debug("PHY worker %d started (pid %d)", w.index, w.proc.pid)
            # A restart: rebuild its links past the slots they have used.
            for link in list(w.links.values()):
                if link._opened:
                    await self._send(w, ("open", 0, link.link_id, link._recipe_for_worker()))

    async def _request(self, w: _Worker, msg: tuple[Any, ...]) -> Any:
        """Send ``msg`` (its second field becomes the request id) and await the reply."""
        req = self._next_req
        self._next_req += 1
        event = trio.Event()
        box: list[Any] = []
        w.pending[req] = (event, box)
        try:
            await self._send(w, (msg[0], req, *msg[1:]))
            await event.wait()
        finally:
            w.pending.pop(req, None)
        ok, *rest = box[0]
        if not ok:
            kind, text = rest
            raise PhyWorkerError(f"PHY worker {w.index}: {kind}: {text}")
        return rest[0]

    async def _send(self, w: _Worker, msg: tuple[Any, ...]) -> None:
        data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
        async with w.send_lock:
            if not w.alive:
                raise PhyWorkerError(f"PHY worker {w.index} is not running")
            try:
                await _send_all(w.sock, data)
            except OSError as err:
                raise PhyWorkerError(f"PHY worker {w.index} is gone "
                                     f"({type(err).__name__})") from None

    async def _reader(self, w: _Worker, sock: Any) -> None:
        try:
            while True:
                data = await _recv_message(sock)
                if data is None:
                    break
                if len(data) > _THREAD_UNPICKLE_BYTES:
                    msg = await trio.to_thread.run_sync(pickle.loads, data)
                else:
                    msg = pickle.loads(data)
                req, *reply = msg
                waiter = w.pending.get(req)
                if waiter is not None:
                    waiter[1].append(reply)
                    waiter[0].set()
                elif req == 0 and not reply[0]:
                    log.warning("PHY worker %d could not rebuild a link: %s: %s",
                                w.index, reply[1], reply[2])
        except (OSError, trio.ClosedResourceError):
            pass            # the worker hung up, or the pool closed the socket
        except Exception as err:     # a garbled reply: treat the worker as failed
            log.error("PHY worker %d sent a bad reply: %s", w.index, type(err).__name__)
        finally:
            # Cancelled: the pool is shutting down with its owner; not a crash to report.
            stopping = trio.current_effective_deadline() == float("-inf")
            with trio.CancelScope(shield=True):
                await self._worker_died(w, sock, stopping=stopping)

    async def _worker_died(self, w: _Worker, sock: Any, *, stopping: bool = False) -> None:
        if w.sock is not sock:
            return
        w.alive = False
        sock.close()
        code = None
        if w.proc is not None:
            with trio.move_on_after(2), contextlib.suppress(OSError):
                code = await w.proc.wait()
        if not (self._closed or stopping):
            w.exits += 1
            log.warning("PHY worker %d (pid %s) exited (code %s); restarting it for its "
                        "next block", w.index, getattr(w.proc, "pid", "?"), code)
        for event, box in list(w.pending.values()):
            box.append((False, "PhyWorkerError",
                        f"the worker process exited (code {code}) before answering"))
            event.set()

    async def _stop_worker(self, w: _Worker) -> None:
        proc, sock = w.proc, w.sock
        w.alive = False
        if sock is not None:
            sock.close()
        if proc is None:
            return
        # An idle worker exits at EOF at once; one busy with a block would only see
        # the EOF when it answers, and emulated pulses are worth nothing to keep.
        with trio.move_on_after(0 if w.pending else 1):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
            with trio.move_on_after(5):
                await proc.wait()


class WorkerPhy:
    """One link's receiver PHY, emulated in a :class:`PhyWorkerPool` worker.

    Has what :class:`~qkdnet.link.driver.LinkEndpoint` and the hub glue use of an
    ``EmulatedPhy``: ``params``, ``km``, ``source`` (Alice's source, same seed) and
    ``await arun(start_slot, n_slots)`` -> Detections.
    """

    def __init__(self, pool: PhyWorkerPool, worker: _Worker, link_id: int, recipe: _Recipe,
                 source: Any) -> None:
        self._pool = pool
        self._worker = worker
        self.link_id = link_id
        self._recipe = recipe
        self.params = recipe.params
        self.km = recipe.km
        self.source = source
        self._next_slot = 0
        self._opened = False
        self._closed = False

    def __repr__(self) -> str:
        return (f"WorkerPhy(link {self.link_id} on worker {self._worker.index}, "
                f"{self.params.name!r}, km={self.km})")

    @property
    def worker_pid(self) -> int | None:
        """The pid of the process emulating this link (None while it is down)."""
        w = self._worker
        return w.proc.pid if w.alive and w.proc is not None else None

    def _recipe_for_worker(self) -> dict[str, Any]:
        self._opened = True
        r = self._recipe
        # A rebuilt link starts at slot 0 in the new worker; this side refuses ranges
        # before the last one used, so none is replayed.
        return {"params": r.params, "km": r.km, "seed": r.seed, "attack": r.attack,
                "noise_seed": r.noise_seed}

    async def arun(self, start_slot: int, n_slots: int) -> Any:
        """Bob's detections for ``[start_slot, start_slot + n_slots)``."""
        if self._closed:
            raise PhyWorkerError("this PHY link is closed")
        if start_slot < self._next_slot:
            raise LocalProtocolError(
                f"slot range starts at {start_slot}, before the end of the previous one "
                f"({self._next_slot}): slots cannot be replayed")
        self._next_slot = start_slot + n_slots
        await self._pool._ensure_started(self._worker)
        return await self._pool._request(self._worker, ("run", self.link_id, start_slot,
                                                        n_slots))

    async def aclose(self) -> None:
        """Forget this link in its worker (the worker keeps running for the others)."""
        if self._closed:
            return
        self._closed = True
        w = self._worker
        w.links.pop(self.link_id, None)
        if w.alive:
            with contextlib.suppress(PhyWorkerError):
                await self._pool._send(w, ("close", self.link_id))


# -- framing --------------------------------------------------------------------------

async def _send_all(sock: Any, data: bytes) -> None:
    view = memoryview(len(data).to_bytes(_HEADER, "big") + data)
    while view:
        sent = await sock.send(view)
        view = view[sent:]


async def _recv_exactly(sock: Any, n: int) -> bytearray | None:
    buf = bytearray(n)
    view = memoryview(buf)
    pos = 0
    while pos < n:
        got = await sock.recv_into(view[pos:], n - pos)
        if got == 0:
            return None
        pos += got
    return buf


async def _recv_message(sock: Any) -> bytearray | None:
    header = await _recv_exactly(sock, _HEADER)
    if header is None:
        return None
    size = int.from_bytes(header, "big")
    if size > _MAX_MESSAGE:
        raise OSError("oversized PHY worker message")
    return await _recv_exactly(sock, size)


def _recv_blocking(sock: socket.socket) -> Any:
    def exactly(n: int) -> bytearray | None:
        buf = bytearray(n)
        view = memoryview(buf)
        pos = 0
        while pos < n:
            got = sock.recv_into(view[pos:], n - pos)
            if got == 0:
                return None
            pos += got
        return buf

    header = exactly(_HEADER)
    if header is None:
        return None
    body = exactly(int.from_bytes(header, "big"))
    return None if body is None else pickle.loads(body)


def _send_blocking(sock: socket.socket, msg: Any) -> None:
    data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(len(data).to_bytes(_HEADER, "big"))
    sock.sendall(data)


# -- the worker process ---------------------------------------------------------------

def serve(sock: socket.socket) -> None:
    """The worker's loop: answer requests on ``sock`` until EOF."""
    from qkdnet.link.driver import EmulatedPhy

    phys: dict[int, Any] = {}
    while True:
        msg = _recv_blocking(sock)
        if msg is None:
            return
        op = msg[0]
        if op == "close":
            phys.pop(msg[1], None)
            continue
        req = msg[1]
        try:
            if op == "open":
                link, recipe = msg[2], dict(msg[3])
                phys[link] = EmulatedPhy(recipe.pop("params"), recipe.pop("km"), **recipe)
                result: Any = None
            elif op == "run":
                link, start, n = msg[2], msg[3], msg[4]
                if link not in phys:
                    raise LocalProtocolError(f"no link {link} in this worker")
                result = phys[link].run(start, n)
            else:
                raise LocalProtocolError(f"unknown request {op!r}")
        except Exception as err:  # the error goes back to the one block that asked
            _send_blocking(sock, (req, False, type(err).__name__, str(err)))
        else:
            _send_blocking(sock, (req, True, result))


def main(argv: list[str] | None = None) -> int:
    """``python -m qkdnet.link.phy_worker --fd N`` (started by :class:`PhyWorkerPool`)."""
    ap = argparse.ArgumentParser(description="qkdnet PHY worker (started by the hub)")
    ap.add_argument("--fd", type=int, required=True)
    args = ap.parse_args(argv)
    sock = socket.socket(fileno=args.fd)
    try:
        serve(sock)
    except (BrokenPipeError, ConnectionResetError):
        pass            # the pool went away: nothing left to answer
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["PhyWorkerError", "PhyWorkerPool", "WorkerPhy", "default_workers"]
