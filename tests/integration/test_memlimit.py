"""Memory limits (issue 15 §5): a node whose tree outgrows max_rss is
restarted warm; without a limit the idle master never wakes up."""

from __future__ import annotations

import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.fleet import Fleet, wait_until

GROW = textwrap.dedent("""\
    import os, signal, sys, time
    # the main process stays small; its child grows 2 MB every 50 ms
    def stop(*_):
        open(os.environ["OUT"] + "/warm." + os.environ["STEMD_NODE"], "a").write("TERM\\n")
        os._exit(0)
    signal.signal(signal.SIGTERM, stop)
    grow = os.environ["STEMD_NODE"] == "hog"
    if os.fork() == 0:
        blocks = []
        while grow:
            block = bytearray(2 * 1024 * 1024)
            for i in range(0, len(block), 4096):
                block[i] = 1
            blocks.append(block)
            time.sleep(0.05)
        time.sleep(1000)
        os._exit(0)
    time.sleep(1000)
""")


def wakeups(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches")


@pytest.mark.slow
def test_node_over_its_limit_is_restarted_warm(fleet: Fleet, tmp_path: Path) -> None:
    script = tmp_path / "grow.py"
    script.write_text(GROW)
    fleet.exports["OUT"] = str(tmp_path)
    fleet.write(nodes="hog calm", command=f"{sys.executable} {script}", start_secs=0.2,
                max_rss="60M", memory_check_interval=0.5)
    fleet.start()
    before = fleet.status()
    wait_until(lambda: (tmp_path / "warm.hog").exists(), 60, what="the hog's warm stop")
    node = wait_until(lambda: (n := fleet.status("hog")["hog"])["state"] == "RUNNING"
                      and n["pid"] != before["hog"]["pid"] and n, 30, what="hog back up")
    assert "exceeded max_rss 60.0M" in node["last_error"], node
    assert node["last_error"].startswith("restarted at "), node
    log = fleet.master_log()
    assert "hog: memory: the process tree's RSS" in log and "restarting it" in log, log
    assert "sending SIGTERM to pid" in log  # the normal (mixed) stop sequence
    calm = fleet.status("calm")["calm"]
    assert calm["pid"] == before["calm"]["pid"] and calm["last_error"] is None
    assert not (tmp_path / "warm.calm").exists()
    metrics = fleet.ctl("metrics").stdout
    assert 'stemd_node_max_rss_bytes{node="hog",program="worker"} 6.291456e+07' in metrics
    restarts = [line for line in metrics.splitlines()
                if line.startswith('stemd_node_memory_restarts_total{node="hog"')]
    assert restarts and float(restarts[0].split()[1]) >= 1


@pytest.mark.slow
def test_sampling_only_when_a_limit_is_set(fleet: Fleet) -> None:
    fleet.write(nodes="alpha", start_secs=0.2)
    fleet.start()
    master = fleet.master_pid()
    assert master is not None
    time.sleep(1.0)  # let the start settle (state file write, notify)
    first = wakeups(master)
    time.sleep(3.0)  # measuring idleness: nothing to wait for
    assert wakeups(master) - first == 0, "an idle master without max_rss must not wake up"
    fleet.ctl("shutdown")
    fleet.write(max_rss="1G", memory_check_interval=0.5)
    fleet.start()
    master = fleet.master_pid()
    assert master is not None
    time.sleep(1.0)
    first = wakeups(master)
    time.sleep(3.0)
    assert 4 <= wakeups(master) - first <= 12, "one wake-up per check (0.5 s)"


BIG = textwrap.dedent("""\
    import time
    block = bytearray(90 * 1024 * 1024)  # its normal size: over any 60M limit
    for i in range(0, len(block), 4096):
        block[i] = 1
    time.sleep(1000)
""")


def log_times(log: str, needle: str) -> list[float]:
    """Seconds of the day of the master log lines that contain ``needle``."""
    times = []
    for line in log.splitlines():
        if needle in line:
            clock = line.split()[1]  # 2026-11-30 08:24:26,609 INFO ...
            h, m, s = clock.replace(",", ".").split(":")
            times.append(int(h) * 3600 + int(m) * 60 + float(s))
    return times


@pytest.mark.slow
def test_node_whose_normal_size_exceeds_the_limit_is_not_restarted_in_a_loop(
        fleet: Fleet, tmp_path: Path) -> None:
    """A worker that is over max_rss as soon as it starts (a limit set too
    low) was restarted at every check, for ever: a fleet that never serves.
    Memory restarts follow the crash-loop policy: restart_burst of them
    within restart_window, then they are held (the node keeps running, and
    says why) until the window has passed."""
    script = tmp_path / "big.py"
    script.write_text(BIG)
    fleet.write(nodes="big", command=f"{sys.executable} {script}", start_secs=0.2,
                max_rss="60M", memory_check_interval=0.3, restart_burst=2, restart_window=4)
    fleet.start()
    restarting = "big: memory: the process tree's RSS"
    held = "big: memory restarts held"
    wait_until(lambda: len(log_times(fleet.master_log(), restarting)) >= 3, 30,
               what="the third memory restart, once the window has passed")
    log = fleet.master_log()
    restarts, holds = log_times(log, restarting), log_times(log, held)
    assert holds, log
    # two restarts, then held: the third comes a whole window after the first
    assert restarts[1] < holds[0] < restarts[2], log
    assert restarts[2] - restarts[0] >= 4 - 0.05, log
    assert log.count(held) <= len(restarts) // 2, "the hold is said once a window, not each check"
