"""How lists of nodes are written for people.

A fleet may have 1,000 nodes. A message that names every one of them is a
10 KB line that buries the rest of the output (an init script's terminal, a
reload's answer, the master log), so past a few names a list is shortened to
its count, its first names and its last; ``--json`` always carries the whole
list. Nothing is imported here: stemctl loads this on its fast path.
"""

from __future__ import annotations

from collections.abc import Sequence

#: names listed in full, at most, by :func:`abridged`
LISTED_IN_FULL = 10
#: nodes named in full, at most, by :func:`name_nodes` (in a sentence)
NAMED_IN_FULL = 4


def abridged(names: Sequence[str], limit: int = LISTED_IN_FULL) -> str:
    """``a, b, c``; past ``limit`` names, ``1000 nodes: a, b, c, ..., z``."""
    if len(names) <= limit:
        return ", ".join(names)
    return f"{len(names)} nodes: {', '.join(names[:3])}, ..., {names[-1]}"


def name_nodes(names: Sequence[str]) -> str:
    """For a sentence: ``node a``; ``nodes a, b and c``; past
    :data:`NAMED_IN_FULL`, ``1000 nodes (a, b, c, ..., z)``."""
    if len(names) == 1:
        return f"node {names[0]}"
    if len(names) <= NAMED_IN_FULL:
        return f"nodes {', '.join(names[:-1])} and {names[-1]}"
    return f"{len(names)} nodes ({', '.join(names[:3])}, ..., {names[-1]})"


def killed_at_stop_timeout(names: Sequence[str]) -> str:
    """The nodes a command's stop had to SIGKILL (reload, scale)."""
    return f"killed with SIGKILL at the stop timeout (work in flight lost): {abridged(names)}"
