"""File transfer over a SecureStream: key-budget check, SHA-256, resume, atomic rename.

Protocol inside the stream (one JSON line each way, then raw bytes)::

    sender   -> {"t": "offer", "name": "report.pdf", "size": N, "sha256": "…",
                 "progress": true}
    receiver -> {"t": "accept", "offset": K,     # K bytes of NAME.part already match
                 "progress": true}
    sender   -> bytes K … N, then end of stream
    receiver -> {"t": "got", "n": D}             # (if both said "progress") D bytes
                                                 # written, every PROGRESS_EVERY bytes
    receiver -> {"t": "done", "ok": true, "sha256": "…"}

The "got" lines are what the sender's progress bar counts: bytes the receiver has
*written*, not bytes handed to the node (which may wait minutes for key on a hop).

The receiver writes ``NAME.part`` beside the final name (with ``NAME.part.sha256``
recording which file it belongs to) and renames it only after the SHA-256 of the
whole file matches the offer, so nothing partial ever sits under the final name. A
transfer interrupted at any point resumes from the bytes already on disk when the
same file is offered again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from qkdnet.apps.stream import SecureStream
from qkdnet.errors import (
    ErrorCode,
    KeyExhausted,
    LocalProtocolError,
    QkdnetError,
    RemoteProtocolError,
)

SERVICE = "files"
CHUNK = 1 << 18
#: Key bits the hop-secured path spends per payload bit (pad, per-message tag key,
#: framing); measured in bench/apps, rounded up.
KEY_PER_BIT = 1.01

Progress = Callable[[int, int], None]  # (bytes done, total)
#: The receiver reports progress ("got") every this many bytes written.
PROGRESS_EVERY = 1 << 18


@dataclass
class TransferResult:
    """What a finished transfer did (no key material)."""

    name: str
    size: int
    sha256: str
    resumed_from: int
    sent_bytes: int
    verified: bool
    path: str = ""


def sha256_file(path: Path, limit: int | None = None) -> str:
    """Hex SHA-256 of a file (or of its first ``limit`` bytes)."""
    h = hashlib.sha256()
    left = limit
    with open(path, "rb") as f:
        while True:
            n = CHUNK if left is None else min(CHUNK, left)
            if n == 0:
                break
            block = f.read(n)
            if not block:
                break
            h.update(block)
            if left is not None:
                left -= len(block)
    return h.hexdigest()


@dataclass
class KeyBudget:
    """The key-budget check before a transfer."""

    needed_bits: int
    available_bits: int
    rate_bps: float | None

    @property
    def enough(self) -> bool:
        return self.available_bits >= self.needed_bits

    @property
    def wait_s(self) -> float | None:
        """Seconds of key distillation the shortfall needs (None: rate unknown)."""
        short = max(0, self.needed_bits - self.available_bits)
        if short == 0:
            return 0.0
        if not self.rate_bps:
            return None
        return short / self.rate_bps

    def message(self) -> str:
        mib = 8 * 1024 * 1024
        total = (self.needed_bits / self.rate_bps if self.rate_bps else None)
        eta = f"about {total:.0f} s at the current key rate" if total is not None \
            else "key rate unknown"
        return (f"needs {self.needed_bits / mib:.2f} MiB of key, "
                f"{self.available_bits / mib:.2f} MiB available, {eta}")


def key_budget(node: Any, n_bytes: int) -> KeyBudget:
    """Key needed for ``n_bytes`` on the first hop against what the node holds."""
    needed = int(8 * n_bytes * KEY_PER_BIT) + 1024
    available = 0
    rate = None
    try:
        status = node.status()  # a NodeClient returns what fetch_status() cached
    except Exception:
        status = {}
    if isinstance(status, dict):
        keys = status.get("key_bits") or {}
        link = status.get("link") or {}
        available = int(keys.get("to_hub", 0) or 0) if isinstance(keys, dict) else 0
        if isinstance(link, dict):
            rate = link.get("key_rate_bps")
    return KeyBudget(needed, available, float(rate) if rate else None)


async def _read_line(stream: SecureStream, buf: bytearray) -> dict[str, Any]:
    while b"\n" not in buf:
        if len(buf) > 65536:
            raise RemoteProtocolError("control line too long", ErrorCode.FRAME_TOO_LARGE)
        chunk = await stream.receive_some()
        if not chunk:
            raise RemoteProtocolError("stream ended during the transfer handshake",
                                      ErrorCode.PROTOCOL_VIOLATION)
        buf += chunk
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    try:
        obj = json.loads(line)
    except ValueError:
        raise RemoteProtocolError("malformed control line", ErrorCode.MALFORMED_FRAME) from None
    if not isinstance(obj, dict):
        raise RemoteProtocolError("malformed control line", ErrorCode.MALFORMED_FRAME)
    return obj


async def _write_line(stream: SecureStream, obj: dict[str, Any]) -> None:
    await stream.send_all(json.dumps(obj).encode() + b"\n")


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error that ended a nursery (not a Cancelled it caused)."""
    leaves = [e for e in _leaves(group) if not isinstance(e, trio.Cancelled)]
    first = leaves[0] if leaves else group
    first.__suppress_context__ = True  # the group is not news
    return first


def _leaves(err: BaseException) -> list[BaseException]:
    if isinstance(err, BaseExceptionGroup):
        return [leaf for sub in err.exceptions for leaf in _leaves(sub)]
    return [err]


async def send_file(stream: SecureStream, path: Path, *, progress: Progress | None = None,
                    name: str | None = None, delivered: Progress | None = None,
                    resuming: Callable[[int], None] | None = None) -> TransferResult:
    """Offer and send ``path`` on ``stream``; returns once the receiver verified it.

    ``progress(sent, total)`` follows the bytes handed to the stream;
    ``delivered(done, total)`` the bytes the receiver reports written (only a
    receiver that offers progress reports; else at the end); ``resuming(offset)`` is
    called once when the receiver already holds the first ``offset`` bytes.
    """
    path = Path(path)
    size = path.stat().st_size
    digest = await trio.to_thread.run_sync(sha256_file, path)
    fname = name or path.name
    await _write_line(stream, {"t": "offer", "name": fname, "size": size, "sha256": digest,
                               "progress": True})
    buf = bytearray()
    reply = await _read_line(stream, buf)
    if reply.get("t") != "accept":
        raise LocalProtocolError(f"receiver refused the file: {reply.get('reason', reply)}")
    offset = int(reply.get("offset", 0))
    if not 0 <= offset <= size:
        raise RemoteProtocolError("receiver asked for an impossible offset",
                                  ErrorCode.PROTOCOL_VIOLATION)
    if offset and resuming:
        resuming(offset)
    done = offset
    if progress:
        progress(done, size)
    if delivered:
        delivered(offset, size)
    result: dict[str, Any] = {}

    async def read_replies() -> None:
        # Concurrently with the sending: the receiver's "got" lines must not pile up.
        while True:
            line = await _read_line(stream, buf)
            if line.get("t") == "got":
                if delivered:
                    delivered(min(size, int(line.get("n", 0))), size)
                continue
            result.update(line)
            return

    try:
        async with trio.open_nursery() as nursery:
            if reply.get("progress") is True:
                nursery.start_soon(read_replies)
            async with await trio.open_file(path, "rb") as f:
                await f.seek(offset)
                while True:
                    block = await f.read(CHUNK)
                    if not block:
                        break
                    await stream.send_all(block)
                    done += len(block)
                    if progress:
                        progress(done, size)
            await stream.send_eof()
            if reply.get("progress") is not True:
                await read_replies()
    except BaseExceptionGroup as group:
        raise _first_error(group)  # noqa: B904 - "from None" would drop its __cause__
    ok = bool(result.get("ok")) and result.get("sha256") == digest
    if ok and delivered:
        delivered(size, size)
    return TransferResult(fname, size, digest, offset, size - offset, ok)


def _safe_name(name: str) -> str:
    base = os.path.basename(name.replace("\\", "/"))
    if base in ("", ".", "..") or base.startswith("."):
        raise RemoteProtocolError("offered file name is not a plain name",
                                  ErrorCode.PROTOCOL_VIOLATION)
    return base


async def receive_file(stream: SecureStream, into: Path, *,
                       progress: Progress | None = None) -> TransferResult:
    """Receive one offered file into folder ``into`` (resuming a matching .part)."""
    into = Path(into)
    into.mkdir(parents=True, exist_ok=True)
    buf = bytearray()
    offer = await _read_line(stream, buf)
    if offer.get("t") != "offer":
        raise RemoteProtocolError("expected a file offer", ErrorCode.PROTOCOL_VIOLATION)
    name = _safe_name(str(offer.get("name", "")))
    size, digest = int(offer["size"]), str(offer["sha256"])
    final = into / name
    part = into / (name + ".part")
    tag = into / (name + ".part.sha256")
    offset = 0
    if part.exists() and tag.exists() and tag.read_text().strip() == digest:
        offset = min(part.stat().st_size, size)
    else:
        part.unlink(missing_ok=True)
        tag.write_text(digest + "\n")
    report = offer.get("progress") is True
    await _write_line(stream, {"t": "accept", "offset": offset, "progress": report})
    done = offset
    reported = offset
    if progress:
        progress(done, size)
    with open(part, "ab") as f:
        f.truncate(offset)
        if buf:
            f.write(bytes(buf))
            done += len(buf)
        while True:
            chunk = await stream.receive_some(CHUNK)
            if not chunk:
                break
            if done + len(chunk) > size:
                raise RemoteProtocolError("sender sent more than it offered",
                                          ErrorCode.PROTOCOL_VIOLATION)
            f.write(chunk)
            done += len(chunk)
            if progress:
                progress(done, size)
            if report and done - reported >= PROGRESS_EVERY:
                reported = done
                await _write_line(stream, {"t": "got", "n": done})
        f.flush()
        os.fsync(f.fileno())
    got = await trio.to_thread.run_sync(sha256_file, part)
    ok = done == size and got == digest
    if ok:
        os.replace(part, final)
        tag.unlink(missing_ok=True)
    else:  # a corrupt .part must not be resumed from
        part.unlink(missing_ok=True)
        tag.unlink(missing_ok=True)
    await _write_line(stream, {"t": "done", "ok": ok, "sha256": got})
    await stream.send_eof()
    return TransferResult(name, size, digest, offset, done - offset, ok,
                          str(final) if ok else "")


def _progress_bar(console: Any, quiet: bool) -> Any:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )
    return Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                    TransferSpeedColumn(), TimeRemainingColumn(), console=console,
                    disable=quiet)


def _send_bar(console: Any, quiet: bool) -> Any:
    """Bytes delivered, the delivered (key-limited) rate, the key rate and its ETA."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
    return Progress("[progress.description]{task.description}", BarColumn(),
                    DownloadColumn(), "delivered", TransferSpeedColumn(),
                    "{task.fields[key]}", "{task.fields[eta]}", console=console,
                    disable=quiet)


def _clock(seconds: float) -> str:
    s = int(seconds + 0.5)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def send_eta(left_bytes: int, available_bits: int, rate_bps: float | None,
             speed: float | None) -> str:
    """The ETA text of ``qkdnet send``: key still to distil over the key rate, or (key
    in the pool) the delivered rate; the slower of the two when both are known."""
    short = max(0, int(8 * left_bytes * KEY_PER_BIT) - available_bits)
    guesses = []
    if rate_bps and short:
        guesses.append(short / rate_bps)
    if speed:
        guesses.append(left_bytes / speed)
    if not left_bytes:
        return "ETA 0:00:00"
    return f"ETA {_clock(max(guesses))}" if guesses else "ETA ?"


def _key_text(rate_bps: float | None) -> str:
    return f"key {rate_bps / 1000:.1f} kbit/s" if rate_bps else "key rate ?"


def _cause(err: BaseException) -> BaseException:
    """The qkdnet error behind a broken stream (e.g. KeyExhausted naming the hop)."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, QkdnetError):
            return seen
        seen = seen.__cause__
    return err


async def run_send_cli(node: Any, path: Path, peer: str, *, service: str = SERVICE,
                       force: bool = False, quiet: bool = False) -> dict[str, Any]:
    """``qkdnet send``: budget check, progress bar, verified result (as a dict).

    The bar counts bytes the receiver has written, its rate (limited by the key rate
    of the slower hop once the pools run dry), the first hop's key rate, and an ETA
    from the key still to distil. The send waits for key as long as key keeps
    arriving (``[routing] key_stall``).
    """
    from rich.console import Console

    from qkdnet.apps.api import open_secure_stream
    console = Console(stderr=True)
    fetch = getattr(node, "fetch_status", None)
    if fetch is not None:
        await fetch()
    size = path.stat().st_size
    budget = key_budget(node, size)
    if not quiet:
        console.print(f"key budget: {budget.message()}")
    if not budget.enough and not force:
        raise KeyExhausted(budget.needed_bits, budget.available_bits,
                           hop="this spoke -> hub (use --force to start anyway and wait "
                               "for key)")
    progress = _send_bar(console, quiet)
    state = {"delivered": 0, "rate": budget.rate_bps, "available": budget.available_bits}

    def show() -> None:
        task_obj = progress.tasks[task]
        progress.update(task, completed=state["delivered"], key=_key_text(state["rate"]),
                        eta=send_eta(size - int(state["delivered"] or 0),
                                     int(state["available"] or 0), state["rate"],
                                     task_obj.speed))

    def on_delivered(done: int, _total: int) -> None:
        state["delivered"] = done
        show()

    def on_resume(offset: int) -> None:
        if not quiet:
            console.print(f"resuming at {offset} bytes ({size - offset} bytes to send)")

    async def watch_key() -> None:
        while True:
            await trio.sleep(2.0)
            if fetch is not None:
                with contextlib.suppress(QkdnetError, OSError, trio.BrokenResourceError):
                    await fetch()
            now = key_budget(node, 0)
            state["rate"], state["available"] = now.rate_bps, now.available_bits
            show()

    try:
        with progress:
            task = progress.add_task(f"{path.name} -> {peer}", total=size, key="", eta="")
            show()
            stream = await open_secure_stream(peer, service, node=node)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(watch_key)
                    result = await send_file(stream, path, delivered=on_delivered,
                                             resuming=on_resume)
                    nursery.cancel_scope.cancel()
            finally:
                await stream.aclose()
    except BaseExceptionGroup as group:
        raise _cause(_first_error(group))  # noqa: B904 - keep its own __cause__
    except trio.BrokenResourceError as err:
        # The stream broke: say why in the node's words ("no key arrived on hop ...").
        cause = _cause(err)
        if cause is err:
            raise
        raise cause from None
    out = {"file": str(path), "to": peer, "bytes": size, "sha256": result.sha256,
           "resumed_from": result.resumed_from, "sent_bytes": result.sent_bytes,
           "verified": result.verified,
           # numbers, for scripts: bits of key needed and held, key rate, seconds short
           "budget": {"needed_bits": budget.needed_bits,
                      "available_bits": budget.available_bits,
                      "key_rate_bps": budget.rate_bps, "wait_s": budget.wait_s}}
    if not quiet:
        console.print(f"{'verified' if result.verified else 'NOT verified'}: {path.name} "
                      f"({size} bytes, SHA-256 {result.sha256[:16]}…"
                      + (f", resumed at {result.resumed_from}" if result.resumed_from else "")
                      + ")")
    return out


async def run_receive_cli(node: Any, into: Path, *, service: str = SERVICE, count: int = 0,
                          quiet: bool = False) -> dict[str, Any]:
    """``qkdnet receive``: serve the files service, one progress bar per file."""
    from functools import partial

    from rich.console import Console

    from qkdnet.apps.api import serve_secure
    console = Console(stderr=True)
    files: list[dict[str, Any]] = []
    done = trio.Event()
    progress = _progress_bar(console, quiet)

    async def handle(stream: SecureStream) -> None:
        task = progress.add_task("receiving", total=None)
        try:
            res = await receive_file(stream, into, progress=lambda d, t: progress.update(
                task, completed=d, total=t, description=f"<- {into.name}/"))
        except (trio.BrokenResourceError, RemoteProtocolError) as err:
            if not quiet:
                console.print(f"transfer interrupted: {err} (the .part file is kept; "
                              f"send again to resume)")
            return
        files.append({"name": res.name, "bytes": res.size, "sha256": res.sha256,
                      "verified": res.verified, "resumed_from": res.resumed_from,
                      "path": res.path})
        if not quiet:
            console.print(f"{'verified' if res.verified else 'REJECTED (hash mismatch)'}: "
                          f"{res.name} ({res.size} bytes)")
        if count and len(files) >= count:
            done.set()

    with progress:
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve_secure, handle, service, node=node))
            if not quiet:
                console.print(f"receiving files into {into} (service {service!r})")
            await done.wait()
            nursery.cancel_scope.cancel()
    return {"into": str(into), "files": files}


__all__ = ["KeyBudget", "KeyExhausted", "TransferResult", "key_budget", "receive_file",
           "send_file", "sha256_file"]
