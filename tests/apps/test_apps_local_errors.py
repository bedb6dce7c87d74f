"""The node's local API server survives bad clients: each gets an error reply and
its connection closed; the server keeps serving everyone else."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio

from qkdnet.apps import local
from qkdnet.apps.local import NodeClient, serve_local
from qkdnet.apps.wire import AppMsgType
from qkdnet.hub.node import embedded_network


async def _exchange(sock: Path, raw: bytes) -> list[dict[str, Any]]:
    """Send ``raw`` on a fresh connection; the JSON replies until the server closes."""
    stream = await trio.open_unix_socket(str(sock))
    conn = local._Framed(stream)
    replies = []
    with trio.fail_after(10):  # the server must close the connection, not hang
        await stream.send_all(raw)
        while (got := await conn.receive()) is not None:
            assert got[0] == AppMsgType.LOCAL_REPLY
            replies.append(json.loads(got[2]))
    await stream.aclose()
    return replies


def _request(payload: bytes, mtype: int = AppMsgType.LOCAL_REQUEST) -> bytes:
    return local._frame(mtype, payload)


BAD = [
    pytest.param(_request(b"[" * 100_000), "nested too deeply", id="deep-list"),
    pytest.param(_request(b'{"a":' * 50_000), "nested too deeply", id="deep-object"),
    pytest.param(_request(b"\xff\xfe not json"), "malformed JSON", id="not-json"),
    pytest.param(_request(b"[1, 2]"), "malformed JSON", id="not-an-object"),
    pytest.param(_request(b'{"op": "relay_key"}'), "bad request (KeyError)", id="no-peer"),
    pytest.param(_request(b'{"op": "relay_key", "peer": "bob", "n_bits": "many"}'),
                 "bad request (ValueError)", id="bad-int"),
    pytest.param(_request(b'{"op": "open", "peer": [], "service": {}}' + b"x"),
                 "malformed JSON", id="trailing-garbage"),
    pytest.param(_request(b"", AppMsgType.LOCAL_DATA), "expected a JSON request",
                 id="data-first"),
    pytest.param(b"\xff\xff\xff\xff" + bytes(60), "local frame of", id="huge-length"),
]


@pytest.mark.parametrize(("raw", "why"), BAD)
async def test_bad_request_gets_an_error_and_the_server_carries_on(
        tmp_path: Path, raw: bytes, why: str) -> None:
    async with embedded_network(["alice"], tmp_path / "net", prefill_key=1 << 12) as net, \
            trio.open_nursery() as nursery:
        sock = await nursery.start(serve_local, net["alice"], tmp_path / "a" / "node.sock")
        replies = await _exchange(sock, raw)
        assert len(replies) == 1, replies
        assert replies[0]["ok"] is False and replies[0]["kind"] == "request"
        assert why in replies[0]["error"]
        # Still serving: a well-formed request on a new connection is answered.
        status = await NodeClient(sock).fetch_status()
        assert status["name"] == "alice"
        nursery.cancel_scope.cancel()


async def test_many_bad_clients_at_once_and_a_good_one(tmp_path: Path) -> None:
    async with embedded_network(["alice"], tmp_path / "net", prefill_key=1 << 12) as net, \
            trio.open_nursery() as nursery:
        sock = await nursery.start(serve_local, net["alice"], tmp_path / "a" / "node.sock")
        results: list[list[dict[str, Any]]] = []

        async def bad(raw: bytes) -> None:
            results.append(await _exchange(sock, raw))

        async def hang_up_mid_frame() -> None:
            stream = await trio.open_unix_socket(str(sock))
            await stream.send_all(_request(b'{"op": "status"}')[:10])
            await stream.aclose()

        async with trio.open_nursery() as clients:
            for p in BAD * 3:
                clients.start_soon(bad, p.values[0])
                clients.start_soon(hang_up_mid_frame)
        assert len(results) == 3 * len(BAD)
        assert all(r and r[0]["kind"] == "request" for r in results)
        assert (await NodeClient(sock).fetch_status())["connected"]
        nursery.cancel_scope.cancel()


async def test_a_server_bug_costs_one_connection(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with embedded_network(["alice"], tmp_path / "net", prefill_key=1 << 12) as net, \
            trio.open_nursery() as nursery:
        node = net["alice"]
        sock = await nursery.start(serve_local, node, tmp_path / "a" / "node.sock")
        real_status = node.status

        def broken_status() -> dict[str, Any]:  # a fault no real input provokes
            raise RuntimeError("bug")

        monkeypatch.setattr(node, "status", broken_status)
        replies = await _exchange(sock, _request(b'{"op": "status"}'))
        assert replies == [{"ok": False, "error": "internal error", "kind": "internal"}]
        monkeypatch.setattr(node, "status", real_status)
        assert (await NodeClient(sock).fetch_status())["name"] == "alice"
        nursery.cancel_scope.cancel()
