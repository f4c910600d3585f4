"""One function per control command, and the explicit table that names them.

Each handler validates its own arguments and raises ProtocolError with a
code the client turns into an exit status. Nothing a client sends can name a
function, a path, a user or a command line: only nodes and programs that
are already configured, a signal, and a line count.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from stem_core import __version__
from stem_core import protocol as P
from stem_core.config import to_dict
from stem_core.errors import BadValue, ConfigError, StemError
from stem_core.keys import parse_signal, signal_number
from stem_core.states import NodeState
from stemd.control import Handler, Hold

if TYPE_CHECKING:
    from stemd.master import Master
    from stemd.node import Node

S = NodeState


def _names(args: dict[str, Any]) -> list[str]:
    names = args.get("names", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise P.ProtocolError(P.ErrorCode.BAD_ARGUMENT, "names must be a list of strings")
    return names


def _failed(message: str, result: Any = None, hint: str | None = None) -> P.ProtocolError:
    return P.ProtocolError(P.ErrorCode.FAILED, message, hint, result)


def table(master: Master) -> dict[str, Handler]:
    """The command table. Handlers reach the master only through its
    command surface (select, start, stop, restart, kill, reload,
    request_shutdown, snapshot); nothing else is reachable from the socket."""
    from stemd.master import ReloadFailed, RestartHalted, ShuttingDown

    def select(args: dict[str, Any]) -> list[Node]:
        try:
            return master.select(_names(args))
        except BadValue as exc:
            raise P.ProtocolError(P.ErrorCode.NOT_FOUND, exc.message, exc.hint) from None

    def busy(exc: StemError) -> P.ProtocolError:
        return P.ProtocolError(P.ErrorCode.BUSY, str(exc))

    async def status(args: dict[str, Any]) -> Any:
        nodes = master.snapshot(select(args), P.flag(args, "stats", False),
                                P.flag(args, "pss", False))
        for info in nodes:  # stemctl scale: the file's count, while it differs
            info["scaled_from"] = master.scaled.get(info["program"])
        return nodes

    async def start(args: dict[str, Any]) -> Any:
        nodes = select(args)
        try:
            states = await master.start(nodes)
        except ShuttingDown as exc:
            raise busy(exc) from None
        # A node a later command took over (None: a stop before this start's
        # turn) is not a failure: the later command stands (see its snapshot).
        bad = [n.name for n, state in zip(nodes, states, strict=True)
               if state is not None and state is not S.RUNNING]
        if bad:
            raise _failed(f"not running: {', '.join(bad)}", master.snapshot(nodes),
                          hint="see 'stemctl status' and 'stemctl logs NODE'")
        return master.snapshot(nodes)

    async def stop(args: dict[str, Any]) -> Any:
        nodes = select(args)
        try:
            await master.stop(nodes, P.flag(args, "wait", True))
        except ShuttingDown as exc:
            raise busy(exc) from None
        return master.snapshot(nodes)

    async def restart(args: dict[str, Any]) -> Any:
        nodes = select(args)
        try:
            await master.restart(nodes)
        except ShuttingDown as exc:
            raise busy(exc) from None
        except RestartHalted as exc:
            raise _failed(str(exc), master.snapshot(exc.nodes),
                          hint="see 'stemctl status' and 'stemctl logs NODE'") from None
        return master.snapshot(nodes)

    async def kill(args: dict[str, Any]) -> Any:
        if not _names(args):  # SPEC §3: kill takes NAME...; no name is not "every node"
            raise P.ProtocolError(P.ErrorCode.BAD_ARGUMENT, "kill: name the nodes to signal",
                                  hint="a program's name signals all its nodes")
        try:
            sig = signal_number(parse_signal(args.get("signal", "TERM")))
        except BadValue as exc:
            raise P.ProtocolError(P.ErrorCode.BAD_ARGUMENT, exc.message, exc.hint) from None
        sent = master.kill(select(args), sig, P.flag(args, "group", False))
        if not sent:
            raise P.ProtocolError(P.ErrorCode.FAILED, "no running node to signal")
        return {"signalled": sent}

    async def reload(args: dict[str, Any]) -> Any:
        try:
            return await master.reload()
        except ConfigError as exc:
            raise _failed("the new configuration has errors; the running one is kept",
                          [str(p) for p in exc.problems]) from None
        except ReloadFailed as exc:
            raise _failed(str(exc), exc.summary,
                          hint="see 'stemctl status' and 'stemctl logs NODE'") from None
        except ShuttingDown as exc:
            raise busy(exc) from None
        except StemError as exc:
            raise P.ProtocolError(P.ErrorCode.FAILED, str(exc)) from None

    async def shutdown(args: dict[str, Any]) -> Any:
        master.request_shutdown("stemctl shutdown")
        return Hold({"pid": os.getpid()})

    async def logs(args: dict[str, Any]) -> Any:
        """Name each node's log file; stemctl reads it itself (as the operator,
        with its own bounds). The master never reads a node's log: a node user
        controls its size and shape (a 20 GB sparse file, one 100 MB line),
        and nothing it writes may stall supervision (issue 11 B1)."""
        logs = []
        for n in select(args):
            entry = {"node": n.name, "path": n.spec.log_file}
            if n.spec.stderr_log_file != n.spec.log_file:
                entry["stderr_path"] = n.spec.stderr_log_file  # stderr has its own file
            logs.append(entry)
        return {"logs": logs}

    async def version(args: dict[str, Any]) -> Any:
        return {"version": __version__, "pid": os.getpid(), "protocol": P.VERSION}

    async def config(args: dict[str, Any]) -> Any:
        return to_dict(master.config)

    async def diagnose(args: dict[str, Any]) -> Any:
        counts: dict[str, int] = {}
        for info in master.snapshot(master.select([])):
            counts[info["state"]] = counts.get(info["state"], 0) + 1
        return {"pid": os.getpid(), "config": master.config.source, "states": counts,
                "watched": master.reaper.watched}

    def scaled() -> dict[str, Any]:
        return {program: {"configured": configured,
                          "nodes": len(master.config.select([program]))}
                for program, configured in master.scaled.items()}

    async def scale(args: dict[str, Any]) -> Any:
        """Change a program's node count until the next reload or restart;
        without ``count``, say which programs are scaled."""
        if "count" not in args:
            return {"scaled": scaled()}
        program, count = args.get("program"), args.get("count")
        if not isinstance(program, str) or not isinstance(count, int) \
                or isinstance(count, bool):
            raise P.ProtocolError(P.ErrorCode.BAD_ARGUMENT,
                                  "scale needs a program name and a whole number of nodes")
        try:
            summary = await master.scale(program, count)
        except BadValue as exc:
            code = P.ErrorCode.NOT_FOUND if "no such program" in exc.message \
                else P.ErrorCode.BAD_ARGUMENT
            raise P.ProtocolError(code, exc.message, exc.hint) from None
        except ShuttingDown as exc:
            raise busy(exc) from None
        if summary["not_running"]:
            raise _failed(f"not running: {', '.join(summary['not_running'])}", summary,
                          hint="see 'stemctl status' and 'stemctl logs NODE'")
        return summary

    async def metrics(args: dict[str, Any]) -> Any:
        """The Prometheus text format, built now (stemd.metrics): what
        'stemctl metrics' prints for node_exporter's textfile collector."""
        from stemd.metrics import exposition

        return {"text": (await exposition(master)).decode()}

    return {
        "metrics": metrics, "scale": scale,
        "status": status, "start": start, "stop": stop, "restart": restart, "kill": kill,
        "reload": reload, "shutdown": shutdown, "logs": logs, "version": version,
        "config": config, "diagnose": diagnose,
    }
