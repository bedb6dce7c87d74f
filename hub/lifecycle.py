"""A daemon's lifecycle: one running copy per node, and parts that stop in order.

One copy per node
-----------------
A second ``qkdnet node`` (or ``qkdnet hub``) started with the same config would take
over the hub connection, the app socket and the control socket, and on its exit delete
the first copy's socket files. :func:`single_instance` prevents that: before a daemon
touches anything it takes an exclusive ``flock`` on ``<key store>.lock`` and writes its
process id there; a second copy finds the lock held and is refused with the first
copy's pid, having changed nothing.

The lock is the kernel's: it goes away with the process however the process ends
(even SIGKILL), so a stale lock file never blocks a restart. The file itself is left
in place on exit, since deleting a lock file races with the next copy taking it.

Stopping in order
-----------------
A spoke must end its link before it closes the hub connection, or a block in flight
tries to send on a closing connection. :func:`start_in_scope` starts a task the
usual way (``nursery.start``) but inside a cancel scope of its own, so the node can
end that one task first.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import trio

from qkdnet.errors import QkdnetError


class AlreadyRunning(QkdnetError):
    """Another process already runs this node (it holds the key store's lock)."""


def lock_path_for(keystore: Path) -> Path:
    """The lock file of the daemon whose key store is ``keystore``."""
    return keystore.with_name(keystore.name + ".lock")


@contextlib.contextmanager
def single_instance(keystore: Path, what: str) -> Iterator[Path]:
    """Hold the node's lock for the duration of the block, or raise ``AlreadyRunning``.

    ``what`` names the daemon in the refusal (``'node "alice"'``).
    """
    path = lock_path_for(Path(keystore))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            pid = f"pid {holder}" if holder.isdigit() else "another process"
            raise AlreadyRunning(
                f"{what} is already running ({pid} holds {path}); stop that copy first "
                "(a second copy would take over its connections and sockets)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the lock


async def start_in_scope(scope: trio.CancelScope, runner: Any, *args: Any,
                         task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED
                         ) -> None:
    """For ``nursery.start``: run ``runner(*args)`` (itself a start target) in ``scope``.

    If ``scope`` is cancelled before ``runner`` reports started, this reports it, so
    the ``nursery.start`` waiting for it returns instead of failing.
    """
    started: list[bool] = []

    class _Status:
        def started(self, value: Any = None) -> None:
            started.append(True)
            task_status.started(value)

    with scope:
        await runner(*args, task_status=_Status())
    if not started:
        task_status.started()


__all__ = ["AlreadyRunning", "lock_path_for", "single_instance", "start_in_scope"]
