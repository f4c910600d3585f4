"""Learn of exits the moment they happen, and reap every child.

Each node's process gets a pidfd (``os.pidfd_open``, Linux >= 5.3): it
becomes readable when the process exits, whether it is our child or a node
adopted from a previous master. The pidfds are in an epoll set of the
reaper's own, whose one descriptor the event loop watches: registering a
pidfd there costs ~1 µs where the loop's ``add_reader``/``remove_reader``
cost ~7 µs and a callback handle per exit, which 1,000 nodes pay at every
fleet start and stop. For a child we then:

1. look at the exit with ``waitid(P_PIDFD, fd, WEXITED|WNOHANG|WNOWAIT)``,
   which leaves the zombie in place;
2. ``SIGKILL`` the node's process group. The zombie leader still pins the
   group id, so the id cannot have been reused by an unrelated group: this
   reaches exactly the grandchildren the node left behind (a crashed
   worker's pool processes), which would otherwise keep consuming jobs next
   to its replacement;
3. reap with ``waitid(P_PIDFD, fd, WEXITED)``.

``SIGCHLD`` drains the rest: any child that is not a watched node (orphans
reparented to us as PID 1 or subreaper) is reaped so no zombie is left.

Work per loop turn is bounded (:data:`BATCH` exits). Handling an exit may
respawn the node (a fork, ~1 ms), and a storm of 1,000 nodes dying together
handled in one go would keep the loop from the control socket, the signal
pipe and the timers for seconds; in slices, ``stemctl status`` and SIGTERM
are served between two slices. Ready pidfds are only queued (and taken out
of the epoll set, since a pidfd stays readable); the queue is drained a slice
per turn through ``call_soon``, which lets the loop poll its descriptors in
between.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import signal
import subprocess
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from stem_core.exits import ExitStatus
from stem_core.pidfile import KILL_GRACE, group_has_members, proc_uids

ExitCallback = Callable[[int, ExitStatus], None]

#: exits handled per loop turn (each may respawn a node)
BATCH = 16


@dataclass(slots=True)
class _Watch:
    pid: int
    fd: int
    popen: subprocess.Popen[bytes] | None  # None: adopted, not our child
    callback: ExitCallback


class Reaper:
    def __init__(self, loop: asyncio.AbstractEventLoop, log: logging.Logger) -> None:
        self.loop = loop
        self.log = log
        self._watches: dict[int, _Watch] = {}
        self._ready: deque[int] = deque()  # exited watched PIDs, in arrival order
        self._queued: set[int] = set()
        self._draining = False
        self._epoll = select.epoll(flags=select.EPOLL_CLOEXEC)
        self._by_fd: dict[int, int] = {}  # pidfd -> pid
        loop.add_reader(self._epoll.fileno(), self._on_ready)

    def watch(self, pid: int, popen: subprocess.Popen[bytes] | None,
              callback: ExitCallback) -> None:
        """Call ``callback(pid, status)`` once ``pid`` has exited (and, for a
        child, been reaped). Raises ProcessLookupError if it is already gone
        and not our child."""
        fd = os.pidfd_open(pid)
        self._watches[pid] = _Watch(pid, fd, popen, callback)
        self._by_fd[fd] = pid
        self._epoll.register(fd, select.EPOLLIN)

    @property
    def watched(self) -> int:
        return len(self._watches)

    def on_sigchld(self) -> None:
        """Reap exited children that are not nodes (a slice of them); a node
        found exited is queued for :meth:`_finish`, which reaps it, and the
        scan goes on once the queue is drained."""
        for _ in range(BATCH):
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None:
                return
            if info.si_pid in self._watches:
                # waitid(P_ALL) would name this zombie again until it is
                # reaped: hand it to the queue, whose drain scans again
                self._exited(info.si_pid)
                return
            with contextlib.suppress(ChildProcessError):
                os.waitpid(info.si_pid, os.WNOHANG)
            self.log.debug("reaped pid %d (%s)", info.si_pid, _status(info))
        self.loop.call_soon(self.on_sigchld)  # more, maybe: next turn

    def _on_ready(self) -> None:
        """Some pidfds are readable: queue their processes (all of them: a
        queued pidfd leaves the set, so this is cheap and bounded)."""
        for fd, _ in self._epoll.poll(0):
            pid = self._by_fd.get(fd)
            if pid is not None:
                self._exited(pid)

    def _exited(self, pid: int) -> None:
        """A watched process has exited (its pidfd is readable, or SIGCHLD
        named it): queue it."""
        watch = self._watches.get(pid)
        if watch is None or pid in self._queued:
            return
        self._epoll.unregister(watch.fd)
        self._queued.add(pid)
        self._ready.append(pid)
        if not self._draining:
            self._draining = True
            self.loop.call_soon(self._drain)

    def _drain(self) -> None:
        for _ in range(BATCH):
            if not self._ready:
                break
            pid = self._ready.popleft()
            self._queued.discard(pid)
            self._finish(pid)
        if self._ready:
            self.loop.call_soon(self._drain)
            return
        self._draining = False
        self.on_sigchld()  # children that are not nodes, left behind a node's exit

    def _finish(self, pid: int) -> None:
        watch = self._watches.get(pid)
        if watch is None:
            return
        status = ExitStatus()
        if watch.popen is not None:
            try:
                info = os.waitid(os.P_PIDFD, watch.fd, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                info = None  # reaped elsewhere: should not happen; status unknown
            else:
                if info is None:
                    # spurious: still running; watch again
                    self._epoll.register(watch.fd, select.EPOLLIN)
                    return
                status = _status(info)
            self._kill_group(pid)
            with contextlib.suppress(ChildProcessError):
                os.waitid(os.P_PIDFD, watch.fd, os.WEXITED)
            # Tell Popen it is done, so its __del__ never queues the PID for
            # a later waitpid() that could reap an unrelated, reused PID.
            watch.popen.returncode = status.as_int if status.as_int is not None else -1
        elif group_has_members(pid):
            # An adopted node: its parent (init) has reaped it, so the leader
            # no longer pins the group id. Members that are left do pin it
            # (a pgid is not reused while any process carries it), so it is
            # killed only when some are seen; an empty group is left alone.
            self._kill_group(pid)
        del self._by_fd[watch.fd]
        os.close(watch.fd)
        del self._watches[pid]
        watch.callback(pid, status)

    @staticmethod
    def _kill_group(pgid: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)

    def close(self) -> None:
        self.loop.remove_reader(self._epoll.fileno())
        self._epoll.close()
        for watch in self._watches.values():
            os.close(watch.fd)
        self._watches.clear()
        self._by_fd.clear()
        self._ready.clear()
        self._queued.clear()


def _status(info: os.waitid_result) -> ExitStatus:
    if info.si_code == os.CLD_EXITED:
        return ExitStatus(code=info.si_status)
    return ExitStatus(signal=info.si_status)


def session_leftovers(ended: Mapping[int, int], spare: set[int], whole: bool = False
                      ) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """What the nodes whose main PIDs are in ``ended`` (each with its node's
    uid) left alive in their sessions, as two lists of (pid, session): the
    processes to kill, and those of the node's own process group, which the
    stop has SIGKILLed already and which are still dying (the stop is over
    only once they are gone). With ``whole``, the node's own group is in the
    first list: a node whose master died before its group was killed
    (found dead at adoption).

    A node's process that moved to a process group of its own (``setpgid``,
    a shell with job control) escapes the stop's group kill but stays in the
    node's session. The session's number is only a number once the node's
    main process is reaped: by the time of the scan it may be a new session
    of someone else (PID reuse; a node user can steer it). So a session is
    looked at only while its leader's PID is not a live process (a new
    leader on that PID: not ours), never one in ``spare`` (the sessions of
    the nodes running now), and only processes of the node's own user are
    returned: nothing the node user could not kill itself. A scan of /proc
    (~10-20 ms at 1,000 processes): once per stop command, never per exit,
    never periodically."""
    leader_gone: dict[int, bool] = {}
    escaped: list[tuple[int, int]] = []
    dying: list[tuple[int, int]] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat(entry.name)
        # fields[0] is field 3 (state): pgrp 5, session 6
        if fields is None or fields[0] == b"Z":
            continue
        sid, pgid = int(fields[3]), int(fields[2])
        if sid not in ended or sid in spare:
            continue
        if sid not in leader_gone:
            leader = _stat(str(sid))
            leader_gone[sid] = leader is None or leader[0] == b"Z"
        if leader_gone[sid] and _real_uid(entry.name) == ended[sid]:
            (dying if pgid == sid and not whole else escaped).append((int(entry.name), sid))
    return escaped, dying


def kill_leftovers(leftovers: list[tuple[int, int]], ended: Mapping[int, int]) -> list[int]:
    """SIGKILL each leftover through a pidfd, after checking again, on the
    pinned process, that it still is one (same session, same user): a PID
    that was reused since the scan is not signalled. Returns those killed."""
    killed = []
    for pid, sid in leftovers:
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            continue
        try:
            fields = _stat(str(pid))
            if (fields is not None and int(fields[3]) == sid
                    and _real_uid(str(pid)) == ended[sid]):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
                killed.append(pid)
        except OSError:
            pass
        finally:
            os.close(fd)
    return killed


async def wait_gone(loop: asyncio.AbstractEventLoop, procs: list[tuple[int, int]],
                    grace: float = KILL_GRACE) -> list[int]:
    """Wait until each process (pid, its session) has exited; return those
    still alive after ``grace`` seconds.

    SIGKILL is delivered, not done: the process exits when it next runs,
    which on a loaded machine can be after the master has replied. A stop
    that answered then would say "stopped" while a pool child still shows
    in ``ps`` (and holds its memory, its sockets). Each process is pinned
    with a pidfd and checked to be still in its session (a PID reused since
    the scan is not waited on); the wait wakes on the pidfds, not on a poll."""
    fds: dict[int, int] = {}  # pidfd -> pid
    for pid, sid in procs:
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            continue  # gone already
        fields = _stat(str(pid))
        if fields is None or fields[0] == b"Z" or int(fields[3]) != sid:
            os.close(fd)
            continue
        fds[fd] = pid
    if not fds:
        return []
    done: asyncio.Future[None] = loop.create_future()

    def exited(fd: int) -> None:
        loop.remove_reader(fd)
        os.close(fd)
        del fds[fd]
        if not fds and not done.done():
            done.set_result(None)
    for fd in fds:
        loop.add_reader(fd, exited, fd)
    try:
        await asyncio.wait_for(done, grace)
    except TimeoutError:
        pass
    finally:
        left = sorted(fds.values())
        for fd in list(fds):
            loop.remove_reader(fd)
            os.close(fd)
        fds.clear()
    return left


def _stat(pid: str) -> list[bytes] | None:
    """The fields of /proc/PID/stat after the command name, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields if len(fields) >= 4 else None


def _real_uid(pid: str) -> int | None:
    uids = proc_uids(pid)
    return None if uids is None else uids[0]
