"""Sideband speed: frames built/parsed per second and authentication throughput.

Measured in one run, each beside its baseline:

* header: scapy ``QkdHeader`` build/dissect and the fast codec (``pack_header`` /
  ``unpack_header``) vs a bare ``struct`` pack/unpack of the same 32 bytes;
* whole frames: ``SidebandConnection.send`` / ``receive_data`` (scapy body, fast
  header, Poly1305 tag, key accounting, state checks) per second;
* authentication: Poly1305 (one-time key per message, as the sideband uses it) vs
  HMAC-SHA256 from ``cryptography``, in MB/s, for 64-byte and 64-KiB messages.

Usage: ``python bench/bench_sideband.py [--quick]``. Prints a table and the ratios.
"""

from __future__ import annotations

import argparse
import os
import struct
import time
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.poly1305 import Poly1305

from qkdnet.auth import FrameAuthenticator, MemoryTagKeys
from qkdnet.sideband import SidebandConnection
from qkdnet.wire import Hello, HelloAck, MsgType, Ping, QkdHeader, pack_header, unpack_header


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``fn`` over about ``seconds``."""
    n, start = 0, time.perf_counter()
    batch = 1
    while True:
        for _ in range(batch):
            fn()
        n += batch
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return n / elapsed
        batch = min(batch * 2, 4096)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="0.1 s per measurement")
    args = parser.parse_args()
    t = 0.1 if args.quick else 0.5

    rows: list[tuple[str, float, str, float]] = []
    # --- header build / parse ------------------------------------------------------
    header_fields = dict(type=MsgType.PING, session=7, seq=12345, akey_block=3,
                         akey_offset=384, tag=b"\x11" * 16)
    raw = bytes(QkdHeader(**header_fields) / Ping(nonce=1))
    fmt = struct.Struct("!IBBBBIQQI")
    rows.append(("scapy header+body build /s",
                 rate(lambda: bytes(QkdHeader(**header_fields) / Ping(nonce=1)), t),
                 "struct pack /s",
                 rate(lambda: fmt.pack(52, 1, 5, 0, 0, 7, 12345, 3, 384), t)))
    rows.append(("scapy frame dissect /s", rate(lambda: QkdHeader(raw), t),
                 "struct unpack /s", rate(lambda: fmt.unpack_from(raw), t)))
    rows.append(("fast codec pack_header /s",
                 rate(lambda: pack_header(8, 5, session=7, seq=12345, akey_block=3,
                                          akey_offset=384), t),
                 "struct pack /s",
                 rate(lambda: fmt.pack(52, 1, 5, 0, 0, 7, 12345, 3, 384), t)))
    rows.append(("fast codec unpack_header /s", rate(lambda: unpack_header(raw), t),
                 "struct unpack /s", rate(lambda: fmt.unpack_from(raw), t)))

    # --- whole authenticated frames through the connection ----------------------
    a, b = MemoryTagKeys.pair(pool_bytes=1 << 24)
    client = SidebandConnection("alice", FrameAuthenticator(a))
    server = SidebandConnection("hub", lambda n: FrameAuthenticator(b))
    server.receive_data(client.send(Hello(node_name=b"alice")))
    client.receive_data(server.send(HelloAck(node_name=b"hub")))
    ping = Ping(nonce=1)
    frames: list[bytes] = []

    def send() -> None:
        frames.append(client.send(ping))

    send_rate = rate(send, t)
    it = iter(frames)
    recv_rate = rate(lambda: server.receive_data(next(it)), min(t, 0.8 * len(frames) /
                                                                 max(send_rate, 1)))
    rows.append(("conn.send (signed PING) /s", send_rate,
                 "scapy build only /s", rows[0][1]))
    rows.append(("conn.receive_data (verified) /s", recv_rate,
                 "scapy dissect only /s", rows[1][1]))

    # --- authentication throughput --------------------------------------------------
    key = os.urandom(32)
    for size in (64, 1 << 16):
        msg = os.urandom(size)

        def poly(msg: bytes = msg) -> None:
            Poly1305.generate_tag(key, msg)

        def mac(msg: bytes = msg) -> None:
            h = hmac.HMAC(key, hashes.SHA256())
            h.update(msg)
            h.finalize()

        rows.append((f"Poly1305 {size} B MB/s", rate(poly, t) * size / 1e6,
                     "HMAC-SHA256 MB/s", rate(mac, t) * size / 1e6))

    width = max(len(r[0]) for r in rows)
    print(f"{'ours':{width}s} {'value':>12s}   {'baseline':28s} {'value':>12s}  ratio")
    for name, ours, base_name, base in rows:
        print(f"{name:{width}s} {ours:12,.0f}   {base_name:28s} {base:12,.0f}  "
              f"{ours / base:6.3f}")


if __name__ == "__main__":
    main()
