"""What ``stemctl status`` shows of a node: one dict per node, built from
the node's state and, with ``stats``, its whole process tree's usage
(:mod:`stemd.usage`: one pass over ``/proc`` for all the nodes asked for)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from stemd.usage import CpuTracker, TreeUsage, sample, uptime_ticks

if TYPE_CHECKING:
    from stemd.node import Node

def node_info(node: Node, stats: bool, uptime: float = 0.0,
              usage: TreeUsage | None = None, cpu_percent: float | None = None
              ) -> dict[str, Any]:
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
        # why it is not running: the last spawn error, crash loop or failed
        # exit (None once it is RUNNING again)
        "last_error": node.last_error,
        "wanted": "up" if node.wanted else "down",
        # the last stop had to SIGKILL (tasks in flight lost), or None
        "stop_forced": node.stop_forced,
        "adopted": node.adopted,
        # adopted after a crash, it runs an older configuration than the
        # file's (the file changed while no master ran): a reload applies it
        "outdated": node.started_from is not None,
    }
    if stats:
        # the whole process tree (stemd.usage): main process and descendants
        have = alive and usage is not None
        info["cpu_percent"] = cpu_percent if have else None
        info["cpu_seconds"] = round(usage.cpu_seconds, 2) if have and usage else None
        info["rss"] = usage.rss if have and usage else None
        info["pss"] = usage.pss if have and usage else None
        info["children"] = usage.children if have and usage else None
    return info


def snapshot(nodes: Iterable[Node], stats: bool, tracker: CpuTracker,
             pss: bool = False) -> list[dict[str, Any]]:
    """Status dicts of ``nodes``; with ``stats``, from one pass over /proc
    for all of them (stemd.usage), CPU% since ``tracker``'s last sample."""
    nodes = list(nodes)
    if not stats:
        return [node_info(n, False) for n in nodes]
    trees = sample((n.pid for n in nodes if n.pid is not None), pss)
    now = uptime_ticks()
    out = []
    for n in nodes:
        tree = trees.get(n.pid) if n.pid is not None else None
        cpu = tracker.percent(n.name, n.pid, tree, now) if tree and n.pid else None
        out.append(node_info(n, True, usage=tree, cpu_percent=cpu))
    return out
