"""`make demo` runs examples/demo.py; its scripted tour must keep working."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_tour_runs_and_stops_cleanly() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "examples/demo.py"), "--once"],
                            capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "beta: ready" in result.stdout and "concurrency 2" in result.stdout
    assert "stopped" in result.stdout
    assert "killed by SIGKILL" in result.stdout  # the crash was seen and restarted
