"""Issue 14 §2 with real processes: autostart, exitcodes, priority,
stderr_log_file and node name patterns, run by a real stemd from a TOML file
and observed through stemctl, the master log and the nodes' files."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.fleet import STEMD, Fleet, wait_until


def program(fleet: Fleet, prog: str, command: str, **keys: Any) -> str:
    """One [programs.NAME] table with the harness's test-friendly defaults."""
    table = {"command": command, "start_secs": 0.3, "backoff_max": 0.2, "stop_timeout": 5,
             "pid_file": f"{fleet.run_dir}/%n.pid", "log_file": f"{fleet.log_dir}/%n.log",
             **keys}
    lines = [f"[programs.{prog}]"]
    for key, value in table.items():
        lines.append(f"{key} = {json.dumps(value)}")
    lines.append(f'environment = {{ STEM_TEST_MARK = "{fleet.mark}" }}')
    return "\n".join(lines) + "\n"


def write_toml(fleet: Fleet, *programs: str, **stemd: Any) -> Path:
    fleet.config = fleet.root / "stem.toml"
    master = {"pid_file": f"{fleet.run_dir}/stemd.pid", "socket": f"{fleet.run_dir}/stemd.sock",
              "log_file": f"{fleet.log_dir}/stemd.log", "force_root": True, **stemd}
    head = "[stemd]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in master.items())
    fleet.config.write_text(head + "\n" + "\n".join(programs))
    return fleet.config


def log_index(fleet: Fleet, pattern: str, after: int = 0) -> int:
    """The line number of the first master log line after ``after`` that
    matches ``pattern`` (the log is written in the order things happened)."""
    for number, line in enumerate(fleet.master_log().splitlines()):
        if number >= after and re.search(pattern, line):
            return number
    raise AssertionError(f"no log line matches {pattern!r}:\n{fleet.master_log()}")


def test_autostart_false_is_configured_but_started_only_by_stemctl_start(
        fleet: Fleet) -> None:
    write_toml(fleet, program(fleet, "on", "/bin/sleep 1000"),
               program(fleet, "off", "/bin/sleep 1000", autostart=False))
    fleet.start()
    status = fleet.status()
    assert status["on"]["state"] == "RUNNING"
    assert status["off"]["state"] == "STOPPED" and status["off"]["pid"] is None
    assert status["off"]["wanted"] == "down"
    assert fleet.ctl("start", "off").returncode == 0
    assert fleet.status("off")["off"]["state"] == "RUNNING"

    # a reload that adds a program with autostart = false leaves it STOPPED
    text = fleet.config.read_text()
    fleet.config.write_text(text + "\n" + program(fleet, "later", "/bin/sleep 1000",
                                                  autostart=False))
    reload = fleet.ctl("reload")
    assert reload.returncode == 0, reload.stderr
    assert fleet.status("later")["later"]["state"] == "STOPPED"
    assert fleet.ctl("start").returncode == 0  # no names: everything
    assert {n["state"] for n in fleet.status().values()} == {"RUNNING"}
    assert fleet.ctl("shutdown").returncode == 0


def test_exitcodes_with_on_failure(fleet: Fleet) -> None:
    script = "sleep 0.6; exit {}"
    write_toml(fleet,
               program(fleet, "two", f"/bin/sh -c '{script.format(2)}'", restart="on-failure",
                       exitcodes=[0, 2]),
               program(fleet, "three", f"/bin/sh -c '{script.format(3)}'",
                       restart="on-failure", exitcodes=[0, 2], restart_burst=100))
    fleet.start()
    two = fleet.wait_state("EXITED", "two", timeout=20)["two"]
    assert two["exit_status"] == 2 and two["last_error"] is None

    def restarted() -> dict[str, Any] | None:
        info = fleet.status("three")["three"]
        return info if info["restarts"] >= 2 else None
    three = wait_until(restarted, 30, interval=0.1, what="three restarted after exit 3")
    assert three["exit_status"] == 3 and three["state"] in ("STARTING", "RUNNING")
    assert fleet.status("two")["two"]["restarts"] == 0  # still EXITED, never restarted
    assert fleet.ctl("shutdown").returncode == 0


@pytest.mark.slow
def test_priority_orders_starts_and_reverses_stops(fleet: Fleet) -> None:
    """Lower priority first: a group RUNNING before the next is spawned;
    stops (stemctl stop with no names, and the shutdown) in reverse."""
    write_toml(fleet,
               program(fleet, "late", "/bin/sleep 1000", priority=20, nodes=2),
               program(fleet, "early", "/bin/sleep 1000", priority=5, start_secs=1.0),
               program(fleet, "middle", "/bin/sleep 1000", priority=10))
    fleet.start()
    early_up = log_index(fleet, r"early: STARTING -> RUNNING")
    middle_spawn = log_index(fleet, r"middle: STOPPED -> STARTING")
    middle_up = log_index(fleet, r"middle: STARTING -> RUNNING")
    late_spawn = min(log_index(fleet, r"late1: STOPPED -> STARTING"),
                     log_index(fleet, r"late2: STOPPED -> STARTING"))
    assert early_up < middle_spawn < middle_up < late_spawn

    # start times agree with the log: each group spawned after the previous
    # one's start-secs had passed
    created = {n: psutil.Process(info["pid"]).create_time()
               for n, info in fleet.status().items()}
    assert created["early"] + 0.9 <= created["middle"] <= created["late1"]

    mark = len(fleet.master_log().splitlines())
    assert fleet.ctl("stop").returncode == 0
    late_down = max(log_index(fleet, r"late1: STOPPING -> STOPPED", mark),
                    log_index(fleet, r"late2: STOPPING -> STOPPED", mark))
    middle_stop = log_index(fleet, r"middle: RUNNING -> STOPPING", mark)
    middle_down = log_index(fleet, r"middle: STOPPING -> STOPPED", mark)
    early_stop = log_index(fleet, r"early: RUNNING -> STOPPING", mark)
    assert late_down < middle_stop < middle_down < early_stop

    mark = len(fleet.master_log().splitlines())
    assert fleet.ctl("start").returncode == 0  # no names: in priority order again
    assert log_index(fleet, r"early: STARTING -> RUNNING", mark) < \
        log_index(fleet, r"middle: STOPPED -> STARTING", mark)

    mark = len(fleet.master_log().splitlines())
    assert fleet.ctl("shutdown").returncode == 0
    late_down = max(log_index(fleet, r"late1: STOPPING -> STOPPED", mark),
                    log_index(fleet, r"late2: STOPPING -> STOPPED", mark))
    middle_stop = log_index(fleet, r"middle: RUNNING -> STOPPING", mark)
    early_stop = log_index(fleet, r"early: RUNNING -> STOPPING", mark)
    assert late_down < middle_stop < early_stop
    assert fleet.node_pids() == []


def test_stderr_log_file_gets_stderr_alone(fleet: Fleet) -> None:
    command = "/bin/sh -c 'echo to-stdout; echo to-stderr >&2; exec sleep 1000'"
    write_toml(fleet, program(fleet, "split", command,
                              stderr_log_file=f"{fleet.log_dir}/%n.err"),
               program(fleet, "joined", command))
    dry = fleet.stemd("--dry-run")
    assert f"stderr log file: {fleet.log_dir}/split.err" in dry.stdout, dry.stdout
    fleet.start()
    split_out, split_err = fleet.log_dir / "split.log", fleet.log_dir / "split.err"
    wait_until(lambda: split_err.exists() and "to-stderr" in split_err.read_text(), 10,
               what="stderr in its own file")
    wait_until(lambda: "to-stdout" in split_out.read_text(), 10, what="stdout in the log")
    assert "to-stderr" not in split_out.read_text()
    assert "to-stdout" not in split_err.read_text()
    joined = fleet.log_dir / "joined.log"
    wait_until(lambda: {"to-stdout", "to-stderr"} <= set(joined.read_text().split()), 10,
               what="both in the joined log")
    assert oct(os.stat(split_err).st_mode & 0o777) == oct(0o640)  # opened as log_file is
    assert fleet.ctl("shutdown").returncode == 0


def test_name_pattern_names_the_nodes(fleet: Fleet) -> None:
    write_toml(fleet, program(fleet, "celery", "/bin/sleep 1000", nodes=3, name="%p_%02i"))
    check = fleet.stemd("--check")
    assert check.returncode == 0, check.stdout + check.stderr
    fleet.start()
    status = fleet.status()
    assert sorted(status) == ["celery_01", "celery_02", "celery_03"]
    for name, info in status.items():
        assert psutil.Process(info["pid"]).environ()["STEMD_NODE"] == name
        assert (fleet.run_dir / f"{name}.pid").exists()
    assert fleet.ctl("restart", "celery_02").returncode == 0
    assert fleet.ctl("shutdown").returncode == 0


def test_a_shutdown_during_start_up_preempts_the_later_priority_groups(fleet: Fleet) -> None:
    """The shutdown still pre-empts everything: a group still STARTING is
    stopped, the groups after it are never started."""
    write_toml(fleet, program(fleet, "slow", "/bin/sleep 1000", priority=1, start_secs=60),
               program(fleet, "later", "/bin/sleep 1000", priority=2))
    launcher = subprocess.Popen([STEMD, "--config", str(fleet.config)], env=fleet.env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: fleet.master_pid() and "slow: STOPPED -> STARTING"
                   in fleet.master_log(), 20, what="the first group STARTING")
        assert fleet.ctl("shutdown").returncode == 0
        _, err = launcher.communicate(timeout=30)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 1 and "stopped during start-up" in err, err
    assert "later: STOPPED -> STARTING" not in fleet.master_log()
    assert fleet.node_pids() == []
