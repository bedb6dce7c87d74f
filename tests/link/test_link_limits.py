"""A peer cannot make the receiver emulate (and hold) an unbounded block.

BLOCK_START may announce up to 2^34 slots; the receiver stops emulating as soon as
the block has made more detections than the wire allows (``MAX_CLICKS``) and abandons
it with a reason that names the limit, in bounded memory and time. Before, a 2^30-slot
block at 10 km made the hub emulate all of it (3.3 GB, minutes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import pytest

pytestmark = pytest.mark.slow


def test_a_block_beyond_the_detection_limit_is_abandoned_in_bounded_memory() -> None:
    with tempfile.TemporaryFile("w+") as err_file:
        proc = subprocess.Popen([sys.executable, "-m", "qkdnet", "--json", "link", "run",
                                 "--km", "10", "--blocks", "1", "--block-slots",
                                 str(1 << 30), "--seed", "1"],
                                stdout=subprocess.PIPE, stderr=err_file, text=True)
        assert proc.stdout is not None
        out = proc.stdout.read()
        # wait4, not wait: it gives this child's own peak memory.
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err_file.seek(0)
        err = err_file.read()
    assert proc.returncode == 3, err            # ran, no key
    data = json.loads(out)
    (bob_block,) = data["bob"]["blocks"]
    assert bob_block["abort_reason"] == "local"
    assert "more than 2097152 detections" in bob_block["abort_detail"]
    assert "TooManyDetections" in err
    peak_mib = usage.ru_maxrss / 1024
    assert peak_mib < 1024, f"peak RSS {peak_mib:.0f} MiB"
