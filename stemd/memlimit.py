"""Memory limits: restart a node whose whole process tree outgrows its
program's ``max_rss`` — what Celery's ``--max-memory-per-child`` does for
one pool and PM2's ``max_memory_restart`` for one process, for any node.

The master polls nothing unless asked to: the sampling timer exists only
while some program with ``max_rss`` has nodes. Without one (the default) the
idle master still makes no wake-up at all. With one, every
``STEMD_MEMORY_CHECK_INTERVAL`` seconds (default 5) one pass over ``/proc``
(:func:`stemd.usage.sample`) gives the RSS of every limited node's tree.

A node over its limit is restarted like ``stemctl restart NODE``: the
normal stop sequence (its stop signal, ``mixed`` by default: a warm
shutdown that lets a prefork pool finish its tasks), then a start, under
the master's rolling lock (never more than one node of the fleet down for
a restart at a time). The log says why, and so does the node's
``last_error`` once it runs again (until its next transition to RUNNING).

The figure compared is the tree's summed RSS (see stemd.usage): it counts
pages a prefork pool shares once per process, so it over-states rather
than misses a leak; set the limit with that in mind.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from stem_core.states import NodeState
from stemd.render import size
from stemd.usage import sample

if TYPE_CHECKING:
    from stemd.master import Master
    from stemd.node import Node

S = NodeState


class MemoryLimits:
    def __init__(self, master: Master, log: logging.Logger) -> None:
        self.master = master
        self.log = log
        self._timer: asyncio.TimerHandle | None = None
        self._restarting: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.restarts: dict[str, int] = {}  # node -> restarts for memory, for the metrics

    def _limits(self) -> dict[str, int]:
        return {p.name: p.max_rss for p in self.master.config.programs if p.max_rss}

    def update(self) -> None:
        """(Re)arm or cancel the timer after the configuration or the node
        table changed (start, reload, scale)."""
        limits = self._limits()
        wanted = bool(limits) and not self.master.shutting_down and any(
            n.spec.program in limits for n in self.master.nodes.values())
        if not wanted:
            self.close()
        elif self._timer is None:
            self._arm()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        self._timer = self.master.loop.call_later(
            self.master.config.master.memory_check_interval, self._check)

    def _check(self) -> None:
        self._timer = None
        m = self.master
        if m.shutting_down:
            return
        limits = self._limits()
        nodes = [n for n in m.nodes.values() if n.spec.program in limits
                 and n.pid is not None and n.state is S.RUNNING and n.wanted
                 and n.name not in self._restarting]
        trees = sample(n.pid for n in nodes if n.pid is not None)
        for node in nodes:
            tree = trees.get(node.pid) if node.pid is not None else None
            limit = limits[node.spec.program]
            if tree is not None and tree.rss > limit:
                self._restart(node, tree.rss, limit, tree.children)
        self.update()

    def _restart(self, node: Node, rss: int, limit: int, children: int) -> None:
        why = (f"memory: the process tree's RSS {size(rss)} (pid {node.pid} and {children} "
               f"descendants) exceeded max_rss {size(limit)}")
        self.log.warning("%s: %s: restarting it", node.name, why)
        node.last_error = why
        self.restarts[node.name] = self.restarts.get(node.name, 0) + 1
        self._restarting.add(node.name)
        task = asyncio.ensure_future(self._restart_task(node, why))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _restart_task(self, node: Node, why: str) -> None:
        from stemd.master import RestartHalted, ShuttingDown

        try:
            await self.master.restart([node])
        except (ShuttingDown, RestartHalted) as exc:
            self.log.warning("%s: restart for memory: %s", node.name, exc)
        finally:
            self._restarting.discard(node.name)
        if node.state is S.RUNNING and node.last_error is None:
            # RUNNING clears last_error; keep saying why it was restarted
            node.last_error = f"restarted at {time.strftime('%H:%M:%S')}: {why}"
