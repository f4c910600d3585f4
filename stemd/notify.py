"""systemd's notify protocol (``sd_notify``), for ``Type=notify`` units.

One datagram per message to the socket named by ``NOTIFY_SOCKET`` (a path,
or an abstract name starting with ``@``). The variable is removed from the
environment once read so that nodes do not inherit it and confuse systemd.
"""

from __future__ import annotations

import contextlib
import os
import socket


class Notifier:
    def __init__(self, address: str | None) -> None:
        self.address = address
        self._sock: socket.socket | None = None
        if address:
            if address.startswith("@"):
                address = "\0" + address[1:]
            self._target = address
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @classmethod
    def from_environ(cls) -> Notifier:
        return cls(os.environ.pop("NOTIFY_SOCKET", None))

    @property
    def enabled(self) -> bool:
        """Is there a systemd to tell? (Lets callers skip building a message.)"""
        return self._sock is not None

    def send(self, *fields: str) -> None:
        """Best effort: systemd going away must not take the master down."""
        if self._sock is None:
            return
        with contextlib.suppress(OSError):
            self._sock.sendto("\n".join(fields).encode(), self._target)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
