"""stemctl's commands about the master and its host: healthcheck, diagnose,
config, version, import. Each works, or says why, without a running master."""

from __future__ import annotations

import sys

from stemd.client import AccessDenied, MasterNotRunning
from stemd.ctl import FAILED, OK

# Annotations only (postponed): importing typing costs stemctl ~5 ms a run.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from stemd.ctl import Ctl


def healthcheck(ctl: Ctl) -> int:
    from stem_core.pidfile import healthy

    path = ctl.args.pidfile or ctl.master_pid_file()
    ok, pid = healthy(path, any_pidfile=bool(ctl.args.pidfile))
    ctl.out({"alive": ok, "pid": pid if ok else None, "pidfile": path},
            lambda: print(f"alive (pid {pid})" if ok else f"not running ({path})"))
    return OK if ok else FAILED


def diagnose(ctl: Ctl) -> int:
    from stem_core.errors import ConfigError
    from stemd import checks
    from stemd.client import NoAnswer

    problems = []
    try:
        config = ctl.config(required=True)
    except ConfigError as exc:
        problems.extend(exc.problems)
        config = None

    def ask_master() -> tuple[Any, str | None]:
        try:
            return ctl.call("diagnose").get("result"), None
        except (MasterNotRunning, AccessDenied, NoAnswer, OSError) as exc:
            return None, str(exc)

    found = checks.diagnose(config, problems, ctl.socket_path, ask_master)

    def human() -> None:
        for note in found.notes:
            print(f"note: {note}")
        if found.master:
            states = ", ".join(f"{v} {k}" for k, v in sorted(found.master["states"].items()))
            print(f"master pid {found.master['pid']}: {states}")
        for p in found.problems:
            print(f"problem: {p}")
        for w in found.warnings:  # valid, probably not meant: never a failure
            print(f"warning: {w}")
        if not found.problems:
            print("no problems found")
    ctl.out(found.as_dict(), human)
    return FAILED if found.problems else OK


#: how ``stemctl config`` shows a master key that is not set (as a node's
#: "user: (invoking user)"), never Python's None
UNSET = {"socket_group": "(unset: socket mode 0600, root and the master's user only)",
         "user": "(unset: the invoking user)", "group": "(unset: the user's primary group)"}


def show_config(ctl: Ctl) -> int:
    from stem_core.config import dump_toml, to_dict
    from stem_core.errors import ConfigError

    try:
        config = ctl.config(required=True)
    except ConfigError as exc:
        for p in exc.problems:
            sys.stderr.write(f"stemctl: {p}\n")
        return FAILED
    from stemd.ctl_scale import config_note

    config_note(ctl)  # issue 15: programs the running master has scaled
    if ctl.json:
        from stemd.render import print_json

        print_json(to_dict(config))
    elif ctl.args.toml:
        sys.stdout.write(dump_toml(config))
    else:
        import shlex

        print(f"# {config.source}")
        for name in ("pid_file", "socket", "socket_group", "log_file", "log_level", "user",
                     "group"):
            value = getattr(config.master, name)
            print(f"master.{name} = {UNSET[name] if value is None else value}")
        for node in config.nodes:
            print(f"{node.name} ({node.program}): {shlex.join(node.argv)}")
            print(f"    pid file: {node.pid_file}  log file: {node.log_file}  "
                  f"user: {node.run_as.user or '(invoking user)'}")
            if node.stderr_log_file != node.log_file:
                print(f"    stderr log file: {node.stderr_log_file}")
    return OK


def show_version(ctl: Ctl) -> int:
    from stem_core import __version__

    master: dict[str, Any] | None
    try:
        response = ctl.call("version")
        master = response.get("result") if response.get("ok") else None
    except (MasterNotRunning, AccessDenied):
        master = None
    ctl.out({"stemctl": __version__, "master": master},
            lambda: print(f"stemctl {__version__}\n"
                          + (f"stemd {master['version']} (pid {master['pid']}, protocol "
                             f"{master['protocol']})" if master else "stemd: not running")))
    return OK


def import_config(ctl: Ctl) -> int:
    """Needs neither the socket nor a stemd config: stemd/importcmd.py."""
    from stemd.importcmd import run

    return run(ctl)
