"""Host checks: problems name the key as the configuration's own format
does, and say which of them refuse a start (fatal_at_start)."""

from __future__ import annotations

from pathlib import Path

from stem_core.config import load_config
from stem_core.errors import Problem
from stemd.checks import check_environment


def _problems(path: Path) -> dict[str, Problem]:
    config = load_config(str(path), environ={})
    return {p.message: p for p in check_environment(config, creating=True)}


def test_an_env_file_names_its_keys(tmp_path: Path) -> None:
    path = tmp_path / "stem"
    path.write_text(f"STEMD_COMMAND=/nonexistent/worker\nSTEMD_CHDIR={tmp_path}/gone\n"
                    f"STEMD_PID_FILE={tmp_path}/%n.pid\nSTEMD_LOG_FILE={tmp_path}/%n.log\n")
    found = _problems(path)
    command = found["command '/nonexistent/worker' of node worker1 not found"]
    chdir = found[f"working directory {tmp_path}/gone of node worker1 does not exist"]
    assert command.key == "STEMD_COMMAND" and command.fatal_at_start
    assert chdir.key == "STEMD_CHDIR" and chdir.fatal_at_start


def test_a_toml_file_names_its_keys(tmp_path: Path) -> None:
    path = tmp_path / "stem.toml"
    path.write_text(f'[programs.web]\ncommand = "/nonexistent/worker"\n'
                    f'directory = "{tmp_path}/gone"\n'
                    f'pid_file = "{tmp_path}/%n.pid"\nlog_file = "{tmp_path}/%n.log"\n')
    found = _problems(path)
    command = next(p for m, p in found.items() if m.startswith("command "))
    chdir = next(p for m, p in found.items() if m.startswith("working directory"))
    assert command.key == "[programs.web] command"
    assert chdir.key == "[programs.web] directory"
    assert command.fatal_at_start
