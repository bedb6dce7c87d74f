"""What the command line says about an error: one line, a kind and an exit code.

:func:`describe_error` is the single place that turns an exception raised by a
command into the line the user reads. trio wraps an error raised in a nursery into an
exception group (with ``Cancelled`` siblings from the tasks it cancelled), so the group
is opened first and the error that started it is chosen by :func:`primary_error`:
Ctrl-C before a qkdnet error, before an ``OSError``, before a broken connection, a
timeout or a key store (SQLite) error, before anything else. Only that last kind (an
exception no part of qkdnet raises on purpose) is an "internal error … please report
it".

``OSError`` gets words for the cases users meet (a busy port, a missing file, a
directory where a file belongs, a refused connection), with the command's own
listening address when its arguments name one.
"""

from __future__ import annotations

import argparse
import errno
import json
import sys
from collections.abc import Iterator
from typing import Any

from qkdnet.errors import Interrupted, QkdnetError


def leaves(err: BaseException) -> Iterator[BaseException]:
    """The exceptions inside (possibly nested) exception groups, in order."""
    if isinstance(err, BaseExceptionGroup):
        for sub in err.exceptions:
            yield from leaves(sub)
    else:
        yield err


def _is_cancelled(err: BaseException) -> bool:
    trio = sys.modules.get("trio")
    return trio is not None and isinstance(err, trio.Cancelled)


def _is_broken_connection(err: BaseException) -> bool:
    trio = sys.modules.get("trio")
    return trio is not None and isinstance(err, trio.BrokenResourceError | trio.EndOfChannel)


def _is_timeout(err: BaseException) -> bool:
    trio = sys.modules.get("trio")
    return trio is not None and isinstance(err, trio.TooSlowError)


def _is_store_error(err: BaseException) -> bool:
    sqlite3 = sys.modules.get("sqlite3")
    return sqlite3 is not None and isinstance(err, sqlite3.Error)


def _rank(err: BaseException) -> int:
    if isinstance(err, KeyboardInterrupt | Interrupted):
        return 0
    if isinstance(err, SystemExit):
        return 1
    if isinstance(err, QkdnetError):
        return 2
    if isinstance(err, OSError):
        return 3
    if _is_broken_connection(err) or _is_timeout(err) or _is_store_error(err):
        return 4
    return 5


def primary_error(err: BaseException) -> BaseException:
    """The exception to report: the most telling leaf of ``err`` (see module doc)."""
    found = [e for e in leaves(err) if not _is_cancelled(e)]
    if not found:  # only cancellations: a scope was cancelled from outside
        return err
    return min(found, key=_rank)  # min() keeps the first of equal rank


def _listen_addresses(args: argparse.Namespace | None) -> list[str]:
    """The addresses a command's arguments say it listens on (for the busy-port line)."""
    if args is None:
        return []
    found = []
    for attr, flag in (("listen", "--listen"), ("quantum_listen", "--quantum-listen")):
        value = getattr(args, attr, None)
        if isinstance(value, str) and value:
            found.append(f"{flag} {value}")
    return found


def describe_os_error(err: OSError, args: argparse.Namespace | None = None) -> str:
    """One line for an ``OSError``, in words, with the fix where there is one."""
    name = f"{err.filename}: " if getattr(err, "filename", None) else ""
    code = err.errno
    if code == errno.EADDRINUSE:
        where = _listen_addresses(args)
        at = f" ({', '.join(where)})" if where else ""
        return (f"address already in use{at}: another program is listening on that port; "
                "stop it, or choose another port")
    if code == errno.EADDRNOTAVAIL:
        return "cannot listen on that address: it is not an address of this machine"
    if code == errno.ECONNREFUSED:
        return f"{name}connection refused: nothing is listening there (is it running?)"
    if code == errno.ENOENT:
        return f"{name}no such file or directory"
    if code == errno.EISDIR:
        return f"{name}is a directory (give the path of a file)"
    if code == errno.ENOTDIR:
        return f"{name}a part of this path is not a directory"
    if code in (errno.EACCES, errno.EPERM):
        return f"{name}permission denied"
    if code == errno.ENOSPC:
        return f"{name}no space left on the device"
    text = err.strerror or str(err) or type(err).__name__
    return f"{name}{text}"


_PATH_ERRORS = frozenset({errno.ENOENT, errno.EISDIR, errno.ENOTDIR})


def describe_error(err: BaseException,
                   args: argparse.Namespace | None = None) -> tuple[str, str, int]:
    """``(message, kind, exit code)`` for an exception a command raised."""
    first = primary_error(err)
    if isinstance(first, KeyboardInterrupt):
        return "interrupted", "Interrupted", 130
    if isinstance(first, QkdnetError):
        return str(first), type(first).__name__, first.exit_code
    if isinstance(first, OSError):
        # A path the user gave that is missing or of the wrong kind: a usage error.
        usage = bool(getattr(first, "filename", None)) and first.errno in _PATH_ERRORS
        return describe_os_error(first, args), type(first).__name__, 2 if usage else 1
    if _is_broken_connection(first):
        detail = str(first) or "the other end went away"
        return f"connection lost: {detail}", type(first).__name__, 1
    if _is_timeout(first):
        return "timed out waiting for an answer (is the other end running and reachable?)", \
            "TooSlowError", 1
    if _is_store_error(first):  # disk full, I/O error, locked: the machine's, not ours
        return f"key store error: {first}", type(first).__name__, 1
    shown = f"{type(first).__name__}: {first}" if str(first) else type(first).__name__
    return (f"internal error: {shown} (run again with --verbose for the traceback, "
            "and please report it)", "InternalError", 1)


def report_json(message: str, kind: str, exit_code: int) -> None:
    """An error as one JSON object on stdout (what ``--json`` callers parse)."""
    out: dict[str, Any] = {"ok": False, "error": {"message": message, "kind": kind,
                                                  "exit_code": exit_code}}
    sys.stdout.write(json.dumps(out, sort_keys=True) + "\n")
    sys.stdout.flush()


__all__ = ["describe_error", "describe_os_error", "leaves", "primary_error", "report_json"]
