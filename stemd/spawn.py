"""Start one node's process.

Everything is done with ``subprocess.Popen`` arguments — ``user``, ``group``,
``extra_groups``, ``umask``, ``start_new_session``, ``cwd``, ``env`` — and no
``preexec_fn``, which is unsafe after fork in a process with threads and slow.
The log file is opened by the master (``O_APPEND|O_NOFOLLOW|O_CLOEXEC``) and
handed to the child as stdout/stderr (stderr gets its own file, opened the
same way, when ``stderr_log_file`` names one); the master keeps no pipe, so node
output never passes through it.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
from collections.abc import Mapping

from stem_core.accounts import Account, AccountError, resolve_account
from stem_core.model import NodeSpec
from stemd.node import SpawnError

#: variables of the master's own environment that must not reach nodes
_PRIVATE_ENV = ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "STEMD_CONFIG")


def open_log(path: str, account: Account) -> int:
    """Open (create) a node's log for appending, never through a symlink.

    The log directory may be writable by the node user, so the final name is
    opened with O_NOFOLLOW and must be a regular file with a single link (a
    hard link to, say, /etc/shadow would otherwise be appended to as root).

    ``/dev/null`` is the one special file taken: it is how an operator (and
    ``stemctl import`` for supervisord's ``NONE``) discards a node's output,
    and it lives in root's /dev, out of any node user's reach.
    """
    if path == os.devnull:
        try:
            return os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC | os.O_NOCTTY)
        except OSError as exc:  # a container without /dev/null
            raise SpawnError(f"cannot open {path}: {exc.strerror}", exc.errno) from None
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(path, flags | os.O_NONBLOCK, 0o640)
    except OSError as exc:
        if exc.errno in (errno.ENXIO, errno.ELOOP):  # a FIFO nobody reads; a symlink
            raise SpawnError(f"log file {path} is not a plain file (a FIFO or a symlink)",
                             exc.errno) from None
        raise SpawnError(f"cannot open log file {path}: {exc.strerror}", exc.errno) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            raise SpawnError(f"log file {path} is not a plain file (special file or hard link)")
        # Hand the file to the node user only when it is empty (just created,
        # or touched by an installer): a typo naming an existing file of the
        # master's user (/etc/passwd) must not give that file away.
        if account.switch and st.st_uid != account.uid and st.st_uid == os.geteuid() \
                and st.st_size == 0:
            os.fchown(fd, account.uid, account.gid)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def node_environment(spec: NodeSpec, account: Account,
                     base: Mapping[str, str]) -> dict[str, str]:
    """The master's environment (as a shell would pass it on), the node's
    configured variables, and ``STEMD_NODE``/``STEMD_PROGRAM``.

    ``PWD`` names the node's working directory (``STEMD_CHDIR``), as a shell
    that ``cd``-ed there would: the master's own PWD (``/`` for a daemon)
    would mislead programs that trust $PWD over getcwd()."""
    env = {k: v for k, v in base.items() if k not in _PRIVATE_ENV}
    if account.switch:
        env.update(HOME=account.home, USER=account.name, LOGNAME=account.name)
    env["PWD"] = spec.directory
    env.update(spec.env)
    return env


def spawn_node(spec: NodeSpec, base_env: Mapping[str, str], force_root: bool,
               account: Account | None = None) -> subprocess.Popen[bytes]:
    """Start the node's process in its own session. Raises SpawnError.
    ``account``: the node's, already resolved (the master looks each one up
    once per burst of spawns)."""
    if account is None:
        try:
            account = resolve_account(spec.run_as.user, spec.run_as.group)
        except AccountError as exc:
            raise SpawnError(str(exc)) from None  # a failed start, as the node counts it
    if account.uid == 0 and not force_root:
        raise SpawnError("refusing to run a node as root: set STEMD_USER to an unprivileged "
                         "account, or STEMD_FORCE_ROOT=1 if you really mean it")
    log_fd = None if spec.log_file == "-" else open_log(spec.log_file, account)
    err_fd = log_fd
    if spec.stderr_log_file != spec.log_file:
        # Opened under the same rules as the log; "-": the master's stderr.
        try:
            err_fd = None if spec.stderr_log_file == "-" else open_log(spec.stderr_log_file,
                                                                       account)
        except BaseException:
            if log_fd is not None:
                os.close(log_fd)
            raise
    try:
        return subprocess.Popen(
            spec.argv,
            cwd=spec.directory,
            env=node_environment(spec, account, base_env),
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=err_fd,
            close_fds=True,
            start_new_session=True,
            umask=spec.run_as.umask,
            # None leaves the account as it is (a master not running as root)
            user=account.uid if account.switch else None,
            group=account.gid if account.switch else None,
            extra_groups=list(account.extra_groups) if account.switch else None,
        )
    except OSError as exc:
        what = exc.filename or spec.argv[0]
        raise SpawnError(f"{what}: {exc.strerror}", exc.errno) from None
    except (subprocess.SubprocessError, ValueError) as exc:
        raise SpawnError(str(exc)) from None
    finally:
        for fd in dict.fromkeys((log_fd, err_fd)):
            if fd is not None:
                os.close(fd)
