"""Child process for the key-store crash test (run by test_keystore_crash.py).

Opens the key store, then reserves key in a loop forever, appending one line per
grant segment to the record file (``block offset n_bits hexdata``) and fsyncing it
before the next reservation. The parent SIGKILLs it at random moments. The hex data
is written only to this test's scratch file so the parent can check that every grant
carried the bits its segments name.
"""

from __future__ import annotations

import os
import random
import sys

from qkdnet.errors import KeyExhausted
from qkdnet.keystore import KeyStore


def main() -> None:
    db_path, record_path, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = random.Random(seed)
    store = KeyStore(db_path, lease_bits=rng.choice([512, 4096, 65536]))
    fd = os.open(record_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    # A newline first: the previous child may have been killed inside its last write,
    # and its torn line must not run into our first record.
    os.write(fd, b"\n")
    while True:
        n = rng.choice([1, 7, 128, 256, 256, 1000, 5000])
        contiguous = rng.random() < 0.3 and n <= 1000
        try:
            grant = store.reserve("B", "data-tx", n, contiguous=contiguous)
        except KeyExhausted:
            os.write(fd, b"exhausted\n")
            os.fsync(fd)
            return
        lines = []
        data_bits = grant.data
        # One line per grant: segments joined by ';', then the grant data.
        segs = ";".join(f"{s.block_id},{s.offset},{s.n_bits}" for s in grant.segments)
        lines.append(f"{segs} {data_bits.hex()}\n")
        os.write(fd, "".join(lines).encode())
        os.fsync(fd)


if __name__ == "__main__":
    main()
