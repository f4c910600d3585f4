"""`make demo`: a real stemd supervising sample nodes, with a short tour.

Runs the master in the foreground (as in a container) on a generated config
in a temp dir, then shows what an operator would do: status, a crash and its
instant restart, a rolling restart, the logs. Ctrl-C stops the master, which
stops every node. `--once` ends after the tour (used by the test suite).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


def ctl(config: Path, *args: str) -> int:
    print(f"\n$ stemctl {' '.join(args)}", flush=True)
    return subprocess.run([str(BIN / "stemctl"), "--config", str(config), *args]).returncode


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30) -> Any:
    """Poll ``check`` until it returns something truthy. The tour waits on the
    events it shows, never for a fixed time: a loaded machine only makes it slower."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)
    return value


def all_running(config: Path) -> bool:
    return subprocess.run([str(BIN / "stemctl"), "--config", str(config), "status"],
                          capture_output=True).returncode == 0


def node(config: Path, name: str) -> dict[str, Any]:
    out = subprocess.run([str(BIN / "stemctl"), "--config", str(config), "status", "--json",
                          name], capture_output=True, text=True).stdout
    return json.loads(out)[0] if out.strip() else {}


def main() -> int:
    once = "--once" in sys.argv
    root = Path(tempfile.mkdtemp(prefix="stem-demo-"))
    config = root / "stem.env"
    config.write_text(f"""\
# A demo configuration: three worker nodes and a scheduler.
STEMD_NODES="alpha beta gamma"
STEMD_COMMAND="{sys.executable} {HERE / 'worker.py'}"
STEMD_OPTS="-c 4 -c:beta 2"
STEM_SCHEDULER_COMMAND="{sys.executable} {HERE / 'worker.py'}"
STEMD_START_SECS=1
STEMD_STOP_TIMEOUT=5
D={root}
STEMD_MASTER_PID_FILE=$D/run/stemd.pid
STEMD_SOCKET=$D/run/stemd.sock
STEMD_PID_FILE=$D/run/%n.pid
STEMD_LOG_FILE=$D/log/%n.log
STEMD_MASTER_LOG_FILE=$D/log/stemd.log
# the demo may run as root on a throw-away machine; production sets STEMD_USER
STEMD_FORCE_ROOT={1 if os.geteuid() == 0 else 0}
""")
    print(f"demo: config {config}\n$ stemd --config {config} --foreground", flush=True)
    master = subprocess.Popen([str(BIN / "stemd"), "--config", str(config), "--foreground"])
    try:
        wait_for("every node RUNNING", lambda: all_running(config))
        ctl(config, "status")
        pid = node(config, "beta")["pid"]
        print(f"\n$ kill -9 {pid}   # beta crashes", flush=True)
        os.kill(pid, signal.SIGKILL)
        wait_for("beta's restart", lambda: node(config, "beta").get("pid") not in (None, pid))
        ctl(config, "status", "beta")
        # The rolling restart, then what beta printed meanwhile: from the old process's
        # warm shutdown to the new one's "ready" (which is awaited, not assumed).
        log = root / "log/beta.log"
        before = len(log.read_bytes().splitlines())
        ctl(config, "restart", "worker")
        new = node(config, "beta").get("pid")
        wait_for("beta's ready line", lambda: f"beta: ready (pid {new}," in log.read_text())
        ctl(config, "logs", "beta", "-n", str(len(log.read_bytes().splitlines()) - before + 1))
        ctl(config, "status")
        if once:
            return 0 if ctl(config, "shutdown") == 0 and master.wait(10) == 0 else 1
        print("\ndemo: stemd is supervising the nodes; press Ctrl-C to stop it", flush=True)
        master.wait()
    except KeyboardInterrupt:
        print("\ndemo: stopping (the master stops every node first)", flush=True)
        master.send_signal(signal.SIGINT)
        master.wait(30)
    finally:
        if master.poll() is None:
            master.terminate()
            master.wait(30)
        shutil.rmtree(root, ignore_errors=True)  # config, PID files, socket and logs
    return master.returncode or 0


if __name__ == "__main__":
    sys.exit(main())
