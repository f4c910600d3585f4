"""The node state machine with a fake clock and a fake spawner.

No process, no loop: the clock's timers fire only when a test says so, and
the spawner hands out PIDs (or a :class:`SpawnError`) on demand. Each row of
the transition table in STYLE.md has a test below.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import pytest

from stem_core.exits import ExitStatus
from stem_core.model import NodeSpec, Policy, RunAs
from stem_core.states import TRANSITIONS, NodeState
from stemd.node import Node, SpawnError

S = NodeState
FAILED = ExitStatus(code=1)
CLEAN = ExitStatus(code=0)
KILLED = ExitStatus(signal=signal.SIGKILL)


# ------------------------------------------------------------------ fakes

@dataclass
class FakeTimer:
    when: float
    callback: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class FakeClock:
    now: float = 1000.0
    timers: list[FakeTimer] = field(default_factory=list)

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> FakeTimer:
        timer = FakeTimer(when, callback)
        self.timers.append(timer)
        return timer

    def pending(self) -> list[FakeTimer]:
        return sorted((t for t in self.timers if not t.cancelled), key=lambda t: t.when)

    def next_delay(self) -> float:
        """Seconds from now to the next live timer."""
        pending = self.pending()
        assert pending, "no timer armed"
        return pending[0].when - self.now

    def fire(self) -> float:
        """Advance to the next live timer and run it; returns the delay."""
        timer = self.pending()[0]
        delay = timer.when - self.now
        self.now = timer.when
        timer.cancelled = True  # one-shot
        timer.callback()
        return delay

    def advance(self, seconds: float) -> None:
        """Let time pass without firing anything (the timer is not due)."""
        self.now += seconds


@dataclass
class FakeOps:
    next_pid: int = 100
    fail: str | None = None  # a SpawnError message for the next spawns
    spawned: list[int] = field(default_factory=list)
    signals: list[tuple[int | None, int]] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)  # "main" or "group", per signal
    forgotten: list[int | None] = field(default_factory=list)

    fail_errno: int | None = None

    def spawn(self, node: Node) -> int:
        if self.fail:
            raise SpawnError(self.fail, self.fail_errno)
        self.next_pid += 1
        self.spawned.append(self.next_pid)
        return self.next_pid

    def signal(self, node: Node, sig: int, group: bool) -> None:
        self.signals.append((node.pid, sig))
        self.targets.append("group" if group else "main")

    def forget(self, node: Node, pid: int | None) -> None:
        self.forgotten.append(pid)


POLICY = Policy(stop_signal="TERM", stop_timeout=10.0, kill_mode="mixed", restart="always",
                start_secs=1.0, start_retries=5, backoff_max=30.0, restart_burst=5,
                restart_window=60.0)
SPEC = NodeSpec(
    name="alpha", program="worker", index=1, argv=("/bin/true",), directory="/",
    environment=(), pid_file="/nonexistent/alpha.pid", log_file="-", policy=POLICY,
    run_as=RunAs(user=None, group=None, umask=0o022),
)


@dataclass
class Rig:
    node: Node
    clock: FakeClock
    ops: FakeOps
    transitions: list[tuple[NodeState, NodeState]]


def make(**changes: object) -> Rig:
    clock, ops = FakeClock(), FakeOps()
    log = logging.getLogger("test_node")
    policy = {k: v for k, v in changes.items() if k in Policy.__dataclass_fields__}
    rest = {k: v for k, v in changes.items() if k not in policy}
    spec = replace(SPEC, policy=replace(POLICY, **policy), **rest)  # type: ignore[arg-type]
    node = Node(spec, clock, ops, log)
    seen: list[tuple[NodeState, NodeState]] = []
    original = node._set_state

    def spy(new: NodeState, reason: str) -> None:
        seen.append((node.state, new))
        original(new, reason)
    node._set_state = spy  # type: ignore[method-assign]
    return Rig(node, clock, ops, seen)


def to_state(state: NodeState, **changes: object) -> Rig:
    """A node driven, through legal events only, into ``state``."""
    if state is S.EXITED:
        changes.setdefault("restart", "no")
    if state is S.FATAL:
        changes.setdefault("start_retries", 1)
    rig = make(**changes)
    node, clock = rig.node, rig.clock
    if state is S.STOPPED:
        pass
    elif state is S.STARTING:
        node.start()
    elif state is S.RUNNING:
        node.start()
        clock.fire()
    elif state is S.BACKOFF:
        node.start()
        node.on_exit(FAILED)
    elif state is S.STOPPING:
        node.start()
        clock.fire()
        node.stop()
    elif state is S.EXITED:
        node.start()
        clock.fire()
        node.on_exit(FAILED)
    elif state is S.FATAL:
        node.start()
        node.on_exit(FAILED)
    assert node.state is state
    rig.transitions.clear()
    rig.ops.signals.clear()
    return rig


def test_every_move_the_machine_makes_is_in_the_table() -> None:
    """The spy sees each move; the table is the single authority on them."""
    rig = make(start_retries=2, restart_burst=1)
    n, c = rig.node, rig.clock
    n.start()
    c.fire()
    n.on_exit(KILLED)   # RUNNING -> STARTING
    c.fire()
    n.on_exit(KILLED)   # RUNNING -> BACKOFF (crash loop)
    c.fire()            # BACKOFF -> STARTING
    n.on_exit(FAILED)   # STARTING -> BACKOFF
    c.fire()
    n.on_exit(FAILED)   # STARTING -> FATAL
    n.start()           # FATAL -> STARTING
    n.stop()            # STARTING -> STOPPING
    n.on_exit(KILLED)   # STOPPING -> STOPPED
    assert rig.transitions and set(rig.transitions) <= TRANSITIONS
    assert {(S.RUNNING, S.BACKOFF), (S.STARTING, S.FATAL), (S.FATAL, S.STARTING),
            (S.STOPPING, S.STOPPED)} <= set(rig.transitions)


# ------------------------------------------------- the transition table, row by row

@pytest.mark.parametrize("state", [S.STOPPED, S.EXITED, S.FATAL])
def test_start_spawns_writes_and_arms_the_start_timer(state: NodeState) -> None:
    # STOPPED, EXITED, FATAL --start--> STARTING
    rig = to_state(state)
    rig.node.retries = 3
    spawned = len(rig.ops.spawned)
    rig.node.start()
    assert rig.node.state is S.STARTING
    assert len(rig.ops.spawned) == spawned + 1
    assert rig.node.pid == rig.ops.spawned[-1]
    assert rig.node.retries == 0  # start clears the retry count (and FATAL)
    assert rig.clock.next_delay() == pytest.approx(rig.node.spec.policy.start_secs)


def test_start_timer_makes_it_running_and_resets_retries() -> None:
    # STARTING --start timer--> RUNNING
    rig = make(start_retries=5)
    rig.node.start()
    rig.node.on_exit(FAILED)
    rig.clock.fire()  # the retry
    assert rig.node.retries == 1 and rig.node.state is S.STARTING
    rig.clock.fire()
    assert rig.node.state is S.RUNNING
    assert rig.node.retries == 0


def test_start_secs_zero_is_running_at_once() -> None:
    rig = make(start_secs=0)
    rig.node.start()
    assert rig.node.state is S.RUNNING
    assert rig.transitions == [(S.STOPPED, S.STARTING), (S.STARTING, S.RUNNING)]


def test_exit_while_starting_backs_off() -> None:
    # STARTING --exit--> BACKOFF
    rig = to_state(S.STARTING)
    pid = rig.node.pid
    rig.node.on_exit(FAILED)
    assert rig.node.state is S.BACKOFF
    assert rig.node.retries == 1
    assert rig.node.pid is None
    assert rig.ops.forgotten == [pid]  # its PID file goes
    assert rig.node.exit_status == FAILED
    assert rig.clock.next_delay() == pytest.approx(1.0)


def test_spawn_error_is_a_failed_start() -> None:
    # STARTING --spawn error--> BACKOFF
    rig = make()
    rig.ops.fail = "no such file"
    rig.node.start()
    assert rig.node.state is S.BACKOFF
    assert rig.node.retries == 1
    assert rig.node.pid is None
    assert rig.transitions == [(S.STOPPED, S.STARTING), (S.STARTING, S.BACKOFF)]


def test_spawn_errors_reach_fatal() -> None:
    rig = make(start_retries=3)
    rig.ops.fail = "no such user: ghost"
    rig.node.start()
    rig.clock.fire()
    rig.clock.fire()
    assert rig.node.state is S.FATAL
    assert rig.node.retries == 3
    assert not rig.clock.pending()


def test_backoff_timer_respawns() -> None:
    # BACKOFF --timer--> STARTING
    rig = to_state(S.BACKOFF)
    before = len(rig.ops.spawned)
    rig.clock.fire()
    assert rig.node.state is S.STARTING
    assert len(rig.ops.spawned) == before + 1
    assert rig.node.pid == rig.ops.spawned[-1]


def test_stop_in_backoff_cancels_the_retry() -> None:
    # BACKOFF --stop--> STOPPED
    rig = to_state(S.BACKOFF)
    before = len(rig.ops.spawned)
    rig.node.stop()
    assert rig.node.state is S.STOPPED
    assert not rig.clock.pending()
    assert rig.ops.signals == []  # there is no process to signal
    rig.clock.advance(3600)
    assert len(rig.ops.spawned) == before


@pytest.mark.parametrize("policy,status,expect", [
    ("always", CLEAN, S.STARTING),
    ("always", FAILED, S.STARTING),
    ("on-failure", CLEAN, S.EXITED),
    ("on-failure", FAILED, S.STARTING),
    ("on-failure", KILLED, S.STARTING),
    ("on-failure", ExitStatus(), S.STARTING),  # adopted: unknown counts as a failure
    ("no", FAILED, S.EXITED),
    ("no", CLEAN, S.EXITED),
])
def test_running_exit_follows_the_restart_policy(policy: str, status: ExitStatus,
                                                  expect: NodeState) -> None:
    # RUNNING --exit--> STARTING or EXITED
    rig = to_state(S.RUNNING, restart=policy)
    old = rig.node.pid
    spawned = len(rig.ops.spawned)
    rig.node.on_exit(status)
    assert rig.node.state is expect
    assert rig.node.exit_status == status  # recorded either way
    assert rig.ops.forgotten[-1] == old
    if expect is S.STARTING:
        assert rig.node.restarts == 1
        assert len(rig.ops.spawned) == spawned + 1  # at once, no delay
        assert rig.node.pid not in (None, old)
        assert rig.clock.next_delay() == pytest.approx(rig.node.spec.policy.start_secs)
    else:
        assert rig.node.restarts == 0
        assert rig.node.pid is None
        assert len(rig.ops.spawned) == spawned
        assert not rig.clock.pending()


@pytest.mark.parametrize("state", [S.STARTING, S.RUNNING])
def test_stop_signals_the_group_and_arms_the_kill_timer(state: NodeState) -> None:
    # STARTING, RUNNING --stop--> STOPPING
    rig = to_state(state, stop_signal="QUIT", stop_timeout=7.0)
    pid = rig.node.pid
    rig.node.stop()
    assert rig.node.state is S.STOPPING
    assert rig.ops.signals == [(pid, signal.SIGQUIT)]
    assert rig.ops.targets == ["main"]  # kill mode mixed: a prefork pool finishes its tasks
    assert rig.clock.next_delay() == pytest.approx(7.0)


def test_control_group_kill_mode_signals_the_whole_group() -> None:
    rig = to_state(S.RUNNING, kill_mode="control-group")
    rig.node.stop()
    assert rig.ops.targets == ["group"]


def test_the_stop_timeout_kills_the_whole_group_in_mixed_mode() -> None:
    rig = to_state(S.RUNNING, stop_timeout=3.0)
    rig.node.stop()
    rig.clock.fire()
    assert rig.ops.targets == ["main", "group"]
    assert rig.ops.signals[-1][1] == signal.SIGKILL


def test_stop_timeout_sends_sigkill() -> None:
    rig = to_state(S.RUNNING, stop_timeout=2.0)
    pid = rig.node.pid
    rig.node.stop()
    assert rig.clock.fire() == pytest.approx(2.0)
    assert rig.ops.signals == [(pid, signal.SIGTERM), (pid, signal.SIGKILL)]
    assert rig.ops.targets[-1] == "group"
    assert rig.node.state is S.STOPPING  # still, until the exit is seen
    rig.node.on_exit(KILLED)
    assert rig.node.state is S.STOPPED


def test_a_stop_that_had_to_sigkill_is_remembered_until_the_next_stop() -> None:
    rig = to_state(S.RUNNING, stop_timeout=2.0)
    rig.node.stop()
    assert rig.node.stop_forced is None  # not yet: TERM may do
    rig.clock.fire()
    rig.node.on_exit(KILLED)
    assert rig.node.stop_forced == ("killed with SIGKILL: still running 2s after SIGTERM, "
                                    "the stop timeout")
    rig.node.start()  # a restart's answer still says it
    assert rig.node.stop_forced is not None
    rig.clock.fire()  # RUNNING
    rig.node.stop()
    rig.node.on_exit(ExitStatus(signal=signal.SIGTERM))  # went on TERM this time
    assert rig.node.state is S.STOPPED and rig.node.stop_forced is None


def test_exit_while_stopping_is_stopped() -> None:
    # STOPPING --exit--> STOPPED
    rig = to_state(S.STOPPING)
    pid = rig.node.pid
    spawned = len(rig.ops.spawned)
    rig.node.on_exit(ExitStatus(signal=signal.SIGTERM))
    assert rig.node.state is S.STOPPED
    assert rig.ops.forgotten[-1] == pid
    assert not rig.clock.pending()  # the kill timer is cancelled
    assert len(rig.ops.spawned) == spawned  # a stop is not restarted
    assert rig.node.restarts == 0


def test_adopt_is_running_and_restarted_when_it_dies() -> None:
    # (start-up) --PID file names this node--> RUNNING
    rig = make()
    rig.node.adopt(4242, started_wall=0.0)
    assert rig.node.state is S.RUNNING
    assert rig.node.pid == 4242 and rig.node.adopted
    assert rig.ops.spawned == []  # no duplicate
    rig.node.on_exit(ExitStatus())  # status unknown: not our child
    assert rig.node.state is S.STARTING
    assert rig.ops.forgotten == [4242]
    assert rig.node.pid == rig.ops.spawned[-1]
    assert not rig.node.adopted


# ------------------------------------------------------ backoff and FATAL

def test_backoff_delays_double_and_are_capped() -> None:
    rig = make(start_retries=8, backoff_max=5.0)
    rig.node.start()
    delays = []
    for _ in range(6):
        rig.node.on_exit(FAILED)
        assert rig.node.state is S.BACKOFF
        delays.append(rig.clock.fire())  # -> STARTING again
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_backoff_cap_below_one_second() -> None:
    rig = make(start_retries=4, backoff_max=0.2)
    rig.node.start()
    delays = []
    for _ in range(3):
        rig.node.on_exit(FAILED)
        delays.append(rig.clock.fire())
    assert delays == [pytest.approx(0.2)] * 3


def test_fatal_after_start_retries_and_start_clears_it() -> None:
    rig = make(start_retries=3)
    rig.node.start()
    for _ in range(2):
        rig.node.on_exit(FAILED)
        assert rig.node.state is S.BACKOFF
        rig.clock.fire()
    rig.node.on_exit(FAILED)
    assert rig.node.state is S.FATAL  # STARTING -> FATAL
    assert rig.node.retries == 3
    assert not rig.clock.pending()  # it stays down...
    rig.clock.advance(3600)
    assert len(rig.ops.spawned) == 3
    rig.node.start()  # ...until a start
    assert rig.node.state is S.STARTING
    assert rig.node.retries == 0
    rig.node.on_exit(FAILED)  # the count starts over: one failure is a BACKOFF
    assert rig.node.state is S.BACKOFF


def test_start_retries_one_is_fatal_on_first_failure() -> None:
    rig = make(start_retries=1)
    rig.node.start()
    rig.node.on_exit(FAILED)
    assert rig.node.state is S.FATAL


# ---------------------------------------------------------------- crash loop

def run_and_crash(rig: Rig, up: float) -> None:
    """The node is STARTING: let it reach RUNNING, stay up ``up`` s, die."""
    rig.clock.fire()
    assert rig.node.state is S.RUNNING
    rig.clock.advance(up)
    rig.node.on_exit(KILLED)


def test_crash_loop_after_running_backs_off(caplog: pytest.LogCaptureFixture) -> None:
    rig = make(restart_burst=3, restart_window=60.0, start_secs=0.5)
    rig.node.start()
    for _ in range(3):
        run_and_crash(rig, 1.0)
        assert rig.node.state is S.STARTING  # restarted at once
    with caplog.at_level(logging.INFO, logger="test_node"):
        run_and_crash(rig, 1.0)  # the 4th exit within the window: more than the burst
    assert rig.node.state is S.BACKOFF
    assert rig.transitions[-1] == (S.RUNNING, S.BACKOFF)
    assert "crash loop" in caplog.text
    assert rig.node.restarts == 3
    assert rig.clock.next_delay() == pytest.approx(1.0)
    rig.clock.fire()
    assert rig.node.state is S.STARTING
    # a second loop right away waits twice as long
    for _ in range(4):
        run_and_crash(rig, 1.0)
    assert rig.node.state is S.BACKOFF
    assert rig.clock.next_delay() == pytest.approx(2.0)


def test_exits_spread_beyond_the_window_are_not_a_loop() -> None:
    rig = make(restart_burst=2, restart_window=10.0, start_secs=0.5)
    rig.node.start()
    for _ in range(10):
        run_and_crash(rig, 6.0)  # one exit every 6.5 s: at most 2 within 10 s
        assert rig.node.state is S.STARTING
    assert rig.node.restarts == 10


def test_stop_during_crash_loop_backoff() -> None:
    rig = make(restart_burst=0, start_secs=0.5)
    rig.node.start()
    run_and_crash(rig, 0.1)
    assert rig.node.state is S.BACKOFF
    rig.node.stop()
    assert rig.node.state is S.STOPPED
    assert not rig.clock.pending()


# ------------------------------------------------------------ no-ops, waiters

def test_commands_that_do_not_apply_are_no_ops() -> None:
    running = to_state(S.RUNNING)
    running.node.start()
    assert running.node.state is S.RUNNING and running.transitions == []
    stopped = to_state(S.STOPPED)
    stopped.node.stop()
    assert stopped.node.state is S.STOPPED and stopped.ops.signals == []
    stopping = to_state(S.STOPPING)
    stopping.node.stop()
    stopping.node.start()
    assert stopping.node.state is S.STOPPING and stopping.transitions == []


def test_waiters_are_woken_once_their_condition_holds() -> None:
    rig = make()
    woken: list[NodeState] = []
    rig.node.add_waiter(lambda n: n.state is S.RUNNING, lambda n: woken.append(n.state))
    rig.node.start()
    assert woken == []  # STARTING is not what it waits for
    rig.clock.fire()
    assert woken == [S.RUNNING]
    rig.node.on_exit(KILLED)
    rig.clock.fire()
    assert woken == [S.RUNNING]  # woken once, then dropped


def test_waiter_already_satisfied_is_woken_at_once() -> None:
    rig = make()
    woken: list[str] = []
    rig.node.add_waiter(lambda n: n.state is S.STOPPED, lambda n: woken.append("now"))
    assert woken == ["now"]


def test_a_start_waiter_sees_fatal() -> None:
    rig = make(start_retries=2)
    settled: list[NodeState] = []
    rig.node.add_waiter(lambda n: n.state in (S.RUNNING, S.FATAL),
                        lambda n: settled.append(n.state))
    rig.node.start()
    rig.node.on_exit(FAILED)
    rig.clock.fire()
    assert settled == []
    rig.node.on_exit(FAILED)
    assert settled == [S.FATAL]


def test_state_changes_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    rig = make()
    with caplog.at_level(logging.INFO, logger="test_node"):
        rig.node.start()
        rig.clock.fire()
    pid = rig.node.pid
    assert f"alpha: STOPPED -> STARTING (start requested; pid {pid})" in caplog.text
    assert "alpha: STARTING -> RUNNING" in caplog.text


def test_exit_status_strings() -> None:
    assert str(ExitStatus(code=3)) == "exit status 3"
    assert str(ExitStatus(signal=signal.SIGKILL)) == "killed by SIGKILL"
    assert ExitStatus(signal=9).as_int == -9
    assert ExitStatus(code=0).clean and not ExitStatus().clean


# ------------------------------------------------ intent, errors, restore


def test_an_illegal_transition_raises_even_under_python_O() -> None:
    from stem_core.states import IllegalTransition

    rig = make()
    with pytest.raises(IllegalTransition, match="STOPPED -> STOPPING"):
        Node._set_state(rig.node, S.STOPPING, "test")


def test_a_spawn_error_is_kept_as_last_error_until_running() -> None:
    rig = make(start_retries=2)
    rig.ops.fail = "/opt/app/worker: No such file or directory"
    rig.node.start()
    assert rig.node.state is S.BACKOFF
    rig.clock.fire()
    assert rig.node.state is S.FATAL
    assert rig.node.last_error == "cannot start: /opt/app/worker: No such file or directory"
    rig.ops.fail = None
    rig.node.start()
    rig.clock.fire()
    assert rig.node.state is S.RUNNING
    assert rig.node.last_error is None


def test_a_shortage_of_descriptors_is_retried_and_never_fatal() -> None:
    import errno

    rig = make(start_retries=1)
    rig.ops.fail, rig.ops.fail_errno = "cannot open log file /l: Too many open files", \
        errno.EMFILE
    rig.node.start()
    for _ in range(5):
        assert rig.node.state is S.BACKOFF
        assert rig.node.retries == 0
        rig.clock.fire()
    rig.ops.fail = None
    rig.clock.fire()
    assert rig.node.state is S.STARTING


def test_a_closed_node_never_starts_again() -> None:
    # the master's shutdown closes every node before it stops them
    rig = to_state(S.STOPPED)
    rig.node.closed = True
    rig.node.start()
    assert rig.node.state is S.STOPPED
    assert rig.ops.spawned == []


@pytest.mark.parametrize("state", [S.EXITED, S.FATAL])
def test_restore_keeps_the_verdict_of_the_previous_master(state: NodeState) -> None:
    rig = make()
    rig.node.restore(wanted=True, restarts=7, exit_status=ExitStatus(code=3),
                     last_error="pid 9 exit status 3", state=str(state))
    assert rig.node.state is state
    assert rig.node.restarts == 7
    assert rig.ops.spawned == []


def test_restore_of_a_stopped_node_keeps_the_operators_stop() -> None:
    rig = make()
    rig.node.restore(wanted=False, restarts=0, exit_status=None, last_error=None,
                     state="STOPPED")
    assert rig.node.state is S.STOPPED and not rig.node.wanted


@pytest.mark.parametrize("policy,status,expect,error", [
    ("on-failure", ExitStatus(code=2), S.EXITED, False),   # declared expected
    ("on-failure", CLEAN, S.EXITED, False),
    ("on-failure", ExitStatus(code=3), S.STARTING, None),  # not declared: restarted
    ("on-failure", ExitStatus(signal=2), S.STARTING, None),  # a signal never is expected
    ("no", ExitStatus(code=2), S.EXITED, False),
    ("no", ExitStatus(code=3), S.EXITED, True),            # EXITED, with the reason
])
def test_exitcodes_are_the_expected_statuses(policy: str, status: ExitStatus,
                                             expect: NodeState, error: bool | None) -> None:
    rig = to_state(S.RUNNING, restart=policy, exitcodes=(0, 2))
    rig.node.on_exit(status)
    assert rig.node.state is expect
    if error is not None:
        assert (rig.node.last_error is not None) is error


def test_the_default_exitcodes_are_zero_only() -> None:
    rig = to_state(S.RUNNING, restart="on-failure")
    rig.node.on_exit(ExitStatus(code=2))
    assert rig.node.state is S.STARTING


def test_a_closed_node_that_exits_is_not_restarted() -> None:
    # A shutdown stops priority groups one after the other: a node of a
    # later group that dies meanwhile must not be respawned.
    rig = to_state(S.RUNNING, restart="always")
    rig.node.closed = True
    spawned = len(rig.ops.spawned)
    rig.node.on_exit(FAILED)
    assert rig.node.state is S.EXITED and len(rig.ops.spawned) == spawned
