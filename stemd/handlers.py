"""One function per control command, and the explicit table that names them.

Each handler validates its own arguments and raises ProtocolError with a
code the client turns into an exit status. Nothing a client sends can name a
function, a path, a user or a command line: only nodes and programs that
are already configured, a signal, and a line count.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from stem_core import protocol as P
from stem_core.config import to_dict
from stem_core.errors import BadValue, ConfigError, StemError
from stem_core.keys import parse_signal, signal_number
from stem_core.states import NodeState
from stemd.control import Hold

if TYPE_CHECKING:
    from stemd.master import Master
    from stemd.node import Node

S = NodeState
Handler = Callable[[dict[str, Any]], Awaitable[Any]]


def _names(args: dict[str, Any]) -> list[str]:
    names = args.get("names", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise P.ProtocolError(P.ErrorCode.BAD_ARGUMENT, "names must be a list of strings")
    return names


def _select(master: Master, args: dict[str, Any]) -> list[Node]:
    try:
        return master.select(_names(args))
    except BadValue as exc:
        raise P.ProtocolError(P.ErrorCode.NOT_FOUND, exc.message, exc.hint) from None


def _refuse_when_stopping(master: Master) -> None:
    if master.shutting_down:
        raise P.ProtocolError(P.ErrorCode.BUSY, "the master is shutting down")


def node_info(node: Node, stats: bool, uptime: float = 0.0) -> dict[str, Any]:
    now = node.clock.time()
    alive = node.pid is not None
    info: dict[str, Any] = {
        "node": node.name,
        "program": node.spec.program,
        "state": str(node.state),
        "pid": node.pid,
        "uptime": round(now - node.started_at, 3) if alive and node.started_at else None,
        "restarts": node.restarts,
        "exit_status": node.exit_status.as_int if node.exit_status else None,
        "last_exit": str(node.exit_status) if node.exit_status else None,
        "adopted": node.adopted,
    }
    if stats:
        info["cpu_percent"], info["rss"] = _usage(node.pid, uptime) if alive else (None, None)
    return info


_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _usage(pid: int | None, uptime: float) -> tuple[float | None, int | None]:
    """Lifetime-average CPU % (as ps shows it: needs no earlier sample) and
    RSS, from one read of /proc/PID/stat (psutil takes several reads: 10x
    slower, and status of 1,000 nodes must stay well under 150 ms)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None, None
    # fields[0] is field 3 (state): utime 14, stime 15, starttime 22, rss 24
    ticks = int(fields[11]) + int(fields[12])
    age = max(uptime - int(fields[19]) / _CLK_TCK, 1e-3)
    return round(100.0 * ticks / _CLK_TCK / age, 1), int(fields[21]) * _PAGE


def _system_uptime() -> float:
    with open("/proc/uptime", "rb") as f:
        return float(f.read().split()[0])


def _failed_unless_running(message: str, nodes: list[Node], results: list[Any]) -> list[Any]:
    bad = [n.name for n, state in zip(nodes, results, strict=True) if state is not S.RUNNING]
    infos = [node_info(n, False) for n in nodes]
    if bad:
        error = P.ProtocolError(P.ErrorCode.FAILED, f"{message}: {', '.join(bad)}",
                                hint="see 'stemctl status' and 'stemctl logs NODE'")
        error.result = infos  # type: ignore[attr-defined]
        raise error
    return infos


def table(master: Master) -> dict[str, Handler]:
    """The command table. Handlers close over the master; nothing else is
    reachable from the socket."""

    async def status(args: dict[str, Any]) -> Any:
        stats = bool(args.get("stats", False))
        uptime = _system_uptime() if stats else 0.0
        return [node_info(n, stats, uptime) for n in _select(master, args)]

    async def start(args: dict[str, Any]) -> Any:
        _refuse_when_stopping(master)
        nodes = _select(master, args)
        results = await asyncio.gather(*(master.start_node(n) for n in nodes))
        return _failed_unless_running("not running", nodes, list(results))

    async def stop(args: dict[str, Any]) -> Any:
        nodes = _select(master, args)
        wait = bool(args.get("wait", True))
        await asyncio.gather(*(master.stop_node(n, wait) for n in nodes))
        return [node_info(n, False) for n in nodes]

    async def restart(args: dict[str, Any]) -> Any:
        """Rolling: one node at a time, each RUNNING before the next, so the
        fleet never loses more than one node of capacity. Stops at the first
        node that does not come back."""
        _refuse_when_stopping(master)
        nodes = _select(master, args)
        done: list[Node] = []
        for node in nodes:
            state = await master.restart_node(node)
            done.append(node)
            if state is not S.RUNNING:
                _failed_unless_running("restart halted: not running",
                                       done, [n.state for n in done])
        return [node_info(n, False) for n in nodes]

    async def kill(args: dict[str, Any]) -> Any:
        try:
            sig = signal_number(parse_signal(args.get("signal", "TERM")))
        except BadValue as exc:
            raise P.ProtocolError(P.ErrorCode.BAD_ARGUMENT, exc.message, exc.hint) from None
        nodes = _select(master, args)
        sent = []
        for node in nodes:
            if node.pid is not None:
                master.ops.signal_group(node, sig)
                sent.append(node.name)
        if not sent:
            raise P.ProtocolError(P.ErrorCode.FAILED, "no running node to signal")
        return {"signalled": sent}

    async def reload(args: dict[str, Any]) -> Any:
        _refuse_when_stopping(master)
        try:
            return await master.reload()
        except ConfigError as exc:
            error = P.ProtocolError(P.ErrorCode.FAILED,
                                    "the new configuration has errors; the running one is kept")
            error.result = [str(p) for p in exc.problems]  # type: ignore[attr-defined]
            raise error from None
        except StemError as exc:
            raise P.ProtocolError(P.ErrorCode.FAILED, str(exc)) from None

    async def shutdown(args: dict[str, Any]) -> Any:
        master._spawn_task(master.shutdown, "stemctl shutdown")
        return Hold({"pid": os.getpid()})

    async def logs(args: dict[str, Any]) -> Any:
        """Name each node's log file; stemctl reads it itself (as the operator,
        with its own bounds). The master never reads a node's log: a node user
        controls its size and shape (a 20 GB sparse file, one 100 MB line),
        and nothing it writes may stall supervision (issue 11 B1)."""
        nodes = _select(master, args)
        return {"logs": [{"node": n.name, "path": n.spec.log_file} for n in nodes]}

    async def version(args: dict[str, Any]) -> Any:
        from stemd import __version__

        return {"version": __version__, "pid": os.getpid(), "protocol": P.VERSION}

    async def config(args: dict[str, Any]) -> Any:
        return to_dict(master.config)

    async def diagnose(args: dict[str, Any]) -> Any:
        counts: dict[str, int] = {}
        for node in master.nodes.values():
            counts[str(node.state)] = counts.get(str(node.state), 0) + 1
        return {"pid": os.getpid(), "config": master.config.source, "states": counts,
                "watched": master.reaper.watched}

    return {
        "status": status, "start": start, "stop": stop, "restart": restart, "kill": kill,
        "reload": reload, "shutdown": shutdown, "logs": logs, "version": version,
        "config": config, "diagnose": diagnose,
    }
