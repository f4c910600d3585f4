"""Which files a master may believe: who else could have written them.

A root master runs whatever its configuration says, as whichever user it
says. So whoever can write the configuration file — or any file in its
symlink chain, or any directory on the way to it, which lets them swap the
file — can run commands as root. The same holds for the run directory: whoever
can create files there can plant the master PID file (and hold its lock), the
socket or the state file. See docs/architecture.md, "Threat model".

The rules, as Celery's init script ``_config_sanity`` and OpenSSH's
``StrictModes`` apply them:

- *root master*: every file and directory on the path must be owned by root
  or by stemd's own user, and neither group- nor world-writable; a directory
  on the way with the sticky bit (``/tmp``, 1777) is accepted, since it
  keeps others from renaming or removing the entries it holds — the next
  entry, which must itself be trusted, is what counts. A symlink must be
  owned by a trusted user too (in a sticky directory its owner may replace it).
- *non-root master*: it cannot switch users, so its nodes run as itself and
  nobody gains anything by steering it that they could not do already; only
  world-writable files and non-sticky world-writable directories are
  refused. Group-writable files are common under user-private groups
  (umask 002) and harmless there.

Pure standard library; ``stemd.checks`` adds what needs the node accounts.
"""

from __future__ import annotations

import os
import stat
from collections import deque
from collections.abc import Iterator

from stem_core.errors import Problem

MAX_SYMLINKS = 40  # as the kernel's ELOOP limit


def trusted_uids() -> frozenset[int]:
    """Root and the user stemd runs as."""
    return frozenset({0, os.geteuid()})


def is_root() -> bool:
    return os.geteuid() == 0


def walk(path: str) -> Iterator[tuple[str, os.stat_result]]:
    """Every directory, symlink and the final file that resolving ``path``
    goes through, with its ``lstat``, in order. Stops quietly at the first
    component that does not exist (whoever reads the file reports that)."""
    todo = deque(p for p in os.path.abspath(path).split("/") if p)
    current = "/"
    yield current, os.lstat(current)
    hops = 0
    while todo:
        part = todo.popleft()
        if part in ("", "."):
            continue
        if part == "..":
            current = os.path.dirname(current)  # current is already resolved
            continue
        entry = os.path.join(current, part)
        try:
            st = os.lstat(entry)
        except OSError:
            return
        yield entry, st
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > MAX_SYMLINKS:
                return
            target = os.readlink(entry)
            if target.startswith("/"):
                current = "/"
            todo.extendleft(reversed([p for p in target.split("/") if p]))
            continue
        current = entry


def untrusted(entry: str, st: os.stat_result, *, final: bool) -> tuple[str, str] | None:
    """Why ``entry`` (one step of :func:`walk`) could be written by someone
    stemd must not trust, and the fix; None when it is fine. ``final``: the
    file itself, where a sticky bit does not help."""
    mode = st.st_mode
    if is_root():
        if st.st_uid not in trusted_uids():
            return (f"owned by uid {st.st_uid}", f"chown root {entry}")
        if stat.S_ISLNK(mode):
            return None
        if mode & (stat.S_IWGRP | stat.S_IWOTH):
            if stat.S_ISDIR(mode) and not final and mode & stat.S_ISVTX:
                return None
            who = "group" if not mode & stat.S_IWOTH else "others"
            return (f"writable by {who} (mode {stat.S_IMODE(mode):04o})", f"chmod go-w {entry}")
        return None
    if stat.S_ISLNK(mode) or not mode & stat.S_IWOTH:
        return None
    if stat.S_ISDIR(mode) and not final and mode & stat.S_ISVTX:
        return None
    return (f"writable by others (mode {stat.S_IMODE(mode):04o})", f"chmod o-w {entry}")


def check_config_file(path: str) -> list[Problem]:
    """Refuse a configuration that someone else could have written."""
    problems = []
    steps = list(walk(path))
    seen = set()
    for index, (entry, st) in enumerate(steps):
        final = index == len(steps) - 1 and not stat.S_ISDIR(st.st_mode)
        why = untrusted(entry, st, final=final)
        if why is None or entry in seen:  # an absolute symlink walks its dirs again
            continue
        seen.add(entry)
        reason, fix = why
        what = "it" if entry == os.path.abspath(path) else (
            "the file it links to" if final else
            ("a symlink on its path" if stat.S_ISLNK(st.st_mode) else "a directory on its path")
            + f" ({entry})")
        problems.append(Problem(
            f"refusing the configuration: {what} is {reason}; whoever can write it can run "
            "commands as stemd's user" + (" (root)" if is_root() else ""),
            file=path, hint=fix))
    return problems


def check_private_dir(path: str, what: str, key: str) -> list[Problem]:
    """A directory where the master creates files others must not plant (the
    run directory: master PID file, socket, state file). For a root master:
    owned by root or stemd's user and writable by nobody else — the sticky
    bit does not help here, since a planted name is the attack. Directories
    above it follow :func:`untrusted`. Non-root masters are not checked."""
    if not is_root() or not os.path.isdir(path):
        return []
    problems = []
    steps = list(walk(path))
    for entry, st in steps[:-1]:
        why = untrusted(entry, st, final=False)
        if why:
            problems.append(Problem(f"{entry}, above the {what} {path}, is {why[0]}",
                                    key=key, hint=why[1]))
    entry, st = steps[-1]
    if st.st_uid not in trusted_uids():
        problems.append(Problem(
            f"the {what} {entry} is owned by uid {st.st_uid}, who could plant files the "
            "master trusts", key=key, hint=f"chown root {entry}"))
    elif st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        sticky = "; the sticky bit does not stop others from planting a name" \
            if st.st_mode & stat.S_ISVTX else ""
        problems.append(Problem(
            f"the {what} {entry} is writable by others (mode "
            f"{stat.S_IMODE(st.st_mode):04o}{sticky})", key=key, hint=f"chmod 0755 {entry}"))
    return problems
