"""The storm of test_stress_intent.py with the master's own end among its moves,
then the same invariants (that module's docstring lists them, 1-5).

Besides the clients' commands, the storm

- kills the master with ``kill -9`` and, 0-0.8 s later, starts ``stemd``
  again, which adopts the running nodes (docs/architecture.md, "Surviving a
  master crash"); now and then it kills that new master too, during its
  start-up, and starts another;
- runs ``stemctl shutdown`` while clients still run, waits for them, and
  starts ``stemd`` afresh;
- runs ``stemctl scale worker N`` (nodes added or removed until the next
  reload).

The file is also rewritten while no master runs: a node adopted from an older
file shows as ``outdated``, and the next reload restarts it as changed.
What these moves must leave, beside invariants 1-5:

6. a client that lived while no master was ready may exit 3 (not running) but
   never crashes; every ``stemd`` after a ``kill -9`` answers 0, or 5 (a node
   the storm stopped or killed was not RUNNING in time);
7. once ``stemctl shutdown`` answers 0, no process of the fleet is left, the
   master is gone and so is its state file; the ``stemd`` after it runs every
   node of the file, RUNNING, wanted up, none adopted;
8. when a new master is ready, no node has two main processes alive;
9. no earlier master is alive at the end; a final reload after the file was
   applied (by a reload or a ``stemd`` launched after the last rewrite and
   after every scale) changes the outdated nodes and nothing else, and no
   node is outdated after it.

Two seeds run by default (``make test``); more with::

    STRESS_CRASH_SEEDS=1-20 .venv/bin/python -m pytest -m slow \\
        tests/integration/test_stress_crash.py

The seed fixes the commands and the jitter between them, but a master is
killed or shut down only when one is ready, so which moves happen depends on
the master's timing too: a failure may take a few runs of its seed to recur.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections import Counter

import psutil
import pytest

# the shared storm: a module beside this one, imported as conftest is (test_adoption.py)
from test_stress_intent import Storm, check_processes, fleet_processes, seeds, storm_then_check

from tests.fleet import STEMD, Fleet, pid_alive, wait_until

# Odds of a step's move, cumulative; past SHUTDOWN, a move of the plain storm.
CRASH, SCALE, SHUTDOWN = 0.06, 0.14, 0.16
STARTUP_KILL = 0.3  # odds that a master started after a crash is killed in its start-up
OPEN = float("inf")  # the end of a time without a master that has not ended


class CrashStorm(Storm):
    REPRODUCE = ("STRESS_CRASH_SEEDS={seed} .venv/bin/python -m pytest -m slow "
                 "tests/integration/test_stress_crash.py")

    def __init__(self, fleet: Fleet, seed: int) -> None:
        super().__init__(fleet, seed)
        self.launcher: subprocess.Popen[str] | None = None  # a stemd launch under way
        self.launched_at = 0.0
        self.relaunch_at: float | None = None  # when stemd is to be started again
        self.startup_kill_at: float | None = None  # from when to kill the launch's master
        self.killed_in_startup = False
        self.moves: Counter[str] = Counter()  # what the storm did, for the test's output

    def step(self) -> None:
        roll = self.rng.random()
        if roll < CRASH:
            self.crash_master()
        elif roll < SCALE:
            # below the file's count only now and then: the per-node options
            # name the file's nodes
            low = 2 if self.rng.random() < 0.15 else len(self.nodes)
            self.launch("scale", "worker", str(self.rng.randint(low, 8)))
            self.moves["scale"] += 1
        elif roll < SHUTDOWN:
            self.clean_restart()
        else:
            self.command()

    # ----------------------------------------------------------- masters
    def ready(self) -> bool:
        """A master answered ready, and none is being killed or started."""
        return self.launcher is None and self.relaunch_at is None and self.master is not None

    def ours(self, pid: int) -> bool:
        """Is ``pid`` a live stemd of this fleet (not a process that reused its PID)?"""
        try:
            return pid_alive(pid) and str(self.fleet.config) in " ".join(
                psutil.Process(pid).cmdline())
        except psutil.Error:
            return False

    def master_down(self) -> None:
        self.windows.append([self.now(), OPEN])

    def master_back(self) -> None:
        for window in self.windows:
            if window[1] == OPEN:
                window[1] = self.now()

    def crash_master(self) -> None:
        """``kill -9`` the ready master; stemd is started again soon."""
        if not self.ready():
            return
        pid = self.master
        assert pid is not None
        if not self.ours(pid):
            self.problems.append(f"the master (pid {pid}) is gone before its kill -9")
            return
        self.master_down()
        os.kill(pid, signal.SIGKILL)  # a master this storm started: its PID only
        try:
            wait_until(lambda: not pid_alive(pid), 5, what=f"the master {pid} gone")
        except AssertionError as exc:
            self.problems.append(f"kill -9: {exc}")
        self.master = None
        delay = self.rng.choice([0.0, self.rng.uniform(0, 0.15), self.rng.uniform(0.1, 0.8)])
        self.relaunch_at = self.now() + delay
        self.moves["kill -9"] += 1
        self.events.append(f"{self.now():7.3f} master {pid} kill -9; stemd again in {delay:.3f}s")

    def launch_master(self) -> None:
        self.relaunch_at = None
        self.launched_at = self.now()
        self.launcher = subprocess.Popen([STEMD, "--config", str(self.fleet.config)],
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         text=True, stdin=subprocess.DEVNULL,
                                         env=self.fleet.env())
        self.events.append(f"{self.now():7.3f} stemd launched")
        self.startup_kill_at = None
        if self.rng.random() < STARTUP_KILL:
            self.startup_kill_at = self.now() + self.rng.uniform(0.0, 0.3)

    def poll(self, wait: bool = False) -> None:
        """Start stemd when due, kill its master in its start-up when due,
        and take its answer (with ``wait``: wait for it)."""
        if self.relaunch_at is not None and (wait or self.now() >= self.relaunch_at):
            self.launch_master()
        if self.launcher is None:
            return
        if not wait and self.startup_kill_at is not None and self.now() >= self.startup_kill_at:
            self.kill_in_startup()
        if wait:
            try:
                self.launcher.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.launcher.kill()  # the launcher this storm started
                self.problems.append("a stemd launch did not answer within 60 s")
        if self.launcher.poll() is not None:
            self.answered(self.launcher)

    def kill_in_startup(self) -> None:
        """``kill -9`` the master the launch under way started, once its PID
        file names it, if the launch has not answered yet (else the next poll
        looks again)."""
        assert self.launcher is not None
        pid = self.fleet.master_pid()
        if self.launcher.poll() is not None or pid is None or pid in self.masters \
                or not self.ours(pid):
            return
        self.startup_kill_at = None
        self.masters.append(pid)
        os.kill(pid, signal.SIGKILL)  # the master our launcher started: its PID only
        self.killed_in_startup = True
        self.moves["kill -9 in start-up"] += 1
        self.events.append(f"{self.now():7.3f} master {pid} kill -9 in its start-up")

    def answered(self, launcher: subprocess.Popen[str]) -> None:
        out, err = launcher.communicate()
        self.launcher = None
        said = " ".join((out + err).split())[:300]
        self.events.append(f"{self.now():7.3f} stemd (launched {self.launched_at:.3f}) "
                           f"answered {launcher.returncode} :: {said}")
        if self.startup_kill_at is not None:
            self.startup_kill_at = None
            self.events.append(f"{self.now():7.3f} (stemd answered before its master could be "
                               "killed in its start-up)")
        if self.killed_in_startup:  # its master was killed: whatever it said, again
            self.killed_in_startup = False
            self.relaunch_at = self.now() + self.rng.uniform(0, 0.3)
            return
        if launcher.returncode == 0:
            self.applies.append(self.launched_at)
        elif launcher.returncode != 5:  # 5: a node not RUNNING in time
            self.problems.append(f"stemd after a kill -9 exited {launcher.returncode}: "
                                 f"{err.strip()[-300:]}")
        self.found_master("stemd after a kill -9")
        if self.master is not None:
            self.master_back()
        self.moves["adopting start"] += 1
        self.check_single_mains()

    def check_single_mains(self) -> None:
        """Invariant 8. A scan is not atomic: a main process seen before it
        exited and its successor seen after are not two at once, so those
        found twice must still both be alive after the scan."""
        leaders: dict[str, list[int]] = {}
        for proc in fleet_processes(self.fleet):
            if proc["pid"] == proc["sid"]:
                leaders.setdefault(proc["node"], []).append(proc["pid"])
        for name, pids in leaders.items():
            alive = [pid for pid in pids if pid_alive(pid)]
            if len(alive) > 1:
                self.problems.append(f"{name} has main processes {alive} when the master "
                                     f"{self.master} is ready")

    def clean_restart(self) -> None:
        """``stemctl shutdown`` while the storm's clients run; once they have
        all ended, ``stemd`` again: a fresh start, every node wanted up."""
        if not self.ready():
            return
        old = self.master
        assert old is not None
        self.master_down()
        self.launch("shutdown")
        shutdown = self.clients[-1]
        try:
            shutdown.proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            self.problems.append("stemctl shutdown did not answer within 90 s")
        left = fleet_processes(self.fleet)  # at once: "stopped" means stopped
        shutdown.ended = self.now()
        rc = shutdown.proc.returncode
        self.events.append(f"{self.now():7.3f} shutdown answered {rc}; fleet processes left: "
                           f"{[(p['pid'], p['node']) for p in left]}")

        def clients_ended() -> bool:
            self.note_endings()
            return not self.live()
        try:
            wait_until(clients_ended, 60, interval=0.02, what="the clients of the storm ended")
            wait_until(lambda: not pid_alive(old), 5, what=f"the master {old} gone")
        except AssertionError as exc:
            self.problems.append(f"after stemctl shutdown: {exc}")
        if rc != 0:
            self.problems.append(f"stemctl shutdown exited {rc}")
            if pid_alive(old):
                return  # never two masters
        elif left:
            self.problems.append(f"stemctl shutdown answered 0 while fleet processes ran: {left}")
        if rc == 0 and (self.fleet.run_dir / "stemd.state").exists():
            self.problems.append("the state file is there after a clean shutdown")
        self.master = None
        self.launched_at = self.now()
        result = self.fleet.stemd()
        self.moves["clean restart"] += 1
        self.events.append(f"{self.now():7.3f} stemd (clean start) answered {result.returncode} "
                           f"{' '.join((result.stdout + result.stderr).split())[:300]}")
        self.found_master("stemd after a clean shutdown")
        if self.master is not None:
            self.master_back()
        if result.returncode != 0:
            self.problems.append(f"stemd after a clean shutdown exited {result.returncode}: "
                                 f"{result.stderr.strip()[-300:]}")
            return
        self.applies.append(self.launched_at)
        nodes = self.fleet.status()
        if sorted(nodes) != sorted(self.nodes):
            self.problems.append(f"after a clean start the master has {sorted(nodes)}, "
                                 f"the file {sorted(self.nodes)}")
        for name, info in nodes.items():
            if info["wanted"] != "up" or info["state"] != "RUNNING" or info["adopted"]:
                self.problems.append(f"after a clean start {name} is {info['state']}, wanted "
                                     f"{info['wanted']}, adopted {info['adopted']}")
        self.problems += [f"after a clean start: {p}"
                          for p in check_processes(self.fleet, nodes, self.master or 0)]

    def settle(self) -> None:
        while self.relaunch_at is not None or self.launcher is not None:
            self.poll(wait=True)

    def cleanup(self) -> None:
        """Kill the launch under way and every master of the storm left alive."""
        if self.launcher is not None and self.launcher.poll() is None:
            self.launcher.kill()
            self.launcher.communicate()
        for pid in self.masters:
            if self.ours(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)  # a master this storm started


#: by default, two seeds that kill, shut down and scale in most runs (~9 s each)
DEFAULT_SEEDS = [6, 20]


@pytest.mark.slow
@pytest.mark.parametrize("seed", seeds("STRESS_CRASH_SEEDS", DEFAULT_SEEDS))
def test_a_storm_with_master_crashes_leaves_what_the_operator_asked_for(fleet: Fleet, seed: int
                                                                        ) -> None:
    storm = CrashStorm(fleet, seed)
    try:
        storm_then_check(storm)
    finally:
        print(f"seed {seed}: {dict(storm.moves)}; masters {storm.masters}")
