"""Captures: a real sniffer (tcpdump) on loopback, `qkdnet pcap summary`, and tshark
with our Lua dissector, on real exchanges — not only on self-written pcaps."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import trio.testing
from testkit import free_port

from qkdnet.auth import FrameAuthenticator, MemoryTagKeys
from qkdnet.errors import RemoteProtocolError
from qkdnet.pcap import PcapRecorder, summarize
from qkdnet.sideband import BasicNode, PeerAborted, connect_sideband, serve_basic_node
from qkdnet.wire import DEFAULT_PORT, MsgType, Ping

ROOT = Path(__file__).resolve().parents[2]
LUA = ROOT / "spec" / "wireshark" / "qkdnet.lua"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="packet capture on lo needs root")
needs_tcpdump = pytest.mark.skipif(shutil.which("tcpdump") is None,
                                   reason="tcpdump is not installed (CI installs it)")
needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None,
                                  reason="tshark is not installed (CI installs it)")


async def _exchange(port: int, keys: MemoryTagKeys) -> None:
    """A real run: handshake, pings, one frame split, three coalesced, then a forgery."""
    chan = await connect_sideband("127.0.0.1", port, local_name="alice",
                                  auth=FrameAuthenticator(keys))
    await chan.ping()
    frame = chan.conn.send(Ping(nonce=0x51))
    for i in range(0, len(frame), 5):  # one frame over many segments
        await chan.send_raw(frame[i:i + 5])
        await trio.sleep(0.002)
    await chan.receive()
    await chan.send_raw(b"".join(chan.conn.send(Ping(nonce=n)) for n in (1, 2, 3)))
    for _ in range(3):
        await chan.receive()
    bad = bytearray(chan.conn.send(Ping(nonce=0xBAD)))
    bad[-1] ^= 1
    await chan.send_raw(bytes(bad))
    with pytest.raises((PeerAborted, RemoteProtocolError)):
        await chan.run()


async def _node(nursery: trio.Nursery, keys: MemoryTagKeys, port: int = 0,
                pcap: PcapRecorder | None = None) -> BasicNode:
    node: BasicNode = await nursery.start(functools.partial(
        serve_basic_node, "hub", lambda name: FrameAuthenticator(keys), port, pcap=pcap))
    return node


def _check_summary(s: dict, *, sniffed: bool) -> None:  # type: ignore[type-arg]
    assert len(s["sessions"]) == 1
    assert set(s["sessions"][0]["names"].values()) == {"alice", "hub"}
    assert s["per_type"]["HELLO"]["frames"] == 1 and s["per_type"]["HELLO_ACK"]["frames"] == 1
    assert s["per_type"]["PING"]["frames"] == 6  # ping(), split, 3 coalesced, forged
    assert s["per_type"]["PONG"]["frames"] == 5
    assert s["auth_failures"] == 1
    assert s["aborts"][0]["code"] == "AUTHENTICATION_FAILED"
    assert s["sessions"][0]["end"] == "aborted (AUTHENTICATION_FAILED)"
    assert s["undecodable_bytes"] == 0


async def _until_capture_settles(pcap: Path, quiet: float = 2.0, limit: float = 20.0) -> None:
    """Wait until the capture file stops growing.

    Without --immediate-mode (whose few ring slots drop packets under load) libpcap
    hands packets over in blocks, at the latest after about a second; stopping tcpdump
    earlier throws the block being filled away, and with it the end of the run.
    """
    with trio.move_on_after(limit):
        size, still = -1, 0.0
        while still < quiet:
            now = pcap.stat().st_size if pcap.exists() else 0
            still = still + 0.1 if now == size else 0.0
            size = now
            await trio.sleep(0.1)


def _stop_tcpdump(proc: subprocess.Popen[bytes], err: Path, *, lossless: bool = True) -> None:
    """Stop tcpdump cleanly (SIGINT flushes); ``lossless``: insist it dropped nothing.

    A capture of all of lo's TCP also sees whatever else runs on the machine, so the
    link-run test does not insist (its own assertions say whether its frames are whole).
    """
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=10)
    stats = err.read_text()
    if lossless:
        assert re.search(r"^0 packets dropped by kernel$", stats, re.M), stats




@pytest.mark.root
@needs_root
@needs_tcpdump
async def test_tcpdump_capture_of_loopback_run(nursery: trio.Nursery, tmp_path: Path) -> None:
    a, b = MemoryTagKeys.pair()
    port = free_port()
    pcap = tmp_path / "sniffed.pcap"
    err = tmp_path / "tcpdump.err"
    with err.open("wb") as err_file:
        proc = subprocess.Popen(["tcpdump", "-i", "lo", "-U", "-n", "-B", "65536",
                                 "-w", str(pcap), f"tcp port {port}"], stderr=err_file)
    try:
        with trio.fail_after(10):
            while b"listening on" not in err.read_bytes():
                assert proc.poll() is None, err.read_text()
                await trio.sleep(0.05)
        node = await _node(nursery, b, port)
        await _exchange(node.port, a)
        await _until_capture_settles(pcap)
    finally:
        _stop_tcpdump(proc, err)
    s = summarize(pcap)
    _check_summary(s, sniffed=True)
    # The CLI gives the same numbers.
    out = subprocess.run([sys.executable, "-m", "qkdnet", "pcap", "summary", str(pcap),
                          "--json"], capture_output=True, check=True)
    cli = json.loads(out.stdout)
    assert cli["per_type"] == s["per_type"] and cli["auth_failures"] == 1
    text = subprocess.run([sys.executable, "-m", "qkdnet", "pcap", "summary", str(pcap)],
                          capture_output=True, check=True, text=True).stdout
    assert "AUTHENTICATION_FAILED" in text and "HELLO from alice" in text
    if shutil.which("tshark"):
        _check_tshark(pcap, port)


async def test_recorder_capture_summary(nursery: trio.Nursery, tmp_path: Path) -> None:
    """The node's own --pcap file tells the same story without root."""
    a, b = MemoryTagKeys.pair()
    recorder = PcapRecorder(tmp_path / "own.pcap")
    node = await _node(nursery, b, pcap=recorder)
    await _exchange(node.port, a)
    await trio.testing.wait_all_tasks_blocked()
    recorder.close()
    _check_summary(summarize(tmp_path / "own.pcap"), sniffed=False)


def _tshark(pcap: Path, port: int) -> str:
    cmd = ["tshark", "-X", f"lua_script:{LUA}", "-r", str(pcap), "-V"]
    if port != DEFAULT_PORT:
        cmd[1:1] = ["-d", f"tcp.port=={port},qkdnet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _check_tshark(pcap: Path, port: int) -> None:
    out = _tshark(pcap, port)
    if "qkdnet sideband" not in out:
        pytest.fail("tshark did not run the Lua dissector (Lua disabled for root? see "
                    "run_user_scripts_when_superuser in init.lua)")
    assert "qkdnet sideband, HELLO" in out and "node_name: alice" in out
    assert out.count("Connection nonce: ") >= 2  # HELLO and HELLO_ACK
    assert "node_name: hub" in out and "role: spoke (1)" in out
    assert "nonce: 0x0000000000000051" in out  # the frame split over many segments
    for n in (1, 2, 3):  # the three frames coalesced in one segment
        assert f"nonce: 0x000000000000000{n}" in out
    assert "Error code: AUTHENTICATION_FAILED (6)" in out
    assert "Tag (Poly1305, one-time padded):" in out


@needs_tshark
async def test_tshark_dissects_default_port_exchange(tmp_path: Path) -> None:
    """Real frames from two sans-I/O ends, recorded on the default port 7787."""
    from qkdnet.sideband import SidebandConnection
    from qkdnet.wire import Hello, HelloAck

    a, b = MemoryTagKeys.pair()
    client = SidebandConnection("alice", FrameAuthenticator(a), nonce=bytes(range(16)))
    server = SidebandConnection("hub", lambda n: FrameAuthenticator(b),
                                nonce=bytes(range(0xF0, 0x100)))
    recorder = PcapRecorder(tmp_path / "default.pcap")
    flow = recorder.flow(("10.1.0.2", 50000), ("10.1.0.1", DEFAULT_PORT), initiator=True)
    hello = client.send(Hello(node_name=b"alice", role=1))
    flow.sent(hello)
    server.receive_data(hello)
    ack = server.send(HelloAck(node_name=b"hub", role=2))
    flow.received(ack)
    client.receive_data(ack)
    big = client.send(Ping(nonce=0x51))
    flow.sent(big[:10])
    flow.sent(big[10:] + b"".join(client.send(Ping(nonce=n)) for n in (1, 2, 3)))
    flow.received(server.error_frame(RemoteProtocolError("forged", 6)))  # type: ignore[arg-type]
    flow.close()
    recorder.close()
    out = _tshark(tmp_path / "default.pcap", DEFAULT_PORT)
    assert "qkdnet sideband, HELLO" in out and "node_name: alice" in out
    assert "Connection nonce: 000102030405060708090a0b0c0d0e0f" in out
    assert "Connection nonce: f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff" in out
    for n in (1, 2, 3):
        assert f"nonce: 0x000000000000000{n}" in out
    assert "nonce: 0x0000000000000051" in out
    assert "Error code: AUTHENTICATION_FAILED (6)" in out and "reason: forged" in out
    assert int(MsgType.ERROR) == 3


@pytest.mark.slow
@pytest.mark.root
@needs_root
@needs_tcpdump
async def test_tcpdump_capture_of_a_real_link_run(tmp_path: Path) -> None:
    """What the link announces (QBER, parities disclosed, final key) read from a capture."""
    link_driver = pytest.importorskip("qkdnet.link.driver")
    from qkdnet.phy import presets

    pcap = tmp_path / "link.pcap"
    err = tmp_path / "tcpdump.err"
    with err.open("wb") as err_file:
        # The link's port is ephemeral: capture all of lo's TCP, pick the session by name.
        proc = subprocess.Popen(["tcpdump", "-i", "lo", "-U", "-n", "-B", "65536",
                                 "-w", str(pcap), "tcp"], stderr=err_file)
    try:
        with trio.fail_after(10):
            while b"listening on" not in err.read_bytes():
                assert proc.poll() is None, err.read_text()
                await trio.sleep(0.05)
        result = await link_driver.run_point_to_point(
            presets.get("snspd-metro"), 25.0, 1, 10_000_000, workdir=tmp_path, seed=3,
            config_overrides={"reconciliation": "ldpc"})
        await _until_capture_settles(pcap)
    finally:
        _stop_tcpdump(proc, err, lossless=False)
    (block,) = result.alice.blocks
    assert block.ell > 0
    s = summarize(pcap)
    ours = [x for x in s["sessions"] if set(x["names"].values()) == {"alice", "bob"}]
    assert ours and ours[0]["end"] == "closed"
    assert ours[0]["link_sessions"] == [f"{result.session_id:08x}"]
    # Other tests may share lo; with one link run in this capture these are ours.
    assert s["final_key_bits"] >= block.ell
    assert block.qber_est in s["qber"]
    # The block was reconciled by LDPC syndromes (Cascade's parities would be counted
    # in leaked_bits).
    assert block.reconciliation == "ldpc"
    assert s["per_type"]["LINK_LDPC_SYNDROME"]["frames"] >= 1
    if shutil.which("tshark"):
        # lo's 64 KiB MTU makes 65,549-byte frames, longer than scapy's default record
        # limit: the summary must still count exactly the frames the dissector finds.
        port = int(ours[0]["server"].rsplit(":", 1)[1])
        out = subprocess.run(
            ["tshark", "-X", f"lua_script:{LUA}", "-d", f"tcp.port=={port},qkdnet",
             "-r", str(pcap), "-Y", f"tcp.port=={port}", "-T", "fields", "-e",
             "qkdnet.type", "-E", "occurrence=a", "-E", "aggregator=,"],
            capture_output=True, text=True, timeout=120, check=True).stdout
        tshark_frames = sum(len(line.split(",")) for line in out.split() if line)
        assert tshark_frames == ours[0]["frames"]
