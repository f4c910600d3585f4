"""Detach with a readiness handshake, and hold the master lock.

``python-daemon`` does the detaching (double fork, ``setsid``, ``chdir /``,
closing every descriptor, standard streams on ``/dev/null``), but its first
parent exits at once, before the daemon has done anything. So the command
the operator ran forks first and waits on a pipe: the daemon writes
``OK <pid>`` once its PID file is written, its socket bound and its nodes
spawned, or ``ERR <reason>`` when start-up fails; EOF without either means it
died. Only then does the command exit — 0; 1 with the reason on stderr; or
:data:`NODES_NOT_RUNNING` when the master runs but a node did not start.
systemd ``Type=forking`` and SysV scripts rely on exactly that.

Uniqueness is an ``fcntl`` lock (s6's lesson: a lock, not a PID file, is
the truth) on a private lock file, ``<master PID file>.lock``: mode 0600,
owned by stemd's user, so no node user can even open it. The master takes
it first and holds it for its whole life; the file stays when it exits (a
lock file that is unlinked while held no longer guards anything). It used
to be the lock on the PID file itself, but that file is 0644 for stemctl
and the nodes, and ``flock`` needs only a read-only descriptor: a node
could queue a lock behind the master's and own it the moment the master
died (OOM, ``kill -9``), so that no master could start again.

The PID file is then written as a new inode — a temporary file in the same
directory, locked, made 0644 and renamed over the path — so the path always
names the process that locks it, and whatever lock a node holds on an older
file no longer matters. The master keeps that lock too: readers
(``stemctl healthcheck``, the init scripts, :mod:`stemd.leftovers`) see a
live master in a PID file locked by the PID it names
(:func:`stem_core.pidfile.master_alive`). A PID file found locked is left
alone only when that is so and the PID is a stemd of our user (a master of
an older stemd, which knew no other lock); else it is replaced, and what it
named and who held its lock are logged, never signalled.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import stat
import sys
from dataclasses import dataclass
from typing import NoReturn

from stem_core.errors import PidFileError, StemError
from stem_core.pidfile import (
    flock_holders,
    master_lock_path,
    names_its_locker,
    proc_uids,
    publish_locked,
    read_master_pid,
    read_pid_at,
    runs_stemd,
)

#: stemd's exit status when its master started and runs on but some node did
#: not reach RUNNING within STEMD_START_WAIT (1: start-up failed, no master
#: runs). The forking systemd units count it a success (SuccessExitStatus=):
#: as a failed start, systemd SIGKILLed the master and the healthy nodes with
#: their tasks, and restarted the whole fleet every few seconds.
NODES_NOT_RUNNING = 5


class AlreadyRunning(StemError):
    def __init__(self, pid: int | None, path: str) -> None:
        who = f"pid {pid}" if pid else "pid unknown"
        super().__init__(f"already running ({who}); it holds the lock on {path}")
        self.pid = pid


@dataclass(frozen=True, slots=True)
class _Found:
    """What was at the master PID file's path before we replace it."""

    pid: int | None
    st: os.stat_result
    locked: bool  # some process holds a lock on it
    holders: tuple[int, ...]  # who, by /proc/locks (when it shows them)


class MasterLock:
    """The master's private lock file and its PID file, both locked for the
    master's lifetime."""

    def __init__(self, path: str, lock_fd: int, fd: int, stale: str | None) -> None:
        self.path = path
        self.lock_path = master_lock_path(path)
        self.lock_fd = lock_fd  # the private lock file
        self.fd = fd  # the PID file we wrote
        self.stale = stale  # what the file said before, if it was stale

    @classmethod
    def acquire(cls, path: str) -> MasterLock:
        """Take the master lock and write the PID file. Raises
        :class:`AlreadyRunning`, :class:`PidFileError` (the lock file or the
        PID file is not what stemd made) or OSError."""
        lock_path = master_lock_path(path)
        lock_fd = _open_lock_file(lock_path)
        try:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise AlreadyRunning(_live_pid(read_master_pid(path)), lock_path) from None
            found = _look_at(path)
            if found is not None and _older_master(found):
                raise AlreadyRunning(found.pid, path)
            fd = _publish(path)
        except BaseException:
            os.close(lock_fd)
            raise
        # Only now (psutil is slow to import): the PID file names us already.
        return cls(path, lock_fd, fd, _describe_stale(found))

    def recreate(self) -> bool | None:
        """The PID file or the lock file was removed (or replaced) under us:
        make new ones and hold their locks. None: both are still ours,
        nothing done; False: another master holds the new lock file or PID
        file (not fought over); True: recreated."""
        if self.fd < 0:
            return False
        lock_ours = _still_at(self.lock_fd, self.lock_path)
        pid_ours = _still_at(self.fd, self.path)
        if lock_ours and pid_ours:
            return None
        if not lock_ours:
            lock_fd = _open_lock_file(self.lock_path)
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(lock_fd)
                return False
            os.close(self.lock_fd)
            self.lock_fd = lock_fd
        if not pid_ours:
            found = _look_at(self.path)
            if found is not None and _older_master(found):
                return False
            fd = _publish(self.path)
            os.close(self.fd)
            self.fd = fd
        return True

    def release(self) -> None:
        """Remove the PID file if it is still ours, then drop the locks (in
        that order, so no reader sees an unlocked file that names us). The
        lock file stays. Idempotent."""
        if self.fd < 0:
            return
        if _still_at(self.fd, self.path):
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        os.close(self.fd)
        os.close(self.lock_fd)
        self.fd = self.lock_fd = -1


def _open_lock_file(path: str) -> int:
    """The private lock file, opened (created 0600 if need be) for locking.
    Raises :class:`PidFileError` unless it is a regular file with one link,
    owned by our effective uid."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise PidFileError(f"cannot open the master lock file {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PidFileError(f"the master lock file {path} is not a regular file; remove it")
        if st.st_uid != os.geteuid():
            raise PidFileError(f"the master lock file {path} is owned by uid {st.st_uid}, "
                               f"not by stemd's user (uid {os.geteuid()}); remove it")
        if st.st_nlink != 1:
            raise PidFileError(f"the master lock file {path} has {st.st_nlink} links; "
                               "remove it")
        if stat.S_IMODE(st.st_mode) != 0o600:
            os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _look_at(path: str) -> _Found | None:
    """What the master PID file at ``path`` is now; None when there is none.
    Raises OSError for a symlink (never followed, never replaced),
    :class:`PidFileError` for anything but a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PidFileError(f"the master PID file {path} is not a regular file; remove it")
        pid = read_pid_at(fd)
        try:
            # exclusive: a shared lock a node holds is worth reporting too
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return _Found(pid, st, True, tuple(flock_holders(st)))
        return _Found(pid, st, False, ())
    finally:
        os.close(fd)


def _older_master(found: _Found) -> bool:
    """Is ``found`` locked by a live master that knows no private lock file
    (an older stemd's): the PID it names holds its lock, runs as our user
    and is stemd? Any other lock on it (a node's) does not stop us."""
    if not found.locked or found.pid is None or found.pid == os.getpid():
        return False
    uids = proc_uids(found.pid)
    return (names_its_locker(found.pid, found.st) and uids is not None
            and uids[1] == os.geteuid() and runs_stemd(found.pid))


def _publish(path: str) -> int:
    """Write our PID to ``path`` as a new inode, locked before anyone can
    open it and renamed over the path (never through a symlink: a symlink
    there makes :func:`_look_at` refuse the start first). Returns its descriptor,
    which holds the lock."""
    return publish_locked(path, f"{os.getpid()}\n".encode())


def _still_at(fd: int, path: str) -> bool:
    """Is the file open on ``fd`` still the one at ``path``?"""
    try:
        st, cur = os.fstat(fd), os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (cur.st_dev, cur.st_ino)


def _live_pid(pid: int | None) -> int | None:
    """``pid`` if such a process exists (for a message), else None."""
    if pid is None:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return pid


def _describe_stale(found: _Found | None) -> str | None:
    """For the log: what the PID file we replaced named, and who held a lock
    on it; None when there is nothing worth saying."""
    if found is None:
        return None
    parts = []
    if found.pid is not None and found.pid != os.getpid():
        parts.append(f"pid {found.pid}: {describe_pid(found.pid)}")
    if found.locked:
        who = ", ".join(describe_holder(h) for h in found.holders) or "a process /proc/locks " \
            "does not show"
        parts.append(f"it was locked by {who}, not by a master")
    return "; ".join(parts) or None


def describe_pid(pid: int) -> str:
    """For the log: what a stale PID names now (it is never signalled)."""
    import psutil  # only here: the master otherwise does without it when nothing is adopted

    try:
        proc = psutil.Process(pid)
        cmd = " ".join(proc.cmdline())[:80] or proc.name()
    except psutil.NoSuchProcess:
        return "process gone"
    except psutil.AccessDenied:
        return "now an unrelated process"
    return f"now an unrelated process ({cmd!r})"


def describe_holder(pid: int) -> str:
    """For the log: ``pid N (uid U, 'command')`` of a lock's holder."""
    import psutil

    try:
        proc = psutil.Process(pid)
        uid = proc.uids().real
        cmd = " ".join(proc.cmdline())[:80] or proc.name()
    except psutil.Error:
        return f"pid {pid}"
    return f"pid {pid} (uid {uid}, {cmd!r})"


class Readiness:
    """The daemon's end of the handshake (a no-op in the foreground)."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def _send(self, line: str) -> None:
        if self.fd is None:
            return
        # If the operator's command is gone (killed), there is nobody to tell.
        with contextlib.suppress(OSError):
            os.write(self.fd, (line.replace("\n", " ") + "\n").encode())
        os.close(self.fd)
        self.fd = None

    def ready(self) -> None:
        self._send(f"OK {os.getpid()}")

    def fail(self, reason: str) -> None:
        self._send(f"ERR {reason}")

    def partly(self, reason: str) -> None:
        """The master runs, but not every node reached RUNNING: the
        command exits :data:`NODES_NOT_RUNNING` with ``reason``."""
        self._send(f"PART {reason}")


def daemonize(log_hint: str) -> Readiness:
    """Detach. Returns in the daemon; the operator's process waits for the
    daemon's verdict and exits with it (it never returns)."""
    import daemon  # python-daemon; only the daemonizing path needs it

    r, w = os.pipe()
    pid = os.fork()
    if pid > 0:
        os.close(w)
        # The operator's command may be interrupted (Ctrl-C) while it waits;
        # only the daemon keeps its signals blocked until its handlers exist.
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        _wait_for_daemon(r, pid, log_hint)
    os.close(r)
    context = daemon.DaemonContext(
        detach_process=True,  # detach even when our parent is PID 1 (systemd)
        working_directory="/",
        umask=0o022,  # python-daemon's default is 0
        prevent_core=False,  # nodes inherit resource limits: keep the operator's
        files_preserve=[w],
        signal_map={},  # the master installs its own handlers
    )
    context.open()
    return Readiness(w)


def _wait_for_daemon(r: int, child: int, log_hint: str) -> NoReturn:
    chunks = []
    while True:
        chunk = os.read(r, 4096)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(r)
    os.waitpid(child, 0)
    text = b"".join(chunks).decode("utf-8", "replace").strip()
    if text.startswith("OK"):
        os._exit(0)
    if text.startswith("PART "):
        sys.stderr.write(f"stemd: {text[5:]}\n")
        sys.stderr.flush()
        os._exit(NODES_NOT_RUNNING)
    if text.startswith("ERR "):
        sys.stderr.write(f"stemd: {text[4:]}\n")
    else:
        sys.stderr.write(f"stemd: the daemon exited during start-up; see {log_hint}\n")
    sys.stderr.flush()
    os._exit(1)
