"""The master's own log: stderr in the foreground, a file as a daemon.

The file is opened with ``O_APPEND|O_NOFOLLOW`` (its directory may be
writable by the node user, who must not be able to redirect the master's
writes through a symlink) and reopened on ``SIGUSR1`` for logrotate.
"""

from __future__ import annotations

import logging
import os
import sys

FORMAT = "%(asctime)s %(levelname)s %(message)s"
LOGGER = "stemd"


class ReopenableFileHandler(logging.StreamHandler):  # type: ignore[type-arg]
    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(self._open())

    def _open(self):  # type: ignore[no-untyped-def]
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o640)
        return os.fdopen(fd, "a", encoding="utf-8", buffering=1)

    def reopen(self) -> None:
        self.acquire()
        try:
            old = self.stream
            self.stream = self._open()
            old.close()
        finally:
            self.release()


def configure(level: str, log_file: str | None) -> logging.Logger:
    """Log to ``log_file`` (a daemon) or to stderr (None: the foreground)."""
    log = logging.getLogger(LOGGER)
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    handler: logging.Handler
    handler = ReopenableFileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False
    return log


def reopen(log: logging.Logger) -> None:
    for handler in log.handlers:
        if isinstance(handler, ReopenableFileHandler):
            handler.reopen()
