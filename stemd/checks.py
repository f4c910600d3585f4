"""Checks of the configuration against this host, shared by ``stemd --check``,
``stemctl diagnose`` and the master's start-up (which creates directories).

Every check returns :class:`Problem` values with a hint that says how to fix
it; nothing here stops at the first problem.
"""

from __future__ import annotations

import functools
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stem_core.accounts import Account, AccountError, resolve_account
from stem_core.errors import Problem
from stem_core.keys import BY_ENV, Scope
from stem_core.model import Config
from stem_core.pidfile import STALE, UNTRUSTED, classify, trusted_owners
from stem_core.statefile import state_path
from stem_core.trust import check_private_dir, is_root
from stem_core.wording import name_nodes


@dataclass(frozen=True, slots=True)
class DirNeed:
    path: str
    what: str  # for messages


def needed_directories(config: Config) -> list[DirNeed]:
    """Every directory the master and its nodes need. All are the master's:
    created owned by stemd's user, mode 0755, never writable by the node
    user. Node logs need no writable directory: the master opens (creates)
    each node's log itself and hands the file, owned by the node user, to
    the node (stemd/spawn.py), as supervisord does."""
    needs: dict[str, DirNeed] = {}
    m = config.master
    for path, what in ((m.pid_file, "master PID file"), (m.socket, "control socket"),
                       (m.log_file, "master log")):
        d = os.path.dirname(path)
        needs.setdefault(d, DirNeed(d, what))
    for node in config.nodes:
        d = os.path.dirname(node.pid_file)
        needs.setdefault(d, DirNeed(d, "node PID files"))
    for node in config.nodes:
        for log in dict.fromkeys((node.log_file, node.stderr_log_file)):
            if log in ("-", os.devnull):
                continue
            d = os.path.dirname(log)
            needs.setdefault(d, DirNeed(d, "node logs"))
    return list(needs.values())


def create_directories(config: Config) -> list[Problem]:
    """Create what is missing (``STEMD_CREATE_DIRS=1``); report what cannot be."""
    problems: list[Problem] = []
    for need in needed_directories(config):
        if os.path.isdir(need.path):
            continue
        try:
            os.makedirs(need.path, mode=0o755, exist_ok=True)
        except OSError as exc:
            problems.append(Problem(f"cannot create {need.path} ({need.what}): {exc.strerror}",
                                    hint="create it, or set STEMD_CREATE_DIRS=1 and run as a "
                                         "user allowed to"))
    return problems


def check_trust(config: Config, *, master_log: bool = True) -> list[Problem]:
    """What a node user (or anyone but root and stemd's user) could write that
    the master trusts; every one is fatal at start-up. The configuration file
    itself is checked by ``load_config`` (and so at every reload too).

    - the run directory (master PID file, socket, state file): the master's
      alone (:func:`stem_core.trust.check_private_dir`);
    - the master log's directory: not writable by a node user, who could
      otherwise put a FIFO, a symlink or a file of their own there (not
      checked with ``master_log=False``: in the foreground it is not used).
    """
    problems: list[Problem] = []
    m = config.master
    run_dirs: dict[str, dict[str, str]] = {}  # directory -> {what lives there: its key}
    for path, what, key in ((m.pid_file, "master PID file", "STEMD_MASTER_PID_FILE"),
                            (m.socket, "control socket", "STEMD_SOCKET"),
                            (state_path(m.pid_file), "state file", "STEMD_MASTER_PID_FILE")):
        run_dirs.setdefault(os.path.dirname(path), {})[what] = key_name(config, key)
    for d, roles in run_dirs.items():
        keys = "/".join(dict.fromkeys(roles.values()))
        problems.extend(check_private_dir(d, f"run directory ({', '.join(roles)})", keys))
    log_dir = os.path.dirname(m.log_file)
    if master_log and is_root() and os.path.isdir(log_dir):
        why = _node_writable(log_dir, config)
        if why:
            problems.append(Problem(
                f"the master log's directory {log_dir} is {why}: a node could put a FIFO or a "
                "file of its own where the master logs",
                key=key_name(config, "STEMD_MASTER_LOG_FILE"),
                hint=f"chown root {log_dir} && chmod 0755 {log_dir}, or move the master log"))
    return problems


def _account_lookup() -> Callable[[str | None, str | None], Account | AccountError]:
    """resolve_account memoised for one check, returning its error instead
    of raising it. A fleet of 1,000 nodes has one or two accounts, and each
    lookup reads the user and group databases: start-up made ~5,000 of them
    (~0.1 s before the first node was spawned)."""

    @functools.cache
    def lookup(user: str | None, group: str | None) -> Account | AccountError:
        try:
            return resolve_account(user, group)
        except AccountError as exc:
            return exc

    return lookup


def _node_accounts(config: Config) -> list[Account]:
    lookup = _account_lookup()
    found = {lookup(n.run_as.user, n.run_as.group) for n in config.nodes}
    return [a for a in found if isinstance(a, Account)]


def _node_writable(path: str, config: Config) -> str | None:
    """How a node user (not root) could write ``path``; None if none can."""
    st = os.stat(path)
    accounts = [a for a in _node_accounts(config) if a.uid != 0]
    if not accounts:
        return None
    if st.st_uid in {a.uid for a in accounts}:
        return f"owned by the node user (uid {st.st_uid})"
    if st.st_mode & stat.S_IWOTH:
        return f"writable by everyone (mode {stat.S_IMODE(st.st_mode):04o})"
    groups = {g for a in accounts for g in (a.gid, *a.extra_groups)}
    if st.st_mode & stat.S_IWGRP and st.st_gid in groups:
        return f"writable by the nodes' group (gid {st.st_gid})"
    return None


def check_environment(config: Config, *, creating: bool,
                      master_uid: int | None = None) -> list[Problem]:
    """What would stop the master or its nodes from working on this host.

    ``master_uid``: the uid a running master has, when ``diagnose`` knows it.
    Whether stemd can write its directories is asked of the kernel as the
    caller (os.access); an operator running ``diagnose`` is usually not the
    master's user: for a root master nothing is reported (root writes them),
    for another uid the question is left out rather than answered wrongly."""
    problems: list[Problem] = []
    lookup = _account_lookup()
    shared = _SharedByNodes()
    for node in config.nodes:
        account = lookup(node.run_as.user, node.run_as.group)
        if isinstance(account, AccountError):
            user = key_name(config, "STEMD_USER", node.program)
            group = key_name(config, "STEMD_GROUP", node.program)
            shared.add(node.name, Problem(
                f"{NODES}: {account}", key=f"{user}/{group}", fatal_at_start=True,
                hint=f"create the account or fix {user}/{group}"))
            continue
        if account.uid == 0 and not config.master.force_root:
            user = key_name(config, "STEMD_USER", node.program)
            shared.add(node.name, Problem(
                f"{NODES} would run as root", key=user, fatal_at_start=True,
                hint=f"set {user} to an unprivileged account, or "
                     f"{key_name(config, 'STEMD_FORCE_ROOT')}=1"))
        for problem in _check_command(config, node.program, node.argv[0], node.environment):
            shared.add(node.name, problem)
        if not os.path.isdir(node.directory):
            shared.add(node.name, Problem(
                f"working directory {node.directory} of {NODES} does not exist",
                fatal_at_start=True, key=key_name(config, "STEMD_CHDIR", node.program)))
    problems.extend(shared.problems())
    problems.extend(_check_socket_group(config))
    judged = master_uid is None or master_uid == os.geteuid()
    for need in needed_directories(config):
        if os.path.isdir(need.path):
            if not judged:
                continue
            if not os.access(need.path, os.W_OK):
                problems.append(Problem(f"{need.path} ({need.what}) is not writable by "
                                        "stemd's user", hint="fix its owner or mode"))
            elif need.what == "node PID files" and is_root():
                why = _node_writable(need.path, config)
                if why:
                    problems.append(Problem(
                        f"{need.path} holds node PID files but is {why}",
                        hint="make it owned by root, mode 0755"))
            continue
        parent = _existing_parent(need.path)
        if not creating:
            problems.append(Problem(f"{need.path} ({need.what}) does not exist",
                                    hint="create it or set STEMD_CREATE_DIRS=1"))
        elif not os.access(parent, os.W_OK):
            problems.append(Problem(f"{need.path} ({need.what}) cannot be created: {parent} "
                                    "is not writable", hint="create it as root first"))
    for node in config.nodes:
        # The master starts the fleet and shows the node FATAL with the
        # reason; --check and diagnose say it beforehand.
        if os.path.isdir(node.pid_file) and not os.path.islink(node.pid_file):
            key = key_name(config, "STEMD_PID_FILE", node.program)
            problems.append(Problem(f"the PID file {node.pid_file} of node {node.name} is a "
                                    "directory", key=key, hint=f"remove it, or change {key}"))
    problems.extend(_check_log_files(config))
    problems.extend(p for p in check_trust(config) if p not in problems)
    return problems


def _check_log_files(config: Config) -> list[Problem]:
    """A node log path that exists and is not a plain file (a symlink, a
    FIFO, a device other than /dev/null, a directory, a hard link): the node
    cannot start (stemd/spawn.py refuses to open it). Never fatal at start:
    in a log directory a node user can write, it may be theirs to plant,
    and one node's log must not keep the whole fleet down."""
    problems: list[Problem] = []
    seen: set[str] = set()
    for node in config.nodes:
        for which, log in (("STEMD_LOG_FILE", node.log_file),
                           ("STEMD_STDERR_LOG_FILE", node.stderr_log_file)):
            if log in ("-", os.devnull) or log in seen:
                continue
            seen.add(log)
            try:
                st = os.lstat(log)
            except OSError:
                continue  # missing: created at start
            if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
                continue
            kind = ("a symlink" if stat.S_ISLNK(st.st_mode) else
                    "a directory" if stat.S_ISDIR(st.st_mode) else
                    f"a file with {st.st_nlink} hard links" if stat.S_ISREG(st.st_mode) else
                    "a special file (FIFO, socket or device)")
            key = key_name(config, which, node.program)
            problems.append(Problem(
                f"the log file {log} of node {node.name} is {kind}: the node cannot start",
                key=key, hint=f"remove it, or change {key} ({os.devnull} discards output)"))
    return problems


def _check_socket_group(config: Config) -> list[Problem]:
    """STEMD_SOCKET_GROUP must name a group: the master would fail to bind."""
    group = config.master.socket_group
    if not group:
        return []
    import grp

    try:
        grp.getgrnam(group)
    except KeyError:
        key = key_name(config, "STEMD_SOCKET_GROUP")
        return [Problem(f"no such group: {group}", key=key,
                        hint=f"create it (addgroup stem-ops) or unset {key}")]
    return []


def _existing_parent(path: str) -> str:
    while path and not os.path.exists(path):
        path = os.path.dirname(path)
    return path or "/"


@functools.cache
def _find_command(command: str, path: str) -> tuple[str | None, bool]:
    """Where ``command`` is on ``path``, and whether it can be run. Cached:
    1,000 nodes usually run one command (the cache lives as long as the
    process, i.e. one --check or one start-up)."""
    if "/" in command:
        found = command if os.path.exists(command) else None
    else:
        import shutil  # ~1 MB of the master's memory otherwise, for this one call

        found = shutil.which(command, path=path)
    return found, bool(found) and os.access(found or "", os.X_OK) \
        and not os.path.isdir(found or "")


def _check_command(config: Config, program: str, command: str,
                   environment: tuple[tuple[str, str], ...]) -> list[Problem]:
    """The command's problem, with :data:`NODES` where its nodes are named."""
    env_path = dict(environment).get("PATH", os.environ.get("PATH", os.defpath))
    found, runnable = _find_command(command, env_path)
    key = key_name(config, "STEMD_COMMAND", program)
    if not found:
        return [Problem(f"command {command!r} of {NODES} not found", key=key,
                        fatal_at_start=True, hint="use an absolute path")]
    if not runnable:
        return [Problem(f"command {found} of {NODES} is not executable",
                        key=key, fatal_at_start=True, hint=f"chmod +x {found}")]
    return []


#: where a shared problem's message names its nodes
NODES = "\x00nodes\x00"


class _SharedByNodes:
    """Per-node problems that are the same for many nodes, told once.

    A fleet's nodes usually share their account, command and directory: a
    1,000-node program whose account is root printed 1,000 lines at
    ``stemd`` start-up, the same words with a different node name, burying
    everything else on the init script's terminal. Problems that differ
    only in the node they name are one problem naming the nodes
    (:func:`stem_core.wording.name_nodes`), in the order first seen."""

    def __init__(self) -> None:
        self._nodes: dict[Problem, list[str]] = {}

    def add(self, node: str, problem: Problem) -> None:
        self._nodes.setdefault(problem, []).append(node)

    def problems(self) -> list[Problem]:
        return [p._replace(message=p.message.replace(NODES, name_nodes(nodes)))
                for p, nodes in self._nodes.items()]


def key_name(config: Config, env: str, program: str | None = None) -> str:
    """How the configuration's own format names key ``env``: ``STEMD_USER``
    in an env file, ``[programs.worker] user`` (``[stemd] ...`` for a master
    key) in TOML, so the operator finds the line to fix."""
    key = BY_ENV.get(env)
    if key is None or not config.source.endswith(".toml"):
        return env
    table = f"programs.{program}" if program and key.scope != Scope.MASTER else "stemd"
    return f"[{table}] {key.toml}"


def stale_pidfiles(config: Config) -> list[Problem]:
    """PID files that name no live node (for diagnose; the master removes
    them itself at start-up and on reload). Stale files with the same
    reason are one problem naming their nodes: after a crash of the whole
    host's fleet, 1,000 of them are "no such process" alike."""
    problems = []
    trusted = trusted_owners()
    lookup = _account_lookup()
    stale: dict[str, list[tuple[str, str, int]]] = {}  # why -> (node, file, pid)
    for node in config.nodes:
        found = lookup(node.run_as.user, node.run_as.group)
        uid = found.uid if isinstance(found, Account) else None
        verdict = classify(node.pid_file, node.name, node.program, uid, trusted)
        if verdict.kind == UNTRUSTED:
            problems.append(Problem(str(verdict.why), hint="remove it"))
        elif verdict.kind == STALE and verdict.record is not None:
            stale.setdefault(str(verdict.why), []).append(
                (node.name, node.pid_file, verdict.record.pid))
    for why, files in stale.items():
        if len(files) == 1:
            _, path, pid = files[0]
            problems.append(Problem(f"stale PID file {path} (pid {pid}: {why})",
                                    hint="the master removes it when it starts; or rm it"))
        else:
            problems.append(Problem(
                f"stale PID files of {name_nodes([name for name, _, _ in files])}: {why}",
                hint="the master removes them when it starts; or rm them"))
    return problems


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """What ``stemctl diagnose`` found: problems (each a failure), the
    configuration's warnings (never a failure), notes, and the running
    master's own account (None when it is not running or not answering)."""

    problems: list[Problem]
    warnings: list[Problem]
    notes: list[str]
    master: dict[str, Any] | None

    def as_dict(self) -> dict[str, Any]:
        return {"problems": [{"message": p.message, "hint": p.hint, "file": p.file,
                              "line": p.line, "key": p.key, "text": str(p)}
                             for p in self.problems],
                "warnings": [str(w) for w in self.warnings], "master": self.master,
                "notes": self.notes}


def diagnose(config: Config | None, config_problems: list[Problem],
             socket_path: Callable[[], str],
             ask_master: Callable[[], tuple[dict[str, Any] | None, str | None]]) -> Diagnosis:
    """``stemctl diagnose``: the configuration's problems, this host's,
    stale PID files, a missing or dead socket, and, when a master runs, its
    answer to ``diagnose`` (``ask_master``: (result, None) or (None, why)).
    Client side only: it never loads the master's code."""
    from stem_core.pidfile import master_alive
    from stemd.client import socket_listening

    problems = list(config_problems)
    notes: list[str] = []
    master = None
    if config is not None:
        alive = master_alive(config.master.pid_file)
        problems.extend(check_environment(config, creating=config.master.create_dirs,
                                          master_uid=_master_uid(config) if alive else None))
        problems.extend(stale_pidfiles(config))
        sock = socket_path()
        exists = os.path.exists(sock)
        if alive and not exists:
            problems.append(Problem(f"the master runs but its socket {sock} is missing",
                                    hint="restart stemd to recreate it"))
        elif exists and not socket_listening(sock):
            problems.append(Problem(f"dead socket {sock}: nobody listens",
                                    hint="start stemd; it replaces the file"))
        if alive:
            master, failure = ask_master()
            if failure is not None:
                problems.append(Problem(f"the master does not answer on {sock}: {failure}"))
        else:
            notes.append("the master is not running")
    warnings = list(config.warnings) if config is not None else []
    return Diagnosis(problems, warnings, notes, master)


def _master_uid(config: Config) -> int | None:
    """The uid of the running master (the owner of its /proc entry)."""
    from stem_core.pidfile import read_master_pid

    pid = read_master_pid(config.master.pid_file)
    if pid is None:
        return None
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


#: descriptors the master holds whatever the fleet's size: its log, the PID
#: file lock, the control socket, the signal pipe, epoll, stdio, and clients
#: (a few at a time; a reserve, so that a burst of them cannot starve spawns)
FD_RESERVE = 64


def open_files_needed(config: Config) -> int:
    """About how many descriptors the master needs: per node a pidfd for its
    life and its log file while it is spawned (2), plus :data:`FD_RESERVE`."""
    return 2 * len(config.nodes) + FD_RESERVE


def raise_open_file_limit() -> tuple[int, int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit, as most daemons do
    (systemd's default soft limit, 1,024, is too low for a large fleet: one
    of 2,000 nodes then fails with "Too many open files"). Returns (old soft,
    new soft, hard); the nodes inherit the raised limit. select() is never
    used, so descriptors above 1,024 are safe."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:  # the kernel caps it at fs.nr_open
        try:
            with open("/proc/sys/fs/nr_open") as f:
                target = int(f.read())
        except (OSError, ValueError):
            target = soft
    if soft == resource.RLIM_INFINITY or target <= soft:
        return soft, soft, hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft, soft, hard
    return soft, target, hard
