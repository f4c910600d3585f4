"""`make demo` runs examples/demo.py; its scripted tour must keep working, on a loaded machine
too: the demo waits on each event it shows, and this checks the output it waited for."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_tour_runs_and_stops_cleanly() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "examples/demo.py"), "--once"],
                            capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "killed by SIGKILL" in out  # the crash was seen and restarted
    # The rolling restart replaced beta, and the log shown after it has the new beta's
    # "ready" line (the demo waits for it; an earlier beta's line does not count).
    restarted = re.search(r"^beta: RUNNING \(pid (\d+)\)$", out, re.M)
    assert restarted, out
    logs = out[out.index("$ stemctl logs beta"):]
    assert f"beta: ready (pid {restarted.group(1)}, concurrency 2)" in logs, out
    assert "stopped" in out
