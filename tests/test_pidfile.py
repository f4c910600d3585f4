"""PID files: atomic writes that never follow symlinks, reads that refuse
what stemd did not write, and identity checks against real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from stem_core.errors import PidFileError
from stem_core.pidfile import (
    ABSENT,
    LIVE,
    STALE,
    UNTRUSTED,
    FoundNode,
    PidRecord,
    check_node_identity,
    classify,
    healthy,
    read_pidfile,
    remove_pidfile,
    trusted_owners,
    write_pidfile,
)


def test_write_read_remove(tmp_path: Path) -> None:
    path = str(tmp_path / "a.pid")
    write_pidfile(path, 4242)
    record = read_pidfile(path)
    assert record is not None and record.pid == 4242
    assert os.stat(path).st_mode & 0o777 == 0o644
    assert not remove_pidfile(path, pid=1234)  # names another pid: kept
    assert remove_pidfile(path, pid=4242)
    assert read_pidfile(path) is None
    assert [p.name for p in tmp_path.iterdir()] == []  # no temp file left


def test_symlink_is_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    link = tmp_path / "node.pid"
    link.symlink_to(victim)
    with pytest.raises(PidFileError, match="symlink"):
        read_pidfile(str(link))
    write_pidfile(str(link), 999)
    assert victim.read_text() == "precious\n"
    assert not link.is_symlink() and link.read_text() == "999\n"


def test_untrusted_owner_and_junk(tmp_path: Path) -> None:
    path = tmp_path / "x.pid"
    path.write_text("123\n")
    with pytest.raises(PidFileError, match="owned by uid"):
        read_pidfile(str(path), trusted_uids=frozenset({os.geteuid() + 1}))
    for junk in ("", "abc", "1", "12 34", "9" * 100):
        path.write_text(junk)
        with pytest.raises(PidFileError):
            read_pidfile(str(path))
    (tmp_path / "dir.pid").mkdir()
    with pytest.raises(PidFileError):
        read_pidfile(str(tmp_path / "dir.pid"))


def _node(name: str, program: str = "worker") -> subprocess.Popen[bytes]:
    env = dict(os.environ, STEMD_NODE=name, STEMD_PROGRAM=program)
    proc = subprocess.Popen(["/bin/sleep", "30"], env=env, start_new_session=True)
    # Popen returns once exec closes its CLOEXEC pipe, which the kernel does
    # before it lays out the new environment: /proc/PID/environ can read
    # empty for a moment (seen under load). Adoption reads long-running
    # processes; a test reading a just-spawned one must wait.
    deadline = time.monotonic() + 10
    while "STEMD_NODE" not in psutil.Process(proc.pid).environ():
        assert time.monotonic() < deadline, "the child's environment never appeared"
        time.sleep(0.001)
    return proc


def test_identity_of_a_real_node() -> None:
    proc = _node("alpha")
    try:
        record = PidRecord(proc.pid, time.time())
        assert check_node_identity(record, "alpha", "worker", os.getuid()) is None
        assert "not node beta" in (check_node_identity(record, "beta", "worker", None) or "")
        assert "uid" in (check_node_identity(record, "alpha", "worker", os.getuid() + 1) or "")
        # a file written long before the process started: the PID was reused
        old = PidRecord(proc.pid, time.time() - 3600)
        assert "reused" in (check_node_identity(old, "alpha", "worker", None) or "")
    finally:
        proc.kill()
        proc.wait()
    assert check_node_identity(PidRecord(proc.pid, 0), "alpha", "worker", None) is not None


def test_identity_of_an_unrelated_process() -> None:
    """The test runner itself: alive, but no session leader and no STEMD_NODE."""
    import time

    why = check_node_identity(PidRecord(os.getpid(), time.time()), "alpha", "worker", None)
    assert why is not None


def test_identity_needs_session_leader() -> None:
    env = dict(os.environ, STEMD_NODE="alpha", STEMD_PROGRAM="worker")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], env=env)
    try:
        import time

        why = check_node_identity(PidRecord(proc.pid, time.time()), "alpha", "worker", None)
        assert why == "the process is not a session leader"
    finally:
        proc.kill()
        proc.wait()


def test_classify_gives_one_verdict_per_file(tmp_path: Path) -> None:
    """The verdict the master's adoption, diagnose and the leftovers stop
    all act on: absent, untrusted (left alone), stale (with why), live."""
    path = str(tmp_path / "alpha.pid")
    trusted = trusted_owners()
    assert classify(path, "alpha", "worker", None, trusted).kind == ABSENT
    write_pidfile(path, 4242)
    untrusted = classify(path, "alpha", "worker", None, frozenset({os.geteuid() + 1}))
    assert untrusted.kind == UNTRUSTED and "owned by uid" in (untrusted.why or "")
    proc = _node("alpha")
    try:
        write_pidfile(path, proc.pid)
        live = classify(path, "alpha", "worker", os.getuid(), trusted)
        assert live.kind == LIVE and live.record is not None and live.record.pid == proc.pid
        assert live.pidfd is None
        pinned = classify(path, "alpha", "worker", os.getuid(), trusted, pin=True)
        assert pinned.kind == LIVE and pinned.pidfd is not None
        os.close(pinned.pidfd)
        other = classify(path, "beta", "worker", None, trusted, pin=True)
        assert other.kind == STALE and "not node beta" in (other.why or "")
        assert other.pidfd is None
    finally:
        proc.kill()
        proc.wait()
    gone = classify(path, "alpha", "worker", None, trusted, pin=True)
    assert gone.kind == STALE and gone.why == "no such process"


def test_healthy_reads_the_lock_and_for_any_pid_file_the_process(tmp_path: Path) -> None:
    import fcntl

    path = str(tmp_path / "stemd.pid")
    assert healthy(path) == (False, None)
    write_pidfile(path, os.getpid())
    assert healthy(path) == (False, os.getpid())  # nobody holds the lock
    assert healthy(path, any_pidfile=True) == (True, os.getpid())
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        # another open file description: flock conflicts even within a process
        assert healthy(path) == (True, os.getpid())
    finally:
        os.close(fd)


def test_the_instance_scan_reads_a_bounded_part_of_each_environment() -> None:
    """A node user can start session leaders with environments of
    megabytes; the master's start-up scan must not read them whole. The
    marker past the first MiB is not seen (a real node's environment is a
    few KiB, its marker well inside)."""
    from stem_core.pidfile import scan_nodes

    instance = f"/nonexistent/{time.time()}/stemd.pid"
    # one string may not exceed 128 KiB (MAX_ARG_STRLEN): 1.4 MB in 12 of them
    env: dict[str, str] = {f"BIG{i}": "x" * 120_000 for i in range(12)}
    env.update(STEMD_INSTANCE=instance, STEMD_NODE="far", STEMD_PROGRAM="p")
    far = subprocess.Popen(["/bin/sleep", "30"], env=env, start_new_session=True)
    near = subprocess.Popen(["/bin/sleep", "30"], start_new_session=True,
                            env={"STEMD_INSTANCE": instance, "STEMD_NODE": "near",
                                 "STEMD_PROGRAM": "p"})
    try:
        deadline = time.monotonic() + 10
        while not {"far", "near"} <= {f.node for f in _scan_all(instance)}:
            assert time.monotonic() < deadline, "the children's environments never appeared"
            time.sleep(0.01)
        assert [f.node for f in scan_nodes(instance)] == ["near"]
    finally:
        for proc in (far, near):
            proc.kill()
            proc.wait()


def _scan_all(instance: str) -> list[FoundNode]:
    """The scan without its bound: what a whole read would find."""
    import stem_core.pidfile as pidfile

    bound, pidfile._MAX_ENVIRON = pidfile._MAX_ENVIRON, 1 << 30
    try:
        return pidfile.scan_nodes(instance)
    finally:
        pidfile._MAX_ENVIRON = bound
