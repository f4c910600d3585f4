"""One node's state machine.

The node knows nothing of the event loop, sockets or files (its ``lock`` is
only a token the master's commands queue on): it is driven by three
kinds of event — commands (:meth:`Node.start`, :meth:`Node.stop`), the exit of
its process (:meth:`Node.on_exit`) and its single timer — and acts through a
:class:`ProcessOps` (spawn, signal, forget) and a :class:`Clock`. The master
supplies the real ones; unit tests supply fakes and run the whole policy in
microseconds.

Every move goes through :meth:`Node._set_state`, which checks it against
:data:`stem_core.states.TRANSITIONS`, logs ``node: OLD -> NEW (reason)`` and
wakes whoever waits for the node.
"""

from __future__ import annotations

import errno
import logging
import signal
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from stem_core.exits import ExitStatus
from stem_core.keys import signal_number
from stem_core.model import NodeSpec
from stem_core.states import IllegalTransition, NodeState, can_transition
from stemd.cmdlock import CommandLock

S = NodeState


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """The part of an asyncio loop the node uses: monotonic time and timers."""

    def time(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle: ...


class SpawnError(Exception):
    """The node's process could not be started (command missing, bad user,
    unwritable log file...). Counts as a failed start, unless ``transient``:
    a shortage of the master's own resources (EMFILE, ENFILE, EAGAIN from
    fork) says nothing about the node, so it is retried and never makes the
    node FATAL."""

    TRANSIENT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.EAGAIN, errno.ENOMEM})

    def __init__(self, message: str, errno_: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno_

    @property
    def transient(self) -> bool:
        return self.errno in self.TRANSIENT_ERRNOS


class ProcessOps(Protocol):
    def spawn(self, node: Node) -> int:
        """Start the node's process, write its PID file, watch for its exit
        (which must arrive later through :meth:`Node.on_exit`). Returns the PID."""
        ...

    def signal(self, node: Node, sig: int, group: bool) -> None:
        """Send ``sig`` to the node's main process, or (``group``) to its
        whole process group."""
        ...

    def forget(self, node: Node, pid: int | None) -> None:
        """The node's process ``pid`` is gone: remove its PID file."""
        ...


_Waiter = tuple[Callable[["Node"], bool], Callable[["Node"], None]]


class Node:
    """A node and its runtime state. Mutable by design: it *is* the state."""

    def __init__(self, spec: NodeSpec, clock: Clock, ops: ProcessOps,
                 log: logging.Logger) -> None:
        self.spec = spec
        # A reload's spec for a running node it is about to restart: taken
        # at the node's next spawn, whoever starts it (a rolling restart
        # running meanwhile must not start it again on the old command).
        self.next_spec: NodeSpec | None = None
        self.clock = clock
        self.ops = ops
        self.log = log
        self.state = S.STOPPED
        # The operator's intent: up (start, or never told otherwise) or down
        # (stop). Reload, adoption and a restarted master read it; only the
        # operator's commands set it.
        self.wanted = True
        # How many commands have set ``wanted``: a rolling restart checks at
        # each node's turn whether a later command changed its intent.
        self.intent = 0
        # Set by the master's shutdown: no start of any kind from then on.
        self.closed = False
        # Serialises commands on this node (start, stop, restart), so each
        # command sees its own effect through.
        self.lock = CommandLock()
        self.last_error: str | None = None  # why it is not running, for status
        self.pid: int | None = None
        self.adopted = False
        # An adopted process started from another configuration than the
        # node's spec (the file changed while no master ran): that
        # configuration's fingerprint (model.spec_fingerprint), else None.
        # A reload restarts such a node even if the file did not change since.
        self.started_from: str | None = None
        self.started_at: float | None = None  # monotonic, when the process started
        self.exit_status: ExitStatus | None = None
        # Why the last stop had to SIGKILL (the process outlived the stop
        # timeout: a worker's tasks in flight were lost), or None. Kept
        # until the next stop begins, so that a restart's answer says it.
        self.stop_forced: str | None = None
        self.forced_stops = 0  # stops that had to SIGKILL, since the master started
        self.retries = 0  # failed starts in a row
        self.restarts = 0  # automatic respawns since the master started
        self.crash_times: deque[float] = deque()  # exits after RUNNING, in the window
        self.crash_backoffs = 0  # crash-loop back-offs in a row
        self._timer: TimerHandle | None = None
        self._waiters: list[_Waiter] = []
        # Called after every state change (the master saves its state file).
        self.on_change: Callable[[Node], None] | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    # ------------------------------------------------------------ commands

    def start(self) -> None:
        """Start the node (also clears FATAL and the retry count). Does
        nothing once the master is shutting down (:attr:`closed`)."""
        if self.closed:
            return
        if self.state in (S.STOPPED, S.EXITED, S.FATAL, S.BACKOFF):
            self.retries = 0
            self.crash_times.clear()
            self.crash_backoffs = 0
            self._spawn("start requested")

    def stop(self) -> None:
        """Begin stopping, per the kill mode, and arm the kill timer.

        ``mixed`` (the default) signals the main process only: a prefork
        worker (Celery, gunicorn) then lets its pool finish the running
        tasks, where a signal to the whole group would kill them mid-task.
        Whatever is left of the group is SIGKILLed once the main process has
        exited (by the reaper, while the zombie still pins the group id) or
        when the stop timeout passes. ``control-group`` signals the whole
        group at once, for wrappers that do not forward signals.
        """
        if self.state in (S.STARTING, S.RUNNING):
            self.stop_forced = None
            group = self.spec.policy.kill_mode == "control-group"
            target = "its process group" if group else f"pid {self.pid}"
            self._set_state(S.STOPPING, f"sending SIG{self.spec.policy.stop_signal} to {target}")
            self._arm(self.spec.policy.stop_timeout)
            if self.pid is not None:
                self.ops.signal(self, signal_number(self.spec.policy.stop_signal), group)
        elif self.state is S.BACKOFF:
            # BACKOFF -> STOPPED: cancel the pending retry
            self.stop_forced = None
            self._cancel_timer()
            self._set_state(S.STOPPED, "stop requested")

    def resume_stop(self) -> None:
        """An adopted node that the master before was stopping when it died:
        STOPPING again, its stop timeout armed anew, without a second stop
        signal (the first one was sent: a second SIGINT is a Celery worker's
        cold shutdown, which kills its tasks)."""
        if self.state is S.RUNNING:
            self.stop_forced = None
            self._set_state(S.STOPPING, "the previous master was stopping it")
            self._arm(self.spec.policy.stop_timeout)

    def adopt(self, pid: int, started_wall: float) -> None:
        """Supervise a process left running by a previous master."""
        self.pid = pid
        self.adopted = True
        self.started_at = self.clock.time() - max(0.0, time.time() - started_wall)
        self._set_state(S.RUNNING, f"adopted pid {pid}")

    def restore(self, *, wanted: bool, restarts: int, exit_status: ExitStatus | None,
                last_error: str | None, state: str) -> None:
        """Take up what a master that died knew of this node (its state
        file): the operator's intent, the counters, the last exit and error,
        and an EXITED or FATAL verdict, which a restarted master keeps
        instead of starting the node again."""
        self.wanted = wanted
        self.restarts = restarts
        self.exit_status = exit_status
        self.last_error = last_error
        if self.state is S.STOPPED and state in (S.EXITED, S.FATAL):
            # STOPPED -> EXITED | FATAL: as the previous master left it
            self._set_state(S(state), "restored from the state file")

    def add_waiter(self, done: Callable[[Node], bool], wake: Callable[[Node], None]) -> None:
        """Call ``wake(node)`` once ``done(node)`` holds (now or after a
        later state change)."""
        if done(self):
            wake(self)
        else:
            self._waiters.append((done, wake))

    # -------------------------------------------------------------- events

    def on_exit(self, status: ExitStatus) -> None:
        """The node's process has exited and been reaped."""
        pid = self.pid
        self.pid = None
        self.adopted = False
        self.started_from = None
        self.exit_status = status
        self._cancel_timer()
        self.ops.forget(self, pid)
        now = self.clock.time()
        what = f"pid {pid} {status}"
        if self.state is S.STOPPING:
            # STOPPING -> STOPPED
            self._set_state(S.STOPPED, what)
        elif self.state is S.STARTING:
            # STARTING -> BACKOFF | FATAL: it did not stay up for start_secs
            self._failed_start(what)
        elif self.state is S.RUNNING:
            self._running_exited(status, what, now)
        else:  # pragma: no cover - no process exists in other states
            self.log.warning("%s: unexpected exit in %s (%s)", self.name, self.state, what)

    def _on_timer(self) -> None:
        self._timer = None
        if self.state is S.STARTING:
            # STARTING -> RUNNING: it stayed up for start_secs
            self.retries = 0
            self._set_state(S.RUNNING, f"pid {self.pid}, up {self.spec.policy.start_secs:g}s")
        elif self.state is S.BACKOFF:
            # BACKOFF -> STARTING
            self.restarts += 1
            self._spawn("retrying")
        elif self.state is S.STOPPING:
            self.log.warning("%s: still alive %gs after SIG%s; sending SIGKILL to its "
                             "process group", self.name, self.spec.policy.stop_timeout,
                             self.spec.policy.stop_signal)
            self.forced_stops += 1
            self.stop_forced = (f"killed with SIGKILL: still running "
                                f"{self.spec.policy.stop_timeout:g}s after "
                                f"SIG{self.spec.policy.stop_signal}, the stop timeout")
            if self.pid is not None:
                self.ops.signal(self, signal.SIGKILL, True)

    # ----------------------------------------------------------- internals

    def _running_exited(self, status: ExitStatus, what: str, now: float) -> None:
        policy = self.spec.policy.restart
        # Expected: an exit status the program declares (exitcodes, default
        # 0); a signal never is.
        expected = status.signal is None and status.code in self.spec.policy.exitcodes
        # A closed node (the master is shutting down), or one the operator
        # stopped, is never restarted.
        wanted = not self.closed and self.wanted and (
            policy == "always" or (policy == "on-failure" and not expected))
        if not wanted:
            if not expected:
                self.last_error = what
            # RUNNING -> EXITED
            self._set_state(S.EXITED, f"{what}; restart={policy}")
            return
        if self.started_at is not None and now - self.started_at > self.spec.policy.restart_window:
            self.crash_backoffs = 0  # it ran longer than a whole window: not a loop
        self.crash_times.append(now)
        while self.crash_times and self.crash_times[0] < now - self.spec.policy.restart_window:
            self.crash_times.popleft()
        if len(self.crash_times) > self.spec.policy.restart_burst:
            # RUNNING -> BACKOFF: a crash loop after start-up
            delay = self._backoff_delay(self.crash_backoffs)
            self.crash_backoffs += 1
            self.crash_times.clear()
            self.last_error = (f"{what}; crash loop: {self.spec.policy.restart_burst + 1} exits "
                               f"within {self.spec.policy.restart_window:g}s")
            self._set_state(S.BACKOFF, f"{self.last_error}, retrying in {delay:g}s")
            self._arm(delay)
            return
        # RUNNING -> STARTING: it ran long enough, restart at once
        self.restarts += 1
        self._spawn(f"{what}; restarting")

    def _failed_start(self, why: str) -> None:
        self.last_error = why
        self.retries += 1
        if self.retries >= self.spec.policy.start_retries:
            # STARTING -> FATAL
            self._set_state(S.FATAL, f"{why}; gave up after {self.retries} failed starts "
                            "(stemctl start clears this)")
            return
        delay = self._backoff_delay(self.retries - 1)
        # STARTING -> BACKOFF
        self._set_state(S.BACKOFF, f"{why}; failed start {self.retries} of "
                        f"{self.spec.policy.start_retries}, retrying in {delay:g}s")
        self._arm(delay)

    def _backoff_delay(self, attempt: int) -> float:
        return min(self.spec.policy.backoff_max, float(2 ** min(attempt, 30)))

    def _spawn(self, why: str) -> None:
        self._cancel_timer()
        if self.next_spec is not None:
            self.spec, self.next_spec = self.next_spec, None
        try:
            pid = self.ops.spawn(self)
        except SpawnError as exc:
            self._set_state(S.STARTING, why)
            if exc.transient:
                # STARTING -> BACKOFF, not counted: the master lacks a
                # resource (file descriptors, memory), the node is not at fault
                delay = self._backoff_delay(0)
                self.last_error = f"cannot start: {exc}"
                self._set_state(S.BACKOFF, f"{self.last_error}; retrying in {delay:g}s "
                                "(not counted as a failed start)")
                self._arm(delay)
                return
            self._failed_start(f"cannot start: {exc}")
            return
        self.pid = pid
        self.started_at = self.clock.time()
        self._set_state(S.STARTING, f"{why}; pid {pid}")
        if self.spec.policy.start_secs > 0:
            self._arm(self.spec.policy.start_secs)
        else:
            self._on_timer()

    def _arm(self, delay: float) -> None:
        self._cancel_timer()
        self._timer = self.clock.call_at(self.clock.time() + delay, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _set_state(self, new: NodeState, reason: str) -> None:
        old = self.state
        if not can_transition(old, new):
            raise IllegalTransition(f"{self.name}: illegal {old} -> {new} ({reason})")
        self.state = new
        if new is S.RUNNING:
            self.last_error = None
        level = logging.WARNING if new in (S.BACKOFF, S.FATAL) else logging.INFO
        self.log.log(level, "%s: %s -> %s (%s)", self.name, old, new, reason)
        if self.on_change is not None:
            self.on_change(self)
        if self._waiters:
            waiting, self._waiters = self._waiters, []
            for done, wake in waiting:
                if done(self):
                    wake(self)
                else:
                    self._waiters.append((done, wake))
