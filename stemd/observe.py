"""Who else wants to know when a node changes state: the observers of
issue 15 (metrics' counters, state-change hooks), kept out of the master.

:class:`stemd.node.Node` calls one ``on_change(node)`` after each
transition, with the new state already set; :class:`Transitions` remembers
each node's previous state so that observers get ``(node, old, new)``, and
counts what the metrics report that the node itself does not keep (failed
starts, in total rather than in a row).
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

from stem_core.states import NodeState

if TYPE_CHECKING:
    from stemd.node import Node

S = NodeState
Observer = Callable[["Node", NodeState, NodeState], None]


class Transitions:
    def __init__(self) -> None:
        # keyed by the Node object: a reload or scale may replace a node by
        # a new one of the same name, which starts from STOPPED again
        self._last: weakref.WeakKeyDictionary[Node, NodeState] = weakref.WeakKeyDictionary()
        self.start_failures: dict[str, int] = {}
        self.observers: list[Observer] = []

    def changed(self, node: Node) -> None:
        old = self._last.get(node, S.STOPPED)  # every node begins STOPPED
        new = node.state
        self._last[node] = new
        if old is new:
            return
        if old is S.STARTING and new in (S.BACKOFF, S.FATAL):
            # a start that did not make it (including a spawn that failed
            # for want of the master's own resources)
            self.start_failures[node.name] = self.start_failures.get(node.name, 0) + 1
        for observer in self.observers:
            try:
                observer(node, old, new)
            except Exception:  # an observer's bug must never break supervision
                node.log.exception("%s: observer of %s -> %s failed", node.name, old, new)


class ReloadRecord:
    """The outcome of the last configuration load, for the metrics
    (``stemd_config_last_reload_successful``): the start counts as one."""

    def __init__(self) -> None:
        self.at = time.time()
        self.ok = True

    def record(self, ok: bool) -> None:
        self.at = time.time()
        self.ok = ok
