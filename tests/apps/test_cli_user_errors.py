"""Every ordinary mistake, fed through the real command line, gets one clear line.

Each case runs ``python -m qkdnet …`` as a process, the way a user meets it, and
checks: the exit code of the convention (2 usage/config, 1 runtime), exactly one
``qkdnet: error:`` line saying what is wrong (and the words that name the fix), no
"internal error" and no traceback. Under ``--json`` the same error is a JSON object
on stdout.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from testkit import running_netfixture

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent
QKDNET = [sys.executable, "-m", "qkdnet"]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*QKDNET, *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd)


def assert_one_line(result: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    """The error line; fails unless it is the only one and the run ended as it should."""
    err = result.stderr
    assert "Traceback" not in err and "internal error" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("qkdnet: error:")]
    assert len(lines) == 1, err
    assert result.returncode == code, (result.returncode, err)
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("errnet")
    with running_netfixture(folder, "alice", "bob") as folder_:
        yield folder_


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port some other program is listening on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def _hub_config(folder: Path, port: int, secrets: dict[str, bytes | None]) -> Path:
    lines = ['[node]\nname = "hub"\nrole = "hub"\n',
             f'[network]\nlisten_host = "127.0.0.1"\nsideband_port = {port}\n',
             '[keystore]\npath = "hub.keys"\n', '[link]\nenabled = false\n']
    for name, secret in secrets.items():
        if secret is not None:
            (folder / f"{name}.secret").write_bytes(secret)
        lines.append(f'[spokes.{name}]\nbootstrap_secret = "{name}.secret"\n')
    (folder / "hub.toml").write_text("".join(lines))
    return folder / "hub.toml"


def _spoke_config(folder: Path, name: str, port: int, secret: bytes | None) -> Path:
    if secret is not None:
        (folder / f"{name}.secret").write_bytes(secret)
    path = folder / f"{name}.toml"
    path.write_text(f'[node]\nname = "{name}"\nrole = "spoke"\nhub = "hub"\n'
                    f'[network]\nhub_host = "127.0.0.1"\nhub_sideband_port = {port}\n'
                    f'app_socket = "{name}.sock"\n'
                    f'[keystore]\npath = "{name}.keys"\n'
                    f'[auth]\nbootstrap_secret = "{name}.secret"\n[link]\nenabled = false\n')
    return path


# -- busy ports ----------------------------------------------------------------------

def test_hub_on_a_busy_port(tmp_path: Path, busy_port: int) -> None:
    _hub_config(tmp_path, busy_port, {"alice": os.urandom(4096)})
    result = run("hub", "--config", "hub.toml", cwd=tmp_path)
    assert_one_line(result, 1, f"127.0.0.1:{busy_port}", "in use", "sideband_port")
    assert "listening" not in result.stderr  # it never listened


def test_link_bob_on_a_busy_port(tmp_path: Path, busy_port: int) -> None:
    result = run("link", "bob", "--listen", f"127.0.0.1:{busy_port}", "--seed", "1",
                 "--store", str(tmp_path / "b.keys"), "--secret", str(tmp_path / "s"),
                 "--new-secret")
    assert_one_line(result, 1, "already in use", f"--listen 127.0.0.1:{busy_port}")


def test_fiber_on_a_busy_port(busy_port: int) -> None:
    result = run("fiber", "--listen", f"127.0.0.1:{busy_port}", "--forward", "127.0.0.1:9",
                 "--km", "10")
    assert_one_line(result, 1, "already in use", f"--listen 127.0.0.1:{busy_port}")


# -- bootstrap secrets -------------------------------------------------------------------

def test_hub_with_a_missing_secret(tmp_path: Path) -> None:
    _hub_config(tmp_path, 9, {"alice": None})
    assert_one_line(run("hub", "--config", "hub.toml", cwd=tmp_path), 2,
                    "alice.secret", "cannot read bootstrap secret")


def test_node_with_a_missing_secret(tmp_path: Path) -> None:
    _spoke_config(tmp_path, "alice", 9, None)
    assert_one_line(run("node", "--config", "alice.toml", cwd=tmp_path), 2, "alice.secret")


def test_node_with_a_short_secret(tmp_path: Path) -> None:
    _spoke_config(tmp_path, "alice", 9, os.urandom(100))
    assert_one_line(run("node", "--config", "alice.toml", cwd=tmp_path), 2, "100 bytes")


def test_link_alice_with_a_missing_secret(tmp_path: Path) -> None:
    result = run("link", "alice", "--seed", "1", "--store", str(tmp_path / "a.keys"),
                 "--secret", str(tmp_path / "nothing"))
    assert_one_line(result, 2, "not found", "bob --new-secret")


# -- the node's socket ---------------------------------------------------------------

@pytest.mark.parametrize("command", [
    ["receive", "--into", "inbox"], ["send", "FILE", "--to", "bob"], ["chat", "bob"]])
def test_app_commands_without_a_node(tmp_path: Path, command: list[str]) -> None:
    (tmp_path / "FILE").write_bytes(b"x")
    result = run(*command, "--node", str(tmp_path / "missing.sock"), cwd=tmp_path)
    assert_one_line(result, 1, "cannot reach the node daemon", "missing.sock",
                    "qkdnet node --config")


def test_app_command_when_the_node_is_not_running(tmp_path: Path) -> None:
    stale = tmp_path / "stale.sock"  # a socket file left by a node that died
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))
    result = run("receive", "--into", str(tmp_path / "in"), "--node", str(stale))
    assert_one_line(result, 1, "cannot reach the node daemon", "refused")


def test_status_of_a_node_that_is_not_running(tmp_path: Path) -> None:
    result = run("node", "status", "--socket", str(tmp_path / "alice.keys.ctl"))
    assert_one_line(result, 1, "is it running?")


# -- peers ---------------------------------------------------------------------------------

def test_send_to_an_unknown_peer(network: Path, tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("hello\n")
    result = run("send", str(tmp_path / "f.txt"), "--to", "nobody", "--node",
                 str(network / "alice.sock"))
    assert_one_line(result, 1, "no spoke named 'nobody'")


@pytest.mark.parametrize("command", ["send", "chat"])
def test_talking_to_yourself(network: Path, tmp_path: Path, command: str) -> None:
    (tmp_path / "f.txt").write_text("hello\n")
    args = ["send", str(tmp_path / "f.txt"), "--to", "alice"] if command == "send" \
        else ["chat", "alice"]
    result = run(*args, "--node", str(network / "alice.sock"))
    line = assert_one_line(result, 2, "'alice' is this node itself", "another spoke")
    assert "not connected" not in line


# -- a directory where a file belongs, and the reverse -------------------------------------

@pytest.mark.parametrize("command", [
    ["send", "DIR", "--to", "bob"],
    ["hub", "--config", "DIR"],
    ["pcap", "summary", "DIR"],
    ["conformance", "--target", "127.0.0.1:9", "--secret", "DIR"],
    ["link", "alice", "--seed", "1", "--store", "a.keys", "--secret", "DIR"],
])
def test_a_directory_given_for_a_file(tmp_path: Path, command: list[str]) -> None:
    (tmp_path / "DIR").mkdir()
    result = run(*command, cwd=tmp_path)
    line = assert_one_line(result, 2, "DIR")
    assert "directory" in line and "no such file" not in line


def test_a_file_given_for_the_receive_folder(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("x")
    assert_one_line(run("receive", "--into", "f.txt", "--node", "x.sock", cwd=tmp_path), 2,
                    "not a directory")


# -- --json --------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["before", "after"])
def test_errors_under_json_are_json(tmp_path: Path, where: str) -> None:
    args = ["send", "nothing.bin", "--to", "bob"]
    argv = ["--json", *args] if where == "before" else [*args, "--json"]
    result = run(*argv, cwd=tmp_path)
    assert_one_line(result, 2, "nothing.bin")
    doc = json.loads(result.stdout)
    assert doc["ok"] is False and doc["error"]["exit_code"] == 2
    assert "nothing.bin" in doc["error"]["message"]


def test_usage_errors_under_json_are_json() -> None:
    result = run("--json", "link", "run", "--no-such-flag")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert json.loads(result.stdout)["error"]["kind"] == "UsageError"


def test_send_json_reports_the_budget_as_numbers(network: Path, tmp_path: Path) -> None:
    (tmp_path / "f.bin").write_bytes(os.urandom(10_000))
    recv = subprocess.Popen([*QKDNET, "receive", "--into", str(tmp_path / "in"), "--count",
                             "1", "--json", "--node", str(network / "bob.sock")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(100):  # until the receiver listens
            sent = run("--json", "send", str(tmp_path / "f.bin"), "--to", "bob", "--node",
                       str(network / "alice.sock"))
            if "does not listen" not in sent.stderr:
                break
        assert sent.returncode == 0, sent.stderr
        recv.communicate(timeout=60)
    finally:
        recv.kill()
    budget = json.loads(sent.stdout)["budget"]
    assert budget["needed_bits"] == int(8 * 10_000 * 1.01) + 1024
    assert isinstance(budget["available_bits"], int) and budget["available_bits"] > 0
    assert budget["wait_s"] == 0.0
    assert budget["key_rate_bps"] is None or isinstance(budget["key_rate_bps"], float)
