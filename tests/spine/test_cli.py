"""The command line's shared conventions: help everywhere, version, error lines, exit codes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from qkdnet import __version__
from qkdnet.cli import build_parser, main


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qkdnet", *args],
                          capture_output=True, text=True, timeout=120)


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"qkdnet {__version__}"


def _walk(parser, path=()):  # type: ignore[no-untyped-def]
    yield path, parser
    for action in parser._actions:
        choices = getattr(action, "choices", None)
        if isinstance(choices, dict):
            for name, sub in choices.items():
                yield from _walk(sub, (*path, name))


def test_every_command_level_has_help_verbose_and_json() -> None:
    commands = list(_walk(build_parser()))
    assert len(commands) > 1, "no subcommands registered"
    for path, parser in commands:
        options = {opt for action in parser._actions for opt in action.option_strings}
        assert {"-h", "--help", "-v", "--verbose", "--json"} <= options, path


def test_bare_command_prints_usage_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage" in capsys.readouterr().err


def test_unknown_option_is_a_usage_error() -> None:
    result = run_cli("--no-such-option")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_config_errors_are_one_line_with_exit_2(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.toml"
    bad.write_text('[node]\nname = "x"\nrole = "spoke"\nhub = "hub"\n[netwrk]\n')
    result = run_cli("node", "--config", str(bad))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and "did you mean 'network'" in result.stderr


def test_a_file_that_is_not_a_capture_is_a_clear_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    junk = tmp_path / "notes.txt"
    junk.write_text("not a capture\n")
    result = run_cli("pcap", "summary", str(junk))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "not a capture file" in result.stderr


def test_help_texts_have_no_rest_markup() -> None:
    """Every command's --help as printed: no ``literal``, :mod:`x` or :class:`~y`."""
    for path, parser in _walk(build_parser()):
        text = parser.format_help()
        assert "``" not in text, (path, text)
        for role in (":mod:`", ":class:`", ":func:`", ":meth:`", ":data:`", ":attr:`"):
            assert role not in text, (path, role)


def test_plain_text_keeps_the_words() -> None:
    from qkdnet.cli import plain_text

    assert plain_text("run ``qkdnet link run`` with :mod:`qkdnet.hub.linkrun`, "
                      ":class:`~qkdnet.hub.node.SpokeNode` and :func:`f <a.b.f>`") == \
        "run qkdnet link run with qkdnet.hub.linkrun, SpokeNode and f"


def test_global_options_before_the_command_count(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.toml"
    bad.write_text('[node]\nname = "x"\nrole = "spoke"\nhub = "hub"\n[netwrk]\n')
    quiet = run_cli("node", "--config", str(bad))
    assert "Traceback" not in quiet.stderr
    for argv in (["-v", "node", "--config", str(bad)], ["node", "--config", str(bad), "-v"]):
        loud = run_cli(*argv)
        assert loud.returncode == 2 and "Traceback" in loud.stderr, argv
        assert loud.stderr.rstrip().endswith("did you mean 'network'?)") or \
            "did you mean 'network'" in loud.stderr.splitlines()[-1]


def test_errors_inside_nurseries_are_reported_as_themselves() -> None:
    import errno
    import sqlite3

    import trio

    from qkdnet.cli_errors import describe_error
    from qkdnet.errors import ConfigError, Interrupted

    def group(*errs: BaseException) -> BaseExceptionGroup:  # type: ignore[type-arg]
        return BaseExceptionGroup("Exceptions from Trio nursery", list(errs))

    cancelled = trio.Cancelled._create()  # what a nursery's other tasks raise
    assert describe_error(group(cancelled, ConfigError("bad", key="k"))) == (
        "k: bad", "ConfigError", 2)
    busy = OSError(errno.EADDRINUSE, "Address already in use")
    message, _kind, code = describe_error(group(group(busy), trio.BrokenResourceError()))
    assert code == 1 and message.startswith("address already in use")
    assert describe_error(group(ConfigError("x"), KeyboardInterrupt()))[2] == 130
    assert describe_error(Interrupted("chat interrupted")) == (
        "chat interrupted", "Interrupted", 130)
    assert describe_error(group(trio.TooSlowError()))[0].startswith("timed out")
    assert describe_error(sqlite3.OperationalError("database is locked"))[0] == \
        "key store error: database is locked"
    bug, kind, code = describe_error(group(cancelled, ZeroDivisionError("boom")))
    assert (kind, code) == ("InternalError", 1)
    assert bug.startswith("internal error: ZeroDivisionError: boom") and "report" in bug


def test_output_into_a_closed_pipe_ends_quietly(tmp_path) -> None:
    """``qkdnet ... | head -1``: the reader leaves early; no BrokenPipeError traceback."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONUNBUFFERED="0")
    r = subprocess.run(f"'{sys.executable}' -m qkdnet --json phy sweep --preset snspd-metro "
                       "--km 0:100:1 --pulses 1e4 | head -c 10",
                       shell=True, capture_output=True, text=True, env=env, timeout=120)
    assert len(r.stdout) == 10
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr
