"""A seeded, randomized storm of overlapping commands against a real fleet, then
the invariants of the operator's intent (SPEC §2.1, §3; docs/architecture.md,
"Commands, intent and shutdown") checked once the master is quiet.

Several `stemctl` processes run at once: start, stop, stop --no-wait, restart,
reload after a rewrite of the config (a node's version word bumped, a node
added or removed), `kill -s KILL` of a node (a crash), and some clients are
SIGKILLed mid-command. The nodes take 0.1-0.3 s to stop on TERM and leave a
child in their process group. Each node's argv ends in ``--ver=N``, a number
given once per config rewrite, so a process tells which config it runs.

Once every client has exited and the master has been quiet for a while, the
end state must be the one the commands asked for:

1. a node wanted up is RUNNING; a node wanted down is STOPPED (or EXITED, if a
   `kill -s KILL` hit it after the stop was asked: it is not restarted);
2. exactly one main process per RUNNING node, its pid the status pid and the
   PID file's content; every other process of the fleet is in the session of
   a RUNNING node of its own name; no process or PID file for any other node,
   nor for a node the configuration no longer has;
3. after a final `stemctl reload` (exit 0; no change to apply if a reload
   launched after the last rewrite answered 0, but a restart of the nodes
   that `status` shows ``outdated``), every RUNNING node's argv is the config
   file's for it, and none is outdated;
4. the master is the one started (the last one), alive and answering, and no
   earlier one is; it has no zombie child; its log has no traceback or
   illegal transition; no client crashed;
5. the state file names the master and each node's intent as the master has
   it, and no node a reload or scale removed.

A failure prints the seed, the command log (times, exit codes, output) and the
master log's tail. Reproduce one with::

    STRESS_INTENT_SEEDS=17 .venv/bin/python -m pytest -m slow \
        tests/integration/test_stress_intent.py

(``STRESS_INTENT_SEEDS=1-20`` runs seeds 1 to 20.) The seed fixes the commands
and the jitter between them; the master's timing still varies from run to run.

The storm's machinery here is shared with test_stress_crash.py, the same storm
with master crashes, clean restarts and ``stemctl scale`` among the commands.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import time
from typing import Any

import psutil
import pytest

from stem_core.errors import PidFileError
from stem_core.statefile import read_state
from tests.fleet import STEMCTL, Fleet, pid_alive

# Stops in 0.1-0.3 s (by its pid) on TERM; keeps a child in its process group.
NODE_SCRIPT = """\
#!/bin/sh
trap 'sleep 0.$(( $$ % 3 + 1 )); exit 0' TERM
while :; do sleep 1000 & wait $!; done
"""

POOL = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta"]
MIN_NODES, MAX_NODES = 4, 6
STEPS = 40  # commands per seed
MAX_CLIENTS = 6  # clients running at once
JITTER = 0.12  # most seconds between two launches
START_SECS = 0.3
TRANSITIONAL = {"STARTING", "STOPPING", "BACKOFF"}
QUIET = 1.2  # seconds without a change in status or master log: the master is idle


def seeds(variable: str, default: list[int]) -> list[int]:
    """The seeds an environment variable names (``17``, ``1-20``, ``3,5``)."""
    given = os.environ.get(variable, "").strip()
    if not given:
        return default
    seeds: list[int] = []
    for part in given.replace(",", " ").split():
        low, _, high = part.partition("-")
        seeds += range(int(low), int(high or low) + 1)
    return seeds


@dataclasses.dataclass
class Client:
    args: list[str]
    launched: float
    proc: subprocess.Popen[str]
    killed_at: float | None = None
    ended: float | None = None
    rc: int | None = None
    out: str = ""
    err: str = ""

    def line(self) -> str:
        end = f"{self.ended:7.3f}" if self.ended is not None else "   ?   "
        kill = f" SIGKILLed at {self.killed_at:.3f}" if self.killed_at is not None else ""
        text = " ".join((self.out.strip() + " | " + self.err.strip()).split())
        return (f"{self.launched:7.3f}-{end} rc={self.rc} stemctl {' '.join(self.args)}{kill}"
                f"  :: {text[:160]}")


class Storm:
    #: how a failure report says to run the seed again
    REPRODUCE = ("STRESS_INTENT_SEEDS={seed} .venv/bin/python -m pytest -m slow "
                 "tests/integration/test_stress_intent.py")

    def __init__(self, fleet: Fleet, seed: int) -> None:
        self.fleet = fleet
        self.seed = seed
        self.rng = random.Random(seed)
        self.script = fleet.script("node.sh", NODE_SCRIPT)
        self.generation = 1
        self.nodes = POOL[:5]
        self.versions = dict.fromkeys(self.nodes, 1)
        self.t0 = time.monotonic()
        self.clients: list[Client] = []
        self.events: list[str] = []  # config rewrites, node kills: the test's own moves
        self.last_write = 0.0  # when the config was last rewritten
        self.masters: list[int] = []  # every master started, the killed ones too
        self.master: int | None = None  # the current, ready master
        self.windows: list[list[float]] = []  # [from, to]: no ready master (to: inf, open)
        self.applies: list[float] = []  # stemd launches that answered 0: the file applied
        self.problems: list[str] = []  # found while the storm ran
        self.write_config()

    def begin(self) -> None:
        """Start the master; the storm's clock starts once it is ready."""
        self.fleet.start()
        self.found_master("the first start")
        self.t0 = time.monotonic()
        self.last_write = 0.0

    def found_master(self, why: str) -> None:
        """The master stemd said ready: the one its PID file names."""
        pid = self.fleet.master_pid()
        if pid is None or not pid_alive(pid):
            self.problems.append(f"{why}: no live master once stemd answered (PID file: {pid})")
            self.master = None
            return
        self.master = pid
        if pid not in self.masters:
            self.masters.append(pid)

    def now(self) -> float:
        return time.monotonic() - self.t0

    # ------------------------------------------------------------ config
    def write_config(self) -> None:
        """Write the env file atomically: a reload (or a stemctl reading the
        file for its socket) never reads half of it."""
        real = self.fleet.config
        staged = real.with_name(real.name + ".new")
        opts = " ".join(f"--ver:{n}={self.versions[n]}" for n in self.nodes)
        self.fleet.config = staged
        try:
            self.fleet.write(nodes=" ".join(self.nodes), command=self.script, opts=opts,
                             start_secs=START_SECS, start_retries=1000, restart_burst=1000,
                             stop_timeout=5)
        finally:
            self.fleet.config = real
        os.replace(staged, real)
        self.last_write = self.now()

    def rewrite(self) -> None:
        self.generation += 1
        for name in self.rng.sample(self.nodes, self.rng.randint(1, 3)):
            self.versions[name] = self.generation
        roll = self.rng.random()
        if roll < 0.15 and len(self.nodes) < MAX_NODES:
            name = self.rng.choice([n for n in POOL if n not in self.nodes])
            self.nodes.append(name)
            self.versions[name] = self.generation
        elif roll < 0.3 and len(self.nodes) > MIN_NODES:
            name = self.rng.choice(self.nodes)
            self.nodes.remove(name)
            del self.versions[name]
        self.write_config()
        self.events.append(f"{self.now():7.3f} config rewritten: "
                           + " ".join(f"{n}=v{self.versions[n]}" for n in self.nodes))

    # ----------------------------------------------------------- clients
    def launch(self, *args: str) -> None:
        proc = subprocess.Popen([STEMCTL, "--config", str(self.fleet.config), *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                stdin=subprocess.DEVNULL, env=self.fleet.env())
        self.clients.append(Client(list(args), self.now(), proc))

    def live(self) -> list[Client]:
        return [c for c in self.clients if c.proc.poll() is None]

    def names(self, every: float = 0.15) -> list[str]:
        """No name (every node) now and then, else one or two of the file's."""
        if self.rng.random() < every:
            return []
        return self.rng.sample(self.nodes, self.rng.randint(1, 2))

    def step(self) -> None:
        self.command()

    def command(self) -> None:
        """One of the plain storm's moves: a client, a rewrite, a kill."""
        roll = self.rng.random()
        if roll < 0.18:
            self.launch("start", *self.names())
        elif roll < 0.28:
            self.launch("stop", *self.names(every=0.08))
        elif roll < 0.37:
            self.launch("stop", "--no-wait", *self.names(every=0.08))
        elif roll < 0.54:
            self.launch("restart", *self.names(every=0.3))
        elif roll < 0.72:
            self.rewrite()
            self.launch("reload")
        elif roll < 0.85:
            self.launch("kill", "-s", "KILL", self.rng.choice(self.nodes))
        else:
            live = self.live()
            if live:  # mostly the newest: a command under way, not one still queued
                victim = live[-1] if self.rng.random() < 0.5 else self.rng.choice(live)
                victim.proc.send_signal(signal.SIGKILL)  # a client we started: its PID only
                victim.killed_at = self.now()

    def run(self) -> None:
        for _ in range(STEPS):
            deadline = time.monotonic() + 60
            while len(self.live()) >= MAX_CLIENTS:
                self.note_endings()
                self.poll()
                assert time.monotonic() < deadline, "no client ended in 60 s"
                time.sleep(0.02)
            self.note_endings()
            self.poll()
            self.step()
            time.sleep(self.rng.uniform(0, JITTER))  # the jitter between launches
        self.settle()

    def poll(self) -> None:
        """Between two moves: what the storm started besides clients (none here)."""

    def settle(self) -> None:
        """After the last move: wait for what poll() watches (nothing here)."""

    def cleanup(self) -> None:
        """Kill what the storm started beside the fleet (nothing here)."""

    def finish_clients(self, timeout: float = 60) -> list[str]:
        """Wait for every client; what went wrong with them (a hang, a crash)."""
        problems = []
        deadline = time.monotonic() + timeout
        for client in self.clients:
            try:
                out, err = client.proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                client.proc.kill()
                out, err = client.proc.communicate()
                problems.append(f"client did not end within {timeout}s: {client.args}")
            if client.ended is None:
                client.ended = self.now()
            client.rc, client.out, client.err = client.proc.returncode, out, err
            if client.killed_at is not None:
                continue
            if "Traceback" in err:
                problems.append(f"stemctl {' '.join(client.args)} crashed: {err[-400:]}")
            if client.rc == 3 and self.master_was_down(client):
                continue  # "master not running": it was not, during the client's life
            if client.rc in (3, 4) or client.rc is None or client.rc < 0:
                problems.append(f"stemctl {' '.join(client.args)} exited {client.rc}")
        return problems

    def master_was_down(self, client: Client) -> bool:
        """Did no ready master run at some time of the client's life?"""
        end = client.ended if client.ended is not None else float("inf")
        return any(client.launched <= w[1] and end >= w[0] for w in self.windows)

    def note_endings(self) -> None:
        """Record when each client ended (polled while the storm goes on)."""
        for client in self.clients:
            if client.ended is None and client.proc.poll() is not None:
                client.ended = self.now()

    def reload_applied_last_write(self) -> bool:
        """A reload or a stemd launched after the last rewrite (and after
        every scale had ended) answered 0: the master runs the file's
        configuration, and a further reload has nothing to change but the
        nodes it adopted from an older file (``outdated``)."""
        times = [c.launched for c in self.clients if c.args == ["reload"]
                 and c.killed_at is None and c.rc == 0] + self.applies
        scales = [c for c in self.clients if c.args[:1] == ["scale"]]
        return any(t >= self.last_write and all(
            c.killed_at is None and c.ended is not None and c.ended < t for c in scales)
            for t in times)

    def report(self, problems: list[str], status: Any = None) -> str:
        log_tail = "\n".join(self.fleet.master_log().splitlines()[-80:])
        lines = [f"seed {self.seed}: {len(problems)} invariant violation(s)",
                 *(f"  - {p}" for p in problems),
                 "reproduce: " + self.REPRODUCE.format(seed=self.seed),
                 f"masters started: {self.masters}",
                 f"config now: {' '.join(f'{n}=v{self.versions[n]}' for n in self.nodes)}",
                 "commands (launched-ended, seconds from the storm's start):",
                 *sorted([*(f"  {c.line()}" for c in self.clients),
                          *(f"  {e}" for e in self.events)]),
                 "status: " + json.dumps(status, indent=None, default=str),
                 "master log (tail):", log_tail]
        return "\n".join(lines)


# -------------------------------------------------------------- observation

def signature(nodes: dict[str, dict[str, Any]]) -> list[tuple[Any, ...]]:
    return sorted((n, i["state"], i["pid"], i["wanted"]) for n, i in nodes.items())


def quiet_status(fleet: Fleet, timeout: float = 40) -> tuple[dict[str, dict[str, Any]] | None,
                                                             str]:
    """The status once the master has been idle for QUIET seconds: no node
    STARTING, STOPPING or in BACKOFF, and neither the status (states, pids,
    intent) nor the master log changed meanwhile. A queued step of a client
    that went away (a restart's) shows in the log as soon as it runs, so a
    quiet log means nothing is left to run. Returns (None, why) at the deadline."""
    deadline = time.monotonic() + timeout
    log = fleet.log_dir / "stemd.log"
    since = time.monotonic()
    last: Any = None
    nodes: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        try:
            nodes = fleet.status()
        except (AssertionError, ValueError, subprocess.TimeoutExpired) as exc:
            return None, f"stemctl status failed: {exc}"
        seen = (log.stat().st_size, signature(nodes))
        if seen != last or any(i["state"] in TRANSITIONAL for i in nodes.values()):
            last, since = seen, time.monotonic()
        elif time.monotonic() - since >= QUIET:
            return nodes, ""
        time.sleep(0.1)
    return None, f"the master never settled within {timeout}s; last status: {nodes}"


def check_intent(nodes: dict[str, dict[str, Any]]) -> list[str]:
    """Invariant 1."""
    problems = []
    for name, info in nodes.items():
        if info["wanted"] == "up" and info["state"] != "RUNNING":
            problems.append(f"{name} is wanted up but {info['state']} "
                            f"(last error: {info['last_error']})")
        if info["wanted"] == "down" and info["state"] != "STOPPED" and not (
                info["state"] == "EXITED" and info["exit_status"] == -signal.SIGKILL):
            problems.append(f"{name} is wanted down but {info['state']} (pid {info['pid']})")
    return problems


def fleet_processes(fleet: Fleet) -> list[dict[str, Any]]:
    """Every live process started for the fleet (found by its marker)."""
    found = []
    for proc in psutil.process_iter(["pid", "ppid"]):
        try:
            env = proc.environ()
            if env.get("STEM_TEST_MARK") != fleet.mark or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            found.append({"pid": proc.pid, "ppid": proc.info["ppid"], "sid": os.getsid(proc.pid),
                          "node": env.get("STEMD_NODE"), "argv": proc.cmdline()})
        except (psutil.Error, OSError):
            continue
    return found


def check_processes(fleet: Fleet, nodes: dict[str, dict[str, Any]], master: int) -> list[str]:
    """Invariant 2. A node's main process leads its session; it is the
    master's child unless the master adopted it (its parent died)."""
    problems = []
    running = {n: i["pid"] for n, i in nodes.items() if i["state"] == "RUNNING"}
    procs = fleet_processes(fleet)
    mains = [p for p in procs if p["pid"] == p["sid"]]
    for name, pid in running.items():
        own = [p for p in mains if p["node"] == name]
        if [p["pid"] for p in own] != [pid]:
            problems.append(f"{name} is RUNNING with pid {pid}, its main processes are "
                            f"{[p['pid'] for p in own]}")
        elif not nodes[name]["adopted"] and own[0]["ppid"] != master:
            problems.append(f"{name} (pid {pid}, not adopted) is a child of {own[0]['ppid']}, "
                            f"not of the master {master}")
        try:
            content = (fleet.run_dir / f"{name}.pid").read_text().strip()
        except FileNotFoundError:
            content = "(none)"
        if content != str(pid):
            problems.append(f"{name} is RUNNING with pid {pid}, its PID file says {content}")
    for proc in procs:
        owner = proc["node"]
        if owner not in nodes:
            problems.append(f"pid {proc['pid']} {proc['argv']} of {owner}, a node the master "
                            "no longer has, is alive")
        elif owner not in running:
            problems.append(f"pid {proc['pid']} {proc['argv']} of {owner}, which is "
                            f"{nodes[owner]['state']}, is alive")
        elif proc["sid"] != running[owner]:
            problems.append(f"pid {proc['pid']} {proc['argv']} of {owner} is in session "
                            f"{proc['sid']}, not in that of {owner}'s pid {running[owner]}")
    pidfiles = {p.name[:-4] for p in fleet.run_dir.glob("*.pid")} - {"stemd"}
    if pidfiles != set(running):
        problems.append(f"PID files {sorted(pidfiles)}, RUNNING nodes {sorted(running)}")
    return problems


def check_argv(storm: Storm, nodes: dict[str, dict[str, Any]]) -> list[str]:
    """Invariant 3: each RUNNING node runs the file's command line for it."""
    problems = []
    if sorted(nodes) != sorted(storm.nodes):
        problems.append(f"the master has nodes {sorted(nodes)}, the file {sorted(storm.nodes)}")
    for name, info in nodes.items():
        if info["state"] != "RUNNING" or name not in storm.versions:
            continue
        want = ["/bin/sh", storm.script, f"--ver={storm.versions[name]}"]
        try:
            argv = psutil.Process(info["pid"]).cmdline()
        except psutil.Error:
            argv = ["(gone)"]
        if argv != want:
            problems.append(f"{name} (pid {info['pid']}) runs {argv}, the file says {want}")
        if info["outdated"]:
            problems.append(f"{name} (pid {info['pid']}) is still outdated")
    return problems


def check_master(fleet: Fleet, storm: Storm, master: int) -> list[str]:
    """Invariant 4."""
    if not pid_alive(master):
        return [f"the master (pid {master}) is gone"]
    problems = [f"an earlier master (pid {old}) is alive"
                for old in storm.masters if old != master and pid_alive(old)]
    if fleet.master_pid() != master:
        problems.append(f"the master PID file says {fleet.master_pid()}, not {master}")
    version = fleet.ctl("version", "--json")
    if version.returncode != 0 or json.loads(version.stdout)["master"]["pid"] != master:
        problems.append(f"stemctl version: {version.returncode} {version.stdout} "
                        f"{version.stderr}")
    zombies = [c.pid for c in psutil.Process(master).children()
               if c.status() == psutil.STATUS_ZOMBIE]
    if zombies:
        problems.append(f"zombie children of the master: {zombies}")
    log = fleet.master_log()
    for bad in ("Traceback", "illegal"):
        if bad in log:
            problems.append(f"the master log has {bad!r}")
    return problems


def check_statefile(fleet: Fleet, nodes: dict[str, dict[str, Any]], master: int) -> list[str]:
    """Invariant 5: what a master started after a crash would take up is
    what this one has."""
    try:
        state = read_state(str(fleet.run_dir / "stemd.state"))
    except (OSError, PidFileError) as exc:
        return [f"the state file cannot be read: {exc}"]
    if state is None:
        return ["no state file"]
    problems = []
    if state.pid != master:
        problems.append(f"the state file was written by pid {state.pid}, not by the master")
    records = {name: r for name, r in state.nodes.items() if not r.removed}
    for name, info in nodes.items():
        if name not in records:
            problems.append(f"the state file has no record of {name}")
        elif records[name].wanted != (info["wanted"] == "up"):
            problems.append(f"the state file has {name} wanted {records[name].wanted}, the "
                            f"master has it {info['wanted']} ({info['state']})")
    extra = sorted(set(records) - set(nodes))
    removed = sorted(set(state.nodes) - set(records))
    if extra or removed:
        problems.append(f"the state file has records of nodes the master does not have: "
                        f"{extra}, removed ones: {removed}")
    return problems


def settled_checks(fleet: Fleet, storm: Storm, master: int, argv: bool
                   ) -> tuple[list[str], Any]:
    """Invariants 1, 2, 4 and 5 (and 3 with ``argv``) on a quiet master. What
    a stop SIGKILLed may take a moment to die, and the state file is written
    soon, not at once, after a node's exit: the process and file checks get
    a short grace, while the status stays the same."""
    nodes, why = quiet_status(fleet)
    if nodes is None:
        return [why], None
    problems = check_intent(nodes)
    grace = time.monotonic() + 3
    while True:
        found = (check_processes(fleet, nodes, master) + check_master(fleet, storm, master)
                 + check_statefile(fleet, nodes, master))
        if not found or time.monotonic() > grace:
            break
        time.sleep(0.1)
    problems += found
    if argv:
        problems += check_argv(storm, nodes)
    if signature(fleet.status()) != signature(nodes):
        problems.append("the status changed during the checks, after the master was quiet")
    return problems, nodes


# -------------------------------------------------------------------- test

@pytest.mark.slow
@pytest.mark.parametrize("seed", seeds("STRESS_INTENT_SEEDS", [1, 2, 3]))
def test_a_storm_of_commands_leaves_what_the_operator_asked_for(fleet: Fleet, seed: int
                                                               ) -> None:
    storm_then_check(Storm(fleet, seed))


def storm_then_check(storm: Storm) -> None:
    """Run the storm, then check the invariants on the quiet master, before
    and after a final reload and a final start. Fails with the report."""
    try:
        storm.begin()
        try:
            storm.run()
        finally:
            problems = storm.finish_clients() + storm.problems
        status = None
        if storm.master is None:
            problems.append("no master runs after the storm")
        else:
            found, status = final_checks(storm, storm.master)
            problems += found
        assert not problems, storm.report(problems, status)
    finally:
        storm.cleanup()


def final_checks(storm: Storm, master: int) -> tuple[list[str], Any]:
    """Invariants 1-5 on the quiet master; a final reload (after which
    invariant 3 too), a final start, and again. Returns (problems, status)."""
    fleet = storm.fleet
    problems_before, status = settled_checks(fleet, storm, master, argv=False)
    problems = [f"before the final reload: {p}" for p in problems_before]
    if not problems:
        expect_no_change = storm.reload_applied_last_write()
        outdated = sorted(n for n, i in status.items() if i["outdated"])
        final = fleet.ctl("reload", "--json")
        storm.events.append(f"{storm.now():7.3f} final reload: rc={final.returncode} "
                            f"{' '.join((final.stdout + final.stderr).split())[:300]}")
        if final.returncode != 0:
            problems.append(f"the final reload exited {final.returncode}")
        else:
            summary = json.loads(final.stdout)
            if not set(outdated) <= set(summary["changed"]):
                problems.append(f"the final reload did not change every outdated node "
                                f"{outdated}: {summary}")
            if expect_no_change and (summary["added"] or summary["removed"]
                                     or sorted(summary["changed"]) != outdated):
                problems.append("the final reload had changes to apply (other than the "
                                f"outdated nodes {outdated}) after a reload or start of the "
                                f"same file had answered 0: {summary}")
        after, status = settled_checks(fleet, storm, master, argv=True)
        problems += [f"after the final reload: {p}" for p in after]
    if not problems:
        # The nodes the operator stopped got each reload's spec: a start runs the file's.
        everything = fleet.ctl("start")
        storm.events.append(f"{storm.now():7.3f} final start: rc={everything.returncode}")
        if everything.returncode != 0:
            problems.append(f"the final start exited {everything.returncode}: "
                            f"{everything.stdout} {everything.stderr}")
        after, status = settled_checks(fleet, storm, master, argv=True)
        problems += [f"after the final start: {p}" for p in after]
    return problems, status
