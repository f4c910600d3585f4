"""stemctl's node commands: status, start, stop, restart, kill, reload."""

from __future__ import annotations

import sys

from stem_core.wording import abridged, killed_at_stop_timeout
from stemd.ctl import FAILED, OK

# Annotations only (postponed): importing typing costs stemctl ~5 ms a run.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from stemd.ctl import Ctl


def status(ctl: Ctl) -> int:
    from stemd import render

    tty = sys.stdout.isatty() and not ctl.json
    pss = getattr(ctl.args, "pss", False)
    response = ctl.call("status", names=ctl.args.names,
                        stats=not ctl.json or ctl.args.stats or pss, pss=pss)
    if not response["ok"]:
        return ctl.error(response)
    nodes = response["result"]
    if ctl.json:
        render.print_json(nodes)
    else:
        render.print_status(nodes, tty)
    return OK if all(n["state"] == "RUNNING" for n in nodes) else FAILED


def _act(ctl: Ctl, cmd: str, **args: Any) -> int:
    """A command on nodes that answers with their states."""
    response = ctl.call(cmd, names=ctl.args.names, **args)
    if not response["ok"]:
        return ctl.error(response)
    ctl.out(response["result"], lambda: _nodes_line(response["result"], stopped=cmd != "start"))
    return OK


def start(ctl: Ctl) -> int:
    return _act(ctl, "start")


def stop(ctl: Ctl) -> int:
    return _act(ctl, "stop", wait=not ctl.args.no_wait)


def restart(ctl: Ctl) -> int:
    return _act(ctl, "restart")


def _nodes_line(nodes: list[dict[str, Any]], stopped: bool = False) -> None:
    """One line a node. ``stopped``: the command stopped them (stop,
    restart), so a stop that had to SIGKILL is said: it lost what the worker
    was doing, and the master log is not where an operator looks. The exit
    status stays 0, as supervisorctl's and systemctl's do."""
    for n in nodes:
        pid = f" (pid {n['pid']})" if n.get("pid") else ""
        forced = n.get("stop_forced") if stopped else None
        if forced and n["state"] == "STOPPED":
            print(f"{n['node']}: STOPPED ({forced})")
        elif forced:
            print(f"{n['node']}: {n['state']}{pid}; the process before was {forced}")
        else:
            print(f"{n['node']}: {n['state']}{pid}")


def kill(ctl: Ctl) -> int:
    response = ctl.call("kill", names=ctl.args.names, signal=ctl.args.signal,
                        group=ctl.args.group)
    if not response["ok"]:
        return ctl.error(response)
    result = response["result"]
    whose = "the process groups of " if ctl.args.group else ""
    ctl.out(result, lambda: print(f"sent {signal_name(ctl.args.signal)} to "
                                  + whose + abridged(result["signalled"])))
    return OK


def signal_name(given: str) -> str:
    """SIGKILL for ``KILL``, ``sigkill`` or ``9`` (the master has accepted it:
    stem_core.keys.parse_signal, not imported here for its start-up cost)."""
    import signal

    text = given.strip().upper()
    if text.isdigit():
        try:
            return signal.Signals(int(text)).name
        except ValueError:  # pragma: no cover - the master refused it already
            return f"signal {text}"
    return "SIG" + text.removeprefix("SIG")


def reload(ctl: Ctl) -> int:
    response = ctl.call("reload")
    if not response["ok"]:
        return ctl.error(response)
    r = response["result"]

    def human() -> None:
        for what in ("added", "removed", "changed"):
            if r[what]:
                print(f"{what}: {abridged(r[what])}")
        print(f"unchanged: {len(r['unchanged'])} node(s)")
        if r.get("stop_forced"):
            print(killed_at_stop_timeout(r["stop_forced"]))
        if r["master_changed"]:
            print(f"master settings changed ({', '.join(r['master_changed'])}): "
                  "restart stemd to apply them")
    ctl.out(r, human)
    return OK
