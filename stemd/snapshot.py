"""What ``stemctl status`` shows of a node: one dict per node, built from
the node's state and, with ``stats``, one read of ``/proc/PID/stat``."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stemd.node import Node

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


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
        # why it is not running: the last spawn error, crash loop or failed
        # exit (None once it is RUNNING again)
        "last_error": node.last_error,
        "wanted": "up" if node.wanted else "down",
        "adopted": node.adopted,
    }
    if stats:
        info["cpu_percent"], info["rss"] = _usage(node.pid, uptime) if alive else (None, None)
    return info


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


def system_uptime() -> float:
    with open("/proc/uptime", "rb") as f:
        return float(f.read().split()[0])
