"""PID files: records, not truth.

A PID file only says which process a node *was*. Before the master adopts or
signals the process it names, :func:`check_node_identity` checks that the
process really is that node (PID reuse is common on busy hosts), and
:func:`read_pidfile` refuses files it did not write itself (a symlink, a
file owned by someone else, junk content).

Writes are atomic (temporary file + ``rename`` inside the directory, opened
with ``O_NOFOLLOW``), so a reader never sees a half-written file and a
symlink planted at the path is replaced, never followed.

:func:`classify` is the one answer to "what is this node's PID file?" —
absent, untrusted, stale or a live node — used alike by the master's
adoption, ``stemctl diagnose`` and the stop of a dead master's nodes, so all
three apply the same trust rules. The master PID file is read here too
(:func:`master_alive`, :func:`read_master_pid`): its lock, held by the
process it names, says whether a master runs; a lock alone does not, since a
node can lock the world-readable file too.

psutil is imported only by the functions that look at processes: the master
PID file readers serve ``stemctl healthcheck``, which must start fast.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from dataclasses import dataclass

from stem_core.errors import PidFileError

_MAX_SIZE = 64
_CREATE_SLACK = 2.0  # seconds: create_time and mtime come from different clocks


@dataclass(frozen=True, slots=True)
class PidRecord:
    pid: int
    mtime: float  # when the file was written (wall clock)


def write_pidfile(path: str, pid: int, mode: int = 0o644) -> None:
    """Write ``pid`` atomically. Raises OSError on failure."""
    write_atomic(path, f"{pid}\n".encode(), mode)


def write_atomic(path: str, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` through a temporary file renamed over it
    (PID files, the state file). Raises OSError on failure."""
    os.close(_replace(path, data, mode, locked=False))


def publish_locked(path: str, data: bytes, mode: int = 0o644) -> int:
    """:func:`write_atomic`, the new file ``flock``ed (``LOCK_EX``) before
    anyone can open it (it is 0600 until then); returns its descriptor,
    which holds the lock: the master PID file always names its locker."""
    return _replace(path, data, mode, locked=True)


def _replace(path: str, data: bytes, mode: int, locked: bool) -> int:
    directory, name = os.path.split(os.path.abspath(path))
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        tmp = f".{name}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        flags = os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags | (os.O_RDWR if locked else os.O_WRONLY),
                     0o600 if locked else mode, dir_fd=dir_fd)
        try:
            if locked:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(fd, data)
            os.fchmod(fd, mode)  # the umask must not hide it from the node user
            # rename() replaces whatever is at the name (a planted symlink
            # too) without following it.
            os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            os.close(fd)
            raise
    finally:
        os.close(dir_fd)
    return fd


def trusted_owners() -> frozenset[int]:
    """Owners whose PID and state files are believed: root and ourselves.
    The master trusts root and its own user; stemctl runs as one of them to
    act on nodes at all."""
    return frozenset({0, os.geteuid()})


def open_trusted(path: str, trusted_uids: frozenset[int] | None
                 ) -> tuple[int, os.stat_result] | None:
    """An fd (the caller closes it) on the regular file ``path`` and its
    stat; None when there is no file. Never follows a symlink, never blocks
    on a FIFO. Raises :class:`PidFileError` for a symlink, a file that is not
    regular, or one owned by a uid outside ``trusted_uids``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PidFileError(f"{path} is a symlink; not following it") from None
        raise PidFileError(f"cannot read {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PidFileError(f"{path} is not a regular file")
        if trusted_uids is not None and st.st_uid not in trusted_uids:
            raise PidFileError(f"{path} is owned by uid {st.st_uid}, not by stemd's user")
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def read_pidfile(path: str, trusted_uids: frozenset[int] | None = None) -> PidRecord | None:
    """The record in ``path``; None when there is no file.

    Raises :class:`PidFileError` for a file that cannot be trusted: a
    symlink, not a regular file, owned by a uid outside ``trusted_uids``, or
    content that is not a PID.
    """
    opened = open_trusted(path, trusted_uids)
    if opened is None:
        return None
    fd, st = opened
    try:
        data = os.read(fd, _MAX_SIZE + 1)
    finally:
        os.close(fd)
    text = data.decode("ascii", errors="replace").strip()
    if len(data) > _MAX_SIZE or not text.isdigit() or int(text) <= 1:
        raise PidFileError(f"{path} does not hold a PID: {text[:20]!r}")
    return PidRecord(int(text), st.st_mtime)


def remove_pidfile(path: str, pid: int | None = None) -> bool:
    """Remove ``path`` (never following a symlink). With ``pid``, only when the
    file still names that PID, so a newer record is not lost. True if removed."""
    if pid is not None:
        try:
            record = read_pidfile(path)
        except PidFileError:
            record = None
        if record is None or record.pid != pid:
            return False
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


#: why a process cannot be checked (not: is not the node); a caller that
#: would signal it must not count it as stale
ENVIRON_UNREADABLE = "its environment cannot be read"


def check_node_identity(
    record: PidRecord, node: str, program: str, uid: int | None
) -> str | None:
    """Why the process in ``record`` is *not* node ``node``, or None if it is.

    A node is a session leader (stemd starts each in its own session) running
    as the node's user, with ``STEMD_NODE``/``STEMD_PROGRAM`` naming it in its
    environment, and it started before its PID file was written. A PID that
    was reused by any other process fails at least one of these.
    """
    import psutil

    try:
        proc = psutil.Process(record.pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return "the process has exited"
        if os.getsid(record.pid) != record.pid:
            return "the process is not a session leader"
        if uid is not None and proc.uids().real != uid:
            return f"the process runs as uid {proc.uids().real}, not {uid}"
        if proc.create_time() > record.mtime + _CREATE_SLACK:
            return "the process started after the PID file was written (PID reused)"
        env = proc.environ()
    except (psutil.NoSuchProcess, ProcessLookupError):
        return "no such process"
    except psutil.AccessDenied:
        return ENVIRON_UNREADABLE
    if env.get("STEMD_NODE") != node or env.get("STEMD_PROGRAM") != program:
        return f"it is not node {node} (STEMD_NODE={env.get('STEMD_NODE')!r})"
    return None


@dataclass(frozen=True, slots=True)
class FoundNode:
    pid: int
    ppid: int
    node: str
    program: str
    uid: int


#: how much of a session leader's environment the scan reads
_MAX_ENVIRON = 1 << 20


def scan_nodes(instance: str) -> list[FoundNode]:
    """Every live process that says it is a node of ``instance``: a session
    leader with ``STEMD_INSTANCE`` (the master PID file's path) naming it.

    PID files can be missing where the nodes are not: a master killed
    between the fork and the PID file's rename, or a run directory removed
    under a running master. A master scans once at start, before it starts
    anything, so it never runs a second copy of a node that is running.

    Only session leaders are looked at, and their raw environment is
    searched for this instance's marker before anything is parsed: another
    fleet on the host (1,000 session leaders of its own) made a psutil read
    of every environment cost 70-125 ms of start-up.
    """
    marker = b"STEMD_INSTANCE=" + os.fsencode(instance) + b"\0"
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            # fields[0] is field 3 (state): ppid 4, session 6
            if fields[0] == b"Z" or int(fields[3]) != pid:
                continue
            with open(f"/proc/{pid}/environ", "rb") as f:
                # bounded: a node user can start session leaders with
                # environments of megabytes; a node's own is a few KiB
                raw = b"\0" + f.read(_MAX_ENVIRON)
            if b"\0" + marker not in raw:
                continue
            env = dict(item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
            node = env.get(b"STEMD_NODE")
            if node is None:
                continue
            uids = proc_uids(pid)
            if uids is None:
                continue
            found.append(FoundNode(pid, int(fields[1]), os.fsdecode(node),
                                   os.fsdecode(env.get(b"STEMD_PROGRAM", b"")), uids[0]))
        except (OSError, IndexError, ValueError):
            continue
    return found


def proc_uids(pid: int | str) -> tuple[int, int] | None:
    """(real, effective) uid of ``pid`` from /proc/PID/status, or None when
    it cannot be read (the process is gone)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Uid:"):
                    fields = line.split()
                    return int(fields[1]), int(fields[2])
    except (OSError, IndexError, ValueError):
        pass
    return None


#: seconds a SIGKILLed process gets to be gone before a stop stops waiting
#: for it (one in uninterruptible sleep, on a hung NFS mount, takes longer):
#: the master's stops and stemctl's stop of a dead master's nodes
KILL_GRACE = 5.0


def group_has_members(pgid: int) -> bool:
    """Any live process in group ``pgid``? A scan of /proc, done only when a
    node that is not our child dies (rare), never periodically: its group id
    is pinned only by members that are left, so killing an empty group's id
    could hit an unrelated group that reused it."""
    return bool(group_members(pgid, first=True))


def group_members(pgid: int, first: bool = False) -> list[int]:
    """The PIDs in process group ``pgid`` (zombies included: they pin the
    id too); with ``first``, only the first found. A scan of /proc."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    found.append(int(entry.name))
                    if first:
                        break
            except ProcessLookupError:
                continue
    return found


# --------------------------------------------------- one verdict per file

ABSENT, UNTRUSTED, STALE, LIVE = "absent", "untrusted", "stale", "live"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a node's PID file says. ``kind`` is one of :data:`ABSENT`,
    :data:`UNTRUSTED` (``why``: leave it, act on nothing), :data:`STALE`
    (``record`` names a process that is not the node, ``why``) or
    :data:`LIVE` (``record`` is the node; ``pidfd`` pins it when asked)."""

    kind: str
    record: PidRecord | None = None
    why: str | None = None
    pidfd: int | None = None


def classify(path: str, node: str, program: str, uid: int | None,
             trusted_uids: frozenset[int], *, pin: bool = False) -> Verdict:
    """Classify node ``node``'s PID file ``path``: :func:`read_pidfile`
    with ``trusted_uids``, then :func:`check_node_identity` (``uid``: the
    node's user, None: not checked).

    With ``pin``, a pidfd is opened on the PID *before* the identity check
    and handed over in a LIVE verdict (the caller closes it): a signal sent
    through it cannot hit a process that reused the PID after the check."""
    try:
        record = read_pidfile(path, trusted_uids)
    except PidFileError as exc:
        return Verdict(UNTRUSTED, why=str(exc))
    if record is None:
        return Verdict(ABSENT)
    pidfd = None
    if pin:
        try:
            pidfd = os.pidfd_open(record.pid)
        except ProcessLookupError:
            return Verdict(STALE, record, "no such process")
    why = check_node_identity(record, node, program, uid)
    if why is not None:
        if pidfd is not None:
            os.close(pidfd)
        return Verdict(STALE, record, why)
    return Verdict(LIVE, record, pidfd=pidfd)


# ------------------------------------------------------ the master PID file


def master_lock_path(pid_file: str) -> str:
    """The master's private lock file beside its PID file (mode 0600, owned
    by stemd's user): uniqueness is the lock on it (:mod:`stemd.daemon`)."""
    return pid_file + ".lock"


def master_alive(path: str) -> bool | None:
    """Is a master holding ``path``'s lock? None when the file cannot be read.
    Needs only read access, and no socket (``stemctl healthcheck``).

    The file is 0644, and ``flock`` needs only a read-only descriptor: a
    node can hold a lock on a dead master's file. So a lock counts only
    when :func:`names_its_locker` agrees that the PID the file names holds it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pass
        except OSError as exc:
            if exc.errno != errno.EWOULDBLOCK:
                return None
        else:
            return False
        return names_its_locker(read_pid_at(fd), os.fstat(fd))
    except OSError:
        return None
    finally:
        os.close(fd)


def master_lock_held(path: str) -> bool | None:
    """Does a process hold the private lock file of the master PID file
    ``path`` (a master, perhaps one still starting)? None when it cannot be
    read (it is 0600: root and stemd's user only)."""
    try:
        fd = os.open(master_lock_path(path),
                     os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        return True if exc.errno == errno.EWOULDBLOCK else None
    finally:
        os.close(fd)
    return False


def names_its_locker(pid: int | None, st: os.stat_result) -> bool:
    """Is the exclusive lock on the master PID file ``st`` held by the
    master it names (``pid``)? The caller found the file locked.

    False when that PID is gone or a zombie, runs as neither root nor the
    file's owner (a node user's process that reused the PID), or is not
    among the lock's holders in ``/proc/locks``. Where a fact cannot be read
    (no PID in the file, ``hidepid``, no ``/proc/locks``, a file system
    whose inode numbers ``/proc/locks`` does not show) it does not count
    against the lock: the answer is then the lock alone, as it always was."""
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    status = _proc_status(pid)
    if status is not None:
        state, euid = status
        if state == "Z" or euid not in (0, st.st_uid):
            return False
    holders = flock_holders(st)
    return not holders or pid in holders


def _proc_status(pid: int) -> tuple[str, int] | None:
    """(state letter, effective uid) from /proc/PID/status; None when it
    cannot be read (gone, or hidden by ``hidepid``)."""
    state, euid = "", -1
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"State:"):
                    state = line.split()[1].decode("ascii", "replace")
                elif line.startswith(b"Uid:"):
                    euid = int(line.split()[2])
                    break
    except (OSError, IndexError, ValueError):
        return None
    return (state, euid) if euid >= 0 else None


def flock_holders(st: os.stat_result) -> list[int]:
    """The PIDs holding an ``flock`` on the file ``st`` describes, from
    /proc/locks (waiters are not holders). The PID is the process that took
    the lock: a master takes its own after detaching. Empty when none is
    listed or /proc/locks cannot be read."""
    try:
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    holders = []
    for line in lines:
        fields = line.split()
        if "->" in fields:  # a waiter, not a holder
            continue
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == want:
            with contextlib.suppress(ValueError):
                holders.append(int(fields[4]))
    return holders


def runs_stemd(pid: int) -> bool:
    """Does ``pid``'s command line look like a stemd master (``stemd`` as
    one of its first three words: the script, or ``python … stemd``)?"""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read(4096).split(b"\0")
    except OSError:
        return False
    return any(os.path.basename(a.decode(errors="replace")).startswith("stemd")
               for a in argv[:3])


def read_master_pid(path: str) -> int | None:
    """The PID the master PID file names (a record: ask :func:`master_alive`
    whether a master runs)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return read_pid_at(fd)
    finally:
        os.close(fd)


def read_pid_at(fd: int) -> int | None:
    """The PID in the open file ``fd`` (read from offset 0), or None."""
    text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


def healthy(path: str, any_pidfile: bool = False) -> tuple[bool, int | None]:
    """``stemctl healthcheck``: (alive, pid). The master PID file is alive
    while the master it names holds its lock (:func:`master_alive`). With
    ``any_pidfile`` (``--pidfile``: perhaps a node's, which nobody locks), an
    unlocked file is alive when its process exists."""
    alive = master_alive(path)
    pid = read_master_pid(path)
    if alive is False and any_pidfile and pid:
        alive = _pid_exists(pid)
    return bool(alive), pid


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
