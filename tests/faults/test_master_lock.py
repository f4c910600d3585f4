"""A node user cannot hold the master lock (docs/architecture.md, threat model).

The master PID file is 0644, and ``flock`` needs only a read-only
descriptor: a node could queue a lock on it behind the master's and own it
the moment the master died (OOM, ``kill -9``). Every later ``stemd`` then
said "already running (pid <dead master>)", ``stemctl shutdown --force``
could not remove the file, and an exclusive lock made ``stemctl
healthcheck`` call the dead master alive. Uniqueness is now the lock on a
private ``<pidfile>.lock``; the PID file is a fresh inode each time, and its
lock counts only when the PID it names holds it.

The master runs as root (these tests need root); the lock holders run as
``nobody``, who is assumed compromised.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from stem_core.pidfile import flock_holders
from tests.faults.accounts import nobody, open_fleet, python_for  # noqa: F401 - fixture
from tests.fleet import STEMD, Fleet, pid_alive, wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (nodes run as nobody)")

#: open the file named by argv[1] read-only (as a node can: it is 0644),
#: say so, wait for the lock named by argv[2], say so, and keep it
HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
print("queued", flush=True)
fcntl.flock(fd, getattr(fcntl, sys.argv[2]))
print("locked", flush=True)
time.sleep(1000)
"""

#: an older stemd's master, as far as the lock goes: it writes its PID to
#: the file argv[1] and locks it (its command line says stemd: exec -a)
FAKE_MASTER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
os.write(fd, f"{os.getpid()}\\n".encode())
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(1000)
"""


def masters(fleet: Fleet) -> list[psutil.Process]:
    """Live ``stemd`` processes running this fleet's configuration."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmd = proc.info["cmdline"] or []
        if proc.info["status"] != psutil.STATUS_ZOMBIE and str(fleet.config) in cmd \
                and any(part.endswith("/stemd") for part in cmd[:2]):
            found.append(proc)
    return found


def masters_left(fleet: Fleet, count: int) -> None:
    """Wait until ``count`` masters run (a refused one exits just after its
    launcher has said why)."""
    wait_until(lambda: len(masters(fleet)) == count, 10, what=f"{count} master(s) left")


@pytest.fixture
def fleet(open_fleet: Fleet) -> Iterator[Fleet]:  # noqa: F811 - the fixture above
    """Nodes as nobody; the master (root) creates its directories."""
    open_fleet.write(nodes="alpha beta", user="nobody", force_root=None)
    yield open_fleet
    for proc in masters(open_fleet):  # a master that wrote no PID file
        proc.kill()


@pytest.fixture
def holders() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes the test starts as nobody; killed (their groups) at the end."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def hold(started: list[subprocess.Popen[str]], path: Path, how: str = "LOCK_SH"
         ) -> subprocess.Popen[str]:
    """A process as nobody, in its own session (out of every node's group,
    so no stop reaches it), queued for a lock on ``path``."""
    user = nobody()
    proc = subprocess.Popen([python_for(user), "-c", HOLDER, str(path), how],
                            user=user.pw_uid, group=user.pw_gid, extra_groups=[], cwd="/",
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    started.append(proc)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "queued"
    return proc


def kill_master(fleet: Fleet) -> tuple[int, os.stat_result]:
    """kill -9 the master (a crash); its PID file stays. Returns its PID and
    the PID file's stat."""
    master = fleet.master_pid()
    assert master is not None
    pid_file = fleet.run_dir / "stemd.pid"
    st = pid_file.stat()
    os.kill(master, signal.SIGKILL)
    wait_until(lambda: not pid_alive(master), 10, what="the master gone")
    return master, st


def now_holds(proc: subprocess.Popen[str], st: os.stat_result) -> None:
    """Wait until ``proc`` holds the lock it queued for on the file ``st``."""
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    assert proc.pid in flock_holders(st)


# ------------------------------------------------------------------ tests


def test_a_node_queued_on_the_pid_file_cannot_stop_the_next_master(fleet: Fleet) -> None:
    """A node itself (still in its session, adopted later) queues a shared
    lock on $STEMD_INSTANCE; after kill -9 the next stemd starts, logs whose
    lock it found, and healthcheck names the new master."""
    script = fleet.script("node.py", f"#!{python_for(nobody())}\n" + """
import fcntl, os, threading, time
if os.environ["STEMD_NODE"] == "alpha":
    fd = os.open(os.environ["STEMD_INSTANCE"], os.O_RDONLY)
    threading.Thread(target=fcntl.flock, args=(fd, fcntl.LOCK_SH), daemon=True).start()
time.sleep(1000)
""")
    fleet.write(command=script)
    fleet.start()
    alpha = fleet.wait_state("RUNNING")["alpha"]["pid"]
    _, st = kill_master(fleet)
    wait_until(lambda: alpha in flock_holders(st), 10, what="alpha holding the old lock")

    result = fleet.stemd()
    assert result.returncode == 0, result.stderr
    master = fleet.master_pid()
    assert master is not None and pid_alive(master)
    masters_left(fleet, 1)
    log = fleet.master_log()
    assert "replaced stale master PID file" in log, log
    assert f"locked by pid {alpha} (uid {nobody().pw_uid}" in log, log
    assert "not by a master" in log
    health = fleet.ctl("healthcheck")
    assert health.returncode == 0 and f"alive (pid {master})" in health.stdout, health
    assert fleet.wait_state("RUNNING")["alpha"]["pid"] == alpha  # adopted, not duplicated
    assert fleet.ctl("shutdown").returncode == 0
    assert fleet.node_pids() == []


def test_a_lock_held_outside_the_fleet_cannot_outlive_shutdown_force(
        fleet: Fleet, holders: list[subprocess.Popen[str]]) -> None:
    """The holder left the node's session: stopping what the dead master left
    behind does not reach it. `stemctl shutdown --force` (the init script's
    stop) still stops the nodes, clears the PID file, and a start works."""
    fleet.start()
    fleet.wait_state("RUNNING")
    pid_file = fleet.run_dir / "stemd.pid"
    holder = hold(holders, pid_file)
    _, st = kill_master(fleet)
    now_holds(holder, st)

    health = fleet.ctl("healthcheck")
    assert health.returncode == 1 and "not running" in health.stdout, health
    result = fleet.ctl("shutdown", "--force")
    assert result.returncode == 0, result  # nodes were left behind and stopped (SPEC §2.2)
    assert "stemd was not running" in result.stdout, result.stdout
    assert "stopped the nodes it left behind" in result.stdout, result.stdout
    assert not pid_file.exists()
    assert fleet.node_pids() == [] and holder.poll() is None  # it is nobody's to stop

    again = fleet.ctl("shutdown", "--force")
    assert again.returncode == 3, again  # nothing ran: not running
    fleet.start()
    master = fleet.master_pid()
    assert master is not None and fleet.ctl("healthcheck").returncode == 0
    assert fleet.ctl("shutdown").returncode == 0
    assert fleet.node_pids() == [] and not pid_alive(master)


def test_an_exclusive_lock_on_a_dead_masters_pid_file_is_not_a_live_master(
        fleet: Fleet, holders: list[subprocess.Popen[str]]) -> None:
    """Once the master is dead, nobody holds LOCK_EX on its PID file, which
    still names it: healthcheck, status and shutdown must see no master."""
    fleet.start()
    fleet.wait_state("RUNNING")
    pid_file = fleet.run_dir / "stemd.pid"
    holder = hold(holders, pid_file, "LOCK_EX")
    dead, st = kill_master(fleet)
    now_holds(holder, st)
    assert fleet.master_pid() == dead

    health = fleet.ctl("healthcheck")
    assert health.returncode == 1 and "not running" in health.stdout, health
    assert fleet.ctl("status").returncode == 3
    result = fleet.ctl("shutdown", "--force")
    assert result.returncode == 0, result
    assert "stemd was not running" in result.stdout, result.stdout
    assert not pid_file.exists() and fleet.node_pids() == []
    fleet.start()
    assert fleet.ctl("shutdown").returncode == 0


def test_the_next_master_replaces_a_locked_pid_file_and_names_the_holder(
        fleet: Fleet, holders: list[subprocess.Popen[str]]) -> None:
    """Straight to `stemd` (systemd's Restart=) with an exclusive lock held."""
    fleet.start()
    pid_file = fleet.run_dir / "stemd.pid"
    holder = hold(holders, pid_file, "LOCK_EX")
    _, st = kill_master(fleet)
    now_holds(holder, st)

    fleet.start()
    master = fleet.master_pid()
    assert master is not None and pid_alive(master)
    assert pid_file.stat().st_ino != st.st_ino  # a new inode: the old lock is moot
    assert f"locked by pid {holder.pid} (uid {nobody().pw_uid}" in fleet.master_log()
    assert fleet.ctl("healthcheck").returncode == 0
    # the holder can queue on the new file too, and gets nothing from it
    second = hold(holders, pid_file, "LOCK_EX")
    result = fleet.stemd()
    assert result.returncode == 1 and f"already running (pid {master})" in result.stderr
    assert second.poll() is None
    masters_left(fleet, 1)
    assert fleet.ctl("shutdown").returncode == 0


def test_two_masters_started_at_once_leave_exactly_one(fleet: Fleet) -> None:
    for _ in range(3):
        procs = [subprocess.Popen([STEMD, "--config", str(fleet.config)], env=fleet.env(),
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        outcomes = sorted((p.wait(timeout=30), p.stderr.read() if p.stderr else "")
                          for p in procs)
        for p in procs:
            for stream in (p.stdout, p.stderr):
                if stream is not None:
                    stream.close()
        assert [code for code, _ in outcomes] == [0, 1], outcomes
        assert "already running" in outcomes[1][1], outcomes
        masters_left(fleet, 1)
        assert fleet.ctl("healthcheck").returncode == 0
        assert fleet.ctl("shutdown").returncode == 0
        masters_left(fleet, 0)
        assert fleet.node_pids() == []


def test_an_older_master_holding_only_the_pid_file_is_not_replaced(
        fleet: Fleet, holders: list[subprocess.Popen[str]]) -> None:
    """A master of an older stemd knows no lock file: its lock on the PID
    file it names, as root, with stemd's command line, still means running."""
    fleet.run_dir.mkdir(mode=0o755)
    pid_file = fleet.run_dir / "stemd.pid"
    old = subprocess.Popen(
        ["/bin/bash", "-c", 'exec -a stemd "$0" -c "$1" "$2" LOCK_EX', sys.executable,
         FAKE_MASTER, str(pid_file)], stdout=subprocess.PIPE, text=True, start_new_session=True)
    holders.append(old)
    assert old.stdout is not None and old.stdout.readline().strip() == "locked"
    assert int(pid_file.read_text()) == old.pid
    assert fleet.ctl("healthcheck").returncode == 0

    result = fleet.stemd()
    assert result.returncode == 1, result.stderr
    assert f"already running (pid {old.pid})" in result.stderr
    assert int(pid_file.read_text()) == old.pid
    masters_left(fleet, 0)


def test_a_pid_file_naming_a_nobody_process_that_locks_it_is_replaced(
        fleet: Fleet, holders: list[subprocess.Popen[str]]) -> None:
    """A dead master's PID reused by a node user's process, which locks the
    file and calls itself stemd: not root, so not a master."""
    fleet.run_dir.mkdir(mode=0o755)
    pid_file = fleet.run_dir / "stemd.pid"
    pid_file.write_text("1\n")
    pid_file.chmod(0o644)
    user = nobody()
    fake = subprocess.Popen(
        ["/bin/bash", "-c", 'exec -a stemd "$0" -c "$1" "$2" LOCK_EX', python_for(user),
         HOLDER, str(pid_file)], user=user.pw_uid, group=user.pw_gid, extra_groups=[], cwd="/",
        stdout=subprocess.PIPE, text=True, start_new_session=True)
    holders.append(fake)
    assert fake.stdout is not None and fake.stdout.readline().strip() == "queued"
    assert fake.stdout.readline().strip() == "locked"
    pid_file.write_text(f"{fake.pid}\n")  # as if the dead master's PID were reused
    assert fleet.ctl("healthcheck").returncode == 1

    fleet.start()
    assert fleet.master_pid() not in (None, fake.pid)
    assert f"locked by pid {fake.pid} (uid {user.pw_uid}" in fleet.master_log()
    assert fake.poll() is None  # never signalled
    assert fleet.ctl("shutdown").returncode == 0


def test_the_private_lock_file(fleet: Fleet) -> None:
    """0600 and stemd's; it stays when the master stops (unlinking a held
    lock file breaks uniqueness), the PID file does not."""
    lock = fleet.run_dir / "stemd.pid.lock"
    fleet.start()
    st = lock.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0 and st.st_nlink == 1
    assert stat.S_IMODE((fleet.run_dir / "stemd.pid").stat().st_mode) == 0o644
    assert fleet.ctl("shutdown").returncode == 0
    assert lock.exists() and not (fleet.run_dir / "stemd.pid").exists()
    assert not list(fleet.run_dir.glob(".stemd.pid.*"))  # no temporary file left

    os.chown(lock, nobody().pw_uid, -1)  # not stemd's: a node may hold it open
    result = fleet.stemd()
    assert result.returncode == 1, result.stderr
    assert f"the master lock file {lock} is owned by uid {nobody().pw_uid}" in result.stderr
    os.unlink(lock)
    os.symlink("/etc/passwd", lock)
    result = fleet.stemd()
    assert result.returncode == 1 and f"master lock file {lock}" in result.stderr
    masters_left(fleet, 0)
    assert fleet.node_pids() == []


def test_a_removed_lock_file_under_a_running_master_still_refuses_a_second(
        fleet: Fleet) -> None:
    """Only root can remove it (the run directory is the master's): the
    PID file's own lock, held by the master it names, still guards."""
    fleet.start()
    master = fleet.master_pid()
    os.unlink(fleet.run_dir / "stemd.pid.lock")
    result = fleet.stemd()
    assert result.returncode == 1 and f"already running (pid {master})" in result.stderr
    masters_left(fleet, 1)
    assert fleet.master_pid() == master
    assert fleet.ctl("shutdown").returncode == 0
