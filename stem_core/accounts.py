"""Node accounts: whom a node runs as.

Shared by the master (spawning), the host checks (``stemd --check``,
``stemctl diagnose``) and the identity checks of PID files, so it lives in
``stem_core``: the client side must answer "which uid is this node?" without
loading the master's spawn code.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass

from stem_core.errors import StemError


class AccountError(StemError):
    """The node's account cannot be used: no such user or group, or stemd is
    not root and the account is another user. The spawn path turns it into
    a failed start (:class:`stemd.node.SpawnError`)."""


@dataclass(frozen=True, slots=True)
class Account:
    """Whom a node runs as. ``switch`` is False when the master is not root
    and the node runs as the master's own user."""

    uid: int
    gid: int
    name: str
    home: str
    extra_groups: tuple[int, ...]
    switch: bool


def resolve_account(user: str | None, group: str | None) -> Account:
    """Look up the node account; raises AccountError naming what is missing.

    Supplementary groups are initialised from the group database, as a login
    would (``initgroups``), so a node can read files shared with its groups.
    """
    try:
        pw = pwd.getpwnam(user) if user else pwd.getpwuid(os.geteuid())
    except KeyError:
        raise AccountError(f"no such user: {user}") from None
    try:
        gid = grp.getgrnam(group).gr_gid if group else pw.pw_gid
    except KeyError:
        raise AccountError(f"no such group: {group}") from None
    switch = os.geteuid() == 0 and (pw.pw_uid != 0 or gid != os.getegid())
    extra = tuple(g for g in os.getgrouplist(pw.pw_name, gid)) if switch else ()
    if os.geteuid() != 0 and pw.pw_uid != os.geteuid():
        raise AccountError(f"stemd runs as uid {os.geteuid()} and cannot start nodes as "
                           f"{pw.pw_name}; run stemd as root or unset STEMD_USER")
    return Account(pw.pw_uid, gid, pw.pw_name, pw.pw_dir, extra, switch)
