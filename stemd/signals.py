"""POSIX signals into the event loop, none lost in a SIGCHLD storm.

asyncio's ``add_signal_handler()`` carries signal numbers through its
self-pipe, a Unix socketpair, where every one-byte write is charged a whole
socket buffer of ~1 KiB against a limit of ~200 KiB. Stopping 1,000 nodes
delivers hundreds of SIGCHLDs while the loop is busy signalling the rest;
after ~250 the socketpair is full, every further signal -- a SIGTERM too --
is dropped, and CPython prints an "Exception ignored ... BlockingIOError"
traceback for each drop. Measured before this module: a foreground master
stopping 1,000 nodes printed 45 to 448 of them and once stopped answering
for minutes.

Here the wakeup fd is a pipe: one byte costs one byte, so 64 KiB of pipe
holds 65,536 pending signals; the full-buffer warning is off (a full pipe
already guarantees a wake-up); and a drain runs each signal's handler once
however many times it arrived, which is all SIGCHLD needs (its handler reaps
every exited child).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable


def _ignore(signum: int, frame: object) -> None:
    """The Python-level handler: the C handler has already written the
    signal number to the wakeup fd, which is all that is wanted."""


class SignalPipe:
    """Owns the process's signal wakeup fd while the loop runs."""

    #: the signals the master handles; blocked from the start of ``stemd``
    #: until the pipe is in place, so that none arriving during start-up
    #: (SIGHUP from a hasty reload) kills the daemon or is lost
    HANDLED = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1,
                         signal.SIGCHLD})

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 handlers: dict[int, Callable[[], None]]) -> None:
        self.loop = loop
        self.handlers = dict(handlers)
        self._read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._previous_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        self._previous = {sig: signal.signal(sig, _ignore) for sig in self.handlers}
        loop.add_reader(self._read_fd, self._drain)

    def _drain(self) -> None:
        received = bytearray()
        while True:
            try:
                chunk = os.read(self._read_fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            received += chunk
        for signum in dict.fromkeys(received):  # once each, in arrival order
            handler = self.handlers.get(signum)
            if handler is not None:
                # its own callback, as asyncio does: one handler's error is
                # logged by the loop and does not skip the others
                self.loop.call_soon(handler)

    def close(self) -> None:
        """Give the signals and the wakeup fd back as they were."""
        self.loop.remove_reader(self._read_fd)
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        signal.set_wakeup_fd(self._previous_fd)
        os.close(self._read_fd)
        os.close(self._write_fd)
