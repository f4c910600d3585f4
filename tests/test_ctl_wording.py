"""stemctl's wording that needs no master: signal names, the permission-denied
hint, where to keep a scaled count."""

from __future__ import annotations

import argparse
import os
import pwd
from pathlib import Path

import pytest

from stemd.client import denied_message
from stemd.commands.nodes import signal_name
from stemd.ctl import Ctl
from stemd.ctl_scale import keep


@pytest.mark.parametrize("given, said", [
    ("9", "SIGKILL"), ("KILL", "SIGKILL"), ("sigkill", "SIGKILL"), ("10", "SIGUSR1"),
    ("usr1", "SIGUSR1"), (" HUP ", "SIGHUP"), ("15", "SIGTERM"),
])
def test_a_signal_is_named_however_it_was_given(given: str, said: str) -> None:
    """Regression: `stemctl kill -s 9` said "sent SIG9"."""
    assert signal_name(given) == said


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")


@needs_root
@pytest.mark.parametrize("mode", [0o600, 0o660])
def test_a_root_socket_is_not_root_twice(tmp_path: Path, mode: int) -> None:
    """Regression: "run as root or as root; ..." for a root master's socket."""
    sock = tmp_path / "stemd.sock"
    sock.touch(mode)
    os.chown(sock, 0, 0)
    sock.chmod(mode)
    message, hint = denied_message(str(sock))
    assert "owner root" in message
    assert "as root" in hint and "root or as root" not in hint and "as root," not in hint
    assert hint.startswith("run as root; to let operators in" if mode == 0o600
                           else "run as root or as a member of group 'root'")


@needs_root
@pytest.mark.parametrize("mode", [0o600, 0o660])
def test_another_owner_is_named(tmp_path: Path, mode: int) -> None:
    nobody = pwd.getpwnam("nobody")
    sock = tmp_path / "stemd.sock"
    sock.touch()
    os.chown(sock, nobody.pw_uid, 0)
    sock.chmod(mode)
    _, hint = denied_message(str(sock))
    assert hint.startswith("run as root or as nobody;" if mode == 0o600
                           else "run as root, as nobody, or as a member of group 'root'")


def ctl(config: str | None = None, socket: str | None = None) -> Ctl:
    return Ctl(argparse.Namespace(json=False, config=config, socket=socket))


def test_keeping_a_scaled_count_names_the_key_of_the_files_format() -> None:
    """Regression: "set the program's nodes = N" even for an env file, whose
    key is STEMD_NODES."""
    assert keep(ctl("/etc/default/stem-2"), "worker", 8) == \
        "set STEMD_NODES=8 in /etc/default/stem-2"
    assert keep(ctl("/etc/stem.toml"), "worker", 8) == \
        "set nodes = 8 in [programs.worker] of /etc/stem.toml"
    assert "one scheduler node" in keep(ctl("/etc/default/stem-2"), "scheduler", 2)
    both = keep(ctl(socket="/run/s.sock"), "worker", 8)
    assert "nodes = 8 in [programs.worker] (TOML)" in both and "STEMD_NODES=8" in both
