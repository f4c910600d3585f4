"""State-change hooks (issue 15 §4), with real processes."""

from __future__ import annotations

import os
import signal
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from tests.fleet import Fleet, pid_alive, wait_until


def hook_script(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "hook.sh"
    script.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    script.chmod(0o755)
    return script


def metric(fleet: Fleet, name: str) -> float:
    for line in fleet.ctl("metrics").stdout.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no {name}")


def zombies_of(pid: int) -> list[int]:
    return [c.pid for c in psutil.Process(pid).children()
            if c.status() == psutil.STATUS_ZOMBIE]


def test_hook_gets_the_event_and_runs_as_a_plain_command(fleet: Fleet, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    hook = hook_script(tmp_path, f"""\
        env | grep '^STEMD_' | sort > {out}/$STEMD_NODE.$STEMD_TO_STATE.tmp
        echo "sid=$(ps -o sid= -p $$ | tr -d ' ') pid=$$" >> {out}/$STEMD_NODE.$STEMD_TO_STATE.tmp
        mv {out}/$STEMD_NODE.$STEMD_TO_STATE.tmp {out}/$STEMD_NODE.$STEMD_TO_STATE
        echo "hook output goes to the node's log"
        """)
    fleet.write(nodes="alpha beta", command="/bin/sh -c 'sleep 0.5; exit 3'", restart="no",
                start_secs=0.2, on_state_change=str(hook))
    fleet.start()
    wait_until(lambda: (out / "alpha.EXITED").exists() and (out / "beta.EXITED").exists(), 20,
               what="the hook's files")
    text = (out / "alpha.EXITED").read_text()
    assert "STEMD_NODE=alpha\n" in text and "STEMD_PROGRAM=worker\n" in text
    assert "STEMD_FROM_STATE=RUNNING\n" in text and "STEMD_TO_STATE=EXITED\n" in text
    assert "STEMD_EXIT_STATUS=3\n" in text
    assert "STEMD_LAST_ERROR=pid " in text and "exit status 3" in text
    assert "STEMD_INSTANCE" not in text  # never taken for a node by a later master
    sid, pid = (int(w.split("=")[1]) for w in text.splitlines()[-1].split())
    assert sid == pid, "the hook runs in its own session"
    wait_until(lambda: "hook output goes to the node's log" in
               (fleet.log_dir / "alpha.log").read_text(), 10, what="the hook's output")
    # only the selected transitions: the default has no STARTING, RUNNING
    assert sorted(p.name for p in out.iterdir()) == ["alpha.EXITED", "beta.EXITED"]
    wait_until(lambda: metric(fleet, "stemd_hooks_started_total") == 2, 10, what="2 hooks")


def test_fatal_and_chosen_states(fleet: Fleet, tmp_path: Path) -> None:
    out = tmp_path / "events"
    hook = hook_script(tmp_path, f"echo $STEMD_NODE $STEMD_FROM_STATE $STEMD_TO_STATE >> {out}\n")
    fleet.write(nodes="alpha", command="/bin/false", start_retries=2, start_secs=0.5,
                on_state_change=str(hook), on_state_change_states="FATAL backoff")
    fleet.start_failing()
    wait_until(lambda: out.exists() and "FATAL" in out.read_text(), 20, what="FATAL hook")
    lines = out.read_text().splitlines()
    assert "alpha STARTING BACKOFF" in lines and "alpha STARTING FATAL" in lines, lines


def test_failing_hook_never_affects_the_node(fleet: Fleet, tmp_path: Path) -> None:
    fleet.write(nodes="alpha", start_secs=0.2, on_state_change_states="STARTING RUNNING",
                on_state_change="/nonexistent/hook")
    fleet.start()
    pid = fleet.status("alpha")["alpha"]["pid"]
    wait_until(lambda: "could not start" in fleet.master_log(), 10, what="the logged failure")
    assert fleet.status("alpha")["alpha"]["state"] == "RUNNING"
    assert fleet.status("alpha")["alpha"]["pid"] == pid


@pytest.mark.slow
def test_hanging_hook_is_killed_at_its_timeout(fleet: Fleet, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    hook = hook_script(tmp_path, f"""\
        echo $$ >> {pids}
        sleep 1000 &  # a child in its session dies with it
        echo $! >> {pids}
        wait
        """)
    fleet.write(nodes="alpha", start_secs=0.2, on_state_change=str(hook), hook_timeout=1.5,
                on_state_change_states="crash-loop RUNNING")
    fleet.start()
    wait_until(lambda: pids.exists() and len(pids.read_text().split()) == 2, 10,
               what="the hook and its child")
    started = time.monotonic()
    hook_pid, child = (int(p) for p in pids.read_text().split())
    wait_until(lambda: not pid_alive(hook_pid) and not pid_alive(child), 15,
               what="the hook's session to be killed")
    assert time.monotonic() - started < 10
    log = fleet.master_log()
    assert "hook still running after 1.5s: killing it" in log, log
    assert "hook for STARTING -> RUNNING failed: killed by SIGKILL" in log, log
    assert fleet.status("alpha")["alpha"]["state"] == "RUNNING"
    assert zombies_of(fleet.master_pid() or 0) == []
    assert metric(fleet, "stemd_hooks_timed_out_total") == 1


@pytest.mark.slow
def test_a_thousand_crash_events_are_bounded_and_leave_no_zombie(fleet: Fleet,
                                                                 tmp_path: Path) -> None:
    """20 nodes that exit at once, restarted at once (no crash-loop back-off):
    every respawn is an event (STARTING selected); hooks take 0.3 s and 2
    may run at once, so most events wait, coalesced to one per node."""
    running = tmp_path / "running"
    running.mkdir()
    hook = hook_script(tmp_path, f"""\
        touch {running}/$$
        sleep 0.3
        rm {running}/$$
        """)
    fleet.write(nodes="20", command="/bin/sh -c 'sleep 0.05'", start_secs=0,
                restart_burst=100000, restart_window=0.01, on_state_change=str(hook),
                on_state_change_states="STARTING", hooks_max=2)
    fleet.start()
    master = fleet.master_pid()
    assert master is not None
    most = 0

    def restarts() -> int:
        nonlocal most
        most = max(most, len(list(running.iterdir())))
        return sum(n["restarts"] for n in fleet.status().values())

    wait_until(lambda: restarts() >= 1000, 120, interval=0.05, what="1,000 crash events")
    assert most <= 2, f"{most} hooks ran at once (hooks_max=2)"
    assert metric(fleet, "stemd_hooks_waiting") <= 20  # one per node at most
    assert metric(fleet, "stemd_hooks_coalesced_total") > 500
    assert "earlier events coalesced into this one" in fleet.master_log()
    assert fleet.ctl("stop").returncode == 0
    wait_until(lambda: metric(fleet, "stemd_hooks_running") == 0
               and metric(fleet, "stemd_hooks_waiting") == 0, 30, what="the hooks to drain")
    wait_until(lambda: not zombies_of(master), 10, what="no zombie")
    assert pid_alive(master)
    os.kill(master, signal.SIGTERM)


def test_a_restored_verdict_runs_no_hook_again(fleet: Fleet, tmp_path: Path) -> None:
    """A master that dies and is started again restores FATAL from its state
    file (STOPPED -> FATAL): that is not a new event, the hook ran for it."""
    out = tmp_path / "events"
    hook = hook_script(tmp_path, f"echo $STEMD_NODE $STEMD_FROM_STATE $STEMD_TO_STATE >> {out}\n")
    fleet.write(nodes="alpha", command="/bin/false", start_retries=1, start_secs=0.5,
                on_state_change=str(hook))
    fleet.start_failing()
    wait_until(lambda: out.exists() and "FATAL" in out.read_text(), 20, what="FATAL hook")
    master = fleet.master_pid()
    assert master is not None
    state = fleet.run_dir / "stemd.state"
    # the state file is written at most 0.2 s after a change
    wait_until(lambda: '"state":"FATAL"' in state.read_text(), 10, what="FATAL on disk")
    os.kill(master, signal.SIGKILL)
    wait_until(lambda: not pid_alive(master), 10, what="the master to die")
    fleet.start_failing()
    assert fleet.status("alpha")["alpha"]["state"] == "FATAL"
    wait_until(lambda: "restored from the state file" in fleet.master_log(), 10,
               what="the restore")
    assert metric(fleet, "stemd_hooks_started_total") == 0
    assert out.read_text().splitlines() == ["alpha STARTING FATAL"]
