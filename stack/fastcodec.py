"""Struct-speed building and dissecting for plain scapy bodies (same bytes, same fields).

Every sideband message is a scapy ``Packet`` so that any capture dissects, but scapy's
generic field machinery costs tens of microseconds per message (about 70 µs to build
and 80 µs to dissect a hub DATA body on the bench machine), which on the hub's data
path is a large share of a hop. :class:`FastCodec` is a mixin for body classes whose
``fields_desc`` uses only a handful of field kinds; for those it compiles the layout
once into a list of steps and builds/dissects with ``struct``:

* fixed-width integers (``ByteField``, ``ShortField``, ``IntField``, ``LongField`` and
  their enum variants);
* ``FieldLenField`` (``length_of=`` or ``count_of=``, default ``adjust``) followed
  later by the ``StrLenField`` or ``PacketListField`` it measures;
* ``PacketListField`` whose item class is itself a :class:`FastCodec` made of
  fixed-width integers only (no more items than scapy itself accepts:
  ``max_count`` or ``conf.max_list_count``).

Theory of operation: the fast path is an *optimisation with a fallback*, never a second
definition of the format. It runs only when the result is certain to equal scapy's:
building needs plain ``int``/``bytes`` values, no payload, no post-build hooks and no
cached raw bytes; dissecting needs every length and count to fit the input. Anything
else (short or odd input, random field values, a layout it does not know) goes through
scapy's own code, so error behaviour on malformed input is exactly scapy's. The tests
(tests/spine/test_fastcodec.py) build and dissect every hub body both ways, including
random and truncated inputs, and compare bytes and fields.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from scapy.config import conf
from scapy.fields import (
    ByteEnumField,
    ByteField,
    FieldLenField,
    IntEnumField,
    IntField,
    LongField,
    PacketListField,
    ShortEnumField,
    ShortField,
    StrLenField,
)
from scapy.packet import NoPayload, Packet

#: Field classes whose value is one big-endian integer packed with the field's ``fmt``.
_INTEGER_FIELDS = (ByteField, ShortField, IntField, LongField, ByteEnumField,
                   ShortEnumField, IntEnumField)

# Step kinds of a compiled layout.
_INT, _LEN, _COUNT, _BYTES, _ITEMS = range(5)

#: Master switch (tests turn it off to get scapy's own results for comparison).
enabled = True


class _Step:
    """One field of a compiled layout."""

    __slots__ = ("codec", "item_cls", "item_size", "kind", "max_items", "measures", "name")

    def __init__(self, kind: int, name: str, codec: struct.Struct | None = None,
                 measures: str | None = None, item_cls: Any = None, item_size: int = 0,
                 max_items: int | None = None) -> None:
        self.kind = kind
        self.name = name
        self.codec = codec            # struct for integer-valued steps
        self.measures = measures      # _LEN/_COUNT: the field measured; _BYTES/_ITEMS: the measurer
        self.item_cls = item_cls      # _ITEMS: the item Packet class
        self.item_size = item_size    # _ITEMS: bytes per item
        self.max_items = max_items    # _ITEMS: the field's own limit (None: scapy's conf)


_plans: dict[type, list[_Step] | None] = {}


def _identity_adjust(adjust: Callable[[Any, int], int]) -> bool:
    try:
        return all(adjust(None, x) == x for x in (0, 1, 1234567))
    except Exception:  # an adjust that needs the packet is not the default one
        return False


def _compile(cls: type) -> list[_Step] | None:
    """The layout of ``cls`` as steps, or None if it uses a field kind we do not handle."""
    steps: list[_Step] = []
    measurer: dict[str, str] = {}   # measured field -> its FieldLenField
    for f in cls.fields_desc:  # type: ignore[attr-defined]
        t = type(f)
        if t is FieldLenField:
            if not _identity_adjust(f.adjust):
                return None
            target = f.length_of if f.length_of is not None else f.count_of
            if target is None:
                return None
            measurer[target] = f.name
            steps.append(_Step(_LEN if f.length_of is not None else _COUNT, f.name,
                               struct.Struct(f.fmt), measures=target))
        elif t in _INTEGER_FIELDS:
            steps.append(_Step(_INT, f.name, struct.Struct(f.fmt)))
        elif t is StrLenField:
            if measurer.get(f.name) is None or getattr(f, "max_length", None):
                return None
            steps.append(_Step(_BYTES, f.name, measures=measurer[f.name]))
        elif t is PacketListField:
            item_plan = _plan(f.cls) if isinstance(f.cls, type) else None
            if (measurer.get(f.name) is None or item_plan is None
                    or any(s.kind != _INT for s in item_plan)):
                return None
            size = sum(s.codec.size for s in item_plan if s.codec is not None)
            steps.append(_Step(_ITEMS, f.name, measures=measurer[f.name],
                               item_cls=f.cls, item_size=size, max_items=f.max_count))
        else:
            return None
    # Every measured field must be one this layout holds, and measured by one step only.
    names = {s.name for s in steps}
    if any(target not in names for target in measurer):
        return None
    kinds = {s.name: s.kind for s in steps}
    for s in steps:
        if s.kind == _LEN and kinds[s.measures or ""] != _BYTES:
            return None
        if s.kind == _COUNT and kinds[s.measures or ""] != _ITEMS:
            return None
    return steps


def _plan(cls: type) -> list[_Step] | None:
    try:
        return _plans[cls]
    except KeyError:
        plan = _plans[cls] = (_compile(cls) if issubclass(cls, FastCodec)
                              and getattr(cls, "post_build", None) is Packet.post_build
                              else None)
        return plan


def _build(pkt: Packet, plan: list[_Step]) -> bytes | None:
    """``pkt``'s own bytes as scapy would build them, or None when unsure."""
    get = pkt.getfieldval
    values = {s.name: get(s.name) for s in plan}
    out: list[bytes] = []
    for s in plan:
        v = values[s.name]
        if s.kind == _BYTES:
            if type(v) is not bytes:
                return None
            out.append(v)
        elif s.kind == _ITEMS:
            if type(v) is not list:
                return None
            for item in v:
                raw = _item_bytes(item, s.item_cls)
                if raw is None:
                    return None
                out.append(raw)
        else:
            if v is None and s.kind != _INT:
                measured = values[s.measures or ""]
                if not isinstance(measured, bytes | list):
                    return None
                v = len(measured)
            elif v is None:
                v = 0
            if not isinstance(v, int):
                return None
            assert s.codec is not None
            try:
                out.append(s.codec.pack(v))
            except struct.error:  # out of range: let scapy raise its own error
                return None
    return b"".join(out)


def _item_bytes(item: Any, cls: Any) -> bytes | None:
    if (type(item) is not cls or item.raw_packet_cache is not None
            or not isinstance(item.payload, NoPayload) or item.post_transforms):
        return None
    plan = _plan(cls)
    return None if plan is None else _build(item, plan)


def _dissect(pkt: Packet, plan: list[_Step], s: bytes) -> int | None:
    """Fill ``pkt.fields`` from ``s``; return the bytes used, or None to let scapy do it."""
    pos = 0
    n = len(s)
    values: dict[str, Any] = {}
    for st in plan:
        if st.kind == _BYTES:
            size = values[st.measures or ""]
            if pos + size > n:
                return None
            values[st.name] = s[pos:pos + size]
            pos += size
        elif st.kind == _ITEMS:
            count = values[st.measures or ""]
            if count > (st.max_items or conf.max_list_count):
                return None  # scapy refuses such a list (MaximumItemsCount): let it
            end = pos + count * st.item_size
            if end > n:
                return None
            cls = st.item_cls
            values[st.name] = [cls(s[p:p + st.item_size], _parent=pkt)
                               for p in range(pos, end, st.item_size)]
            pos = end
        else:
            assert st.codec is not None
            end = pos + st.codec.size
            if end > n:
                return None
            values[st.name] = st.codec.unpack_from(s, pos)[0]
            pos = end
    pkt.fields.update(values)
    return pos


class FastCodec:
    """Mixin for scapy body classes: struct-speed ``bytes(pkt)`` and ``Cls(raw)``.

    Put it first among the bases (``class Body(FastCodec, Packet)``). Classes whose
    layout it cannot compile, and packets it cannot be sure about, use scapy's code.
    """

    __slots__ = ()

    def do_build(self) -> bytes:
        """This layer's bytes (the fast path applies to a layer with no payload)."""
        pkt: Any = self
        if (enabled and pkt.raw_packet_cache is None and isinstance(pkt.payload, NoPayload)
                and not pkt.post_transforms):
            plan = _plan(type(self))
            if plan is not None:
                raw = _build(pkt, plan)
                if raw is not None:
                    return raw
        return super().do_build()  # type: ignore[misc, no-any-return]

    def do_dissect(self, s: bytes) -> bytes:
        """Dissect this layer's fields; returns what follows them (as scapy does)."""
        pkt: Any = self
        if enabled:
            plan = _plan(type(self))
            if plan is not None:
                used = _dissect(pkt, plan, s)
                if used is not None:
                    pkt.explicit = 1
                    return s[used:]
        return super().do_dissect(s)  # type: ignore[misc, no-any-return]


def fast_layout(cls: type) -> bool:
    """Whether ``cls`` builds and dissects on the fast path (for tests and docs)."""
    return _plan(cls) is not None
