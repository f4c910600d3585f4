"""The operator's intent is the master's state, and a shutdown pre-empts
everything (issue 10 §2). Each test reproduces a failure found by running
stemd by hand; each failed on the master before the fix."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from stem_core import protocol as P
from tests.fleet import STEMCTL, STEMD, Fleet, pid_alive, wait_until

# a node that takes a second to stop, and leaves a child in its group
SLOW_STOP = """\
#!/bin/sh
sleep 1000 &
trap 'sleep 1; kill $!; exit 0' TERM
while :; do sleep 0.05; done
"""


def pids(fleet: Fleet) -> dict[str, Any]:
    return {name: info["pid"] for name, info in fleet.status().items()}


def assert_nothing_left(fleet: Fleet) -> None:
    """"Stopped" means that no node is left: no process, no PID file."""
    master = fleet.master_pid()
    wait_until(lambda: master is None or not pid_alive(master), 30, what="the master to exit")
    assert fleet.node_pids() == [], "nodes survived the master's shutdown"
    assert sorted(p.name for p in fleet.run_dir.glob("*.pid")) == []


def test_sighup_then_sigterm_leaves_no_node_behind(fleet: Fleet) -> None:
    fleet.write(nodes="a b c", command=fleet.script("slow.sh", SLOW_STOP))
    fleet.start()
    fleet.write(nodes="a b c", command=fleet.script("slow.sh", SLOW_STOP), opts="--changed")
    master = fleet.master_pid()
    assert master
    os.kill(master, signal.SIGHUP)
    wait_until(lambda: "reload:" in fleet.master_log(), 10, what="the reload to begin")
    time.sleep(0.3)  # the timing: TERM while the reload restarts nodes
    os.kill(master, signal.SIGTERM)
    assert_nothing_left(fleet)
    assert "stemd stopped" in fleet.master_log()


def background(fleet: Fleet, *args: str) -> subprocess.Popen[str]:
    """``stemctl ARGS`` in the background, its output kept."""
    return subprocess.Popen([STEMCTL, "--config", str(fleet.config), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=fleet.env())


def restart_under_way(fleet: Fleet) -> subprocess.Popen[str]:
    """`stemctl restart` in the background, once it is stopping its first node."""
    restart = background(fleet, "restart")
    wait_until(lambda: "a: RUNNING -> STOPPING" in fleet.master_log(), 10,
               what="the restart's first stop")
    return restart


def test_shutdown_during_a_rolling_restart_leaves_no_node_behind(fleet: Fleet) -> None:
    fleet.write(nodes="a b c", command=fleet.script("slow.sh", SLOW_STOP))
    fleet.start()
    restart = restart_under_way(fleet)
    result = fleet.ctl("shutdown")
    assert result.returncode == 0, result.stderr
    _, err = restart.communicate(timeout=30)
    assert restart.returncode != 0, "the restart was interrupted, it must not say OK"
    assert "shutting down" in err
    assert_nothing_left(fleet)


def test_a_stop_during_a_rolling_restart_stands(fleet: Fleet) -> None:
    """Regression: `stemctl stop` while a rolling restart was on its first
    node stopped the fleet, and then the restart went on and started b and
    c again: the operator's last command was stop, and they ran."""
    fleet.write(nodes="a b c", command=fleet.script("slow.sh", SLOW_STOP), start_secs=0.3)
    fleet.start()
    restart = restart_under_way(fleet)
    result = fleet.ctl("stop")
    assert result.returncode == 0, result.stderr
    _, err = restart.communicate(timeout=60)
    assert restart.returncode != 0 and "stopped meanwhile" in err, err
    time.sleep(1.5)  # b would be back by now had the restart gone on
    nodes = fleet.status()
    assert {n: i["state"] for n, i in nodes.items()} == dict.fromkeys("abc", "STOPPED")
    assert fleet.node_pids() == []


def _send_and_leave(fleet: Fleet, cmd: str) -> None:
    """A client that asks for something and goes away without waiting."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(fleet.run_dir / "stemd.sock"))
        sock.sendall(P.encode(P.request(cmd)))
        time.sleep(0.2)  # long enough for the master to begin


def test_restarts_of_clients_that_left_are_dropped_after_the_current_node(fleet: Fleet
                                                                          ) -> None:
    fleet.write(nodes="a b c", command=fleet.script("slow.sh", SLOW_STOP))
    fleet.start()
    before = pids(fleet)
    _send_and_leave(fleet, "restart")
    # the node step it began is finished (a is not left stopped)...
    nodes = fleet.wait_state("RUNNING", timeout=20)
    wait_until(lambda: "a: STARTING -> RUNNING" in fleet.master_log(), 20, what="a back")
    # ...and the rest are dropped: b and c keep their processes
    time.sleep(1.5)  # b would be stopping by now if the restart had gone on
    nodes = fleet.status()
    assert all(n["state"] == "RUNNING" for n in nodes.values())
    assert nodes["a"]["pid"] != before["a"]
    assert nodes["b"]["pid"] == before["b"] and nodes["c"]["pid"] == before["c"]


def test_two_concurrent_rolling_restarts_never_take_two_nodes_down(fleet: Fleet) -> None:
    fleet.write(nodes="a b c", command=fleet.script("slow.sh", SLOW_STOP), start_secs=0.3)
    fleet.start()
    worst: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            states = fleet.status()
            worst.append(sum(1 for n in states.values() if n["state"] != "RUNNING"))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        clients = [subprocess.Popen([STEMCTL, "--config", str(fleet.config), "restart"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    env=fleet.env()) for _ in range(2)]
        for client in clients:
            assert client.wait(timeout=60) == 0, client.stderr.read() if client.stderr else ""
    finally:
        done.set()
        watcher.join()
    assert max(worst) == 1, f"nodes down at once, per sample: {worst}"
    assert fleet.master_log().count("RUNNING -> STOPPING") == 6


def test_reload_does_not_restart_a_node_the_operator_stopped(fleet: Fleet) -> None:
    fleet.write(nodes="a b", command="/bin/sleep 1000")
    fleet.start()
    assert fleet.ctl("stop", "a").returncode == 0
    before = pids(fleet)
    fleet.write(nodes="a b", command="/bin/sleep 2000")  # both changed
    result = fleet.ctl("reload")
    assert result.returncode == 0, result.stderr
    nodes = fleet.status()
    assert nodes["a"]["state"] == "STOPPED" and nodes["a"]["pid"] is None
    assert nodes["b"]["state"] == "RUNNING" and nodes["b"]["pid"] != before["b"]
    # the new spec applies when the operator starts it
    assert fleet.ctl("start", "a").returncode == 0
    assert "2000" in " ".join(psutil.Process(fleet.status()["a"]["pid"]).cmdline())


def test_reload_fails_naming_a_changed_node_that_does_not_run(fleet: Fleet) -> None:
    fleet.write(nodes="a b", command="/bin/sleep 1000", start_retries=2)
    fleet.start()
    fleet.write(nodes="a b", command="/bin/sleep 1000", start_retries=2,
                opts="-c:a 1")  # sleep rejects -c: a exits at once, b unchanged
    result = fleet.ctl("reload", "--json")
    assert result.returncode == 1, result.stdout
    error = json.loads(result.stdout)["error"]
    assert "not running: a" in error["message"]
    assert fleet.status()["a"]["state"] == "FATAL"
    assert fleet.status()["b"]["state"] == "RUNNING"


def test_removing_the_first_node_restarts_none_of_the_others(fleet: Fleet) -> None:
    fleet.write(nodes="a b c")
    fleet.start()
    before = pids(fleet)
    fleet.write(nodes="b c")
    result = fleet.ctl("reload", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["removed"] == ["a"] and summary["changed"] == []
    after = pids(fleet)
    assert after == {"b": before["b"], "c": before["c"]}
    assert not pid_alive(before["a"])


def test_a_master_restarted_after_kill_9_keeps_intent_counters_and_verdicts(fleet: Fleet
                                                                            ) -> None:
    fleet.write(nodes="a b c", restart="on-failure", start_secs=0.2,
                command="/bin/sh -c 'test \"$STEMD_NODE\" = c && sleep 0.5 && exit 0; "
                        "exec sleep 1000'",
                start_wait=0)
    fleet.start()
    fleet.wait_state("RUNNING", "a", "b")
    fleet.wait_state("EXITED", "c")  # clean exit under on-failure: stays down
    assert fleet.ctl("stop", "b").returncode == 0
    a_pid = fleet.status()["a"]["pid"]
    os.kill(a_pid, signal.SIGKILL)  # a is restarted: restarts = 1
    wait_until(lambda: (n := fleet.status()["a"])["restarts"] == 1
               and n["state"] == "RUNNING", 10, what="a restarted")
    a_pid = fleet.status()["a"]["pid"]
    master = fleet.master_pid()
    assert master
    os.kill(master, signal.SIGKILL)
    wait_until(lambda: not pid_alive(master), 5, what="the master to die")
    fleet.start()
    nodes = fleet.status()
    assert nodes["a"]["pid"] == a_pid and nodes["a"]["restarts"] == 1  # adopted, counted
    assert nodes["b"]["state"] == "STOPPED" and nodes["b"]["wanted"] == "down"
    assert nodes["c"]["state"] == "EXITED" and nodes["c"]["exit_status"] == 0
    # a clean shutdown followed by a start begins fresh
    assert fleet.ctl("shutdown").returncode == 0
    fleet.start()
    wait_until(lambda: fleet.status()["b"]["state"] == "RUNNING", 10, what="b fresh")
    assert fleet.status()["a"]["restarts"] == 0


def test_status_says_why_a_node_is_fatal(fleet: Fleet) -> None:
    worker = Path(fleet.script("worker.sh", "#!/bin/sh\nexec sleep 1000\n"))
    fleet.write(nodes="a", command=str(worker), start_retries=2)
    fleet.start()
    worker.unlink()  # the binary vanishes (a botched deploy)
    os.kill(fleet.status()["a"]["pid"], signal.SIGKILL)
    info = fleet.wait_state("FATAL", timeout=15)["a"]
    assert info["last_error"] == f"cannot start: {worker}: No such file or directory"
    table = fleet.ctl("status")
    assert table.returncode == 1
    assert f"cannot start: {worker}: No such file or directory" in table.stdout


def test_ready_means_running(fleet: Fleet) -> None:
    fleet.write(nodes="a b", start_secs=0.5)
    t0 = time.monotonic()
    fleet.start()
    assert time.monotonic() - t0 >= 0.5
    assert fleet.ctl("status").returncode == 0  # at once: every node RUNNING


def test_a_fleet_that_dies_at_once_fails_the_start_naming_it(fleet: Fleet) -> None:
    fleet.write(nodes="a b", command="/bin/sh -c 'exit 3'", start_retries=2)
    said = fleet.start_failing()
    assert "a: FATAL" in said and "b: FATAL" in said and "exit status 3" in said


def test_a_large_fleet_that_dies_at_once_names_ten_and_counts_the_rest(fleet: Fleet) -> None:
    """Every failed node with its reason made a line of ~100 bytes a node
    on the init script's terminal; ten are named, the rest counted."""
    fleet.write(nodes=12, command="/bin/sh -c 'exit 3'", start_retries=1)
    said = fleet.start_failing()
    assert "12 of 12 nodes not running" in said, said
    assert all(f"worker{i}: FATAL" in said for i in range(1, 11)), said
    assert "worker11: FATAL" not in said and "; and 2 more;" in said, said


def test_start_wait_0_returns_at_spawn(fleet: Fleet) -> None:
    fleet.write(nodes="a", command="/bin/sh -c 'exit 3'", start_wait=0, start_secs=5)
    t0 = time.monotonic()
    fleet.start()
    assert time.monotonic() - t0 < 4


def test_sighup_during_start_up_does_not_kill_the_daemon(fleet: Fleet) -> None:
    fleet.write(nodes="a b", start_secs=1)
    launcher = subprocess.Popen([STEMD, "--config", str(fleet.config)], env=fleet.env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    master = wait_until(fleet.master_pid, 10, what="the master's PID file")
    os.kill(master, signal.SIGHUP)
    _, err = launcher.communicate(timeout=30)
    assert launcher.returncode == 0, err
    assert pid_alive(master)
    fleet.wait_state("RUNNING")


def test_kill_9_of_the_master_during_shutdown_is_not_reported_as_stopped(fleet: Fleet
                                                                        ) -> None:
    """stemctl printed "stemd (pid N) stopped" and exited 0 while three
    TERM-ignoring nodes still ran. "Stopped" means no node is left."""
    deaf = fleet.deaf_script()
    fleet.write(nodes="a b c", stop_timeout=4, command=deaf)
    fleet.start()
    nodes = fleet.node_pids()
    master = fleet.master_pid()
    assert master
    shutdown = background(fleet, "shutdown")
    wait_until(lambda: "shutting down" in fleet.master_log(), 10, what="the shutdown")
    os.kill(master, signal.SIGKILL)
    out, err = shutdown.communicate(timeout=60)
    assert all(not pid_alive(p) for p in nodes), "nodes left running"
    assert shutdown.returncode == 0, err
    assert "stopped the nodes it left behind" in out
    assert fleet.node_pids() == []


# a node that counts the stop signals it gets (one line each in $STOP_LOG) and takes a
# second to stop
COUNTING_STOP = """\
#!/bin/sh
trap 'echo "$STEMD_NODE TERM" >> "$STOP_LOG"; sleep 1; exit 0' TERM
while :; do sleep 0.05; done
"""


def cmdline(pid: int) -> list[str]:
    return psutil.Process(pid).cmdline()


def test_a_reload_whose_client_goes_away_is_finished(fleet: Fleet) -> None:
    """Regression: `stemctl reload --timeout 2` (or Ctrl-C, or systemd's reload timeout)
    while the changed nodes stopped cancelled the reload between their stop and their start:
    they stayed STOPPED for good, and the next reload found nothing changed."""
    slow = fleet.script("slow.sh", SLOW_STOP)
    fleet.write(nodes="a b", command=f"{slow} v1")
    fleet.start()
    old = pids(fleet)
    fleet.write(nodes="a b", command=f"{slow} v2")
    result = fleet.ctl("reload", "--timeout", "0.3")
    assert result.returncode != 0  # it did not wait for the answer
    nodes = wait_until(lambda: (s := fleet.status()) and all(
        i["state"] == "RUNNING" and i["pid"] not in old.values() for i in s.values()) and s,
        20, what="the reload to finish without its client")
    for info in nodes.values():
        assert cmdline(info["pid"])[-1] == "v2"
    wait_until(lambda: "reload finished (its client had gone)" in fleet.master_log(), 5,
               what="the log to tell the reload's end")
    again = fleet.ctl("reload", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["changed"] == []


def test_a_reload_during_a_rolling_restart_leaves_no_node_on_the_old_command(
        fleet: Fleet) -> None:
    """Regression: the rolling restart started b and c again on the old spec after the reload
    had stopped them, and the reload, finding them RUNNING, said OK: a deploy that left part
    of the fleet on the old code."""
    slow = fleet.script("slow.sh", SLOW_STOP)
    fleet.write(nodes="a b c", command=f"{slow} v1", start_secs=0.3)
    fleet.start()
    restart = restart_under_way(fleet)
    fleet.write(nodes="a b c", command=f"{slow} v2", start_secs=0.3)
    result = fleet.ctl("reload")
    assert result.returncode == 0, result.stderr
    restart.communicate(timeout=60)
    nodes = fleet.wait_state("RUNNING", timeout=20)
    assert {n: cmdline(i["pid"])[-1] for n, i in nodes.items()} == dict.fromkeys("abc", "v2")


def test_a_stop_under_way_when_the_master_is_killed_is_carried_on(fleet: Fleet) -> None:
    """Regression: `stemctl stop a`, then `kill -9` of the master while a finished its warm
    shutdown: the next master adopted a as RUNNING, respawned it when it exited, and never
    armed its stop timeout. Now it is STOPPING again, with no second stop signal (a second
    SIGINT is a Celery worker's cold shutdown)."""
    stop_log = fleet.root / "stops"
    fleet.exports["STOP_LOG"] = str(stop_log)
    fleet.write(nodes="a b", command=fleet.script("count.sh", COUNTING_STOP))
    fleet.start()
    a = fleet.wait_state("RUNNING")["a"]["pid"]
    assert fleet.ctl("stop", "--no-wait", "a").returncode == 0
    wait_until(lambda: stop_log.exists() and "a TERM" in stop_log.read_text(), 5,
               what="a to get its SIGTERM")
    master = fleet.master_pid()
    assert master is not None
    os.kill(master, signal.SIGKILL)
    wait_until(lambda: not pid_alive(master), 5, what="the master gone")
    fleet.start()
    assert fleet.status()["a"]["state"] in ("STOPPING", "STOPPED")
    wait_until(lambda: not pid_alive(a), 10, what="a to finish stopping")
    info = fleet.wait_state("STOPPED", "a")["a"]
    assert info["pid"] is None
    assert "a: STOPPING -> STOPPED" in fleet.master_log()
    assert stop_log.read_text().count("a TERM") == 1, stop_log.read_text()
    assert fleet.status()["b"]["state"] == "RUNNING"


def test_a_stop_overtaken_by_a_shutdown_still_answers_stopped(fleet: Fleet) -> None:
    """Regression: `stemctl stop a` while a finished its tasks, then SIGTERM to the master:
    the stop answered "interrupted: the master is shutting down" (exit 1) at once, although
    the shutdown stops a just the same."""
    fleet.write(nodes="a b", command=fleet.script("slow.sh", SLOW_STOP))
    fleet.start()
    stop = background(fleet, "stop", "a")
    wait_until(lambda: "a: RUNNING -> STOPPING" in fleet.master_log(), 10, what="a stopping")
    master = fleet.master_pid()
    assert master is not None
    os.kill(master, signal.SIGTERM)
    out, err = stop.communicate(timeout=30)
    assert stop.returncode == 0, (out, err)
    assert "a: STOPPED" in out
    assert_nothing_left(fleet)


# a node whose child moves to a process group of its own (as a shell with job control, or
# subprocess(process_group=0), would put it), and stays in the node's session
ESCAPES_GROUP = """\
import subprocess, sys, time
subprocess.Popen(["/bin/sleep", sys.argv[1]], process_group=0)
time.sleep(100000)
"""


def test_a_child_in_a_group_of_its_own_does_not_survive_a_stop(fleet: Fleet) -> None:
    """Regression: a node's child that called setpgid outlived `stemctl stop` and the
    shutdown (the stop's SIGKILL reached the node's process group only), while status counted
    it in KIDS: SPEC §2.1, "grandchildren are never left behind"."""
    import sys

    script = fleet.script("escape.py", ESCAPES_GROUP)
    marker = f"{8000000 + os.getpid() % 100000}"
    fleet.write(nodes="a b", command=f"{sys.executable} {script} {marker}")
    fleet.start()
    nodes = fleet.wait_state("RUNNING")

    def escapees() -> list[psutil.Process]:
        return [p for p in psutil.process_iter(["cmdline"])
                if p.info["cmdline"] == ["/bin/sleep", marker]]
    found = wait_until(lambda: len(e := escapees()) == 2 and e, 10, what="the two escapees")
    for proc in found:
        assert os.getsid(proc.pid) in (nodes["a"]["pid"], nodes["b"]["pid"])
        assert os.getpgid(proc.pid) == proc.pid  # a group of its own
    assert fleet.ctl("stop", "a").returncode == 0
    wait_until(lambda: len(escapees()) == 1, 5, what="a's escapee killed by the stop")
    assert os.getsid(escapees()[0].pid) == nodes["b"]["pid"]  # b's is not touched
    assert "a: killed 1 process(es)" in fleet.master_log()
    # a stop nobody waits on sweeps too, once the node is down
    assert fleet.ctl("stop", "--no-wait", "b").returncode == 0
    wait_until(lambda: not escapees(), 5, what="b's escapee killed after stop --no-wait")
    assert "b: killed 1 process(es)" in fleet.master_log()
    assert fleet.ctl("shutdown").returncode == 0


def test_the_session_sweep_spares_a_session_that_is_not_a_dead_nodes() -> None:
    """The sweep goes by a session's number, which is free again once the node's main
    process is reaped: a new session on that PID (reuse; a node user can steer it) must not be
    swept, nor any process of another user (regression: root SIGKILLed a job of an unrelated
    session that reused a stopped node's PID)."""
    # a live session leader with a job in a group of its own: as a reused PID would look
    import sys

    from stemd.reaper import kill_leftovers, session_leftovers

    leader = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, time; "
         "subprocess.Popen(['/bin/sleep', '1000'], process_group=0); time.sleep(1000)"],
        start_new_session=True)
    job = 0
    try:
        job = wait_until(lambda: next((c.pid for c in psutil.Process(leader.pid).children()
                                       if os.getpgid(c.pid) != leader.pid), None), 5,
                         what="the job in its own group")
        assert os.getsid(job) == leader.pid
        uid = os.getuid()
        assert session_leftovers({leader.pid: uid}, set()) == ([], [])  # its leader lives
        leader.kill()
        leader.wait()  # the leader is gone: now the job looks like a node's leftover...
        assert session_leftovers({leader.pid: uid + 1}, set()) == ([], [])  # ...of another user
        assert session_leftovers({leader.pid: uid}, {leader.pid}) == ([], [])  # a running node's
        found, dying = session_leftovers({leader.pid: uid}, set())
        assert (found, dying) == ([(job, leader.pid)], [])  # not in the leader's group
        assert kill_leftovers(found, {leader.pid: uid}) == [job]
        wait_until(lambda: not pid_alive(job), 5, what="the job killed")
    finally:
        for pid in (leader.pid, job):
            with contextlib.suppress(ProcessLookupError):
                if pid:
                    os.kill(pid, signal.SIGKILL)
        leader.wait()


def test_a_stop_during_a_reload_stands(fleet: Fleet) -> None:
    """Regression: `stemctl stop a` while a reload was stopping a (changed) answered 0 with
    "a: STARTING": the reload started it again once it was down, and it ran on marked
    wanted down."""
    slow = fleet.script("slow.sh", SLOW_STOP)
    fleet.write(nodes="a b", command=f"{slow} v1")
    fleet.start()
    fleet.write(nodes="a b", command=f"{slow} v2", opts="--x:a=1")  # only a changes
    reload = background(fleet, "reload")
    wait_until(lambda: "a: RUNNING -> STOPPING" in fleet.master_log(), 10, what="a stopping")
    stop = fleet.ctl("stop", "a")
    assert stop.returncode == 0 and "a: STOPPED" in stop.stdout, stop
    out, err = reload.communicate(timeout=30)
    assert reload.returncode == 0, (out, err)
    nodes = fleet.status()
    assert nodes["a"]["state"] == "STOPPED" and nodes["a"]["pid"] is None
    assert fleet.master_log().count("a: STOPPED -> STARTING") == 1  # the first start only
    assert nodes["b"]["state"] == "RUNNING"


def test_a_stop_no_wait_during_a_restart_of_that_node_stands(fleet: Fleet) -> None:
    """Regression: `stemctl stop --no-wait a` while `stemctl restart a` was stopping it: the
    restart said "stopped meanwhile" but had spawned a again, which ran on."""
    fleet.write(nodes="a b", command=fleet.script("slow.sh", SLOW_STOP))
    fleet.start()
    restart = background(fleet, "restart", "a")
    wait_until(lambda: "a: RUNNING -> STOPPING" in fleet.master_log(), 10, what="a stopping")
    assert fleet.ctl("stop", "--no-wait", "a").returncode == 0
    _, err = restart.communicate(timeout=30)
    assert restart.returncode == 1 and "stopped meanwhile" in err, err
    assert fleet.status()["a"]["state"] == "STOPPED"
    assert fleet.master_log().count("a: STOPPED -> STARTING") == 1  # the first start only


# --- the operator's intent and the state agree once the master is quiet (found by
# tests/integration/test_stress_intent.py; each failed before the fix)

SLOW_TERM = "#!/bin/sh\ntrap 'sleep 1; exit 0' TERM\nwhile :; do sleep 0.05; done\n"


def settled(fleet: Fleet, node: str) -> dict[str, Any]:
    return wait_until(lambda: (i := fleet.status()[node])["state"] in ("RUNNING", "STOPPED")
                      and i, 20, what=f"{node} settled")


def test_a_stop_whose_client_leaves_while_it_waits_is_still_done(fleet: Fleet) -> None:
    """Regression: `stemctl stop a --timeout 0.3` queued behind a start: the client left, the
    stop was dropped, and a ran on marked wanted down (not restarted if it crashed)."""
    fleet.write(nodes="a", command=fleet.script("slow.sh", SLOW_TERM), start_secs=2)
    fleet.start()
    assert fleet.ctl("stop", "a").returncode == 0
    start = background(fleet, "start", "a")
    wait_until(lambda: fleet.master_log().count("a: STOPPED -> STARTING") == 2, 10,
               what="a starting again")  # the first one was the master's start
    assert fleet.ctl("stop", "a", "--timeout", "0.3").returncode != 0  # it did not wait
    start.communicate(timeout=30)
    wait_until(lambda: "stop finished (its client had gone)" in fleet.master_log(), 20,
               what="the stop done without its client")
    info = settled(fleet, "a")
    assert (info["state"], info["wanted"]) == ("STOPPED", "down"), info


def test_a_start_whose_client_leaves_while_it_waits_is_still_done(fleet: Fleet) -> None:
    """Regression: `stemctl start a --timeout 0.3` queued behind a stop: dropped with its
    client, it left a STOPPED but wanted up (the next reload or master would start it)."""
    fleet.write(nodes="a", command=fleet.script("slow.sh", SLOW_TERM))
    fleet.start()
    stop = background(fleet, "stop", "a")
    wait_until(lambda: "a: RUNNING -> STOPPING" in fleet.master_log(), 10, what="a stopping")
    assert fleet.ctl("start", "a", "--timeout", "0.3").returncode != 0
    stop.communicate(timeout=30)
    wait_until(lambda: "start finished (its client had gone)" in fleet.master_log(), 20,
               what="the start done without its client")
    info = settled(fleet, "a")
    assert (info["state"], info["wanted"]) == ("RUNNING", "up"), info


def test_a_halted_restart_leaves_the_nodes_it_did_not_reach_as_they_were(fleet: Fleet
                                                                        ) -> None:
    """Regression: a rolling restart halted at a (stopped meanwhile) had marked c, stopped
    before it began, wanted up: c stayed STOPPED but a later reload or master would start it."""
    fleet.write(nodes="a b c", command=fleet.script("slow.sh", SLOW_TERM), start_secs=0.3)
    fleet.start()
    assert fleet.ctl("stop", "c").returncode == 0
    restart = background(fleet, "restart")
    wait_until(lambda: "a: RUNNING -> STOPPING" in fleet.master_log(), 10, what="a stopping")
    assert fleet.ctl("stop", "a").returncode == 0
    _, err = restart.communicate(timeout=30)
    assert restart.returncode == 1 and "stopped meanwhile" in err, err
    nodes = fleet.status()
    assert {n: (i["state"], i["wanted"]) for n, i in nodes.items()} == {
        "a": ("STOPPED", "down"), "b": ("RUNNING", "up"), "c": ("STOPPED", "down")}


def test_a_node_a_reload_removed_is_not_started_by_a_restart_queued_for_it(
        fleet: Fleet) -> None:
    """Regression (found by test_stress_intent): a restart of b waiting for another restart's
    turn, then a reload that removed b: the restart's step started b once its turn came, a
    process of a node the master no longer had."""
    slow = fleet.script("slow.sh", SLOW_TERM)
    fleet.write(nodes="a b", command=slow, start_secs=0.3, log_level="debug")
    fleet.start()
    first = background(fleet, "restart", "a")
    wait_until(lambda: "a: RUNNING -> STOPPING" in fleet.master_log(), 10, what="a stopping")
    second = background(fleet, "restart", "b")
    wait_until(lambda: "control: uid" in fleet.master_log() and "restart {'names': ['b']}"
               in fleet.master_log(), 10, what="the restart of b queued")
    fleet.write(nodes="a", command=slow, start_secs=0.3, log_level="debug")
    assert fleet.ctl("reload").returncode == 0
    first.communicate(timeout=30)
    second.communicate(timeout=30)
    assert set(fleet.status()) == {"a"}
    assert fleet.wait_state("RUNNING")["a"]["pid"] is not None
    b_processes = [p for p in psutil.process_iter(["environ"])
                   if (p.info["environ"] or {}).get("STEMD_NODE") == "b"
                   and (p.info["environ"] or {}).get("STEM_TEST_MARK") == fleet.mark]
    assert b_processes == [], "a removed node was started again"


# a node with a child in its group, that takes half a second to stop on TERM
CHILD_AND_SLOW_TERM = """\
#!/bin/sh
/bin/sleep 100000 &
trap 'sleep 0.5; exit 0' TERM
while :; do sleep 0.05; done
"""


def test_a_group_a_dead_master_never_killed_is_killed_by_the_next(fleet: Fleet) -> None:
    """Regression (found by a storm with master crashes): `stop --no-wait a`, then `kill -9`
    of the master while a finished its stop: a's child was never killed (the reaper kills the
    group when the main process exits, and there was none), and the next master only removed
    the stale PID file: the child ran for ever, under no master."""
    fleet.write(nodes="a b", command=fleet.script("child.sh", CHILD_AND_SLOW_TERM))
    fleet.start()
    main = fleet.wait_state("RUNNING")["a"]["pid"]
    child = wait_until(lambda: next((c.pid for c in psutil.Process(main).children()), None), 5,
                       what="a's child")
    assert fleet.ctl("stop", "--no-wait", "a").returncode == 0
    master = fleet.master_pid()
    assert master is not None
    os.kill(master, signal.SIGKILL)
    wait_until(lambda: not pid_alive(master) and not pid_alive(main), 10,
               what="the master and a's main process gone")
    assert pid_alive(child)  # what the dead master left
    fleet.start()
    wait_until(lambda: not pid_alive(child), 10, what="a's child killed by the next master")
    assert f"a: killed 1 process(es) its pid {main} left in its session: {child}" \
        in fleet.master_log()
    assert fleet.status()["a"]["state"] == "STOPPED"
    assert fleet.status()["b"]["state"] == "RUNNING"
