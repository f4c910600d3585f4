"""Celery migration warnings through the real ``stemd`` (issue 10 §3): they
never fail a command, and they reach the operator at --check and at start."""

from __future__ import annotations

import json
import re

from conftest import Fleet


def write_celery_habits(fleet: Fleet) -> None:
    fleet.write(nodes="w1", log_file=f"{fleet.log_dir}/%n%I.log")
    with fleet.config.open("a") as f:
        f.write("CELERYD_NODES=3\nSTEM_CREATE_DIRS=1\n")


def line_of(fleet: Fleet, prefix: str) -> int:
    lines = fleet.config.read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.startswith(prefix))


def test_check_prints_warnings_with_file_and_line_and_succeeds(fleet: Fleet) -> None:
    write_celery_habits(fleet)
    result = fleet.stemd("--check")
    assert result.returncode == 0, result.stderr
    assert "OK (1 nodes, 3 warning(s))" in result.stdout
    config = str(fleet.config)
    warnings = re.findall(r"^stemd: warning: (\S+?):(\d+):(?:\d+: )? ?(\S+): ", result.stderr,
                          re.M)
    assert sorted(warnings) == sorted([
        (config, str(line_of(fleet, "STEMD_LOG_FILE=")), "STEMD_LOG_FILE"),
        (config, str(line_of(fleet, "CELERYD_NODES=")), "CELERYD_NODES"),
        (config, str(line_of(fleet, "STEM_CREATE_DIRS=")), "STEM_CREATE_DIRS"),
    ]), result.stderr
    assert "use STEMD_NODES" in result.stderr
    assert "did you mean STEMD_CREATE_DIRS?" in result.stderr


def test_a_start_prints_and_logs_the_warnings(fleet: Fleet) -> None:
    write_celery_habits(fleet)
    result = fleet.start()
    assert "stemd: warning: " in result.stderr
    assert "CELERYD_NODES: celery init-script setting" in result.stderr
    log = fleet.master_log()
    assert "warning: " in log and "CELERYD_NODES: celery init-script setting" in log
    assert "%I is celery's pool-process index" in log


def test_diagnose_shows_the_warnings_and_still_succeeds(fleet: Fleet) -> None:
    write_celery_habits(fleet)
    result = fleet.ctl("diagnose")
    assert result.returncode == 0, result.stdout
    assert "warning: " in result.stdout and "CELERYD_NODES" in result.stdout
    data = json.loads(fleet.ctl("diagnose", "--json").stdout)
    assert data["problems"] == [] and len(data["warnings"]) == 3
