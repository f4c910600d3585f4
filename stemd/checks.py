"""Checks of the configuration against this host, shared by ``stemd --check``,
``stemctl diagnose`` and the master's start-up (which creates directories).

Every check returns :class:`Problem` values with a hint that says how to fix
it; nothing here stops at the first problem.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stem_core.accounts import Account, AccountError, resolve_account
from stem_core.errors import Problem
from stem_core.keys import BY_ENV, Scope
from stem_core.model import Config
from stem_core.pidfile import STALE, UNTRUSTED, classify, trusted_owners


@dataclass(frozen=True, slots=True)
class DirNeed:
    path: str
    what: str  # for messages
    owner: Account | None  # None: the master's user; else the node account (log dirs)


def needed_directories(config: Config) -> list[DirNeed]:
    """Runtime directories (PID files, socket) belong to the master and are
    never writable by the node user; log directories are writable by it."""
    needs: dict[str, DirNeed] = {}
    m = config.master
    for path, what in ((m.pid_file, "master PID file"), (m.socket, "control socket")):
        d = os.path.dirname(path)
        needs.setdefault(d, DirNeed(d, what, None))
    needs.setdefault(os.path.dirname(m.log_file),
                     DirNeed(os.path.dirname(m.log_file), "master log", None))
    for node in config.nodes:
        d = os.path.dirname(node.pid_file)
        needs.setdefault(d, DirNeed(d, "node PID files", None))
    for node in config.nodes:
        if node.log_file == "-":
            continue
        d = os.path.dirname(node.log_file)
        try:
            account = resolve_account(node.user, node.group)
        except AccountError:
            account = None
        if d not in needs or needs[d].what == "master log":
            needs[d] = DirNeed(d, "node logs", account)
    return list(needs.values())


def create_directories(config: Config) -> list[Problem]:
    """Create what is missing (``STEMD_CREATE_DIRS=1``); report what cannot be."""
    problems: list[Problem] = []
    for need in needed_directories(config):
        if os.path.isdir(need.path):
            continue
        try:
            os.makedirs(need.path, mode=0o755, exist_ok=True)
            if need.owner is not None and need.owner.switch:
                os.chown(need.path, need.owner.uid, need.owner.gid)
        except OSError as exc:
            problems.append(Problem(f"cannot create {need.path} ({need.what}): {exc.strerror}",
                                    hint="create it, or set STEMD_CREATE_DIRS=1 and run as a "
                                         "user allowed to"))
    return problems


def check_environment(config: Config, *, creating: bool) -> list[Problem]:
    """What would stop the master or its nodes from working on this host."""
    problems: list[Problem] = []
    is_root = os.geteuid() == 0
    for node in config.nodes:
        try:
            account = resolve_account(node.user, node.group)
        except AccountError as exc:
            problems.append(Problem(
                str(exc), key=f"{node.name}: user/group", fatal_at_start=True,
                hint=f"create the account or fix {key_name(config, 'STEMD_USER', node.program)}"
                     f"/{key_name(config, 'STEMD_GROUP', node.program)}"))
            continue
        if account.uid == 0 and not config.master.force_root:
            user = key_name(config, "STEMD_USER", node.program)
            problems.append(Problem(
                f"node {node.name} would run as root", key=user, fatal_at_start=True,
                hint=f"set {user} to an unprivileged account, or "
                     f"{key_name(config, 'STEMD_FORCE_ROOT')}=1"))
        problems.extend(_check_command(config, node.name, node.program, node.argv[0],
                                       node.environment))
        if not os.path.isdir(node.directory):
            problems.append(Problem(f"working directory {node.directory} of node {node.name} "
                                    "does not exist", fatal_at_start=True,
                                    key=key_name(config, "STEMD_CHDIR", node.program)))
    problems.extend(_check_socket_group(config))
    for need in needed_directories(config):
        if os.path.isdir(need.path):
            if not os.access(need.path, os.W_OK):
                problems.append(Problem(f"{need.path} ({need.what}) is not writable by "
                                        "stemd's user", hint="fix its owner or mode"))
            elif need.owner is None and need.path != "/":
                problems.extend(_check_not_node_writable(need.path, config, is_root))
            continue
        parent = _existing_parent(need.path)
        if not creating:
            problems.append(Problem(f"{need.path} ({need.what}) does not exist",
                                    hint="create it or set STEMD_CREATE_DIRS=1"))
        elif not os.access(parent, os.W_OK):
            problems.append(Problem(f"{need.path} ({need.what}) cannot be created: {parent} "
                                    "is not writable", hint="create it as root first"))
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


def _check_not_node_writable(path: str, config: Config, is_root: bool) -> list[Problem]:
    """PID files and the socket must live where the node user cannot write,
    or a node could plant records the master would act on."""
    st = os.stat(path)
    node_uids = set()
    for node in config.nodes:
        try:
            node_uids.add(resolve_account(node.user, node.group).uid)
        except AccountError:
            continue
    if not is_root or (st.st_mode & stat.S_ISVTX and st.st_uid in (0, os.geteuid())):
        return []
    if st.st_uid in node_uids - {0} or st.st_mode & stat.S_IWOTH:
        return [Problem(f"{path} holds PID files or the socket but is writable by the node "
                        "user", hint="make it owned by root, mode 0755")]
    return []


def _existing_parent(path: str) -> str:
    while path and not os.path.exists(path):
        path = os.path.dirname(path)
    return path or "/"


def _check_command(config: Config, name: str, program: str, command: str,
                   environment: tuple[tuple[str, str], ...]) -> list[Problem]:
    env_path = dict(environment).get("PATH", os.environ.get("PATH", os.defpath))
    if "/" in command:
        found = command if os.path.exists(command) else None
    else:
        found = shutil.which(command, path=env_path)
    key = key_name(config, "STEMD_COMMAND", program)
    if not found:
        return [Problem(f"command {command!r} of node {name} not found", key=key,
                        fatal_at_start=True, hint="use an absolute path")]
    if not os.access(found, os.X_OK) or os.path.isdir(found):
        return [Problem(f"command {found} of node {name} is not executable",
                        key=key, fatal_at_start=True, hint=f"chmod +x {found}")]
    return []


def key_name(config: Config, env: str, program: str | None = None) -> str:
    """How the configuration's own format names key ``env``: ``STEMD_USER``
    in an env file, ``[programs.worker] user`` (``[stemd] ...`` for a master
    key) in TOML, so the operator finds the line to fix."""
    if not config.source.endswith(".toml"):
        return env
    key = BY_ENV[env]
    table = f"programs.{program}" if program and key.scope != Scope.MASTER else "stemd"
    return f"[{table}] {key.toml}"


def stale_pidfiles(config: Config) -> list[Problem]:
    """PID files that name no live node (for diagnose; the master removes
    them itself at start-up and on reload)."""
    problems = []
    trusted = trusted_owners()
    for node in config.nodes:
        try:
            uid: int | None = resolve_account(node.user, node.group).uid
        except AccountError:
            uid = None
        verdict = classify(node.pid_file, node.name, node.program, uid, trusted)
        if verdict.kind == UNTRUSTED:
            problems.append(Problem(str(verdict.why), hint="remove it"))
        elif verdict.kind == STALE and verdict.record is not None:
            problems.append(Problem(f"stale PID file {node.pid_file} (pid {verdict.record.pid}: "
                                    f"{verdict.why})",
                                    hint="the master removes it when it starts; or rm it"))
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
        problems.extend(check_environment(config, creating=config.master.create_dirs))
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
