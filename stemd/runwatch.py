"""Notice, without polling, that the master's own files were removed.

A careless ``rm -rf /run/stem`` (or a tmpfiles clean-up) takes the master's
PID file, socket and state file with it while the master runs on: ``stemctl
status``, ``diagnose`` and ``healthcheck`` then say "not running", and an
operator who believes them starts a second master (issue 11, #39). The
master watches the directories of its own files with inotify and, when one
of them goes, puts them back (:meth:`stemd.master.Master._restore_own_files`).

inotify is a file descriptor the loop already knows how to wait on, so this
costs no wake-up while nothing is removed. The standard library has no
binding for it; three libc calls through ``ctypes`` are all it takes.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import struct
from collections.abc import Callable, Iterable

IN_MOVED_FROM = 0x00000040
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
_MASK = IN_MOVED_FROM | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then the name)

# The symbols already loaded into this process (dlopen(NULL)): the C library
# CPython runs on. ctypes.util.find_library("c") ran `ldconfig -p` in a
# subprocess at every master start and pulled in shutil and tempfile.
_libc = ctypes.CDLL(None, use_errno=True)


class RunDirWatch:
    """Calls ``on_lost`` (once per burst of events) when one of ``paths``
    is removed or renamed away, or a directory holding one of them is."""

    def __init__(self, loop: asyncio.AbstractEventLoop, paths: Iterable[str],
                 on_lost: Callable[[], None]) -> None:
        self.loop = loop
        self.paths = [os.path.abspath(p) for p in paths]
        self.names = {os.path.basename(p) for p in self.paths}
        self.on_lost = on_lost
        self.fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self._wds: dict[int, str] = {}
        self._pending = False
        self.rewatch()
        loop.add_reader(self.fd, self._read)

    def rewatch(self) -> None:
        """(Re)watch every directory: after a removal, they are new inodes.
        A directory that does not exist (yet) is skipped; the master
        recreates it, then calls this again."""
        for directory in sorted({os.path.dirname(p) for p in self.paths}):
            wd = _libc.inotify_add_watch(self.fd, os.fsencode(directory), _MASK)
            if wd >= 0:
                self._wds[wd] = directory

    def _read(self) -> None:
        lost = False
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            offset = 0
            while offset + _EVENT.size <= len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size:offset + _EVENT.size + length]
                offset += _EVENT.size + length
                if mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED):
                    self._wds.pop(wd, None)
                    lost = True
                elif os.fsdecode(name.rstrip(b"\0")) in self.names:
                    lost = True
        if lost and not self._pending:
            # Coalesce: one check for a whole rm -rf, after it has happened.
            self._pending = True
            self.loop.call_soon(self._fire)

    def _fire(self) -> None:
        self._pending = False
        self.on_lost()

    def close(self) -> None:
        self.loop.remove_reader(self.fd)
        os.close(self.fd)
