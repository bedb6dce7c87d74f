"""Chat and file transfer between spokes through a real hub."""

from __future__ import annotations

import hashlib
import os
from functools import partial
from pathlib import Path

import pytest
import trio

from qkdnet.apps.api import open_secure_stream, serve_secure
from qkdnet.apps.chat import ChatEvent, chat_exchange
from qkdnet.apps.stream import SecureStream
from qkdnet.apps.transfer import key_budget, receive_file, send_file
from qkdnet.hub.node import embedded_network

pytestmark = pytest.mark.slow


async def test_chat_lines_arrive_with_receipts(tmp_path: Path) -> None:
    async with embedded_network(["alice", "bob"], tmp_path, prefill_key=1 << 20) as net:
        bob_saw: list[str] = []

        async def bob(stream: SecureStream) -> None:
            def note(ev: ChatEvent) -> None:
                if ev.kind == "message":
                    bob_saw.append(ev.text)
            await chat_exchange(stream, ["hi alice"], note, expect_incoming=2)

        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve_secure, bob, "chat", node=net["bob"]))
            alice_saw: list[str] = []
            stream = await open_secure_stream("bob", "chat", node=net["alice"])
            session = await chat_exchange(
                stream, ["hello bob", "how is the key rate?"],
                lambda ev: alice_saw.append(ev.text) if ev.kind == "message" else None,
                expect_incoming=1)
            await stream.aclose()
            nursery.cancel_scope.cancel()
    assert bob_saw == ["hello bob", "how is the key rate?"]
    assert alice_saw == ["hi alice"]
    assert session.delivered == {1, 2}


class SenderCrash(Exception):
    """The sending program dies mid-transfer."""


async def test_file_transfer_verifies_and_resumes(tmp_path: Path) -> None:
    src = tmp_path / "report.bin"
    src.write_bytes(os.urandom(700_000))
    into = tmp_path / "inbox"
    async with embedded_network(["alice", "carol"], tmp_path / "net",
                                prefill_key=16 << 20) as net:
        budget = key_budget(net["carol"], src.stat().st_size)
        assert budget.enough and "MiB of key" in budget.message()
        results = []

        async def receiver(stream: SecureStream) -> None:
            try:
                results.append(await receive_file(stream, into))
            except trio.BrokenResourceError:
                results.append(None)

        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve_secure, receiver, "files", node=net["alice"]))
            # 1st attempt: the sender dies after ~300 kB.
            stream = await open_secure_stream("alice", "files", node=net["carol"])
            seen = []

            def die_midway(done: int, total: int) -> None:
                seen.append(done)
                if done >= 300_000:
                    raise SenderCrash

            with pytest.raises(SenderCrash):
                await send_file(stream, src, progress=die_midway)
            await trio.aclose_forcefully(stream)
            with trio.fail_after(10):
                while not results:
                    await trio.sleep(0.01)
            assert results[0] is None
            assert not (into / "report.bin").exists()
            part = into / "report.bin.part"
            assert 0 < part.stat().st_size < 700_000
            # 2nd attempt resumes from what is on disk.
            stream = await open_secure_stream("alice", "files", node=net["carol"])
            sent = await send_file(stream, src)
            await stream.aclose()
            nursery.cancel_scope.cancel()
    assert sent.verified and sent.resumed_from > 0
    assert sent.sent_bytes == 700_000 - sent.resumed_from
    final = into / "report.bin"
    assert hashlib.sha256(final.read_bytes()).hexdigest() == sent.sha256
    assert not part.exists()
