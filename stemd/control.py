"""The control socket server.

Safety properties, each one because a supervisor running as root is a
privilege boundary:

- The socket is bound under a temporary name with a tight umask, given its
  group and mode ``0660`` (``0600`` without ``STEMD_SOCKET_GROUP``), then
  renamed into place: there is no moment when it is reachable with looser
  permissions.
- A socket file left by a dead master is replaced only after a connect probe
  shows nobody listens (a live one means another master owns it).
- Each peer is checked with ``SO_PEERCRED``: root, the master's user and
  members of the socket's group (``STEMD_SOCKET_GROUP``, the operators';
  supplementary groups included, read from ``/proc/PID/status``) are served;
  anyone else gets an error naming the group and the key. The nodes' group
  (``STEMD_GROUP``) is deliberately not the default: a compromised worker
  must not be able to stop its own fleet.
- Requests are bounded (64 KiB) and must arrive within a timeout; writes
  too. A client can delay only itself, never supervision or other clients.
- Commands dispatch through an explicit table; nothing a client sends names
  a function, a path, a user or a command line.
- Every request gets a JSON answer: a line nested deeper than
  ``protocol.MAX_DEPTH`` is a ``bad_request`` (the json module would recurse
  until RecursionError), and an unexpected exception in a handler is logged
  and answered ``failed``, never a silent close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from stem_core import protocol as P
from stem_core.errors import StemError
from stemd.client import socket_listening

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Hold:
    """A handler result that keeps the connection open until the master
    exits (``shutdown``: the client learns the master is gone from EOF)."""

    result: Any


class SocketInUse(StemError):
    pass


def bind_control_socket(path: str, gid: int | None) -> socket.socket:
    """Bind and listen on ``path``: mode 0660 with group ``gid``, or 0600 (root
    and the master's user only) when ``gid`` is None."""
    probe_and_remove_stale(path)
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o177)
    try:
        sock.bind(tmp)
    finally:
        os.umask(old)
    try:
        if gid is not None and gid != os.getegid():
            os.chown(tmp, -1, gid)
        os.chmod(tmp, 0o600 if gid is None else 0o660)
        os.rename(tmp, path)
        sock.listen(128)
    except BaseException:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return sock


def probe_and_remove_stale(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketInUse(f"{path} exists and is not a socket; remove it or choose another "
                          "STEMD_SOCKET")
    if socket_listening(path):
        raise SocketInUse(f"another stemd listens on {path}")
    os.unlink(path)


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", data)
    return pid, uid, gid


def _peer_groups(pid: int) -> set[int]:
    """The peer's supplementary groups (SO_PEERCRED carries only the primary)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:]}
    except OSError:
        pass
    return set()


def authorised(pid: int, uid: int, gid: int, socket_gid: int | None) -> bool:
    """Root, the master's own user, or a member (primary or supplementary) of
    the socket group; with no socket group, only the first two."""
    if uid in (0, os.geteuid()):
        return True
    if socket_gid is None:
        return False
    return gid == socket_gid or socket_gid in _peer_groups(pid)


class ControlServer:
    def __init__(self, path: str, gid: int | None, handlers: Mapping[str, Handler],
                 log: logging.Logger) -> None:
        self.path = path
        self.gid = gid
        self.group_name = group_name(gid)
        self.handlers = handlers
        self.log = log
        self._server: asyncio.base_events.Server | None = None
        self._inode: tuple[int, int] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        # connections whose request is being handled (see settle)
        self._answering: set[asyncio.Task[Any]] = set()
        self.held: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        sock = bind_control_socket(self.path, self.gid)
        st = os.stat(self.path)
        self._inode = (st.st_dev, st.st_ino)
        self._server = await asyncio.start_unix_server(
            self._serve, sock=sock, limit=P.MAX_REQUEST)

    def present(self) -> bool:
        """Is our socket still at its path (not removed or replaced)?"""
        try:
            st = os.stat(self.path, follow_symlinks=False)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._inode

    def tell_held(self, result: Any) -> None:
        """A last answer to every held connection (``shutdown``: what its
        stop of the nodes did), written as the master exits; the client
        reads it up to EOF. A few hundred bytes: the socket buffer takes it
        without a drain, and a client gone meanwhile is no concern."""
        line = P.encode(P.ok(result))
        for writer in self.held:
            with contextlib.suppress(OSError, RuntimeError):
                writer.write(line)

    async def settle(self, timeout: float) -> None:
        """Let the requests being handled write their answers, for at most
        ``timeout`` seconds: a master that exits as a stop it was answering
        ends left that client with EOF ("master not running") for a stop
        that had succeeded. Idle connections are not waited for."""
        pending = self._answering - {asyncio.current_task()}
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    def close(self) -> None:
        """Stop accepting and remove the socket file (only if it is ours)."""
        if self._server is not None:
            self._server.close()
            self._server = None
        with contextlib.suppress(OSError):
            st = os.stat(self.path, follow_symlinks=False)
            if (st.st_dev, st.st_ino) == self._inode:
                os.unlink(self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        hold = False
        try:
            response, hold = await self._respond(reader, writer)
            writer.write(P.encode(response))
            await asyncio.wait_for(writer.drain(), P.WRITE_TIMEOUT)
        except (TimeoutError, ConnectionError, OSError):
            hold = False
            # close() would keep the unsent response (and the fd) until the
            # client reads it, i.e. forever for a client that never reads.
            writer.transport.abort()
        except Exception:  # a bug in a handler must not take the master down
            self.log.exception("control: unexpected error")
            hold = False
        finally:
            if hold:
                self.held.append(writer)
            else:
                writer.close()

    async def _run_while_connected(self, work: Awaitable[Any], reader: asyncio.StreamReader,
                                   cmd: str) -> Any:
        """Run a handler, and cancel it if its client goes away first: work
        queued for nobody (500 restarts of clients long gone) must not run
        on for minutes holding descriptors. The master shields what a node
        step has begun, so a cancel never leaves a node half-restarted.
        A client sends one request and then only reads, so anything on the
        connection now (EOF) means it has gone."""
        task = asyncio.ensure_future(work)
        gone = asyncio.ensure_future(reader.read(1))
        try:
            await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            gone.cancel()
        if not task.done():
            task.cancel()
            self.log.info("control: %s: its client went away", cmd)
            with contextlib.suppress(asyncio.CancelledError, P.ProtocolError):
                await task
            raise ConnectionResetError
        return task.result()

    async def _respond(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                       ) -> tuple[dict[str, Any], bool]:
        sock = writer.get_extra_info("socket")
        pid, uid, gid = peer_credentials(sock)
        if not authorised(pid, uid, gid, self.gid):
            self.log.warning("control: refused uid %d (pid %d): not root, not stemd's user, "
                             "not in the socket's group (%s)", uid, pid,
                             self.group_name or "none")
            return P.error(P.ErrorCode.PERMISSION_DENIED, "permission denied",
                           hint=denied_hint(self.group_name)), False
        try:
            line = await asyncio.wait_for(reader.readuntil(b"\n"), P.READ_TIMEOUT)
        except asyncio.LimitOverrunError:
            return P.error(P.ErrorCode.BAD_REQUEST, f"request over {P.MAX_REQUEST} bytes"), False
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise ConnectionResetError from None
            return P.error(P.ErrorCode.BAD_REQUEST, "request not terminated by a newline"), False
        except TimeoutError:
            return P.error(P.ErrorCode.BAD_REQUEST,
                           f"no complete request within {P.READ_TIMEOUT:g}s"), False
        try:
            request = P.decode_request(line)
            handler = self.handlers.get(request.cmd)
            if handler is None:
                raise P.ProtocolError(P.ErrorCode.UNKNOWN_COMMAND,
                                      f"unknown command {request.cmd[:40]!r}",
                                      hint="known: " + ", ".join(sorted(self.handlers)))
            self.log.debug("control: uid %d: %s %s", uid, request.cmd, request.args)
            task = asyncio.current_task()
            if task is not None:
                self._answering.add(task)
                task.add_done_callback(self._answering.discard)
            result = await self._run_while_connected(handler(request.args), reader,
                                                     request.cmd)
        except P.ProtocolError as exc:
            return P.error(exc.code, exc.message, exc.hint, exc.result), False
        except (ConnectionError, TimeoutError):
            raise  # the client is gone or too slow: _serve drops the connection
        except Exception as exc:  # a bug must not take the master down, nor go unanswered
            self.log.exception("control: unexpected error")
            return P.error(P.ErrorCode.FAILED, f"internal error in the master: {exc!r}"[:200],
                           hint="see the master log"), False
        if isinstance(result, Hold):
            return P.ok(result.result), True
        return P.ok(result), False


def denied_hint(group: str | None) -> str:
    """What grants access, for a refused peer: the group and the key."""
    if group:
        return (f"run stemctl as root, as stemd's user, or as a member of group {group!r} "
                "(the socket's group, STEMD_SOCKET_GROUP / [stemd] socket_group)")
    return ("run stemctl as root or as stemd's user; to let operators in, set "
            "STEMD_SOCKET_GROUP (TOML [stemd] socket_group) to their group and restart stemd")


def group_name(gid: int | None) -> str | None:
    """The name of ``gid`` (its number if it has none); looked up once, at
    start, never per refused connection (NSS may be slow)."""
    if gid is None:
        return None
    import grp

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def socket_gid(group: str | None) -> int | None:
    """The gid of ``STEMD_SOCKET_GROUP``, or None (unset: socket 0600)."""
    if not group:
        return None
    import grp

    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise StemError(f"no such group: {group} (STEMD_SOCKET_GROUP)") from None

