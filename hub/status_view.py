"""How ``qkdnet hub status`` and ``qkdnet node status`` show a daemon's status.

The daemons answer with a JSON document of exact numbers (bits, bits per second, raw
QBER); this module turns it into what a person reads: key in KiB, rates in kbit/s,
QBER as a percentage with two decimals, times of day instead of full timestamps, in a
table that fits 80 columns without cutting a number (columns fold rather than end
in "…"). ``--json`` output keeps every count exact and only rounds floats to six
significant digits (:func:`rounded`).
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def rounded(obj: Any, digits: int = 6) -> Any:
    """``obj`` with every float rounded to ``digits`` significant digits (JSON output)."""
    if isinstance(obj, float):
        return float(f"{obj:.{digits}g}")
    if isinstance(obj, dict):
        return {k: rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, list):
        return [rounded(v, digits) for v in obj]
    return obj


def kib(bits: Any) -> str:
    """A key amount in bits as KiB (``"-"`` if unknown)."""
    if not isinstance(bits, int | float):
        return "-"
    return f"{bits / 8192:.1f} KiB"


def rate(bps: Any) -> str:
    """A rate in bit/s, as b/s below 10 kb/s and kb/s above."""
    if not isinstance(bps, int | float):
        return "-"
    return f"{bps:.0f} b/s" if bps < 10_000 else f"{bps / 1000:.1f} kb/s"


def percent(x: Any) -> str:
    return f"{100 * x:.2f} %" if isinstance(x, int | float) else "-"


def clock(iso: Any) -> str:
    """``2026-12-03T12:14:33Z`` -> ``12:14:33Z`` (the day is today's, or in --json)."""
    if isinstance(iso, str) and "T" in iso:
        return iso.split("T", 1)[1]
    return str(iso) if iso else "?"


def link_state(link: dict[str, Any], *, short: bool = False) -> str:
    """"up since T", "DOWN since T (why)" or "-" (no link yet); ``short`` drops "since"."""
    state = link.get("state")
    since = "" if short else "since "
    if state == "up":
        return f"up {since}{clock(link.get('since'))}"
    if state == "down":
        return (f"DOWN {since}{clock(link.get('since'))} "
                f"({link.get('down_reason') or '?'})")
    return "-"


def _table(title: str | None, columns: tuple[tuple[str, bool], ...]) -> Table:
    table = Table(title=title, title_justify="left")
    for col, right in columns:
        # fold, never "…": a cut number is a wrong number
        table.add_column(col, justify="right" if right else "left", overflow="fold")
    return table


def hub_tables(st: dict[str, Any]) -> tuple[Table, Table]:
    """Two tables of one row per spoke, each within 80 columns: the links and their
    key, then the traffic (frames, relays, drops)."""
    links = _table(f'hub "{st.get("hub")}", port {st.get("port")}',
                   (("spoke", False), ("conn", False), ("link since", False),
                    ("QBER", True), ("net key", True), ("key hub→spoke", True),
                    ("key spoke→hub", True)))
    traffic = _table(None, (("spoke", False), ("frames in/out", True), ("relays", True),
                            ("auth key h→s / s→h", True), ("drops", False)))
    for name, sp in sorted(st.get("spokes", {}).items()):
        link = sp.get("link", {})
        keys = sp.get("key_bits", {})
        links.add_row(
            name, "yes" if sp.get("connected") else "no", link_state(link, short=True),
            percent(link.get("qber")), rate(link.get("key_rate_bps", 0)),
            kib(keys.get("hub_to_spoke")), kib(keys.get("spoke_to_hub")))
        traffic.add_row(
            name, f"{sp.get('frames_in', 0)}/{sp.get('frames_out', 0)}",
            str(sp.get("key_relays", 0)),
            f"{kib(keys.get('auth_hub_to_spoke'))} / {kib(keys.get('auth_spoke_to_hub'))}",
            ", ".join(f"{k}={v}" for k, v in sp.get("drops", {}).items()) or "-")
    return links, traffic


def print_hub(st: dict[str, Any], console: Console) -> None:
    for table in hub_tables(st):
        console.print(table)
    totals = st.get("totals", {})
    console.print("totals: " + (", ".join(f"{k}={v}" for k, v in sorted(totals.items()))
                                or "none"))


def print_node(st: dict[str, Any], console: Console) -> None:
    keys = st.get("key_bits", {})
    link = st.get("link", {})
    console.print(f'node "{st.get("name")}" → hub "{st.get("hub")}" at '
                  f"{st.get('hub_address')}: "
                  f"{'connected' if st.get('connected') else 'NOT connected'}")
    console.print(f"  link: {link_state(link)}, QBER {percent(link.get('qber'))}, blocks "
                  f"{link.get('stored', 0)} stored / {link.get('aborted', 0)} aborted")
    console.print(f"  key rate: {rate(link.get('gross_key_rate_bps', 0))} gross, "
                  f"{rate(link.get('auth_rate_bps', 0))} authentication, "
                  f"{rate(link.get('key_rate_bps', 0))} net")
    console.print(f"  key: {kib(keys.get('to_hub'))} to hub, {kib(keys.get('from_hub'))} "
                  f"from hub ({keys.get('to_hub', '-')} / {keys.get('from_hub', '-')} bits)")
    console.print(f"  authentication key: {kib(keys.get('auth_to_hub'))} to hub, "
                  f"{kib(keys.get('auth_from_hub'))} from hub")
    console.print("  counters: "
                  + ", ".join(f"{k}={v}" for k, v in st.get("counters", {}).items()))
    if st.get("last_error"):
        console.print(f"  last error: {st['last_error']}")


__all__ = ["hub_tables", "kib", "link_state", "print_hub", "print_node", "rate", "rounded"]
