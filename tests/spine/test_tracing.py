"""Tracing: the JSON-lines format, the key-material guard, logging prefixes and redaction,
and a traced key-store exchange whose every output is searched for the key bytes."""

from __future__ import annotations

import base64
import enum
import json
import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from qkdnet.errors import LocalProtocolError
from qkdnet.keystore import BlockMeta, KeyStore
from qkdnet.tracing import (
    NULL_TRACER,
    FileTracer,
    MemoryTracer,
    NodeLoggerAdapter,
    NullTracer,
    Public,
    Secret,
    TraceFolder,
    check_traceable,
    get_logger,
)


class Color(enum.IntEnum):
    RED = 1


def strict(token: str) -> object:
    raise AssertionError(f"non-standard JSON token {token}")


def read_lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line, parse_constant=strict) for line in path.read_text().splitlines()]


# ------------------------------------------------------------------------ format

def test_file_tracer_writes_header_and_qlog_style_events(tmp_path: Path) -> None:
    clock = iter([100.0, 101.5])
    path = tmp_path / "t.jsonl"
    with FileTracer(path, node="alice", session="7", clock=lambda: next(clock)) as tr:
        tr.event("link", "block_started", {"index": 3, "qber": 0.02, "ok": True,
                                           "code": Color.RED, "n": np.int64(5),
                                           "tag": Public(b"\x01\xff"), "xs": (1, 2)})
        tr.event("link", "block_done", {"bound": float("nan"), "lim": np.float64("inf")},
                 now=250.25)
    header, first, second = read_lines(path)
    assert header["node"] == "alice" and header["session"] == "7"
    assert header["reference_time"] == 100.0
    assert first == {"time": 101.5, "category": "link", "event": "block_started",
                     "data": {"index": 3, "qber": 0.02, "ok": True, "code": 1, "n": 5,
                              "tag": "01ff", "xs": [1, 2]}}
    assert set(second) == {"time", "category", "event", "data"}
    assert second["time"] == 250.25 and second["data"] == {"bound": "nan", "lim": "inf"}
    assert tr.written == 2


def test_trace_folder_opens_one_file_per_session(tmp_path: Path) -> None:
    folder = TraceFolder(tmp_path / "traces", node="hub")
    a, b = folder.session(1), folder.session("x/../y")
    assert folder.session(1) is a
    a.event("c", "e1")
    b.event("c", "e2")
    folder.close()
    files = sorted(p.name for p in folder.files())
    assert files == ["hub_1.jsonl", "hub_x_.._y.jsonl"]  # no path traversal via the name
    assert all(p.parent == tmp_path / "traces" for p in folder.files())
    disabled = TraceFolder.disabled()
    assert not disabled.enabled
    assert disabled.session(1) is NULL_TRACER


def test_null_tracer_records_nothing() -> None:
    assert not NULL_TRACER.enabled
    assert isinstance(NULL_TRACER, NullTracer)
    NULL_TRACER.event("c", "e", {"anything": b"even bytes are not looked at"})
    assert NULL_TRACER.written == 0


# ------------------------------------------------------------------------- guard

@pytest.mark.parametrize("value", [
    b"\x00" * 16, bytearray(16), memoryview(b"abc"), np.zeros(4, dtype=np.uint8),
    Secret(b"k" * 16), object(), {"nested": [1, {"deep": b"x"}]}, {1: "non-str key"},
])
def test_guard_refuses_key_shaped_values(value: object) -> None:
    tr = MemoryTracer()
    with pytest.raises(LocalProtocolError, match="data"):
        tr.event("c", "e", {"v": value})
    assert tr.events == [] and tr.refused == 1


def test_guard_error_names_the_path_but_not_the_value() -> None:
    with pytest.raises(LocalProtocolError) as info:
        check_traceable({"grant": {"segments": [1, 2], "data": b"\xde\xad\xbe\xef"}})
    assert "data.grant.data" in str(info.value)
    assert "deadbeef" not in str(info.value) and "\\xde" not in str(info.value)


def test_drop_mode_counts_and_writes_nothing(tmp_path: Path) -> None:
    tr = FileTracer(tmp_path / "t.jsonl", on_refused="drop")
    tr.event("c", "bad", {"k": b"secret!"})
    tr.event("c", "good", {"k": 1})
    tr.close()
    events = read_lines(tmp_path / "t.jsonl")[1:]
    assert [e["event"] for e in events] == ["good"]
    assert tr.refused == 1 and tr.written == 1


def test_secret_never_prints_and_cannot_be_pickled() -> None:
    s = Secret(bytes(range(16)))
    for text in (repr(s), str(s), f"{s}", f"{s!r}", "%s" % (s,)):  # noqa: UP031
        assert "000102" not in text and "\\x01" not in text
        assert "16 bytes" in text
    assert s.reveal() == bytes(range(16))
    assert s == Secret(bytes(range(16))) and s != Secret(bytes(16))
    with pytest.raises(TypeError):
        pickle.dumps(s)


# ----------------------------------------------------------------------- logging

def test_logger_adapter_prefixes_and_redacts(caplog: pytest.LogCaptureFixture) -> None:
    log = get_logger("qkdnet.test", "alice", 42)
    assert isinstance(log, NodeLoggerAdapter)
    with caplog.at_level(logging.DEBUG, logger="qkdnet.test"):
        log.info("block %d done", 3)
        log.debug("oops %s %r %s", b"\xca\xfe\xba\xbe", bytearray(b"\x01\x02"),
                  Secret(b"\x13\x37"))
        log.for_session(43).warning("other")
        get_logger("qkdnet.test", "hub").error("no session")
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs[0] == "[alice/42] block 3 done"
    assert msgs[1].startswith("[alice/42] oops <4 bytes redacted>")
    assert "cafebabe" not in msgs[1] and "\\xca" not in msgs[1] and "1337" not in msgs[1]
    assert msgs[2] == "[alice/43] other" and msgs[3] == "[hub] no session"
    assert caplog.records[0].node == "alice"  # type: ignore[attr-defined]
    assert caplog.records[0].session == 42  # type: ignore[attr-defined]


# ------------------------------------------------- a traced exchange, then a search

def needles(key: bytes) -> list[bytes]:
    """Ways key bytes could show up in text or binary output."""
    out = []
    for chunk in (key[i:i + 8] for i in range(0, len(key) - 7, 8)):
        out += [chunk, chunk.hex().encode(), chunk.hex().upper().encode(),
                repr(chunk)[2:-1].encode(), base64.b64encode(chunk)[:8]]
    return out


def test_traced_keystore_exchange_never_writes_key_material(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    trace_dir = tmp_path / "traces"
    a_folder = TraceFolder(trace_dir, node="alice")
    b_folder = TraceFolder(trace_dir, node="hub")
    secret = os.urandom(4096)
    data_key = os.urandom(4096)
    meta = BlockMeta("sess-9", 1.0, 1e-10, 1e-15, 500, 128, 0.03)
    handed_out: list[bytes] = [secret, data_key]
    with caplog.at_level(logging.DEBUG):
        alice = KeyStore(tmp_path / "alice.sqlite", tracer=a_folder.session("9"),
                         node="alice", lease_bits=1024)
        hub = KeyStore(tmp_path / "hub.sqlite", tracer=b_folder.session("9"), node="hub")
        alice.import_bootstrap("hub", secret, initiator=True)
        hub.import_bootstrap("alice", secret, initiator=False)
        alice.import_bootstrap("hub", secret, initiator=True)  # refused quietly, logged
        alice.add_block("hub", "data-tx", 9 << 32, data_key, 8 * len(data_key), meta)
        hub.add_block("alice", "data-rx", 9 << 32, data_key, 8 * len(data_key), meta)
        log = get_logger("qkdnet.test.exchange", "alice", 9)
        for n in (256, 1000, 8, 4096):
            grant = alice.reserve("hub", "data-tx", n)
            assert hub.take("alice", "data-rx", grant.segments) == grant.data
            tag = alice.reserve("hub", "auth-tx", 128, contiguous=True)
            assert hub.take("alice", "auth-rx", tag.segments) == tag.data
            handed_out += [grant.data, tag.data]
            # The mistakes a tired engineer makes: all must stay harmless.
            log.debug("grant %s tag %r", grant, tag)
            log.debug("raw %s %r", grant.data, tag.data)
            with pytest.raises(LocalProtocolError):
                a_folder.session("9").event("app", "oops", {"key": grant.data})
            with pytest.raises(LocalProtocolError):
                a_folder.session("9").event("app", "oops", {"key": Secret(grant.data)})
        for store, peer in ((alice, "hub"), (hub, "alice")):
            handed_out += [store.hash_key(peer, "tx"), store.hash_key(peer, "rx")]
            log.info("status %s", store.status())
        alice.close()
        hub.close()
    a_folder.close()
    b_folder.close()

    files = list(trace_dir.glob("*.jsonl"))
    assert len(files) == 2
    events = [e for f in files for e in read_lines(f)[1:]]
    kinds = {e["event"] for e in events}
    assert {"bootstrap_imported", "block_added", "lease", "reserve", "take"} <= kinds
    log_text = "\n".join(r.getMessage() for r in caplog.records)
    assert "[alice]" in log_text and "imported bootstrap" in log_text
    assert "<" in log_text and "bytes redacted>" in log_text
    outputs = [f.read_bytes() for f in files] + [log_text.encode()]
    outputs += [repr(r.__dict__).encode() for r in caplog.records]
    assert not leaks(outputs, handed_out)
    # The search itself works: a planted hex or raw copy is found.
    assert leaks([b"x " + handed_out[2].hex().encode()], [handed_out[2]])
    assert leaks([b"..." + handed_out[3][:9]], [handed_out[3]])


def leaks(outputs: list[bytes], keys: list[bytes]) -> bool:
    return any(needle in out for key in keys for needle in needles(key) for out in outputs)
