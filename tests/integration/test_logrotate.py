"""etc/logrotate.d/stem, run by the real logrotate as a SysV host runs it (issue 12 §3).

The master runs as root with its root-owned log in /var/log/stem, the nodes as ``stem``
with their logs owned by ``stem``. The file's stanzas and directives are used as shipped;
only its *paths* are substituted (/var/log/stem and /run/stem become this test's
directories), because the test must not rotate, or signal, the host's own stemd. The state
file is passed with ``-s`` for the same reason. An earlier version of this test also
rewrote ``su stem stem`` to ``su root root``, which hid that the master log could not be
rotated at all ("error opening /var/log/stem/stemd.log: Permission denied").
"""

from __future__ import annotations

import gzip
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Fleet, wait_until

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "etc" / "logrotate.d" / "stem"
LOGROTATE = "/usr/sbin/logrotate"

pytestmark = [
    pytest.mark.skipif(not os.path.exists(LOGROTATE),
                       reason="logrotate is not installed (apt-get install logrotate)"),
    pytest.mark.skipif(os.geteuid() != 0,
                       reason="needs root: the shipped file says `su stem stem`, and the master "
                              "runs as root with nodes as stem, as under SysV"),
]


def stem_user() -> pwd.struct_passwd:
    """The ``stem`` account the shipped file names, created as docs/deployment.md does
    when missing. It is left in place: other tests (and runs) may rely on it, and a
    system account with no home and no shell is what every install has."""
    try:
        return pwd.getpwnam("stem")
    except KeyError:
        pass
    result = subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                             "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin",
                             "stem"], capture_output=True, text=True, timeout=60)
    try:
        return pwd.getpwnam("stem")
    except KeyError:
        pytest.skip(f"cannot create the stem user: {result.stderr.strip()}")


@pytest.fixture
def sysv_fleet() -> Iterator[Fleet]:
    """A fleet in a directory ``stem`` can traverse (pytest's tmp dir is 0700)."""
    root = Path(tempfile.mkdtemp(prefix="stemd-logrotate-", dir="/tmp"))
    root.chmod(0o755)
    fleet = Fleet(root)
    yield fleet
    fleet.cleanup()
    shutil.rmtree(root, ignore_errors=True)


def shipped_with_paths(log_dir: Path, run_dir: Path) -> str:
    conf = SHIPPED.read_text()
    assert "/var/log/stem" in conf and "/run/stem" in conf
    return conf.replace("/var/log/stem", str(log_dir)).replace("/run/stem", str(run_dir))


def rotated(directory: Path, name: str) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.startswith(f"{name}-"))


@pytest.mark.slow
def test_shipped_logrotate_rotates_node_logs_and_the_master_log(sysv_fleet: Fleet) -> None:
    fleet = sysv_fleet
    stem = stem_user()
    ticker = fleet.root / "ticker.sh"
    ticker.write_text('#!/bin/sh\nwhile :; do echo "tick $STEMD_NODE"; sleep 0.02; done\n')
    ticker.chmod(0o755)
    fleet.write(nodes="alpha beta", command=f"/bin/sh {ticker}", user="stem",
                force_root=None)
    fleet.start()
    fleet.wait_state("RUNNING")
    log = fleet.log_dir
    # the SysV layout: a log directory of root's (a node may not write where the master
    # logs: issue 11 B2), the master's log root's, each node's log its own
    assert log.stat().st_uid == 0 and not log.stat().st_mode & 0o022
    master_log = log / "stemd.log"
    assert master_log.stat().st_uid == 0
    for name in ("alpha", "beta"):
        path = log / f"{name}.log"
        wait_until(lambda p=path: p.exists() and p.stat().st_size > 200, 20,
                   what=f"{name} to log")
        assert path.stat().st_uid == stem.pw_uid
    sizes = {n: (log / f"{n}.log").stat().st_size for n in ("alpha", "beta")}
    master_before = master_log.read_bytes()

    conf = fleet.root / "logrotate.conf"
    conf.write_text(shipped_with_paths(log, fleet.run_dir))
    result = subprocess.run([LOGROTATE, "-f", "-s", str(fleet.root / "logrotate.state"),
                             str(conf)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "error" not in result.stderr.lower(), result.stderr

    # node logs: copied and truncated in place; the nodes go on appending, no hole
    for name in ("alpha", "beta"):
        old = rotated(log, f"{name}.log")
        assert len(old) == 1, sorted(p.name for p in log.iterdir())
        assert old[0].stat().st_size >= sizes[name]
        path = log / f"{name}.log"
        wait_until(lambda p=path: p.stat().st_size > 100, 20,
                   what=f"{name} to log after the rotation")
        data = path.read_bytes()
        assert b"\0" not in data and data.startswith(b"tick ")

    # the master log: renamed (no su: it is root's), and the master told to reopen (USR1)
    old_master = rotated(log, "stemd.log")
    assert len(old_master) == 1, sorted(p.name for p in log.iterdir())
    assert old_master[0].read_bytes().startswith(master_before)
    wait_until(master_log.exists, 20, what="the master to reopen its log (SIGUSR1)")
    assert master_log.stat().st_uid == 0
    assert "reopened the log file" in master_log.read_text()
    # and new lines land in the new file, not the rotated one
    rotated_size = old_master[0].stat().st_size
    assert fleet.ctl("stop", "beta").returncode == 0
    wait_until(lambda: "beta" in master_log.read_text(), 20,
               what="the master's next lines in the new log")
    assert old_master[0].stat().st_size == rotated_size

    # a second run compresses the first rotation (delaycompress), and works as well for the
    # master log as for the nodes'. Rotated names carry the epoch second (dateformat %s):
    # the second run must not fall in the first one's second. logrotate reads the clock with
    # time(2), which glibc serves from the coarse clock, up to a tick behind time.time(): a run
    # started just after the next second began by Python's clock could still name its files
    # with the first run's second ("destination ... already exists"). So wait past the
    # second the first run named its files with, by more than a tick.
    first = int(old_master[0].name.rsplit("-", 1)[1])
    wait_until(lambda: time.time() >= first + 1.05, 5, interval=0.02,
               what="the second after the first run's")
    result = subprocess.run([LOGROTATE, "-f", "-s", str(fleet.root / "logrotate.state"),
                             str(conf)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert any(p.name.endswith(".gz") for p in rotated(log, "stemd.log"))
    gz = next(p for p in rotated(log, "alpha.log") if p.name.endswith(".gz"))
    assert gzip.decompress(gz.read_bytes()).startswith(b"tick ")
