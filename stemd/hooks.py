"""State-change hooks: a plain command run when a node makes a transition
the operator selected (``on_state_change``, ``on_state_change_states``).

Like supervisord's event listeners, without a protocol: the command gets
the event in its environment (``STEMD_NODE``, ``STEMD_PROGRAM``,
``STEMD_FROM_STATE``, ``STEMD_TO_STATE``, ``STEMD_EXIT_STATUS``,
``STEMD_LAST_ERROR``) and its output goes to the node's log file, never
through the master.

What keeps a hook from hurting supervision:

- It is spawned like a node (``Popen`` as the node's user and group, in its
  own session, no shell, no ``preexec_fn``) and watched through the
  master's :class:`~stemd.reaper.Reaper` (a pidfd): the loop never waits
  for it. On its exit the reaper kills what is left of its session's
  process group, as for a node.
- A timer kills its process group (SIGKILL) after ``hook_timeout``.
- At most ``hooks_max`` run at once. Further events wait in a queue that
  holds at most one event per node: a newer event of a node replaces its
  waiting one (*coalesced*), so a crash storm of 1,000 nodes queues at most
  1,000 events however many transitions it makes, and the number replaced
  is logged when the surviving event runs.
- A hook that fails to start, exits non-zero or is killed is logged; the
  node is never touched.
- The hook's environment has no ``STEMD_INSTANCE``: a hook that outlives a
  master must not be taken for a node by the next one (stem_core.pidfile's
  scan looks for that variable).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import subprocess
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from stem_core.exits import ExitStatus
from stem_core.model import ProgramSpec
from stem_core.states import NodeState
from stemd.node import SpawnError
from stemd.spawn import spawn_node

if TYPE_CHECKING:
    import asyncio

    from stemd.master import Master
    from stemd.node import Node

S = NodeState


@dataclass(frozen=True, slots=True)
class Event:
    node: str
    program: str
    old: str
    new: str
    exit_status: str  # Popen's convention (code, or minus the signal); "" if none
    last_error: str
    command: str
    timeout: float
    coalesced: int = 0  # earlier events of this node replaced by this one


def selected(choices: tuple[str, ...], node: Node, old: NodeState, new: NodeState) -> bool:
    """Whether the transition ``old -> new`` of ``node`` is one ``choices``
    names (see stem_core.keys.parse_hook_states)."""
    if str(new) in choices:
        return True
    if "crash-loop" in choices and old is S.RUNNING and new is S.BACKOFF:
        return True
    if "failed-exit" in choices and new is S.EXITED:
        status = node.exit_status
        return status is not None and not status.clean and status.as_int is not None
    return False


class HookRunner:
    """Runs the hooks of one master. Subscribes to its transitions."""

    def __init__(self, master: Master, log: logging.Logger) -> None:
        self.master = master
        self.log = log
        self.limit = max(1, master.config.master.hooks_max)
        self.running: dict[int, asyncio.TimerHandle] = {}  # pid -> its timeout
        self.waiting: OrderedDict[str, Event] = OrderedDict()  # node -> latest event
        # counters, for the metrics and the tests
        self.started = 0
        self.failed = 0
        self.timed_out = 0
        self.coalesced = 0

    # ------------------------------------------------------------- events

    def observe(self, node: Node, old: NodeState, new: NodeState) -> None:
        if old is S.STOPPED and new in (S.EXITED, S.FATAL):
            # a verdict a restarted master restores from its state file: it
            # was reported when it happened, not again at every restart
            return
        program = self._program(node)
        command = program.on_state_change if program else \
            self.master.config.master.on_state_change
        if not command or self.master.shutting_down:
            return
        choices = program.on_state_change_states if program else \
            self.master.config.master.on_state_change_states
        if not selected(choices, node, old, new):
            return
        status = node.exit_status.as_int if node.exit_status else None
        event = Event(node.name, node.spec.program, str(old), str(new),
                      "" if status is None else str(status), node.last_error or "", command,
                      program.hook_timeout if program else
                      self.master.config.master.hook_timeout)
        if len(self.running) < self.limit and not self.waiting:
            self._run(event)
            return
        earlier = self.waiting.pop(node.name, None)
        if earlier is not None:
            self.coalesced += 1
            event = replace(event, coalesced=earlier.coalesced + 1)
        self.waiting[node.name] = event

    def _program(self, node: Node) -> ProgramSpec | None:
        for program in self.master.config.programs:
            if program.name == node.spec.program:
                return program
        return None  # a node of a program a reload removed: the [stemd] values

    # ------------------------------------------------------------ running

    def _run(self, event: Event) -> None:
        """Start the hook of ``event`` (a failure to start is logged and
        counted; the caller moves on to the next event)."""
        if event.coalesced:
            self.log.warning("%s: hook: %d earlier events coalesced into this one (%d hooks "
                             "were running)", event.node, event.coalesced, self.limit)
        try:
            popen = self._spawn(event)
        except (SpawnError, OSError, ValueError) as exc:
            self.failed += 1
            self.log.error("%s: hook for %s -> %s could not start: %s", event.node, event.old,
                           event.new, exc)
            return
        self.started += 1
        pid = popen.pid
        try:
            self.master.reaper.watch(pid, popen, lambda p, status: self._exited(p, status, event))
        except OSError as exc:  # no pidfd (EMFILE): never wait for it in the loop
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            popen.wait()  # just SIGKILLed: returns at once
            self.failed += 1
            self.log.error("%s: hook killed: cannot watch it: %s", event.node, exc)
            return
        self.running[pid] = self.master.loop.call_later(event.timeout, self._timeout, pid,
                                                        event)

    def _spawn(self, event: Event) -> subprocess.Popen[bytes]:
        """Spawned exactly as the node is (stemd.spawn: its account, no
        root unless STEMD_FORCE_ROOT, its directory, umask and log file, a
        new session), with the hook's command and the event's variables."""
        m = self.master
        node = m.nodes.get(event.node) or m.removed.get(event.node)
        if node is None:
            raise SpawnError("the node is gone")
        extra = (("STEMD_FROM_STATE", event.old), ("STEMD_TO_STATE", event.new),
                 ("STEMD_EXIT_STATUS", event.exit_status),
                 ("STEMD_LAST_ERROR", event.last_error))
        spec = replace(node.spec, argv=tuple(shlex.split(event.command)),
                       environment=node.spec.environment + extra)
        base = {k: v for k, v in m.base_env.items() if k != "STEMD_INSTANCE"}
        return spawn_node(spec, base, m.config.master.force_root)

    def _timeout(self, pid: int, event: Event) -> None:
        if pid in self.running:
            self.timed_out += 1
            self.log.warning("%s: hook still running after %gs: killing it", event.node,
                             event.timeout)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)

    def _exited(self, pid: int, status: ExitStatus, event: Event) -> None:
        timer = self.running.pop(pid, None)
        if timer is not None:
            timer.cancel()
        if status.clean:
            self.log.info("%s: hook for %s -> %s done", event.node, event.old, event.new)
        else:
            self.failed += 1
            self.log.warning("%s: hook for %s -> %s failed: %s", event.node, event.old,
                             event.new, status)
        self._next()

    def _next(self) -> None:
        while self.waiting and len(self.running) < self.limit:
            if self.master.shutting_down:
                self.waiting.clear()
                return
            _, event = self.waiting.popitem(last=False)
            self._run(event)

    def close(self) -> None:
        """The master is exiting: kill the hooks still running (their
        timeouts die with the loop) and drop the events still waiting."""
        self.waiting.clear()
        for pid, timer in self.running.items():
            timer.cancel()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        self.running.clear()
