"""Resources (issue 11 §4): open-file limits, and a master that does not answer.

- 2,000 nodes under systemd's default soft limit of 1,024 open files ended with half the
  fleet FATAL "Too many open files": stemd now raises its soft limit to the hard one at start
  (checked cheaply here in /proc/PID/limits), and ``--check`` says what the fleet needs.
- A SIGSTOPped master hung every stemctl command, and so the init script's ``stop``: every
  command now has a default timeout, and ``stop`` falls back to TERM, then KILL, on the
  verified master, then stops its nodes.
- A full accept queue made ``stemctl --timeout`` die with a BlockingIOError traceback.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.fleet import STEMCTL, STEMD, Fleet, pid_alive, wait_until

ROOT = Path(__file__).resolve().parents[2]
DASH = shutil.which("dash")


def _limit_open_files(soft: int, hard: int):  # type: ignore[no-untyped-def]
    def preexec() -> None:  # runs in the test's child only, never in stemd's code
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return preexec


def _open_file_limits(pid: int) -> tuple[int, int]:
    text = Path(f"/proc/{pid}/limits").read_text()
    match = re.search(r"^Max open files\s+(\d+)\s+(\d+)", text, re.M)
    assert match, text
    return int(match.group(1)), int(match.group(2))


def test_the_master_raises_its_soft_open_file_limit(fleet: Fleet) -> None:
    _, hard_now = resource.getrlimit(resource.RLIMIT_NOFILE)
    hard = 4096 if hard_now == resource.RLIM_INFINITY else min(hard_now, 4096)
    fleet.write(nodes="alpha")
    result = subprocess.run([STEMD, "--config", str(fleet.config)], capture_output=True,
                            text=True, timeout=30, env=fleet.env(), stdin=subprocess.DEVNULL,
                            preexec_fn=_limit_open_files(256, hard))
    assert result.returncode == 0, result.stderr
    master = fleet.master_pid()
    assert master is not None
    assert _open_file_limits(master) == (hard, hard)
    node = fleet.wait_state("RUNNING")["alpha"]["pid"]
    assert _open_file_limits(node)[0] == hard  # the nodes inherit it
    assert re.search(rf"raised the open-file limit .* from 256 to {hard}", fleet.master_log())
    fleet.ctl("shutdown")


def test_check_says_how_many_open_files_the_fleet_needs(fleet: Fleet) -> None:
    fleet.write(nodes=100)
    result = subprocess.run([STEMD, "--config", str(fleet.config), "--check"],
                            capture_output=True, text=True, timeout=30, env=fleet.env(),
                            preexec_fn=_limit_open_files(100, 100))
    assert result.returncode == 0, result.stderr
    assert "needs about 264" in result.stdout
    assert "hard open-file limit 100 is below the 264" in result.stderr
    assert "LimitNOFILE=" in result.stderr


@pytest.mark.parametrize("unit", sorted((ROOT / "contrib" / "systemd").glob("*.service")),
                         ids=lambda p: p.name)
def test_units_raise_the_open_file_limit(unit: Path) -> None:
    assert re.search(r"^LimitNOFILE=\d{5,}$", unit.read_text(), re.M)


@pytest.mark.slow
def test_stemctl_gives_up_on_a_stopped_master(fleet: Fleet) -> None:
    """Regression (#46): stemctl had no default timeout; a SIGSTOPped master hung it."""
    fleet.write()
    fleet.start()
    fleet.wait_state("RUNNING")
    master = fleet.master_pid()
    assert master is not None
    os.kill(master, signal.SIGSTOP)
    try:
        began = time.monotonic()
        result = fleet.ctl("status", timeout=40)
        assert result.returncode == 1, result
        assert "the master did not answer within 10 s" in result.stderr
        assert time.monotonic() - began < 30
        assert "Traceback" not in result.stderr

        result = fleet.ctl("--timeout", "1", "--json", "status", timeout=20)
        assert result.returncode == 1
        error = json.loads(result.stdout)["error"]
        assert error["code"] == "timeout" and "within 1 s" in error["message"]

        # shutdown without --force does not signal anything; it says what would
        result = fleet.ctl("shutdown", "--timeout", "1", timeout=20)
        assert result.returncode == 1 and "--force" in result.stderr
        assert pid_alive(master)
    finally:
        os.kill(master, signal.SIGCONT)
    fleet.ctl("shutdown")


def test_a_full_accept_queue_is_a_clean_error(tmp_path: Path) -> None:
    """Regression (B9): connect() on a Unix socket whose queue is full fails with EAGAIN at
    once under a timeout; stemctl died with a BlockingIOError traceback."""
    path = str(tmp_path / "full.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(0)
    clients = []
    try:
        while True:  # fill the queue (a backlog of 0 still admits one or two)
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.setblocking(False)
            try:
                c.connect(path)
            except BlockingIOError:
                c.close()
                break
            clients.append(c)
            assert len(clients) < 100
        result = subprocess.run([STEMCTL, "--socket", path, "--timeout", "1", "status"],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 1, result
        assert "Traceback" not in result.stderr
        assert "the master did not answer within 1 s" in result.stderr
        assert "queue is full" in result.stderr
    finally:
        for c in clients:
            c.close()
        server.close()


@pytest.mark.slow
@pytest.mark.skipif(DASH is None, reason="dash is not installed")
def test_init_stop_of_a_stopped_master_terminates_it_and_its_nodes(fleet: Fleet) -> None:
    """Regression (#46): with the master SIGSTOPped, /etc/init.d/stem-worker stop hung."""
    fleet.write()
    fleet.start()
    fleet.wait_state("RUNNING")
    master = fleet.master_pid()
    assert master is not None and fleet.node_pids()
    os.kill(master, signal.SIGSTOP)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "STEMD_CONFIG": str(fleet.config),
           "STEMD_BIN": STEMD, "STEMCTL_BIN": STEMCTL}
    began = time.monotonic()
    try:
        result = subprocess.run([DASH, str(ROOT / "contrib/init.d/stem-worker"), "stop"],
                                capture_output=True, text=True, env=env, timeout=60)
    except subprocess.TimeoutExpired:
        os.kill(master, signal.SIGCONT)
        raise
    took = time.monotonic() - began
    assert result.returncode == 0, result
    assert took < 40, f"stop took {took:.1f} s"
    assert "did not answer" in result.stdout + result.stderr
    wait_until(lambda: not pid_alive(master), 5, what="the master to be gone")
    assert fleet.node_pids() == []
    assert not (fleet.run_dir / "stemd.pid").exists()
