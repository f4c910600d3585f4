"""Supervision with real processes and real signals (SPEC §2, §2.1): the
restart policy, stops that leave nothing behind, what a node gets (user,
environment, log, file descriptors), reload, and hostile paths.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import STEMD, Fleet, pid_alive, wait_until


def node_pid(fleet: Fleet, name: str) -> int:
    pid = fleet.status(name)[name]["pid"]
    assert isinstance(pid, int), f"{name} has no pid"
    return pid


def pids(fleet: Fleet) -> dict[str, int | None]:
    return {name: info["pid"] for name, info in fleet.status().items()}


def snapshot(path: Path) -> tuple[bytes, int, int]:
    st = path.stat()
    return path.read_bytes(), st.st_mtime_ns, st.st_mode


# ---------------------------------------------------------- restart policy

def test_crash_is_restarted(fleet: Fleet) -> None:
    fleet.write()
    fleet.start()
    fleet.wait_state("RUNNING")
    old = node_pid(fleet, "alpha")
    beta = node_pid(fleet, "beta")
    os.kill(old, signal.SIGKILL)
    info = wait_until(lambda: (s := fleet.status("alpha")["alpha"])["state"] == "RUNNING"
                      and s["pid"] != old and s, 10, what="alpha restarted")
    assert info["restarts"] == 1
    assert info["exit_status"] == -signal.SIGKILL
    assert not pid_alive(old)
    assert node_pid(fleet, "beta") == beta  # the other node is untouched
    assert int((fleet.run_dir / "alpha.pid").read_text()) == info["pid"]
    assert "killed by SIGKILL" in fleet.master_log()


def test_crash_loop_is_fatal_until_started(fleet: Fleet) -> None:
    ok = fleet.root / "ok"
    fleet.write(nodes="alpha", start_retries=3, start_secs=0.2,
                command=f"/bin/sh -c 'test -e {ok} && exec /bin/sleep 1000; exit 1'")
    said = fleet.start_failing()
    assert "alpha: FATAL (pid " in said and "exit status 1" in said
    info = fleet.wait_state("FATAL", timeout=10)["alpha"]
    assert info["pid"] is None and info["exit_status"] == 1
    log = fleet.master_log()
    assert log.count("alpha: STOPPED -> STARTING") + log.count("alpha: BACKOFF -> STARTING") == 3
    assert "gave up after 3 failed starts" in log
    assert fleet.node_pids() == []
    assert not (fleet.run_dir / "alpha.pid").exists()
    ok.touch()
    result = fleet.ctl("start", "alpha")
    assert result.returncode == 0, result.stdout + result.stderr
    info = fleet.status("alpha")["alpha"]
    assert info["state"] == "RUNNING" and pid_alive(info["pid"])


def test_no_zombies_after_a_crash_loop(fleet: Fleet) -> None:
    fleet.write(nodes="alpha beta", start_retries=4, command="/bin/sh -c 'exit 1'")
    fleet.start_failing()
    fleet.wait_state("FATAL")
    master = psutil.Process(fleet.master_pid())
    zombies = [p.pid for p in master.children() if p.status() == psutil.STATUS_ZOMBIE]
    assert zombies == []
    assert master.children() == []


@pytest.mark.parametrize("policy,code,restarted", [
    ("on-failure", 0, False),
    ("on-failure", 3, True),
    ("no", 3, False),
    ("always", 0, True),
])
def test_restart_policy(fleet: Fleet, policy: str, code: int, restarted: bool) -> None:
    fleet.write(nodes="alpha", restart=policy, start_secs=0.1,
                command=f"/bin/sh -c 'sleep 0.3; exit {code}'")
    fleet.start()
    if restarted:
        info = wait_until(lambda: (s := fleet.status()["alpha"])["restarts"] >= 1 and s, 10,
                          what="a restart")
        assert info["exit_status"] == code
        assert "restarting" in fleet.master_log()
    else:
        info = fleet.wait_state("EXITED")["alpha"]
        assert info["exit_status"] == code
        assert info["pid"] is None and info["restarts"] == 0
        assert "RUNNING -> EXITED (pid " in fleet.master_log()
        assert f"exit status {code}; restart={policy}" in fleet.master_log()
        assert not (fleet.run_dir / "alpha.pid").exists()


def test_crash_loop_after_running_backs_off(fleet: Fleet) -> None:
    fleet.write(nodes="alpha", start_secs=0.05, restart_burst=2, restart_window=60,
                backoff_max=2, command="/bin/sh -c 'sleep 0.25; exit 1'")
    fleet.start()
    info = fleet.wait_state("BACKOFF", timeout=10)["alpha"]
    assert info["restarts"] == 2
    log = fleet.master_log()
    assert "alpha: RUNNING -> BACKOFF" in log
    assert "crash loop: 3 exits within 60s, retrying in 1s" in log
    # ...and it comes back after the delay
    wait_until(lambda: "alpha: BACKOFF -> STARTING" in fleet.master_log(), 5,
               what="the retry after the crash-loop delay")


# ------------------------------------------------------------------- stops

def test_stop_kills_a_node_ignoring_term_and_its_grandchild(fleet: Fleet) -> None:
    fleet.write(nodes="alpha", stop_timeout=0.5,
                command="/bin/sh -c 'trap \"\" TERM; /bin/sleep 1000 & wait'")
    fleet.start()
    fleet.wait_state("RUNNING")
    leader = node_pid(fleet, "alpha")
    children = wait_until(lambda: psutil.Process(leader).children(), 5, what="the grandchild")
    grandchild = children[0].pid
    t0 = time.monotonic()
    result = fleet.ctl("stop", "alpha")
    elapsed = time.monotonic() - t0
    assert result.returncode == 0, result.stderr
    assert not pid_alive(leader) and not pid_alive(grandchild)
    assert elapsed >= 0.45, "TERM was ignored: only the SIGKILL after the timeout stops it"
    assert fleet.status()["alpha"]["state"] == "STOPPED"
    assert "sending SIGKILL to its process group" in fleet.master_log()
    assert fleet.node_pids() == []


def test_node_exiting_on_its_own_leaves_no_grandchildren(fleet: Fleet) -> None:
    # The node leaves a background child and exits once the test says so.
    go = fleet.root / "go"
    fleet.write(nodes="alpha", restart="no", start_secs=0.1,
                command=f"/bin/sh -c '/bin/sleep 1000 & "
                        f"until test -e {go}; do /bin/sleep 0.05; done'")
    fleet.start()
    fleet.wait_state("RUNNING")
    leader = node_pid(fleet, "alpha")

    def grandchild() -> int | None:
        for kid in psutil.Process(leader).children():
            if kid.cmdline()[-1:] == ["1000"]:
                return kid.pid
        return None
    orphan = wait_until(grandchild, 5, what="the background child")
    go.touch()
    info = fleet.wait_state("EXITED")["alpha"]
    assert info["exit_status"] == 0
    # The group was killed while the exited leader still pinned its id. An
    # exit, unlike a stop, is not held until the SIGKILL is done (a respawn
    # would wait on it): the orphan is gone within moments, not at once.
    wait_until(lambda: not pid_alive(orphan), 5, what="the background child killed")
    assert fleet.node_pids() == []


def test_stop_of_a_starting_node(fleet: Fleet) -> None:
    fleet.write(nodes="alpha", start_secs=30, start_wait=0)  # return at spawn
    fleet.start()
    pid = node_pid(fleet, "alpha")
    assert fleet.status()["alpha"]["state"] == "STARTING"
    assert fleet.ctl("stop", "alpha").returncode == 0
    assert fleet.status()["alpha"]["state"] == "STOPPED"
    assert not pid_alive(pid)
    assert not (fleet.run_dir / "alpha.pid").exists()


# ------------------------------------------------------ what a node gets

def test_node_environment(fleet: Fleet) -> None:
    fleet.exports = {"STEM_QUEUE": "high priority"}
    fleet.write(nodes="alpha")
    fleet.start()
    env = psutil.Process(node_pid(fleet, "alpha")).environ()
    assert env["STEMD_NODE"] == "alpha"
    assert env["STEMD_PROGRAM"] == "worker"
    assert env["STEM_QUEUE"] == "high priority"
    assert "STEMD_SOCKET" not in env and "STEMD_NODES" not in env  # settings, not exports
    assert "STEMD_CONFIG" not in env and "NOTIFY_SOCKET" not in env


def test_node_pwd_is_its_working_directory(fleet: Fleet, tmp_path: Path) -> None:
    """Issue 12 §3: nodes got the daemon's PWD=/ while their cwd was STEMD_CHDIR.
    The node is Python, not sh: a POSIX shell silently repairs a wrong $PWD."""
    workdir = tmp_path / "app"
    workdir.mkdir()
    node = tmp_path / "node.py"
    node.write_text("import os, sys, time\n"
                    "print(f'PWD={os.environ.get(\"PWD\")} cwd={os.getcwd()}', flush=True)\n"
                    "time.sleep(1000)\n")
    fleet.write(nodes="alpha", chdir=str(workdir), command=f"{sys.executable} {node}")
    fleet.start()
    log = fleet.log_dir / "alpha.log"
    text = wait_until(lambda: log.exists() and "PWD=" in log.read_text() and log.read_text(),
                      20, what="the node to print its PWD")
    assert f"PWD={workdir} cwd={workdir}" in text, text


def test_node_output_is_appended_to_its_log(fleet: Fleet) -> None:
    fleet.log_dir.mkdir()
    log = fleet.log_dir / "alpha.log"
    log.write_text("previous\n")
    fleet.write(nodes="alpha",
                command="/bin/sh -c 'echo to-stdout; echo to-stderr >&2; exec /bin/sleep 1000'")
    fleet.start()
    wait_until(lambda: "to-stderr" in log.read_text(), 5, what="node output in its log")
    assert log.read_text() == "previous\nto-stdout\nto-stderr\n"
    pid = node_pid(fleet, "alpha")
    for fd in (1, 2):
        assert os.path.samefile(f"/proc/{pid}/fd/{fd}", log)
        flags = Path(f"/proc/{pid}/fdinfo/{fd}").read_text().split("flags:")[1].split()[0]
        assert int(flags, 8) & os.O_APPEND, f"fd {fd} is not O_APPEND"
    # nothing of it went through the master
    assert "to-stdout" not in fleet.master_log()


def test_node_has_no_other_file_descriptors(fleet: Fleet) -> None:
    fleet.write(nodes="alpha")
    fleet.start()
    pid = node_pid(fleet, "alpha")
    fds = sorted(int(fd) for fd in os.listdir(f"/proc/{pid}/fd"))
    assert fds == [0, 1, 2], {fd: os.readlink(f"/proc/{pid}/fd/{fd}") for fd in fds}
    assert os.readlink(f"/proc/{pid}/fd/0") == "/dev/null"
    assert os.getsid(pid) == pid and os.getpgid(pid) == pid  # own session and group


def test_nodes_run_as_nobody(fleet: Fleet) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    fleet.write(nodes="alpha", user="nobody", force_root=None, command="/bin/sleep 1000")
    fleet.start()
    info = fleet.wait_state("RUNNING")["alpha"]
    ps = subprocess.run(["ps", "-o", "uid=,gid=", "-p", str(info["pid"])],
                        capture_output=True, text=True, check=True)
    assert ps.stdout.split() == ["65534", "65534"]
    proc = psutil.Process(info["pid"])
    assert set(proc.uids()) == {65534} and set(proc.gids()) == {65534}
    env = proc.environ()
    assert env["USER"] == "nobody" and env["LOGNAME"] == "nobody"
    assert (fleet.log_dir / "alpha.log").stat().st_uid == 65534
    pid_file = fleet.run_dir / "alpha.pid"
    assert pid_file.stat().st_mode & 0o044 == 0o044  # readable by the node user
    run_dir = fleet.run_dir.stat()
    assert run_dir.st_uid == 0 and not run_dir.st_mode & 0o022  # but not writable


# --------------------------------------------------------- hostile paths

def test_pid_file_symlink_to_a_victim(fleet: Fleet) -> None:
    victim = fleet.root / "victim"
    victim.write_text(f"{os.getpid()}\n")  # a live PID, to tempt a follower
    before = snapshot(victim)
    fleet.run_dir.mkdir()
    link = fleet.run_dir / "alpha.pid"
    os.symlink(victim, link)
    fleet.write(nodes="alpha")
    fleet.start()
    pid = fleet.wait_state("RUNNING")["alpha"]["pid"]
    assert not link.is_symlink() and int(link.read_text()) == pid  # replaced, not followed
    assert snapshot(victim) == before
    assert "ignoring untrusted PID file" in fleet.master_log()
    assert fleet.ctl("stop", "alpha").returncode == 0
    assert not link.exists()
    assert snapshot(victim) == before


def test_log_file_symlink_is_not_followed(fleet: Fleet) -> None:
    victim = fleet.root / "victim"
    victim.write_text("precious\n")
    before = snapshot(victim)
    fleet.log_dir.mkdir()
    os.symlink(victim, fleet.log_dir / "alpha.log")
    fleet.write(nodes="alpha beta", start_retries=2)
    said = fleet.start_failing()
    assert (f"alpha: FATAL (cannot start: log file {fleet.log_dir}/alpha.log is not a plain "
            "file (a FIFO or a symlink)") in said
    assert "beta" not in said
    fleet.wait_state("FATAL", "alpha")
    assert fleet.status()["beta"]["state"] == "RUNNING"
    log = fleet.master_log()
    assert f"log file {fleet.log_dir}/alpha.log is not a plain file" in log
    assert snapshot(victim) == before
    assert (fleet.log_dir / "alpha.log").is_symlink()


# ------------------------------------------------------------------ reload

# sh stays the node's process (no exec), so its argv shows the per-node option
RELOAD_COMMAND = "/bin/sh -c '/bin/sleep 1000; exit 0' node"


def test_sighup_applies_only_the_difference(fleet: Fleet) -> None:
    fleet.write(nodes="a b c", command=RELOAD_COMMAND)
    fleet.start()
    before = {n: i["pid"] for n, i in fleet.wait_state("RUNNING").items()}
    fleet.write(nodes="a b d", opts="--tag:b=2")  # b changes, c goes, d comes
    os.kill(fleet.master_pid(), signal.SIGHUP)  # type: ignore[arg-type]

    def settled() -> dict[str, dict] | None:  # type: ignore[type-arg]
        nodes = fleet.status()
        ok = (set(nodes) == {"a", "b", "d"} and all(n["state"] == "RUNNING"
                                                    for n in nodes.values())
              and nodes["b"]["pid"] != before["b"])
        return nodes if ok else None
    after = wait_until(settled, 10, what="the reload applied")
    assert after["a"]["pid"] == before["a"]  # unchanged: untouched
    assert not pid_alive(before["b"]) and not pid_alive(before["c"])
    assert psutil.Process(after["b"]["pid"]).cmdline()[-1] == "--tag=2"
    assert psutil.Process(after["a"]["pid"]).cmdline()[-1] != "--tag=2"
    assert not (fleet.run_dir / "c.pid").exists()
    assert "reload: 1 added, 1 removed, 1 changed, 1 unchanged" in fleet.master_log()
    leaders = [p for p in fleet.node_pids() if psutil.Process(p).ppid() == fleet.master_pid()]
    assert sorted(leaders) == sorted(n["pid"] for n in after.values())  # no leftovers


def test_invalid_config_on_sighup_keeps_the_old_one(fleet: Fleet) -> None:
    fleet.write(nodes="a b")
    fleet.start()
    before = {n: i["pid"] for n, i in fleet.wait_state("RUNNING").items()}
    master = fleet.master_pid()
    with fleet.config.open("a") as f:
        f.write("STEMD_NODES=`id`\n")
    bad_line = len(fleet.config.read_text().splitlines())
    os.kill(master, signal.SIGHUP)  # type: ignore[arg-type]
    wait_until(lambda: "keeping the running configuration" in fleet.master_log(), 5,
               what="the reload error in the log")
    assert f"{fleet.config}:{bad_line}:" in fleet.master_log()  # names the file and line
    # (stemctl cannot read the broken file either, so look without it)
    assert master is not None and pid_alive(master)
    assert sorted(fleet.node_pids()) == sorted(before.values())
    # the master still works: a good file reloads, and nothing else moved
    fleet.write(nodes="a b c")
    os.kill(master, signal.SIGHUP)  # type: ignore[arg-type]
    wait_until(lambda: "c" in fleet.status(), 5, what="node c added")
    assert {n: p for n, p in pids(fleet).items() if n != "c"} == before
    assert fleet.master_pid() == master


def test_directories_removed_at_runtime_are_recreated(fleet: Fleet) -> None:
    """A cleanup that deletes the log and PID directories must not leave the
    fleet FATAL: the next respawn recreates them (STEMD_CREATE_DIRS=1)."""
    import shutil

    fleet.write(nodes="alpha")
    fleet.start()
    old = fleet.wait_state("RUNNING")["alpha"]["pid"]
    shutil.rmtree(fleet.log_dir)
    (fleet.run_dir / "alpha.pid").unlink()
    os.kill(old, signal.SIGKILL)
    new = wait_until(lambda: (p := fleet.status()["alpha"]["pid"]) not in (None, old) and p,
                     what="a respawn")
    assert (fleet.log_dir / "alpha.log").exists()
    wait_until(lambda: "recreated missing directories" in fleet.master_log(), what="a log line")
    assert int((fleet.run_dir / "alpha.pid").read_text()) == new
    fleet.wait_state("RUNNING")


@pytest.mark.slow
def test_a_storm_of_exits_drops_no_signal(fleet: Fleet, tmp_path: Path) -> None:
    """Regression: 1,000 nodes stopping at once sent hundreds of SIGCHLDs
    into asyncio's self-pipe, which filled; every later signal was dropped
    with an "Exception ignored" traceback on stderr, and the master once hung.
    Here a SIGTERM lands in the middle of such a storm and must be obeyed."""
    fleet.write(nodes="1000", start_secs="0.2")
    with open(tmp_path / "fg.err", "w") as err:
        proc = subprocess.Popen([STEMD, "--config", str(fleet.config), "--foreground"],
                                env=fleet.env(), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_until(lambda: fleet.master_pid() == proc.pid, 30, what="the master")
        fleet.wait_state("RUNNING", timeout=60)
        assert fleet.ctl("stop", timeout=60).returncode == 0
        assert fleet.ctl("start", timeout=60).returncode == 0
        fleet.wait_state("RUNNING", timeout=60)
        assert fleet.ctl("stop", "--no-wait").returncode == 0
        proc.send_signal(signal.SIGTERM)  # while a thousand exits pour in
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = (tmp_path / "fg.err").read_text()
    assert "Exception ignored" not in stderr and "Traceback" not in stderr
    assert "SIGTERM" in stderr  # the shutdown was the signal's doing
    assert fleet.node_pids() == []
