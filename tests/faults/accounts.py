"""Other users for the fault suite: ``nobody`` as an operator or a node user,
a throw-away group created with ``groupadd`` (and removed after), and an
interpreter those users can run with this checkout's code.

Everything here needs root: a test that uses it is skipped, with the reason,
when the suite runs as anyone else.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import stemd
from tests.fleet import Fleet

REPO = Path(stemd.__file__).resolve().parents[1]


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: runs processes as other users")


def nobody() -> pwd.struct_passwd:
    need_root()
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody'")


_PYTHON: list[str | None] = []


def python_for(user: pwd.struct_passwd) -> str:
    """An interpreter ``user`` can run that imports this checkout's stemd (the
    venv's may live under a 0700 home). Skips when there is none."""
    if not _PYTHON:
        found = None
        for candidate in (os.path.realpath(sys.executable), "/usr/bin/python3.11",
                          "/usr/bin/python3", "/usr/local/bin/python3"):
            if not os.path.exists(candidate):
                continue
            try:
                probe = subprocess.run(
                    [candidate, "-c", "import sys, stemd.ctl; assert sys.version_info >= (3, 11)"],
                    user=user.pw_uid, group=user.pw_gid, extra_groups=[],
                    env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, cwd="/",
                    capture_output=True, timeout=30)
            except OSError:
                continue
            if probe.returncode == 0:
                found = candidate
                break
        _PYTHON.append(found)
    if _PYTHON[0] is None:
        pytest.skip(f"no Python 3.11 that user {user.pw_name} can run with this checkout")
    return _PYTHON[0]


def ctl_as(user: pwd.struct_passwd, *args: str, gid: int | None = None,
           extra_groups: list[int] | None = None, timeout: float = 60
           ) -> subprocess.CompletedProcess[str]:
    """This checkout's stemctl as ``user``, with exactly the groups given (by
    default none besides the primary: the child would otherwise keep root's)."""
    return subprocess.run(
        [python_for(user), "-m", "stemd.ctl", *args],
        user=user.pw_uid, group=user.pw_gid if gid is None else gid,
        extra_groups=extra_groups or [], env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        cwd="/", capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def temp_group() -> Iterator[grp.struct_group]:
    """A new, empty group (``groupadd --system``), deleted when the test ends."""
    need_root()
    if shutil.which("groupadd") is None:
        pytest.skip("groupadd is not installed")
    name = f"stemt{uuid.uuid4().hex[:10]}"
    subprocess.run(["groupadd", "--system", name], check=True, capture_output=True, timeout=60)
    try:
        yield grp.getgrnam(name)
    finally:
        subprocess.run(["groupdel", name], capture_output=True, timeout=60)


@pytest.fixture
def open_fleet() -> Iterator[Fleet]:
    """A fleet in a directory every user can traverse (pytest's base temp dir
    is 0700, which would stop another user before the socket or file does)."""
    root = Path(tempfile.mkdtemp(prefix="stemd-fault-", dir="/tmp"))
    root.chmod(0o755)
    fleet = Fleet(root)
    yield fleet
    fleet.cleanup()
    shutil.rmtree(root, ignore_errors=True)
