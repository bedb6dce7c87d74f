"""Hub and spokes in one process over real loopback sockets: delivery between every
pair, 50 spokes, bad actors, hub restart."""

from __future__ import annotations

import itertools
import random
import resource
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import trio

from qkdnet.auth import FrameAuthenticator, KeyStoreTagKeys, MemoryTagKeys
from qkdnet.errors import ErrorCode, KeyExhausted, RemoteProtocolError
from qkdnet.hub import wire as w
from qkdnet.hub.daemon import HubDaemon, HubSettings, read_control_socket
from qkdnet.hub.node import ChannelError, SpokeNode, SpokeSettings, embedded_network
from qkdnet.keystore import KeyStore
from qkdnet.sideband import PeerAborted, connect_sideband


async def _echo_all(node: SpokeNode, service: str, nursery: trio.Nursery) -> None:
    """Serve ``service``: every accepted channel echoes messages tagged with our name."""
    listener = node.listen(service)

    async def serve(ch) -> None:  # type: ignore[no-untyped-def]
        async for msg in ch:
            await ch.send_message(node.name.encode() + b":" + msg)

    async def accept_loop() -> None:
        async for ch in listener:
            nursery.start_soon(serve, ch)

    nursery.start_soon(accept_loop)


async def test_every_pair_in_order(tmp_path: Path) -> None:
    names = ["alice", "bob", "carol"]
    async with embedded_network(names, tmp_path, prefill_key=1 << 18) as net:
        async with trio.open_nursery() as nursery:
            for n in names:
                await _echo_all(net[n], "echo", nursery)

            async def talk(a: str, b: str) -> None:
                ch = await net[a].open_channel(b, "echo")
                sent = [f"{a}->{b} #{i} ".encode() + bytes([i]) * i for i in range(30)]
                for m in sent:
                    await ch.send_message(m)
                got = [await ch.receive_message() for _ in sent]
                assert got == [b.encode() + b":" + m for m in sent]
                await ch.wait_delivered()
                await ch.aclose()

            async with trio.open_nursery() as pairs:
                for a, b in itertools.permutations(names, 2):
                    pairs.start_soon(talk, a, b)
            nursery.cancel_scope.cancel()
        st = net.hub.status()
        assert st["totals"]["relayed"] == 6 * 30 * 2
        assert not any(sp["drops"] for sp in st["spokes"].values())


@pytest.mark.slow
async def test_fifty_spokes_random_peers(
        tmp_path: Path, record_property) -> None:  # type: ignore[no-untyped-def]
    names = [f"s{i:02d}" for i in range(50)]
    rng = random.Random(5)
    tracemalloc.start()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    before = tracemalloc.get_traced_memory()[0]
    received: dict[str, list[tuple[str, bytes]]] = {n: [] for n in names}
    async with embedded_network(names, tmp_path, prefill_key=1 << 15,
                                auth_bits=1 << 14) as net:
        per_spoke = (tracemalloc.get_traced_memory()[0] - before) / len(names)
        rss_per = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) * 1024 / 50
        print(f"\nmemory per spoke (hub + node + stores, python heap): "
              f"{per_spoke / 1024:.1f} KiB; max-RSS growth per spoke {rss_per / 1024:.1f} KiB")
        record_property("heap_KiB_per_spoke", round(per_spoke / 1024, 1))
        record_property("max_rss_KiB_per_spoke", round(rss_per / 1024, 1))
        assert per_spoke < 1 << 20, "more than 1 MiB of Python heap per spoke"
        tracemalloc.stop()
        async with trio.open_nursery() as nursery:
            for n in names:
                lst = net[n].listen("inbox")

                async def collect(n: str = n, lst=lst) -> None:  # type: ignore[no-untyped-def]
                    async for ch in lst:
                        async for msg in ch:
                            received[n].append((ch.peer, msg))

                nursery.start_soon(collect)
            plan = {n: rng.choice([m for m in names if m != n]) for n in names}

            async def send(n: str) -> None:
                ch = await net[n].open_channel(plan[n], "inbox")
                for i in range(5):
                    await ch.send_message(f"{n}->{plan[n]}:{i}".encode())
                await ch.wait_delivered()
                await ch.aclose()

            async with trio.open_nursery() as senders:
                for n in names:
                    senders.start_soon(send, n)
            nursery.cancel_scope.cancel()
    for n in names:
        for peer, msg in received[n]:
            assert msg.decode().startswith(f"{peer}->{n}:"), "misdelivered"
    expected = {n: sorted(f"{n}->{plan[n]}:{i}" for i in range(5)) for n in names}
    for n in names:
        mine = sorted(m.decode() for p, m in itertools.chain.from_iterable(
            received.values()) if p == n)
        assert mine == expected[n]
        in_order = [m.decode() for p, m in received[plan[n]] if p == n]
        assert in_order == sorted(in_order)


async def test_unknown_destination_and_missing_service(tmp_path: Path) -> None:
    async with embedded_network(["alice", "bob"], tmp_path, prefill_key=1 << 12) as net:
        with pytest.raises(ChannelError) as info:
            await net["alice"].open_channel("nobody", "echo")
        assert info.value.reason == w.HubReason.UNKNOWN_PEER and "nobody" in str(info.value)
        with pytest.raises(ChannelError) as info:
            await net["alice"].open_channel("bob", "not-listening")
        assert info.value.reason == w.HubReason.NO_SUCH_SERVICE
        assert net.hub.status()["spokes"]["alice"]["drops"] == {"unknown_peer": 1}


async def test_key_exhausted_names_the_hop(tmp_path: Path) -> None:
    async with embedded_network(["alice", "bob"], tmp_path, prefill_key=1 << 12,
                                key_wait=0.3) as net:
        lst = net["bob"].listen("sink")
        ch = await net["alice"].open_channel("bob", "sink")
        await lst.accept()
        # First hop: alice has only 4096 bits towards the hub.
        with pytest.raises(KeyExhausted) as info:
            await ch.send_message(b"x" * 1024)
        assert info.value.hop == "alice->hub"
        # Second hop: the hub has no key left towards bob.
        net.hub_store.reserve("bob", "data-tx", net.hub_store.available("bob", "data-tx"))
        await ch.send_message(b"y" * 16)
        with pytest.raises(KeyExhausted) as info:
            await ch.wait_delivered()
        assert info.value.hop == "hub->bob" and info.value.requested_bits == 128


async def test_forged_frames_are_dropped_and_hub_serves_others(tmp_path: Path) -> None:
    async with embedded_network(["alice", "bob"], tmp_path, prefill_key=1 << 14) as net:
        port = net.hub.port
        # 1. Garbage bytes.
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"\x00\x00\x00\x30" + b"\xff" * 60)
        with trio.fail_after(30):
            while await stream.receive_some(4096):
                pass
        # 2. A well-formed HELLO claiming to be alice with the wrong keys.
        fake = FrameAuthenticator(MemoryTagKeys.from_bootstrap(np.random.default_rng(1)
                                                               .bytes(4096), initiator=True))
        with pytest.raises((PeerAborted, RemoteProtocolError)):
            await connect_sideband("127.0.0.1", port, local_name="alice", auth=fake,
                                   timeout=3)
        # 3. Unknown spoke name: refused at the handshake (the hub has no keys for it,
        # so it may not be able to authenticate an ERROR frame and just hangs up).
        with pytest.raises((PeerAborted, RemoteProtocolError)):
            await connect_sideband("127.0.0.1", port, local_name="mallory", auth=fake,
                                   timeout=3)
        assert net.hub.counters["refused"] >= 1
        # The real alice is still connected and served.
        assert net["alice"].connected
        lst = net["bob"].listen("s")
        ch = await net["alice"].open_channel("bob", "s")
        inc = await lst.accept()
        await ch.send_message(b"still here")
        assert await inc.receive_message() == b"still here"


async def test_impersonation_is_refused(tmp_path: Path) -> None:
    async with embedded_network(["alice", "bob", "carol"], tmp_path, prefill_key=1 << 14,
                                extra_spokes=["eve"]) as net:
        # carol (authenticated as carol) sends DATA claiming to be alice.
        carol = net["carol"]
        await carol._send(w.HubData(src=b"alice", dst=b"bob", service=b"s", channel_id=1,
                                    msg_seq=0), carol._epoch)
        with trio.fail_after(30):
            while carol.connected:
                await trio.sleep(0.01)
        assert net.hub.status()["totals"]["impersonation"] == 1
        # carol reconnects on her own; alice and bob are unaffected.
        await carol.wait_connected(10)
        lst = net["bob"].listen("s")
        ch = await net["alice"].open_channel("bob", "s")
        inc = await lst.accept()
        assert inc.peer == "alice"
        await ch.send_message(b"genuine")
        assert await inc.receive_message() == b"genuine"
        # REGISTER with someone else's name, on eve's own authenticated connection.
        chan = await connect_sideband(
            "127.0.0.1", net.hub.port, local_name="eve",
            auth=FrameAuthenticator(KeyStoreTagKeys(net.stores["eve"], "hub")))
        await chan.send(w.HubRegister(spoke=b"bob"))
        ev = await chan.receive()
        assert ev.type == w.HubMsg.REGISTER_ACK and ev.body.status == w.HubReason.NAME_CONFLICT
        with pytest.raises(PeerAborted) as info:
            await chan.run()
        assert info.value.code == ErrorCode.NAME_CONFLICT


async def test_flooding_spoke_is_throttled_while_others_flow(tmp_path: Path) -> None:
    async with embedded_network(["alice", "bob", "carol", "mallory"], tmp_path,
                                prefill_key=1 << 16, queue_frames=16, key_wait=60) as net:
        # hub->bob has no key: mallory's frames to bob queue up at the hub (and wait
        # there: key_wait is long, so they are throttled, never timed out).
        net.hub_store.reserve("bob", "data-tx", net.hub_store.available("bob", "data-tx"))
        mallory = net["mallory"]
        store = net.stores["mallory"]

        async def flood() -> None:
            for i in range(200):
                g = store.reserve("hub", "data-tx", 8)
                await mallory._send(w.HubData(
                    src=b"mallory", dst=b"bob", service=b"s", channel_id=7, msg_seq=i,
                    segments=[w.KeySegmentField(block_id=s.block_id, offset=s.offset,
                                                n_bits=s.n_bits) for s in g.segments],
                    ciphertext=b"\x00"), mallory._epoch)

        lst = net["carol"].listen("chat")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(flood)
            ch = await net["alice"].open_channel("carol", "chat")
            inc = await lst.accept()
            for i in range(50):
                await ch.send_message(b"m%d" % i)
                assert await inc.receive_message() == b"m%d" % i
        # The hub counts a throttled frame when it sends the NACK; mallory counts it
        # when the NACK arrives: wait for both sides, not just the hub's.
        with trio.fail_after(30):
            while net.hub.status()["spokes"]["mallory"]["drops"].get("throttled", 0) < 150 \
                    or mallory.counters["nacks"] < 150:
                await trio.sleep(0.02)
        st = net.hub.status()
        assert st["spokes"]["alice"]["drops"] == {}
        assert mallory.connected  # throttled, not disconnected


@pytest.mark.slow
async def test_hub_restart_keeps_pools_and_spokes_reconnect(tmp_path: Path) -> None:
    from qkdnet.hub.node import prefill_pair

    names = ["alice", "bob"]
    for n in names:
        (tmp_path / f"{n}.bootstrap").write_bytes(np.random.default_rng().bytes(4096))
    hub_store = KeyStore(tmp_path / "hub.keys")
    stores = {n: KeyStore(tmp_path / f"{n}.keys") for n in names}
    for n in names:
        secret = (tmp_path / f"{n}.bootstrap").read_bytes()
        hub_store.import_bootstrap(n, secret, initiator=False)
        stores[n].import_bootstrap("hub", secret, initiator=True)
        prefill_pair(hub_store, "hub", stores[n], n, 1 << 18, auth_bits=1 << 18)
    hub_store.close()
    with trio.socket.socket() as s:
        await s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = HubSettings(name="hub", keystore=tmp_path / "hub.keys", port=port,
                           spokes={n: None for n in names},
                           control_socket=tmp_path / "hub.sock")
    nodes = {n: SpokeNode(SpokeSettings(name=n, hub_name="hub", keystore=tmp_path / f"{n}.keys",
                                        hub_port=port, reconnect_max=0.2), store=stores[n])
             for n in names}
    async with trio.open_nursery() as outer:
        hub_scope = trio.CancelScope()

        async def run_hub(task_status=trio.TASK_STATUS_IGNORED) -> None:  # type: ignore[no-untyped-def]
            with hub_scope:
                await HubDaemon(settings).run(task_status=task_status)

        await outer.start(run_hub)
        async with nodes["alice"].running(), nodes["bob"].running():
            await nodes["alice"].wait_connected()
            await nodes["bob"].wait_connected()
            lst = nodes["bob"].listen("s")
            ch = await nodes["alice"].open_channel("bob", "s")
            inc = await lst.accept()
            await ch.send_message(b"before")
            assert await inc.receive_message() == b"before"
            st = await read_control_socket(tmp_path / "hub.sock")
            key_before = st["spokes"]["bob"]["key_bits"]["hub_to_spoke"]
            hub_scope.cancel()                     # the hub goes away
            with trio.fail_after(30), pytest.raises(ChannelError) as info:
                while True:  # until the spoke has noticed (however loaded the machine)
                    await ch.send_message(b"during")
                    await trio.sleep(0.01)
            assert info.value.reason == w.HubReason.PEER_DISCONNECTED
            hub_scope = trio.CancelScope()
            await outer.start(run_hub)             # restarted on the same store file
            await nodes["alice"].wait_connected(10)
            await nodes["bob"].wait_connected(10)
            ch2 = await nodes["alice"].open_channel("bob", "s")
            inc2 = await lst.accept()
            await ch2.send_message(b"after")
            assert await inc2.receive_message() == b"after"
            st = await read_control_socket(tmp_path / "hub.sock")
            # The pool survived the restart; only the old lease (<= 64 Kbit, burned by
            # design when a process stops) and what "after" used are gone.
            assert st["spokes"]["bob"]["key_bits"]["hub_to_spoke"] >= key_before - (1 << 16)
            assert st["spokes"]["bob"]["key_bits"]["hub_to_spoke"] > 0
            # Nothing was delivered twice: the next message after "after" is the marker
            # (channels are in order, so a duplicate would have come first).
            await ch2.send_message(b"marker")
            assert await inc2.receive_message() == b"marker"
            assert nodes["bob"].counters["duplicates_dropped"] == 0
        outer.cancel_scope.cancel()
    for st_ in stores.values():
        st_.close()


async def test_hub_pcap_records_hub_frames(tmp_path: Path) -> None:
    from qkdnet.pcap import summarize

    pcap = tmp_path / "hub.pcap"
    async with embedded_network(["alice", "bob"], tmp_path, prefill_key=1 << 12,
                                hub_pcap=pcap) as net:
        lst = net["bob"].listen("s")
        ch = await net["alice"].open_channel("bob", "s")
        inc = await lst.accept()
        await ch.send_message(b"recorded")
        assert await inc.receive_message() == b"recorded"
        await ch.wait_delivered()
    summary = summarize(pcap)
    assert summary["per_type"]["HubData"]["frames"] == 2      # in from alice, out to bob
    assert summary["per_type"]["HubRegister"]["frames"] == 2
    assert {n for s in summary["sessions"] for n in s["names"].values()} == {
        "alice", "bob", "hub"}
    assert b"recorded" not in pcap.read_bytes()  # only ciphertext on the wire
    # A fresh process (nothing imported but the CLI) names the hub's frames too.
    import json
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "qkdnet", "pcap", "summary", str(pcap),
                          "--json"], capture_output=True, text=True, check=True, timeout=120)
    assert json.loads(out.stdout)["per_type"]["HubData"]["frames"] == 2
