"""The measurements: one function per scenario, each timed from outside.

All times are ``time.monotonic()`` seconds, except where a node's start
time comes from ``/proc`` (``CLOCK_BOOTTIME``). Polling intervals are chosen
to be well below what is measured; where a poll costs more than the interval
(a ``/proc`` scan with 1,000 nodes takes ~20 ms), the resolution is that
cost, and the report says so.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench import procs
from bench.adapters import Supervisor
from bench.workloads import FLOOD_END, Workload, script_index, sleep_index

Samples = dict[str, list[float]]

LAUNCH_TIMEOUT = 120.0
SETTLE_SECS = 2.0


class BenchError(Exception):
    """A supervisor did not do what a measurement needs; the run goes on
    without that supervisor at that size."""


@dataclass(frozen=True, slots=True)
class Master:
    pid: int
    returned_at: float  # monotonic time at which the launcher returned


@dataclass(frozen=True, slots=True)
class TrialPlan:
    status_calls: int = 5
    respawn_kills: int = 3
    idle_secs: float = 20.0  # 0: skip the idle window
    timeout: float = LAUNCH_TIMEOUT


@dataclass(slots=True)
class StormResult:
    nodes: int
    seconds: float
    master_cpu_s: float
    spawns: int
    status_walls: list[float] = field(default_factory=list)
    status_failures: int = 0
    failure_details: list[str] = field(default_factory=list)
    zombies: int = 0  # unreaped children of the master when the storm ended


@contextlib.contextmanager
def running_master(sup: Supervisor, samples: Samples | None = None) -> Iterator[Master]:
    """Launch ``sup`` and always clean up: whatever the measurement did or
    failed to do, every process of this run (all our descendants, see
    :mod:`bench.procs`) is killed afterwards."""
    sup.prepare()
    try:
        result = sup.launch()
        returned_at = time.monotonic()
        if not result.ok:
            raise BenchError(f"launch failed: {result.describe()}")
        if samples is not None:
            samples.setdefault("launch_wall", []).append(result.wall)
        waited = procs.poll_until(lambda: sup.master_pid() is not None, 10.0, 0.005)
        pid = sup.master_pid()
        if waited is None or pid is None:
            raise BenchError(f"no master PID file {sup.pid_file()}")
        yield Master(pid, returned_at)
    finally:
        procs.kill_descendants()


def sleep_nodes(root: int | None = None) -> dict[int, int]:
    return procs.find_nodes(sleep_index, root)


def run_trial(sup: Supervisor, plan: TrialPlan) -> Samples:
    """One full life of a master with N sleeping nodes: start, status,
    respawns, (idle), stop all, start all, shutdown."""
    samples: Samples = {}
    n = sup.workload.nodes
    with running_master(sup, samples) as master:
        launched = samples["launch_wall"][-1]
        alive = wait_alive(n, master.returned_at, plan.timeout)
        samples["alive_after_return"] = [alive]
        # From the launcher's start too: a launcher that returns only once the
        # nodes are spawned (stemd) moves time from "after return" into its
        # own wall time, and the end-to-end figure keeps that comparable.
        samples["alive_after_launch"] = [launched + alive]
        if sup.has_running_state:
            running = wait_running(sup, master.returned_at, plan)
            samples["running_after_return"] = [running]
            samples["running_after_launch"] = [launched + running]
        samples["status_wall"] = status_walls(sup, plan.status_calls)
        samples["respawn"] = respawn_latencies(sup, plan)
        if plan.idle_secs > 0:
            for key, value in idle_usage(sup, master.pid, plan).items():
                samples[key] = [value]
        samples["stop_all"] = [stop_all(sup, plan.timeout)]
        restart_all(sup, plan)
        samples["shutdown"] = [shutdown(sup, master.pid, plan.timeout)]
    return samples


def wait_alive(
    n: int, since: float, timeout: float, gave_up: Callable[[], bool] | None = None
) -> float:
    """Seconds from ``since`` until ``n`` sleep nodes are alive. ``gave_up``
    (checked after each failed scan) ends the wait early: the spawn floor
    uses it so that a spawner that died is not waited for until the
    deadline."""

    alive = False

    def done() -> bool:
        nonlocal alive
        alive = len(sleep_nodes()) >= n
        return alive or (gave_up is not None and gave_up())

    waited = procs.poll_until(done, timeout, 0.005)
    elapsed = time.monotonic() - since
    if waited is None or not alive:
        raise BenchError(f"fewer than {n} nodes alive after {timeout:.0f} s")
    return elapsed


def wait_running(sup: Supervisor, since: float, plan: TrialPlan) -> float:
    """Seconds from ``since`` until the status command reports every node
    RUNNING (for circus: alive, plus start-secs so that a respawn counts)."""
    n = sup.workload.nodes
    deadline = time.monotonic() + plan.timeout
    if not sup.has_running_state:
        wait_alive(n, since, plan.timeout)
        time.sleep(max(0.0, since + sup.settings.start_secs + 0.1 - time.monotonic()))
        return time.monotonic() - since
    while time.monotonic() < deadline:
        if sup.status().running >= n:
            return time.monotonic() - since
        time.sleep(0.01)
    raise BenchError(f"not all {n} nodes RUNNING after {plan.timeout:.0f} s")


def status_walls(sup: Supervisor, calls: int) -> list[float]:
    walls = []
    for _ in range(calls):
        result = sup.status()
        if not result.ok:
            raise BenchError(f"status did not answer: {result.detail}")
        walls.append(result.wall)
    return walls


def respawn_latencies(sup: Supervisor, plan: TrialPlan) -> list[float]:
    n = sup.workload.nodes
    kills = min(plan.respawn_kills, n)
    latencies = []
    for j in range(kills):
        index = 1 + j * n // kills
        latencies.append(respawn_once(sup, index))
        time.sleep(0.2)
    return latencies


def respawn_once(sup: Supervisor, index: int, timeout: float = 30.0) -> float:
    """SIGKILL node ``index`` once it has been up longer than start-secs,
    then poll ``/proc`` until a new process with the same marker exists.

    Only pids that were not there before the kill are examined, and they are
    re-read on every pass: a freshly forked child shows its parent's command
    line until it execs, and only the exec'd node counts as the replacement.
    """
    pid = sleep_nodes().get(index)
    if pid is None:
        raise BenchError(f"node {index} not alive before the kill")
    wait_uptime(pid, sup.settings.start_secs + 0.2)
    me = os.getpid()
    before = set(os.listdir("/proc"))
    start = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    deadline = start + timeout
    while time.monotonic() < deadline:
        for name in os.listdir("/proc"):
            if name in before or not name.isdigit():
                continue
            new = int(name)
            if sleep_index(procs.read_cmdline(new)) == index and procs.is_descendant(new, me):
                return time.monotonic() - start
        time.sleep(0.0005)
    raise BenchError(f"node {index} not respawned within {timeout:.0f} s")


def wait_uptime(pid: int, seconds: float) -> None:
    stat = procs.read_stat(pid)
    if stat is not None:
        time.sleep(max(0.0, stat.start_boottime + seconds - procs.boottime_now()))


def idle_usage(sup: Supervisor, master_pid: int, plan: TrialPlan) -> dict[str, float]:
    """The master's RSS, CPU and voluntary context switches over an idle
    window, with every node RUNNING and nobody talking to the master."""
    wait_running(sup, time.monotonic(), plan)
    time.sleep(SETTLE_SECS)
    before = procs.read_usage(master_pid)
    time.sleep(plan.idle_secs)
    after = procs.read_usage(master_pid)
    if before is None or after is None:
        raise BenchError("master vanished while idle")
    return {
        "idle_rss_mib": after.rss_kib / 1024,
        "idle_cpu_s": after.cpu_seconds - before.cpu_seconds,
        "idle_wakeups": float(after.voluntary_ctxt - before.voluntary_ctxt),
        "idle_wakeups_per_s": (after.voluntary_ctxt - before.voluntary_ctxt) / plan.idle_secs,
        "master_threads": float(after.threads),
    }


def stop_all(sup: Supervisor, timeout: float) -> float:
    """Seconds until the stop command returned *and* no node is left."""
    start = time.monotonic()
    result = sup.stop_all()
    if not result.ok:
        raise BenchError(f"stop failed: {result.describe()}")
    if procs.poll_until(lambda: not sleep_nodes(), timeout, 0.005) is None:
        raise BenchError("nodes still alive after stop")
    return time.monotonic() - start


def restart_all(sup: Supervisor, plan: TrialPlan) -> None:
    """Bring every node back (not measured) so that shutdown starts from a
    full, settled fleet."""
    result = sup.start_all()
    if not result.ok:
        raise BenchError(f"start failed: {result.describe()}")
    wait_running(sup, time.monotonic(), plan)


def shutdown(sup: Supervisor, master_pid: int, timeout: float) -> float:
    """Seconds until the master and every node are gone; supervisorctl and
    circusctl return before that, so the benchmark waits for the processes."""
    start = time.monotonic()
    result = sup.shutdown()
    if not result.ok:
        raise BenchError(f"shutdown failed: {result.describe()}")

    def gone() -> bool:
        return procs.is_gone(master_pid) and not sleep_nodes()

    if procs.poll_until(gone, timeout, 0.005) is None:
        raise BenchError("master or nodes still alive after shutdown")
    return time.monotonic() - start


def run_storm(sup: Supervisor, seconds: float, spawn_log: Path) -> StormResult:
    """Nodes that exit 100 ms after each start, for ``seconds``: the master's
    CPU, how many spawns it made, and the status command's wall times
    (called back to back every 100 ms) while it happens."""
    with running_master(sup) as master:
        before = procs.read_usage(master.pid)
        spawned_before = count_lines(spawn_log)
        result = StormResult(sup.workload.nodes, seconds, 0.0, 0)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            status = sup.status()
            result.status_walls.append(status.wall)
            if not status.ok:
                result.status_failures += 1
                result.failure_details.append(status.detail)
            time.sleep(0.1)
        after = procs.read_usage(master.pid)
        if before is None or after is None:
            raise BenchError("master died during the storm")
        result.master_cpu_s = after.cpu_seconds - before.cpu_seconds
        result.spawns = count_lines(spawn_log) - spawned_before
        result.zombies = count_zombies(master.pid)
        sup.shutdown()
    return result


def count_zombies(master_pid: int) -> int:
    """Children of the master that have exited but are not reaped yet. A
    master that reaps on every SIGCHLD/pidfd event leaves none for long; one
    that reaps on a periodic tick leaves up to a tick's worth."""
    table = procs.process_table()
    return sum(1 for s in table.values() if s.ppid == master_pid and s.state == "Z")


def count_lines(path: Path) -> int:
    try:
        with path.open("rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 16), b""))
    except FileNotFoundError:
        return 0


def run_warm_stop(sup: Supervisor, plan: TrialPlan) -> float:
    """Seconds from the stop command until no node is left, for nodes that
    exit ``delay`` after TERM (:func:`bench.workloads.warm_workload`), from a
    fleet that is all RUNNING (for circus: alive for start-secs)."""
    match = script_index("warm-")
    n = sup.workload.nodes
    with running_master(sup):
        if procs.poll_until(lambda: len(procs.find_nodes(match)) >= n, plan.timeout,
                            0.005) is None:
            raise BenchError(f"fewer than {n} warm nodes alive after {plan.timeout:.0f} s")
        if sup.has_running_state:
            wait_running(sup, time.monotonic(), plan)
        else:
            time.sleep(sup.settings.start_secs + 0.1)
        start = time.monotonic()
        result = sup.stop_all()
        if not result.ok:
            raise BenchError(f"stop failed: {result.describe()}")
        if procs.poll_until(lambda: not procs.find_nodes(match), plan.timeout, 0.005) is None:
            raise BenchError("warm nodes still alive after stop")
        return time.monotonic() - start


def run_flood(sup: Supervisor, megabytes: int, timeout: float = 300.0) -> dict[str, float]:
    """One node writes ``megabytes`` MiB to stdout: seconds from the node's
    start until all of it (and the end marker) is in its log file, and the
    master's CPU meanwhile (from the first sample after the launcher
    returned; the master's own start-up is excluded)."""
    total = megabytes * 1024 * 1024 + len(FLOOD_END) + 1
    with running_master(sup) as master:
        before = procs.read_usage(master.pid)
        node_start = flood_node_start(timeout)
        log = sup.node_log(1)
        if procs.poll_until(lambda: log_complete(log, total), timeout, 0.01) is None:
            raise BenchError(f"{log} incomplete after {timeout:.0f} s")
        seconds = procs.boottime_now() - node_start
        after = procs.read_usage(master.pid)
        if before is None or after is None:
            raise BenchError("master died during the flood")
        sup.shutdown()
    return {
        "flood_seconds": seconds,
        "flood_mib_per_s": megabytes / seconds,
        "flood_master_cpu_s": after.cpu_seconds - before.cpu_seconds,
    }


def flood_node_start(timeout: float) -> float:
    match = script_index("flood-")
    found: dict[int, int] = {}

    def alive() -> bool:
        found.update(procs.find_nodes(match))
        return bool(found)

    if procs.poll_until(alive, timeout, 0.005) is None:
        raise BenchError("flood node never started")
    stat = procs.read_stat(next(iter(found.values())))
    if stat is None:
        raise BenchError("flood node vanished")
    return stat.start_boottime


def log_complete(path: Path, total: int) -> bool:
    try:
        size = path.stat().st_size
        if size < total:
            return False
        with path.open("rb") as f:
            f.seek(size - len(FLOOD_END) - 2)
            return FLOOD_END.encode() in f.read()
    except FileNotFoundError:
        return False


FLOOR_SCRIPT = Path(__file__).with_name("floor_spawner.py")
FLOOR_CLIENT = Path(__file__).with_name("floor_client.py")


def run_floor(python: Path, workload: Workload, procs_: int, log_dir: Path,
              timeout: float = LAUNCH_TIMEOUT, run_dir: Path | None = None
              ) -> dict[str, float]:
    """The spawn floor (:mod:`bench.floor_spawner`): seconds from just
    before the bare Popen loop is started until all its nodes are alive,
    timed like a supervisor's launcher start → all alive (same clock start,
    same :func:`wait_alive`, same ``/proc`` poller and interval). As a
    launcher is waited for before the poller starts, so is the spawner's
    "spawned" line (each process's): polling /proc during the loop took a
    core from it, and the floor came out slower than stemd's launch (1.3 s
    against 0.55 s for the same loop unwatched).

    With ``run_dir`` (for its PID files and socket, where the supervisors
    keep theirs; one process only), the stop floor too, once the nodes have
    been up for a second (as the supervisors' fleets have, and more, when
    their stop is timed): from just before the floor's client is started
    until no node is left, as :func:`stop_all` times a stop command."""
    log_dir.mkdir(parents=True, exist_ok=True)
    stop = run_dir is not None and procs_ == 1
    argv = [str(python), str(FLOOR_SCRIPT), "--log-dir", str(log_dir),
            "--cwd", str(log_dir), "--nodes", str(workload.nodes),
            "--procs", str(procs_)]
    socket_path = run_dir / "floor.sock" if run_dir is not None else None
    if stop and run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        argv += ["--stop-socket", str(socket_path), "--run-dir", str(run_dir)]
    argv += ["--", *workload.argv]
    try:
        start = time.monotonic()
        # In its own session, as every supervisor's daemonized master is:
        # with the kernel's autogroup scheduling (sched_autogroup_enabled),
        # a process left in the benchmark's session shares one CPU share
        # with the /proc poller, and the "floor" came out slower than stemd.
        spawner = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, start_new_session=True)
        try:
            seen = _wait_spawned(spawner, procs_, start + timeout)
            alive = wait_alive(workload.nodes, start, timeout,
                               gave_up=lambda: spawner.poll() is not None)
            if not stop:
                return {"alive_after_launch": alive}
            _wait_spawned(spawner, 2, time.monotonic() + timeout, seen)  # "listening"
            nodes = sleep_nodes()
            wait_uptime(nodes[max(nodes)], 1.0)  # the last one spawned
            began = time.monotonic()
            client = subprocess.run([str(python), str(FLOOR_CLIENT), str(socket_path)],
                                    timeout=timeout, check=False)
            if client.returncode != 0:
                raise BenchError(f"the floor's stop client exited {client.returncode}")
            if procs.poll_until(lambda: not sleep_nodes(), timeout, 0.005) is None:
                raise BenchError("the floor's nodes still alive after its stop")
            return {"alive_after_launch": alive, "stop_all": time.monotonic() - began}
        except BenchError:
            if spawner.poll() is not None:
                err = spawner.stderr.read().decode(errors="replace") if spawner.stderr else ""
                tail = err.strip().splitlines()[-1:] or [""]
                raise BenchError(f"floor spawner exited {spawner.returncode}: {tail[0]}") from None
            raise
        finally:
            spawner.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                spawner.wait(timeout)
            for pipe in (spawner.stdout, spawner.stderr):
                if pipe:
                    pipe.close()
    except OSError as exc:
        raise BenchError(f"cannot run the floor spawner: {exc}") from None
    finally:
        procs.kill_descendants()


def _wait_spawned(spawner: subprocess.Popen[bytes], lines: int, deadline: float,
                  seen: bytes = b"") -> bytes:
    """Until the spawner has written ``lines`` lines in all, counting those
    already ``seen`` ("spawned" from each process, then "listening" for the
    stop floor), or died (wait_alive then says why), blocking on its stdout,
    not polling. Returns what it has written so far."""
    assert spawner.stdout is not None
    fd = spawner.stdout.fileno()
    while seen.count(b"\n") < lines:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise BenchError("the floor spawner did not finish spawning in time")
        chunk = os.read(fd, 256)
        if not chunk:
            return seen  # it exited: wait_alive reports it
        seen += chunk
    return seen
