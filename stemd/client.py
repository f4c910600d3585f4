"""The client end of the control socket. Imports only the standard library
and :mod:`stem_core.protocol`, so ``stemctl`` starts fast."""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import time

from stem_core import protocol as P

# Annotations only (postponed): importing typing costs stemctl ~5 ms a run.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


class MasterNotRunning(Exception):
    pass


class AccessDenied(Exception):
    pass


class NoAnswer(Exception):
    """The master did not answer within the timeout (hung, stopped, or its
    connection queue full)."""

    def __init__(self, seconds: float | None, detail: str = "") -> None:
        super().__init__(seconds, detail)
        self.seconds = seconds
        self.detail = detail

    def __str__(self) -> str:
        why = f" ({self.detail})" if self.detail and self.detail != "timed out" else ""
        return f"the master did not answer within {self.seconds:g} s{why}"


class Client:
    """``timeout``: seconds to wait for the answer (None: for ever).
    ``extend``: when the answer has not come within ``timeout``, called
    once for the whole wait, counted from the call's start — so that a
    command that waits for nodes works out its long deadline (which means
    reading the whole configuration, ~30 ms at 1,000 nodes) only when the
    answer is slow, not on every run."""

    def __init__(self, path: str, timeout: float | None = None,
                 extend: Callable[[], float | None] | None = None) -> None:
        self.path = path
        self.timeout = timeout
        self.extend = extend

    def _connect(self) -> socket.socket:
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.path)
            except BlockingIOError:
                # With a timeout the socket is non-blocking underneath, and a
                # Unix socket whose accept queue is full fails with EAGAIN at
                # once instead of waiting: retry until the deadline (a client
                # may poll; the master never does).
                sock.close()
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError("the master's connection queue is full") from None
                time.sleep(0.02)
                continue
            except OSError as exc:
                sock.close()
                if exc.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTDIR):
                    raise MasterNotRunning(self.path) from None
                if exc.errno in (errno.EACCES, errno.EPERM):
                    raise AccessDenied(self.path) from None
                raise
            return sock

    def call(self, cmd: str, hold: bool = False,
             hold_timeout: float | Callable[[], float | None] | None = None,
             **args: Any) -> dict[str, Any]:
        """Send one request, return the response. With ``hold``, also wait
        (up to ``hold_timeout``, None: for ever; a callable is asked once the
        answer is in) until the master closes the connection (it exits:
        ``shutdown``). Raises TimeoutError when the master does not answer
        within the client's timeout."""
        started = time.monotonic()
        sock = self._connect()
        try:
            # the master answers a refused peer before reading: read the answer
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(P.encode(P.request(cmd, **args)))
            if self.extend is not None and not _readable(sock, self.timeout):
                whole = self.extend()
                if whole is not None:
                    whole -= time.monotonic() - started
                    if whole <= 0:
                        raise TimeoutError("timed out")
                sock.settimeout(whole)
            reader = sock.makefile("rb")
            try:
                line = reader.readline(P.MAX_RESPONSE)
            except ConnectionResetError:  # the master died holding our unread request
                line = b""
            if not line:
                raise MasterNotRunning(self.path)
            response = P.decode_response(line)
            if hold and response.get("ok"):
                sock.settimeout(hold_timeout() if callable(hold_timeout) else hold_timeout)
                final = _last_word(reader)
                if final is not None:
                    response = {**response, "final": final}
            return response
        finally:
            sock.close()


#: how much of a held connection's last answer is kept (1,000 node names fit)
_LAST_WORD_MAX = 1 << 20


def _last_word(reader: Any) -> Any:
    """Read a held connection to EOF (the master exits); the result of the
    last answer it wrote before (``shutdown``: ``{"stop_forced": [...]}``),
    or None. A master older than that answer writes nothing."""
    head = b""
    with contextlib.suppress(ConnectionResetError):  # the master is gone, as at EOF
        while chunk := reader.read(65536):
            if len(head) < _LAST_WORD_MAX:  # read on to EOF, keep only the start
                head += chunk
    try:
        final = P.decode_response(head.splitlines()[0]) if head.strip() else None
    except (ValueError, P.ProtocolError):
        return None
    return final.get("result") if isinstance(final, dict) and final.get("ok") else None


def _readable(sock: socket.socket, timeout: float | None) -> bool:
    """Has the master begun to answer within ``timeout`` seconds?"""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    ms = None if timeout is None else max(0, int(timeout * 1000))
    while True:
        try:
            return bool(poller.poll(ms))
        except InterruptedError:  # pragma: no cover - PEP 475 retries poll itself
            continue


def socket_listening(path: str) -> bool:
    """Does anyone accept connections on ``path``? (The master, before it
    replaces a socket file; ``stemctl diagnose``, to find a dead socket.)"""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def wait_until_gone(pid: int, timeout: float = 10.0) -> None:
    """The master closes its end while it exits, a moment before it is
    gone: wait for that moment, so that "shutdown returned" means "the
    master is gone" (what init scripts and ExecStop= rely on)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                ours = b"stemd" in f.read()
        except (OSError, IndexError):
            return  # gone (or no /proc to ask)
        if state in (b"Z", b"X") or not ours:
            return  # exited; a zombie only awaits its parent
        time.sleep(0.005)


def denied_message(path: str) -> tuple[str, str]:
    """Why connecting to the socket was refused, from its owner, group and
    mode, and what grants access (SPEC §3: name the group and the key)."""
    import grp
    import pwd
    import stat

    try:
        st = os.stat(path)
    except OSError as exc:
        return (f"permission denied on {path} ({exc.strerror})",
                "run as root, or ask for access to the socket's directory")
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    mode = stat.S_IMODE(st.st_mode)
    # a root master's socket is root's: "run as root or as root" would say it twice
    by_owner = st.st_uid != 0
    if mode & 0o060 == 0o060:
        users = f"root, as {owner}," if by_owner else "root"
        return (f"permission denied on {path} (mode {mode:04o}, owner {owner}, group {group})",
                f"run as {users} or as a member of group {group!r}, the socket's "
                "group (STEMD_SOCKET_GROUP / [stemd] socket_group)")
    users = f"root or as {owner}" if by_owner else "root"
    return (f"permission denied on {path} (mode {mode:04o}, owner {owner}: no socket group)",
            f"run as {users}; to let operators in, set STEMD_SOCKET_GROUP "
            "(TOML [stemd] socket_group) to their group and restart stemd")
