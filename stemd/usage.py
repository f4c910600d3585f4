"""What a node uses: its whole process tree, not just its main process.

A node runs in its own session (stemd spawns it with ``setsid``), so its
main process, a prefork pool and whatever those start share one session id
— the id is the main process's PID. One pass over ``/proc`` reading
``/proc/PID/stat`` (one read per process) groups every process of the
system by session, which is cheaper than a walk of each node's children:
1,000 nodes cost one directory listing and one small read per process,
however they are selected, and there is no ``psutil`` object per process
(each costs several reads).

Each node gets:

- ``rss``: the sum of its processes' resident sets. Pages shared between a
  prefork parent and its children are counted once per process, so this
  over-states a pool's real footprint; it is what ``ps`` shows, what a
  memory limit compares with, and it never under-states.
- ``pss`` (only when asked: reading ``/proc/PID/smaps_rollup`` walks the
  page tables, ~20x a stat read): the proportional set size, shared pages
  divided among their sharers; ``None`` where it cannot be read (another
  user's process when stemd is not root).
- ``cpu_seconds``: user + system time of the live processes, including
  what their reaped children used (``cutime``/``cstime``).
- ``cpu_percent``: over the interval since the previous sample held by the
  caller (:class:`CpuTracker`), or since the node's process started when
  there is none (so a first ``stemctl status`` still says something true).
- ``children``: the number of descendants (processes of the session other
  than the main one).

A process that leaves the node's session (``setsid`` again, a daemonising
double fork) is not counted: it also escapes every stop, the documented
limit (docs/architecture.md). One that only leaves the process group
(``setpgid``) is counted here, and a stop kills it (stemd.reaper
``session_leftovers``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True, slots=True)
class TreeUsage:
    """One node's process tree at one moment."""

    rss: int  # bytes, summed over the tree's processes
    cpu_ticks: int  # utime + stime + cutime + cstime of the live processes
    start_ticks: int  # the main process's start time (clock ticks since boot)
    children: int  # processes in the session besides the main one
    pss: int | None = None  # bytes; None: not asked for, or not readable

    @property
    def cpu_seconds(self) -> float:
        return self.cpu_ticks / _CLK_TCK


def _stat(pid: str) -> tuple[int, int, int, int] | None:
    """(session, cpu ticks, start ticks, rss bytes) of one process, or None
    if it is gone or unreadable."""
    # os.open/os.read, not open(): no file object, half the cost per process
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, 4096)  # one line of ~300 bytes (the name is <= 16)
    except OSError:
        return None
    finally:
        os.close(fd)
    # the command name (field 2) may hold spaces and ")": split after the last ")"
    fields = data[data.rfind(b")") + 2:].split()
    try:
        # fields[0] is field 3 (state): session 6, utime 14, stime 15,
        # cutime 16, cstime 17, starttime 22, rss 24
        return (int(fields[3]),
                int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14]),
                int(fields[19]), int(fields[21]) * _PAGE)
    except (IndexError, ValueError):
        return None


def pss_of(pid: int) -> int | None:
    """The PSS of one process in bytes, from ``/proc/PID/smaps_rollup``."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class _Scan:
    """One pass over ``/proc``, fed a slice of its listing at a time, so
    that :func:`sample` reads it at once and :func:`sample_async` lets the
    event loop run between slices: the master's loop must not be held for
    the whole pass (~15 ms at 1,000 nodes) while a respawn or a control
    request waits."""

    def __init__(self, roots: Iterable[int], pss: bool) -> None:
        self.wanted = set(roots)
        self.pss = pss
        self.rss: dict[int, int] = {}
        self.ticks: dict[int, int] = {}
        self.count: dict[int, int] = {}
        self.start: dict[int, int] = {}
        self.members: dict[int, list[int]] = {}

    def feed(self, names: Iterable[str]) -> None:
        wanted, rss, ticks, count = self.wanted, self.rss, self.ticks, self.count
        for name in names:
            if not name[0].isdigit():
                continue
            found = _stat(name)
            if found is None:
                continue
            sid, cpu, started, resident = found
            if sid not in wanted:
                continue
            rss[sid] = rss.get(sid, 0) + resident
            ticks[sid] = ticks.get(sid, 0) + cpu
            count[sid] = count.get(sid, 0) + 1
            if int(name) == sid:
                self.start[sid] = started
            if self.pss:
                self.members.setdefault(sid, []).append(int(name))

    def result(self) -> dict[int, TreeUsage]:
        result = {}
        for sid in self.start:  # only sessions whose leader (the node's main process) lives
            total: int | None = None
            if self.pss:
                parts = [pss_of(pid) for pid in self.members.get(sid, ())]
                total = None if any(p is None for p in parts) else sum(p or 0 for p in parts)
            result[sid] = TreeUsage(self.rss[sid], self.ticks[sid], self.start[sid],
                                    self.count[sid] - 1, total)
        return result


def sample(roots: Iterable[int], pss: bool = False) -> dict[int, TreeUsage]:
    """The usage of each session led by a PID in ``roots``, from one pass
    over ``/proc``. A root that is gone is absent from the result."""
    scan = _Scan(roots, pss)
    if not scan.wanted:
        return {}
    scan.feed(os.listdir("/proc"))
    return scan.result()


#: processes read between two yields to the event loop in :func:`sample_async`
#: (~4-20 µs each: a slice holds the loop ~0.5-1 ms)
SLICE = 50


async def sample_async(roots: Iterable[int], slice_size: int = SLICE) -> dict[int, TreeUsage]:
    """:func:`sample` (without PSS) for the master's event loop: the same
    pass, yielding to the loop every ``slice_size`` processes. A process
    may start or end during the pass, as it may during :func:`sample`'s;
    each is read once."""
    scan = _Scan(roots, False)
    if not scan.wanted:
        return {}
    await asyncio.sleep(0)  # the caller's turn may have been busy already
    names = os.listdir("/proc")
    for i in range(0, len(names), slice_size):
        await asyncio.sleep(0)
        scan.feed(names[i:i + slice_size])
    return scan.result()


def uptime_ticks() -> float:
    """Clock ticks since boot (the unit of a process's start time)."""
    with open("/proc/uptime", "rb") as f:
        return float(f.read().split()[0]) * _CLK_TCK


class CpuTracker:
    """The previous sample of each node, so that CPU% is *current* (over the
    interval since then) rather than the lifetime average ``ps`` shows.

    Held by whoever samples: the master keeps one for ``stemctl status``
    (shared by all its clients: the interval is since the last ``status
    --stats`` of that node, by anyone), and ``stemctl top`` computes its own
    from ``cpu_seconds`` between two of its refreshes. Keyed by node name
    and PID: a restarted node starts a new interval at its new process's
    start."""

    #: the least interval a percentage is taken over, in clock ticks (1 s):
    #: over 10 ms a process shows 0 % or 100 %, never the truth
    MIN_TICKS = _CLK_TCK

    def __init__(self) -> None:
        # name -> (pid, [(ticks, at)...]): the last two samples at least
        # MIN_TICKS apart, oldest first
        self._last: dict[str, tuple[int, list[tuple[int, float]]]] = {}

    def percent(self, name: str, pid: int, usage: TreeUsage, now_ticks: float) -> float:
        held = self._last.get(name)
        samples = held[1] if held is not None and held[0] == pid else []
        # the newest held sample at least MIN_TICKS old, else the process's start
        reference = (0, float(usage.start_ticks))
        for ticks, at in samples:
            if now_ticks - at >= self.MIN_TICKS:
                reference = (ticks, at)
        if not samples or now_ticks - samples[-1][1] >= self.MIN_TICKS:
            samples = [*samples[-1:], (usage.cpu_ticks, now_ticks)]
        self._last[name] = (pid, samples)
        used, elapsed = usage.cpu_ticks - reference[0], now_ticks - reference[1]
        # a child reaped by init takes its time with it: never below zero
        return round(100.0 * max(used, 0) / max(elapsed, 1.0), 1)

    def forget_except(self, names: Mapping[str, object]) -> None:
        """Drop nodes that no longer exist (after a reload or scale)."""
        for name in [n for n in self._last if n not in names]:
            del self._last[name]
