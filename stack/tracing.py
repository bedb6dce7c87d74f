"""Structured tracing (qlog-style JSON lines) and node/session-prefixed logging.

A :class:`Tracer` records protocol events as JSON lines, one object per line with the
keys ``time``, ``category``, ``event`` and ``data`` (in the spirit of qlog's JSON-SEQ
form, draft-ietf-quic-qlog-main-schema). Cores and adapters take a tracer as a
constructor argument; the default :data:`NULL_TRACER` does nothing and costs one
method call. :class:`TraceFolder` opens one :class:`FileTracer` per session, each
writing ``<folder>/<node>_<session>.jsonl`` whose first line is a header naming the
node, the session and the clock.

Key material must never reach a trace or a log. The guard is structural: a trace
event's ``data`` may hold only ``None``, ``bool``, ``int``, ``float``, ``str``, enums,
numpy scalars, :class:`Public` wrappers and lists/tuples/dicts of those. ``bytes``,
``bytearray``, ``memoryview``, numpy arrays and :class:`Secret` are refused: the
event is not written and :class:`~qkdnet.errors.LocalProtocolError` is raised (or,
with ``on_refused="drop"``, the event is dropped and counted in ``tracer.refused``).
A layer that wants to trace bytes that are genuinely public (a tag, a public seed, a
nonce) wraps them in :class:`Public`; key bits travel in :class:`Secret` (or in
objects such as ``KeyGrant`` whose ``repr`` hides them). Strings are not inspected:
never hex-encode key material into a ``str``.

:class:`NodeLoggerAdapter` prefixes log lines with ``[node/session]`` and replaces
bytes-like and :class:`Secret` arguments by a length-only placeholder, so a
``log.debug("got %s", key)`` mistake cannot leak the bits either.

Tracers are not thread-safe; use one per trio thread (the normal case).
"""

from __future__ import annotations

import enum
import hmac
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np

from qkdnet.errors import LocalProtocolError

__all__ = [
    "NULL_TRACER",
    "FileTracer",
    "MemoryTracer",
    "NodeLoggerAdapter",
    "NullTracer",
    "Public",
    "Secret",
    "TraceFolder",
    "Tracer",
    "check_traceable",
    "get_logger",
    "redact",
]

Clock = Callable[[], float]
OnRefused = Literal["raise", "drop"]


class Secret:
    """Key material (or anything derived from it) that must never be printed or traced.

    ``repr``/``str``/``format`` show only the length; the bytes come out only through
    :meth:`reveal`. Comparison is constant-time. A tracer refuses a ``Secret``.
    """

    __slots__ = ("_value",)

    def __init__(self, value: bytes | bytearray | memoryview) -> None:
        self._value = bytes(value)

    def reveal(self) -> bytes:
        """The wrapped bytes (the only way out; do not log the result)."""
        return self._value

    def __len__(self) -> int:
        return len(self._value)

    def __repr__(self) -> str:
        return f"Secret(<{len(self._value)} bytes redacted>)"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        # Hash only the length: equal secrets hash equal without exposing content.
        return hash((Secret, len(self._value)))

    def __reduce__(self) -> Any:
        raise TypeError("Secret objects cannot be pickled")


class Public:
    """Bytes explicitly marked safe to trace (a tag, a public seed, a nonce).

    Traced as a lowercase hex string. Wrapping key material in ``Public`` is a bug.
    """

    __slots__ = ("value",)

    def __init__(self, value: bytes | bytearray | memoryview) -> None:
        self.value = bytes(value)

    def __repr__(self) -> str:
        return f"Public({self.value.hex()})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Public):
            return NotImplemented
        return self.value == other.value

    def __hash__(self) -> int:
        return hash((Public, self.value))


_REFUSED_TYPES: tuple[type, ...] = (bytes, bytearray, memoryview, np.ndarray, Secret)


def check_traceable(value: object, path: str = "data") -> object:
    """Return ``value`` converted to plain JSON types, or raise if it may hold key bits.

    Raises :class:`LocalProtocolError` naming the offending path and type (never the
    value) for bytes-like objects, numpy arrays, :class:`Secret` and unknown types.
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, enum.Enum):
        inner = value.value
        return inner if isinstance(inner, int | str) else value.name
    if isinstance(value, int):
        return value
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        # JSON has no NaN/Infinity: keep the line parseable by strict readers.
        return float(value) if math.isfinite(value) else str(float(value))
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, Public):
        return value.value.hex()
    if isinstance(value, _REFUSED_TYPES):
        raise LocalProtocolError(
            f"trace value at {path} is {type(value).__name__}, which may hold key material; "
            "wrap public bytes in qkdnet.tracing.Public")
    if isinstance(value, Mapping):
        out: dict[str, object] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise LocalProtocolError(f"trace key at {path} is {type(k).__name__}, not str")
            out[k] = check_traceable(v, f"{path}.{k}")
        return out
    if isinstance(value, list | tuple):
        return [check_traceable(v, f"{path}[{i}]") for i, v in enumerate(value)]
    raise LocalProtocolError(
        f"trace value at {path} has type {type(value).__name__}, which a trace cannot hold")


class Tracer:
    """Base tracer: records events; subclasses decide where they go.

    ``event(category, event, data, now=None)`` records one event. ``now`` is the
    caller's time in seconds (sans-I/O cores pass theirs); when omitted the tracer's
    clock is read. ``enabled`` lets callers skip building expensive ``data``.
    """

    enabled: bool = True

    def __init__(self, *, clock: Clock = time.monotonic, on_refused: OnRefused = "raise") -> None:
        self.clock = clock
        self.on_refused: OnRefused = on_refused
        #: Events refused by the key-material guard (only grows with ``on_refused="drop"``).
        self.refused = 0
        #: Events written.
        self.written = 0

    def event(self, category: str, event: str, data: Mapping[str, object] | None = None,
              *, now: float | None = None) -> None:
        """Record one event; refuses ``data`` that may hold key material (see module doc)."""
        try:
            clean = check_traceable(dict(data) if data else {})
        except LocalProtocolError:
            self.refused += 1
            if self.on_refused == "raise":
                raise
            return
        record = {"time": self.clock() if now is None else float(now), "category": category,
                  "event": event, "data": clean}
        self._write(record)
        self.written += 1

    def _write(self, record: dict[str, object]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Flush and release resources (idempotent)."""

    def __enter__(self) -> Tracer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NullTracer(Tracer):
    """A tracer that records nothing and checks nothing (the default everywhere)."""

    enabled = False

    def __init__(self) -> None:
        super().__init__()

    def event(self, category: str, event: str, data: Mapping[str, object] | None = None,
              *, now: float | None = None) -> None:
        return None

    def _write(self, record: dict[str, object]) -> None:
        return None


#: The shared do-nothing tracer; pass it where no tracing is wanted.
NULL_TRACER = NullTracer()


class MemoryTracer(Tracer):
    """Keeps events in ``self.events`` (for tests); applies the same guard as files."""

    def __init__(self, *, clock: Clock = time.monotonic, on_refused: OnRefused = "raise") -> None:
        super().__init__(clock=clock, on_refused=on_refused)
        self.events: list[dict[str, object]] = []

    def _write(self, record: dict[str, object]) -> None:
        self.events.append(record)

    def named(self, event: str) -> list[dict[str, object]]:
        """The recorded events whose ``event`` field equals ``event``."""
        return [e for e in self.events if e["event"] == event]


class FileTracer(Tracer):
    """Writes one JSON object per line to a file; the first line is a header."""

    def __init__(self, path: str | os.PathLike[str], *, node: str = "", session: str = "",
                 clock: Clock = time.monotonic, on_refused: OnRefused = "raise",
                 flush_every: int = 64) -> None:
        super().__init__(clock=clock, on_refused=on_refused)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] | None = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        self._flush_every = max(1, flush_every)
        header = {"qlog_format": "JSON-lines", "qlog_version": "qkdnet-0.1", "node": node,
                  "session": session, "reference_time": self.clock(),
                  "wall_time": time.time(), "time_unit": "s"}
        self._file.write(json.dumps(header) + "\n")
        self._file.flush()

    def _write(self, record: dict[str, object]) -> None:
        if self._file is None:
            raise LocalProtocolError(f"tracer for {self.path.name} is closed")
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        if (self.written + 1) % self._flush_every == 0:
            self._file.flush()

    def flush(self) -> None:
        """Write buffered events to the file."""
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


class TraceFolder:
    """Opens one :class:`FileTracer` per session inside ``folder`` (created on demand).

    ``TraceFolder(folder, node=...)`` when tracing is on; :meth:`disabled` gives a folder
    whose :meth:`session` returns :data:`NULL_TRACER`, so callers need no ``if``.
    """

    def __init__(self, folder: str | os.PathLike[str] | None, *, node: str = "node",
                 clock: Clock = time.monotonic, on_refused: OnRefused = "raise") -> None:
        self.folder = Path(folder) if folder is not None else None
        self.node = node
        self.clock = clock
        self.on_refused: OnRefused = on_refused
        self._open: dict[str, FileTracer] = {}

    @classmethod
    def disabled(cls) -> TraceFolder:
        """A folder that traces nothing."""
        return cls(None)

    @property
    def enabled(self) -> bool:
        """Whether sessions opened here write files."""
        return self.folder is not None

    def session(self, session: str | int) -> Tracer:
        """The tracer of ``session`` (opened on first use, shared afterwards)."""
        if self.folder is None:
            return NULL_TRACER
        name = str(session)
        tracer = self._open.get(name)
        if tracer is None:
            safe = _UNSAFE_NAME.sub("_", f"{self.node}_{name}")
            tracer = FileTracer(self.folder / f"{safe}.jsonl", node=self.node, session=name,
                                clock=self.clock, on_refused=self.on_refused)
            self._open[name] = tracer
        return tracer

    def close_session(self, session: str | int) -> None:
        """Close one session's file."""
        tracer = self._open.pop(str(session), None)
        if tracer is not None:
            tracer.close()

    def close(self) -> None:
        """Close every open session file."""
        for tracer in self._open.values():
            tracer.close()
        self._open.clear()

    def files(self) -> Iterator[Path]:
        """The trace files in the folder."""
        if self.folder is not None and self.folder.is_dir():
            yield from sorted(self.folder.glob("*.jsonl"))


def redact(value: object) -> object:
    """``value`` with bytes-like/array/Secret objects replaced by a length-only text."""
    if isinstance(value, Secret):
        return repr(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes redacted>"
    if isinstance(value, np.ndarray):
        return f"<array {value.dtype}{list(value.shape)} redacted>"
    return value


class NodeLoggerAdapter(logging.LoggerAdapter[logging.Logger]):
    """Prefixes messages with ``[node/session]`` and redacts bytes-like arguments."""

    def __init__(self, logger: logging.Logger, node: str, session: str | int | None = None
                 ) -> None:
        super().__init__(logger, {"node": node, "session": session})
        self.node = node
        self.session = session
        self.prefix = f"[{node}/{session}] " if session is not None else f"[{node}] "

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]
                ) -> tuple[Any, MutableMapping[str, Any]]:
        extra = dict(kwargs.get("extra") or {})
        extra.setdefault("node", self.node)
        extra.setdefault("session", self.session)
        kwargs["extra"] = extra
        return f"{self.prefix}{redact(msg)}", kwargs

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        super().log(level, msg, *(redact(a) for a in args), **kwargs)

    def for_session(self, session: str | int) -> NodeLoggerAdapter:
        """An adapter for the same node and logger with another session."""
        return NodeLoggerAdapter(self.logger, self.node, session)


def get_logger(name: str, node: str, session: str | int | None = None) -> NodeLoggerAdapter:
    """``logging.getLogger(name)`` wrapped in a :class:`NodeLoggerAdapter`."""
    return NodeLoggerAdapter(logging.getLogger(name), node, session)
