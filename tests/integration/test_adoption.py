"""Surviving a master crash, and PID files that lie (SPEC §2.2).

A node PID file is a record, not the truth: the master adopts the process it
names only when that process still is the node, and otherwise removes the
file without ever signalling what it names.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import subprocess
from collections import Counter
from pathlib import Path

import psutil
import pytest
from conftest import Fleet, pid_alive, wait_until

from tests.fleet import CHILD_NODE


def node_names(fleet: Fleet) -> Counter[str]:
    """How many live processes claim to be each node (duplicates show)."""
    names: Counter[str] = Counter()
    for pid in fleet.node_pids():
        try:
            names[psutil.Process(pid).environ().get("STEMD_NODE", "?")] += 1
        except psutil.NoSuchProcess:
            continue
    return names


def kill_master(fleet: Fleet) -> int:
    master = fleet.master_pid()
    assert master is not None
    os.kill(master, signal.SIGKILL)
    wait_until(lambda: not pid_alive(master), 5, what="the master gone")
    return master


def test_kill_9_of_the_master_then_adoption(fleet: Fleet) -> None:
    fleet.write(nodes="alpha beta")
    fleet.start()
    before = {n: i["pid"] for n, i in fleet.wait_state("RUNNING").items()}
    old_master = kill_master(fleet)

    # the nodes outlive their master
    assert all(pid_alive(p) for p in before.values())
    assert sorted(fleet.node_pids()) == sorted(before.values())

    fleet.start()
    assert fleet.master_pid() != old_master
    after = fleet.status()
    assert {n: i["pid"] for n, i in after.items()} == before  # the same processes
    assert all(i["state"] == "RUNNING" and i["adopted"] for i in after.values())
    assert node_names(fleet) == Counter({"alpha": 1, "beta": 1})  # no duplicate
    log = fleet.master_log()
    assert "2 nodes (2 adopted)" in log
    assert f"adopted pid {before['alpha']}" in log

    # an adopted node that dies is restarted, and only once
    os.kill(before["alpha"], signal.SIGKILL)
    info = wait_until(lambda: (s := fleet.status()["alpha"])["state"] == "RUNNING"
                      and s["pid"] != before["alpha"] and s, 10, what="alpha restarted")
    assert not info["adopted"] and info["restarts"] == 1
    assert node_names(fleet) == Counter({"alpha": 1, "beta": 1})
    assert fleet.status()["beta"]["pid"] == before["beta"]

    # and the new master can stop the adopted node it never spawned
    assert fleet.ctl("stop", "beta").returncode == 0
    assert not pid_alive(before["beta"])
    assert not (fleet.run_dir / "beta.pid").exists()


def test_adopted_node_stopped_by_shutdown(fleet: Fleet) -> None:
    fleet.write(nodes="alpha",
                command="/bin/sh -c '/bin/sleep 1000 & wait'")  # a node with a grandchild
    fleet.start()
    leader = fleet.wait_state("RUNNING")["alpha"]["pid"]
    kill_master(fleet)
    fleet.start()
    assert fleet.status()["alpha"]["adopted"]
    assert fleet.ctl("shutdown").returncode == 0
    wait_until(lambda: not fleet.node_pids(), 5, what="the node and its child gone")
    assert not pid_alive(leader)


@pytest.mark.parametrize("whom", ["the test runner", "a dead process", "an impostor"])
def test_node_pid_file_naming_another_process_is_stale(fleet: Fleet, whom: str) -> None:
    fleet.write(nodes="alpha")
    fleet.run_dir.mkdir()
    other: subprocess.Popen[bytes] | None = None
    if whom == "the test runner":
        pid = os.getpid()
    elif whom == "a dead process":
        dead = subprocess.Popen(["/bin/true"])
        dead.wait()
        pid = dead.pid
    else:
        # It even claims to be the node, but stemd never started it: it is
        # not a session leader.
        env = dict(os.environ, STEMD_NODE="alpha", STEMD_PROGRAM="worker",
                   STEM_TEST_MARK=fleet.mark)
        other = subprocess.Popen(["/bin/sleep", "1000"], env=env)
        pid = other.pid
    (fleet.run_dir / "alpha.pid").write_text(f"{pid}\n")
    try:
        fleet.start()
        info = fleet.wait_state("RUNNING")["alpha"]
        assert info["pid"] != pid and not info["adopted"]  # a fresh node
        assert int((fleet.run_dir / "alpha.pid").read_text()) == info["pid"]
        assert f"alpha: removed stale PID file {fleet.run_dir}/alpha.pid (pid {pid}" \
            in fleet.master_log()
        if other is not None:
            assert other.poll() is None  # never signalled
            assert psutil.Process(other.pid).status() != psutil.STATUS_ZOMBIE
    finally:
        if other is not None:
            other.kill()
            other.wait()


def test_status_with_the_master_dead_names_the_nodes_that_still_run(fleet: Fleet) -> None:
    """"Master not running" alone reads as "the fleet is down" while its
    workers still consume tasks: say which nodes run, and change nothing."""
    fleet.write(nodes="alpha beta gamma")
    fleet.start()
    pids = {n: i["pid"] for n, i in fleet.wait_state("RUNNING").items()}
    assert fleet.ctl("stop", "gamma").returncode == 0
    kill_master(fleet)

    result = fleet.ctl("status")
    assert result.returncode == 3, result.stderr  # LSB: not running
    assert "master not running" in result.stderr
    assert (f"2 of its nodes still run: alpha (pid {pids['alpha']}), beta (pid {pids['beta']})"
            in result.stderr), result.stderr
    assert "stemctl shutdown' stops them" in result.stderr
    result = fleet.ctl("status", "--json")
    assert result.returncode == 3
    out = json.loads(result.stdout)
    assert out["error"]["code"] == "not_running"
    assert out["left_running"] == [{"node": "alpha", "pid": pids["alpha"]},
                                   {"node": "beta", "pid": pids["beta"]}]
    # nothing was touched: both run, with their PID files
    assert all(pid_alive(pids[n]) for n in ("alpha", "beta"))
    assert sorted(p.name for p in fleet.run_dir.glob("*.pid")) == ["alpha.pid", "beta.pid",
                                                                   "stemd.pid"]

    # A lock on the dead master's PID file proves nothing (anyone who can
    # read it can take one): the nodes are still named.
    with open(fleet.run_dir / "stemd.pid") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = fleet.ctl("status", "--json")
        assert result.returncode == 3 and len(json.loads(result.stdout)["left_running"]) == 2
    # While a process holds the master's lock file (a master starting), the
    # nodes are its: nothing is said of them.
    with open(fleet.run_dir / "stemd.pid.lock") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = fleet.ctl("status", "--json")
        assert result.returncode == 3 and json.loads(result.stdout)["left_running"] == []

    fleet.ctl("shutdown")  # stops them
    result = fleet.ctl("status", "--json")
    assert result.returncode == 3 and json.loads(result.stdout)["left_running"] == []


@pytest.mark.parametrize("kill_mode", ["mixed", "control-group"])
def test_shutdown_after_a_master_crash_stops_what_it_left(fleet: Fleet, kill_mode: str) -> None:
    """SPEC §2.2: `stemctl shutdown` with the master dead stops its nodes, as the master
    would: the stop signal per STEMD_KILL_MODE, then SIGKILL to what is left of the group
    (here a child of the node's shell that ignores nothing and outlives it)."""
    fleet.write(nodes="alpha beta", kill_mode=kill_mode,
                command="/bin/sh -c 'sleep 1001 & wait'")
    fleet.start()
    pids = {n: i["pid"] for n, i in fleet.wait_state("RUNNING").items()}
    wait_until(lambda: len(fleet.node_pids()) == 4, 5, what="each node's child")
    kill_master(fleet)

    result = fleet.ctl("shutdown", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["pid"] is None
    assert {(n["node"], n["pid"]) for n in out["left_behind"]} == set(pids.items())
    assert fleet.node_pids() == []
    assert not list(fleet.run_dir.glob("*.pid"))
    result = fleet.ctl("shutdown")
    assert result.returncode == 3  # nothing left: "not running"


def test_shutdown_after_a_master_crash_answers_once_the_group_is_gone(fleet: Fleet) -> None:
    """As the master's stop: `stemctl shutdown` SIGKILLs what the dead master's node left in
    its group, and answers only once that has exited (SIGKILL is delivered, not done: freeing
    512 MiB takes the child tens of ms), not while an init script's `restart` could start a
    new fleet beside it."""
    command, ready = fleet.heavy_child_node()
    fleet.write(nodes="alpha", command=command)
    fleet.start()
    wait_until(ready.exists, 30, what="the child ready")
    pidfd = os.pidfd_open(int(ready.read_text()))
    try:
        kill_master(fleet)
        result = fleet.ctl("shutdown")
        exited = select.select([pidfd], [], [], 0)[0] == [pidfd]
    finally:
        os.close(pidfd)
    assert result.returncode == 0, result.stdout + result.stderr
    assert exited, "stemctl shutdown answered while the node's child still ran"


@pytest.mark.parametrize("started_by", ["stemd", "stop and start", "restart"])
def test_adopted_node_started_from_an_older_file_is_changed_for_reload(
        fleet: Fleet, started_by: str) -> None:
    """The file changed while no master ran (a deploy after a crash): the
    adopted process still runs the old command line. The new master cannot
    compare it with a configuration it never loaded, so the state file keeps
    a fingerprint of what each node was started from; ``reload`` then
    restarts the node that runs something else than the file, and leaves
    alone the one that runs what the file says. However the process was
    started: a start by command wrote no fingerprint in a first version."""
    fleet.write(nodes="alpha beta", command=fleet.script("node.sh", CHILD_NODE),
                opts="--version:alpha=1 --version:beta=1")
    fleet.start()
    if started_by == "stop and start":
        assert fleet.ctl("stop").returncode == 0
        assert fleet.ctl("start").returncode == 0
    elif started_by == "restart":
        assert fleet.ctl("restart").returncode == 0
    before = {n: i["pid"] for n, i in fleet.wait_state("RUNNING").items()}
    kill_master(fleet)
    fleet.write(opts="--version:alpha=2 --version:beta=1")
    fleet.start()
    adopted = fleet.status()
    assert {n: i["pid"] for n, i in adopted.items()} == before
    assert adopted["alpha"]["outdated"] and not adopted["beta"]["outdated"]
    log = fleet.master_log()
    assert f"alpha: pid {before['alpha']} runs an older configuration" in log
    assert "beta: pid" not in log
    shown = fleet.ctl("status")
    assert "alpha: runs an older configuration than the file" in shown.stderr

    answer = fleet.ctl("reload", "--json")
    assert answer.returncode == 0, answer.stdout + answer.stderr
    summary = json.loads(answer.stdout)
    assert summary["changed"] == ["alpha"] and summary["unchanged"] == ["beta"]
    after = fleet.wait_state("RUNNING")
    assert after["alpha"]["pid"] != before["alpha"] and not after["alpha"]["outdated"]
    assert psutil.Process(after["alpha"]["pid"]).cmdline()[-1] == "--version=2"
    assert after["beta"]["pid"] == before["beta"]  # it runs what the file says


def test_adopted_node_whose_file_came_back_is_not_restarted(fleet: Fleet) -> None:
    """A crash, the file changed, the master adopts; the change is then
    undone before any reload. The node runs what the file says again: a
    reload restarts nothing, though the file differs from what the master
    loaded."""
    fleet.write(nodes="alpha", command=fleet.script("node.sh", CHILD_NODE), opts="--version=1")
    fleet.start()
    pid = fleet.wait_state("RUNNING")["alpha"]["pid"]
    kill_master(fleet)
    fleet.write(opts="--version=2")
    fleet.start()
    assert fleet.status()["alpha"]["outdated"]
    fleet.write(opts="--version=1")
    answer = fleet.ctl("reload", "--json")
    assert answer.returncode == 0, answer.stdout + answer.stderr
    summary = json.loads(answer.stdout)
    assert summary["changed"] == [] and summary["unchanged"] == ["alpha"]
    info = fleet.status()["alpha"]
    assert info["pid"] == pid and info["state"] == "RUNNING" and not info["outdated"]


#: takes 1 s to stop on TERM, and says when it got one
SLOW_STOP_NODE = """#!/bin/sh
trap 'echo "$STEMD_NODE $$ TERM" >> "$TERMS"; sleep 1; exit 0' TERM
while :; do sleep 1000 & wait $!; done
"""


@pytest.mark.parametrize("how", ["reload", "scale"])
def test_node_added_back_while_its_leftover_is_stopping(fleet: Fleet, tmp_path: Path,
                                                        how: str) -> None:
    """A master that starts after a crash stops the nodes the file no longer
    has (warm: they take 1 s here). Adding one back meanwhile (reload, scale)
    adopted the process being stopped as the new node: two nodes of one
    process, the stopping one never gone, and its "stopping" record in the
    state file then made the next master treat the new process as being
    stopped: no SIGTERM, the stop timeout waited out, then SIGKILL (a
    worker's tasks lost). Found by the crash storm. The added node now waits
    for its leftover to be gone, then starts afresh."""
    terms = tmp_path / "terms.log"
    terms.touch()
    fleet.exports["TERMS"] = str(terms)
    script = fleet.script("node.sh", SLOW_STOP_NODE)
    if how == "reload":
        fleet.write(nodes="alpha beta", command=script, stop_timeout=8)
    else:
        fleet.write(nodes="2", command=script, stop_timeout=8)
    fleet.start()
    if how == "scale":
        program = next(iter(fleet.status().values()))["program"]
        assert fleet.ctl("scale", program, "3").returncode == 0
    names = sorted(fleet.wait_state("RUNNING"))
    extra = names[-1]
    first = fleet.status()[extra]["pid"]
    kill_master(fleet)
    if how == "reload":
        fleet.write(nodes="alpha")
    fleet.start()  # the file lacks the extra node: the new master stops it
    wait_until(lambda: f"{first} TERM" in terms.read_text(), 5, what="the leftover's SIGTERM")
    if how == "reload":
        fleet.write(nodes="alpha beta")
        answer = fleet.ctl("reload", "--json")
    else:
        answer = fleet.ctl("scale", program, "3", "--json")
    assert answer.returncode == 0, answer.stdout + answer.stderr
    assert not pid_alive(first)  # the answer came once the leftover was gone
    info = fleet.wait_state("RUNNING", extra)[extra]
    second = info["pid"]
    assert second != first and not info["adopted"] and info["restarts"] == 0
    assert terms.read_text().count(f"{first} TERM") == 1
    assert "SIGKILL" not in fleet.master_log()

    # the state file says the new process runs: a next master stops it warm
    state = json.loads((fleet.run_dir / "stemd.state").read_text())
    records = [r for r in state["nodes"] if r["name"] == extra]
    assert len(records) == 1 and not records[0]["removed"], records
    kill_master(fleet)
    if how == "reload":
        fleet.write(nodes="alpha")
    fleet.start()
    wait_until(lambda: f"{second} TERM" in terms.read_text(), 5,
               what="SIGTERM to the new process, not a wait for a stop never sent")
    wait_until(lambda: not pid_alive(second), 5, what="the new process stopped")
    assert "SIGKILL" not in fleet.master_log()
