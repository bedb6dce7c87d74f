"""docs/config.md is generated from stack/config.py and must say what the code says.

If this fails after a change to a config dataclass, run
``python tools/gen_config_doc.py`` and commit docs/config.md with the change.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys
from pathlib import Path

from qkdnet import config

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "gen_config_doc.py"


def _tool():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gen_config_doc", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_config_md_is_what_the_code_says() -> None:
    result = subprocess.run([sys.executable, str(TOOL), "--check"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_every_key_is_documented_with_a_meaning() -> None:
    tool = _tool()
    doc = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    sections = {**config._SECTIONS, **{f"{k}.NAME": v
                                       for k, v in config._NAMED_SECTIONS.items()}}
    for name, cls in sections.items():
        assert f"## `[{name}]`" in doc
        comments = tool.field_comments(cls)
        for f in dataclasses.fields(cls):
            assert comments.get(f.name), f"[{name}] {f.name} has no #: comment in config.py"
            assert f"| `{f.name}` |" in doc


def test_units_and_defaults_come_from_the_code() -> None:
    rows = "\n".join(_tool().section_rows(config.RoutingConfig))
    assert "| `key_wait` | number | `5.0` | s | How long a send may wait" in rows
    rows = "\n".join(_tool().section_rows(config.NodeSection))
    assert "| `name` | string | **required** |" in rows
