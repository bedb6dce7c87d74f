"""Hub and three spokes as separate OS processes: on loopback, and across network
namespaces joined by a bridge with a capture on the hub's interface."""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from testkit import free_port, write_prefilled_network

HERE = Path(__file__).resolve().parent
QKDNET = [sys.executable, "-m", "qkdnet"]
SPOKES = ["alice", "bob", "carol"]
COUNT = 25




def _setup(folder: Path, hub_host: str, listen_host: str, port: int) -> None:
    """Config files, bootstrap secrets and prefilled (test-only) key stores."""
    write_prefilled_network(folder, SPOKES, port, hub_host=hub_host, listen_host=listen_host)


def _check_results(folder: Path) -> None:
    for name in SPOKES:
        result = json.loads((folder / f"{name}.json").read_text())
        for peer in SPOKES:
            if peer == name:
                continue
            want = [f"{peer}->{name} #{i}" + "." * (i % 50) for i in range(COUNT)]
            assert result["received"][peer] == want, f"{peer}->{name} not intact/in order"


def _wait_socket(path: Path, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"hub exited early: {proc.communicate()}")
        if time.monotonic() > deadline:
            raise AssertionError("hub did not start")
        time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return -9
    return int(proc.returncode)


@pytest.mark.slow
def test_hub_and_three_spoke_processes_on_loopback(tmp_path: Path) -> None:
    port = free_port()
    _setup(tmp_path, "127.0.0.1", "127.0.0.1", port)
    hub = subprocess.Popen([*QKDNET, "hub", "--config", "hub.toml"], cwd=tmp_path,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    spokes: list[subprocess.Popen[bytes]] = []
    try:
        _wait_socket(tmp_path / "hub.keys.ctl", hub)
        for name in SPOKES:
            peers = ",".join(p for p in SPOKES if p != name)
            spokes.append(subprocess.Popen(
                [sys.executable, str(HERE / "spoke_peer.py"), f"{name}.toml", peers,
                 str(COUNT), f"{name}.json"], cwd=tmp_path,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        for proc in spokes:
            _out, err = proc.communicate(timeout=90)
            assert proc.returncode == 0, err.decode()[-3000:]
        _check_results(tmp_path)
        status = subprocess.run([*QKDNET, "hub", "status", "--json", "--config", "hub.toml"],
                                cwd=tmp_path, capture_output=True, timeout=30)
        assert status.returncode == 0, status.stderr.decode()
        st = json.loads(status.stdout)
        assert st["totals"]["relayed"] == 6 * COUNT
        assert set(st["spokes"]) == set(SPOKES)
        text = subprocess.run([*QKDNET, "hub", "status", "--config", "hub.toml"],
                              cwd=tmp_path, capture_output=True, timeout=30)
        assert b"alice" in text.stdout and text.returncode == 0
    finally:
        for proc in spokes:
            if proc.poll() is None:
                proc.kill()
        code = _stop(hub)
    assert code == 0, hub.communicate()[1].decode()[-2000:]
    # A stopped hub: status says so clearly, exit status 1.
    gone = subprocess.run([*QKDNET, "hub", "status", "--config", "hub.toml"], cwd=tmp_path,
                          capture_output=True, timeout=30)
    assert gone.returncode == 1 and b"is it running?" in gone.stderr


@pytest.mark.slow
def test_node_daemon_cli_runs_reports_and_stops(tmp_path: Path) -> None:
    port = free_port()
    _setup(tmp_path, "127.0.0.1", "127.0.0.1", port)
    env = {**os.environ, "QKDNET_NODE_SOCKET": str(tmp_path / "alice-app.sock")}
    hub = subprocess.Popen([*QKDNET, "hub", "--config", "hub.toml"], cwd=tmp_path,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    node = subprocess.Popen([*QKDNET, "node", "--config", "alice.toml"], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_socket(tmp_path / "hub.keys.ctl", hub)
        _wait_socket(tmp_path / "alice.keys.ctl", node)
        deadline = time.monotonic() + 60
        while True:
            res = subprocess.run([*QKDNET, "node", "status", "--json", "--config",
                                  "alice.toml"], cwd=tmp_path, capture_output=True,
                                 timeout=30)
            st = json.loads(res.stdout)
            if st["connected"] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert st["connected"] and st["hub"] == "hub" and st["key_bits"]["to_hub"] > 0
    finally:
        node_code = _stop(node)
        hub_code = _stop(hub)
    assert node_code == 0, node.communicate()[1].decode()[-2000:]
    assert hub_code == 0


# -- network namespaces ------------------------------------------------------------

def _netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip)"
    if shutil.which("tcpdump") is None:
        return "needs tcpdump for the capture"
    probe = subprocess.run(["ip", "netns", "add", f"qkprobe{os.getpid()}"],
                           capture_output=True)
    if probe.returncode != 0:
        return f"cannot create network namespaces: {probe.stderr.decode().strip()}"
    subprocess.run(["ip", "netns", "del", f"qkprobe{os.getpid()}"], capture_output=True)
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@contextlib.contextmanager
def _namespaces(hosts: list[str]) -> Iterator[dict[str, tuple[str, str]]]:
    """One namespace per host plus a bridge namespace; yields host -> (ns, addr).

    Addresses come from 10.213.0.0/24 and live only on the namespaces' own veths.
    Every namespace is deleted on the way out, also when the test fails.
    """
    tag = f"{os.getpid() % 100000}"
    bridge_ns = f"qkbr{tag}"
    made: list[str] = []
    try:
        _ip("netns", "add", bridge_ns)
        made.append(bridge_ns)
        _ip("-n", bridge_ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", bridge_ns, "link", "set", "br0", "up")
        result = {}
        for i, host in enumerate(hosts):
            ns = f"qk{host[:4]}{tag}"
            _ip("netns", "add", ns)
            made.append(ns)
            outer, inner = f"v{i}b{tag}"[:15], f"v{i}h{tag}"[:15]
            _ip("link", "add", inner, "type", "veth", "peer", "name", outer)
            _ip("link", "set", inner, "netns", ns)
            _ip("link", "set", outer, "netns", bridge_ns)
            _ip("-n", ns, "link", "set", inner, "name", "eth0")
            addr = f"10.213.0.{i + 1}"
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", bridge_ns, "link", "set", outer, "master", "br0")
            _ip("-n", bridge_ns, "link", "set", outer, "up")
            result[host] = (ns, addr)
        yield result
    finally:
        for ns in reversed(made):  # deleting a namespace removes its veth ends too
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


class _Capture:
    """tcpdump on one interface of a namespace, written to a pcap file.

    Why the care: libpcap hands packets to tcpdump in blocks (TPACKET_V3, one-second
    block timeout), and on SIGTERM/SIGINT tcpdump exits without draining the block
    still being filled, so the last ~second of traffic is silently missing from the
    file while its statistics say "0 dropped by kernel" (the loss shows only as
    "captured" < "received by filter"). ``--immediate-mode`` is no cure: it switches to
    TPACKET_V2, whose ring holds a few dozen GSO-sized slots and drops bursts when
    tcpdump is descheduled. So: block mode with a roomy buffer, start only once tcpdump
    says it is listening, stop only once the file holds the close of every connection
    (the closes come last, so everything before them is written), and check
    tcpdump's statistics at the end.
    """

    def __init__(self, ns: str, pcap: Path, port: int) -> None:
        self.pcap, self.port = pcap, port
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, "tcpdump", "-i", "eth0", "-U", "-B", "8192",
             "-s", "0", "-w", str(pcap), "tcp", "port", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.stderr = b""

    def wait_listening(self, timeout: float = 20) -> None:
        """Return once tcpdump has opened the interface (it says so on stderr)."""
        assert self.proc.stderr is not None
        fd = self.proc.stderr.fileno()
        deadline = time.monotonic() + timeout
        while b"listening on" not in self.stderr:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"tcpdump did not start: {self.stderr!r}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise AssertionError(f"tcpdump exited: {self.stderr!r}")
                self.stderr += chunk

    def _closed_connections(self) -> int:
        """Connections whose close (FIN both ways, or a RST) is in the file so far."""
        from scapy.layers.inet import IP, TCP
        from scapy.utils import PcapReader

        fins: set[tuple[str, int, str, int]] = set()
        reset: set[frozenset[tuple[str, int]]] = set()
        conns: set[frozenset[tuple[str, int]]] = set()
        try:
            with PcapReader(str(self.pcap)) as reader:
                for pkt in reader:
                    if TCP not in pkt:
                        continue
                    a, b = (pkt[IP].src, pkt[TCP].sport), (pkt[IP].dst, pkt[TCP].dport)
                    conns.add(frozenset((a, b)))
                    if pkt[TCP].flags.F:
                        fins.add((*a, *b))
                    if pkt[TCP].flags.R:
                        reset.add(frozenset((a, b)))
        except (OSError, EOFError):  # a record being written right now: read again later
            return -1
        def closed(conn: frozenset[tuple[str, int]]) -> bool:
            a, b = sorted(conn)
            return conn in reset or ((*a, *b) in fins and (*b, *a) in fins)
        return sum(closed(c) for c in conns)

    def stop_after_closes(self, connections: int, timeout: float = 20) -> None:
        """Wait until the file shows ``connections`` closed connections, then stop."""
        deadline = time.monotonic() + timeout
        while (n := self._closed_connections()) < connections:
            if time.monotonic() > deadline:
                break  # stop anyway; the statistics and frame counts will tell
            time.sleep(0.05)
        self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        self.stderr += err
        assert n >= connections, f"only {n} closed connections captured"
        stats = {m.group(2): int(m.group(1)) for m in re.finditer(
            rb"(\d+) packets? (captured|received by filter|dropped by kernel)", self.stderr)}
        assert stats.get(b"captured") == stats.get(b"received by filter") and \
            stats.get(b"dropped by kernel") == 0, f"capture incomplete: {self.stderr!r}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@pytest.mark.slow
@pytest.mark.root
def test_hub_and_spokes_across_network_namespaces(tmp_path: Path) -> None:
    reason = _netns_unavailable()
    if reason:
        pytest.skip(reason)
    port = 7787
    with _namespaces(["hub", *SPOKES]) as hosts:
        hub_ns, hub_addr = hosts["hub"]
        _setup(tmp_path, hub_addr, hub_addr, port)
        pcap = tmp_path / "hub-eth0.pcap"
        capture = _Capture(hub_ns, pcap, port)
        spokes: list[subprocess.Popen[bytes]] = []
        hub: subprocess.Popen[bytes] | None = None
        try:
            capture.wait_listening()
            hub = subprocess.Popen(["ip", "netns", "exec", hub_ns, *QKDNET, "hub",
                                    "--config", "hub.toml"], cwd=tmp_path,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            _wait_socket(tmp_path / "hub.keys.ctl", hub)
            for name in SPOKES:
                ns, _ = hosts[name]
                peers = ",".join(p for p in SPOKES if p != name)
                spokes.append(subprocess.Popen(
                    ["ip", "netns", "exec", ns, sys.executable, str(HERE / "spoke_peer.py"),
                     f"{name}.toml", peers, str(COUNT), f"{name}.json"], cwd=tmp_path,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE))
            for proc in spokes:
                _, err = proc.communicate(timeout=90)
                assert proc.returncode == 0, err.decode()[-3000:]
            _check_results(tmp_path)
            assert _stop(hub) == 0, hub.communicate()[1].decode()[-2000:]
            capture.stop_after_closes(len(SPOKES))
        finally:
            for proc in spokes:
                if proc.poll() is None:
                    proc.kill()
            if hub is not None:
                _stop(hub)
            capture.kill()
        _check_capture(pcap, port, hub_addr)


def _check_capture(pcap: Path, port: int, hub_addr: str) -> None:
    """The capture dissects into whole qkdnet frames, hub bodies included."""
    from scapy.layers.inet import IP, TCP
    from scapy.packet import bind_layers
    from scapy.sendrecv import sniff
    from scapy.sessions import TCPSession

    from qkdnet.hub import wire as w
    from qkdnet.wire import QkdHeader

    bind_layers(TCP, QkdHeader, sport=port)
    bind_layers(TCP, QkdHeader, dport=port)
    frames = [p for p in sniff(offline=str(pcap), session=TCPSession)
              if p.haslayer(QkdHeader)]
    assert frames, "no qkdnet frames in the capture"
    seen: dict[tuple[str, int, str, int, int], int] = {}  # (flow, frame seq) -> type
    spokes_seen = set()
    for pkt in frames:
        assert pkt[IP].src == hub_addr or pkt[IP].dst == hub_addr
        nb = 1
        while (hdr := pkt.getlayer(QkdHeader, nb=nb)) is not None:  # frames in a segment
            nb += 1
            body = hdr.payload.copy()
            body.remove_payload()
            assert len(bytes(body)) == hdr.length - 44, "frame not whole"
            flow = (pkt[IP].src, pkt[TCP].sport, pkt[IP].dst, pkt[TCP].dport)
            seen[(*flow, int(hdr.seq))] = int(hdr.type)
            if isinstance(body, w.HubData):
                assert body.ct_len == len(body.ciphertext)
                assert 8 * len(body.ciphertext) == sum(s.n_bits for s in body.segments)
                spokes_seen.add(bytes(body.src).decode())
    types: dict[int, int] = {}
    for t in seen.values():
        types[t] = types.get(t, 0) + 1
    assert types.get(int(w.HubMsg.REGISTER), 0) == 3
    # Every DATA frame crosses the hub's interface twice (in and re-keyed out).
    assert types.get(int(w.HubMsg.DATA), 0) == 2 * 6 * COUNT
    assert spokes_seen == set(SPOKES)
