"""The ``qkdnet`` command line: one entry point whose subcommands the layers register.

Each layer module listed in :data:`REGISTRARS` exposes ``register(commands)``, where
``commands`` is a :class:`CommandSet`; it adds its subcommands with
:meth:`CommandSet.add`. Handlers take the parsed arguments and return an exit code.

Conventions every command follows: ``--help`` at every level, ``-v/--verbose`` and
``--json`` on every command (results as JSON on stdout; human text on stderr or as a
rich table), and errors as one line naming the problem and the fix, exit code 2 for
usage or configuration errors and 1 for runtime failures. A Python traceback is shown
only with ``--verbose``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from qkdnet import __version__
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


class CommandSet:
    """A level of subcommands; :meth:`group` opens a nested level (``qkdnet phy …``)."""

    def __init__(self, subparsers: Any, common: argparse.ArgumentParser) -> None:
        self._subparsers = subparsers
        self._common = common

    def add(self, name: str, handler: Handler, *, help: str,
            description: str | None = None) -> argparse.ArgumentParser:
        """Add a command; returns its parser so the caller can add arguments."""
        parser: argparse.ArgumentParser = self._subparsers.add_parser(
            name, help=help, description=description or help, parents=[self._common],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        parser.set_defaults(handler=handler)
        return parser

    def group(self, name: str, *, help: str) -> CommandSet:
        """Add a command that only holds subcommands, and return their set."""
        parser: argparse.ArgumentParser = self._subparsers.add_parser(
            name, help=help, description=help, parents=[self._common])
        parser.set_defaults(handler=_usage_of(parser))
        sub = parser.add_subparsers(title="commands", metavar="COMMAND")
        return CommandSet(sub, self._common)


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
    parser = argparse.ArgumentParser(
        prog="qkdnet", parents=[common],
        description="qkdnet: a hub-and-spoke trusted-node QKD network stack "
                    "with an emulated quantum PHY.")
    parser.add_argument("--version", action="version", version=f"qkdnet {__version__}")
    parser.set_defaults(handler=_usage_of(parser))
    commands = CommandSet(parser.add_subparsers(title="commands", metavar="COMMAND"), common)
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
    """Print one error line on stderr and return ``exit_code``."""
    print(f"qkdnet: error: {message}", file=sys.stderr)
    return exit_code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    verbose = int(getattr(args, "verbose", 0))
    logging.basicConfig(
        level=logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    handler: Handler = args.handler
    try:
        return handler(args)
    except QkdnetError as err:
        if verbose:
            traceback.print_exc()
        return fail(str(err), err.exit_code)
    except KeyboardInterrupt:
        return fail("interrupted", 130)
    except OSError as err:
        if verbose:
            traceback.print_exc()
        return fail(f"{err.strerror or err} ({getattr(err, 'filename', None) or 'system call'})")
    except Exception as err:  # a bug of ours: still one line, the traceback on request
        if verbose:
            traceback.print_exc()
        return fail(f"internal error: {type(err).__name__}: {err} "
                    "(run again with --verbose for the traceback, and please report it)")


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
