"""spec/wireshark/qkdnet.lua is what tools/gen_dissector.py makes of the scapy classes.

Like the spec layout tables (test_sideband_wire.py), the dissector's field tables are
generated from ``fields_desc``; these tests regenerate them and compare, so a new
message type or field in any layer's wire module fails here until the Lua file is
regenerated (``python tools/gen_dissector.py``). No tshark needed.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import pytest
from scapy.fields import (
    BitField,
    ByteEnumField,
    ByteField,
    FieldLenField,
    FieldListField,
    FlagsField,
    IEEEDoubleField,
    IntField,
    LEShortField,
    PacketListField,
    ShortField,
    StrField,
    StrFixedLenField,
    StrLenField,
    XLongField,
)
from scapy.packet import Packet

from qkdnet import wire

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "gen_dissector.py"
LUA = ROOT / "spec" / "wireshark" / "qkdnet.lua"


def _load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_dissector", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_dissector"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


gen = _load_tool()


def test_committed_lua_is_generated_from_the_wire_classes() -> None:
    text = LUA.read_text()
    assert gen.regenerate(text) == text, (
        "spec/wireshark/qkdnet.lua is stale: run `python tools/gen_dissector.py`")


def test_check_mode_of_the_tool(tmp_path: Path) -> None:
    ok = subprocess.run([sys.executable, str(TOOL), "--check"], capture_output=True,
                        text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    stale = tmp_path / "qkdnet.lua"
    stale.write_text(LUA.read_text().replace('name = "PARITY_REPLY"', 'name = "PARITY"'))
    bad = subprocess.run([sys.executable, str(TOOL), "--check", "--file", str(stale)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "stale" in bad.stderr


def test_every_bound_type_of_every_layer_is_in_the_tables() -> None:
    model = gen.build_model()
    bound = {t: cls for t, cls in wire.bound_types().items()
             if cls.__module__ in gen.WIRE_MODULES}
    assert set(model.types) == set(bound)
    assert {t >> 4 for t in bound} >= {0x0, 0x1, 0x4, 0x6}  # common, link, hub, apps
    from qkdnet.apps.wire import AppMsgType
    from qkdnet.hub.wire import HubMsg
    from qkdnet.link.wire import LinkMsg
    for enum in (wire.MsgType, LinkMsg, HubMsg, AppMsgType):
        for member in enum:
            assert model.types[int(member)][0] == member.name
    for t, cls in bound.items():
        layout = model.layouts[model.types[t][1]]
        assert [s.name for s in layout.steps] == [f.name for f in cls.fields_desc]
    header = [s.name for s in model.header]
    assert header == [f.name for f in wire.QkdHeader.fields_desc if f.name != "tag"]
    flags = next(s for s in model.header if s.name == "flags")
    assert flags.bits == ["flags.end_of_group", "flags.deferred"]


class _Item(Packet):
    name = "TestItem"
    fields_desc: ClassVar[list[Any]] = [XLongField("block_id", 0), ShortField("n", 0)]

    def extract_padding(self, s: bytes) -> tuple[bytes, bytes]:
        return b"", s


class _Everything(Packet):
    """One of each field kind the wire modules use."""

    name = "TestEverything"
    fields_desc: ClassVar[list[Any]] = [
        ByteEnumField("mode", 1, {1: "ONE", 2: "TWO"}),
        FlagsField("opts", 0, 16, ["a", "b", "f2"]),
        IEEEDoubleField("ratio", 0.5),  # type: ignore[arg-type]
        FieldLenField("name_len", None, length_of="peer", fmt="B"),
        StrLenField("peer", b"", length_from=lambda p: p.name_len),
        FieldLenField("n_vals", None, count_of="vals", fmt="H"),
        FieldListField("vals", [], IntField("v", 0), count_from=lambda p: p.n_vals),  # type: ignore[list-item]
        FieldLenField("n_items", None, count_of="items", fmt="!I"),
        PacketListField("items", [], _Item, count_from=lambda p: p.n_items),
        StrFixedLenField("nonce", b"", 16),
        StrField("rest", b""),
    ]


def test_a_new_body_class_is_picked_up_with_every_field_kind() -> None:
    b = gen.Builder()
    key = b.layout(_Everything)
    steps = {s.name: s for s in b.model.layouts[key].steps}
    assert key == "test_everything"
    assert (steps["mode"].kind, steps["mode"].size, steps["mode"].info) == ("int", 1, True)
    assert b.model.value_strings[steps["mode"].vs] == {1: "ONE", 2: "TWO"}
    assert steps["opts"].bits == ["test_everything.opts.a", "test_everything.opts.b"]
    assert (steps["ratio"].kind, steps["ratio"].size) == ("double", 8)
    assert steps["peer"].length_from == "name_len" and steps["peer"].text
    assert (steps["vals"].kind, steps["vals"].count_from, steps["vals"].item_size) == (
        "list", "n_vals", 4)
    assert (steps["items"].kind, steps["items"].item) == ("packets", "test_item")
    assert (steps["nonce"].kind, steps["nonce"].size) == ("bytes", 16)
    assert (steps["rest"].kind, steps["rest"].size, steps["rest"].length_from) == (
        "bytes", 0, None)
    item = {s.name: s for s in b.model.layouts["test_item"].steps}
    assert "base.HEX" in b.model.protofields[item["block_id"].pf]
    # And a model with one more type renders differently from the committed file.
    model = gen.build_model()
    model.layouts[key] = b.model.layouts[key]
    model.layouts["test_item"] = b.model.layouts["test_item"]
    model.protofields.update(b.model.protofields)
    model.types[0x3D] = ("TEST_EVERYTHING", key)
    rendered = gen.render(model)
    assert '[0x3d] = { name = "TEST_EVERYTHING", layout = "test_everything" }' in rendered
    assert gen.regenerate(LUA.read_text(), model) != LUA.read_text()


def _refused(cls: type[Packet], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        gen.Builder().layout(cls)


def test_the_generator_refuses_what_it_cannot_follow() -> None:
    class Bits(Packet):
        name = "TestBits"
        fields_desc: ClassVar[list[Any]] = [BitField("x", 0, 4), BitField("y", 0, 4)]

    class Scaled(Packet):  # the length is not the length field's value
        name = "TestScaled"
        fields_desc: ClassVar[list[Any]] = [
            FieldLenField("n", None, length_of="data", fmt="B"),
            StrLenField("data", b"", length_from=lambda p: 2 * p.n)]

    class Orphan(Packet):  # no FieldLenField measures it
        name = "TestOrphan"
        fields_desc: ClassVar[list[Any]] = [
            ByteField("n", 0), StrLenField("data", b"", length_from=lambda p: p.n)]

    class LittleEndian(Packet):
        name = "TestLittle"
        fields_desc: ClassVar[list[Any]] = [LEShortField("n", 0)]

    class RestFirst(Packet):
        name = "TestRestFirst"
        fields_desc: ClassVar[list[Any]] = [StrField("data", b""), ByteField("n", 0)]

    _refused(Bits, "not supported")
    _refused(Scaled, "does not return n unchanged")
    _refused(Orphan, "expected one FieldLenField")
    _refused(LittleEndian, "not supported")
    _refused(RestFirst, "must be last")
