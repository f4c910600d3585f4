"""The master's own log: stderr in the foreground, a file as a daemon.

The file is opened the way a file in a directory someone else might write
must be (issue 11, B2): ``O_NOFOLLOW`` (no symlink to redirect the master's
writes), ``O_NONBLOCK`` (opening a FIFO for writing blocks until a reader
comes: the master hung in ``open()``, and with it respawns, ``status`` and
``shutdown``), and then it must be a regular file with one link (no hard
link to someone else's file) owned by root or stemd's user; only then is
``O_NONBLOCK`` cleared. The default layout keeps the node user out of the
log directory anyway (stemd/checks.py); this is the second line.

``SIGUSR1`` reopens it for logrotate. A bad file at reopen is refused: the
old handle is kept and the refusal is logged there. At start-up it is a
start-up error that names the file and why.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import sys
from typing import IO

FORMAT = "%(asctime)s %(levelname)s %(message)s"
LOGGER = "stemd"


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISLNK, "a symlink"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):
        if test(mode):
            return name
    return "not a regular file"


def open_log_file(path: str) -> IO[str]:
    """Open ``path`` for appending, safely. Raises OSError whose strerror
    says what is wrong with the file."""
    flags = (os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
             | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        fd = os.open(path, flags, 0o640)
    except OSError as exc:
        # ENXIO: a FIFO with no reader; ELOOP: a symlink (O_NOFOLLOW).
        if exc.errno in (errno.ENXIO, errno.ELOOP):
            try:
                kind = _kind(os.lstat(path).st_mode)
            except OSError:
                kind = "not a regular file"
            raise OSError(exc.errno, f"it is {kind}, not a regular file; refusing it") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, f"it is {_kind(st.st_mode)}, not a regular file; "
                                        "refusing it")
        if st.st_nlink != 1:
            raise OSError(errno.EINVAL, f"it has {st.st_nlink} hard links (it may be someone "
                                        "else's file); refusing it")
        if os.geteuid() == 0 and st.st_uid not in (0, os.geteuid()):
            raise OSError(errno.EPERM, f"it is owned by uid {st.st_uid}, not by root; "
                                       "refusing it")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "a", encoding="utf-8", buffering=1)
    except BaseException:
        os.close(fd)
        raise


class ReopenableFileHandler(logging.StreamHandler):  # type: ignore[type-arg]
    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(open_log_file(path))

    def reopen(self) -> str | None:
        """Switch to a freshly opened file; on failure keep the old one and
        return why (the caller logs it — to the old file, still open)."""
        try:
            new = open_log_file(self.path)
        except OSError as exc:
            return f"cannot reopen the log file {self.path}: {exc.strerror}; " \
                   "still writing to the file opened before"
        self.acquire()
        try:
            old = self.stream
            self.stream = new
            old.close()
        finally:
            self.release()
        return None


def configure(level: str, log_file: str | None) -> logging.Logger:
    """Log to ``log_file`` (a daemon) or to stderr (None: the foreground)."""
    # The master logs every transition of every node: thousands of records
    # when 1,000 nodes start or stop. FORMAT uses none of the caller's file
    # and line, thread or process fields, so they are not collected (the
    # logging HOWTO's "Optimization" section): about a third of a record.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    log = logging.getLogger(LOGGER)
    for old in list(log.handlers):
        log.removeHandler(old)
        old.close()
    handler: logging.Handler
    handler = ReopenableFileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False
    return log


def reopen(log: logging.Logger) -> bool:
    """Reopen the log file (SIGUSR1, logrotate); False when it could not be
    (the reason is logged to the file still open)."""
    done = True
    for handler in log.handlers:
        if isinstance(handler, ReopenableFileHandler):
            why = handler.reopen()
            if why:
                log.error("%s", why)
                done = False
    return done
