"""The install docs/deployment.md §1 describes, end to end, as an operator does it.

`make install` builds the wheel and the sdist (`make dist`), installs the wheel into a venv of
its own in PREFIX (its dependencies really installed, from PyPI or pip's cache: nothing is
borrowed from this checkout or its .venv), and links stemd and stemctl into BINDIR. The init
script then runs them from its own PATH, under dash, with no STEMD_BIN/STEMCTL_BIN: start,
status, stop, and nothing left running.

PREFIX and BINDIR are temp dirs here, not /opt/stemd and /usr/local/bin: the script under test
is contrib/init.d/stem-worker with BINDIR standing in for /usr/local/bin in its PATH line.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from conftest import pid_alive, wait_until

ROOT = Path(__file__).resolve().parents[2]
DASH = shutil.which("dash")
MAKE = shutil.which("make")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(240),  # a cold pip cache downloads the build tools and dependencies
    pytest.mark.skipif(DASH is None, reason="dash is not installed (apt-get install dash)"),
    pytest.mark.skipif(MAKE is None, reason="make is not installed"),
]


def clean_env() -> dict[str, str]:
    """This environment without what would leak the checkout or an outer make into the build
    and the installed programs (pip's own settings, e.g. an index or a cache, stay)."""
    drop = {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "MAKEFLAGS", "MFLAGS", "MAKELEVEL",
            "NOTIFY_SOCKET"}
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("STEMD_")}


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """The fleet's files: a short path, for the socket (sun_path is 108 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="stem-install-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_make_install_then_the_init_script_starts_and_stops_the_fleet(
        tmp_path: Path, short_dir: Path) -> None:
    prefix, bindir, dist = tmp_path / "opt" / "stemd", tmp_path / "bin", tmp_path / "dist"

    # What the docs say, with temp dirs. `-o` keeps make from (re)building the dev venv that
    # runs this test; BIN is that venv, whose `build` makes the wheel.
    build = subprocess.run(
        [MAKE, "-C", str(ROOT), "-o", ".venv/.installed", "install", f"DIST={dist}",
         f"PREFIX={prefix}", f"BINDIR={bindir}", f"BIN={Path(sys.executable).parent}",
         f"PYTHON={sys.executable}"],
        capture_output=True, text=True, env=clean_env(), timeout=200, stdin=subprocess.DEVNULL)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert sorted(p.name for p in dist.iterdir()) == [
        f"stemd-{version}-py3-none-any.whl", f"stemd-{version}.tar.gz"]
    for prog in ("stemd", "stemctl"):
        assert (bindir / prog).resolve() == (prefix / "bin" / prog).resolve()

    # The installed package is the wheel's copy in PREFIX, dependencies and all.
    probe = subprocess.run(
        [str(prefix / "bin" / "python"), "-c",
         "import stemd, stem_core, psutil, daemon, lockfile, tomli_w, rich; print(stemd.__file__)"],
        capture_output=True, text=True, env=clean_env(), cwd="/", timeout=60)
    assert probe.returncode == 0, probe.stderr
    assert Path(probe.stdout.strip()).is_relative_to(prefix / "lib"), probe.stdout

    # The shipped script, its PATH's /usr/local/bin (the documented BINDIR) replaced by ours.
    shipped = (ROOT / "contrib" / "init.d" / "stem-worker").read_text()
    path_line = re.search(r"^PATH=(.*)$", shipped, re.M)
    assert path_line and "/usr/local/bin" in path_line.group(1).split(":")
    assert re.search(r"^BINDIR\s*\?=\s*/usr/local/bin$", (ROOT / "Makefile").read_text(), re.M)
    script = short_dir / "stem-worker"
    script.write_text(shipped.replace(
        path_line.group(0),
        "PATH=" + path_line.group(1).replace("/usr/local/bin", str(bindir), 1), 1))

    run_dir, log_dir = short_dir / "run", short_dir / "log"
    node_argv = ["/bin/sleep", f"{800000 + os.getpid() % 10000}.7"]
    config = short_dir / "stem.env"
    config.write_text("\n".join([
        "# written by tests/integration/test_install.py",
        'STEMD_NODES="alpha beta"',
        f'STEMD_COMMAND="{" ".join(node_argv)}"',
        "STEMD_START_SECS=0.2",
        "STEMD_STOP_TIMEOUT=5",
        f"STEMD_FORCE_ROOT={1 if os.geteuid() == 0 else 0}",
        f"STEMD_MASTER_PID_FILE={run_dir}/stemd.pid",
        f"STEMD_SOCKET={run_dir}/stemd.sock",
        f"STEMD_PID_FILE={run_dir}/%n.pid",
        f"STEMD_LOG_FILE={log_dir}/%n.log",
        f"STEMD_MASTER_LOG_FILE={log_dir}/stemd.log",
    ]) + "\n")

    def initd(action: str) -> subprocess.CompletedProcess[str]:
        assert DASH is not None
        return subprocess.run([DASH, str(script), action], capture_output=True, text=True,
                              env={"PATH": "/usr/bin:/bin", "STEMD_CONFIG": str(config)},
                              cwd="/", timeout=60, stdin=subprocess.DEVNULL)

    def master_pid() -> int | None:
        try:
            return int((run_dir / "stemd.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def nodes() -> list[int]:
        return [p.pid for p in psutil.process_iter(["cmdline", "status"])
                if p.info["cmdline"] == node_argv and p.info["status"] != psutil.STATUS_ZOMBIE]

    try:
        started = initd("start")
        assert started.returncode == 0, started.stdout + started.stderr
        pid = master_pid()
        assert pid is not None and pid_alive(pid), started.stdout + started.stderr
        # The master is PREFIX's Python running BINDIR's stemd, found on the script's PATH.
        cmdline = psutil.Process(pid).cmdline()
        assert Path(cmdline[0]).parent == prefix / "bin", cmdline
        assert cmdline[1] == str(bindir / "stemd"), cmdline
        wait_until(lambda: len(nodes()) == 2, timeout=30, what="both nodes running")

        status = initd("status")
        assert status.returncode == 0, status.stdout + status.stderr
        assert "is running" in status.stdout
        assert "alpha" in status.stdout and "beta" in status.stdout

        stopped = initd("stop")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        wait_until(lambda: not pid_alive(pid) and not nodes(), timeout=30,
                   what="the master and its nodes gone")
        after = initd("status")
        assert after.returncode == 3, after.stdout + after.stderr
    finally:
        pid = master_pid()
        if pid is not None and pid_alive(pid):
            with contextlib.suppress(psutil.Error, ProcessLookupError):
                if str(config) in " ".join(psutil.Process(pid).cmdline()):
                    os.kill(pid, signal.SIGKILL)
        for node in nodes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(node, signal.SIGKILL)
