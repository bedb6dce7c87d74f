"""Commands of the application layer: ``qkdnet demo``, ``chat``, ``send``, ``receive``.

``chat``, ``send`` and ``receive`` talk to a running node daemon (``qkdnet node``)
through its local Unix socket (``--node PATH``, default ``$QKDNET_NODE_SOCKET`` or
``~/.qkdnet/node.sock``); ``demo`` starts its own hub and spokes in-process.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from qkdnet.cli import CommandSet, emit_json, fail, module_doc, run_trio
from qkdnet.errors import ConfigError


def _node(args: argparse.Namespace) -> Any:
    from qkdnet.apps.api import default_socket_path
    from qkdnet.apps.local import NodeClient
    path = Path(args.node) if args.node else default_socket_path()
    return NodeClient(path)


async def _reach(node: Any, peer: str | None = None) -> dict[str, Any]:
    """The node's status, which also proves it runs; refuses ``peer`` if it is us."""
    status: dict[str, Any] = await node.fetch_status()
    me = status.get("name")
    if peer is not None and peer == me:
        raise ConfigError(f"{peer!r} is this node itself (the node at {node.path}): "
                          "name another spoke")
    return status


def _demo(args: argparse.Namespace) -> int:
    from qkdnet.apps.demo import main
    summary = main(seed=args.seed, keep=args.keep, as_json=args.json,
                   link_timeout=args.link_timeout, use_link=not args.no_link)
    if args.json:
        emit_json(summary)
    return 0 if summary.get("ok") else 1


def _chat(args: argparse.Namespace) -> int:
    from qkdnet.apps.chat import run_chat_cli
    node = _node(args)

    async def chat() -> int:
        await _reach(node, args.peer)
        return await run_chat_cli(node, args.peer, service=args.service, listen=args.listen)

    return int(run_trio(chat, message="chat interrupted"))


def _send(args: argparse.Namespace) -> int:
    from qkdnet.apps.transfer import run_send_cli
    path = Path(args.file)
    if path.is_dir():
        return fail(f"{path} is a directory (give the path of a file; "
                    "to send a folder, archive it first)", 2)
    if not path.is_file():
        return fail(f"{path}: no such file (give the path of a regular file)", 2)
    node = _node(args)

    async def send() -> dict[str, Any]:
        await _reach(node, args.to)
        result: dict[str, Any] = await run_send_cli(
            node, path, args.to, service=args.service, force=args.force, quiet=args.json)
        return result

    result = run_trio(send, message=f"sending {path.name} interrupted (send it again "
                                    "to resume)")
    if args.json:
        emit_json(result)
    return 0 if result.get("verified") else 1


def _receive(args: argparse.Namespace) -> int:
    from qkdnet.apps.transfer import run_receive_cli
    into = Path(args.into)
    if into.exists() and not into.is_dir():
        return fail(f"--into {into}: not a directory (give the folder to receive into)", 2)
    node = _node(args)

    async def receive() -> dict[str, Any]:
        await _reach(node)
        into.mkdir(parents=True, exist_ok=True)
        result: dict[str, Any] = await run_receive_cli(
            node, into, service=args.service, count=args.count, quiet=args.json)
        return result

    result = run_trio(receive, message="receiving interrupted (a partial file is kept "
                                       "as NAME.part: sending it again resumes)")
    if args.json:
        emit_json(result)
    return 0 if all(r.get("verified") for r in result.get("files", [])) else 1


def register(commands: CommandSet) -> None:
    """Add the application commands."""
    p = commands.add("demo", _demo, help="hub + alice, bob, carol on loopback: chat and a file",
                     description=module_doc("qkdnet.apps.demo"))
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

