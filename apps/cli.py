"""Commands of the application layer: ``qkdnet demo``, ``chat``, ``send``, ``receive``.

``chat``, ``send`` and ``receive`` talk to a running node daemon (``qkdnet node``)
through its local Unix socket (``--node PATH``, default ``$QKDNET_NODE_SOCKET`` or
``~/.qkdnet/node.sock``); ``demo`` starts its own hub and spokes in-process.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from qkdnet.cli import CommandSet, emit_json, fail


def _node(args: argparse.Namespace) -> Any:
    from qkdnet.apps.api import default_socket_path
    from qkdnet.apps.local import NodeClient
    path = Path(args.node) if args.node else default_socket_path()
    return NodeClient(path)


def _demo(args: argparse.Namespace) -> int:
    from qkdnet.apps.demo import main
    summary = main(seed=args.seed, keep=args.keep, as_json=args.json,
                   link_timeout=args.link_timeout, use_link=not args.no_link)
    if args.json:
        emit_json(summary)
    return 0 if summary.get("ok") else 1


def _chat(args: argparse.Namespace) -> int:
    import trio

    from qkdnet.apps.chat import run_chat_cli
    node = _node(args)
    return int(trio.run(lambda: run_chat_cli(node, args.peer, service=args.service,
                                             listen=args.listen)))


def _send(args: argparse.Namespace) -> int:
    import trio

    from qkdnet.apps.transfer import run_send_cli
    path = Path(args.file)
    if not path.is_file():
        return fail(f"{path}: no such file (give the path of a regular file)", 2)
    result = trio.run(lambda: run_send_cli(_node(args), path, args.to, service=args.service,
                                           force=args.force, quiet=args.json))
    if args.json:
        emit_json(result)
    return 0 if result.get("verified") else 1


def _receive(args: argparse.Namespace) -> int:
    import trio

    from qkdnet.apps.transfer import run_receive_cli
    result = trio.run(lambda: run_receive_cli(_node(args), Path(args.into),
                                              service=args.service, count=args.count,
                                              quiet=args.json))
    if args.json:
        emit_json(result)
    return 0 if all(r.get("verified") for r in result.get("files", [])) else 1


def register(commands: CommandSet) -> None:
    """Add the application commands."""
    p = commands.add("demo", _demo, help="hub + alice, bob, carol on loopback: chat and a file",
                     description=__import__("qkdnet.apps.demo", fromlist=["x"]).__doc__)
    p.add_argument("--seed", type=int, default=1, help="fixes PHY, chat lines and file")
    p.add_argument("--keep", metavar="DIR", help="keep key stores and files in DIR")
    p.add_argument("--link-timeout", type=float, default=40.0,
                   help="seconds to wait for QKD key before using TEST-ONLY key")
    p.add_argument("--no-link", action="store_true",
                   help="skip QKD links, use TEST-ONLY prefilled key at once")

    def node_arg(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--node", metavar="SOCKET",
                            help="node daemon's local socket (default $QKDNET_NODE_SOCKET "
                                 "or ~/.qkdnet/node.sock)")

    p = commands.add("chat", _chat, help="interactive line chat with another spoke")
    p.add_argument("peer", help="spoke to chat with")
    p.add_argument("--listen", action="store_true", help="wait for the peer to call")
    p.add_argument("--service", default="chat", help="service name (default chat)")
    node_arg(p)

    p = commands.add("send", _send, help="send a file to another spoke")
    p.add_argument("file", help="file to send")
    p.add_argument("--to", required=True, metavar="PEER", help="receiving spoke")
    p.add_argument("--service", default="files", help="service name (default files)")
    p.add_argument("--force", action="store_true",
                   help="start even if the key budget check says key is short")
    node_arg(p)

    p = commands.add("receive", _receive, help="receive files from other spokes")
    p.add_argument("--into", required=True, metavar="DIR", help="folder for received files")
    p.add_argument("--count", type=int, default=0,
                   help="stop after this many files (default: run until Ctrl-C)")
    p.add_argument("--service", default="files", help="service name (default files)")
    node_arg(p)


__all__ = ["register"]

