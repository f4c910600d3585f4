"""Reading and cleaning up processes through ``/proc``.

The benchmark makes itself a *child subreaper*: every daemon it launches, and
every node that outlives its master, is re-parented to the benchmark instead
of PID 1. That gives two things at once: "what belongs to this run" is simply
"every descendant of this process" (other people's processes on this shared
machine are never touched or counted), and cleanup after any failure is one
walk of that tree. The price is that the benchmark must reap those orphans
itself, which :func:`reap_orphans` does between measurements.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

PR_SET_CHILD_SUBREAPER = 36
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class ProcStat:
    """The fields of ``/proc/PID/stat`` the benchmark uses."""

    pid: int
    state: str
    ppid: int
    pgid: int
    cpu_seconds: float  # utime + stime, all threads
    start_boottime: float  # seconds since boot, CLOCK_TICKS resolution


@dataclass(frozen=True, slots=True)
class ProcUsage:
    """A point-in-time sample of a master's resource use."""

    cpu_seconds: float
    rss_kib: int
    voluntary_ctxt: int  # summed over threads: each one is a sleep, i.e. a wake-up
    threads: int


def become_subreaper() -> None:
    """Adopt orphaned descendants (see the module docstring)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def reap_orphans() -> None:
    """Reap every exited child without blocking.

    Only called while no ``subprocess.Popen`` of ours is outstanding (the
    benchmark is single-threaded and uses ``subprocess.run``), so it cannot
    steal a status that ``subprocess`` waits for.
    """
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def boottime_now() -> float:
    """The clock that ``/proc/PID/stat`` start times are measured against."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def read_stat(pid: int) -> ProcStat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split
    # after the last ')'.
    fields = raw[raw.rindex(b")") + 2 :].split()
    return ProcStat(
        pid=pid,
        state=fields[0].decode(),
        ppid=int(fields[1]),
        pgid=int(fields[2]),
        cpu_seconds=(int(fields[11]) + int(fields[12])) / CLOCK_TICKS,
        start_boottime=int(fields[19]) / CLOCK_TICKS,
    )


def read_cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0")[:-1]]


def read_usage(pid: int) -> ProcUsage | None:
    """CPU from ``stat`` (process-wide), RSS from ``status``, and voluntary
    context switches summed over every thread: a multi-threaded master such
    as circus (zmq I/O threads) wakes up in threads other than the main one."""
    stat = read_stat(pid)
    if stat is None:
        return None
    rss_kib = 0
    voluntary = 0
    threads = 0
    try:
        rss_kib = _status_field(f"/proc/{pid}/status", "VmRSS")
        for tid in os.listdir(f"/proc/{pid}/task"):
            voluntary += _status_field(f"/proc/{pid}/task/{tid}/status", "voluntary_ctxt_switches")
            threads += 1
    except (FileNotFoundError, ProcessLookupError):
        return None
    return ProcUsage(stat.cpu_seconds, rss_kib, voluntary, threads)


def _status_field(path: str, name: str) -> int:
    with open(path) as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    return 0


def is_gone(pid: int) -> bool:
    """True when the process no longer runs: absent, or a zombie (a zombie
    has finished; whether it is reaped yet depends on its parent)."""
    stat = read_stat(pid)
    return stat is None or stat.state in ("Z", "X")


def process_table() -> dict[int, ProcStat]:
    table: dict[int, ProcStat] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = read_stat(int(name))
            if stat is not None:
                table[stat.pid] = stat
    return table


def descendants(root: int, table: dict[int, ProcStat]) -> list[ProcStat]:
    children: dict[int, list[ProcStat]] = {}
    for stat in table.values():
        children.setdefault(stat.ppid, []).append(stat)
    found: list[ProcStat] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child.pid)
    return found


MarkerMatch = Callable[[list[str]], int | None]


def find_nodes(match: MarkerMatch, root: int | None = None) -> dict[int, int]:
    """Live node processes below ``root`` (default: this process), as
    ``{node index: pid}``; ``match`` turns a command line into an index."""
    table = process_table()
    nodes: dict[int, int] = {}
    for stat in descendants(os.getpid() if root is None else root, table):
        if stat.state in ("Z", "X"):
            continue
        index = match(read_cmdline(stat.pid))
        if index is not None:
            nodes[index] = stat.pid
    return nodes


def is_descendant(pid: int, root: int) -> bool:
    for _ in range(64):
        stat = read_stat(pid)
        if stat is None:
            return False
        if stat.ppid == root:
            return True
        pid = stat.ppid
        if pid <= 1:
            return False
    return False


def poll_until(predicate: Callable[[], bool], timeout: float, interval: float) -> float | None:
    """Seconds until ``predicate()`` held, or None at the deadline."""
    start = time.monotonic()
    deadline = start + timeout
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def kill_descendants(root: int | None = None) -> int:
    """SIGKILL every descendant of ``root`` and each one's process group
    (nodes run in their own sessions), then reap. Returns how many were
    found. Repeats, because a dying master may still fork."""
    me = os.getpid()
    root = me if root is None else root
    killed = 0
    for _ in range(5):
        victims = [s for s in descendants(root, process_table()) if s.state not in ("Z", "X")]
        if not victims:
            break
        killed += len(victims)
        _kill_all(victims, own_pgid=os.getpgid(me))
        time.sleep(0.05)
        reap_orphans()
    reap_orphans()
    return killed


def _kill_all(victims: Iterable[ProcStat], own_pgid: int) -> None:
    for stat in victims:
        if stat.pgid not in (own_pgid, 0):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(stat.pgid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(stat.pid, signal.SIGKILL)
