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

A node whose normal size is over the limit (a limit set too low) would be
restarted at every check, for ever, and never serve. So memory restarts
follow the program's crash-loop policy: at most ``restart_burst`` of them
within ``restart_window``; past that they are held, the node keeps running
over its limit, and the log and its ``last_error`` say so (once a window)
until the window has passed.

The figure compared is the tree's summed RSS (see stemd.usage): it counts
pages a prefork pool shares once per process, so it over-states rather
than misses a leak; set the limit with that in mind.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
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
        # node -> when it was restarted for memory, within its restart window
        self._recent: dict[str, deque[float]] = {}
        self._held: dict[str, float] = {}  # node -> when its hold ends (said once)

    def _limits(self) -> dict[str, int]:
        return {p.name: p.max_rss for p in self.master.config.programs if p.max_rss}

    def update(self) -> None:
        """(Re)arm or cancel the timer after the configuration or the node
        table changed (start, reload, scale)."""
        limits = self._limits()
        for gone in set(self._recent).difference(self.master.nodes):
            del self._recent[gone]  # removed by a reload or scale
            self._held.pop(gone, None)
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

    def _hold(self, node: Node, why: str) -> bool:
        """Is the node over its memory-restart burst? Says so once a window."""
        policy = node.spec.policy
        now = self.master.loop.time()
        recent = self._recent.setdefault(node.name, deque())
        while recent and recent[0] <= now - policy.restart_window:
            recent.popleft()
        if len(recent) < policy.restart_burst:
            self._held.pop(node.name, None)
            return False
        held = self._held.get(node.name)
        if held is None or now >= held:
            until = (recent[0] if recent else now) + policy.restart_window
            self._held[node.name] = until
            resume = time.strftime("%H:%M:%S", time.localtime(time.time() + until - now))
            node.last_error = (
                f"{why}; memory restarts held until {resume}: restarted {len(recent)} times "
                f"within {policy.restart_window:g}s (restart_burst, restart_window), so its "
                "normal size may be over max_rss")
            self.log.error("%s: memory restarts held until %s: %s (restarted %d times within "
                           "%gs); it keeps running over its limit: if this is its normal "
                           "size, raise max_rss", node.name, resume, why, len(recent),
                           policy.restart_window)
        return True

    def _restart(self, node: Node, rss: int, limit: int, children: int) -> None:
        why = (f"memory: the process tree's RSS {size(rss)} (pid {node.pid} and {children} "
               f"descendants) exceeded max_rss {size(limit)}")
        if self._hold(node, why):
            return
        self._recent[node.name].append(self.master.loop.time())
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
