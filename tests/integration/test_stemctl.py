"""Every stemctl command end to end: the real stemctl against a real master
(SPEC §3). Exit codes: 0 ok, 1 failed, 2 usage, 3 no master, 4 denied."""

from __future__ import annotations

import json
import os
import pty
import pwd
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import STEMCTL, Fleet, pid_alive, wait_until

from stem_core import protocol as P
from stem_core.config import load_config

SLOW_TERM = """\
#!/bin/sh
# a node that takes its time to stop
trap 'sleep 0.6; exit 0' TERM
while :; do sleep 0.05; done
"""

ARGS_IGNORED = """\
#!/bin/sh
exec sleep 1000
"""


def script(fleet: Fleet, name: str, text: str) -> str:
    path = fleet.root / name
    path.write_text(text)
    path.chmod(0o755)
    return f"/bin/sh {path}"


def pids(nodes: dict[str, dict[str, Any]]) -> dict[str, int]:
    return {name: n["pid"] for name, n in nodes.items()}


def run_ctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """stemctl without the fixture's --config."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("STEMD_")}
    environ.update(env or {})
    return subprocess.run([STEMCTL, *args], capture_output=True, text=True, timeout=30,
                          env=environ, stdin=subprocess.DEVNULL)


@pytest.fixture
def running(fleet: Fleet) -> Fleet:
    fleet.write(nodes="alpha beta")
    fleet.start()
    fleet.wait_state("RUNNING")
    return fleet


# ------------------------------------------------------------------ status


def test_status_piped_is_a_plain_table(running: Fleet) -> None:
    result = running.ctl("status")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NODE", "PROGRAM", "STATE", "PID", "UPTIME", "RESTARTS",
                                "CPU%", "RSS", "KIDS", "LAST", "EXIT", "/", "WHY"]
    assert "\x1b" not in result.stdout
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {"alpha", "beta"}
    status = running.status()
    for name, row in rows.items():
        assert row[1:4] == ["worker", "RUNNING", str(status[name]["pid"])]
        assert re.fullmatch(r"\d+(s|m\d\ds)", row[4])


def test_status_on_a_terminal_is_a_coloured_table(running: Fleet) -> None:
    master, slave = pty.openpty()
    env = running.env() | {"COLUMNS": "160", "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen([STEMCTL, "--config", str(running.config), "status"], stdout=slave,
                            stderr=subprocess.PIPE, env=env, stdin=subprocess.DEVNULL)
    os.close(slave)
    out = b""
    try:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(master)
    assert proc.wait(timeout=30) == 0
    text = out.decode()
    assert "\x1b[" in text  # coloured
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
    assert "NODE" in plain and "RSS" in plain and plain.count("RUNNING") == 2


def test_status_json_fields(running: Fleet) -> None:
    result = running.ctl("status", "--json")
    assert result.returncode == 0
    nodes = json.loads(result.stdout)
    assert [n["node"] for n in nodes] == ["alpha", "beta"]
    for n in nodes:
        assert {"node", "program", "state", "pid", "uptime", "restarts", "exit_status"} <= set(n)
        assert n["program"] == "worker" and n["state"] == "RUNNING"
        assert isinstance(n["pid"], int) and pid_alive(n["pid"])
        assert isinstance(n["uptime"], int | float) and n["uptime"] >= 0
        assert n["restarts"] == 0 and n["exit_status"] is None
    assert running.ctl("stop", "beta").returncode == 0
    beta = running.status("beta")["beta"]
    assert beta["pid"] is None and beta["uptime"] is None
    assert beta["exit_status"] is not None


def test_status_exit_1_when_a_requested_node_is_not_running(running: Fleet) -> None:
    assert running.ctl("stop", "beta").returncode == 0
    assert running.ctl("status").returncode == 1
    assert running.ctl("status", "beta").returncode == 1
    assert running.ctl("status", "alpha").returncode == 0
    assert running.ctl("status", "--json", "beta").returncode == 1


def test_status_names_may_be_nodes_or_programs(fleet: Fleet, tmp_path: Path) -> None:
    config = tmp_path / "stem.toml"
    config.write_text(f"""\
[stemd]
socket = "{fleet.run_dir}/stemd.sock"
pid_file = "{fleet.run_dir}/stemd.pid"
log_file = "{fleet.log_dir}/stemd.log"
force_root = true

[programs.worker]
command = "/bin/sleep 1000"
nodes = ["alpha", "beta"]
start_secs = 0.2
pid_file = "{fleet.run_dir}/%n.pid"
log_file = "{fleet.log_dir}/%n.log"
environment = {{ STEM_TEST_MARK = "{fleet.mark}" }}

[programs.scheduler]
command = "/bin/sleep 1000"
start_secs = 0.2
pid_file = "{fleet.run_dir}/%n.pid"
log_file = "{fleet.log_dir}/%n.log"
environment = {{ STEM_TEST_MARK = "{fleet.mark}" }}
""")
    fleet.config = config
    fleet.start()
    fleet.wait_state("RUNNING")
    assert set(fleet.status("worker")) == {"alpha", "beta"}
    assert set(fleet.status("scheduler")) == {"scheduler"}
    assert set(fleet.status("beta", "scheduler")) == {"beta", "scheduler"}
    assert set(fleet.status()) == {"alpha", "beta", "scheduler"}
    assert fleet.ctl("stop", "worker").returncode == 0
    states = {n: v["state"] for n, v in fleet.status().items()}
    assert states == {"alpha": "STOPPED", "beta": "STOPPED", "scheduler": "RUNNING"}


# ------------------------------------------------------------ start / stop


def test_start_waits_until_running(fleet: Fleet) -> None:
    fleet.write(nodes="alpha", start_secs=0.5)
    fleet.start()
    fleet.wait_state("RUNNING")
    assert fleet.ctl("stop", "alpha").returncode == 0
    t0 = time.monotonic()
    result = fleet.ctl("start", "alpha")
    elapsed = time.monotonic() - t0
    assert result.returncode == 0, result.stderr
    assert "alpha: RUNNING" in result.stdout
    assert elapsed >= 0.5
    assert fleet.status()["alpha"]["state"] == "RUNNING"  # at once, no waiting


def test_start_clears_fatal_and_fails_while_the_node_cannot_start(fleet: Fleet) -> None:
    flag = fleet.root / "may-start"
    command = script(fleet, "gated.sh", f"#!/bin/sh\ntest -e {flag} || exit 3\n"
                                        "exec sleep 1000\n")
    fleet.write(nodes="alpha", command=command, start_retries=2, start_secs=0.2)
    fleet.start_failing()
    fleet.wait_state("FATAL")
    result = fleet.ctl("start", "alpha")
    assert result.returncode == 1
    assert "not running: alpha" in result.stderr
    assert fleet.status()["alpha"]["state"] == "FATAL"
    flag.touch()
    result = fleet.ctl("start", "alpha")
    assert result.returncode == 0, result.stderr
    assert fleet.status()["alpha"]["state"] == "RUNNING"


def test_stop_waits_until_stopped(fleet: Fleet) -> None:
    fleet.write(nodes="alpha beta", command=script(fleet, "slow.sh", SLOW_TERM))
    fleet.start()
    before = pids(fleet.wait_state("RUNNING"))
    t0 = time.monotonic()
    result = fleet.ctl("stop", "alpha")
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - t0 >= 0.5  # the node's own 0.6 s
    assert "alpha: STOPPED" in result.stdout
    assert not pid_alive(before["alpha"])
    status = fleet.status()
    assert status["alpha"]["state"] == "STOPPED"
    assert status["beta"]["pid"] == before["beta"]
    assert not (fleet.run_dir / "alpha.pid").exists()
    # stopping what is stopped is fine
    assert fleet.ctl("stop", "alpha").returncode == 0


def test_a_stop_that_had_to_sigkill_says_so(fleet: Fleet) -> None:
    """A worker that outlives the stop timeout loses its tasks in flight to
    SIGKILL; stop answered "STOPPED" and status "stopped by the operator",
    as if all went well. The exit status stays 0 (supervisorctl, systemctl)."""
    deaf = fleet.deaf_script()
    fleet.write(nodes="alpha beta", stop_timeout=1, command=deaf)
    fleet.start()
    fleet.wait_state("RUNNING")
    said = "killed with SIGKILL: still running 1s after SIGTERM, the stop timeout"
    result = fleet.ctl("stop", "alpha")
    assert result.returncode == 0, result.stderr
    assert f"alpha: STOPPED ({said})" in result.stdout, result.stdout
    assert fleet.status()["alpha"]["stop_forced"] == said
    table = fleet.ctl("status", "alpha").stdout
    assert f"stopped by the operator; {said}" in table, table
    result = fleet.ctl("restart", "beta")
    assert result.returncode == 0, result.stderr
    assert f"; the process before was {said}" in result.stdout, result.stdout
    # a start says nothing of an earlier stop; a stop that needs no SIGKILL clears it
    assert "SIGKILL" not in fleet.ctl("start", "alpha").stdout
    # a deploy (reload of a changed command) that had to SIGKILL says which nodes
    fleet.write(nodes="alpha beta", stop_timeout=1, command="/bin/sleep 1000")  # goes on TERM
    result = fleet.ctl("reload")
    assert result.returncode == 0, result.stderr
    assert ("killed with SIGKILL at the stop timeout (work in flight lost): alpha, beta"
            in result.stdout), result.stdout
    fleet.write(nodes="alpha beta", stop_timeout=1, command="/bin/sleep 1001")
    result = fleet.ctl("--json", "reload")
    assert json.loads(result.stdout)["stop_forced"] == []  # /bin/sleep went on TERM
    result = fleet.ctl("stop", "alpha")
    assert result.stdout.strip() == "alpha: STOPPED", result.stdout
    assert fleet.status()["alpha"]["stop_forced"] is None


def test_a_shutdown_that_had_to_sigkill_says_which_nodes(fleet: Fleet) -> None:
    """`service stem-worker stop` during a deploy: the master's last word on
    the held connection names the nodes its shutdown had to SIGKILL."""
    deaf = fleet.deaf_script()
    fleet.write(nodes="alpha beta gamma", stop_timeout=1, command=deaf)
    fleet.start()
    fleet.wait_state("RUNNING")
    assert fleet.ctl("stop", "gamma").returncode == 0  # forced too, but not by the shutdown
    result = fleet.ctl("shutdown")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1:] == [
        "killed with SIGKILL at the stop timeout (work in flight lost): alpha, beta"], result.stdout
    fleet.write(nodes="alpha", stop_timeout=1, command="/bin/sleep 1000")
    fleet.start()
    fleet.wait_state("RUNNING")
    out = json.loads(fleet.ctl("--json", "shutdown").stdout)
    assert out["stopped"] is True and out["stop_forced"] == []


def test_stop_no_wait_returns_at_once(fleet: Fleet) -> None:
    fleet.write(nodes="alpha", command=script(fleet, "slow.sh", SLOW_TERM))
    fleet.start()
    pid = fleet.wait_state("RUNNING")["alpha"]["pid"]
    result = fleet.ctl("stop", "--no-wait", "alpha")
    assert result.returncode == 0
    assert "alpha: STOPPING" in result.stdout
    assert fleet.status()["alpha"]["state"] == "STOPPING"
    fleet.wait_state("STOPPED", "alpha")
    assert not pid_alive(pid)


# ------------------------------------------------------------------ restart


def test_restart_is_rolling(fleet: Fleet) -> None:
    """Sampled from another thread while it runs: never more than one of
    four nodes is not RUNNING, and every node got a new PID."""
    fleet.write(nodes="n1 n2 n3 n4", start_secs=0.3)
    fleet.start()
    before = pids(fleet.wait_state("RUNNING"))
    path = str(fleet.run_dir / "stemd.sock")
    samples: list[dict[str, str]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(5)
                s.connect(path)
                s.sendall(P.encode(P.request("status")))
                data = s.makefile("rb").readline()
            samples.append({n["node"]: n["state"] for n in json.loads(data)["result"]})
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        t0 = time.monotonic()
        result = fleet.ctl("restart")
        elapsed = time.monotonic() - t0
    finally:
        stop.set()
        sampler.join(10)
    assert result.returncode == 0, result.stderr
    assert elapsed >= 4 * 0.3  # one after another, each waited for
    down = [sum(state != "RUNNING" for state in s.values()) for s in samples]
    assert len(samples) > 20
    assert max(down) == 1, [s for s in samples if sum(v != "RUNNING" for v in s.values()) > 1]
    # every node was seen down at some point, in configuration order
    order = []
    for s in samples:
        for name, state in s.items():
            if state != "RUNNING" and name not in order:
                order.append(name)
    assert order == ["n1", "n2", "n3", "n4"]
    after = pids(fleet.status())
    assert all(after[n] != before[n] for n in before)
    assert not any(pid_alive(p) for p in before.values())


def test_restart_of_one_node_leaves_the_others(running: Fleet) -> None:
    before = pids(running.status())
    assert running.ctl("restart", "beta").returncode == 0
    after = pids(running.status())
    assert after["alpha"] == before["alpha"] and after["beta"] != before["beta"]


# --------------------------------------------------------------------- kill


def test_kill_signals_the_main_process_or_with_group_the_process_group(fleet: Fleet) -> None:
    node = """\
#!/bin/sh
sh -c 'trap "echo child-got-usr1" USR1; while :; do sleep 0.05; done' &
trap 'echo got-usr1' USR1
while :; do sleep 0.05; done
"""
    fleet.write(nodes="alpha beta", command=script(fleet, "trap.sh", node))
    fleet.start()
    before = pids(fleet.wait_state("RUNNING"))
    result = fleet.ctl("kill", "-s", "USR1", "alpha")
    assert result.returncode == 0, result.stderr
    assert "sent SIGUSR1 to alpha" in result.stdout
    log = fleet.log_dir / "alpha.log"
    wait_until(lambda: "got-usr1" in log.read_text(), 5, what="the node's trap")
    # the main process only (SPEC §3): the pool child was not signalled; a
    # later signal to the group reaches it (and proves the log is flushed)
    assert "child-got-usr1" not in log.read_text()
    result = fleet.ctl("kill", "--group", "-s", "USR1", "alpha")
    assert result.returncode == 0, result.stderr
    assert "sent SIGUSR1 to the process groups of alpha" in result.stdout
    wait_until(lambda: "child-got-usr1" in log.read_text(), 5, what="the child's trap")
    assert "usr1" not in (fleet.log_dir / "beta.log").read_text()
    assert pids(fleet.status()) == before  # trapped: nobody died
    result = fleet.ctl("kill", "-s", "10", "beta")  # by number, said by name (regression)
    assert result.returncode == 0
    assert result.stdout == "sent SIGUSR1 to beta\n"
    wait_until(lambda: "got-usr1" in (fleet.log_dir / "beta.log").read_text(), 5,
               what="beta's trap")


def test_kill_default_term_and_errors(running: Fleet) -> None:
    pid = running.status()["alpha"]["pid"]
    assert running.ctl("kill", "alpha").returncode == 0
    wait_until(lambda: not pid_alive(pid), 5, what="SIGTERM to end the node")
    assert running.ctl("kill", "-s", "NOSUCHSIG", "alpha").returncode == 2
    assert running.ctl("kill", "-s", "USR1", "nosuchnode").returncode == 2
    assert running.ctl("stop", "beta").returncode == 0
    result = running.ctl("kill", "-s", "USR1", "beta")
    assert result.returncode == 1
    assert "no running node" in result.stderr


def test_kill_needs_a_name(running: Fleet) -> None:
    """Regression: `stemctl kill` with no NAME signalled every node, so a
    bare `stemctl kill -s KILL` took down the fleet. SPEC §3 writes `kill
    ... NAME...`: a usage error, nothing sent; a program's name still means
    each of its nodes."""
    before = pids(running.status())
    for args in (("kill",), ("kill", "-s", "KILL"), ("kill", "--group", "-s", "TERM")):
        result = running.ctl(*args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert "required: NAME" in result.stderr and not result.stdout
        result = running.ctl("--json", *args)
        assert result.returncode == 2
        assert json.loads(result.stdout)["error"]["code"] == "bad_argument"
    assert pids(running.wait_state("RUNNING")) == before
    assert all(pid_alive(pid) for pid in before.values())
    help_text = running.ctl("kill", "--help").stdout
    assert "default: all" not in help_text and "NAME [NAME ...]" in help_text
    program = running.status()["alpha"]["program"]
    result = running.ctl("kill", "-s", "KILL", program)  # the program: both its nodes
    assert result.returncode == 0, result.stderr
    wait_until(lambda: not any(pid_alive(pid) for pid in before.values()), 5,
               what="both nodes killed")


# ------------------------------------------------------------------- reload


def test_reload_applies_only_the_difference(fleet: Fleet) -> None:
    command = script(fleet, "worker.sh", ARGS_IGNORED)
    fleet.write(nodes="keep change drop", command=command)
    fleet.start()
    before = pids(fleet.wait_state("RUNNING"))
    fleet.write(nodes="keep change add", opts="--tag:change=v2")
    result = fleet.ctl("--json", "reload")
    assert result.returncode == 0, result.stderr
    diff = json.loads(result.stdout)
    assert diff["added"] == ["add"]
    assert diff["removed"] == ["drop"]
    assert diff["changed"] == ["change"]
    assert diff["unchanged"] == ["keep"]
    after = fleet.wait_state("RUNNING")
    assert set(after) == {"keep", "change", "add"}
    assert after["keep"]["pid"] == before["keep"]
    assert after["change"]["pid"] != before["change"]
    assert not pid_alive(before["drop"]) and not pid_alive(before["change"])
    assert running_pids_of(fleet) == set(after_pid["pid"] for after_pid in after.values())
    # human output
    fleet.write(nodes="keep change")
    result = fleet.ctl("reload")
    assert result.returncode == 0
    assert "removed: add" in result.stdout and "unchanged: 2 node(s)" in result.stdout


def test_a_reload_that_changes_many_nodes_names_them_abridged(fleet: Fleet) -> None:
    """A deploy that changes every node of a large fleet printed every name
    on one line (~10 KB at 1,000 nodes); --json still lists them all."""
    fleet.write(nodes=12, stop_timeout=1)
    fleet.start()
    fleet.wait_state("RUNNING")
    fleet.write(nodes=12, stop_timeout=1, command="/bin/sleep 1001")
    result = fleet.ctl("reload")
    assert result.returncode == 0, result.stderr
    assert "changed: 12 nodes: worker1, worker2, worker3, ..., worker12\n" in result.stdout
    fleet.write(nodes=12, stop_timeout=1, command="/bin/sleep 1002")
    result = fleet.ctl("--json", "reload")
    assert json.loads(result.stdout)["changed"] == [f"worker{i}" for i in range(1, 13)]


def running_pids_of(fleet: Fleet) -> set[int]:
    """The nodes' own PIDs (session leaders) among the fleet's processes."""
    return {p for p in fleet.node_pids() if os.getsid(p) == p}


def test_reload_with_an_invalid_config_keeps_the_running_one(running: Fleet) -> None:
    before = pids(running.status())
    text = running.config.read_text()
    running.config.write_text(text + "STEMD_NODEZ=gamma\nSTEMD_RESTART=sometimes\n")
    result = running.ctl("reload")
    assert result.returncode == 1
    assert "the running one is kept" in result.stderr
    assert "STEMD_NODEZ" in result.stderr and "STEMD_NODES" in result.stderr  # did you mean
    assert "STEMD_RESTART" in result.stderr
    result = running.ctl("--json", "reload")
    assert result.returncode == 1
    assert len(json.loads(result.stdout)["result"]) >= 2
    assert pids(running.wait_state("RUNNING")) == before
    assert running.master_pid() and pid_alive(running.master_pid() or 0)
    running.config.write_text(text)
    assert running.ctl("reload").returncode == 0


# ----------------------------------------------------------------- shutdown


def test_shutdown_returns_once_the_master_is_gone(fleet: Fleet) -> None:
    fleet.write(nodes="alpha beta", command=script(fleet, "slow.sh", SLOW_TERM))
    fleet.start()
    nodes = pids(fleet.wait_state("RUNNING"))
    master = fleet.master_pid()
    assert master is not None
    t0 = time.monotonic()
    result = fleet.ctl("shutdown")
    elapsed = time.monotonic() - t0
    # checked at once, no waiting: the command returned only after the exit
    assert not pid_alive(master)
    assert result.returncode == 0, result.stderr
    assert f"stemd (pid {master}) stopped" in result.stdout
    assert elapsed >= 0.5  # the nodes' slow stop was waited for
    assert not any(pid_alive(p) for p in nodes.values())
    assert fleet.node_pids() == []
    assert not (fleet.run_dir / "stemd.sock").exists()
    assert fleet.ctl("status").returncode == 3


def test_shutdown_json(running: Fleet) -> None:
    master = running.master_pid()
    result = running.ctl("shutdown", "--json")
    assert result.returncode == 0
    assert json.loads(result.stdout) == {"stopped": True, "pid": master, "left_behind": [],
                                         "stop_forced": []}
    assert not pid_alive(master or 0)


# --------------------------------------------------------------------- logs


def test_logs_prints_the_last_lines(running: Fleet) -> None:
    log = running.log_dir / "alpha.log"
    with log.open("a") as f:
        f.writelines(f"line {i}\n" for i in range(100))
    result = running.ctl("logs", "alpha", "-n", "3")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "line 97\nline 98\nline 99\n"
    result = running.ctl("logs", "alpha")
    assert result.stdout.splitlines() == [f"line {i}" for i in range(80, 100)]
    result = running.ctl("logs", "alpha", "-n", "2", "--json")
    data = json.loads(result.stdout)
    assert data["lines"] == ["line 98", "line 99"] and data["path"] == str(log)
    assert running.ctl("logs", "nosuchnode").returncode == 2
    assert running.ctl("logs", "alpha", "-n", "-1").returncode == 2


def test_logs_of_a_node_without_a_log_yet_is_a_clean_error(running: Fleet) -> None:
    """Regression: `stemctl logs alpha` with alpha's log missing printed the
    reason, then died in a traceback (zip of one prefix and no file)."""
    (running.log_dir / "alpha.log").unlink()
    result = running.ctl("logs", "alpha")
    assert result.returncode == 1
    assert "no such file (has alpha written anything yet?)" in result.stderr
    assert "Traceback" not in result.stderr, result.stderr


def test_logs_shows_a_separate_stderr_log_too(fleet: Fleet) -> None:
    """Regression: with stderr_log_file set (supervisord's stderr_logfile,
    imported), `stemctl logs` showed only the stdout log, and a Celery
    worker logs to stderr: its tracebacks were not there."""
    fleet.write(nodes="alpha", stderr_log_file=f"{fleet.log_dir}/%n.err",
                command="/bin/sh -c 'echo to-stdout; echo to-stderr >&2; exec sleep 1000'")
    fleet.start()
    wait_until(lambda: (fleet.log_dir / "alpha.err").exists()
               and (fleet.log_dir / "alpha.err").read_text() != "", 10, what="stderr written")
    result = fleet.ctl("logs", "alpha")
    assert result.returncode == 0, result.stderr
    assert "to-stdout" in result.stdout and "to-stderr" in result.stdout, result.stdout
    err_line = next(line for line in result.stdout.splitlines() if "to-stderr" in line)
    assert "stderr" in err_line.split("|")[0], err_line  # its stream is named
    data = json.loads(fleet.ctl("logs", "alpha", "--json").stdout)
    assert data["lines"] == ["to-stdout"]
    assert data["stderr"]["lines"] == ["to-stderr"]
    assert data["stderr"]["path"] == str(fleet.log_dir / "alpha.err")


def test_logs_follow(running: Fleet) -> None:
    log = running.log_dir / "alpha.log"
    with log.open("a") as f:
        f.write("before\n")
    proc = subprocess.Popen([STEMCTL, "--config", str(running.config), "logs", "alpha", "-f",
                             "-n", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=running.env(), stdin=subprocess.DEVNULL)
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    try:
        assert lines.get(timeout=10) == "before\n"
        with log.open("a") as f:
            f.write("after\n")
        assert lines.get(timeout=10) == "after\n"
        # what the node itself writes is followed too
        pid = running.status()["alpha"]["pid"]
        assert pid is not None
        with log.open("a") as f:
            f.write("third\n")
        assert lines.get(timeout=10) == "third\n"
        assert proc.poll() is None  # still following
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0


# -------------------------------------------------------------- healthcheck


def test_healthcheck(running: Fleet) -> None:
    pidfile = str(running.run_dir / "stemd.pid")
    result = running.ctl("healthcheck")
    assert result.returncode == 0
    assert f"alive (pid {running.master_pid()})" in result.stdout
    # no socket needed: a bogus one, then an unreadable one
    assert run_ctl("--socket", "/nonexistent/stemd.sock", "healthcheck",
                   "--pidfile", pidfile).returncode == 0
    sock = running.run_dir / "stemd.sock"
    sock.chmod(0)
    try:
        assert run_ctl("healthcheck", "--pidfile", pidfile).returncode == 0
    finally:
        sock.chmod(0o660)
    result = run_ctl("--json", "healthcheck", "--pidfile", pidfile)
    assert json.loads(result.stdout)["alive"] is True
    # a node's PID file works too
    node_pidfile = str(running.run_dir / "alpha.pid")
    assert run_ctl("healthcheck", "--pidfile", node_pidfile).returncode == 0
    assert running.ctl("shutdown").returncode == 0
    assert running.ctl("healthcheck").returncode == 1
    assert run_ctl("healthcheck", "--pidfile", pidfile).returncode == 1
    assert run_ctl("healthcheck", "--pidfile", node_pidfile).returncode == 1


def test_healthcheck_of_a_stale_pidfile_is_dead(fleet: Fleet) -> None:
    fleet.write()
    fleet.run_dir.mkdir(parents=True)
    gone = subprocess.Popen(["true"])
    gone.wait()
    (fleet.run_dir / "stemd.pid").write_text(f"{gone.pid}\n")
    assert fleet.ctl("healthcheck").returncode == 1


# ----------------------------------------------------------------- diagnose


def test_diagnose_clean(running: Fleet) -> None:
    result = running.ctl("diagnose")
    assert result.returncode == 0, result.stdout
    assert "no problems found" in result.stdout
    assert f"master pid {running.master_pid()}: 2 RUNNING" in result.stdout
    data = json.loads(running.ctl("diagnose", "--json").stdout)
    assert data["problems"] == [] and data["master"]["states"] == {"RUNNING": 2}


def test_diagnose_clean_without_a_master(fleet: Fleet) -> None:
    fleet.write()
    result = fleet.ctl("diagnose")
    assert result.returncode == 0, result.stdout
    assert "the master is not running" in result.stdout


def test_diagnose_tells_stale_pid_files_with_one_reason_once(fleet: Fleet) -> None:
    """After the whole fleet died with its master (an OOM kill, a crash),
    every PID file is stale for the same reason: one line, not one a node."""
    fleet.write(nodes=6)
    fleet.run_dir.mkdir(parents=True)
    fleet.log_dir.mkdir(parents=True)
    gone = subprocess.Popen(["true"])
    gone.wait()
    for i in range(1, 7):
        (fleet.run_dir / f"worker{i}.pid").write_text(f"{gone.pid}\n")
    data = json.loads(fleet.ctl("diagnose", "--json").stdout)
    stale = [p["message"] for p in data["problems"] if "stale PID file" in p["message"]]
    assert len(stale) == 1, stale
    assert stale[0].startswith(
        "stale PID files of 6 nodes (worker1, worker2, worker3, ..., worker6): "), stale


def test_diagnose_finds_a_stale_pidfile_and_a_dead_socket(fleet: Fleet) -> None:
    fleet.write()
    fleet.run_dir.mkdir(parents=True)
    fleet.log_dir.mkdir(parents=True)
    gone = subprocess.Popen(["true"])
    gone.wait()
    (fleet.run_dir / "alpha.pid").write_text(f"{gone.pid}\n")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(fleet.run_dir / "stemd.sock"))
    dead.close()
    result = fleet.ctl("diagnose")
    assert result.returncode == 1
    assert "stale PID file" in result.stdout and str(gone.pid) in result.stdout
    assert "dead socket" in result.stdout
    assert "hint" in result.stdout or "start stemd" in result.stdout
    data = json.loads(fleet.ctl("diagnose", "--json").stdout)
    messages = " ".join(p["message"] for p in data["problems"])
    assert "stale PID file" in messages and "dead socket" in messages
    assert all(p["hint"] for p in data["problems"])


def test_diagnose_reports_config_errors(fleet: Fleet) -> None:
    fleet.write()
    fleet.config.write_text(fleet.config.read_text() + "STEMD_STOP_TIMEOUT=soon\n")
    result = fleet.ctl("diagnose")
    assert result.returncode == 1
    assert "STEMD_STOP_TIMEOUT" in result.stdout


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user can traverse (pytest's base temp dir is 0700)."""
    root = Path(tempfile.mkdtemp(prefix="stemd-diag-", dir="/tmp"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    """``python -m ARGV...`` as ``nobody``, with this checkout's code and this venv's
    dependencies: both must be readable by nobody, or the test skips and says why."""
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody'")
    repo = Path(__file__).resolve().parents[2]
    path = os.pathsep.join([str(repo), sysconfig.get_paths()["purelib"],
                            sysconfig.get_paths()["platlib"]])

    def run(python: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [python, *args], user=nobody.pw_uid, group=nobody.pw_gid, extra_groups=[],
            cwd="/", env={"PYTHONPATH": path, "PATH": "/usr/bin:/bin"},
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)

    # This interpreter, or one of the same version nobody can run (this one may live under
    # root's 0700 home): the venv's compiled dependencies need the same version.
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    probe_code = (f"import sys; assert '%d.%d' % sys.version_info[:2] == '{version}'; "
                  "import psutil, stemd.ctl, stemd.checks")
    for python in (os.path.realpath(sys.executable), f"/usr/bin/python{version}",
                   f"/usr/local/bin/python{version}", "/usr/bin/python3"):
        try:
            if run(python, "-c", probe_code).returncode == 0:
                return run(python, *argv)
        except OSError:
            continue
    pytest.skip(f"no Python {version} that nobody can run with this checkout and venv")


def test_diagnose_reports_an_unwritable_directory(open_dir: Path) -> None:
    """Root writes everywhere, so as root (CI) stemctl runs as ``nobody``: the directory is
    unwritable for whoever runs it, which is what diagnose must report."""
    fleet = Fleet(open_dir)
    fleet.write(create_dirs=0)
    fleet.run_dir.mkdir(mode=0o555)
    if os.geteuid() == 0:
        result = as_nobody("-m", "stemd.ctl", "--config", str(fleet.config), "diagnose")
    else:
        result = fleet.ctl("diagnose")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{fleet.run_dir} (" in result.stdout and "is not writable" in result.stdout, \
        result.stdout + result.stderr


def test_diagnose_by_an_operator_does_not_judge_a_root_masters_directories(
        open_dir: Path) -> None:
    """Regression: an operator (not root) running diagnose against a root
    master was told the run directory "is not writable by stemd's user":
    os.access answered for the operator. With a master running as another
    uid, writability is not judged from the operator's side."""
    if os.geteuid() != 0:
        pytest.skip("needs a root master and another user to diagnose it")
    fleet = Fleet(open_dir)
    fleet.write()
    fleet.start()
    try:
        assert (fleet.run_dir.stat().st_mode & 0o777) == 0o755
        result = as_nobody("-m", "stemd.ctl", "--config", str(fleet.config), "diagnose")
        out = result.stdout + result.stderr
        assert "Traceback" not in out, out
        assert result.returncode in (0, 1), out
        assert "is not writable" not in out, out
    finally:
        fleet.ctl("shutdown")


# ------------------------------------------------------------------- config


def test_config_needs_no_master(fleet: Fleet) -> None:
    fleet.write(nodes="alpha beta", opts="-c 4 -c:beta 2")
    result = fleet.ctl("config")
    assert result.returncode == 0, result.stderr
    assert "alpha (worker): /bin/sleep 1000 -c 4" in result.stdout
    assert "beta (worker): /bin/sleep 1000 -c 2" in result.stdout
    data = json.loads(fleet.ctl("config", "--json").stdout)
    assert data["stemd"]["socket"] == str(fleet.run_dir / "stemd.sock")
    # unset keys are said so, never Python's None (regression)
    assert "None" not in result.stdout, result.stdout
    assert "master.socket_group = (unset: socket mode 0600" in result.stdout


def test_config_toml_loads_back_to_the_same_nodes(fleet: Fleet, tmp_path: Path) -> None:
    fleet.write(nodes="alpha beta gamma", opts="-c 4 -c:beta 2 --queue:2-3=q",
                stop_signal="INT", start_secs=0.7)
    fleet.exports["QUEUE_URL"] = "redis://x"
    fleet.write()
    result = fleet.ctl("config", "--toml")
    assert result.returncode == 0, result.stderr
    dumped = tmp_path / "dumped.toml"
    dumped.write_text(result.stdout)
    original = load_config(str(fleet.config), {})
    loaded = load_config(str(dumped), {})
    assert loaded.nodes == original.nodes
    assert loaded.master == original.master


def test_config_with_errors_exits_1(fleet: Fleet) -> None:
    fleet.write()
    fleet.config.write_text(fleet.config.read_text() + "STEMD_NODES=$(reboot)\n")
    result = fleet.ctl("config")
    assert result.returncode == 1
    assert "stem.env" in result.stderr


# ------------------------------------------------------------------ version


def test_version(running: Fleet) -> None:
    from stem_core import __version__

    result = running.ctl("version")
    assert result.returncode == 0
    assert result.stdout.splitlines() == [
        f"stemctl {__version__}",
        f"stemd {__version__} (pid {running.master_pid()}, protocol {P.VERSION})"]
    data = json.loads(running.ctl("--json", "version").stdout)
    assert data["master"]["pid"] == running.master_pid()
    running.ctl("shutdown")
    result = running.ctl("version")
    assert result.returncode == 0 and "stemd: not running" in result.stdout
    assert json.loads(running.ctl("version", "--json").stdout)["master"] is None


# -------------------------------------------------- --json on every command


@pytest.mark.parametrize("args", [
    ("status",), ("status", "alpha"), ("status", "nosuch"), ("start", "alpha"),
    ("stop", "beta"), ("restart", "alpha"), ("kill", "-s", "CONT", "alpha"), ("reload",),
    ("logs", "alpha"), ("healthcheck",), ("diagnose",), ("config",), ("version",),
    ("shutdown",),
])
@pytest.mark.parametrize("where", ["global", "command"])
def test_json_on_every_command(running: Fleet, args: tuple[str, ...], where: str) -> None:
    argv = ("--json", *args) if where == "global" else (args[0], "--json", *args[1:])
    result = running.ctl(*argv)
    assert result.returncode in (0, 2), result.stderr
    json.loads(result.stdout)
    if args == ("status", "nosuch"):
        assert result.returncode == 2
        assert json.loads(result.stdout)["error"]["code"] == "not_found"


# --------------------------------------------------------------- exit codes


@pytest.mark.parametrize("args", [
    ("status",), ("status", "alpha"), ("start",), ("stop", "alpha"), ("restart",),
    ("kill", "alpha"), ("reload",), ("shutdown",), ("logs", "alpha"),
])
def test_exit_3_when_no_master_runs(fleet: Fleet, args: tuple[str, ...]) -> None:
    fleet.write()
    result = fleet.ctl(*args)
    assert result.returncode == 3, (result.stdout, result.stderr)
    assert f"start it with 'stemd --config {fleet.config}'" in result.stderr
    result = fleet.ctl("--json", *args)
    assert result.returncode == 3
    assert json.loads(result.stdout)["error"]["code"] == "not_running"


def test_exit_3_with_a_dead_socket_file(fleet: Fleet) -> None:
    fleet.write()
    fleet.run_dir.mkdir(parents=True)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(fleet.run_dir / "stemd.sock"))
    dead.close()
    assert fleet.ctl("status").returncode == 3


@pytest.mark.parametrize("args", [
    (), ("frobnicate",), ("logs", "-n"), ("logs", "alpha", "-n", "many"), ("stop", "--bogus"),
    ("start", "nosuch"), ("stop", "nosuch"), ("restart", "alpha", "nosuch"),
    ("kill", "-s", "USR1", "nosuch"), ("logs", "nosuch"), ("status", "nosuch"),
])
def test_exit_2_for_usage_errors_and_unknown_names(running: Fleet,
                                                    args: tuple[str, ...]) -> None:
    before = pids(running.status())
    result = running.ctl(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr
    assert pids(running.wait_state("RUNNING")) == before


@pytest.mark.parametrize("args", [
    ("--json",), ("--json", "bogus"), ("--json", "scale", "worker", "abc"),
    ("scale", "--json", "worker", "abc"), ("--json", "logs", "-n", "many"),
    ("--json", "status", "--bogus"), ("--json", "top", "-i", "soon"),
    ("--json", "--timeout", "-1", "status"),
])
def test_with_json_a_usage_error_is_a_json_error_object(args: tuple[str, ...]) -> None:
    """Regression: with --json, argparse's usage errors were plain text on
    stderr and nothing on stdout. Now the error object of every other
    client-side error (not_running, bad_config), exit 2."""
    result = run_ctl(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    response = json.loads(result.stdout)
    assert response["ok"] is False and response["v"] == P.VERSION
    assert response["error"]["code"] == "bad_argument"
    assert response["error"]["message"] and response["error"]["hint"].endswith("--help")
    assert "_count" not in result.stdout and "_interval" not in result.stdout


@pytest.mark.parametrize("args, said", [
    (("scale", "worker", "abc"), "argument N: not a number of nodes: 'abc'"),
    (("logs", "-n", "many"), "argument -n/--lines: not a number of lines (0 or more): 'many'"),
    (("top", "-i", "soon"), "argument -i/--interval: not a number of seconds: 'soon'"),
])
def test_a_bad_number_is_said_without_internal_names(args: tuple[str, ...], said: str) -> None:
    """Regression: "invalid _count value: 'abc'" named a function of stemctl's."""
    result = run_ctl(*args)
    assert result.returncode == 2 and not result.stdout
    assert result.stderr.startswith(f"usage: stemctl {args[0]}")
    assert f"stemctl {args[0]}: error: {said}" in result.stderr


def test_socket_found_from_option_environment_and_config(running: Fleet) -> None:
    sock = str(running.run_dir / "stemd.sock")
    assert run_ctl("--socket", sock, "status").returncode == 0
    assert run_ctl("status", env={"STEMD_SOCKET": sock}).returncode == 0
    assert run_ctl("status", env={"STEMD_CONFIG": str(running.config)}).returncode == 0
    # --socket wins over the environment
    assert run_ctl("--socket", "/nonexistent.sock", "status",
                   env={"STEMD_SOCKET": sock}).returncode == 3


def test_help_teaches(fleet: Fleet) -> None:
    result = run_ctl("--help")
    assert result.returncode == 0
    assert "examples:" in result.stdout and "exit status" in result.stdout
    for command in ("status", "start", "stop", "restart", "kill", "reload", "shutdown", "logs",
                    "healthcheck", "diagnose", "config", "version"):
        assert command in result.stdout
        sub = run_ctl(command, "--help")
        assert sub.returncode == 0
        assert f"stemctl {command}" in sub.stdout and "example" in sub.stdout



def test_a_config_with_errors_still_names_its_own_socket(running: Fleet) -> None:
    """Regression: stemctl used to fall back to the default socket (another
    master's, perhaps) when the config file had an error; then it refused any
    file that did not lex (issue 12: `stop` said "not running" and left the
    fleet up). The socket's own line is read leniently; only when that line is
    broken is the master unknown (exit 2), never the default."""
    text = running.config.read_text()
    running.config.write_text(text + "STEMD_RESTART=sometimes\n")
    assert running.ctl("status").returncode == 0  # its STEMD_SOCKET still found
    running.config.write_text(text + "STEMD_NODES=$(reboot)\n")  # not even parseable
    result = running.ctl("status")
    assert result.returncode == 0, result.stderr
    assert "stem.env" in result.stderr and "warning" in result.stderr
    sock = str(running.run_dir / "stemd.sock")
    running.config.write_text(text.replace(f"STEMD_SOCKET={sock}", f'STEMD_SOCKET="{sock}'))
    result = running.ctl("stop")
    assert result.returncode == 2, result.stderr  # which master is unknown: a usage error
    assert "stem.env" in result.stderr and "never closed" in result.stderr
    running.config.write_text(text)
    assert running.ctl("status").returncode == 0  # the stop never reached anyone


@pytest.mark.parametrize("how", ["option", "environment"])
def test_a_named_config_that_does_not_exist_is_an_error(running: Fleet, tmp_path: Path,
                                                        how: str) -> None:
    """Regression: `stemctl -c /etc/default/stem-biling status` (a typo) fell
    back to the default socket, so `stop` or `shutdown --force` acted on the
    default fleet. The running fleet stands in for it: its paths are in the
    environment, where the fallback found them. A usage error (2) naming the
    file, as `stemctl config` words it; nothing is done."""
    missing = str(tmp_path / "stem-biling")
    env = {"STEMD_SOCKET": str(running.run_dir / "stemd.sock"),
           "STEMD_MASTER_PID_FILE": str(running.run_dir / "stemd.pid")}
    named: tuple[str, ...] = ("--config", missing) if how == "option" else ()
    if how == "environment":
        env["STEMD_CONFIG"] = missing
    before = pids(running.status())
    for args in (("status",), ("shutdown", "--force"), ("stop",), ("healthcheck",)):
        result = run_ctl(*named, *args, env=env)
        # healthcheck: 0 alive, 1 otherwise (SPEC §3; Docker reserves 2)
        expected = 1 if args == ("healthcheck",) else 2
        assert result.returncode == expected, (args, result.stdout, result.stderr)
        assert f"{missing}: configuration file not found" in result.stderr
    result = run_ctl(*named, "--json", "stop", env=env)
    assert result.returncode == 2
    error = json.loads(result.stdout)["error"]
    assert error["code"] == "bad_config" and missing in error["message"]
    assert pids(running.wait_state("RUNNING")) == before
    assert "configuration file not found" in run_ctl(*named, "config", env=env).stderr


def run_into_a_closed_pipe(*argv: str) -> subprocess.CompletedProcess[str]:
    """stemctl writing into a pipe whose reader is already gone (`| head`
    that has read what it wanted): its first write fails with EPIPE."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([STEMCTL, *argv], stdout=write_end, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, text=True, timeout=30,
                              env={k: v for k, v in os.environ.items()
                                   if not k.startswith("STEMD_")})
    finally:
        os.close(write_end)


@pytest.mark.parametrize("args, code", [
    (("top", "-i", "0.2"), 0), (("--json", "top"), 0), (("status",), 0),
    (("--json", "status"), 0), (("status", "--stats", "--json"), 0), (("logs", "alpha"), 0),
    (("logs", "-f"), 0), (("config",), 0), (("--json", "status", "nosuch"), 2),
])
def test_a_reader_gone_is_no_traceback(running: Fleet, args: tuple[str, ...],
                                       code: int) -> None:
    """Regression: `stemctl top </dev/null | head -5` and `stemctl --json top
    | head -c 300` ended in a BrokenPipeError traceback (logs alone handled
    it). Now every command stops quietly, with the exit status it had."""
    (running.log_dir / "alpha.log").write_text("a line\n" * 100)
    result = run_into_a_closed_pipe("--config", str(running.config), *args)
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr
    assert "BrokenPipe" not in result.stderr


@pytest.mark.parametrize("args, code", [
    (("--json", "bogus"), 2), (("--json", "--socket", "/nonexistent.sock", "status"), 3),
    (("--help",), 0), (("status", "--help"), 0),
])
def test_a_reader_gone_is_no_traceback_for_errors_and_help_either(
        args: tuple[str, ...], code: int) -> None:
    result = run_into_a_closed_pipe(*args)
    assert result.returncode == code, result.stderr
    assert not result.stderr
