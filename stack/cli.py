"""The ``qkdnet`` command line: one entry point whose subcommands the layers register.

Each layer module listed in :data:`REGISTRARS` exposes ``register(commands)``, where
``commands`` is a :class:`CommandSet`; it adds its subcommands with
:meth:`CommandSet.add`. Handlers take the parsed arguments and return an exit code.

Conventions every command follows: ``--help`` at every level, ``-v/--verbose`` and
``--json`` on every command and also before it (``qkdnet --json link run`` is
``qkdnet link run --json``), results as JSON on stdout under ``--json`` (tables and
summaries on stdout otherwise, progress and notes on stderr), and errors as one line
naming the problem and the fix, exit code 2 for usage or configuration errors, 1 for
runtime failures and 130 for Ctrl-C. Under ``--json`` an error is also one JSON object
on stdout. A Python traceback is shown only with ``--verbose``.

Errors reach the user through one path, :func:`report_error`: an error raised inside
a trio nursery arrives wrapped in an exception group, so the group is opened and the
error that caused it (a :class:`~qkdnet.errors.QkdnetError`, an ``OSError`` such as a
busy port, Ctrl-C) is reported as itself. "internal error … please report it" is left
for exceptions that are bugs. Commands that run trio use :func:`run_trio`, which turns
Ctrl-C into a prompt, clean stop (see there).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import logging
import os
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from qkdnet import __version__
from qkdnet.cli_errors import describe_error, report_json
from qkdnet.cli_run import run_trio
from qkdnet.errors import QkdnetError

Handler = Callable[[argparse.Namespace], int]

#: Modules that register subcommands, in the order they appear in ``--help``.
REGISTRARS: tuple[str, ...] = (
    "qkdnet.apps.cli",
    "qkdnet.hub.cli",
    "qkdnet.link.cli",
    "qkdnet.phy.cli",
    "qkdnet.sideband_cli",
)

#: Whether the command line asked for JSON (set by :func:`main`; read by :func:`fail`).
_json_output = False


_REST_ROLE = re.compile(r":[a-z]+:`(~?)([^`<]*?)(?:\s*<[^>]*>)?`")
_REST_LITERAL = re.compile(r"``([^`]+)``")


def plain_text(text: str | None) -> str | None:
    """Help text without reST markup: ``x`` -> x, :mod:`a.b` -> a.b, :class:`~a.B` -> B."""
    if text is None:
        return None

    def role(match: re.Match[str]) -> str:
        tilde, target = match.group(1), match.group(2).strip()
        return target.rsplit(".", 1)[-1] if tilde else target

    return _REST_LITERAL.sub(r"\1", _REST_ROLE.sub(role, text))


def module_doc(name: str) -> str | None:
    """A module's docstring without importing it (help must not load scapy or numpy)."""
    import ast

    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        return None
    with open(spec.origin, encoding="utf-8") as f:
        return ast.get_docstring(ast.parse(f.read()))


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors as JSON too when ``--json`` was given."""

    def error(self, message: str) -> Any:  # argparse's signature: NoReturn
        if "--json" in sys.argv[1:]:
            report_json(f"{self.prog}: {message}", "UsageError", 2)
        super().error(message)


class CommandSet:
    """A level of subcommands; :meth:`group` opens a nested level (``qkdnet phy …``)."""

    def __init__(self, subparsers: Any, common: argparse.ArgumentParser) -> None:
        self._subparsers = subparsers
        self._common = common

    def add(self, name: str, handler: Handler, *, help: str,
            description: str | None = None) -> argparse.ArgumentParser:
        """Add a command; returns its parser so the caller can add arguments."""
        parser: argparse.ArgumentParser = self._subparsers.add_parser(
            name, help=plain_text(help), description=plain_text(description or help),
            parents=[self._common], formatter_class=_PlainHelpFormatter,
        )
        parser.set_defaults(handler=handler)
        return parser

    def group(self, name: str, *, help: str) -> CommandSet:
        """Add a command that only holds subcommands, and return their set."""
        parser: argparse.ArgumentParser = self._subparsers.add_parser(
            name, help=plain_text(help), description=plain_text(help),
            parents=[self._common])
        parser.set_defaults(handler=_usage_of(parser))
        sub = parser.add_subparsers(title="commands", metavar="COMMAND",
                                    parser_class=_Parser)
        return CommandSet(sub, self._common)


class _PlainHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions keep their line breaks; option help loses reST markup."""

    def _expand_help(self, action: argparse.Action) -> str:
        return plain_text(super()._expand_help(action)) or ""


def _usage_of(parser: argparse.ArgumentParser) -> Handler:
    def show_usage(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2
    return show_usage


def build_parser() -> argparse.ArgumentParser:
    """The whole parser, with every registered layer's commands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=0,
                        help="more detail; tracebacks on errors")
    common.add_argument("--json", action="store_true",
                        help="print results as JSON on stdout")
    parser = _Parser(
        prog="qkdnet",
        description="qkdnet: a hub-and-spoke trusted-node QKD network stack "
                    "with an emulated quantum PHY.")
    # Before the subcommand the options land in their own attributes, since the
    # subcommand's defaults would overwrite them; main() merges the two.
    parser.add_argument("-v", "--verbose", action="count", default=0, dest="global_verbose",
                        help="more detail; tracebacks on errors (also after the command)")
    parser.add_argument("--json", action="store_true", dest="global_json",
                        help="print results as JSON on stdout (also after the command)")
    parser.add_argument("--version", action="version", version=f"qkdnet {__version__}")
    parser.set_defaults(handler=_usage_of(parser))
    commands = CommandSet(parser.add_subparsers(title="commands", metavar="COMMAND",
                                                parser_class=_Parser), common)
    for module_name in REGISTRARS:
        if importlib.util.find_spec(module_name) is None:
            continue
        importlib.import_module(module_name).register(commands)
    return parser


def emit_json(result: Any) -> None:
    """Write a command's result as JSON on stdout."""
    json.dump(result, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")
    sys.stdout.flush()


def fail(message: str, exit_code: int = 1) -> int:
    """Report one error (a line on stderr; JSON on stdout too under ``--json``)."""
    print(f"qkdnet: error: {message}", file=sys.stderr)
    if _json_output:
        report_json(message, "error", exit_code)
    return exit_code


def report_error(err: BaseException, *, verbose: int = 0,
                 args: argparse.Namespace | None = None) -> int:
    """Report an exception raised by a command as one line; returns the exit code."""
    if isinstance(err, SystemExit):  # argparse inside a handler, sys.exit(): as asked
        return err.code if isinstance(err.code, int) else 1
    message, kind, code = describe_error(err, args)
    if verbose and code != 130:
        traceback.print_exception(err)
    # Ctrl-C is how a user stops a command, not an error of theirs or ours.
    print(f"qkdnet: {message}" if code == 130 else f"qkdnet: error: {message}",
          file=sys.stderr)
    if _json_output:
        report_json(message, kind, code)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    global _json_output
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
    except KeyboardInterrupt:
        return report_error(KeyboardInterrupt())
    args.verbose = int(getattr(args, "verbose", 0)) + args.global_verbose
    args.json = bool(getattr(args, "json", False)) or args.global_json
    _json_output = args.json
    verbose = args.verbose
    logging.basicConfig(
        level=logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    handler: Handler = args.handler
    try:
        return handler(args)
    except BrokenPipeError:
        # The reader went away (``qkdnet ... | head``): like any Unix tool, stop quietly.
        # stdout is pointed at /dev/null so the interpreter's final flush cannot fail.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except BaseException as err:  # one path for every error; see report_error
        return report_error(err, verbose=verbose, args=args)


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


__all__ = ["CommandSet", "QkdnetError", "build_parser", "emit_json", "fail", "main",
           "module_doc",
           "plain_text", "report_error", "run", "run_trio"]


if __name__ == "__main__":
    run()
