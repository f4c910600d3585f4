"""Stop what a dead master left behind: its nodes, and the master itself when it hangs.

SPEC §2.2: stopping the service while its master is dead (``stemctl shutdown``,
the init script's ``stop`` and ``restart``) stops the nodes that master left
behind, so that a ``restart`` starts fresh ones and a deploy never keeps old
code running. This is the client side (``stemctl``); it imports no master
code, and it may wait with a deadline (the master never does).

Which processes: the candidates are the configured nodes' PID files, plus the
records of the master's state file (:mod:`stem_core.statefile`), which also
name nodes of a configuration that has since changed or no longer parses.
A candidate is stopped only if it is identified exactly as adoption
identifies it (:func:`stem_core.pidfile.classify`, as the master's adoption
and ``stemctl diagnose`` do: a PID file owned by a trusted user, naming a
session leader, the node's user, started before its PID file was written,
``STEMD_NODE`` and ``STEMD_PROGRAM`` naming it) — never by PID liveness alone. A pidfd is
opened *before* the check and every signal to the main process goes through
it, so a PID reused between the check and the signal is never hit.

How: as the master stops a node (``STEMD_KILL_MODE``): the stop signal to the
main process (``mixed``) or its group (``control-group``); once the main
process has exited, or after the node's stop timeout, ``SIGKILL`` to what is
left of its process group. The main process is not our child, so once it is
gone its group id is pinned only by members that are left: the group is
killed only when some are seen (as :mod:`stemd.reaper` does for adopted nodes).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import select
import signal
import time
from dataclasses import dataclass

from stem_core.errors import PidFileError
from stem_core.keys import signal_number
from stem_core.pidfile import (
    ENVIRON_UNREADABLE,
    KILL_GRACE,
    LIVE,
    STALE,
    UNTRUSTED,
    classify,
    flock_holders,
    group_members,
    master_alive,
    master_lock_held,
    master_lock_path,
    names_its_locker,
    read_master_pid,
    read_pid_at,
    remove_pidfile,
    runs_stemd,
    trusted_owners,
)
from stem_core.statefile import read_state, remove_state, state_path

TYPE_CHECKING = False
if TYPE_CHECKING:
    from stem_core.model import Config

_DEFAULT_STOP = ("TERM", 10.0, "mixed")  # STEMD_STOP_SIGNAL, _TIMEOUT, KILL_MODE defaults


@dataclass(frozen=True, slots=True)
class Candidate:
    """A node a dead master may have left running, and how to stop it."""

    name: str
    program: str
    pid_file: str
    user: str | None
    stop_signal: str
    stop_timeout: float
    kill_mode: str
    #: False when nothing says which user the node runs as (only the state
    #: file names it: the configuration did not load, or no longer has its
    #: program). Its uid is then not checked: guessing the master's would
    #: call a live node of another user stale, remove its PID file and leave
    #: it running, while the stop said nothing was left.
    user_known: bool = True


@dataclass(frozen=True, slots=True)
class Stopped:
    name: str
    pid: int


@dataclass(frozen=True, slots=True)
class Report:
    """What :func:`stop_left_behind` did. ``unknown`` says why it cannot
    tell whether nodes are left (nothing to look at); ``failed`` lists nodes
    that still run."""

    stopped: tuple[Stopped, ...] = ()
    failed: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    unknown: str | None = None


def candidates(config: Config | None, master_pid_file: str,
               trusted: frozenset[int]) -> tuple[list[Candidate], list[str], bool]:
    """The candidates, notes on what was skipped, and whether the state file
    was there (read)."""
    found: dict[str, Candidate] = {}
    notes: list[str] = []
    by_program = {}
    if config is not None:
        for spec in config.nodes:
            policy = spec.policy
            found[spec.pid_file] = Candidate(spec.name, spec.program, spec.pid_file,
                                             spec.run_as.user, policy.stop_signal,
                                             policy.stop_timeout, policy.kill_mode)
        by_program = {p.name: p for p in config.programs}
    path = state_path(master_pid_file)
    try:
        state = read_state(path, trusted)
    except PidFileError as exc:
        notes.append(f"ignoring the state file: {exc}")
        state = None
    if state is not None:
        for record in state.nodes.values():
            if record.pid_file in found:
                continue
            program = by_program.get(record.program)
            stop = ((program.policy.stop_signal, program.policy.stop_timeout,
                     program.policy.kill_mode) if program is not None else _DEFAULT_STOP)
            found[record.pid_file] = Candidate(record.name, record.program, record.pid_file,
                                               program.run_as.user if program else None, *stop,
                                               user_known=program is not None)
    return list(found.values()), notes, state is not None


@dataclass(frozen=True, slots=True)
class _Target:
    candidate: Candidate
    pid: int
    pidfd: int


def _node_uid(user: str | None, master_uid: int | None) -> int | None:
    """The uid the node runs as: its user's, else the master's own (nodes
    without STEMD_USER run as the master's user). None: unknown, not checked
    (as the master does when the account cannot be resolved)."""
    if user:
        try:
            return pwd.getpwnam(user).pw_uid
        except KeyError:
            return None
    return master_uid


def identify(cands: list[Candidate], trusted: frozenset[int],
             master_uid: int | None) -> tuple[list[_Target], list[str], list[str]]:
    """The candidates that are alive and are that node, each with a pidfd;
    notes; and the live processes whose identity cannot be checked (they
    may be nodes that still run: never reported as stopped)."""
    targets: list[_Target] = []
    notes: list[str] = []
    doubtful: list[str] = []
    seen: set[int] = set()
    for cand in cands:
        uid = _node_uid(cand.user, master_uid) if cand.user_known else None
        verdict = classify(cand.pid_file, cand.name, cand.program, uid, trusted, pin=True)
        if verdict.kind == UNTRUSTED:
            notes.append(f"{cand.name}: ignoring untrusted PID file: {verdict.why}")
            continue
        record = verdict.record
        if record is None:
            continue
        if record.pid in seen:
            if verdict.pidfd is not None:
                os.close(verdict.pidfd)
            continue
        if verdict.kind == STALE:
            if verdict.why == ENVIRON_UNREADABLE:
                doubtful.append(f"{cand.name}: cannot tell whether pid {record.pid} is the "
                                f"node ({verdict.why}); run as root")
                continue
            notes.append(f"{cand.name}: removed stale PID file {cand.pid_file} "
                         f"(pid {record.pid}: {verdict.why})")
            remove_pidfile(cand.pid_file, record.pid)
            continue
        assert verdict.pidfd is not None  # LIVE, pinned
        seen.add(record.pid)
        targets.append(_Target(cand, record.pid, verdict.pidfd))
    return targets, notes, doubtful


def stop_targets(targets: list[_Target]) -> tuple[list[Stopped], list[str]]:
    """Stop every target in parallel, as the master would; close their pidfds."""
    stopped: list[Stopped] = []
    failed: list[str] = []
    now = time.monotonic()
    deadline: dict[int, float] = {}
    killed: set[int] = set()
    dying: dict[int, Stopped] = {}  # group members SIGKILLed once their main process exited
    by_fd = {t.pidfd: t for t in targets}
    poller = select.poll()
    for t in targets:
        sig = signal_number(t.candidate.stop_signal)
        try:
            if t.candidate.kill_mode == "control-group":
                # the live leader (pidfd open, not yet readable) pins the group id
                if not _exited(t.pidfd):
                    os.killpg(t.pid, sig)
            else:
                signal.pidfd_send_signal(t.pidfd, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            failed.append(f"{t.candidate.name} (pid {t.pid}): permission denied")
            os.close(t.pidfd)
            del by_fd[t.pidfd]
            continue
        deadline[t.pidfd] = now + t.candidate.stop_timeout
        poller.register(t.pidfd, select.POLLIN)
    while deadline:
        wait = max(0.0, min(deadline.values()) - time.monotonic())
        ready = {fd for fd, _ in poller.poll(int(wait * 1000) + 1)}
        now = time.monotonic()
        for fd in list(deadline):
            t = by_fd[fd]
            if fd in ready:
                # The main process is gone; kill what is left of its group.
                members = group_members(t.pid)
                if members:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(t.pid, signal.SIGKILL)
                    dying.update((pid, Stopped(t.candidate.name, t.pid)) for pid in members)
                stopped.append(Stopped(t.candidate.name, t.pid))
            elif now >= deadline[fd] and fd not in killed:
                # Stop timeout: the leader still runs and pins the group id.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(t.pid, signal.SIGKILL)
                killed.add(fd)
                deadline[fd] = now + KILL_GRACE
                continue
            elif now >= deadline[fd]:
                failed.append(f"{t.candidate.name} (pid {t.pid}): still running after SIGKILL")
            else:
                continue
            poller.unregister(fd)
            del deadline[fd]
    for t in by_fd.values():
        os.close(t.pidfd)
    for pid, s in _still_alive(dying, KILL_GRACE).items():
        failed.append(f"{s.name} (pid {s.pid}): pid {pid} of its group still running "
                      "after SIGKILL")
        with contextlib.suppress(ValueError):
            stopped.remove(s)
    for s in stopped:
        remove_pidfile(next(t.candidate.pid_file for t in targets if t.pid == s.pid), s.pid)
    return stopped, failed


def _still_alive(dying: dict[int, Stopped], grace: float) -> dict[int, Stopped]:
    """Wait until each SIGKILLed process in ``dying`` has exited, on pidfds
    (a kill is delivered, not done: a stop that said "stopped" at once could
    be followed by a start while the old pool children still run); those
    still alive after ``grace`` seconds."""
    poller = select.poll()
    fds: dict[int, int] = {}
    for pid in dying:
        try:
            fd = os.pidfd_open(pid)
            if os.getpgid(pid) != dying[pid].pid:  # reused since the scan: not ours
                os.close(fd)
                continue
        except OSError:
            continue
        fds[fd] = pid
        poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + grace
    try:
        while fds:
            wait = deadline - time.monotonic()
            if wait <= 0:
                break
            for fd, _ in poller.poll(int(wait * 1000) + 1):
                poller.unregister(fd)
                os.close(fd)
                del fds[fd]
        return {pid: dying[pid] for pid in fds.values()}
    finally:
        for fd in fds:
            os.close(fd)


def still_running(config: Config | None, master_pid_file: str) -> list[tuple[str, int]]:
    """(name, pid) of each node a master that is not running left alive,
    identified as adoption identifies it. Changes nothing (no signal, no
    file removed): for the message of a command that found no master,
    since "not running" alone reads as "the fleet is down" while its
    workers may still be consuming tasks. Empty while a master holds its
    lock file, or its PID file's lock (:func:`master_alive`: a node's lock
    on a dead master's file does not count): a master that does not answer yet (starting) or
    any more (its socket removed) still supervises them."""
    master = master_alive(master_pid_file)
    if master or master_lock_held(master_pid_file) \
            or (master is None and lock_holder(master_pid_file) is not None):
        return []
    trusted = trusted_owners()
    cands, _, _ = candidates(config, master_pid_file, trusted)
    master_uid = _owner(master_pid_file)
    alive: dict[int, str] = {}
    for cand in cands:
        verdict = classify(cand.pid_file, cand.name, cand.program,
                           _node_uid(cand.user, master_uid), trusted)
        if verdict.kind == LIVE and verdict.record is not None:
            alive.setdefault(verdict.record.pid, cand.name)
    return [(name, pid) for pid, name in alive.items()]


def stop_left_behind(config: Config | None, master_pid_file: str) -> Report:
    """Stop the nodes a master that is no longer running left behind.
    The caller has checked that no master holds ``master_pid_file``."""
    trusted = trusted_owners()
    cands, notes, had_state = candidates(config, master_pid_file, trusted)
    master_uid = _owner(master_pid_file)
    targets, more, doubtful = identify(cands, trusted, master_uid)
    notes += more
    stopped, failed = stop_targets(targets)
    failed += doubtful
    unknown = None
    if config is None and not had_state and os.path.exists(master_pid_file):
        # A master died (its PID file remains) and nothing says what it ran.
        unknown = ("the configuration has errors and there is no state file "
                   f"{state_path(master_pid_file)}: which nodes the dead master left "
                   "running is unknown")
    if not failed and unknown is None:
        remove_state(state_path(master_pid_file))
        remove_stale_master_pidfile(master_pid_file)
    return Report(tuple(stopped), tuple(failed), tuple(notes), unknown)


def _owner(path: str) -> int | None:
    try:
        return os.stat(path, follow_symlinks=False).st_uid
    except OSError:
        return os.geteuid()


def remove_stale_master_pidfile(path: str) -> None:
    """Remove the PID file of a dead master, under the master's private lock
    (so a master that holds it, or is starting, is never robbed of its file).

    A lock on the PID file itself stops the removal only when the master it
    names holds it (an older stemd's master, which knew no lock file): a
    node can lock that world-readable file too, and once its master was
    dead such a lock used to keep the file for ever. Without access to the
    lock file (stemctl as another user), the PID file's lock is all there is."""
    lock_fd = None
    with contextlib.suppress(OSError):
        lock_fd = os.open(master_lock_path(path),
                          os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if lock_fd is not None:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return  # a master holds it
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return
        try:
            st = os.fstat(fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if names_its_locker(read_pid_at(fd), st):
                    return
            cur = os.stat(path, follow_symlinks=False)
            if (st.st_dev, st.st_ino) == (cur.st_dev, cur.st_ino):
                os.unlink(path)
        except OSError:
            pass
        finally:
            os.close(fd)
    finally:
        if lock_fd is not None:
            os.close(lock_fd)


# ------------------------------------------------------------- the master


def lock_holder(path: str) -> int | None:
    """A PID holding an flock on ``path``, from /proc/locks."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    holders = flock_holders(st)
    return holders[0] if holders else None


def verified_master(path: str) -> int | None:
    """The master's PID when a process that holds the lock on its PID file
    (by /proc/locks: the master takes it after detaching, so the PID
    recorded there is its own) is the PID the file names and runs stemd;
    else None."""
    pid = read_master_pid(path)
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    if pid is None or pid not in flock_holders(st) or not runs_stemd(pid):
        return None
    return pid


def terminate_master(pid: int, grace: float) -> bool:
    """TERM (and CONT, so a stopped master can act on it and stop its nodes
    itself), then KILL after ``grace`` seconds. True once it is gone."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        for sig in (signal.SIGTERM, signal.SIGCONT):
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, sig)
        if _wait_readable(fd, grace):
            return True
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(fd, signal.SIGKILL)
        return _wait_readable(fd, KILL_GRACE)
    finally:
        os.close(fd)


def _wait_readable(fd: int, timeout: float) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(int(timeout * 1000)))


def _exited(pidfd: int) -> bool:
    return _wait_readable(pidfd, 0)
