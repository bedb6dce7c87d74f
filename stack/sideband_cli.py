"""Sideband commands: ``qkdnet pcap summary`` and ``qkdnet conformance``.

``pcap summary FILE`` reads any capture of sideband traffic (a node's ``--pcap`` file
or a sniffer's) and reports sessions, frame counts, what the link announced and what
went wrong; with ``--audit PRESET`` it also recomputes every link block's key length
from the captured frames (qkdnet.link.capture_audit). ``conformance --target
HOST:PORT`` plays the peer against a running node and prints a pass/fail table; it
exits 1 if any check fails.
"""

from __future__ import annotations

import argparse
import fnmatch
import sys
from pathlib import Path
from typing import Any

from qkdnet.cli import CommandSet, emit_json
from qkdnet.errors import ConfigError


def register(commands: CommandSet) -> None:
    """Add ``pcap summary`` and ``conformance``."""
    pcap = commands.group("pcap", help="inspect sideband captures")
    p = pcap.add("summary", _pcap_summary, help="summarise the sideband frames in a pcap file",
                 description="Sessions, per-type frame counts and bytes, QBER and block "
                             "sizes announced, bits disclosed in error correction, final "
                             "key lengths, authentication failures, aborts and a timeline.")
    p.add_argument("file", type=Path, help="pcap file (from --pcap or a sniffer)")
    p.add_argument("--port", type=int, action="append", default=[],
                   help="also decode this TCP port (7787 and ports opened by HELLO are "
                        "found on their own); repeatable")
    p.add_argument("--audit", metavar="PRESET", default=None,
                   help="recompute every link block's key length from the captured "
                        "frames and this PHY preset's intensities (qkdnet phy presets); "
                        "exit 1 if any block's announced length differs")
    p.add_argument("--leak-accounting", choices=("strict", "alice-only"), default="strict",
                   help="leakage convention for --audit (default strict, as the link)")
    c = commands.add("conformance", _conformance, help="run conformance checks against a node",
                     description="Play the peer against a sideband implementation and run "
                                 "named checks (framing, versions, authentication, replay, "
                                 "lengths, segmentation, unknown types, close).")
    c.add_argument("--target", help="HOST:PORT of the node under test")
    c.add_argument("--role", default="spoke", choices=["spoke", "hub", "app", "tester"],
                   help="role to play (default spoke)")
    c.add_argument("--secret", type=Path,
                   help="bootstrap secret file shared with the target (>= 4 KiB)")
    c.add_argument("--name", default="conformance",
                   help="node name to announce; the target must hold the secret under "
                        "this name (default conformance)")
    c.add_argument("--keystore", type=Path,
                   help="key store to keep our side's key consumption in (default: a "
                        "temporary one, so a secret serves one run)")
    c.add_argument("--check", action="append", default=[],
                   help="run only checks matching this glob (repeatable)")
    c.add_argument("--group", action="append", default=[],
                   help="run only checks of this group (sideband, link, hub, apps; "
                        "repeatable)")
    c.add_argument("--list", action="store_true", help="list the checks and exit")
    c.add_argument("--timeout", type=float, default=5.0,
                   help="seconds to wait for each answer (default 5)")


def _pcap_summary(args: argparse.Namespace) -> int:
    from qkdnet.pcap import summarize

    if not args.file.exists():
        raise ConfigError("no such file", source=str(args.file),
                          expected="a pcap file written by --pcap or a sniffer")
    from scapy.error import Scapy_Exception

    params = None
    if args.audit:
        from qkdnet.phy import presets

        params = presets.get(args.audit)
    try:
        result = summarize(args.file, ports=tuple(args.port))
        audit = None
        if params is not None:
            from qkdnet.link.capture_audit import audit_capture

            audit = [b.as_dict() for b in audit_capture(
                args.file, params, leak_accounting=args.leak_accounting,
                ports=tuple(args.port))]
            result["audit"] = audit
    except Scapy_Exception as err:
        raise ConfigError(f"not a capture file ({err})", source=str(args.file),
                          expected="a pcap or pcapng file") from err
    if args.json:
        emit_json(result)
    else:
        _print_summary(result)
        if audit is not None:
            _print_audit(audit, args.audit)
    return 1 if audit and any(b["matches"] is False for b in audit) else 0


def _print_audit(audit: list[dict[str, Any]], preset: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 160)
    table = Table(title=f"key length recomputed from the capture (preset {preset})")
    for col in ("session", "block", "method", "n_Z", "m_Z", "n_X", "m_X", "leak",
                "ℓ announced", "ℓ recomputed", "match"):
        table.add_column(col, justify="left" if col in ("session", "method") else "right")
    for b in audit:
        def counts(v: Any) -> str:
            return "/".join(str(x) for x in v) if v else "-"
        match = {True: "yes", False: "[red]NO[/]", None: b["note"] or "-"}[b["matches"]]
        table.add_row(b["session"], str(b["block"]), b["method"] or "-", counts(b["n_z"]),
                      counts(b["m_z"]), counts(b["n_x"]), counts(b["m_x"]),
                      str(sum(b["leak_parts"].values())) if b["leak_parts"] else "-",
                      str(b["ell_announced"]) if b["ell_announced"] is not None else "-",
                      str(b["ell_recomputed"]) if b["ell_recomputed"] is not None else "-",
                      match)
    console.print(table)


def _print_summary(s: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 160)
    n = len(s["sessions"])
    console.print(f"[bold]{s['file']}[/]: {s['frames']} frames in {n} "
                  f"session{'' if n == 1 else 's'}")
    sessions = Table(title="sessions")
    for col in ("client", "server", "names", "frames", "bytes", "start s", "duration s",
                "end"):
        sessions.add_column(col)
    for sess in s["sessions"]:
        sessions.add_row(sess["client"], sess["server"],
                         ", ".join(sorted(sess["names"].values())), str(sess["frames"]),
                         str(sess["bytes"]), f"{sess['start']:.3f}",
                         f"{sess['duration']:.3f}", sess["end"])
    console.print(sessions)
    types = Table(title="frames by type")
    types.add_column("type")
    types.add_column("frames", justify="right")
    types.add_column("bytes", justify="right")
    for name, v in sorted(s["per_type"].items()):
        types.add_row(name, str(v["frames"]), str(v["bytes"]))
    console.print(types)
    qber = s["qber"]
    console.print(f"QBER announced: {len(qber)} values"
                  + (f", mean {sum(qber) / len(qber):.4f}" if qber else ""))
    console.print(f"block sizes announced: {_block_sizes(s)}")
    console.print(f"bits disclosed in error correction: {s['leaked_bits']}")
    console.print(f"final key bits: {s['final_key_bits']}")
    console.print(f"authentication failures: {s['auth_failures']}; aborts: {len(s['aborts'])}")
    for a in s["aborts"]:
        console.print(f"  t={a['t']:.3f}s {a['from']}: {a['code']} ({a['reason']})")
    if s["undecodable_bytes"]:
        console.print(f"undecodable bytes on sideband ports: {s['undecodable_bytes']}")
    console.print("[bold]timeline[/]")
    for ev in s["timeline"]:
        console.print(f"  {ev['t']:9.3f}s {ev['from']} → {ev['to']}: {ev['event']}")


def _block_sizes(s: dict[str, Any]) -> str:
    """The blocks announced: '6 blocks of 1.16e+07 pulse slots' (or each size)."""
    parts = []
    for key, unit in (("block_slots", "pulse slots"), ("block_bits", "bits")):
        sizes = s.get(key) or []
        if not sizes:
            continue
        blocks = f"{len(sizes)} block{'' if len(sizes) == 1 else 's'}"
        if len(set(sizes)) == 1:
            parts.append(f"{blocks} of {sizes[0]:.3g} {unit}")
        else:
            parts.append(f"{blocks}: " + ", ".join(f"{v:.3g}" for v in sizes) + f" {unit}")
    return "; ".join(parts) or "none"


def _conformance(args: argparse.Namespace) -> int:
    import trio

    from qkdnet.conformance import (
        CHECKS,
        CheckContext,
        keys_from_secret,
        load_check_modules,
        run_checks,
    )

    load_check_modules()
    names = [n for n in CHECKS
             if (not args.check or any(fnmatch.fnmatch(n, pat) for pat in args.check))
             and (not args.group or CHECKS[n].group in args.group)]
    if args.list:
        if args.json:
            emit_json([{"name": n, "group": CHECKS[n].group,
                        "description": CHECKS[n].description} for n in names])
        else:
            for n in names:
                print(f"{n:40s} {CHECKS[n].description}")
        return 0
    if not args.target or ":" not in args.target:
        raise ConfigError("missing or bad --target", key="--target", expected="HOST:PORT")
    host, _, port_text = args.target.rpartition(":")
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"bad port {port_text!r}", key="--target",
                          expected="HOST:PORT") from None
    if args.secret is None:
        raise ConfigError("the kit needs the bootstrap secret shared with the target",
                          key="--secret", expected="a file of >= 4 KiB random bytes")
    if not names:
        raise ConfigError("no check matches --check/--group", key="--check",
                          expected="a glob such as 'auth.*' or a group such as sideband")
    secret = args.secret.read_bytes()
    keys, store = keys_from_secret(secret, args.keystore)
    ctx = CheckContext(host.strip("[]"), port, args.role, args.name, keys,
                       timeout=args.timeout)
    try:
        results = trio.run(run_checks, ctx, names)
    finally:
        store.close()
    failed = [r for r in results if not r.passed]
    hint = _refusal_hint(results, args)
    if args.json:
        emit_json({"target": args.target, "passed": len(results) - len(failed),
                   "failed": len(failed), "checks": [r.as_dict() for r in results],
                   **({"hint": hint} if hint else {})})
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"qkdnet conformance: {args.target}")
        table.add_column("check")
        table.add_column("result")
        table.add_column("detail")
        for r in results:
            table.add_row(r.name, "[green]pass[/]" if r.passed else "[red]FAIL[/]",
                          r.detail or r.description)
        console = Console(file=sys.stdout, width=None if sys.stdout.isatty() else 160)
        console.print(table)
        console.print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
        if hint:
            print(f"qkdnet: {hint}", file=sys.stderr)
    return 1 if failed else 0


def _refusal_hint(results: list[Any], args: argparse.Namespace) -> str | None:
    """Why most checks fail when the target refuses the kit itself, and the fix.

    A qkdnet hub cannot sign an ERROR for a peer it has no key for, so it just closes
    the connection after a HELLO from an unknown name or with the wrong secret.
    """
    hello = next((r for r in results if r.name == "handshake.hello"), None)
    if hello is None or hello.passed or "connection closed" not in hello.detail:
        return None
    again = ("" if args.keystore else "; if it has one, an earlier run already spent this "
             "secret's first keys: give every run the same --keystore FILE")
    return (f"the target closed the connection after the kit's HELLO as {args.name!r}: "
            f"it does not know that name, or holds another secret for it. On a qkdnet "
            f"hub the kit needs an entry of its own: add [spokes.{args.name}] with "
            f"bootstrap_secret = a fresh secret file (the one given here as --secret, "
            f"not a spoke's) to the hub's config and restart the hub{again}")
