"""Run every benchmark script under bench/ in turn (``make bench``).

Each script measures qkdnet and a baseline in the same run and prints the ratio;
this runner only finds them, runs them with the venv's Python and reports which
ones failed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def main() -> int:
    here = Path(__file__).resolve().parent
    scripts = sorted(p for p in here.rglob("bench_*.py"))
    failed = []
    for script in scripts:
        print(f"\n=== {script.relative_to(here.parent)}", flush=True)
        if subprocess.run([sys.executable, str(script)], cwd=here.parent).returncode != 0:
            failed.append(script.name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"\n{len(scripts)} benchmarks ran", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
