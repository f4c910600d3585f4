"""Detach with a readiness handshake, and hold the master lock.

``python-daemon`` does the detaching (double fork, ``setsid``, ``chdir /``,
closing every descriptor, standard streams on ``/dev/null``), but its first
parent exits at once, before the daemon has done anything. So the command
the operator ran forks first and waits on a pipe: the daemon writes
``OK <pid>`` once its PID file is written, its socket bound and its nodes
spawned, or ``ERR <reason>`` when start-up fails; EOF without either means it
died. Only then does the command exit — 0, or 1 with the reason on stderr.
systemd ``Type=forking`` and SysV scripts rely on exactly that.

Uniqueness is an ``fcntl`` lock held on the master PID file for the master's
whole life (s6's lesson: a lock, not a PID file, is the truth). A PID file
nobody holds locked is stale by definition, whatever process its PID names
now; it is rewritten, and what it named is logged but never signalled.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import sys
from typing import NoReturn

from stem_core.errors import StemError
from stem_core.pidfile import read_pid_at


class AlreadyRunning(StemError):
    def __init__(self, pid: int | None, path: str) -> None:
        who = f"pid {pid}" if pid else "pid unknown"
        super().__init__(f"already running ({who}); its PID file {path} is locked")
        self.pid = pid


class MasterLock:
    """The master PID file, opened and locked for the master's lifetime."""

    def __init__(self, path: str, fd: int, stale: str | None) -> None:
        self.path = path
        self.fd = fd
        self.stale = stale  # what the file said before, if it was stale

    @classmethod
    def acquire(cls, path: str) -> MasterLock:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise AlreadyRunning(read_pid_at(fd), path) from None
            old = read_pid_at(fd)
            stale = None
            if old is not None and old != os.getpid():
                stale = f"pid {old}: {describe_pid(old)}"
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            os.fchmod(fd, 0o644)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, stale)

    def recreate(self) -> bool | None:
        """The PID file was removed (or replaced) under us: write a new one
        and hold its lock. None: it is still ours, nothing done; False:
        another process holds the new file's lock (another master: not
        fought over); True: recreated."""
        if self.fd < 0:
            return False
        with contextlib.suppress(FileNotFoundError):
            st, cur = os.fstat(self.fd), os.stat(self.path, follow_symlinks=False)
            if (st.st_dev, st.st_ino) == (cur.st_dev, cur.st_ino):
                return None
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        os.fchmod(fd, 0o644)
        os.close(self.fd)
        self.fd = fd
        return True

    def release(self) -> None:
        """Remove the file, then drop the lock (in that order, so no reader
        sees an unlocked file that names us). Idempotent."""
        if self.fd < 0:
            return
        try:
            st = os.fstat(self.fd)
            cur = os.stat(self.path, follow_symlinks=False)
            if (st.st_dev, st.st_ino) == (cur.st_dev, cur.st_ino):
                os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = -1


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
    if text.startswith("ERR "):
        sys.stderr.write(f"stemd: {text[4:]}\n")
    else:
        sys.stderr.write(f"stemd: the daemon exited during start-up; see {log_hint}\n")
    sys.stderr.flush()
    os._exit(1)
