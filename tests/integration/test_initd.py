"""contrib/init.d run by dash against a real stemd, as SysV init and operators run them.

Each test gets its own config file (named by STEMD_CONFIG) with every path in a temp dir, and
points the script at this environment's stemd/stemctl with STEMD_BIN/STEMCTL_BIN. The nodes
run a sleep with an argument unique to the test, so they can be counted with psutil among
everything else on the machine. The fixture kills the master and the nodes whatever happens.

etc/logrotate.d/stem is exercised, as shipped, in test_logrotate.py.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
from conftest import wait_until

ROOT = Path(__file__).resolve().parents[2]
INITD = ROOT / "contrib" / "init.d"
BIN = Path(sys.executable).parent
STEMD = BIN / "stemd"
STEMCTL = BIN / "stemctl"
DASH = shutil.which("dash")

pytestmark = pytest.mark.skipif(DASH is None, reason="dash is not installed (apt-get install dash)")

_unique = itertools.count(1)


def alive(pid: int) -> bool:
    """Not gone and not a zombie: an exited daemon is reparented to PID 1, which in some
    sandboxes never reaps it."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False



@dataclass
class Fleet:
    """One stemd instance's files, and the means to look at its processes."""

    dir: Path
    script: Path
    config: Path
    node_argv: list[str]
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def master_pidfile(self) -> Path:
        return self.dir / "run" / "stemd.pid"

    def write_config(self, **keys: str) -> None:
        base = {
            "STEMD_COMMAND": " ".join(self.node_argv),
            "STEMD_START_SECS": "0.2",
            "STEMD_STOP_TIMEOUT": "5",
            "STEMD_FORCE_ROOT": "1" if os.geteuid() == 0 else "",
            "STEMD_MASTER_PID_FILE": str(self.master_pidfile),
            "STEMD_SOCKET": str(self.dir / "run" / "stemd.sock"),
            "STEMD_PID_FILE": str(self.dir / "run" / "%n.pid"),
            "STEMD_LOG_FILE": str(self.dir / "log" / "%n.log"),
            "STEMD_MASTER_LOG_FILE": str(self.dir / "log" / "stemd.log"),
        }
        base.update(keys)
        lines = ["# written by tests/integration/test_initd.py"]
        lines += [f'{k}="{v}"' for k, v in base.items() if v != ""]
        self.config.write_text("\n".join(lines) + "\n")

    def run(self, action: str, *, shell_flags: tuple[str, ...] = (),
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        full_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "STEMD_CONFIG": str(self.config),
            "STEMD_BIN": str(STEMD),
            "STEMCTL_BIN": str(STEMCTL),
            **self.extra_env,
            **(env or {}),
        }
        assert DASH is not None
        return subprocess.run([DASH, *shell_flags, str(self.script), action],
                              capture_output=True, text=True, env=full_env, timeout=60)

    def master_pid(self) -> int | None:
        try:
            return int(self.master_pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def nodes(self) -> dict[int, int]:
        """pid -> ppid of every live process running this fleet's node command."""
        found = {}
        for proc in psutil.process_iter(["cmdline", "ppid", "status"]):
            if (proc.info["cmdline"] == self.node_argv
                    and proc.info["status"] != psutil.STATUS_ZOMBIE):
                found[proc.pid] = proc.info["ppid"]
        return found

    def kill_everything(self) -> None:
        pid = self.master_pid()
        if pid is not None and alive(pid):
            try:
                proc = psutil.Process(pid)
                if "stemd" in " ".join(proc.cmdline()):
                    proc.kill()
            except psutil.Error:
                pass
        for node in self.nodes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(node, signal.SIGKILL)


def make_fleet(script: str, tag: str) -> Iterator[Fleet]:
    if not STEMD.exists() or not STEMCTL.exists():
        pytest.skip(f"stemd/stemctl not installed next to {sys.executable} (make venv)")
    # A short directory: the socket path must fit in sun_path (108 bytes).
    d = Path(tempfile.mkdtemp(prefix=f"stem-{tag}-", dir="/tmp"))
    argv = ["/bin/sleep", f"{900000 + os.getpid() % 10000}.{next(_unique)}"]
    fleet = Fleet(d, INITD / script, d / "stem.env", argv)
    fleet.write_config(STEMD_NODES="alpha beta")
    try:
        yield fleet
    finally:
        fleet.kill_everything()
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def worker() -> Iterator[Fleet]:
    yield from make_fleet("stem-worker", "w")


@pytest.fixture
def scheduler() -> Iterator[Fleet]:
    yield from make_fleet("stem-scheduler", "s")


def ok(result: subprocess.CompletedProcess[str], code: int = 0) -> subprocess.CompletedProcess[str]:
    assert result.returncode == code, (
        f"exit {result.returncode}, expected {code}\n"
        f"stdout: {result.stdout}\nstderr: {result.stderr}")
    return result


def start_two(worker: Fleet) -> tuple[int, dict[int, int]]:
    """`service stem-worker start`; the master's PID and its two RUNNING nodes."""
    ok(worker.run("start"))
    master = worker.master_pid()
    assert master is not None
    return master, running_nodes(worker, 2)


def kill_master(master: int) -> None:
    os.kill(master, signal.SIGKILL)
    wait_until(lambda: not alive(master), 5, what="the master to die")


def running_nodes(fleet: Fleet, count: int) -> dict[int, int]:
    nodes = wait_until(lambda: (n := fleet.nodes()) and len(n) >= count and n, 10,
                       what=f"{count} nodes")
    assert len(nodes) == count, nodes
    return nodes


def wait_ready(fleet: Fleet, master: int, adopted: int | None = None) -> int:
    """Wait for master ``master``'s "ready: ... N nodes (M adopted)" log line, written once
    it has adopted or spawned every node: a duplicate it would start exists by then. Returns
    the count of adopted nodes (checked against ``adopted`` when given)."""
    log = fleet.dir / "log" / "stemd.log"
    pattern = re.compile(rf"ready: pid {master}, (\d+) nodes \((\d+) adopted\)")
    match = wait_until(lambda: log.exists() and pattern.search(log.read_text()), 10,
                       what=f"master {master}'s ready line in {log}")
    if adopted is not None:
        assert int(match.group(2)) == adopted, match.group(0)
    return int(match.group(2))


# --- the LSB contract ----------------------------------------------------------------------

def test_full_lifecycle_and_lsb_codes(worker: Fleet) -> None:
    ok(worker.run("status"), 3)
    ok(worker.run("stop"))                       # stop of a stopped service succeeds
    ok(worker.run("reload"), 7)                  # LSB: program is not running

    out = ok(worker.run("start")).stdout
    assert "Starting" in out
    master = worker.master_pid()
    assert master is not None and alive(master)
    nodes = running_nodes(worker, 2)
    assert set(nodes.values()) == {master}       # the master's own children
    assert "running" in ok(worker.run("status")).stdout

    # A second start: success, the same master, no duplicate node.
    wait_ready(worker, master, adopted=0)
    out = ok(worker.run("start")).stdout
    assert "already running" in out
    assert worker.master_pid() == master
    assert worker.nodes() == nodes

    ok(worker.run("reload"))
    ok(worker.run("force-reload"))
    assert worker.master_pid() == master
    assert worker.nodes() == nodes                # nothing changed: nothing restarted

    ok(worker.run("restart"))
    new_master = worker.master_pid()
    assert new_master is not None and new_master != master
    wait_until(lambda: not alive(master), 2, what="the old master to be gone")
    new_nodes = running_nodes(worker, 2)
    assert set(new_nodes.values()) == {new_master}
    assert not set(new_nodes) & set(nodes)

    ok(worker.run("stop"))
    # `stemctl shutdown` returns when the master closes the connection, on its way out.
    wait_until(lambda: not alive(new_master), 2, what="the master to be gone")
    assert worker.nodes() == {}
    assert not worker.master_pidfile.exists()
    ok(worker.run("status"), 3)
    ok(worker.run("stop"))


def test_reload_applies_the_config(worker: Fleet) -> None:
    ok(worker.run("start"))
    running_nodes(worker, 2)
    worker.write_config(STEMD_NODES="alpha beta gamma")
    ok(worker.run("reload"))
    running_nodes(worker, 3)
    worker.write_config(STEMD_NODES="alpha")
    ok(worker.run("force-reload"))
    wait_until(lambda: len(worker.nodes()) == 1, 10, what="two nodes to stop")
    ok(worker.run("stop"))
    assert worker.nodes() == {}


def test_dead_master_with_pid_file_then_start_adopts_the_nodes(worker: Fleet) -> None:
    master, nodes = start_two(worker)

    kill_master(master)
    assert worker.master_pidfile.exists()
    result = ok(worker.run("status"), 1)          # LSB: dead, PID file remains
    assert "dead" in result.stdout
    # ... and which of its nodes still run (they may be consuming tasks)
    assert "2 of its nodes still run: " in result.stdout, result.stdout + result.stderr
    assert all(f"(pid {pid})" in result.stdout for pid in nodes), result.stdout
    assert "start' adopts them" in result.stdout
    # The nodes run on, in their own sessions.
    assert set(worker.nodes()) == set(nodes)

    # start: a new master adopts the running nodes instead of starting duplicates.
    ok(worker.run("start"))
    new_master = worker.master_pid()
    assert new_master is not None and new_master != master
    wait_ready(worker, new_master, adopted=2)
    assert set(worker.nodes()) == set(nodes), "start after a master crash duplicated nodes"
    ok(worker.run("status"))

    ok(worker.run("stop"))
    assert worker.nodes() == {}
    ok(worker.run("status"), 3)


# --- stop tells the truth (issue 12 §1, SPEC §2.2 and §4) ----------------------------------

def test_stop_with_a_typo_in_the_config_still_stops_the_fleet(worker: Fleet) -> None:
    """Regression: with `STEMD_OPTS="--broken` appended, stop said "not running", exited 0
    and left the nodes running; `stemctl status` refused with exit 2."""
    master, nodes = start_two(worker)
    with worker.config.open("a") as f:
        f.write('STEMD_OPTS="--broken\n')

    def stemctl_status() -> subprocess.CompletedProcess[str]:
        return subprocess.run([STEMCTL, "status"], capture_output=True, text=True, timeout=30,
                              env={"PATH": os.environ["PATH"],
                                   "STEMD_CONFIG": str(worker.config)})
    # 0 once both are RUNNING (1 while STARTING); never 2 "cannot read the config".
    status = wait_until(lambda: (r := stemctl_status()).returncode != 1 and r, 10,
                        what="stemctl status to say RUNNING")
    assert status.returncode == 0, status.stderr
    assert "never closed" in status.stderr  # the file's problem is still told
    ok(worker.run("status"))

    result = ok(worker.run("stop"))
    assert worker.nodes() == {}, f"stop exited 0 with nodes running: {result.stdout}"
    assert not alive(master)
    assert not set(worker.nodes()) & set(nodes)
    ok(worker.run("status"), 3)


def test_stop_after_the_master_was_killed_stops_the_nodes_it_left(worker: Fleet) -> None:
    """Regression: after `kill -9` of the master, stop exited 0 and left both nodes running."""
    master, nodes = start_two(worker)
    kill_master(master)

    result = ok(worker.run("stop"))
    assert worker.nodes() == {}, f"stop exited 0 with nodes running: {result.stdout}"
    for pid in nodes:
        assert f"(pid {pid})" in result.stdout, result.stdout   # it says what it stopped
    assert not list((worker.dir / "run").glob("*.pid"))      # node and master PID files
    ok(worker.run("status"), 3)
    ok(worker.run("stop"))


def test_restart_after_the_master_was_killed_starts_fresh_nodes(worker: Fleet) -> None:
    """Regression: restart after `kill -9` kept the same node PIDs (the new master adopted
    them), so a deploy done with restart kept running the old code."""
    master, old = start_two(worker)
    kill_master(master)

    ok(worker.run("restart"))
    new_master = worker.master_pid()
    assert new_master is not None and alive(new_master)
    wait_ready(worker, new_master, adopted=0)
    new = running_nodes(worker, 2)
    assert not set(new) & set(old), "restart kept the old nodes"
    assert set(new.values()) == {new_master}
    assert not any(alive(pid) for pid in old)
    ok(worker.run("stop"))


def test_stop_with_a_broken_config_and_a_dead_master_uses_the_state_file(worker: Fleet) -> None:
    """Neither master nor config can say which nodes run: the state file a master leaves
    beside its PID file can; without it stop cannot tell and must say so, not exit 0."""
    from stem_core.statefile import state_path

    master, nodes = start_two(worker)
    kill_master(master)
    with worker.config.open("a") as f:
        f.write('STEMD_OPTS="--broken\n')
    state = Path(state_path(str(worker.master_pidfile)))
    kept = state.with_name("kept")
    state.rename(kept)  # as if the master had died before writing it

    result = worker.run("stop")
    assert result.returncode == 1, result
    assert "unknown" in result.stderr and "state file" in result.stderr
    assert set(worker.nodes()) == set(nodes)

    kept.rename(state)  # the one the real master wrote
    result = ok(worker.run("stop"))
    assert worker.nodes() == {}, result.stdout
    assert not state.exists()
    ok(worker.run("status"), 3)


def test_stop_with_a_broken_config_stops_dead_masters_nodes_of_another_user(
        worker: Fleet) -> None:
    """Regression: with the config broken, the state file names the nodes but not their user,
    and stop checked them against its own uid (root): nodes running as `nobody` were called
    stale, their PID files removed, and stop said "not running" and exited 0 while they ran."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the nodes run as another user")
    worker.write_config(STEMD_NODES="alpha beta", STEMD_USER="nobody", STEMD_FORCE_ROOT="")
    master, nodes = start_two(worker)
    assert {psutil.Process(pid).uids().real for pid in nodes} == {pwd.getpwnam("nobody").pw_uid}
    kill_master(master)
    with worker.config.open("a") as f:
        f.write("STEMD_BOGUS=1\n")

    result = ok(worker.run("stop"))
    assert worker.nodes() == {}, f"stop exited 0 with nodes running: {result.stdout}"
    for pid in nodes:
        assert f"(pid {pid})" in result.stdout, result.stdout
    assert "stale" not in result.stdout + result.stderr, result


def test_stop_never_signals_a_process_that_only_reuses_a_node_pid(worker: Fleet) -> None:
    """Identity, not liveness: a PID file naming an unrelated live process is stale."""
    master, _ = start_two(worker)
    kill_master(master)
    for pid in worker.nodes():
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not worker.nodes(), 5, what="the nodes to die")
    bystander = subprocess.Popen(["/bin/sleep", "600"], start_new_session=True)
    try:
        (worker.dir / "run" / "alpha.pid").write_text(f"{bystander.pid}\n")
        result = ok(worker.run("stop"))
        assert bystander.poll() is None, "stop killed a process that was not a node"
        assert "stale" in result.stdout + result.stderr or "not running" in result.stdout
    finally:
        bystander.kill()
        bystander.wait()


def test_failed_start_is_reported(worker: Fleet) -> None:
    text = worker.config.read_text().replace('STEMD_NODES="alpha beta"', "STEMD_NODES=$(id -u)")
    worker.config.write_text(text)
    result = worker.run("start")
    assert result.returncode == 1, result
    assert str(worker.config) in result.stderr    # stemd's reason, not swallowed
    # The master's paths are still read from their own lines (leniently): it is not running
    # (LSB 3), and the file's problem is shown.
    result = ok(worker.run("status"), 3)
    assert str(worker.config) in result.stderr


def test_start_with_a_node_that_cannot_start_fails(worker: Fleet) -> None:
    """Regression: when a node cannot start, stemd exits 1 and its master runs on (SPEC §2);
    start took the live master for a lost race, said "already running" and exited 0, and so
    did restart: a deploy whose workers did not run reported success."""
    worker.write_config(STEMD_NODES="alpha beta", STEMD_OPTS="--bogus:beta=1",  # sleep: exit 1
                        STEMD_START_RETRIES="1", STEMD_BACKOFF_MAX="1")

    for action in ("start", "restart"):
        before = worker.master_pid()
        result = ok(worker.run(action), 1)
        assert "1 of 2 nodes not running" in result.stderr, result.stderr  # stemd's reason
        assert "beta: FATAL" in result.stderr, result.stderr
        assert "failed to start" in result.stderr
        assert "already running" not in result.stdout + result.stderr
        # The master keeps supervising what it started (a new one, for restart).
        master = worker.master_pid()
        assert master is not None and alive(master) and master != before
        assert set(running_nodes(worker, 1).values()) == {master}

    worker.write_config(STEMD_NODES="alpha beta")  # the fix deployed
    ok(worker.run("restart"))
    running_nodes(worker, 2)
    ok(worker.run("stop"))
    assert worker.nodes() == {}


def test_start_that_loses_the_race_to_another_start_succeeds(worker: Fleet) -> None:
    """Two starts at once: the one whose stemd finds the master lock taken ("already
    running (pid N)", exit 1) reports the running service, 0. Made deterministic by a
    STEMD_BIN that starts the winner itself, after the script's own check found nothing."""
    racer = worker.dir / "racing-stemd"
    racer.write_text(f'#!/bin/sh\n"{STEMD}" "$@" || exit 99\nexec "{STEMD}" "$@"\n')
    racer.chmod(0o755)

    result = ok(worker.run("start", env={"STEMD_BIN": str(racer)}))
    master = worker.master_pid()
    assert master is not None and alive(master)
    assert "already running" in result.stdout, result.stdout
    assert f"stemd: already running (pid {master})" in result.stderr  # stemd's own words
    assert set(running_nodes(worker, 2).values()) == {master}
    ok(worker.run("stop"))


def test_usage_and_missing_pieces(worker: Fleet) -> None:
    result = worker.run("bogus")
    assert result.returncode == 2 and "Usage:" in result.stderr
    result = worker.run("")
    assert result.returncode == 2

    missing = {"STEMD_CONFIG": str(worker.dir / "absent.env")}
    ok(worker.run("start", env=missing), 6)
    ok(worker.run("status", env=missing), 4)
    # which master a missing file (not /etc/default/stem) names is unknown: not "stopped"
    result = ok(worker.run("stop", env=missing), 1)
    assert f"{worker.dir / 'absent.env'}: configuration file not found" in result.stderr

    nobin = {"STEMD_BIN": str(worker.dir / "no-stemd")}
    result = ok(worker.run("start", env=nobin), 5)
    assert "not found" in result.stderr
    ok(worker.run("status", env=nobin), 4)
    ok(worker.run("stop", env=nobin))


def test_sh_x_shows_what_happens(worker: Fleet) -> None:
    result = ok(worker.run("start", shell_flags=("-x",)))
    trace = result.stderr
    assert re.search(rf"^\+ {re.escape(str(STEMD))} --config {re.escape(str(worker.config))}$",
                     trace, re.M), trace
    result = ok(worker.run("status", shell_flags=("-x",)))
    assert "healthcheck" in result.stderr
    ok(worker.run("stop", shell_flags=("-x",)))


def test_status_finds_the_pid_file_named_in_the_config(worker: Fleet) -> None:
    """`status` reads STEMD_MASTER_PID_FILE from the file without sourcing it."""
    odd = worker.dir / "run" / "odd name.pid"
    text = worker.config.read_text().replace(
        f'STEMD_MASTER_PID_FILE="{worker.master_pidfile}"',
        f"export STEMD_MASTER_PID_FILE='{odd}'  # a comment")
    worker.config.write_text(text)
    ok(worker.run("start"))
    master = int(odd.read_text())
    kill_master(master)
    ok(worker.run("status"), 1)
    odd.unlink()
    ok(worker.run("status"), 3)


# --- stem-scheduler ------------------------------------------------------------------------

def test_scheduler_script_lifecycle(scheduler: Fleet) -> None:
    text = scheduler.config.read_text()
    text = re.sub(r'^STEMD_(COMMAND|NODES)=.*\n', "", text, flags=re.M)
    text += f'STEM_SCHEDULER_COMMAND="{" ".join(scheduler.node_argv)}"\n'
    scheduler.config.write_text(text)

    ok(scheduler.run("status"), 3)
    ok(scheduler.run("start"))
    nodes = running_nodes(scheduler, 1)
    ok(scheduler.run("start"))
    assert scheduler.nodes() == nodes
    ok(scheduler.run("status"))
    ok(scheduler.run("reload"))
    ok(scheduler.run("restart"))
    running_nodes(scheduler, 1)
    ok(scheduler.run("stop"))
    assert scheduler.nodes() == {}
    ok(scheduler.run("status"), 3)


def test_scripts_differ_only_in_names() -> None:
    worker = (INITD / "stem-worker").read_text().splitlines()
    scheduler = (INITD / "stem-scheduler").read_text().splitlines()
    assert len(worker) == len(scheduler)
    differing = [(a, b) for a, b in zip(worker, scheduler, strict=True) if a != b]
    assert differing, "stem-scheduler must name itself"
    for a, b in differing:
        assert a.startswith("#") or a.split("=")[0] in ("NAME", "DESC", "DEFAULT_CONFIG"), (a, b)


@pytest.mark.parametrize("script", ["stem-worker", "stem-scheduler"])
def test_lsb_header_and_syntax(script: str) -> None:
    path = INITD / script
    assert os.access(path, os.X_OK)
    text = path.read_text()
    assert text.startswith("#!/bin/sh\n")
    header = re.search(r"^### BEGIN INIT INFO\n(.*?)^### END INIT INFO$", text, re.M | re.S)
    assert header
    fields = dict(re.findall(r"^# ([A-Za-z-]+):\s+(.*)$", header.group(1), re.M))
    assert fields["Provides"] == script
    assert fields["Default-Start"] == "2 3 4 5"
    assert fields["Default-Stop"] == "0 1 6"
    assert "$remote_fs" in fields["Required-Start"]
    assert f"DEFAULT_CONFIG=/etc/default/{'stem' if script == 'stem-worker' else script}" in text
    subprocess.run([DASH, "-n", str(path)], check=True)
    if shutil.which("shellcheck"):
        result = subprocess.run(["shellcheck", "-s", "sh", str(path)],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stdout


def test_stop_with_a_missing_config_never_stops_another_fleet(worker: Fleet) -> None:
    """Regression: a STEMD_CONFIG that does not exist (a typo, or a second
    fleet's file gone) made stemctl fall back to the default paths, and `stop`
    shut down the default fleet. The running fleet stands in for the default
    one here, its paths in the environment where the fallback would find them."""
    master, nodes = start_two(worker)
    env = {"STEMD_CONFIG": str(worker.dir / "absent.env"),
           "STEMD_SOCKET": str(worker.dir / "run" / "stemd.sock"),
           "STEMD_MASTER_PID_FILE": str(worker.master_pidfile)}
    result = ok(worker.run("stop", env=env), 1)
    assert "configuration file not found" in result.stderr
    assert alive(master) and set(worker.nodes()) == set(nodes)
    ok(worker.run("stop"))
