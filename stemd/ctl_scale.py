"""``stemctl scale PROGRAM N``: run N nodes of a program until the next
reload or restart of the master.

New nodes take the program's name pattern (``PROGRAM<index>``, as a node
count names them) and are started; when scaling down the highest-numbered
nodes are stopped first, warm (their normal stop sequence). The
configuration file is not touched, so a reload or a restart of stemd
returns to the file's count: to keep the change, set ``nodes = N`` (TOML)
or ``STEMD_NODES=N`` (env file) in the file and run ``stemctl reload``;
stemctl names the key of the file's format. ``stemctl
scale`` with no arguments lists the programs that are scaled; ``status``
and ``config`` say so too.
"""

from __future__ import annotations

import argparse
import sys

# Annotations only (postponed): importing typing costs stemctl ~5 ms a run.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from stemd.ctl import Ctl

NAME = "scale"
HELP = ("run N nodes of a program until the next reload or restart (new nodes start; the "
        "highest-numbered stop first, warm); no arguments: list scaled programs")
EXAMPLE = "stemctl scale worker 8"


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of nodes: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("the node count must be at least 1 "
                                         "(stemctl stop PROGRAM stops them all)")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("program", nargs="?", metavar="PROGRAM", help="the program to scale")
    parser.add_argument("count", nargs="?", type=_count, metavar="N",
                        help="how many nodes it runs from now on")


def keep(ctl: Ctl, program: str, count: int) -> str:
    """How to keep ``count`` nodes of ``program``: the key of the config
    file's own format (the file stemctl names; with --socket it names none,
    and both are said)."""
    from stem_core.config import ENV_PROGRAM
    from stem_core.locate import config_path

    if ctl.args.socket:
        return (f"set nodes = {count} in [programs.{program}] (TOML), or "
                f"STEMD_NODES={count} (env file), in the master's configuration file")
    path = config_path(ctl.args.config)
    if path.endswith(".toml"):
        return f"set nodes = {count} in [programs.{program}] of {path}"
    if program == ENV_PROGRAM:
        return f"set STEMD_NODES={count} in {path}"
    # an env file's other program (the scheduler) is one node, with no count
    return (f"an env file runs one {program} node: move the configuration to TOML "
            f"('stemctl config --toml') and set nodes = {count} in [programs.{program}]")


def note(ctl: Ctl, scaled: dict[str, Any]) -> list[str]:
    """What to tell the operator about scaled programs."""
    return [f"{program}: scaled at run time to {s['nodes']} nodes (the file says "
            f"{s['configured']}); a reload or restart returns to the file: to keep it, "
            f"{keep(ctl, program, s['nodes'])}, and run 'stemctl reload'"
            for program, s in sorted(scaled.items())]


def run(ctl: Ctl) -> int:
    from stem_core.protocol import ErrorCode as E
    from stemd.ctl import OK

    program, count = ctl.args.program, ctl.args.count
    if program is not None and count is None:
        return ctl.fail(E.BAD_ARGUMENT, "give a program and a node count",
                     hint=EXAMPLE)
    if program is None:
        response = ctl.call("scale")
        if not response["ok"]:
            return ctl.error(response)
        scaled = response["result"]["scaled"]

        def human() -> None:
            lines = note(ctl, scaled) or ["no program is scaled"]
            sys.stdout.write("\n".join(lines) + "\n")
        ctl.out(response["result"], human)
        return OK
    response = ctl.call("scale", program=program, count=count)
    if not response["ok"]:
        return ctl.error(response)
    result = response["result"]

    def done() -> None:
        from stem_core.wording import abridged, killed_at_stop_timeout

        changes = [f"started {abridged(result['added'])}" if result["added"] else "",
                   f"stopped {abridged(result['removed'])}" if result["removed"] else ""]
        said = "; ".join(c for c in changes if c) or "nothing to change"
        print(f"{program}: {result['nodes']} nodes ({said})")
        if result.get("stop_forced"):
            print(killed_at_stop_timeout(result["stop_forced"]))
        if result["nodes"] != result["configured"]:
            print(f"until the next reload or restart; the file says {result['configured']}: "
                  f"to keep it, {keep(ctl, program, result['nodes'])}, and run "
                  "'stemctl reload'")
    ctl.out(result, done)
    return OK


def config_note(ctl: Ctl) -> None:
    """For ``stemctl config``: which programs the running master has scaled
    (best effort: config needs no master, and says nothing without one)."""
    from stemd.client import AccessDenied, Client, MasterNotRunning

    try:  # a short wait: a hung master must not hold up a command that needs none
        response = Client(ctl.socket_path(), timeout=2.0).call("scale")
    except (MasterNotRunning, AccessDenied, TimeoutError, OSError):
        return
    if response.get("ok"):
        for line in note(ctl, response["result"]["scaled"]):
            sys.stderr.write(f"stemctl: note: {line}\n")
