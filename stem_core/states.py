"""Node states and the transitions allowed between them (a leaf module).

The names are supervisord's, which operators already know. The transition
table is the single place that says which moves are legal; the node state
machine in :mod:`stemd.node` checks every move against it and raises
:class:`IllegalTransition` (not an ``assert``, which ``python -O`` drops).
"""

from __future__ import annotations

from enum import StrEnum


class NodeState(StrEnum):
    STOPPED = "STOPPED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    BACKOFF = "BACKOFF"
    STOPPING = "STOPPING"
    EXITED = "EXITED"
    FATAL = "FATAL"


S = NodeState

TRANSITIONS: frozenset[tuple[NodeState, NodeState]] = frozenset(
    {
        # start (also clears FATAL)
        (S.STOPPED, S.STARTING),
        (S.EXITED, S.STARTING),
        (S.FATAL, S.STARTING),
        # start timer: alive for start-secs
        (S.STARTING, S.RUNNING),
        # a failed start: retry later, or give up
        (S.STARTING, S.BACKOFF),
        (S.STARTING, S.FATAL),
        # backoff timer: try again; a stop cancels the retry
        (S.BACKOFF, S.STARTING),
        (S.BACKOFF, S.STOPPED),
        # a running node exits: restart now, stay down, or back off (crash loop)
        (S.RUNNING, S.STARTING),
        (S.RUNNING, S.EXITED),
        (S.RUNNING, S.BACKOFF),
        # stop
        (S.STARTING, S.STOPPING),
        (S.RUNNING, S.STOPPING),
        (S.STOPPING, S.STOPPED),
        # adoption of a node left running by a previous master
        (S.STOPPED, S.RUNNING),
        # restored from the state file of a master that died: the node had
        # exited (restart policy) or given up, and stays so
        (S.STOPPED, S.EXITED),
        (S.STOPPED, S.FATAL),
    }
)

#: states in which the node has a live process
ALIVE: frozenset[NodeState] = frozenset({S.STARTING, S.RUNNING, S.STOPPING})


def can_transition(old: NodeState, new: NodeState) -> bool:
    return (old, new) in TRANSITIONS


class IllegalTransition(RuntimeError):
    """A bug: the state machine tried a move the table does not allow."""
