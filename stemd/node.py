"""One node's state machine.

The node knows nothing of asyncio, sockets or files: it is driven by three
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

import logging
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from stem_core.keys import signal_number
from stem_core.model import NodeSpec
from stem_core.states import ALIVE, NodeState, can_transition

S = NodeState


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """The part of an asyncio loop the node uses: monotonic time and timers."""

    def time(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle: ...


class SpawnError(Exception):
    """The node's process could not be started (command missing, bad user,
    unwritable log file...). Counts as a failed start."""


class ProcessOps(Protocol):
    def spawn(self, node: Node) -> int:
        """Start the node's process, write its PID file, watch for its exit
        (which must arrive later through :meth:`Node.on_exit`). Returns the PID."""
        ...

    def signal_group(self, node: Node, sig: int) -> None:
        """Send ``sig`` to the node's process group."""
        ...

    def forget(self, node: Node, pid: int | None) -> None:
        """The node's process ``pid`` is gone: remove its PID file."""
        ...


@dataclass(frozen=True, slots=True)
class ExitStatus:
    """How a process ended. Both None: unknown (an adopted node is not our
    child, so its status cannot be collected)."""

    code: int | None = None
    signal: int | None = None

    @property
    def clean(self) -> bool:
        return self.code == 0

    @property
    def as_int(self) -> int | None:
        """Popen's convention: the exit code, or minus the signal number."""
        if self.signal is not None:
            return -self.signal
        return self.code

    def __str__(self) -> str:
        if self.signal is not None:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = f"signal {self.signal}"
            return f"killed by {name}"
        if self.code is not None:
            return f"exit status {self.code}"
        return "exit status unknown (adopted)"


_Waiter = tuple[Callable[["Node"], bool], Callable[["Node"], None]]


class Node:
    """A node and its runtime state. Mutable by design: it *is* the state."""

    def __init__(self, spec: NodeSpec, clock: Clock, ops: ProcessOps,
                 log: logging.Logger) -> None:
        self.spec = spec
        self.clock = clock
        self.ops = ops
        self.log = log
        self.state = S.STOPPED
        self.pid: int | None = None
        self.adopted = False
        self.started_at: float | None = None  # monotonic, when the process started
        self.started_wall: float | None = None  # wall clock, for display
        self.exit_status: ExitStatus | None = None
        self.retries = 0  # failed starts in a row
        self.restarts = 0  # automatic respawns since the master started
        self.crash_times: deque[float] = deque()  # exits after RUNNING, in the window
        self.crash_backoffs = 0  # crash-loop back-offs in a row
        self._timer: TimerHandle | None = None
        self._waiters: list[_Waiter] = []

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def alive(self) -> bool:
        return self.state in ALIVE

    # ------------------------------------------------------------ commands

    def start(self) -> None:
        """Start the node (also clears FATAL and the retry count)."""
        if self.state in (S.STOPPED, S.EXITED, S.FATAL, S.BACKOFF):
            self.retries = 0
            self.crash_times.clear()
            self.crash_backoffs = 0
            self._spawn("start requested")

    def stop(self) -> None:
        """Begin stopping: signal the group and arm the kill timer."""
        if self.state in (S.STARTING, S.RUNNING):
            self._set_state(S.STOPPING, f"sending SIG{self.spec.stop_signal}")
            self._arm(self.spec.stop_timeout)
            self._signal(signal_number(self.spec.stop_signal))
        elif self.state is S.BACKOFF:
            # BACKOFF -> STOPPED: cancel the pending retry
            self._cancel_timer()
            self._set_state(S.STOPPED, "stop requested")

    def adopt(self, pid: int, started_wall: float) -> None:
        """Supervise a process left running by a previous master."""
        self.pid = pid
        self.adopted = True
        self.started_at = self.clock.time() - max(0.0, time.time() - started_wall)
        self.started_wall = started_wall
        self._set_state(S.RUNNING, f"adopted pid {pid}")

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
            self._set_state(S.RUNNING, f"pid {self.pid}, up {self.spec.start_secs:g}s")
        elif self.state is S.BACKOFF:
            # BACKOFF -> STARTING
            self.restarts += 1
            self._spawn("retrying")
        elif self.state is S.STOPPING:
            self.log.warning("%s: still alive %gs after SIG%s; sending SIGKILL to its "
                             "process group", self.name, self.spec.stop_timeout,
                             self.spec.stop_signal)
            self._signal(signal.SIGKILL)

    # ----------------------------------------------------------- internals

    def _running_exited(self, status: ExitStatus, what: str, now: float) -> None:
        policy = self.spec.restart
        wanted = policy == "always" or (policy == "on-failure" and not status.clean)
        if not wanted:
            # RUNNING -> EXITED
            self._set_state(S.EXITED, f"{what}; restart={policy}")
            return
        if self.started_at is not None and now - self.started_at > self.spec.restart_window:
            self.crash_backoffs = 0  # it ran longer than a whole window: not a loop
        self.crash_times.append(now)
        while self.crash_times and self.crash_times[0] < now - self.spec.restart_window:
            self.crash_times.popleft()
        if len(self.crash_times) > self.spec.restart_burst:
            # RUNNING -> BACKOFF: a crash loop after start-up
            delay = self._backoff_delay(self.crash_backoffs)
            self.crash_backoffs += 1
            self.crash_times.clear()
            self._set_state(S.BACKOFF, f"{what}; crash loop: {self.spec.restart_burst + 1} "
                            f"exits within {self.spec.restart_window:g}s, retrying in "
                            f"{delay:g}s")
            self._arm(delay)
            return
        # RUNNING -> STARTING: it ran long enough, restart at once
        self.restarts += 1
        self._spawn(f"{what}; restarting")

    def _failed_start(self, why: str) -> None:
        self.retries += 1
        if self.retries >= self.spec.start_retries:
            # STARTING -> FATAL
            self._set_state(S.FATAL, f"{why}; gave up after {self.retries} failed starts "
                            "(stemctl start clears this)")
            return
        delay = self._backoff_delay(self.retries - 1)
        # STARTING -> BACKOFF
        self._set_state(S.BACKOFF, f"{why}; failed start {self.retries} of "
                        f"{self.spec.start_retries}, retrying in {delay:g}s")
        self._arm(delay)

    def _backoff_delay(self, attempt: int) -> float:
        return min(self.spec.backoff_max, float(2 ** min(attempt, 30)))

    def _spawn(self, why: str) -> None:
        self._cancel_timer()
        try:
            pid = self.ops.spawn(self)
        except SpawnError as exc:
            self._set_state(S.STARTING, why)
            self._failed_start(f"cannot start: {exc}")
            return
        self.pid = pid
        self.started_at = self.clock.time()
        self.started_wall = time.time()
        self._set_state(S.STARTING, f"{why}; pid {pid}")
        if self.spec.start_secs > 0:
            self._arm(self.spec.start_secs)
        else:
            self._on_timer()

    def _signal(self, sig: int) -> None:
        if self.pid is not None:
            self.ops.signal_group(self, sig)

    def _arm(self, delay: float) -> None:
        self._cancel_timer()
        self._timer = self.clock.call_at(self.clock.time() + delay, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _set_state(self, new: NodeState, reason: str) -> None:
        old = self.state
        assert can_transition(old, new), f"{self.name}: illegal {old} -> {new}"
        self.state = new
        level = logging.WARNING if new in (S.BACKOFF, S.FATAL) else logging.INFO
        self.log.log(level, "%s: %s -> %s (%s)", self.name, old, new, reason)
        if self._waiters:
            waiting, self._waiters = self._waiters, []
            for done, wake in waiting:
                if done(self):
                    wake(self)
                else:
                    self._waiters.append((done, wake))
