"""Lay out a symlink tree shaped like the installed ``qkdnet`` package, for mypy.

The source folders (``stack/``, ``phy/``, ...) map into one import namespace through
setuptools' ``package-dir``; mypy cannot see through that mapping, so ``make lint``
points it at this tree instead.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

LAYOUT = {"": "stack", "phy": "phy", "link": "link", "hub": "hub", "apps": "apps"}


def build(target: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    package = target / "qkdnet"
    if target.exists():
        shutil.rmtree(target)
    for sub, folder in LAYOUT.items():
        dest = package / sub if sub else package
        dest.mkdir(parents=True, exist_ok=True)
        sources = [*sorted((root / folder).glob("*.py")), root / folder / "py.typed"]
        for source in sources:
            (dest / source.name).symlink_to(source)


if __name__ == "__main__":
    build(Path(sys.argv[1] if len(sys.argv) > 1 else ".typecheck"))
