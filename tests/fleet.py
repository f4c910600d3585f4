"""The test harness: real stemd and stemctl processes in a temp dir.

:class:`Fleet` writes an env file whose every path lies under the test's
temp dir, runs the installed ``stemd``/``stemctl`` as a user would, and
kills everything it started when the test ends — found by a marker variable
exported to every node, so even a node adopted or orphaned by a test is
found. Waits poll a condition against a deadline; no test sleeps blindly.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

BIN = Path(sys.executable).parent
STEMD = str(BIN / "stemd")
STEMCTL = str(BIN / "stemctl")

#: a node script (Fleet.script): exits 0 on TERM, keeps a ``sleep`` child in
#: its session and group, and shows whatever arguments it is given in its
#: command line (``--version=2``: which configuration it was started from)
CHILD_NODE = "#!/bin/sh\ntrap 'exit 0' TERM\nwhile :; do sleep 1000 & wait $!; done\n"

#: the child of Fleet.heavy_child_node
HEAVY_CHILD = r"""
import mmap, os, sys, time
held = mmap.mmap(-1, 512 << 20)
for page in range(0, len(held), mmap.PAGESIZE):
    held[page] = 1
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(os.getpid()))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
while True:
    time.sleep(3600)
"""


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01,
               what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class Fleet:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.mark = uuid.uuid4().hex
        self.config = root / "stem.env"
        self.run_dir = root / "run"
        self.log_dir = root / "log"
        self.settings: dict[str, str] = {}
        self.exports: dict[str, str] = {}

    # ------------------------------------------------------------- config
    def write(self, **settings: Any) -> Path:
        """Write the env file: test-friendly defaults, then ``settings``
        (keys without the STEMD_ prefix are accepted: nodes="a b"; a value
        of None leaves the key out of the file, e.g. force_root=None)."""
        base = {
            "STEMD_NODES": "alpha beta",
            "STEMD_COMMAND": "/bin/sleep 1000",
            "STEMD_START_SECS": "0.3",
            "STEMD_FORCE_ROOT": "1",
            "STEMD_STOP_TIMEOUT": "5",
            "STEMD_BACKOFF_MAX": "0.2",
            "STEMD_MASTER_PID_FILE": f"{self.run_dir}/stemd.pid",
            "STEMD_SOCKET": f"{self.run_dir}/stemd.sock",
            "STEMD_PID_FILE": f"{self.run_dir}/%n.pid",
            "STEMD_LOG_FILE": f"{self.log_dir}/%n.log",
            "STEMD_MASTER_LOG_FILE": f"{self.log_dir}/stemd.log",
        }
        base.update(self.settings)
        for key, value in settings.items():
            name = key if key.startswith("STEM") else "STEMD_" + key.upper()
            base[name] = None if value is None else str(value)  # type: ignore[assignment]
        self.settings = {k: v for k, v in base.items()}
        from stem_core.envfile import quote_env_value

        lines = [f"{k}={quote_env_value(v)}" for k, v in base.items() if v is not None]
        lines.append(f"export STEM_TEST_MARK={self.mark}")
        lines += [f"export {k}={quote_env_value(v)}" for k, v in self.exports.items()]
        self.config.write_text("\n".join(lines) + "\n")
        return self.config

    # ---------------------------------------------------------- commands
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STEMD_")}
        env.pop("NOTIFY_SOCKET", None)
        return env

    def stemd(self, *args: str, timeout: float = 30,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        if not self.config.exists():
            self.write()
        return subprocess.run([STEMD, "--config", str(self.config), *args], capture_output=True,
                              text=True, timeout=timeout, env=env or self.env(),
                              stdin=subprocess.DEVNULL)

    def start(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Start the daemon and insist that it says it is ready."""
        result = self.stemd(*args)
        assert result.returncode == 0, result.stderr
        return result

    def script(self, name: str, text: str) -> str:
        """Write an executable node script in the fleet's directory; its path."""
        path = self.root / name
        path.write_text(text)
        path.chmod(0o755)
        return str(path)

    def deaf_script(self) -> str:
        """A node that ignores SIGTERM: only the stop timeout's SIGKILL ends it."""
        return self.script("deaf.sh", "#!/bin/sh\ntrap '' TERM\nwhile :; do sleep 0.05; done\n")

    def heavy_child_node(self) -> tuple[str, Path]:
        """A node command whose shell dies on SIGTERM and leaves a child
        holding 512 MiB in its group, and the file where that child writes
        its PID once they are touched. SIGKILL is delivered, not done: the
        child then takes tens of ms to free them, a window in which a stop
        that answers at once still has a node process running."""
        script = self.script("heavy.py", HEAVY_CHILD)
        ready = self.root / "heavy-child.pid"
        return f"/bin/sh -c '{sys.executable} {script} {ready} & wait'", ready

    def start_failing(self, *args: str) -> str:
        """Start the daemon on a fleet that cannot run: ready means running,
        so the launcher must exit 1 naming the failures (the master stays
        and keeps supervising). Returns what it said."""
        result = self.stemd(*args)
        assert result.returncode == 5, (result.returncode, result.stderr)  # NODES_NOT_RUNNING
        assert "not running" in result.stderr, result.stderr
        assert pid_alive(self.master_pid() or 0), "the master must keep supervising"
        return result.stderr

    def ctl(self, *args: str, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run([STEMCTL, "--config", str(self.config), *args],
                              capture_output=True, text=True, timeout=timeout, env=self.env(),
                              stdin=subprocess.DEVNULL, **kw)

    def status(self, *names: str) -> dict[str, dict[str, Any]]:
        result = self.ctl("status", "--json", *names)
        assert result.returncode in (0, 1), result.stderr
        return {n["node"]: n for n in json.loads(result.stdout)}

    def wait_state(self, state: str, *names: str, timeout: float = 10) -> dict[str, Any]:
        def check() -> Any:
            nodes = self.status(*names)
            return nodes if all(n["state"] == state for n in nodes.values()) else None
        return wait_until(check, timeout, interval=0.05, what=f"{names or 'all'} {state}")

    def master_pid(self) -> int | None:
        try:
            return int((self.run_dir / "stemd.pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def node_pids(self) -> list[int]:
        """PIDs of every live process started for this fleet (nodes and
        their children), found by the marker in their environment."""
        pids = []
        for proc in psutil.process_iter(["pid"]):
            try:
                if proc.environ().get("STEM_TEST_MARK") == self.mark \
                        and proc.status() != psutil.STATUS_ZOMBIE:
                    pids.append(proc.pid)
            except (psutil.Error, OSError):
                continue
        return pids

    def master_log(self) -> str:
        path = self.log_dir / "stemd.log"
        return path.read_text() if path.exists() else ""

    def cleanup(self) -> None:
        pid = self.master_pid()
        if pid and pid_alive(pid):
            try:
                if str(self.config) in " ".join(psutil.Process(pid).cmdline()):
                    os.kill(pid, signal.SIGKILL)
                    # A master killed while it respawned a node leaves that
                    # child to finish its exec: look for nodes once it is gone.
                    with contextlib.suppress(AssertionError):
                        wait_until(lambda: not pid_alive(pid), 5, what="the master gone")
            except (psutil.Error, ProcessLookupError):
                pass

        def kill_nodes() -> bool:
            found = self.node_pids()
            for node in found:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(node, signal.SIGKILL)
            return not found
        with contextlib.suppress(AssertionError):  # until a scan finds none left
            wait_until(kill_nodes, 5, interval=0.05, what="the fleet's processes gone")


@pytest.fixture
def fleet(tmp_path: Path):  # type: ignore[no-untyped-def]
    f = Fleet(tmp_path)
    yield f
    f.cleanup()
