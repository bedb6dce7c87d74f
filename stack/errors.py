"""The qkdnet error hierarchy.

Every error a user can see derives from :class:`QkdnetError` and carries a message fit
to show them. Following h11, protocol errors come in two kinds: a
:class:`LocalProtocolError` means *we* (or the caller of our API) broke the protocol;
a :class:`RemoteProtocolError` means the peer sent something bad, and carries the
error code to send back before closing. No message here may ever contain key
material: callers pass counts, lengths and identifiers, never bits.
"""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    """Error codes carried in sideband ERROR frames (spec/protocol.md, "Error codes")."""

    NO_ERROR = 0
    PROTOCOL_VIOLATION = 1
    MALFORMED_FRAME = 2
    UNSUPPORTED_VERSION = 3
    UNKNOWN_MESSAGE_TYPE = 4
    FRAME_TOO_LARGE = 5
    AUTHENTICATION_FAILED = 6
    REPLAY_OR_REORDER = 7
    KEY_EXHAUSTED = 8
    LINK_ABORTED = 9
    UNKNOWN_PEER = 10
    NAME_CONFLICT = 11
    TIMEOUT = 12
    INTERNAL_ERROR = 13
    THROTTLED = 14


class QkdnetError(Exception):
    """Base class of every qkdnet error; ``str(err)`` is a message fit for a user."""

    #: Process exit code the CLI uses for this kind of error (2: usage/config, 1: runtime).
    exit_code: int = 1


class ConfigError(QkdnetError):
    """A configuration file, preset or parameter is invalid.

    ``source`` names the file (or ``"parameters"``), ``key`` the offending key and
    ``expected`` what would have been accepted.
    """

    exit_code = 2

    def __init__(self, message: str, *, source: str | None = None, key: str | None = None,
                 expected: str | None = None) -> None:
        self.source = source
        self.key = key
        self.expected = expected
        parts = []
        if source:
            parts.append(source)
        if key:
            parts.append(key)
        prefix = ": ".join(parts)
        text = f"{prefix}: {message}" if prefix else message
        if expected:
            text += f" (expected {expected})"
        super().__init__(text)


class LocalProtocolError(QkdnetError):
    """We, or the caller of a qkdnet API, tried to do something the protocol forbids."""


class RemoteProtocolError(QkdnetError):
    """The peer sent something the protocol forbids; the connection must be closed.

    ``code`` is the :class:`ErrorCode` to send back in the ERROR frame.
    """

    def __init__(self, message: str, code: ErrorCode = ErrorCode.PROTOCOL_VIOLATION) -> None:
        self.code = code
        super().__init__(message)


class AuthenticationError(RemoteProtocolError):
    """A sideband frame failed its Wegman–Carter tag check (or was replayed/reordered)."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.AUTHENTICATION_FAILED) -> None:
        super().__init__(message, code)


class KeyExhausted(QkdnetError):
    """A key pool holds fewer bits than were asked for."""

    def __init__(self, requested_bits: int, available_bits: int, *, pool: str = "",
                 hop: str = "") -> None:
        self.requested_bits = requested_bits
        self.available_bits = available_bits
        self.pool = pool
        self.hop = hop
        where = f" in pool {pool}" if pool else ""
        via = f" on hop {hop}" if hop else ""
        super().__init__(
            f"key exhausted{via}: asked for {requested_bits} bits, "
            f"{available_bits} available{where}"
        )


class KeyReuseError(LocalProtocolError):
    """Key bits that were already consumed were asked for again (never allowed)."""


class LinkAborted(QkdnetError):
    """A QKD link block was aborted; ``reason`` is a short machine-readable word."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"link block aborted: {reason}" + (f" ({detail})" if detail else ""))


class Interrupted(QkdnetError):
    """The user interrupted a command (Ctrl-C, SIGINT); it stopped cleanly.

    The CLI reports it as one line and exit code 130 (128 + SIGINT), as shells do.
    """

    exit_code = 130

    def __init__(self, message: str = "interrupted") -> None:
        super().__init__(message)
