"""stemctl scale (issue 15 §6), with real processes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from tests.fleet import Fleet, pid_alive, wait_until

WARM = textwrap.dedent("""\
    import os, signal, time
    def stop(*_):
        open(os.environ["OUT"] + "/warm." + os.environ["STEMD_NODE"], "a").write("x\\n")
        os._exit(0)
    signal.signal(signal.SIGTERM, stop)
    while True:
        time.sleep(1000)
""")


def names(fleet: Fleet) -> list[str]:
    return list(fleet.status())


def test_scale_two_five_one(fleet: Fleet, tmp_path: Path) -> None:
    script = tmp_path / "warm.py"
    script.write_text(WARM)
    fleet.exports["OUT"] = str(tmp_path)
    fleet.write(nodes="2", command=f"{sys.executable} {script}", start_secs=0.2)
    fleet.start()
    assert names(fleet) == ["worker1", "worker2"]
    kept = fleet.status("worker1")["worker1"]["pid"]

    result = fleet.ctl("scale", "worker", "5")
    assert result.returncode == 0, result.stderr
    assert "started worker3, worker4, worker5" in result.stdout
    assert "the file says 2" in result.stdout and "stemctl reload" in result.stdout
    # an env file: its own key, not TOML's "nodes = 5" (regression)
    assert f"set STEMD_NODES=5 in {fleet.config}" in result.stdout, result.stdout
    nodes = fleet.status()
    assert list(nodes) == [f"worker{i}" for i in range(1, 6)]
    assert all(n["state"] == "RUNNING" for n in nodes.values())
    assert nodes["worker1"]["pid"] == kept  # untouched
    assert all(n["scaled_from"] == 2 for n in nodes.values())
    assert (fleet.run_dir / "worker5.pid").exists()
    table = fleet.ctl("status")
    assert "scaled with 'stemctl scale' (the file says 2 nodes)" in table.stderr
    config = fleet.ctl("config")
    assert config.returncode == 0 and "scaled at run time to 5 nodes" in config.stderr
    assert f"set STEMD_NODES=5 in {fleet.config}" in config.stderr
    listed = json.loads(fleet.ctl("scale", "--json").stdout)
    assert listed == {"scaled": {"worker": {"configured": 2, "nodes": 5}}}

    doomed = {n: fleet.status(n)[n]["pid"] for n in ("worker2", "worker3", "worker4",
                                                     "worker5")}
    result = fleet.ctl("scale", "worker", "1")
    assert result.returncode == 0, result.stderr
    assert "stopped worker2, worker3, worker4, worker5" in result.stdout
    assert names(fleet) == ["worker1"]
    assert fleet.status("worker1")["worker1"]["pid"] == kept
    for name, pid in doomed.items():
        assert not pid_alive(pid)
        assert (tmp_path / f"warm.{name}").exists(), f"{name} was not stopped warm"
        assert not (fleet.run_dir / f"{name}.pid").exists()

    # a reload returns to the file's count
    assert fleet.ctl("reload").returncode == 0
    assert names(fleet) == ["worker1", "worker2"]
    assert fleet.status("worker2")["worker2"]["state"] == "RUNNING"
    assert fleet.status("worker1")["worker1"]["scaled_from"] is None
    assert json.loads(fleet.ctl("scale", "--json").stdout) == {"scaled": {}}


def test_scale_names_new_nodes_by_the_programs_name_pattern(fleet: Fleet) -> None:
    """Regression: scale named new nodes PROGRAM<index> whatever the `name`
    pattern, so a reload after editing the file to the same count replaced
    them (worker3 stopped, worker_03 started: churn in a scaled fleet)."""
    fleet.write(nodes="2", node_name="%p_%02i", start_secs=0.2)
    fleet.start()
    assert names(fleet) == ["worker_01", "worker_02"]
    result = fleet.ctl("scale", "worker", "3")
    assert result.returncode == 0, result.stderr
    assert names(fleet) == ["worker_01", "worker_02", "worker_03"]
    kept = fleet.status("worker_03")["worker_03"]["pid"]
    fleet.write(nodes="3", node_name="%p_%02i", start_secs=0.2)
    reload = json.loads(fleet.ctl("--json", "reload").stdout)
    assert reload["added"] == [] and reload["removed"] == [], reload
    assert fleet.status("worker_03")["worker_03"]["pid"] == kept


def test_scale_errors(fleet: Fleet) -> None:
    fleet.write(nodes="2", start_secs=0.2)
    fleet.start()
    result = fleet.ctl("scale", "nosuch", "3")
    assert result.returncode == 2 and "no such program: nosuch" in result.stderr
    assert fleet.ctl("scale", "worker", "0").returncode == 2
    assert fleet.ctl("scale", "worker").returncode == 2
    assert names(fleet) == ["worker1", "worker2"]


def test_a_restart_of_the_master_returns_to_the_file(fleet: Fleet) -> None:
    fleet.write(nodes="2", start_secs=0.2)
    fleet.start()
    assert fleet.ctl("scale", "worker", "3").returncode == 0
    assert fleet.ctl("shutdown").returncode == 0
    fleet.start()
    assert names(fleet) == ["worker1", "worker2"]


@pytest.mark.slow
def test_scale_during_a_rolling_restart(fleet: Fleet, tmp_path: Path) -> None:
    """A rolling restart of 4 slow-stopping nodes; meanwhile scale to 2 (its
    last nodes are in the restart's list) and back to 3. The restart skips
    the nodes removed, nothing removed comes back, every node ends RUNNING."""
    script = tmp_path / "slow.py"
    script.write_text(textwrap.dedent("""\
        import os, signal, time
        signal.signal(signal.SIGTERM, lambda *a: (time.sleep(0.5), os._exit(0)))
        while True:
            time.sleep(1000)
    """))
    fleet.write(nodes="4", command=f"{sys.executable} {script}", start_secs=0.3)
    fleet.start()
    before = {n: v["pid"] for n, v in fleet.status().items()}
    outcome: dict[str, subprocess.CompletedProcess[str]] = {}
    restart = threading.Thread(target=lambda: outcome.update(r=fleet.ctl("restart")))
    restart.start()
    wait_until(lambda: fleet.status("worker1")["worker1"]["pid"] != before["worker1"], 20,
               what="the rolling restart to begin")
    down = fleet.ctl("scale", "worker", "2")
    assert down.returncode == 0, down.stderr
    up = fleet.ctl("scale", "worker", "3")
    assert up.returncode == 0, up.stderr
    restart.join(60)
    assert outcome["r"].returncode == 0, outcome["r"].stderr
    nodes = fleet.status()
    assert list(nodes) == ["worker1", "worker2", "worker3"]
    assert all(n["state"] == "RUNNING" for n in nodes.values()), nodes
    assert not (fleet.run_dir / "worker4.pid").exists()
    assert not pid_alive(before["worker4"])
    wait_until(lambda: names(fleet) == ["worker1", "worker2", "worker3"], 5,
               what="worker4 to stay gone")


def test_scaling_down_nodes_that_outlive_the_stop_timeout_says_so(fleet: Fleet) -> None:
    """Their work in flight was lost to SIGKILL: said in scale's answer."""
    deaf = fleet.deaf_script()
    fleet.write(nodes="3", command=deaf, stop_timeout=1)
    fleet.start()
    fleet.wait_state("RUNNING")
    result = fleet.ctl("scale", "worker", "1")
    assert result.returncode == 0, result.stderr
    assert ("killed with SIGKILL at the stop timeout (work in flight lost): worker2, worker3"
            in result.stdout), result.stdout


def test_a_scaled_node_whose_pid_file_was_never_written_is_stopped_not_doubled(
        fleet: Fleet) -> None:
    """Regression (found by a storm with master crashes): a master killed between spawning a
    scaled node and writing its PID file left that node to the next master, which neither
    adopted it (the file does not configure it) nor stopped it; a later `scale` then ran the
    node twice."""
    import os
    import signal

    import psutil

    fleet.write(nodes="2")  # worker1 worker2
    fleet.start()
    assert fleet.ctl("scale", "worker", "3").returncode == 0
    third = fleet.wait_state("RUNNING")["worker3"]["pid"]
    master = fleet.master_pid()
    assert master is not None
    os.kill(master, signal.SIGKILL)
    wait_until(lambda: not pid_alive(master), 5, what="the master gone")
    (fleet.run_dir / "worker3.pid").unlink()  # as if the master died before writing it
    fleet.start()
    wait_until(lambda: not pid_alive(third), 10, what="the unrecorded worker3 stopped")
    assert f"worker3: adopted pid {third}, which no PID file named" in fleet.master_log()
    assert fleet.ctl("scale", "worker", "3").returncode == 0
    fleet.wait_state("RUNNING")
    leaders = [p.pid for p in psutil.process_iter(["environ"])
               if (p.info["environ"] or {}).get("STEMD_NODE") == "worker3"
               and (p.info["environ"] or {}).get("STEM_TEST_MARK") == fleet.mark
               and os.getsid(p.pid) == p.pid]
    assert leaders == [fleet.status()["worker3"]["pid"]], leaders
