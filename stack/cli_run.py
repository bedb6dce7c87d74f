"""Running a command's trio code with a clean Ctrl-C.

Theory of operation
-------------------
trio's own Ctrl-C handling raises ``KeyboardInterrupt`` inside whatever task happens
to run; the nurseries then wrap it in a group and ``finally`` blocks go on awaiting
(a graceful stream close waits for its peer), so a command either hangs on the first
press or prints a group traceback on the second. :func:`run_trio` instead catches
SIGINT with a signal receiver and *cancels* the command: every ``await`` in cleanup
code sees an ordinary cancellation and returns at once, and :func:`run_trio` raises
:class:`~qkdnet.errors.Interrupted`, which the CLI reports as one line with exit code
130.

Cancellation cannot stop a thread that blocks in a system call, and cleanup code can
be slow. So the first signal also arms a watchdog thread: if the command has not
ended after ``grace`` seconds, or if a second signal arrives, the process prints the
same one line, puts the terminal back as it found it and ends at once with exit code
130. Files are never left half-written under a final name by this: qkdnet writes
received files as ``NAME.part`` and renames them only once verified, and the key
store survives being killed at any instant.

Daemons pass ``stop_signals=(signal.SIGTERM,)``: such a signal cancels the same way
but :func:`run_trio` then returns ``None`` (a requested stop, exit code 0).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from qkdnet.errors import Interrupted

#: Seconds the command's cleanup may take after Ctrl-C before the process ends anyway.
GRACE = 0.7


def _saved_tty() -> Any:
    """The terminal settings of stdin, to restore if the process has to end abruptly."""
    try:
        import termios

        if sys.stdin is not None and sys.stdin.isatty():
            return termios.tcgetattr(sys.stdin.fileno())
    except (ImportError, OSError, ValueError):
        pass
    return None


class _Stop:
    """Which signal arrived, and the watchdog that ends the process if cleanup hangs."""

    def __init__(self, message: str) -> None:
        self.signum: int | None = None
        self.message = message
        self.tty = _saved_tty()
        self._timer: threading.Timer | None = None

    def arm(self, grace: float) -> None:
        self._timer = threading.Timer(grace, self.hard_exit)
        self._timer.daemon = True
        self._timer.start()

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def hard_exit(self) -> None:
        """End the process now: restore the terminal, one line, exit code 130."""
        if self.tty is not None:
            try:
                import termios

                termios.tcsetattr(sys.stdin.fileno(), termios.TCSANOW, self.tty)
            except (ImportError, OSError, ValueError):
                pass
        from qkdnet.cli import report_error

        try:
            report_error(Interrupted(self.message))
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(130)


def run_trio(async_fn: Callable[..., Awaitable[Any]], *args: Any,
             stop_signals: Iterable[int] = (), grace: float = GRACE,
             message: str = "interrupted") -> Any:
    """``trio.run(async_fn, *args)``; Ctrl-C cancels it and raises ``Interrupted``.

    ``message`` is what the user reads after Ctrl-C (``qkdnet: error: MESSAGE``).
    See the module docstring for the watchdog and ``stop_signals``.
    """
    import trio

    stop = _Stop(message)
    watched = {signal.SIGINT, *stop_signals}

    async def guarded() -> Any:
        body = trio.CancelScope()
        result = None
        with trio.open_signal_receiver(*watched) as receiver:
            async with trio.open_nursery() as nursery:
                async def watch() -> None:
                    async for signum in receiver:
                        if stop.signum is not None:  # pressed again: stop waiting
                            stop.hard_exit()
                        stop.signum = signum
                        body.cancel()
                        if signum == signal.SIGINT:  # a requested stop may take its time
                            stop.arm(grace)

                nursery.start_soon(watch)
                try:
                    with body:
                        result = await async_fn(*args)
                finally:
                    nursery.cancel_scope.cancel()
        return result

    try:
        result = trio.run(guarded)
    except BaseException:
        if stop.signum == signal.SIGINT:  # whatever the cancellation broke on its way out
            raise Interrupted(message) from None
        raise
    finally:
        stop.disarm()
    if stop.signum == signal.SIGINT:
        raise Interrupted(message)
    return result


__all__ = ["GRACE", "run_trio"]
